//! The peer port against callers who hold no credential: what they send
//! before authenticating is bounded in size, in streams, in time and in
//! connections, and no byte sequence takes the member down.

use std::sync::Arc;
use std::time::Duration;

use flotilla_raft::tls::SERVER_NAME;
use flotilla_raft::transport::Transport;
use flotilla_raft::wire::{read_frame, Reply};
use flotilla_raft::{Limits, Member, StartMode, StoreClient, StoreConfig, StoreError};

const DEADLINE: Duration = Duration::from_secs(20);

fn free_addr() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral port");
    s.local_addr().expect("local address").to_string()
}

async fn member(limits: Limits) -> (tempfile::TempDir, Arc<Member>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = StoreConfig::new(1, dir.path().join("m1"), free_addr(), StartMode::Bootstrap);
    config.limits = limits;
    let m = Member::start(config).await.expect("bootstrap a member");
    (dir, m)
}

/// A QUIC connection as a token holder would open it (the right ALPN, the
/// server checked against the CA), but without saying the token.
async fn bare_connection(m: &Member) -> quinn::Connection {
    let endpoint = Transport::client_endpoint().expect("client endpoint");
    let config = m.token().client_config(&Limits::default()).expect("client config");
    let addr: std::net::SocketAddr = m.peer_addr().parse().expect("peer address");
    let connecting = endpoint.connect_with(config, addr, SERVER_NAME).expect("connect");
    tokio::time::timeout(DEADLINE, connecting).await.expect("handshake in time").expect("handshake")
}

/// The member still serves a real client: a write and a read.
async fn still_serves(m: &Member) {
    let client = StoreClient::new(vec![m.peer_addr().to_string()], &m.token().to_string()).expect("client");
    let rev = tokio::time::timeout(DEADLINE, client.put(b"/probe", b"alive")).await.expect("write in time").expect("write");
    assert!(rev > 0);
    let (kv, _) = client.get(b"/probe", true).await.expect("read");
    assert_eq!(kv.expect("the value").value, b"alive");
}

/// Sends raw bytes on a new stream and reads the answer.
async fn raw_exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<Option<Reply>, StoreError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| StoreError::Protocol(e.to_string()))?;
    send.write_all(bytes).await.map_err(|e| StoreError::Protocol(e.to_string()))?;
    let _ = send.finish();
    tokio::time::timeout(DEADLINE, read_frame::<Reply>(&mut recv, 1 << 20)).await.expect("an answer in time")
}

#[tokio::test]
async fn a_hello_whose_secret_claims_exabytes_is_refused_and_the_member_lives() {
    let (_dir, m) = member(Limits::default()).await;
    let conn = bare_connection(&m).await;
    // A Hello whose secret claims 2^62 bytes: this once aborted the member
    // with "memory allocation of 4611686018427387904 bytes failed".
    let frame = [0x00, 0x00, 0x00, 0x0b, 0x00, 0x01, 0xfd, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40];
    match raw_exchange(&conn, &frame).await {
        Ok(Some(Reply::Error(e))) => assert!(e.to_string().contains("malformed frame"), "{e}"),
        other => panic!("expected a malformed-frame error, got {other:?}"),
    }
    still_serves(&m).await;
}

#[tokio::test]
async fn frames_before_authentication_are_small() {
    let (_dir, m) = member(Limits::default()).await;
    let conn = bare_connection(&m).await;
    // A frame header announcing 3 MiB: refused from its header, nothing read.
    let header = (3u32 * 1024 * 1024).to_be_bytes();
    match raw_exchange(&conn, &header).await {
        Ok(Some(Reply::Error(e))) => assert!(e.to_string().contains("over the limit of 4096 bytes"), "{e}"),
        other => panic!("expected a size refusal, got {other:?}"),
    }
    still_serves(&m).await;
}

