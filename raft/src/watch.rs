//! Watches: every applied revision is published to a [`WatchHub`]; each
//! [`Watcher`] first replays history from its start revision out of
//! RocksDB, then follows the live stream. A watcher that falls more than
//! `watch_queue_max` revisions behind is cut off instead of holding writers
//! back; it resumes from the last revision it saw.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::error::StoreError;
use crate::freshness::Freshness;
use crate::state_machine::StoreReader;
use crate::types::Event;
use crate::watch_hub::{HubMessage, WatchHub};

/// Events replayed from history per step, so replay does not hold a whole
/// history in memory.
const REPLAY_CHUNK_EVENTS: usize = 1_000;
/// How often a live watcher checks that its member is still current.
const FRESHNESS_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What a watcher yields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchItem {
    /// Matching changes, in order, up to and including `revision`.
    Events { revision: u64, events: Vec<Event> },
}

/// One watch on a key prefix.
pub struct Watcher {
    reader: StoreReader,
    prefix: Vec<u8>,
    rx: broadcast::Receiver<HubMessage>,
    next_revision: u64,
    replay_until: Option<u64>,
    hub: Arc<WatchHub>,
    /// When set, the watch fails once the member cannot tell it is current.
    freshness: Option<(Arc<Freshness>, tokio::time::Interval)>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.hub.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Watcher {
    /// Watches `prefix` from `from_revision` (inclusive); 0 means "changes
    /// after now".
    pub fn open(reader: StoreReader, prefix: Vec<u8>, from_revision: u64) -> Result<Self, StoreError> {
        let hub = reader.hub().clone();
        if hub.active.fetch_add(1, Ordering::Relaxed) >= hub.watches_max {
            hub.active.fetch_sub(1, Ordering::Relaxed);
            return Err(StoreError::Invalid(format!(
                "this member already serves {} watches (the limit); watch through another member or close some",
                hub.watches_max
            )));
        }
        // Subscribe before reading the revision: anything applied after the
        // read arrives on the channel, anything before is in history.
        let rx = hub.tx.subscribe();
        let revs = hub.revisions();
        let mut watcher = Watcher { reader, prefix, rx, next_revision: revs.revision + 1, replay_until: None, hub, freshness: None };
        if from_revision != 0 {
            if from_revision < revs.compact_revision {
                return Err(StoreError::Compacted { requested: from_revision, compact_revision: revs.compact_revision });
            }
            watcher.next_revision = from_revision;
            if from_revision <= revs.revision {
                watcher.replay_until = Some(revs.revision);
            }
        }
        Ok(watcher)
    }

    /// Makes the watch end with [`StoreError::Stale`] when `freshness` says
    /// its member is no longer current.
    pub fn with_freshness(mut self, freshness: Arc<Freshness>) -> Self {
        let mut tick = tokio::time::interval(FRESHNESS_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.freshness = Some((freshness, tick));
        self
    }

    /// The last revision this watcher has fully delivered.
    pub fn progress_revision(&self) -> u64 {
        self.next_revision.saturating_sub(1)
    }

    /// The next matching changes. Cancel-safe.
    pub async fn next(&mut self) -> Result<WatchItem, StoreError> {
        loop {
            if let Some(until) = self.replay_until {
                if self.next_revision > until {
                    self.replay_until = None;
                    continue;
                }
                let (events, covered) = self
                    .reader
                    .history(&self.prefix, self.next_revision, REPLAY_CHUNK_EVENTS)
                    .map_err(|reason| StoreError::Fatal { member: 0, reason })?;
                let compact = self.reader.revisions().compact_revision;
                if self.next_revision < compact {
                    return Err(StoreError::Compacted { requested: self.next_revision, compact_revision: compact });
                }
                self.next_revision = covered.max(self.next_revision.saturating_sub(1)) + 1;
                if covered >= until {
                    self.replay_until = None;
                }
                if !events.is_empty() {
                    return Ok(WatchItem::Events { revision: covered, events });
                }
                continue;
            }
            let message = match self.freshness.as_mut() {
                None => self.rx.recv().await,
                Some((freshness, tick)) => tokio::select! {
                    m = self.rx.recv() => m,
                    _ = tick.tick() => {
                        freshness.check().await?;
                        continue;
                    }
                },
            };
            match message {
                Ok(HubMessage::Batch(batch)) => {
                    if batch.revision < self.next_revision {
                        continue;
                    }
                    if batch.revision > self.next_revision {
                        // A gap (after a resync): the batch is already in
                        // history, so replay through it.
                        self.replay_until = Some(batch.revision);
                        continue;
                    }
                    self.next_revision = batch.revision + 1;
                    let events: Vec<Event> = batch.events.iter().filter(|e| e.kv.key.starts_with(&self.prefix)).cloned().collect();
                    if !events.is_empty() {
                        return Ok(WatchItem::Events { revision: batch.revision, events });
                    }
                }
                Ok(HubMessage::Resync) => {
                    self.replay_until = Some(self.reader.revisions().revision);
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    return Err(StoreError::WatchOverflow { queue_max: self.hub.queue_max });
                }
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(StoreError::Fatal { member: 0, reason: "the store is shutting down".into() });
                }
            }
        }
    }
}
