//! Server-side printing: a `meta.k8s.io/v1` Table of the columns `kubectl
//! get` shows, which each kind's strategy names and fills. The API serves it
//! to clients that ask for `as=Table` (kubectl, and flotilla's own `get`).

use std::time::SystemTime;

use serde_json::{json, Value};

use super::object::{human_age, meta_str, parse_timestamp};
use super::resources::Resource;

/// One column: its name, JSON type, and priority (1 = only with `-o wide`).
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub priority: u8,
}

pub(crate) const fn col(name: &'static str, kind: &'static str, priority: u8) -> Column {
    Column { name, kind, priority }
}

pub(crate) fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

pub(crate) fn age(object: &Value, now: SystemTime) -> String {
    meta_str(object, "creationTimestamp").and_then(parse_timestamp).map_or_else(|| "<unknown>".into(), |t| human_age(t, now))
}

pub(crate) fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}

/// A `meta.k8s.io/v1` Table of `objects`. `full_objects` embeds each
/// object (includeObject=Object); otherwise its metadata only.
pub fn table(res: &Resource, objects: &[Value], resource_version: u64, full_objects: bool, now: SystemTime) -> Value {
    let column_definitions: Vec<Value> = res
        .strategy
        .columns()
        .iter()
        .map(|c| json!({"name": c.name, "type": c.kind, "format": if c.name == "Name" { "name" } else { "" }, "description": c.name, "priority": c.priority}))
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = if full_objects {
                o.clone()
            } else {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o.get("metadata").cloned().unwrap_or(json!({}))})
            };
            json!({"cells": res.strategy.cells(o, now), "object": object})
        })
        .collect();
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version.to_string()},
        "columnDefinitions": column_definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resources::lookup;

    #[test]
    fn table_shape() {
        let res = lookup("cm").unwrap();
        let t = table(res, &[json!({"metadata": {"name": "c"}, "data": {"a": "1"}})], 9, false, SystemTime::now());
        assert_eq!(t["kind"], "Table");
        assert_eq!(t["metadata"]["resourceVersion"], "9");
        assert_eq!(t["rows"][0]["cells"][0], "c");
        assert_eq!(t["rows"][0]["cells"][1], 1);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }
}
