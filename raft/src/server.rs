//! The peer port's server side: accepts QUIC connections, checks who is
//! calling (member certificate, or a token said in `Hello`), and answers
//! each stream's request from the [`Member`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tracing::Instrument;

use crate::error::StoreError;
use crate::member::{Consistency, Member};
use crate::watch::WatchItem;
use crate::wire::{read_frame, write_frame, ReadOp, Reply, Request, PROTOCOL_VERSION};

/// How often an idle watch stream tells the client how far it has got.
const WATCH_PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// Accepts connections until the endpoint closes or the member goes away.
pub async fn serve(endpoint: quinn::Endpoint, member: Weak<Member>) {
    while let Some(incoming) = endpoint.accept().await {
        let member = member.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => handle_connection(conn, member).await,
                Err(e) => {
                    tracing::debug!(%remote, error = %e, "peer connection failed during handshake")
                }
            }
        });
    }
}

async fn handle_connection(conn: quinn::Connection, member: Weak<Member>) {
    // rustls has already checked any certificate against the cluster CA.
    let is_member = conn.peer_identity().is_some();
    let authenticated = Arc::new(AtomicBool::new(is_member));
    let remote = conn.remote_address();
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(_) => return,
        };
        let member = member.clone();
        let authenticated = authenticated.clone();
        tokio::spawn(async move {
            if let Err(e) = handle_stream(send, recv, member, is_member, authenticated).await {
                tracing::debug!(%remote, error = %e, "peer stream failed");
            }
        });
    }
}

async fn handle_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    member: Weak<Member>,
    is_member: bool,
    authenticated: Arc<AtomicBool>,
) -> Result<(), StoreError> {
    let Some(m) = member.upgrade() else {
        return Ok(());
    };
    let request = match read_frame::<Request>(&mut recv, m.limits().request_size_max_bytes).await {
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
                    authenticated.store(true, Ordering::Relaxed);
                    Reply::Ok
                } else {
                    Reply::Error(StoreError::Unauthorized("wrong token; use the cluster's join token (DATA_DIR/join-token on the first server)".into()))
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
        if !authenticated.load(Ordering::Relaxed) {
            return reply(&mut send, Reply::Error(StoreError::Unauthorized("say hello with the cluster token first".into()))).await;
        }
        if let Request::Watch { prefix, from_revision } = request {
            return stream_watch(&mut send, &m, prefix, from_revision).await;
        }
        if let Request::Backup = request {
            return stream_backup(&mut send, &m).await;
        }
        if let Request::AppStream(body) = request {
            return stream_app(&mut send, &m, body).await;
        }
        let answer = dispatch(&m, request).await.unwrap_or_else(Reply::Error);
        reply(&mut send, answer).await
    }
    .instrument(span)
    .await
}

async fn reply(send: &mut quinn::SendStream, reply: Reply) -> Result<(), StoreError> {
    write_frame(send, &reply).await?;
    send.finish().map_err(|e| StoreError::Protocol(e.to_string()))
}

async fn dispatch(m: &Member, request: Request) -> Result<Reply, StoreError> {
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
            Some(h) => Reply::App(h.call(body).await?),
            None => return Err(StoreError::Invalid("this member serves no application requests".into())),
        },
        Request::Hello { .. } | Request::Join { .. } | Request::Watch { .. } | Request::AppStream(_) | Request::Backup => {
            return Err(StoreError::Protocol("request handled elsewhere".into()))
        }
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
async fn stream_app(send: &mut quinn::SendStream, m: &Member, body: Vec<u8>) -> Result<(), StoreError> {
    let Some(handler) = m.app_handler() else {
        return reply(send, Reply::Error(StoreError::Invalid("this member serves no application requests".into()))).await;
    };
    let mut rx = match handler.stream(body).await {
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
