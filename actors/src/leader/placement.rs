//! Where pods go: the scheduler's pure core, kept free of I/O so every
//! decision can be tested by asserting exact outputs.
//!
//! A [`ClusterView`] holds the nodes and what is already placed on them;
//! [`ClusterView::place_batch`] filters nodes (readiness, selector, taints,
//! capacity, host ports), scores the feasible ones (spreading first, then
//! balance) and accounts each bind at once, so a batch never over-commits.
//! As kube-scheduler does, only a share of a large cluster is scored per pod.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use crate::model::object::{controller_ref, name, namespace};
use crate::model::quantity::Quantity;

/// Pods a node takes when its status does not say (the kubelet's default).
const DEFAULT_MAX_PODS: i64 = 110;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub fn parse(s: &str) -> Option<TaintEffect> {
        match s {
            "NoSchedule" => Some(TaintEffect::NoSchedule),
            "PreferNoSchedule" => Some(TaintEffect::PreferNoSchedule),
            "NoExecute" => Some(TaintEffect::NoExecute),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Taint {
    pub key: String,
    pub value: String,
    pub effect: TaintEffect,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toleration {
    /// Empty matches every key, but only with `exists`.
    pub key: String,
    /// Operator `Exists` (any value) rather than `Equal`.
    pub exists: bool,
    pub value: String,
    /// `None` matches every effect.
    pub effect: Option<TaintEffect>,
}

impl Toleration {
    pub fn tolerates(&self, taint: &Taint) -> bool {
        if self.effect.is_some_and(|e| e != taint.effect) {
            return false;
        }
        if self.exists {
            self.key.is_empty() || self.key == taint.key
        } else {
            // An empty key with `Equal` is invalid in Kubernetes; reading it
            // literally keeps it from tolerating everything by accident.
            self.key == taint.key && self.value == taint.value
        }
    }
}

/// Whether any of `tolerations` tolerates `taint`.
pub fn tolerated(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| t.tolerates(taint))
}

/// A node as the scheduler sees it, with what is already placed on it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeInfo {
    pub name: String,
    /// Ready condition status "True".
    pub ready: bool,
    /// `spec.unschedulable`.
    pub unschedulable: bool,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub allocatable_cpu_millis: i64,
    pub allocatable_memory_bytes: i64,
    pub allocatable_pods: i64,
    pub requested_cpu_millis: i64,
    pub requested_memory_bytes: i64,
    pub pods: i64,
    /// (protocol, port) in use.
    pub host_ports: BTreeSet<(String, u16)>,
}

impl NodeInfo {
    /// A node known only by name: holds accounting for pods bound to a node
    /// that has not registered (or has gone), and admits nothing.
    fn unregistered(name: &str) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            ready: false,
            unschedulable: false,
            labels: BTreeMap::new(),
            taints: Vec::new(),
            allocatable_cpu_millis: 0,
            allocatable_memory_bytes: 0,
            allocatable_pods: 0,
            requested_cpu_millis: 0,
            requested_memory_bytes: 0,
            pods: 0,
            host_ports: BTreeSet::new(),
        }
    }

    /// Accounts a pod placed on this node.
    pub fn add(&mut self, pod: &PodInfo) {
        self.requested_cpu_millis = self.requested_cpu_millis.saturating_add(pod.cpu_millis);
        self.requested_memory_bytes = self.requested_memory_bytes.saturating_add(pod.memory_bytes);
        self.pods = self.pods.saturating_add(1);
        self.host_ports.extend(pod.host_ports.iter().cloned());
    }

    /// Forgets a pod placed on this node; never goes below zero, so a
    /// release the view never saw accounted cannot make room that is not there.
    pub fn remove(&mut self, pod: &PodInfo) {
        self.requested_cpu_millis = self.requested_cpu_millis.saturating_sub(pod.cpu_millis).max(0);
        self.requested_memory_bytes = self.requested_memory_bytes.saturating_sub(pod.memory_bytes).max(0);
        self.pods = self.pods.saturating_sub(1).max(0);
        for port in &pod.host_ports {
            self.host_ports.remove(port);
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    /// Controller ownerReference uid, for spreading.
    pub owner_uid: Option<String>,
    /// Sum over containers of requests (a limit stands in for an absent
    /// request, as in Kubernetes); initContainers are ignored.
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    /// (protocol, hostPort) of containers' ports with a hostPort.
    pub host_ports: Vec<(String, u16)>,
    pub node_selector: BTreeMap<String, String>,
    pub tolerations: Vec<Toleration>,
}

fn str_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string()))).collect())
        .unwrap_or_default()
}

fn str_field(v: &Value, field: &str) -> String {
    v.get(field).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// A quantity field, or `None` when absent or unreadable (admission has
/// validated stored objects, so unreadable means absent in practice).
fn quantity(v: Option<&Value>) -> Option<Quantity> {
    match v? {
        Value::String(s) => Quantity::parse(s).ok(),
        Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
        _ => None,
    }
}

pub fn node_info(node: &Value) -> NodeInfo {
    let spec = node.get("spec");
    let status = node.get("status");
    let allocatable = status.and_then(|s| s.get("allocatable"));
    let ready = status
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready")))
        .is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"));
    let taints = spec
        .and_then(|s| s.get("taints"))
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .map(|t| Taint {
                    key: str_field(t, "key"),
                    value: str_field(t, "value"),
                    // An effect we do not know keeps pods off rather than
                    // letting them through unnoticed.
                    effect: t.get("effect").and_then(Value::as_str).and_then(TaintEffect::parse).unwrap_or(TaintEffect::NoSchedule),
                })
                .collect()
        })
        .unwrap_or_default();
    let alloc = |key: &str| quantity(allocatable.and_then(|a| a.get(key)));
    NodeInfo {
        name: name(node).unwrap_or_default().to_string(),
        ready,
        unschedulable: spec.and_then(|s| s.get("unschedulable")).and_then(Value::as_bool).unwrap_or(false),
        labels: str_map(node.get("metadata").and_then(|m| m.get("labels"))),
        taints,
        allocatable_cpu_millis: alloc("cpu").map_or(0, |q| q.millis()),
        allocatable_memory_bytes: alloc("memory").map_or(0, |q| q.value()),
        allocatable_pods: alloc("pods").map_or(DEFAULT_MAX_PODS, |q| q.value()),
        requested_cpu_millis: 0,
        requested_memory_bytes: 0,
        pods: 0,
        host_ports: BTreeSet::new(),
    }
}

