//! The node IPAM controller: gives every node that has none a pod subnet
//! (`spec.podCIDR`) from the cluster CIDR, one no other node holds, as
//! Kubernetes' node-ipam controller does. The choice comes from the
//! cache; the store makes it stick only if no node holds the subnet (a
//! reservation key written with the node), so two nodes never share one,
//! even while leadership moves.

use std::collections::BTreeSet;

use super::cache::pod_cidr;
use super::command::{Command, Decision, Outcome};
use super::controller::{Reconciler, StepInput};
use crate::model::addresses::{free_pod_cidrs, Cidr};

/// Nodes given a subnet per pass; the rest wait for the next.
const NODES_PER_PASS_MAX: usize = 200;
/// Subnets remembered as held by nodes the cache has not shown yet.
const SUBNETS_REMEMBERED_MAX: usize = 4096;

pub struct NodeIpamController {
    /// Logged once per leadership, not once per pass.
    warned_full: bool,
    /// Subnets the store said another node holds though the cache did not
    /// show it (an earlier leader's choice, not yet seen): skipped.
    held_elsewhere: BTreeSet<String>,
}

pub fn make() -> Box<dyn Reconciler> {
    Box::new(NodeIpamController { warned_full: false, held_elsewhere: BTreeSet::new() })
}

impl Reconciler for NodeIpamController {
    fn name(&self) -> &'static str {
        "node-ipam-controller"
    }

    fn step(&mut self, input: StepInput<'_>) -> Decision {
        let cache = input.cache;
        if cache.nodes_without_pod_cidr.is_empty() {
            return Decision { commands: vec![], more: false };
        }
        let plan = *input.network;
        // Only while some node waits: the subnets held are read off the nodes.
        let held: BTreeSet<Cidr> = cache
            .nodes
            .values()
            .filter_map(pod_cidr)
            .chain(self.held_elsewhere.iter().map(String::as_str))
            .filter_map(|c| Cidr::parse(c).ok())
            .collect();
        let waiting = &cache.nodes_without_pod_cidr;
        let mut decision = Decision { commands: vec![], more: waiting.len() > NODES_PER_PASS_MAX };
        let mut free = free_pod_cidrs(&plan, &held);
        for name in waiting.iter().take(NODES_PER_PASS_MAX) {
            let Some(cidr) = free.next() else {
                if !self.warned_full {
                    tracing::warn!(node = %name, cluster_cidr = %plan.cluster_cidr, "no pod subnet left for the node; widen --cluster-cidr");
                    self.warned_full = true;
                }
                break;
            };
            decision.commands.push(Command::AssignPodCidr { node: name.clone(), cidr: cidr.to_string() });
        }
        decision
    }

    fn feedback(&mut self, commands: &[Command], outcomes: &[Outcome]) {
        for (c, o) in commands.iter().zip(outcomes) {
            if let (Command::AssignPodCidr { cidr, .. }, Outcome::Requeue(why)) = (c, o) {
                // The store has the last word: the subnet was taken.
                if why.contains("is held by node") && self.held_elsewhere.len() < SUBNETS_REMEMBERED_MAX {
                    self.held_elsewhere.insert(cidr.clone());
                }
            }
        }
    }
}
