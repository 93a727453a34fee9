//! ServiceAccount tokens: the `token` subresource (Kubernetes'
//! TokenRequest, what `kubectl create token` and `flotilla token create`
//! ask), and checking such a token when a client presents it. A token is
//! an ES256 JWT signed with the cluster CA's key, so any server issues and
//! checks it with nothing stored; it is valid while it has not expired
//! and its ServiceAccount still exists with the uid it names.

use std::time::{SystemTime, UNIX_EPOCH};

use flotilla_actors::limits::{
    SERVICE_ACCOUNT_TOKEN_AUDIENCES_MAX, SERVICE_ACCOUNT_TOKEN_TTL_DEFAULT_SECONDS, SERVICE_ACCOUNT_TOKEN_TTL_MAX_SECONDS,
    SERVICE_ACCOUNT_TOKEN_TTL_MIN_SECONDS,
};
use flotilla_actors::model::kinds::SERVICE_ACCOUNTS;
use flotilla_actors::model::object;
use flotilla_actors::model::rbac::service_account_user;
use flotilla_actors::Registry;
use flotilla_raft::Consistency;
use serde_json::{json, Value};

use super::status::ApiError;
use super::user::{User, AUTHENTICATED_GROUP};

/// Who signs tokens and whom a token must be for to open this API: the
/// issuer and audience Kubernetes uses by default, so in-cluster clients
/// that check them find what they expect.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

fn now_secs() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Whether a bearer token is shaped as a JWT (three dot-separated parts).
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

/// The lifetime and audiences a TokenRequest asks for, checked.
pub fn requested(spec: &Value) -> Result<(i64, Vec<String>), String> {
    let ttl = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => SERVICE_ACCOUNT_TOKEN_TTL_DEFAULT_SECONDS,
        Some(v) => v.as_i64().ok_or("spec.expirationSeconds must be a whole number of seconds")?,
    };
    if !(SERVICE_ACCOUNT_TOKEN_TTL_MIN_SECONDS..=SERVICE_ACCOUNT_TOKEN_TTL_MAX_SECONDS).contains(&ttl) {
        return Err(format!(
            "spec.expirationSeconds: {ttl} must be from {SERVICE_ACCOUNT_TOKEN_TTL_MIN_SECONDS} (10 minutes) to {SERVICE_ACCOUNT_TOKEN_TTL_MAX_SECONDS} (48 hours)"
        ));
    }
    let audiences = match spec.get("audiences") {
        None | Some(Value::Null) => vec![API_AUDIENCE.to_string()],
        Some(Value::Array(a)) if a.is_empty() => vec![API_AUDIENCE.to_string()],
        Some(Value::Array(a)) if a.len() <= SERVICE_ACCOUNT_TOKEN_AUDIENCES_MAX => a
            .iter()
            .map(|x| x.as_str().filter(|s| !s.is_empty() && s.len() <= 256).map(String::from))
            .collect::<Option<Vec<_>>>()
            .ok_or("spec.audiences must be non-empty strings of at most 256 characters")?,
        Some(_) => return Err(format!("spec.audiences must be a list of at most {SERVICE_ACCOUNT_TOKEN_AUDIENCES_MAX} strings")),
    };
    Ok((ttl, audiences))
}

/// The claims of a token for ServiceAccount `name` (uid `uid`) in `ns`,
/// issued at `now` for `ttl` seconds, as Kubernetes' bound tokens carry them.
pub fn claims(ns: &str, name: &str, uid: &str, audiences: &[String], now: i64, ttl: i64) -> Value {
    json!({
        "iss": API_AUDIENCE,
        "sub": service_account_user(ns, name),
        "aud": audiences,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": uid}},
    })
}

