//! The last heartbeat of every node, where agents' beats arrive and the
//! leader's failure detector reads them: a model type shared by both sides
//! so that neither imports the other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use crate::clock::{Mono, SharedClock};

/// The last heartbeat of each node, with the usage it reported and the
/// recent interval between its beats (the failure detector judges a node
/// on its own rhythm). Thousands of agents beat five times a second, so
/// the map is read-locked to beat and each node has its own small lock;
/// the map is write-locked only when a node beats for the first time.
#[derive(Clone)]
pub struct Heartbeats {
    inner: Arc<RwLock<HashMap<String, BeatSlot>>>,
    clock: SharedClock,
}

impl Default for Heartbeats {
    fn default() -> Self {
        Heartbeats::with_clock(crate::clock::system())
    }
}

/// One node's last beat.
type BeatSlot = Arc<Mutex<BeatRecord>>;

/// Gaps longer than this are outages, not the rhythm of a node's beats.
pub const BEAT_INTERVAL_SAMPLE_MAX: Duration = Duration::from_secs(10);

/// What is known of a node's last heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BeatRecord {
    /// When it arrived, on the heartbeats' clock.
    pub at: Mono,
    /// A moving average of the gaps between its beats (weight 1/4 to the
    /// newest), once there are two.
    pub interval: Option<Duration>,
    pub usage: NodeUsage,
}

/// What a heartbeat carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NodeUsage {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub pods: i64,
}

impl Heartbeats {
    pub fn with_clock(clock: SharedClock) -> Self {
        Heartbeats { inner: Default::default(), clock }
    }

    /// The clock beats are timed on.
    pub fn clock(&self) -> SharedClock {
        self.clock.clone()
    }

    pub fn beat(&self, node: &str, usage: NodeUsage) {
        let now = self.clock.mono();
        let slot = self.inner.read().unwrap_or_else(|p| p.into_inner()).get(node).cloned();
        match slot {
            Some(slot) => {
                let mut rec = slot.lock().unwrap_or_else(|p| p.into_inner());
                let gap = now.saturating_sub(rec.at);
                if gap <= BEAT_INTERVAL_SAMPLE_MAX {
                    rec.interval = Some(rec.interval.map_or(gap, |old| (old * 3 + gap) / 4));
                }
                rec.at = now;
                rec.usage = usage;
            }
            None => {
                self.inner
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(node.to_string(), Arc::new(Mutex::new(BeatRecord { at: now, interval: None, usage })));
            }
        }
    }

    pub fn last(&self, node: &str) -> Option<BeatRecord> {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        map.get(node).map(|slot| *slot.lock().unwrap_or_else(|p| p.into_inner()))
    }
}
