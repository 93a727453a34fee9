//! Garbage collection of objects whose owner is gone: pods whose
//! ReplicaSet and ReplicaSets whose Deployment no longer exist. Deleting
//! an owner through the API already removes its dependents; this catches
//! what a crash in the middle of that left behind. An object must look
//! orphaned on two resyncs in a row before it is deleted, so an owner the
//! cache has not listed yet never costs its pods.

use std::collections::HashSet;

use serde_json::Value;

use super::cache::{CacheState, Kind};
use super::controller::{ControllerError, LeaderContext, PassOutcome, Reconciler};
use crate::model::object;
use crate::model::resources::lookup;
use crate::registry::{Propagation, RegistryError};

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

#[async_trait::async_trait]
impl Reconciler for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    async fn reconcile(&mut self, ctx: &LeaderContext, resync: bool) -> Result<PassOutcome, ControllerError> {
        if !resync {
            return Ok(PassOutcome::default());
        }
        let found = orphans(&ctx.cache.read());
        let confirmed: Vec<(Kind, String)> = found.intersection(&self.suspects).cloned().collect();
        self.suspects = found;
        for (kind, key) in confirmed {
            let res = lookup(kind.plural()).expect("cached kinds are served");
            let (ns, name) = key.split_once('/').unwrap_or(("default", key.as_str()));
            match ctx.registry.delete(res, Some(ns), name, None, Propagation::Background).await {
                Ok(_) => tracing::info!(kind = kind.plural(), object = %key, "deleted an object whose owner is gone"),
                Err(RegistryError::NotFound { .. } | RegistryError::Conflict { .. }) => {}
                Err(e) => return Err(ControllerError::Registry { controller: "garbage-collector", source: e }),
            }
        }
        Ok(PassOutcome::default())
    }
}
