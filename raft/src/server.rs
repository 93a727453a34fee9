//! The peer port's server side: accepts QUIC connections, checks who is
//! calling (member certificate, or a token said in `Hello`), and answers
//! each stream's request from the [`Member`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use tracing::Instrument;

use crate::app::AppCaller;
use crate::error::StoreError;
use crate::limits::Limits;
use crate::member::{Consistency, Member, StartError, StoreConfig};
use crate::watch::WatchItem;
use crate::wire::{read_frame_within, write_frame, ReadOp, Reply, Request, PROTOCOL_VERSION};

/// How often an idle watch stream tells the client how far it has got.
const WATCH_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

impl Member {
    /// Starts a member as `config` says, serving its peer port with
    /// [`serve`]; see [`Member::start_serving`].
    pub async fn start(config: StoreConfig) -> Result<Arc<Member>, StartError> {
        Member::start_serving(config, serve_boxed).await
    }
}

fn serve_boxed(endpoint: quinn::Endpoint, member: Weak<Member>) -> futures::future::BoxFuture<'static, ()> {
    Box::pin(serve(endpoint, member))
}

/// What a connection may do, by how it authenticated.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Role {
    /// Nothing yet: `Hello` or `Join` only.
    None = 0,
    /// The agent token: the agent protocol (and the member list, for failover).
    Agent = 1,
    /// A member certificate or the server token: everything.
    Full = 2,
}

/// A connection's role, shared by its streams.
#[derive(Clone)]
struct SharedRole(Arc<AtomicU8>);

impl SharedRole {
    fn new(role: Role) -> Self {
        SharedRole(Arc::new(AtomicU8::new(role as u8)))
    }
    fn get(&self) -> Role {
        match self.0.load(Ordering::Relaxed) {
            2 => Role::Full,
            1 => Role::Agent,
            _ => Role::None,
        }
    }
    fn set(&self, role: Role) {
        self.0.store(role as u8, Ordering::Relaxed);
    }
    /// Never lowers a connection that is already more.
    fn raise_to(&self, role: Role) {
        self.0.fetch_max(role as u8, Ordering::Relaxed);
    }
}

/// What the agent token admits: the agent protocol, and the member list a
/// client probes to find a live member.
fn agent_may(request: &Request) -> bool {
    matches!(request, Request::App(_) | Request::AppStream(_) | Request::Members)
}

/// QUIC application close codes the server uses.
const CLOSE_BUSY: u32 = 1;
const CLOSE_UNAUTHENTICATED: u32 = 2;

/// Counts connections that have not authenticated, overall and per
/// address, so that nobody without a credential holds more than a bounded
/// share of the member.
struct Unauthenticated {
    total: Arc<Semaphore>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    per_ip_max: usize,
}

/// One unauthenticated connection's place; given back when dropped.
struct Admitted<'a> {
    gate: &'a Unauthenticated,
    ip: IpAddr,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl Unauthenticated {
    fn new(limits: &Limits) -> Self {
        Unauthenticated {
            total: Arc::new(Semaphore::new(limits.unauthenticated_connections_max)),
            per_ip: Mutex::new(HashMap::new()),
            per_ip_max: limits.unauthenticated_connections_per_ip_max,
        }
    }

    fn admit(&self, ip: IpAddr) -> Option<Admitted<'_>> {
        let slot = self.total.clone().try_acquire_owned().ok()?;
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = per_ip.entry(ip).or_default();
        if *n >= self.per_ip_max {
            return None;
        }
        *n += 1;
        Some(Admitted { gate: self, ip, _slot: slot })
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut per_ip = self.gate.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

/// Accepts connections until the endpoint closes or the member goes away.
/// Every connection is a task of this one, and ends with it.
pub async fn serve(endpoint: quinn::Endpoint, member: Weak<Member>) {
    let Some(limits) = member.upgrade().map(|m| m.limits().clone()) else { return };
    let limits = Arc::new(limits);
    let gate = Arc::new(Unauthenticated::new(&limits));
    let handshakes = Arc::new(Semaphore::new(limits.handshakes_max));
    let mut connections = JoinSet::new();
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => incoming,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let Some(incoming) = incoming else { return };
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!(remote = %incoming.remote_address(), "too many handshakes in progress; connection refused");
            incoming.refuse();
            continue;
        };
        let (member, limits, gate) = (member.clone(), limits.clone(), gate.clone());
        connections.spawn(async move {
            let remote = incoming.remote_address();
            match tokio::time::timeout(limits.connect_timeout(), incoming).await {
                Ok(Ok(conn)) => {
                    drop(handshake);
                    handle_connection(conn, member, &limits, &gate).await
                }
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "peer connection failed during handshake"),
                Err(_) => tracing::debug!(%remote, "peer handshake took too long"),
            }
        });
    }
}

