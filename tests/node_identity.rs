//! Node identity and NodeRestriction on the agent protocol, over real QUIC
//! against a one-member cluster in this process: the agent token buys one
//! node name once; a second agent claiming it is refused; a node acts only
//! for itself and the pods bound to it; removing the Node revokes its
//! credential.

use std::path::Path;

use flotilla::sim_cluster::SimCluster;
use flotilla_actors::agent::agent_protocol::{AgentMessage, AgentReply, AgentRequest};
use flotilla_actors::agent::control_plane::{AgentError, ControlPlane, NodeUsage};
use flotilla_actors::agent::remote::RemoteControlPlane;
use flotilla_actors::leader::LeaderSettings;
use flotilla_actors::model::kinds::{NODES, PODS, SECRETS};
use flotilla_actors::Propagation;
use flotilla_raft::StoreClient;
use rustls::pki_types::pem::PemObject;
use serde_json::{json, Value};

fn node(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "status": {}})
}

fn refused(result: Result<impl Sized, AgentError>, what: &str, says: &str) {
    match result {
        Err(AgentError::Refused(m)) => assert!(m.contains(says), "{what}: refused, but the reason {m:?} does not say {says:?}"),
        Err(e) => panic!("{what}: expected a refusal saying {says:?}, got {e:?}"),
        Ok(_) => panic!("{what}: expected a refusal saying {says:?}, but it was allowed"),
    }
}

async fn join(peers: &[String], token: &str, name: &str, dir: &Path) -> Result<RemoteControlPlane, AgentError> {
    RemoteControlPlane::join(peers.to_vec(), token, name, dir).await
}

