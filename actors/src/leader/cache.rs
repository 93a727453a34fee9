//! ClusterCache: the leader's in-memory view of the objects its actors
//! decide on (pods, nodes, replica sets, deployments, services,
//! endpoints), fed by one list-then-watch per kind. Deciding from memory
//! is what lets the scheduler and the controllers keep up with thousands of
//! pods per second; writes still go through the registry (and so through
//! Raft), and an actor that wrote waits until the cache has seen its own
//! write ([`ClusterCache::wait_for`]) before deciding again, so it never
//! acts twice on a stale view.
//!
//! Pods are held compactly ([`PodView`]); the full object is kept only
//! while a pod is unbound, because the scheduler writes it back when it
//! binds. Consumers learn what changed from per-consumer dirty sets and
//! wake on a generation counter.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::placement::{pod_info, PodInfo};
use crate::model::kinds;
use crate::model::object;
use crate::model::resources::Resource;
use crate::registry::{Registry, WatchEvent, WatchEventKind};
use crate::watcher::{Backoff, RegistrySource, Watched, Watcher};

/// How long a kind's feed waits before listing again after its watch broke.
const RELIST_DELAY: Duration = Duration::from_millis(200);

/// The kinds the cache holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Pods,
    Nodes,
    ReplicaSets,
    Deployments,
    Services,
    Endpoints,
}

impl Kind {
    pub const ALL: [Kind; 6] = [Kind::Pods, Kind::Nodes, Kind::ReplicaSets, Kind::Deployments, Kind::Services, Kind::Endpoints];

    /// The served resource of this kind.
    pub fn resource(self) -> &'static Resource {
        match self {
            Kind::Pods => &kinds::PODS,
            Kind::Nodes => &kinds::NODES,
            Kind::ReplicaSets => &kinds::REPLICASETS,
            Kind::Deployments => &kinds::DEPLOYMENTS,
            Kind::Services => &kinds::SERVICES,
            Kind::Endpoints => &kinds::ENDPOINTS,
        }
    }

    pub fn plural(self) -> &'static str {
        self.resource().plural
    }
}

/// What the leader's actors need to know about a pod.
#[derive(Clone, Debug)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: u64,
    pub owner_uid: Option<String>,
    pub owner_kind: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub node: Option<String>,
    pub phase: String,
    pub ready: bool,
    pub terminating: bool,
    pub pod_ip: Option<String>,
    pub created: String,
    /// Container ports: (name, port, protocol).
    pub ports: Vec<(Option<String>, i64, String)>,
    pub info: Arc<PodInfo>,
    /// The whole object, only while the pod waits for a node.
    pub object: Option<Arc<Value>>,
}

impl PodView {
    pub fn from_object(pod: &Value) -> PodView {
        let node = pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty()).map(String::from);
        let terminating = object::meta_str(pod, "deletionTimestamp").is_some();
        let ready = pod
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"));
        let labels = pod
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
            .unwrap_or_default();
        let mut ports = Vec::new();
        for c in pod.pointer("/spec/containers").and_then(Value::as_array).into_iter().flatten() {
            for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
                if let Some(port) = p.get("containerPort").and_then(Value::as_i64) {
                    ports.push((
                        p.get("name").and_then(Value::as_str).map(String::from),
                        port,
                        p.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_string(),
                    ));
                }
            }
        }
        PodView {
            namespace: object::namespace(pod).unwrap_or("default").to_string(),
            name: object::name(pod).unwrap_or_default().to_string(),
            uid: object::uid(pod).unwrap_or_default().to_string(),
            resource_version: object::resource_version(pod).unwrap_or(0),
            owner_uid: object::controller_ref(pod).and_then(|r| r.get("uid")).and_then(Value::as_str).map(String::from),
            owner_kind: object::controller_ref(pod).and_then(|r| r.get("kind")).and_then(Value::as_str).map(String::from),
            labels,
            object: (node.is_none() && !terminating).then(|| Arc::new(pod.clone())),
            node,
            phase: pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending").to_string(),
            ready,
            terminating,
            pod_ip: pod.pointer("/status/podIP").and_then(Value::as_str).map(String::from),
            created: object::meta_str(pod, "creationTimestamp").unwrap_or_default().to_string(),
            ports,
            info: Arc::new(pod_info(pod)),
        }
    }

    /// Ended pods no longer count as replicas.
    pub fn is_active(&self) -> bool {
        !self.terminating && self.phase != "Succeeded" && self.phase != "Failed"
    }

    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// Pods in the placement log at most; past it the scheduler recounts.