async fn handle_connection(conn: quinn::Connection, member: Weak<Member>, limits: &Limits, gate: &Unauthenticated) {
    // rustls has already checked any certificate against the cluster CA.
    let is_member = conn.peer_identity().is_some();
    let role = SharedRole::new(if is_member { Role::Full } else { Role::None });
    let remote = conn.remote_address();
    if !is_member && !authenticate(&conn, &member, limits, gate, &role).await {
        return;
    }
    // Authenticated: the connection gets the room the server's transport
    // settings held back until now.
    conn.set_max_concurrent_bi_streams(limits.peer_streams_max.into());
    conn.set_receive_window(limits.peer_receive_window_bytes.into());
    let budget = Arc::new(Semaphore::new(limits.connection_frames_max_bytes.max(limits.request_size_max_bytes)));
    let frame_max = limits.request_size_max_bytes;
    let mut streams = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            s = conn.accept_bi() => s,
            Some(_) = streams.join_next(), if !streams.is_empty() => continue,
        };
        let Ok((send, recv)) = accepted else { return };
        let (member, role, budget) = (member.clone(), role.clone(), budget.clone());
        streams.spawn(async move {
            if let Err(e) = handle_stream(send, recv, member, is_member, role, frame_max, Some(budget)).await {
                tracing::debug!(%remote, error = %e, "peer stream failed");
            }
        });
    }
}

/// Serves a caller without a member certificate its first streams, one at
/// a time, small frames only, until it has said the token in a `Hello`.
/// False when it did not in time, or gave up, or there is no room for it.
async fn authenticate(conn: &quinn::Connection, member: &Weak<Member>, limits: &Limits, gate: &Unauthenticated, role: &SharedRole) -> bool {
    let remote = conn.remote_address();
    let Some(_admitted) = gate.admit(remote.ip()) else {
        tracing::debug!(%remote, "too many unauthenticated connections; closed");
        conn.close(CLOSE_BUSY.into(), b"too many connections that have not authenticated");
        return false;
    };
    let deadline = tokio::time::Instant::now() + limits.authenticate_within();
    for _ in 0..limits.unauthenticated_streams_max {
        let served = tokio::time::timeout_at(deadline, async {
            let (send, recv) = conn.accept_bi().await.ok()?;
            let frame_max = limits.unauthenticated_frame_max_bytes;
            if let Err(e) = handle_stream(send, recv, member.clone(), false, role.clone(), frame_max, None).await {
                tracing::debug!(%remote, error = %e, "peer stream failed before authentication");
            }
            Some(())
        })
        .await;
        match served {
            Ok(Some(())) if role.get() != Role::None => return true,
            Ok(Some(())) => {}
            Ok(None) => return false,
            Err(_) => break,
        }
    }
    tracing::debug!(%remote, "peer did not authenticate; closed");
    conn.close(CLOSE_UNAUTHENTICATED.into(), b"say hello with the cluster token first");
    false
}

