//! `flotilla logs` and `flotilla top`.

use futures::StreamExt;
use serde_json::Value;

use crate::client::ApiClient;
use crate::cmd_get::urlencode;

pub async fn logs(
    client: &ApiClient,
    pod: &str,
    container: Option<&str>,
    follow: bool,
    tail: Option<usize>,
    namespace: Option<&str>,
) -> Result<i32, String> {
    let ns = namespace.unwrap_or("default");
    let mut q = Vec::new();
    if let Some(c) = container {
        q.push(format!("container={}", urlencode(c)));
    }
    if let Some(t) = tail {
        q.push(format!("tailLines={t}"));
    }
    if follow {
        q.push("follow=true".into());
    }
    let path = format!("/api/v1/namespaces/{ns}/pods/{pod}/log{}{}", if q.is_empty() { "" } else { "?" }, q.join("&"));
    let resp = client.stream(&path, false).await.map_err(|e| format!("pod {pod:?}: {}", e.message))?;
    let mut body = resp.bytes_stream();
    use std::io::Write;
    let mut out = std::io::stdout();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| format!("log stream ended: {e}"))?;
        out.write_all(&chunk).map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(0)
}

pub async fn top(client: &ApiClient, what: &str) -> Result<i32, String> {
    let (path, header) = match what {
        "nodes" | "node" | "no" => {
            ("/apis/metrics.k8s.io/v1beta1/nodes", format!("{:<24}{:>12}{:>16}", "NAME", "CPU(cores)", "MEMORY(bytes)"))
        }
        "pods" | "pod" | "po" => {
            ("/apis/metrics.k8s.io/v1beta1/pods", format!("{:<16}{:<32}{:>12}{:>16}", "NAMESPACE", "NAME", "CPU(cores)", "MEMORY(bytes)"))
        }
        other => return Err(format!("top shows nodes or pods, not {other:?}")),
    };
    let list = client.get(path, false).await.map_err(|e| e.message)?;
    println!("{header}");
    for item in list.get("items").and_then(Value::as_array).into_iter().flatten() {
        let name = item.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        if what.starts_with('n') {
            let cpu = item.pointer("/usage/cpu").and_then(Value::as_str).unwrap_or("0");
            let mem = mi(item.pointer("/usage/memory").and_then(Value::as_str).unwrap_or("0Ki"));
            println!("{name:<24}{cpu:>12}{mem:>16}");
        } else {
            let ns = item.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("");
            let (mut cpu, mut kib) = (0i64, 0i64);
            for c in item.get("containers").and_then(Value::as_array).into_iter().flatten() {
                cpu +=
                    c.pointer("/usage/cpu").and_then(Value::as_str).and_then(|s| s.trim_end_matches('m').parse::<i64>().ok()).unwrap_or(0);
                kib += c
                    .pointer("/usage/memory")
                    .and_then(Value::as_str)
                    .and_then(|s| s.trim_end_matches("Ki").parse::<i64>().ok())
                    .unwrap_or(0);
            }
            println!("{ns:<16}{name:<32}{:>12}{:>16}", format!("{cpu}m"), format!("{}Mi", kib / 1024));
        }
    }
    Ok(0)
}

fn mi(ki: &str) -> String {
    format!("{}Mi", ki.trim_end_matches("Ki").parse::<i64>().unwrap_or(0) / 1024)
}
