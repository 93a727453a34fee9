//! Server-side printing: the columns `kubectl get` shows for each kind, as
//! a `meta.k8s.io/v1` Table. The API serves it to clients that ask for
//! `as=Table` (kubectl, and flotilla's own `get`).

use std::time::SystemTime;

use serde_json::{json, Value};

use super::object::{human_age, meta_str, parse_timestamp};
use super::resources::Resource;

/// One column: its name, JSON type, and priority (1 = only with `-o wide`).
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub priority: u8,
}

const fn col(name: &'static str, kind: &'static str, priority: u8) -> Column {
    Column { name, kind, priority }
}

pub fn columns(res: &Resource) -> Vec<Column> {
    match res.kind {
        "Pod" => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            col("Age", "string", 0),
            col("IP", "string", 1),
            col("Node", "string", 1),
        ],
        "Node" => vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Roles", "string", 0),
            col("Age", "string", 0),
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("Container-Runtime", "string", 1),
        ],
        "Namespace" => vec![col("Name", "string", 0), col("Status", "string", 0), col("Age", "string", 0)],
        "Service" => vec![
            col("Name", "string", 0),
            col("Type", "string", 0),
            col("Cluster-IP", "string", 0),
            col("External-IP", "string", 0),
            col("Port(s)", "string", 0),
            col("Age", "string", 0),
            col("Selector", "string", 1),
        ],
        "Endpoints" => vec![col("Name", "string", 0), col("Endpoints", "string", 0), col("Age", "string", 0)],
        "ConfigMap" => vec![col("Name", "string", 0), col("Data", "integer", 0), col("Age", "string", 0)],
        "Event" => vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Message", "string", 0),
        ],
        "Deployment" => vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "ReplicaSet" => vec![
            col("Name", "string", 0),
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Age", "string", 0),
            col("Containers", "string", 1),
            col("Images", "string", 1),
            col("Selector", "string", 1),
        ],
        "NetworkPolicy" => vec![col("Name", "string", 0), col("Pod-Selector", "string", 0), col("Age", "string", 0)],
        _ => vec![col("Name", "string", 0), col("Age", "string", 0)],
    }
}

fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn int(v: Option<&Value>) -> i64 {
    v.and_then(Value::as_i64).unwrap_or(0)
}

fn age(object: &Value, now: SystemTime) -> String {
    meta_str(object, "creationTimestamp").and_then(parse_timestamp).map_or_else(|| "<unknown>".into(), |t| human_age(t, now))
}

fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

/// The STATUS column of `kubectl get pods`.
pub fn pod_status(pod: &Value) -> String {
    if meta_str(pod, "deletionTimestamp").is_some() {
        return "Terminating".into();
    }
    let mut reason = s(pod.pointer("/status/reason"));
    if reason.is_empty() {
        reason = s(pod.pointer("/status/phase"));
    }
    for cs in pod.pointer("/status/containerStatuses").and_then(Value::as_array).into_iter().flatten() {
        if let Some(w) = cs.pointer("/state/waiting/reason").and_then(Value::as_str) {
            if !w.is_empty() {
                return w.into();
            }
        }
        if let Some(t) = cs.pointer("/state/terminated") {
            let r = s(t.get("reason"));
            if !r.is_empty() {
                reason = r;
            } else if int(t.get("exitCode")) != 0 {
                reason = format!("ExitCode:{}", int(t.get("exitCode")));
            }
        }
    }
    if reason.is_empty() {
        "Pending".into()
    } else {
        reason
    }
}

fn containers_and_images(template_spec: Option<&Value>) -> (String, String) {
    let cs = template_spec.and_then(|t| t.get("containers")).and_then(Value::as_array).cloned().unwrap_or_default();
    let names: Vec<String> = cs.iter().map(|c| s(c.get("name"))).collect();
    let images: Vec<String> = cs.iter().map(|c| s(c.get("image"))).collect();
    (names.join(","), images.join(","))
}

fn selector_text(sel: Option<&Value>) -> String {
    let mut parts = Vec::new();
    if let Some(m) = sel.and_then(|s| s.get("matchLabels").or(Some(s))).and_then(Value::as_object) {
        for (k, v) in m {
            if let Some(v) = v.as_str() {
                parts.push(format!("{k}={v}"));
            }
        }
    }
    or_none(parts.join(","))
}

