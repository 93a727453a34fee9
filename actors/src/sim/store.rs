//! The simulation's store: objects in memory with etcd's semantics where
//! the control plane relies on them (one revision counter, every write a
//! new revision, compare-and-swap on an object's revision, all-or-none
//! batches, an ordered log of changes to watch), and the same admission as
//! the registry, so objects are defaulted and validated exactly as the
//! server would. What Raft adds (replication, leader election, durable
//! logs) is tested on its own (`raft/`, the Jepsen-style tests); here the
//! store is one linearizable map that can be told to fail writes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};

use super::rng::SimRng;
use crate::clock::{Clock, ManualClock, Mono};
use crate::leader::cache::Kind;
use crate::leader::executor::ClusterWriter;
use crate::model::admission::{admit_create, admit_update, AdmissionContext};
use crate::model::object;
use crate::registry::{set_condition, RegistryError, WatchEvent, WatchEventKind};

/// One change, in revision order.
#[derive(Debug, Clone)]
pub struct Change {
    pub revision: u64,
    pub kind: Kind,
    pub event: WatchEvent,
}

/// The store's objects, borrowed.
pub struct Objects<'a>(&'a BTreeMap<(Kind, String), Value>);

impl Objects<'_> {
    /// Every object of `kind`, in key order.
    pub fn of(&self, kind: Kind) -> impl Iterator<Item = &Value> {
        self.0.range((kind, String::new())..).take_while(move |((k, _), _)| *k == kind).map(|(_, v)| v)
    }
}

/// Writes fail with this probability until a time (a store fault).
#[derive(Debug, Clone, Copy, Default)]
struct Failing {
    until: Mono,
    per_million: u64,
}

struct Inner {
    revision: u64,
    objects: BTreeMap<(Kind, String), Value>,
    /// Changes not yet read by every reader (trimmed from the front);
    /// shared, since two readers take each.
    log: Vec<Arc<Change>>,
    /// The revision of the first change in `log`.
    log_start: u64,
    cidrs: BTreeMap<String, String>,
    rng: SimRng,
    failing: Failing,
    events_recorded: u64,
    writes_failed: u64,
}

/// The in-memory store. Single-threaded in use; the lock only satisfies
/// the writer trait.
pub struct MemStore {
    inner: Mutex<Inner>,
    clock: Arc<ManualClock>,
}

fn key(kind: Kind, namespace: Option<&str>, name: &str) -> (Kind, String) {
    match (kind.resource().namespaced, namespace) {
        (true, ns) => (kind, format!("{}/{name}", ns.unwrap_or("default"))),
        (false, _) => (kind, name.to_string()),
    }
}

fn not_found(kind: Kind, name: &str) -> RegistryError {
    RegistryError::NotFound { kind: kind.plural().into(), name: name.into() }
}

fn conflict(kind: Kind, name: &str, message: &str) -> RegistryError {
    RegistryError::Conflict { kind: kind.plural().into(), name: name.into(), message: message.into() }
}

/// Whether two objects differ in nothing but their resourceVersion (a
/// write that changes nothing is not a write).
fn same_but_version(a: &Value, b: &Value) -> bool {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return a == b };
    let meta_equal = |x: Option<&Value>, y: Option<&Value>| {
        let (x, y) = (x.and_then(Value::as_object), y.and_then(Value::as_object));
        let len = |m: Option<&serde_json::Map<String, Value>>| m.map_or(0, |m| m.len() - usize::from(m.contains_key("resourceVersion")));
        len(x) == len(y)
            && x.into_iter().flatten().filter(|(k, _)| k.as_str() != "resourceVersion").all(|(k, v)| y.and_then(|y| y.get(k)) == Some(v))
    };
    a.len() == b.len() && a.iter().all(|(k, v)| if k == "metadata" { meta_equal(Some(v), b.get(k)) } else { b.get(k) == Some(v) })
}