pub fn pod_info(pod: &Value) -> PodInfo {
    let spec = pod.get("spec");
    let containers = spec.and_then(|s| s.get("containers")).and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let (mut cpu_millis, mut memory_bytes) = (0i64, 0i64);
    let mut host_ports = Vec::new();
    for c in containers {
        let resources = c.get("resources");
        let amount = |key: &str| {
            let of = |kind: &str| quantity(resources.and_then(|r| r.get(kind)).and_then(|m| m.get(key)));
            of("requests").or_else(|| of("limits"))
        };
        cpu_millis = cpu_millis.saturating_add(amount("cpu").map_or(0, |q| q.millis()));
        memory_bytes = memory_bytes.saturating_add(amount("memory").map_or(0, |q| q.value()));
        for p in c.get("ports").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default() {
            let Some(port) = p.get("hostPort").and_then(Value::as_u64).and_then(|n| u16::try_from(n).ok()).filter(|&n| n > 0) else {
                continue;
            };
            let protocol = p.get("protocol").and_then(Value::as_str).filter(|s| !s.is_empty()).unwrap_or("TCP");
            host_ports.push((protocol.to_string(), port));
        }
    }
    let tolerations = spec
        .and_then(|s| s.get("tolerations"))
        .and_then(Value::as_array)
        .map(|ts| {
            ts.iter()
                .map(|t| Toleration {
                    key: str_field(t, "key"),
                    exists: t.get("operator").and_then(Value::as_str) == Some("Exists"),
                    value: str_field(t, "value"),
                    effect: t.get("effect").and_then(Value::as_str).and_then(TaintEffect::parse),
                })
                .collect()
        })
        .unwrap_or_default();
    PodInfo {
        namespace: namespace(pod).unwrap_or("default").to_string(),
        name: name(pod).unwrap_or_default().to_string(),
        owner_uid: controller_ref(pod).and_then(|r| r.get("uid")).and_then(Value::as_str).map(String::from),
        cpu_millis,
        memory_bytes,
        host_ports,
        node_selector: str_map(spec.and_then(|s| s.get("nodeSelector"))),
        tolerations,
    }
}

/// Why a node cannot take a pod, in the order the filters run: a node is
/// counted under the first one it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Unfit {
    NotReady,
    Unschedulable,
    NodeSelector,
    Taint,
    Cpu,
    Memory,
    Pods,
    HostPort,
}

impl Unfit {
    const ALL: [Unfit; 8] =
        [Unfit::NotReady, Unfit::Unschedulable, Unfit::NodeSelector, Unfit::Taint, Unfit::Cpu, Unfit::Memory, Unfit::Pods, Unfit::HostPort];

    pub fn words(self) -> &'static str {
        match self {
            Unfit::NotReady => "not ready",
            Unfit::Unschedulable => "unschedulable",
            Unfit::NodeSelector => "node selector mismatch",
            Unfit::Taint => "untolerated taint",
            Unfit::Cpu => "insufficient cpu",
            Unfit::Memory => "insufficient memory",
            Unfit::Pods => "too many pods",
            Unfit::HostPort => "host port in use",
        }
    }
}

/// Whether `node` can take `pod` now, or the first filter it fails.
pub fn fits(node: &NodeInfo, pod: &PodInfo) -> Result<(), Unfit> {
    if !node.ready {
        return Err(Unfit::NotReady);
    }
    if node.unschedulable {
        return Err(Unfit::Unschedulable);
    }
    if !pod.node_selector.iter().all(|(k, v)| node.labels.get(k) == Some(v)) {
        return Err(Unfit::NodeSelector);
    }
    if node.taints.iter().any(|t| t.effect != TaintEffect::PreferNoSchedule && !tolerated(&pod.tolerations, t)) {
        return Err(Unfit::Taint);
    }
    if node.allocatable_cpu_millis.saturating_sub(node.requested_cpu_millis) < pod.cpu_millis {
        return Err(Unfit::Cpu);
    }
    if node.allocatable_memory_bytes.saturating_sub(node.requested_memory_bytes) < pod.memory_bytes {
        return Err(Unfit::Memory);
    }
    if node.pods >= node.allocatable_pods {
        return Err(Unfit::Pods);
    }
    if pod.host_ports.iter().any(|p| node.host_ports.contains(p)) {
        return Err(Unfit::HostPort);
    }
    Ok(())
}

/// How a feasible node ranks for a pod; higher wins. In f64 because the
/// balance terms are fractions; the weights keep each concern in its band:
/// each same-owner pod already there costs 1000, so spreading always
/// dominates; each untolerated PreferNoSchedule taint costs 100; the
/// allocation fractions of cpu and memory after placing cost up to 50 each,
/// and the pod-count fraction up to 10.
pub fn score(node: &NodeInfo, pod: &PodInfo, same_owner: u32) -> f64 {
    let mut s = -1000.0 * f64::from(same_owner);
    if node.allocatable_cpu_millis > 0 {
        s -= 50.0 * (node.requested_cpu_millis.saturating_add(pod.cpu_millis)) as f64 / node.allocatable_cpu_millis as f64;
    }
    if node.allocatable_memory_bytes > 0 {
        s -= 50.0 * (node.requested_memory_bytes.saturating_add(pod.memory_bytes)) as f64 / node.allocatable_memory_bytes as f64;
    }
    if node.allocatable_pods > 0 {
        s -= 10.0 * node.pods as f64 / node.allocatable_pods as f64;
    }
    let avoided = node.taints.iter().filter(|t| t.effect == TaintEffect::PreferNoSchedule && !tolerated(&pod.tolerations, t)).count();
    s - 100.0 * avoided as f64
}

