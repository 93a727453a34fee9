//! The Endpoints controller's decision as a plain function: for a Service
//! with a selector, the addresses of the pods it selects (ready ones in
//! `addresses`, the rest in `notReadyAddresses`) and its ports resolved
//! against each pod's container ports.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::cache::PodView;
pub use crate::model::kinds::service::selector;
use crate::model::object;

/// A Service port resolved for a pod: (name, port, protocol).
type ResolvedPort = (String, i64, String);

/// Where a Service port sends traffic on a pod.
enum Target {
    Number(i64),
    /// A container port's name, looked up on each pod.
    Named(String),
}

/// One Service port, read once per Service rather than once per pod.
struct ServicePort {
    name: String,
    protocol: String,
    target: Option<Target>,
}

fn service_ports(service: &Value) -> Vec<ServicePort> {
    let mut out = Vec::new();
    for p in service.pointer("/spec/ports").and_then(Value::as_array).into_iter().flatten() {
        let target = match p.get("targetPort") {
            Some(Value::Number(n)) => n.as_i64().map(Target::Number),
            Some(Value::String(s)) => Some(s.parse::<i64>().map_or_else(|_| Target::Named(s.clone()), Target::Number)),
            _ => p.get("port").and_then(Value::as_i64).map(Target::Number),
        };
        out.push(ServicePort {
            name: p.get("name").and_then(Value::as_str).unwrap_or_default().to_string(),
            protocol: p.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_string(),
            target,
        });
    }
    out
}

/// Resolves the Service's ports for one pod: (name, port, protocol); None
/// when a named targetPort is not among the pod's container ports.
fn resolve_ports(ports: &[ServicePort], pod: &PodView) -> Option<Vec<ResolvedPort>> {
    let mut out = Vec::with_capacity(ports.len());
    for p in ports {
        let port = match p.target.as_ref()? {
            Target::Number(n) => *n,
            Target::Named(s) => pod.ports.iter().find(|(n, _, proto)| n.as_deref() == Some(s.as_str()) && *proto == p.protocol)?.1,
        };
        out.push((p.name.clone(), port, p.protocol.clone()));
    }
    Some(out)
}

