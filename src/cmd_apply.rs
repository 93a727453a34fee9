//! `flotilla apply -f FILE|DIR|-`: creates what is missing and updates what
//! changed, keeping the applied configuration in the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation so fields
//! removed from a manifest are removed from the object (a three-way merge).

use flotilla_actors::model::kinds::by_kind;
use flotilla_actors::model::resources::Resource;
use flotilla_actors::registry::merge_patch;
use serde_json::{json, Map, Value};

use crate::client::{resource_path, ApiClient};
use crate::manifest;

pub const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The merge patch from what was applied before (`last`), what is applied
/// now (`desired`) and what the server holds (`live`): fields the manifest
/// sets are set where they differ from the live object, fields dropped from
/// the manifest since `last` are removed (null), and fields only the server
/// filled in (defaults, status) are left alone. Lists are replaced whole,
/// and only when the manifest changed them, so server-side defaults inside
/// lists do not make every apply a change.
pub fn three_way_patch(last: &Value, desired: &Value, live: &Value) -> Value {
    let mut patch = Map::new();
    let (Some(d), l, v) = (desired.as_object(), last.as_object(), live.as_object()) else {
        return desired.clone();
    };
    for (k, dv) in d {
        let lv = l.and_then(|m| m.get(k));
        let vv = v.and_then(|m| m.get(k));
        match (dv, vv) {
            (Value::Object(_), Some(Value::Object(_))) => {
                let sub = three_way_patch(lv.unwrap_or(&Value::Null), dv, vv.unwrap_or(&Value::Null));
                if sub.as_object().is_some_and(|m| !m.is_empty()) {
                    patch.insert(k.clone(), sub);
                }
            }
            (Value::Array(_), Some(_)) if lv == Some(dv) => {}
            _ if vv == Some(dv) => {}
            _ => {
                patch.insert(k.clone(), dv.clone());
            }
        }
    }
    if let Some(l) = l {
        for k in l.keys() {
            if !d.contains_key(k) && v.is_some_and(|m| m.contains_key(k)) {
                patch.insert(k.clone(), Value::Null);
            }
        }
    }
    Value::Object(patch)
}

fn strip_server_fields(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in ["resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"] {
            m.remove(f);
        }
    }
    v
}

pub async fn run(client: &ApiClient, files: &[String], namespace: Option<&str>) -> Result<i32, String> {
    let mut objects = Vec::new();
    for f in files {
        objects.extend(manifest::read(f)?);
    }
    if objects.is_empty() {
        return Err(format!("no objects found in {}", files.join(", ")));
    }
    let mut failed = 0;
    for m in objects {
        match apply_one(client, &m.object, namespace).await {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("error: {}: {e}", m.source);
                failed += 1;
            }
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

fn display_name(res: &Resource, name: &str) -> String {
    if res.group.is_empty() {
        format!("{}/{name}", res.singular)
    } else {
        format!("{}.{}/{name}", res.singular, res.group)
    }
}

async fn apply_one(client: &ApiClient, object: &Value, namespace: Option<&str>) -> Result<String, String> {
    let api_version = object.get("apiVersion").and_then(Value::as_str).ok_or("the object has no apiVersion")?;
    let kind = object.get("kind").and_then(Value::as_str).ok_or("the object has no kind")?;
    let res = by_kind(api_version, kind).ok_or_else(|| format!("kind {kind:?} in {api_version:?} is not served by flotilla"))?;
    let name = object.pointer("/metadata/name").and_then(Value::as_str).ok_or_else(|| format!("{kind} has no metadata.name"))?;
    let ns = if res.namespaced {
        Some(object.pointer("/metadata/namespace").and_then(Value::as_str).or(namespace).unwrap_or("default").to_string())
    } else {
        None
    };
    let mut desired = object.clone();
    let applied_text = serde_json::to_string(&desired).map_err(|e| e.to_string())?;
    desired["metadata"]["annotations"] = {
        let mut a = desired.pointer("/metadata/annotations").cloned().unwrap_or(json!({}));
        a[LAST_APPLIED] = json!(applied_text);
        a
    };
    let path = resource_path(res, ns.as_deref(), Some(name));
    let shown = display_name(res, name);
    // The update is a compare-and-swap on the resourceVersion read; a
    // controller writing the object meanwhile (a Deployment's status) makes
    // it 409, and the patch is worked out again from what is there now.
    for _ in 0..APPLY_CONFLICT_RETRIES_MAX {
        let existing = match client.get(&path, false).await {
            Err(e) if e.code == 404 => {
                let body = serde_json::to_vec(&desired).map_err(|e| e.to_string())?;
                client
                    .call(reqwest::Method::POST, &resource_path(res, ns.as_deref(), None), false, Some(("application/json", body)))
                    .await
                    .map_err(|e| e.message)?;
                return Ok(format!("{shown} created"));
            }
            Err(e) => return Err(e.message),
            Ok(existing) => existing,
        };
        let last: Value = existing
            .pointer(&format!("/metadata/annotations/{}", LAST_APPLIED.replace('/', "~1")))
            .and_then(Value::as_str)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(json!({}));
        let patch = three_way_patch(&last, &desired, &existing);
        let mut merged = existing.clone();
        merge_patch(&mut merged, &patch);
        if strip_server_fields(&merged) == strip_server_fields(&existing) {
            return Ok(format!("{shown} unchanged"));
        }
        let body = serde_json::to_vec(&merged).map_err(|e| e.to_string())?;
        match client.call(reqwest::Method::PUT, &path, false, Some(("application/json", body))).await {
            Ok(_) => return Ok(format!("{shown} configured")),
            Err(e) if e.code == 409 => continue,
            Err(e) => return Err(e.message),
        }
    }
    Err(format!("{shown} kept changing while it was being applied ({APPLY_CONFLICT_RETRIES_MAX} tries); apply it again"))
}

/// Tries of one object's update when it changes under the apply.
const APPLY_CONFLICT_RETRIES_MAX: usize = 5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_fields_become_null_and_server_defaults_stay() {
        let last = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "data": {"x": "1"}});
        let desired = json!({"metadata": {"labels": {"a": "1"}}, "data": {"x": "2"}});
        let live = json!({"metadata": {"labels": {"a": "1", "b": "2"}, "uid": "u"}, "data": {"x": "1"}});
        assert_eq!(three_way_patch(&last, &desired, &live), json!({"metadata": {"labels": {"b": null}}, "data": {"x": "2"}}));
        // A list the server filled defaults into is left alone while the
        // manifest does not change it.
        let applied = json!({"spec": {"containers": [{"name": "c"}], "replicas": 1}});
        let defaulted = json!({"spec": {"containers": [{"name": "c", "imagePullPolicy": "Always"}], "replicas": 1, "strategy": {}}});
        assert_eq!(three_way_patch(&applied, &applied, &defaulted), json!({}));
        let scaled = json!({"spec": {"containers": [{"name": "c"}], "replicas": 3}});
        assert_eq!(three_way_patch(&applied, &scaled, &defaulted), json!({"spec": {"replicas": 3}}));
    }
}
