//! Node agent tests: a real store member and registry in the test process,
//! a NodeAgent over the sim and process runtimes, pods bound to it by hand.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use flotilla_actors::agent::control_plane::{Heartbeats, LocalControlPlane};
use flotilla_actors::agent::node_agent::{NodeAgent, NodeAgentArgs};
use flotilla_actors::agent::pod_state::BackoffPolicy;
use flotilla_actors::model::kinds::lookup;
use flotilla_actors::runtime::process::ProcessRuntime;
use flotilla_actors::runtime::sim::SimRuntime;
use flotilla_actors::runtime::ContainerRuntime;
use flotilla_actors::{Registry, RegistryError};
use flotilla_raft::{Member, StartMode, StoreConfig};
use ractor::Actor;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);

async fn registry(dir: &std::path::Path) -> Registry {
    let addr = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
    let member = Member::start(StoreConfig::new(1, dir.join("m1"), addr, StartMode::Bootstrap)).await.expect("member");
    let registry = Registry::new(member);
    let start = tokio::time::Instant::now();
    while registry.ensure_builtin_objects().await.is_err() {
        assert!(start.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    registry
}

async fn start_agent(
    registry: &Registry,
    name: &str,
    runtime: Arc<dyn ContainerRuntime>,
) -> ractor::ActorRef<flotilla_actors::agent::node_agent::NodeAgentMsg> {
    let args = NodeAgentArgs {
        name: name.into(),
        node_ip: "127.0.0.1".into(),
        labels: BTreeMap::new(),
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
        heartbeat: Duration::from_millis(200),
        status_period: Duration::from_secs(5),
        control: Arc::new(LocalControlPlane::new(registry.clone(), Heartbeats::default())),
        runtime,
        backoff: BackoffPolicy {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(800),
            reset_after: Duration::from_secs(60),
        },
        fence: flotilla_actors::agent::node_agent::FENCE_DEFAULT,
        pods_max: flotilla_actors::agent::node_agent::PODS_MAX_DEFAULT,
        kubelet_port: None,
        volumes_dir: std::env::temp_dir().join(format!("flotilla-test-volumes-{}", std::process::id())).join(name),
    };
    let (agent, _) = Actor::spawn(None, NodeAgent, args).await.expect("agent starts");
    agent
}

fn pod(name: &str, node: &str, command: &[&str], restart: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"nodeName": node, "restartPolicy": restart, "terminationGracePeriodSeconds": 5,
                 "containers": [{"name": "main", "image": "flotilla/busybox:latest", "command": command}]}})
}