const PLACEMENT_LOG_MAX: usize = 200_000;

/// One change of what is placed on a node.
#[derive(Clone, Debug)]
pub struct PlacementChange {
    pub key: String,
    pub node: String,
    pub info: Arc<PodInfo>,
    /// True when the pod now counts on the node, false when it no longer does.
    pub added: bool,
}

/// Where a pod counts against node capacity: bound and not ended.
fn counted_on(p: &PodView) -> Option<&str> {
    p.node.as_deref().filter(|_| p.phase != "Succeeded" && p.phase != "Failed")
}

/// What changed since a consumer last looked.
#[derive(Default, Debug)]
pub struct Dirty {
    pub replicasets: HashSet<String>,
    pub deployments: HashSet<String>,
    /// Services (namespace/name) whose selected pods, spec or Endpoints
    /// changed: a pod's change marks only the Services whose selector
    /// matches it, before or after.
    pub services: HashSet<String>,
}

/// The cached objects. Keys are `namespace/name` (or `name` for nodes).
#[derive(Default)]
pub struct CacheState {
    pub pods: HashMap<String, PodView>,
    pub pods_by_owner: HashMap<String, BTreeSet<String>>,
    pub pods_by_node: HashMap<String, BTreeSet<String>>,
    /// Pods waiting for a node, oldest key first.
    pub pending: BTreeSet<String>,
    pub nodes: BTreeMap<String, Value>,
    /// The nodes without a pod subnet (`spec.podCIDR`) yet: kept with
    /// `nodes`, so the IPAM controller need not walk every node on every
    /// pass to learn that none waits (at 5,000 nodes that walk was most of
    /// the leader's CPU).
    pub nodes_without_pod_cidr: BTreeSet<String>,
    pub replicasets: BTreeMap<String, Value>,
    pub deployments: BTreeMap<String, Value>,
    pub services: BTreeMap<String, Value>,
    pub endpoints: BTreeMap<String, Value>,
    rs_by_uid: HashMap<String, String>,
    deployment_by_uid: HashMap<String, String>,
    revisions: HashMap<Kind, u64>,
    synced: HashSet<Kind>,
    /// Counts bound pods that went away or ended (capacity freed).
    pub released_pods: u64,
    /// What changed on nodes since the scheduler last looked: a pod's
    /// requests counted on (+) or taken off (-) a node. The scheduler keeps
    /// its view current from this instead of recounting every pod.
    pub placement_log: Vec<PlacementChange>,
    /// Set when the log overflowed or the pods were listed afresh: the
    /// scheduler must recount from scratch.
    pub placement_reset: bool,
    pub dirty: Dirty,
}

/// A node's pod subnet, if it has been given one.
pub fn pod_cidr(node: &Value) -> Option<&str> {
    node.pointer("/spec/podCIDR").and_then(Value::as_str).filter(|c| !c.is_empty())
}

/// What of a pod an Endpoints object shows.
#[allow(clippy::type_complexity)]
fn endpoint_fields(
    p: &PodView,
) -> (&str, &BTreeMap<String, String>, &Option<String>, &Option<String>, bool, bool, &[(Option<String>, i64, String)]) {
    (&p.uid, &p.labels, &p.pod_ip, &p.node, p.ready, p.terminating, &p.ports)
}

fn take<'a>(dirty: &mut HashSet<String>, all: impl Iterator<Item = &'a String>, resync: bool) -> Vec<String> {
    if resync {
        dirty.clear();
        all.cloned().collect()
    } else {
        // Sorted, so a pass decides in the same order from the same state.
        let mut keys: Vec<String> = dirty.drain().collect();
        keys.sort_unstable();
        keys
    }
}

fn put_or_remove(map: &mut BTreeMap<String, Value>, key: String, obj: &Value, deleted: bool) {
    if deleted {
        map.remove(&key);
    } else {
        map.insert(key, obj.clone());
    }
}

