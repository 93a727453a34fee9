//! What runs only on the Raft leader: the LeaderSupervisor, which starts
//! the scheduler, the node lifecycle (one failure detector for all nodes) and the
//! controllers when this member leads, and stops them when it no longer
//! does. Their decisions are plain functions ([`placement`], [`rollout`],
//! [`replicas`], [`endpoints`]); the actors around them read a shared
//! [`cache`] of the cluster and write through the registry.

pub mod cache;
pub mod controller;
pub mod controller_supervisor;
pub mod deployment_controller;
pub mod endpoints;
pub mod endpoints_controller;
pub mod gc;
pub mod leader_supervisor;
pub mod namespace_controller;
pub mod node_health;
pub mod node_ipam_controller;
pub mod node_lifecycle;
pub mod placement;
pub mod replicas;
pub mod replicaset_controller;
pub mod rollout;
pub mod scheduler;
pub mod settings;

pub use leader_supervisor::{LeaderArgs, LeaderSupervisor};
pub use settings::LeaderSettings;
