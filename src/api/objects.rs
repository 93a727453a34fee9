//! Object requests: list, get, create, replace, patch, delete, the `status`
//! and `scale` subresources, and server-side Tables.

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use flotilla_actors::model::kinds::by_path;
use flotilla_actors::model::object;
use flotilla_actors::model::resources::Resource;
use flotilla_actors::model::table;
use flotilla_actors::{Propagation, RegistryError};
use serde_json::{json, Value};

use super::params::Params;
use super::status::ApiError;
use super::{discovery, wants_table, ApiState, ResourcePath};

pub fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Largest YAML body parsed. YAML costs far more to parse than JSON of the
/// same size, so its bound is tighter than the 3 MiB of a JSON body.
pub const YAML_BODY_MAX_BYTES: usize = 1024 * 1024;
/// YAML bodies parsed at once; each is parsed on a blocking thread, so a
/// slow document never holds the threads that answer other requests.
pub const YAML_PARSES_MAX: usize = 2;

static YAML_PARSES: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(YAML_PARSES_MAX);

async fn parse_yaml(body: &Bytes) -> Result<Value, ApiError> {
    if body.len() > YAML_BODY_MAX_BYTES {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "RequestEntityTooLarge",
            format!("a YAML body may be at most {YAML_BODY_MAX_BYTES} bytes; send larger objects as JSON"),
        ));
    }
    let _permit = YAML_PARSES.acquire().await.map_err(|_| ApiError::bad_request("the server is shutting down"))?;
    let body = body.clone();
    let parsed = tokio::task::spawn_blocking(move || serde_yaml::from_slice::<Value>(&body))
        .await
        .map_err(|e| ApiError::bad_request(format!("the YAML body could not be parsed: {e}")))?;
    parsed.map_err(|e| ApiError::bad_request(format!("the request body is not valid YAML: {e}")))
}

/// Decodes a request body as JSON or YAML, by its content type.
pub async fn decode_body(headers: &HeaderMap, body: &Bytes, allowed: &[&str]) -> Result<(Value, String), ApiError> {
    let ct = content_type(headers);
    let ct = if ct.is_empty() { "application/json".to_string() } else { ct };
    if !allowed.contains(&ct.as_str()) {
        return Err(ApiError::unsupported_media_type(format!(
            "content type {ct:?} is not supported here; use one of {}",
            allowed.join(", ")
        )));
    }
    if body.is_empty() {
        return Err(ApiError::bad_request("the request body is empty; send the object as JSON or YAML"));
    }
    let value: Value = if ct.contains("yaml") {
        parse_yaml(body).await?
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?
    };
    Ok((value, ct))
}

const OBJECT_TYPES: &[&str] = &["application/json", "application/yaml", "application/x-yaml"];
const PATCH_TYPES: &[&str] = &[
    "application/merge-patch+json",
    "application/strategic-merge-patch+json",
    "application/json-patch+json",
    "application/apply-patch+yaml",
];

fn respond(code: StatusCode, value: Value) -> Response {
    (code, Json(value)).into_response()
}

fn object_response(state_table: bool, res: &Resource, obj: Value, full: bool) -> Response {
    if state_table {
        let rv = object::resource_version(&obj).unwrap_or(0);
        return respond(StatusCode::OK, table::table(res, &[obj], rv, full, std::time::SystemTime::now()));
    }
    respond(StatusCode::OK, obj)
}