#[tokio::test]
async fn a_caller_that_does_not_authenticate_is_closed() {
    let limits = Limits { authenticate_within_ms: 300, ..Limits::default() };
    let (_dir, m) = member(limits).await;
    let silent = bare_connection(&m).await;
    let reason = tokio::time::timeout(DEADLINE, silent.closed()).await.expect("closed within the deadline");
    assert!(matches!(reason, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == 2u32.into()), "{reason:?}");

    // Streams that are not a Hello use up what an unauthenticated caller
    // is given, and the connection is closed.
    let chatty = bare_connection(&m).await;
    for _ in 0..2 {
        let _ = raw_exchange(&chatty, &[0, 0, 0, 1, 0xff]).await;
    }
    let reason = tokio::time::timeout(DEADLINE, chatty.closed()).await.expect("closed after its streams");
    assert!(matches!(reason, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == 2u32.into()), "{reason:?}");
    still_serves(&m).await;
}

#[tokio::test]
async fn unauthenticated_connections_from_one_address_are_bounded() {
    let limits = Limits { unauthenticated_connections_per_ip_max: 3, ..Limits::default() };
    let (_dir, m) = member(limits).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(bare_connection(&m).await);
    }
    let extra = bare_connection(&m).await;
    let reason = tokio::time::timeout(DEADLINE, extra.closed()).await.expect("the fourth is closed at once");
    assert!(matches!(reason, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == 1u32.into()), "{reason:?}");
    // Those held are still open; a caller with the token still gets in
    // once they go.
    assert!(held.iter().all(|c| c.close_reason().is_none()));
    drop(held);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let client = StoreClient::new(vec![m.peer_addr().to_string()], &m.token().to_string()).expect("client");
        match tokio::time::timeout(Duration::from_secs(5), client.put(b"/k", b"v")).await {
            Ok(Ok(_)) => break,
            _ if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("a token holder could not get in after the bare connections went: {other:?}"),
        }
    }
}

#[tokio::test]
async fn garbage_on_many_streams_leaves_the_member_serving() {
    let (_dir, m) = member(Limits::default()).await;
    // Deterministic garbage: lengths, partial headers, random bodies.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..40 {
        let conn = bare_connection(&m).await;
        for _ in 0..2 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 2 == 0 && bytes.len() >= 4 {
                // A plausible header for what follows.
                let body = (bytes.len() - 4) as u32;
                bytes[..4].copy_from_slice(&body.to_be_bytes());
            }
            let _ = raw_exchange(&conn, &bytes).await;
        }
        conn.close(0u32.into(), b"done");
    }
    still_serves(&m).await;
}

#[tokio::test]
async fn the_agent_token_reaches_the_agent_protocol_and_nothing_else() {
    let (dir, m) = member(Limits::default()).await;
    let agent_token = m.agent_token().unwrap().to_string();
    assert_ne!(agent_token, m.token().to_string());
    let written = std::fs::read_to_string(dir.path().join("m1").join("agent-token")).expect("DATA_DIR/agent-token");
    assert_eq!(written.trim(), agent_token);
    let agent = StoreClient::new(vec![m.peer_addr().to_string()], &agent_token).expect("client");
    // The member list (for finding a live member) is allowed...
    assert_eq!(agent.members().await.expect("members").len(), 1);
    // ...and the agent protocol is reached (no handler is set in this test).
    let e = agent.app_call(b"{}".to_vec()).await.expect_err("no handler here");
    assert!(e.to_string().contains("serves no application requests"), "{e}");
    // The raw store is not, neither a write nor a read nor a watch's history.
    for e in [
        agent.put(b"/registry/configmaps/default/x", b"notjson").await.expect_err("put refused"),
        agent.get(b"/registry/", true).await.expect_err("get refused"),
    ] {
        assert!(matches!(e, StoreError::Unauthorized(_)), "{e:?}");
        assert!(e.to_string().contains("agent token reaches only the agent protocol"), "{e}");
    }
    // Joining with it would hand over the CA's key: refused, and said why.
    let joiner = tempfile::tempdir().expect("tempdir");
    let config =
        StoreConfig::new(2, joiner.path().join("m2"), free_addr(), StartMode::Join { via: m.peer_addr().to_string(), token: agent_token });
    let e = Member::start(config).await.expect_err("a join with the agent token is refused");
    assert!(e.to_string().contains("that is the agent token"), "{e}");
    still_serves(&m).await;
}
