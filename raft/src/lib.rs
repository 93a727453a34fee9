//! flotilla's replicated store: a versioned key-value store with etcd's
//! semantics (revisions, transactions, prefix ranges, resumable watches,
//! compaction), replicated with openraft over QUIC and kept in RocksDB.
//!
//! It knows nothing of pods or nodes; the object model in `flotilla-actors`
//! stores its objects here. [`Member`] is a running member (used in-process
//! by the server); [`StoreClient`] is the operator's remote client.

// Without the `storage` feature only the wire formats and credentials are
// built (no RocksDB), so the fuzz targets in `raft/fuzz` build in minutes.

// openraft's StorageError, which its storage traits require us to return,
// is large; boxing it at our helpers would only move the copy.
#![allow(clippy::result_large_err)]

#[cfg(feature = "storage")]
pub mod app;
#[cfg(feature = "storage")]
pub mod backup;
#[cfg(feature = "storage")]
pub mod client;
#[cfg(feature = "storage")]
pub mod data_dir;
#[cfg(feature = "storage")]
pub mod db;
pub mod error;
#[cfg(feature = "storage")]
pub mod freshness;
pub mod jwt;
#[cfg(feature = "storage")]
pub mod kv_apply;
pub mod limits;
#[cfg(feature = "storage")]
pub mod linearizability;
#[cfg(feature = "storage")]
pub mod log_store;
#[cfg(feature = "storage")]
pub mod member;
#[cfg(feature = "storage")]
pub mod network;
#[cfg(feature = "storage")]
pub mod server;
pub mod session;
#[cfg(feature = "storage")]
pub mod snapshot_file;
#[cfg(feature = "storage")]
pub mod state_machine;
pub mod tls;
#[cfg(feature = "storage")]
pub mod transport;
pub mod types;
#[cfg(feature = "storage")]
pub mod watch;
#[cfg(feature = "storage")]
pub mod watch_hub;
pub mod wire;

#[cfg(feature = "storage")]
pub use client::{ResumingWatch, StoreClient};
pub use error::{DataDirError, StoreError};
pub use limits::Limits;
#[cfg(feature = "storage")]
pub use member::{Consistency, Member, StartError, StartMode, StoreConfig};
#[cfg(feature = "storage")]
pub use transport::{Fault, Faults};
pub use types::{
    Command, CommandResult, Compare, CompareOp, CompareTarget, Event, EventKind, KeyValue, NodeId, Outcome, Proposal, RangePage, Revisions,
    TxnOp, TxnOpResult,
};
#[cfg(feature = "storage")]
pub use watch::{WatchItem, Watcher};
pub use wire::{MemberInfo, Role};
