//! Admission: defaults filled in and validation of every object written
//! through the API, as plain functions of (resource, old object, new object).
//! Each refusal names the field and says what is allowed.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::object::{metadata_mut, name};
use super::quantity::Quantity;
use super::resources::Resource;
use super::selector::Selector;

/// One invalid field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Path as Kubernetes writes it: `spec.containers[0].image`.
    pub field: String,
    pub message: String,
}

/// Why an object was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdmissionError {
    /// Malformed request (wrong kind, namespace mismatch, not an object): 400.
    #[error("{0}")]
    BadRequest(String),
    /// Invalid fields: 422, with every field listed.
    #[error("{kind} {name:?} is invalid: {}", .errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid { kind: String, name: String, errors: Vec<FieldError> },
}

/// What the caller supplies that admission cannot make up itself.
pub struct AdmissionContext<'a> {
    /// Namespace from the request path, for namespaced resources.
    pub namespace: Option<&'a str>,
    pub now: String,
    pub uid: String,
    /// Five random lower-case alphanumerics for `generateName`.
    pub name_suffix: String,
}

struct Errors(Vec<FieldError>);

impl Errors {
    fn add(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError { field: field.into(), message: message.into() });
    }
}

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;

/// RFC 1123 label: lower-case alphanumerics and '-', starting and ending
/// alphanumeric, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= DNS1123_LABEL_MAX
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: labels joined by '.', at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= DNS1123_SUBDOMAIN_MAX && s.split('.').all(is_dns1123_label)
}

fn label_value_ok(v: &str) -> bool {
    v.len() <= 63
        && (v.is_empty()
            || (v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && v.as_bytes()[0].is_ascii_alphanumeric()
                && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric()))
}

fn label_key_ok(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && label_value_ok(name)
}

/// Names of these kinds must be DNS-1123 labels (they become DNS names).
fn needs_label_name(kind: &str) -> bool {
    matches!(kind, "Namespace" | "Service")
}

/// Fills in defaults for a new object and validates it.
pub fn admit_create(res: &Resource, object: &mut Value, ctx: &AdmissionContext) -> Result<(), AdmissionError> {
    check_shape(res, object, ctx.namespace)?;
    let meta = metadata_mut(object);
    if meta.get("name").and_then(Value::as_str).is_none_or(str::is_empty) {
        match meta.get("generateName").and_then(Value::as_str) {
            Some(prefix) if !prefix.is_empty() => {
                let generated = format!("{prefix}{}", ctx.name_suffix);
                meta.insert("name".into(), Value::String(generated));
            }
            _ => {
                return Err(AdmissionError::Invalid {
                    kind: res.kind.into(),
                    name: String::new(),
                    errors: vec![FieldError { field: "metadata.name".into(), message: "name or generateName is required".into() }],
                })
            }
        }
    }
    meta.insert("uid".into(), Value::String(ctx.uid.clone()));
    meta.insert("creationTimestamp".into(), Value::String(ctx.now.clone()));
    meta.remove("deletionTimestamp");
    meta.remove("resourceVersion");
    if object.get("spec").is_some() {
        metadata_mut(object).insert("generation".into(), json!(1));
    }
    apply_defaults(res, object);
    validate(res, object)
}

/// Validates a replacement of `old` by `new`, carrying over what clients
/// may not change. `subresource` is "status" for a status write.
pub fn admit_update(
    res: &Resource,
    old: &Value,
    new: &mut Value,
    ctx: &AdmissionContext,
    subresource: Option<&str>,
) -> Result<(), AdmissionError> {
    check_shape(res, new, ctx.namespace)?;
    let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
    if name(new) != name(old) {
        return Err(AdmissionError::BadRequest(format!(
            "the name in the body ({:?}) does not match the name in the URL ({:?})",
            name(new).unwrap_or(""),
            name(old).unwrap_or("")
        )));
    }
    match subresource {
        Some("status") => {
            // A status write changes status only.
            let status = new.get("status").cloned();
            *new = old.clone();
            if let Some(o) = new.as_object_mut() {
                match status {
                    Some(s) => o.insert("status".into(), s),
                    None => o.remove("status"),
                };
            }
        }
        _ => {
            // The main resource does not change status when the kind has a
            // status subresource.
            if res.subresources.contains(&"status") {
                if let Some(o) = new.as_object_mut() {
                    match old.get("status") {
                        Some(s) => o.insert("status".into(), s.clone()),
                        None => o.remove("status"),
                    };
                }
            }
        }
    }
    let meta = metadata_mut(new);
    for field in ["uid", "creationTimestamp", "deletionTimestamp", "namespace"] {
        match old_meta.get(field) {
            Some(v) => meta.insert(field.into(), v.clone()),
            None => meta.remove(field),
        };
    }
    let old_gen = old_meta.get("generation").and_then(Value::as_i64).unwrap_or(0);
    if new.get("spec").is_some() {
        let generation = if new.get("spec") != old.get("spec") { old_gen + 1 } else { old_gen.max(1) };
        metadata_mut(new).insert("generation".into(), json!(generation));
    }
    apply_defaults(res, new);
    if matches!(res.kind, "Deployment" | "ReplicaSet") && new.pointer("/spec/selector") != old.pointer("/spec/selector") {
        return Err(AdmissionError::Invalid {
            kind: res.kind.into(),
            name: name(new).unwrap_or("").into(),
            errors: vec![FieldError { field: "spec.selector".into(), message: "field is immutable".into() }],
        });
    }
    validate(res, new)
}

