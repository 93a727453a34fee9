//! The Deployment controller's decisions as plain functions over apps/v1 JSON, after Kubernetes'
//! deployment controller: for one reconcile step, which ReplicaSet to create, scale, renumber or
//! delete, and the status to write. The actor around it compares the plan with the store and does
//! the writes; replanning from the result either makes progress or yields an empty plan.
//! `kubectl rollout status` and `rollout undo` semantics live here too, for the CLI.

use serde_json::{json, Map, Value};

use crate::model::object::{metadata, metadata_mut, name, namespace, uid};

/// Label and annotation names, as Kubernetes spells them.
pub const TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";

/// Kubernetes' "safe" alphabet: no vowels, nor digits read as vowels (0, 1, 3), so no accidental words.
const HASH_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// 27^10 is about 2^47, plenty against collisions among one deployment's templates.
const HASH_LEN: usize = 10;
const DEFAULT_REVISION_HISTORY_LIMIT: i64 = 10;
const DEFAULT_FENCEPOST_PERCENT: i64 = 25;

/// A stable short hash of a pod template (spec.template): 10 characters from
/// "bcdfghjklmnpqrstvwxz2456789", FNV-1a 64 of the canonical JSON. The template-hash label is left
/// out, so a ReplicaSet's template (which carries it) hashes like the deployment's.
pub fn template_hash(template: &Value) -> String {
    let mut t = template.clone();
    // Removed before canonicalizing: with serde_json's preserve_order, removal may reorder keys.
    if let Some(labels) = t.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove(TEMPLATE_HASH_LABEL);
    }
    let json = serde_json::to_string(&canonical(&t)).unwrap_or_default();
    let mut h = fnv1a64(json.as_bytes());
    let mut out = String::with_capacity(HASH_LEN);
    for _ in 0..HASH_LEN {
        out.push(HASH_ALPHABET[(h % HASH_ALPHABET.len() as u64) as usize] as char);
        h /= HASH_ALPHABET.len() as u64;
    }
    out
}

/// The value with object keys sorted at every level, so equal templates serialize equally whatever
/// order their keys arrived in.
fn canonical(v: &Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(&String, &Value)> = m.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), canonical(v))).collect::<Map<_, _>>())
        }
        Value::Array(a) => Value::Array(a.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// A ReplicaSet's revision annotation, if it has a readable one.
pub fn revision(set: &Value) -> Option<i64> {
    metadata(set)
        .and_then(|m| m.get("annotations"))
        .and_then(|a| a.get(REVISION_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|s| s.trim().parse().ok())
}

/// One reconcile step's writes. An empty plan (see [`RolloutPlan::is_empty`]) still carries the
/// status, which the caller writes if it differs from the stored one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RolloutPlan {
    /// A ReplicaSet to create: name "<deployment>-<hash>", namespace of the deployment, labels =
    /// template labels + pod-template-hash, spec.selector = deployment selector with matchLabels +
    /// pod-template-hash, spec.template = deployment template with the hash label added,
    /// spec.replicas = its first target, a controller ownerReference to the deployment, and
    /// annotation revision = (max revision among sets)+1.
    pub create: Option<Value>,
    /// (ReplicaSet name, new spec.replicas) for sets whose replicas must change; the new set first,
    /// then old ones by revision.
    pub scale: Vec<(String, i64)>,
    /// (ReplicaSet name, revision) for a set that becomes the new one again (rollback to an old
    /// template): its revision annotation moves to max+1.
    pub set_revision: Vec<(String, i64)>,
    /// Old ReplicaSets to delete: beyond spec.revisionHistoryLimit (default 10), oldest revisions
    /// first, only those at 0 spec.replicas and 0 status.replicas.
    pub delete: Vec<String>,
    /// The Deployment's new status. Conditions keep their stored timestamps while unchanged; a
    /// changed condition has none, for the caller to stamp (this module reads no clock).
    pub status: Value,
}

impl RolloutPlan {
    /// Nothing to write but (perhaps) the status.
    pub fn is_empty(&self) -> bool {
        self.create.is_none() && self.scale.is_empty() && self.set_revision.is_empty() && self.delete.is_empty()
    }
}

/// What the controller needs from a Deployment, with Kubernetes' defaults applied.
struct Deployment<'a> {
    object: &'a Value,
    name: &'a str,
    generation: i64,
    replicas: i64,
    paused: bool,
    recreate: bool,
    max_surge: i64,
    /// Already clamped to `replicas`, and 0 for Recreate, as Kubernetes' MaxUnavailable.
    max_unavailable: i64,
    history_limit: i64,
}

