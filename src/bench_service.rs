//! `flotilla bench service`: the cost of a Service's virtual IP on the
//! kernel path, against a running `flotilla up --runtime process --proxy
//! nftables`. Three backend pods (this binary's `bench http-backend`) sit
//! behind a Service; the same load (keep-alive HTTP/1.1 GETs from this
//! process, a fixed number of connections) is sent alternately through
//! the VIP and straight to the backends, and requests per second and p99
//! latency are compared. Then it measures the time from a pod turning
//! Ready to the first connection proxied to it.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::ApiClient;
use crate::stats::percentile_ms;

#[derive(Args)]
pub struct ServiceBenchArgs {
    /// Connections kept open by the load generator.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Length of each measured round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds per path (VIP and direct alternate).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Ready-to-first-connection trials.
    #[arg(long, default_value_t = 10)]
    ready_trials: usize,
}

#[derive(Args)]
pub struct HttpBackendArgs {
    #[arg(long)]
    listen: String,
}

const NAMESPACE: &str = "bench-service";
/// Largest request the backend reads before it gives up on a connection.
const REQUEST_MAX_BYTES: usize = 8 * 1024;
/// Deadline of each step that waits on the cluster.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// A minimal keep-alive HTTP server: every request gets the same small
/// answer. Fast enough that the path, not the backend, is measured.
pub async fn http_backend(args: HttpBackendArgs) -> Result<i32, String> {
    let listener = tokio::net::TcpListener::bind(&args.listen).await.map_err(|e| format!("--listen {}: {e}", args.listen))?;
    loop {
        let Ok((mut sock, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 4096];
            let reply = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Type: text/plain\r\n\r\nok\n";
            loop {
                let n = match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    buf.drain(..end + 4);
                    if sock.write_all(reply).await.is_err() {
                        return;
                    }
                }
                if buf.len() > REQUEST_MAX_BYTES {
                    return;
                }
            }
        });
    }
}

/// One keep-alive connection sending GETs until `until`; answers each
/// request's latency.
async fn load_connection(addr: String, until: Instant) -> Vec<Duration> {
    let mut lat = Vec::new();
    let Ok(mut sock) = tokio::net::TcpStream::connect(&addr).await else { return lat };
    let _ = sock.set_nodelay(true);
    let mut buf = [0u8; 512];
    while Instant::now() < until {
        let t = Instant::now();
        if sock.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n").await.is_err() {
            break;
        }
        // The backend's answer is 66 bytes; read until all of it is in.
        let mut got = 0;
        while got < 66 {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return lat,
                Ok(n) => got += n,
            }
        }
        lat.push(t.elapsed());
    }
    lat
}

/// Requests per second and latencies over `targets`, connections spread
/// round-robin over them.
async fn load(targets: &[String], connections: usize, seconds: u64) -> (f64, Vec<Duration>) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections).map(|i| tokio::spawn(load_connection(targets[i % targets.len()].clone(), until))).collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    let rps = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (rps, all)
}

async fn send(api: &ApiClient, method: reqwest::Method, path: &str, body: &Value) -> Result<Value, String> {
    api.call(method, path, false, Some(("application/json", serde_json::to_vec(body).unwrap_or_default()))).await.map_err(|e| e.message)
}

fn backend_pod(name: &str, app: &str, port: u16, exe: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "http", "image": "flotilla",
            "command": [exe, "bench", "http-backend", "--listen", format!("127.0.0.1:{port}")],
            "ports": [{"name": "http", "containerPort": port}],
            "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1}}]}})
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).map_err(|e| e.to_string())
}