fn index_by_uid(index: &mut HashMap<String, String>, key: &str, obj: &Value, deleted: bool) {
    let uid = object::uid(obj).unwrap_or_default().to_string();
    if deleted {
        index.remove(&uid);
    } else {
        index.insert(uid, key.to_string());
    }
}

fn key_of(obj: &Value) -> String {
    match object::namespace(obj) {
        Some(ns) => format!("{ns}/{}", object::name(obj).unwrap_or_default()),
        None => object::name(obj).unwrap_or_default().to_string(),
    }
}

impl CacheState {
    /// Whether every kind has been listed once.
    pub fn synced(&self) -> bool {
        self.synced.len() == Kind::ALL.len()
    }

    /// Records that `kind` has been seen up to `revision`.
    pub fn seen(&mut self, kind: Kind, revision: u64) {
        self.revisions.insert(kind, revision);
    }

    pub fn revision(&self, kind: Kind) -> u64 {
        self.revisions.get(&kind).copied().unwrap_or(0)
    }

    /// The ReplicaSets a pass looks at: all on resync, else those changed
    /// since the last pass. Either way the dirty set is emptied.
    pub fn take_replicasets(&mut self, resync: bool) -> Vec<String> {
        take(&mut self.dirty.replicasets, self.replicasets.keys(), resync)
    }

    /// The Deployments a pass looks at, as [`Self::take_replicasets`].
    pub fn take_deployments(&mut self, resync: bool) -> Vec<String> {
        take(&mut self.dirty.deployments, self.deployments.keys(), resync)
    }

    /// The Services (namespace/name) whose Endpoints a pass looks at: all
    /// with a Service or an Endpoints on resync, else those marked.
    pub fn take_services(&mut self, resync: bool) -> Vec<String> {
        let all: BTreeSet<String> = self.services.keys().chain(self.endpoints.keys()).cloned().collect();
        take(&mut self.dirty.services, all.iter(), resync)
    }

