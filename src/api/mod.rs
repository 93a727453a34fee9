//! The HTTP API: Kubernetes' REST paths and JSON shapes over the registry,
//! served by every server member. Paths are parsed by hand from the one
//! table of resources, so a kind added there is served everywhere.

pub mod access_review;
pub mod auth;
pub mod certificate_revocation;
pub mod client_limits;
pub mod discovery;
pub mod listen;
pub mod logs;
pub mod objects;
pub mod params;
pub mod protobuf;
pub mod rbac_cache;
pub mod secrets_encryption;
pub mod serve;
pub mod status;
pub mod token_request;
pub mod user;
pub mod watch;

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use flotilla_actors::Registry;

use status::ApiError;

/// Largest request body accepted (Kubernetes' limit).
pub const REQUEST_BODY_MAX_BYTES: usize = 3 * 1024 * 1024;
/// A request's body must arrive whole within this (a slow sender holds a
/// connection and a handler, not the server).
pub const REQUEST_BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What every handler needs.
#[derive(Clone)]
pub struct ApiState {
    pub registry: Registry,
    pub http_addr: String,
    /// Runtimes of the agents in this process, for logs and usage.
    pub agents: flotilla_actors::agent::directory::AgentDirectory,
    /// How agents in other processes are asked for logs and usage; None
    /// where there are none.
    pub kubelet: Option<Arc<crate::kubelet_client::KubeletClient>>,
    /// Bearer tokens this server knows (client certificates need no table).
    pub authn: Arc<auth::Authenticator>,
    /// The RBAC objects, kept current from a watch.
    pub rbac: rbac_cache::RbacView,
}

pub fn router(state: ApiState) -> Router {
    let state = Arc::new(state);
    Router::new()
        .route("/version", get(|| async { Json(discovery::version()) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/api", get(|State(s): State<Arc<ApiState>>| async move { Json(discovery::api_versions(&s.http_addr)) }))
        .route("/apis", get(|| async { Json(discovery::api_group_list()) }))
        .route("/apis/metrics.k8s.io/v1beta1/nodes", get(logs::node_metrics))
        .route("/apis/metrics.k8s.io/v1beta1/pods", get(logs::pod_metrics))
        .route(secrets_encryption::STATUS_PATH, get(secrets_encryption::status))
        .route(secrets_encryption::ROTATE_PATH, axum::routing::post(secrets_encryption::rotate))
        .route(certificate_revocation::REVOKE_PATH, axum::routing::post(certificate_revocation::revoke))
        .route(certificate_revocation::LIST_PATH, get(certificate_revocation::list))
        .fallback(resource_entry)
        // Inside the guard: counts requests by the user it authenticated.
        .layer(axum::middleware::from_fn_with_state(Arc::new(client_limits::ClientLimits::default()), limit_per_client))
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::guard))
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// 429 for a user with too many short requests in flight.
async fn limit_per_client(
    State(limits): State<Arc<client_limits::ClientLimits>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(user) = request.extensions().get::<auth::User>().map(|u| u.name.clone()) else { return next.run(request).await };
    if client_limits::long_running(request.uri().query().unwrap_or("")) {
        return next.run(request).await;
    }
    let Some(_permit) = limits.admit(&user) else {
        tracing::info!(user = %user, "too many requests in flight");
        let mut response = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            format!(
                "{user} has {} requests in flight, the most one client may have; retry after {}s",
                client_limits::REQUESTS_IN_FLIGHT_PER_USER_MAX,
                client_limits::RETRY_AFTER_SECONDS
            ),
        )
        .into_response();
        response.headers_mut().insert(axum::http::header::RETRY_AFTER, client_limits::RETRY_AFTER_SECONDS.into());
        return response;
    };
    next.run(request).await
}

async fn readyz(State(s): State<Arc<ApiState>>) -> Response {
    match s.registry.member().current_leader() {
        Some(_) => "ok".into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, "no leader").into_response(),
    }
}

/// A parsed resource path.
#[derive(Debug, PartialEq, Eq)]
pub struct ResourcePath {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    /// None for a group-version's discovery document.
    pub plural: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// Parses `/api/v1/...` and `/apis/GROUP/VERSION/...`.
pub fn parse_path(path: &str) -> Option<ResourcePath> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let mut p = ResourcePath { group: group.into(), version: version.into(), namespace: None, plural: None, name: None, subresource: None };
    let is_namespaced_plural = |s: &str| flotilla_actors::model::kinds::by_path(group, version, s).is_some_and(|r| r.namespaced);
    match rest {
        [] => {}
        // Under a namespace, anything but the namespace's own subresources
        // names a namespaced resource (unknown ones get a 404 later).
        ["namespaces", ns, plural, tail @ ..]
            if is_namespaced_plural(plural) || !(tail.is_empty() && matches!(*plural, "status" | "finalize")) =>
        {
            p.namespace = Some((*ns).into());
            p.plural = Some((*plural).into());
            match tail {
                [] => {}
                [name] => p.name = Some((*name).into()),
                [name, sub] => {
                    p.name = Some((*name).into());
                    p.subresource = Some((*sub).into());
                }
                _ => return None,
            }
        }
        [plural] => p.plural = Some((*plural).into()),
        [plural, name] => {
            p.plural = Some((*plural).into());
            p.name = Some((*name).into());
        }
        [plural, name, sub] => {
            p.plural = Some((*plural).into());
            p.name = Some((*name).into());
            p.subresource = Some((*sub).into());
        }
        _ => return None,
    }
    Some(p)
}

