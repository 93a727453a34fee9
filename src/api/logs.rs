//! Container logs (`pods/{name}/log`, with `container`, `tailLines` and
//! `follow`) and resource usage (`metrics.k8s.io`, what `top` reads), served
//! from the runtime of the pod's node: directly when its agent is in this
//! process, else from the agent's own endpoint (the kubelet port it
//! advertises in the Node's `daemonEndpoints`), as Kubernetes' API server
//! proxies to the kubelet.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_actors::model::kinds::{NODES, PODS};
use flotilla_actors::model::selector::Selector;
use flotilla_actors::runtime::{ContainerRuntime, Usage};
use serde_json::{json, Value};

use super::status::ApiError;
use super::ApiState;

/// How often a followed log is read for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(300);
/// Deadline of one request to a remote agent's endpoint.
const AGENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `top` waits for agents before it answers with what it has.
const TOP_DEADLINE: Duration = Duration::from_secs(5);
/// Usage requests to agents in flight at once for one `top`.
const USAGE_REQUESTS_IN_FLIGHT_MAX: usize = 32;
/// Largest log answer taken from an agent (its process logs are bounded too).
const AGENT_LOG_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Where a node's containers can be asked for logs and usage.
#[derive(Clone)]
enum NodeRuntime {
    Local(Arc<dyn ContainerRuntime>),
    Remote { base: String, client: reqwest::Client },
}

impl NodeRuntime {
    async fn logs(&self, id: &str, tail: Option<usize>) -> Result<Vec<u8>, String> {
        match self {
            NodeRuntime::Local(r) => r.logs(id, tail).await.map_err(|e| e.to_string()),
            NodeRuntime::Remote { base, client } => {
                let mut url = format!("{base}/containerLogs/{id}");
                if let Some(n) = tail {
                    url.push_str(&format!("?tailLines={n}"));
                }
                let resp = client.get(&url).timeout(AGENT_REQUEST_TIMEOUT).send().await.map_err(|e| e.to_string())?;
                let status = resp.status();
                let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("the node's agent answered {status}: {}", String::from_utf8_lossy(&bytes)));
                }
                Ok(bytes[bytes.len().saturating_sub(AGENT_LOG_MAX_BYTES)..].to_vec())
            }
        }
    }

    async fn usage(&self, id: &str) -> Result<Usage, String> {
        match self {
            NodeRuntime::Local(r) => r.usage(id).await.map_err(|e| e.to_string()),
            NodeRuntime::Remote { base, client } => {
                let resp = client
                    .get(format!("{base}/stats/container/{id}"))
                    .timeout(AGENT_REQUEST_TIMEOUT)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if !resp.status().is_success() {
                    return Err(format!("the node's agent answered {}", resp.status()));
                }
                let v: Value = resp.json().await.map_err(|e| e.to_string())?;
                Ok(Usage {
                    cpu_millis: v.get("cpuMillis").and_then(Value::as_i64).unwrap_or(0),
                    memory_bytes: v.get("memoryBytes").and_then(Value::as_i64).unwrap_or(0),
                })
            }
        }
    }
}

/// The running container's id, else (crash-looping) the last one's.
fn container_id(pod: &Value, container: &str) -> Option<String> {
    let status =
        pod.pointer("/status/containerStatuses")?.as_array()?.iter().find(|c| c.get("name").and_then(Value::as_str) == Some(container))?;
    let id = status.get("containerID").or_else(|| status.pointer("/lastState/terminated/containerID"))?.as_str()?;
    Some(id.split_once("://").map_or(id, |(_, rest)| rest).to_string())
}

