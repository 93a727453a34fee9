//! `flotilla bench schedule`: end-to-end scheduling throughput. One
//! process holds a single-member store, the HTTP API, the leader's actors
//! and N sim node agents. M pods are POSTed through the HTTP API by many
//! concurrent clients; the clock runs from the first POST until the last
//! pod is reported Running by its agent, so every pod goes the whole way:
//! API admission, a Raft write, the scheduler's batch bind (another Raft
//! write), the agent's watch, the sim container, and the agent's status
//! write. Also reports per-pod latency (created to Running) and the
//! process's RSS at the end, holding all nodes and pods.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use clap::Args;
use flotilla_actors::model::kinds::{NODES, PODS};
use flotilla_actors::runtime::process::rss_bytes;
use flotilla_actors::watcher::{Backoff, RegistrySource, Watched, Watcher};
use serde_json::{json, Value};

use crate::sim_cluster::{NodeShape, SimCluster};
use crate::stats::percentile_ms;

#[derive(Args)]
pub struct ScheduleBenchArgs {
    #[arg(long, default_value_t = 5_000)]
    nodes: usize,
    #[arg(long, default_value_t = 50_000)]
    pods: usize,
    /// Concurrent API clients creating pods.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Longest the benchmark waits for every pod to run.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: ScheduleBenchArgs) -> Result<i32, String> {
    if args.nodes == 0 || args.pods == 0 || args.clients == 0 {
        return Err("--nodes, --pods and --clients must be positive".into());
    }
    let root = std::env::temp_dir().join(format!("flotilla-bench-schedule-{}", std::process::id()));
    let mut cluster = SimCluster::start(root, 1, Default::default()).await?;
    let registry = cluster.registry().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let http_addr = listener.local_addr().map_err(|e| e.to_string())?;
    // The in-process API is served in plain HTTP on loopback, with a token
    // of this run's own.
    let token = format!("{:032x}", rand::random::<u128>());
    let state = crate::api::ApiState {
        registry: registry.clone(),
        http_addr: http_addr.to_string(),
        agents: Default::default(),
        kubelet: None,
        authn: std::sync::Arc::new(crate::api::auth::Authenticator::with_tokens([(token.as_str(), bench_user())])),
        rbac: Default::default(),
    };
    let api = tokio::spawn(async move { axum::serve(listener, crate::api::router(state)).await });

    let t_nodes = Instant::now();
    let shape = NodeShape { status_period: Duration::from_secs(30), start_latency: Duration::ZERO, ..Default::default() };
    for i in 0..args.nodes {
        cluster.add_node(&format!("sim-{i:05}"), &shape, false).await?;
    }
    let nodes_res = &NODES;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (items, _, _) =
            registry.list(nodes_res, None, &Default::default(), &Default::default(), 0, None).await.map_err(|e| e.to_string())?;
        if items.len() >= args.nodes {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {} of {} nodes registered within 120 s", items.len(), args.nodes));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "{} sim nodes registered in {:.1} s; creating {} pods through the API",
        args.nodes,
        t_nodes.elapsed().as_secs_f64(),
        args.pods
    );

