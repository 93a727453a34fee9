//! The node IPAM controller: gives every node that has none a pod subnet
//! (`spec.podCIDR`) from the cluster CIDR, one no other node holds, as
//! Kubernetes' node-ipam controller does. The choice comes from the
//! cache; the store makes it stick only if no node holds the subnet (a
//! reservation key written with the node), so two nodes never share one,
//! even while leadership moves.

use serde_json::Value;

use super::cache::Kind;
use super::controller::{ControllerError, LeaderContext, PassOutcome, Reconciler};
use crate::model::object;
use crate::network::ipam::free_pod_cidr;
use crate::registry::RegistryError;

/// Nodes given a subnet per pass; the rest wait for the next.
const NODES_PER_PASS_MAX: usize = 200;
/// Subnets tried for one node in a pass before it waits for the next.
const SUBNET_TRIES_MAX: usize = 16;

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
        'nodes: for name in waiting.into_iter().take(NODES_PER_PASS_MAX) {
            // The store has the last word: a subnet the cache thought free
            // may have been taken (by an earlier leader, say); try the next.
            for _ in 0..SUBNET_TRIES_MAX {
                let Some(cidr) = free_pod_cidr(&plan, held.iter().map(String::as_str)) else {
                    if !self.warned_full {
                        tracing::warn!(node = %name, cluster_cidr = %plan.cluster_cidr, "no pod subnet left for the node; widen --cluster-cidr");
                        self.warned_full = true;
                    }
                    break 'nodes;
                };
                let cidr = cidr.to_string();
                held.push(cidr.clone());
                match ctx.registry.assign_pod_cidr(&name, &cidr).await {
                    Ok(node) => {
                        tracing::info!(node = %name, pod_cidr = %cidr, "node given a pod subnet");
                        if let Some(rv) = object::resource_version(&node) {
                            outcome.note_write(Kind::Nodes, rv);
                        }
                        continue 'nodes;
                    }
                    Err(RegistryError::Conflict { .. }) => continue,
                    Err(RegistryError::NotFound { .. }) => continue 'nodes,
                    Err(source) => return Err(ControllerError::Registry { controller: "node-ipam-controller", source }),
                }
            }
        }
        Ok(outcome)
    }
}
