//! Server-side printing: a `meta.k8s.io/v1` Table of the columns `kubectl
//! get` shows, which each kind's strategy names and fills. The API serves it
//! to clients that ask for `as=Table` (kubectl, and flotilla's own `get`).

use std::time::SystemTime;

use serde_json::{json, Value};

use super::resources::Resource;

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
    use crate::model::kinds::lookup;

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
