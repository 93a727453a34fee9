//! The agent's own small HTTPS endpoint (what the kubelet's port is to
//! Kubernetes): container logs and usage from this node's runtime, for the
//! API servers to proxy `flotilla logs` and `flotilla top` to. It serves
//! the node's certificate and answers only callers with a client
//! certificate from the cluster CA in group `system:masters` (the API
//! servers' own; see [`crate::kubelet_client`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use flotilla_actors::agent::remote::NodeCertificate;
use flotilla_actors::runtime::{ContainerRuntime, RuntimeError};
use serde_json::json;

use crate::api::auth::ClientCertificate;
use crate::api::serve::ApiTls;
use crate::kubelet_client::KUBELET_CALLER_GROUP;

/// The kubelet's port in Kubernetes.
pub const KUBELET_PORT_DEFAULT: u16 = 10250;

struct KubeletState {
    runtime: Arc<dyn ContainerRuntime>,
}

/// Why a caller is not let in, if it is not.
fn refusal(request: &Request) -> Option<Response> {
    match request.extensions().get::<ClientCertificate>() {
        Some(ClientCertificate::Verified { user, .. }) if user.in_group(KUBELET_CALLER_GROUP) => None,
        Some(ClientCertificate::Verified { user, .. }) => Some(
            (StatusCode::FORBIDDEN, format!("user {:?} may not read this node's containers; only the API servers may", user.name))
                .into_response(),
        ),
        Some(ClientCertificate::Rejected(why)) => {
            Some((StatusCode::UNAUTHORIZED, format!("client certificate refused: {why}")).into_response())
        }
        _ => Some((StatusCode::UNAUTHORIZED, "present the API server's client certificate").into_response()),
    }
}

async fn guard(request: Request, next: Next) -> Response {
    match refusal(&request) {
        Some(refused) => refused,
        None => next.run(request).await,
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
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
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

async fn container_stats(State(state): State<Arc<KubeletState>>, Path(id): Path<String>) -> Response {
    match state.runtime.usage(&id).await {
        Ok(u) => Json(json!({"cpuMillis": u.cpu_millis, "memoryBytes": u.memory_bytes})).into_response(),
        Err(e) => runtime_error(e),
    }
}

/// Binds `addr` and serves over TLS with the node's certificate until the
/// returned task is dropped or aborted; answers the bound port.
pub async fn serve(
    addr: &str,
    runtime: Arc<dyn ContainerRuntime>,
    certificate: &NodeCertificate,
) -> Result<(u16, tokio::task::JoinHandle<()>), String> {
    let tls =
        ApiTls::new(&certificate.ca_pem, &certificate.cert_pem, &certificate.key_pem).map_err(|e| format!("the node certificate: {e}"))?;
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("--kubelet-listen {addr}: {e}; choose a free address or port"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let state = Arc::new(KubeletState { runtime });
    let app = Router::new()
        .route("/containerLogs/{id}", get(container_logs))
        .route("/stats/container/{id}", get(container_stats))
        .layer(axum::middleware::from_fn(guard))
        .with_state(state);
    Ok((port, tokio::spawn(crate::api::serve::serve(listener, Some(tls), app))))
}
