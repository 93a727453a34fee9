//! `flotilla store bench`: N concurrent clients each put one key at a time,
//! awaiting every reply; reports writes per second and latency percentiles.
//! The same workload runs against etcd with `bench/etcd-bench`, so the two
//! can be compared in one run on one machine.

use std::sync::Arc;
use std::time::Instant;

use clap::Args;

use crate::stats::percentile_ms;
use flotilla_raft::{Role, StoreClient};

#[derive(Args)]
pub struct BenchArgs {
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Total writes, split across the clients.
    #[arg(long, default_value_t = 10_000)]
    ops: usize,
    /// Bytes per value.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Also print one JSON object with the figures as the last line.
    #[arg(long)]
    json: bool,
}

/// Clients share QUIC connections beyond this many (each connection
/// multiplexes streams, as etcd's gRPC clients share channels).
const CONNECTIONS_MAX: usize = 64;

pub async fn run(peers: &[String], token: &str, args: BenchArgs) -> Result<i32, String> {
    if args.clients == 0 || args.ops == 0 {
        return Err("--clients and --ops must be at least 1".into());
    }
    // Send to the leader first, as etcd's client ends up doing.
    let probe = StoreClient::new(peers.to_vec(), token).map_err(|e| e.to_string())?;
    let members = probe.members().await.map_err(|e| e.to_string())?;
    let mut ordered: Vec<String> = members.iter().filter(|m| m.role == Role::Leader).map(|m| m.addr.clone()).collect();
    for p in peers {
        if !ordered.contains(p) {
            ordered.push(p.clone());
        }
    }
    let connections = args.clients.min(CONNECTIONS_MAX);
    let mut clients = Vec::with_capacity(connections);
    for _ in 0..connections {
        clients.push(Arc::new(StoreClient::new(ordered.clone(), token).map_err(|e| e.to_string())?));
    }
    // Dial every connection before the clock starts.
    for c in &clients {
        c.revisions().await.map_err(|e| e.to_string())?;
    }
    let value = vec![b'x'; args.value_size];
    let per_client = args.ops / args.clients;
    let extra = args.ops % args.clients;
    let run_id: u32 = rand::random();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let client = clients[i % connections].clone();
        let value = value.clone();
        let n = per_client + usize::from(i < extra);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(n);
            for seq in 0..n {
                let key = format!("bench/{run_id:08x}/{i}/{seq}");
                let t = Instant::now();
                client.put(key.as_bytes(), &value).await.map_err(|e| e.to_string())?;
                latencies.push(t.elapsed());
            }
            Ok::<_, String>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(args.ops);
    for t in tasks {
        latencies.extend(t.await.map_err(|e| e.to_string())??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let writes_per_sec = args.ops as f64 / elapsed.as_secs_f64();
    let (p50, p99, max) = (percentile_ms(&latencies, 0.50), percentile_ms(&latencies, 0.99), percentile_ms(&latencies, 1.0));
    println!(
        "flotilla put benchmark: {} members, {} clients, {} ops, {}-byte values",
        members.len(),
        args.clients,
        args.ops,
        args.value_size
    );
    println!("  writes/s   p50 ms   p99 ms   max ms");
    println!("{writes_per_sec:>10.1} {p50:>8.2} {p99:>8.2} {max:>8.2}");
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "system": "flotilla",
                "clients": args.clients,
                "ops": args.ops,
                "value_size": args.value_size,
                "writes_per_sec": (writes_per_sec * 10.0).round() / 10.0,
                "p50_ms": (p50 * 1000.0).round() / 1000.0,
                "p99_ms": (p99 * 1000.0).round() / 1000.0,
                "max_ms": (max * 1000.0).round() / 1000.0,
            })
        );
    }
    Ok(0)
}
