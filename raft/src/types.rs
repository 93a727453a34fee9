//! The store's data model: what a client proposes ([`Command`]), what the
//! state machine answers ([`CommandResult`]), and what it keeps per key
//! ([`KeyValue`]) and per change ([`Event`]). Everything here crosses the wire
//! and sits on disk, so it is plain serde data.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

/// A member's id in the Raft group; chosen by the operator (`--id N`).
pub type NodeId = u64;

/// What openraft stores about a member: the address its peers dial.
pub type Member = openraft::BasicNode;

openraft::declare_raft_types!(
    /// openraft's type bundle for flotilla's store.
    pub TypeConfig:
        D = Proposal,
        R = CommandResult,
        NodeId = NodeId,
        Node = Member,
        SnapshotData = Cursor<Vec<u8>>,
);

/// One key's current state, with etcd's three counters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// Revision of the write that created the key (since its last delete).
    pub create_revision: u64,
    /// Revision of the last write to the key.
    pub mod_revision: u64,
    /// Number of writes since creation; 1 after the first put.
    pub version: u64,
}

/// Whether a change wrote or removed a key.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// One change to one key, as watchers see it. For a delete, `kv` holds the
/// last value the key had, with `mod_revision` set to the deleting revision,
/// so a watcher can still tell what went away.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    pub kv: KeyValue,
}

/// One entry of the Raft log: a write, who sent it, and when the member
/// that took it from its client received it. The session makes a retried
/// or re-proposed copy harmless (see `session.rs`); the stamp is the state
/// machine's only clock.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub session: Session,
    /// Wall-clock milliseconds at the member that first received the write.
    pub stamp_ms: u64,
    pub command: Command,
}

/// A write proposed through Raft. Every member applies it identically.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// Deletes one key, or with `prefix` every key starting with `key`.
    Delete {
        key: Vec<u8>,
        prefix: bool,
    },
    Txn(Txn),
    /// Forgets history before `revision`; watches from older revisions then
    /// answer "compacted".
    Compact {
        revision: u64,
    },
}

/// An atomic compare-then-act, as etcd's `Txn`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Compare {
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Greater,
    Less,
}

/// What a [`Compare`] looks at. A missing key has value "absent", and
/// revisions and version 0, as in etcd.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    Value(Option<Vec<u8>>),
    ModRevision(u64),
    CreateRevision(u64),
    Version(u64),
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum TxnOp {
    Put { key: Vec<u8>, value: Vec<u8> },
    Delete { key: Vec<u8>, prefix: bool },
    Get { key: Vec<u8> },
}

/// The result of one [`TxnOp`].
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum TxnOpResult {
    Put { prev: Option<KeyValue> },
    Delete { deleted: u64 },
    Get { kv: Option<KeyValue> },
}

/// What applying a log entry produced. `revision` is the store's revision
/// after the entry (unchanged if the entry wrote nothing).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct CommandResult {
    pub revision: u64,
    pub outcome: Outcome,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Blank and membership entries.
    None,
    Put {
        prev: Option<KeyValue>,
    },
    Delete {
        deleted: u64,
    },
    Txn {
        succeeded: bool,
        results: Vec<TxnOpResult>,
    },
    Compacted,
    /// The command was valid when proposed but cannot be applied now, e.g. a
    /// compaction to a revision that is already compacted. Nothing changed.
    Rejected(String),
    /// A copy of a request its client has already moved past (answered
    /// elsewhere or given up). Nothing changed; whoever waits on this copy
    /// must report the outcome as unknown.
    Refused(String),
}

/// A page of keys from a range read.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct RangePage {
    pub kvs: Vec<KeyValue>,
    /// True when the range holds more keys after the last one returned.
    pub more: bool,
    /// The store's revision the page was read at.
    pub revision: u64,
}

/// The store's revision counters at one moment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Revisions {
    pub revision: u64,
    /// History before this revision is gone.
    pub compact_revision: u64,
}

/// A client's id: random, chosen by the client when it starts.
pub type ClientId = u128;

/// What a write says about who sent it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub client: ClientId,
    /// This request's number; every new request of the client gets a new one,
    /// every retry of a request keeps it.
    pub seq: u64,
    /// Every request below this has been answered to the client or given up
    /// by it: the state machine may forget their results, and must never
    /// apply them.
    pub ack_below: u64,
}
