//! ServiceAccount tokens: the `token` subresource (Kubernetes'
//! TokenRequest, what `kubectl create token` and `flotilla token create`
//! ask), and checking such a token when a client presents it. A token is
//! an ES256 JWT signed with the cluster CA's key, so any server issues and
//! checks it with nothing stored; it is valid while it has not expired
//! and its ServiceAccount still exists with the uid it names. A token
//! bound to a pod (`spec.boundObjectRef`, what the kubelet asks for the
//! pods it runs) names the pod and its node too, and ends with the pod.

use std::time::UNIX_EPOCH;

use flotilla_actors::model::kinds::{NODES, PODS, SERVICE_ACCOUNTS};
use flotilla_actors::model::object;
use flotilla_actors::model::rbac::service_account_user;
pub use flotilla_actors::model::service_account_token::{
    claims, claims_bound, looks_like_jwt, now_secs, requested, BoundPod, API_AUDIENCE, BOUND_POD_DELETION_GRACE_SECONDS,
};
use flotilla_actors::Registry;
use flotilla_raft::Consistency;
use serde_json::{json, Value};

use super::status::ApiError;
use super::user::{User, AUTHENTICATED_GROUP};

/// POST .../serviceaccounts/NAME/token: a TokenRequest in, the same with
/// `status.token` and `status.expirationTimestamp` out.
pub async fn create(registry: &Registry, ns: &str, name: &str, request: Value) -> Result<Value, ApiError> {
    if request.get("kind").and_then(Value::as_str).is_some_and(|k| k != "TokenRequest") {
        return Err(ApiError::bad_request("the body must be an authentication.k8s.io/v1 TokenRequest"));
    }
    let mut spec = request.get("spec").cloned().unwrap_or(json!({}));
    let (ttl, audiences) = requested(&spec).map_err(ApiError::bad_request)?;
    let account = registry.get(&SERVICE_ACCOUNTS, Some(ns), name).await?;
    let uid = object::uid(&account).unwrap_or_default().to_string();
    let bound = match spec.get("boundObjectRef") {
        None | Some(Value::Null) => None,
        Some(reference) => Some(bound_pod(registry, ns, name, reference).await?),
    };
    let now = now_secs();
    let token = registry
        .member()
        .ca()
        .sign_jwt(&claims_bound(ns, name, &uid, &audiences, now, ttl, bound.as_ref()))
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))?;
    let expires = object::timestamp(UNIX_EPOCH + std::time::Duration::from_secs((now + ttl).max(0) as u64));
    spec["expirationSeconds"] = json!(ttl);
    spec["audiences"] = json!(audiences);
    if let Some(pod) = &bound {
        spec["boundObjectRef"] = json!({"kind": "Pod", "apiVersion": "v1", "name": pod.name, "uid": pod.uid});
    }
    Ok(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expires},
    }))
}

/// The pod a TokenRequest asks to bind its token to, checked as Kubernetes
/// checks it: a Pod of this namespace, with the uid given (if one is),
/// running as this ServiceAccount.
async fn bound_pod(registry: &Registry, ns: &str, account: &str, reference: &Value) -> Result<BoundPod, ApiError> {
    let kind = reference.get("kind").and_then(Value::as_str).unwrap_or("");
    if kind != "Pod" || reference.get("apiVersion").and_then(Value::as_str).is_some_and(|v| v != "v1") {
        return Err(ApiError::bad_request(format!(
            "spec.boundObjectRef: a token can be bound to a v1 Pod only, not {kind:?}; name a pod, or leave boundObjectRef out"
        )));
    }
    let name = reference.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
    let name = name.ok_or_else(|| ApiError::bad_request("spec.boundObjectRef.name is required"))?;
    let pod = registry.get(&PODS, Some(ns), name).await?;
    let uid = object::uid(&pod).unwrap_or_default().to_string();
    if let Some(asked) = reference.get("uid").and_then(Value::as_str).filter(|u| !u.is_empty()) {
        if asked != uid {
            return Err(ApiError::new(
                axum::http::StatusCode::CONFLICT,
                "Conflict",
                format!("the uid in spec.boundObjectRef ({asked}) is not pod {ns}/{name}'s ({uid}): the pod was made again"),
            ));
        }
    }
    let runs_as = pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("default");
    if runs_as != account {
        return Err(ApiError::bad_request(format!(
            "pod {ns}/{name} runs as ServiceAccount {runs_as:?}, not {account:?}: a token can be bound only to a pod of its own account"
        )));
    }
    let node = match pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        None => None,
        Some(node) => {
            let node_uid = registry.get(&NODES, None, node).await.ok().and_then(|n| object::uid(&n).map(String::from)).unwrap_or_default();
            Some((node.to_string(), node_uid))
        }
    };
    Ok(BoundPod { name: name.to_string(), uid, node })
}

/// An object as this member holds it. A local read: one deleted a moment
/// ago on another member may still open a token here for as long as it
/// takes to apply the delete.
async fn read_local(
    registry: &Registry,
    res: &flotilla_actors::model::resources::Resource,
    ns: &str,
    name: &str,
) -> Result<Option<Value>, String> {
    let key = res.key(Some(ns), name);
    let (kv, _) = registry.member().get(key.as_bytes(), Consistency::Serializable).await.map_err(|e| e.to_string())?;
    Ok(kv.and_then(|kv| object::decode(&kv.value, kv.mod_revision).ok()))
}

/// The user a ServiceAccount token names, if it is one this cluster signed
/// for this API, unexpired, and its account still exists with that uid.
pub async fn authenticate(registry: &Registry, token: &str) -> Result<User, String> {
    let claims = registry.member().ca().verify_jwt(token, API_AUDIENCE, now_secs().max(0) as u64).map_err(|e| e.to_string())?;
    let k8s = claims.get("kubernetes.io").ok_or("the token names no ServiceAccount")?;
    let ns = k8s.get("namespace").and_then(Value::as_str).ok_or("the token names no namespace")?;
    let sa = k8s.pointer("/serviceaccount/name").and_then(Value::as_str).ok_or("the token names no ServiceAccount")?;
    let uid = k8s.pointer("/serviceaccount/uid").and_then(Value::as_str).unwrap_or("");
    let account =
        read_local(registry, &SERVICE_ACCOUNTS, ns, sa).await?.ok_or_else(|| format!("ServiceAccount {ns}/{sa} no longer exists"))?;
    if object::uid(&account) != Some(uid) {
        return Err(format!("ServiceAccount {ns}/{sa} was deleted and made again; ask for a new token"));
    }
    if let Some(pod) = k8s.get("pod") {
        let name = pod.get("name").and_then(Value::as_str).unwrap_or("");
        let found = read_local(registry, &PODS, ns, name)
            .await?
            .ok_or_else(|| format!("the token is bound to pod {ns}/{name}, which no longer exists"))?;
        if object::uid(&found) != pod.get("uid").and_then(Value::as_str) {
            return Err(format!("the token is bound to an earlier pod {ns}/{name}, since deleted"));
        }
        let deleted = found.pointer("/metadata/deletionTimestamp").and_then(Value::as_str).and_then(object::parse_timestamp);
        if let Some(at) = deleted {
            let at = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
            if at + BOUND_POD_DELETION_GRACE_SECONDS < now_secs() {
                return Err(format!("the token is bound to pod {ns}/{name}, which is being deleted"));
            }
        }
    }
    Ok(User {
        name: service_account_user(ns, sa),
        groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}"), AUTHENTICATED_GROUP.into()],
    })
}
