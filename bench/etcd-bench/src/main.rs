//! `etcd-bench`: a small put-throughput / put-latency benchmark client for an
//! etcd v3 cluster, speaking etcd's gRPC KV API through the `etcd-client`
//! crate.
//!
//! It exists so that flotilla's replicated store can be compared with etcd in
//! the same run, on the same machine, with the same client-side shape of load
//! (N concurrent clients, each issuing one Put at a time and awaiting the
//! reply). It is kept out of the flotilla binary and workspace on purpose: it
//! pulls in tonic/prost and needs `protoc` at build time, neither of which
//! flotilla itself should depend on.
//!
//! BUILD REQUIREMENT: `protoc` on PATH (etcd-client's build script compiles
//! etcd's .proto files); on Debian: `apt-get install -y protobuf-compiler`.
//!
//! Usage:
//!
//! ```text
//! etcd-bench --endpoints http://127.0.0.1:2379,http://127.0.0.1:22379,http://127.0.0.1:32379 \
//!            --clients 16 --ops 10000 --value-size 256 [--key-prefix bench/] [--json]
//! ```
//!
//! What it does:
//! 1. Probes every endpoint separately (Maintenance/Status) and fails with a
//!    one-line error and exit code 1 if any does not answer within
//!    [`CONNECT_TIMEOUT`].
//! 2. Opens `--clients` independent `etcd_client::Client`s. Each one has its
//!    OWN gRPC balanced channel (its own HTTP/2 connections) over all the given
//!    endpoints, exactly as an application using the etcd client library would;
//!    channels are not shared between benchmark clients. A request lands on
//!    whichever member the library's balancer picks; followers forward
//!    proposals to the leader. Each client does one untimed warm-up Range
//!    request so connection setup is not counted.
//! 3. Splits `--ops` Puts across the clients (the first `ops % clients`
//!    clients do one extra). Each client issues its Puts sequentially, awaiting
//!    each reply. Keys are `<prefix><client:04>/<seq:08>` (all distinct);
//!    values are `--value-size` pseudo-random bytes, fresh per Put. Key/value
//!    construction happens outside the timed region.
//! 4. Reports writes_per_sec = ops / wall time (from the start of the first Put
//!    to the end of the last), and p50 / p99 / max of per-Put latency
//!    (nearest-rank percentiles), as a table and, with `--json`, as one JSON
//!    object on the last line of stdout.
//!
//! Keys written by a run are left in etcd (a rerun with the same prefix
//! overwrites them).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use etcd_client::{Client, ConnectOptions};
use tokio::time::timeout;

/// Bound on establishing a connection to / getting an answer from an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on any single request (warm-up or Put) once the cluster answered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser, Debug)]
#[command(
    name = "etcd-bench",
    about = "Put-throughput/latency benchmark for an etcd cluster (gRPC KV API)"
)]
struct Args {
    /// Comma-separated etcd client URLs.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379,http://127.0.0.1:22379,http://127.0.0.1:32379"
    )]
    endpoints: Vec<String>,

    /// Number of concurrent clients (each with its own gRPC connections).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    clients: u64,

    /// Total number of Put requests, split across the clients.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    ops: u64,

    /// Size of each value in bytes.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(0..=64 * 1024 * 1024))]
    value_size: u64,

    /// Prefix of every key written.
    #[arg(long, default_value = "bench/")]
    key_prefix: String,

    /// Also print one JSON object with the results as the last line.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("etcd-bench: {msg}");
            ExitCode::from(1)
        }
    }
}

fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
}