impl MemStore {
    pub fn new(seed: u64, clock: Arc<ManualClock>) -> MemStore {
        MemStore {
            inner: Mutex::new(Inner {
                revision: 1,
                objects: BTreeMap::new(),
                log: Vec::new(),
                log_start: 2,
                cidrs: BTreeMap::new(),
                rng: SimRng::new(seed ^ 0x5707E),
                failing: Failing::default(),
                events_recorded: 0,
                writes_failed: 0,
            }),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_wall(&self) -> String {
        object::timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.clock.wall_unix_ms()))
    }

    /// Makes writes fail with `per_million` probability until `until`.
    pub fn fail_writes(&self, until: Mono, per_million: u64) {
        self.lock().failing = Failing { until, per_million };
    }

    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    pub fn writes_failed(&self) -> u64 {
        self.lock().writes_failed
    }

    pub fn events_recorded(&self) -> u64 {
        self.lock().events_recorded
    }

    /// Every object of `kind`, in key order.
    pub fn list(&self, kind: Kind) -> Vec<Value> {
        self.lock().objects.range((kind, String::new())..).take_while(|((k, _), _)| *k == kind).map(|(_, v)| v.clone()).collect()
    }

    /// Reads the objects in place (the checks run every step; cloning
    /// every object each time would be most of the run).
    pub fn read<R>(&self, f: impl FnOnce(&Objects) -> R) -> R {
        f(&Objects(&self.lock().objects))
    }

    pub fn get(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.lock().objects.get(&key(kind, namespace, name)).cloned()
    }

    /// The changes after `revision` (all still held), and the latest revision.
    pub fn changes_after(&self, revision: u64) -> (Vec<Arc<Change>>, u64) {
        let s = self.lock();
        let from = revision.saturating_add(1).saturating_sub(s.log_start) as usize;
        (s.log.get(from.min(s.log.len())..).unwrap_or_default().to_vec(), s.revision)
    }

    /// Forgets changes up to `revision` (every reader has them).
    pub fn trim(&self, revision: u64) {
        let mut s = self.lock();
        let drop = revision.saturating_add(1).saturating_sub(s.log_start) as usize;
        let drop = drop.min(s.log.len());
        s.log.drain(..drop);
        s.log_start += drop as u64;
    }

    fn fault(s: &mut Inner, now: Mono) -> Result<(), RegistryError> {
        if now < s.failing.until && s.rng.chance(s.failing.per_million) {
            s.writes_failed += 1;
            return Err(RegistryError::Store(flotilla_raft::StoreError::NoLeader("simulated store fault".into())));
        }
        Ok(())
    }

    fn record(s: &mut Inner, kind: Kind, event_kind: WatchEventKind, obj: &Value, revision: u64) {
        debug_assert_eq!(s.log_start + s.log.len() as u64, revision);
        s.log.push(Arc::new(Change { revision, kind, event: WatchEvent { kind: event_kind, object: obj.clone() } }));
    }

    /// Stamps and writes one object at a new revision.
    fn put(s: &mut Inner, kind: Kind, mut obj: Value, added: bool) -> Value {
        s.revision += 1;
        let revision = s.revision;
        object::metadata_mut(&mut obj).insert("resourceVersion".into(), json!(revision.to_string()));
        let k = key(kind, object::namespace(&obj), object::name(&obj).unwrap_or_default());
        Self::record(s, kind, if added { WatchEventKind::Added } else { WatchEventKind::Modified }, &obj, revision);
        s.objects.insert(k, obj.clone());
        obj
    }

    fn remove(s: &mut Inner, k: &(Kind, String)) -> Option<Value> {
        let mut old = s.objects.remove(k)?;
        s.revision += 1;
        let revision = s.revision;
        object::metadata_mut(&mut old).insert("resourceVersion".into(), json!(revision.to_string()));
        Self::record(s, k.0, WatchEventKind::Deleted, &old, revision);
        if k.0 == Kind::Nodes {
            if let Some(cidr) = old.pointer("/spec/podCIDR").and_then(Value::as_str) {
                s.cidrs.remove(cidr);
            }
        }
        Some(old)
    }

