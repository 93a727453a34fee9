//! What a leader-side decision asks the store for. Every reconciler's
//! `step` returns these instead of writing, so a test sees exactly what a
//! pass decided; the [`executor`](super::executor) performs them and hands
//! back one [`Outcome`] per command. Which store errors are worth another
//! pass is decided here, once, by [`retry`].

use std::sync::Arc;

use serde_json::Value;

use super::cache::Kind;
use crate::clock::Mono;
use crate::registry::RegistryError;

/// One write a decision wants made.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Creates objects of one kind in one namespace in one transaction
    /// (all or none).
    Create { kind: Kind, namespace: String, objects: Vec<Value> },
    /// Creates the object or, if one of its name exists, gives that one
    /// the object's top-level fields other than metadata, and its labels.
    Upsert { kind: Kind, object: Value },
    /// Applies a JSON merge patch to the object as it is in the store.
    Patch { kind: Kind, namespace: Option<String>, name: String, patch: Value },
    /// Replaces the object's status.
    WriteStatus { kind: Kind, namespace: Option<String>, name: String, status: Value },
    /// Deletes the object (a bound pod gracefully), and in the background
    /// what it owns.
    Delete { kind: Kind, namespace: Option<String>, name: String },
    /// Removes objects at once, without grace or dependents, in
    /// transactions of at most `bind_txn_pods_max`: the pods of a lost node.
    DeleteNow { kind: Kind, items: Vec<(String, String)> },
    /// Binds pods (as read) to nodes in one transaction that fails if any
    /// pod changed or node vanished; the executor then binds one by one.
    Bind { pods: Vec<(Arc<Value>, String)> },
    /// Sets PodScheduled=False with the reason on a pod still unbound, and
    /// records a FailedScheduling event.
    MarkUnschedulable { namespace: String, name: String, reason: String, at: String },
    /// Writes a node's Ready condition.
    SetNodeReady { node: String, ready: bool, message: String, at: String },
    /// Gives a node a pod subnet no other node holds (the store decides).
    AssignPodCidr { node: String, cidr: String },
    /// Finishes deleting every namespace left Terminating.
    FinishNamespaces,
    /// Records an event about an object.
    Event { involved: Value, warning: bool, reason: String, message: String },
}

impl Command {
    /// The kind a command writes, for the trace and the logs.
    pub fn describe(&self) -> String {
        match self {
            Command::Create { kind, namespace, objects } => format!("create {} {} in {namespace}", objects.len(), kind.plural()),
            Command::Upsert { kind, object } => format!(
                "upsert {} {}/{}",
                kind.plural(),
                crate::model::object::namespace(object).unwrap_or(""),
                crate::model::object::name(object).unwrap_or("")
            ),
            Command::Patch { kind, namespace, name, patch } => {
                format!("patch {} {}{name} {patch}", kind.plural(), ns_prefix(namespace))
            }
            Command::WriteStatus { kind, namespace, name, .. } => format!("status {} {}{name}", kind.plural(), ns_prefix(namespace)),
            Command::Delete { kind, namespace, name } => format!("delete {} {}{name}", kind.plural(), ns_prefix(namespace)),
            Command::DeleteNow { kind, items } => format!("delete-now {} {}", items.len(), kind.plural()),
            Command::Bind { pods } => {
                let names: Vec<String> =
                    pods.iter().map(|(p, n)| format!("{}->{n}", crate::model::object::name(p).unwrap_or_default())).collect();
                format!("bind {}", names.join(","))
            }
            Command::MarkUnschedulable { namespace, name, reason, .. } => format!("unschedulable {namespace}/{name}: {reason}"),
            Command::SetNodeReady { node, ready, .. } => format!("node {node} ready={ready}"),
            Command::AssignPodCidr { node, cidr } => format!("pod-cidr {node} {cidr}"),
            Command::FinishNamespaces => "finish-namespaces".into(),
            Command::Event { reason, message, .. } => format!("event {reason}: {message}"),
        }
    }
}

fn ns_prefix(namespace: &Option<String>) -> String {
    namespace.as_ref().map(|n| format!("{n}/")).unwrap_or_default()
}

/// What became of one command.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done; the revision of the write, when there was one.
    Wrote(Option<(Kind, u64)>),
    /// A [`Command::Bind`]: which pods were bound, in order.
    Bound(Vec<bool>),
    /// Not done, for a reason the next pass may not meet (the object
    /// moved, is gone or exists): decide again.
    Requeue(String),
    /// Not done and not worth trying again (its namespace is going away).
    Dropped(String),
}

/// What to do after a store error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Decide again in another pass, soon.
    Requeue,
    /// Forget it: the pass that would retry it would find nothing to do.
    Drop,
    /// Something is broken: fail the pass; the supervisor restarts the
    /// controller after its back-off, with state fresh from the store.
    Fail,
}

/// The one table of which store errors a controller retries.
pub fn retry(e: &RegistryError) -> Retry {
    match e {
        RegistryError::NotFound { .. } | RegistryError::Conflict { .. } | RegistryError::AlreadyExists { .. } => Retry::Requeue,
        RegistryError::NamespaceTerminating(_) | RegistryError::NamespaceNotFound(_) => Retry::Drop,
        RegistryError::Admission(_)
        | RegistryError::BadRequest(_)
        | RegistryError::Expired { .. }
        | RegistryError::Store(_)
        | RegistryError::Internal(_) => Retry::Fail,
    }
}

/// The time a decision is made at.
#[derive(Debug, Clone, PartialEq)]
pub struct Now {
    /// Monotonic, for durations.
    pub mono: Mono,
    /// Wall time as objects record it (RFC 3339, seconds).
    pub wall: String,
}

impl Now {
    /// Now on `clock`.
    pub fn on(clock: &dyn crate::clock::Clock) -> Now {
        let wall = std::time::UNIX_EPOCH + std::time::Duration::from_millis(clock.wall_unix_ms());
        Now { mono: clock.mono(), wall: crate::model::object::timestamp(wall) }
    }
}

/// What one pass decided.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Decision {
    pub commands: Vec<Command>,
    /// Work was left for another pass (a batch limit was reached).
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn races_are_retried_vanishing_namespaces_dropped_and_store_failures_fail() {
        let nf = RegistryError::NotFound { kind: "pods".into(), name: "p".into() };
        assert_eq!(retry(&nf), Retry::Requeue);
        assert_eq!(retry(&RegistryError::NamespaceTerminating("x".into())), Retry::Drop);
        assert_eq!(retry(&RegistryError::Internal("bad".into())), Retry::Fail);
    }
}
