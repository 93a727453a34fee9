//! A store member: opens (or creates, or joins with) a data directory,
//! runs openraft over RocksDB, serves the peer port, and offers the store's
//! API to the rest of the process. Writes and linearizable reads sent to a
//! follower are carried to the leader; callers need not know who leads.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, Raft, ServerState, SnapshotPolicy};
use tokio::sync::Semaphore;

use crate::data_dir::{DataDir, MemberFile};
use crate::db;
use crate::error::{DataDirError, StoreError};
use crate::freshness::Freshness;
use crate::limits::Limits;
use crate::log_store::{LogFloor, LogStore};
use crate::network::Network;
use crate::session::{Session, SessionClient};
use crate::state_machine::{StateMachine, StoreReader};
use crate::tls::{ClusterCa, JoinToken, TlsError};
use crate::transport::{Fault, Faults, HelloAs, Transport};
use crate::types::{
    Command, CommandResult, Compare, KeyValue, Member as MemberNode, NodeId, Outcome, Proposal, RangePage, Revisions, Txn, TxnOp,
};
use crate::watch::{WatchItem, Watcher};
use crate::watch_hub::WatchHub;
use crate::wire::{JoinGrant, MemberInfo, Reply, Request, Role, PROTOCOL_VERSION};

/// How a member comes up when its data directory is new. A directory that
/// already holds a member always restarts that member.
#[derive(Clone, Debug)]
pub enum StartMode {
    /// Create a new cluster with this member as its only voter.
    Bootstrap,
    /// Join the cluster that `via` belongs to.
    Join { via: String, token: String },
    /// Only restart: the data directory must hold a member.
    Restart,
}

/// Everything needed to start a member.
#[derive(Clone)]
pub struct StoreConfig {
    pub id: NodeId,
    pub data_dir: PathBuf,
    /// Where the peer port listens and what peers are told to dial.
    pub peer_addr: String,
    pub start: StartMode,
    pub limits: Limits,
    /// Fault injection for tests; empty otherwise.
    pub faults: Faults,
}

impl StoreConfig {
    pub fn new(id: NodeId, data_dir: impl Into<PathBuf>, peer_addr: impl Into<String>, start: StartMode) -> Self {
        StoreConfig {
            id,
            data_dir: data_dir.into(),
            peer_addr: peer_addr.into(),
            start,
            limits: Limits::default(),
            faults: Faults::default(),
        }
    }
}

/// Why a member could not start. Each message says what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Joining failed (wrong token, unreachable peer, refused id).
    #[error("join: {0}")]
    Join(StoreError),
    #[error("cannot listen on {addr}: {reason}")]
    Bind { addr: String, reason: String },
    #[error("raft: {0}")]
    Raft(String),
}

/// Whether a read must reflect every write acknowledged before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Consistency {
    /// Confirmed with a majority (read-index); the default.
    Linearizable,
    /// This member's applied state; fast, possibly stale.
    Serializable,
}

/// Removes what a first start made if it fails before the member exists
/// (a busy port, a refused join, a crash of the first initialisation), so
/// the next start finds the directory as it was.
struct FirstStart<'a> {
    dir: &'a DataDir,
    armed: bool,
}

impl Drop for FirstStart<'_> {
    fn drop(&mut self) {
        if self.armed {
            match self.dir.remove_contents() {
                Ok(()) => tracing::warn!(dir = %self.dir.path.display(), "the first start failed; removed what it had made"),
                Err(e) => {
                    tracing::error!(dir = %self.dir.path.display(), error = %e, "the first start failed and what it made could not be removed")
                }
            }
        }
    }
}

/// Wall-clock milliseconds: the stamp a member puts on the writes it takes
/// from clients (the session table's only clock).
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A running store member.
pub struct Member {
    id: NodeId,
    raft: Raft<crate::types::TypeConfig>,
    reader: StoreReader,
    transport: Arc<Transport>,
    limits: Limits,
    token: JoinToken,
    ca: ClusterCa,
    peer_addr: String,
    proposals: Semaphore,
    /// This member's own client session, for the writes it makes itself.
    session: SessionClient,
    /// Whether this member knows it is current (see `freshness.rs`).
    freshness: Arc<Freshness>,
    /// The log, to settle its floor at shutdown.
    log: LogStore,
    faults: Faults,
    endpoint: quinn::Endpoint,
    /// The peer port's accept loop and the agent-token file's keeper; both
    /// end at shutdown.
    tasks: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    app: std::sync::RwLock<Option<std::sync::Arc<dyn crate::app::AppHandler>>>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member").field("id", &self.id).field("peer_addr", &self.peer_addr).finish()
    }
}

async fn resolve_bind(addr: &str) -> Result<SocketAddr, StartError> {
    if let Ok(sa) = addr.parse() {
        return Ok(sa);
    }
    tokio::net::lookup_host(addr)
        .await
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| StartError::Bind { addr: addr.into(), reason: "not an address (expected HOST:PORT)".into() })
}

