//! `flotilla bench store-failover`: how long writes are unavailable when the
//! store's leader is killed (kill -9) or frozen (SIGSTOP). It starts three
//! `flotilla server` processes of its own on loopback, keeps one client
//! writing one key at a time through all three members, and for each trial
//! stops the leader and measures from the signal to the first write that
//! was sent after it and acknowledged, and to the first answer of a
//! surviving member that names a new leader (the election's part). The
//! victim is then restarted (or resumed) and the cluster settles before the
//! next trial. Several Raft timings can be measured in one run, one cluster
//! each, one after the other.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use flotilla_raft::wire::{Reply, Request};
use flotilla_raft::{Limits, Role, StoreClient};

use crate::bench_store_cluster::{BenchCluster, SETTLE_DEADLINE};
use crate::stats::percentile_ms;

#[derive(Args)]
pub struct StoreFailoverArgs {
    /// Trials of each fault, per timing.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Raft election timeout ranges to compare (MIN-MAX, ms); each gets a
    /// cluster of its own. Default: what `flotilla server` runs with.
    #[arg(long, value_name = "MIN-MAX", value_delimiter = ',')]
    election_timeout_ms: Vec<String>,
    /// Raft heartbeat interval for every timing measured.
    #[arg(long, default_value_t = Limits::default().heartbeat_ms)]
    heartbeat_interval_ms: u64,
    /// Also print one JSON object with the figures as the last line.
    #[arg(long)]
    json: bool,
}

/// One timing's samples, one per trial.
#[derive(Default)]
struct Figures {
    range: String,
    kill_write: Vec<Duration>,
    kill_elect: Vec<Duration>,
    stop_write: Vec<Duration>,
    stop_elect: Vec<Duration>,
}