    fn admitted(&self, s: &mut Inner, kind: Kind, mut obj: Value) -> Result<Value, RegistryError> {
        let res = kind.resource();
        let ns = res.namespaced.then(|| object::namespace(&obj).unwrap_or("default").to_string());
        let ctx = AdmissionContext { namespace: ns.as_deref(), now: self.now_wall(), uid: s.rng.uid(), name_suffix: s.rng.name_suffix() };
        admit_create(res, &mut obj, &ctx)?;
        if let Some(ns) = &ns {
            object::metadata_mut(&mut obj).insert("namespace".into(), json!(ns));
        }
        Ok(obj)
    }

    /// Creates one object.
    pub fn create_object(&self, kind: Kind, obj: Value) -> Result<Value, RegistryError> {
        let mut s = self.lock();
        Self::fault(&mut s, self.clock.mono())?;
        let obj = self.admitted(&mut s, kind, obj)?;
        let k = key(kind, object::namespace(&obj), object::name(&obj).unwrap_or_default());
        if s.objects.contains_key(&k) {
            return Err(RegistryError::AlreadyExists { kind: kind.plural().into(), name: k.1 });
        }
        Ok(Self::put(&mut s, kind, obj, true))
    }

    fn create_all(&self, kind: Kind, objects: Vec<Value>) -> Result<Vec<Value>, RegistryError> {
        let mut s = self.lock();
        Self::fault(&mut s, self.clock.mono())?;
        let mut admitted = Vec::with_capacity(objects.len());
        for obj in objects {
            let obj = self.admitted(&mut s, kind, obj)?;
            let k = key(kind, object::namespace(&obj), object::name(&obj).unwrap_or_default());
            if s.objects.contains_key(&k) || admitted.iter().any(|(ak, _)| *ak == k) {
                return Err(RegistryError::AlreadyExists { kind: kind.plural().into(), name: "one of a batch".into() });
            }
            admitted.push((k, obj));
        }
        Ok(admitted.into_iter().map(|(_, obj)| Self::put(&mut s, kind, obj, true)).collect())
    }

    /// Reads, changes and writes back (the store's read-modify-write).
    pub fn modify_object(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        change: &dyn Fn(&Value) -> Value,
        status: bool,
    ) -> Result<Value, RegistryError> {
        let mut s = self.lock();
        Self::fault(&mut s, self.clock.mono())?;
        let k = key(kind, namespace, name);
        let old = s.objects.get(&k).cloned().ok_or_else(|| not_found(kind, name))?;
        let mut new = change(&old);
        let res = kind.resource();
        let ns = res.namespaced.then(|| namespace.unwrap_or("default"));
        let ctx = AdmissionContext { namespace: ns, now: self.now_wall(), uid: String::new(), name_suffix: String::new() };
        admit_update(res, &old, &mut new, &ctx, status.then_some("status"))?;
        if same_but_version(&new, &old) {
            return Ok(old);
        }
        Ok(Self::put(&mut s, kind, new, false))
    }

