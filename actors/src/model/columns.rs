//! The cells `kubectl get` shows: a column's name, type and priority, and
//! the small formatting rules the kinds' strategies share.

use std::time::SystemTime;

use serde_json::Value;

use super::object::{human_age, meta_str, parse_timestamp};

/// One column: its name, JSON type, and priority (1 = only with `-o wide`).
pub struct Column {
    pub name: &'static str,
    pub kind: &'static str,
    pub priority: u8,
}

pub const fn col(name: &'static str, kind: &'static str, priority: u8) -> Column {
    Column { name, kind, priority }
}

pub fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

pub fn age(object: &Value, now: SystemTime) -> String {
    meta_str(object, "creationTimestamp").and_then(parse_timestamp).map_or_else(|| "<unknown>".into(), |t| human_age(t, now))
}

pub fn or_none(s: String) -> String {
    if s.is_empty() {
        "<none>".into()
    } else {
        s
    }
}
