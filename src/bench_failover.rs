//! `flotilla bench failover`: how long a node's replicas take to run again
//! elsewhere after the node dies. One process holds a single-member store,
//! the leader's actors with default settings and N sim node agents; a
//! ReplicaSet keeps M replicas. Each trial kills one node agent (its
//! containers vanish and nothing more is heard from it) and times from the
//! kill until M replicas are Running on the other nodes: heartbeat grace,
//! NotReady and eviction, the ReplicaSet's replacements, the scheduler's
//! binds and the agents' starts. The node then comes back before the next
//! trial.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Args;
use flotilla_actors::model::kinds::{NODES, PODS, REPLICASETS};
use serde_json::{json, Value};

use crate::sim_cluster::{NodeShape, SimCluster};
use crate::stats::percentile_ms;

#[derive(Args)]
pub struct FailoverBenchArgs {
    #[arg(long, default_value_t = 10)]
    nodes: usize,
    #[arg(long, default_value_t = 1_000)]
    pods: usize,
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Longest one trial may take.
    #[arg(long, default_value_t = 60)]
    trial_timeout_secs: u64,
    #[arg(long)]
    json: bool,
}

/// Which pods run where, kept current from a watch (listing 1,000 pods
/// every few milliseconds would load the server more than the failover).
struct Tracker {
    watch: flotilla_actors::RegistryWatch,
    /// Running, not terminating pods: name -> node.
    running: HashMap<String, String>,
}

impl Tracker {
    async fn start(registry: &flotilla_actors::Registry) -> Result<Tracker, String> {
        let pods = &PODS;
        let (items, rv, _) =
            registry.list(pods, Some("default"), &Default::default(), &Default::default(), 0, None).await.map_err(|e| e.to_string())?;
        let watch = registry.watch(pods, Some("default"), rv).map_err(|e| e.to_string())?;
        let mut t = Tracker { watch, running: HashMap::new() };
        for p in &items {
            t.apply(p, false);
        }
        Ok(t)
    }

    fn apply(&mut self, pod: &Value, deleted: bool) {
        let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
        let running = !deleted
            && pod.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
            && pod.pointer("/metadata/deletionTimestamp").is_none();
        match (running, pod.pointer("/spec/nodeName").and_then(Value::as_str)) {
            (true, Some(node)) => self.running.insert(name, node.to_string()),
            _ => self.running.remove(&name),
        };
    }

    fn by_node(&self) -> HashMap<String, usize> {
        let mut by_node = HashMap::new();
        for node in self.running.values() {
            *by_node.entry(node.clone()).or_insert(0) += 1;
        }
        by_node
    }

    /// Waits until `want` pods run on nodes other than `except`.
    async fn wait_running(&mut self, want: usize, except: Option<&str>, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let total = self.running.values().filter(|n| Some(n.as_str()) != except).count();
            if total >= want {
                return Ok(());
            }
            tokio::select! {
                batch = self.watch.next() => {
                    for ev in batch.map_err(|e| e.to_string())? {
                        self.apply(&ev.object, ev.kind == flotilla_actors::WatchEventKind::Deleted);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(format!("only {total} of {want} replicas running after {} s", timeout.as_secs()));
                }
            }
        }
    }
}

pub async fn run(args: FailoverBenchArgs) -> Result<i32, String> {
    if args.nodes < 2 || args.pods == 0 || args.trials == 0 {
        return Err("--nodes must be at least 2, --pods and --trials positive".into());
    }
    let root = std::env::temp_dir().join(format!("flotilla-bench-failover-{}", std::process::id()));
    let mut cluster = SimCluster::start(root, 1, Default::default()).await?;
    let registry = cluster.registry().clone();
    // Room for every replica on one node fewer.
    let per_node = (args.pods / (args.nodes - 1) + 10) as i64;
    let shape = NodeShape { pods_max: per_node.max(110), cpu_millis: 64_000, memory_bytes: 256 << 30, ..Default::default() };
    let names: Vec<String> = (0..args.nodes).map(|i| format!("node-{i}")).collect();
    for n in &names {
        cluster.add_node(n, &shape, false).await?;
    }
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "failover"},
        "spec": {"replicas": args.pods, "selector": {"matchLabels": {"app": "failover"}},
                 "template": {"metadata": {"labels": {"app": "failover"}},
                              "spec": {"containers": [{"name": "main", "image": "flotilla/busybox:latest",
                                                       "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}}}});
    let mut tracker = Tracker::start(&registry).await?;
    registry.create(&REPLICASETS, Some("default"), rs).await.map_err(|e| e.to_string())?;
    tracker.wait_running(args.pods, None, Duration::from_secs(120)).await?;
    eprintln!("{} replicas running on {} sim nodes; {} trials", args.pods, args.nodes, args.trials);

    let mut times = Vec::new();
    for trial in 0..args.trials {
        let by_node = tracker.by_node();
        // The node with the most replicas: the worst case to lose.
        let victim = names.iter().max_by_key(|n| by_node.get(*n).copied().unwrap_or(0)).cloned().unwrap_or_default();
        let lost = by_node.get(&victim).copied().unwrap_or(0);
        let t = Instant::now();
        cluster.kill_node(&victim).await;
        tracker.wait_running(args.pods, Some(&victim), Duration::from_secs(args.trial_timeout_secs)).await?;
        let took = t.elapsed();
        times.push(took);
        eprintln!(
            "  trial {:>2}: killed {victim} with {lost} replicas; all {} running elsewhere after {} ms",
            trial + 1,
            args.pods,
            took.as_millis()
        );
        // The machine comes back, empty, and is Ready again before the next trial.
        cluster.add_node(&victim, &shape, false).await?;
        let nodes = &NODES;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let node = registry.get(nodes, None, &victim).await.map_err(|e| e.to_string())?;
            let ready =
                node["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == "Ready" && c["status"] == "True");
            if ready {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{victim} did not become Ready again within 30 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    times.sort();
    let (p50, p99, max) = (percentile_ms(&times, 0.5), percentile_ms(&times, 0.99), percentile_ms(&times, 1.0));
    println!(
        "failover benchmark: {} replicas on {} sim nodes, {} trials, node grace 1000 ms (default)",
        args.pods, args.nodes, args.trials
    );
    println!("  p50 ms   p99 ms   max ms   (kill of the busiest node agent -> every replica Running elsewhere)");
    println!("{p50:>8.0} {p99:>8.0} {max:>8.0}");
    cluster.shutdown().await;
    if args.json {
        println!("{}", json!({"nodes": args.nodes, "pods": args.pods, "trials": args.trials, "p50_ms": p50, "p99_ms": p99, "max_ms": max}));
    }
    Ok(0)
}