async fn runtime_for(state: &ApiState, pod: &Value) -> Result<NodeRuntime, ApiError> {
    let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
    if node.is_empty() {
        return Err(ApiError::bad_request("the pod is not bound to a node yet; it has no logs"));
    }
    if let Some(local) = state.agents.runtime(node) {
        return Ok(NodeRuntime::Local(local));
    }
    let unavailable = |why: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", why);
    let kubelet = state.kubelet.clone().ok_or_else(|| unavailable(format!("node {node:?} has no agent in this process")))?;
    let nodes = &NODES;
    let node_obj = state.registry.get(nodes, None, node).await?;
    let ip = node_obj
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| x.get("type").and_then(Value::as_str) == Some("InternalIP")))
        .and_then(|x| x.get("address"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let port = node_obj.pointer("/status/daemonEndpoints/kubeletEndpoint/Port").and_then(Value::as_u64).unwrap_or(0);
    if ip.is_empty() || port == 0 {
        return Err(unavailable(format!("node {node:?} advertises no agent endpoint (InternalIP and kubelet port) to fetch logs from")));
    }
    let ip: std::net::IpAddr =
        ip.parse().map_err(|_| unavailable(format!("node {node:?} advertises InternalIP {ip:?}, which is not an IP address")))?;
    let port = u16::try_from(port).map_err(|_| unavailable(format!("node {node:?} advertises kubelet port {port}, beyond 65535")))?;
    // The certificate is checked against the node's name, not this address.
    let (base, client) = kubelet.for_node(node, std::net::SocketAddr::new(ip, port)).map_err(unavailable)?;
    Ok(NodeRuntime::Remote { base, client })
}

pub async fn pod_log(state: &ApiState, ns: &str, name: &str, query: &str) -> Result<Response, ApiError> {
    let params: std::collections::HashMap<String, String> =
        serde_urlencoded::from_str(query).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let pods = &PODS;
    let pod = state.registry.get(pods, Some(ns), name).await?;
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().filter_map(|c| c.get("name").and_then(Value::as_str).map(String::from)).collect())
        .unwrap_or_default();
    let container = match params.get("container") {
        Some(c) if containers.contains(c) => c.clone(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c:?} is not valid for pod {name}; choose one of: {}",
                containers.join(", ")
            )))
        }
        None if containers.len() == 1 => containers[0].clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: {}",
                containers.join(", ")
            )))
        }
    };
    let tail = match params.get("tailLines") {
        Some(t) => Some(t.parse::<usize>().map_err(|_| ApiError::bad_request(format!("tailLines={t:?} must be a whole number")))?),
        None => None,
    };
    let runtime = runtime_for(state, &pod).await?;
    let id = container_id(&pod, &container)
        .ok_or_else(|| ApiError::bad_request(format!("container {container:?} in pod {name} has not started yet")))?;
    let first = runtime.logs(&id, tail).await.map_err(|e| match &runtime {
        NodeRuntime::Local(_) => ApiError::not_found(e),
        // The agent could not be asked, or could not answer.
        NodeRuntime::Remote { .. } => ApiError::new(StatusCode::BAD_GATEWAY, "BadGateway", e),
    })?;
    if params.get("follow").is_none_or(|f| f != "true") {
        return Ok((StatusCode::OK, [(axum::http::header::CONTENT_TYPE, "text/plain")], first).into_response());
    }
    // Follow: send what there is, then whatever is appended, until the
    // container's log goes away.
    let full_len = runtime.logs(&id, None).await.map(|b| b.len()).unwrap_or(0);
    let stream = futures::stream::unfold((Some(first), full_len, runtime, id), |(pending, mut offset, runtime, id)| async move {
        if let Some(bytes) = pending {
            return Some((Ok::<_, std::io::Error>(bytes), (None, offset, runtime, id)));
        }
        loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            let all = runtime.logs(&id, None).await.ok()?;
            if all.len() < offset {
                offset = 0; // rotated
            }
            if all.len() > offset {
                let new = all[offset..].to_vec();
                offset = all.len();
                return Some((Ok(new), (None, offset, runtime, id)));
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(axum::http::header::CONTENT_TYPE, "text/plain")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))
}

/// One pod's usage: (cpu millis, memory bytes, per-container entries).
async fn usage_of(runtime: &NodeRuntime, pod: &Value) -> (i64, i64, Vec<Value>) {
    let (mut cpu, mut mem, mut containers) = (0, 0, Vec::new());
    for c in pod.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten() {
        let name = c.get("name").and_then(Value::as_str).unwrap_or("");
        let Some(id) = container_id(pod, name) else { continue };
        if let Ok(u) = runtime.usage(&id).await {
            cpu += u.cpu_millis;
            mem += u.memory_bytes;
            containers.push(
                json!({"name": name, "usage": {"cpu": format!("{}m", u.cpu_millis), "memory": format!("{}Ki", u.memory_bytes / 1024)}}),
            );
        }
    }
    (cpu, mem, containers)
}

