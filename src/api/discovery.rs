//! Discovery documents, so kubectl and other clients can find the
//! resources: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/GROUP/VERSION`.

use flotilla_actors::model::kinds::{groups, RESOURCES};
use flotilla_actors::model::resources::Resource;
use serde_json::{json, Value};

pub fn version() -> Value {
    json!({
        "major": "1", "minor": "32",
        "gitVersion": format!("v1.32.0-flotilla.{}", env!("CARGO_PKG_VERSION")),
        "gitCommit": "", "gitTreeState": "clean", "buildDate": "",
        "goVersion": "n/a (rust)", "compiler": "rustc", "platform": "linux/amd64",
    })
}

pub fn api_versions(server_addr: &str) -> Value {
    json!({
        "kind": "APIVersions", "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_addr}],
    })
}

/// The groups served: the stored kinds' and the access reviews'.
fn served_groups() -> Vec<(&'static str, &'static str)> {
    let mut all = groups();
    all.push((super::access_review::GROUP, super::access_review::VERSION));
    all
}

pub fn api_group_list() -> Value {
    let groups: Vec<Value> = served_groups()
        .into_iter()
        .map(|(g, v)| {
            let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
            json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

pub fn api_group(group: &str) -> Option<Value> {
    served_groups().into_iter().find(|(g, _)| *g == group).map(|(g, v)| {
        let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
        json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": [gv.clone()], "preferredVersion": gv})
    })
}

fn verbs(r: &Resource) -> Vec<&'static str> {
    let mut v = vec!["create", "delete", "get", "list", "patch", "update", "watch"];
    if r.namespaced {
        v.push("deletecollection");
    }
    v
}

/// The resource list of one group version, or `None` if it is not served.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    if (group, version) == (super::access_review::GROUP, super::access_review::VERSION) {
        return Some(super::access_review::resource_list());
    }
    let served: Vec<&Resource> = RESOURCES.iter().filter(|r| r.group == group && r.version == version).collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for r in served {
        // kubectl's `get all` expands the "all" category.
        let categories = r.strategy.categories();
        resources.push(json!({
            "name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
            "kind": r.kind, "verbs": verbs(r), "shortNames": r.short_names, "categories": categories,
        }));
        for sub in r.subresources {
            let kind = if *sub == "scale" { "Scale" } else { r.kind };
            let verbs: Vec<&str> = if *sub == "log" { vec!["get"] } else { vec!["get", "patch", "update"] };
            let mut entry = json!({"name": format!("{}/{sub}", r.plural), "singularName": "", "namespaced": r.namespaced, "kind": kind, "verbs": verbs});
            if *sub == "scale" {
                entry["group"] = json!("autoscaling");
                entry["version"] = json!("v1");
            }
            resources.push(entry);
        }
    }
    let group_version = if group.is_empty() { version.to_string() } else { format!("{group}/{version}") };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}))
}
