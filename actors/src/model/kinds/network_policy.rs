//! NetworkPolicies: which pods may reach the pods a selector picks; node
//! agents enforce them.

use std::time::SystemTime;

use k8s_openapi::api::networking::v1 as net;
use serde_json::{json, Value};

use crate::model::admission::{valid_cidr, validate_port, Errors};
use crate::model::columns::{age, col, Column};
use crate::model::resources::Resource;
use crate::model::selector::Selector;
use crate::model::strategy::{typed, Strategy};

pub const NETWORK_POLICIES: Resource = Resource {
    group: "networking.k8s.io",
    version: "v1",
    kind: "NetworkPolicy",
    plural: "networkpolicies",
    singular: "networkpolicy",
    namespaced: true,
    short_names: &["netpol"],
    subresources: &[],
    strategy: &NetworkPolicy,
};

pub struct NetworkPolicy;

impl Strategy for NetworkPolicy {
    fn check_typed(&self, object: &Value) -> Result<(), String> {
        typed::<net::NetworkPolicy>(object).map(drop)
    }

    fn validate(&self, object: &Value, errors: &mut Errors) {
        let Some(spec) = object.get("spec") else {
            errors.add("spec", "is required");
            return;
        };
        match spec.get("podSelector") {
            None => errors.add("spec.podSelector", "is required ({} selects every pod in the namespace)"),
            Some(sel) => {
                if let Err(e) = Selector::from_label_selector(sel) {
                    errors.add("spec.podSelector", e.reason);
                }
            }
        }
        if let Some(types) = spec.get("policyTypes").and_then(Value::as_array) {
            for (i, t) in types.iter().enumerate() {
                if !matches!(t.as_str(), Some("Ingress") | Some("Egress")) {
                    errors.add(format!("spec.policyTypes[{i}]"), format!("{t} must be Ingress or Egress"));
                }
            }
        }
        for (i, rule) in spec.get("ingress").and_then(Value::as_array).into_iter().flatten().enumerate() {
            for (j, peer) in rule.get("from").and_then(Value::as_array).into_iter().flatten().enumerate() {
                for key in ["podSelector", "namespaceSelector"] {
                    if let Some(sel) = peer.get(key) {
                        if let Err(e) = Selector::from_label_selector(sel) {
                            errors.add(format!("spec.ingress[{i}].from[{j}].{key}"), e.reason);
                        }
                    }
                }
                if let Some(block) = peer.get("ipBlock") {
                    let cidr = block.get("cidr").and_then(Value::as_str).unwrap_or("");
                    if !valid_cidr(cidr) {
                        errors.add(
                            format!("spec.ingress[{i}].from[{j}].ipBlock.cidr"),
                            format!("{cidr:?} must be a CIDR such as 10.0.0.0/8"),
                        );
                    }
                }
            }
            for (j, port) in rule.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
                if let Some(Value::Number(_)) = port.get("port") {
                    validate_port(port.get("port"), &format!("spec.ingress[{i}].ports[{j}].port"), errors, false);
                }
            }
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![col("Name", "string", 0), col("Pod-Selector", "string", 0), col("Age", "string", 0)]
    }

    fn cells(&self, object: &Value, now: SystemTime) -> Vec<Value> {
        let policy: net::NetworkPolicy = typed(object).unwrap_or_default();
        let selector = policy.spec.and_then(|s| s.pod_selector).unwrap_or_default();
        vec![json!(policy.metadata.name.unwrap_or_default()), json!(super::workload::selector_text(&selector)), json!(age(object, now))]
    }
}