async fn resource_entry(State(state): State<Arc<ApiState>>, request: Request) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or("").to_string();
    let headers = request.headers().clone();
    let span = tracing::info_span!("api_request", %method, path = %path);
    let _enter = span.enter();
    drop(_enter);
    if path == "/apis" || path.starts_with("/apis/") {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        if segs.len() == 2 && method == Method::GET {
            return match discovery::api_group(segs[1]) {
                Some(g) => Json(g).into_response(),
                None => {
                    ApiError::not_found(format!("the server could not find the requested resource: API group {:?} is not served", segs[1]))
                        .into_response()
                }
            };
        }
    }
    let Some(parsed) = parse_path(&path) else {
        return ApiError::not_found(format!("the server could not find the requested resource ({path})")).into_response();
    };
    let caller = request.extensions().get::<auth::User>().cloned();
    let body = match read_body(request).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    if parsed.group == access_review::GROUP {
        return access_review::handle(&state, method, parsed, &headers, caller, body).await.unwrap_or_else(IntoResponse::into_response);
    }
    objects::handle(&state, method, parsed, &query, &headers, body).await.unwrap_or_else(IntoResponse::into_response)
}

async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(request.into_body(), REQUEST_BODY_MAX_BYTES);
    let collected = tokio::time::timeout(REQUEST_BODY_READ_TIMEOUT, http_body_util::BodyExt::collect(limited)).await.map_err(|_| {
        ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "Timeout",
            format!("the request body did not arrive within {REQUEST_BODY_READ_TIMEOUT:?}"),
        )
    })?;
    match collected {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => Err(ApiError::too_large(REQUEST_BODY_MAX_BYTES)),
        Err(e) => Err(ApiError::bad_request(format!("could not read the request body: {e}"))),
    }
}

/// True when the client asked for a server-side Table.
pub fn wants_table(headers: &HeaderMap) -> bool {
    headers.get_all(axum::http::header::ACCEPT).iter().any(|v| v.to_str().is_ok_and(|s| s.contains("as=Table")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The limiter in front of a handler that holds every request until
    /// released: the request past the limit is a 429 with Retry-After, a
    /// watch is not counted, and places come back once requests finish.
    #[tokio::test]
    async fn a_client_over_its_in_flight_limit_gets_429() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tower::ServiceExt;
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let entered = Arc::new(AtomicUsize::new(0));
        let (held, count) = (gate.clone(), entered.clone());
        let app = Router::new()
            .fallback(move || {
                let (held, count) = (held.clone(), count.clone());
                async move {
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = held.acquire().await;
                    "done"
                }
            })
            .layer(axum::middleware::from_fn_with_state(Arc::new(client_limits::ClientLimits::default()), limit_per_client));
        let request = |user: &str, uri: &str| {
            let mut r = Request::builder().uri(uri).body(axum::body::Body::empty()).expect("request");
            r.extensions_mut().insert(auth::User { name: user.into(), groups: vec![] });
            r
        };
        let max = client_limits::REQUESTS_IN_FLIGHT_PER_USER_MAX;
        let waiting: Vec<_> = (0..max).map(|_| tokio::spawn(app.clone().oneshot(request("alice", "/api/v1/pods")))).collect();
        let until = |n: usize| {
            let entered = entered.clone();
            async move {
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
                while entered.load(Ordering::SeqCst) < n {
                    assert!(tokio::time::Instant::now() < deadline, "requests never reached the handler");
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        };
        until(max).await;
        let refused = app.clone().oneshot(request("alice", "/api/v1/pods")).await.expect("response");
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(refused.headers().get(axum::http::header::RETRY_AFTER).map(|v| v.as_bytes()), Some(&b"1"[..]));
        let watch = tokio::spawn(app.clone().oneshot(request("alice", "/api/v1/pods?watch=true")));
        let bob = tokio::spawn(app.clone().oneshot(request("bob", "/api/v1/pods")));
        until(max + 2).await;
        gate.add_permits(max + 2);
        for r in waiting {
            assert_eq!(r.await.expect("task").expect("response").status(), StatusCode::OK);
        }
        assert_eq!(watch.await.expect("task").expect("response").status(), StatusCode::OK, "a watch is not counted");
        assert_eq!(bob.await.expect("task").expect("response").status(), StatusCode::OK, "another user is not limited");
        gate.add_permits(1);
        let again = app.clone().oneshot(request("alice", "/api/v1/pods")).await.expect("response");
        assert_eq!(again.status(), StatusCode::OK, "places come back");
    }

    #[test]
    fn paths_parse_like_kubernetes() {
        let p = parse_path("/api/v1/namespaces/default/pods/web/status").unwrap();
        assert_eq!(
            (p.namespace.as_deref(), p.plural.as_deref(), p.name.as_deref(), p.subresource.as_deref()),
            (Some("default"), Some("pods"), Some("web"), Some("status"))
        );
        let ns = parse_path("/api/v1/namespaces/default").unwrap();
        assert_eq!((ns.namespace, ns.plural.as_deref(), ns.name.as_deref()), (None, Some("namespaces"), Some("default")));
        let all = parse_path("/apis/apps/v1/deployments").unwrap();
        assert_eq!((all.group.as_str(), all.plural.as_deref(), all.name), ("apps", Some("deployments"), None));
        let disc = parse_path("/api/v1").unwrap();
        assert_eq!(disc.plural, None);
        assert!(parse_path("/healthz").is_none());
    }
}
