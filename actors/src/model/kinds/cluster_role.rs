//! ClusterRoles: a set of permissions that a ClusterRoleBinding grants everywhere and a RoleBinding inside its namespace (RBAC).

use std::time::SystemTime;

use k8s_openapi::api::rbac::v1 as rbac;
use serde_json::{json, Value};

use crate::model::columns::{age, col, Column};
use crate::model::field_errors::Errors;
use crate::model::resources::Resource;
use crate::model::strategy::{typed, NameRule, Strategy};

pub const CLUSTER_ROLES: Resource = Resource {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "ClusterRole",
    plural: "clusterroles",
    singular: "clusterrole",
    namespaced: false,
    short_names: &[],
    subresources: &[],
    strategy: &ClusterRole,
};

pub struct ClusterRole;

impl Strategy for ClusterRole {
    fn check_typed(&self, object: &Value) -> Result<(), String> {
        typed::<rbac::ClusterRole>(object).map(drop)
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, object: &Value, errors: &mut Errors) {
        let role: rbac::ClusterRole = typed(object).unwrap_or_default();
        crate::model::rbac::validate_rules(role.rules.as_deref().unwrap_or_default(), true, errors);
    }

    fn columns(&self) -> Vec<Column> {
        vec![col("Name", "string", 0), col("Created At", "string", 0), col("Age", "string", 0)]
    }

    fn cells(&self, object: &Value, now: SystemTime) -> Vec<Value> {
        let created = object.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or("");
        vec![json!(object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")), json!(created), json!(age(object, now))]
    }
}
