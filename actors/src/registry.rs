//! The registry: stores and serves objects through the replicated store,
//! running admission on every write, with optimistic concurrency on the
//! store's revisions (resourceVersion is the key's mod revision). It is what
//! the API server calls, and what controllers use in-process.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use flotilla_raft::{
    Compare, CompareOp, CompareTarget, Consistency, EventKind, KeyValue, Member, Outcome, StoreError, TxnOp, TxnOpResult, Watcher,
};
use serde_json::{json, Value};

use crate::clock::SharedClock;
use crate::identities::{RandomIdentities, SharedIdentities};
use crate::limits::{ALLOCATION_RETRIES_MAX, KEYRING_RESEALS_MAX, UPDATE_RETRIES_MAX};
use crate::model::addresses::{assign_service, AllocError, NetworkPlan, Taken};
use crate::model::admission::{admit_create, admit_update, AdmissionContext, AdmissionError};
use crate::model::kinds::RESOURCES;
use crate::model::kinds::{ENDPOINTS, EVENTS, NAMESPACES, NODES, PODS, SERVICES, SERVICE_ACCOUNTS};
use crate::model::object::{self, decode, encode};
use crate::model::resources::Resource;
use crate::model::selector::Selector;
use crate::model::strategy::{Allocation, Deletion};
use crate::secrets_keyring::{KeyringError, SecretsKeyring};

/// Objects per page when the registry walks a whole resource internally.
const LIST_PAGE: usize = 1_000;

/// What went wrong with a registry call. Each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 404.
    #[error("{kind} {name:?} not found")]
    NotFound { kind: String, name: String },
    /// 409, reason AlreadyExists.
    #[error("{kind} {name:?} already exists")]
    AlreadyExists { kind: String, name: String },
    /// 409, reason Conflict: a stale resourceVersion or a lost race.
    #[error("Operation cannot be fulfilled on {kind} {name:?}: {message}")]
    Conflict { kind: String, name: String, message: String },
    /// 400 or 422 from admission.
    #[error(transparent)]
    Admission(#[from] AdmissionError),
    /// 400: malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// 404 on the namespace of a create.
    #[error("namespace {0:?} not found; create it first (flotilla apply a Namespace, or kubectl create namespace)")]
    NamespaceNotFound(String),
    /// 403: the namespace is being deleted.
    #[error("namespace {0:?} is being terminated; new objects cannot be created in it")]
    NamespaceTerminating(String),
    /// 410: a watch from history the store no longer holds.
    #[error("too old resource version: {requested} (the oldest available is {oldest})")]
    Expired { requested: u64, oldest: u64 },
    /// 503 or 500 from the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// 500: a stored object could not be decoded.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<KeyringError> for RegistryError {
    fn from(e: KeyringError) -> Self {
        match e {
            KeyringError::Store(e) => RegistryError::Store(e),
            KeyringError::Corrupt(m) => RegistryError::Internal(m),
        }
    }
}

/// One change seen by a registry watch.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchEvent {
    pub kind: WatchEventKind,
    pub object: Value,
}

/// What a change did to its object, as Kubernetes' watch events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WatchEventKind {
    Added,
    Modified,
    Deleted,
}

impl WatchEventKind {
    /// The name on the wire (`ADDED`, `MODIFIED`, `DELETED`).
    pub fn as_str(self) -> &'static str {
        match self {
            WatchEventKind::Added => "ADDED",
            WatchEventKind::Modified => "MODIFIED",
            WatchEventKind::Deleted => "DELETED",
        }
    }

    /// From the wire name; anything else is None.
    pub fn parse(s: &str) -> Option<WatchEventKind> {
        match s {
            "ADDED" => Some(WatchEventKind::Added),
            "MODIFIED" => Some(WatchEventKind::Modified),
            "DELETED" => Some(WatchEventKind::Deleted),
            _ => None,
        }
    }
}

impl std::fmt::Display for WatchEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How dependents are treated when their owner is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Delete the owner now, its dependents after (the default).
    Background,
    /// Leave the dependents, without their reference to the owner.
    Orphan,
}

/// Objects over the replicated store.
#[derive(Clone)]
pub struct Registry {
    member: Arc<Member>,
    plan: NetworkPlan,
    clock: SharedClock,
    ids: SharedIdentities,
    /// Seals Secrets before they are stored and opens them when read.
    keyring: Arc<SecretsKeyring>,
}

/// Bumped by every write that gives out or changes a Service's addresses,
/// so two Services created at once cannot be given the same one: each
/// write compares it with what was seen when the free addresses were
/// chosen.
const SERVICE_ALLOCATION_GUARD_KEY: &[u8] = b"/registry/flotilla.io/service-allocations";

/// The key that says which node holds a pod subnet: written with the
/// node's `spec.podCIDR` in one transaction, only if absent, so no two
/// nodes ever hold one subnet, whatever leaders come and go.
fn pod_cidr_key(cidr: &str) -> Vec<u8> {
    format!("/registry/flotilla.io/podcidrs/{}", cidr.replace('/', "_")).into_bytes()
}

/// Whether values at `key` are sealed: the keys of kinds whose strategy
/// keeps them encrypted at rest.
fn sealed_at_rest(key: &[u8]) -> bool {
    sealed_prefixes().iter().any(|p| key.starts_with(p.as_bytes()))
}

/// The store prefixes of the kinds sealed at rest.
fn sealed_prefixes() -> &'static [String] {
    static PREFIXES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    PREFIXES.get_or_init(|| RESOURCES.iter().filter(|r| r.strategy.sealed_at_rest()).map(|r| r.prefix()).collect())
}

/// Every stored value of the kinds sealed at rest, a page at a time.
struct SealedPages<'a> {
    member: &'a Member,
    consistency: Consistency,
    prefix: usize,
    cursor: Option<Vec<u8>>,
}

impl<'a> SealedPages<'a> {
    fn new(member: &'a Member, consistency: Consistency) -> Self {
        SealedPages { member, consistency, prefix: 0, cursor: None }
    }

    /// The next page; None once every sealed kind has been read.
    async fn next(&mut self) -> Result<Option<Vec<KeyValue>>, RegistryError> {
        let Some(prefix) = sealed_prefixes().get(self.prefix) else { return Ok(None) };
        let page = self.member.range(prefix.as_bytes(), LIST_PAGE, self.cursor.as_deref(), self.consistency).await?;
        self.cursor = if page.more { page.kvs.last().map(|kv| kv.key.clone()) } else { None };
        if self.cursor.is_none() {
            self.prefix += 1;
        }
        Ok(Some(page.kvs))
    }
}