impl<'a> Deployment<'a> {
    fn read(object: &'a Value) -> Self {
        let spec = object.get("spec").unwrap_or(&Value::Null);
        let replicas = spec.get("replicas").and_then(Value::as_i64).unwrap_or(1).max(0);
        let recreate = spec.pointer("/strategy/type").and_then(Value::as_str) == Some("Recreate");
        let (max_surge, max_unavailable) = if recreate {
            (0, 0)
        } else {
            let rolling = spec.pointer("/strategy/rollingUpdate");
            let surge = fencepost(rolling.and_then(|r| r.get("maxSurge")), replicas, true);
            let unavailable = fencepost(rolling.and_then(|r| r.get("maxUnavailable")), replicas, false);
            // Both zero would deadlock the rollout: nothing may be added and nothing removed.
            if surge == 0 && unavailable == 0 {
                (0, 1.min(replicas))
            } else {
                (surge, unavailable.min(replicas))
            }
        };
        Deployment {
            object,
            name: name(object).unwrap_or_default(),
            generation: metadata(object).and_then(|m| m.get("generation")).and_then(Value::as_i64).unwrap_or(0),
            replicas,
            paused: spec.get("paused").and_then(Value::as_bool).unwrap_or(false),
            recreate,
            max_surge,
            max_unavailable,
            history_limit: spec.get("revisionHistoryLimit").and_then(Value::as_i64).unwrap_or(DEFAULT_REVISION_HISTORY_LIMIT).max(0),
        }
    }

    fn template(&self) -> &'a Value {
        self.object.pointer("/spec/template").unwrap_or(&Value::Null)
    }
}

/// An int-or-percent of `total`; percentages round up for surge and down for unavailability, so a
/// rounding error never costs availability.
fn fencepost(v: Option<&Value>, total: i64, round_up: bool) -> i64 {
    let percent = |p: i64| {
        let scaled = p.max(0) * total;
        if round_up {
            (scaled + 99) / 100
        } else {
            scaled / 100
        }
    };
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0).max(0),
        Some(Value::String(s)) => match s.trim().strip_suffix('%') {
            Some(p) => percent(p.trim().parse().unwrap_or(DEFAULT_FENCEPOST_PERCENT)),
            None => s.trim().parse::<i64>().map(|n| n.max(0)).unwrap_or_else(|_| percent(DEFAULT_FENCEPOST_PERCENT)),
        },
        _ => percent(DEFAULT_FENCEPOST_PERCENT),
    }
}

/// What the controller needs from a ReplicaSet.
struct Set<'a> {
    object: &'a Value,
    name: String,
    revision: i64,
    hash: String,
    spec: i64,
    /// status.replicas: pods that exist, terminating ones included.
    replicas: i64,
    ready: i64,
    available: i64,
    deleting: bool,
}

impl<'a> Set<'a> {
    fn read(object: &'a Value) -> Self {
        let int = |p: &str| object.pointer(p).and_then(Value::as_i64).unwrap_or(0).max(0);
        let label = metadata(object).and_then(|m| m.get("labels")).and_then(|l| l.get(TEMPLATE_HASH_LABEL)).and_then(Value::as_str);
        Set {
            object,
            name: name(object).unwrap_or_default().to_string(),
            revision: revision(object).unwrap_or(0),
            hash: match label {
                Some(h) => h.to_string(),
                None => template_hash(object.pointer("/spec/template").unwrap_or(&Value::Null)),
            },
            // ReplicaSet's own default.
            spec: object.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1).max(0),
            replicas: int("/status/replicas"),
            ready: int("/status/readyReplicas"),
            available: int("/status/availableReplicas"),
            deleting: metadata(object).is_some_and(|m| m.contains_key("deletionTimestamp")),
        }
    }
}

/// One reconcile step for `deployment` given the ReplicaSets it owns (controller ownerReference uid
/// == deployment uid; the caller filters). Level-triggered: calling it again on the result of
/// applying the plan makes progress, or returns an empty plan when the rollout is complete and
/// stable (or waiting on pods).
pub fn plan(deployment: &Value, sets: &[Value]) -> RolloutPlan {
    let d = Deployment::read(deployment);
    let mut sets: Vec<Set> = sets.iter().map(Set::read).collect();
    // Oldest first: old sets are scaled down and deleted in this order.
    sets.sort_by(|a, b| a.revision.cmp(&b.revision).then_with(|| a.name.cmp(&b.name)));
    let hash = template_hash(d.template());
    // Several sets with one hash only happen by hand; the oldest wins, as in Kubernetes.
    let new = sets.iter().position(|s| s.hash == hash);
    let old: Vec<usize> = (0..sets.len()).filter(|&i| Some(i) != new).collect();
    let next_revision = old.iter().map(|&i| sets[i].revision).max().unwrap_or(0) + 1;

    let mut targets: Vec<i64> = sets.iter().map(|s| s.spec).collect();
    let mut out = RolloutPlan::default();
    let mut created: Option<(String, i64)> = None;
    if !d.paused {
        let create = if d.recreate { recreate(&d, &sets, new, &old, &mut targets) } else { rolling(&d, &sets, new, &old, &mut targets) };
        if let Some(replicas) = create {
            let set = new_replica_set(&d, &hash, replicas, next_revision);
            created = Some((name(&set).unwrap_or_default().to_string(), replicas));
            out.create = Some(set);
        }
        out.scale = new
            .into_iter()
            .chain(old.iter().copied())
            .filter(|&i| targets[i] != sets[i].spec)
            .map(|i| (sets[i].name.clone(), targets[i]))
            .collect();
        if let Some(i) = new.filter(|&i| sets[i].revision < next_revision) {
            out.set_revision.push((sets[i].name.clone(), next_revision));
        }
        // Only sets with no pods at all count towards the history, as in Kubernetes: one still
        // draining is neither history to keep nor safe to delete.
        let dead: Vec<&Set> = old.iter().map(|&i| &sets[i]).filter(|s| s.spec == 0 && s.replicas == 0 && !s.deleting).collect();
        let excess = (dead.len() as i64 - d.history_limit).max(0) as usize;
        out.delete = dead.iter().take(excess).map(|s| s.name.clone()).collect();
    }
    out.status = status(&d, &sets, new, &targets, created, &hash);
    out
}