fn check_shape(res: &Resource, object: &mut Value, path_ns: Option<&str>) -> Result<(), AdmissionError> {
    let Some(map) = object.as_object_mut() else {
        return Err(AdmissionError::BadRequest(format!("the body must be a {} object", res.kind)));
    };
    let api_version = map.get("apiVersion").and_then(Value::as_str).unwrap_or("").to_string();
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
    if api_version.is_empty() {
        map.insert("apiVersion".into(), Value::String(res.api_version()));
    } else if api_version != res.api_version() {
        return Err(AdmissionError::BadRequest(format!(
            "apiVersion {api_version:?} does not match the resource: {} is served as {}",
            res.plural,
            res.api_version()
        )));
    }
    if kind.is_empty() {
        map.insert("kind".into(), Value::String(res.kind.into()));
    } else if kind != res.kind {
        return Err(AdmissionError::BadRequest(format!("kind {kind:?} does not match the resource {} (kind {})", res.plural, res.kind)));
    }
    if let Some(m) = map.get("metadata") {
        if !m.is_object() {
            return Err(AdmissionError::BadRequest("metadata must be an object".into()));
        }
    }
    let meta = metadata_mut(object);
    if res.namespaced {
        let ns = path_ns.unwrap_or("default");
        match meta.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("namespace".into(), Value::String(ns.into()));
            }
            Some(given) if given != ns => {
                return Err(AdmissionError::BadRequest(format!(
                    "the namespace of the object ({given}) does not match the namespace of the request ({ns})"
                )))
            }
            Some(_) => {}
        }
    } else {
        meta.remove("namespace");
    }
    Ok(())
}

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.into(), value);
    }
}

fn pod_spec_defaults(spec: &mut Value) {
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

fn apply_defaults(res: &Resource, object: &mut Value) {
    match res.kind {
        "Pod" => {
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
        "Deployment" | "ReplicaSet" => {
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "replicas", json!(1));
                set_default(spec, "revisionHistoryLimit", json!(10));
                if res.kind == "Deployment" {
                    set_default(spec, "progressDeadlineSeconds", json!(600));
                    set_default(spec, "strategy", json!({"type": "RollingUpdate"}));
                    if let Some(strategy) = spec.get_mut("strategy").and_then(Value::as_object_mut) {
                        if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                            set_default(strategy, "rollingUpdate", json!({"maxSurge": "25%", "maxUnavailable": "25%"}));
                        }
                    }
                }
                if let Some(tspec) = spec.get_mut("template").and_then(|t| t.get_mut("spec")) {
                    pod_spec_defaults(tspec);
                }
            }
        }
        "Service" => {
            if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
                set_default(spec, "type", json!("ClusterIP"));
                set_default(spec, "sessionAffinity", json!("None"));
                if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports.iter_mut().filter_map(Value::as_object_mut) {
                        set_default(p, "protocol", json!("TCP"));
                        if let Some(port) = p.get("port").cloned() {
                            set_default(p, "targetPort", port);
                        }
                    }
                }
            }
        }
        "Namespace" => {
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
        _ => {}
    }
}

