//! What runs only on the Raft leader: the LeaderSupervisor, which starts
//! the scheduler, the node lifecycle (one failure detector for all nodes) and the
//! controllers when this member leads, and stops them when it no longer
//! does. Their decisions are plain functions ([`placement`], [`rollout`],
//! [`replicas`], [`endpoints`], [`node_health`]); each reconciler's
//! `step` turns the shared [`cache`] into [`command::Command`]s and one
//! [`executor`] performs them through the registry.

pub mod cache;
pub mod command;
pub mod controller;
pub mod controller_supervisor;
pub mod deployment_controller;
pub mod endpoints;
pub mod endpoints_controller;
pub mod executor;
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
#[cfg(test)]
mod step_tests;

pub use leader_supervisor::{LeaderArgs, LeaderSupervisor};
pub use settings::LeaderSettings;
