//! The one place leader-side decisions become writes. [`execute`] performs
//! a pass's [`Command`]s through a [`ClusterWriter`] (the registry over
//! Raft in the server, an in-memory store in `flotilla sim`), at most
//! `write_concurrency_max` at a time, and returns one [`Outcome`] per
//! command in the order given, sorting errors by [`retry`].

use std::sync::Arc;

use futures::StreamExt;
use serde_json::{json, Value};

use super::cache::Kind;
use super::command::{retry, Command, Outcome, Retry};
use crate::model::kinds::NAMESPACES;
use crate::model::object;
use crate::registry::{merge_patch, set_condition, Propagation, Registry, RegistryError};

/// The store operations commands are made of.
#[async_trait::async_trait]
pub trait ClusterWriter: Send + Sync {
    /// Creates one object (its namespace from its metadata).
    async fn create(&self, kind: Kind, object: Value) -> Result<Value, RegistryError>;
    /// Creates objects of one namespace in one transaction, all or none.
    async fn create_many(&self, kind: Kind, namespace: &str, objects: Vec<Value>) -> Result<Vec<Value>, RegistryError>;
    /// Reads, changes and writes back if nothing moved in between
    /// (retrying a lost race); `status` writes the status subresource.
    async fn modify(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        change: &(dyn for<'v> Fn(&'v Value) -> Value + Send + Sync),
        status: bool,
    ) -> Result<Value, RegistryError>;
    /// Deletes an object (a bound pod gracefully) and its dependents.
    async fn delete(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Result<Value, RegistryError>;
    /// Removes objects at once in one transaction; the write's revision.
    async fn delete_now(&self, kind: Kind, items: &[(String, String)]) -> Result<u64, RegistryError>;
    /// Binds pods in one transaction: the revision, or None if a pod moved.
    async fn bind(&self, binds: &[(&Value, &str)]) -> Result<Option<u64>, RegistryError>;
    /// Gives a node a pod subnet; Conflict when another node holds it.
    async fn assign_pod_cidr(&self, node: &str, cidr: &str) -> Result<Value, RegistryError>;
    /// Finishes deleting the namespaces left Terminating.
    async fn finish_namespaces(&self) -> Result<(), RegistryError>;
    /// Records an event (best effort: events are not worth a failed pass).
    async fn record_event(&self, involved: &Value, event_type: &str, reason: &str, message: &str);
}

/// How much the executor does at once.
#[derive(Debug, Clone, Copy)]
pub struct ExecLimits {
    pub write_concurrency_max: usize,
    pub bind_txn_pods_max: usize,
}

impl ExecLimits {
    pub fn from_settings(s: &super::LeaderSettings) -> ExecLimits {
        ExecLimits { write_concurrency_max: s.write_concurrency_max.max(1), bind_txn_pods_max: s.bind_txn_pods_max.max(1) }
    }
}

/// What a pass's writes came to.
#[derive(Debug, Default)]
pub struct Executed {
    /// One per command, in order.
    pub outcomes: Vec<Outcome>,
    /// The latest revision written, per kind, for the cache to catch up to.
    pub wrote: Vec<(Kind, u64)>,
    /// Some command asked for another pass.
    pub more: bool,
}

impl Executed {
    fn note(&mut self, kind: Kind, revision: u64) {
        match self.wrote.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, r)) => *r = (*r).max(revision),
            None => self.wrote.push((kind, revision)),
        }
    }
}

/// Performs `commands`. A store error the table says to fail on fails the
/// whole pass (after the other commands ran); the rest become outcomes.
pub async fn execute(w: &dyn ClusterWriter, commands: &[Command], limits: ExecLimits) -> Result<Executed, RegistryError> {
    // The futures are made first: a stream over a closure that borrows
    // would not be Send.
    let futures: Vec<_> = commands.iter().map(|c| run_one(w, c, limits)).collect();
    let ran = futures::stream::iter(futures).buffered(limits.write_concurrency_max.max(1)).collect::<Vec<_>>().await;
    let mut executed = Executed::default();
    let mut failure = None;
    for r in ran {
        let (outcome, writes) = match r {
            Ok(done) => done,
            Err(e) => match retry(&e) {
                Retry::Requeue => (Outcome::Requeue(e.to_string()), vec![]),
                Retry::Drop => (Outcome::Dropped(e.to_string()), vec![]),
                Retry::Fail => {
                    failure.get_or_insert(e);
                    (Outcome::Dropped("the pass failed".into()), vec![])
                }
            },
        };
        executed.more |= matches!(outcome, Outcome::Requeue(_)) || matches!(&outcome, Outcome::Bound(b) if b.contains(&false));
        for (kind, revision) in writes {
            executed.note(kind, revision);
        }
        executed.outcomes.push(outcome);
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(executed),
    }
}

