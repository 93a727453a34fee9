//! Endpoints: the ready addresses behind a Service, written by the
//! Endpoints controller (or by hand for a Service without a selector).

use std::time::SystemTime;

use k8s_openapi::api::core::v1 as core;
use serde_json::{json, Value};

use crate::model::columns::{age, col, or_none, Column};
use crate::model::resources::{core, Resource};
use crate::model::strategy::{typed, Strategy};

pub const ENDPOINTS: Resource = core("Endpoints", "endpoints", "endpoints", true, &["ep"], &[], &Endpoints);

/// kubectl shows this many addresses, then how many more there are.
const SHOWN_ADDRESSES_MAX: usize = 3;

pub struct Endpoints;

impl Strategy for Endpoints {
    fn check_typed(&self, object: &Value) -> Result<(), String> {
        typed::<core::Endpoints>(object).map(drop)
    }

    fn columns(&self) -> Vec<Column> {
        vec![col("Name", "string", 0), col("Endpoints", "string", 0), col("Age", "string", 0)]
    }

    fn cells(&self, object: &Value, now: SystemTime) -> Vec<Value> {
        let ep: core::Endpoints = typed(object).unwrap_or_default();
        let mut shown = Vec::new();
        for subset in ep.subsets.iter().flatten() {
            for a in subset.addresses.iter().flatten() {
                for p in subset.ports.iter().flatten() {
                    shown.push(format!("{}:{}", a.ip, p.port));
                }
            }
        }
        let text = if shown.len() > SHOWN_ADDRESSES_MAX {
            format!("{} + {} more...", shown[..SHOWN_ADDRESSES_MAX].join(","), shown.len() - SHOWN_ADDRESSES_MAX)
        } else {
            shown.join(",")
        };
        vec![json!(ep.metadata.name.unwrap_or_default()), json!(or_none(text)), json!(age(object, now))]
    }
}

/// The `kubernetes` Service's Endpoints with API server `member` at
/// `ip:port`, in place of what that member said before (an address it
/// listened on before a restart); the other servers stay.
pub fn with_api_server(old: Option<&Value>, member: &str, ip: &str, port: u16) -> Value {
    let mut ep: core::Endpoints = old.and_then(|o| typed(o).ok()).unwrap_or_default();
    let mut subsets = ep.subsets.take().unwrap_or_default();
    for s in &mut subsets {
        if let Some(a) = s.addresses.as_mut() {
            a.retain(|a| a.hostname.as_deref() != Some(member));
        }
    }
    let https = |p: &core::EndpointPort| p.name.as_deref() == Some("https") && p.port == i32::from(port);
    let address = core::EndpointAddress { ip: ip.to_string(), hostname: Some(member.to_string()), ..Default::default() };
    match subsets.iter_mut().find(|s| s.ports.as_ref().is_some_and(|ps| ps.len() == 1 && https(&ps[0]))) {
        Some(s) => s.addresses.get_or_insert_with(Vec::new).push(address),
        None => subsets.push(core::EndpointSubset {
            addresses: Some(vec![address]),
            ports: Some(vec![core::EndpointPort {
                name: Some("https".into()),
                port: i32::from(port),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
    }
    subsets.retain(|s| s.addresses.as_ref().is_some_and(|a| !a.is_empty()));
    let mut out = old
        .cloned()
        .unwrap_or_else(|| json!({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "kubernetes", "namespace": "default"}}));
    out["subsets"] = serde_json::to_value(subsets).unwrap_or(json!([]));
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn each_api_server_keeps_one_address_in_the_kubernetes_endpoints() {
        let addrs = |ep: &Value| -> Vec<(String, String, i64)> {
            let mut v = Vec::new();
            for s in ep["subsets"].as_array().unwrap() {
                for a in s["addresses"].as_array().unwrap() {
                    v.push((
                        a["hostname"].as_str().unwrap().into(),
                        a["ip"].as_str().unwrap().into(),
                        s["ports"][0]["port"].as_i64().unwrap(),
                    ));
                }
            }
            v
        };
        let one = with_api_server(None, "member-1", "127.0.0.1", 8080);
        assert_eq!(addrs(&one), vec![("member-1".into(), "127.0.0.1".into(), 8080)]);
        let two = with_api_server(Some(&one), "member-2", "127.0.0.1", 8081);
        let three = with_api_server(Some(&two), "member-3", "10.0.0.3", 8080);
        assert_eq!(
            addrs(&three),
            vec![
                ("member-1".into(), "127.0.0.1".into(), 8080),
                ("member-3".into(), "10.0.0.3".into(), 8080),
                ("member-2".into(), "127.0.0.1".into(), 8081)
            ]
        );
        // A restart on another port replaces the member's old address.
        let moved = with_api_server(Some(&three), "member-2", "127.0.0.1", 9000);
        assert_eq!(
            addrs(&moved),
            vec![
                ("member-1".into(), "127.0.0.1".into(), 8080),
                ("member-3".into(), "10.0.0.3".into(), 8080),
                ("member-2".into(), "127.0.0.1".into(), 9000)
            ]
        );
        assert_eq!(moved["metadata"]["name"], "kubernetes");
    }

    use super::*;

    #[test]
    fn rows_list_a_few_addresses() {
        let addresses: Vec<Value> = (1..=5).map(|i| json!({"ip": format!("10.0.0.{i}")})).collect();
        let ep = json!({"metadata": {"name": "web"}, "subsets": [{"addresses": addresses, "ports": [{"port": 80}]}]});
        let cells = Endpoints.cells(&ep, SystemTime::now());
        assert_eq!(cells[1], json!("10.0.0.1:80,10.0.0.2:80,10.0.0.3:80 + 2 more..."));
        assert_eq!(Endpoints.cells(&json!({"metadata": {"name": "x"}}), SystemTime::now())[1], json!("<none>"));
    }
}
