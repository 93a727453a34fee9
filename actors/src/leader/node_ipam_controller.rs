//! The node IPAM controller: gives every node that has none a pod subnet
//! (`spec.podCIDR`) from the cluster CIDR, one no other node holds, as
//! Kubernetes' node-ipam controller does. Only the leader runs it, so
//! two nodes are never handed the same subnet; a new leader starts from
//! what the nodes already hold.

use serde_json::{json, Value};

use super::cache::Kind;
use super::controller::{ControllerError, LeaderContext, PassOutcome, Reconciler};
use crate::model::object;
use crate::model::resources::lookup;
use crate::network::ipam::free_pod_cidr;
use crate::registry::RegistryError;

/// Nodes given a subnet per pass; the rest wait for the next.
const NODES_PER_PASS_MAX: usize = 200;

pub struct NodeIpamController {
    /// Logged once per leadership, not once per pass.
    warned_full: bool,
}

pub fn make() -> Box<dyn Reconciler> {
    Box::new(NodeIpamController { warned_full: false })
}

#[async_trait::async_trait]
impl Reconciler for NodeIpamController {
    fn name(&self) -> &'static str {
        "node-ipam-controller"
    }

    async fn reconcile(&mut self, ctx: &LeaderContext, _resync: bool) -> Result<PassOutcome, ControllerError> {
        let mut outcome = PassOutcome::default();
        let plan = *ctx.registry.network_plan();
        let (mut held, mut waiting): (Vec<String>, Vec<String>) = (Vec::new(), Vec::new());
        {
            let s = ctx.cache.read();
            for (name, node) in &s.nodes {
                match node.pointer("/spec/podCIDR").and_then(Value::as_str) {
                    Some(c) if !c.is_empty() => held.push(c.to_string()),
                    _ => waiting.push(name.clone()),
                }
            }
        }
        outcome.more = waiting.len() > NODES_PER_PASS_MAX;
        let nodes = lookup("nodes").expect("nodes are served");
        for name in waiting.into_iter().take(NODES_PER_PASS_MAX) {
            let Some(cidr) = free_pod_cidr(&plan, held.iter().map(String::as_str)) else {
                if !self.warned_full {
                    tracing::warn!(node = %name, cluster_cidr = %plan.cluster_cidr, "no pod subnet left for the node; widen --cluster-cidr");
                    self.warned_full = true;
                }
                break;
            };
            let cidr = cidr.to_string();
            held.push(cidr.clone());
            let change = |old: &Value| {
                let mut new = old.clone();
                // Another leader may have been quicker; never move a subnet.
                if old.pointer("/spec/podCIDR").and_then(Value::as_str).is_none_or(str::is_empty) {
                    new["spec"]["podCIDR"] = json!(cidr);
                    new["spec"]["podCIDRs"] = json!([cidr]);
                }
                Ok(new)
            };
            match ctx.registry.read_modify_write(nodes, None, &name, None, change, None).await {
                Ok(node) => {
                    tracing::info!(node = %name, pod_cidr = %cidr, "node given a pod subnet");
                    if let Some(rv) = object::resource_version(&node) {
                        outcome.note_write(Kind::Nodes, rv);
                    }
                }
                Err(RegistryError::NotFound { .. } | RegistryError::Conflict { .. }) => {}
                Err(source) => return Err(ControllerError::Registry { controller: "node-ipam-controller", source }),
            }
        }
        Ok(outcome)
    }
}
