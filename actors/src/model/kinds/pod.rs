//! Pods: the pod spec's defaults and validation (which workloads' templates
//! share), the STATUS column as kubectl computes it, and graceful deletion
//! once a pod is bound to a node.

use std::collections::BTreeSet;
use std::time::SystemTime;

use k8s_openapi::api::core::v1 as core;
use serde_json::{json, Value};

use crate::limits::{CONTAINERS_PER_POD_MAX, GRACE_PERIOD_SECONDS_MAX, VOLUMES_PER_POD_MAX};
use crate::model::admission::{is_dns1123_label, set_default, validate_port, validate_quantities, Errors};
use crate::model::columns::{age, col, or_none, Column};
use crate::model::resources::{core, Resource};
use crate::model::strategy::{typed, Deletion, Strategy};

pub const PODS: Resource = core("Pod", "pods", "pod", true, &["po"], &["status", "log"], &Pod);

pub struct Pod;

impl Strategy for Pod {
    fn check_typed(&self, object: &Value) -> Result<(), String> {
        typed::<core::Pod>(object).map(drop)
    }

    fn defaults(&self, object: &mut Value) {
        if let Some(spec) = object.get_mut("spec") {
            pod_spec_defaults(spec);
        }
        if let Some(o) = object.as_object_mut() {
            set_default(o, "status", json!({}));
        }
        if let Some(status) = object.get_mut("status").and_then(Value::as_object_mut) {
            set_default(status, "phase", json!("Pending"));
        }
    }

    fn validate(&self, object: &Value, errors: &mut Errors) {
        match object.get("spec") {
            Some(spec) => validate_pod_spec(spec, "spec", errors),
            None => errors.add("spec", "is required"),
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            col("Name", "string", 0),
            col("Ready", "string", 0),
            col("Status", "string", 0),
            col("Restarts", "string", 0),
            col("Age", "string", 0),
            col("IP", "string", 1),
            col("Node", "string", 1),
        ]
    }

    fn cells(&self, object: &Value, now: SystemTime) -> Vec<Value> {
        let pod: core::Pod = typed(object).unwrap_or_default();
        let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_deref()).unwrap_or_default();
        let total = pod.spec.as_ref().map_or(0, |s| s.containers.len());
        let ready = statuses.iter().filter(|c| c.ready).count();
        let restarts: i64 = statuses.iter().map(|c| i64::from(c.restart_count)).sum();
        vec![
            json!(pod.metadata.name.clone().unwrap_or_default()),
            json!(format!("{ready}/{total}")),
            json!(status_of(&pod)),
            json!(restarts.to_string()),
            json!(age(object, now)),
            json!(or_none(pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default())),
            json!(or_none(pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default())),
        ]
    }

    fn deletion(&self) -> Deletion {
        Deletion::GracefulOnNode
    }

    fn categories(&self) -> &'static [&'static str] {
        &["all"]
    }
}

/// The STATUS column of `kubectl get pods`.
pub fn pod_status(pod: &Value) -> String {
    status_of(&typed(pod).unwrap_or_default())
}

fn status_of(pod: &core::Pod) -> String {
    if pod.metadata.deletion_timestamp.is_some() {
        return "Terminating".into();
    }
    let Some(status) = &pod.status else { return "Pending".into() };
    let mut reason = status.reason.as_deref().filter(|r| !r.is_empty()).or(status.phase.as_deref()).unwrap_or_default().to_string();
    for cs in status.container_statuses.iter().flatten() {
        let Some(state) = &cs.state else { continue };
        if let Some(w) = state.waiting.as_ref().and_then(|w| w.reason.as_deref()).filter(|r| !r.is_empty()) {
            return w.into();
        }
        if let Some(t) = &state.terminated {
            match t.reason.as_deref().filter(|r| !r.is_empty()) {
                Some(r) => reason = r.into(),
                None if t.exit_code != 0 => reason = format!("ExitCode:{}", t.exit_code),
                None => {}
            }
        }
    }
    if reason.is_empty() {
        "Pending".into()
    } else {
        reason
    }
}

