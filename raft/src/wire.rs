//! The peer protocol: one QUIC bidirectional stream per request, carrying a
//! length-prefixed bincode frame each way (many reply frames for a watch).

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest, VoteResponse,
};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::error::StoreError;
use crate::limits::FRAME_BODY_TIMEOUT;
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
    /// Authenticates a node agent's connection with its node credential
    /// (checked by the application, see `AppHandler::authenticate_node`),
    /// so an agent that has claimed its node needs no join token again.
    HelloNode {
        version: u32,
        node: String,
        secret: String,
    },
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
            Request::HelloNode { .. } => "hello-node",
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

/// Decodes a value the store wrote itself (its records, a backup): with
/// serde, bincode only reserves memory for strings and byte strings, which
/// a valid input holds in full, so its own length is the bound.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    decode_within(bytes, bytes.len())
}

const DECODE_TIER_SMALL_BYTES: usize = 64 * 1024;
const DECODE_TIER_MEDIUM_BYTES: usize = 4 * 1024 * 1024;
const DECODE_TIER_LARGE_BYTES: usize = 64 * 1024 * 1024;
const DECODE_TIER_HUGE_BYTES: usize = 1024 * 1024 * 1024;

/// Decodes `bytes` with bincode's allocation limit set to the first tier
/// at or above `max_bytes` (and the input's length). A length inside a
/// frame (a string's, a vector's) is checked against that limit before
/// anything is allocated for it, so a 15-byte frame that claims a 2^62-byte
/// string is refused instead of aborting the process.
pub fn decode_within<T: DeserializeOwned>(bytes: &[u8], max_bytes: usize) -> Result<T, StoreError> {
    let need = max_bytes.max(bytes.len());
    if need <= DECODE_TIER_SMALL_BYTES {
        decode_with(bytes, config().with_limit::<DECODE_TIER_SMALL_BYTES>())
    } else if need <= DECODE_TIER_MEDIUM_BYTES {
        decode_with(bytes, config().with_limit::<DECODE_TIER_MEDIUM_BYTES>())
    } else if need <= DECODE_TIER_LARGE_BYTES {
        decode_with(bytes, config().with_limit::<DECODE_TIER_LARGE_BYTES>())
    } else {
        decode_with(bytes, config().with_limit::<DECODE_TIER_HUGE_BYTES>())
    }
}

fn decode_with<T: DeserializeOwned, C: bincode::config::Config>(bytes: &[u8], config: C) -> Result<T, StoreError> {
    let (value, read) =
        bincode::serde::decode_from_slice(bytes, config).map_err(|e| StoreError::Protocol(format!("malformed frame: {e}")))?;
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
    read_frame_within(recv, max_bytes, None).await
}

/// Reads one frame of at most `max_bytes`. With a `budget` (the bytes a
/// connection may have in frames at once), the frame's length is reserved
/// from it before its body is read and given back once it is decoded; the
/// body is read as it arrives (never allocated ahead of the bytes) and
/// must arrive within [`FRAME_BODY_TIMEOUT`].
pub async fn read_frame_within<T: DeserializeOwned>(
    recv: &mut quinn::RecvStream,
    max_bytes: usize,
    budget: Option<&Arc<Semaphore>>,
) -> Result<Option<T>, StoreError> {
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
    let _reserved = match budget {
        // A frame larger than the whole budget could never be admitted;
        // the caller sizes the budget above `max_bytes`.
        Some(b) => Some(
            b.clone()
                .acquire_many_owned(u32::try_from(len).unwrap_or(u32::MAX))
                .await
                .map_err(|_| StoreError::Unreachable { addr: String::new(), reason: "the connection is closing".into() })?,
        ),
        None => None,
    };
    let body = tokio::time::timeout(FRAME_BODY_TIMEOUT, read_body(recv, len))
        .await
        .map_err(|_| StoreError::Protocol(format!("a frame of {len} bytes did not arrive within {} s", FRAME_BODY_TIMEOUT.as_secs())))??;
    decode_within(&body, max_bytes).map(Some)
}

async fn read_body(recv: &mut quinn::RecvStream, len: usize) -> Result<Vec<u8>, StoreError> {
    // Grows with what arrives: a peer that announces a large frame and
    // sends little costs little.
    let mut body = Vec::with_capacity(len.min(64 * 1024));
    while body.len() < len {
        match recv.read_chunk(len - body.len(), true).await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk.bytes),
            Ok(None) => return Err(StoreError::Protocol(format!("stream ended {} bytes into a frame of {len}", body.len()))),
            Err(e) => return Err(StoreError::Unreachable { addr: String::new(), reason: e.to_string() }),
        }
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64: garbage that is the same on every run.
    struct Garbage(u64);
    impl Garbage {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn a_frame_claiming_more_than_its_limit_is_refused_before_allocating() {
        // Hello { version: 1, secret: <2^62 bytes> }.
        let body = [0x00, 0x01, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40];
        let e = decode_within::<Request>(&body, 4096).expect_err("refused");
        assert!(e.to_string().contains("malformed frame"), "{e}");
        // What the store wrote itself is bounded by its own length the same way.
        assert!(decode::<Request>(&body).is_err());
    }

    #[test]
    fn valid_frames_still_decode_under_their_limits() {
        let hello = Request::Hello { version: PROTOCOL_VERSION, secret: "ab".repeat(16) };
        let bytes = encode(&hello).unwrap();
        assert!(matches!(decode_within::<Request>(&bytes, 4096).unwrap(), Request::Hello { secret, .. } if secret.len() == 32));
        let big = Request::AppStream(vec![7u8; 3 * 1024 * 1024]);
        let bytes = encode(&big).unwrap();
        assert!(matches!(decode_within::<Request>(&bytes, 3 * 1024 * 1024 + 16).unwrap(), Request::AppStream(b) if b.len() == 3 << 20));
    }

    /// Random bytes, and valid frames with bytes changed, decode to a value
    /// or an error: never a panic, never an allocation past the limit.
    #[test]
    fn garbage_never_panics_the_decoder() {
        let mut g = Garbage(0x2545_f491_4f6c_dd1d);
        let valid: Vec<Vec<u8>> = vec![
            encode(&Request::Hello { version: PROTOCOL_VERSION, secret: "00".repeat(16) }).unwrap(),
            encode(&Request::Join { secret: "s".into(), node_id: 2, addr: "127.0.0.1:1".into() }).unwrap(),
            encode(&Request::AppStream(b"{\"ListPods\":{\"node\":\"a\"}}".to_vec())).unwrap(),
            encode(&Request::Members).unwrap(),
        ];
        for round in 0..200_000u32 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                let len = (g.next() % 48) as usize;
                (0..len).map(|_| g.next() as u8).collect()
            } else {
                let mut b = valid[(g.next() % valid.len() as u64) as usize].clone();
                for _ in 0..1 + g.next() % 4 {
                    let i = (g.next() % b.len() as u64) as usize;
                    b[i] = g.next() as u8;
                }
                b
            };
            let _ = decode_within::<Request>(&bytes, 4096);
            let _ = decode_within::<Reply>(&bytes, 4096);
        }
    }
}
