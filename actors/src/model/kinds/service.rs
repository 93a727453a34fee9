//! Services: a stable address (a ClusterIP, optionally node ports) in front
//! of the pods a selector picks. The registry allocates the addresses in the
//! same transaction as the write ([`Allocation::ServiceAddresses`]).

use std::collections::BTreeSet;
use std::time::SystemTime;

use k8s_openapi::api::core::v1 as core;
use serde_json::{json, Value};

use crate::model::admission::{is_dns1123_label, label_key_ok, label_value_ok, set_default, validate_port, Errors};
use crate::model::columns::{age, col, or_none, Column};
use crate::model::resources::{core, Resource};
use crate::model::strategy::{typed, Allocation, NameRule, Strategy};

pub const SERVICES: Resource = core("Service", "services", "service", true, &["svc"], &["status"], &Service);

/// The Service's selector, or None when it has none (such a Service's
/// Endpoints are managed by hand, as in Kubernetes).
pub fn selector(service: &Value) -> Option<std::collections::BTreeMap<String, String>> {
    let sel = service.pointer("/spec/selector")?.as_object()?;
    if sel.is_empty() {
        return None;
    }
    Some(sel.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
}

pub struct Service;

impl Strategy for Service {
    fn check_typed(&self, object: &Value) -> Result<(), String> {
        typed::<core::Service>(object).map(drop)
    }

    /// A Service's name is its DNS label under the namespace.
    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn defaults(&self, object: &mut Value) {
        let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else { return };
        set_default(spec, "type", json!("ClusterIP"));
        set_default(spec, "sessionAffinity", json!("None"));
        if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
            for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                set_default(p, "protocol", json!("TCP"));
                if let Some(port) = p.get("port").cloned() {
                    set_default(p, "targetPort", port);
                }
            }
        }
    }

    fn validate(&self, object: &Value, errors: &mut Errors) {
        let spec = object.get("spec").cloned().unwrap_or(json!({}));
        let svc_type = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP");
        if !matches!(svc_type, "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") {
            errors.add("spec.type", format!("{svc_type:?} must be ClusterIP, NodePort, LoadBalancer or ExternalName"));
        }
        let ports = spec.get("ports").and_then(Value::as_array).cloned().unwrap_or_default();
        if ports.is_empty() && svc_type != "ExternalName" {
            errors.add("spec.ports", "at least one port is required");
        }
        let mut seen_ports = BTreeSet::new();
        let mut seen_names = BTreeSet::new();
        for (i, p) in ports.iter().enumerate() {
            validate_port(p.get("port"), &format!("spec.ports[{i}].port"), errors, true);
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_string();
            if let Some(port) = p.get("port").and_then(Value::as_i64) {
                if !seen_ports.insert((port, proto.clone())) {
                    errors.add(format!("spec.ports[{i}]"), format!("duplicate port {port}/{proto}"));
                }
            }
            if let Some(n) = p.get("name").and_then(Value::as_str) {
                if !seen_names.insert(n.to_string()) {
                    errors.add(format!("spec.ports[{i}].name"), format!("duplicate port name {n:?}"));
                }
            } else if ports.len() > 1 {
                errors.add(format!("spec.ports[{i}].name"), "is required when a service has more than one port");
            }
            match p.get("targetPort") {
                Some(Value::Number(_)) => validate_port(p.get("targetPort"), &format!("spec.ports[{i}].targetPort"), errors, false),
                Some(Value::String(s)) if is_dns1123_label(s) => {}
                Some(other) => errors.add(format!("spec.ports[{i}].targetPort"), format!("{other} must be a port number or a port name")),
                None => {}
            }
            if let Some(np) = p.get("nodePort") {
                if !np.as_i64().is_some_and(|n| (30000..=32767).contains(&n)) {
                    errors.add(format!("spec.ports[{i}].nodePort"), format!("{np} must be in the node port range 30000-32767"));
                } else if matches!(svc_type, "ClusterIP" | "ExternalName") {
                    errors.add(format!("spec.ports[{i}].nodePort"), "may only be set on NodePort or LoadBalancer services");
                }
            }
        }
        if svc_type == "ExternalName" && spec.get("clusterIP").and_then(Value::as_str).is_some_and(|ip| !ip.is_empty()) {
            errors.add("spec.clusterIP", "may not be set for ExternalName services");
        }
        if let Some(sel) = spec.get("selector") {
            if !sel.as_object().is_some_and(|m| m.iter().all(|(k, v)| label_key_ok(k) && v.as_str().is_some_and(label_value_ok))) {
                errors.add("spec.selector", "must be a map of label keys to label values");
            }
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            col("Name", "string", 0),
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            col("Age", "string", 0),
            col("Selector", "string", 1),
        ]
    }

    fn cells(&self, object: &Value, now: SystemTime) -> Vec<Value> {
        let svc: core::Service = typed(object).unwrap_or_default();
        let spec = svc.spec.unwrap_or_default();
        let ports: Vec<String> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let node_port = p.node_port.map(|n| format!(":{n}")).unwrap_or_default();
                format!("{}{node_port}/{}", p.port, p.protocol.as_deref().unwrap_or("TCP"))
            })
            .collect();
        let selector: Vec<String> = spec.selector.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
        vec![
            json!(svc.metadata.name.unwrap_or_default()),
            json!(spec.type_.unwrap_or_default()),
            json!(or_none(spec.cluster_ip.unwrap_or_default())),
            json!("<none>"),
            json!(or_none(ports.join(","))),
            json!(age(object, now)),
            json!(or_none(selector.join(","))),
        ]
    }

    fn allocation(&self) -> Allocation {
        Allocation::ServiceAddresses
    }

    fn categories(&self) -> &'static [&'static str] {
        &["all"]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_show_addresses_and_ports() {
        let svc = json!({"metadata": {"name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.10",
            "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}], "selector": {"app": "web"}}});
        let cells = Service.cells(&svc, SystemTime::now());
        assert_eq!(cells[..5], [json!("web"), json!("NodePort"), json!("10.96.0.10"), json!("<none>"), json!("80:30080/TCP,53/UDP")]);
        assert_eq!(cells[6], json!("app=web"));
    }
}
