//! A container's environment as the kubelet builds it: `envFrom` first,
//! then `env` over it (literal values with `$(VAR)` references expanded,
//! or values taken from Secrets, ConfigMaps, the pod's own fields and the
//! container's resources), then the in-cluster API's variables where the
//! pod did not set them. Pure: everything it reads comes in as arguments.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1 as core;

use super::pod_inputs::PodInputs;
use crate::model::quantity::Quantity;

/// What a container's environment may say about where the pod runs.
pub struct PodFacts<'a> {
    pub node_ip: &'a str,
    /// The pod's address where it is known before its containers start.
    pub pod_ip: Option<&'a str>,
    /// The node's allocatable CPU and memory: what `resourceFieldRef`
    /// reports for a limit the container does not set.
    pub node_cpu_millis: i64,
    pub node_memory_bytes: i64,
}

fn secret(inputs: &PodInputs, name: &str) -> Option<core::Secret> {
    inputs.secrets.get(name).and_then(|v| serde_json::from_value(v.clone()).ok())
}

fn config_map(inputs: &PodInputs, name: &str) -> Option<core::ConfigMap> {
    inputs.config_maps.get(name).and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// A Secret's values as text, as environment variables carry them.
fn secret_values(s: &core::Secret) -> BTreeMap<String, String> {
    s.data.iter().flatten().map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned())).collect()
}

/// A valid environment variable name, as Kubernetes checks keys that
/// `envFrom` turns into variables: no `=`, no NUL, not empty.
fn is_env_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0')
}

