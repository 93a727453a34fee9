//! Self-healing with sim agents in one test process, over real QUIC:
//! three server members (each with its LeaderSupervisor) and node agents
//! that reach them with the join token as `flotilla agent` does. Every
//! wait has a deadline; nothing sleeps on luck.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use flotilla::sim_cluster::{NodeShape, SimCluster};
use flotilla_actors::leader::LeaderSettings;
use flotilla_actors::model::kinds::lookup;
use flotilla_actors::{Propagation, Registry};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);

fn root(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("flotilla-selfheal-{name}-{}", std::process::id()))
}

async fn pods(registry: &Registry) -> Vec<Value> {
    let res = lookup("pods").unwrap();
    for _ in 0..50 {
        if let Ok((items, _, _)) = registry.list(res, Some("default"), &Default::default(), &Default::default(), 0, None).await {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pods could not be listed");
}

fn running(p: &Value) -> bool {
    p.pointer("/status/phase").and_then(Value::as_str) == Some("Running") && p.pointer("/metadata/deletionTimestamp").is_none()
}

fn node_of(p: &Value) -> Option<&str> {
    p.pointer("/spec/nodeName").and_then(Value::as_str)
}

/// Waits until `check` holds for the pods, or panics with `what` and the
/// last state seen.
async fn until_pods(registry: &Registry, what: &str, check: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let items = pods(registry).await;
        if check(&items) {
            return items;
        }
        let by_phase = items.iter().fold(HashMap::<String, usize>::new(), |mut m, p| {
            *m.entry(p.pointer("/status/phase").and_then(Value::as_str).unwrap_or("none").to_string()).or_default() += 1;
            m
        });
        let stuck: Vec<String> = items
            .iter()
            .filter(|p| !running(p))
            .take(3)
            .map(|p| format!("{} node={:?} status={}", p["metadata"]["name"], node_of(p), p["status"]))
            .collect();
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}; pods by phase: {by_phase:?}; not running: {stuck:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn deployment(name: &str, replicas: i64, image: &str, cpu: &str) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
           "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                    "strategy": {"rollingUpdate": {"maxSurge": 2, "maxUnavailable": 1}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "main", "image": image,
                                                          "resources": {"requests": {"cpu": cpu, "memory": "16Mi"}}}]}}}})
}

async fn scale(registry: &Registry, name: &str, replicas: i64) {
    let res = lookup("deployments").unwrap();
    registry.patch(res, Some("default"), name, json!({"spec": {"replicas": replicas}}), None).await.expect("scale");
}

async fn node_ready(registry: &Registry, name: &str) -> bool {
    let node = registry.get(lookup("nodes").unwrap(), None, name).await.expect("node exists");
    node["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True")
}

