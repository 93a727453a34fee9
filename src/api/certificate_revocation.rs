//! Revoked client certificates: Kubernetes cannot take back a client
//! certificate before it expires; flotilla keeps a list of revoked serial
//! numbers in the store (`/registry/flotilla.io/revoked-certificates/`)
//! and refuses a certificate on it at every request, not only at the
//! handshake, so a long-lived watch ends too. Revoking and listing are
//! non-resource paths, so only roles granting them (cluster-admin) open
//! them; `flotilla certificate revoke|list` calls them.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};

use super::status::{store_error, ApiError};
use super::ApiState;
use flotilla_actors::Registry;

/// Where a revocation is asked for (POST `{"certificate": PEM}` or `{"serial": HEX}`).
pub const REVOKE_PATH: &str = "/flotilla/v1/certificates/revoke";
/// Where the revoked certificates are listed.
pub const LIST_PATH: &str = "/flotilla/v1/certificates/revoked";

const KEY_PREFIX: &str = "/registry/flotilla.io/revoked-certificates/";
/// A serial number is at most 20 bytes (RFC 5280), 40 hex digits.
const SERIAL_HEX_MAX: usize = 40;

fn key(serial: &str) -> Vec<u8> {
    format!("{KEY_PREFIX}{serial}").into_bytes()
}

/// A certificate's serial number as lowercase hex without leading zero
/// bytes, the form it is listed under.
pub fn serial_of(der: &CertificateDer<'_>) -> Result<String, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| format!("the certificate does not parse: {e}"))?;
    Ok(normal_serial(&to_hex(cert.raw_serial())))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn normal_serial(hex_digits: &str) -> String {
    let s = hex_digits.trim().trim_start_matches("0x").replace(':', "").to_ascii_lowercase();
    let trimmed = s.trim_start_matches("00");
    if trimmed.is_empty() {
        "00".into()
    } else {
        trimmed.to_string()
    }
}

/// Whether `serial` is revoked, from what this member has applied (no
/// consensus round per request; a revocation reaches every member within
/// its replication delay). An unreadable store refuses rather than admits.
pub fn is_revoked(registry: &Registry, serial: &str) -> Result<bool, String> {
    match registry.member().reader().get(&key(serial)) {
        Ok((kv, _)) => Ok(kv.is_some()),
        Err(e) => Err(format!("the revocation list cannot be read: {e}")),
    }
}

/// What a revocation names: a certificate (PEM, its serial, subject and
/// expiry recorded) or a bare serial.
fn revocation_of(body: &Value) -> Result<(String, Value), String> {
    if let Some(pem) = body.get("certificate").and_then(Value::as_str) {
        let der = CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| format!("certificate: not a PEM certificate: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| format!("certificate: does not parse: {e}"))?;
        let serial = normal_serial(&to_hex(cert.raw_serial()));
        let record = json!({
            "serial": serial,
            "subject": cert.subject().to_string(),
            "notAfter": cert.validity().not_after.timestamp(),
        });
        return Ok((serial, record));
    }
    if let Some(given) = body.get("serial").and_then(Value::as_str) {
        let serial = normal_serial(given);
        if serial.len() > SERIAL_HEX_MAX || !serial.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("serial: {given:?} is not a serial number (at most {SERIAL_HEX_MAX} hex digits, colons allowed)"));
        }
        return Ok((serial.clone(), json!({"serial": serial})));
    }
    Err("the body must be {\"certificate\": PEM} or {\"serial\": HEX}".into())
}

/// Puts a certificate on the list. Revoking one twice is harmless.
pub async fn revoke(State(state): State<Arc<ApiState>>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body: Value = serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let (serial, mut record) = revocation_of(&body).map_err(ApiError::bad_request)?;
    record["revokedAt"] = json!(flotilla_actors::model::object::now());
    let member = state.registry.member();
    member.put(key(&serial), record.to_string()).await.map_err(store_error)?;
    let subject = record.get("subject").and_then(Value::as_str).unwrap_or("").to_string();
    tracing::info!(%serial, %subject, "client certificate revoked");
    Ok(Json(json!({"kind": "CertificateRevocation", "revoked": record})))
}

/// Every revoked certificate, as recorded.
pub async fn list(State(state): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let member = state.registry.member();
    let page = member.range(KEY_PREFIX.as_bytes(), 0, None, flotilla_raft::Consistency::Linearizable).await.map_err(store_error)?;
    let items: Vec<Value> = page.kvs.iter().filter_map(|kv| serde_json::from_slice(&kv.value).ok()).collect();
    Ok(Json(json!({"kind": "CertificateRevocationList", "items": items, "complete": !page.more})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_compared_in_one_form() {
        assert_eq!(normal_serial("00:AB:cd"), "abcd");
        assert_eq!(normal_serial("0x00ab"), "ab");
        assert_eq!(normal_serial("0000"), "00");
        assert!(revocation_of(&json!({"serial": "zz"})).is_err());
        assert!(revocation_of(&json!({"serial": "a".repeat(41)})).is_err());
        assert!(revocation_of(&json!({})).is_err());
        assert!(revocation_of(&json!({"certificate": "not pem"})).is_err());
        assert_eq!(revocation_of(&json!({"serial": "01:02"})).unwrap().0, "0102");
    }

    #[test]
    fn a_certificates_record_names_its_serial_subject_and_expiry() {
        let ca = flotilla_raft::tls::ClusterCa::generate("t").unwrap();
        let id = ca.issue_client("alice", Some("dev"), std::time::Duration::from_secs(3600)).unwrap();
        let (serial, record) = revocation_of(&json!({"certificate": id.cert_pem})).unwrap();
        let der = CertificateDer::from_pem_slice(id.cert_pem.as_bytes()).unwrap();
        assert_eq!(serial, serial_of(&der).unwrap());
        assert!(record["subject"].as_str().unwrap().contains("CN=alice"), "{record}");
        assert!(record["notAfter"].as_i64().unwrap() > 0);
    }
}
