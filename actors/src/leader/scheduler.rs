//! The Scheduler: takes unbound pods from the cache in batches, places
//! them with [`ClusterView::place_batch`] over the nodes and what is
//! already bound to them, and binds each batch in store transactions that
//! fail if a pod changed or a node vanished underneath. A pod that fits
//! nowhere gets `PodScheduled=False` with the reason and a
//! FailedScheduling event, and is tried again when nodes change, when
//! bound pods go away, or on the resync period.

use std::collections::HashMap;
use std::sync::Arc;

use futures::StreamExt;
use serde_json::{json, Value};

use super::cache::{CacheState, Kind, PodView};
use super::controller::{ControllerError, LeaderContext, PassOutcome, Reconciler};
use super::placement::{self, node_info, ClusterView, Placement};
use crate::model::object;
use crate::model::resources::lookup;
use crate::registry::{set_condition, RegistryError};

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

fn err(source: RegistryError) -> ControllerError {
    ControllerError::Registry { controller: "scheduler", source }
}

#[async_trait::async_trait]
impl Reconciler for Scheduler {
    fn name(&self) -> &'static str {
        "scheduler"
    }

    async fn reconcile(&mut self, ctx: &LeaderContext, resync: bool) -> Result<PassOutcome, ControllerError> {
        let mut outcome = PassOutcome::default();
        let (batch, mut view, epoch) = {
            let mut s = ctx.cache.write();
            if s.pending.is_empty() {
                self.unschedulable.clear();
                return Ok(outcome);
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
                .take(ctx.settings.schedule_batch_max)
                .filter_map(|k| s.pods.get(k).cloned())
                .collect();
            if batch.is_empty() {
                return Ok(outcome);
            }
            let view = self.sync_view(&mut s);
            outcome.more = s.pending.len() > batch.len() + self.unschedulable.len();
            (batch, view, epoch)
        };
        let infos: Vec<_> = batch.iter().map(|p| p.info.as_ref().clone()).collect();
        let placements = view.place_batch(&infos);
        let mut binds: Vec<(Arc<Value>, String)> = Vec::new();
        let mut failed: Vec<(&PodView, String)> = Vec::new();
        for (pod, placement) in batch.iter().zip(placements) {
            match (placement, &pod.object) {
                (Placement::Bind { node }, Some(obj)) => {
                    self.bound_by_me.insert(pod.key(), node.clone());
                    binds.push((obj.clone(), node));
                }
                (Placement::Unschedulable { reason }, _) => failed.push((pod, reason)),
                (Placement::Bind { node }, None) => view.release(&pod.info, &node),
            }
        }
        for chunk in binds.chunks(ctx.settings.bind_txn_pods_max.max(1)) {
            let pairs: Vec<(&Value, &str)> = chunk.iter().map(|(p, n)| (p.as_ref(), n.as_str())).collect();
            match ctx.registry.bind_pods(&pairs).await.map_err(err)? {
                Some(revision) => outcome.note_write(Kind::Pods, revision),
                None => {
                    // Something in the chunk moved: bind one by one, and
                    // leave the ones that changed to the next pass.
                    let singles = futures::stream::iter(chunk.iter().cloned().map(|(pod, node)| {
                        let registry = ctx.registry.clone();
                        async move { registry.bind_pods(&[(pod.as_ref(), node.as_str())]).await }
                    }))
                    .buffered(ctx.settings.write_concurrency_max)
                    .collect::<Vec<_>>()
                    .await;
                    for (r, (pod, node)) in singles.into_iter().zip(chunk) {
                        match r.map_err(err)? {
                            Some(revision) => outcome.note_write(Kind::Pods, revision),
                            None => {
                                // Not bound after all: take it off the view.
                                let key =
                                    format!("{}/{}", object::namespace(pod).unwrap_or("default"), object::name(pod).unwrap_or_default());
                                if self.bound_by_me.remove(&key).is_some() {
                                    view.release(&placement::pod_info(pod), node);
                                }
                            }
                        }
                    }
                    outcome.more = true;
                }
            }
        }
        self.view = Some(view);
        for (pod, reason) in failed {
            let key = pod.key();
            let previous = self.unschedulable.insert(key, (reason.clone(), epoch));
            if previous.is_some_and(|(r, _)| r == reason) {
                continue;
            }
            if let Some(revision) = self.mark_unschedulable(ctx, pod, &reason).await? {
                outcome.note_write(Kind::Pods, revision);
            }
        }
        Ok(outcome)
    }
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

    /// Writes PodScheduled=False with the reason (if it says something
    /// new) and records a FailedScheduling event.
    async fn mark_unschedulable(&self, ctx: &LeaderContext, pod: &PodView, reason: &str) -> Result<Option<u64>, ControllerError> {
        let Some(obj) = &pod.object else { return Ok(None) };
        let already = obj
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "PodScheduled" && c["status"] == "False" && c["message"] == reason));
        if already {
            return Ok(None);
        }
        let pods = lookup("pods").expect("pods are served");
        let condition = json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": reason,
                               "lastTransitionTime": object::now()});
        let written = ctx
            .registry
            .read_modify_write(
                pods,
                Some(&pod.namespace),
                &pod.name,
                None,
                |old| {
                    let mut new = old.clone();
                    if new.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) {
                        return Ok(old.clone());
                    }
                    set_condition(&mut new, condition.clone());
                    if new.pointer("/status/phase").is_none() {
                        new["status"]["phase"] = json!("Pending");
                    }
                    Ok(new)
                },
                Some("status"),
            )
            .await;
        match written {
            Ok(new) => {
                ctx.registry.record_event(&new, "Warning", "FailedScheduling", reason).await;
                tracing::info!(pod = %pod.key(), reason, "pod fits on no node");
                Ok(object::resource_version(&new))
            }
            Err(RegistryError::NotFound { .. }) => Ok(None),
            Err(e) => Err(err(e)),
        }
    }
}
