//! Self-healing on real containers: one `flotilla server` and two
//! `flotilla agent --runtime docker` processes with the local busybox
//! image. A `docker kill` of a replica's container is restarted by its
//! agent; `kill -9` of an agent gets its replicas running on the other.
//! Runs where a Docker engine answers; elsewhere it prints SKIPPED.

mod common;
use common::*;

const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: boxes}
spec:
  replicas: 4
  selector: {matchLabels: {app: boxes}}
  template:
    metadata: {labels: {app: boxes}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: 'flotilla/busybox:latest', imagePullPolicy: IfNotPresent, command: [sleep, '3600'],
         resources: {requests: {cpu: 10m, memory: 16Mi}}}
";

fn replicas(api: &str) -> Vec<(String, String, String)> {
    running_pods(api, "boxes-")
}

#[test]
fn replicas_on_real_containers_survive_docker_kill_and_the_loss_of_an_agent() {
    if !docker(&["info"]).0 {
        eprintln!("SKIPPED: no Docker engine answers");
        return;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-image.sh");
    assert!(std::process::Command::new("bash").arg(script).status().map(|s| s.success()).unwrap_or(false), "build-image.sh failed");
    let root = tempfile::tempdir().expect("tempdir");
    let tag = format!("dk{}", std::process::id());
    let (n1, n2) = (format!("{tag}-1"), format!("{tag}-2"));
    let peer = free_udp();
    let http = free_tcp();
    let data = root.path().join("m1");
    // Removed last, also when the test fails; declared before the agents so
    // that they are killed first.
    let _leftovers = DockerLeftovers(vec![n1.clone(), n2.clone()]);
    // Pod subnets of its own, apart from the other Docker tests'.
    let _server = spawn(&[
        "server",
        "--id",
        "1",
        "--data-dir",
        data.to_str().unwrap(),
        "--peer",
        &peer,
        "--insecure-http",
        &http,
        "--http",
        "127.0.0.1:0",
        "--bootstrap",
        "--cluster-cidr",
        "10.231.0.0/16",
    ]);
    until("join token", || data.join("join-token").exists());
    let token = std::fs::read_to_string(data.join("join-token")).expect("token").trim().to_string();
    let api = format!("http://{http}");
    let agent = |name: &str| {
        let state = root.path().join(name);
        spawn(&[
            "agent",
            "--kubelet-listen",
            "127.0.0.1:0",
            "--name",
            name,
            "--server",
            &peer,
            "--token",
            &token,
            "--runtime",
            "docker",
            "--cpu",
            "2",
            "--memory",
            "2Gi",
            "--state-dir",
            state.to_str().unwrap(),
        ])
    };
    let mut a1 = Some(agent(&n1));
    let _a2 = agent(&n2);
    until("two docker nodes Ready", || cli(&api, &["get", "nodes"], None).1.matches(" Ready ").count() == 2);
    until("the deployment accepted", || cli(&api, &["apply", "-f", "-"], Some(DEPLOYMENT)).0 == 0);
    until("4 replicas on real containers", || replicas(&api).len() == 4);
    assert!(replicas(&api).iter().any(|(_, n, _)| *n == n1) && replicas(&api).iter().any(|(_, n, _)| *n == n2), "spread over both");

    // docker kill of one replica's container: its agent restarts it.
    let (pod, _, _) = replicas(&api).into_iter().find(|(_, n, _)| *n == n2).expect("a replica on n2");
    let (_, id) = docker(&["ps", "-q", "--filter", &format!("label=io.flotilla.pod={pod}")]);
    assert!(docker(&["kill", id.lines().next().expect("its container")]).0);
    until("the killed container restarted", || replicas(&api).iter().any(|(p, _, r)| *p == pod && r == "1"));

    // kill -9 of an agent: its replicas run again on the other node.
    a1.take();
    until("4 replicas running on n2", || {
        let r = replicas(&api);
        r.len() == 4 && r.iter().all(|(_, n, _)| *n == n2)
    });
    let (_, running) = docker(&["ps", "-q", "--filter", &format!("label=io.flotilla.node={n2}")]);
    assert_eq!(running.lines().filter(|l| !l.is_empty()).count(), 4, "four real containers on n2");
    assert_eq!(cli(&api, &["delete", "deployment", "boxes"], None).0, 0);
    until("n2's containers stopped", || docker(&["ps", "-q", "--filter", &format!("label=io.flotilla.node={n2}")]).1.is_empty());
    // The dead agent's containers have no one to stop them (as with any
    // orchestrator whose node agent is gone): `_leftovers` removes them.
}
