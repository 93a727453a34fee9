//! Whether a member knows it is current. A follower is current while it
//! accepts a leader's AppendEntries (heartbeats come every `heartbeat_ms`);
//! a leader is current while a majority confirms its leadership. A member
//! cut off from the others is neither, and after `stale_after_ms` its
//! watches end with [`StoreError::Stale`] so that clients move to a member
//! that is current, instead of waiting on one that silently fell behind
//! (etcd's progress notifications serve the same end).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::{Raft, ServerState};

use crate::error::StoreError;
use crate::types::{NodeId, TypeConfig};

/// One member's evidence of being current.
pub struct Freshness {
    id: NodeId,
    raft: Raft<TypeConfig>,
    started: Instant,
    /// Milliseconds after `started` of the last evidence.
    current_at_ms: AtomicU64,
    stale_after_ms: u64,
    /// How long a leader's own confirmation may take.
    confirm_timeout: Duration,
    /// One leadership confirmation at a time; the others wait for its answer.
    confirming: tokio::sync::Mutex<()>,
}

impl Freshness {
    pub fn new(id: NodeId, raft: Raft<TypeConfig>, stale_after_ms: u64, confirm_timeout: Duration) -> Self {
        Freshness {
            id,
            raft,
            started: Instant::now(),
            current_at_ms: AtomicU64::new(0),
            stale_after_ms,
            confirm_timeout,
            confirming: tokio::sync::Mutex::new(()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Records evidence that the member is current now.
    pub fn mark(&self) {
        self.current_at_ms.fetch_max(self.now_ms(), Ordering::Relaxed);
    }

    /// Milliseconds since the last evidence (a member that just started
    /// counts from its start).
    pub fn stale_for_ms(&self) -> u64 {
        self.now_ms().saturating_sub(self.current_at_ms.load(Ordering::Relaxed))
    }

    /// Ok while the member is current; a leader without recent evidence
    /// asks a majority first.
    pub async fn check(&self) -> Result<(), StoreError> {
        if self.stale_for_ms() <= self.stale_after_ms {
            return Ok(());
        }
        let (leader, alone) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state == ServerState::Leader, m.membership_config.membership().voter_ids().all(|v| v == self.id))
        };
        // The only voter cannot be deposed: nobody else could be elected,
        // so its word is current however busy it is.
        if leader && alone {
            self.mark();
            return Ok(());
        }
        if leader {
            let _one = self.confirming.lock().await;
            if self.stale_for_ms() <= self.stale_after_ms {
                return Ok(());
            }
            if let Ok(Ok(_)) = tokio::time::timeout(self.confirm_timeout, self.raft.ensure_linearizable()).await {
                self.mark();
                return Ok(());
            }
        }
        Err(StoreError::Stale { member: self.id, since_ms: self.stale_for_ms() })
    }
}