/// RollingUpdate: grow the new set within maxSurge, shrink old ones within maxUnavailable. Returns
/// the replicas of a new set to create, if there is none yet.
fn rolling(d: &Deployment, sets: &[Set], new: Option<usize>, old: &[usize], targets: &mut [i64]) -> Option<i64> {
    // A set counts with the pods it still has when its scale-down has not
    // reached them yet (its controller is behind, its writes failing):
    // counting specs alone let the new set grow past maxSurge meanwhile
    // (found by `flotilla sim --seed 1 --nodes 50 --pods 1000`).
    let all: i64 = (0..sets.len()).map(|i| targets[i].max(sets[i].replicas)).sum();
    let new_spec = new.map_or(0, |i| targets[i]);
    let max_total = d.replicas + d.max_surge;
    let new_target = if new_spec > d.replicas {
        d.replicas
    } else if all >= max_total {
        new_spec
    } else {
        (new_spec + max_total - all).min(d.replicas)
    };
    let create = match new {
        // As Kubernetes: a step that resizes the new set leaves the old ones to the next step,
        // which then sees the new set's effect on availability.
        Some(i) if new_target != targets[i] => {
            targets[i] = new_target;
            return None;
        }
        Some(_) => None,
        None => Some(new_target),
    };

    if old.iter().all(|&i| targets[i] == 0) {
        return create;
    }
    let all = targets.iter().sum::<i64>() + create.unwrap_or(0);
    let min_available = d.replicas - d.max_unavailable;
    // A set's status may lag a scale-down; pods beyond spec are on their way out, not available.
    let available_in = |i: usize, targets: &[i64]| sets[i].available.min(targets[i]);
    let new_unavailable = (new_target - new.map_or(0, |i| available_in(i, targets))).max(0);
    // Pods the new set still has to bring up will need room: scaling down beyond this would leave
    // fewer than minAvailable once they are counted.
    let max_scaled_down = all - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return create;
    }
    // Unavailable old pods cost no availability, so they go first.
    let mut cleaned = 0;
    for &i in old {
        if cleaned >= max_scaled_down {
            break;
        }
        let n = (targets[i] - available_in(i, targets)).min(max_scaled_down - cleaned);
        targets[i] -= n;
        cleaned += n;
    }
    let available: i64 = (0..sets.len()).map(|i| available_in(i, targets)).sum();
    let mut budget = (available - min_available).min(max_scaled_down - cleaned);
    for &i in old {
        if budget <= 0 {
            break;
        }
        let n = targets[i].min(budget);
        targets[i] -= n;
        budget -= n;
    }
    create
}

/// Recreate: all old sets to 0, and only once their pods are gone, the new set to full size.
fn recreate(d: &Deployment, sets: &[Set], new: Option<usize>, old: &[usize], targets: &mut [i64]) -> Option<i64> {
    let mut scaled_down = false;
    for &i in old {
        if targets[i] > 0 {
            targets[i] = 0;
            scaled_down = true;
        }
    }
    if scaled_down || old.iter().any(|&i| sets[i].replicas > 0) {
        return None;
    }
    match new {
        Some(i) => {
            targets[i] = d.replicas;
            None
        }
        None => Some(d.replicas),
    }
}

fn new_replica_set(d: &Deployment, hash: &str, replicas: i64, revision: i64) -> Value {
    let mut template = d.template().clone();
    if !template.is_object() {
        template = json!({});
    }
    let labels = metadata_mut(&mut template).entry("labels").or_insert_with(|| json!({}));
    if !labels.is_object() {
        *labels = json!({});
    }
    labels[TEMPLATE_HASH_LABEL] = json!(hash);
    let labels = labels.clone();

    let mut selector = d.object.pointer("/spec/selector").filter(|s| s.is_object()).cloned().unwrap_or_else(|| json!({}));
    if !selector.get("matchLabels").is_some_and(Value::is_object) {
        selector["matchLabels"] = json!({});
    }
    selector["matchLabels"][TEMPLATE_HASH_LABEL] = json!(hash);

    let mut meta = Map::new();
    meta.insert("name".into(), json!(format!("{}-{hash}", d.name)));
    if let Some(ns) = namespace(d.object) {
        meta.insert("namespace".into(), json!(ns));
    }
    meta.insert("labels".into(), labels);
    meta.insert("annotations".into(), json!({ REVISION_ANNOTATION: revision.to_string() }));
    meta.insert(
        "ownerReferences".into(),
        json!([{
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": d.name,
            "uid": uid(d.object).unwrap_or_default(),
            "controller": true,
            "blockOwnerDeletion": true,
        }]),
    );
    let mut spec = json!({"replicas": replicas, "selector": selector, "template": template});
    if let Some(m) = d.object.pointer("/spec/minReadySeconds") {
        spec["minReadySeconds"] = m.clone();
    }
    json!({"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": meta, "spec": spec})
}

