//! A docker agent outlives its Docker engine going away. The agent reaches
//! the engine through a Unix-socket proxy in this test (its DOCKER_HOST),
//! which the test stops, closing every open connection and removing the
//! socket as a restarting dockerd does, and starts again. While the engine
//! is away the agent keeps running and its pods are neither failed nor
//! deleted; a scale-up made meanwhile runs once the engine is back, with
//! one container per pod and none left over; a `docker kill` after that is
//! restarted as usual. Runs where a Docker engine answers and the busybox
//! image can be built; elsewhere it prints SKIPPED.

mod common;
use common::*;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

const IMAGE: &str = "flotilla/busybox:latest";
const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: away}
spec:
  replicas: 2
  selector: {matchLabels: {app: away}}
  template:
    metadata: {labels: {app: away}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - {name: main, image: 'flotilla/busybox:latest', imagePullPolicy: IfNotPresent, command: [sleep, '3600'],
         resources: {requests: {cpu: 10m, memory: 16Mi}}}
";
/// How long the engine stays away.
const AWAY: Duration = Duration::from_secs(3);

/// Full ids of the node's running containers.
fn running_containers(node: &str) -> BTreeSet<String> {
    let (_, ids) = docker(&["ps", "-q", "--no-trunc", "--filter", &format!("label=io.flotilla.node={node}")]);
    ids.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
}

/// A stand-in for the engine's socket: forwards each connection to the
/// real one until stopped.
struct EngineProxy {
    rt: tokio::runtime::Runtime,
    path: PathBuf,
    upstream: PathBuf,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl EngineProxy {
    fn new(path: PathBuf, upstream: PathBuf) -> EngineProxy {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("tokio runtime");
        let mut proxy = EngineProxy { rt, path, upstream, task: None };
        proxy.start();
        proxy
    }

    /// The engine is back, at the same path.
    fn start(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        // Bound here, so the socket exists when this returns.
        let listener = std::os::unix::net::UnixListener::bind(&self.path).expect("bind the proxy's socket");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let upstream = self.upstream.clone();
        self.task = Some(self.rt.spawn(async move {
            let Ok(listener) = tokio::net::UnixListener::from_std(listener) else { return };
            // Dropped with this task when it is aborted, which aborts the
            // forwarding tasks and so closes every connection.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((mut inbound, _)) = accepted {
                            let upstream = upstream.clone();
                            connections.spawn(async move {
                                if let Ok(mut outbound) = tokio::net::UnixStream::connect(&upstream).await {
                                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                                }
                            });
                        }
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        }));
    }

    /// The engine goes away: open connections (the agent's waits on its
    /// containers among them) are cut and new ones find no socket.
    fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = self.rt.block_on(task);
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for EngineProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `common::spawn` for the agent, with the proxy as its engine; the
/// test's own `docker` commands keep the real socket.
/// One replica as its status reports it.
#[derive(Clone, Debug)]
struct Replica {
    name: String,
    phase: String,
    running: bool,
    restarts: i64,
    /// The Docker id of its current container.
    container: String,
}

/// The deployment's pods, or None when the API did not answer.
fn replicas(api: &str) -> Option<Vec<Replica>> {
    let (code, out) = cli(api, &["get", "pods", "-o", "json"], None);
    if code != 0 {
        return None;
    }
    let list: Value = serde_json::from_str(&out).ok()?;
    let items = list.get("items")?.as_array()?;
    Some(
        items
            .iter()
            .filter_map(|pod| {
                let name = pod.pointer("/metadata/name")?.as_str()?;
                if !name.starts_with("away-") {
                    return None;
                }
                let status = pod.pointer("/status/containerStatuses/0");
                let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
                Some(Replica {
                    name: name.to_string(),
                    phase: text(pod.pointer("/status/phase")),
                    running: status.and_then(|s| s.pointer("/state/running")).is_some(),
                    restarts: status.and_then(|s| s.get("restartCount")).and_then(Value::as_i64).unwrap_or(0),
                    container: text(status.and_then(|s| s.get("containerID"))).trim_start_matches("docker://").to_string(),
                })
            })
            .collect(),
    )
}

/// `count` replicas running, each on a container the engine runs, and no
/// other container of the node running (none orphaned or doubled).
fn settled(api: &str, node: &str, count: usize) -> bool {
    let Some(all) = replicas(api) else { return false };
    let running: Vec<&Replica> = all.iter().filter(|r| r.phase == "Running" && r.running && !r.container.is_empty()).collect();
    let claimed: BTreeSet<String> = running.iter().map(|r| r.container.clone()).collect();
    all.len() == count && running.len() == count && claimed == running_containers(node)
}

fn alive(agent: &mut Proc) -> bool {
    matches!(agent.0.try_wait(), Ok(None))
}

#[test]
fn the_docker_agent_survives_the_engine_going_away_and_coming_back() {
    if !docker(&["info"]).0 {
        eprintln!("SKIPPED: no Docker engine answers");
        return;
    }
    let upstream = match std::env::var("DOCKER_HOST") {
        Err(_) => PathBuf::from("/var/run/docker.sock"),
        Ok(host) => match host.strip_prefix("unix://") {
            Some(path) => PathBuf::from(path),
            None => {
                eprintln!("SKIPPED: DOCKER_HOST={host} is not a Unix socket, which the engine proxy needs");
                return;
            }
        },
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-image.sh");
    let built = Command::new("bash").arg(script).status().map(|s| s.success()).unwrap_or(false);
    if !built || !docker(&["image", "inspect", IMAGE]).0 {
        eprintln!("SKIPPED: the image {IMAGE} is missing and scripts/build-image.sh could not build it");
        return;
    }
    let root = tempfile::tempdir().expect("tempdir");
    let node = format!("ea{}", std::process::id());
    let _cleanup = DockerLeftovers(vec![node.clone()]);
    let socket = root.path().join("docker.sock");
    let mut proxy = EngineProxy::new(socket.clone(), upstream);
    let docker_host = format!("unix://{}", socket.display());

    let peer = free_udp();
    let http = free_tcp();
    let data = root.path().join("m1");
    let data_dir = data.to_str().expect("utf8");
    // Pod subnets of its own, apart from the other Docker tests'.
    let _server = spawn(&[
        "server",
        "--id",
        "1",
        "--data-dir",
        data_dir,
        "--peer",
        &peer,
        "--insecure-http",
        &http,
        "--http",
        "127.0.0.1:0",
        "--bootstrap",
        "--cluster-cidr",
        "10.232.0.0/16",
    ]);
    until("join token", || data.join("join-token").exists());
    let token = std::fs::read_to_string(data.join("join-token")).expect("token").trim().to_string();
    let api = format!("http://{http}");
    let state = root.path().join(&node);
    let mut agent = spawn_env(
        &[
            "agent",
            "--kubelet-listen",
            "127.0.0.1:0",
            "--name",
            &node,
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
            state.to_str().expect("utf8"),
        ],
        &[("DOCKER_HOST", &docker_host)],
    );
    until("the docker node Ready", || cli(&api, &["get", "nodes"], None).1.matches(" Ready ").count() == 1);
    until("the deployment accepted", || cli(&api, &["apply", "-f", "-"], Some(DEPLOYMENT)).0 == 0);
    until("2 replicas on real containers", || settled(&api, &node, 2));
    let before: BTreeSet<String> = replicas(&api).unwrap_or_default().into_iter().map(|r| r.name).collect();
    assert_eq!(before.len(), 2, "{before:?}");

    // The engine goes away; a scale-up arrives meanwhile.
    proxy.stop();
    let away = Instant::now();
    until("the scale-up accepted", || cli(&api, &["scale", "deployment", "away", "--replicas", "3"], None).0 == 0);
    while away.elapsed() < AWAY {
        assert!(alive(&mut agent), "the agent exited while the engine was away");
        if let Some(now) = replicas(&api) {
            let names: BTreeSet<String> = now.iter().map(|r| r.name.clone()).collect();
            assert!(names.is_superset(&before), "replicas went away with the engine: {before:?} became {names:?}");
            assert!(now.iter().all(|r| r.phase != "Failed"), "replicas failed with the engine away: {now:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // The engine is back: the agent carries on where it left off.
    proxy.start();
    until("3 replicas running, one container each", || settled(&api, &node, 3));
    assert!(alive(&mut agent), "the agent exited after the engine came back");
    let after: BTreeSet<String> = replicas(&api).unwrap_or_default().into_iter().map(|r| r.name).collect();
    assert!(after.is_superset(&before), "the replicas from before the outage are still there: {before:?} → {after:?}");

    // And it still restarts a container that dies.
    let victim =
        replicas(&api).unwrap_or_default().into_iter().find(|r| before.contains(&r.name)).expect("a replica from before the outage");
    assert!(docker(&["kill", &victim.container]).0, "docker kill {}", victim.container);
    until("the killed container restarted", || {
        replicas(&api).unwrap_or_default().iter().any(|r| {
            r.name == victim.name
                && r.phase == "Running"
                && r.running
                && r.restarts > victim.restarts
                && r.container != victim.container
                && running_containers(&node).contains(&r.container)
        })
    });
    until("3 replicas running after the restart", || settled(&api, &node, 3));

    assert_eq!(cli(&api, &["delete", "deployment", "away"], None).0, 0);
    until("the node's containers stopped", || running_containers(&node).is_empty());
}
