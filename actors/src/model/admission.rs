//! Admission: defaults filled in and validation of every object written
//! through the API, as plain functions of (resource, old object, new object).
//! What is the same for every kind (identity, metadata, names, labels) is
//! here; each kind's own rules are its strategy's (`model::kinds`). Each
//! refusal names the field and says what is allowed.

use serde_json::{json, Map, Value};

pub use super::field_errors::{Errors, FieldError};
use super::object::{metadata_mut, name};
use super::quantity::Quantity;
use super::resources::Resource;
use super::strategy::NameRule;

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

pub(crate) fn label_value_ok(v: &str) -> bool {
    v.len() <= 63
        && (v.is_empty()
            || (v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
                && v.as_bytes()[0].is_ascii_alphanumeric()
                && v.as_bytes()[v.len() - 1].is_ascii_alphanumeric()))
}

pub(crate) fn label_key_ok(k: &str) -> bool {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    prefix.is_none_or(is_dns1123_subdomain) && !name.is_empty() && label_value_ok(name)
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
    res.strategy.defaults(object);
    validate(res, object)?;
    check_typed(res, object)
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
    res.strategy.defaults(new);
    let mut errors = Errors::default();
    res.strategy.validate_update(old, new, &mut errors);
    if !errors.is_empty() {
        return Err(AdmissionError::Invalid { kind: res.kind.into(), name: name(new).unwrap_or("").into(), errors: errors.into_vec() });
    }
    validate(res, new)?;
    check_typed(res, new)
}

/// The object must decode as its kind's k8s-openapi type, after the field
/// checks (which name more than the first wrong field).
fn check_typed(res: &Resource, object: &Value) -> Result<(), AdmissionError> {
    res.strategy
        .check_typed(object)
        .map_err(|e| AdmissionError::BadRequest(format!("{} is not a valid {}: {e}", name(object).unwrap_or("object"), res.kind)))
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

pub(crate) fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.into(), value);
    }
}

/// Kubernetes' rule for names that only ever appear in a URL path (RBAC
/// objects: `system:discovery`).
pub fn is_path_segment(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == '%' || c.is_control() || c.is_whitespace())
}

/// Validates an object after defaults.
pub fn validate(res: &Resource, object: &Value) -> Result<(), AdmissionError> {
    let mut errors = Errors::default();
    let obj_name = name(object).unwrap_or("").to_string();
    match res.strategy.name_rule() {
        NameRule::Label if !is_dns1123_label(&obj_name) => {
            errors.add("metadata.name", format!("{obj_name:?} must be a DNS-1123 label: at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"));
        }
        NameRule::Subdomain if !is_dns1123_subdomain(&obj_name) => {
            errors.add("metadata.name", format!("{obj_name:?} must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', at most 253 characters, starting and ending with a letter or digit"));
        }
        NameRule::PathSegment if !is_path_segment(&obj_name) => {
            errors.add(
                "metadata.name",
                format!("{obj_name:?} must be 1 to 253 printable characters, not \".\" or \"..\", without '/' or '%'"),
            );
        }
        _ => {}
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
    res.strategy.validate(object, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(AdmissionError::Invalid { kind: res.kind.into(), name: obj_name, errors: errors.into_vec() })
    }
}

pub(crate) fn validate_port(v: Option<&Value>, field: &str, errors: &mut Errors, required: bool) {
    match v {
        None if required => errors.add(field, "is required"),
        None => {}
        Some(p) => match p.as_i64() {
            Some(n) if (1..=65535).contains(&n) => {}
            _ => errors.add(field, format!("{p} must be a port number between 1 and 65535")),
        },
    }
}

pub(crate) fn validate_quantities(map: Option<&Value>, field: &str, errors: &mut Errors) {
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

pub(crate) fn valid_cidr(s: &str) -> bool {
    let Some((ip, bits)) = s.split_once('/') else {
        return false;
    };
    match (ip.parse::<std::net::IpAddr>(), bits.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(b)) => b <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(b)) => b <= 128,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::kinds::lookup;

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