/// A reply's failure message, for messages sent raw.
async fn raw(client: &StoreClient, message: &AgentMessage) -> String {
    let bytes = client.app_call(serde_json::to_vec(message).expect("encode")).await.expect("an answer");
    match serde_json::from_slice::<AgentReply>(&bytes).expect("a reply") {
        AgentReply::Failed { message, .. } => message,
        _ => "allowed".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_is_one_node_and_acts_only_for_it() {
    flotilla::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    // Nobody heartbeats here: a long grace keeps the leader from evicting.
    let settings = LeaderSettings { node_grace_ms: 600_000, node_grace_max_ms: 600_000, ..Default::default() };
    let cluster = SimCluster::start(tmp.path().join("cluster"), 1, settings).await.expect("cluster");
    let registry = cluster.registry().clone();
    let token = cluster.servers[0].member.agent_token().unwrap().to_string();
    let peers = cluster.peer_addrs();
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));

    let a = join(&peers, &token, "worker-a", &dir_a).await.expect("worker-a joins");
    let b = join(&peers, &token, "worker-b", &dir_b).await.expect("worker-b joins");
    a.register_node(node("worker-a")).await.expect("worker-a registers itself");
    b.register_node(node("worker-b")).await.expect("worker-b registers itself");

    // The finding: a second agent took worker-a's name silently.
    refused(join(&peers, &token, "worker-a", &tmp.path().join("impostor")).await, "a second agent as worker-a", "held by another agent");
    // A restart with its state directory is the same node, and so is a retried claim.
    let a = join(&peers, &token, "worker-a", &dir_a).await.expect("worker-a restarts as itself");
    refused(join(&peers, &token, "worker-b", &dir_a).await, "one state dir for two nodes", "give each agent its own --state-dir");
    refused(join(&peers, &token, "Not_A_Name", &tmp.path().join("c")).await, "a bad node name", "DNS subdomain");

    // Acting for another node.
    let usage = NodeUsage { cpu_millis: 0, memory_bytes: 0, pods: 0 };
    refused(a.heartbeat("worker-b", usage, false).await, "beat for worker-b", "may not act for node \"worker-b\"");
    refused(a.register_node(node("worker-b")).await, "register worker-b", "may not act for node");
    refused(a.update_node_status("worker-b", json!({})).await, "worker-b's status", "may not act for node");
    refused(a.list_pods("worker-b").await, "worker-b's pods", "may not act for node");
    let mut watch = a.watch_pods("worker-b", 0).await.expect("the stream opens");
    refused(watch.recv().await.expect("one frame"), "watching worker-b's pods", "may not act for node");
    a.heartbeat("worker-a", usage, false).await.expect("its own beat");

    // The finding: any agent could write any pod's status or finalize it.
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pb"},
                     "spec": {"nodeName": "worker-b", "containers": [{"name": "c", "image": "busybox"}]}});
    let pod = registry.create(&PODS, Some("default"), pod).await.expect("pod on worker-b");
    let uid = pod["metadata"]["uid"].as_str().expect("uid").to_string();
    refused(
        a.update_pod_status("default", "pb", &uid, json!({"phase": "Failed"})).await,
        "status of b's pod",
        "bound to node \"worker-b\"",
    );
    refused(a.finalize_pod("default", "pb", &uid).await, "finalizing b's pod", "bound to node \"worker-b\"");
    let still = registry.get(&PODS, Some("default"), "pb").await.expect("b's pod is still there");
    assert_ne!(still.pointer("/status/phase"), Some(&json!("Failed")), "a's write did not land");
    b.update_pod_status("default", "pb", &uid, json!({"phase": "Running"})).await.expect("b writes its own pod");

    // A node reads Secrets only through its own pods, and only those they
    // name (Kubernetes' node authorizer).
    for (name, value) in [("named", "bmFtZWQ="), ("unnamed", "dW5uYW1lZA==")] {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": {"k": value}});
        registry.create(&SECRETS, Some("default"), secret).await.expect("a secret");
    }
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ps"},
        "spec": {"nodeName": "worker-b", "containers": [{"name": "c", "image": "busybox",
                 "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "named", "key": "k"}}}]}]}});
    let pod = registry.create(&PODS, Some("default"), pod).await.expect("pod naming a secret");
    let ps_uid = pod["metadata"]["uid"].as_str().expect("uid").to_string();
    refused(a.pod_inputs("default", "ps", &ps_uid).await, "a's read of b's pod's secrets", "bound to node \"worker-b\"");
    let inputs = b.pod_inputs("default", "ps", &ps_uid).await.expect("b reads its own pod's inputs");
    assert_eq!(inputs.secrets.keys().collect::<Vec<_>>(), ["named"], "only the secret the pod names");
    assert_eq!(inputs.secrets["named"]["data"]["k"], "bmFtZWQ=");
    assert!(inputs.automount, "the default account's token is mounted unless someone opts out");
    let jwt = &inputs.tokens[flotilla::api::token_request::API_AUDIENCE].token;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let claims = cluster.servers[0].member.ca().verify_jwt(jwt, flotilla::api::token_request::API_AUDIENCE, now).expect("a valid token");
    assert_eq!(claims["sub"], "system:serviceaccount:default:default");
    assert_eq!(claims["kubernetes.io"]["pod"]["uid"], ps_uid.as_str(), "bound to the pod");
    assert_eq!(claims["kubernetes.io"]["node"]["name"], "worker-b", "and to its node");
    match b.pod_inputs("default", "ps", "another-uid").await {
        Err(AgentError::Gone(_)) => {}
        other => panic!("a replaced pod's inputs: expected Gone, got {:?}", other.map(|_| ())),
    }

    // Forged credentials and relays.
    let client = StoreClient::new(peers.clone(), &token).expect("client");
    let beat = |name: &str| AgentRequest::Heartbeat {
        name: name.into(),
        cpu_millis: 0,
        memory_bytes: 0,
        pods: 0,
        relayed: false,
        probe_only: false,
    };
    let forged = AgentMessage::AsNode { node: "worker-a".into(), secret: "0".repeat(64), request: beat("worker-a") };
    assert!(raw(&client, &forged).await.contains("wrong credential for node \"worker-a\""));
    let relayed = AgentMessage::Relayed(beat("worker-a"));
    assert!(raw(&client, &relayed).await.contains("only members relay"));
    let bare = serde_json::to_vec(&beat("worker-a")).expect("encode");
    assert!(client.app_call(bare).await.is_err(), "a request without the envelope is a protocol error");

    // The node certificate names the node.
    let cert = a.certificate(vec!["127.0.0.1".into()]).await.expect("a certificate");
    let der = rustls::pki_types::CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).expect("PEM");
    let user = flotilla::api::serve::user_of_certificate(&der).expect("a user");
    assert_eq!(user.name, "system:node:worker-a");
    assert!(user.in_group("system:nodes"), "{:?}", user.groups);
    let many: Vec<String> = (1..=9).map(|i| format!("10.0.0.{i}")).collect();
    refused(a.certificate(many).await, "nine addresses", "at most 8");
    refused(a.certificate(vec!["example.com".into()]).await, "a host name", "IP addresses");

    // A Node written through the API that no agent holds is not for the taking.
    registry.create(&NODES, None, node("api-made")).await.expect("a Node from the API");
    refused(join(&peers, &token, "api-made", &tmp.path().join("d")).await, "claiming api-made", "no agent holds");

    // Removing a node revokes its agent's credential.
    registry.delete(&NODES, None, "worker-a", None, Propagation::Background).await.expect("worker-a removed");
    refused(a.register_node(node("worker-a")).await, "worker-a registering again", "revoked");
    refused(a.update_node_status("worker-a", json!({})).await, "worker-a's status after removal", "revoked");
    assert!(registry.get(&NODES, None, "worker-a").await.is_err(), "worker-a stays removed");
    b.update_node_status("worker-b", json!({})).await.expect("worker-b is untouched");
    // The name is free again: an agent that starts anew may claim it (to
    // keep a machine out for good, its agent token must change too).
    let back = join(&peers, &token, "worker-a", &dir_a).await.expect("a restarted agent claims the freed name");
    back.register_node(node("worker-a")).await.expect("and registers it");

    cluster.shutdown().await;
}

/// Waits up to ten seconds for `check` to hold.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !check() {
        assert!(std::time::Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_agent_token_admits_no_new_node_and_keeps_the_joined_ones() {
    flotilla::install_crypto_provider();
    let tmp = tempfile::tempdir().expect("tempdir");
    let settings = LeaderSettings { node_grace_ms: 600_000, node_grace_max_ms: 600_000, ..Default::default() };
    let cluster = SimCluster::start(tmp.path().join("cluster"), 1, settings).await.expect("cluster");
    let registry = cluster.registry().clone();
    let member = cluster.servers[0].member.clone();
    let old = member.agent_token().unwrap().to_string();
    let peers = cluster.peer_addrs();
    let dir_a = tmp.path().join("a");
    let token_file = tmp.path().join("cluster/m1/agent-token");
    assert_eq!(std::fs::read_to_string(&token_file).expect("agent-token").trim(), old, "the file holds the token in force");

    let a = join(&peers, &old, "worker-a", &dir_a).await.expect("worker-a joins");
    a.register_node(node("worker-a")).await.expect("worker-a registers");

    // The agent token cannot rotate it; the server token can.
    let agent_client = StoreClient::new(peers.clone(), &old).expect("client");
    let parsed_old = flotilla_raft::tls::JoinToken::parse(&old).expect("token");
    assert!(
        flotilla::cmd_token::rotate_agent_token(&agent_client, &parsed_old).await.is_err(),
        "an agent-token holder rotated the agent token"
    );
    let server_client = StoreClient::new(peers.clone(), &member.token().to_string()).expect("client");
    let new = flotilla::cmd_token::rotate_agent_token(&server_client, member.token()).await.expect("rotated");
    let new = new.to_string();
    assert_ne!(new, old);
    assert_eq!(member.agent_token().unwrap().to_string(), new, "the member admits the new token");
    eventually("the agent-token file follows the rotation", || std::fs::read_to_string(&token_file).is_ok_and(|t| t.trim() == new)).await;

    // The old token admits nobody new.
    refused(join(&peers, &old, "worker-c", &tmp.path().join("c")).await, "a new node with the old token", "rotated away");
    let stale = StoreClient::new(peers.clone(), &old).expect("client");
    assert!(matches!(stale.members().await, Err(flotilla_raft::StoreError::Unauthorized(_))), "the old token still says hello");
    // A joined node keeps working, across a restart on a new connection,
    // though it still has only the old token.
    a.heartbeat("worker-a", NodeUsage { cpu_millis: 0, memory_bytes: 0, pods: 0 }, false).await.expect("worker-a beats");
    let a = join(&peers, &old, "worker-a", &dir_a).await.expect("worker-a restarts with the old token and its credential");
    a.update_node_status("worker-a", json!({})).await.expect("and acts as itself");
    // A forged node credential says hello to nobody.
    let forged = StoreClient::as_node(peers.clone(), &new, "worker-a", &"0".repeat(64)).expect("client");
    match forged.members().await {
        Err(flotilla_raft::StoreError::Unauthorized(m)) => assert!(m.contains("no such credential"), "{m}"),
        other => panic!("a forged node credential: expected Unauthorized, got {other:?}"),
    }
    // The new token admits a new node.
    let c = join(&peers, &new, "worker-c", &tmp.path().join("c")).await.expect("a new node with the new token");
    c.register_node(node("worker-c")).await.expect("worker-c registers");

    // Removed and rotated: the machine is out for good.
    registry.delete(&NODES, None, "worker-a", None, Propagation::Background).await.expect("worker-a removed");
    refused(join(&peers, &old, "worker-a", &dir_a).await, "the removed node's agent, restarted", "rotated away");

    // Garbage under the key admits no agent token at all (never the old one).
    server_client.put(flotilla_raft::member::AGENT_TOKEN_KEY, b"notatoken").await.expect("garbage stored");
    assert!(member.agent_token().is_err(), "a garbage agent token is reported");
    refused(join(&peers, &new, "worker-d", &tmp.path().join("d")).await, "a new node under a garbage token", "rotated away");
    refused(join(&peers, &old, "worker-d", &tmp.path().join("d")).await, "the old token under a garbage token", "rotated away");
    let newer = flotilla::cmd_token::rotate_agent_token(&server_client, member.token()).await.expect("rotated again").to_string();
    join(&peers, &newer, "worker-d", &tmp.path().join("d")).await.expect("a new node with the newest token");

    cluster.shutdown().await;
}
