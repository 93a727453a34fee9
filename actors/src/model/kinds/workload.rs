//! What Deployments and ReplicaSets share: replicas, an immutable selector
//! that must match the pod template, and the template's pod spec.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{json, Value};

use super::pod::{pod_spec_defaults, validate_pod_spec};
use crate::limits::REPLICAS_MAX;
use crate::model::admission::{set_default, Errors};
use crate::model::columns::{col, Column};
use crate::model::selector::Selector;

/// Defaults both kinds share; the template's pod spec gets a pod's.
pub(super) fn defaults(object: &mut Value) {
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        set_default(spec, "replicas", json!(1));
        set_default(spec, "revisionHistoryLimit", json!(10));
        if let Some(tspec) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
            pod_spec_defaults(tspec);
        }
    }
}

pub(super) fn validate(object: &Value, errors: &mut Errors) {
    let Some(spec) = object.get("spec") else {
        errors.add("spec", "is required");
        return;
    };
    match spec.get("replicas") {
        Some(r) if r.as_i64().is_none_or(|n| !(0..=REPLICAS_MAX).contains(&n)) => {
            errors.add("spec.replicas", format!("{r} must be a whole number from 0 to {REPLICAS_MAX}"))
        }
        _ => {}
    }
    let template_labels = spec.pointer("/template/metadata/labels").cloned().unwrap_or(json!({}));
    match spec.get("selector") {
        None => errors.add("spec.selector", "is required"),
        Some(sel) => match Selector::from_label_selector(sel) {
            Err(e) => errors.add("spec.selector", e.reason),
            Ok(s) if s.is_empty() => errors.add("spec.selector", "must not be empty: select the pods by their labels"),
            Ok(s) => {
                let labels = serde_json::from_value(template_labels).unwrap_or_default();
                if !s.matches_labels(&labels) {
                    errors.add("spec.template.metadata.labels", "`selector` does not match template `labels`");
                }
            }
        },
    }
    match spec.pointer("/template/spec") {
        Some(tspec) => validate_pod_spec(tspec, "spec.template.spec", errors),
        None => errors.add("spec.template.spec", "is required"),
    }
}

/// The selector picks the pods a workload owns; changing it would orphan
/// them, so Kubernetes refuses it and so do we.
pub(super) fn validate_update(old: &Value, new: &Value, errors: &mut Errors) {
    if new.pointer("/spec/selector") != old.pointer("/spec/selector") {
        errors.add("spec.selector", "field is immutable");
    }
}

/// The `-o wide` columns both kinds end with.
pub(super) fn wide_columns() -> [Column; 3] {
    [col("Containers", "string", 1), col("Images", "string", 1), col("Selector", "string", 1)]
}

/// Cells of the `-o wide` columns.
pub(super) fn wide_cells(template: Option<&PodTemplateSpec>, selector: &LabelSelector) -> [Value; 3] {
    let containers = template.and_then(|t| t.spec.as_ref()).map(|s| s.containers.as_slice()).unwrap_or_default();
    let names: Vec<&str> = containers.iter().map(|c| c.name.as_str()).collect();
    let images: Vec<&str> = containers.iter().map(|c| c.image.as_deref().unwrap_or("")).collect();
    [json!(names.join(",")), json!(images.join(",")), json!(selector_text(selector))]
}

/// `app=web,tier=front`, as kubectl prints a label selector.
pub(super) fn selector_text(selector: &LabelSelector) -> String {
    let parts: Vec<String> = selector.match_labels.iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}
