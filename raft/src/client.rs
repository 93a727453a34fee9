//! The operator's client (what `flotilla store` uses): dials a member with
//! the join token and calls the store's API over the peer port. Given several
//! addresses it moves on to the next when one does not answer. Its watch
//! resumes after a broken connection from the last revision it delivered.

use std::collections::VecDeque;

use crate::error::StoreError;
use crate::limits::Limits;
use crate::member::token_transport;
use crate::session::SessionClient;
use crate::tls::JoinToken;
use crate::transport::{HelloAs, Transport};
use crate::types::{Command, CommandResult, Event, KeyValue, NodeId, Outcome, RangePage, Revisions};
use crate::wire::{read_frame, MemberInfo, ReadOp, Reply, Request};

/// A client of the store, over QUIC, authenticated by the join token.
pub struct StoreClient {
    transport: Transport,
    peers: Vec<String>,
    limits: Limits,
    /// The peer that answered last; tried first, so a dead peer early in the
    /// list costs one timeout, not one per call.
    preferred: std::sync::atomic::AtomicUsize,
    /// Every write carries this client's session, so a write retried after
    /// a lost reply is applied once.
    session: SessionClient,
}

impl StoreClient {
    /// `peers` are tried in order. Nothing is dialled until the first call.
    pub fn new(peers: Vec<String>, token: &str) -> Result<Self, StoreError> {
        let token = JoinToken::parse(token).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let limits = Limits::default();
        if peers.is_empty() {
            return Err(StoreError::Invalid("no peer address given".into()));
        }
        Ok(StoreClient {
            transport: token_transport(&token, &limits)?,
            peers,
            limits,
            preferred: Default::default(),
            session: SessionClient::new(),
        })
    }

    /// Like [`StoreClient::new`], but each connection is authenticated by
    /// node `node`'s credential instead of the token, whose CA pin alone is
    /// used: an agent that has claimed its node keeps working after the
    /// agent token is rotated.
    pub fn as_node(peers: Vec<String>, token: &str, node: &str, secret: &str) -> Result<Self, StoreError> {
        let token = JoinToken::parse(token).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let limits = Limits::default();
        if peers.is_empty() {
            return Err(StoreError::Invalid("no peer address given".into()));
        }
        let config = token.client_config(&limits).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let hello = HelloAs::Node { node: node.to_string(), secret: secret.to_string() };
        Ok(StoreClient {
            transport: Transport::new(Transport::client_endpoint()?, config, Some(hello), limits.clone()),
            peers,
            limits,
            preferred: Default::default(),
            session: SessionClient::new(),
        })
    }

    pub fn peers(&self) -> &[String] {
        &self.peers
    }

    /// The peers in the order to try them: the last one that answered first.
    fn ordered_peers(&self) -> impl Iterator<Item = (usize, &String)> {
        let start = self.preferred.load(std::sync::atomic::Ordering::Relaxed) % self.peers.len();
        self.peers.iter().enumerate().cycle().skip(start).take(self.peers.len())
    }

    /// Sends `request` to the first peer that answers.
    pub async fn call(&self, request: &Request) -> Result<Reply, StoreError> {
        self.call_within(request, self.limits.client_rpc_timeout()).await
    }

    /// Sends `request` to the first peer that answers within `timeout`
    /// (each peer gets the whole timeout). A short timeout lets frequent
    /// small calls, like heartbeats, leave a silently dead member quickly.
    pub async fn call_within(&self, request: &Request, timeout: std::time::Duration) -> Result<Reply, StoreError> {
        let mut last = None;
        for (i, peer) in self.ordered_peers() {
            match self.transport.call(peer, request, timeout).await {
                Ok(reply) => {
                    self.preferred.store(i, std::sync::atomic::Ordering::Relaxed);
                    return Ok(reply);
                }
                Err(e) if e.is_retryable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Invalid("no peer address given".into())))
    }