fn status(d: &Deployment, sets: &[Set], new: Option<usize>, targets: &[i64], created: Option<(String, i64)>, hash: &str) -> Value {
    let replicas: i64 = sets.iter().map(|s| s.replicas).sum();
    let updated = new.map_or(0, |i| sets[i].replicas);
    let ready: i64 = sets.iter().map(|s| s.ready).sum();
    let available: i64 = sets.iter().map(|s| s.available).sum();
    // As Kubernetes: measured against the pods asked for, this step's changes included.
    let asked = targets.iter().sum::<i64>() + created.as_ref().map_or(0, |c| c.1);
    let unavailable = (asked - available).max(0);

    let existing = d.object.pointer("/status/conditions").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let availability = if available >= d.replicas - d.max_unavailable {
        condition(existing, "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.")
    } else {
        condition(existing, "Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.")
    };
    let new_name = match (new, &created) {
        (Some(i), _) => sets[i].name.clone(),
        (None, Some((n, _))) => n.clone(),
        (None, None) => format!("{}-{hash}", d.name),
    };
    let complete = updated == d.replicas && replicas == d.replicas && available == d.replicas;
    let progressing = if d.paused {
        condition(existing, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused")
    } else if created.is_some() {
        condition(existing, "Progressing", "True", "NewReplicaSetCreated", &format!("Created new replica set \"{new_name}\""))
    } else if complete {
        condition(
            existing,
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            &format!("ReplicaSet \"{new_name}\" has successfully progressed."),
        )
    } else {
        condition(existing, "Progressing", "True", "ReplicaSetUpdated", &format!("ReplicaSet \"{new_name}\" is progressing."))
    };

    let mut status = json!({
        "observedGeneration": d.generation,
        "replicas": replicas,
        "updatedReplicas": updated,
        "readyReplicas": ready,
        "availableReplicas": available,
        "unavailableReplicas": unavailable,
        "conditions": [availability, progressing],
    });
    // Written by no one here, but a status update must not lose it.
    if let Some(c) = d.object.pointer("/status/collisionCount") {
        status["collisionCount"] = c.clone();
    }
    status
}

/// A condition, keeping the stored timestamps while it has not changed so that an unchanged status
/// compares equal to the stored one.
fn condition(existing: &[Value], kind: &str, status: &str, reason: &str, message: &str) -> Value {
    let mut c = json!({"type": kind, "status": status, "reason": reason, "message": message});
    let str_of = |v: &Value, f: &str| v.get(f).and_then(Value::as_str).map(String::from);
    if let Some(old) = existing.iter().find(|c| c.get("type").and_then(Value::as_str) == Some(kind)) {
        if str_of(old, "status").as_deref() == Some(status) {
            if let Some(t) = old.get("lastTransitionTime") {
                c["lastTransitionTime"] = t.clone();
            }
            if str_of(old, "reason").as_deref() == Some(reason) && str_of(old, "message").as_deref() == Some(message) {
                if let Some(t) = old.get("lastUpdateTime") {
                    c["lastUpdateTime"] = t.clone();
                }
            }
        }
    }
    c
}

/// kubectl rollout status semantics: (done, message), messages as kubectl prints them (without the
/// newline). This controller never reports ProgressDeadlineExceeded, so there is no error case.
pub fn rollout_status(deployment: &Value) -> (bool, String) {
    let int = |p: &str| deployment.pointer(p).and_then(Value::as_i64).unwrap_or(0);
    let name = name(deployment).unwrap_or_default();
    if int("/metadata/generation") > int("/status/observedGeneration") {
        return (false, "Waiting for deployment spec update to be observed...".into());
    }
    let replicas = deployment.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1);
    let (total, updated, available) = (int("/status/replicas"), int("/status/updatedReplicas"), int("/status/availableReplicas"));
    let waiting = |what: String| (false, format!("Waiting for deployment \"{name}\" rollout to finish: {what}..."));
    if updated < replicas {
        waiting(format!("{updated} out of {replicas} new replicas have been updated"))
    } else if total > updated {
        waiting(format!("{} old replicas are pending termination", total - updated))
    } else if available < updated {
        waiting(format!("{available} of {updated} updated replicas are available"))
    } else {
        (true, format!("deployment \"{name}\" successfully rolled out"))
    }
}

/// Why `rollout undo` has nothing to put back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UndoError {
    #[error("no rollout history found for deployment \"{deployment}\"")]
    NoHistory { deployment: String },
    #[error("unable to find the specified revision {revision} for deployment \"{deployment}\"")]
    RevisionNotFound { deployment: String, revision: i64 },
    #[error("revision {revision} of deployment \"{deployment}\" has no pod template")]
    NoTemplate { deployment: String, revision: i64 },
}

