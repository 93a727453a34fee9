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

#[cfg(test)]
mod tests {
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