/// Asks a cluster member to admit us, proving the token.
async fn request_join(via: &str, token: &JoinToken, id: NodeId, addr: &str, limits: &Limits) -> Result<JoinGrant, StoreError> {
    let transport = token_transport(token, limits)?;
    let request = Request::Join { secret: token.secret.clone(), node_id: id, addr: addr.into() };
    match transport.call(via, &request, limits.client_rpc_timeout()).await? {
        Reply::Joined(grant) => Ok(grant),
        other => Err(StoreError::Protocol(format!("unexpected join reply {other:?}"))),
    }
}

/// A concurrent membership change is retryable; anything else is not.
fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>, what: &str) -> StoreError {
    use openraft::error::ChangeMembershipError;
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(p))) => {
            StoreError::Busy(format!("{what}: another membership change is in progress ({p})"))
        }
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => StoreError::NoLeader(format!("{what}: leadership moved")),
        other => StoreError::Membership(format!("{what}: {other}")),
    }
}

/// A transport for a token holder (no member certificate).
/// Where the store keeps the agent token's secret (32 hex digits) once
/// `flotilla token rotate` has replaced the one derived from the server
/// token. Only the server token reaches it.
pub const AGENT_TOKEN_KEY: &[u8] = b"/flotilla/agent-token";

/// The agent token, from what the store holds under [`AGENT_TOKEN_KEY`]
/// (nothing: the derived one). A value that is not a secret admits no
/// agent rather than fall back to a token that was rotated away.
pub fn agent_token_from(server: &JoinToken, stored: Option<&[u8]>) -> Result<JoinToken, StoreError> {
    let Some(value) = stored else { return Ok(server.agent()) };
    let text = std::str::from_utf8(value).unwrap_or("");
    server.agent_with_secret(text).map_err(|e| {
        StoreError::Invalid(format!(
            "the stored agent token ({}) is not valid: {e}; run `flotilla token rotate` to store a new one",
            String::from_utf8_lossy(AGENT_TOKEN_KEY)
        ))
    })
}

/// Writes `DATA_DIR/agent-token` with the agent token the store holds
/// now, for the operator to hand to new nodes.
fn write_agent_token_file(reader: &StoreReader, server: &JoinToken, dir: &DataDir) -> u64 {
    let current = reader
        .get(AGENT_TOKEN_KEY)
        .map_err(StoreError::Invalid)
        .and_then(|(kv, revision)| Ok((agent_token_from(server, kv.as_ref().map(|kv| kv.value.as_slice()))?, revision)));
    match current {
        Ok((token, revision)) => {
            if let Err(e) = dir.write_agent_token(&token) {
                tracing::warn!(error = %e, "could not write the agent token file");
            }
            revision
        }
        Err(e) => {
            tracing::warn!(error = %e, "no agent token to write");
            reader.revisions().revision
        }
    }
}