/// Validates an object after defaults.
pub fn validate(res: &Resource, object: &Value) -> Result<(), AdmissionError> {
    let mut errors = Errors(Vec::new());
    let obj_name = name(object).unwrap_or("").to_string();
    if needs_label_name(res.kind) {
        if !is_dns1123_label(&obj_name) {
            errors.add("metadata.name", format!("{obj_name:?} must be a DNS-1123 label: at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"));
        }
    } else if !is_dns1123_subdomain(&obj_name) {
        errors.add("metadata.name", format!("{obj_name:?} must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', at most 253 characters, starting and ending with a letter or digit"));
    }
    for (field, check_value) in [("labels", true), ("annotations", false)] {
        if let Some(map) = object.pointer(&format!("/metadata/{field}")) {
            match map.as_object() {
                None => errors.add(format!("metadata.{field}"), "must be a map of strings"),
                Some(m) => {
                    for (k, v) in m {
                        if !label_key_ok(k) {
                            errors.add(format!("metadata.{field}"), format!("key {k:?} is not valid: use an optional DNS prefix and '/', then up to 63 letters, digits, '-', '_' or '.'"));
                        }
                        match v.as_str() {
                            None => errors.add(format!("metadata.{field}.{k}"), "must be a string"),
                            Some(s) if check_value && !label_value_ok(s) => errors.add(format!("metadata.{field}.{k}"), format!("value {s:?} is not valid: up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit")),
                            _ => {}
                        }
                    }
                }
            }
        }
    }
    match res.kind {
        "Pod" => match object.get("spec") {
            Some(spec) => validate_pod_spec(spec, "spec", &mut errors),
            None => errors.add("spec", "is required"),
        },
        "Deployment" | "ReplicaSet" => validate_workload(object, &mut errors),
        "Service" => validate_service(object, &mut errors),
        "NetworkPolicy" => validate_network_policy(object, &mut errors),
        "Node" => validate_node(object, &mut errors),
        _ => {}
    }
    if errors.0.is_empty() {
        Ok(())
    } else {
        Err(AdmissionError::Invalid { kind: res.kind.into(), name: obj_name, errors: errors.0 })
    }
}

fn validate_port(v: Option<&Value>, field: &str, errors: &mut Errors, required: bool) {
    match v {
        None if required => errors.add(field, "is required"),
        None => {}
        Some(p) => match p.as_i64() {
            Some(n) if (1..=65535).contains(&n) => {}
            _ => errors.add(field, format!("{p} must be a port number between 1 and 65535")),
        },
    }
}

fn validate_quantities(map: Option<&Value>, field: &str, errors: &mut Errors) {
    let Some(map) = map else { return };
    let Some(m) = map.as_object() else {
        errors.add(field, "must be a map of resource names to quantities");
        return;
    };
    for (k, v) in m {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => {
                errors.add(format!("{field}.{k}"), format!("{other} must be a quantity such as 250m or 256Mi"));
                continue;
            }
        };
        match Quantity::parse(&text) {
            Ok(q) if q.is_negative() => errors.add(format!("{field}.{k}"), "must not be negative"),
            Ok(_) => {}
            Err(e) => errors.add(format!("{field}.{k}"), e.to_string()),
        }
    }
}

fn validate_pod_spec(spec: &Value, path: &str, errors: &mut Errors) {
    let containers = spec.get("containers").and_then(Value::as_array);
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
                validate_quantities(c.pointer("/resources/requests"), &format!("{cp}.resources.requests"), errors);
                validate_quantities(c.pointer("/resources/limits"), &format!("{cp}.resources.limits"), errors);
            }
        }
    }
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

