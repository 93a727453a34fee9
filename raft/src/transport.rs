//! QUIC connections to peers: dialled once, reused, re-dialled after a
//! fault; every call has a deadline. A [`Faults`] table lets tests drop,
//! delay or cut traffic between chosen members.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::StoreError;
use crate::limits::Limits;
use crate::tls::SERVER_NAME;
use crate::types::NodeId;
use crate::wire::{read_frame, write_frame, Reply, Request, PROTOCOL_VERSION};

/// What happens to traffic from one member to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Every RPC fails as if the peer were unreachable.
    Drop,
    /// Every RPC waits this long first.
    Delay(Duration),
}

/// Fault rules keyed by (from, to) member ids. Shared between the members of
/// an in-process test cluster; empty in production.
#[derive(Clone, Default)]
pub struct Faults {
    rules: Arc<Mutex<HashMap<(NodeId, NodeId), Fault>>>,
}

impl Faults {
    pub fn set(&self, from: NodeId, to: NodeId, fault: Fault) {
        self.lock().insert((from, to), fault);
    }
    /// Cuts `a` off from every member in `others`, both ways.
    pub fn partition(&self, a: NodeId, others: &[NodeId]) {
        for &b in others {
            self.set(a, b, Fault::Drop);
            self.set(b, a, Fault::Drop);
        }
    }
    pub fn heal(&self) {
        self.lock().clear();
    }
    pub fn get(&self, from: NodeId, to: NodeId) -> Option<Fault> {
        self.lock().get(&(from, to)).copied()
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(NodeId, NodeId), Fault>> {
        // A panic elsewhere while holding this lock leaves plain data behind;
        // keep using it.
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Dials peers and carries requests. Members dial with their certificate;
/// operators' clients dial with a token and say `Hello` on each connection.
///
/// Each peer has its own slot: dialling one peer (up to the connect
/// timeout, for a dead one) never holds up calls to another, and a call
/// that fails drops only the connection it used, and only when that
/// connection is really dead, never a healthy peer's.
pub struct Transport {
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    hello: Option<HelloAs>,
    /// Held only to find or add a slot, never across an await.
    slots: Mutex<HashMap<SocketAddr, Arc<PeerSlot>>>,
    limits: Limits,
}

/// One peer's connection, and the lock that makes concurrent callers share
/// one dial.
#[derive(Default)]
struct PeerSlot {
    current: Mutex<Option<quinn::Connection>>,
    dialling: tokio::sync::Mutex<()>,
    heard: Mutex<Heard>,
}

/// When a call last saw the connection's received-datagram count move.
/// Kept across calls, so callers with deadlines shorter than the keep-alive
/// (Raft's heartbeats) still notice a connection that went silent.
#[derive(Default)]
struct Heard {
    connection: usize,
    datagrams: u64,
    at: Option<tokio::time::Instant>,
}

impl PeerSlot {
    fn live(&self) -> Option<quinn::Connection> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        current.as_ref().filter(|c| c.close_reason().is_none()).cloned()
    }

    fn set(&self, conn: quinn::Connection) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
    }

    /// How long `conn` has received nothing, as far as calls have seen.
    fn silent_for(&self, conn: &quinn::Connection) -> Duration {
        let now = tokio::time::Instant::now();
        let datagrams = conn.stats().udp_rx.datagrams;
        let mut heard = self.heard.lock().unwrap_or_else(|p| p.into_inner());
        if heard.at.is_none() || heard.connection != conn.stable_id() || heard.datagrams != datagrams {
            *heard = Heard { connection: conn.stable_id(), datagrams, at: Some(now) };
        }
        now.saturating_duration_since(heard.at.unwrap_or(now))
    }

    /// Drops `conn` if it is still the slot's connection (a newer one made
    /// by another caller stays).
    fn forget(&self, conn: &quinn::Connection) {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().is_some_and(|c| c.stable_id() == conn.stable_id()) {
            *current = None;
        }
    }
}

/// What a client without a member certificate says first on each
/// connection.
#[derive(Clone)]
pub enum HelloAs {
    /// A token's secret: the server token or the agent token.
    Token(String),
    /// A node agent's own credential, once it has claimed its node.
    Node { node: String, secret: String },
}

impl HelloAs {
    fn request(&self) -> Request {
        match self {
            HelloAs::Token(secret) => Request::Hello { version: PROTOCOL_VERSION, secret: secret.clone() },
            HelloAs::Node { node, secret } => Request::HelloNode { version: PROTOCOL_VERSION, node: node.clone(), secret: secret.clone() },
        }
    }
}

impl Transport {
    pub fn new(endpoint: quinn::Endpoint, client_config: quinn::ClientConfig, hello: Option<HelloAs>, limits: Limits) -> Self {
        Transport { endpoint, client_config, hello, slots: Default::default(), limits }
    }