/// POST .../serviceaccounts/NAME/token: a TokenRequest in, the same with
/// `status.token` and `status.expirationTimestamp` out.
pub async fn create(registry: &Registry, ns: &str, name: &str, request: Value) -> Result<Value, ApiError> {
    if request.get("kind").and_then(Value::as_str).is_some_and(|k| k != "TokenRequest") {
        return Err(ApiError::bad_request("the body must be an authentication.k8s.io/v1 TokenRequest"));
    }
    let spec = request.get("spec").cloned().unwrap_or(json!({}));
    if spec.get("boundObjectRef").is_some_and(|b| !b.is_null()) {
        return Err(ApiError::bad_request("spec.boundObjectRef is not supported yet; ask for a token without it"));
    }
    let (ttl, audiences) = requested(&spec).map_err(ApiError::bad_request)?;
    let account = registry.get(&SERVICE_ACCOUNTS, Some(ns), name).await?;
    let uid = object::uid(&account).unwrap_or_default().to_string();
    let now = now_secs();
    let token = registry
        .member()
        .ca()
        .sign_jwt(&claims(ns, name, &uid, &audiences, now, ttl))
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "InternalError", e.to_string()))?;
    let expires = object::timestamp(UNIX_EPOCH + std::time::Duration::from_secs((now + ttl).max(0) as u64));
    let mut spec = spec;
    spec["expirationSeconds"] = json!(ttl);
    spec["audiences"] = json!(audiences);
    Ok(json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expires},
    }))
}

/// The user a ServiceAccount token names, if it is one this cluster signed
/// for this API, unexpired, and its account still exists with that uid.
pub async fn authenticate(registry: &Registry, token: &str) -> Result<User, String> {
    let claims = registry.member().ca().verify_jwt(token, API_AUDIENCE, now_secs().max(0) as u64).map_err(|e| e.to_string())?;
    let k8s = claims.get("kubernetes.io").ok_or("the token names no ServiceAccount")?;
    let ns = k8s.get("namespace").and_then(Value::as_str).ok_or("the token names no namespace")?;
    let sa = k8s.pointer("/serviceaccount/name").and_then(Value::as_str).ok_or("the token names no ServiceAccount")?;
    let uid = k8s.pointer("/serviceaccount/uid").and_then(Value::as_str).unwrap_or("");
    // A local read: an account deleted a moment ago on another member may
    // still open this one for as long as it takes to apply the delete.
    let key = SERVICE_ACCOUNTS.key(Some(ns), sa);
    let (kv, _) = registry.member().get(key.as_bytes(), Consistency::Serializable).await.map_err(|e| e.to_string())?;
    let account: Value = kv
        .and_then(|kv| object::decode(&kv.value, kv.mod_revision).ok())
        .ok_or_else(|| format!("ServiceAccount {ns}/{sa} no longer exists"))?;
    if object::uid(&account) != Some(uid) {
        return Err(format!("ServiceAccount {ns}/{sa} was deleted and made again; ask for a new token"));
    }
    Ok(User {
        name: service_account_user(ns, sa),
        groups: vec!["system:serviceaccounts".into(), format!("system:serviceaccounts:{ns}"), AUTHENTICATED_GROUP.into()],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_token_request_may_ask_for() {
        assert_eq!(requested(&json!({})), Ok((3600, vec![API_AUDIENCE.to_string()])));
        assert_eq!(requested(&json!({"expirationSeconds": 600, "audiences": ["vault"]})), Ok((600, vec!["vault".to_string()])));
        for bad in [
            json!({"expirationSeconds": 599}),
            json!({"expirationSeconds": 172_801}),
            json!({"expirationSeconds": "1h"}),
            json!({"expirationSeconds": 9_223_372_036_854_775_807i64}),
            json!({"audiences": [""]}),
            json!({"audiences": "x"}),
            json!({"audiences": [1]}),
        ] {
            assert!(requested(&bad).is_err(), "{bad} refused");
        }
    }

    #[test]
    fn claims_name_the_account_and_expire() {
        let c = claims("dev", "robot", "u-1", &[API_AUDIENCE.to_string()], 1000, 600);
        assert_eq!(c["sub"], "system:serviceaccount:dev:robot");
        assert_eq!((c["iat"].as_i64(), c["exp"].as_i64()), (Some(1000), Some(1600)));
        assert_eq!(c["kubernetes.io"]["serviceaccount"]["uid"], "u-1");
        assert!(looks_like_jwt("a.b.c") && !looks_like_jwt("flotilla-test-admin-token"));
    }
}