async fn handle_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    member: Weak<Member>,
    is_member: bool,
    role: SharedRole,
    frame_max: usize,
    budget: Option<Arc<Semaphore>>,
) -> Result<(), StoreError> {
    let Some(m) = member.upgrade() else {
        return Ok(());
    };
    let request = match read_frame_within::<Request>(&mut recv, frame_max, budget.as_ref()).await {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(()),
        Err(e) => {
            write_frame(&mut send, &Reply::Error(e)).await?;
            let _ = send.finish();
            return Ok(());
        }
    };
    let span = tracing::debug_span!("peer_request", member = m.id(), request = request.name());
    async move {
        if request.is_raft() && !is_member {
            return reply(&mut send, Reply::Error(StoreError::Unauthorized("raft traffic needs a member certificate".into()))).await;
        }
        match &request {
            Request::Hello { version, secret } => {
                let answer = if *version != PROTOCOL_VERSION {
                    Reply::Error(StoreError::Protocol(format!(
                        "peer protocol version {version} is not supported (this member speaks {PROTOCOL_VERSION}); use the same flotilla version"
                    )))
                } else if m.token().secret_matches(secret) {
                    role.set(Role::Full);
                    Reply::Ok
                } else if m.agent_secret_matches(secret).await {
                    role.raise_to(Role::Agent);
                    Reply::Ok
                } else {
                    Reply::Error(StoreError::Unauthorized(
                        "wrong token (or one that was rotated away); agents use DATA_DIR/agent-token, members and store commands DATA_DIR/join-token, on any server".into(),
                    ))
                };
                return reply(&mut send, answer).await;
            }
            Request::HelloNode { version, node, secret } => {
                let known = match m.app_handler() {
                    Some(h) if *version == PROTOCOL_VERSION => h.authenticate_node(node.clone(), secret.clone()).await,
                    _ => false,
                };
                let answer = if *version != PROTOCOL_VERSION {
                    Reply::Error(StoreError::Protocol(format!(
                        "peer protocol version {version} is not supported (this member speaks {PROTOCOL_VERSION}); use the same flotilla version"
                    )))
                } else if known {
                    role.raise_to(Role::Agent);
                    Reply::Ok
                } else {
                    Reply::Error(StoreError::Unauthorized(format!(
                        "node {node:?} has no such credential here: it was never claimed, or the node was deleted and its credential revoked"
                    )))
                };
                return reply(&mut send, answer).await;
            }
            Request::Join { secret, node_id, addr } => {
                let answer = match m.grant_join(secret, *node_id, addr) {
                    Ok(grant) => Reply::Joined(grant),
                    Err(e) => Reply::Error(e),
                };
                return reply(&mut send, answer).await;
            }
            _ => {}
        }
        match role.get() {
            Role::Full => {}
            Role::Agent if agent_may(&request) => {}
            Role::Agent => {
                return reply(
                    &mut send,
                    Reply::Error(StoreError::Unauthorized(format!(
                        "the agent token reaches only the agent protocol, not {}; store commands need the server token (DATA_DIR/join-token)",
                        request.name()
                    ))),
                )
                .await
            }
            Role::None => {
                return reply(&mut send, Reply::Error(StoreError::Unauthorized("say hello with the cluster token first".into()))).await
            }
        }
        if let Request::Watch { prefix, from_revision } = request {
            return stream_watch(&mut send, &m, prefix, from_revision).await;
        }
        if let Request::Backup = request {
            return stream_backup(&mut send, &m).await;
        }
        let caller = if role.get() == Role::Full { AppCaller::Trusted } else { AppCaller::Agent };
        if let Request::AppStream(body) = request {
            return stream_app(&mut send, &m, caller, body).await;
        }
        let answer = dispatch(&m, caller, request).await.unwrap_or_else(Reply::Error);
        reply(&mut send, answer).await
    }
    .instrument(span)
    .await
}

async fn reply(send: &mut quinn::SendStream, reply: Reply) -> Result<(), StoreError> {
    write_frame(send, &reply).await?;
    send.finish().map_err(|e| StoreError::Protocol(e.to_string()))
}

