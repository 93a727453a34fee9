//! `flotilla bench store-failover`: how long writes are unavailable when the
//! store's leader is killed (kill -9) or frozen (SIGSTOP). It starts three
//! `flotilla server` processes of its own on loopback, keeps one client
//! writing one key at a time through all three members, and for each trial
//! stops the leader and measures from the signal to the first write that
//! was sent after it and acknowledged. The victim is then restarted (or
//! resumed) and the cluster given time to settle before the next trial.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use flotilla_raft::{Role, StoreClient};

use crate::stats::percentile_ms;

#[derive(Args)]
pub struct StoreFailoverArgs {
    /// Trials of each fault.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    /// Also print one JSON object with the figures as the last line.
    #[arg(long)]
    json: bool,
}

/// Longest wait for the cluster to form or writes to resume.
const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

struct Server {
    id: u64,
    dir: std::path::PathBuf,
    peer: String,
    child: Option<Child>,
}

impl Server {
    fn spawn(&mut self, extra: &[&str]) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let http = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .args(["server", "--id", &self.id.to_string(), "--data-dir"])
            .arg(&self.dir)
            .args(["--peer", &self.peer, "--http", &http.to_string()])
            .args(extra)
            .env("FLOTILLA_LOG", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start a server: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    fn signal(&self, sig: &str) -> Result<(), String> {
        let pid = self.child.as_ref().ok_or("server not running")?.id().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status().map(|s| s.success()).unwrap_or(false);
        ok.then_some(()).ok_or_else(|| format!("kill {sig} {pid} failed"))
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_udp() -> Result<String, String> {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.to_string()).map_err(|e| e.to_string())
}

async fn three_voters(admin: &StoreClient) -> Option<u64> {
    let members = admin.members().await.ok()?;
    let ready = members.len() == 3 && members.iter().all(|m| m.role != Role::Learner);
    members.iter().find(|m| m.role == Role::Leader).filter(|_| ready).map(|m| m.id)
}

pub async fn run(args: StoreFailoverArgs) -> Result<i32, String> {
    let root = std::env::temp_dir().join(format!("flotilla-bench-store-failover-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let result = measure(&root, &args).await;
    let _ = std::fs::remove_dir_all(&root);
    result
}

async fn measure(root: &std::path::Path, args: &StoreFailoverArgs) -> Result<i32, String> {
    let mut servers = Vec::new();
    for id in 1..=3u64 {
        servers.push(Server { id, dir: root.join(format!("m{id}")), peer: free_udp()?, child: None });
    }
    servers[0].spawn(&["--bootstrap"])?;
    let token_path = servers[0].dir.join("join-token");
    let started = Instant::now();
    let token = loop {
        if let Ok(t) = std::fs::read_to_string(&token_path) {
            break t.trim().to_string();
        }
        if started.elapsed() > SETTLE_DEADLINE {
            return Err("the first server did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let first = servers[0].peer.clone();
    for s in servers.iter_mut().skip(1) {
        s.spawn(&["--join", &first, "--token", &token])?;
    }
    let peers: Vec<String> = servers.iter().map(|s| s.peer.clone()).collect();
    let admin = StoreClient::new(peers.clone(), &token).map_err(|e| e.to_string())?;
    let writer = Arc::new(StoreClient::new(peers, &token).map_err(|e| e.to_string())?);
    let origin = Instant::now();
    let now_us = move || origin.elapsed().as_micros() as u64;
    // The writer: one put at a time; records the send time of the last
    // acknowledged write.
    let last_acked_sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
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
    let mut kill_ms = Vec::new();
    let mut stop_ms = Vec::new();
    for trial in 0..args.trials * 2 {
        let frozen = trial % 2 == 1;
        let deadline = Instant::now() + SETTLE_DEADLINE;
        let leader = loop {
            if let Some(l) = three_voters(&admin).await {
                break l;
            }
            if Instant::now() > deadline {
                return Err("the cluster did not settle between trials".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // Let writes flow before the fault.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let victim = &mut servers[(leader - 1) as usize];
        let fault_at = now_us();
        if frozen {
            victim.signal("-STOP")?;
        } else {
            victim.kill9();
        }
        // Polled every 2 ms: the first write sent after the fault and
        // acknowledged ends the unavailability.
        loop {
            if last_acked_sent.load(Ordering::Relaxed) > fault_at {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("writes did not resume within {} s", SETTLE_DEADLINE.as_secs()));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let unavailable = Duration::from_micros(now_us() - fault_at);
        if frozen {
            stop_ms.push(unavailable);
            victim.signal("-CONT")?;
        } else {
            kill_ms.push(unavailable);
            victim.spawn(&[])?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = writing.await;
    kill_ms.sort();
    stop_ms.sort();
    println!("{:<10} {:>7} {:>9} {:>9} {:>9}", "fault", "trials", "p50_ms", "p99_ms", "max_ms");
    for (name, v) in [("kill -9", &kill_ms), ("SIGSTOP", &stop_ms)] {
        println!(
            "{:<10} {:>7} {:>9.0} {:>9.0} {:>9.0}",
            name,
            v.len(),
            percentile_ms(v, 0.5),
            percentile_ms(v, 0.99),
            percentile_ms(v, 1.0)
        );
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "kill_p50_ms": percentile_ms(&kill_ms, 0.5), "kill_p99_ms": percentile_ms(&kill_ms, 0.99), "kill_max_ms": percentile_ms(&kill_ms, 1.0),
                "stop_p50_ms": percentile_ms(&stop_ms, 0.5), "stop_p99_ms": percentile_ms(&stop_ms, 0.99), "stop_max_ms": percentile_ms(&stop_ms, 1.0),
                "trials": args.trials,
            })
        );
    }
    Ok(0)
}