/// The template to put back for `rollout undo`: the set with revision `to` (None or Some(0), as
/// kubectl's --to-revision=0: the previous revision, i.e. the highest below the current set's). The
/// returned template has the pod-template-hash label removed, ready for spec.template.
pub fn undo_template(deployment: &Value, sets: &[Value], to: Option<i64>) -> Result<Value, UndoError> {
    let deployment_name = name(deployment).unwrap_or_default().to_string();
    let views: Vec<Set> = sets.iter().map(Set::read).filter(|s| s.revision > 0).collect();
    let revision = match to.filter(|&r| r != 0) {
        Some(r) => r,
        None => {
            let hash = template_hash(deployment.pointer("/spec/template").unwrap_or(&Value::Null));
            // A template not yet rolled out is the revision after the highest.
            let current = match views.iter().filter(|s| s.hash == hash).map(|s| s.revision).max() {
                Some(r) => r,
                None => views.iter().map(|s| s.revision).max().unwrap_or(0) + 1,
            };
            views
                .iter()
                .map(|s| s.revision)
                .filter(|&r| r < current)
                .max()
                .ok_or(UndoError::NoHistory { deployment: deployment_name.clone() })?
        }
    };
    let set = views
        .iter()
        .find(|s| s.revision == revision)
        .ok_or_else(|| UndoError::RevisionNotFound { deployment: deployment_name.clone(), revision })?;
    let mut template = set
        .object
        .pointer("/spec/template")
        .filter(|t| t.is_object())
        .cloned()
        .ok_or(UndoError::NoTemplate { deployment: deployment_name, revision })?;
    if let Some(labels) = template.pointer_mut("/metadata/labels").and_then(Value::as_object_mut) {
        labels.remove(TEMPLATE_HASH_LABEL);
    }
    Ok(template)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(image: &str) -> Value {
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "web", "image": image}]}})
    }

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "uid": "d-uid", "generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}, "template": template(image)},
        })
    }

    fn with_strategy(mut d: Value, strategy: Value) -> Value {
        d["spec"]["strategy"] = strategy;
        d
    }

    /// A ReplicaSet as the controller would have created it, with its pods settled.
    fn set(image: &str, revision: i64, replicas: i64, available: i64) -> Value {
        let mut s = plan(&deployment(replicas, image), &[]).create.unwrap();
        s["metadata"]["annotations"][REVISION_ANNOTATION] = json!(revision.to_string());
        s["status"] = json!({"replicas": replicas, "readyReplicas": available, "availableReplicas": available});
        s
    }

    fn set_name(image: &str) -> String {
        format!("web-{}", template_hash(&template(image)))
    }

    fn find<'a>(sets: &'a mut [Value], name: &str) -> &'a mut Value {
        sets.iter_mut().find(|s| s["metadata"]["name"] == name).unwrap()
    }

    /// The writes, as the actor would do them.
    fn apply(sets: &mut Vec<Value>, p: &RolloutPlan) {
        if let Some(c) = &p.create {
            let mut c = c.clone();
            c["status"] = json!({"replicas": 0, "readyReplicas": 0, "availableReplicas": 0});
            sets.push(c);
        }
        for (n, r) in &p.scale {
            find(sets, n)["spec"]["replicas"] = json!(r);
        }
        for (n, r) in &p.set_revision {
            find(sets, n)["metadata"]["annotations"][REVISION_ANNOTATION] = json!(r.to_string());
        }
        sets.retain(|s| !p.delete.iter().any(|n| s["metadata"]["name"] == n.as_str()));
    }

    /// The ReplicaSet controller: pods created or deleted at once, unavailable ones deleted first,
    /// new ones not available yet.
    fn settle(sets: &mut [Value]) {
        for s in sets {
            let spec = s["spec"]["replicas"].as_i64().unwrap();
            let available = s["status"]["availableReplicas"].as_i64().unwrap().min(spec);
            s["status"] = json!({"replicas": spec, "readyReplicas": available, "availableReplicas": available});
        }
    }

    /// Up to `n` pods per set become available.
    fn make_available(sets: &mut [Value], n: i64) {
        for s in sets {
            let spec = s["spec"]["replicas"].as_i64().unwrap();
            let available = s["status"]["availableReplicas"].as_i64().unwrap().saturating_add(n).min(spec);
            s["status"]["availableReplicas"] = json!(available);
            s["status"]["readyReplicas"] = json!(available);
        }
    }

    fn spec_of(sets: &[Value], name: &str) -> i64 {
        sets.iter().find(|s| s["metadata"]["name"] == name).map_or(-1, |s| s["spec"]["replicas"].as_i64().unwrap())
    }

    fn sum(sets: &[Value], pointer: &str) -> i64 {
        sets.iter().map(|s| s.pointer(pointer).and_then(Value::as_i64).unwrap()).sum()
    }

    /// Reconciles until the plan is empty, checking the bounds after each step's writes have taken
    /// effect but before any new pod is available; returns (new, old) spec.replicas per step.
    fn walk(d: &mut Value, sets: &mut Vec<Value>, max_total: i64, min_available: i64, per_step: i64) -> Vec<(i64, i64)> {
        let (new, old) = (set_name("v2"), set_name("v1"));
        let mut steps = Vec::new();
        for _ in 0..30 {
            let p = plan(d, sets);
            d["status"] = p.status.clone();
            if p.is_empty() {
                // Level-triggered: nothing more to do, and asking again changes nothing.
                assert_eq!(plan(d, sets), p);
                return steps;
            }
            apply(sets, &p);
            settle(sets);
            assert!(sum(sets, "/spec/replicas") <= max_total, "{sets:#?}");
            assert!(sum(sets, "/status/availableReplicas") >= min_available, "{sets:#?}");
            steps.push((spec_of(sets, &new), spec_of(sets, &old)));
            make_available(sets, per_step);
        }
        panic!("no convergence: {steps:?}");
    }

    #[test]
    fn hash_is_stable_across_key_order_and_changes_with_the_image() {
        let a: Value = serde_json::from_str(
            r#"{"metadata":{"labels":{"app":"web","tier":"fe"}},"spec":{"containers":[{"name":"web","image":"v1"}]}}"#,
        )
        .unwrap();
        let b: Value = serde_json::from_str(
            r#"{"spec":{"containers":[{"image":"v1","name":"web"}]},"metadata":{"labels":{"tier":"fe","app":"web"}}}"#,
        )
        .unwrap();
        let h = template_hash(&a);
        assert_eq!(h, template_hash(&b));
        assert_eq!(h.len(), 10);
        assert!(h.bytes().all(|c| HASH_ALPHABET.contains(&c)));
        // Pinned: a different hash after an upgrade would make every deployment roll.
        assert_eq!(template_hash(&template("nginx:1.25")), "hcgvpm2k9g");

        let mut c = a.clone();
        c["spec"]["containers"][0]["image"] = json!("v2");
        assert_ne!(template_hash(&c), h);

        let mut labelled = a.clone();
        labelled["metadata"]["labels"][TEMPLATE_HASH_LABEL] = json!(h.clone());
        assert_eq!(template_hash(&labelled), h);
    }

    #[test]
    fn fnv_matches_the_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let v: Value = serde_json::from_str(r#"{"b":[{"z":1,"a":2}],"a":{"y":1,"x":2}}"#).unwrap();
        assert_eq!(serde_json::to_string(&canonical(&v)).unwrap(), r#"{"a":{"x":2,"y":1},"b":[{"a":2,"z":1}]}"#);
    }

    #[test]
    fn fenceposts_round_like_kubernetes() {
        let d = |surge: Value, unavailable: Value, replicas: i64| {
            let d = with_strategy(
                deployment(replicas, "v1"),
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}),
            );
            let d = Deployment::read(&d);
            (d.max_surge, d.max_unavailable)
        };
        assert_eq!(d(json!("25%"), json!("25%"), 10), (3, 2));
        assert_eq!(d(json!("25%"), json!("25%"), 4), (1, 1));
        assert_eq!(d(json!("25%"), json!("25%"), 1), (1, 0));
        assert_eq!(d(json!(0), json!(0), 3), (0, 1));
        assert_eq!(d(json!(2), json!(5), 3), (2, 3));
        assert_eq!(d(json!("0%"), json!("10%"), 5), (0, 1));
        let defaults = deployment(4, "v1");
        let defaults = Deployment::read(&defaults);
        assert_eq!((defaults.max_surge, defaults.max_unavailable, defaults.history_limit), (1, 1, 10));
        let recreate = with_strategy(deployment(4, "v1"), json!({"type": "Recreate"}));
        let recreate = Deployment::read(&recreate);
        assert_eq!((recreate.max_surge, recreate.max_unavailable), (0, 0));
    }

    #[test]
    fn first_reconcile_creates_the_set_at_full_size() {
        let d = deployment(3, "nginx:1.25");
        let p = plan(&d, &[]);
        let hash = template_hash(&template("nginx:1.25"));
        let mut tpl = template("nginx:1.25");
        tpl["metadata"]["labels"][TEMPLATE_HASH_LABEL] = json!(hash);
        let expected = json!({
            "apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {
                "name": format!("web-{hash}"), "namespace": "default",
                "labels": {"app": "web", TEMPLATE_HASH_LABEL: hash},
                "annotations": {REVISION_ANNOTATION: "1"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d-uid",
                                     "controller": true, "blockOwnerDeletion": true}],
            },
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web", TEMPLATE_HASH_LABEL: hash}}, "template": tpl},
        });
        assert_eq!(p.create, Some(expected));
        assert!(p.scale.is_empty() && p.set_revision.is_empty() && p.delete.is_empty());
        // The created set is the new one: its template hashes like the deployment's.
        assert_eq!(template_hash(&p.create.as_ref().unwrap()["spec"]["template"]), hash);

        let mut sets = vec![];
        apply(&mut sets, &p);
        let again = plan(&d, &sets);
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn rolling_update_stays_within_surge_and_unavailability() {
        let mut d = deployment(4, "v2");
        let mut sets = vec![set("v1", 1, 4, 4)];
        let steps = walk(&mut d, &mut sets, 5, 3, i64::MAX);
        assert_eq!(steps, vec![(1, 3), (2, 3), (2, 1), (4, 1), (4, 0)]);
        assert_eq!(revision(find(&mut sets, &set_name("v2"))), Some(2));
        assert_eq!(rollout_status(&d), (true, "deployment \"web\" successfully rolled out".to_string()));
    }

    #[test]
    fn rolling_update_with_slow_pods_still_converges() {
        let mut d = deployment(4, "v2");
        let mut sets = vec![set("v1", 1, 4, 4)];
        let steps = walk(&mut d, &mut sets, 5, 3, 1);
        assert_eq!(steps.last(), Some(&(4, 0)));
        assert!(steps.len() <= 12, "{steps:?}");
    }

    #[test]
    fn max_unavailable_zero_never_dips_below_replicas() {
        let strategy = json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
        let mut d = with_strategy(deployment(3, "v2"), strategy);
        let mut sets = vec![set("v1", 1, 3, 3)];
        let steps = walk(&mut d, &mut sets, 4, 3, i64::MAX);
        assert_eq!(steps, vec![(1, 3), (1, 2), (2, 2), (2, 1), (3, 1), (3, 0)]);
    }

    #[test]
    fn unhealthy_old_pods_go_first_and_oldest_sets_shrink_first() {
        // Mid-rollout from two earlier templates; the oldest set has two pods that never came up.
        let d = deployment(4, "v3");
        let sets = vec![set("v1", 1, 2, 0), set("v2", 2, 2, 2), set("v3", 3, 1, 1)];
        let p = plan(&d, &sets);
        // New set at 1, all pods 5 = replicas + surge: no growth; maxScaledDown = 5 - 3 - 0 = 2,
        // spent on v1's two unavailable pods; then available 3 - 3 leaves nothing for v2.
        assert_eq!(p.scale, vec![(set_name("v1"), 0)]);
        assert!(p.create.is_none());

        let sets = vec![set("v1", 1, 1, 1), set("v2", 2, 3, 3), set("v3", 3, 1, 1)];
        // All pods 5, available 5, minAvailable 3: two go, the oldest set's first.
        assert_eq!(plan(&d, &sets).scale, vec![(set_name("v1"), 0), (set_name("v2"), 2)]);
    }

    #[test]
    fn scaling_a_finished_rollout_follows_replicas_directly() {
        let sets = vec![set("v1", 1, 0, 0), set("v2", 2, 4, 4)];
        assert_eq!(plan(&deployment(10, "v2"), &sets).scale, vec![(set_name("v2"), 10)]);
        assert_eq!(plan(&deployment(1, "v2"), &sets).scale, vec![(set_name("v2"), 1)]);
        assert!(plan(&deployment(4, "v2"), &sets).is_empty());
    }

    #[test]
    fn recreate_stops_everything_before_starting_the_new_set() {
        let d = with_strategy(deployment(3, "v2"), json!({"type": "Recreate"}));
        let mut sets = vec![set("v1", 1, 3, 3)];

        let p = plan(&d, &sets);
        assert_eq!(p.scale, vec![(set_name("v1"), 0)]);
        assert!(p.create.is_none());
        apply(&mut sets, &p);

        // Pods still terminating: wait.
        sets[0]["status"] = json!({"replicas": 2, "readyReplicas": 0, "availableReplicas": 0});
        assert!(plan(&d, &sets).is_empty());

        sets[0]["status"] = json!({"replicas": 0, "readyReplicas": 0, "availableReplicas": 0});
        let p = plan(&d, &sets);
        let created = p.create.clone().unwrap();
        assert_eq!(created["spec"]["replicas"], 3);
        assert_eq!(created["metadata"]["name"], set_name("v2").as_str());
        assert_eq!(created["metadata"]["annotations"][REVISION_ANNOTATION], "2");
        assert!(p.scale.is_empty());
        apply(&mut sets, &p);
        assert!(plan(&d, &sets).is_empty());
    }

    #[test]
    fn paused_does_nothing_but_status() {
        let mut d = deployment(3, "v2");
        d["spec"]["paused"] = json!(true);
        let sets = vec![set("v1", 1, 3, 3)];
        let p = plan(&d, &sets);
        assert!(p.is_empty(), "{p:?}");
        assert_eq!(
            p.status["conditions"][1],
            json!({"type": "Progressing", "status": "Unknown", "reason": "DeploymentPaused", "message": "Deployment is paused"})
        );
        assert_eq!(p.status["replicas"], 3);
        assert_eq!(p.status["updatedReplicas"], 0);
    }

    #[test]
    fn rollback_reuses_the_old_set_and_bumps_its_revision() {
        let mut d = deployment(3, "v1");
        let mut sets = vec![set("v1", 1, 0, 0), set("v2", 2, 3, 3)];
        let p = plan(&d, &sets);
        assert!(p.create.is_none());
        assert_eq!(p.set_revision, vec![(set_name("v1"), 3)]);
        // Surge ceil(25% of 3) = 1.
        assert_eq!(p.scale, vec![(set_name("v1"), 1)]);
        apply(&mut sets, &p);
        settle(&mut sets);
        make_available(&mut sets, i64::MAX);

        for _ in 0..10 {
            let p = plan(&d, &sets);
            d["status"] = p.status.clone();
            assert!(p.set_revision.is_empty());
            apply(&mut sets, &p);
            settle(&mut sets);
            make_available(&mut sets, i64::MAX);
        }
        assert_eq!((spec_of(&sets, &set_name("v1")), spec_of(&sets, &set_name("v2"))), (3, 0));
        assert_eq!(revision(find(&mut sets, &set_name("v1"))), Some(3));
        assert_eq!(sets.len(), 2);
        assert!(plan(&d, &sets).is_empty());
    }

    #[test]
    fn history_limit_deletes_the_oldest_empty_sets() {
        let mut d = deployment(2, "v5");
        d["spec"]["revisionHistoryLimit"] = json!(1);
        let mut draining = set("v4", 4, 0, 0);
        draining["status"]["replicas"] = json!(1);
        // Given out of order: the plan goes by revision.
        let sets = vec![set("v3", 3, 0, 0), set("v5", 5, 2, 2), set("v1", 1, 0, 0), draining, set("v2", 2, 0, 0)];
        let p = plan(&d, &sets);
        // v1, v2, v3 are history (v4 still has a pod); one may stay.
        assert_eq!(p.delete, vec![set_name("v1"), set_name("v2")]);
        assert!(p.create.is_none() && p.scale.is_empty() && p.set_revision.is_empty());

        d["spec"]["revisionHistoryLimit"] = json!(3);
        assert!(plan(&d, &sets).is_empty());
    }

    #[test]
    fn status_conditions_follow_the_rollout() {
        let d = deployment(3, "v1");
        let p = plan(&d, &[]);
        let name = set_name("v1");
        assert_eq!(
            p.status,
            json!({
                "observedGeneration": 1, "replicas": 0, "updatedReplicas": 0, "readyReplicas": 0,
                "availableReplicas": 0, "unavailableReplicas": 3,
                "conditions": [
                    {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
                     "message": "Deployment does not have minimum availability."},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetCreated",
                     "message": format!("Created new replica set \"{name}\"")},
                ],
            })
        );

        let mut sets = vec![set("v1", 1, 3, 1)];
        let p = plan(&d, &sets);
        assert_eq!(p.status["conditions"][1]["reason"], "ReplicaSetUpdated");
        assert_eq!(p.status["conditions"][1]["message"], format!("ReplicaSet \"{name}\" is progressing."));
        assert_eq!((&p.status["availableReplicas"], &p.status["unavailableReplicas"]), (&json!(1), &json!(2)));

        make_available(&mut sets, 3);
        let mut d = d;
        d["status"] = json!({"conditions": [
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
             "message": "Deployment does not have minimum availability.", "lastTransitionTime": "t0", "lastUpdateTime": "t0"},
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
             "message": format!("ReplicaSet \"{name}\" is progressing."), "lastTransitionTime": "t1", "lastUpdateTime": "t1"},
        ]});
        let p = plan(&d, &sets);
        assert_eq!(
            p.status["conditions"],
            json!([
                {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "Deployment has minimum availability."},
                {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
                 "message": format!("ReplicaSet \"{name}\" has successfully progressed."), "lastTransitionTime": "t1"},
            ])
        );
        d["status"] = p.status;
        assert_eq!(rollout_status(&d), (true, "deployment \"web\" successfully rolled out".to_string()));
    }

    #[test]
    fn rollout_status_reads_like_kubectl() {
        let status = |generation: i64, observed: i64, replicas: i64, updated: i64, available: i64| {
            let mut d = deployment(3, "v1");
            d["metadata"]["generation"] = json!(generation);
            d["status"] =
                json!({"observedGeneration": observed, "replicas": replicas, "updatedReplicas": updated, "availableReplicas": available});
            rollout_status(&d)
        };
        let waiting = |m: &str| (false, format!("Waiting for deployment \"web\" rollout to finish: {m}..."));
        assert_eq!(status(2, 1, 3, 3, 3), (false, "Waiting for deployment spec update to be observed...".to_string()));
        assert_eq!(status(2, 2, 4, 1, 1), waiting("1 out of 3 new replicas have been updated"));
        assert_eq!(status(2, 2, 5, 3, 3), waiting("2 old replicas are pending termination"));
        assert_eq!(status(2, 2, 3, 3, 1), waiting("1 of 3 updated replicas are available"));
        assert_eq!(status(2, 2, 3, 3, 3), (true, "deployment \"web\" successfully rolled out".to_string()));
        assert!(status(2, 3, 3, 3, 3).0);
    }

    #[test]
    fn undo_finds_the_previous_or_a_given_revision() {
        let d = deployment(3, "v3");
        let sets = vec![set("v1", 1, 0, 0), set("v3", 3, 3, 3), set("v2", 2, 0, 0)];
        assert_eq!(undo_template(&d, &sets, None), Ok(template("v2")));
        assert_eq!(undo_template(&d, &sets, Some(0)), Ok(template("v2")));
        assert_eq!(undo_template(&d, &sets, Some(1)), Ok(template("v1")));
        // Already rolled back to v1 (now revision 4): the previous is v3.
        let rolled_back = vec![set("v1", 4, 3, 3), set("v3", 3, 0, 0), set("v2", 2, 0, 0)];
        assert_eq!(undo_template(&deployment(3, "v1"), &rolled_back, None), Ok(template("v3")));
        // A template not rolled out yet: the previous is the newest set.
        assert_eq!(undo_template(&deployment(3, "v4"), &sets, None), Ok(template("v3")));
    }

    #[test]
    fn undo_errors() {
        let d = deployment(3, "v1");
        let only = vec![set("v1", 1, 3, 3)];
        let err = undo_template(&d, &only, None).unwrap_err();
        assert_eq!(err, UndoError::NoHistory { deployment: "web".into() });
        assert_eq!(err.to_string(), "no rollout history found for deployment \"web\"");
        let err = undo_template(&d, &only, Some(7)).unwrap_err();
        assert_eq!(err, UndoError::RevisionNotFound { deployment: "web".into(), revision: 7 });
        assert_eq!(err.to_string(), "unable to find the specified revision 7 for deployment \"web\"");
        assert_eq!(undo_template(&d, &[], None), Err(UndoError::NoHistory { deployment: "web".into() }));
    }
}
