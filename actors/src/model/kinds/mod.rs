//! One file per kind: everything flotilla knows about a kind that is not
//! generic lives in that kind's file as its [`Strategy`]: its typed
//! Kubernetes schema, defaults, validation, update rules, `kubectl get`
//! columns, and what deleting one means. The generic machinery (admission,
//! the registry, tables, discovery) asks the strategy instead of matching
//! on kind names, so adding a kind is a new file here and one line in
//! [`RESOURCES`].

mod configmap;
mod deployment;
mod endpoints;
mod event;
mod namespace;
mod network_policy;
mod node;
mod pod;
mod replicaset;
mod service;
mod workload;

use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::admission::Errors;
use super::resources::Resource;
use super::table::{age, col, s, Column};

pub use configmap::CONFIGMAPS;
pub use deployment::DEPLOYMENTS;
pub use endpoints::ENDPOINTS;
pub use event::EVENTS;
pub use namespace::NAMESPACES;
pub use network_policy::NETWORK_POLICIES;
pub use node::NODES;
pub use pod::{pod_status, PODS};
pub use replicaset::REPLICASETS;
pub use service::SERVICES;

/// Every resource flotilla serves, in discovery order.
pub const RESOURCES: &[Resource] =
    &[NAMESPACES, NODES, PODS, SERVICES, ENDPOINTS, CONFIGMAPS, EVENTS, DEPLOYMENTS, REPLICASETS, NETWORK_POLICIES];

/// What names of a kind must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    /// A DNS-1123 subdomain (most kinds).
    Subdomain,
    /// A DNS-1123 label, because the name becomes one DNS label
    /// (Namespaces, Services).
    Label,
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
}

/// Decodes `object` as `T` without copying it, for `check_typed` and for
/// the typed table cells.
pub(super) fn typed<T: DeserializeOwned>(object: &Value) -> Result<T, String> {
    T::deserialize(object).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resources::lookup;
    use serde_json::json;

    #[test]
    fn every_kind_has_its_own_file_and_columns() {
        for res in RESOURCES {
            let columns = res.strategy.columns();
            assert!(!columns.is_empty(), "{} has no columns", res.kind);
            let minimal = json!({"apiVersion": res.api_version(), "kind": res.kind, "metadata": {"name": "x"}});
            let cells = res.strategy.cells(&minimal, SystemTime::now());
            assert_eq!(cells.len(), columns.len(), "{}: one cell per column", res.kind);
        }
    }

    #[test]
    fn wrong_types_are_named() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"}, "spec": {"replicas": "three", "selector": {}, "template": {}}});
        let e = lookup("deploy").unwrap().strategy.check_typed(&d).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let ok = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}});
        lookup("cm").unwrap().strategy.check_typed(&ok).unwrap();
    }

    #[test]
    fn kinds_say_how_they_are_deleted_and_what_they_hold() {
        assert_eq!(PODS.strategy.deletion(), Deletion::GracefulOnNode);
        assert_eq!(NAMESPACES.strategy.deletion(), Deletion::Finalized);
        assert_eq!(CONFIGMAPS.strategy.deletion(), Deletion::Immediate);
        assert_eq!(SERVICES.strategy.allocation(), Allocation::ServiceAddresses);
        assert_eq!(NODES.strategy.allocation(), Allocation::PodSubnet);
        assert_eq!(SERVICES.strategy.name_rule(), NameRule::Label);
    }
}
