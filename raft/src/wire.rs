//! The peer protocol: one QUIC bidirectional stream per request, carrying a
//! length-prefixed bincode frame each way (many reply frames for a watch).

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::StoreError;
use crate::session::Session;
use crate::types::{Command, CommandResult, Event, KeyValue, NodeId, Proposal, RangePage, Revisions, TypeConfig};

/// Bumped when a frame's shape changes; peers with another version are refused.
pub const PROTOCOL_VERSION: u32 = 2;

/// A request on the peer port.
#[derive(Serialize, Deserialize, Debug)]
pub enum Request {
    /// Authenticates a connection that has no member certificate.
    Hello {
        version: u32,
        secret: String,
    },
    /// First step of joining: proves the token and asks for the cluster's CA.
    Join {
        secret: String,
        node_id: NodeId,
        addr: String,
    },
    /// Adds a started member: learner first, voter once caught up.
    AddMember {
        node_id: NodeId,
        addr: String,
    },
    RemoveMember {
        node_id: NodeId,
    },
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A client's write under its session; retries carry the same session.
    Write {
        session: Session,
        command: Command,
    },
    /// A write carried from the member that took it to the leader.
    Propose(Proposal),
    Read {
        op: ReadOp,
        linearizable: bool,
    },
    /// A follower asks the leader for the index a linearizable read must wait for.
    ReadIndex,
    Watch {
        prefix: Vec<u8>,
        from_revision: u64,
    },
    Members,
    /// A backup of everything applied, answered by `Reply::BackupChunk` frames.
    Backup,
    /// An application request (see `app.rs`); opaque to the store.
    App(Vec<u8>),
    /// An application request answered by a stream of `Reply::App` frames.
    AppStream(Vec<u8>),
}

impl Request {
    /// Raft's own RPCs, accepted only from members.
    pub fn is_raft(&self) -> bool {
        matches!(self, Request::AppendEntries(_) | Request::Vote(_) | Request::InstallSnapshot(_) | Request::Propose(_))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "hello",
            Request::Join { .. } => "join",
            Request::AddMember { .. } => "add-member",
            Request::RemoveMember { .. } => "remove-member",
            Request::AppendEntries(_) => "append-entries",
            Request::Vote(_) => "vote",
            Request::InstallSnapshot(_) => "install-snapshot",
            Request::Write { .. } => "write",
            Request::Propose(_) => "propose",
            Request::Read { .. } => "read",
            Request::ReadIndex => "read-index",
            Request::Watch { .. } => "watch",
            Request::Members => "members",
            Request::Backup => "backup",
            Request::App(_) => "app",
            Request::AppStream(_) => "app-stream",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum ReadOp {
    Get { key: Vec<u8> },
    Range { prefix: Vec<u8>, limit: usize, continue_from: Option<Vec<u8>> },
    Revisions,
}

/// A member as `flotilla store members` shows it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: NodeId,
    pub addr: String,
    pub role: Role,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
    Learner,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Learner => "learner",
        })
    }
}

/// What a joining member receives.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct JoinGrant {
    pub cluster_id: String,
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
}

/// A reply frame.
#[derive(Serialize, Deserialize, Debug)]
pub enum Reply {
    Ok,
    Joined(JoinGrant),
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Written(CommandResult),
    Value {
        kv: Option<KeyValue>,
        revision: u64,
    },
    Range(RangePage),
    Revisions(Revisions),
    ReadIndex(Option<u64>),
    Members(Vec<MemberInfo>),
    App(Vec<u8>),
    /// Changes up to and including `revision` (a watch sends many).
    WatchEvents {
        revision: u64,
        events: Vec<Event>,
    },
    /// One piece of a backup; the stream ends after the last.
    BackupChunk(Vec<u8>),
    /// Nothing matched up to `revision`; lets a watcher advance its resume point.
    WatchProgress {
        revision: u64,
    },
    Error(StoreError),
}

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| StoreError::Protocol(format!("encode: {e}")))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    let (value, read) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(|e| StoreError::Protocol(format!("malformed frame: {e}")))?;
    if read != bytes.len() {
        return Err(StoreError::Protocol(format!("{} trailing bytes after frame", bytes.len() - read)));
    }
    Ok(value)
}

/// Writes one length-prefixed frame.
pub async fn write_frame<T: Serialize>(send: &mut quinn::SendStream, value: &T) -> Result<(), StoreError> {
    let body = encode(value)?;
    let len = u32::try_from(body.len()).map_err(|_| StoreError::Protocol("frame over 4 GiB".into()))?;
    let mut buf = Vec::with_capacity(body.len() + 4);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&body);
    send.write_all(&buf).await.map_err(|e| StoreError::Unreachable { addr: String::new(), reason: format!("write: {e}") })
}

/// Reads one frame; `None` when the peer finished the stream cleanly.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut quinn::RecvStream, max_bytes: usize) -> Result<Option<T>, StoreError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(StoreError::Protocol(format!("stream ended {n} bytes into a frame header")))
        }
        // The connection or stream went away: the peer may be down.
        Err(quinn::ReadExactError::ReadError(e)) => return Err(StoreError::Unreachable { addr: String::new(), reason: e.to_string() }),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max_bytes {
        return Err(StoreError::Invalid(format!("request of {len} bytes is over the limit of {max_bytes} bytes")));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| match e {
        quinn::ReadExactError::ReadError(e) => StoreError::Unreachable { addr: String::new(), reason: e.to_string() },
        other => StoreError::Protocol(format!("read: {other}")),
    })?;
    decode(&body).map(Some)
}