/// Defaults of a pod spec, in a pod or a workload's template.
pub(super) fn pod_spec_defaults(spec: &mut Value) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    if let Some(containers) = spec.get_mut("containers").and_then(Value::as_array_mut) {
        for c in containers.iter_mut().filter_map(Value::as_object_mut) {
            let image = c.get("image").and_then(Value::as_str).unwrap_or("");
            let latest = !image.rsplit('/').next().unwrap_or("").contains(':') || image.ends_with(":latest");
            set_default(c, "imagePullPolicy", json!(if latest { "Always" } else { "IfNotPresent" }));
            if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
                for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                    set_default(p, "protocol", json!("TCP"));
                }
            }
        }
    }
}

/// Validation of a pod spec at `path` (`spec` or `spec.template.spec`).
/// Kubernetes' range for user and group ids: what fits a signed 32-bit id.
const RUN_AS_ID_MAX: i64 = 2_147_483_647;

fn validate_run_as(context: Option<&Value>, path: &str, errors: &mut Errors) {
    let Some(context) = context else { return };
    for field in ["runAsUser", "runAsGroup"] {
        if let Some(v) = context.get(field) {
            if v.as_i64().is_none_or(|n| !(0..=RUN_AS_ID_MAX).contains(&n)) {
                errors.add(format!("{path}.{field}"), format!("{v} must be a whole number from 0 to {RUN_AS_ID_MAX}"));
            }
        }
    }
    if context.get("runAsNonRoot") == Some(&Value::Bool(true)) && context.get("runAsUser").and_then(Value::as_i64) == Some(0) {
        errors.add(format!("{path}.runAsUser"), "0 (root) contradicts runAsNonRoot: true; choose a non-zero uid");
    }
}

/// The sources a volume may have; exactly one is set.
const VOLUME_SOURCES: &[&str] = &[
    "emptyDir",
    "secret",
    "configMap",
    "downwardAPI",
    "projected",
    "hostPath",
    "persistentVolumeClaim",
    "nfs",
    "csi",
    "ephemeral",
    "iscsi",
    "gitRepo",
    "cephfs",
    "rbd",
    "fc",
    "flocker",
    "azureFile",
    "azureDisk",
    "vsphereVolume",
    "quobyte",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "awsElasticBlockStore",
    "gcePersistentDisk",
    "glusterfs",
    "photonPersistentDisk",
    "flexVolume",
    "cinder",
    "image",
];

/// A relative path inside a volume: not absolute, no `..` element.
fn is_inside_path(p: &str) -> bool {
    !p.starts_with('/') && !p.split('/').any(|part| part == "..")
}

/// Checks the pod's volumes; answers their names.
fn validate_volumes(volumes: Option<&Value>, path: &str, errors: &mut Errors) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let Some(volumes) = volumes else { return names };
    let Some(list) = volumes.as_array() else {
        errors.add(path, "must be a list");
        return names;
    };
    if list.len() > VOLUMES_PER_POD_MAX {
        errors.add(path, format!("{} volumes; a pod may have at most {VOLUMES_PER_POD_MAX}", list.len()));
        return names;
    }
    for (i, v) in list.iter().enumerate() {
        let vp = format!("{path}[{i}]");
        let name = v.get("name").and_then(Value::as_str).unwrap_or("");
        if !is_dns1123_label(name) {
            errors.add(format!("{vp}.name"), format!("{name:?} must be a DNS-1123 label (lower-case letters, digits and '-')"));
        } else if !names.insert(name.to_string()) {
            errors.add(format!("{vp}.name"), format!("duplicate volume name {name:?}"));
        }
        let sources: Vec<&str> = VOLUME_SOURCES.iter().copied().filter(|s| v.get(*s).is_some_and(|x| !x.is_null())).collect();
        match sources.len() {
            0 => errors.add(&vp, "must name exactly one source (emptyDir, secret, configMap, downwardAPI or projected)"),
            1 => {}
            _ => errors.add(&vp, format!("names {} sources ({}); a volume has exactly one", sources.len(), sources.join(", "))),
        }
        if let Some(e) = v.get("emptyDir").filter(|e| !e.is_null()) {
            match e.get("medium").and_then(Value::as_str) {
                None | Some("") | Some("Memory") => {}
                Some(other) => errors
                    .add(format!("{vp}.emptyDir.medium"), format!("{other:?} is not supported; use \"\" (the node's disk) or \"Memory\"")),
            }
            if let Some(limit) = e.get("sizeLimit") {
                let parsed = match limit {
                    Value::String(t) => crate::model::quantity::Quantity::parse(t).ok(),
                    Value::Number(n) => crate::model::quantity::Quantity::parse(&n.to_string()).ok(),
                    _ => None,
                };
                if parsed.is_none_or(|q| q.value() <= 0) {
                    errors.add(format!("{vp}.emptyDir.sizeLimit"), format!("{limit} must be a quantity of bytes above zero, e.g. 64Mi"));
                }
            }
        }
        if let Some(s) = v.get("secret") {
            if s.get("secretName").and_then(Value::as_str).is_none_or(str::is_empty) {
                errors.add(format!("{vp}.secret.secretName"), "is required");
            }
        }
        for items in [v.pointer("/secret/items"), v.pointer("/configMap/items")].into_iter().flatten() {
            for (j, item) in items.as_array().into_iter().flatten().enumerate() {
                let p = item.get("path").and_then(Value::as_str).unwrap_or("");
                if p.is_empty() || !is_inside_path(p) {
                    errors.add(format!("{vp}.items[{j}].path"), format!("{p:?} must be a relative path without '..'"));
                }
            }
        }
    }
    names
}

