//! A kind's behaviour beyond being stored, as the generic machinery
//! (admission, the registry, tables, discovery) asks for it: each kind's
//! file under `kinds` implements [`Strategy`] and its `Resource` points at
//! the implementation.

use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::columns::{age, col, s, Column};
use super::field_errors::Errors;

/// What names of a kind must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 subdomain (most kinds).
    Subdomain,
    /// A DNS-1123 label, because the name becomes one DNS label
    /// (Namespaces, Services).
    Label,
    /// Anything that is one URL path segment (RBAC objects, whose built-in
    /// names have colons: `system:discovery`).
    PathSegment,
}

/// What a delete request does to an object of a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// The object is removed at once, then (by default) what it owns.
    Immediate,
    /// Once bound to a node, the object is marked with a
    /// deletionTimestamp and its node's agent removes it after stopping
    /// it (pods); a zero grace period removes it at once.
    GracefulOnNode,
    /// The object is marked Terminating and removed when everything in it
    /// is gone (namespaces).
    Finalized,
}

/// What a kind's writes must do beside storing the object, in the same
/// transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocation {
    None,
    /// The object holds cluster addresses (a ClusterIP, node ports) that
    /// no other object of the kind may hold.
    ServiceAddresses,
    /// The object holds a pod subnet (`spec.podCIDR`), freed with it.
    PodSubnet,
}

/// A kind's behaviour. Implementations are unit structs named after the
/// kind; `Resource::strategy` points at one.
pub trait Strategy: Sync {
    /// Decodes the object into its k8s-openapi type: a field of the wrong
    /// type is refused with the field named.
    fn check_typed(&self, object: &Value) -> Result<(), String>;

    fn name_rule(&self) -> NameRule {
        NameRule::Subdomain
    }

    /// Fills in what a client left out, as Kubernetes does.
    fn defaults(&self, _object: &mut Value) {}

    /// The kind's own field checks, after the generic metadata checks.
    fn validate(&self, _object: &Value, _errors: &mut Errors) {}

    /// Checks an update of `old` to `new` beyond `validate` (immutable
    /// fields).
    fn validate_update(&self, _old: &Value, _new: &Value, _errors: &mut Errors) {}

    /// The columns of `kubectl get`; priority 1 columns show with `-o wide`.
    fn columns(&self) -> Vec<Column> {
        vec![col("Name", "string", 0), col("Age", "string", 0)]
    }

    /// One row's cells, in `columns` order.
    fn cells(&self, object: &Value, now: SystemTime) -> Vec<Value> {
        vec![Value::String(s(object.pointer("/metadata/name"))), Value::String(age(object, now))]
    }

    fn deletion(&self) -> Deletion {
        Deletion::Immediate
    }

    /// The discovery categories the kind is in (`kubectl get all` reads
    /// `all`).
    fn categories(&self) -> &'static [&'static str] {
        &[]
    }

    fn allocation(&self) -> Allocation {
        Allocation::None
    }

    /// Store keys outside the registry's objects that belong to this object
    /// and are removed in the transaction that deletes it (a node's agent
    /// credential: removing the node revokes it).
    fn keys_deleted_with(&self, _object: &Value) -> Vec<Vec<u8>> {
        Vec::new()
    }

    /// Whether objects of the kind are stored encrypted (Secrets); see
    /// `secrets_keyring`.
    fn sealed_at_rest(&self) -> bool {
        false
    }

    /// Objects created in the transaction that creates this one (a
    /// namespace's `default` ServiceAccount), by plural, as a client would
    /// write them.
    fn created_with(&self, _object: &Value) -> Vec<(&'static str, Value)> {
        Vec::new()
    }
}

/// Decodes `object` as `T` without copying it, for `check_typed` and for
/// the typed table cells.
pub fn typed<T: DeserializeOwned>(object: &Value) -> Result<T, String> {
    T::deserialize(object).map_err(|e| e.to_string())
}