    /// A client-only endpoint on an ephemeral port, for token holders.
    pub fn client_endpoint() -> Result<quinn::Endpoint, StoreError> {
        quinn::Endpoint::client("0.0.0.0:0".parse().expect("static address"))
            .map_err(|e| StoreError::Unreachable { addr: "0.0.0.0:0".into(), reason: format!("cannot open a UDP socket: {e}") })
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn endpoint(&self) -> &quinn::Endpoint {
        &self.endpoint
    }

    async fn resolve(addr: &str) -> Result<SocketAddr, StoreError> {
        if let Ok(sa) = addr.parse() {
            return Ok(sa);
        }
        tokio::net::lookup_host(addr)
            .await
            .map_err(|e| StoreError::Unreachable { addr: addr.into(), reason: format!("cannot resolve: {e}") })?
            .next()
            .ok_or_else(|| StoreError::Unreachable { addr: addr.into(), reason: "name has no address".into() })
    }

    fn slot(&self, sa: SocketAddr) -> Arc<PeerSlot> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner()).entry(sa).or_default().clone()
    }

    /// The peer's live connection, dialling it if there is none.
    async fn connection(&self, slot: &PeerSlot, sa: SocketAddr, addr: &str) -> Result<quinn::Connection, StoreError> {
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        let _dial = slot.dialling.lock().await;
        // Another caller may have dialled while this one waited.
        if let Some(c) = slot.live() {
            return Ok(c);
        }
        let timeout = self.limits.connect_timeout();
        let connecting = self
            .endpoint
            .connect_with(self.client_config.clone(), sa, SERVER_NAME)
            .map_err(|e| StoreError::Unreachable { addr: addr.into(), reason: e.to_string() })?;
        let dial_started = tokio::time::Instant::now();
        let conn = match tokio::time::timeout(timeout, connecting).await {
            Err(_) => return Err(StoreError::Timeout { addr: addr.into(), timeout_ms: timeout.as_millis() as u64 }),
            Ok(Err(e)) => {
                tracing::debug!(%addr, error = %e, ms = dial_started.elapsed().as_millis() as u64, "dial failed");
                return Err(connect_error(addr, e));
            }
            Ok(Ok(c)) => c,
        };
        tracing::debug!(%addr, ms = dial_started.elapsed().as_millis() as u64, "dialled");
        if let Some(hello) = &self.hello {
            let hello = hello.request();
            match tokio::time::timeout(timeout, exchange(&conn, &hello, self.limits.reply_size_max_bytes)).await {
                Err(_) => return Err(StoreError::Timeout { addr: addr.into(), timeout_ms: timeout.as_millis() as u64 }),
                Ok(Err(e)) => return Err(e),
                Ok(Ok(Reply::Ok)) => {}
                Ok(Ok(Reply::Error(e))) => return Err(e),
                Ok(Ok(other)) => return Err(StoreError::Protocol(format!("unexpected hello reply {other:?}"))),
            }
        }
        slot.set(conn.clone());
        Ok(conn)
    }

