//! Where every applied revision is published: the state machine sends
//! each revision's events to the [`WatchHub`], and watchers (`watch.rs`)
//! subscribe to it after replaying history.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{broadcast, watch};

use crate::types::{Event, Revisions};

/// All events of one revision.
#[derive(Clone, Debug)]
pub struct WatchBatch {
    pub revision: u64,
    pub events: Vec<Event>,
}

#[derive(Clone, Debug)]
pub(crate) enum HubMessage {
    Batch(Arc<WatchBatch>),
    /// The state was replaced by a snapshot: re-read history.
    Resync,
}

/// The member's fan-out point for applied changes.
pub struct WatchHub {
    pub(crate) tx: broadcast::Sender<HubMessage>,
    revs: watch::Sender<Revisions>,
    /// Watchers open now, counted by `Watcher` as they open and drop.
    pub(crate) active: AtomicUsize,
    pub(crate) watches_max: usize,
    pub(crate) queue_max: usize,
}

impl WatchHub {
    pub fn new(queue_max: usize, watches_max: usize) -> Self {
        let (tx, _) = broadcast::channel(queue_max.max(1));
        let (revs, _) = watch::channel(Revisions::default());
        WatchHub { tx, revs, active: AtomicUsize::new(0), watches_max, queue_max }
    }

    /// Called by the state machine after each applied batch is written.
    pub fn publish(&self, revs: Revisions, batches: Vec<WatchBatch>) {
        for b in batches {
            // No receivers is fine: nobody is watching.
            let _ = self.tx.send(HubMessage::Batch(Arc::new(b)));
        }
        self.revs.send_replace(revs);
    }

    pub fn resync(&self, revs: Revisions) {
        let _ = self.tx.send(HubMessage::Resync);
        self.revs.send_replace(revs);
    }

    pub fn set_revisions(&self, revs: Revisions) {
        self.revs.send_replace(revs);
    }

    pub fn revisions(&self) -> Revisions {
        *self.revs.borrow()
    }

    /// Notified whenever the applied revision changes.
    pub fn subscribe_revisions(&self) -> watch::Receiver<Revisions> {
        self.revs.subscribe()
    }

    pub fn active_watches(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }
}