impl Registry {
    pub fn new(member: Arc<Member>) -> Self {
        let keyring = Arc::new(SecretsKeyring::from_ca_key(&member.ca().key_pem));
        Registry { member, plan: NetworkPlan::default(), clock: crate::clock::system(), ids: RandomIdentities::from_entropy(), keyring }
    }

    /// The stored form of `obj` at `key`: sealed where the keyring seals
    /// that key, with the compare the write must carry.
    async fn stored(&self, key: &[u8], obj: &Value) -> Result<(Vec<u8>, Option<(Compare, String)>), RegistryError> {
        let plain = encode(obj);
        if !sealed_at_rest(key) {
            return Ok((plain, None));
        }
        let sealed = self.keyring.seal(&self.member, key, &plain).await?;
        Ok((sealed.value, Some((sealed.guard, sealed.key_name))))
    }

    /// The object a stored key-value holds, opened if sealed.
    async fn load(&self, kv: &KeyValue) -> Result<Value, RegistryError> {
        load(&self.keyring, &self.member, kv).await
    }

    /// The clock timestamps (creation, deletion deadlines, events) are
    /// read from.
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
        self
    }

    /// Where uids and generated names come from.
    pub fn with_identities(mut self, ids: SharedIdentities) -> Self {
        self.ids = ids;
        self
    }

    fn wall(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_millis(self.clock.wall_unix_ms())
    }

    fn now(&self) -> String {
        object::timestamp(self.wall())
    }

    fn context<'a>(&self, namespace: Option<&'a str>) -> AdmissionContext<'a> {
        AdmissionContext { namespace, now: self.now(), uid: self.ids.uid(), name_suffix: self.ids.name_suffix() }
    }

    /// The address plan Services and nodes are given addresses from.
    pub fn with_network_plan(mut self, plan: NetworkPlan) -> Self {
        self.plan = plan;
        self
    }

    pub fn network_plan(&self) -> &NetworkPlan {
        &self.plan
    }

    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    fn ns<'a>(res: &Resource, namespace: Option<&'a str>) -> Option<&'a str> {
        if res.namespaced {
            namespace
        } else {
            None
        }
    }

    /// Reads one object.
    pub async fn get(&self, res: &Resource, namespace: Option<&str>, name: &str) -> Result<Value, RegistryError> {
        let key = res.key(Self::ns(res, namespace), name);
        let (kv, _) = self.member.get(key.as_bytes(), Consistency::Linearizable).await?;
        let kv = kv.ok_or_else(|| RegistryError::NotFound { kind: res.plural.into(), name: name.into() })?;
        self.load(&kv).await
    }

    /// Lists objects (in one namespace or all), filtered by selectors, with
    /// paging: `limit` 0 means all; the returned token continues the list.
    pub async fn list(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        labels: &Selector,
        fields: &Selector,
        limit: usize,
        continue_from: Option<&str>,
    ) -> Result<(Vec<Value>, u64, Option<String>), RegistryError> {
        let prefix = res.namespace_prefix(Self::ns(res, namespace));
        let mut cursor: Option<Vec<u8>> = continue_from.map(|c| c.as_bytes().to_vec());
        if let Some(c) = &cursor {
            if !c.starts_with(prefix.as_bytes()) {
                return Err(RegistryError::BadRequest("the continue token does not belong to this list; start the list again".into()));
            }
        }
        let mut items = Vec::new();
        let mut revision = None;
        loop {
            let page = self
                .member
                .range(
                    prefix.as_bytes(),
                    LIST_PAGE,
                    cursor.as_deref(),
                    if revision.is_none() { Consistency::Linearizable } else { Consistency::Serializable },
                )
                .await?;
            revision.get_or_insert(page.revision);
            for kv in &page.kvs {
                let o = self.load(kv).await?;
                if labels.matches_object(&o) && fields.matches_fields(&o) {
                    items.push(o);
                    if limit > 0 && items.len() == limit {
                        let more = page.more || kv.key != page.kvs.last().map(|l| l.key.clone()).unwrap_or_default();
                        let token = more.then(|| String::from_utf8_lossy(&kv.key).into_owned());
                        return Ok((items, revision.unwrap_or(0), token));
                    }
                }
            }
            if !page.more {
                return Ok((items, revision.unwrap_or(0), None));
            }
            cursor = page.kvs.last().map(|kv| kv.key.clone());
        }
    }

    async fn namespace_ready(&self, namespace: &str) -> Result<(), RegistryError> {
        let ns_res = &NAMESPACES;
        match self.get(ns_res, None, namespace).await {
            Ok(ns) if ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") => {
                Err(RegistryError::NamespaceTerminating(namespace.into()))
            }
            Ok(_) => Ok(()),
            Err(RegistryError::NotFound { .. }) => Err(RegistryError::NamespaceNotFound(namespace.into())),
            Err(e) => Err(e),
        }
    }

    /// Creates an object after admission; 409 if it exists.
    pub async fn create(&self, res: &Resource, namespace: Option<&str>, mut obj: Value) -> Result<Value, RegistryError> {
        let ns = if res.namespaced { Some(namespace.unwrap_or("default")) } else { None };
        admit_create(res, &mut obj, &self.context(ns))?;
        if let Some(ns) = ns {
            self.namespace_ready(ns).await?;
        }
        let name = object::name(&obj).unwrap_or_default().to_string();
        let key = res.key(ns, &name).into_bytes();
        if res.strategy.allocation() == Allocation::ServiceAddresses {
            return self.create_service(res, ns.unwrap_or("default"), &name, key, obj).await;
        }
        let mut companions = Vec::new();
        let mut companion_guards = Vec::new();
        for (plural, mut companion) in res.strategy.created_with(&obj) {
            let Some(companion_res) = crate::model::kinds::lookup(plural) else { continue };
            let companion_ns = if companion_res.namespaced { object::namespace(&companion).map(String::from) } else { None };
            admit_create(companion_res, &mut companion, &self.context(companion_ns.as_deref()))?;
            let companion_name = object::name(&companion).unwrap_or_default().to_string();
            let key = companion_res.key(companion_ns.as_deref(), &companion_name).into_bytes();
            let (value, guard) = self.stored(&key, &companion).await?;
            companions.push(TxnOp::Put { key, value });
            if let Some((guard, _)) = guard {
                companion_guards.push(guard);
            }
        }
        if self.put_if_with(key, CompareTarget::CreateRevision(0), &mut obj, companion_guards, companions).await? {
            Ok(obj)
        } else {
            Err(RegistryError::AlreadyExists { kind: res.plural.into(), name })
        }
    }

    /// What Services hold now (but `skip`, `namespace/name`), and the
    /// compare that makes a write fail if that changes before it lands.
    async fn service_allocations(&self, skip: &str) -> Result<(Compare, Taken), RegistryError> {
        let (guard, _) = self.member.get(SERVICE_ALLOCATION_GUARD_KEY, Consistency::Linearizable).await?;
        let target = guard.map_or(CompareTarget::CreateRevision(0), |kv| CompareTarget::ModRevision(kv.mod_revision));
        let compare = Compare { key: SERVICE_ALLOCATION_GUARD_KEY.to_vec(), op: CompareOp::Equal, target };
        let services = &SERVICES;
        let (items, _, _) = self.list(services, None, &Selector::default(), &Selector::default(), 0, None).await?;
        Ok((compare, Taken::of(&items, skip)))
    }

    fn alloc_error(name: &str, e: AllocError) -> RegistryError {
        match e {
            AllocError::NodePortTaken { .. } | AllocError::ClusterIpTaken { .. } => {
                RegistryError::Conflict { kind: "services".into(), name: name.into(), message: e.to_string() }
            }
            AllocError::OutOfRange { .. } | AllocError::Immutable { .. } => {
                let text = e.to_string();
                let (field, message) = text.split_once(": ").unwrap_or(("spec", &text));
                RegistryError::Admission(AdmissionError::Invalid {
                    kind: "Service".into(),
                    name: name.into(),
                    errors: vec![crate::model::admission::FieldError { field: field.into(), message: message.into() }],
                })
            }
            AllocError::Exhausted { .. } => RegistryError::Internal(e.to_string()),
        }
    }

    /// Creates a Service with a ClusterIP (and node ports) no other holds.
    async fn create_service(&self, res: &Resource, ns: &str, name: &str, key: Vec<u8>, obj: Value) -> Result<Value, RegistryError> {
        let owner = format!("{ns}/{name}");
        for _ in 0..ALLOCATION_RETRIES_MAX {
            let (guard, taken) = self.service_allocations(&owner).await?;
            let mut svc = obj.clone();
            assign_service(&mut svc, None, &taken, &self.plan, &owner).map_err(|e| Self::alloc_error(name, e))?;
            let bump = TxnOp::Put { key: SERVICE_ALLOCATION_GUARD_KEY.to_vec(), value: owner.as_bytes().to_vec() };
            if self.put_if_with(key.clone(), CompareTarget::CreateRevision(0), &mut svc, vec![guard], vec![bump]).await? {
                return Ok(svc);
            }
            if self.get(res, Some(ns), name).await.is_ok() {
                return Err(RegistryError::AlreadyExists { kind: res.plural.into(), name: name.into() });
            }
        }
        Err(RegistryError::Conflict {
            kind: res.plural.into(),
            name: name.into(),
            message: "too many services created at once; try again".into(),
        })
    }

    /// Creates many objects of one namespace in one store transaction (one
    /// Raft entry): what a controller making replicas needs. All or none:
    /// if any name is taken the transaction fails with AlreadyExists and
    /// the caller creates them one by one.
    pub async fn create_many(&self, res: &Resource, namespace: Option<&str>, objects: Vec<Value>) -> Result<Vec<Value>, RegistryError> {
        let ns = if res.namespaced { Some(namespace.unwrap_or("default")) } else { None };
        if let Some(ns) = ns {
            self.namespace_ready(ns).await?;
        }
        let mut admitted = Vec::with_capacity(objects.len());
        let mut compares = Vec::with_capacity(objects.len());
        let mut puts = Vec::with_capacity(objects.len());
        for mut obj in objects {
            admit_create(res, &mut obj, &self.context(ns))?;
            let key = res.key(ns, object::name(&obj).unwrap_or_default()).into_bytes();
            compares.push(Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::CreateRevision(0) });
            let (value, guard) = self.stored(&key, &obj).await?;
            compares.extend(guard.map(|(g, _)| g));
            puts.push(TxnOp::Put { key, value });
            admitted.push(obj);
        }
        let result = self.member.txn(compares, puts, vec![]).await?;
        if !matches!(result.outcome, Outcome::Txn { succeeded: true, .. }) {
            return Err(RegistryError::AlreadyExists { kind: res.plural.into(), name: "one of a batch".into() });
        }
        for obj in &mut admitted {
            object::metadata_mut(obj).insert("resourceVersion".into(), json!(result.revision.to_string()));
        }
        Ok(admitted)
    }

    /// Removes many objects at once, unconditionally, in one transaction
    /// (no grace, no dependents): for evicting the pods of a lost node.
    /// Returns the revision of the write.
    pub async fn delete_many_now(&self, res: &Resource, items: &[(String, String)]) -> Result<u64, RegistryError> {
        let ops: Vec<TxnOp> = items
            .iter()
            .map(|(ns, name)| TxnOp::Delete { key: res.key(Self::ns(res, Some(ns)), name).into_bytes(), prefix: false })
            .collect();
        let result = self.member.txn(vec![], ops, vec![]).await?;
        Ok(result.revision)
    }

    /// Writes `obj` at `key` if the key's state matches `expected`; on
    /// success sets the object's resourceVersion to the write's revision.
    async fn put_if(&self, key: Vec<u8>, expected: CompareTarget, obj: &mut Value) -> Result<bool, RegistryError> {
        self.put_if_with(key, expected, obj, vec![], vec![]).await
    }

    /// `put_if`, with more compares that must hold and more writes made in
    /// the same transaction.
    async fn put_if_with(
        &self,
        key: Vec<u8>,
        expected: CompareTarget,
        obj: &mut Value,
        mut compares: Vec<Compare>,
        also: Vec<TxnOp>,
    ) -> Result<bool, RegistryError> {
        compares.insert(0, Compare { key: key.clone(), op: CompareOp::Equal, target: expected });
        for _ in 0..=KEYRING_RESEALS_MAX {
            let (value, guard) = self.stored(&key, obj).await?;
            let Some((guard, sealed_under)) = guard else {
                let mut ops = also;
                ops.insert(0, TxnOp::Put { key, value });
                return self.commit(compares, ops, obj).await;
            };
            let mut sealed_compares = compares.clone();
            sealed_compares.push(guard);
            let mut ops = also.clone();
            ops.insert(0, TxnOp::Put { key: key.clone(), value });
            if self.commit(sealed_compares, ops, obj).await? {
                return Ok(true);
            }
            // A Secret's write also fails when its data key was retired
            // meanwhile (a rotation): sealed again under the new one, it is
            // not a conflict. Anything else is the caller's to answer.
            self.keyring.reload(&self.member).await?;
            if self.keyring.is_active(&sealed_under) {
                return Ok(false);
            }
        }
        Ok(false)
    }

    /// Runs the write; on success sets the object's resourceVersion to its
    /// revision.
    async fn commit(&self, compares: Vec<Compare>, ops: Vec<TxnOp>, obj: &mut Value) -> Result<bool, RegistryError> {
        let result = self.member.txn(compares, ops, vec![]).await?;
        let succeeded = matches!(result.outcome, Outcome::Txn { succeeded: true, .. });
        if succeeded {
            object::metadata_mut(obj).insert("resourceVersion".into(), json!(result.revision.to_string()));
        }
        Ok(succeeded)
    }

    /// Binds pods to nodes in one transaction: each pod is written back with
    /// `spec.nodeName` and a PodScheduled condition, only if no pod changed
    /// since it was read and every node still exists. Returns the
    /// revision of the write, or None when a comparison failed (bind the
    /// pods one by one to find out which).
    pub async fn bind_pods(&self, binds: &[(&Value, &str)]) -> Result<Option<u64>, RegistryError> {
        let pods = &PODS;
        let nodes = &NODES;
        let mut compares = Vec::with_capacity(binds.len() * 2);
        let mut puts = Vec::with_capacity(binds.len());
        let mut seen_nodes = std::collections::HashSet::new();
        let now = self.now();
        for (pod, node) in binds {
            let key = pods.key(object::namespace(pod), object::name(pod).unwrap_or_default()).into_bytes();
            let rv = object::resource_version(pod).unwrap_or(0);
            compares.push(Compare { key: key.clone(), op: CompareOp::Equal, target: CompareTarget::ModRevision(rv) });
            if seen_nodes.insert(*node) {
                let node_key = nodes.key(None, node).into_bytes();
                compares.push(Compare { key: node_key, op: CompareOp::Greater, target: CompareTarget::CreateRevision(0) });
            }
            let mut bound = (*pod).clone();
            bound["spec"]["nodeName"] = json!(node);
            set_condition(&mut bound, json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now}));
            puts.push(TxnOp::Put { key, value: encode(&bound) });
        }
        let result = self.member.txn(compares, puts, vec![]).await?;
        Ok(matches!(result.outcome, Outcome::Txn { succeeded: true, .. }).then_some(result.revision))
    }

    /// Replaces an object. If the body carries a resourceVersion it must be
    /// the current one (409 otherwise); without one the write is
    /// unconditional. `subresource` is `Some("status")` for status writes.
    pub async fn update(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        name: &str,
        obj: Value,
        subresource: Option<&str>,
    ) -> Result<Value, RegistryError> {
        let precondition = object::resource_version(&obj);
        if object::meta_str(&obj, "resourceVersion").is_some() && precondition.is_none() {
            return Err(RegistryError::BadRequest("metadata.resourceVersion must be a number as returned by the server".into()));
        }
        self.read_modify_write(res, namespace, name, precondition, |_old| Ok(obj.clone()), subresource).await
    }

    /// Applies a JSON merge patch (RFC 7386) to an object.
    pub async fn patch(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        name: &str,
        patch: Value,
        subresource: Option<&str>,
    ) -> Result<Value, RegistryError> {
        let precondition = object::precondition(patch.pointer("/metadata/resourceVersion"), "metadata.resourceVersion")
            .map_err(RegistryError::BadRequest)?;
        self.read_modify_write(
            res,
            namespace,
            name,
            precondition,
            |old| {
                let mut new = old.clone();
                merge_patch(&mut new, &patch);
                Ok(new)
            },
            subresource,
        )
        .await
    }

    /// Replaces an object's status (the status subresource), retrying a
    /// lost race: what controllers and agents report.
    pub async fn write_status(&self, res: &Resource, namespace: Option<&str>, name: &str, status: &Value) -> Result<Value, RegistryError> {
        let change = |old: &Value| {
            let mut new = old.clone();
            new["status"] = status.clone();
            Ok(new)
        };
        self.read_modify_write(res, namespace, name, None, change, Some("status")).await
    }

    /// Reads, changes with `change`, admits and writes back if nothing moved
    /// in between (retrying a lost race when there is no precondition).
    pub async fn read_modify_write<F>(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        name: &str,
        precondition: Option<u64>,
        change: F,
        subresource: Option<&str>,
    ) -> Result<Value, RegistryError>
    where
        F: Fn(&Value) -> Result<Value, RegistryError>,
    {
        let ns = Self::ns(res, namespace);
        let key = res.key(ns, name).into_bytes();
        for _ in 0..UPDATE_RETRIES_MAX {
            let old = self.get(res, ns, name).await?;
            let current = object::resource_version(&old).unwrap_or(0);
            if let Some(expected) = precondition {
                if expected != current {
                    return Err(RegistryError::Conflict {
                        kind: res.plural.into(),
                        name: name.into(),
                        message: "the object has been modified; please apply your changes to the latest version and try again".into(),
                    });
                }
            }
            let mut new = change(&old)?;
            if res.strategy.allocation() == Allocation::ServiceAddresses && subresource.is_none() {
                crate::model::addresses::fit_to_type(&old, &mut new);
            }
            admit_update(res, &old, &mut new, &self.context(ns.or(if res.namespaced { Some("default") } else { None })), subresource)?;
            let (mut compares, mut also) = (vec![], vec![]);
            if res.strategy.allocation() == Allocation::ServiceAddresses && subresource.is_none() {
                let owner = format!("{}/{name}", ns.unwrap_or("default"));
                let (guard, taken) = self.service_allocations(&owner).await?;
                assign_service(&mut new, Some(&old), &taken, &self.plan, &owner).map_err(|e| Self::alloc_error(name, e))?;
                compares.push(guard);
                also.push(TxnOp::Put { key: SERVICE_ALLOCATION_GUARD_KEY.to_vec(), value: owner.into_bytes() });
            }
            if strip_rv(&new) == strip_rv(&old) {
                return Ok(old);
            }
            let guarded = !compares.is_empty();
            if self.put_if_with(key.clone(), CompareTarget::ModRevision(current), &mut new, compares, also).await? {
                return Ok(new);
            }
            // Another Service's allocation moved the guard, not this object:
            // try again even under a precondition.
            if guarded && self.get(res, ns, name).await.ok().and_then(|o| object::resource_version(&o)) == Some(current) {
                continue;
            }
            if precondition.is_some() {
                return Err(RegistryError::Conflict {
                    kind: res.plural.into(),
                    name: name.into(),
                    message: "the object has been modified; please apply your changes to the latest version and try again".into(),
                });
            }
        }
        Err(RegistryError::Conflict {
            kind: res.plural.into(),
            name: name.into(),
            message: "too many concurrent writers; try again".into(),
        })
    }

    /// Deletes an object, then (unless orphaning) what it owns, before it
    /// answers; a namespace takes everything in it along.
    ///
    /// A pod bound to a node is deleted gracefully: it is marked with a
    /// deletionTimestamp, its node's agent stops its containers and then
    /// removes it. `grace_period_seconds` of 0 removes it at once (force).
    pub async fn delete(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        name: &str,
        precondition: Option<u64>,
        propagation: Propagation,
    ) -> Result<Value, RegistryError> {
        self.delete_with_grace(res, namespace, name, precondition, propagation, None).await
    }

    pub async fn delete_with_grace(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        name: &str,
        precondition: Option<u64>,
        propagation: Propagation,
        grace_period_seconds: Option<i64>,
    ) -> Result<Value, RegistryError> {
        let ns = Self::ns(res, namespace);
        if res.strategy.deletion() == Deletion::Finalized {
            return self.delete_namespace(name).await;
        }
        if propagation == Propagation::Orphan {
            // The references go first: a dependent that still named a
            // deleted owner would be collected as an orphan.
            let current = self.get(res, ns, name).await?;
            if let Some(uid) = object::uid(&current) {
                self.orphan_dependents(uid, ns).await?;
            }
        }
        let old = self.delete_one(res, ns, name, precondition, grace_period_seconds).await?;
        let removed = object::meta_str(&old, "deletionTimestamp").is_none();
        if propagation == Propagation::Background && removed {
            if let Some(uid) = object::uid(&old) {
                self.delete_dependents(uid, ns).await;
            }
        }
        Ok(old)
    }

    /// Deletes one object as its kind deletes: a pod bound to a node is
    /// marked for its agent to stop (unless the grace period is 0), anything
    /// else is removed.
    async fn delete_one(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        precondition: Option<u64>,
        grace_period_seconds: Option<i64>,
    ) -> Result<Value, RegistryError> {
        if res.strategy.deletion() == Deletion::GracefulOnNode && grace_period_seconds != Some(0) {
            let current = self.get(res, ns, name).await?;
            if current.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) {
                return self.mark_terminating(res, ns, name, current, precondition, grace_period_seconds).await;
            }
        }
        self.delete_object(res, ns, name, precondition).await
    }

    /// The namespaced objects (in `namespace`, or everywhere for a
    /// cluster-scoped owner) that name an owner: each kind listed once.
    async fn owned_objects(&self, namespace: Option<&str>) -> Vec<(&'static Resource, Value)> {
        let mut owned = Vec::new();
        for res in RESOURCES.iter().filter(|r| r.namespaced) {
            match self.list(res, namespace, &Selector::default(), &Selector::default(), 0, None).await {
                Ok((items, _, _)) => owned.extend(items.into_iter().filter(|o| !object::owner_uids(o).is_empty()).map(|o| (res, o))),
                Err(e) => tracing::warn!(kind = res.kind, error = %e, "garbage collection could not list possible dependents"),
            }
        }
        owned
    }

    /// Deletes what the deleted owner `uid` owned, and what that owned in
    /// turn, within the request: no task outlives it. A dependent that
    /// also names an owner that stays only loses the deleted owners'
    /// references, as in Kubernetes. What fails here is logged and left to
    /// the leader's garbage collector, which finds what an interrupted
    /// cascade left behind.
    async fn delete_dependents(&self, uid: &str, namespace: Option<&str>) {
        let owned = self.owned_objects(namespace).await;
        let mut gone: HashSet<String> = HashSet::from([uid.to_string()]);
        let mut handled = vec![false; owned.len()];
        // Each round handles the dependents of what the last round deleted.
        loop {
            let mut progressed = false;
            for (i, (res, item)) in owned.iter().enumerate() {
                let owners = object::owner_uids(item);
                if handled[i] || !owners.iter().any(|u| gone.contains(u)) {
                    continue;
                }
                handled[i] = true;
                progressed = true;
                let (ns, name) = (object::namespace(item), object::name(item).unwrap_or_default());
                let result = if owners.iter().all(|u| gone.contains(u)) {
                    match self.delete_one(res, ns, name, None, None).await {
                        Ok(_) | Err(RegistryError::NotFound { .. }) => {
                            gone.extend(object::uid(item).map(String::from));
                            Ok(())
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    self.drop_owner_references(res, ns, name, &gone).await
                };
                if let Err(e) = result {
                    tracing::warn!(kind = res.kind, name, error = %e, "garbage collection could not handle a dependent");
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Takes the owner reference to `uid` off everything that names it.
    async fn orphan_dependents(&self, uid: &str, namespace: Option<&str>) -> Result<(), RegistryError> {
        let owners = HashSet::from([uid.to_string()]);
        for (res, item) in self.owned_objects(namespace).await {
            if object::owner_uids(&item).iter().any(|u| u == uid) {
                let (ns, name) = (object::namespace(&item), object::name(&item).unwrap_or_default());
                match self.drop_owner_references(res, ns, name, &owners).await {
                    Ok(()) | Err(RegistryError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    async fn drop_owner_references(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        owners: &HashSet<String>,
    ) -> Result<(), RegistryError> {
        let change = |old: &Value| {
            let mut new = old.clone();
            if let Some(refs) = new.pointer_mut("/metadata/ownerReferences").and_then(Value::as_array_mut) {
                refs.retain(|r| !r.get("uid").and_then(Value::as_str).is_some_and(|u| owners.contains(u)));
                if refs.is_empty() {
                    // As Kubernetes serialises it: no owners, no field.
                    object::metadata_mut(&mut new).remove("ownerReferences");
                }
            }
            Ok(new)
        };
        self.read_modify_write(res, ns, name, None, change, None).await.map(drop)
    }

    /// Removes an object now, without a grace period (the agent's last step
    /// of a pod's graceful deletion).
    pub async fn delete_now(
        &self,
        res: &Resource,
        namespace: Option<&str>,
        name: &str,
        precondition: Option<u64>,
    ) -> Result<Value, RegistryError> {
        self.delete_object(res, Self::ns(res, namespace), name, precondition).await
    }

    /// Sets deletionTimestamp (now + grace) on a pod; idempotent.
    async fn mark_terminating(
        &self,
        res: &Resource,
        ns: Option<&str>,
        name: &str,
        current: Value,
        precondition: Option<u64>,
        grace: Option<i64>,
    ) -> Result<Value, RegistryError> {
        if object::meta_str(&current, "deletionTimestamp").is_some() {
            return Ok(current);
        }
        let rv = object::resource_version(&current).unwrap_or(0);
        if precondition.is_some_and(|p| p != rv) {
            return Err(RegistryError::Conflict {
                kind: res.plural.into(),
                name: name.into(),
                message: "the resourceVersion precondition does not match".into(),
            });
        }
        let grace = grace
            .or_else(|| current.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_i64))
            .unwrap_or(30)
            .clamp(0, crate::limits::GRACE_PERIOD_SECONDS_MAX);
        let mut new = current.clone();
        let deadline = self.wall() + Duration::from_secs(grace as u64);
        let meta = object::metadata_mut(&mut new);
        meta.insert("deletionTimestamp".into(), json!(object::timestamp(deadline)));
        meta.insert("deletionGracePeriodSeconds".into(), json!(grace));
        let key = res.key(ns, name).into_bytes();
        match self.put_if(key, CompareTarget::ModRevision(rv), &mut new).await? {
            true => Ok(new),
            false => Err(RegistryError::Conflict {
                kind: res.plural.into(),
                name: name.into(),
                message: "the pod changed while it was being deleted; try again".into(),
            }),
        }
    }

    /// Gives `node` the pod subnet `cidr` unless it has one: Ok(the node),
    /// or Conflict when another node holds the subnet.
    pub async fn assign_pod_cidr(&self, node: &str, cidr: &str) -> Result<Value, RegistryError> {
        let nodes = &NODES;
        for _ in 0..UPDATE_RETRIES_MAX {
            let old = self.get(nodes, None, node).await?;
            if old.pointer("/spec/podCIDR").and_then(Value::as_str).is_some_and(|c| !c.is_empty()) {
                return Ok(old);
            }
            let current = object::resource_version(&old).unwrap_or(0);
            let mut new = old.clone();
            new["spec"]["podCIDR"] = json!(cidr);
            new["spec"]["podCIDRs"] = json!([cidr]);
            let reserve = Compare { key: pod_cidr_key(cidr), op: CompareOp::Equal, target: CompareTarget::CreateRevision(0) };
            let hold = TxnOp::Put { key: pod_cidr_key(cidr), value: node.as_bytes().to_vec() };
            let key = nodes.key(None, node).into_bytes();
            if self.put_if_with(key, CompareTarget::ModRevision(current), &mut new, vec![reserve], vec![hold]).await? {
                return Ok(new);
            }
            let (holder, _) = self.member.get(&pod_cidr_key(cidr), Consistency::Linearizable).await?;
            if let Some(holder) = holder {
                return Err(RegistryError::Conflict {
                    kind: "nodes".into(),
                    name: node.into(),
                    message: format!("pod subnet {cidr} is held by node {}", String::from_utf8_lossy(&holder.value)),
                });
            }
        }
        Err(RegistryError::Conflict { kind: "nodes".into(), name: node.into(), message: "the node kept changing; try again".into() })
    }

    /// Deletes one object if its revision still matches; nothing else.
    async fn delete_object(&self, res: &Resource, ns: Option<&str>, name: &str, precondition: Option<u64>) -> Result<Value, RegistryError> {
        let key = res.key(ns, name).into_bytes();
        let old = self.get(res, ns, name).await?;
        let current = object::resource_version(&old).unwrap_or(0);
        if precondition.is_some_and(|p| p != current) {
            return Err(RegistryError::Conflict {
                kind: res.plural.into(),
                name: name.into(),
                message: "the resourceVersion precondition does not match".into(),
            });
        }
        let mut ops = vec![TxnOp::Delete { key: key.clone(), prefix: false }];
        // A node's pod subnet is free again once the node is gone.
        if res.strategy.allocation() == Allocation::PodSubnet {
            if let Some(cidr) = old.pointer("/spec/podCIDR").and_then(Value::as_str).filter(|c| !c.is_empty()) {
                ops.push(TxnOp::Delete { key: pod_cidr_key(cidr), prefix: false });
            }
        }
        ops.extend(res.strategy.keys_deleted_with(&old).into_iter().map(|key| TxnOp::Delete { key, prefix: false }));
        let result =
            self.member.txn(vec![Compare { key, op: CompareOp::Equal, target: CompareTarget::ModRevision(current) }], ops, vec![]).await?;
        match result.outcome {
            Outcome::Txn { succeeded: true, results } if matches!(results.first(), Some(TxnOpResult::Delete { deleted: 1 })) => {}
            _ => {
                return Err(RegistryError::Conflict {
                    kind: res.plural.into(),
                    name: name.into(),
                    message: "the object changed while it was being deleted; try again".into(),
                })
            }
        }
        Ok(old)
    }

    async fn delete_namespace(&self, name: &str) -> Result<Value, RegistryError> {
        let ns_res = &NAMESPACES;
        if matches!(name, "default" | "flotilla-system") {
            return Err(RegistryError::BadRequest(format!("namespace {name:?} is part of the cluster and cannot be deleted")));
        }
        let terminating = self
            .read_modify_write(
                ns_res,
                None,
                name,
                None,
                |old| {
                    let mut new = old.clone();
                    new["status"] = json!({"phase": "Terminating"});
                    Ok(new)
                },
                Some("status"),
            )
            .await?;
        // Done here when it can be; a Terminating namespace left behind
        // (a failure, a crash) is finished by the leader's namespace
        // controller, which tries again every resync.
        if let Err(e) = self.finish_namespace_delete(name).await {
            tracing::warn!(namespace = %name, error = %e, "namespace cleanup failed; the namespace controller will finish it");
        }
        Ok(terminating)
    }

    /// Removes everything in a Terminating namespace, then the namespace.
    pub async fn finish_namespace_delete(&self, name: &str) -> Result<(), RegistryError> {
        for res in RESOURCES.iter().filter(|r| r.namespaced) {
            let prefix = res.namespace_prefix(Some(name));
            self.member.delete(prefix.into_bytes(), true).await?;
        }
        let ns_res = &NAMESPACES;
        self.member.delete(ns_res.key(None, name).into_bytes(), false).await?;
        Ok(())
    }

    /// Watches a resource from `from_revision` (exclusive: events after it),
    /// or from now when 0.
    pub fn watch(&self, res: &Resource, namespace: Option<&str>, after_revision: u64) -> Result<RegistryWatch, RegistryError> {
        let prefix = res.namespace_prefix(Self::ns(res, namespace));
        let from = match after_revision {
            0 => 0,
            rv => rv
                .checked_add(1)
                .ok_or_else(|| RegistryError::BadRequest(format!("resourceVersion {rv} is beyond any revision the store can reach")))?,
        };
        match self.member.watch(prefix.into_bytes(), from) {
            Ok(w) => Ok(RegistryWatch { inner: w, keyring: self.keyring.clone(), member: self.member.clone() }),
            Err(StoreError::Compacted { requested, compact_revision }) => {
                Err(RegistryError::Expired { requested: requested.saturating_sub(1), oldest: compact_revision })
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Rotates the data key that seals Secrets: a new key, every Secret
    /// sealed again under it, then the old keys deleted. Safe to run again
    /// after a crash part-way (a further key is made; the old ones stay
    /// readable until nothing is sealed under them).
    pub async fn rotate_secrets_key(&self) -> Result<KeyRotation, RegistryError> {
        self.keyring.add_key(&self.member, true).await?;
        let mut resealed = 0;
        for _ in 0..KEYRING_RESEALS_MAX {
            let (moved, left) = self.reseal_all().await?;
            resealed += moved;
            if left > 0 {
                continue;
            }
            // Once a key is marked retiring nothing new can be sealed under
            // it (writes compare its record), so a scan that starts after
            // the mark and finds nothing under it proves it unused, even
            // when another rotation marked it after this one began.
            let retiring = self.keyring.retiring(&self.member).await?;
            if self.sealed_under_any(&retiring).await? > 0 {
                continue;
            }
            let retired = self.keyring.delete_keys(&self.member, &retiring).await?;
            let key = self.keyring.active_name().unwrap_or_default();
            return Ok(KeyRotation { key, resealed, retired });
        }
        Err(RegistryError::Conflict {
            kind: "secrets".into(),
            name: String::new(),
            message: "Secrets kept changing under the rotation; run it again (the new key is in use and the old ones are kept)".into(),
        })
    }

    /// How many stored values of the sealed kinds are under one of `keys`
    /// or not sealed at all (linearizable).
    async fn sealed_under_any(&self, keys: &[(String, u64)]) -> Result<usize, RegistryError> {
        let mut found = 0;
        let mut pages = SealedPages::new(&self.member, Consistency::Linearizable);
        while let Some(kvs) = pages.next().await? {
            found += kvs
                .iter()
                .filter(|kv| SecretsKeyring::sealed_under(&kv.value).is_none_or(|k| keys.iter().any(|(name, _)| name == k)))
                .count();
        }
        Ok(found)
    }

    /// Seals again, under the active key, every value of every sealed kind
    /// that is not: answers (how many were rewritten, how many are still
    /// under another key because they changed meanwhile).
    async fn reseal_all(&self) -> Result<(usize, usize), RegistryError> {
        let (mut moved, mut left) = (0, 0);
        let mut pages = SealedPages::new(&self.member, Consistency::Linearizable);
        while let Some(kvs) = pages.next().await? {
            for kv in kvs {
                if SecretsKeyring::sealed_under(&kv.value).is_some_and(|k| self.keyring.is_active(k)) {
                    continue;
                }
                let mut obj = self.load(&kv).await?;
                if self.put_if(kv.key, CompareTarget::ModRevision(kv.mod_revision), &mut obj).await? {
                    moved += 1;
                } else {
                    left += 1;
                }
            }
        }
        Ok((moved, left))
    }

    /// The data keys, and how many stored values each seals (for
    /// `flotilla secrets-encrypt status`); values under no key are counted
    /// under "plain".
    pub async fn secrets_key_status(&self) -> Result<Vec<(String, &'static str, usize)>, RegistryError> {
        self.keyring.reload(&self.member).await?;
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        let mut pages = SealedPages::new(&self.member, Consistency::Serializable);
        while let Some(kvs) = pages.next().await? {
            for kv in &kvs {
                *counts.entry(SecretsKeyring::sealed_under(&kv.value).unwrap_or("plain").to_string()).or_default() += 1;
            }
        }
        let mut out: Vec<(String, &'static str, usize)> = self
            .keyring
            .keys()
            .into_iter()
            .map(|(name, retiring)| {
                let state = if retiring {
                    "retiring"
                } else if self.keyring.is_active(&name) {
                    "active"
                } else {
                    "readable"
                };
                let n = counts.remove(&name).unwrap_or(0);
                (name, state, n)
            })
            .collect();
        // What is left: values stored in plain (written around the
        // registry) or under a key the store no longer holds.
        out.extend(counts.into_iter().map(|(name, n)| {
            let state = if name == "plain" { "not encrypted" } else { "key missing" };
            (name, state, n)
        }));
        Ok(out)
    }

    /// Creates what every cluster has, if missing: the namespaces `default`
    /// and `flotilla-system`, and the default RBAC roles and bindings.
    pub async fn ensure_builtin_objects(&self) -> Result<(), RegistryError> {
        let ns_res = &NAMESPACES;
        for ns in ["default", "flotilla-system"] {
            match self.create(ns_res, None, json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).await {
                Ok(_) | Err(RegistryError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
            // Namespaces made before ServiceAccounts were served have none.
            match self.create(&SERVICE_ACCOUNTS, Some(ns), crate::model::kinds::service_account::default_account(ns)).await {
                Ok(_) | Err(RegistryError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        // The default roles and bindings: created when missing, never
        // overwritten, so an operator's changes to them stay.
        for object in crate::model::rbac::builtin_objects() {
            let Some(res) = crate::model::kinds::by_kind("rbac.authorization.k8s.io/v1", object["kind"].as_str().unwrap_or("")) else {
                continue;
            };
            match self.create(res, None, object).await {
                Ok(_) | Err(RegistryError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The `kubernetes` Service's virtual IP: the first address of the
    /// service range, which the allocator never hands out.
    pub fn api_service_ip(&self) -> Option<std::net::Ipv4Addr> {
        self.plan.service_cidr.nth(1)
    }

    /// The `kubernetes` Service in `default`, as every Kubernetes cluster
    /// has it (port 443 on [`Self::api_service_ip`]), with this API server
    /// (`member`, at `api`) among its endpoints: in-cluster clients find
    /// the API by it.
    pub async fn ensure_api_service(&self, member: u64, api: std::net::SocketAddr) -> Result<(), RegistryError> {
        let Some(vip) = self.api_service_ip() else { return Ok(()) };
        let service = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": vip.to_string(), "sessionAffinity": "None",
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": api.port()}]},
        });
        match self.create(&SERVICES, Some("default"), service).await {
            Ok(_) | Err(RegistryError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
        // The address other machines reach this server at, where it says;
        // a server on every address is reached on this host's loopback.
        let ip = match api.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_unspecified() => ip.to_string(),
            _ => "127.0.0.1".to_string(),
        };
        let hostname = format!("member-{member}");
        let (ip, port) = (ip.as_str(), api.port());
        match self.get(&ENDPOINTS, Some("default"), "kubernetes").await {
            Err(RegistryError::NotFound { .. }) => {
                match self.create(&ENDPOINTS, Some("default"), crate::model::kinds::with_api_server(None, &hostname, ip, port)).await {
                    Ok(_) | Err(RegistryError::AlreadyExists { .. }) => Ok(()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
            Ok(_) => self
                .read_modify_write(
                    &ENDPOINTS,
                    Some("default"),
                    "kubernetes",
                    None,
                    |old| Ok(crate::model::kinds::with_api_server(Some(old), &hostname, ip, port)),
                    None,
                )
                .await
                .map(drop),
        }
    }

    /// Records an Event about `involved` (best effort: failures are logged).
    pub async fn record_event(&self, involved: &Value, event_type: &str, reason: &str, message: &str) {
        let ns = object::namespace(involved).unwrap_or("default").to_string();
        let name = format!("{}.{:x}", object::name(involved).unwrap_or("object"), self.ids.event_suffix());
        let now = self.now();
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                "name": object::name(involved), "namespace": object::namespace(involved), "uid": object::uid(involved),
            },
            "reason": reason, "message": message, "type": event_type,
            "source": {"component": "flotilla"},
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        });
        let events = &EVENTS;
        if let Err(e) = self.create(events, Some(&ns), event).await {
            tracing::debug!(error = %e, reason, "could not record an event");
        }
    }

    /// Waits until the store has applied at least `revision` locally.
    pub async fn wait_applied(&self, revision: u64, timeout: Duration) -> bool {
        let mut rx = self.member.reader().hub().subscribe_revisions();
        tokio::time::timeout(timeout, async {
            loop {
                if rx.borrow_and_update().revision >= revision {
                    return;
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

/// Sets a pod condition by type, keeping the others.
pub fn set_condition(pod: &mut Value, condition: Value) {
    if !pod.get("status").is_some_and(Value::is_object) {
        pod["status"] = json!({});
    }
    let status = pod["status"].as_object_mut().expect("made an object above");
    let conditions = status.entry("conditions").or_insert_with(|| json!([]));
    if !conditions.is_array() {
        *conditions = json!([]);
    }
    let list = conditions.as_array_mut().expect("made an array above");
    match list.iter_mut().find(|c| c.get("type") == condition.get("type")) {
        Some(existing) => *existing = condition,
        None => list.push(condition),
    }
}

fn strip_rv(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    v
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Default::default());
            }
            let t = target.as_object_mut().expect("made an object above");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// What a rotation of the Secrets' data key did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRotation {
    /// The key Secrets are now sealed under.
    pub key: String,
    pub resealed: usize,
    /// Old keys deleted.
    pub retired: usize,
}

/// A watch on one resource, yielding Kubernetes watch events.
pub struct RegistryWatch {
    inner: Watcher,
    keyring: Arc<SecretsKeyring>,
    member: Arc<Member>,
}

/// The object a stored key-value holds, opened first if it is sealed.
async fn load(keyring: &SecretsKeyring, member: &Member, kv: &KeyValue) -> Result<Value, RegistryError> {
    let plain = keyring.open(member, &kv.key, &kv.value).await?;
    decode(&plain, kv.mod_revision).map_err(|e| RegistryError::Internal(e.to_string()))
}

impl RegistryWatch {
    /// The next batch of events, in order.
    pub async fn next(&mut self) -> Result<Vec<WatchEvent>, RegistryError> {
        let flotilla_raft::WatchItem::Events { events, .. } = self.inner.next().await.map_err(|e| match e {
            StoreError::Compacted { requested, compact_revision } => RegistryError::Expired { requested, oldest: compact_revision },
            other => other.into(),
        })?;
        let mut out = Vec::with_capacity(events.len());
        for ev in events {
            let object = load(&self.keyring, &self.member, &ev.kv).await?;
            let kind = match ev.kind {
                EventKind::Delete => WatchEventKind::Deleted,
                EventKind::Put if ev.kv.create_revision == ev.kv.mod_revision => WatchEventKind::Added,
                EventKind::Put => WatchEventKind::Modified,
            };
            out.push(WatchEvent { kind, object });
        }
        Ok(out)
    }

    /// The last revision the watch has fully delivered (for bookmarks).
    pub fn progress_revision(&self) -> u64 {
        self.inner.progress_revision()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc7386() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"spec": {"replicas": 1}});
        merge_patch(&mut t, &json!({"spec": {"replicas": 3}}));
        assert_eq!(t["spec"]["replicas"], 3);
    }
}
