//! Every limit of the store in one place, with units in the names. A limit
//! that a caller hits gives an error that names it.

use std::time::Duration;

/// Once a frame's length has arrived, its body must arrive within this: a
/// stream that stops part-way through a frame is given up, and what it
/// held is freed.
pub const FRAME_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The store's limits. `Limits::default()` is what `flotilla server` runs with.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest value a key may hold (etcd's default request limit).
    pub value_size_max_bytes: usize,
    /// Largest key.
    pub key_size_max_bytes: usize,
    /// Largest request frame accepted from the network.
    pub request_size_max_bytes: usize,
    /// Largest reply frame a client reads (replies carry ranges and snapshot chunks).
    pub reply_size_max_bytes: usize,
    /// Changes a watcher may fall behind by before it is cut off with an error.
    pub watch_queue_max: usize,
    /// Writes proposed on a member and not yet answered; past it, callers wait.
    pub inflight_proposals_max: usize,
    /// Open watches one member serves.
    pub watches_max: usize,
    /// Keys a range returns at most in one page.
    pub range_page_max: usize,
    /// Revisions of history kept for watches; older ones are compacted.
    pub history_retain_revisions: u64,
    /// Deadline for one Raft RPC between members.
    pub raft_rpc_timeout_ms: u64,
    /// Deadline for one client RPC (including forwarding to the leader).
    pub client_rpc_timeout_ms: u64,
    /// Deadline for dialling a peer.
    pub connect_timeout_ms: u64,
    /// QUIC keep-alive; a silent connection is probed this often.
    pub keep_alive_ms: u64,
    /// A connection with no traffic (keep-alives included) for this long is dead.
    pub idle_timeout_ms: u64,
    /// Raft heartbeat.
    pub heartbeat_ms: u64,
    /// Raft election timeout range.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Log entries applied since the last snapshot before a new one is built.
    pub snapshot_every_entries: u64,
    /// Log entries kept behind a snapshot, so a slightly lagging follower
    /// catches up from the log instead of a snapshot.
    pub log_kept_behind_snapshot: u64,
    /// Entries in one AppendEntries RPC.
    pub append_entries_max: u64,
    /// Bytes of one snapshot chunk.
    pub snapshot_chunk_bytes: u64,
    /// How long a joining member waits to be caught up and promoted.
    pub join_timeout_ms: u64,
    /// Deadline for one try of a write or read-index a member carries to
    /// the leader, before it is tried again (same session, so never applied
    /// twice) where the leader is now. A try also ends as soon as the
    /// member stops taking that leader for the leader.
    pub forward_attempt_timeout_ms: u64,
    /// Longest one try of a client's request may take on one member that
    /// still answers probes, before the client tries the next.
    pub client_attempt_max_ms: u64,
    /// While a client's try is slow, the member is probed this often; a
    /// probe unanswered within the probe timeout ends the try (a member
    /// that died or froze is left after about interval + timeout).
    pub client_probe_interval_ms: u64,
    pub client_probe_timeout_ms: u64,
    /// A member that has not known it is current for this long (no quorum
    /// answering it as leader, no leader's AppendEntries as follower) ends
    /// its watches with an error and refuses new ones, so clients move on
    /// to a member that is current.
    pub stale_after_ms: u64,
    /// The peer port before a caller has authenticated (a member
    /// certificate at the handshake, or the token in a `Hello`): the
    /// largest frame read, let alone decoded, from it...
    pub unauthenticated_frame_max_bytes: usize,
    /// ...the streams it may use before it has (one `Hello`, or a `Join`)...
    pub unauthenticated_streams_max: u32,
    /// ...the bytes it may send ahead of what is read...
    pub unauthenticated_receive_window_bytes: u32,
    /// ...and how long it has to authenticate before it is closed.
    pub authenticate_within_ms: u64,
    /// Connections open and not yet authenticated, from anyone and from
    /// one address; more are closed at once.
    pub unauthenticated_connections_max: usize,
    pub unauthenticated_connections_per_ip_max: usize,
    /// QUIC handshakes in progress at once; more are refused.
    pub handshakes_max: usize,
    /// Streams an authenticated peer may have open at once.
    pub peer_streams_max: u32,
    /// Bytes an authenticated peer may send ahead of what is read.
    pub peer_receive_window_bytes: u32,
    /// Bytes of frames one connection may have being read and decoded at
    /// once (a frame's length is reserved before its body is read);
    /// further frames wait, and QUIC's flow control holds the peer back.
    pub connection_frames_max_bytes: usize,
    /// Client sessions: the replicated table that makes writes exactly-once.
    /// Every member of a cluster must use the same values.
    pub sessions: crate::session::SessionLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            value_size_max_bytes: 1536 * 1024,
            key_size_max_bytes: 4096,
            request_size_max_bytes: 3 * 1024 * 1024,
            reply_size_max_bytes: 64 * 1024 * 1024,
            watch_queue_max: 4096,
            inflight_proposals_max: 4096,
            watches_max: 10_000,
            range_page_max: 10_000,
            history_retain_revisions: 50_000,
            raft_rpc_timeout_ms: 2_000,
            client_rpc_timeout_ms: 10_000,
            connect_timeout_ms: 2_000,
            keep_alive_ms: 500,
            idle_timeout_ms: 3_000,
            // AppendEntries and leadership checks time out after one
            // heartbeat (openraft's rule), so it must cover a follower's
            // fsync on a busy machine.
            heartbeat_ms: 100,
            // A follower waits openraft's leader lease (the maximum) plus
            // a random timeout in the range after the last heartbeat: a
            // dead leader is replaced 0.75 to 1.0 s after it last spoke.
            // 400-800 was measured side by side against this range
            // (docs/PERFORMANCE.md) and took about twice as long.
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
            snapshot_every_entries: 20_000,
            log_kept_behind_snapshot: 2_000,
            append_entries_max: 1_000,
            snapshot_chunk_bytes: 4 * 1024 * 1024,
            join_timeout_ms: 60_000,
            forward_attempt_timeout_ms: 1_000,
            client_attempt_max_ms: 4_000,
            client_probe_interval_ms: 150,
            client_probe_timeout_ms: 300,
            stale_after_ms: 3_000,
            unauthenticated_frame_max_bytes: 4 * 1024,
            unauthenticated_streams_max: 2,
            unauthenticated_receive_window_bytes: 64 * 1024,
            authenticate_within_ms: 5_000,
            unauthenticated_connections_max: 256,
            unauthenticated_connections_per_ip_max: 32,
            handshakes_max: 256,
            peer_streams_max: 2048,
            peer_receive_window_bytes: 64 * 1024 * 1024,
            connection_frames_max_bytes: 64 * 1024 * 1024,
            sessions: crate::session::SessionLimits::default(),
        }
    }
}