async fn wait_for<F, Fut>(what: &str, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + STEP_TIMEOUT;
    while !check().await {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn pod_ready(api: &ApiClient, name: &str) -> bool {
    api.get(&format!("/api/v1/namespaces/{NAMESPACE}/pods/{name}"), false).await.ok().is_some_and(|p| {
        p.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
    })
}

async fn connects(addr: &str) -> bool {
    load_connection(addr.to_string(), Instant::now() + Duration::from_millis(1)).await.len() == 1
}

pub async fn run(args: ServiceBenchArgs, target: &crate::client::ClientTarget) -> Result<i32, String> {
    let api = ApiClient::new(target)?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?.display().to_string();
    let _ = send(
        &api,
        reqwest::Method::POST,
        "/api/v1/namespaces",
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
    )
    .await;
    let pods_path = format!("/api/v1/namespaces/{NAMESPACE}/pods");
    let svc_path = format!("/api/v1/namespaces/{NAMESPACE}/services");
    let mut direct = Vec::new();
    for i in 0..3 {
        let port = free_port()?;
        send(&api, reqwest::Method::POST, &pods_path, &backend_pod(&format!("backend-{i}"), "backend", port, &exe)).await?;
        direct.push(format!("127.0.0.1:{port}"));
    }
    let svc = |name: &str, app: &str| {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": app}, "ports": [{"port": 80, "targetPort": "http"}]}})
    };
    let created = send(&api, reqwest::Method::POST, &svc_path, &svc("backend", "backend")).await?;
    let vip = format!("{}:80", created.pointer("/spec/clusterIP").and_then(Value::as_str).ok_or("the service got no cluster IP")?);
    for d in &direct {
        wait_for(&format!("backend {d}"), || connects(d)).await?;
    }
    wait_for("the VIP to answer", || connects(&vip)).await?;
    println!("service {vip} -> {} backends; {} connections, {} s rounds", direct.len(), args.connections, args.seconds);
    println!("{:<8} {:>10} {:>9} {:>9}", "path", "req/s", "p50 ms", "p99 ms");
    let (mut vip_rps, mut direct_rps) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        for (label, targets) in [("vip", vec![vip.clone()]), ("direct", direct.clone())] {
            let (rps, lat) = load(&targets, args.connections, args.seconds).await;
            println!("{label:<8} {rps:>10.0} {:>9.2} {:>9.2}", percentile_ms(&lat, 0.5), percentile_ms(&lat, 0.99));
            if label == "vip" {
                vip_rps.push(rps)
            } else {
                direct_rps.push(rps)
            }
            let _ = round;
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!("vip/direct throughput: {:.1}%", 100.0 * mean(&vip_rps) / mean(&direct_rps).max(1.0));

    // Ready to first proxied connection: a Service with no endpoints,
    // then a pod for it; from the API showing it Ready to the first GET
    // through the VIP that it answers.
    let late = send(&api, reqwest::Method::POST, &svc_path, &svc("late", "late")).await?;
    let late_vip = format!("{}:80", late.pointer("/spec/clusterIP").and_then(Value::as_str).ok_or("no cluster IP")?);
    let mut gaps = Vec::new();
    for trial in 0..args.ready_trials {
        let name = format!("late-{trial}");
        send(&api, reqwest::Method::POST, &pods_path, &backend_pod(&name, "late", free_port()?, &exe)).await?;
        wait_for("the late pod to be Ready", || pod_ready(&api, &name)).await?;
        let ready_seen = Instant::now();
        wait_for("the first proxied connection", || connects(&late_vip)).await?;
        gaps.push(ready_seen.elapsed());
        api.call(reqwest::Method::DELETE, &format!("{pods_path}/{name}?gracePeriodSeconds=0"), false, None).await.map_err(|e| e.message)?;
        wait_for("the late service to refuse again", || async { !connects(&late_vip).await }).await?;
    }
    gaps.sort();
    println!(
        "ready -> first proxied connection ({} trials): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        gaps.len(),
        percentile_ms(&gaps, 0.5),
        percentile_ms(&gaps, 0.99),
        gaps.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    );
    let _ = api.call(reqwest::Method::DELETE, &format!("/api/v1/namespaces/{NAMESPACE}"), false, None).await;
    Ok(0)
}
