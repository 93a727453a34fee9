//! Secrets: small confidential data (passwords, tokens, keys), stored
//! encrypted (see `secrets_keyring`). `stringData` is write-only, as in
//! Kubernetes: merged into `data` on every write and never stored. The
//! types Kubernetes checks the keys of (`kubernetes.io/tls`,
//! `kubernetes.io/dockerconfigjson`, `kubernetes.io/service-account-token`)
//! are checked the same way. No message here quotes a value.

use std::collections::BTreeMap;
use std::time::SystemTime;

use base64::Engine as _;
use k8s_openapi::api::core::v1 as core;
use serde_json::{json, Value};

use crate::model::columns::{age, col, Column};
use crate::model::field_errors::Errors;
use crate::model::resources::{core, Resource};
use crate::model::strategy::{typed, Strategy};

pub const SECRETS: Resource = core("Secret", "secrets", "secret", true, &[], &[], &Secret);

/// Kubernetes' limit on a Secret's data, all keys and values together.
pub const SECRET_DATA_MAX_BYTES: usize = 1024 * 1024;
/// Kubernetes' limit on the `type` field.
const SECRET_TYPE_MAX_CHARS: usize = 253;
/// The type a Secret without one gets.
pub const OPAQUE: &str = "Opaque";

/// The data keys a type requires, as Kubernetes validates them.
fn required_keys(secret_type: &str) -> &'static [&'static str] {
    match secret_type {
        "kubernetes.io/tls" => &["tls.crt", "tls.key"],
        "kubernetes.io/dockerconfigjson" => &[".dockerconfigjson"],
        "kubernetes.io/dockercfg" => &[".dockercfg"],
        "kubernetes.io/basic-auth" => &[],
        "kubernetes.io/ssh-auth" => &["ssh-privatekey"],
        _ => &[],
    }
}

fn is_base64(s: &str) -> bool {
    base64::engine::general_purpose::STANDARD.decode(s).is_ok()
}

/// A data key: what a file name in a volume or an env var may be.
fn valid_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

pub struct Secret;

impl Strategy for Secret {
    /// The decoder's own message can quote the value it choked on, so a
    /// Secret's is replaced by one that names the field only.
    fn check_typed(&self, object: &Value) -> Result<(), String> {
        typed::<core::Secret>(object).map(drop).map_err(|_| {
            let data_ok = object.get("data").is_none_or(|d| {
                d.is_null() || d.as_object().is_some_and(|m| m.values().all(|v| v.as_str().is_some_and(is_base64)))
            });
            if data_ok {
                "the Secret does not decode as a v1 Secret: check the types of its fields (type and the metadata are strings, immutable is a boolean, stringData a map of strings)".to_string()
            } else {
                "data: every value must be a base64-encoded string, and every stringData value a string (plain text goes under stringData)".to_string()
            }
        })
    }

    /// Merges `stringData` into `data` (its values win, as in Kubernetes)
    /// and sets the type. A `data` that is not a map of strings is left
    /// for the typed check to refuse.
    fn defaults(&self, object: &mut Value) {
        let Some(o) = object.as_object_mut() else { return };
        if o.get("type").and_then(Value::as_str).is_none_or(str::is_empty) {
            o.insert("type".into(), json!(OPAQUE));
        }
        let Some(Value::Object(strings)) = o.remove("stringData") else { return };
        let data = o.entry("data").or_insert_with(|| json!({}));
        if data.is_null() {
            *data = json!({});
        }
        let Some(data) = data.as_object_mut() else { return };
        for (key, value) in strings {
            // A non-string value is kept as it is, so the typed check names it.
            let encoded = match &value {
                Value::String(s) => json!(base64::engine::general_purpose::STANDARD.encode(s)),
                _ => value,
            };
            data.insert(key, encoded);
        }
    }

    fn validate(&self, object: &Value, errors: &mut Errors) {
        let Ok(secret) = typed::<core::Secret>(object) else { return };
        let data: BTreeMap<String, Vec<u8>> = secret.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect();
        let mut size = 0usize;
        for (key, value) in &data {
            if !valid_key(key) {
                errors
                    .add(format!("data[{key}]"), "a key must be letters, digits, '-', '_' or '.', at most 253 characters, not '.' or '..'");
            }
            size += key.len() + value.len();
        }
        if size > SECRET_DATA_MAX_BYTES {
            errors.add("data", format!("{size} bytes of keys and values; a Secret may hold at most {SECRET_DATA_MAX_BYTES}"));
        }
        let secret_type = secret.type_.unwrap_or_else(|| OPAQUE.into());
        if secret_type.len() > SECRET_TYPE_MAX_CHARS {
            errors.add("type", format!("must be at most {SECRET_TYPE_MAX_CHARS} characters"));
        }
        for key in required_keys(&secret_type) {
            if !data.contains_key(*key) {
                errors.add(format!("data[{key}]"), format!("is required for type {secret_type}"));
            }
        }
        if secret_type == "kubernetes.io/service-account-token" {
            let account = secret.metadata.annotations.as_ref().and_then(|a| a.get("kubernetes.io/service-account.name"));
            if account.is_none_or(String::is_empty) {
                errors.add(
                    "metadata.annotations[kubernetes.io/service-account.name]",
                    "is required for type kubernetes.io/service-account-token: name the ServiceAccount",
                );
            }
        }
        if secret_type == "kubernetes.io/dockerconfigjson" {
            if let Some(config) = data.get(".dockerconfigjson") {
                if serde_json::from_slice::<Value>(config).map_or(true, |v| !v.is_object()) {
                    errors.add("data[.dockerconfigjson]", "must be a JSON object (a Docker config.json)");
                }
            }
        }
    }