    let pods_res = &PODS;
    // The benchmark follows pods as any follower does: a busy store may end
    // a watch, and the watcher resumes it from where it was.
    let mut watch = Watcher::new(RegistrySource { registry: registry.clone(), res: pods_res }, Backoff::default());
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().map_err(|_| "bench token".to_string())?);
    let http =
        reqwest::Client::builder().default_headers(headers).pool_max_idle_per_host(args.clients).build().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (created_tx, mut created_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let mut clients = Vec::new();
    for _ in 0..args.clients {
        let (http, next, tx, total) = (http.clone(), next.clone(), created_tx.clone(), args.pods);
        let url = format!("http://{http_addr}/api/v1/namespaces/default/pods");
        clients.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<(), String>(());
                }
                let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": format!("bench-{i}"), "labels": {"app": "bench"}},
                    "spec": {"containers": [{"name": "main", "image": "flotilla/busybox:latest",
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}]}});
                let t = Instant::now();
                // An overloaded server may answer 5xx or time out: retry a
                // few times (a 409 means an earlier try got through).
                let mut attempt = 0u32;
                loop {
                    attempt += 1;
                    let outcome = match http.post(&url).json(&pod).timeout(Duration::from_secs(30)).send().await {
                        Ok(resp) if matches!(resp.status().as_u16(), 201 | 409) => Ok(()),
                        Ok(resp) => Err(format!("create answered {}: {}", resp.status(), resp.text().await.unwrap_or_default())),
                        Err(e) => Err(e.to_string()),
                    };
                    match outcome {
                        Ok(()) => break,
                        Err(e) if attempt >= 5 => return Err(e),
                        Err(_) => tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await,
                    }
                }
                let _ = tx.send((i, t));
            }
        }));
    }
    drop(created_tx);
    let mut created: Vec<Option<Instant>> = vec![None; args.pods];
    let mut running_at: Vec<Option<Instant>> = vec![None; args.pods];
    let mut running = 0usize;
    let mut bound: HashSet<usize> = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut last_report = Instant::now();
    while running < args.pods {
        tokio::select! {
            Some((i, t)) = created_rx.recv() => created[i] = Some(t),
            watched = watch.next() => {
                let objects = match watched {
                    Watched::Restarted { objects, .. } => objects,
                    Watched::Changes { events, .. } => events.into_iter().map(|e| e.object).collect(),
                };
                for object in objects {
                    let Some(i) = object.pointer("/metadata/name").and_then(Value::as_str)
                        .and_then(|n| n.strip_prefix("bench-")).and_then(|n| n.parse::<usize>().ok()).filter(|i| *i < args.pods) else { continue };
                    if object.pointer("/spec/nodeName").and_then(Value::as_str).is_some() {
                        bound.insert(i);
                    }
                    if running_at[i].is_none() && object.pointer("/status/phase").and_then(Value::as_str) == Some("Running") {
                        running_at[i] = Some(Instant::now());
                        running += 1;
                    }
                }
            }
            _ = tokio::time::sleep_until(deadline) => {
                return Err(format!("only {running} of {} pods running ({} bound) after {} s", args.pods, bound.len(), args.timeout_secs));
            }
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "  {:>6.1} s: {} created, {} bound, {running} running",
                started.elapsed().as_secs_f64(),
                created.iter().filter(|c| c.is_some()).count(),
                bound.len()
            );
        }
    }
    let elapsed = started.elapsed();
    for c in clients {
        c.await.map_err(|e| e.to_string())??;
    }
    while let Ok((i, t)) = created_rx.try_recv() {
        created[i] = Some(t);
    }
    let mut latencies: Vec<Duration> =
        created.iter().zip(&running_at).filter_map(|(c, r)| Some(r.as_ref()?.saturating_duration_since(*c.as_ref()?))).collect();
    latencies.sort();
    let rss_mb = rss_bytes(std::process::id() as i32).unwrap_or(0) as f64 / 1e6;
    let pods_per_sec = args.pods as f64 / elapsed.as_secs_f64();
    let (p50, p99, max) = (percentile_ms(&latencies, 0.5), percentile_ms(&latencies, 0.99), percentile_ms(&latencies, 1.0));
    println!(
        "schedule benchmark: {} pods onto {} sim nodes, created through the HTTP API by {} clients",
        args.pods, args.nodes, args.clients
    );
    println!("  seconds   pods/s   p50 ms   p99 ms   max ms   rss MB (one process: server + {} agents)", args.nodes);
    println!("{:>9.2} {:>8.0} {p50:>8.0} {p99:>8.0} {max:>8.0} {rss_mb:>8.0}", elapsed.as_secs_f64(), pods_per_sec);
    api.abort();
    cluster.shutdown().await;
    if args.json {
        println!(
            "{}",
            json!({"nodes": args.nodes, "pods": args.pods, "clients": args.clients, "seconds": elapsed.as_secs_f64(),
                   "pods_per_sec": pods_per_sec.round(), "p50_ms": p50, "p99_ms": p99, "max_ms": max, "rss_mb": rss_mb.round()})
        );
    }
    Ok(0)
}

fn bench_user() -> crate::api::auth::User {
    crate::api::auth::User { name: "bench".into(), groups: vec![crate::api::auth::MASTERS_GROUP.into()] }
}
