//! `flotilla bench api`: API mutation latency. N concurrent clients each
//! create a ConfigMap and then replace it (with its resourceVersion), one
//! request at a time, spread over the given API servers; reports p50, p99
//! and max per operation kind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::stats::percentile_ms;
use serde_json::json;

#[derive(Args)]
pub struct ApiBenchArgs {
    /// API servers, comma-separated; clients are spread over them (default:
    /// the kubeconfig's server). Credentials come from the kubeconfig.
    #[arg(long, value_delimiter = ',')]
    servers: Vec<String>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Objects each client creates and then updates.
    #[arg(long, default_value_t = 100)]
    objects: usize,
    /// Namespace to write into (must exist).
    #[arg(long, default_value = "default")]
    namespace: String,
    #[arg(long)]
    json: bool,
}

pub async fn run(mut args: ApiBenchArgs, target: &crate::client::ClientTarget) -> Result<i32, String> {
    if args.clients == 0 || args.objects == 0 {
        return Err("--clients and --objects must not be zero".into());
    }
    let (base, builder, authorization) = crate::client::connect(target)?;
    if args.servers.is_empty() {
        args.servers.push(base);
    }
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(a) = authorization {
        headers.insert(reqwest::header::AUTHORIZATION, a.parse().map_err(|_| "the bearer token is not a valid header value".to_string())?);
    }
    let http = builder.default_headers(headers).pool_max_idle_per_host(args.clients).build().map_err(|e| e.to_string())?;
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let ns = Arc::new(args.namespace.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let http = http.clone();
        let base = args.servers[c % args.servers.len()].trim_end_matches('/').to_string();
        let (run_id, ns, n) = (run_id.clone(), ns.clone(), args.objects);
        tasks.push(tokio::spawn(async move {
            let url = format!("{base}/api/v1/namespaces/{ns}/configmaps");
            let (mut creates, mut updates) = (Vec::with_capacity(n), Vec::with_capacity(n));
            for i in 0..n {
                let name = format!("bench-{run_id}-{c}-{i}");
                let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"v": "0"}});
                let t = Instant::now();
                let resp = http.post(&url).json(&body).send().await.map_err(|e| format!("cannot reach {base}: {e}"))?;
                if resp.status().as_u16() != 201 {
                    return Err(format!("create answered {}: {}", resp.status(), resp.text().await.unwrap_or_default()));
                }
                let mut created: serde_json::Value = resp.json().await.map_err(|e| e.to_string())?;
                creates.push(t.elapsed());
                created["data"]["v"] = json!("1");
                let t = Instant::now();
                let resp = http.put(format!("{url}/{name}")).json(&created).send().await.map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("update answered {}: {}", resp.status(), resp.text().await.unwrap_or_default()));
                }
                updates.push(t.elapsed());
            }
            Ok::<_, String>((creates, updates))
        }));
    }
    let (mut creates, mut updates) = (Vec::new(), Vec::new());
    for t in tasks {
        let (c, u) = t.await.map_err(|e| e.to_string())??;
        creates.extend(c);
        updates.extend(u);
    }
    let elapsed = started.elapsed();
    creates.sort();
    updates.sort();
    let mut all: Vec<Duration> = creates.iter().chain(&updates).copied().collect();
    all.sort();
    let per_sec = all.len() as f64 / elapsed.as_secs_f64();
    println!(
        "flotilla API mutation benchmark: {} servers, {} clients, {} creates + {} updates",
        args.servers.len(),
        args.clients,
        creates.len(),
        updates.len()
    );
    println!("  op       p50 ms   p99 ms   max ms");
    for (name, v) in [("create", &creates), ("update", &updates), ("all", &all)] {
        println!("  {name:<7}{:>8.2} {:>8.2} {:>8.2}", percentile_ms(v, 0.5), percentile_ms(v, 0.99), percentile_ms(v, 1.0));
    }
    println!("  mutations/s: {per_sec:.1}");
    if args.json {
        println!(
            "{}",
            json!({"clients": args.clients, "mutations": all.len(), "mutations_per_sec": (per_sec * 10.0).round() / 10.0,
                   "create_p50_ms": percentile_ms(&creates, 0.5), "create_p99_ms": percentile_ms(&creates, 0.99),
                   "update_p50_ms": percentile_ms(&updates, 0.5), "update_p99_ms": percentile_ms(&updates, 0.99),
                   "p50_ms": percentile_ms(&all, 0.5), "p99_ms": percentile_ms(&all, 0.99), "max_ms": percentile_ms(&all, 1.0)})
        );
    }
    Ok(0)
}
