//! One file per kind: everything flotilla knows about a kind that is not
//! generic lives in that kind's file as its `Resource` and its
//! [`Strategy`](crate::model::strategy::Strategy): its typed
//! Kubernetes schema, defaults, validation, update rules, `kubectl get`
//! columns, and what deleting one means. The generic machinery (admission,
//! the registry, tables, discovery) asks the strategy instead of matching
//! on kind names, so adding a kind is a new file here and one line in
//! [`RESOURCES`].

mod binding_table;
mod cluster_role;
mod cluster_role_binding;
mod configmap;
mod deployment;
mod endpoints;
mod event;
mod namespace;
mod network_policy;
pub mod node;
mod pod;
mod replicaset;
mod role;
mod role_binding;
pub mod secret;
pub mod service;
pub mod service_account;
mod workload;

use super::resources::Resource;

pub use cluster_role::CLUSTER_ROLES;
pub use cluster_role_binding::CLUSTER_ROLE_BINDINGS;
pub use configmap::CONFIGMAPS;
pub use deployment::DEPLOYMENTS;
pub use endpoints::{with_api_server, ENDPOINTS};
pub use event::EVENTS;
pub use namespace::NAMESPACES;
pub use network_policy::NETWORK_POLICIES;
pub use node::NODES;
pub use pod::{pod_status, PODS};
pub use replicaset::REPLICASETS;
pub use role::ROLES;
pub use role_binding::ROLE_BINDINGS;
pub use secret::SECRETS;
pub use service::SERVICES;
pub use service_account::SERVICE_ACCOUNTS;

/// Every resource flotilla serves, in discovery order.
pub const RESOURCES: &[Resource] = &[
    NAMESPACES,
    NODES,
    PODS,
    SERVICES,
    ENDPOINTS,
    CONFIGMAPS,
    SECRETS,
    SERVICE_ACCOUNTS,
    EVENTS,
    DEPLOYMENTS,
    REPLICASETS,
    NETWORK_POLICIES,
    ROLES,
    CLUSTER_ROLES,
    ROLE_BINDINGS,
    CLUSTER_ROLE_BINDINGS,
];

/// The API groups other than core, with their one version each, in the
/// order their first kind is served.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !groups.iter().any(|(g, _)| *g == r.group) {
            groups.push((r.group, r.version));
        }
    }
    groups
}

/// Finds a resource by what a user types: plural, singular, kind or short
/// name, case-insensitively, optionally with `.group`.
pub fn lookup(name: &str) -> Option<&'static Resource> {
    let lower = name.to_ascii_lowercase();
    let (base, group) = match lower.split_once('.') {
        Some((b, g)) => (b.to_string(), Some(g.to_string())),
        None => (lower, None),
    };
    RESOURCES.iter().find(|r| {
        (r.plural == base || r.singular == base || r.kind.eq_ignore_ascii_case(&base) || r.short_names.contains(&base.as_str()))
            && group.as_deref().is_none_or(|g| g == r.group || r.group.starts_with(g))
    })
}

/// Finds the resource for an object's `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.kind == kind && r.api_version() == api_version)
}

/// Finds the resource served at `group/version` under `plural`.
pub fn by_path(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::strategy::{Allocation, Deletion, NameRule};
    use serde_json::json;
    use std::time::SystemTime;

    #[test]
    fn lookups_accept_what_kubectl_users_type() {
        assert_eq!(lookup("po").map(|r| r.kind), Some("Pod"));
        assert_eq!(lookup("Deployments").map(|r| r.kind), Some("Deployment"));
        assert_eq!(lookup("deploy").map(|r| r.kind), Some("Deployment"));
        assert_eq!(lookup("deployments.apps").map(|r| r.kind), Some("Deployment"));
        assert_eq!(lookup("netpol").map(|r| r.kind), Some("NetworkPolicy"));
        assert_eq!(lookup("widgets"), None);
        assert_eq!(by_kind("apps/v1", "ReplicaSet").map(|r| r.plural), Some("replicasets"));
        assert_eq!(by_kind("v1", "Deployment"), None);
        assert_eq!(groups(), vec![("apps", "v1"), ("networking.k8s.io", "v1"), ("rbac.authorization.k8s.io", "v1")]);
    }

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
