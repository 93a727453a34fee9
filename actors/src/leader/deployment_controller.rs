//! The Deployment controller: for each Deployment the cache marks as
//! changed (its spec, or one of its ReplicaSets), [`rollout::plan`] gives
//! one step of the rollout (create the new ReplicaSet, scale sets up and
//! down within maxSurge/maxUnavailable, prune history) and the status;
//! this returns the step's writes. The ReplicaSets' status changes that follow wake
//! it for the next step, so a rollout advances as pods become ready.

use serde_json::{json, Value};

use super::cache::Kind;
use super::command::{Command, Decision};
use super::controller::{Reconciler, StepInput};
use super::rollout::{plan, RolloutPlan, REVISION_ANNOTATION};
use crate::model::object;

pub struct DeploymentController;

pub fn make() -> Box<dyn Reconciler> {
    Box::new(DeploymentController)
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

/// The writes of one rollout step.
pub fn commands(d: &Value, mut p: RolloutPlan, now: &str) -> Vec<Command> {
    let ns = Some(object::namespace(d).unwrap_or("default").to_string());
    let name = object::name(d).unwrap_or_default().to_string();
    let mut out = Vec::new();
    if let Some(rs) = p.create.take() {
        tracing::info!(deployment = %name, replicaset = object::name(&rs).unwrap_or(""), "new ReplicaSet for the template");
        out.push(Command::Create { kind: Kind::ReplicaSets, namespace: ns.clone().unwrap_or_default(), objects: vec![rs] });
    }
    let patch = |name: &str, patch: Value| Command::Patch { kind: Kind::ReplicaSets, namespace: ns.clone(), name: name.into(), patch };
    for (rs, revision) in &p.set_revision {
        out.push(patch(rs, json!({"metadata": {"annotations": {REVISION_ANNOTATION: revision.to_string()}}})));
    }
    for (rs, replicas) in &p.scale {
        out.push(patch(rs, json!({"spec": {"replicas": replicas}})));
    }
    for rs in &p.delete {
        out.push(Command::Delete { kind: Kind::ReplicaSets, namespace: ns.clone(), name: rs.clone() });
    }
    stamp(&mut p.status, now);
    if d.get("status") != Some(&p.status) {
        out.push(Command::WriteStatus { kind: Kind::Deployments, namespace: ns, name, status: p.status });
    }
    out
}

impl Reconciler for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment-controller"
    }

    fn step(&mut self, input: StepInput<'_>) -> Decision {
        let s = input.cache;
        let keys = s.take_deployments(input.resync);
        let mut decision = Decision::default();
        for d in keys.iter().filter_map(|k| s.deployments.get(k)).filter(|d| object::meta_str(d, "deletionTimestamp").is_none()) {
            let sets: Vec<Value> = s.replicasets_of(object::uid(d).unwrap_or_default()).into_iter().cloned().collect();
            decision.commands.extend(commands(d, plan(d, &sets), &input.now.wall));
        }
        decision
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