/// Checks that one endpoint answers a Status request within CONNECT_TIMEOUT.
async fn probe(endpoint: String) -> Result<(), String> {
    let attempt = async {
        let mut client = Client::connect([endpoint.as_str()], Some(connect_options()))
            .await
            .map_err(|e| e.to_string())?;
        client.status().await.map_err(|e| e.to_string())?;
        Ok::<(), String>(())
    };
    match timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("endpoint {endpoint} failed: {}", one_line(&e))),
        Err(_) => Err(format!(
            "endpoint {endpoint} did not answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// Error texts from tonic can span lines; the contract is one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// xorshift64*: cheap "random-ish" bytes so values are not trivially uniform.
fn fill_random(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        let word = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// One benchmark client: `n` sequential Puts; returns per-Put latencies.
async fn client_loop(
    id: u64,
    mut kv: etcd_client::KvClient,
    n: u64,
    prefix: String,
    value_size: usize,
) -> Result<Vec<Duration>, String> {
    let mut latencies = Vec::with_capacity(n as usize);
    let mut rng =
        0x9E37_79B9_7F4A_7C15u64 ^ (id.wrapping_add(1)).wrapping_mul(0xD1B5_4A32_D192_ED03);
    for seq in 0..n {
        let key = format!("{prefix}{id:04}/{seq:08}");
        let mut value = vec![0u8; value_size];
        fill_random(&mut value, &mut rng);
        let t0 = Instant::now();
        match timeout(REQUEST_TIMEOUT, kv.put(key, value, None)).await {
            Ok(Ok(_)) => latencies.push(t0.elapsed()),
            Ok(Err(e)) => {
                return Err(format!(
                    "client {id}: put #{seq} failed: {}",
                    one_line(&e.to_string())
                ))
            }
            Err(_) => {
                return Err(format!(
                    "client {id}: put #{seq} got no reply within {}s",
                    REQUEST_TIMEOUT.as_secs()
                ))
            }
        }
    }
    Ok(latencies)
}

/// Nearest-rank percentile of an ascending, non-empty slice, in milliseconds.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    let idx = rank.clamp(1, sorted.len()) - 1;
    sorted[idx].as_secs_f64() * 1e3
}

async fn run(args: &Args) -> Result<(), String> {
    let endpoints: Vec<String> = args
        .endpoints
        .iter()
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect();
    if endpoints.is_empty() {
        return Err("no endpoints given".into());
    }
    let value_size = args.value_size as usize;

    // 1. Every endpoint must answer, concurrently probed, each bounded.
    let probes: Vec<_> = endpoints
        .iter()
        .cloned()
        .map(|e| tokio::spawn(probe(e)))
        .collect();
    for p in probes {
        p.await
            .map_err(|e| format!("endpoint probe task failed: {e}"))??;
    }

    // 2. One independent Client (own balanced gRPC channel) per bench client,
    //    warmed up with one untimed linearizable Range.
    let mut setups = Vec::with_capacity(args.clients as usize);
    for id in 0..args.clients {
        let eps = endpoints.clone();
        let warm_key = format!("{}warmup", args.key_prefix);
        setups.push(tokio::spawn(async move {
            let attempt = async {
                let client = Client::connect(&eps, Some(connect_options()))
                    .await
                    .map_err(|e| e.to_string())?;
                let mut kv = client.kv_client();
                kv.get(warm_key, None).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(kv)
            };
            match timeout(CONNECT_TIMEOUT + REQUEST_TIMEOUT, attempt).await {
                Ok(Ok(kv)) => Ok(kv),
                Ok(Err(e)) => Err(format!(
                    "client {id}: connect/warm-up failed: {}",
                    one_line(&e)
                )),
                Err(_) => Err(format!("client {id}: connect/warm-up timed out")),
            }
        }));
    }
    let mut kvs = Vec::with_capacity(setups.len());
    for s in setups {
        kvs.push(
            s.await
                .map_err(|e| format!("client setup task failed: {e}"))??,
        );
    }

    // 3. The timed run.
    let base = args.ops / args.clients;
    let extra = args.ops % args.clients;
    let start = Instant::now();
    let tasks: Vec<_> = kvs
        .into_iter()
        .enumerate()
        .map(|(i, kv)| {
            let id = i as u64;
            let n = base + u64::from(id < extra);
            tokio::spawn(client_loop(id, kv, n, args.key_prefix.clone(), value_size))
        })
        .collect();
    let mut latencies = Vec::with_capacity(args.ops as usize);
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(l)) => latencies.extend(l),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(e) => {
                first_err.get_or_insert(format!("client task failed: {e}"));
            }
        }
    }
    let wall = start.elapsed();
    if let Some(e) = first_err {
        return Err(e);
    }

    // 4. Report.
    latencies.sort_unstable();
    if latencies.is_empty() {
        return Err("no requests completed".into());
    }
    let writes_per_sec = latencies.len() as f64 / wall.as_secs_f64();
    let p50 = percentile_ms(&latencies, 50.0);
    let p99 = percentile_ms(&latencies, 99.0);
    let max = latencies[latencies.len() - 1].as_secs_f64() * 1e3;

    let plural = |n: u64, word: &str| {
        if n == 1 {
            format!("{n} {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    println!(
        "etcd put benchmark: {}, {}, {} ops, {}-byte values",
        plural(endpoints.len() as u64, "endpoint"),
        plural(args.clients, "client"),
        args.ops,
        args.value_size
    );
    println!("  writes/s   p50 ms   p99 ms   max ms");
    println!("{writes_per_sec:>10.1}{p50:>9.2}{p99:>9.2}{max:>9.2}");
    if args.json {
        let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
        let obj = serde_json::json!({
            "system": "etcd",
            "clients": args.clients,
            "ops": args.ops,
            "value_size": args.value_size,
            "writes_per_sec": (writes_per_sec * 10.0).round() / 10.0,
            "p50_ms": round3(p50),
            "p99_ms": round3(p99),
            "max_ms": round3(max),
        });
        println!("{obj}");
    }
    Ok(())
}
