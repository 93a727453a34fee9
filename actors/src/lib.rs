//! flotilla's object model and its long-running actors: the Kubernetes
//! resources it serves ([`model`]) and the [`registry`] that stores them in
//! the replicated store with admission and optimistic concurrency.

pub mod agent;
pub mod backoff;
pub mod clock;
pub mod identities;
pub mod leader;
pub mod limits;
pub mod model;
pub mod network;
pub mod registry;
pub mod runtime;
pub mod secrets_keyring;
pub mod sim;
pub mod tasks;
pub mod watcher;

pub use registry::{Propagation, Registry, RegistryError, RegistryWatch, WatchEvent, WatchEventKind};