    /// Sends `request` to one member after another until one answers or the
    /// client deadline passes. Only for requests that are safe to repeat:
    /// reads, and writes under a session.
    ///
    /// A member is left as soon as it stops answering, not after a fixed
    /// deadline: while a try is slow, the member is asked for its
    /// membership every probe interval, and the first probe that goes
    /// unanswered ends the try. So a member that died or froze costs about
    /// one probe timeout, while a live member that is waiting out an
    /// election (forwarding to a leader that just died) keeps the request
    /// and answers as soon as the new leader does.
    async fn call_retrying(&self, request: &Request) -> Result<Reply, StoreError> {
        let timeout = self.limits.client_rpc_timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        let n = self.peers.len();
        let mut next = self.preferred.load(std::sync::atomic::Ordering::Relaxed) % n;
        let mut last: Option<StoreError> = None;
        let mut tries = 0usize;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            let peer = &self.peers[next];
            let attempt = self.transport.call(peer, request, self.limits.client_attempt_max().min(left));
            let outcome = tokio::select! {
                r = attempt => r,
                e = self.stops_answering(peer) => Err(e),
            };
            match outcome {
                Ok(reply) => {
                    self.preferred.store(next, std::sync::atomic::Ordering::Relaxed);
                    return Ok(reply);
                }
                // The member took the write and cannot say what became of
                // it (it gave up, or the session table refused a request
                // the client had already left): another member would say
                // the same.
                Err(e @ StoreError::Indeterminate(_)) => return Err(e),
                Err(e) if e.is_retryable() || matches!(e, StoreError::Fatal { .. }) => {
                    tracing::debug!(%peer, error = %e, "member did not answer; trying the next");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
            next = (next + 1) % n;
            tries += 1;
            // After a full round, pause a little so a cluster in an
            // election is not hammered.
            if tries.is_multiple_of(n) {
                tokio::time::sleep(std::time::Duration::from_millis(self.limits.heartbeat_ms).min(left)).await;
            }
        }
        Err(last.unwrap_or_else(|| StoreError::NoLeader(format!("no member answered within {} ms", timeout.as_millis()))))
    }

    /// Resolves, with the error to report, once `peer` leaves a probe
    /// unanswered; the first probe goes out after the probe interval, so a
    /// quick call sends none.
    async fn stops_answering(&self, peer: &str) -> StoreError {
        let interval = std::time::Duration::from_millis(self.limits.client_probe_interval_ms);
        let probe_timeout = std::time::Duration::from_millis(self.limits.client_probe_timeout_ms);
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = self.transport.call(peer, &Request::Members, probe_timeout).await {
                return StoreError::Unreachable { addr: peer.to_string(), reason: format!("stopped answering probes: {e}") };
            }
        }
    }

    /// Calls one given peer only (for tools that target a member).
    pub async fn call_peer(&self, peer: &str, request: &Request) -> Result<Reply, StoreError> {
        self.transport.call(peer, request, self.limits.client_rpc_timeout()).await
    }