pub async fn handle(
    state: &ApiState,
    method: Method,
    path: ResourcePath,
    query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(plural) = path.plural.as_deref() else {
        if method != Method::GET {
            return Err(ApiError::method_not_allowed("discovery documents are read-only"));
        }
        return discovery::api_resource_list(&path.group, &path.version)
            .map(|v| respond(StatusCode::OK, v))
            .ok_or_else(|| ApiError::not_found(format!("the server does not serve API version {}/{}", path.group, path.version)));
    };
    let gv = if path.group.is_empty() { path.version.clone() } else { format!("{}/{}", path.group, path.version) };
    let res = by_path(&path.group, &path.version, plural)
        .ok_or_else(|| ApiError::not_found(format!("the server does not serve resource {plural:?} in {gv}")))?;
    if !res.namespaced && path.namespace.is_some() {
        return Err(ApiError::not_found(format!("{plural} are not namespaced")));
    }
    if let Some(sub) = path.subresource.as_deref() {
        if !res.subresources.contains(&sub) {
            return Err(ApiError::not_found(format!("{plural} have no subresource {sub:?}")));
        }
    }
    let params = Params::parse(query)?;
    let ns = path.namespace.as_deref();
    let registry = &state.registry;
    let table = wants_table(headers);
    let name = path.name.as_deref();
    let sub = path.subresource.as_deref();
    match (method.clone(), name, sub) {
        (Method::GET, None, None) if params.watch => super::watch::stream(state, res, ns, params, table).await,
        (Method::GET, None, None) => {
            let (items, rv, cont) =
                registry.list(res, ns, &params.labels, &params.fields, params.limit, params.continue_token.as_deref()).await?;
            if table {
                let mut t = table::table(res, &items, rv, params.full_objects, std::time::SystemTime::now());
                if let Some(c) = cont {
                    t["metadata"]["continue"] = json!(c);
                }
                return Ok(respond(StatusCode::OK, t));
            }
            let mut meta = json!({"resourceVersion": rv.to_string()});
            if let Some(c) = cont {
                meta["continue"] = json!(c);
            }
            Ok(respond(StatusCode::OK, json!({"kind": res.list_kind(), "apiVersion": res.api_version(), "metadata": meta, "items": items})))
        }
        (Method::GET, Some(name), None | Some("status")) => {
            let obj = registry.get(res, ns, name).await?;
            Ok(object_response(table, res, obj, params.full_objects))
        }
        (Method::POST, Some(name), Some("token")) => {
            let (request, _) = decode_body(headers, &body, OBJECT_TYPES).await?;
            let issued = super::token_request::create(registry, ns.unwrap_or("default"), name, request).await?;
            Ok(respond(StatusCode::CREATED, issued))
        }
        (Method::GET, Some(name), Some("log")) => super::logs::pod_log(state, ns.unwrap_or("default"), name, query).await,
        (Method::GET, Some(name), Some("scale")) => Ok(respond(StatusCode::OK, scale_of(&registry.get(res, ns, name).await?))),
        (Method::POST, None, None) => {
            if res.namespaced && ns.is_none() {
                return Err(ApiError::method_not_allowed(format!("create {plural} under /namespaces/NAMESPACE/{plural}")));
            }
            let (obj, _) = decode_body(headers, &body, OBJECT_TYPES).await?;
            let created = registry.create(res, ns, obj).await?;
            Ok(respond(StatusCode::CREATED, created))
        }
        (Method::PUT, Some(name), None | Some("status")) => {
            let (obj, _) = decode_body(headers, &body, OBJECT_TYPES).await?;
            if object::name(&obj).is_some_and(|n| n != name) {
                return Err(ApiError::bad_request(format!(
                    "the name in the body ({:?}) does not match the name in the URL ({name:?})",
                    object::name(&obj).unwrap_or("")
                )));
            }
            let mut obj = obj;
            if object::name(&obj).is_none() && obj.is_object() {
                object::metadata_mut(&mut obj).insert("name".into(), json!(name));
            }
            Ok(respond(StatusCode::OK, registry.update(res, ns, name, obj, sub).await?))
        }
        (Method::PUT, Some(name), Some("scale")) => {
            let (scale, _) = decode_body(headers, &body, OBJECT_TYPES).await?;
            let replicas = scale
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .ok_or_else(|| ApiError::bad_request("spec.replicas is required in a Scale"))?;
            let precondition = object::resource_version(&scale);
            let updated = set_replicas(state, res, ns, name, replicas, precondition).await?;
            Ok(respond(StatusCode::OK, scale_of(&updated)))
        }
        (Method::PATCH, Some(name), sub) => {
            let (patch, ct) = decode_body(headers, &body, PATCH_TYPES).await?;
            if sub == Some("scale") {
                let replicas = patch
                    .pointer("/spec/replicas")
                    .and_then(Value::as_i64)
                    .ok_or_else(|| ApiError::bad_request("the patch must set spec.replicas"))?;
                let updated = set_replicas(state, res, ns, name, replicas, None).await?;
                return Ok(respond(StatusCode::OK, scale_of(&updated)));
            }
            let updated = if ct == "application/json-patch+json" {
                let ops = patch.clone();
                registry.read_modify_write(res, ns, name, None, |old| json_patch(old, &ops).map_err(RegistryError::BadRequest), sub).await?
            } else {
                registry.patch(res, ns, name, patch, sub).await?
            };
            Ok(respond(StatusCode::OK, updated))
        }
        (Method::DELETE, Some(name), None) => {
            let options = if body.is_empty() { json!({}) } else { decode_body(headers, &body, OBJECT_TYPES).await?.0 };
            let propagation = match options.get("propagationPolicy").and_then(Value::as_str).or(params.propagation.as_deref()) {
                None | Some("Background") | Some("Foreground") => Propagation::Background,
                Some("Orphan") => Propagation::Orphan,
                Some(other) => {
                    return Err(ApiError::bad_request(format!("propagationPolicy {other:?} must be Background, Foreground or Orphan")))
                }
            };
            let mut precondition = object::precondition(options.pointer("/preconditions/resourceVersion"), "preconditions.resourceVersion")
                .map_err(ApiError::bad_request)?;
            if options.pointer("/preconditions/uid").is_some_and(|u| !u.is_null()) {
                let current = registry.get(res, ns, name).await?;
                let wanted = options.pointer("/preconditions/uid").and_then(Value::as_str);
                if object::uid(&current) != wanted {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "Conflict",
                        format!("the uid precondition {wanted:?} does not match {name}'s uid {:?}", object::uid(&current)),
                    ));
                }
                // The uid held at this revision; deleting at it keeps the
                // check and the delete one step.
                precondition = precondition.or(object::resource_version(&current));
            }
            let grace = match options.get("gracePeriodSeconds") {
                None | Some(Value::Null) => params.grace_period_seconds,
                Some(v) => Some(super::params::grace_period(
                    v.as_u64()
                        .ok_or_else(|| ApiError::bad_request(format!("gracePeriodSeconds {v} must be a whole number of seconds >= 0")))?,
                )?),
            };
            let deleted = registry.delete_with_grace(res, ns, name, precondition, propagation, grace).await?;
            Ok(respond(StatusCode::OK, deleted))
        }
        // Kubernetes serves deletecollection of a namespaced kind within one
        // namespace only: a path without one would empty every namespace.
        (Method::DELETE, None, None) if res.namespaced && ns.is_none() => Err(ApiError::method_not_allowed(format!(
            "delete {plural} under /namespaces/NAMESPACE/{plural}; deleting them in every namespace at once is not served"
        ))),
        (Method::DELETE, None, None) if res.namespaced => {
            let (items, _, _) = registry.list(res, ns, &params.labels, &params.fields, 0, None).await?;
            let mut deleted = Vec::new();
            for item in items {
                match registry.delete(res, object::namespace(&item), object::name(&item).unwrap_or(""), None, Propagation::Background).await
                {
                    Ok(o) => deleted.push(o),
                    Err(RegistryError::NotFound { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(respond(StatusCode::OK, json!({"kind": res.list_kind(), "apiVersion": res.api_version(), "metadata": {}, "items": deleted})))
        }
        _ => Err(ApiError::method_not_allowed(format!("{method} is not supported on this path"))),
    }
}

async fn set_replicas(
    state: &ApiState,
    res: &Resource,
    ns: Option<&str>,
    name: &str,
    replicas: i64,
    precondition: Option<u64>,
) -> Result<Value, ApiError> {
    Ok(state
        .registry
        .read_modify_write(
            res,
            ns,
            name,
            precondition,
            |old| {
                let mut new = old.clone();
                new["spec"]["replicas"] = json!(replicas);
                Ok(new)
            },
            None,
        )
        .await?)
}

/// The `autoscaling/v1` Scale of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or(""))).collect::<Vec<_>>().join(","))
        .unwrap_or_default();
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": object::name(obj), "namespace": object::namespace(obj),
            "uid": object::uid(obj), "resourceVersion": object::meta_str(obj, "resourceVersion"),
            "creationTimestamp": object::meta_str(obj, "creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(json!(0))},
        "status": {"replicas": obj.pointer("/status/replicas").cloned().unwrap_or(json!(0)), "selector": selector},
    })
}