fn validate_workload(object: &Value, errors: &mut Errors) {
    let Some(spec) = object.get("spec") else {
        errors.add("spec", "is required");
        return;
    };
    match spec.get("replicas") {
        Some(r) if r.as_i64().is_none_or(|n| n < 0) => errors.add("spec.replicas", format!("{r} must be a whole number >= 0")),
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
    if let Some(t) = spec.pointer("/strategy/type").and_then(Value::as_str) {
        if !matches!(t, "RollingUpdate" | "Recreate") {
            errors.add("spec.strategy.type", format!("{t:?} must be RollingUpdate or Recreate"));
        }
    }
}

fn validate_service(object: &Value, errors: &mut Errors) {
    let spec = object.get("spec").cloned().unwrap_or(json!({}));
    let svc_type = spec.get("type").and_then(Value::as_str).unwrap_or("ClusterIP");
    if !matches!(svc_type, "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName") {
        errors.add("spec.type", format!("{svc_type:?} must be ClusterIP, NodePort, LoadBalancer or ExternalName"));
    }
    let ports = spec.get("ports").and_then(Value::as_array).cloned().unwrap_or_default();
    if ports.is_empty() && svc_type != "ExternalName" {
        errors.add("spec.ports", "at least one port is required");
    }
    let mut seen_ports = BTreeSet::new();
    let mut seen_names = BTreeSet::new();
    for (i, p) in ports.iter().enumerate() {
        validate_port(p.get("port"), &format!("spec.ports[{i}].port"), errors, true);
        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP").to_string();
        if let Some(port) = p.get("port").and_then(Value::as_i64) {
            if !seen_ports.insert((port, proto.clone())) {
                errors.add(format!("spec.ports[{i}]"), format!("duplicate port {port}/{proto}"));
            }
        }
        if let Some(n) = p.get("name").and_then(Value::as_str) {
            if !seen_names.insert(n.to_string()) {
                errors.add(format!("spec.ports[{i}].name"), format!("duplicate port name {n:?}"));
            }
        } else if ports.len() > 1 {
            errors.add(format!("spec.ports[{i}].name"), "is required when a service has more than one port");
        }
        match p.get("targetPort") {
            Some(Value::Number(_)) => validate_port(p.get("targetPort"), &format!("spec.ports[{i}].targetPort"), errors, false),
            Some(Value::String(s)) if is_dns1123_label(s) => {}
            Some(other) => errors.add(format!("spec.ports[{i}].targetPort"), format!("{other} must be a port number or a port name")),
            None => {}
        }
        if let Some(np) = p.get("nodePort") {
            if !np.as_i64().is_some_and(|n| (30000..=32767).contains(&n)) {
                errors.add(format!("spec.ports[{i}].nodePort"), format!("{np} must be in the node port range 30000-32767"));
            } else if matches!(svc_type, "ClusterIP" | "ExternalName") {
                errors.add(format!("spec.ports[{i}].nodePort"), "may only be set on NodePort or LoadBalancer services");
            }
        }
    }
    if svc_type == "ExternalName" && spec.get("clusterIP").and_then(Value::as_str).is_some_and(|ip| !ip.is_empty()) {
        errors.add("spec.clusterIP", "may not be set for ExternalName services");
    }
    if let Some(sel) = spec.get("selector") {
        if !sel.as_object().is_some_and(|m| m.iter().all(|(k, v)| label_key_ok(k) && v.as_str().is_some_and(label_value_ok))) {
            errors.add("spec.selector", "must be a map of label keys to label values");
        }
    }
}

fn validate_network_policy(object: &Value, errors: &mut Errors) {
    let Some(spec) = object.get("spec") else {
        errors.add("spec", "is required");
        return;
    };
    match spec.get("podSelector") {
        None => errors.add("spec.podSelector", "is required ({} selects every pod in the namespace)"),
        Some(sel) => {
            if let Err(e) = Selector::from_label_selector(sel) {
                errors.add("spec.podSelector", e.reason);
            }
        }
    }
    if let Some(types) = spec.get("policyTypes").and_then(Value::as_array) {
        for (i, t) in types.iter().enumerate() {
            if !matches!(t.as_str(), Some("Ingress") | Some("Egress")) {
                errors.add(format!("spec.policyTypes[{i}]"), format!("{t} must be Ingress or Egress"));
            }
        }
    }
    if let Some(rules) = spec.get("ingress").and_then(Value::as_array) {
        for (i, rule) in rules.iter().enumerate() {
            for (j, peer) in rule.get("from").and_then(Value::as_array).into_iter().flatten().enumerate() {
                for key in ["podSelector", "namespaceSelector"] {
                    if let Some(sel) = peer.get(key) {
                        if let Err(e) = Selector::from_label_selector(sel) {
                            errors.add(format!("spec.ingress[{i}].from[{j}].{key}"), e.reason);
                        }
                    }
                }
                if let Some(block) = peer.get("ipBlock") {
                    let cidr = block.get("cidr").and_then(Value::as_str).unwrap_or("");
                    if !valid_cidr(cidr) {
                        errors.add(
                            format!("spec.ingress[{i}].from[{j}].ipBlock.cidr"),
                            format!("{cidr:?} must be a CIDR such as 10.0.0.0/8"),
                        );
                    }
                }
            }
            for (j, port) in rule.get("ports").and_then(Value::as_array).into_iter().flatten().enumerate() {
                if let Some(Value::Number(_)) = port.get("port") {
                    validate_port(port.get("port"), &format!("spec.ingress[{i}].ports[{j}].port"), errors, false);
                }
            }
        }
    }
}

fn valid_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    match (ip.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(b)) => b <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(b)) => b <= 128,
        _ => false,
    }
}

