//! ClusterRoleBindings: grant a ClusterRole to users, groups and ServiceAccounts in every namespace (RBAC).

use std::time::SystemTime;

use k8s_openapi::api::rbac::v1 as rbac;
use serde_json::Value;

use crate::model::columns::Column;
use crate::model::field_errors::Errors;
use crate::model::resources::Resource;
use crate::model::strategy::{typed, NameRule, Strategy};

pub const CLUSTER_ROLE_BINDINGS: Resource = Resource {
    group: "rbac.authorization.k8s.io",
    version: "v1",
    kind: "ClusterRoleBinding",
    plural: "clusterrolebindings",
    singular: "clusterrolebinding",
    namespaced: false,
    short_names: &[],
    subresources: &[],
    strategy: &ClusterRoleBinding,
};

pub struct ClusterRoleBinding;

impl Strategy for ClusterRoleBinding {
    fn check_typed(&self, object: &Value) -> Result<(), String> {
        typed::<rbac::ClusterRoleBinding>(object).map(drop)
    }

    fn name_rule(&self) -> NameRule {
        NameRule::PathSegment
    }

    fn validate(&self, object: &Value, errors: &mut Errors) {
        let binding: rbac::ClusterRoleBinding = typed(object).unwrap_or_default();
        crate::model::rbac::validate_binding(&binding.role_ref, binding.subjects.as_deref().unwrap_or_default(), false, errors);
    }

    fn validate_update(&self, old: &Value, new: &Value, errors: &mut Errors) {
        super::binding_table::validate_update(old, new, errors);
    }

    fn columns(&self) -> Vec<Column> {
        super::binding_table::columns()
    }

    fn cells(&self, object: &Value, now: SystemTime) -> Vec<Value> {
        super::binding_table::cells(object, now)
    }
}