    /// Marks the Services of `namespace` that select a pod with `labels`.
    fn mark_services_selecting(&mut self, namespace: &str, labels: &BTreeMap<String, String>) {
        let prefix = format!("{namespace}/");
        for (key, svc) in self.services.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)) {
            let selects = crate::model::kinds::service::selector(svc).is_some_and(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
            if selects {
                self.dirty.services.insert(key.clone());
            }
        }
    }

    /// Whether an owner of one of the cached kinds exists, by uid.
    pub fn owner_exists(&self, kind: &str, uid: &str) -> bool {
        match kind {
            "ReplicaSet" => self.rs_by_uid.contains_key(uid),
            "Deployment" => self.deployment_by_uid.contains_key(uid),
            _ => true,
        }
    }

    /// Pods owned (as controller) by `uid`.
    pub fn pods_of(&self, owner_uid: &str) -> impl Iterator<Item = &PodView> {
        self.pods_by_owner.get(owner_uid).into_iter().flatten().filter_map(|k| self.pods.get(k))
    }

    pub fn pods_on(&self, node: &str) -> impl Iterator<Item = &PodView> {
        self.pods_by_node.get(node).into_iter().flatten().filter_map(|k| self.pods.get(k))
    }

    /// The ReplicaSets a Deployment owns.
    pub fn replicasets_of(&self, deployment_uid: &str) -> Vec<&Value> {
        self.replicasets
            .values()
            .filter(|rs| object::controller_ref(rs).and_then(|r| r.get("uid")).and_then(Value::as_str) == Some(deployment_uid))
            .collect()
    }

    fn log_placement(&mut self, key: &str, node: &str, info: &Arc<PodInfo>, added: bool) {
        if self.placement_reset {
            return;
        }
        if self.placement_log.len() >= PLACEMENT_LOG_MAX {
            self.placement_log.clear();
            self.placement_reset = true;
            return;
        }
        self.placement_log.push(PlacementChange { key: key.to_string(), node: node.to_string(), info: info.clone(), added });
    }

    fn remove_pod(&mut self, key: &str) {
        self.take_pod(key, true);
    }

    /// Removes a pod from the indexes; `mark` marks the Services that
    /// selected it.
    fn take_pod(&mut self, key: &str, mark: bool) {
        let Some(old) = self.pods.remove(key) else { return };
        if let Some(o) = &old.owner_uid {
            if let Some(set) = self.pods_by_owner.get_mut(o) {
                set.remove(key);
                if set.is_empty() {
                    self.pods_by_owner.remove(o);
                }
            }
            self.mark_owner_dirty(o);
        }
        if let Some(n) = &old.node {
            if let Some(set) = self.pods_by_node.get_mut(n) {
                set.remove(key);
                if set.is_empty() {
                    self.pods_by_node.remove(n);
                }
            }
        }
        self.pending.remove(key);
        if mark {
            self.mark_services_selecting(&old.namespace, &old.labels);
        }
    }

    fn put_pod(&mut self, pod: &Value) {
        let view = PodView::from_object(pod);
        let key = view.key();
        let before = self.pods.get(&key).and_then(|p| counted_on(p).map(|n| (n.to_string(), p.info.clone())));
        let after = counted_on(&view).map(String::from);
        if before.as_ref().map(|(n, _)| n) != after.as_ref() {
            if let Some((node, info)) = &before {
                self.log_placement(&key, node, info, false);
            }
            if let Some(node) = &after {
                let info = view.info.clone();
                self.log_placement(&key, node, &info, true);
            }
        }
        if !view.is_active() && self.pods.get(&key).is_some_and(|p| p.is_active()) {
            self.released_pods += 1;
        }
        // Most pod writes (a restart count, a phase) change nothing an
        // Endpoints shows: those wake no Service.
        let seen_by_services = self.pods.get(&key).is_none_or(|old| endpoint_fields(old) != endpoint_fields(&view));
        self.take_pod(&key, seen_by_services);
        if let Some(o) = &view.owner_uid {
            self.pods_by_owner.entry(o.clone()).or_default().insert(key.clone());
            let o = o.clone();
            self.mark_owner_dirty(&o);
        }
        match &view.node {
            Some(n) => {
                self.pods_by_node.entry(n.clone()).or_default().insert(key.clone());
            }
            None if !view.terminating => {
                self.pending.insert(key.clone());
            }
            None => {}
        }
        if seen_by_services {
            self.mark_services_selecting(&view.namespace, &view.labels);
        }
        self.pods.insert(key, view);
    }

    fn mark_owner_dirty(&mut self, owner_uid: &str) {
        if let Some(rs) = self.rs_by_uid.get(owner_uid) {
            self.dirty.replicasets.insert(rs.clone());
        }
    }

    /// Takes in one watched change.
    pub fn apply(&mut self, kind: Kind, ev: &WatchEvent) {
        let key = key_of(&ev.object);
        let deleted = ev.kind == WatchEventKind::Deleted;
        match kind {
            Kind::Pods if deleted => {
                if self.pods.get(&key).is_some_and(|p| p.node.is_some()) {
                    self.released_pods += 1;
                }
                if let Some((node, info)) = self.pods.get(&key).and_then(|p| counted_on(p).map(|n| (n.to_string(), p.info.clone()))) {
                    self.log_placement(&key, &node, &info, false);
                }
                self.remove_pod(&key)
            }
            Kind::Pods => self.put_pod(&ev.object),
            Kind::Nodes if deleted => {
                self.nodes.remove(&key);
                self.nodes_without_pod_cidr.remove(&key);
            }
            Kind::Nodes => {
                if pod_cidr(&ev.object).is_some() {
                    self.nodes_without_pod_cidr.remove(&key);
                } else {
                    self.nodes_without_pod_cidr.insert(key.clone());
                }
                self.nodes.insert(key, ev.object.clone());
            }
            Kind::ReplicaSets => {
                if let Some(d) = object::controller_ref(&ev.object).and_then(|r| r.get("uid")).and_then(Value::as_str) {
                    if let Some(dk) = self.deployment_by_uid.get(d) {
                        self.dirty.deployments.insert(dk.clone());
                    }
                }
                self.dirty.replicasets.insert(key.clone());
                index_by_uid(&mut self.rs_by_uid, &key, &ev.object, deleted);
                put_or_remove(&mut self.replicasets, key, &ev.object, deleted);
            }
            Kind::Deployments => {
                self.dirty.deployments.insert(key.clone());
                index_by_uid(&mut self.deployment_by_uid, &key, &ev.object, deleted);
                put_or_remove(&mut self.deployments, key, &ev.object, deleted);
            }
            Kind::Services | Kind::Endpoints => {
                self.dirty.services.insert(key.clone());
                let map = if kind == Kind::Services { &mut self.services } else { &mut self.endpoints };
                put_or_remove(map, key, &ev.object, deleted);
            }
        }
    }

    /// Replaces everything of `kind` with a fresh list.
    pub fn replace_all(&mut self, kind: Kind, items: Vec<Value>, revision: u64) {
        match kind {
            Kind::Pods => {
                let keys: Vec<String> = self.pods.keys().cloned().collect();
                for k in keys {
                    self.remove_pod(&k);
                }
                self.placement_log.clear();
                self.placement_reset = true;
            }
            Kind::Nodes => {
                self.nodes.clear();
                self.nodes_without_pod_cidr.clear();
            }
            Kind::ReplicaSets => {
                self.replicasets.clear();
                self.rs_by_uid.clear();
            }
            Kind::Deployments => {
                self.deployments.clear();
                self.deployment_by_uid.clear();
            }
            Kind::Services => self.services.clear(),
            Kind::Endpoints => self.endpoints.clear(),
        }
        for object in items {
            self.apply(kind, &WatchEvent { kind: WatchEventKind::Added, object });
        }
        if kind == Kind::ReplicaSets {
            // Pods listed before their ReplicaSets could not mark them.
            self.dirty.replicasets.extend(self.replicasets.keys().cloned());
        }
        self.revisions.insert(kind, revision);
        self.synced.insert(kind);
    }
}