/// The Endpoints object a Service should have, or None without a selector.
pub fn endpoints_for<'a>(service: &Value, pods: impl IntoIterator<Item = &'a PodView>) -> Option<Value> {
    let sel = selector(service)?;
    let namespace = object::namespace(service).unwrap_or("default");
    // Pods that resolve the ports the same way share a subset.
    let mut subsets: BTreeMap<Vec<ResolvedPort>, (Vec<Value>, Vec<Value>)> = BTreeMap::new();
    let mut selected: Vec<&PodView> = pods
        .into_iter()
        .filter(|p| p.namespace == namespace && !p.terminating && p.pod_ip.is_some())
        .filter(|p| sel.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
        .collect();
    selected.sort_by(|a, b| a.name.cmp(&b.name));
    let service_ports = service_ports(service);
    for pod in selected {
        let Some(ports) = resolve_ports(&service_ports, pod) else { continue };
        let address = json!({
            "ip": pod.pod_ip, "nodeName": pod.node,
            "targetRef": {"kind": "Pod", "name": pod.name, "namespace": pod.namespace, "uid": pod.uid},
        });
        let entry = subsets.entry(ports).or_default();
        if pod.ready {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    let subsets: Vec<Value> = subsets
        .into_iter()
        .map(|(ports, (ready, not_ready))| {
            let ports: Vec<Value> = ports
                .into_iter()
                .map(|(name, port, protocol)| {
                    let mut p = json!({"port": port, "protocol": protocol});
                    if !name.is_empty() {
                        p["name"] = json!(name);
                    }
                    p
                })
                .collect();
            let mut s = json!({"ports": ports});
            if !ready.is_empty() {
                s["addresses"] = json!(ready);
            }
            if !not_ready.is_empty() {
                s["notReadyAddresses"] = json!(not_ready);
            }
            s
        })
        .collect();
    let name = object::name(service).unwrap_or_default();
    Some(json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": name, "namespace": namespace, "labels": service.pointer("/metadata/labels").cloned().unwrap_or(json!({}))},
        "subsets": subsets,
    }))
}

/// Whether two Endpoints objects say the same thing (ignoring metadata the
/// server fills in).
pub fn same_endpoints(current: &Value, desired: &Value) -> bool {
    // No subsets and an empty list say the same.
    fn subsets(v: &Value) -> &[Value] {
        v.get("subsets").and_then(Value::as_array).map_or(&[], Vec::as_slice)
    }
    subsets(current) == subsets(desired) && current.pointer("/metadata/labels") == desired.pointer("/metadata/labels")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: Option<&str>, ready: bool, labels: Value) -> PodView {
        let mut p = json!({"metadata": {"name": name, "namespace": "ns", "uid": format!("u-{name}"), "labels": labels},
                           "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"name": "http", "containerPort": 8080}]}]},
                           "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
        if let Some(ip) = ip {
            p["status"]["podIP"] = json!(ip);
        }
        PodView::from_object(&p)
    }

    fn service(target: Value) -> Value {
        json!({"metadata": {"name": "web", "namespace": "ns"},
               "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": target}]}})
    }

    #[test]
    fn ready_and_unready_pods_with_named_ports() {
        let a = pod("a", Some("10.0.0.1"), true, json!({"app": "web"}));
        let b = pod("b", Some("10.0.0.2"), false, json!({"app": "web"}));
        let other = pod("c", Some("10.0.0.3"), true, json!({"app": "db"}));
        let no_ip = pod("d", None, true, json!({"app": "web"}));
        let ep = endpoints_for(&service(json!("http")), [&a, &b, &other, &no_ip]).expect("has a selector");
        assert_eq!(
            ep["subsets"],
            json!([{
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "addresses": [{"ip": "10.0.0.1", "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "a", "namespace": "ns", "uid": "u-a"}}],
                "notReadyAddresses": [{"ip": "10.0.0.2", "nodeName": "n1", "targetRef": {"kind": "Pod", "name": "b", "namespace": "ns", "uid": "u-b"}}],
            }])
        );
        assert_eq!(ep["metadata"]["name"], "web");
    }

    #[test]
    fn numeric_and_default_target_ports_and_no_selector() {
        let a = pod("a", Some("10.0.0.1"), true, json!({"app": "web"}));
        let ep = endpoints_for(&service(json!(9090)), [&a]).unwrap();
        assert_eq!(ep["subsets"][0]["ports"], json!([{"name": "http", "port": 9090, "protocol": "TCP"}]));
        let mut svc = service(json!(null));
        svc["spec"]["ports"][0].as_object_mut().unwrap().remove("targetPort");
        assert_eq!(endpoints_for(&svc, [&a]).unwrap()["subsets"][0]["ports"][0]["port"], 80);
        let mut bare = service(json!(80));
        bare["spec"].as_object_mut().unwrap().remove("selector");
        assert_eq!(endpoints_for(&bare, [&a]), None);
        // A named port the pod does not have leaves it out.
        assert_eq!(endpoints_for(&service(json!("grpc")), [&a]).unwrap()["subsets"], json!([]));
    }

    #[test]
    fn sameness_ignores_server_metadata() {
        let a = pod("a", Some("10.0.0.1"), true, json!({"app": "web"}));
        let desired = endpoints_for(&service(json!(80)), [&a]).unwrap();
        let mut stored = desired.clone();
        stored["metadata"]["resourceVersion"] = json!("7");
        assert!(same_endpoints(&stored, &desired));
        let empty = endpoints_for(&service(json!(80)), []).unwrap();
        assert!(!same_endpoints(&stored, &empty));
        let mut no_subsets = empty.clone();
        no_subsets.as_object_mut().unwrap().remove("subsets");
        assert!(same_endpoints(&no_subsets, &empty));
    }
}
