//! `flotilla certificate revoke|list`: takes back a client certificate
//! before it expires (a lost laptop's kubeconfig), and lists what was
//! taken back. Cluster-admin only; see `api/certificate_revocation.rs`.

use clap::Subcommand;
use serde_json::{json, Value};

use crate::api::certificate_revocation::{LIST_PATH, REVOKE_PATH};
use crate::client::ApiClient;

#[derive(Subcommand)]
pub enum CertificateCommand {
    /// Revoke the client certificate in FILE (a kubeconfig, or a PEM
    /// certificate), or the one with --serial; it is refused from then on.
    Revoke {
        /// A kubeconfig (every client certificate in it is revoked) or a PEM file.
        file: Option<std::path::PathBuf>,
        /// The certificate's serial number, hex (colons allowed).
        #[arg(long, conflicts_with = "file")]
        serial: Option<String>,
    },
    /// List the revoked certificates.
    List,
}

/// The PEM certificates `text` holds: itself when it is PEM, else every
/// `client-certificate-data` of a kubeconfig.
fn certificates_in(text: &str) -> Result<Vec<String>, String> {
    if text.contains("-----BEGIN CERTIFICATE-----") && !text.contains("client-certificate-data") {
        return Ok(vec![text.to_string()]);
    }
    let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| format!("neither a PEM certificate nor a kubeconfig: {e}"))?;
    let users = doc.get("users").and_then(serde_yaml::Value::as_sequence).cloned().unwrap_or_default();
    use base64::Engine;
    let mut out = Vec::new();
    for u in users {
        if let Some(data) = u.get("user").and_then(|u| u.get("client-certificate-data")).and_then(serde_yaml::Value::as_str) {
            let pem = base64::engine::general_purpose::STANDARD.decode(data.trim()).map_err(|e| format!("client-certificate-data: {e}"))?;
            out.push(String::from_utf8(pem).map_err(|_| "client-certificate-data is not PEM text".to_string())?);
        }
    }
    if out.is_empty() {
        return Err("the kubeconfig holds no client-certificate-data (a certificate in a separate file: pass that file)".into());
    }
    Ok(out)
}

pub async fn run(client: &ApiClient, command: CertificateCommand) -> Result<i32, String> {
    match command {
        CertificateCommand::Revoke { file, serial } => {
            let bodies: Vec<Value> = match (file, serial) {
                (_, Some(serial)) => vec![json!({"serial": serial})],
                (Some(path), None) => {
                    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                    certificates_in(&text)
                        .map_err(|e| format!("{}: {e}", path.display()))?
                        .into_iter()
                        .map(|pem| json!({"certificate": pem}))
                        .collect()
                }
                (None, None) => return Err("name the certificate: a FILE (kubeconfig or PEM) or --serial HEX".into()),
            };
            for body in bodies {
                let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
                let answer = client
                    .call(reqwest::Method::POST, REVOKE_PATH, false, Some(("application/json", bytes)))
                    .await
                    .map_err(|e| e.to_string())?;
                let revoked = &answer["revoked"];
                let subject = revoked.get("subject").and_then(Value::as_str).unwrap_or("");
                println!("certificate {} revoked {subject}", revoked["serial"].as_str().unwrap_or("?"));
            }
            Ok(0)
        }
        CertificateCommand::List => {
            let answer = client.call(reqwest::Method::GET, LIST_PATH, false, None).await.map_err(|e| e.to_string())?;
            println!("{:<42} {:<26} SUBJECT", "SERIAL", "REVOKED");
            for item in answer["items"].as_array().into_iter().flatten() {
                let field = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                println!("{:<42} {:<26} {}", field("serial"), field("revokedAt"), field("subject"));
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kubeconfigs_certificates_are_found() {
        let ca = flotilla_raft::tls::ClusterCa::generate("t").unwrap();
        let id = ca.issue_client("bob", None, std::time::Duration::from_secs(60)).unwrap();
        let kc = crate::kubeconfig::render("t", "https://127.0.0.1:1", &ca.cert_pem, "bob", &id.cert_pem, &id.key_pem);
        assert_eq!(certificates_in(&kc).unwrap(), vec![id.cert_pem.clone()]);
        assert_eq!(certificates_in(&id.cert_pem).unwrap(), vec![id.cert_pem.clone()]);
        assert!(certificates_in("users: []").unwrap_err().contains("no client-certificate-data"));
        assert!(certificates_in(": : :").is_err());
    }
}
