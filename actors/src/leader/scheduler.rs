//! The Scheduler: takes unbound pods from the cache in batches, places
//! them with [`ClusterView::place_batch`] over the nodes and what is
//! already bound to them, and binds each batch in store transactions that
//! fail if a pod changed or a node vanished underneath. A pod that fits
//! nowhere gets `PodScheduled=False` with the reason and a
//! FailedScheduling event, and is tried again when nodes change, when
//! bound pods go away, or on the resync period.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::cache::{CacheState, Kind, PodView};
use super::command::{Command, Decision, Outcome};
use super::controller::{Reconciler, StepInput};
use super::placement::{self, node_info, ClusterView, Placement};
use crate::model::object;

#[derive(Default)]
pub struct Scheduler {
    /// Nodes and what is placed on them, kept across passes from the
    /// cache's placement log.
    view: Option<ClusterView>,
    /// Pods this scheduler accounted when it bound them, so the cache's
    /// report of the same bind is not counted twice.
    bound_by_me: HashMap<String, String>,
    /// The resourceVersion each node was last parsed at: thousands of nodes
    /// change rarely, so most passes parse none.
    nodes: HashMap<String, u64>,
    /// Pods that fit nowhere, with the reason given and the cluster epoch
    /// at which it was given; they wait for the epoch to move.
    unschedulable: HashMap<String, (String, (u64, u64))>,
}

pub fn make() -> Box<dyn Reconciler> {
    Box::<Scheduler>::default()
}

impl Reconciler for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    fn step(&mut self, input: StepInput<'_>) -> Decision {
        let StepInput { cache: s, settings, resync, now, .. } = input;
        let mut decision = Decision::default();
        if s.pending.is_empty() {
            self.unschedulable.clear();
            return decision;
        }
        // The epoch moves when nodes change or bound pods go away: only
        // then can a pod that fit nowhere fit somewhere.
        let epoch = (s.revision(Kind::Nodes), s.released_pods);
        if resync {
            self.unschedulable.clear();
        }
        self.unschedulable.retain(|k, (_, e)| *e == epoch && s.pending.contains(k));
        let batch: Vec<PodView> = s
            .pending
            .iter()
            .filter(|k| !self.unschedulable.contains_key(*k))
            .take(settings.schedule_batch_max)
            .filter_map(|k| s.pods.get(k).cloned())
            .collect();
        if batch.is_empty() {
            return decision;
        }
        let mut view = self.sync_view(s);
        decision.more = s.pending.len() > batch.len() + self.unschedulable.len();
        let infos: Vec<_> = batch.iter().map(|p| p.info.as_ref().clone()).collect();
        let placements = view.place_batch(&infos);
        let mut binds: Vec<(Arc<Value>, String)> = Vec::new();
        for (pod, placement) in batch.iter().zip(placements) {
            match (placement, &pod.object) {
                (Placement::Bind { node }, Some(obj)) => {
                    self.bound_by_me.insert(pod.key(), node.clone());
                    binds.push((obj.clone(), node));
                }
                (Placement::Unschedulable { reason }, _) => {
                    let previous = self.unschedulable.insert(pod.key(), (reason.clone(), epoch));
                    if previous.is_some_and(|(r, _)| r == reason) || already_unschedulable(pod, &reason) {
                        continue;
                    }
                    decision.commands.push(Command::MarkUnschedulable {
                        namespace: pod.namespace.clone(),
                        name: pod.name.clone(),
                        reason,
                        at: now.wall.clone(),
                    });
                }
                (Placement::Bind { node }, None) => view.release(&pod.info, &node),
            }
        }
        self.view = Some(view);
        if !binds.is_empty() {
            decision.commands.insert(0, Command::Bind { pods: binds });
        }
        decision
    }

    fn feedback(&mut self, commands: &[Command], outcomes: &[Outcome]) {
        for (c, o) in commands.iter().zip(outcomes) {
            let Command::Bind { pods } = c else { continue };
            // A bind that did not happen (the pod moved; the pass failed)
            // comes off the view; the next pass sees the pod again.
            let bound: &[bool] = match o {
                Outcome::Bound(b) => b,
                _ => &[],
            };
            for (i, (pod, node)) in pods.iter().enumerate() {
                if bound.get(i) == Some(&true) {
                    continue;
                }
                let key = format!("{}/{}", object::namespace(pod).unwrap_or("default"), object::name(pod).unwrap_or_default());
                if self.bound_by_me.remove(&key).is_some() {
                    if let Some(view) = self.view.as_mut() {
                        view.release(&placement::pod_info(pod), node);
                    }
                }
            }
        }
    }
}

/// Whether the pod already says it fits nowhere, for this reason.
fn already_unschedulable(pod: &PodView, reason: &str) -> bool {
    pod.object.as_ref().is_none_or(|obj| {
        obj.pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "PodScheduled" && c["status"] == "False" && c["message"] == reason))
    })
}

impl Scheduler {
    /// Brings the view up to date: nodes that changed are parsed again,
    /// pods bound or gone since the last pass are counted or released
    /// (or everything is recounted after the cache listed afresh).
    fn sync_view(&mut self, s: &mut CacheState) -> ClusterView {
        let mut view = match self.view.take() {
            Some(v) if !s.placement_reset => v,
            _ => {
                s.placement_reset = false;
                s.placement_log.clear();
                self.bound_by_me.clear();
                self.nodes.clear();
                let mut v = ClusterView::new(Vec::new());
                for (node, keys) in &s.pods_by_node {
                    for pod in keys.iter().filter_map(|k| s.pods.get(k)) {
                        if pod.phase != "Succeeded" && pod.phase != "Failed" {
                            v.account(&pod.info, node);
                        }
                    }
                }
                v
            }
        };
        for change in s.placement_log.drain(..) {
            if change.added {
                if self.bound_by_me.get(&change.key) == Some(&change.node) {
                    // Counted when we bound it.
                    self.bound_by_me.remove(&change.key);
                } else {
                    view.account(&change.info, &change.node);
                }
            } else {
                view.release(&change.info, &change.node);
            }
        }
        let gone: Vec<String> = self.nodes.keys().filter(|n| !s.nodes.contains_key(*n)).cloned().collect();
        for name in gone {
            self.nodes.remove(&name);
            view.remove_node(&name);
        }
        for (name, node) in &s.nodes {
            let rv = object::resource_version(node).unwrap_or(0);
            if self.nodes.get(name) != Some(&rv) {
                view.upsert_node(node_info(node));
                self.nodes.insert(name.clone(), rv);
            }
        }
        view
    }
}