/// The shared cache and the tasks that feed it.
pub struct ClusterCache {
    state: Arc<RwLock<CacheState>>,
    generation: watch::Sender<u64>,
    feeds: Vec<JoinHandle<()>>,
}

impl Drop for ClusterCache {
    fn drop(&mut self) {
        for f in &self.feeds {
            f.abort();
        }
    }
}

impl ClusterCache {
    /// Starts one list-and-watch feed per kind.
    pub fn start(registry: Registry) -> Arc<ClusterCache> {
        let state = Arc::new(RwLock::new(CacheState::default()));
        let (generation, _) = watch::channel(0u64);
        let feeds = Kind::ALL.iter().map(|&kind| tokio::spawn(feed(registry.clone(), kind, state.clone(), generation.clone()))).collect();
        Arc::new(ClusterCache { state, generation, feeds })
    }

    /// The state itself, for a pass that takes its dirty sets and decides.
    pub fn state(&self) -> &RwLock<CacheState> {
        &self.state
    }

    pub fn read(&self) -> RwLockReadGuard<'_, CacheState> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    /// For consumers taking their dirty sets.
    pub fn write(&self) -> RwLockWriteGuard<'_, CacheState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that changes whenever the cache does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Waits until `kind` has been seen up to `revision` (and every kind
    /// listed once); false on timeout.
    pub async fn wait_for(&self, kind: Kind, revision: u64, timeout: Duration) -> bool {
        let mut rx = self.subscribe();
        tokio::time::timeout(timeout, async {
            loop {
                {
                    let s = self.read();
                    if s.synced() && s.revision(kind) >= revision {
                        return;
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await
        .is_ok()
    }
}

async fn feed(registry: Registry, kind: Kind, state: Arc<RwLock<CacheState>>, generation: watch::Sender<u64>) {
    let res = kind.resource();
    let mut watcher = Watcher::new(RegistrySource { registry, res }, Backoff { first: RELIST_DELAY, ..Backoff::default() });
    loop {
        let watched = watcher.next().await;
        {
            let mut s = state.write().unwrap_or_else(|p| p.into_inner());
            match watched {
                Watched::Restarted { objects, revision } => s.replace_all(kind, objects, revision),
                Watched::Changes { events, revision } => {
                    for ev in &events {
                        s.apply(kind, ev);
                    }
                    s.seen(kind, revision);
                }
            }
        }
        generation.send_modify(|g| *g += 1);
    }
}
