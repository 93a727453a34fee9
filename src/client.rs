//! The HTTP client the object commands (`get`, `apply`, ...) use: finds the
//! server and credentials (`--server`, `--token`, then a kubeconfig: see
//! [`crate::kubeconfig::find`]), speaks HTTPS verified against the
//! cluster's CA, and turns failures into one line that says what happened.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;

/// Deadline for one non-watch request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_SERVER: &str = "https://127.0.0.1:8080";

/// Where a client command sends its requests, as the command line says.
#[derive(Clone, Debug, Default)]
pub struct ClientTarget {
    /// `--server`, else $FLOTILLA_SERVER, else the kubeconfig's.
    pub server: Option<String>,
    /// `--kubeconfig`, else $KUBECONFIG and the defaults.
    pub kubeconfig: Option<PathBuf>,
    /// `--token`, else $FLOTILLA_API_TOKEN, else the kubeconfig's.
    pub token: Option<String>,
}

pub struct ApiClient {
    base: String,
    http: reqwest::Client,
    /// The `Authorization` header's value, when a bearer token is used.
    authorization: Option<String>,
}

/// A failed call: its HTTP code (0 when the server was not reached) and
/// the message to show.
#[derive(Debug)]
pub struct CallError {
    pub code: u16,
    pub message: String,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A reqwest client and header for what `target` names: the TLS
/// configuration (the kubeconfig's CA, its client certificate) and the
/// bearer token. Answers (base URL, client builder, Authorization value).
pub fn connect(target: &ClientTarget) -> Result<(String, reqwest::ClientBuilder, Option<String>), String> {
    crate::install_crypto_provider();
    let creds = crate::kubeconfig::load(target.kubeconfig.as_deref())?.unwrap_or_default();
    let env = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
    let base = target
        .server
        .clone()
        .or_else(|| env("FLOTILLA_SERVER"))
        .or_else(|| creds.server.clone())
        .unwrap_or_else(|| DEFAULT_SERVER.to_string())
        .trim_end_matches('/')
        .to_string();
    if !base.starts_with("http://") && !base.starts_with("https://") {
        return Err(format!("server URL {base:?} must start with https:// (for example {DEFAULT_SERVER})"));
    }
    let token = target.token.clone().or_else(|| env("FLOTILLA_API_TOKEN")).or(creds.token.clone());
    let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
    if base.starts_with("https://") {
        builder = builder.tls_backend_preconfigured(tls_config(&creds, &base)?);
    }
    Ok((base, builder, token.map(|t| format!("Bearer {t}"))))
}

fn tls_config(creds: &crate::kubeconfig::Credentials, base: &str) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder =
        rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().map_err(|e| e.to_string())?;
    let builder = if creds.insecure_skip_tls_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        let Some(ca) = &creds.ca_pem else {
            let from = if creds.source.is_empty() { "no kubeconfig was found".to_string() } else { format!("{} has none", creds.source) };
            return Err(format!(
                "no CA certificate to verify {base} with ({from}); pass --kubeconfig DATA_DIR/admin.kubeconfig, which `flotilla up` writes"
            ));
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.as_bytes()) {
            roots
                .add(cert.map_err(|e| format!("{}: CA certificate: {e}", creds.source))?)
                .map_err(|e| format!("{}: CA certificate: {e}", creds.source))?;
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&creds.client_cert_pem, &creds.client_key_pem) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: client certificate: {e}", creds.source))?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| format!("{}: client key: {e}", creds.source))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| format!("{}: client certificate: {e}", creds.source))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// `insecure-skip-tls-verify: true`: the server's certificate is not checked
/// (the handshake's signatures still are).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ApiClient {
    pub fn new(target: &ClientTarget) -> Result<ApiClient, String> {
        let (base, builder, authorization) = connect(target)?;
        let http = builder.build().map_err(|e| e.to_string())?;
        Ok(ApiClient { base, http, authorization })
    }

    /// A request to `path` with the credential attached.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.authorization {
            Some(a) => req.header(reqwest::header::AUTHORIZATION, a),
            None => req,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn unreachable(&self, e: reqwest::Error) -> CallError {
        let mut cause = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            cause = s.to_string();
            source = s.source();
        }
        CallError { code: 0, message: format!("cannot reach flotilla at {}: {cause}", self.base) }
    }

    /// Sends a request; answers the parsed JSON body of a 2xx reply.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        accept_table: bool,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Value, CallError> {
        let mut req = self.request(method, path).timeout(REQUEST_TIMEOUT);
        if accept_table {
            req = req.header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json");
        }
        if let Some((content_type, bytes)) = body {
            req = req.header("Content-Type", content_type).body(bytes);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(e))?;
        let parsed = serde_json::from_slice::<Value>(&bytes);
        if status.is_success() {
            // Anything that answers 200 is not flotilla: a proxy's page or
            // another server on this port must not read as success.
            return parsed.map_err(|_| CallError {
                code: status.as_u16(),
                message: format!(
                    "{} answered {status} with a body that is not JSON ({}); is this a flotilla API server?",
                    self.base,
                    String::from_utf8_lossy(&bytes[..bytes.len().min(80)]).trim()
                ),
            });
        }
        let value = parsed.unwrap_or(Value::Null);
        let message = value
            .get("message")
            .and_then(Value::as_str)
            .map(String::from)
            .unwrap_or_else(|| format!("the server answered {status}: {}", String::from_utf8_lossy(&bytes).trim()));
        Err(CallError { code: status.as_u16(), message })
    }

    pub async fn get(&self, path: &str, table: bool) -> Result<Value, CallError> {
        self.call(reqwest::Method::GET, path, table, None).await
    }

    /// Opens a streaming GET (a watch).
    pub async fn stream(&self, path: &str, table: bool) -> Result<reqwest::Response, CallError> {
        let mut req = self.request(reqwest::Method::GET, path);
        if table {
            req = req.header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json");
        }
        let resp = req.send().await.map_err(|e| self.unreachable(e))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let v: Value = resp.json().await.unwrap_or(Value::Null);
            return Err(CallError {
                code: status.as_u16(),
                message: v.get("message").and_then(Value::as_str).unwrap_or("watch failed").to_string(),
            });
        }
        Ok(resp)
    }
}

/// The API path of a resource (or one object) in a namespace.
pub fn resource_path(res: &flotilla_actors::model::resources::Resource, namespace: Option<&str>, name: Option<&str>) -> String {
    let base = if res.group.is_empty() { format!("/api/{}", res.version) } else { format!("/apis/{}/{}", res.group, res.version) };
    let ns = match (res.namespaced, namespace) {
        (true, Some(ns)) => format!("/namespaces/{ns}"),
        _ => String::new(),
    };
    match name {
        Some(n) => format!("{base}{ns}/{}/{n}", res.plural),
        None => format!("{base}{ns}/{}", res.plural),
    }
}