/// RFC 6902 JSON patch: add, replace, remove and test.
pub fn json_patch(target: &Value, ops: &Value) -> Result<Value, String> {
    let mut doc = target.clone();
    let list = ops.as_array().ok_or("a JSON patch must be a list of operations")?;
    for (i, op) in list.iter().enumerate() {
        let kind = op.get("op").and_then(Value::as_str).ok_or(format!("operation {i} has no \"op\""))?;
        let path = op.get("path").and_then(Value::as_str).ok_or(format!("operation {i} has no \"path\""))?;
        let (parent_path, last) = path.rsplit_once('/').ok_or(format!("operation {i}: path {path:?} must start with '/'"))?;
        let last = last.replace("~1", "/").replace("~0", "~");
        match kind {
            "test" => {
                if doc.pointer(path) != op.get("value") {
                    return Err(format!("operation {i}: test of {path} failed"));
                }
            }
            "remove" | "add" | "replace" => {
                let parent = doc.pointer_mut(parent_path).ok_or(format!("operation {i}: {parent_path:?} does not exist"))?;
                let value = op.get("value").cloned();
                match (parent, kind) {
                    (Value::Object(m), "remove") => {
                        m.remove(&last).ok_or(format!("operation {i}: {path} does not exist"))?;
                    }
                    (Value::Object(m), _) => {
                        if kind == "replace" && !m.contains_key(&last) {
                            return Err(format!("operation {i}: {path} does not exist"));
                        }
                        m.insert(last, value.ok_or(format!("operation {i} needs a value"))?);
                    }
                    (Value::Array(a), k) => {
                        let idx = if last == "-" {
                            a.len()
                        } else {
                            last.parse::<usize>().map_err(|_| format!("operation {i}: {last:?} is not an index"))?
                        };
                        match k {
                            "remove" if idx < a.len() => {
                                a.remove(idx);
                            }
                            "replace" if idx < a.len() => a[idx] = value.ok_or(format!("operation {i} needs a value"))?,
                            "add" if idx <= a.len() => a.insert(idx, value.ok_or(format!("operation {i} needs a value"))?),
                            _ => return Err(format!("operation {i}: index {idx} is out of range")),
                        }
                    }
                    _ => return Err(format!("operation {i}: {parent_path:?} is not an object or list")),
                }
            }
            other => return Err(format!("operation {i}: {other:?} is not supported (use add, remove, replace or test)")),
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_patch_ops() {
        let doc = json!({"spec": {"replicas": 1, "list": [1, 2]}});
        let out = json_patch(
            &doc,
            &json!([
                {"op": "replace", "path": "/spec/replicas", "value": 3},
                {"op": "add", "path": "/spec/list/-", "value": 3},
                {"op": "remove", "path": "/spec/list/0"},
            ]),
        )
        .unwrap();
        assert_eq!(out, json!({"spec": {"replicas": 3, "list": [2, 3]}}));
        assert!(json_patch(&doc, &json!([{"op": "move", "path": "/a"}])).is_err());
    }
}
