//! Kubernetes' protobuf encoding, read only as far as flotilla needs it:
//! the `k8s\0` envelope (`runtime.Unknown`) and the access reviews, which
//! kubectl 1.32 and later send as protobuf (`kubectl auth can-i`). The
//! answer goes back as JSON, which kubectl accepts. Every length is checked
//! against what is left, so no input makes this allocate or loop beyond the
//! body it was given.

use serde_json::{json, Map, Value};

/// The media type kubectl sends.
pub const PROTOBUF: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

enum Field<'a> {
    Varint,
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &mut &[u8]) -> Result<u64, String> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = buf.split_first().ok_or("a varint runs past the end of the message")?;
        *buf = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("a varint is longer than ten bytes".into())
}

/// The fields of one message, in order.
fn fields(mut buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, String> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (number, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => {
                varint(&mut buf)?;
                Field::Varint
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if buf.len() < n {
                    return Err("a fixed-size field runs past the end of the message".into());
                }
                buf = &buf[n..];
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|_| "a length does not fit in memory")?;
                if len > buf.len() {
                    return Err(format!("a field claims {len} bytes where {} are left", buf.len()));
                }
                let (bytes, rest) = buf.split_at(len);
                buf = rest;
                Field::Bytes(bytes)
            }
            other => return Err(format!("wire type {other} is not one Kubernetes uses")),
        };
        out.push((number, field));
    }
    Ok(out)
}

fn text(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|_| "a string field is not UTF-8".to_string())
}

/// Decodes a message whose fields are all strings into an object, naming
/// the fields by number; repeated fields become arrays where `repeated` says.
fn strings(buf: &[u8], names: &[(u64, &str)], repeated: &[u64]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for (number, field) in fields(buf)? {
        let (Some((_, name)), Field::Bytes(b)) = (names.iter().find(|(n, _)| *n == number), field) else { continue };
        let value = Value::String(text(b)?);
        if repeated.contains(&number) {
            match out.entry(name.to_string()).or_insert_with(|| json!([])) {
                Value::Array(items) => items.push(value),
                _ => unreachable!("repeated fields are arrays"),
            }
        } else {
            out.insert(name.to_string(), value);
        }
    }
    Ok(out)
}

fn access_review_spec(buf: &[u8]) -> Result<Value, String> {
    const RESOURCE: &[(u64, &str)] =
        &[(1, "namespace"), (2, "verb"), (3, "group"), (4, "version"), (5, "resource"), (6, "subresource"), (7, "name")];
    const NON_RESOURCE: &[(u64, &str)] = &[(1, "path"), (2, "verb")];
    let mut spec = Map::new();
    for (number, field) in fields(buf)? {
        let Field::Bytes(b) = field else { continue };
        match number {
            1 => {
                spec.insert("resourceAttributes".into(), Value::Object(strings(b, RESOURCE, &[])?));
            }
            2 => {
                spec.insert("nonResourceAttributes".into(), Value::Object(strings(b, NON_RESOURCE, &[])?));
            }
            3 => {
                spec.insert("user".into(), Value::String(text(b)?));
            }
            4 => match spec.entry("groups").or_insert_with(|| json!([])) {
                Value::Array(items) => items.push(Value::String(text(b)?)),
                _ => unreachable!("groups is an array"),
            },
            _ => {}
        }
    }
    Ok(Value::Object(spec))
}

/// Reads a protobuf-encoded SelfSubjectAccessReview or SubjectAccessReview
/// as its JSON form (apiVersion, kind, spec).
pub fn access_review(body: &[u8]) -> Result<Value, String> {
    let inner = body.strip_prefix(MAGIC).ok_or("the body does not start with Kubernetes' protobuf magic (k8s\\0)")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), None);
    for (number, field) in fields(inner)? {
        match (number, field) {
            (1, Field::Bytes(type_meta)) => {
                let tm = strings(type_meta, &[(1, "apiVersion"), (2, "kind")], &[])?;
                api_version = tm.get("apiVersion").and_then(Value::as_str).unwrap_or("").to_string();
                kind = tm.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
            }
            (2, Field::Bytes(r)) => raw = Some(r),
            _ => {}
        }
    }
    let raw = raw.ok_or("the protobuf envelope carries no object")?;
    let mut spec = Value::Null;
    for (number, field) in fields(raw)? {
        if let (2, Field::Bytes(s)) = (number, field) {
            spec = access_review_spec(s)?;
        }
    }
    Ok(json!({"apiVersion": api_version, "kind": kind, "spec": spec}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![(number << 3 | 2) as u8, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_self_subject_access_review_reads_as_its_json() {
        let attrs = [field(1, b"dev"), field(2, b"list"), field(5, b"pods")].concat();
        let spec = field(1, &attrs);
        let review = field(2, &spec);
        let type_meta = [field(1, b"authorization.k8s.io/v1"), field(2, b"SelfSubjectAccessReview")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &review)].concat();
        assert_eq!(
            access_review(&body).unwrap(),
            json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                   "spec": {"resourceAttributes": {"namespace": "dev", "verb": "list", "resource": "pods"}}})
        );
        let sar_spec =
            [field(2, &[field(1, b"/healthz"), field(2, b"get")].concat()), field(3, b"bob"), field(4, b"a"), field(4, b"b")].concat();
        let body = [MAGIC.to_vec(), field(2, &field(2, &sar_spec))].concat();
        assert_eq!(
            access_review(&body).unwrap()["spec"],
            json!({"nonResourceAttributes": {"path": "/healthz", "verb": "get"}, "user": "bob", "groups": ["a", "b"]})
        );
    }

    #[test]
    fn garbage_is_refused_never_a_panic() {
        assert!(access_review(b"").is_err());
        assert!(access_review(b"{}").is_err());
        assert!(access_review(b"k8s\0\x12\xff\xff\xff\xff\x0f").unwrap_err().contains("claims"));
        assert!(access_review(b"k8s\0\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff").is_err());
        assert!(access_review(b"k8s\0\x0f").is_err());
        let mut seed: u64 = 7;
        for _ in 0..20_000 {
            let len = (seed % 64) as usize;
            let mut body = MAGIC.to_vec();
            for _ in 0..len {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                body.push((seed >> 33) as u8);
            }
            let _ = access_review(&body);
        }
    }
}
