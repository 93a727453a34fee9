//! Events: what happened to an object, for people (`kubectl get events`,
//! `describe`) and for integrations that watch them.

use std::time::SystemTime;

use k8s_openapi::api::core::v1 as core;
use serde_json::{json, Value};

use crate::model::columns::{age, col, s, Column};
use crate::model::object::{human_age, parse_timestamp};
use crate::model::resources::{core, Resource};
use crate::model::strategy::{typed, Strategy};

pub const EVENTS: Resource = core("Event", "events", "event", true, &["ev"], &[], &Event);

pub struct Event;

impl Strategy for Event {
    fn check_typed(&self, object: &Value) -> Result<(), String> {
        typed::<core::Event>(object).map(drop)
    }

    fn columns(&self) -> Vec<Column> {
        vec![
            col("Last Seen", "string", 0),
            col("Type", "string", 0),
            col("Reason", "string", 0),
            col("Object", "string", 0),
            col("Message", "string", 0),
        ]
    }

    fn cells(&self, object: &Value, now: SystemTime) -> Vec<Value> {
        let ev: core::Event = typed(object).unwrap_or_default();
        // The timestamp is read as stored: its text is what kubectl parses.
        let seen = parse_timestamp(&s(object.get("lastTimestamp"))).map(|t| human_age(t, now)).unwrap_or_else(|| age(object, now));
        let involved = &ev.involved_object;
        let what = format!("{}/{}", involved.kind.as_deref().unwrap_or("").to_ascii_lowercase(), involved.name.as_deref().unwrap_or(""));
        vec![
            json!(seen),
            json!(ev.type_.unwrap_or_default()),
            json!(ev.reason.unwrap_or_default()),
            json!(what),
            json!(ev.message.unwrap_or_default()),
        ]
    }
}
