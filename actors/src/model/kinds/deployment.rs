//! Deployments: a workload that rolls its pods from one ReplicaSet to the
//! next; by default a rolling update with a quarter of surge and a quarter
//! unavailable, as Kubernetes does.

use std::time::SystemTime;

use k8s_openapi::api::apps::v1 as apps;
use serde_json::{json, Value};

use super::workload;
use crate::model::admission::{set_default, Errors};
use crate::model::columns::{age, col, Column};
use crate::model::resources::Resource;
use crate::model::strategy::{typed, Strategy};

pub const DEPLOYMENTS: Resource = Resource {
    group: "apps",
    version: "v1",
    kind: "Deployment",
    plural: "deployments",
    singular: "deployment",
    namespaced: true,
    short_names: &["deploy"],
    subresources: &["status", "scale"],
    strategy: &Deployment,
};

pub struct Deployment;

impl Strategy for Deployment {
    fn check_typed(&self, object: &Value) -> Result<(), String> {
        typed::<apps::Deployment>(object).map(drop)
    }

    fn defaults(&self, object: &mut Value) {
        workload::defaults(object);
        let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else { return };
        set_default(spec, "progressDeadlineSeconds", json!(600));
        set_default(spec, "strategy", json!({"type": "RollingUpdate"}));
        if let Some(strategy) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                set_default(strategy, "rollingUpdate", json!({"maxSurge": "25%", "maxUnavailable": "25%"}));
            }
        }
    }

    fn validate(&self, object: &Value, errors: &mut Errors) {
        workload::validate(object, errors);
        if let Some(t) = object.pointer("/spec/strategy/type").and_then(Value::as_str) {
            if !matches!(t, "RollingUpdate" | "Recreate") {
                errors.add("spec.strategy.type", format!("{t:?} must be RollingUpdate or Recreate"));
            }
        }
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
            col("Ready", "string", 0),
            col("Up-to-date", "integer", 0),
            col("Available", "integer", 0),
            col("Age", "string", 0),
        ];
        columns.extend(workload::wide_columns());
        columns
    }

    fn cells(&self, object: &Value, now: SystemTime) -> Vec<Value> {
        let d: apps::Deployment = typed(object).unwrap_or_default();
        let spec = d.spec.unwrap_or_default();
        let status = d.status.unwrap_or_default();
        let ready = format!("{}/{}", status.ready_replicas.unwrap_or(0), spec.replicas.unwrap_or(0));
        let mut cells = vec![
            json!(d.metadata.name.unwrap_or_default()),
            json!(ready),
            json!(status.updated_replicas.unwrap_or(0)),
            json!(status.available_replicas.unwrap_or(0)),
            json!(age(object, now)),
        ];
        cells.extend(workload::wide_cells(Some(&spec.template), &spec.selector));
        cells
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_show_rollout_progress() {
        let d = json!({"metadata": {"name": "web"},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"spec": {"containers": [{"name": "c", "image": "nginx:1"}]}}},
            "status": {"readyReplicas": 2, "updatedReplicas": 3, "availableReplicas": 2}});
        let cells = Deployment.cells(&d, SystemTime::now());
        assert_eq!(cells[..4], [json!("web"), json!("2/3"), json!(3), json!(2)]);
        assert_eq!(cells[5..], [json!("c"), json!("nginx:1"), json!("app=web")]);
    }
}
