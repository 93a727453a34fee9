//! The agent's own small HTTP endpoint (what the kubelet's port is to
//! Kubernetes): container logs and usage from this node's runtime, for the
//! API servers to proxy `flotilla logs` and `flotilla top` to. Callers
//! present a credential derived from the cluster's join token
//! ([`credential`]) as a bearer token.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use flotilla_actors::runtime::{ContainerRuntime, RuntimeError};
use serde_json::json;
use sha2::{Digest, Sha256};

/// The kubelet's port in Kubernetes.
pub const KUBELET_PORT_DEFAULT: u16 = 10250;

/// What servers present to agents' endpoints: derived from the join
/// token's secret, never the secret itself (which admits members and is
/// traded for the cluster CA), since this endpoint speaks plain HTTP.
pub fn credential(join_secret: &str) -> String {
    Sha256::digest(format!("flotilla-kubelet\0{join_secret}").as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

struct KubeletState {
    runtime: Arc<dyn ContainerRuntime>,
    token_digest: [u8; 32],
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl KubeletState {
    /// Compares digests, so the time taken says nothing about the token.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let presented = headers.get("authorization").and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
        digest(presented) == self.token_digest
    }
}

fn runtime_error(e: RuntimeError) -> Response {
    let status = match e {
        RuntimeError::NotFound(_) => StatusCode::NOT_FOUND,
        RuntimeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, e.to_string()).into_response()
}

async fn container_logs(
    State(state): State<Arc<KubeletState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !state.authorized(&headers) {
        return (StatusCode::UNAUTHORIZED, "present the cluster's kubelet credential as a bearer token").into_response();
    }
    let tail = match q.get("tailLines").map(|t| t.parse::<usize>()) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => return (StatusCode::BAD_REQUEST, "tailLines must be a whole number").into_response(),
    };
    match state.runtime.logs(&id, tail).await {
        Ok(bytes) => (StatusCode::OK, [(axum::http::header::CONTENT_TYPE, "text/plain")], bytes).into_response(),
        Err(e) => runtime_error(e),
    }
}

async fn container_stats(State(state): State<Arc<KubeletState>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !state.authorized(&headers) {
        return (StatusCode::UNAUTHORIZED, "present the cluster's kubelet credential as a bearer token").into_response();
    }
    match state.runtime.usage(&id).await {
        Ok(u) => Json(json!({"cpuMillis": u.cpu_millis, "memoryBytes": u.memory_bytes})).into_response(),
        Err(e) => runtime_error(e),
    }
}

/// Binds `addr` and serves until the returned task is dropped or aborted;
/// answers the bound port.
pub async fn serve(
    addr: &str,
    runtime: Arc<dyn ContainerRuntime>,
    token: &str,
) -> Result<(u16, tokio::task::JoinHandle<std::io::Result<()>>), String> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("--kubelet-listen {addr}: {e}; choose a free address or port"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let state = Arc::new(KubeletState { runtime, token_digest: digest(token) });
    let app = Router::new()
        .route("/containerLogs/{id}", get(container_logs))
        .route("/stats/container/{id}", get(container_stats))
        .with_state(state);
    Ok((port, tokio::spawn(async move { axum::serve(listener, app).await })))
}