fn wrote(kind: Kind, obj: &Value) -> (Outcome, Vec<(Kind, u64)>) {
    let rv = object::resource_version(obj).map(|rv| (kind, rv));
    (Outcome::Wrote(rv), rv.into_iter().collect())
}

/// Performs one command.
pub async fn run_one(w: &dyn ClusterWriter, c: &Command, limits: ExecLimits) -> Result<(Outcome, Vec<(Kind, u64)>), RegistryError> {
    match c {
        Command::Create { kind, namespace, objects } => {
            let created = match objects.as_slice() {
                [one] => vec![w.create(*kind, one.clone()).await?],
                _ => w.create_many(*kind, namespace, objects.clone()).await?,
            };
            Ok(created.last().map(|o| wrote(*kind, o)).unwrap_or((Outcome::Wrote(None), vec![])))
        }
        Command::Upsert { kind, object } => match w.create(*kind, object.clone()).await {
            Err(RegistryError::AlreadyExists { .. }) => {
                let change = |old: &Value| {
                    let mut new = old.clone();
                    for (field, value) in object.as_object().into_iter().flatten().filter(|(k, _)| *k != "metadata") {
                        new[field] = value.clone();
                    }
                    new["metadata"]["labels"] = object.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
                    new
                };
                let new = w.modify(*kind, object::namespace(object), object::name(object).unwrap_or_default(), &change, false).await?;
                Ok(wrote(*kind, &new))
            }
            other => Ok(wrote(*kind, &other?)),
        },
        Command::Patch { kind, namespace, name, patch } => {
            let change = |old: &Value| {
                let mut new = old.clone();
                merge_patch(&mut new, patch);
                new
            };
            Ok(wrote(*kind, &w.modify(*kind, namespace.as_deref(), name, &change, false).await?))
        }
        Command::WriteStatus { kind, namespace, name, status } => {
            let change = |old: &Value| {
                let mut new = old.clone();
                new["status"] = status.clone();
                new
            };
            Ok(wrote(*kind, &w.modify(*kind, namespace.as_deref(), name, &change, true).await?))
        }
        Command::Delete { kind, namespace, name } => Ok(wrote(*kind, &w.delete(*kind, namespace.as_deref(), name).await?)),
        Command::DeleteNow { kind, items } => {
            let mut writes = Vec::new();
            for chunk in items.chunks(limits.bind_txn_pods_max.max(1)) {
                writes.push((*kind, w.delete_now(*kind, chunk).await?));
            }
            Ok((Outcome::Wrote(writes.last().copied()), writes))
        }
        Command::Bind { pods } => bind(w, pods, limits).await,
        Command::MarkUnschedulable { namespace, name, reason, at } => {
            let condition = json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": reason,
                                   "lastTransitionTime": at});
            let change = |old: &Value| {
                let mut new = old.clone();
                if new.pointer("/spec/nodeName").and_then(Value::as_str).is_some_and(|n| !n.is_empty()) {
                    return new;
                }
                set_condition(&mut new, condition.clone());
                if new.pointer("/status/phase").is_none() {
                    new["status"]["phase"] = json!("Pending");
                }
                new
            };
            let new = w.modify(Kind::Pods, Some(namespace), name, &change, true).await?;
            if new.pointer("/spec/nodeName").is_none() {
                w.record_event(&new, "Warning", "FailedScheduling", reason).await;
                tracing::info!(pod = %format!("{namespace}/{name}"), reason = %reason, "pod fits on no node");
            }
            Ok(wrote(Kind::Pods, &new))
        }
        Command::SetNodeReady { node, ready, message, at } => {
            let (status, reason) = if *ready { ("True", "AgentReady") } else { ("Unknown", "NodeStatusUnknown") };
            let change = |old: &Value| {
                let mut new = old.clone();
                let transition = crate::model::kinds::node::node_ready(old) != *ready;
                let last = old
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                    .and_then(|c| c.get("lastTransitionTime").cloned());
                set_condition(
                    &mut new,
                    json!({"type": "Ready", "status": status, "reason": reason, "message": message,
                           "lastHeartbeatTime": at,
                           "lastTransitionTime": if transition { json!(at) } else { last.unwrap_or(json!(at)) }}),
                );
                new
            };
            Ok(wrote(Kind::Nodes, &w.modify(Kind::Nodes, None, node, &change, true).await?))
        }
        Command::AssignPodCidr { node, cidr } => {
            let new = w.assign_pod_cidr(node, cidr).await?;
            tracing::info!(node = %node, pod_cidr = %cidr, "node given a pod subnet");
            Ok(wrote(Kind::Nodes, &new))
        }
        Command::FinishNamespaces => {
            w.finish_namespaces().await?;
            Ok((Outcome::Wrote(None), vec![]))
        }
        Command::Event { involved, warning, reason, message } => {
            w.record_event(involved, if *warning { "Warning" } else { "Normal" }, reason, message).await;
            Ok((Outcome::Wrote(None), vec![]))
        }
    }
}