/// Expands `$(NAME)` with variables defined so far; `$$` is a literal `$`,
/// and a reference to an undefined variable is left as written (Kubernetes'
/// rules).
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(') {
            match inner.find(')') {
                Some(end) => {
                    let name = &inner[..end];
                    match vars.get(name) {
                        Some(v) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &inner[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// `fieldRef`: what the Downward API exposes of the pod.
pub fn field_value(pod: &core::Pod, path: &str, facts: &PodFacts) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: &Option<BTreeMap<String, String>>| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.as_ref().and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", &meta.labels).or_else(|| keyed("metadata.annotations['", &meta.annotations)) {
        return Ok(v);
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => super::pod_inputs::service_account(pod).to_string(),
        "status.hostIP" | "status.hostIPs" => facts.node_ip.to_string(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.unwrap_or_default().to_string(),
        other => {
            return Err(format!(
                "fieldRef {other:?} is not one the Downward API offers: use metadata.name, metadata.namespace, metadata.uid, \
                 metadata.labels['KEY'], metadata.annotations['KEY'], spec.nodeName, spec.serviceAccountName, status.hostIP \
                 or status.podIP"
            ))
        }
    })
}

/// `resourceFieldRef`: a container's limit or request, in units of the
/// divisor, rounded up (a limit not set reads as the node's allocatable).
pub fn resource_value(pod: &core::Pod, own: &core::Container, r: &core::ResourceFieldSelector, facts: &PodFacts) -> Result<String, String> {
    let container = match r.container_name.as_deref().filter(|n| !n.is_empty()) {
        None => own,
        Some(name) => pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == name))
            .ok_or_else(|| format!("resourceFieldRef names container {name:?}, which the pod does not have"))?,
    };
    let resources = container.resources.as_ref();
    let (which, resource) = r.resource.split_once('.').ok_or_else(|| {
        format!("resourceFieldRef.resource {:?} must be limits.cpu, limits.memory, requests.cpu or requests.memory", r.resource)
    })?;
    let set = match which {
        "limits" => resources.and_then(|x| x.limits.as_ref()),
        "requests" => resources.and_then(|x| x.requests.as_ref()),
        _ => None,
    };
    let given = set.and_then(|m| m.get(resource)).and_then(|q| Quantity::parse(&q.0).ok());
    let divisor = match &r.divisor {
        Some(d) => Quantity::parse(&d.0).map_err(|e| format!("resourceFieldRef.divisor {:?}: {e}", d.0))?,
        None => Quantity::parse("1").map_err(|e| e.to_string())?,
    };
    let ceil_div = |n: i64, d: i64| if d <= 0 { 0 } else { n.saturating_add(d - 1) / d };
    let value = match (which, resource) {
        ("limits" | "requests", "cpu") => ceil_div(given.map_or(facts.node_cpu_millis, |q| q.millis()), divisor.millis()),
        ("limits" | "requests", "memory") => ceil_div(given.map_or(facts.node_memory_bytes, |q| q.value()), divisor.value()),
        _ => {
            return Err(format!(
                "resourceFieldRef.resource {:?} must be limits.cpu, limits.memory, requests.cpu or requests.memory",
                r.resource
            ))
        }
    };
    Ok(value.to_string())
}

/// The variables that tell in-cluster clients where the API is, as the
/// kubelet sets them for the `kubernetes` Service.
fn api_variables(host: &str, port: u16) -> Vec<(String, String)> {
    let url = format!("tcp://{host}:{port}");
    vec![
        ("KUBERNETES_SERVICE_HOST".into(), host.into()),
        ("KUBERNETES_SERVICE_PORT".into(), port.to_string()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.to_string()),
        ("KUBERNETES_PORT".into(), url.clone()),
        (format!("KUBERNETES_PORT_{port}_TCP"), url),
        (format!("KUBERNETES_PORT_{port}_TCP_PROTO"), "tcp".into()),
        (format!("KUBERNETES_PORT_{port}_TCP_PORT"), port.to_string()),
        (format!("KUBERNETES_PORT_{port}_TCP_ADDR"), host.into()),
    ]
}

/// The environment of `container`, in the order it is defined, or what
/// stops it being built (a Secret, ConfigMap or key that is not there and
/// not optional), as the kubelet words it.
pub fn environment(
    pod: &core::Pod,
    container: &core::Container,
    inputs: &PodInputs,
    facts: &PodFacts,
) -> Result<Vec<(String, String)>, String> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut env = Env::default();
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.as_deref().unwrap_or("");
        if let Some(r) = &from.config_map_ref {
            match config_map(inputs, &r.name) {
                Some(cm) => {
                    for (k, v) in cm.data.into_iter().flatten() {
                        let name = format!("{prefix}{k}");
                        if is_env_name(&name) {
                            env.set(name, v);
                        }
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("configmap {:?} not found", r.name)),
            }
        }
        if let Some(r) = &from.secret_ref {
            match secret(inputs, &r.name) {
                Some(s) => {
                    for (k, v) in secret_values(&s) {
                        let name = format!("{prefix}{k}");
                        if is_env_name(&name) {
                            env.set(name, v);
                        }
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(format!("secret {:?} not found", r.name)),
            }
        }
    }
    for e in container.env.iter().flatten() {
        let value = match &e.value_from {
            None => Some(expand(e.value.as_deref().unwrap_or(""), &env.vars)),
            Some(from) => {
                if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match secret(inputs, &r.name) {
                        None if optional => None,
                        None => return Err(format!("secret {:?} not found", r.name)),
                        Some(s) => match secret_values(&s).remove(&r.key) {
                            Some(v) => Some(v),
                            None if optional => None,
                            None => return Err(format!("couldn't find key {} in Secret {ns}/{}", r.key, r.name)),
                        },
                    }
                } else if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match config_map(inputs, &r.name) {
                        None if optional => None,
                        None => return Err(format!("configmap {:?} not found", r.name)),
                        Some(cm) => match cm.data.and_then(|mut d| d.remove(&r.key)) {
                            Some(v) => Some(v),
                            None if optional => None,
                            None => return Err(format!("couldn't find key {} in ConfigMap {ns}/{}", r.key, r.name)),
                        },
                    }
                } else if let Some(f) = &from.field_ref {
                    Some(field_value(pod, &f.field_path, facts).map_err(|m| format!("env {}: {m}", e.name))?)
                } else if let Some(r) = &from.resource_field_ref {
                    Some(resource_value(pod, container, r, facts).map_err(|m| format!("env {}: {m}", e.name))?)
                } else {
                    return Err(format!("env {}: valueFrom names no source", e.name));
                }
            }
        };
        if let Some(value) = value {
            env.set(e.name.clone(), value);
        }
    }
    if let Some((host, port)) = &inputs.api {
        for (name, value) in api_variables(host, *port) {
            if !env.vars.contains_key(&name) {
                env.set(name, value);
            }
        }
    }
    Ok(env.into_list())
}

/// Variables in the order they were first defined, each with its last value.
#[derive(Default)]
struct Env {
    order: Vec<String>,
    vars: BTreeMap<String, String>,
}

impl Env {
    fn set(&mut self, name: String, value: String) {
        if self.vars.insert(name.clone(), value).is_none() {
            self.order.push(name);
        }
    }

    fn into_list(mut self) -> Vec<(String, String)> {
        self.order
            .into_iter()
            .map(|name| {
                let value = self.vars.remove(&name).unwrap_or_default();
                (name, value)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn facts() -> PodFacts<'static> {
        PodFacts { node_ip: "192.168.1.7", pod_ip: None, node_cpu_millis: 4000, node_memory_bytes: 8 << 30 }
    }

    fn inputs() -> PodInputs {
        PodInputs {
            // "aHVudGVyMg==" is "hunter2"; "YWRtaW4=" is "admin".
            secrets: BTreeMap::from([(
                "db".to_string(),
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
                       "data": {"password": "aHVudGVyMg==", "user": "YWRtaW4="}}),
            )]),
            config_maps: BTreeMap::from([(
                "settings".to_string(),
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
                       "data": {"LEVEL": "debug", "bad=name": "x"}}),
            )]),
            api: Some(("10.96.0.1".into(), 443)),
            ..PodInputs::default()
        }
    }

    fn pod(container: serde_json::Value) -> (core::Pod, core::Container) {
        let pod: core::Pod = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u-1", "labels": {"app": "web"}},
            "spec": {"nodeName": "n1", "containers": [container]}
        }))
        .unwrap();
        let c = pod.spec.as_ref().unwrap().containers[0].clone();
        (pod, c)
    }

    #[test]
    fn env_comes_from_secrets_config_maps_fields_and_resources_in_order() {
        let (pod, c) = pod(json!({"name": "main", "image": "i",
            "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "250m"}},
            "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}, {"secretRef": {"name": "db"}}],
            "env": [
                {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "LEVEL", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "LEVEL"}}},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                {"name": "HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                {"name": "MEM_MI", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}},
                {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
                {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "URL", "value": "postgres://$(user):$(PASSWORD)@db/$(NOPE)?cost=$$5"},
                {"name": "user", "value": "override"},
                {"name": "MISSING_OK", "valueFrom": {"secretKeyRef": {"name": "gone", "key": "k", "optional": true}}}]}));
        let env = environment(&pod, &c, &inputs(), &facts()).unwrap();
        let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("CFG_LEVEL", "debug"),
                ("password", "hunter2"),
                ("user", "override"),
                ("PASSWORD", "hunter2"),
                ("LEVEL", "debug"),
                ("POD", "web-1"),
                ("APP", "web"),
                ("HOST", "192.168.1.7"),
                ("MEM_MI", "256"),
                ("CPUS", "1"),
                ("CPU_LIMIT", "4"),
                ("URL", "postgres://admin:hunter2@db/$(NOPE)?cost=$5"),
                ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
                ("KUBERNETES_SERVICE_PORT", "443"),
                ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
                ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
                ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
                ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
                ("KUBERNETES_PORT_443_TCP_PORT", "443"),
                ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
            ]
        );
    }

    #[test]
    fn what_is_missing_is_named_as_the_kubelet_names_it() {
        let cases = [
            (json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "nope", "key": "k"}}}), "secret \"nope\" not found"),
            (json!({"name": "X", "valueFrom": {"secretKeyRef": {"name": "db", "key": "k"}}}), "couldn't find key k in Secret shop/db"),
            (json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}), "configmap \"nope\" not found"),
            (
                json!({"name": "X", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "k"}}}),
                "couldn't find key k in ConfigMap shop/settings",
            ),
        ];
        for (var, want) in cases {
            let (p, c) = pod(json!({"name": "main", "image": "i", "env": [var]}));
            assert_eq!(environment(&p, &c, &inputs(), &facts()), Err(want.to_string()));
        }
        let (p, c) =
            pod(json!({"name": "main", "image": "i", "env": [{"name": "X", "valueFrom": {"fieldRef": {"fieldPath": "spec.secret"}}}]}));
        assert!(environment(&p, &c, &inputs(), &facts()).unwrap_err().starts_with("env X: fieldRef \"spec.secret\""));
        let (p, c) = pod(json!({"name": "main", "image": "i", "envFrom": [{"secretRef": {"name": "nope"}}]}));
        assert_eq!(environment(&p, &c, &inputs(), &facts()), Err("secret \"nope\" not found".to_string()));
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = BTreeMap::from([("A".to_string(), "1".to_string())]);
        assert_eq!(expand("$(A)-$(B)-$$(A)-$-$(", &vars), "1-$(B)-$(A)-$-$(");
        assert_eq!(expand("ünïcode $(A)", &vars), "ünïcode 1");
    }
}
