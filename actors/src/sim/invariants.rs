//! What must hold in every run. Safety is checked after every step (a
//! pod bound to one node for life and run by at most one agent, no node
//! over-committed, Deployments within their surge and unavailability
//! outside fault windows; the failure detector's check is made where it
//! decides). Liveness is checked once, after a quiet period at the end:
//! the cluster must have converged to what was declared.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::agent::SimAgent;
use super::store::MemStore;
use super::workload::Workload;
use crate::clock::Mono;
use crate::leader::cache::Kind;
use crate::leader::placement::{node_info, pod_info};
use crate::model::kinds::node::node_ready;
use crate::model::object;

/// After a replica change, how long a Deployment has to get there before
/// its bounds are checked.
pub const RESIZE_SETTLE: Mono = Mono::from_secs(20);
/// After the last fault, how long before unavailability is checked.
pub const FAULT_SETTLE: Mono = Mono::from_secs(20);

/// The first broken invariant of a run.
#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
    pub step: u64,
    pub at: Mono,
    /// The last lines of the trace before it.
    pub tail: Vec<String>,
}

impl Violation {
    pub fn new(invariant: &'static str, detail: String) -> Violation {
        Violation { invariant, detail, step: 0, at: Mono::ZERO, tail: Vec::new() }
    }
}

fn active(p: &Value) -> bool {
    let phase = p.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
    object::meta_str(p, "deletionTimestamp").is_none() && phase != "Succeeded" && phase != "Failed"
}

fn ready(p: &Value) -> bool {
    p.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn key(o: &Value) -> String {
    format!("{}/{}", object::namespace(o).unwrap_or("default"), object::name(o).unwrap_or(""))
}

/// Pods by the Deployment (namespace/name) that owns their ReplicaSet.
fn pods_by_deployment<'a>(pods: &[&'a Value], sets: &[&Value]) -> BTreeMap<String, Vec<&'a Value>> {
    let mut owner_of_set: BTreeMap<String, String> = BTreeMap::new();
    for rs in sets {
        if let (Some(uid), Some(d)) = (object::uid(rs), object::controller_ref(rs).and_then(|r| r.get("name")).and_then(Value::as_str)) {
            owner_of_set.insert(uid.to_string(), format!("{}/{d}", object::namespace(rs).unwrap_or("default")));
        }
    }
    let mut out: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for p in pods {
        let owner = object::controller_ref(p).and_then(|r| r.get("uid")).and_then(Value::as_str);
        if let Some(d) = owner.and_then(|u| owner_of_set.get(u)) {
            out.entry(d.clone()).or_default().push(*p);
        }
    }
    out
}

/// What the checks need of a pod, kept up to date from the change log so
/// that a check after every step costs integers, not JSON.
#[derive(Debug, Clone)]
pub struct PodSummary {
    pub node: Option<String>,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    /// The Deployment (namespace/name) owning its ReplicaSet.
    pub deployment: Option<String>,
    /// Not terminating and not ended.
    pub active: bool,
    pub ready: bool,
    /// Holds its node's resources (bound and not ended).
    pub counted: bool,
}

impl PodSummary {
    /// `set_owners` gives the Deployment of each ReplicaSet by uid (a
    /// ReplicaSet always exists before its pods).
    pub fn of(p: &Value, set_owners: &BTreeMap<String, String>) -> PodSummary {
        let phase = p.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending");
        let info = pod_info(p);
        let node = p.pointer("/spec/nodeName").and_then(Value::as_str).map(String::from);
        PodSummary {
            counted: node.is_some() && phase != "Succeeded" && phase != "Failed",
            node,
            cpu_millis: info.cpu_millis,
            memory_bytes: info.memory_bytes,
            deployment: object::controller_ref(p)
                .and_then(|r| r.get("uid"))
                .and_then(Value::as_str)
                .and_then(|u| set_owners.get(u))
                .cloned(),
            active: active(p),
            ready: ready(p),
        }
    }
}