/// Checks a container's volume mounts against the pod's volumes.
fn validate_mounts(c: &Value, volumes: &BTreeSet<String>, cp: &str, errors: &mut Errors) {
    let mut paths = BTreeSet::new();
    for (j, m) in c.get("volumeMounts").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let mp = format!("{cp}.volumeMounts[{j}]");
        let name = m.get("name").and_then(Value::as_str).unwrap_or("");
        if !volumes.contains(name) {
            errors.add(format!("{mp}.name"), format!("Not found: {name:?} (no volume of the pod has this name)"));
        }
        let at = m.get("mountPath").and_then(Value::as_str).unwrap_or("");
        if !at.starts_with('/') {
            errors.add(format!("{mp}.mountPath"), format!("{at:?} must be an absolute path"));
        } else if at.contains(':') {
            errors.add(format!("{mp}.mountPath"), format!("{at:?} may not contain ':'"));
        } else if !paths.insert(at.trim_end_matches('/').to_string()) {
            errors.add(format!("{mp}.mountPath"), format!("{at:?} must be unique"));
        }
        if let Some(sub) = m.get("subPath").and_then(Value::as_str) {
            if !is_inside_path(sub) || sub.contains(':') {
                errors.add(format!("{mp}.subPath"), format!("{sub:?} must be a relative path without '..'"));
            }
        }
    }
}

/// Checks a container's env: a name each, and a value or one source.
fn validate_env(c: &Value, cp: &str, errors: &mut Errors) {
    for (j, e) in c.get("env").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let ep = format!("{cp}.env[{j}]");
        let name = e.get("name").and_then(Value::as_str).unwrap_or("");
        if name.is_empty() || name.contains('=') {
            errors.add(format!("{ep}.name"), format!("{name:?} must be a non-empty name without '='"));
        }
        let Some(from) = e.get("valueFrom") else { continue };
        if e.get("value").and_then(Value::as_str).is_some_and(|v| !v.is_empty()) {
            errors.add(format!("{ep}.valueFrom"), "may not be set when value is");
        }
        let sources = ["fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef"];
        let set = sources.iter().filter(|s| from.get(**s).is_some_and(|x| !x.is_null())).count();
        if set != 1 {
            errors.add(format!("{ep}.valueFrom"), "must name exactly one of fieldRef, resourceFieldRef, configMapKeyRef and secretKeyRef");
        }
        for r in ["configMapKeyRef", "secretKeyRef"] {
            if let Some(k) = from.get(r) {
                if k.get("key").and_then(Value::as_str).is_none_or(str::is_empty) {
                    errors.add(format!("{ep}.valueFrom.{r}.key"), "is required");
                }
            }
        }
    }
}

