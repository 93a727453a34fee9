//! What RoleBindings and ClusterRoleBindings share: the same shape (a
//! `roleRef` and `subjects`), one update rule and one table.

use std::time::SystemTime;

use k8s_openapi::api::rbac::v1 as rbac;
use serde_json::{json, Value};

use crate::model::columns::{age, col, Column};
use crate::model::field_errors::Errors;
use crate::model::strategy::typed;

/// As in Kubernetes: a binding's role cannot be swapped under its
/// subjects; delete and recreate it.
pub fn validate_update(old: &Value, new: &Value, errors: &mut Errors) {
    if old.get("roleRef") != new.get("roleRef") {
        errors.add("roleRef", "cannot be changed; delete the binding and create it again");
    }
}

pub fn columns() -> Vec<Column> {
    vec![
        col("Name", "string", 0),
        col("Role", "string", 0),
        col("Age", "string", 0),
        col("Users", "string", 1),
        col("Groups", "string", 1),
        col("ServiceAccounts", "string", 1),
    ]
}

pub fn cells(object: &Value, now: SystemTime) -> Vec<Value> {
    // Both kinds decode as a RoleBinding: the fields are the same.
    let b: rbac::RoleBinding = typed(object).unwrap_or_default();
    let of = |kind: &str| -> String {
        let names: Vec<String> = b
            .subjects
            .iter()
            .flatten()
            .filter(|s| s.kind == kind)
            .map(|s| match (&s.namespace, kind) {
                (Some(ns), "ServiceAccount") => format!("{ns}/{}", s.name),
                _ => s.name.clone(),
            })
            .collect();
        names.join(", ")
    };
    vec![
        json!(b.metadata.name.clone().unwrap_or_default()),
        json!(format!("{}/{}", b.role_ref.kind, b.role_ref.name)),
        json!(age(object, now)),
        json!(of("User")),
        json!(of("Group")),
        json!(of("ServiceAccount")),
    ]
}