impl Limits {
    /// Sets Raft's timing (etcd's `--heartbeat-interval` and
    /// `--election-timeout`). Every member of a cluster should run the same.
    /// The election range must sit well above the heartbeat, or a follower
    /// starts elections against a leader that is only a little late.
    pub fn with_raft_timing(mut self, heartbeat_ms: u64, election_min_ms: u64, election_max_ms: u64) -> Result<Self, String> {
        if !(10..=10_000).contains(&heartbeat_ms) {
            return Err(format!("heartbeat interval {heartbeat_ms} ms is outside 10 to 10000 ms"));
        }
        if election_min_ms < heartbeat_ms * 2 {
            return Err(format!("election timeout {election_min_ms} ms must be at least twice the heartbeat interval ({heartbeat_ms} ms)"));
        }
        if election_max_ms <= election_min_ms {
            return Err(format!("election timeout range {election_min_ms}-{election_max_ms} ms is empty; give MIN-MAX with MIN below MAX"));
        }
        if election_max_ms > 60_000 {
            return Err(format!("election timeout {election_max_ms} ms is over 60000 ms"));
        }
        self.heartbeat_ms = heartbeat_ms;
        self.election_timeout_min_ms = election_min_ms;
        self.election_timeout_max_ms = election_max_ms;
        Ok(self)
    }

    /// Parses an election range written `MIN-MAX` (milliseconds).
    pub fn parse_election_range(text: &str) -> Result<(u64, u64), String> {
        let bad = || format!("election timeout {text:?} must be MIN-MAX in milliseconds, such as 250-500");
        let (min, max) = text.split_once('-').ok_or_else(bad)?;
        Ok((min.trim().parse().map_err(|_| bad())?, max.trim().parse().map_err(|_| bad())?))
    }

    pub fn raft_rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.raft_rpc_timeout_ms)
    }
    pub fn client_rpc_timeout(&self) -> Duration {
        Duration::from_millis(self.client_rpc_timeout_ms)
    }
    pub fn authenticate_within(&self) -> Duration {
        Duration::from_millis(self.authenticate_within_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
    pub fn client_attempt_max(&self) -> Duration {
        Duration::from_millis(self.client_attempt_max_ms)
    }
    pub fn forward_attempt_timeout(&self) -> Duration {
        Duration::from_millis(self.forward_attempt_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::Limits;

    #[test]
    fn raft_timing_is_checked() {
        let l = Limits::default().with_raft_timing(50, 250, 500).unwrap();
        assert_eq!((l.heartbeat_ms, l.election_timeout_min_ms, l.election_timeout_max_ms), (50, 250, 500));
        assert!(Limits::default().with_raft_timing(100, 150, 500).unwrap_err().contains("twice the heartbeat"));
        assert!(Limits::default().with_raft_timing(100, 500, 500).unwrap_err().contains("is empty"));
        assert!(Limits::default().with_raft_timing(5, 250, 500).unwrap_err().contains("outside 10 to 10000"));
        assert_eq!(Limits::parse_election_range("250-500"), Ok((250, 500)));
        assert!(Limits::parse_election_range("250").unwrap_err().contains("MIN-MAX"));
        assert!(Limits::parse_election_range("a-b").unwrap_err().contains("MIN-MAX"));
    }
}