    fn validate_update(&self, old: &Value, new: &Value, errors: &mut Errors) {
        if old.get("type") != new.get("type") {
            errors.add("type", "field is immutable: delete the Secret and create it again to change its type");
        }
        if old.get("immutable") == Some(&Value::Bool(true)) {
            if new.get("immutable") != Some(&Value::Bool(true)) {
                errors.add("immutable", "field is immutable when `immutable` is set");
            }
            if old.get("data") != new.get("data") {
                errors.add("data", "field is immutable when `immutable` is set");
            }
        }
    }

    fn columns(&self) -> Vec<Column> {
        vec![col("Name", "string", 0), col("Type", "string", 0), col("Data", "integer", 0), col("Age", "string", 0)]
    }

    fn cells(&self, object: &Value, now: SystemTime) -> Vec<Value> {
        let secret: core::Secret = typed(object).unwrap_or_default();
        vec![
            json!(secret.metadata.name.unwrap_or_default()),
            json!(secret.type_.unwrap_or_else(|| OPAQUE.into())),
            json!(secret.data.map_or(0, |d| d.len())),
            json!(age(object, now)),
        ]
    }

    fn sealed_at_rest(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(mut secret: Value) -> (Value, Vec<String>) {
        Secret.defaults(&mut secret);
        let mut errors = Errors::default();
        Secret.validate(&secret, &mut errors);
        let fields = errors.into_vec().into_iter().map(|e| e.field).collect();
        (secret, fields)
    }

    #[test]
    fn string_data_is_merged_into_data_and_not_kept() {
        let (s, errors) = admitted(json!({"metadata": {"name": "db"}, "data": {"user": "YWRtaW4=", "pass": "b2xk"},
            "stringData": {"pass": "s3cret", "host": "db.local"}}));
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(s["type"], "Opaque");
        assert_eq!(s.get("stringData"), None);
        assert_eq!(s["data"], json!({"user": "YWRtaW4=", "pass": "czNjcmV0", "host": "ZGIubG9jYWw="}));
        assert_eq!(Secret.check_typed(&s), Ok(()));
        assert_eq!(Secret.cells(&s, SystemTime::now())[..3], [json!("db"), json!("Opaque"), json!(3)]);
    }

    #[test]
    fn keys_sizes_and_typed_keys_are_checked() {
        assert_eq!(admitted(json!({"metadata": {"name": "a"}, "stringData": {"bad/key": "x"}})).1, ["data[bad/key]"]);
        assert_eq!(admitted(json!({"metadata": {"name": "a"}, "stringData": {"..": "x"}})).1, ["data[..]"]);
        let big = "x".repeat(SECRET_DATA_MAX_BYTES);
        assert_eq!(admitted(json!({"metadata": {"name": "a"}, "stringData": {"k": big}})).1, ["data"]);
        assert_eq!(
            admitted(json!({"metadata": {"name": "a"}, "type": "kubernetes.io/tls", "stringData": {"tls.crt": "c"}})).1,
            ["data[tls.key]"]
        );
        assert_eq!(
            admitted(
                json!({"metadata": {"name": "a"}, "type": "kubernetes.io/dockerconfigjson", "stringData": {".dockerconfigjson": "[]"}})
            )
            .1,
            ["data[.dockerconfigjson]"]
        );
        assert_eq!(
            admitted(json!({"metadata": {"name": "a"}, "type": "kubernetes.io/service-account-token"})).1,
            ["metadata.annotations[kubernetes.io/service-account.name]"]
        );
        let refused = Secret.check_typed(&json!({"metadata": {"name": "a"}, "data": {"k": "hunter2!"}})).unwrap_err();
        assert!(refused.contains("base64") && !refused.contains("hunter2"), "{refused}");
        let refused = Secret.check_typed(&json!({"metadata": {"name": "a"}, "stringData": {"k": 12345}})).unwrap_err();
        assert!(!refused.contains("12345"), "{refused}");
    }

    #[test]
    fn type_and_immutable_data_cannot_change() {
        let check = |old: Value, new: Value| {
            let mut errors = Errors::default();
            Secret.validate_update(&old, &new, &mut errors);
            errors.into_vec().into_iter().map(|e| e.field).collect::<Vec<_>>()
        };
        assert_eq!(check(json!({"type": "Opaque"}), json!({"type": "kubernetes.io/tls"})), ["type"]);
        let frozen = json!({"type": "Opaque", "immutable": true, "data": {"a": "eA=="}});
        assert_eq!(check(frozen.clone(), json!({"type": "Opaque", "immutable": true, "data": {"a": "eQ=="}})), ["data"]);
        assert_eq!(check(frozen.clone(), json!({"type": "Opaque", "data": {"a": "eA=="}})), ["immutable"]);
        assert!(check(frozen.clone(), frozen).is_empty());
    }
}
