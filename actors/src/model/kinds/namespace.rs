//! Namespaces: a name scope for namespaced objects. Deleting one marks it
//! Terminating; the namespace controller removes what is in it and then
//! the namespace ([`Deletion::Finalized`]).

use std::time::SystemTime;

use k8s_openapi::api::core::v1 as core;
use serde_json::{json, Value};

use crate::model::admission::set_default;
use crate::model::columns::{age, col, Column};
use crate::model::object::{metadata_mut, name};
use crate::model::resources::{core, Resource};
use crate::model::strategy::{typed, Deletion, NameRule, Strategy};

pub const NAMESPACES: Resource = core("Namespace", "namespaces", "namespace", false, &["ns"], &["status"], &Namespace);

pub struct Namespace;

impl Strategy for Namespace {
    fn check_typed(&self, object: &Value) -> Result<(), String> {
        typed::<core::Namespace>(object).map(drop)
    }

    fn created_with(&self, object: &Value) -> Vec<(&'static str, Value)> {
        let ns = name(object).unwrap_or("");
        vec![(super::service_account::SERVICE_ACCOUNTS.plural, super::service_account::default_account(ns))]
    }

    /// A namespace's name is a DNS label of every Service name in it.
    fn name_rule(&self) -> NameRule {
        NameRule::Label
    }

    fn defaults(&self, object: &mut Value) {
        let ns_name = name(object).unwrap_or("").to_string();
        let meta = metadata_mut(object);
        set_default(meta, "labels", json!({}));
        if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
            labels.insert("kubernetes.io/metadata.name".into(), Value::String(ns_name));
        }
        if let Some(o) = object.as_object_mut() {
            set_default(o, "spec", json!({"finalizers": ["kubernetes"]}));
            set_default(o, "status", json!({"phase": "Active"}));
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![col("Name", "string", 0), col("Status", "string", 0), col("Age", "string", 0)]
    }

    fn cells(&self, object: &Value, now: SystemTime) -> Vec<Value> {
        let ns: core::Namespace = typed(object).unwrap_or_default();
        let phase = ns.status.and_then(|s| s.phase).unwrap_or_default();
        vec![json!(ns.metadata.name.unwrap_or_default()), json!(phase), json!(age(object, now))]
    }

    fn deletion(&self) -> Deletion {
        Deletion::Finalized
    }
}