    /// One request, one reply, within `timeout` (dialling included).
    pub async fn call(&self, addr: &str, request: &Request, timeout: Duration) -> Result<Reply, StoreError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let timed_out = || StoreError::Timeout { addr: addr.into(), timeout_ms: timeout.as_millis() as u64 };
        let sa = Self::resolve(addr).await?;
        let slot = self.slot(sa);
        let conn = tokio::time::timeout_at(deadline, self.connection(&slot, sa, addr)).await.map_err(|_| timed_out())??;
        slot.silent_for(&conn);
        let result = tokio::time::timeout_at(deadline, exchange(&conn, request, self.limits.reply_size_max_bytes)).await;
        match result {
            Err(_) => {
                // A slow answer is no reason to drop a connection; silence
                // for two keep-alives is (a frozen peer, or one that was
                // restarted and whose reset got lost): the next call dials.
                if slot.silent_for(&conn) >= Duration::from_millis(self.limits.keep_alive_ms * 2) {
                    slot.forget(&conn);
                }
                Err(timed_out())
            }
            Ok(Err(e)) => {
                if conn.close_reason().is_some() {
                    slot.forget(&conn);
                }
                Err(e)
            }
            Ok(Ok(Reply::Error(e))) => Err(e),
            Ok(Ok(reply)) => Ok(reply),
        }
    }

    /// Opens a stream for a request with many reply frames (a watch).
    pub async fn open_stream(&self, addr: &str, request: &Request) -> Result<quinn::RecvStream, StoreError> {
        let timeout = self.limits.client_rpc_timeout();
        let sa = Self::resolve(addr).await?;
        let slot = self.slot(sa);
        let attempt = async {
            let conn = self.connection(&slot, sa, addr).await?;
            let opened = async {
                let (mut send, recv) =
                    conn.open_bi().await.map_err(|e| StoreError::Unreachable { addr: addr.into(), reason: e.to_string() })?;
                write_frame(&mut send, request).await?;
                send.finish().map_err(|e| StoreError::Protocol(e.to_string()))?;
                Ok::<_, StoreError>(recv)
            }
            .await;
            if opened.is_err() && conn.close_reason().is_some() {
                slot.forget(&conn);
            }
            opened
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .map_err(|_| StoreError::Timeout { addr: addr.into(), timeout_ms: timeout.as_millis() as u64 })?
    }
}

/// A member's QUIC endpoint settings, derived from its own private key so
/// they are the same across restarts: the key of its stateless-reset
/// tokens, and the key its connection ids are hashed with. A member that
/// was killed and started again then recognises its peers' packets for the
/// old connections as its own ids and answers them with a reset they
/// accept, so they re-dial at once instead of after the idle timeout.
/// (With a fresh random id key, quinn drops those packets as invalid and
/// sends no reset.)
pub fn endpoint_config(member_key_pem: &str) -> quinn::EndpointConfig {
    use sha2::{Digest, Sha256};
    let derive = |label: &[u8]| Sha256::digest([label, member_key_pem.as_bytes()].concat());
    let reset = derive(b"flotilla stateless reset\0");
    let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset)));
    let ids = derive(b"flotilla connection ids\0");
    let id_key = u64::from_le_bytes(ids[..8].try_into().expect("a SHA-256 digest has 32 bytes"));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(id_key)));
    config
}

fn connect_error(addr: &str, e: quinn::ConnectionError) -> StoreError {
    match e {
        quinn::ConnectionError::TransportError(t)
            if t.code.to_string().contains("crypto")
                || t.to_string().contains("certificate")
                || t.to_string().contains("another cluster") =>
        {
            StoreError::Unauthorized(format!("TLS handshake with {addr} failed: {t}"))
        }
        quinn::ConnectionError::ConnectionClosed(c)
            if c.error_code.to_string().contains("crypto") || c.to_string().contains("certificate") =>
        {
            StoreError::Unauthorized(format!("{addr} closed the connection: {c}"))
        }
        // A member shutting down refuses new connections: try another one.
        quinn::ConnectionError::ConnectionClosed(c) => {
            StoreError::Unreachable { addr: addr.into(), reason: format!("closed the connection: {c}") }
        }
        quinn::ConnectionError::TimedOut => StoreError::Timeout { addr: addr.into(), timeout_ms: 0 },
        other => StoreError::Unreachable { addr: addr.into(), reason: other.to_string() },
    }
}

async fn exchange(conn: &quinn::Connection, request: &Request, max_reply: usize) -> Result<Reply, StoreError> {
    let addr = conn.remote_address().to_string();
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| StoreError::Unreachable { addr: addr.clone(), reason: e.to_string() })?;
    write_frame(&mut send, request).await.map_err(|e| with_addr(e, &addr))?;
    send.finish().map_err(|e| StoreError::Protocol(e.to_string()))?;
    match read_frame::<Reply>(&mut recv, max_reply).await.map_err(|e| with_addr(e, &addr))? {
        Some(reply) => Ok(reply),
        None => Err(StoreError::Unreachable { addr, reason: "peer closed the stream without a reply".into() }),
    }
}

fn with_addr(e: StoreError, addr: &str) -> StoreError {
    match e {
        StoreError::Unreachable { addr: a, reason } if a.is_empty() => StoreError::Unreachable { addr: addr.into(), reason },
        other => other,
    }
}
