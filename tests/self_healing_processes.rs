//! Self-healing across real processes: three `flotilla server` processes
//! and three `flotilla agent` processes (sim runtime) over QUIC. A
//! Deployment's replica count comes back after `kill -9` of an agent and
//! again after `kill -9` of the leading server.

mod common;
use common::*;

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 30
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: flotilla/busybox:latest, resources: {requests: {cpu: 10m, memory: 16Mi}}}
";

/// (name, node) of running replicas.
fn running_on(api: &str) -> Vec<(String, String)> {
    running_pods(api, "web-").into_iter().map(|(name, node, _)| (name, node)).collect()
}

#[test]
fn replicas_come_back_after_kill_9_of_an_agent_and_of_the_leader() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut servers = Servers::start(root.path(), &[]);
    let all_peers = servers.peers.join(",");
    let mut agents: Vec<Option<Proc>> = (1..=3)
        .map(|i| {
            let name = format!("a{i}");
            let state = root.path().join(&name);
            Some(spawn(&[
                "agent",
                "--kubelet-listen",
                "127.0.0.1:0",
                "--name",
                &name,
                "--server",
                &all_peers,
                "--token",
                &servers.token,
                "--runtime",
                "sim",
                "--cpu",
                "4",
                "--memory",
                "8Gi",
                "--state-dir",
                state.to_str().expect("utf8"),
            ]))
        })
        .collect();
    let api = servers.api(0);
    until("three nodes", || cli(&api, &["get", "nodes"], None).1.matches(" Ready ").count() == 3);
    assert_eq!(cli(&api, &["apply", "-f", "-"], Some(DEPLOYMENT)).0, 0);
    until("30 replicas running", || running_on(&api).len() == 30);
    assert!(running_on(&api).iter().any(|(_, n)| n == "a2"), "a2 runs replicas");

    // kill -9 of an agent: its replicas come back on the other two.
    agents[1].take();
    until("30 running on a1 and a3 only", || {
        let r = running_on(&api);
        r.len() == 30 && r.iter().all(|(_, n)| n != "a2")
    });
    assert!(cli(&api, &["get", "nodes"], None).1.lines().any(|l| l.starts_with("a2 ") && l.contains("NotReady")));

    // kill -9 of the leading server: the others elect a leader, whose
    // controllers keep the count and follow a scale.
    let leader = servers.leader().expect("a leader");
    servers.procs[leader].take();
    let api = servers.api((leader + 1) % 3);
    until("scale accepted", || cli(&api, &["scale", "deployment", "web", "--replicas", "36"], None).0 == 0);
    until("36 running on a1 and a3", || {
        let r = running_on(&api);
        r.len() == 36 && r.iter().all(|(_, n)| n != "a2")
    });
    let (_, nodes) = cli(&api, &["get", "nodes"], None);
    assert!(nodes.lines().any(|l| l.starts_with("a1 ") && l.contains(" Ready ")), "{nodes}");
    assert!(nodes.lines().any(|l| l.starts_with("a3 ") && l.contains(" Ready ")), "{nodes}");
    drop(agents);
}
