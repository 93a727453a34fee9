//! The ReplicaSet controller's decision as a plain function: how many pods
//! to create, which to delete, and the status to report, from the set and
//! the pods it owns.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::cache::PodView;
use crate::model::object;

/// What one reconcile of a ReplicaSet should do.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaDecision {
    /// Pods to create from the template.
    pub create: usize,
    /// Names of pods to delete.
    pub delete: Vec<String>,
    /// The set's status as it should be.
    pub status: Value,
}

/// Desired replicas of a ReplicaSet (Kubernetes' default is 1).
pub fn desired_replicas(rs: &Value) -> usize {
    rs.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0) as usize
}

/// Compares desired and observed. `node_load` counts the pods on each node,
/// so that on scale-down pods on crowded nodes go first.
pub fn decide(rs: &Value, pods: &[&PodView], node_load: &HashMap<String, usize>) -> ReplicaDecision {
    let desired = desired_replicas(rs);
    let mut active: Vec<&PodView> = pods.iter().copied().filter(|p| p.is_active()).collect();
    let ready = active.iter().filter(|p| p.ready).count();
    let status = json!({
        "replicas": active.len(),
        "fullyLabeledReplicas": active.len(),
        "readyReplicas": ready,
        "availableReplicas": ready,
        "observedGeneration": object::metadata(rs).and_then(|m| m.get("generation")).and_then(Value::as_i64).unwrap_or(1),
    });
    if active.len() < desired {
        return ReplicaDecision { create: desired - active.len(), delete: vec![], status };
    }
    // Kubernetes' order of deletion: unscheduled, then pending, then not
    // ready, then on the most crowded node, then the youngest.
    active.sort_by(|a, b| {
        let rank = |p: &PodView| {
            (
                p.node.is_some(),
                p.phase != "Pending",
                p.ready,
                std::cmp::Reverse(p.node.as_ref().and_then(|n| node_load.get(n)).copied().unwrap_or(0)),
            )
        };
        rank(a).cmp(&rank(b)).then_with(|| b.created.cmp(&a.created)).then_with(|| a.name.cmp(&b.name))
    });
    let delete = active.iter().take(active.len() - desired).map(|p| p.name.clone()).collect();
    ReplicaDecision { create: 0, delete, status }
}

/// A new pod for `rs`, from its template.
pub fn pod_from_template(rs: &Value) -> Value {
    let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let name = object::name(rs).unwrap_or_default();
    let mut meta = template.get("metadata").cloned().unwrap_or(json!({}));
    meta["generateName"] = json!(format!("{name}-"));
    meta["namespace"] = json!(object::namespace(rs).unwrap_or("default"));
    meta["ownerReferences"] = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": name, "uid": object::uid(rs),
        "controller": true, "blockOwnerDeletion": true,
    }]);
    if let Some(m) = meta.as_object_mut() {
        m.remove("name");
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template.get("spec").cloned().unwrap_or(json!({}))})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(replicas: i64) -> Value {
        json!({"metadata": {"name": "web-abc", "namespace": "ns", "uid": "rs-uid", "generation": 3},
               "spec": {"replicas": replicas, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    }

    fn pod(name: &str, node: Option<&str>, phase: &str, ready: bool, created: &str) -> PodView {
        let mut p = json!({"metadata": {"name": name, "namespace": "ns", "uid": name, "creationTimestamp": created,
                                         "ownerReferences": [{"uid": "rs-uid", "controller": true}]},
                           "spec": {"containers": [{"name": "c", "image": "i"}]},
                           "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready {"True"} else {"False"}}]}});
        if let Some(n) = node {
            p["spec"]["nodeName"] = json!(n);
        }
        PodView::from_object(&p)
    }

    #[test]
    fn creates_what_is_missing_and_reports_status() {
        let a = pod("a", Some("n1"), "Running", true, "2026-01-01T00:00:00Z");
        let mut b = pod("b", Some("n1"), "Running", true, "2026-01-01T00:00:00Z");
        b.terminating = true;
        let d = decide(&rs(3), &[&a, &b], &HashMap::new());
        assert_eq!(d.create, 2, "a terminating pod is not a replica");
        assert!(d.delete.is_empty());
        assert_eq!(
            d.status,
            json!({"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1, "availableReplicas": 1, "observedGeneration": 3})
        );
    }

    #[test]
    fn deletes_unscheduled_then_pending_then_unready_then_crowded_then_youngest() {
        let unscheduled = pod("unscheduled", None, "Pending", false, "2026-01-01T00:00:00Z");
        let pending = pod("pending", Some("n1"), "Pending", false, "2026-01-01T00:00:00Z");
        let unready = pod("unready", Some("n1"), "Running", false, "2026-01-01T00:00:00Z");
        let crowded = pod("crowded", Some("busy"), "Running", true, "2026-01-01T00:00:00Z");
        let young = pod("young", Some("n1"), "Running", true, "2026-06-01T00:00:00Z");
        let old = pod("old", Some("n1"), "Running", true, "2026-01-01T00:00:00Z");
        let load = HashMap::from([("busy".to_string(), 9), ("n1".to_string(), 5)]);
        let all = [&old, &young, &crowded, &unready, &pending, &unscheduled];
        let d = decide(&rs(1), &all, &load);
        assert_eq!(d.create, 0);
        assert_eq!(d.delete, vec!["unscheduled", "pending", "unready", "crowded", "young"]);
        assert_eq!(decide(&rs(6), &all, &load).delete, Vec::<String>::new());
        let none = decide(&rs(0), &[], &load);
        assert_eq!((none.create, none.delete.len(), &none.status["replicas"]), (0, 0, &json!(0)));
    }

    #[test]
    fn failed_and_succeeded_pods_do_not_count() {
        let failed = pod("f", Some("n1"), "Failed", false, "2026-01-01T00:00:00Z");
        let done = pod("s", Some("n1"), "Succeeded", false, "2026-01-01T00:00:00Z");
        assert_eq!(decide(&rs(2), &[&failed, &done], &HashMap::new()).create, 2);
    }

    #[test]
    fn a_pod_from_the_template_is_owned_by_the_set() {
        let p = pod_from_template(&rs(1));
        assert_eq!(p["metadata"]["generateName"], "web-abc-");
        assert_eq!(p["metadata"]["namespace"], "ns");
        assert_eq!(p["metadata"]["labels"], json!({"app": "web"}));
        assert_eq!(
            p["metadata"]["ownerReferences"],
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-abc", "uid": "rs-uid", "controller": true, "blockOwnerDeletion": true}])
        );
        assert_eq!(p["spec"]["containers"][0]["image"], "i");
    }
}
