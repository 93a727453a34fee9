//! Nodes: the machines agents register. A node holds a pod subnet
//! (`spec.podCIDR`) that is freed in the transaction that deletes it.

use std::time::SystemTime;

use k8s_openapi::api::core::v1 as core;
use serde_json::{json, Value};

use crate::model::admission::{validate_quantities, Errors};
use crate::model::columns::{age, col, or_none, Column};
use crate::model::resources::{core, Resource};
use crate::model::strategy::{typed, Allocation, Strategy};

pub const NODES: Resource = core("Node", "nodes", "node", false, &["no"], &["status"], &Node);

/// Whether the node's stored Ready condition is True.
pub fn node_ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Where the digest of the credential of the agent that holds node `name`
/// is kept. Deleting the Node deletes it, which is how a node is removed
/// and its agent's credential revoked.
pub fn credential_key(name: &str) -> Vec<u8> {
    format!("/registry/flotilla.io/node-credentials/{name}").into_bytes()
}

pub struct Node;

impl Strategy for Node {
    fn check_typed(&self, object: &Value) -> Result<(), String> {
        typed::<core::Node>(object).map(drop)
    }

    fn validate(&self, object: &Value, errors: &mut Errors) {
        for field in ["capacity", "allocatable"] {
            validate_quantities(object.pointer(&format!("/status/{field}")), &format!("status.{field}"), errors);
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            col("Name", "string", 0),
            col("Status", "string", 0),
            col("Roles", "string", 0),
            col("Age", "string", 0),
            col("Version", "string", 0),
            col("Internal-IP", "string", 1),
            col("Container-Runtime", "string", 1),
        ]
    }

    fn cells(&self, object: &Value, now: SystemTime) -> Vec<Value> {
        let node: core::Node = typed(object).unwrap_or_default();
        let status = node.status.unwrap_or_default();
        let ready = match status.conditions.iter().flatten().find(|c| c.type_ == "Ready") {
            Some(c) if c.status == "True" => "Ready",
            Some(_) => "NotReady",
            None => "Unknown",
        };
        let unschedulable = node.spec.and_then(|s| s.unschedulable) == Some(true);
        let shown = if unschedulable { format!("{ready},SchedulingDisabled") } else { ready.to_string() };
        let ip = status.addresses.iter().flatten().find(|a| a.type_ == "InternalIP").map(|a| a.address.clone()).unwrap_or_default();
        let info = status.node_info.unwrap_or_default();
        vec![
            json!(node.metadata.name.unwrap_or_default()),
            json!(shown),
            json!("<none>"),
            json!(age(object, now)),
            json!(or_none(info.kubelet_version)),
            json!(or_none(ip)),
            json!(or_none(info.container_runtime_version)),
        ]
    }

    fn allocation(&self) -> Allocation {
        Allocation::PodSubnet
    }

    fn keys_deleted_with(&self, object: &Value) -> Vec<Vec<u8>> {
        object.pointer("/metadata/name").and_then(Value::as_str).map(credential_key).into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_show_readiness_and_cordon() {
        let node = json!({"metadata": {"name": "n1"}, "spec": {"unschedulable": true}, "status": {
            "conditions": [{"type": "Ready", "status": "False"}],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
            "nodeInfo": {"kubeletVersion": "v1.33.0-flotilla", "containerRuntimeVersion": "docker://27"}}});
        let cells = Node.cells(&node, SystemTime::now());
        assert_eq!(cells[1], json!("NotReady,SchedulingDisabled"));
        assert_eq!(cells[4..], [json!("v1.33.0-flotilla"), json!("10.0.0.1"), json!("docker://27")]);
        assert_eq!(Node.cells(&json!({"metadata": {"name": "n2"}}), SystemTime::now())[1], json!("Unknown"));
    }
}
