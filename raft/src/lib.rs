//! flotilla's replicated store: a versioned key-value store with etcd's
//! semantics (revisions, transactions, prefix ranges, resumable watches,
//! compaction), replicated with openraft over QUIC and kept in RocksDB.
//!
//! It knows nothing of pods or nodes; the object model in `flotilla-actors`
//! stores its objects here. [`Member`] is a running member (used in-process
//! by the server); [`StoreClient`] is the operator's remote client.

// openraft's StorageError, which its storage traits require us to return,
// is large; boxing it at our helpers would only move the copy.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod backup;
pub mod client;
pub mod data_dir;
pub mod db;
pub mod error;
pub mod freshness;
pub mod jwt;
pub mod kv_apply;
pub mod limits;
pub mod linearizability;
pub mod log_store;
pub mod member;
pub mod network;
pub mod server;
pub mod session;
pub mod snapshot_file;
pub mod state_machine;
pub mod tls;
pub mod transport;
pub mod types;
pub mod watch;
pub mod watch_hub;
pub mod wire;

pub use client::{ResumingWatch, StoreClient};
pub use error::{DataDirError, StoreError};
pub use limits::Limits;
pub use member::{Consistency, Member, StartError, StartMode, StoreConfig};
pub use transport::{Fault, Faults};
pub use types::{
    Command, CommandResult, Compare, CompareOp, CompareTarget, Event, EventKind, KeyValue, NodeId, Outcome, Proposal, RangePage, Revisions,
    TxnOp, TxnOpResult,
};
pub use watch::{WatchItem, Watcher};
pub use wire::{MemberInfo, Role};