/// How many feasible nodes to find before choosing, as kube-scheduler's
/// adaptive percentageOfNodesToScore: all of a small cluster, a shrinking
/// share (never under 5%, nor under 100 nodes) of a large one.
pub fn feasible_target(n: usize) -> usize {
    if n <= 100 {
        return n;
    }
    let pct = 50usize.saturating_sub(n / 125).max(5);
    (n * pct / 100).max(100)
}

/// The reason given for a pod no node can take, e.g.
/// `0/5 nodes: 3 insufficient memory, 2 not ready`.
fn unschedulable_reason(total: usize, failures: &[usize; 8]) -> String {
    if total == 0 {
        return "0/0 nodes: no nodes registered".to_string();
    }
    let mut groups: Vec<(usize, Unfit)> = Unfit::ALL.iter().map(|&u| (failures[u as usize], u)).filter(|&(c, _)| c > 0).collect();
    groups.sort_by_key(|&(count, unfit)| (Reverse(count), unfit));
    let parts: Vec<String> = groups.iter().map(|(count, unfit)| format!("{count} {}", unfit.words())).collect();
    format!("0/{total} nodes: {}", parts.join(", "))
}

#[derive(Clone, Debug, PartialEq)]
pub enum Placement {
    Bind { node: String },
    Unschedulable { reason: String },
}

/// An owner uid as a number, so the scan compares integers instead of
/// hashing a uid string for every node it looks at.
type OwnerId = u64;

fn owner_bit(id: OwnerId) -> u64 {
    1 << (id % 64)
}

/// A node with the per-pod facts NodeInfo's totals cannot hold.
#[derive(Clone, Debug)]
struct Slot {
    node: NodeInfo,
    /// Pods per owner, sorted by id: a node holds few owners, and a binary
    /// search over them is cheaper than a hash in the hot loop.
    owners: Vec<(OwnerId, u32)>,
    /// Bit `id % 64` set for each owner present: most nodes hold none of a
    /// pod's owner, and this answers that without a cache miss on `owners`.
    owner_bits: u64,
    /// Holders per host port: two pods bound by hand may share one, and the
    /// port stays taken until the last of them goes.
    ports: HashMap<(String, u16), u32>,
}

impl Slot {
    fn new(node: NodeInfo) -> Slot {
        let ports = node.host_ports.iter().map(|p| (p.clone(), 1)).collect();
        Slot { node, owners: Vec::new(), owner_bits: 0, ports }
    }

    fn account(&mut self, pod: &PodInfo, owner: Option<OwnerId>) {
        self.node.add(pod);
        if let Some(id) = owner {
            match self.owners.binary_search_by_key(&id, |&(o, _)| o) {
                Ok(i) => self.owners[i].1 += 1,
                Err(i) => self.owners.insert(i, (id, 1)),
            }
            self.owner_bits |= owner_bit(id);
        }
        for port in &pod.host_ports {
            *self.ports.entry(port.clone()).or_default() += 1;
        }
    }

    /// Forgets a pod; says whether it was counted under `owner` here.
    fn release(&mut self, pod: &PodInfo, owner: Option<OwnerId>) -> bool {
        self.node.remove(pod);
        for port in &pod.host_ports {
            if let Some(count) = self.ports.get_mut(port) {
                *count -= 1;
                if *count == 0 {
                    self.ports.remove(port);
                } else {
                    self.node.host_ports.insert(port.clone());
                }
            }
        }
        let Some(i) = owner.and_then(|id| self.owners.binary_search_by_key(&id, |&(o, _)| o).ok()) else {
            return false;
        };
        self.owners[i].1 -= 1;
        if self.owners[i].1 == 0 {
            self.owners.remove(i);
            self.owner_bits = self.owners.iter().fold(0, |bits, &(o, _)| bits | owner_bit(o));
        }
        true
    }

    fn same_owner(&self, owner: Option<OwnerId>) -> u32 {
        owner
            .filter(|&id| self.owner_bits & owner_bit(id) != 0)
            .and_then(|id| self.owners.binary_search_by_key(&id, |&(o, _)| o).ok())
            .map_or(0, |i| self.owners[i].1)
    }

    fn is_idle(&self) -> bool {
        self.node.pods == 0 && self.owners.is_empty() && self.ports.is_empty()
    }
}

/// Moves what is placed on `old` onto its replacement `new`.
fn keep_accounting(new: &mut NodeInfo, old: &mut NodeInfo) {
    new.requested_cpu_millis = old.requested_cpu_millis;
    new.requested_memory_bytes = old.requested_memory_bytes;
    new.pods = old.pods;
    new.host_ports = std::mem::take(&mut old.host_ports);
}

/// The scheduler's state across batches: nodes by name, and how many pods
/// of each owner sit on each node (for spreading).
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    slots: Vec<Slot>,
    index: HashMap<String, usize>,
    /// Accounting for pods bound to nodes not registered: seen before their
    /// node (the watch does not order kinds) or left by a removed node that
    /// may come back. Taken up when the node is upserted.
    detached: HashMap<String, Slot>,
    /// Owner uids with accounted pods: their id and how many pods, so an
    /// owner is forgotten with its last pod. Ids are never reused.
    owner_ids: HashMap<String, (OwnerId, u32)>,
    next_owner_id: OwnerId,
    /// Where the next scan starts, so partial scans cover the cluster in turn.
    next_start: usize,
}

