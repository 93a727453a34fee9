//! The ReplicaSet controller: for each set the cache marks as changed (or
//! all of them on resync), [`replicas::decide`] says how many pods to
//! create and which to delete; this performs that, at most
//! `replica_burst_max` pod writes per pass, and writes the set's status.

use std::collections::HashMap;

use futures::StreamExt;
use serde_json::Value;

use super::cache::Kind;
use super::controller::{ControllerError, LeaderContext, PassOutcome, Reconciler};
use super::replicas::{decide, pod_from_template, ReplicaDecision};
use crate::model::object;
use crate::model::resources::lookup;
use crate::registry::{Propagation, RegistryError};

#[derive(Default)]
pub struct ReplicaSetController;

pub fn make() -> Box<dyn Reconciler> {
    Box::new(ReplicaSetController)
}

fn err(source: RegistryError) -> ControllerError {
    ControllerError::Registry { controller: "replicaset-controller", source }
}

/// A store error the next pass should simply retry past: the object moved
/// or is gone, or its namespace is going away.
fn benign(e: &RegistryError) -> bool {
    matches!(
        e,
        RegistryError::NotFound { .. }
            | RegistryError::Conflict { .. }
            | RegistryError::AlreadyExists { .. }
            | RegistryError::NamespaceTerminating(_)
            | RegistryError::NamespaceNotFound(_)
    )
}

enum Write {
    /// Pods for one ReplicaSet, created in one transaction.
    Create(Vec<Value>),
    Delete {
        namespace: String,
        name: String,
    },
}

#[async_trait::async_trait]
impl Reconciler for ReplicaSetController {
    fn name(&self) -> &'static str {
        "replicaset-controller"
    }

    async fn reconcile(&mut self, ctx: &LeaderContext, resync: bool) -> Result<PassOutcome, ControllerError> {
        let mut outcome = PassOutcome::default();
        let mut writes = Vec::new();
        let mut statuses: Vec<(Value, Value)> = Vec::new();
        {
            let mut s = ctx.cache.write();
            let keys = s.take_replicasets(resync);
            if keys.is_empty() {
                return Ok(outcome);
            }
            // Only scale-downs look at node load; build it only for them.
            let mut node_load: Option<HashMap<String, usize>> = None;
            let mut budget = ctx.settings.replica_burst_max;
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
                    outcome.more = true;
                }
                let ns = object::namespace(rs).unwrap_or("default").to_string();
                let template = (create > 0).then(|| pod_from_template(rs));
                let take = wanted.min(budget);
                budget -= take;
                let creates = create.min(take);
                if let (Some(template), true) = (template, creates > 0) {
                    let batch: Vec<Value> = std::iter::repeat_n(template, creates).collect();
                    for chunk in batch.chunks(ctx.settings.bind_txn_pods_max.max(1)) {
                        writes.push(Write::Create(chunk.to_vec()));
                    }
                }
                writes.extend(delete.into_iter().take(take - creates).map(|name| Write::Delete { namespace: ns.clone(), name }));
                if !status_matches(rs.get("status"), &status) {
                    statuses.push((rs.clone(), status));
                }
                if take < wanted {
                    s.dirty.replicasets.insert(key);
                }
            }
        }
        let pods = lookup("pods").expect("pods are served");
        let results = futures::stream::iter(writes.into_iter().map(|w| async move {
            match w {
                Write::Create(batch) => {
                    let ns = batch.first().and_then(object::namespace).unwrap_or("default").to_string();
                    // Generated names rarely collide; when they do the
                    // whole batch is refused and the next pass makes it.
                    ctx.registry.create_many(pods, Some(&ns), batch).await.map(|created| created.into_iter().next())
                }
                Write::Delete { namespace, name } => {
                    ctx.registry.delete_with_grace(pods, Some(&namespace), &name, None, Propagation::Background, None).await.map(Some)
                }
            }
        }))
        .buffer_unordered(ctx.settings.write_concurrency_max)
        .collect::<Vec<_>>()
        .await;
        for r in results {
            match r {
                Ok(obj) => {
                    if let Some(rv) = obj.as_ref().and_then(object::resource_version) {
                        outcome.note_write(Kind::Pods, rv);
                    }
                }
                Err(e) if benign(&e) => outcome.more = true,
                Err(e) => return Err(err(e)),
            }
        }
        let replicasets = lookup("replicasets").expect("replicasets are served");
        for (rs, status) in statuses {
            let written =
                ctx.registry.write_status(replicasets, object::namespace(&rs), object::name(&rs).unwrap_or_default(), &status).await;
            match written {
                Ok(new) => {
                    if let Some(rv) = object::resource_version(&new) {
                        outcome.note_write(Kind::ReplicaSets, rv);
                    }
                }
                Err(e) if benign(&e) => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(outcome)
    }
}

fn status_matches(current: Option<&Value>, desired: &Value) -> bool {
    let Some(current) = current else { return false };
    desired.as_object().into_iter().flatten().all(|(k, v)| current.get(k) == Some(v))
}
