//! Helpers over objects kept as JSON in Kubernetes' shapes: metadata access,
//! the storage encoding, and timestamps.
//!
//! Objects are stored as one format byte followed by compact JSON. The
//! object's `resourceVersion` is not stored: it is the store's mod revision,
//! filled in on every read, as the Kubernetes API server does with etcd.

use serde_json::{Map, Value};

/// Format byte of the current encoding (compact JSON).
const FORMAT_JSON_V1: u8 = 1;

/// A stored object that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("stored object is unreadable: {0}")]
pub struct DecodeError(pub String);

/// Encodes an object for the store, leaving out `resourceVersion`.
pub fn encode(object: &Value) -> Vec<u8> {
    let mut o = object.clone();
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
    }
    let mut out = vec![FORMAT_JSON_V1];
    // Serializing a Value into a Vec cannot fail.
    serde_json::to_writer(&mut out, &o).unwrap_or_default();
    out
}

/// Decodes a stored object and sets its `resourceVersion`.
pub fn decode(bytes: &[u8], mod_revision: u64) -> Result<Value, DecodeError> {
    match bytes.split_first() {
        Some((&FORMAT_JSON_V1, json)) => {
            let mut v: Value = serde_json::from_slice(json).map_err(|e| DecodeError(e.to_string()))?;
            if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.insert("resourceVersion".into(), Value::String(mod_revision.to_string()));
            }
            Ok(v)
        }
        Some((other, _)) => Err(DecodeError(format!("unknown format {other}; written by a newer flotilla?"))),
        None => Err(DecodeError("empty value".into())),
    }
}

pub fn metadata(object: &Value) -> Option<&Map<String, Value>> {
    object.get("metadata").and_then(Value::as_object)
}

/// `metadata`, created if missing (callers have checked the object is a map).
pub fn metadata_mut(object: &mut Value) -> &mut Map<String, Value> {
    if !object.get("metadata").is_some_and(Value::is_object) {
        if let Some(o) = object.as_object_mut() {
            o.insert("metadata".into(), Value::Object(Map::new()));
        }
    }
    object.get_mut("metadata").and_then(Value::as_object_mut).expect("metadata is a map")
}

pub fn meta_str<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    metadata(object).and_then(|m| m.get(field)).and_then(Value::as_str)
}

pub fn name(object: &Value) -> Option<&str> {
    meta_str(object, "name")
}

pub fn namespace(object: &Value) -> Option<&str> {
    meta_str(object, "namespace")
}

pub fn uid(object: &Value) -> Option<&str> {
    meta_str(object, "uid")
}

pub fn resource_version(object: &Value) -> Option<u64> {
    meta_str(object, "resourceVersion").and_then(|s| s.parse().ok())
}

/// The uids this object's ownerReferences name.
pub fn owner_uids(object: &Value) -> Vec<String> {
    metadata(object)
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .map(|refs| refs.iter().filter_map(|r| r.get("uid").and_then(Value::as_str).map(String::from)).collect())
        .unwrap_or_default()
}

/// The owner reference marked `controller: true`, if any.
pub fn controller_ref(object: &Value) -> Option<&Value> {
    metadata(object)
        .and_then(|m| m.get("ownerReferences"))
        .and_then(Value::as_array)
        .and_then(|refs| refs.iter().find(|r| r.get("controller").and_then(Value::as_bool) == Some(true)))
}

/// RFC 3339 in UTC with seconds, as Kubernetes writes timestamps.
pub fn timestamp(t: std::time::SystemTime) -> String {
    let dt: chrono::DateTime<chrono::Utc> = t.into();
    dt.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub fn now() -> String {
    timestamp(std::time::SystemTime::now())
}

/// Parses a Kubernetes timestamp.
pub fn parse_timestamp(s: &str) -> Option<std::time::SystemTime> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|d| d.with_timezone(&chrono::Utc).into())
}

/// "5s", "3m", "2h", "4d" as `kubectl get` shows ages.
pub fn human_age(since: std::time::SystemTime, now: std::time::SystemTime) -> String {
    let secs = now.duration_since(since).map(|d| d.as_secs()).unwrap_or(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A resourceVersion precondition (`preconditions.resourceVersion`,
/// `metadata.resourceVersion` of a patch): absent or null is none; anything
/// but a revision as the server writes it is an error naming `field`.
pub fn precondition(value: Option<&Value>, field: &str) -> Result<Option<u64>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .map(Some)
            .ok_or_else(|| format!("{field} {v} must be a number as returned by the server, or left out")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn encoding_drops_and_restores_resource_version() {
        let obj = json!({"kind": "Pod", "metadata": {"name": "p", "resourceVersion": "7"}});
        let bytes = encode(&obj);
        assert_eq!(bytes[0], 1);
        assert!(!String::from_utf8_lossy(&bytes).contains("resourceVersion"));
        let back = decode(&bytes, 42).unwrap();
        assert_eq!(back["metadata"]["resourceVersion"], "42");
        assert!(decode(&[9, b'{'], 1).is_err());
    }

    #[test]
    fn ages_read_like_kubectl() {
        let t0 = std::time::UNIX_EPOCH;
        let at = |s| t0 + std::time::Duration::from_secs(s);
        assert_eq!(human_age(t0, at(5)), "5s");
        assert_eq!(human_age(t0, at(600)), "10m");
        assert_eq!(human_age(t0, at(3 * 3600)), "3h");
        assert_eq!(human_age(t0, at(3 * 86400)), "3d");
        assert_eq!(timestamp(at(86400)), "1970-01-02T00:00:00Z");
    }
}