/// Checked after every step.
/// What the checks read of the world, lent for one check.
pub struct Observed<'a> {
    pub now: Mono,
    /// The end of the latest fault.
    pub faults_until: Mono,
    pub store: &'a MemStore,
    pub agents: &'a [SimAgent],
    /// Pods seen bound to a second node: (uid, first, second).
    pub rebinds: &'a [(String, String, String)],
    pub node_allocatable: &'a BTreeMap<String, (i64, i64, i64)>,
    pub tallies: &'a Tallies,
    pub workloads: &'a BTreeMap<String, Workload>,
    pub leftovers: &'a [(Kind, String, String)],
}

pub fn safety(w: &Observed) -> Result<(), Violation> {
    if let Some((uid, first, then)) = w.rebinds.first() {
        return Err(Violation::new("a pod is bound to one node for life", format!("pod uid {uid} was bound to {first}, then to {then}")));
    }
    let mut runner: BTreeMap<&str, &str> = BTreeMap::new();
    for a in w.agents {
        for uid in a.containers.keys() {
            if let Some(other) = runner.insert(uid, &a.name) {
                return Err(Violation::new("a pod is run by at most one agent", format!("pod uid {uid} runs on {other} and {}", a.name)));
            }
        }
    }
    let (load, by_deployment) = (&w.tallies.load, &w.tallies.by_deployment);
    for (node, (cpu, mem, count)) in load {
        let Some(&(acpu, amem, apods)) = w.node_allocatable.get(node) else { continue };
        if *cpu > acpu || *mem > amem || *count > apods {
            return Err(Violation::new(
                "no node is over-committed",
                format!("{node} holds {cpu}m CPU, {mem} bytes, {count} pods of {acpu}m, {amem}, {apods}"),
            ));
        }
    }
    let now = w.now;
    let calm = now >= w.faults_until + FAULT_SETTLE;
    for (k, wl) in w.workloads {
        if now < wl.resized_at + RESIZE_SETTLE {
            continue;
        }
        let (up, ready_count) = by_deployment.get(k).copied().unwrap_or_default();
        if up > wl.replicas + wl.surge {
            return Err(Violation::new(
                "a Deployment never runs more than replicas + maxSurge pods",
                format!("{k}: {up} pods for {} replicas with maxSurge {}", wl.replicas, wl.surge),
            ));
        }
        if calm && ready_count < wl.replicas - wl.unavailable {
            return Err(Violation::new(
                "a Deployment keeps replicas - maxUnavailable pods ready outside fault windows",
                format!("{k}: {ready_count} ready for {} replicas with maxUnavailable {}", wl.replicas, wl.unavailable),
            ));
        }
    }
    Ok(())
}

/// The pods added up: per node, CPU, memory and pods held; per
/// Deployment, active and ready pods. Kept as pods change (a pod's old
/// summary taken off, its new one put on), so a check after every step
/// reads sums instead of adding up every pod again.
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Tallies {
    pub load: BTreeMap<String, (i64, i64, i64)>,
    pub by_deployment: BTreeMap<String, (i64, i64)>,
}

impl Tallies {
    /// Counts `p` in (`sign` 1) or out (`sign` -1).
    pub fn count(&mut self, p: &PodSummary, sign: i64) {
        if let (true, Some(node)) = (p.counted, &p.node) {
            let l = self.load.entry(node.clone()).or_default();
            l.0 += sign * p.cpu_millis;
            l.1 += sign * p.memory_bytes;
            l.2 += sign;
        }
        if let Some(d) = &p.deployment {
            let c = self.by_deployment.entry(d.clone()).or_default();
            c.0 += sign * i64::from(p.active);
            c.1 += sign * i64::from(p.active && p.ready);
        }
    }

    /// Whether these sums are those of `pods` (entries at zero aside): the
    /// harness checks its own bookkeeping with this now and then.
    pub fn agree_with<'a>(&self, pods: impl IntoIterator<Item = &'a PodSummary>) -> bool {
        let fresh = Tallies::of(pods);
        let load = self.load.iter().filter(|(_, v)| **v != (0, 0, 0));
        let deployments = self.by_deployment.iter().filter(|(_, v)| **v != (0, 0));
        load.eq(fresh.load.iter().filter(|(_, v)| **v != (0, 0, 0)))
            && deployments.eq(fresh.by_deployment.iter().filter(|(_, v)| **v != (0, 0)))
    }

    /// Adds up `pods` from nothing (what the kept sums must equal).
    pub fn of<'a>(pods: impl IntoIterator<Item = &'a PodSummary>) -> Tallies {
        let mut t = Tallies::default();
        for p in pods {
            t.count(p, 1);
        }
        t
    }
}