    /// Deletes: a bound pod gets a deletionTimestamp (its agent finishes
    /// it); anything else goes at once with what it owns.
    pub fn delete_object(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Result<Value, RegistryError> {
        let mut s = self.lock();
        Self::fault(&mut s, self.clock.mono())?;
        let k = key(kind, namespace, name);
        let old = s.objects.get(&k).cloned().ok_or_else(|| not_found(kind, name))?;
        if kind == Kind::Pods && old.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) {
            if object::meta_str(&old, "deletionTimestamp").is_some() {
                return Ok(old);
            }
            let grace = old.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64).unwrap_or(30).max(0) as u64;
            let deadline = std::time::UNIX_EPOCH + std::time::Duration::from_millis(self.clock.wall_unix_ms() + grace * 1000);
            let mut new = old;
            let meta = object::metadata_mut(&mut new);
            meta.insert("deletionTimestamp".into(), json!(object::timestamp(deadline)));
            meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
            return Ok(Self::put(&mut s, kind, new, false));
        }
        let removed = Self::remove(&mut s, &k).ok_or_else(|| not_found(kind, name))?;
        // Dependents, and theirs, at once (the registry's background
        // propagation, without the wait).
        let mut owners: Vec<String> = object::uid(&removed).map(String::from).into_iter().collect();
        while let Some(owner) = owners.pop() {
            let dependents: Vec<(Kind, String)> =
                s.objects.iter().filter(|(_, o)| object::owner_uids(o).contains(&owner)).map(|(k, _)| k.clone()).collect();
            for dk in dependents {
                if let Some(gone) = Self::remove(&mut s, &dk) {
                    owners.extend(object::uid(&gone).map(String::from));
                }
            }
        }
        Ok(removed)
    }

    /// Removes objects unconditionally in one write.
    pub fn delete_now_objects(&self, kind: Kind, items: &[(String, String)]) -> Result<u64, RegistryError> {
        let mut s = self.lock();
        Self::fault(&mut s, self.clock.mono())?;
        for (ns, name) in items {
            Self::remove(&mut s, &key(kind, Some(ns), name));
        }
        Ok(s.revision)
    }

    /// Removes a pod whose containers stopped, if it still has `uid`.
    pub fn finalize_pod(&self, namespace: &str, name: &str, uid: &str) -> Result<(), RegistryError> {
        let mut s = self.lock();
        Self::fault(&mut s, self.clock.mono())?;
        let k = key(Kind::Pods, Some(namespace), name);
        if s.objects.get(&k).and_then(object::uid) == Some(uid) {
            Self::remove(&mut s, &k);
        }
        Ok(())
    }

    fn bind_all(&self, binds: &[(&Value, &str)]) -> Result<Option<u64>, RegistryError> {
        let mut s = self.lock();
        Self::fault(&mut s, self.clock.mono())?;
        for (pod, node) in binds {
            let k = key(Kind::Pods, object::namespace(pod), object::name(pod).unwrap_or_default());
            let current = s.objects.get(&k).and_then(object::resource_version);
            if current.is_none() || current != object::resource_version(pod) || !s.objects.contains_key(&(Kind::Nodes, node.to_string())) {
                return Ok(None);
            }
        }
        let now = self.now_wall();
        for (pod, node) in binds {
            let mut bound = (*pod).clone();
            bound["spec"]["nodeName"] = json!(node);
            set_condition(&mut bound, json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now}));
            Self::put(&mut s, Kind::Pods, bound, false);
        }
        Ok(Some(s.revision))
    }

    fn assign_cidr(&self, node: &str, cidr: &str) -> Result<Value, RegistryError> {
        let mut s = self.lock();
        Self::fault(&mut s, self.clock.mono())?;
        let k = (Kind::Nodes, node.to_string());
        let old = s.objects.get(&k).cloned().ok_or_else(|| not_found(Kind::Nodes, node))?;
        if old.pointer("/spec/podCIDR").and_then(Value::as_str).is_some_and(|c| !c.is_empty()) {
            return Ok(old);
        }
        if let Some(holder) = s.cidrs.get(cidr) {
            return Err(conflict(Kind::Nodes, node, &format!("pod subnet {cidr} is held by node {holder}")));
        }
        s.cidrs.insert(cidr.to_string(), node.to_string());
        let mut new = old;
        new["spec"]["podCIDR"] = json!(cidr);
        new["spec"]["podCIDRs"] = json!([cidr]);
        Ok(Self::put(&mut s, Kind::Nodes, new, false))
    }
}

