//! ReplicaSets: keep `spec.replicas` pods from a template; a Deployment
//! owns one per revision.

use std::time::SystemTime;

use k8s_openapi::api::apps::v1 as apps;
use serde_json::{json, Value};

use super::workload;
use crate::model::admission::Errors;
use crate::model::columns::{age, col, Column};
use crate::model::resources::Resource;
use crate::model::strategy::{typed, Strategy};

pub const REPLICASETS: Resource = Resource {
    group: "apps",
    version: "v1",
    kind: "ReplicaSet",
    plural: "replicasets",
    singular: "replicaset",
    namespaced: true,
    short_names: &["rs"],
    subresources: &["status", "scale"],
    strategy: &ReplicaSet,
};

pub struct ReplicaSet;

impl Strategy for ReplicaSet {
    fn check_typed(&self, object: &Value) -> Result<(), String> {
        typed::<apps::ReplicaSet>(object).map(drop)
    }

    fn defaults(&self, object: &mut Value) {
        workload::defaults(object);
    }

    fn validate(&self, object: &Value, errors: &mut Errors) {
        workload::validate(object, errors);
    }

    fn validate_update(&self, old: &Value, new: &Value, errors: &mut Errors) {
        workload::validate_update(old, new, errors);
    }

    fn categories(&self) -> &'static [&'static str] {
        &["all"]
    }

    fn columns(&self) -> Vec<Column> {
        let mut columns = vec![
            col("Name", "string", 0),
            col("Desired", "integer", 0),
            col("Current", "integer", 0),
            col("Ready", "integer", 0),
            col("Age", "string", 0),
        ];
        columns.extend(workload::wide_columns());
        columns
    }

    fn cells(&self, object: &Value, now: SystemTime) -> Vec<Value> {
        let rs: apps::ReplicaSet = typed(object).unwrap_or_default();
        let spec = rs.spec.unwrap_or_default();
        let status = rs.status.unwrap_or_default();
        let mut cells = vec![
            json!(rs.metadata.name.unwrap_or_default()),
            json!(spec.replicas.unwrap_or(0)),
            json!(status.replicas),
            json!(status.ready_replicas.unwrap_or(0)),
            json!(age(object, now)),
        ];
        cells.extend(workload::wide_cells(spec.template.as_ref(), &spec.selector));
        cells
    }
}