/// The cells of one row, in `columns(res)` order.
pub fn cells(res: &Resource, object: &Value, now: SystemTime) -> Vec<Value> {
    let name = s(object.pointer("/metadata/name"));
    match res.kind {
        "Pod" => {
            let statuses = object.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
            let total = object.pointer("/spec/containers").and_then(Value::as_array).map_or(0, Vec::len);
            let ready = statuses.iter().filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true)).count();
            let restarts: i64 = statuses.iter().map(|c| int(c.get("restartCount"))).sum();
            vec![
                json!(name),
                json!(format!("{ready}/{total}")),
                json!(pod_status(object)),
                json!(restarts.to_string()),
                json!(age(object, now)),
                json!(or_none(s(object.pointer("/status/podIP")))),
                json!(or_none(s(object.pointer("/spec/nodeName")))),
            ]
        }
        "Node" => {
            let ready = object
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready")))
                .map(|c| if c.get("status").and_then(Value::as_str) == Some("True") { "Ready" } else { "NotReady" })
                .unwrap_or("Unknown");
            let status = if object.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            let ip = object
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .and_then(|a| a.iter().find(|x| x.get("type").and_then(Value::as_str) == Some("InternalIP")))
                .map(|x| s(x.get("address")))
                .unwrap_or_default();
            vec![
                json!(name),
                json!(status),
                json!("<none>"),
                json!(age(object, now)),
                json!(or_none(s(object.pointer("/status/nodeInfo/kubeletVersion")))),
                json!(or_none(ip)),
                json!(or_none(s(object.pointer("/status/nodeInfo/containerRuntimeVersion")))),
            ]
        }
        "Namespace" => vec![json!(name), json!(s(object.pointer("/status/phase"))), json!(age(object, now))],
        "Service" => {
            let ports: Vec<String> = object
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .map(|p| {
                    let node_port = p.get("nodePort").and_then(Value::as_i64).map(|n| format!(":{n}")).unwrap_or_default();
                    format!("{}{}/{}", int(p.get("port")), node_port, p.get("protocol").and_then(Value::as_str).unwrap_or("TCP"))
                })
                .collect();
            vec![
                json!(name),
                json!(s(object.pointer("/spec/type"))),
                json!(or_none(s(object.pointer("/spec/clusterIP")))),
                json!("<none>"),
                json!(or_none(ports.join(","))),
                json!(age(object, now)),
                json!(selector_text(object.pointer("/spec/selector"))),
            ]
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for subset in object.get("subsets").and_then(Value::as_array).into_iter().flatten() {
                let ports: Vec<i64> =
                    subset.get("ports").and_then(Value::as_array).into_iter().flatten().map(|p| int(p.get("port"))).collect();
                for a in subset.get("addresses").and_then(Value::as_array).into_iter().flatten() {
                    for p in &ports {
                        eps.push(format!("{}:{p}", s(a.get("ip"))));
                    }
                }
            }
            let shown = if eps.len() > 3 { format!("{} + {} more...", eps[..3].join(","), eps.len() - 3) } else { eps.join(",") };
            vec![json!(name), json!(or_none(shown)), json!(age(object, now))]
        }
        "ConfigMap" => {
            let n = object.get("data").and_then(Value::as_object).map_or(0, |m| m.len())
                + object.get("binaryData").and_then(Value::as_object).map_or(0, |m| m.len());
            vec![json!(name), json!(n), json!(age(object, now))]
        }
        "Event" => {
            let last = s(object.get("lastTimestamp")).to_string();
            let seen = parse_timestamp(&last).map(|t| human_age(t, now)).unwrap_or_else(|| age(object, now));
            let inv = object.get("involvedObject").cloned().unwrap_or(json!({}));
            let obj = format!("{}/{}", s(inv.get("kind")).to_ascii_lowercase(), s(inv.get("name")));
            vec![json!(seen), json!(s(object.get("type"))), json!(s(object.get("reason"))), json!(obj), json!(s(object.get("message")))]
        }
        "Deployment" => {
            let (c, i) = containers_and_images(object.pointer("/spec/template/spec"));
            let ready = format!("{}/{}", int(object.pointer("/status/readyReplicas")), int(object.pointer("/spec/replicas")));
            vec![
                json!(name),
                json!(ready),
                json!(int(object.pointer("/status/updatedReplicas"))),
                json!(int(object.pointer("/status/availableReplicas"))),
                json!(age(object, now)),
                json!(c),
                json!(i),
                json!(selector_text(object.pointer("/spec/selector"))),
            ]
        }
        "ReplicaSet" => {
            let (c, i) = containers_and_images(object.pointer("/spec/template/spec"));
            vec![
                json!(name),
                json!(int(object.pointer("/spec/replicas"))),
                json!(int(object.pointer("/status/replicas"))),
                json!(int(object.pointer("/status/readyReplicas"))),
                json!(age(object, now)),
                json!(c),
                json!(i),
                json!(selector_text(object.pointer("/spec/selector"))),
            ]
        }
        "NetworkPolicy" => {
            let sel = selector_text(object.pointer("/spec/podSelector"));
            vec![json!(name), json!(sel), json!(age(object, now))]
        }
        _ => vec![json!(name), json!(age(object, now))],
    }
}

/// A `meta.k8s.io/v1` Table of `objects`. `full_objects` embeds each
/// object (includeObject=Object); otherwise its metadata only.
pub fn table(res: &Resource, objects: &[Value], resource_version: u64, full_objects: bool, now: SystemTime) -> Value {
    let column_definitions: Vec<Value> = columns(res)
        .iter()
        .map(|c| json!({"name": c.name, "type": c.kind, "format": if c.name == "Name" { "name" } else { "" }, "description": c.name, "priority": c.priority}))
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = if full_objects {
                o.clone()
            } else {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
            };
            json!({"cells": cells(res, o, now), "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resources::lookup;

    #[test]
    fn pod_rows_read_like_kubectl() {
        let pod = json!({"metadata": {"name": "web-1", "creationTimestamp": "1970-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(300);
        let row = cells(lookup("pods").unwrap(), &pod, now);
        assert_eq!(
            row,
            vec![json!("web-1"), json!("1/2"), json!("CrashLoopBackOff"), json!("3"), json!("5m"), json!("10.0.0.5"), json!("n1")]
        );
    }

    #[test]
    fn table_shape() {
        let res = lookup("cm").unwrap();
        let t = table(res, &[json!({"metadata": {"name": "c"}, "data": {"a": "1"}})], 9, false, SystemTime::now());
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["metadata"]["resourceVersion"], "9");
        assert_eq!(t["rows"][0]["cells"][0], "c");
        assert_eq!(t["rows"][0]["cells"][1], 1);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