#[async_trait::async_trait]
impl ClusterWriter for MemStore {
    async fn create(&self, kind: Kind, object: Value) -> Result<Value, RegistryError> {
        self.create_object(kind, object)
    }
    async fn create_many(&self, kind: Kind, namespace: &str, objects: Vec<Value>) -> Result<Vec<Value>, RegistryError> {
        let objects = objects
            .into_iter()
            .map(|mut o| {
                object::metadata_mut(&mut o).insert("namespace".into(), json!(namespace));
                o
            })
            .collect();
        self.create_all(kind, objects)
    }
    async fn modify(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        change: &(dyn for<'v> Fn(&'v Value) -> Value + Send + Sync),
        status: bool,
    ) -> Result<Value, RegistryError> {
        self.modify_object(kind, namespace, name, change, status)
    }
    async fn delete(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Result<Value, RegistryError> {
        self.delete_object(kind, namespace, name)
    }
    async fn delete_now(&self, kind: Kind, items: &[(String, String)]) -> Result<u64, RegistryError> {
        self.delete_now_objects(kind, items)
    }
    async fn bind(&self, binds: &[(&Value, &str)]) -> Result<Option<u64>, RegistryError> {
        self.bind_all(binds)
    }
    async fn assign_pod_cidr(&self, node: &str, cidr: &str) -> Result<Value, RegistryError> {
        self.assign_cidr(node, cidr)
    }
    async fn finish_namespaces(&self) -> Result<(), RegistryError> {
        // The simulated workloads live in namespaces that are never deleted.
        Ok(())
    }
    async fn record_event(&self, _involved: &Value, _event_type: &str, _reason: &str, _message: &str) {
        self.lock().events_recorded += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::command::{Command, Outcome};
    use crate::leader::executor::{execute, ExecLimits};

    fn store() -> MemStore {
        MemStore::new(1, ManualClock::new(1_800_000_000_000))
    }

    fn pod(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "default"},
               "spec": {"containers": [{"name": "c", "image": "i"}]}})
    }

    const LIMITS: ExecLimits = ExecLimits { write_concurrency_max: 4, bind_txn_pods_max: 2 };

    #[test]
    fn a_batch_that_moved_is_bound_pod_by_pod_and_the_executor_says_which() {
        let s = store();
        s.create_object(Kind::Nodes, json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})).unwrap();
        let a = Arc::new(s.create_object(Kind::Pods, pod("a")).unwrap());
        let b = Arc::new(s.create_object(Kind::Pods, pod("b")).unwrap());
        // b changes after it was read: its bind must fail, a's must not.
        s.modify_object(
            Kind::Pods,
            Some("default"),
            "b",
            &|o| {
                let mut o = o.clone();
                o["metadata"]["labels"] = json!({"x": "y"});
                o
            },
            false,
        )
        .unwrap();
        let cmds = vec![Command::Bind { pods: vec![(a, "n1".into()), (b, "n1".into())] }];
        let done = futures::executor::block_on(execute(&s, &cmds, LIMITS)).unwrap();
        assert_eq!(done.outcomes, vec![Outcome::Bound(vec![true, false])]);
        assert!(done.more, "a bind that did not happen asks for another pass");
        assert_eq!(s.get(Kind::Pods, Some("default"), "a").unwrap()["spec"]["nodeName"], "n1");
        assert!(s.get(Kind::Pods, Some("default"), "b").unwrap().pointer("/spec/nodeName").is_none());
    }

    #[test]
    fn races_requeue_store_faults_fail_the_pass_and_bound_pods_are_deleted_gracefully() {
        let s = store();
        let cmds = vec![Command::Delete { kind: Kind::Pods, namespace: Some("default".into()), name: "gone".into() }];
        let done = futures::executor::block_on(execute(&s, &cmds, LIMITS)).unwrap();
        assert!(matches!(&done.outcomes[0], Outcome::Requeue(why) if why.contains("not found")));

        s.create_object(Kind::Nodes, json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}})).unwrap();
        let p = s.create_object(Kind::Pods, pod("p")).unwrap();
        assert_eq!(s.bind_all(&[(&p, "n1")]).unwrap(), Some(s.revision()));
        let cmds = vec![Command::Delete { kind: Kind::Pods, namespace: Some("default".into()), name: "p".into() }];
        futures::executor::block_on(execute(&s, &cmds, LIMITS)).unwrap();
        let p = s.get(Kind::Pods, Some("default"), "p").expect("a bound pod stays until its agent finishes it");
        assert!(object::meta_str(&p, "deletionTimestamp").is_some());

        s.fail_writes(Mono::from_secs(3600), 1_000_000);
        let err = futures::executor::block_on(execute(&s, &cmds, LIMITS)).unwrap_err();
        assert!(matches!(err, RegistryError::Store(_)));
    }
}
