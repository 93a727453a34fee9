//! The leader side's limits and periods in one place, units in the names.
//! `node_grace_ms` is per cluster (a server flag); the rest are defaults
//! chosen for the targets in docs/PERFORMANCE.md.

use std::time::Duration;

use crate::backoff::Backoff;

#[derive(Debug, Clone)]
pub struct LeaderSettings {
    /// Heartbeats missed for this long make a node NotReady and its pods
    /// evicted.
    pub node_grace_ms: u64,
    /// The longest a node's grace is stretched to when its heartbeats'
    /// path is slow (see `node_health`); a dead node is always lost by then.
    pub node_grace_max_ms: u64,
    /// How often the failure detector looks at every node's last heartbeat.
    pub node_check_ms: u64,
    /// Clean checks a suspect node must stay silent through to be lost.
    pub node_confirm_ticks: u32,
    /// The least time between two writes about one node (eviction again,
    /// a correction of its Ready condition).
    pub node_action_retry_ms: u64,
    /// How often every controller looks at everything, not just changes.
    pub resync_ms: u64,
    /// Pods the scheduler takes per batch.
    pub schedule_batch_max: usize,
    /// Pods bound per store transaction (keeps one entry well under the
    /// store's request limit).
    pub bind_txn_pods_max: usize,
    /// Pods one ReplicaSet pass creates or deletes, across all sets.
    pub replica_burst_max: usize,
    /// Store writes a controller keeps in flight at once.
    pub write_concurrency_max: usize,
    /// How long a controller waits for the cache to show its own write.
    pub cache_catch_up_ms: u64,
    /// Restart backoff of failed controllers, first and cap.
    pub restart_first_ms: u64,
    pub restart_max_ms: u64,
    /// How long a newly elected leader waits for heartbeats before it
    /// judges nodes (agents may be moving to it).
    pub takeover_grace_ms: u64,
}

impl Default for LeaderSettings {
    fn default() -> Self {
        LeaderSettings {
            node_grace_ms: 1_000,
            node_grace_max_ms: 5_000,
            node_check_ms: 200,
            node_confirm_ticks: 1,
            node_action_retry_ms: 1_000,
            resync_ms: 5_000,
            schedule_batch_max: 2_000,
            bind_txn_pods_max: 500,
            replica_burst_max: 2_000,
            write_concurrency_max: 64,
            cache_catch_up_ms: 5_000,
            restart_first_ms: 100,
            restart_max_ms: 10_000,
            takeover_grace_ms: 3_000,
        }
    }
}

impl LeaderSettings {
    pub fn node_grace(&self) -> Duration {
        Duration::from_millis(self.node_grace_ms)
    }
    /// Never under the grace itself.
    pub fn node_grace_max(&self) -> Duration {
        Duration::from_millis(self.node_grace_max_ms.max(self.node_grace_ms))
    }
    pub fn node_action_retry(&self) -> Duration {
        Duration::from_millis(self.node_action_retry_ms)
    }
    pub fn node_check(&self) -> Duration {
        Duration::from_millis(self.node_check_ms)
    }
    pub fn resync(&self) -> Duration {
        Duration::from_millis(self.resync_ms)
    }
    pub fn cache_catch_up(&self) -> Duration {
        Duration::from_millis(self.cache_catch_up_ms)
    }
    pub fn takeover_grace(&self) -> Duration {
        Duration::from_millis(self.takeover_grace_ms)
    }
    pub fn restart_backoff(&self) -> Backoff {
        Backoff { first: Duration::from_millis(self.restart_first_ms), max: Duration::from_millis(self.restart_max_ms) }
    }
}