async fn dispatch(m: &Member, caller: AppCaller, request: Request) -> Result<Reply, StoreError> {
    let raft = m.raft();
    Ok(match request {
        Request::AppendEntries(rpc) => {
            let answer = raft.append_entries(rpc).await;
            // An accepted AppendEntries is a leader's word that this
            // member is current.
            if matches!(answer, Ok(openraft::raft::AppendEntriesResponse::Success)) {
                m.mark_current();
            }
            Reply::AppendEntries(answer)
        }
        Request::Vote(rpc) => Reply::Vote(raft.vote(rpc).await),
        Request::InstallSnapshot(rpc) => Reply::InstallSnapshot(raft.install_snapshot(rpc).await),
        Request::Write { session, command } => Reply::Written(m.propose_for(session, command).await?),
        Request::Propose(proposal) => Reply::Written(m.propose_forwarded(proposal).await?),
        Request::Read { op, linearizable } => {
            let consistency = if linearizable { Consistency::Linearizable } else { Consistency::Serializable };
            match op {
                ReadOp::Get { key } => {
                    let (kv, revision) = m.get(&key, consistency).await?;
                    Reply::Value { kv, revision }
                }
                ReadOp::Range { prefix, limit, continue_from } => {
                    Reply::Range(m.range(&prefix, limit, continue_from.as_deref(), consistency).await?)
                }
                ReadOp::Revisions => {
                    if linearizable {
                        m.read_barrier().await?;
                    }
                    Reply::Revisions(m.revisions())
                }
            }
        }
        Request::ReadIndex => Reply::ReadIndex(m.read_index().await?),
        Request::Members => Reply::Members(m.members()),
        Request::AddMember { node_id, addr } => {
            m.add_member(node_id, addr).await?;
            Reply::Ok
        }
        Request::RemoveMember { node_id } => {
            m.remove_member(node_id).await?;
            Reply::Ok
        }
        Request::App(body) => match m.app_handler() {
            Some(h) => Reply::App(h.call(caller, body).await?),
            None => return Err(StoreError::Invalid("this member serves no application requests".into())),
        },
        Request::Hello { .. }
        | Request::HelloNode { .. }
        | Request::Join { .. }
        | Request::Watch { .. }
        | Request::AppStream(_)
        | Request::Backup => return Err(StoreError::Protocol("request handled elsewhere".into())),
    })
}

/// Streams a watch until the client goes away or the watch fails; idle
/// streams get a progress frame so clients can resume from the latest point.
async fn stream_watch(send: &mut quinn::SendStream, m: &Member, prefix: Vec<u8>, from: u64) -> Result<(), StoreError> {
    // A member that cannot tell it is current sends the client elsewhere
    // rather than serve a watch that may be behind.
    if let Err(e) = m.check_current().await {
        return reply(send, Reply::Error(e)).await;
    }
    let mut watcher = match m.watch(prefix, from) {
        Ok(w) => w,
        Err(e) => return reply(send, Reply::Error(e)).await,
    };
    let mut progress = tokio::time::interval(WATCH_PROGRESS_INTERVAL);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let frame = tokio::select! {
            item = watcher.next() => match item {
                Ok(WatchItem::Events { revision, events }) => Reply::WatchEvents { revision, events },
                Err(e) => return reply(send, Reply::Error(e)).await,
            },
            _ = progress.tick() => Reply::WatchProgress { revision: watcher.progress_revision() },
            _ = send.stopped() => return Ok(()),
        };
        write_frame(send, &frame).await?;
    }
}

/// Sends a backup in chunks, then finishes the stream.
async fn stream_backup(send: &mut quinn::SendStream, m: &Member) -> Result<(), StoreError> {
    let sealed = match m.backup().await {
        Ok(bytes) => bytes,
        Err(e) => return reply(send, Reply::Error(e)).await,
    };
    for chunk in sealed.chunks(crate::backup::BACKUP_CHUNK_BYTES) {
        write_frame(send, &Reply::BackupChunk(chunk.to_vec())).await?;
    }
    send.finish().map_err(|e| StoreError::Protocol(e.to_string()))
}

/// Streams an application reply until it ends or the client goes away.
async fn stream_app(send: &mut quinn::SendStream, m: &Member, caller: AppCaller, body: Vec<u8>) -> Result<(), StoreError> {
    let Some(handler) = m.app_handler() else {
        return reply(send, Reply::Error(StoreError::Invalid("this member serves no application requests".into()))).await;
    };
    let mut rx = match handler.stream(caller, body).await {
        Ok(rx) => rx,
        Err(e) => return reply(send, Reply::Error(e)).await,
    };
    loop {
        let item = tokio::select! {
            item = rx.recv() => item,
            _ = send.stopped() => return Ok(()),
        };
        match item {
            Some(Ok(bytes)) => write_frame(send, &Reply::App(bytes)).await?,
            Some(Err(e)) => return reply(send, Reply::Error(e)).await,
            None => {
                let _ = send.finish();
                return Ok(());
            }
        }
    }
}
