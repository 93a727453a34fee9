//! What a pod needs from the control plane before its containers start,
//! beyond its own object: the Secrets and ConfigMaps its environment and
//! volumes name, and its ServiceAccount tokens. An agent asks for them by
//! the pod, and the server reads the names from the pod it holds
//! ([`references`]), so a node can read no Secret that no pod bound to it
//! names (Kubernetes' node authorizer).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1 as core;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::limits::SERVICE_ACCOUNT_TOKEN_TTL_MIN_SECONDS;
use crate::model::service_account_token::API_AUDIENCE;

/// Where Kubernetes mounts a pod's ServiceAccount token, CA and namespace;
/// in-cluster clients (client-go, kube-rs, the Python client) read them here.
pub const SERVICE_ACCOUNT_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The lifetime of the token mounted into every pod: what the kubelet asks
/// for (an hour and seven seconds, so it can be told from others).
pub const MOUNTED_TOKEN_TTL_SECONDS: i64 = 3607;

/// A token issued for one pod.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IssuedToken {
    pub token: String,
    /// Seconds since the epoch.
    pub expires_unix: i64,
    pub ttl_seconds: i64,
}

/// The answer to a node's request for a pod's inputs. No Debug: it holds
/// secret values.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct PodInputs {
    /// The Secrets the pod names that exist, by name, as the API serves them.
    pub secrets: BTreeMap<String, Value>,
    /// The ConfigMaps the pod names that exist, by name.
    pub config_maps: BTreeMap<String, Value>,
    /// Tokens bound to the pod, by audience.
    pub tokens: BTreeMap<String, IssuedToken>,
    /// Whether the pod gets its ServiceAccount's token mounted (neither the
    /// pod nor its account turned `automountServiceAccountToken` off).
    pub automount: bool,
    /// The cluster CA, PEM, for `ca.crt`.
    pub ca_pem: String,
    /// The in-cluster API (the `kubernetes` Service's virtual IP and port),
    /// for `KUBERNETES_SERVICE_HOST` and `_PORT`.
    pub api: Option<(String, u16)>,
}

/// The names a pod refers to, as the server reads them from the pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    pub secrets: BTreeSet<String>,
    pub config_maps: BTreeSet<String>,
    /// Audience of each token a projected volume asks for, with the
    /// shortest lifetime asked for it.
    pub token_audiences: BTreeMap<String, i64>,
}

impl References {
    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty() && self.config_maps.is_empty() && self.token_audiences.is_empty()
    }
}

/// Every Secret, ConfigMap and token audience `pod` names: in its
/// containers' `env` and `envFrom`, and in its volumes.
pub fn references(pod: &core::Pod) -> References {
    let mut refs = References::default();
    let Some(spec) = &pod.spec else { return refs };
    let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
    for c in containers {
        for e in c.env.iter().flatten() {
            let Some(from) = &e.value_from else { continue };
            if let Some(s) = &from.secret_key_ref {
                refs.secrets.insert(s.name.clone());
            }
            if let Some(m) = &from.config_map_key_ref {
                refs.config_maps.insert(m.name.clone());
            }
        }
        for from in c.env_from.iter().flatten() {
            if let Some(s) = &from.secret_ref {
                refs.secrets.insert(s.name.clone());
            }
            if let Some(m) = &from.config_map_ref {
                refs.config_maps.insert(m.name.clone());
            }
        }
    }
    for v in spec.volumes.iter().flatten() {
        if let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            refs.secrets.insert(name);
        }
        if let Some(m) = &v.config_map {
            refs.config_maps.insert(m.name.clone());
        }
        for source in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(s) = &source.secret {
                refs.secrets.insert(s.name.clone());
            }
            if let Some(m) = &source.config_map {
                refs.config_maps.insert(m.name.clone());
            }
            if let Some(t) = &source.service_account_token {
                let audience = t.audience.clone().filter(|a| !a.is_empty()).unwrap_or_else(|| API_AUDIENCE.to_string());
                let ttl = t.expiration_seconds.unwrap_or(3600).max(SERVICE_ACCOUNT_TOKEN_TTL_MIN_SECONDS);
                let entry = refs.token_audiences.entry(audience).or_insert(ttl);
                *entry = (*entry).min(ttl);
            }
        }
    }
    refs.secrets.retain(|n| !n.is_empty());
    refs.config_maps.retain(|n| !n.is_empty());
    refs
}

/// The ServiceAccount a pod runs as.
pub fn service_account(pod: &core::Pod) -> &str {
    pod.spec.as_ref().and_then(|s| s.service_account_name.as_deref()).filter(|s| !s.is_empty()).unwrap_or("default")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pod_refers_to_what_its_env_and_volumes_name() {
        let pod: core::Pod = serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [{"name": "a", "image": "i",
                    "env": [{"name": "X", "value": "1"},
                            {"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                            {"name": "L", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "level"}}},
                            {"name": "N", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "envFrom": [{"secretRef": {"name": "api-keys"}}, {"configMapRef": {"name": "common"}}]}],
                "volumes": [
                    {"name": "certs", "secret": {"secretName": "tls"}},
                    {"name": "conf", "configMap": {"name": "settings"}},
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "all", "projected": {"sources": [
                        {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 7200, "path": "vault-token"}},
                        {"serviceAccountToken": {"audience": "vault", "expirationSeconds": 900, "path": "short"}},
                        {"serviceAccountToken": {"path": "api-token", "expirationSeconds": 60}},
                        {"secret": {"name": "extra"}}]}}]
            }
        }))
        .unwrap();
        let refs = references(&pod);
        let set = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(refs.secrets, set(&["api-keys", "db", "extra", "tls"]));
        assert_eq!(refs.config_maps, set(&["common", "settings"]));
        // The shortest lifetime asked wins; none is shorter than allowed.
        assert_eq!(refs.token_audiences, BTreeMap::from([("vault".to_string(), 900), (API_AUDIENCE.to_string(), 600)]));
        assert_eq!(service_account(&pod), "default");
        assert!(references(&core::Pod::default()).is_empty());
    }
}
