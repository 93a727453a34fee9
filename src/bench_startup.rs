//! `flotilla bench startup`: pod startup latency. One process holds a
//! single-member store, the registry and a node agent on the chosen
//! runtime; N pods bound to the node are created at once, and each pod's
//! latency is from its creation being acknowledged to the first status that
//! shows it Running and ready. Also reports the process's RSS with the pods
//! running.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::stats::percentile_ms;
use flotilla_actors::agent::control_plane::{Heartbeats, LocalControlPlane};
use flotilla_actors::agent::node_agent::{NodeAgent, NodeAgentArgs};
use flotilla_actors::agent::pod_state::BackoffPolicy;
use flotilla_actors::model::kinds::PODS;
use flotilla_actors::runtime::docker::DockerRuntime;
use flotilla_actors::runtime::process::{rss_bytes, ProcessRuntime};
use flotilla_actors::runtime::sim::SimRuntime;
use flotilla_actors::runtime::ContainerRuntime;
use flotilla_actors::Registry;
use flotilla_raft::{Member, StartMode, StoreConfig};
use serde_json::{json, Value};

use crate::cmd_up::RuntimeChoice;

#[derive(Args)]
pub struct StartupBenchArgs {
    #[arg(long, value_enum, default_value = "process")]
    runtime: RuntimeChoice,
    #[arg(long, default_value_t = 100)]
    pods: usize,
    /// Pods created per second; 0 creates them all at once (then the
    /// runtime's own start rate dominates the latency).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Longest the benchmark waits for every pod to run.
    #[arg(long, default_value_t = 120)]
    timeout_secs: u64,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: StartupBenchArgs) -> Result<i32, String> {
    let dir = std::env::temp_dir().join(format!("flotilla-bench-startup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let peer = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map_err(|e| e.to_string())?.to_string();
    let member = Member::start(StoreConfig::new(1, dir.join("store"), peer, StartMode::Bootstrap)).await.map_err(|e| e.to_string())?;
    let registry = Registry::new(member.clone());
    let deadline = Instant::now() + Duration::from_secs(30);
    while registry.ensure_builtin_objects().await.is_err() {
        if Instant::now() > deadline {
            return Err("the store did not become writable".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runtime: Arc<dyn ContainerRuntime> = match args.runtime {
        RuntimeChoice::Sim => Arc::new(SimRuntime::new(Duration::ZERO)),
        RuntimeChoice::Process => Arc::new(ProcessRuntime::new(dir.join("agent")).map_err(|e| e.to_string())?),
        RuntimeChoice::Docker | RuntimeChoice::Auto => Arc::new(DockerRuntime::connect().await.map_err(|e| format!("docker: {e}"))?),
    };
    let node = "bench-node".to_string();
    let agent_args = NodeAgentArgs {
        name: node.clone(),
        node_ip: "127.0.0.1".into(),
        labels: BTreeMap::new(),
        cpu_millis: 64_000,
        memory_bytes: 64 << 30,
        heartbeat: Duration::from_millis(200),
        status_period: Duration::from_secs(10),
        control: Arc::new(LocalControlPlane::new(registry.clone(), Heartbeats::default())),
        runtime: runtime.clone(),
        backoff: BackoffPolicy::default(),
        fence: flotilla_actors::agent::node_agent::FENCE_DEFAULT,
        pods_max: flotilla_actors::agent::node_agent::PODS_MAX_DEFAULT,
        kubelet_port: None,
        volumes_dir: dir.join("pod-volumes"),
    };
    let (agent, handle) = ractor::Actor::spawn(None, NodeAgent, agent_args).await.map_err(|e| e.to_string())?;
    let rss_before = rss_bytes(std::process::id() as i32).unwrap_or(0);

    let pods = &PODS;
    let (_, rv, _) =
        registry.list(pods, Some("default"), &Default::default(), &Default::default(), 0, None).await.map_err(|e| e.to_string())?;
    let mut watch = registry.watch(pods, Some("default"), rv).map_err(|e| e.to_string())?;
    // Creations and the watch run side by side, so a pod's Running time is
    // taken when it happens, not after the last creation.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<(String, Instant), String>>(args.pods.max(1));
    let pace = (args.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / args.rate));
    {
        let registry = registry.clone();
        let (node, n) = (node.clone(), args.pods);
        tokio::spawn(async move {
            for i in 0..n {
                if let (Some(p), true) = (pace, i > 0) {
                    tokio::time::sleep(p).await;
                }
                let (registry, node, tx) = (registry.clone(), node.clone(), tx.clone());
                tokio::spawn(async move {
                    let name = format!("startup-{i}");
                    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1, "containers": [{
                            "name": "main", "image": "flotilla/busybox:latest", "imagePullPolicy": "IfNotPresent",
                            "command": ["sleep", "3600"]}]}});
                    let sent = registry.create(&PODS, Some("default"), pod).await.map(|_| (name, Instant::now()));
                    let _ = tx.send(sent.map_err(|e| e.to_string())).await;
                });
            }
        });
    }
    let mut created: HashMap<String, Instant> = HashMap::new();
    let mut latencies = Vec::new();
    let mut running: HashMap<String, Instant> = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    while running.len() < args.pods {
        tokio::select! {
            made = rx.recv() => {
                if let Some(made) = made {
                    let (name, at) = made?;
                    created.insert(name, at);
                }
            }
            batch = watch.next() => {
                for ev in batch.map_err(|e| e.to_string())? {
                    let name = ev.object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
                    let ok = ev.object.pointer("/status/phase").and_then(Value::as_str) == Some("Running")
                        && ev.object.pointer("/status/containerStatuses/0/ready").and_then(Value::as_bool) == Some(true);
                    if ok && !running.contains_key(&name) {
                        running.insert(name, Instant::now());
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(format!("only {} of {} pods were running after {} s", running.len(), args.pods, args.timeout_secs));
            }
        }
    }
    while created.len() < args.pods {
        match rx.recv().await {
            Some(made) => {
                let (name, at) = made?;
                created.insert(name, at);
            }
            None => break,
        }
    }
    for (name, at) in &running {
        if let Some(c) = created.get(name) {
            latencies.push(at.saturating_duration_since(*c));
        }
    }
    latencies.sort();
    let rss_after = rss_bytes(std::process::id() as i32).unwrap_or(0);
    let (p50, p99, max) = (percentile_ms(&latencies, 0.5), percentile_ms(&latencies, 0.99), percentile_ms(&latencies, 1.0));
    let rate = if args.rate > 0.0 { format!("{} pods/s", args.rate) } else { "all at once".into() };
    println!("pod startup benchmark: {} pods on the {} runtime, one node, created {rate}", args.pods, runtime.kind());
    println!("  p50 ms   p99 ms   max ms   rss MB (before -> with pods running)");
    println!("{p50:>8.1} {p99:>8.1} {max:>8.1}   {:.1} -> {:.1}", rss_before as f64 / 1e6, rss_after as f64 / 1e6);
    // Clean up: delete the pods, wait for their containers to stop.
    for i in 0..args.pods {
        let _ = registry
            .delete_with_grace(pods, Some("default"), &format!("startup-{i}"), None, flotilla_actors::Propagation::Background, Some(1))
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match registry.list(pods, Some("default"), &Default::default(), &Default::default(), 0, None).await {
            Ok((items, _, _)) if items.is_empty() => break,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    agent.stop(None);
    let _ = handle.await;
    member.shutdown().await;
    drop(registry);
    let _ = std::fs::remove_dir_all(&dir);
    if args.json {
        println!(
            "{}",
            json!({"runtime": runtime.kind(), "pods": args.pods, "rate": args.rate, "p50_ms": p50, "p99_ms": p99, "max_ms": max,
                   "rss_mb": (rss_after as f64 / 1e6 * 10.0).round() / 10.0, "rss_before_mb": (rss_before as f64 / 1e6 * 10.0).round() / 10.0})
        );
    }
    Ok(0)
}
