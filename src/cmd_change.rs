//! `flotilla delete` and `flotilla scale`.

use flotilla_actors::model::kinds::by_kind;
use serde_json::{json, Value};

use crate::client::{resource_path, ApiClient};
use crate::cmd_get::resolve;
use crate::manifest;

fn shown(res: &flotilla_actors::model::resources::Resource, name: &str) -> String {
    if res.group.is_empty() {
        format!("{} \"{name}\"", res.singular)
    } else {
        format!("{}.{} \"{name}\"", res.singular, res.group)
    }
}

pub async fn delete(
    client: &ApiClient,
    kind: Option<&str>,
    names: &[String],
    files: &[String],
    namespace: Option<&str>,
) -> Result<i32, String> {
    let mut targets = Vec::new();
    // As with apply, an object that cannot be resolved is reported and the
    // others are still deleted; the exit code says something failed.
    let mut failed = false;
    for f in files {
        for m in manifest::read(f)? {
            let api_version = m.object.get("apiVersion").and_then(Value::as_str).unwrap_or("");
            let k = m.object.get("kind").and_then(Value::as_str).unwrap_or("");
            let Some(res) = by_kind(api_version, k) else {
                eprintln!("error: {}: kind {k:?} in {api_version:?} is not served by flotilla", m.source);
                failed = true;
                continue;
            };
            let Some(name) = m.object.pointer("/metadata/name").and_then(Value::as_str) else {
                eprintln!("error: {}: {k} has no metadata.name", m.source);
                failed = true;
                continue;
            };
            let ns = m.object.pointer("/metadata/namespace").and_then(Value::as_str).or(namespace).unwrap_or("default").to_string();
            targets.push((res, ns, name.to_string()));
        }
    }
    if let Some(kind) = kind {
        let res = resolve(kind)?;
        if names.is_empty() {
            return Err(format!("name a {} to delete (flotilla delete {kind} NAME), or use -f FILE", res.singular));
        }
        for n in names {
            targets.push((res, namespace.unwrap_or("default").to_string(), n.clone()));
        }
    }
    if targets.is_empty() {
        return if failed { Ok(1) } else { Err("nothing to delete: give KIND NAME or -f FILE".into()) };
    }
    for (res, ns, name) in targets {
        let path = resource_path(res, Some(&ns), Some(&name));
        let body = serde_json::to_vec(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}))
            .unwrap_or_default();
        match client.call(reqwest::Method::DELETE, &path, false, Some(("application/json", body))).await {
            Ok(_) => println!("{} deleted", shown(res, &name)),
            Err(e) => {
                eprintln!("error: {}: {}", shown(res, &name), e.message);
                failed = true;
            }
        }
    }
    Ok(i32::from(failed))
}

pub async fn scale(client: &ApiClient, kind: &str, name: &str, replicas: u32, namespace: Option<&str>) -> Result<i32, String> {
    let res = resolve(kind)?;
    if !res.subresources.contains(&"scale") {
        return Err(format!("{} cannot be scaled; scale a deployment or replicaset", res.plural));
    }
    let path = format!("{}/scale", resource_path(res, Some(namespace.unwrap_or("default")), Some(name)));
    let body = serde_json::to_vec(&json!({"spec": {"replicas": replicas}})).unwrap_or_default();
    client
        .call(reqwest::Method::PATCH, &path, false, Some(("application/merge-patch+json", body)))
        .await
        .map_err(|e| format!("{}: {}", shown(res, name), e.message))?;
    if res.group.is_empty() {
        println!("{}/{name} scaled", res.singular);
    } else {
        println!("{}.{}/{name} scaled", res.singular, res.group);
    }
    Ok(0)
}
