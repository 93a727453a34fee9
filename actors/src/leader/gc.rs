//! Garbage collection of objects whose owner is gone: pods whose
//! ReplicaSet and ReplicaSets whose Deployment no longer exist. Deleting
//! an owner through the API already removes its dependents; this catches
//! what a crash in the middle of that left behind. An object must look
//! orphaned on two resyncs in a row before it is deleted, so an owner the
//! cache has not listed yet never costs its pods.

use std::collections::{BTreeSet, HashSet};

use serde_json::Value;

use super::cache::{CacheState, Kind};
use super::command::{Command, Decision};
use super::controller::{Reconciler, StepInput};
use crate::model::object;

#[derive(Default)]
pub struct GarbageCollector {
    suspects: HashSet<(Kind, String)>,
}

pub fn make() -> Box<dyn Reconciler> {
    Box::<GarbageCollector>::default()
}

fn owner_gone(s: &CacheState, obj_owner: Option<&Value>) -> bool {
    let Some(owner) = obj_owner else { return false };
    let kind = owner.get("kind").and_then(Value::as_str).unwrap_or_default();
    let uid = owner.get("uid").and_then(Value::as_str).unwrap_or_default();
    !s.owner_exists(kind, uid)
}

/// The objects whose controlling owner is missing from the cache.
pub fn orphans(s: &CacheState) -> HashSet<(Kind, String)> {
    let mut out = HashSet::new();
    for (owner_uid, keys) in &s.pods_by_owner {
        if s.owner_exists("ReplicaSet", owner_uid) {
            continue;
        }
        for (key, pod) in keys.iter().filter_map(|k| s.pods.get(k).map(|p| (k, p))) {
            if pod.owner_kind.as_deref() == Some("ReplicaSet") {
                out.insert((Kind::Pods, key.clone()));
            }
        }
    }
    for (key, rs) in &s.replicasets {
        if owner_gone(s, object::controller_ref(rs)) {
            out.insert((Kind::ReplicaSets, key.clone()));
        }
    }
    out
}

impl Reconciler for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    fn step(&mut self, input: StepInput<'_>) -> Decision {
        if !input.resync {
            return Decision::default();
        }
        let found = orphans(input.cache);
        let confirmed: BTreeSet<&(Kind, String)> = found.intersection(&self.suspects).collect();
        let commands = confirmed
            .into_iter()
            .map(|(kind, key)| {
                tracing::info!(kind = kind.plural(), object = %key, "deleting an object whose owner is gone");
                let (ns, name) = key.split_once('/').unwrap_or(("default", key.as_str()));
                Command::Delete { kind: *kind, namespace: Some(ns.to_string()), name: name.to_string() }
            })
            .collect();
        self.suspects = found;
        Decision { commands, more: false }
    }
}