    /// Writes under this client's session: retried on every member until
    /// the deadline, applied at most once. A write that got no answer is
    /// reported as [`StoreError::Indeterminate`], never as a failure.
    pub async fn write(&self, command: Command) -> Result<CommandResult, StoreError> {
        let ticket = self.session.begin();
        let request = Request::Write { session: ticket.session(), command };
        match self.call_retrying(&request).await {
            Ok(Reply::Written(r)) => Ok(r),
            Ok(other) => Err(unexpected(other)),
            // Any retryable failure may have come after a member took the
            // write: its outcome is unknown.
            Err(e) if e.is_retryable() || matches!(e, StoreError::Fatal { .. }) => Err(StoreError::Indeterminate(e.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Puts a value; answers the revision of the write.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
        Ok(self.write(Command::Put { key: key.to_vec(), value: value.to_vec() }).await?.revision)
    }

    /// Deletes a key or prefix; answers (keys deleted, revision).
    pub async fn delete(&self, key: &[u8], prefix: bool) -> Result<(u64, u64), StoreError> {
        let r = self.write(Command::Delete { key: key.to_vec(), prefix }).await?;
        match r.outcome {
            Outcome::Delete { deleted } => Ok((deleted, r.revision)),
            other => Err(StoreError::Protocol(format!("unexpected delete outcome {other:?}"))),
        }
    }

    /// An atomic compare-then-act under this client's session.
    pub async fn txn(
        &self,
        compares: Vec<crate::types::Compare>,
        success: Vec<crate::types::TxnOp>,
        failure: Vec<crate::types::TxnOp>,
    ) -> Result<CommandResult, StoreError> {
        self.write(Command::Txn(crate::types::Txn { compares, success, failure })).await
    }

    pub async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        match self.write(Command::Compact { revision }).await?.outcome {
            Outcome::Rejected(reason) => Err(StoreError::Invalid(reason)),
            _ => Ok(()),
        }
    }

    pub async fn get(&self, key: &[u8], linearizable: bool) -> Result<(Option<KeyValue>, u64), StoreError> {
        match self.call_retrying(&Request::Read { op: ReadOp::Get { key: key.to_vec() }, linearizable }).await? {
            Reply::Value { kv, revision } => Ok((kv, revision)),
            other => Err(unexpected(other)),
        }
    }

    pub async fn range(
        &self,
        prefix: &[u8],
        limit: usize,
        continue_from: Option<Vec<u8>>,
        linearizable: bool,
    ) -> Result<RangePage, StoreError> {
        let op = ReadOp::Range { prefix: prefix.to_vec(), limit, continue_from };
        match self.call_retrying(&Request::Read { op, linearizable }).await? {
            Reply::Range(page) => Ok(page),
            other => Err(unexpected(other)),
        }
    }

    /// Every key under `prefix`, page by page, all read at the first page's
    /// revision or later.
    pub async fn list(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, StoreError> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let page = self.range(prefix, 0, cursor.take(), true).await?;
            cursor = page.kvs.last().map(|kv| kv.key.clone());
            out.extend(page.kvs);
            if !page.more {
                return Ok(out);
            }
        }
    }

    pub async fn revisions(&self) -> Result<Revisions, StoreError> {
        match self.call(&Request::Read { op: ReadOp::Revisions, linearizable: true }).await? {
            Reply::Revisions(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    pub async fn members(&self) -> Result<Vec<MemberInfo>, StoreError> {
        match self.call(&Request::Members).await? {
            Reply::Members(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    pub async fn remove_member(&self, node_id: NodeId) -> Result<(), StoreError> {
        self.call(&Request::RemoveMember { node_id }).await.map(|_| ())
    }

    /// A watch that survives broken connections and member failures: it
    /// re-dials (trying every peer) and resumes after the last revision it
    /// delivered, so no change is missed or seen twice.
    pub fn watch(&self, prefix: Vec<u8>, from_revision: u64) -> ResumingWatch<'_> {
        ResumingWatch { client: self, prefix, next_revision: from_revision, stream: None, buffered: VecDeque::new() }
    }

    /// An application request to the first member that answers.
    pub async fn app_call(&self, body: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        self.app_call_within(body, self.limits.client_rpc_timeout()).await
    }

    /// An application request to the first member that answers within
    /// `timeout`.
    pub async fn app_call_within(&self, body: Vec<u8>, timeout: std::time::Duration) -> Result<Vec<u8>, StoreError> {
        match self.call_within(&Request::App(body), timeout).await? {
            Reply::App(bytes) => Ok(bytes),
            other => Err(unexpected(other)),
        }
    }

    /// An application stream from the first member that answers: frames are
    /// delivered on the returned channel until the stream ends or breaks
    /// (then an error is the last item).
    pub async fn app_stream(&self, body: Vec<u8>) -> Result<tokio::sync::mpsc::Receiver<Result<Vec<u8>, StoreError>>, StoreError> {
        let request = Request::AppStream(body);
        let mut last = None;
        let mut opened = None;
        for (i, peer) in self.ordered_peers() {
            match self.transport.open_stream(peer, &request).await {
                Ok(s) => {
                    self.preferred.store(i, std::sync::atomic::Ordering::Relaxed);
                    opened = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let mut stream = opened.ok_or_else(|| last.unwrap_or_else(|| StoreError::Invalid("no peer address given".into())))?;
        let (tx, rx) = tokio::sync::mpsc::channel(crate::app::APP_STREAM_QUEUE_MAX);
        let max = self.limits.reply_size_max_bytes;
        tokio::spawn(async move {
            loop {
                let item = match read_frame::<Reply>(&mut stream, max).await {
                    Ok(Some(Reply::App(bytes))) => Ok(bytes),
                    Ok(Some(Reply::Error(e))) => Err(e),
                    Ok(Some(other)) => Err(unexpected(other)),
                    Ok(None) => Err(StoreError::Unreachable { addr: String::new(), reason: "the stream ended".into() }),
                    Err(e) => Err(e),
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Saves a backup of the cluster's data to `file` (checked before it is
    /// kept: a damaged transfer leaves no file). Returns its size.
    pub async fn backup_to(&self, file: &std::path::Path) -> Result<u64, StoreError> {
        let mut last = None;
        for (i, peer) in self.ordered_peers() {
            match self.backup_from(peer, file).await {
                Ok(n) => {
                    self.preferred.store(i, std::sync::atomic::Ordering::Relaxed);
                    return Ok(n);
                }
                Err(e) if e.is_retryable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Invalid("no peer address given".into())))
    }

    async fn backup_from(&self, peer: &str, file: &std::path::Path) -> Result<u64, StoreError> {
        let mut stream = self.transport.open_stream(peer, &Request::Backup).await?;
        let mut bytes = Vec::new();
        loop {
            match read_frame::<Reply>(&mut stream, self.limits.reply_size_max_bytes).await? {
                Some(Reply::BackupChunk(chunk)) => bytes.extend_from_slice(&chunk),
                Some(Reply::Error(e)) => return Err(e),
                Some(other) => return Err(unexpected(other)),
                None => break,
            }
        }
        crate::snapshot_file::unseal(&bytes).map_err(|e| StoreError::Protocol(format!("the backup arrived damaged: {e}")))?;
        let tmp = file.with_extension("partial");
        let io = |e: std::io::Error| StoreError::Invalid(format!("cannot write {}: {e}", file.display()));
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, file).map_err(io)?;
        Ok(bytes.len() as u64)
    }

    /// Moves the preferred member on, after the one preferred failed a watch.
    fn rotate(&self) {
        self.preferred.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    async fn open_watch(&self, prefix: &[u8], from_revision: u64) -> Result<quinn::RecvStream, StoreError> {
        let request = Request::Watch { prefix: prefix.to_vec(), from_revision };
        let mut last = None;
        for (i, peer) in self.ordered_peers() {
            match self.transport.open_stream(peer, &request).await {
                Ok(s) => {
                    self.preferred.store(i, std::sync::atomic::Ordering::Relaxed);
                    return Ok(s);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| StoreError::Invalid("no peer address given".into())))
    }
}

fn unexpected(reply: Reply) -> StoreError {
    StoreError::Protocol(format!("unexpected reply {reply:?}"))
}

/// See [`StoreClient::watch`].
pub struct ResumingWatch<'a> {
    client: &'a StoreClient,
    prefix: Vec<u8>,
    /// Next revision to deliver; 0 until the first frame when watching "from now".
    next_revision: u64,
    stream: Option<quinn::RecvStream>,
    buffered: VecDeque<Event>,
}

impl ResumingWatch<'_> {
    /// The next change. Retryable failures (a member dying, a dropped
    /// connection) are handled inside by resuming; other errors (compacted
    /// history, a cut-off slow watcher) are returned.
    pub async fn next(&mut self) -> Result<Event, StoreError> {
        let mut failures = 0u32;
        loop {
            if let Some(ev) = self.buffered.pop_front() {
                return Ok(ev);
            }
            let stream = match self.stream.as_mut() {
                Some(s) => s,
                None => match self.client.open_watch(&self.prefix, self.next_revision).await {
                    Ok(s) => self.stream.insert(s),
                    Err(e) if e.is_retryable() && failures < 50 => {
                        failures += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            match read_frame::<Reply>(stream, self.client.limits.reply_size_max_bytes).await {
                Ok(Some(Reply::WatchEvents { revision, events })) => {
                    self.next_revision = revision + 1;
                    self.buffered.extend(events);
                }
                Ok(Some(Reply::WatchProgress { revision })) => {
                    if self.next_revision == 0 || revision + 1 > self.next_revision {
                        self.next_revision = revision + 1;
                    }
                }
                Ok(Some(Reply::Error(e))) => {
                    self.stream = None;
                    if e.is_retryable() || matches!(e, StoreError::Fatal { .. }) {
                        // A stale or stopping member: resume on another one.
                        self.client.rotate();
                        failures += 1;
                        if failures > 50 {
                            return Err(e);
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                    return Err(e);
                }
                Ok(Some(other)) => return Err(unexpected(other)),
                // The member went away: dial again from where we are.
                Ok(None) | Err(_) => {
                    self.stream = None;
                    self.client.rotate();
                    failures += 1;
                    if failures > 50 {
                        return Err(StoreError::Unreachable {
                            addr: self.client.peers.join(","),
                            reason: "watch stream keeps breaking".into(),
                        });
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// The revision to resume from.
    pub fn next_revision(&self) -> u64 {
        self.next_revision
    }
}
