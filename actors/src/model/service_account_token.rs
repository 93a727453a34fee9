//! ServiceAccount tokens' contents: the claims of a token as Kubernetes'
//! bound service account tokens carry them (issuer, audience, expiry, the
//! account and, where bound, the pod and its node), and what a request for
//! one may ask. Signing is the cluster CA's ([`flotilla_raft::jwt`]); the
//! API's TokenRequest and the agents' pod tokens both build on this.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::limits::{
    SERVICE_ACCOUNT_TOKEN_AUDIENCES_MAX, SERVICE_ACCOUNT_TOKEN_TTL_DEFAULT_SECONDS, SERVICE_ACCOUNT_TOKEN_TTL_MAX_SECONDS,
    SERVICE_ACCOUNT_TOKEN_TTL_MIN_SECONDS,
};
use crate::model::rbac::service_account_user;

/// Who signs tokens and whom a token must be for to open this API: the
/// issuer and audience Kubernetes uses by default, so in-cluster clients
/// that check them find what they expect.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// Seconds since the epoch, as tokens count time.
pub fn now_secs() -> i64 {
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

/// The pod (and its node, once bound) a token is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundPod {
    pub name: String,
    pub uid: String,
    /// The node's name and uid.
    pub node: Option<(String, String)>,
}

/// How long a token outlives the deletion of the pod it is bound to, as in
/// Kubernetes: the pod's processes are still being stopped.
pub const BOUND_POD_DELETION_GRACE_SECONDS: i64 = 60;

/// The claims of a token for ServiceAccount `name` (uid `uid`) in `ns`,
/// issued at `now` for `ttl` seconds, as Kubernetes' bound tokens carry them.
pub fn claims(ns: &str, name: &str, uid: &str, audiences: &[String], now: i64, ttl: i64) -> Value {
    claims_bound(ns, name, uid, audiences, now, ttl, None)
}

/// `claims`, bound to a pod when one is given.
pub fn claims_bound(ns: &str, name: &str, uid: &str, audiences: &[String], now: i64, ttl: i64, pod: Option<&BoundPod>) -> Value {
    let mut claims = json!({
        "iss": API_AUDIENCE,
        "sub": service_account_user(ns, name),
        "aud": audiences,
        "iat": now,
        "nbf": now,
        "exp": now + ttl,
        "jti": rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": name, "uid": uid}},
    });
    if let Some(pod) = pod {
        claims["kubernetes.io"]["pod"] = json!({"name": pod.name, "uid": pod.uid});
        if let Some((node, node_uid)) = &pod.node {
            claims["kubernetes.io"]["node"] = json!({"name": node, "uid": node_uid});
        }
    }
    claims
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
