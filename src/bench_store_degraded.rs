//! `flotilla bench store-degraded`: what one dead member costs. Three
//! `flotilla server` processes on loopback; for each client count, phases
//! alternate between all members up and one follower killed (kill -9), and
//! each phase measures write latency and throughput through the leader and
//! linearizable reads through the other live member, counting reads that
//! failed. The target: with one of three down, latency and throughput stay
//! within 20% of all up, and no read fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::bench_store_cluster::BenchCluster;
use crate::stats::percentile_ms;

#[derive(Args)]
pub struct StoreDegradedArgs {
    /// Concurrent writers to measure with, each with its own session.
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16])]
    clients: Vec<usize>,
    /// Seconds each phase writes for.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Rounds of (all up, one down) per client count; the figures pool them.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Also print the figures as one JSON array on the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Phase {
    latencies: Vec<Duration>,
    writes: u64,
    failed_writes: u64,
    reads: u64,
    failed_reads: u64,
    elapsed: Duration,
}

impl Phase {
    fn absorb(&mut self, other: Phase) {
        self.latencies.extend(other.latencies);
        self.writes += other.writes;
        self.failed_writes += other.failed_writes;
        self.reads += other.reads;
        self.failed_reads += other.failed_reads;
        self.elapsed += other.elapsed;
    }
    fn writes_per_sec(&self) -> f64 {
        self.writes as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

pub async fn run(args: StoreDegradedArgs) -> Result<i32, String> {
    if args.clients.iter().any(|&c| c == 0 || c > 1024) || args.secs == 0 || args.rounds == 0 {
        return Err("--clients must be 1 to 1024 each, --secs and --rounds at least 1".into());
    }
    let root = std::env::temp_dir().join(format!("flotilla-bench-store-degraded-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let result = measure(&root, &args).await;
    let _ = std::fs::remove_dir_all(&root);
    let rows = result?;
    println!(
        "{:<8} {:<9} {:>10} {:>12} {:>12} {:>14} {:>9} {:>13}",
        "clients", "members", "writes/s", "write_p50_ms", "write_p99_ms", "failed_writes", "reads", "failed_reads"
    );
    let mut json = Vec::new();
    for (clients, up, mut p) in rows {
        p.latencies.sort();
        let members = if up { "3 of 3" } else { "2 of 3" };
        println!(
            "{:<8} {:<9} {:>10.0} {:>12.1} {:>12.1} {:>14} {:>9} {:>13}",
            clients,
            members,
            p.writes_per_sec(),
            percentile_ms(&p.latencies, 0.5),
            percentile_ms(&p.latencies, 0.99),
            p.failed_writes,
            p.reads,
            p.failed_reads
        );
        json.push(serde_json::json!({
            "clients": clients, "members_up": if up { 3 } else { 2 }, "writes_per_sec": p.writes_per_sec(),
            "write_p50_ms": percentile_ms(&p.latencies, 0.5), "write_p99_ms": percentile_ms(&p.latencies, 0.99),
            "failed_writes": p.failed_writes, "reads": p.reads, "failed_reads": p.failed_reads,
        }));
    }
    if args.json {
        println!("{}", serde_json::Value::Array(json));
    }
    Ok(0)
}

async fn measure(root: &std::path::Path, args: &StoreDegradedArgs) -> Result<Vec<(usize, bool, Phase)>, String> {
    let mut cluster = BenchCluster::start(root, &[]).await?;
    let mut rows = Vec::new();
    for &clients in &args.clients {
        let (mut up, mut down) = (Phase::default(), Phase::default());
        for _ in 0..args.rounds {
            let leader = cluster.settled_leader().await?;
            up.absorb(phase(&cluster, leader, None, clients, args.secs).await?);
            let follower = cluster.servers.iter().map(|s| s.id).find(|&id| id != leader).expect("three members");
            cluster.server(follower).kill9();
            down.absorb(phase(&cluster, leader, Some(follower), clients, args.secs).await?);
            cluster.server(follower).spawn(&[])?;
        }
        rows.push((clients, true, up));
        rows.push((clients, false, down));
    }
    Ok(rows)
}

/// `clients` writers through the leader (each its own client and session,
/// distinct keys) and one linearizable reader through a live follower, for
/// `secs`.
async fn phase(cluster: &BenchCluster, leader: u64, dead: Option<u64>, clients: usize, secs: u64) -> Result<Phase, String> {
    let reader_at = cluster.servers.iter().map(|s| s.id).find(|&id| id != leader && Some(id) != dead).expect("a live follower");
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = tokio::task::JoinSet::new();
    for c in 0..clients {
        let client = cluster.client(Some(leader))?;
        let halt = stop.clone();
        writers.spawn(async move {
            let (mut latencies, mut failed) = (Vec::new(), 0u64);
            let key = format!("bench/degraded/{c}");
            let mut i = 0u64;
            while !halt.load(Ordering::Relaxed) {
                i += 1;
                let sent = Instant::now();
                match client.put(key.as_bytes(), i.to_string().as_bytes()).await {
                    Ok(_) => latencies.push(sent.elapsed()),
                    Err(_) => failed += 1,
                }
            }
            (latencies, failed)
        });
    }
    let reader = cluster.client(Some(reader_at))?;
    let (reads, failed_reads) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (r, f, halt) = (reads.clone(), failed_reads.clone(), stop.clone());
    let reading = tokio::spawn(async move {
        while !halt.load(Ordering::Relaxed) {
            match reader.get(b"bench/degraded/0", true).await {
                Ok(_) => r.fetch_add(1, Ordering::Relaxed),
                Err(_) => f.fetch_add(1, Ordering::Relaxed),
            };
        }
    });
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let mut out = Phase { elapsed: started.elapsed(), ..Default::default() };
    while let Some(done) = writers.join_next().await {
        let (latencies, failed) = done.map_err(|e| e.to_string())?;
        out.writes += latencies.len() as u64;
        out.latencies.extend(latencies);
        out.failed_writes += failed;
    }
    let _ = reading.await;
    out.reads = reads.load(Ordering::Relaxed);
    out.failed_reads = failed_reads.load(Ordering::Relaxed);
    Ok(out)
}
