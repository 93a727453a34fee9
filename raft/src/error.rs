//! What can go wrong in the store, split by what a caller can do about it.

use crate::types::NodeId;

/// Errors from the store's API, local or remote.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub enum StoreError {
    /// The request itself is wrong (too large, empty key...). Not retryable.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A value is over `value_size_max_bytes`.
    #[error("value of {size} bytes is over the limit of {limit} bytes")]
    ValueTooLarge { size: usize, limit: usize },
    /// A watch asked for history that compaction removed.
    #[error("revision {requested} is compacted; the oldest revision still held is {compact_revision}: list again and watch from the list's revision")]
    Compacted { requested: u64, compact_revision: u64 },
    /// The cluster has no leader right now (election in progress, or no
    /// majority reachable). Retryable.
    #[error("no leader: {0}; retry once a majority of members is up")]
    NoLeader(String),
    /// A peer did not answer in time. Retryable.
    #[error("{addr} did not answer within {timeout_ms} ms: is a flotilla server listening there?")]
    Timeout { addr: String, timeout_ms: u64 },
    /// A peer could not be reached. Retryable.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The token or certificate was refused. Not retryable with the same token.
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// A watcher fell too far behind and was cut off. Resume from the last revision seen.
    #[error("watch fell more than {queue_max} changes behind and was cut off; resume from the last revision received")]
    WatchOverflow { queue_max: usize },
    /// Membership change refused.
    #[error("membership: {0}")]
    Membership(String),
    /// Another membership change is in progress. Retryable.
    #[error("busy: {0}; retry shortly")]
    Busy(String),
    /// The member is shutting down or its storage failed. Not retryable on this member.
    #[error("store failure on member {member}: {reason}")]
    Fatal { member: NodeId, reason: String },
    /// A protocol violation from a peer (bad frame, wrong version).
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A write was sent but no answer came within its deadline: it may or
    /// may not have been applied (it will never be applied twice). Read
    /// the key to find out before acting on it again.
    #[error("the write may or may not have been applied: {0}; read it back to find out")]
    Indeterminate(String),
    /// This member cannot confirm that it is current (no leader heard from
    /// for a while): what it serves may be behind. Retryable on another member.
    #[error("member {member} has not heard from a leader for {since_ms} ms, so what it serves may be behind; use another member")]
    Stale { member: NodeId, since_ms: u64 },
}

impl StoreError {
    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::NoLeader(_)
                | StoreError::Timeout { .. }
                | StoreError::Unreachable { .. }
                | StoreError::Busy(_)
                | StoreError::Stale { .. }
        )
    }
}

/// Errors opening or creating a member's data directory.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Wrong or unreadable files on disk; the message says which and what to do.
    #[error("data directory {dir}: {reason}")]
    Invalid { dir: String, reason: String },
    /// RocksDB refused to open (corrupt files, or another process holds the lock).
    #[error("data directory {dir}: cannot open the database: {reason}")]
    Database { dir: String, reason: String },
    #[error("data directory {dir}: {source}")]
    Io { dir: String, source: std::io::Error },
}
