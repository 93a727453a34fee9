//! The node agent (what the kubelet is): a NodeAgent actor per node
//! supervising a PodActor per pod, each supervising a ContainerActor per
//! container, over a container runtime and a control plane.

pub mod agent_error;
pub mod agent_protocol;
pub mod chaos_orders;
pub mod container_actor;
pub mod control_plane;
pub mod directory;
pub mod heartbeat_relay;
pub mod node_agent;
pub mod node_credential;
pub mod node_restriction;
pub mod pod_actor;
pub mod pod_env;
pub mod pod_fanout;
pub mod pod_inputs;
pub mod pod_state;
pub mod pod_volumes;
pub mod probe;
pub mod remote;
pub mod volume_tmpfs;
