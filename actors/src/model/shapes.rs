//! Checks an object against its typed Kubernetes schema (k8s-openapi), so a
//! field of the wrong type is refused with the field named, before the
//! finer validation of `admission` runs.

use serde_json::Value;

use super::resources::Resource;

/// Decodes `object` into the k8s-openapi type of its kind; the error names
/// the offending field as serde_json reports it.
pub fn check(res: &Resource, object: &Value) -> Result<(), String> {
    use k8s_openapi::api::{apps::v1 as apps, core::v1 as core, networking::v1 as net};
    fn try_as<T: serde::de::DeserializeOwned>(object: &Value) -> Result<(), String> {
        serde_json::from_value::<T>(object.clone()).map(|_| ()).map_err(|e| e.to_string())
    }
    match res.kind {
        "Namespace" => try_as::<core::Namespace>(object),
        "Node" => try_as::<core::Node>(object),
        "Pod" => try_as::<core::Pod>(object),
        "Service" => try_as::<core::Service>(object),
        "Endpoints" => try_as::<core::Endpoints>(object),
        "ConfigMap" => try_as::<core::ConfigMap>(object),
        "Event" => try_as::<core::Event>(object),
        "Deployment" => try_as::<apps::Deployment>(object),
        "ReplicaSet" => try_as::<apps::ReplicaSet>(object),
        "NetworkPolicy" => try_as::<net::NetworkPolicy>(object),
        _ => Ok(()),
    }
    .map_err(|e| format!("{} is not a valid {}: {e}", super::object::name(object).unwrap_or("object"), res.kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::resources::lookup;
    use serde_json::json;

    #[test]
    fn wrong_types_are_named() {
        let d = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "w"}, "spec": {"replicas": "three", "selector": {}, "template": {}}});
        let e = check(lookup("deploy").unwrap(), &d).unwrap_err();
        assert!(e.contains("invalid type"), "{e}");
        let ok = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}});
        check(lookup("cm").unwrap(), &ok).unwrap();
    }
}