pub(super) fn validate_pod_spec(spec: &Value, path: &str, errors: &mut Errors) {
    let containers = spec.get("containers").and_then(Value::as_array);
    let count = containers.map_or(0, Vec::len) + spec.get("initContainers").and_then(Value::as_array).map_or(0, Vec::len);
    if count > CONTAINERS_PER_POD_MAX {
        // Each container is checked below; a pod this large is refused
        // before that work is done.
        errors.add(
            format!("{path}.containers"),
            format!("{count} containers and init containers; a pod may have at most {CONTAINERS_PER_POD_MAX}"),
        );
        return;
    }
    match spec.get("terminationGracePeriodSeconds") {
        Some(g) if g.as_i64().is_none_or(|n| !(0..=GRACE_PERIOD_SECONDS_MAX).contains(&n)) => errors.add(
            format!("{path}.terminationGracePeriodSeconds"),
            format!("{g} must be a whole number of seconds from 0 to {GRACE_PERIOD_SECONDS_MAX}"),
        ),
        _ => {}
    }
    let volume_names = validate_volumes(spec.get("volumes"), &format!("{path}.volumes"), errors);
    match containers {
        None => errors.add(format!("{path}.containers"), "at least one container is required"),
        Some(cs) if cs.is_empty() => errors.add(format!("{path}.containers"), "at least one container is required"),
        Some(cs) => {
            let mut names = BTreeSet::new();
            for (i, c) in cs.iter().enumerate() {
                let cp = format!("{path}.containers[{i}]");
                let cname = c.get("name").and_then(Value::as_str).unwrap_or("");
                if !is_dns1123_label(cname) {
                    errors.add(format!("{cp}.name"), format!("{cname:?} must be a DNS-1123 label (lower-case letters, digits and '-')"));
                } else if !names.insert(cname.to_string()) {
                    errors.add(format!("{cp}.name"), format!("duplicate container name {cname:?}"));
                }
                if c.get("image").and_then(Value::as_str).is_none_or(str::is_empty) {
                    errors.add(format!("{cp}.image"), "is required");
                }
                if let Some(ports) = c.get("ports").and_then(Value::as_array) {
                    for (j, p) in ports.iter().enumerate() {
                        validate_port(p.get("containerPort"), &format!("{cp}.ports[{j}].containerPort"), errors, true);
                        validate_port(p.get("hostPort"), &format!("{cp}.ports[{j}].hostPort"), errors, false);
                        if let Some(proto) = p.get("protocol").and_then(Value::as_str) {
                            if !matches!(proto, "TCP" | "UDP" | "SCTP") {
                                errors.add(format!("{cp}.ports[{j}].protocol"), format!("{proto:?} must be TCP, UDP or SCTP"));
                            }
                        }
                    }
                }
                validate_run_as(c.get("securityContext"), &format!("{cp}.securityContext"), errors);
                validate_env(c, &cp, errors);
                validate_mounts(c, &volume_names, &cp, errors);
                validate_quantities(c.pointer("/resources/requests"), &format!("{cp}.resources.requests"), errors);
                validate_quantities(c.pointer("/resources/limits"), &format!("{cp}.resources.limits"), errors);
            }
        }
    }
    validate_run_as(spec.get("securityContext"), &format!("{path}.securityContext"), errors);
    if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !matches!(rp, "Always" | "OnFailure" | "Never") {
            errors.add(format!("{path}.restartPolicy"), format!("{rp:?} must be Always, OnFailure or Never"));
        }
    }
    if let Some(sel) = spec.get("nodeSelector") {
        if !sel.as_object().is_some_and(|m| m.values().all(Value::is_string)) {
            errors.add(format!("{path}.nodeSelector"), "must be a map of strings");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_rows_read_like_kubectl() {
        let pod = json!({"metadata": {"name": "web-1", "creationTimestamp": "1970-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.0.0.5", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}});
        let now = std::time::UNIX_EPOCH + std::time::Duration::from_secs(300);
        assert_eq!(
            Pod.cells(&pod, now),
            vec![json!("web-1"), json!("1/2"), json!("CrashLoopBackOff"), json!("3"), json!("5m"), json!("10.0.0.5"), json!("n1")]
        );
    }

    #[test]
    fn volumes_mounts_and_env_sources_are_checked() {
        let fields = |volumes: Value, container: Value| {
            let mut errors = Errors::default();
            validate_pod_spec(&json!({"volumes": volumes, "containers": [container]}), "spec", &mut errors);
            errors.into_vec().into_iter().map(|e| e.field).collect::<Vec<_>>()
        };
        let good = json!({"name": "a", "image": "i",
            "env": [{"name": "P", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}}],
            "volumeMounts": [{"name": "conf", "mountPath": "/etc/app"}, {"name": "conf", "mountPath": "/etc/one", "subPath": "one.yaml"}]});
        let volumes = json!([{"name": "conf", "configMap": {"name": "settings"}}, {"name": "scratch", "emptyDir": {}}]);
        assert_eq!(fields(volumes.clone(), good), Vec::<String>::new());
        let bad = json!({"name": "a", "image": "i",
            "env": [{"name": "", "value": "x"},
                    {"name": "B", "value": "x", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "C", "valueFrom": {}},
                    {"name": "D", "valueFrom": {"secretKeyRef": {"name": "db"}}}],
            "volumeMounts": [{"name": "nope", "mountPath": "/x"}, {"name": "conf", "mountPath": "relative"},
                             {"name": "conf", "mountPath": "/a", "subPath": "../../etc"}, {"name": "conf", "mountPath": "/a"}]});
        assert_eq!(
            fields(volumes, bad),
            [
                "spec.containers[0].env[0].name",
                "spec.containers[0].env[1].valueFrom",
                "spec.containers[0].env[2].valueFrom",
                "spec.containers[0].env[3].valueFrom.secretKeyRef.key",
                "spec.containers[0].volumeMounts[0].name",
                "spec.containers[0].volumeMounts[1].mountPath",
                "spec.containers[0].volumeMounts[2].subPath",
                "spec.containers[0].volumeMounts[3].mountPath",
            ]
        );
        let bad_volumes = json!([{"name": "Bad_Name", "emptyDir": {}}, {"name": "two", "emptyDir": {}, "secret": {"secretName": "s"}},
            {"name": "none"}, {"name": "two", "secret": {"secretName": "", "items": [{"key": "k", "path": "/abs"}]}},
            {"name": "ram", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}},
            {"name": "huge", "emptyDir": {"medium": "HugePages"}}, {"name": "zero", "emptyDir": {"medium": "Memory", "sizeLimit": "0"}}]);
        assert_eq!(
            fields(bad_volumes, json!({"name": "a", "image": "i"})),
            [
                "spec.volumes[0].name",
                "spec.volumes[1]",
                "spec.volumes[2]",
                "spec.volumes[3].name",
                "spec.volumes[3].secret.secretName",
                "spec.volumes[3].items[0].path",
                "spec.volumes[5].emptyDir.medium",
                "spec.volumes[6].emptyDir.sizeLimit",
            ]
        );
    }

    #[test]
    fn run_as_ids_are_in_range_and_agree_with_run_as_non_root() {
        let check = |ctx: Value| {
            let mut errors = Errors::default();
            validate_pod_spec(&json!({"securityContext": ctx, "containers": [{"name": "a", "image": "i"}]}), "spec", &mut errors);
            errors
        };
        assert!(check(json!({"runAsUser": 65534, "runAsGroup": 0, "runAsNonRoot": true})).is_empty());
        assert!(!check(json!({"runAsUser": -1})).is_empty());
        assert!(!check(json!({"runAsGroup": 2147483648i64})).is_empty());
        assert!(!check(json!({"runAsUser": 0, "runAsNonRoot": true})).is_empty());
    }

    #[test]
    fn status_follows_kubectl() {
        let exited = json!({"metadata": {"name": "p"}, "status": {"phase": "Failed", "containerStatuses": [
            {"name": "a", "state": {"terminated": {"exitCode": 3}}}]}});
        assert_eq!(pod_status(&exited), "ExitCode:3");
        let evicted = json!({"metadata": {"name": "p"}, "status": {"phase": "Failed", "reason": "Evicted"}});
        assert_eq!(pod_status(&evicted), "Evicted");
        let going = json!({"metadata": {"name": "p", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "status": {"phase": "Running"}});
        assert_eq!(pod_status(&going), "Terminating");
        assert_eq!(pod_status(&json!({"metadata": {"name": "p"}})), "Pending");
    }
}