impl ClusterView {
    pub fn new(nodes: Vec<NodeInfo>) -> Self {
        let mut view = ClusterView::default();
        for node in nodes {
            view.upsert_node(node);
        }
        view
    }

    /// Adds or replaces a node by name, keeping what is accounted on it.
    pub fn upsert_node(&mut self, mut node: NodeInfo) {
        if let Some(&i) = self.index.get(&node.name) {
            let slot = &mut self.slots[i];
            keep_accounting(&mut node, &mut slot.node);
            slot.node = node;
            return;
        }
        // New, or back: take up what was accounted on it while unregistered.
        let slot = match self.detached.remove(&node.name) {
            Some(mut slot) => {
                keep_accounting(&mut node, &mut slot.node);
                slot.node = node;
                slot
            }
            None => Slot::new(node),
        };
        self.index.insert(slot.node.name.clone(), self.slots.len());
        self.slots.push(slot);
    }

    pub fn remove_node(&mut self, name: &str) {
        let Some(i) = self.index.remove(name) else {
            return;
        };
        let slot = self.slots.swap_remove(i);
        if let Some(moved) = self.slots.get(i) {
            self.index.insert(moved.node.name.clone(), i);
        }
        if !slot.is_idle() {
            self.detached.insert(name.to_string(), slot);
        }
    }

    fn slot_mut(&mut self, name: &str) -> Option<&mut Slot> {
        match self.index.get(name) {
            Some(&i) => self.slots.get_mut(i),
            None => self.detached.get_mut(name),
        }
    }

    fn owner_id(&self, pod: &PodInfo) -> Option<OwnerId> {
        pod.owner_uid.as_ref().and_then(|uid| self.owner_ids.get(uid)).map(|&(id, _)| id)
    }

    /// Counts one more pod of the pod's owner, giving the owner an id if new.
    fn hold_owner(&mut self, pod: &PodInfo) -> Option<OwnerId> {
        let uid = pod.owner_uid.as_ref()?;
        let next = &mut self.next_owner_id;
        let entry = self.owner_ids.entry(uid.clone()).or_insert_with(|| {
            *next += 1;
            (*next, 0)
        });
        entry.1 += 1;
        Some(entry.0)
    }

    /// A pod bound (already, or by us): adds its requests and spread count.
    pub fn account(&mut self, pod: &PodInfo, node: &str) {
        let owner = self.hold_owner(pod);
        match self.slot_mut(node) {
            Some(slot) => slot.account(pod, owner),
            None => {
                let mut slot = Slot::new(NodeInfo::unregistered(node));
                slot.account(pod, owner);
                self.detached.insert(node.to_string(), slot);
            }
        }
    }

