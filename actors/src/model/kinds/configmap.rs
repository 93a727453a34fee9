//! ConfigMaps: named configuration data, text or binary.

use std::time::SystemTime;

use k8s_openapi::api::core::v1 as core;
use serde_json::{json, Value};

use crate::model::columns::{age, col, Column};
use crate::model::resources::{core, Resource};
use crate::model::strategy::{typed, Strategy};

pub const CONFIGMAPS: Resource = core("ConfigMap", "configmaps", "configmap", true, &["cm"], &[], &ConfigMap);

pub struct ConfigMap;

impl Strategy for ConfigMap {
    fn check_typed(&self, object: &Value) -> Result<(), String> {
        typed::<core::ConfigMap>(object).map(drop)
    }

    fn columns(&self) -> Vec<Column> {
        vec![col("Name", "string", 0), col("Data", "integer", 0), col("Age", "string", 0)]
    }

    fn cells(&self, object: &Value, now: SystemTime) -> Vec<Value> {
        let cm: core::ConfigMap = typed(object).unwrap_or_default();
        let entries = cm.data.map_or(0, |d| d.len()) + cm.binary_data.map_or(0, |d| d.len());
        vec![json!(cm.metadata.name.unwrap_or_default()), json!(entries), json!(age(object, now))]
    }
}