async fn cluster(name: &str, nodes: usize, shape: &NodeShape) -> SimCluster {
    // FLOTILLA_TEST_LOG=info shows the actors' logs when a test fails.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_TEST_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_test_writer().try_init();
    }
    let mut c = SimCluster::start(root(name), 3, LeaderSettings::default()).await.expect("cluster starts");
    for i in 0..nodes {
        c.add_node(&format!("n{i}"), shape, true).await.expect("agent starts");
    }
    let registry = c.registry().clone();
    until("every node registered", async || {
        let (items, _, _) = registry.list(lookup("nodes").unwrap(), None, &Default::default(), &Default::default(), 0, None).await.unwrap();
        items.len() == nodes
    })
    .await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_from_0_to_500_and_back_to_0() {
    let shape = NodeShape { pods_max: 200, ..Default::default() };
    let c = cluster("scale", 4, &shape).await;
    let registry = c.registry().clone();
    registry.create(lookup("deployments").unwrap(), Some("default"), deployment("web", 0, "busybox", "1m")).await.expect("create");
    scale(&registry, "web", 500).await;
    let items = until_pods(&registry, "500 replicas running", |p| p.iter().filter(|p| running(p)).count() == 500).await;
    // Spread: no node holds more than its share plus a little.
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for p in &items {
        *per_node.entry(node_of(p).unwrap()).or_default() += 1;
    }
    assert_eq!(per_node.len(), 4, "all four nodes used: {per_node:?}");
    assert!(per_node.values().all(|n| *n <= 150), "replicas spread across nodes: {per_node:?}");
    scale(&registry, "web", 0).await;
    until_pods(&registry, "every replica gone", |p| p.is_empty()).await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_s_replicas_come_back_on_the_other_nodes() {
    let mut c = cluster("kill", 3, &NodeShape::default()).await;
    let registry = c.registry().clone();
    registry.create(lookup("deployments").unwrap(), Some("default"), deployment("api", 30, "busybox", "10m")).await.expect("create");
    let items = until_pods(&registry, "30 replicas running", |p| p.iter().filter(|p| running(p)).count() == 30).await;
    let on_n1 = items.iter().filter(|p| node_of(p) == Some("n1")).count();
    assert!(on_n1 > 0, "n1 runs some replicas");
    let killed = Instant::now();
    c.kill_node("n1").await;
    until_pods(&registry, "30 replicas running on n0 and n2", |p| {
        p.iter().filter(|p| running(p) && node_of(p) != Some("n1")).count() == 30 && !p.iter().any(|p| node_of(p) == Some("n1"))
    })
    .await;
    eprintln!("replicas of the killed node running elsewhere after {} ms", killed.elapsed().as_millis());
    assert!(!node_ready(&registry, "n1").await, "the lost node is NotReady");
    let events = registry
        .list(lookup("events").unwrap(), Some("default"), &Default::default(), &Default::default(), 0, None)
        .await
        .expect("events")
        .0;
    assert!(events.iter().any(|e| e["reason"] == "NodeNotReady" && e["involvedObject"]["name"] == "n1"), "an event says the node was lost");
    // The machine comes back: it is Ready again and gets new work.
    c.add_node("n1", &NodeShape::default(), true).await.expect("agent restarts");
    let r = registry.clone();
    until("n1 Ready again", async || node_ready(&r, "n1").await).await;
    scale(&registry, "api", 45).await;
    until_pods(&registry, "45 running, some on n1", |p| {
        p.iter().filter(|p| running(p)).count() == 45 && p.iter().any(|p| running(p) && node_of(p) == Some("n1"))
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_agent_is_replaced_fences_itself_and_comes_back_when_healed() {
    let shape = NodeShape { fence: Duration::from_secs(3), ..Default::default() };
    let c = cluster("partition", 3, &shape).await;
    let registry = c.registry().clone();
    registry.create(lookup("deployments").unwrap(), Some("default"), deployment("db", 12, "busybox", "10m")).await.expect("create");
    until_pods(&registry, "12 replicas running", |p| p.iter().filter(|p| running(p)).count() == 12).await;
    let n2 = c.nodes.get("n2").expect("n2").runtime.clone();
    assert!(n2.running() > 0, "n2 runs containers before the partition");
    let order = |action: &str| {
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
        json!({"metadata": {"annotations": {"chaos.flotilla.io/order": format!("{action} {at}")}}})
    };
    let nodes = lookup("nodes").unwrap();
    registry.patch(nodes, None, "n2", order("partition"), None).await.expect("partition order");
    until_pods(&registry, "12 running away from n2", |p| {
        p.iter().filter(|p| running(p) && node_of(p) != Some("n2")).count() == 12 && !p.iter().any(|p| node_of(p) == Some("n2"))
    })
    .await;
    // Cut off past its fence, the agent stops its own containers: no
    // second copy of the replicas placed elsewhere keeps running.
    until("n2 fenced its containers", async || n2.running() == 0).await;
    registry.patch(nodes, None, "n2", order("heal"), None).await.expect("heal order");
    let r = registry.clone();
    until("n2 Ready again after heal", async || node_ready(&r, "n2").await).await;
    assert_eq!(n2.running(), 0, "nothing of the evicted pods restarts on the healed node");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_completes_when_the_leader_dies_in_the_middle() {
    let shape = NodeShape { start_latency: Duration::from_millis(150), ..Default::default() };
    let mut c = cluster("rollout", 3, &shape).await;
    let registry = c.servers[1].registry.clone();
    let deploys = lookup("deployments").unwrap();
    registry.create(deploys, Some("default"), deployment("web", 20, "app:v1", "10m")).await.expect("create");
    until_pods(&registry, "20 v1 replicas running", |p| p.iter().filter(|p| running(p)).count() == 20).await;
    registry
        .patch(
            deploys,
            Some("default"),
            "web",
            json!({"spec": {"template": {"spec": {"containers": [{"name": "main", "image": "app:v2",
            "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}}),
            None,
        )
        .await
        .expect("update the image");
    until_pods(&registry, "the rollout under way", |p| p.iter().any(|p| running(p) && p["spec"]["containers"][0]["image"] == "app:v2"))
        .await;
    let leader = c.leader_index().expect("a leader");
    c.servers[leader].stop().await;
    let survivor = c.servers.iter().enumerate().find(|(i, _)| *i != leader).map(|(_, s)| s.registry.clone()).unwrap();
    until_pods(&survivor, "20 v2 replicas running and no v1 left", |p| {
        p.iter().filter(|p| running(p) && p["spec"]["containers"][0]["image"] == "app:v2").count() == 20
            && !p.iter().any(|p| p["spec"]["containers"][0]["image"] == "app:v1")
    })
    .await;
    // The Deployment's status follows its pods: wait for the controller to
    // write it rather than read it the instant the pods run.
    let s = survivor.clone();
    until("the rollout reported complete", async || {
        let d = s.get(deploys, Some("default"), "web").await.expect("deployment");
        flotilla_actors::leader::rollout::rollout_status(&d).0
    })
    .await;
    c.servers.remove(leader);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pods_on_nodes_too_small_never_overcommit_and_the_rest_wait_with_a_reason() {
    let shape = NodeShape { cpu_millis: 1_000, memory_bytes: 1 << 30, ..Default::default() };
    let c = cluster("small", 5, &shape).await;
    let registry = c.registry().clone();
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "big"},
        "spec": {"replicas": 1000, "selector": {"matchLabels": {"app": "big"}},
                 "template": {"metadata": {"labels": {"app": "big"}},
                              "spec": {"containers": [{"name": "main", "image": "busybox",
                                                       "resources": {"requests": {"cpu": "100m", "memory": "16Mi"}}}]}}}});
    registry.create(lookup("replicasets").unwrap(), Some("default"), rs).await.expect("create");
    let reason = "0/5 nodes: 5 insufficient cpu";
    let items = until_pods(&registry, "50 running and 950 pending with the reason", |p| {
        p.len() == 1000
            && p.iter().filter(|p| running(p)).count() == 50
            && p.iter().filter(|p| node_of(p).is_none()).all(|p| {
                p["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "PodScheduled" && c["message"] == reason)
            })
    })
    .await;
    let mut per_node: HashMap<&str, usize> = HashMap::new();
    for p in items.iter().filter(|p| node_of(p).is_some()) {
        *per_node.entry(node_of(p).unwrap()).or_default() += 1;
    }
    assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![10; 5], "exactly 10 x 100m per 1-cpu node: {per_node:?}");
    // Capacity freed is used: deleting the set's pods on one node lets
    // pending ones take their place, still never over capacity.
    let victims: Vec<String> =
        items.iter().filter(|p| node_of(p) == Some("n0")).map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect();
    for v in &victims {
        registry
            .delete_with_grace(lookup("pods").unwrap(), Some("default"), v, None, Propagation::Background, Some(0))
            .await
            .expect("delete");
    }
    until_pods(&registry, "n0 full again with other pods", |p| {
        p.iter().filter(|p| running(p) && node_of(p) == Some("n0")).count() == 10
            && p.iter().filter(|p| node_of(p) == Some("n0")).count() == 10
            && !victims.iter().any(|v| p.iter().any(|x| x["metadata"]["name"] == v.as_str()))
    })
    .await;
    c.shutdown().await;
}

/// A namespace whose cleanup was cut short (a failure or a crash in the
/// middle) is finished by the leader, contents first: none stays
/// Terminating for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_left_terminating_is_finished_by_the_leader() {
    let c = cluster("ns", 1, &NodeShape::default()).await;
    let registry = c.registry().clone();
    let (namespaces, configmaps) = (lookup("namespaces").unwrap(), lookup("configmaps").unwrap());
    registry.create(namespaces, None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "half"}})).await.unwrap();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "left"}, "data": {"k": "v"}});
    registry.create(configmaps, Some("half"), cm).await.unwrap();
    // What a server that died right after marking it leaves behind.
    registry.write_status(namespaces, None, "half", &json!({"phase": "Terminating"})).await.unwrap();
    let r = registry.clone();
    until("the namespace and its contents gone", async || {
        let ns_gone = matches!(r.get(namespaces, None, "half").await, Err(flotilla_actors::RegistryError::NotFound { .. }));
        let cm_gone = matches!(r.get(configmaps, Some("half"), "left").await, Err(flotilla_actors::RegistryError::NotFound { .. }));
        ns_gone && cm_gone
    })
    .await;
    c.shutdown().await;
}