/// Keeps `DATA_DIR/agent-token` true after every rotation this member
/// applies, from revision `from` on.
async fn keep_agent_token_file(reader: StoreReader, server: JoinToken, dir: PathBuf, mut from: u64) {
    let dir = DataDir::new(dir);
    loop {
        if let Ok(mut watcher) = Watcher::open(reader.clone(), AGENT_TOKEN_KEY.to_vec(), from + 1) {
            // The prefix also matches longer keys; only the key itself counts.
            loop {
                match watcher.next().await {
                    Ok(WatchItem::Events { events, .. }) if events.iter().any(|e| e.kv.key == AGENT_TOKEN_KEY) => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        }
        // Also after a watch that failed: read again, at most ten times a second.
        tokio::time::sleep(Duration::from_millis(100)).await;
        from = write_agent_token_file(&reader, &server, &dir);
    }
}

pub fn token_transport(token: &JoinToken, limits: &Limits) -> Result<Transport, StoreError> {
    let config = token.client_config(limits).map_err(|e| StoreError::Invalid(e.to_string()))?;
    Ok(Transport::new(Transport::client_endpoint()?, config, Some(HelloAs::Token(token.secret.clone())), limits.clone()))
}

/// What answers the peer port for a member: given the endpoint and the
/// member, runs until the endpoint closes. The `server` module provides it
/// (and `Member::start`); taking it as a value keeps this module from
/// depending on the server, which depends on it.
pub type ServePeers = fn(quinn::Endpoint, Weak<Member>) -> futures::future::BoxFuture<'static, ()>;

impl Member {
    /// Starts a member as `config` says, its peer port answered by
    /// `serve`. Returns once the member serves its peer port; for a join,
    /// once it is a voter.
    ///
    /// The peer port is bound before anything is written, and a first
    /// start that fails removes what it made, so a failed start never
    /// leaves a half-made directory behind. A restart checks everything on
    /// disk (whose database, whether its log went backwards, every
    /// checksum) and refuses, without changing a file, what does not hold.
    pub async fn start_serving(config: StoreConfig, serve: ServePeers) -> Result<Arc<Member>, StartError> {
        let bind = resolve_bind(&config.peer_addr).await?;
        let socket =
            std::net::UdpSocket::bind(bind).map_err(|e| StartError::Bind { addr: config.peer_addr.clone(), reason: e.to_string() })?;
        let dir = DataDir::new(&config.data_dir);
        let mut first_start = FirstStart { dir: &dir, armed: false };
        let member = Self::start_on(config, socket, &dir, &mut first_start, serve).await?;
        first_start.armed = false;
        Ok(member)
    }

    async fn start_on(
        config: StoreConfig,
        socket: std::net::UdpSocket,
        dir: &DataDir,
        first_start: &mut FirstStart<'_>,
        serve: ServePeers,
    ) -> Result<Arc<Member>, StartError> {
        let limits = config.limits.clone();
        let invalid = |reason: String| DataDirError::Invalid { dir: dir.path.display().to_string(), reason };
        let mut initialize = false;
        // A bootstrap's token is written last: its file says the member is
        // ready to be joined.
        let mut new_token = None;
        let restart = dir.has_member();
        let (member_file, database) = if restart {
            let file = dir.read_member()?;
            if file.id != config.id {
                return Err(invalid(format!(
                    "holds member {} but --id is {}; use --id {} or another directory",
                    file.id, config.id, file.id
                ))
                .into());
            }
            if let StartMode::Join { token, .. } = &config.start {
                let token = JoinToken::parse(token)?;
                let ca = dir.read_ca(&file.cluster_id)?;
                if ca.fingerprint()? != token.ca_fingerprint {
                    return Err(invalid(format!(
                        "belongs to cluster {}, not the cluster of the given token; use an empty directory to join that cluster",
                        file.cluster_id
                    ))
                    .into());
                }
            }
            if let Err(reason) = crate::state_machine::read_snapshot_file(&dir.snapshot_path()) {
                return Err(invalid(format!(
                    "{reason}. Move snapshot.bin away and start again: the member builds a new snapshot from its database"
                ))
                .into());
            }
            let floor = LogFloor::open(dir.floor_path()).map_err(invalid)?.get();
            let database = db::open_checked(&dir.db_path(), &file.cluster_id, file.id, |ro| {
                crate::log_store::check_floor(ro, &floor).map_err(|reason| {
                    invalid(format!(
                        "{reason}. Do not start this member as it is: remove it from the cluster (flotilla store remove-member {}), \
                         empty this directory and join again, or restore the directory from a backup",
                        file.id
                    ))
                })
            })?;
            // A restored directory's first start makes the new cluster.
            initialize = file.initialize_pending;
            (file, database)
        } else {
            match &config.start {
                StartMode::Restart => {
                    dir.read_member()?;
                    unreachable!("read_member fails without member.json")
                }
                StartMode::Bootstrap => {
                    dir.create_empty()?;
                    first_start.armed = true;
                    let cluster_id = hex::encode(rand::random::<[u8; 8]>());
                    let ca = ClusterCa::generate(&cluster_id)?;
                    dir.write_ca(&ca)?;
                    dir.write_identity(&ca.issue(&format!("member-{}", config.id))?)?;
                    new_token = Some(JoinToken::new(&ca)?);
                    let database = db::open(&dir.db_path(), db::OpenMode::Create)?;
                    db::write_identity(
                        &database,
                        &dir.db_path(),
                        &db::DbIdentity { cluster_id: cluster_id.clone(), member_id: config.id, format: db::DB_FORMAT },
                    )?;
                    initialize = true;
                    // member.json is written once the cluster is initialised.
                    (
                        MemberFile {
                            id: config.id,
                            cluster_id,
                            peer_addr: config.peer_addr.clone(),
                            join_via: None,
                            initialize_pending: false,
                        },
                        database,
                    )
                }
                StartMode::Join { via, token } => {
                    let token = JoinToken::parse(token)?;
                    let grant = request_join(via, &token, config.id, &config.peer_addr, &limits).await.map_err(StartError::Join)?;
                    let ca = ClusterCa { cluster_id: grant.cluster_id.clone(), cert_pem: grant.ca_cert_pem, key_pem: grant.ca_key_pem };
                    if ca.fingerprint()? != token.ca_fingerprint {
                        return Err(StartError::Join(StoreError::Unauthorized(
                            "the joined member sent a CA that does not match the token".into(),
                        )));
                    }
                    dir.create_empty()?;
                    first_start.armed = true;
                    dir.write_ca(&ca)?;
                    dir.write_identity(&ca.issue(&format!("member-{}", config.id))?)?;
                    dir.write_token(&token)?;
                    let database = db::open(&dir.db_path(), db::OpenMode::Create)?;
                    db::write_identity(
                        &database,
                        &dir.db_path(),
                        &db::DbIdentity { cluster_id: grant.cluster_id.clone(), member_id: config.id, format: db::DB_FORMAT },
                    )?;
                    let file = MemberFile {
                        id: config.id,
                        cluster_id: grant.cluster_id,
                        peer_addr: config.peer_addr.clone(),
                        join_via: Some(via.clone()),
                        initialize_pending: false,
                    };
                    // From here on a restart resumes the join.
                    dir.write_member(&file)?;
                    dir.finish_first_start()?;
                    first_start.armed = false;
                    (file, database)
                }
            }
        };

        let ca = dir.read_ca(&member_file.cluster_id)?;
        let identity = dir.read_identity()?;
        let token = match new_token.clone() {
            Some(t) => t,
            None => dir.read_token()?,
        };
        let floor = Arc::new(LogFloor::open(dir.floor_path()).map_err(invalid)?);
        let log_store = LogStore::new(database.clone(), floor);
        let log_handle = log_store.clone();
        let hub = Arc::new(WatchHub::new(limits.watch_queue_max, limits.watches_max));
        let sm = StateMachine::open(database.clone(), hub.clone(), dir.snapshot_path(), limits.history_retain_revisions, limits.sessions)
            .map_err(|reason| invalid(format!("state machine is corrupt: {reason}")))?;
        let reader = StoreReader::new(database, hub);

        let endpoint = quinn::Endpoint::new(
            crate::transport::endpoint_config(&identity.key_pem),
            Some(identity.server_config(&limits)?),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| StartError::Bind { addr: config.peer_addr.clone(), reason: e.to_string() })?;
        let client_config = identity.client_config(&limits)?;
        let transport = Arc::new(Transport::new(endpoint.clone(), client_config, None, limits.clone()));
        let network = Network { from: config.id, transport: transport.clone(), faults: config.faults.clone() };

        let raft_config = Config {
            cluster_name: member_file.cluster_id.clone(),
            heartbeat_interval: limits.heartbeat_ms,
            election_timeout_min: limits.election_timeout_min_ms,
            election_timeout_max: limits.election_timeout_max_ms,
            install_snapshot_timeout: limits.raft_rpc_timeout_ms * 5,
            max_payload_entries: limits.append_entries_max,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(limits.snapshot_every_entries),
            max_in_snapshot_log_to_keep: limits.log_kept_behind_snapshot,
            snapshot_max_chunk_size: limits.snapshot_chunk_bytes,
            ..Default::default()
        }
        .validate()
        .map_err(|e| StartError::Raft(e.to_string()))?;
        let raft =
            Raft::new(config.id, Arc::new(raft_config), network, log_store, sm).await.map_err(|e| StartError::Raft(e.to_string()))?;

        let freshness =
            Arc::new(Freshness::new(config.id, raft.clone(), limits.stale_after_ms, Duration::from_millis(limits.heartbeat_ms * 5)));
        let member = Arc::new(Member {
            id: config.id,
            raft,
            reader,
            transport,
            proposals: Semaphore::new(limits.inflight_proposals_max),
            session: SessionClient::new(),
            log: log_handle,
            freshness,
            faults: config.faults.clone(),
            limits,
            token,
            ca,
            peer_addr: config.peer_addr.clone(),
            endpoint: endpoint.clone(),
            tasks: std::sync::Mutex::new(Vec::new()),
            app: std::sync::RwLock::new(None),
        });
        let task = tokio::spawn(serve(endpoint, Arc::downgrade(&member)));
        let written = write_agent_token_file(&member.reader, &member.token, dir);
        let keeper = tokio::spawn(keep_agent_token_file(member.reader.clone(), member.token.clone(), dir.path.clone(), written));
        member.tasks.lock().unwrap_or_else(|p| p.into_inner()).extend([task, keeper]);

        if initialize {
            let nodes = BTreeMap::from([(config.id, MemberNode { addr: config.peer_addr.clone() })]);
            member.raft.initialize(nodes).await.map_err(|e| StartError::Raft(e.to_string()))?;
            dir.write_member(&MemberFile { initialize_pending: false, ..member_file.clone() })?;
            if let Some(t) = &new_token {
                dir.write_token(t)?;
            }
            dir.finish_first_start()?;
            first_start.armed = false;
            tracing::info!(member = config.id, cluster = %member_file.cluster_id, "bootstrapped a new cluster");
        }
        if let Some(via) = &member_file.join_via {
            member.finish_join(via).await.map_err(StartError::Join)?;
            dir.write_member(&MemberFile { join_via: None, ..member_file.clone() })?;
            tracing::info!(member = config.id, via = %via, "joined the cluster");
        }
        Ok(member)
    }

    /// Second step of a join: asks the cluster to add us, retrying through
    /// elections until the join deadline.
    async fn finish_join(&self, via: &str) -> Result<(), StoreError> {
        let transport = token_transport(&self.token, &self.limits)?;
        let request = Request::AddMember { node_id: self.id, addr: self.peer_addr.clone() };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.limits.join_timeout_ms);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match transport.call(via, &request, left).await {
                Ok(_) => return Ok(()),
                Err(e) if e.is_retryable() && !left.is_zero() => {
                    tracing::warn!(error = %e, "join not finished yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn peer_addr(&self) -> &str {
        &self.peer_addr
    }

    /// The address the peer port is bound to (useful with port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// The token node agents are given now: the agent protocol only. The
    /// one derived from the server token until `flotilla token rotate`
    /// stores another under [`AGENT_TOKEN_KEY`]; read from what this member
    /// has applied.
    pub fn agent_token(&self) -> Result<JoinToken, StoreError> {
        let (kv, _) = self.reader.get(AGENT_TOKEN_KEY).map_err(|reason| self.fatal(reason))?;
        agent_token_from(&self.token, kv.as_ref().map(|kv| kv.value.as_slice()))
    }

    /// Whether `secret` is the agent token's: as this member has applied
    /// it, and, where that says no, as the leader has it (a rotation made
    /// a moment ago through another member may not have reached this one).
    pub async fn agent_secret_matches(&self, secret: &str) -> bool {
        if self.agent_token().is_ok_and(|t| t.secret_matches(secret)) {
            return true;
        }
        match self.get(AGENT_TOKEN_KEY, Consistency::Linearizable).await {
            Ok((kv, _)) => agent_token_from(&self.token, kv.as_ref().map(|kv| kv.value.as_slice())).is_ok_and(|t| t.secret_matches(secret)),
            Err(_) => false,
        }
    }

    pub fn token(&self) -> &JoinToken {
        &self.token
    }

    pub fn cluster_id(&self) -> &str {
        &self.ca.cluster_id
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn raft(&self) -> &Raft<crate::types::TypeConfig> {
        &self.raft
    }

    pub fn reader(&self) -> &StoreReader {
        &self.reader
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    pub fn ca(&self) -> &ClusterCa {
        &self.ca
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == ServerState::Leader
    }

    pub fn current_leader(&self) -> Option<NodeId> {
        self.raft.metrics().borrow().current_leader
    }

    pub fn revisions(&self) -> Revisions {
        self.reader.revisions()
    }

    /// Records evidence that this member is current.
    pub fn mark_current(&self) {
        self.freshness.mark();
    }

    /// Fails with [`StoreError::Stale`] when this member has not known it
    /// is current for longer than `stale_after_ms`: what it serves may be
    /// behind.
    pub async fn check_current(&self) -> Result<(), StoreError> {
        self.freshness.check().await
    }

    fn fatal(&self, reason: impl std::fmt::Display) -> StoreError {
        StoreError::Fatal { member: self.id, reason: reason.to_string() }
    }

    /// The address of the leader when it is another member; `None` when this
    /// member leads. Waits up to four election timeouts for a leader. Traffic
    /// to a leader the fault table cuts off fails as unreachable.
    async fn leader_addr(&self) -> Result<Option<String>, StoreError> {
        Ok(self.leader_target().await?.map(|(_, addr)| addr))
    }

    /// [`Member::leader_addr`], with the leader's id.
    async fn leader_target(&self) -> Result<Option<(NodeId, String)>, StoreError> {
        let wait = Duration::from_millis(self.limits.election_timeout_max_ms * 4);
        let metrics = self
            .raft
            .wait(Some(wait))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|_| StoreError::NoLeader(format!("no leader elected within {} ms", wait.as_millis())))?;
        let leader = metrics.current_leader.expect("waited for a leader");
        if leader == self.id && metrics.state == ServerState::Leader {
            return Ok(None);
        }
        let node = metrics.membership_config.membership().get_node(&leader).cloned();
        if let Some(Fault::Drop) = self.faults.get(self.id, leader) {
            return Err(StoreError::Unreachable {
                addr: node.map(|n| n.addr).unwrap_or_default(),
                reason: "dropped by fault injection".into(),
            });
        }
        match node {
            Some(n) => Ok(Some((leader, n.addr))),
            None => Err(StoreError::NoLeader(format!("leader {leader} is not in this member's membership yet"))),
        }
    }

    /// Where to send a request that only the leader can serve: `Some(addr)`
    /// of the leader, or `None` to retry here (this member leads, or no
    /// leader is known yet, after a short wait). Fails only on errors that
    /// retrying will not fix.
    async fn route(&self) -> Result<Option<(NodeId, String)>, StoreError> {
        match self.leader_target().await {
            Ok(found) => Ok(found),
            Err(e) if e.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(self.limits.heartbeat_ms)).await;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn validate(&self, command: &Command) -> Result<(), StoreError> {
        let check_key = |key: &[u8]| {
            if key.is_empty() {
                return Err(StoreError::Invalid("empty key".into()));
            }
            if key.len() > self.limits.key_size_max_bytes {
                return Err(StoreError::Invalid(format!(
                    "key of {} bytes is over the limit of {} bytes",
                    key.len(),
                    self.limits.key_size_max_bytes
                )));
            }
            Ok(())
        };
        let check_put = |key: &[u8], value: &[u8]| {
            check_key(key)?;
            if value.len() > self.limits.value_size_max_bytes {
                return Err(StoreError::ValueTooLarge { size: value.len(), limit: self.limits.value_size_max_bytes });
            }
            Ok(())
        };
        match command {
            Command::Put { key, value } => check_put(key, value),
            Command::Delete { key, prefix } => {
                if *prefix {
                    Ok(())
                } else {
                    check_key(key)
                }
            }
            Command::Txn(txn) => {
                let mut total = 0usize;
                for op in txn.success.iter().chain(&txn.failure) {
                    match op {
                        TxnOp::Put { key, value } => {
                            check_put(key, value)?;
                            total += key.len() + value.len();
                        }
                        TxnOp::Delete { key, prefix: false } | TxnOp::Get { key } => check_key(key)?,
                        TxnOp::Delete { prefix: true, .. } => {}
                    }
                }
                if total > self.limits.request_size_max_bytes {
                    return Err(StoreError::Invalid(format!(
                        "transaction of {total} bytes is over the request limit of {} bytes",
                        self.limits.request_size_max_bytes
                    )));
                }
                Ok(())
            }
            Command::Compact { .. } => Ok(()),
        }
    }

    /// Proposes a write as this member's own client (the registry's and the
    /// controllers' writes) and waits until it is committed and applied. On
    /// a follower the write is carried to the leader. However often it is
    /// retried below, it is applied at most once.
    pub async fn propose(&self, command: Command) -> Result<CommandResult, StoreError> {
        self.validate(&command)?;
        let ticket = self.session.begin();
        self.submit(Proposal { session: ticket.session(), stamp_ms: wall_clock_ms(), command }).await
    }

    /// A remote client's write, under the client's own session.
    pub async fn propose_for(&self, session: Session, command: Command) -> Result<CommandResult, StoreError> {
        self.validate(&command)?;
        self.submit(Proposal { session, stamp_ms: wall_clock_ms(), command }).await
    }

    /// A proposal another member carried here, with its session and stamp.
    pub async fn propose_forwarded(&self, proposal: Proposal) -> Result<CommandResult, StoreError> {
        self.validate(&proposal.command)?;
        self.submit(proposal).await
    }

    /// Proposes until applied or the client deadline passes. Once the
    /// proposal may have reached a log, a deadline is reported as
    /// [`StoreError::Indeterminate`], never as a failure.
    async fn submit(&self, proposal: Proposal) -> Result<CommandResult, StoreError> {
        let _permit = self.proposals.acquire().await.map_err(|_| self.fatal("shutting down"))?;
        let timeout = self.limits.client_rpc_timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        let sent = std::sync::atomic::AtomicBool::new(false);
        let outcome = tokio::time::timeout_at(deadline, self.submit_until(&proposal, deadline, &sent)).await;
        let result = match outcome {
            Ok(r) => r,
            Err(_) if sent.load(std::sync::atomic::Ordering::Relaxed) => {
                Err(StoreError::Indeterminate(format!("no answer within {} ms", timeout.as_millis())))
            }
            Err(_) => Err(StoreError::NoLeader(format!("write not committed within {} ms", timeout.as_millis()))),
        };
        match result {
            Ok(CommandResult { outcome: Outcome::Refused(reason), .. }) => Err(StoreError::Indeterminate(reason)),
            other => other,
        }
    }

    async fn submit_until(
        &self,
        proposal: &Proposal,
        deadline: tokio::time::Instant,
        sent: &std::sync::atomic::AtomicBool,
    ) -> Result<CommandResult, StoreError> {
        loop {
            if self.is_leader() {
                sent.store(true, std::sync::atomic::Ordering::Relaxed);
                match self.raft.client_write(proposal.clone()).await {
                    Ok(response) => return Ok(response.data),
                    // Leadership moved; the same session makes a second copy harmless.
                    Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => continue,
                    Err(RaftError::APIError(e)) => return Err(StoreError::Membership(e.to_string())),
                    Err(RaftError::Fatal(e)) => return Err(self.fatal(e)),
                }
            }
            let Some((leader, addr)) = self.route().await? else { continue };
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let attempt = self.limits.forward_attempt_timeout().min(left);
            sent.store(true, std::sync::atomic::Ordering::Relaxed);
            let request = Request::Propose(proposal.clone());
            let reply = tokio::select! {
                r = self.transport.call(&addr, &request, attempt) => Some(r),
                // A write in flight to a leader that lost its place moves on
                // at once, not after the transport's timeouts.
                _ = self.leader_changed(leader) => None,
            };
            match reply {
                None => continue,
                Some(Ok(Reply::Written(result))) => return Ok(result),
                Some(Ok(other)) => return Err(StoreError::Protocol(format!("unexpected write reply {other:?}"))),
                // The leader took it and cannot say (its own deadline, or
                // the session table refused a request its client has
                // left): asking again would get the same answer.
                Some(Err(e @ StoreError::Indeterminate(_))) => return Err(e),
                // The leader moved, died or is stopping: try again with the
                // same session, wherever the leader is now.
                Some(Err(e)) if e.is_retryable() || matches!(e, StoreError::Fatal { .. }) => {
                    tracing::debug!(error = %e, "forwarding failed; looking for the leader again");
                    tokio::time::sleep(Duration::from_millis(self.limits.heartbeat_ms)).await;
                }
                Some(Err(e)) => return Err(e),
            }
        }
    }

    /// Resolves once this member no longer takes `leader` for the leader.
    async fn leader_changed(&self, leader: NodeId) {
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.borrow_and_update().current_leader != Some(leader) {
                return;
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until this member has applied everything committed before the
    /// call, confirmed by a majority (read-index). On a follower the leader
    /// supplies the index. A confirmation that fails (a slow or dead
    /// member, an election) is tried again until the client deadline.
    pub async fn read_barrier(&self) -> Result<(), StoreError> {
        let timeout = self.limits.client_rpc_timeout();
        let deadline = tokio::time::Instant::now() + timeout;
        let retry_pause = Duration::from_millis(self.limits.heartbeat_ms);
        let work = async {
            loop {
                match self.raft.ensure_linearizable().await {
                    Ok(_) => {
                        self.mark_current();
                        return Ok(());
                    }
                    Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(_))) => {
                        let Some((leader, addr)) = self.route().await? else { continue };
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        let attempt = self.limits.forward_attempt_timeout().min(left);
                        let reply = tokio::select! {
                            r = self.transport.call(&addr, &Request::ReadIndex, attempt) => Some(r),
                            _ = self.leader_changed(leader) => None,
                        };
                        match reply {
                            None => continue,
                            Some(Ok(Reply::ReadIndex(index))) => {
                                self.raft
                                    .wait(Some(left))
                                    .applied_index_at_least(index, "linearizable read")
                                    .await
                                    .map_err(|e| StoreError::NoLeader(format!("this member did not catch up: {e}")))?;
                                self.mark_current();
                                return Ok(());
                            }
                            Some(Ok(other)) => return Err(StoreError::Protocol(format!("unexpected read-index reply {other:?}"))),
                            Some(Err(e)) if e.is_retryable() || matches!(e, StoreError::Fatal { .. }) => {
                                tokio::time::sleep(retry_pause).await
                            }
                            Some(Err(e)) => return Err(e),
                        }
                    }
                    // Not confirmed this round (a slow follower, a heartbeat
                    // lost): ask again rather than fail the read.
                    Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                        tracing::debug!(error = %e, "leadership not confirmed yet; asking again");
                        tokio::time::sleep(retry_pause).await;
                    }
                    Err(RaftError::Fatal(e)) => return Err(self.fatal(e)),
                }
            }
        };
        tokio::time::timeout_at(deadline, work)
            .await
            .map_err(|_| StoreError::NoLeader(format!("read not confirmed by a majority within {} ms", timeout.as_millis())))?
    }

    /// The leader's side of a follower's read-index request.
    pub async fn read_index(&self) -> Result<Option<u64>, StoreError> {
        match self.raft.get_read_log_id().await {
            Ok((read_log_id, _applied)) => Ok(read_log_id.map(|l| l.index)),
            Err(RaftError::APIError(e)) => Err(StoreError::NoLeader(e.to_string())),
            Err(RaftError::Fatal(e)) => Err(self.fatal(e)),
        }
    }

    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<CommandResult, StoreError> {
        self.propose(Command::Put { key: key.into(), value: value.into() }).await
    }

    /// Deletes a key (or a prefix); answers how many keys went away.
    pub async fn delete(&self, key: impl Into<Vec<u8>>, prefix: bool) -> Result<(u64, u64), StoreError> {
        let r = self.propose(Command::Delete { key: key.into(), prefix }).await?;
        match r.outcome {
            Outcome::Delete { deleted } => Ok((deleted, r.revision)),
            other => Err(StoreError::Protocol(format!("unexpected delete outcome {other:?}"))),
        }
    }

    /// Runs a transaction; answers whether the compares held, the results,
    /// and the revision after it.
    pub async fn txn(&self, compares: Vec<Compare>, success: Vec<TxnOp>, failure: Vec<TxnOp>) -> Result<CommandResult, StoreError> {
        self.propose(Command::Txn(Txn { compares, success, failure })).await
    }

    pub async fn compact(&self, revision: u64) -> Result<(), StoreError> {
        match self.propose(Command::Compact { revision }).await?.outcome {
            Outcome::Rejected(reason) => Err(StoreError::Invalid(reason)),
            _ => Ok(()),
        }
    }

    pub async fn get(&self, key: &[u8], consistency: Consistency) -> Result<(Option<KeyValue>, u64), StoreError> {
        if consistency == Consistency::Linearizable {
            self.read_barrier().await?;
        }
        self.reader.get(key).map_err(|e| self.fatal(e))
    }

    pub async fn range(
        &self,
        prefix: &[u8],
        limit: usize,
        continue_from: Option<&[u8]>,
        consistency: Consistency,
    ) -> Result<RangePage, StoreError> {
        if consistency == Consistency::Linearizable {
            self.read_barrier().await?;
        }
        let limit = if limit == 0 { self.limits.range_page_max } else { limit.min(self.limits.range_page_max) };
        self.reader.range(prefix, limit, continue_from).map_err(|e| self.fatal(e))
    }

    /// Watches `prefix` from `from_revision` (inclusive; 0 = from now). The
    /// watch ends with [`StoreError::Stale`] if this member stops knowing
    /// that it is current.
    pub fn watch(&self, prefix: Vec<u8>, from_revision: u64) -> Result<Watcher, StoreError> {
        Ok(Watcher::open(self.reader.clone(), prefix, from_revision)?.with_freshness(self.freshness.clone()))
    }

    /// The members as this member knows them.
    pub fn members(&self) -> Vec<MemberInfo> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        membership
            .nodes()
            .map(|(id, node)| MemberInfo {
                id: *id,
                addr: node.addr.clone(),
                role: if Some(*id) == metrics.current_leader {
                    Role::Leader
                } else if voters.contains(id) {
                    Role::Follower
                } else {
                    Role::Learner
                },
            })
            .collect()
    }

    /// Everything this member has applied, as a sealed backup, once it has
    /// confirmed with a majority that it is current.
    pub async fn backup(&self) -> Result<Vec<u8>, StoreError> {
        self.read_barrier().await?;
        let db = self.reader.db().clone();
        tokio::task::spawn_blocking(move || crate::backup::sealed_backup(&db)).await.map_err(|e| self.fatal(e))?.map_err(|e| self.fatal(e))
    }

    /// Checks a join request's token and id; grants the CA if both are good.
    pub fn grant_join(&self, secret: &str, node_id: NodeId, addr: &str) -> Result<JoinGrant, StoreError> {
        if self.token.agent().secret_matches(secret) || self.agent_token().is_ok_and(|t| t.secret_matches(secret)) {
            // The agent token never yields the CA's key.
            return Err(StoreError::Unauthorized(
                "that is the agent token; a member joins with the server token (DATA_DIR/join-token on the first server)".into(),
            ));
        }
        if !self.token.secret_matches(secret) {
            return Err(StoreError::Unauthorized("wrong join token; use the token the first server printed".into()));
        }
        if let Some(existing) = self.members().into_iter().find(|m| m.id == node_id) {
            if existing.addr != addr {
                return Err(StoreError::Membership(format!(
                    "member {node_id} is already in the cluster at {}; remove it first with `flotilla store remove-member {node_id}`, or choose another --id",
                    existing.addr
                )));
            }
            // Same id and address: a member that lost its disk. Adding it
            // back over its old log would make the leader see a log that went
            // backwards, so it must be removed first.
            return Err(StoreError::Membership(format!(
                "member {node_id} at {addr} is already in the cluster; if it lost its data directory, remove it with `flotilla store remove-member {node_id}` and join again"
            )));
        }
        Ok(JoinGrant { cluster_id: self.ca.cluster_id.clone(), ca_cert_pem: self.ca.cert_pem.clone(), ca_key_pem: self.ca.key_pem.clone() })
    }

    /// Adds a member: as a learner until it has caught up, then as a voter.
    pub async fn add_member(&self, node_id: NodeId, addr: String) -> Result<(), StoreError> {
        if let Some(leader) = self.leader_addr().await? {
            let timeout = Duration::from_millis(self.limits.join_timeout_ms);
            return self.transport.call(&leader, &Request::AddMember { node_id, addr }, timeout).await.map(|_| ());
        }
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.membership_config.membership().voter_ids().any(|v| v == node_id) {
            return Ok(());
        }
        self.raft
            .add_learner(node_id, MemberNode { addr }, true)
            .await
            .map_err(|e| membership_error(e, &format!("adding learner {node_id}")))?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([node_id])), false)
            .await
            .map_err(|e| membership_error(e, &format!("promoting {node_id} to voter")))?;
        Ok(())
    }

    /// Removes a member (voter or learner) from the cluster.
    pub async fn remove_member(&self, node_id: NodeId) -> Result<(), StoreError> {
        if let Some(leader) = self.leader_addr().await? {
            return self.transport.call(&leader, &Request::RemoveMember { node_id }, self.limits.client_rpc_timeout()).await.map(|_| ());
        }
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let change = if voters.contains(&node_id) {
            if voters.len() == 1 {
                return Err(StoreError::Membership(format!("member {node_id} is the only voter; a cluster cannot remove its last voter")));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([node_id]))
        } else if membership.get_node(&node_id).is_some() {
            ChangeMembers::RemoveNodes(BTreeSet::from([node_id]))
        } else {
            return Err(StoreError::Membership(format!("there is no member {node_id}")));
        };
        self.raft.change_membership(change, false).await.map_err(|e| membership_error(e, &format!("removing {node_id}")))?;
        Ok(())
    }

    /// Stops Raft and the peer port. The data directory can be opened again
    /// once every handle to this member is dropped.
    pub async fn shutdown(&self) {
        for task in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
        // Close the peer port first: callers then see the connection go
        // and look for the new leader, instead of getting answers from a
        // Raft that is stopping.
        self.endpoint.close(0u32.into(), b"member shutting down");
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft did not stop cleanly");
        }
        if let Err(e) = self.log.settle_floor() {
            tracing::warn!(error = %e, "could not record the log floor at shutdown");
        }
        // Let peers see the close, so the port is free for a restart.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    /// Sends an application request to the leader's handler, or to this
    /// member's own when it leads (or no leader is known): for state only
    /// the leader keeps, such as node agents' heartbeats.
    pub async fn call_leader_app(&self, body: Vec<u8>, timeout: Duration) -> Result<Vec<u8>, StoreError> {
        let addr = if self.is_leader() { None } else { self.leader_addr().await? };
        match addr {
            None => match self.app_handler() {
                Some(h) => h.call(crate::app::AppCaller::Trusted, body).await,
                None => Err(StoreError::Invalid("this member serves no application requests".into())),
            },
            Some(addr) => match self.transport.call(&addr, &Request::App(body), timeout).await? {
                Reply::App(bytes) => Ok(bytes),
                other => Err(StoreError::Protocol(format!("unexpected app reply {other:?}"))),
            },
        }
    }

    /// Serves application requests (`Request::App`) with `handler`.
    pub fn set_app_handler(&self, handler: Arc<dyn crate::app::AppHandler>) {
        *self.app.write().unwrap_or_else(|p| p.into_inner()) = Some(handler);
    }

    pub fn app_handler(&self) -> Option<Arc<dyn crate::app::AppHandler>> {
        self.app.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The version of the peer protocol this member speaks.
    pub fn protocol_version(&self) -> u32 {
        PROTOCOL_VERSION
    }
}