fn validate_node(object: &Value, errors: &mut Errors) {
    for field in ["capacity", "allocatable"] {
        validate_quantities(object.pointer(&format!("/status/{field}")), &format!("status.{field}"), errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resources::lookup;

    fn ctx() -> AdmissionContext<'static> {
        AdmissionContext { namespace: Some("default"), now: "2026-01-01T00:00:00Z".into(), uid: "u-1".into(), name_suffix: "abcde".into() }
    }

    fn field_errors(r: Result<(), AdmissionError>) -> Vec<String> {
        match r {
            Err(AdmissionError::Invalid { errors, .. }) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn pod_defaults() {
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        admit_create(lookup("pods").unwrap(), &mut pod, &ctx()).unwrap();
        assert_eq!(pod["metadata"]["name"], "web-abcde");
        assert_eq!(pod["metadata"]["namespace"], "default");
        assert_eq!(pod["metadata"]["uid"], "u-1");
        assert_eq!(pod["spec"]["restartPolicy"], "Always");
        assert_eq!(pod["spec"]["containers"][0]["imagePullPolicy"], "Always");
        assert_eq!(pod["status"]["phase"], "Pending");
    }

    #[test]
    fn invalid_pods_name_every_field() {
        let mut pod = json!({"kind": "Pod", "metadata": {"name": "Bad_Name"},
            "spec": {"containers": [{"name": "c", "ports": [{"containerPort": 70000}],
                     "resources": {"requests": {"cpu": "lots"}}}]}});
        let fields = field_errors(admit_create(lookup("pods").unwrap(), &mut pod, &ctx()));
        assert_eq!(
            fields,
            vec![
                "metadata.name",
                "spec.containers[0].image",
                "spec.containers[0].ports[0].containerPort",
                "spec.containers[0].resources.requests.cpu"
            ]
        );
    }

    #[test]
    fn selector_must_match_template() {
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let fields = field_errors(admit_create(lookup("deployments").unwrap(), &mut d, &ctx()));
        assert_eq!(fields, vec!["spec.template.metadata.labels"]);
    }

    #[test]
    fn kind_and_namespace_mismatches_are_bad_requests() {
        let mut wrong = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}});
        assert!(matches!(admit_create(lookup("pods").unwrap(), &mut wrong, &ctx()), Err(AdmissionError::BadRequest(_))));
        let mut other_ns = json!({"kind": "ConfigMap", "metadata": {"name": "x", "namespace": "kube"}});
        assert!(matches!(admit_create(lookup("configmaps").unwrap(), &mut other_ns, &ctx()), Err(AdmissionError::BadRequest(_))));
    }

    #[test]
    fn services_validate_ports() {
        let mut svc = json!({"kind": "Service", "metadata": {"name": "web"},
            "spec": {"ports": [{"name": "a", "port": 80}, {"name": "b", "port": 80}, {"name": "c", "port": 0}]}});
        let fields = field_errors(admit_create(lookup("svc").unwrap(), &mut svc, &ctx()));
        assert_eq!(fields, vec!["spec.ports[1]", "spec.ports[2].port", "spec.ports[2].targetPort"]);
    }

    #[test]
    fn updates_keep_identity_and_bump_generation() {
        let res = lookup("deployments").unwrap();
        let mut d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "i:1"}]}}}});
        admit_create(res, &mut d, &ctx()).unwrap();
        let mut scaled = d.clone();
        scaled["spec"]["replicas"] = json!(3);
        scaled["metadata"]["uid"] = json!("forged");
        admit_update(res, &d, &mut scaled, &ctx(), None).unwrap();
        assert_eq!(scaled["metadata"]["uid"], "u-1");
        assert_eq!(scaled["metadata"]["generation"], 2);
        let mut moved = d.clone();
        moved["spec"]["selector"] = json!({"matchLabels": {"app": "x"}});
        moved["spec"]["template"]["metadata"]["labels"] = json!({"app": "x"});
        assert_eq!(field_errors(admit_update(res, &d, &mut moved, &ctx(), None)), vec!["spec.selector"]);
    }
}