/// Binds in transactions of `bind_txn_pods_max`; a transaction that fails
/// because something in it moved is retried pod by pod, so one changed pod
/// costs only itself.
async fn bind(
    w: &dyn ClusterWriter,
    pods: &[(Arc<Value>, String)],
    limits: ExecLimits,
) -> Result<(Outcome, Vec<(Kind, u64)>), RegistryError> {
    let mut bound = Vec::with_capacity(pods.len());
    let mut writes = Vec::new();
    for chunk in pods.chunks(limits.bind_txn_pods_max.max(1)) {
        let pairs: Vec<(&Value, &str)> = chunk.iter().map(|(p, n)| (p.as_ref(), n.as_str())).collect();
        match w.bind(&pairs).await? {
            Some(revision) => {
                writes.push((Kind::Pods, revision));
                bound.extend(std::iter::repeat_n(true, chunk.len()));
            }
            None => {
                let futures: Vec<_> = pairs.iter().map(|pair| w.bind(std::slice::from_ref(pair))).collect();
                let singles = futures::stream::iter(futures).buffered(limits.write_concurrency_max.max(1)).collect::<Vec<_>>().await;
                for r in singles {
                    let r = r?;
                    bound.push(r.is_some());
                    writes.extend(r.map(|rv| (Kind::Pods, rv)));
                }
            }
        }
    }
    Ok((Outcome::Bound(bound), writes))
}

#[async_trait::async_trait]
impl ClusterWriter for Registry {
    async fn create(&self, kind: Kind, object: Value) -> Result<Value, RegistryError> {
        let ns = object::namespace(&object).map(String::from);
        Registry::create(self, kind.resource(), ns.as_deref(), object).await
    }
    async fn create_many(&self, kind: Kind, namespace: &str, objects: Vec<Value>) -> Result<Vec<Value>, RegistryError> {
        Registry::create_many(self, kind.resource(), Some(namespace), objects).await
    }
    async fn modify(
        &self,
        kind: Kind,
        namespace: Option<&str>,
        name: &str,
        change: &(dyn for<'v> Fn(&'v Value) -> Value + Send + Sync),
        status: bool,
    ) -> Result<Value, RegistryError> {
        self.read_modify_write(kind.resource(), namespace, name, None, |old| Ok(change(old)), status.then_some("status")).await
    }
    async fn delete(&self, kind: Kind, namespace: Option<&str>, name: &str) -> Result<Value, RegistryError> {
        Registry::delete(self, kind.resource(), namespace, name, None, Propagation::Background).await
    }
    async fn delete_now(&self, kind: Kind, items: &[(String, String)]) -> Result<u64, RegistryError> {
        self.delete_many_now(kind.resource(), items).await
    }
    async fn bind(&self, binds: &[(&Value, &str)]) -> Result<Option<u64>, RegistryError> {
        self.bind_pods(binds).await
    }
    async fn assign_pod_cidr(&self, node: &str, cidr: &str) -> Result<Value, RegistryError> {
        Registry::assign_pod_cidr(self, node, cidr).await
    }
    async fn finish_namespaces(&self) -> Result<(), RegistryError> {
        let res = &NAMESPACES;
        let sel = crate::model::selector::Selector::default();
        let (items, _, _) = self.list(res, None, &sel, &sel, 0, None).await?;
        for name in super::namespace_controller::terminating(&items) {
            match self.finish_namespace_delete(&name).await {
                Ok(()) => tracing::info!(namespace = %name, "finished deleting a namespace"),
                Err(e) => tracing::warn!(namespace = %name, error = %e, "namespace still Terminating; trying again next resync"),
            }
        }
        Ok(())
    }
    async fn record_event(&self, involved: &Value, event_type: &str, reason: &str, message: &str) {
        Registry::record_event(self, involved, event_type, reason, message).await
    }
}
