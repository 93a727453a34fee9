//! `flotilla sim`: the control plane in deterministic simulation. One
//! thread, simulated time and one seed: the leader's real deciders
//! (scheduler, controllers, failure detector) and the real executor run
//! against an in-memory store with etcd's semantics, simulated agents run
//! the pods, and workloads and faults are drawn from the seed. Invariants
//! are checked after every step; the same seed gives the same trace.
//! docs/ARCHITECTURE.md says what is simulated and what is real.

pub mod agent;
pub mod invariants;
pub mod rng;
pub mod store;
pub mod trace;
pub mod workload;
pub mod world;

pub use world::{FaultProfile, SimConfig, SimReport, World};

/// Runs one simulation.
pub fn run(config: SimConfig) -> SimReport {
    World::new(config).run()
}