/// Usage of every running pod of `pods` (by index), asked of their nodes
/// at once, each node resolved once; what has not answered by
/// [`TOP_DEADLINE`] is left out, so one unreachable node cannot stall `top`.
async fn running_usage(state: &ApiState, pods: &[Value]) -> Vec<(usize, (i64, i64, Vec<Value>))> {
    use futures::StreamExt;
    let mut runtimes: std::collections::HashMap<String, Option<NodeRuntime>> = std::collections::HashMap::new();
    let mut asks = Vec::new();
    for (i, pod) in pods.iter().enumerate() {
        if pod.pointer("/status/phase").and_then(Value::as_str) != Some("Running") {
            continue;
        }
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("").to_string();
        if !runtimes.contains_key(&node) {
            let resolved = runtime_for(state, pod).await.ok();
            runtimes.insert(node.clone(), resolved);
        }
        if let Some(Some(runtime)) = runtimes.get(&node) {
            let runtime = runtime.clone();
            asks.push(async move { (i, usage_of(&runtime, pod).await) });
        }
    }
    let deadline = tokio::time::Instant::now() + TOP_DEADLINE;
    let mut answers = futures::stream::iter(asks).buffer_unordered(USAGE_REQUESTS_IN_FLIGHT_MAX);
    let mut out = Vec::new();
    while let Ok(Some(answer)) = tokio::time::timeout_at(deadline, answers.next()).await {
        out.push(answer);
    }
    out.sort_by_key(|(i, _)| *i);
    out
}

/// `PodMetricsList` for running pods whose agents answer.
pub async fn pod_metrics(State(state): State<Arc<ApiState>>) -> Response {
    let pods = &PODS;
    let items = match state.registry.list(pods, None, &Selector::default(), &Selector::default(), 0, None).await {
        Ok((items, _, _)) => items,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let mut out = Vec::new();
    for (i, (_, _, containers)) in running_usage(&state, &items).await {
        if containers.is_empty() {
            continue;
        }
        let pod = &items[i];
        out.push(json!({"metadata": {"name": pod["metadata"]["name"], "namespace": pod["metadata"]["namespace"]},
            "timestamp": flotilla_actors::model::object::now(), "window": "1s", "containers": containers}));
    }
    Json(json!({"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": out})).into_response()
}

/// `NodeMetricsList`: the sum of each node's running pods.
pub async fn node_metrics(State(state): State<Arc<ApiState>>) -> Response {
    let (pods, nodes) = (&PODS, &NODES);
    let (pod_items, node_items) = match (
        state.registry.list(pods, None, &Selector::default(), &Selector::default(), 0, None).await,
        state.registry.list(nodes, None, &Selector::default(), &Selector::default(), 0, None).await,
    ) {
        (Ok((p, _, _)), Ok((n, _, _))) => (p, n),
        (Err(e), _) | (_, Err(e)) => return ApiError::from(e).into_response(),
    };
    let mut per_node: std::collections::HashMap<&str, (i64, i64)> = std::collections::HashMap::new();
    for (i, (c, m, _)) in running_usage(&state, &pod_items).await {
        let node = pod_items[i].pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
        let sum = per_node.entry(node).or_default();
        sum.0 += c;
        sum.1 += m;
    }
    let mut out = Vec::new();
    for node in &node_items {
        let name = node.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        let (cpu, mem) = per_node.get(name).copied().unwrap_or_default();
        out.push(json!({"metadata": {"name": name}, "timestamp": flotilla_actors::model::object::now(), "window": "1s",
            "usage": {"cpu": format!("{cpu}m"), "memory": format!("{}Ki", mem / 1024)}}));
    }
    Json(json!({"kind": "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": out})).into_response()
}