pub async fn run(args: StoreFailoverArgs) -> Result<i32, String> {
    let defaults = Limits::default();
    let ranges = if args.election_timeout_ms.is_empty() {
        vec![format!("{}-{}", defaults.election_timeout_min_ms, defaults.election_timeout_max_ms)]
    } else {
        args.election_timeout_ms.clone()
    };
    for range in &ranges {
        let (min, max) = Limits::parse_election_range(range)?;
        Limits::default().with_raft_timing(args.heartbeat_interval_ms, min, max)?;
    }
    let mut all = Vec::new();
    for (n, range) in ranges.iter().enumerate() {
        let root = std::env::temp_dir().join(format!("flotilla-bench-store-failover-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let flags = vec![
            "--heartbeat-interval-ms".to_string(),
            args.heartbeat_interval_ms.to_string(),
            "--election-timeout-ms".to_string(),
            range.clone(),
        ];
        let result = measure(&root, &flags, args.trials).await;
        let _ = std::fs::remove_dir_all(&root);
        let mut figures = Figures { range: range.clone(), ..result? };
        for v in [&mut figures.kill_write, &mut figures.kill_elect, &mut figures.stop_write, &mut figures.stop_elect] {
            v.sort();
        }
        all.push(figures);
    }
    println!(
        "{:<12} {:<9} {:>7} {:>13} {:>13} {:>13} {:>13} {:>13}",
        "election_ms", "fault", "trials", "write_p50_ms", "write_p99_ms", "write_max_ms", "elect_p50_ms", "elect_p99_ms"
    );
    let mut json = Vec::new();
    for f in &all {
        for (name, write, elect) in [("kill -9", &f.kill_write, &f.kill_elect), ("SIGSTOP", &f.stop_write, &f.stop_elect)] {
            println!(
                "{:<12} {:<9} {:>7} {:>13.0} {:>13.0} {:>13.0} {:>13.0} {:>13.0}",
                f.range,
                name,
                write.len(),
                percentile_ms(write, 0.5),
                percentile_ms(write, 0.99),
                percentile_ms(write, 1.0),
                percentile_ms(elect, 0.5),
                percentile_ms(elect, 0.99),
            );
            json.push(serde_json::json!({
                "election_timeout_ms": f.range, "heartbeat_interval_ms": args.heartbeat_interval_ms, "fault": name,
                "trials": write.len(),
                "write_p50_ms": percentile_ms(write, 0.5), "write_p99_ms": percentile_ms(write, 0.99), "write_max_ms": percentile_ms(write, 1.0),
                "elect_p50_ms": percentile_ms(elect, 0.5), "elect_p99_ms": percentile_ms(elect, 0.99), "elect_max_ms": percentile_ms(elect, 1.0),
            }));
        }
    }
    if args.json {
        println!("{}", serde_json::Value::Array(json));
    }
    Ok(0)
}

async fn measure(root: &std::path::Path, flags: &[String], trials: usize) -> Result<Figures, String> {
    let mut cluster = BenchCluster::start(root, flags).await?;
    let writer = Arc::new(StoreClient::new(cluster.peers(), &cluster.token).map_err(|e| e.to_string())?);
    let origin = Instant::now();
    let now_us = move || origin.elapsed().as_micros() as u64;
    // The writer: one put at a time; records the send time of the last
    // acknowledged write.
    let last_acked_sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, halt, w) = (last_acked_sent.clone(), stop.clone(), writer.clone());
    let writing = tokio::spawn(async move {
        let mut i = 0u64;
        while !halt.load(Ordering::Relaxed) {
            i += 1;
            let sent = now_us();
            if w.put(b"bench/failover", i.to_string().as_bytes()).await.is_ok() {
                acked.fetch_max(sent, Ordering::Relaxed);
            }
        }
    });
    let mut samples = Figures::default();
    let outcome: Result<(), String> = async {
        for trial in 0..trials * 2 {
            let frozen = trial % 2 == 1;
            let leader = cluster.settled_leader().await?;
            // Let writes flow before the fault.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let fault_at = now_us();
            cluster.server(leader).signal(if frozen { libc::SIGSTOP } else { libc::SIGKILL })?;
            let deadline = Instant::now() + SETTLE_DEADLINE;
            let elected = new_leader(cluster.others(leader), leader, deadline, now_us);
            let resumed = async {
                // Polled every 2 ms: the first write sent after the fault
                // and acknowledged ends the unavailability.
                while last_acked_sent.load(Ordering::Relaxed) <= fault_at {
                    if Instant::now() > deadline {
                        return Err(format!("writes did not resume within {} s", SETTLE_DEADLINE.as_secs()));
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok(Duration::from_micros(now_us() - fault_at))
            };
            let (elected, resumed) = tokio::join!(elected, resumed);
            let elected = elected.map(|at| Duration::from_micros(at - fault_at))?;
            let resumed = resumed?;
            if std::env::var_os("FLOTILLA_BENCH_LOGS").is_some() {
                eprintln!(
                    "trial {trial}: {} of member {leader}; new leader seen after {} ms, writes after {} ms",
                    if frozen { "SIGSTOP" } else { "kill -9" },
                    elected.as_millis(),
                    resumed.as_millis()
                );
            }
            let victim = cluster.server(leader);
            if frozen {
                samples.stop_write.push(resumed);
                samples.stop_elect.push(elected);
                victim.signal(libc::SIGCONT)?;
            } else {
                victim.kill9();
                samples.kill_write.push(resumed);
                samples.kill_elect.push(elected);
                victim.spawn(&[])?;
            }
        }
        Ok(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    let _ = writing.await;
    outcome.map(|_| samples)
}

/// Polls the survivors every 5 ms until one names a leader other than
/// `old`; answers `now_us()` at that answer.
async fn new_leader(survivors: Vec<&StoreClient>, old: u64, deadline: Instant, now_us: impl Fn() -> u64) -> Result<u64, String> {
    loop {
        for s in &survivors {
            if let Ok(Reply::Members(members)) = s.call_within(&Request::Members, Duration::from_millis(200)).await {
                if members.iter().any(|m| m.role == Role::Leader && m.id != old) {
                    return Ok(now_us());
                }
            }
        }
        if Instant::now() > deadline {
            return Err("no new leader was elected".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