    /// A bound pod gone.
    pub fn release(&mut self, pod: &PodInfo, node: &str) {
        let owner = self.owner_id(pod);
        let counted = self.slot_mut(node).is_some_and(|slot| slot.release(pod, owner));
        if counted {
            if let Some(uid) = &pod.owner_uid {
                if let Some(entry) = self.owner_ids.get_mut(uid) {
                    entry.1 -= 1;
                    if entry.1 == 0 {
                        self.owner_ids.remove(uid);
                    }
                }
            }
        }
        if self.detached.get(node).is_some_and(Slot::is_idle) {
            self.detached.remove(node);
        }
    }

    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.index.get(name).map(|&i| &self.slots[i].node)
    }

    /// Places pods in order; each Bind is accounted immediately so later
    /// pods in the batch see it (never over-commits).
    pub fn place_batch(&mut self, pods: &[PodInfo]) -> Vec<Placement> {
        pods.iter()
            .map(|pod| match self.choose(pod) {
                Ok(i) => {
                    let owner = self.hold_owner(pod);
                    self.slots[i].account(pod, owner);
                    Placement::Bind { node: self.slots[i].node.name.clone() }
                }
                Err(reason) => Placement::Unschedulable { reason },
            })
            .collect()
    }

    /// The index of the best node found for `pod`, or why there is none.
    fn choose(&mut self, pod: &PodInfo) -> Result<usize, String> {
        let n = self.slots.len();
        if n == 0 {
            return Err(unschedulable_reason(0, &[0; 8]));
        }
        let owner = self.owner_id(pod);
        let target = feasible_target(n);
        let start = self.next_start % n;
        let mut best: Option<(f64, usize)> = None;
        let mut feasible = 0;
        let mut examined = 0;
        let mut failures = [0usize; 8];
        // Stopping early only ever happens after a feasible node, so an
        // unschedulable pod has been checked against every node.
        for i in (start..n).chain(0..start) {
            examined += 1;
            let slot = &self.slots[i];
            match fits(&slot.node, pod) {
                Err(unfit) => failures[unfit as usize] += 1,
                Ok(()) => {
                    let s = score(&slot.node, pod, slot.same_owner(owner));
                    if best.is_none_or(|(b, _)| s > b) {
                        best = Some((s, i));
                    }
                    feasible += 1;
                    if feasible >= target {
                        break;
                    }
                }
            }
        }
        // Move past what this pod looked at, as kube-scheduler does; after a
        // full scan move by one anyway, so ties do not always go to one node.
        let step = if examined >= n { 1 } else { examined };
        self.next_start = (start + step) % n;
        best.map(|(_, i)| i).ok_or_else(|| unschedulable_reason(n, &failures))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const GI: i64 = 1 << 30;
    const MI: i64 = 1 << 20;

    fn node(name: &str, cpu_millis: i64, memory_bytes: i64) -> NodeInfo {
        NodeInfo {
            name: name.to_string(),
            ready: true,
            allocatable_cpu_millis: cpu_millis,
            allocatable_memory_bytes: memory_bytes,
            allocatable_pods: 110,
            ..NodeInfo::unregistered(name)
        }
    }

    fn pod(name: &str, cpu_millis: i64, memory_bytes: i64) -> PodInfo {
        PodInfo {
            namespace: "default".into(),
            name: name.into(),
            owner_uid: None,
            cpu_millis,
            memory_bytes,
            host_ports: vec![],
            node_selector: BTreeMap::new(),
            tolerations: vec![],
        }
    }

    fn owned(name: &str, owner: &str) -> PodInfo {
        PodInfo { owner_uid: Some(owner.into()), ..pod(name, 100, 64 * MI) }
    }

    fn bind(node: &str) -> Placement {
        Placement::Bind { node: node.into() }
    }

    fn unschedulable(reason: &str) -> Placement {
        Placement::Unschedulable { reason: reason.into() }
    }

    fn taint(key: &str, value: &str, effect: TaintEffect) -> Taint {
        Taint { key: key.into(), value: value.into(), effect }
    }

    fn toleration(key: &str, exists: bool, value: &str, effect: Option<TaintEffect>) -> Toleration {
        Toleration { key: key.into(), exists, value: value.into(), effect }
    }

    #[test]
    fn parses_node_status_labels_and_taints() {
        let n = node_info(&json!({
            "metadata": {"name": "n1", "labels": {"zone": "a", "disk": "ssd"}},
            "spec": {"unschedulable": true, "taints": [
                {"key": "gpu", "value": "yes", "effect": "NoSchedule"},
                {"key": "spot", "effect": "PreferNoSchedule"},
                {"key": "gone", "effect": "NoExecute"},
            ]},
            "status": {
                "allocatable": {"cpu": "3500m", "memory": "8Gi", "pods": "30"},
                "conditions": [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": "True"}],
            },
        }));
        assert_eq!(
            n,
            NodeInfo {
                name: "n1".into(),
                ready: true,
                unschedulable: true,
                labels: BTreeMap::from([("disk".into(), "ssd".into()), ("zone".into(), "a".into())]),
                taints: vec![
                    taint("gpu", "yes", TaintEffect::NoSchedule),
                    taint("spot", "", TaintEffect::PreferNoSchedule),
                    taint("gone", "", TaintEffect::NoExecute),
                ],
                allocatable_cpu_millis: 3500,
                allocatable_memory_bytes: 8 * GI,
                allocatable_pods: 30,
                requested_cpu_millis: 0,
                requested_memory_bytes: 0,
                pods: 0,
                host_ports: BTreeSet::new(),
            }
        );
    }

    #[test]
    fn node_without_status_is_not_ready_with_default_pods() {
        let n = node_info(&json!({"metadata": {"name": "bare"}}));
        assert_eq!(n, NodeInfo { allocatable_pods: 110, ..NodeInfo::unregistered("bare") });
        let unknown = node_info(&json!({
            "metadata": {"name": "n"},
            "status": {"allocatable": {"cpu": 2}, "conditions": [{"type": "Ready", "status": "Unknown"}]},
        }));
        assert!(!unknown.ready);
        assert_eq!((unknown.allocatable_cpu_millis, unknown.allocatable_memory_bytes, unknown.allocatable_pods), (2000, 0, 110));
    }

    #[test]
    fn parses_pod_requests_with_limit_fallback() {
        let p = pod_info(&json!({
            "metadata": {"name": "web-1", "namespace": "shop", "ownerReferences": [
                {"uid": "not-controller"},
                {"uid": "rs-1", "controller": true},
            ]},
            "spec": {
                "initContainers": [{"name": "init", "resources": {"requests": {"cpu": "4", "memory": "4Gi"}}}],
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}},
                    {"name": "b", "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}}},
                    {"name": "c", "resources": {"requests": {"cpu": "100m"}}},
                    {"name": "d"},
                ],
                "nodeSelector": {"disk": "ssd"},
            },
        }));
        assert_eq!(
            p,
            PodInfo {
                namespace: "shop".into(),
                name: "web-1".into(),
                owner_uid: Some("rs-1".into()),
                cpu_millis: 850,
                memory_bytes: 384 * MI,
                host_ports: vec![],
                node_selector: BTreeMap::from([("disk".into(), "ssd".into())]),
                tolerations: vec![],
            }
        );
    }

    #[test]
    fn parses_host_ports_and_tolerations() {
        let p = pod_info(&json!({
            "metadata": {"name": "p"},
            "spec": {
                "containers": [
                    {"name": "a", "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}]},
                    {"name": "b", "ports": [{"containerPort": 53, "hostPort": 53, "protocol": "UDP"}, {"containerPort": 9, "hostPort": 0}]},
                ],
                "tolerations": [
                    {"operator": "Exists"},
                    {"key": "gpu", "operator": "Equal", "value": "yes", "effect": "NoSchedule"},
                    {"key": "spot", "value": "1", "effect": ""},
                ],
            },
        }));
        assert_eq!(p.namespace, "default");
        assert_eq!(p.owner_uid, None);
        assert_eq!(p.host_ports, vec![("TCP".to_string(), 8080), ("UDP".to_string(), 53)]);
        assert_eq!(
            p.tolerations,
            vec![
                toleration("", true, "", None),
                toleration("gpu", false, "yes", Some(TaintEffect::NoSchedule)),
                toleration("spot", false, "1", None),
            ]
        );
    }

    #[test]
    fn toleration_matching() {
        let gpu = taint("gpu", "yes", TaintEffect::NoSchedule);
        // Exists with an empty key tolerates every taint.
        assert!(toleration("", true, "", None).tolerates(&gpu));
        assert!(toleration("", true, "", None).tolerates(&taint("x", "y", TaintEffect::NoExecute)));
        // Exists with a key ignores the value.
        assert!(toleration("gpu", true, "", None).tolerates(&gpu));
        assert!(!toleration("other", true, "", None).tolerates(&gpu));
        // Equal needs the value.
        assert!(toleration("gpu", false, "yes", None).tolerates(&gpu));
        assert!(!toleration("gpu", false, "no", None).tolerates(&gpu));
        assert!(!toleration("", false, "yes", None).tolerates(&gpu));
        // An effect narrows; None matches all.
        assert!(toleration("gpu", false, "yes", Some(TaintEffect::NoSchedule)).tolerates(&gpu));
        assert!(!toleration("gpu", false, "yes", Some(TaintEffect::NoExecute)).tolerates(&gpu));
        assert!(!toleration("", true, "", Some(TaintEffect::PreferNoSchedule)).tolerates(&gpu));
    }

    #[test]
    fn each_filter_rejects_with_its_reason() {
        let p = pod("p", 500, GI);
        let ok = node("n", 1000, 2 * GI);
        assert_eq!(fits(&ok, &p), Ok(()));
        assert_eq!(fits(&NodeInfo { ready: false, ..ok.clone() }, &p), Err(Unfit::NotReady));
        assert_eq!(fits(&NodeInfo { unschedulable: true, ..ok.clone() }, &p), Err(Unfit::Unschedulable));

        let picky = PodInfo { node_selector: BTreeMap::from([("disk".into(), "ssd".into())]), ..p.clone() };
        assert_eq!(fits(&ok, &picky), Err(Unfit::NodeSelector));
        let hdd = NodeInfo { labels: BTreeMap::from([("disk".into(), "hdd".into())]), ..ok.clone() };
        assert_eq!(fits(&hdd, &picky), Err(Unfit::NodeSelector));
        let ssd = NodeInfo { labels: BTreeMap::from([("disk".into(), "ssd".into()), ("zone".into(), "a".into())]), ..ok.clone() };
        assert_eq!(fits(&ssd, &picky), Ok(()));

        for effect in [TaintEffect::NoSchedule, TaintEffect::NoExecute] {
            let tainted = NodeInfo { taints: vec![taint("gpu", "yes", effect)], ..ok.clone() };
            assert_eq!(fits(&tainted, &p), Err(Unfit::Taint));
            let tolerant = PodInfo { tolerations: vec![toleration("gpu", true, "", None)], ..p.clone() };
            assert_eq!(fits(&tainted, &tolerant), Ok(()));
        }
        let preferred = NodeInfo { taints: vec![taint("spot", "", TaintEffect::PreferNoSchedule)], ..ok.clone() };
        assert_eq!(fits(&preferred, &p), Ok(()));

        assert_eq!(fits(&NodeInfo { requested_cpu_millis: 501, ..ok.clone() }, &p), Err(Unfit::Cpu));
        assert_eq!(fits(&NodeInfo { requested_cpu_millis: 500, ..ok.clone() }, &p), Ok(()));
        assert_eq!(fits(&NodeInfo { requested_memory_bytes: GI + 1, ..ok.clone() }, &p), Err(Unfit::Memory));
        assert_eq!(fits(&NodeInfo { requested_memory_bytes: GI, ..ok.clone() }, &p), Ok(()));
        assert_eq!(fits(&NodeInfo { pods: 110, ..ok.clone() }, &p), Err(Unfit::Pods));
        assert_eq!(fits(&NodeInfo { pods: 109, ..ok.clone() }, &p), Ok(()));

        let web = PodInfo { host_ports: vec![("TCP".into(), 80)], ..p.clone() };
        let busy = NodeInfo { host_ports: BTreeSet::from([("TCP".to_string(), 80)]), ..ok.clone() };
        assert_eq!(fits(&busy, &web), Err(Unfit::HostPort));
        let udp = NodeInfo { host_ports: BTreeSet::from([("UDP".to_string(), 80)]), ..ok.clone() };
        assert_eq!(fits(&udp, &web), Ok(()));

        // The first failing filter is the one reported.
        let everything_wrong = NodeInfo { ready: false, unschedulable: true, pods: 110, ..busy };
        assert_eq!(fits(&everything_wrong, &web), Err(Unfit::NotReady));
    }

    #[test]
    fn reason_counts_first_failure_sorted_by_count() {
        let mut nodes: Vec<NodeInfo> = (0..3).map(|i| node(&format!("small-{i}"), 4000, 512 * MI)).collect();
        // Not ready and too small: counted as not ready only.
        nodes.push(NodeInfo { ready: false, ..node("down-0", 4000, 512 * MI) });
        nodes.push(NodeInfo { ready: false, ..node("down-1", 4000, 8 * GI) });
        let mut view = ClusterView::new(nodes);
        assert_eq!(view.place_batch(&[pod("big", 100, GI)]), vec![unschedulable("0/5 nodes: 3 insufficient memory, 2 not ready")]);
    }

    #[test]
    fn reason_ties_follow_filter_order() {
        let web = PodInfo { host_ports: vec![("TCP".into(), 80)], ..pod("web", 100, MI) };
        let mut view = ClusterView::new(vec![
            NodeInfo { host_ports: BTreeSet::from([("TCP".to_string(), 80)]), ..node("a", 1000, GI) },
            NodeInfo { taints: vec![taint("k", "", TaintEffect::NoExecute)], ..node("b", 1000, GI) },
            NodeInfo { unschedulable: true, ..node("c", 1000, GI) },
            NodeInfo { pods: 110, ..node("d", 1000, GI) },
            node("e", 50, GI),
            NodeInfo { pods: 110, ..node("f", 1000, GI) },
        ]);
        assert_eq!(
            view.place_batch(&[web]),
            vec![unschedulable("0/6 nodes: 2 too many pods, 1 unschedulable, 1 untolerated taint, 1 insufficient cpu, 1 host port in use")]
        );
    }

    #[test]
    fn no_nodes_reason() {
        let mut view = ClusterView::new(vec![]);
        assert_eq!(view.place_batch(&[pod("p", 0, 0)]), vec![unschedulable("0/0 nodes: no nodes registered")]);
    }

    #[test]
    fn batch_accounts_each_bind_so_it_never_overcommits() {
        let mut view = ClusterView::new(vec![node("n", 1000, GI)]);
        assert_eq!(
            view.place_batch(&[pod("a", 600, MI), pod("b", 600, MI)]),
            vec![bind("n"), unschedulable("0/1 nodes: 1 insufficient cpu")]
        );
        let n = view.node("n").unwrap();
        assert_eq!((n.requested_cpu_millis, n.requested_memory_bytes, n.pods), (600, MI, 1));
    }

    #[test]
    fn batch_host_ports_conflict_within_the_batch() {
        let web = |name: &str| PodInfo { host_ports: vec![("TCP".into(), 80)], ..pod(name, 10, MI) };
        let mut view = ClusterView::new(vec![node("a", 1000, GI), node("b", 1000, GI)]);
        let placed = view.place_batch(&[web("w1"), web("w2"), web("w3")]);
        assert_eq!(placed, vec![bind("a"), bind("b"), unschedulable("0/2 nodes: 2 host port in use")]);
    }

    #[test]
    fn replicas_of_one_owner_spread_across_nodes() {
        let mut view = ClusterView::new(vec![node("a", 4000, 8 * GI), node("b", 4000, 8 * GI), node("c", 4000, 8 * GI)]);
        let placed = view.place_batch(&[owned("r1", "rs"), owned("r2", "rs"), owned("r3", "rs")]);
        let nodes: BTreeSet<String> = placed
            .iter()
            .map(|p| match p {
                Placement::Bind { node } => node.clone(),
                other => panic!("not bound: {other:?}"),
            })
            .collect();
        assert_eq!(nodes, BTreeSet::from(["a".to_string(), "b".to_string(), "c".to_string()]));
    }

    #[test]
    fn spreading_outweighs_balance() {
        // "a" is busy but holds no replica; "b" is empty but holds one.
        let mut view = ClusterView::new(vec![node("a", 4000, 8 * GI), node("b", 4000, 8 * GI)]);
        view.account(&pod("filler", 3000, 6 * GI), "a");
        view.account(&owned("r1", "rs"), "b");
        assert_eq!(view.place_batch(&[owned("r2", "rs")]), vec![bind("a")]);
    }

    #[test]
    fn pod_goes_to_the_emptier_node() {
        let mut view = ClusterView::new(vec![node("busy", 4000, 8 * GI), node("idle", 4000, 8 * GI)]);
        view.account(&pod("old", 2000, 4 * GI), "busy");
        assert_eq!(view.place_batch(&[pod("new", 100, 64 * MI)]), vec![bind("idle")]);
        // Balance is by fraction, not absolute load: the large node with a
        // pod on it is still emptier than the small empty one.
        let mut sized = ClusterView::new(vec![node("small", 1000, GI), node("large", 8000, 16 * GI)]);
        sized.account(&pod("old", 400, 512 * MI), "large");
        assert_eq!(sized.place_batch(&[pod("new", 100, 64 * MI)]), vec![bind("large")]);
    }

    #[test]
    fn prefer_no_schedule_taint_lowers_score_only() {
        let spot = taint("spot", "", TaintEffect::PreferNoSchedule);
        let mut view =
            ClusterView::new(vec![NodeInfo { taints: vec![spot.clone()], ..node("spot", 4000, 8 * GI) }, node("busy", 4000, 8 * GI)]);
        view.account(&pod("old", 3000, 6 * GI), "busy");
        assert_eq!(view.place_batch(&[pod("p", 100, MI)]), vec![bind("busy")]);
        let tolerant = PodInfo { tolerations: vec![toleration("spot", true, "", None)], ..pod("t", 100, MI) };
        assert_eq!(view.place_batch(&[tolerant]), vec![bind("spot")]);
        // Only the avoided node left with room: it is still used.
        view.account(&pod("more", 1000, GI), "busy");
        assert_eq!(view.place_batch(&[pod("q", 100, MI)]), vec![bind("spot")]);
    }

    #[test]
    fn upsert_node_keeps_accounting() {
        let mut view = ClusterView::new(vec![node("n", 1000, GI)]);
        let web = PodInfo { host_ports: vec![("TCP".into(), 80)], ..owned("w", "rs") };
        view.account(&web, "n");
        view.upsert_node(NodeInfo { labels: BTreeMap::from([("zone".into(), "b".into())]), ..node("n", 2000, 2 * GI) });
        let n = view.node("n").unwrap();
        assert_eq!(n.allocatable_cpu_millis, 2000);
        assert_eq!(n.labels.get("zone").map(String::as_str), Some("b"));
        assert_eq!((n.requested_cpu_millis, n.requested_memory_bytes, n.pods), (100, 64 * MI, 1));
        assert_eq!(n.host_ports, BTreeSet::from([("TCP".to_string(), 80)]));
        // The spread count survived too: releasing the pod empties the node fully.
        view.release(&web, "n");
        assert_eq!(view.node("n"), Some(&NodeInfo { labels: BTreeMap::from([("zone".into(), "b".into())]), ..node("n", 2000, 2 * GI) }));
    }

    #[test]
    fn release_frees_capacity() {
        let mut view = ClusterView::new(vec![node("n", 1000, GI)]);
        assert_eq!(view.place_batch(&[pod("a", 600, MI)]), vec![bind("n")]);
        assert_eq!(view.place_batch(&[pod("b", 600, MI)]), vec![unschedulable("0/1 nodes: 1 insufficient cpu")]);
        view.release(&pod("a", 600, MI), "n");
        assert_eq!(view.place_batch(&[pod("b", 600, MI)]), vec![bind("n")]);
        // Releasing more than was accounted never goes below zero.
        view.release(&pod("b", 600, MI), "n");
        view.release(&pod("ghost", 600, MI), "n");
        let n = view.node("n").unwrap();
        assert_eq!((n.requested_cpu_millis, n.requested_memory_bytes, n.pods), (0, 0, 0));
    }

    #[test]
    fn shared_host_port_stays_taken_until_last_holder_goes() {
        let web = |name: &str| PodInfo { host_ports: vec![("TCP".into(), 80)], ..pod(name, 10, MI) };
        let mut view = ClusterView::new(vec![node("n", 1000, GI)]);
        // Two pods bound by hand to the same port.
        view.account(&web("a"), "n");
        view.account(&web("b"), "n");
        view.release(&web("a"), "n");
        assert_eq!(view.place_batch(&[web("c")]), vec![unschedulable("0/1 nodes: 1 host port in use")]);
        view.release(&web("b"), "n");
        assert_eq!(view.place_batch(&[web("c")]), vec![bind("n")]);
    }

    #[test]
    fn accounting_waits_for_its_node() {
        let mut view = ClusterView::new(vec![]);
        // A pod seen bound before its node registers.
        view.account(&pod("early", 600, MI), "late");
        assert_eq!(view.node("late"), None);
        view.upsert_node(node("late", 1000, GI));
        assert_eq!(view.node("late").map(|n| (n.requested_cpu_millis, n.pods)), Some((600, 1)));
        // A removed node that returns still carries its pods.
        view.remove_node("late");
        assert_eq!(view.node("late"), None);
        view.upsert_node(node("late", 1000, GI));
        assert_eq!(view.place_batch(&[pod("p", 600, MI)]), vec![unschedulable("0/1 nodes: 1 insufficient cpu")]);
        // Once its pods are gone while it is away, it returns empty.
        view.remove_node("late");
        view.release(&pod("early", 600, MI), "late");
        view.upsert_node(node("late", 1000, GI));
        assert_eq!(view.node("late"), Some(&node("late", 1000, GI)));
    }

    #[test]
    fn remove_node_keeps_the_others_addressable() {
        let mut view = ClusterView::new(vec![node("a", 1000, GI), node("b", 1000, GI), node("c", 1000, GI)]);
        view.account(&pod("on-c", 700, MI), "c");
        view.remove_node("a");
        view.remove_node("missing");
        assert_eq!(view.node("a"), None);
        assert_eq!(view.node("c").map(|n| n.requested_cpu_millis), Some(700));
        assert_eq!(
            view.place_batch(&[pod("p", 600, MI), pod("q", 600, MI)]),
            vec![bind("b"), unschedulable("0/2 nodes: 2 insufficient cpu")]
        );
    }

    #[test]
    fn feasible_target_follows_cluster_size() {
        let targets: Vec<usize> = [0, 1, 100, 101, 200, 1000, 5000, 10_000, 100_000].iter().map(|&n| feasible_target(n)).collect();
        assert_eq!(targets, vec![0, 1, 100, 100, 100, 420, 500, 500, 5000]);
    }

    #[test]
    fn large_cluster_scans_part_and_rotates() {
        let nodes: Vec<NodeInfo> = (0..200).map(|i| node(&format!("n{i:03}"), 1000, GI)).collect();
        let mut view = ClusterView::new(nodes);
        // 100 feasible nodes are enough; equal scores go to the first found,
        // and the next scan starts where this one stopped.
        let placed = view.place_batch(&[pod("a", 100, MI), pod("b", 100, MI), pod("c", 100, MI)]);
        assert_eq!(placed, vec![bind("n000"), bind("n100"), bind("n001")]);
    }

    #[test]
    fn large_cluster_scans_everything_before_giving_up() {
        let mut nodes: Vec<NodeInfo> = (0..200).map(|i| node(&format!("n{i:03}"), 100, GI)).collect();
        nodes[150].allocatable_cpu_millis = 600;
        let mut view = ClusterView::new(nodes);
        // The only feasible node lies past the first 100 scanned; once it is
        // full, the reason covers all 200 nodes.
        assert_eq!(
            view.place_batch(&[pod("a", 500, MI), pod("b", 500, MI)]),
            vec![bind("n150"), unschedulable("0/200 nodes: 200 insufficient cpu")]
        );
    }

    #[test]
    fn fifty_thousand_pods_on_five_thousand_nodes() {
        let nodes: Vec<NodeInfo> = (0..5000).map(|i| node(&format!("node-{i}"), 4000, 8 * GI)).collect();
        let pods: Vec<PodInfo> =
            (0..50_000).map(|i| PodInfo { owner_uid: Some(format!("rs-{}", i % 500)), ..pod(&format!("pod-{i}"), 10, 16 * MI) }).collect();
        let mut view = ClusterView::new(nodes.clone());
        let placed = view.place_batch(&pods);

        let mut used: HashMap<String, (i64, i64, i64)> = HashMap::new();
        for (p, placement) in pods.iter().zip(&placed) {
            let Placement::Bind { node } = placement else { panic!("{} not bound: {placement:?}", p.name) };
            let u = used.entry(node.clone()).or_default();
            *u = (u.0 + p.cpu_millis, u.1 + p.memory_bytes, u.2 + 1);
        }
        for n in &nodes {
            let (cpu, memory, count) = used.get(&n.name).copied().unwrap_or_default();
            assert!(
                cpu <= n.allocatable_cpu_millis && memory <= n.allocatable_memory_bytes && count <= n.allocatable_pods,
                "{} over",
                n.name
            );
            let seen = view.node(&n.name).unwrap();
            assert_eq!((seen.requested_cpu_millis, seen.requested_memory_bytes, seen.pods), (cpu, memory, count));
        }
    }
}