async fn wait_pod<F: Fn(&Value) -> bool>(registry: &Registry, name: &str, what: &str, check: F) -> Value {
    let pods = lookup("pods").unwrap();
    let start = tokio::time::Instant::now();
    loop {
        if let Ok(p) = registry.get(pods, Some("default"), name).await {
            if check(&p) {
                return p;
            }
            if start.elapsed() > DEADLINE {
                panic!("pod {name} never {what}: {}", p["status"]);
            }
        } else if start.elapsed() > DEADLINE {
            panic!("pod {name} never {what}: it does not exist");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn restarts(p: &Value) -> i64 {
    p.pointer("/status/containerStatuses/0/restartCount").and_then(Value::as_i64).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sim_pods_run_crash_restart_with_backoff_and_stop_on_delete() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path()).await;
    let sim = Arc::new(SimRuntime::new(Duration::from_millis(5)));
    let _agent = start_agent(&registry, "sim-1", sim.clone()).await;
    let nodes = lookup("nodes").unwrap();
    let node = registry.get(nodes, None, "sim-1").await.expect("node registered");
    assert_eq!(node["status"]["capacity"]["cpu"], "4");
    assert_eq!(node["status"]["conditions"][0]["status"], "True");

    let pods = lookup("pods").unwrap();
    registry.create(pods, Some("default"), pod("web", "sim-1", &["serve"], "Always")).await.unwrap();
    let running =
        wait_pod(&registry, "web", "ran", |p| p["status"]["phase"] == "Running" && p["status"]["containerStatuses"][0]["ready"] == true)
            .await;
    assert_eq!(running["status"]["conditions"][3]["type"], "Ready");
    assert!(running["status"]["containerStatuses"][0]["containerID"].as_str().unwrap().starts_with("sim://"));

    // Two crashes: each is restarted, and the count shows it.
    for n in 1..=2 {
        let start = tokio::time::Instant::now();
        while !sim.crash("web", "main", 1) {
            assert!(start.elapsed() < DEADLINE, "container never running again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let p = wait_pod(&registry, "web", "restarted", |p| restarts(p) == n && p["status"]["containerStatuses"][0]["ready"] == true).await;
        assert_eq!(p["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 1);
    }

    // Deleting the pod stops its container, then the object goes away.
    registry.delete(pods, Some("default"), "web", None, flotilla_actors::Propagation::Background).await.unwrap();
    let start = tokio::time::Instant::now();
    loop {
        match registry.get(pods, Some("default"), "web").await {
            Err(RegistryError::NotFound { .. }) => break,
            _ => {
                assert!(start.elapsed() < DEADLINE, "pod never finalized");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(sim.running(), 0);

    // A pod whose image cannot be pulled reports it, and the agent lives on.
    registry.create(pods, Some("default"), pod("ghost", "sim-1", &["x"], "Always").tap_image("doesnotexist:1")).await.unwrap();
    wait_pod(&registry, "ghost", "reported the pull failure", |p| {
        matches!(
            p.pointer("/status/containerStatuses/0/state/waiting/reason").and_then(Value::as_str),
            Some("ErrImagePull") | Some("ImagePullBackOff")
        )
    })
    .await;
    registry.create(pods, Some("default"), pod("after", "sim-1", &["serve"], "Always")).await.unwrap();
    wait_pod(&registry, "after", "ran", |p| p["status"]["phase"] == "Running").await;
}

trait TapImage {
    fn tap_image(self, image: &str) -> Value;
}

impl TapImage for Value {
    fn tap_image(mut self, image: &str) -> Value {
        self["spec"]["containers"][0]["image"] = json!(image);
        self
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn process_pods_report_exit_codes_logs_and_stop_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path()).await;
    let runtime = Arc::new(ProcessRuntime::new(dir.path().join("agent")).unwrap());
    let _agent = start_agent(&registry, "proc-1", runtime.clone()).await;
    let pods = lookup("pods").unwrap();

    registry.create(pods, Some("default"), pod("ok", "proc-1", &["sh", "-c", "echo done"], "Never")).await.unwrap();
    let p = wait_pod(&registry, "ok", "succeeded", |p| p["status"]["phase"] == "Succeeded").await;
    assert_eq!(p["status"]["containerStatuses"][0]["state"]["terminated"]["reason"], "Completed");

    registry.create(pods, Some("default"), pod("bad", "proc-1", &["sh", "-c", "exit 7"], "Never")).await.unwrap();
    let p = wait_pod(&registry, "bad", "failed", |p| p["status"]["phase"] == "Failed").await;
    assert_eq!(p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 7);

    registry.create(pods, Some("default"), pod("flaky", "proc-1", &["sh", "-c", "echo try; exit 2"], "OnFailure")).await.unwrap();
    wait_pod(&registry, "flaky", "restarted twice", |p| restarts(p) >= 2).await;

    registry.create(pods, Some("default"), pod("missing", "proc-1", &["/no/such/program"], "Always")).await.unwrap();
    let p = wait_pod(&registry, "missing", "reported the missing command", |p| {
        p.pointer("/status/containerStatuses/0/state/waiting/reason").and_then(Value::as_str) == Some("CreateContainerError")
    })
    .await;
    assert!(p["status"]["containerStatuses"][0]["state"]["waiting"]["message"].as_str().unwrap().contains("not found"));

    // A long-running pod: its logs are readable, and deleting it sends
    // SIGTERM, which it answers within the grace period.
    registry
        .create(
            pods,
            Some("default"),
            pod("server", "proc-1", &["sh", "-c", "trap 'echo bye; exit 0' TERM; echo hello; while true; do sleep 0.1; done"], "Always"),
        )
        .await
        .unwrap();
    let p = wait_pod(&registry, "server", "ran", |p| p["status"]["phase"] == "Running").await;
    let id = p["status"]["containerStatuses"][0]["containerID"].as_str().unwrap().trim_start_matches("process://").to_string();
    let start = tokio::time::Instant::now();
    while !String::from_utf8_lossy(&runtime.logs(&id, None).await.unwrap()).contains("hello") {
        assert!(start.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let t = tokio::time::Instant::now();
    registry.delete(pods, Some("default"), "server", None, flotilla_actors::Propagation::Background).await.unwrap();
    loop {
        match registry.get(pods, Some("default"), "server").await {
            Err(RegistryError::NotFound { .. }) => break,
            _ => {
                assert!(t.elapsed() < DEADLINE, "pod never finalized");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert!(t.elapsed() < Duration::from_secs(5), "the container answered SIGTERM, no need to wait out the grace period");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readiness_and_liveness_probes_drive_ready_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path()).await;
    let runtime = Arc::new(ProcessRuntime::new(dir.path().join("agent")).unwrap());
    let _agent = start_agent(&registry, "probe-1", runtime).await;
    let pods = lookup("pods").unwrap();
    let marker = dir.path().join("ready");
    let marker_s = marker.to_str().unwrap().to_string();
    let mut ready_pod = pod("gated", "probe-1", &["sh", "-c", "while true; do sleep 0.1; done"], "Always");
    ready_pod["spec"]["containers"][0]["readinessProbe"] =
        json!({"exec": {"command": ["test", "-f", marker_s]}, "periodSeconds": 1, "failureThreshold": 1});
    registry.create(pods, Some("default"), ready_pod).await.unwrap();
    let p = wait_pod(&registry, "gated", "ran", |p| p["status"]["phase"] == "Running").await;
    assert_eq!(p["status"]["containerStatuses"][0]["ready"], false, "not ready before the probe passes");
    std::fs::write(&marker, b"").unwrap();
    wait_pod(&registry, "gated", "became ready", |p| {
        p["status"]["containerStatuses"][0]["ready"] == true && p["status"]["conditions"][3]["status"] == "True"
    })
    .await;
    std::fs::remove_file(&marker).unwrap();
    wait_pod(&registry, "gated", "became unready", |p| p["status"]["containerStatuses"][0]["ready"] == false).await;

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut live_pod = pod("unhealthy", "probe-1", &["sh", "-c", "while true; do sleep 0.1; done"], "Always");
    live_pod["spec"]["containers"][0]["livenessProbe"] = json!({"tcpSocket": {"port": closed}, "periodSeconds": 1, "failureThreshold": 2});
    registry.create(pods, Some("default"), live_pod).await.unwrap();
    let p = wait_pod(&registry, "unhealthy", "was restarted by its liveness probe", |p| restarts(p) >= 1).await;
    assert_eq!(
        p["status"]["containerStatuses"][0]["lastState"]["terminated"]["message"],
        "liveness probe failed; the container was restarted"
    );
}

#[tokio::test]
async fn a_pod_subnet_is_held_by_one_node_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path()).await;
    let nodes = lookup("nodes").unwrap();
    for name in ["n1", "n2"] {
        registry.create(nodes, None, json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})).await.unwrap();
    }
    let n1 = registry.assign_pod_cidr("n1", "10.224.7.0/24").await.unwrap();
    assert_eq!(n1.pointer("/spec/podCIDR"), Some(&json!("10.224.7.0/24")));
    // Whoever asks for it next (a second leader with a stale cache, say) is refused.
    match registry.assign_pod_cidr("n2", "10.224.7.0/24").await {
        Err(RegistryError::Conflict { message, .. }) => assert_eq!(message, "pod subnet 10.224.7.0/24 is held by node n1"),
        other => panic!("expected a conflict, got {other:?}"),
    }
    // A node keeps its subnet: asking again changes nothing.
    let again = registry.assign_pod_cidr("n1", "10.224.8.0/24").await.unwrap();
    assert_eq!(again.pointer("/spec/podCIDR"), Some(&json!("10.224.7.0/24")));
    // Once its node is gone, the subnet is free.
    registry.delete(nodes, None, "n1", None, flotilla_actors::Propagation::Background).await.unwrap();
    let n2 = registry.assign_pod_cidr("n2", "10.224.7.0/24").await.unwrap();
    assert_eq!(n2.pointer("/spec/podCIDR"), Some(&json!("10.224.7.0/24")));
}

/// An actor of ours that dies is not the container dying: the pod actor
/// puts a new container actor on the same container, no restart is
/// counted, and the container's real exit is still seen later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_container_actor_that_dies_is_replaced_without_touching_the_container() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path()).await;
    let sim = Arc::new(SimRuntime::new(Duration::from_millis(5)));
    let agent = start_agent(&registry, "sim-k", sim.clone()).await;
    let pods = lookup("pods").unwrap();
    registry.create(pods, Some("default"), pod("steady", "sim-k", &["serve"], "Never")).await.unwrap();
    wait_pod(&registry, "steady", "ran", |p| p["status"]["phase"] == "Running").await;

    let container_actors = || -> Vec<ractor::ActorCell> { agent.get_children().iter().flat_map(|pod| pod.get_children()).collect() };
    let first = container_actors();
    assert_eq!(first.len(), 1, "one pod actor with one container actor");
    first[0].kill();
    let start = tokio::time::Instant::now();
    while container_actors().first().is_none_or(|c| c.get_id() == first[0].get_id()) {
        assert!(start.elapsed() < DEADLINE, "no new container actor took over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sim.running(), 1, "the container was left running");

    let still = registry.get(pods, Some("default"), "steady").await.unwrap();
    assert_eq!(still["status"]["phase"], "Running", "nothing about the container changed: {}", still["status"]);

    // The container's own exit is what the pod reports: code 3, no
    // restart (restartPolicy Never), phase Failed; not exit 0, Completed.
    assert!(sim.crash("steady", "main", 3));
    let failed = wait_pod(&registry, "steady", "failed", |p| p["status"]["phase"] == "Failed").await;
    assert_eq!(failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 3, "{}", failed["status"]);
    assert_eq!(restarts(&failed), 0);
}

/// The registry takes time and identities from its seams: on a manual
/// clock with seeded identities, what it makes up is reproducible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_registry_reads_time_and_identities_from_its_seams() {
    use flotilla_actors::clock::ManualClock;
    use flotilla_actors::identities::RandomIdentities;
    let dir = tempfile::tempdir().unwrap();
    let base = registry(dir.path()).await;
    let make = |seed: u64, ns: &str| {
        let registry = base.clone().with_clock(ManualClock::new(1_780_000_000_000)).with_identities(RandomIdentities::seeded(seed));
        let cms = lookup("configmaps").unwrap();
        let ns = ns.to_string();
        async move {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"generateName": "settings-"}});
            registry.create(cms, Some(&ns), cm).await.expect("created")
        }
    };
    let (a, b, c) = (make(5, "default").await, make(5, "flotilla-system").await, make(6, "default").await);
    let identity = |o: &Value| (o["metadata"]["name"].clone(), o["metadata"]["uid"].clone(), o["metadata"]["creationTimestamp"].clone());
    assert_eq!(identity(&a), identity(&b), "one seed and one clock make the same name, uid and timestamp");
    assert_eq!(a["metadata"]["creationTimestamp"], "2026-05-28T20:26:40Z");
    assert_ne!(identity(&a).1, identity(&c).1, "another seed, another uid");
}