/// The allocatable CPU (millicores), memory (bytes) and pods of a node.
pub fn allocatable(node: &Value) -> (i64, i64, i64) {
    let info = node_info(node);
    (info.allocatable_cpu_millis, info.allocatable_memory_bytes, info.allocatable_pods)
}

/// Checked once the cluster has been left alone for the quiet period.
pub fn liveness(w: &Observed) -> Result<(), Violation> {
    let store = w.store;
    let fail = |what: &'static str, detail: String| Err(Violation::new(what, detail));
    for n in store.list(Kind::Nodes) {
        if !node_ready(&n) {
            return fail("every node whose agent runs is Ready after the quiet period", key(&n));
        }
    }
    let pods_owned = store.list(Kind::Pods);
    let sets_owned = store.list(Kind::ReplicaSets);
    let pods: Vec<&Value> = pods_owned.iter().collect();
    let sets: Vec<&Value> = sets_owned.iter().collect();
    if let Some(p) = pods.iter().find(|p| object::meta_str(p, "deletionTimestamp").is_some()) {
        return fail("nothing is left Terminating", format!("pod {}", key(p)));
    }
    if let Some(p) = pods.iter().find(|p| p.pointer("/spec/nodeName").is_none()) {
        return fail("no pod is left Pending when there is room", format!("pod {}", key(p)));
    }
    if let Some((kind, ns, name)) = w.leftovers.first() {
        return fail("a client's deletes are taken once the store is calm", format!("{} {ns}/{name}", kind.plural()));
    }
    for ep in store.list(Kind::Endpoints) {
        let (ns, name) = (object::namespace(&ep).unwrap_or("default"), object::name(&ep).unwrap_or(""));
        if store.get(Kind::Services, Some(ns), name).is_none() {
            return fail("the Endpoints of a deleted Service are removed", key(&ep));
        }
    }
    let by_deployment = pods_by_deployment(&pods, &sets);
    for (k, wl) in w.workloads {
        let pods = by_deployment.get(k).map(Vec::as_slice).unwrap_or_default();
        let image = format!("app:{}", wl.image);
        let current = pods
            .iter()
            .filter(|p| ready(p) && p.pointer("/spec/containers/0/image").and_then(Value::as_str) == Some(image.as_str()))
            .count() as i64;
        if current != wl.replicas || pods.len() as i64 != wl.replicas {
            return fail(
                "replica counts converge after the last fault",
                format!("{k}: {} pods, {current} ready on {image}, for {} replicas", pods.len(), wl.replicas),
            );
        }
        let want: BTreeSet<String> =
            pods.iter().filter_map(|p| p.pointer("/status/podIP").and_then(Value::as_str).map(String::from)).collect();
        let ep = store.get(Kind::Endpoints, Some(&wl.namespace), &wl.name);
        let have: BTreeSet<String> = ep
            .iter()
            .flat_map(|e| e.get("subsets").and_then(Value::as_array).cloned().unwrap_or_default())
            .flat_map(|s| s.get("addresses").and_then(Value::as_array).cloned().unwrap_or_default())
            .filter_map(|a| a.get("ip").and_then(Value::as_str).map(String::from))
            .collect();
        if want != have {
            return fail("Endpoints converge after the last fault", format!("{k}: endpoints {have:?}, ready pods {want:?}"));
        }
    }
    let stored: BTreeMap<String, String> = pods
        .iter()
        .filter_map(|p| Some((object::uid(p)?.to_string(), p.pointer("/spec/nodeName").and_then(Value::as_str)?.to_string())))
        .collect();
    for a in w.agents {
        for (uid, c) in &a.containers {
            if stored.get(uid) != Some(&a.name) {
                return fail(
                    "agents run exactly the pods bound to them",
                    format!("{} runs {}/{} ({uid}), not bound to it", a.name, c.namespace, c.name),
                );
            }
        }
    }
    for (uid, node) in &stored {
        if !w.agents.iter().any(|a| &a.name == node && a.containers.contains_key(uid)) {
            return fail("agents run exactly the pods bound to them", format!("pod uid {uid} bound to {node} runs nowhere"));
        }
    }
    Ok(())
}
