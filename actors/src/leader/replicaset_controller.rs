//! The ReplicaSet controller: for each set the cache marks as changed (or
//! all of them on resync), [`replicas::decide`] says how many pods to
//! create and which to delete; this performs that, at most
//! `replica_burst_max` pod writes per pass, and the set's status, as
//! commands for the executor.

use std::collections::HashMap;

use serde_json::Value;

use super::cache::Kind;
use super::command::{Command, Decision};
use super::controller::{Reconciler, StepInput};
use super::replicas::{decide, pod_from_template, ReplicaDecision};
use crate::model::object;

#[derive(Default)]
pub struct ReplicaSetController;

pub fn make() -> Box<dyn Reconciler> {
    Box::new(ReplicaSetController)
}

impl Reconciler for ReplicaSetController {
    fn name(&self) -> &'static str {
        "replicaset-controller"
    }

    fn step(&mut self, input: StepInput<'_>) -> Decision {
        let StepInput { cache: s, settings, resync, .. } = input;
        let mut decision = Decision::default();
        let mut statuses = Vec::new();
        let keys = s.take_replicasets(resync);
        // Only scale-downs look at node load; build it only for them.
        let mut node_load: Option<HashMap<String, usize>> = None;
        let mut budget = settings.replica_burst_max;
        for key in keys {
            let Some(rs) = s.replicasets.get(&key) else { continue };
            if object::meta_str(rs, "deletionTimestamp").is_some() {
                continue;
            }
            let uid = object::uid(rs).unwrap_or_default();
            let pods: Vec<_> = s.pods_of(uid).collect();
            let surplus = pods.iter().filter(|p| p.is_active()).count() > super::replicas::desired_replicas(rs);
            let empty = HashMap::new();
            let load = if surplus {
                node_load.get_or_insert_with(|| s.pods_by_node.iter().map(|(n, p)| (n.clone(), p.len())).collect())
            } else {
                &empty
            };
            let ReplicaDecision { create, delete, status } = decide(rs, &pods, load);
            let wanted = create + delete.len();
            if wanted > budget {
                // Over this pass's budget: do part now, the rest next.
                decision.more = true;
            }
            let ns = object::namespace(rs).unwrap_or("default").to_string();
            let take = wanted.min(budget);
            budget -= take;
            let creates = create.min(take);
            if creates > 0 {
                // Generated names rarely collide; when they do the whole
                // batch is refused and the next pass makes it.
                let batch: Vec<Value> = std::iter::repeat_n(pod_from_template(rs), creates).collect();
                for chunk in batch.chunks(settings.bind_txn_pods_max.max(1)) {
                    decision.commands.push(Command::Create { kind: Kind::Pods, namespace: ns.clone(), objects: chunk.to_vec() });
                }
            }
            decision.commands.extend(delete.into_iter().take(take - creates).map(|name| Command::Delete {
                kind: Kind::Pods,
                namespace: Some(ns.clone()),
                name,
            }));
            if !status_matches(rs.get("status"), &status) {
                statuses.push(Command::WriteStatus {
                    kind: Kind::ReplicaSets,
                    namespace: Some(ns.clone()),
                    name: object::name(rs).unwrap_or_default().to_string(),
                    status,
                });
            }
            if take < wanted {
                s.dirty.replicasets.insert(key);
            }
        }
        // Statuses last: they report what the pod writes before them made.
        decision.commands.extend(statuses);
        decision
    }
}

fn status_matches(current: Option<&Value>, desired: &Value) -> bool {
    let Some(current) = current else { return false };
    desired.as_object().into_iter().flatten().all(|(k, v)| current.get(k) == Some(v))
}
