//! The Deployment controller: for each Deployment the cache marks as
//! changed (its spec, or one of its ReplicaSets), [`rollout::plan`] gives
//! one step of the rollout (create the new ReplicaSet, scale sets up and
//! down within maxSurge/maxUnavailable, prune history) and the status;
//! this performs the step. The ReplicaSets' status changes that follow wake
//! it for the next step, so a rollout advances as pods become ready.

use serde_json::{json, Value};

use super::cache::Kind;
use super::controller::{ControllerError, LeaderContext, PassOutcome, Reconciler};
use super::rollout::{plan, RolloutPlan, REVISION_ANNOTATION};
use crate::model::object;
use crate::model::resources::lookup;
use crate::registry::{Propagation, RegistryError};

pub struct DeploymentController;

pub fn make() -> Box<dyn Reconciler> {
    Box::new(DeploymentController)
}

fn err(source: RegistryError) -> ControllerError {
    ControllerError::Registry { controller: "deployment-controller", source }
}

/// Fills in the timestamps of conditions the plan changed.
fn stamp(status: &mut Value, now: &str) {
    for c in status.get_mut("conditions").and_then(Value::as_array_mut).into_iter().flatten() {
        for field in ["lastUpdateTime", "lastTransitionTime"] {
            if c.get(field).is_none_or(Value::is_null) {
                c[field] = json!(now);
            }
        }
    }
}

async fn note<F: std::future::Future<Output = Result<Value, RegistryError>>>(
    outcome: &mut PassOutcome,
    kind: Kind,
    write: F,
) -> Result<(), ControllerError> {
    match write.await {
        Ok(obj) => {
            if let Some(rv) = object::resource_version(&obj) {
                outcome.note_write(kind, rv);
            }
            Ok(())
        }
        Err(RegistryError::NotFound { .. } | RegistryError::Conflict { .. } | RegistryError::AlreadyExists { .. }) => {
            outcome.more = true;
            Ok(())
        }
        Err(RegistryError::NamespaceTerminating(_)) => Ok(()),
        Err(e) => Err(err(e)),
    }
}

#[async_trait::async_trait]
impl Reconciler for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment-controller"
    }

    async fn reconcile(&mut self, ctx: &LeaderContext, resync: bool) -> Result<PassOutcome, ControllerError> {
        let mut outcome = PassOutcome::default();
        let work: Vec<(Value, RolloutPlan)> = {
            let mut s = ctx.cache.write();
            let keys = s.take_deployments(resync);
            keys.iter()
                .filter_map(|k| s.deployments.get(k))
                .filter(|d| object::meta_str(d, "deletionTimestamp").is_none())
                .map(|d| {
                    let sets: Vec<Value> = s.replicasets_of(object::uid(d).unwrap_or_default()).into_iter().cloned().collect();
                    (d.clone(), plan(d, &sets))
                })
                .collect()
        };
        let replicasets = lookup("replicasets").expect("replicasets are served");
        let deployments = lookup("deployments").expect("deployments are served");
        for (d, mut p) in work {
            let ns = object::namespace(&d).unwrap_or("default").to_string();
            let name = object::name(&d).unwrap_or_default().to_string();
            if let Some(rs) = p.create.take() {
                tracing::info!(deployment = %name, replicaset = object::name(&rs).unwrap_or(""), "new ReplicaSet for the template");
                note(&mut outcome, Kind::ReplicaSets, ctx.registry.create(replicasets, Some(&ns), rs)).await?;
            }
            for (rs, revision) in &p.set_revision {
                let rev = revision.to_string();
                let change = |old: &Value| {
                    let mut new = old.clone();
                    new["metadata"]["annotations"][REVISION_ANNOTATION] = json!(rev);
                    Ok(new)
                };
                note(&mut outcome, Kind::ReplicaSets, ctx.registry.read_modify_write(replicasets, Some(&ns), rs, None, change, None))
                    .await?;
            }
            for (rs, replicas) in &p.scale {
                let change = |old: &Value| {
                    let mut new = old.clone();
                    new["spec"]["replicas"] = json!(replicas);
                    Ok(new)
                };
                note(&mut outcome, Kind::ReplicaSets, ctx.registry.read_modify_write(replicasets, Some(&ns), rs, None, change, None))
                    .await?;
            }
            for rs in &p.delete {
                note(&mut outcome, Kind::ReplicaSets, ctx.registry.delete(replicasets, Some(&ns), rs, None, Propagation::Background))
                    .await?;
            }
            stamp(&mut p.status, &object::now());
            if d.get("status") != Some(&p.status) {
                note(&mut outcome, Kind::Deployments, ctx.registry.write_status(deployments, Some(&ns), &name, &p.status)).await?;
            }
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_condition_times_are_stamped() {
        let mut status = json!({"conditions": [
            {"type": "Available", "lastUpdateTime": "2026-01-01T00:00:00Z", "lastTransitionTime": "2026-01-01T00:00:00Z"},
            {"type": "Progressing"},
        ]});
        stamp(&mut status, "2026-11-26T00:00:00Z");
        assert_eq!(status["conditions"][0]["lastUpdateTime"], "2026-01-01T00:00:00Z");
        assert_eq!(status["conditions"][1]["lastUpdateTime"], "2026-11-26T00:00:00Z");
        assert_eq!(status["conditions"][1]["lastTransitionTime"], "2026-11-26T00:00:00Z");
    }
}
