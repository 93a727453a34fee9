//! The cluster's certificates and join tokens.
//!
//! The bootstrapping member creates a cluster CA. Members present
//! CA-signed certificates to each other (mutual TLS). Operators and joining
//! members have no certificate yet: they hold a join token
//! (`flt1-<CA sha256>-<secret>`) whose first half pins the CA, so they know
//! they reach the right cluster, and whose second half proves to the server
//! that they may join or administer it.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::limits::Limits;

/// Name in every member certificate; clients verify against it, so members
/// can be dialled by any address.
pub const SERVER_NAME: &str = "flotilla.cluster";
/// QUIC application protocol of flotilla's peer port.
pub const ALPN: &[u8] = b"flotilla/1";
const TOKEN_PREFIX: &str = "flt1";
/// An agent token's prefix: the same shape, told apart at a glance.
const AGENT_TOKEN_PREFIX: &str = "flt1a";

/// Certificate and TLS failures.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The join token is not of the form flotilla prints.
    #[error("malformed join token: {0}; use the token the first server printed (also in its DATA_DIR/join-token)")]
    BadToken(String),
    /// rustls or quinn refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The cluster's certificate authority, held by every server member.
#[derive(Clone)]
pub struct ClusterCa {
    pub cluster_id: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn ca_params(cluster_id: &str) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| TlsError::Certificate(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("flotilla cluster CA {cluster_id}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    Ok(params)
}

impl ClusterCa {
    /// A fresh CA for a new cluster.
    pub fn generate(cluster_id: &str) -> Result<Self, TlsError> {
        let key = KeyPair::generate().map_err(|e| TlsError::Certificate(e.to_string()))?;
        let cert = ca_params(cluster_id)?.self_signed(&key).map_err(|e| TlsError::Certificate(e.to_string()))?;
        Ok(ClusterCa { cluster_id: cluster_id.into(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    pub fn cert_der(&self) -> Result<CertificateDer<'static>, TlsError> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).map_err(|e| TlsError::Certificate(format!("CA certificate: {e}")))
    }

    /// sha256 of the CA certificate, hex: what a join token pins.
    pub fn fingerprint(&self) -> Result<String, TlsError> {
        Ok(hex::encode(Sha256::digest(self.cert_der()?.as_ref())))
    }

    /// A certificate for a member or agent named `name`, signed by this CA.
    pub fn issue(&self, name: &str) -> Result<Identity, TlsError> {
        // The issuer is rebuilt from the same parameters as the CA itself, so
        // its name and key id match the stored CA certificate.
        let issuer = self.issuer()?;
        let key = KeyPair::generate().map_err(|e| TlsError::Certificate(e.to_string()))?;
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(|e| TlsError::Certificate(e.to_string()))?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2124, 1, 1);
        let cert = params.signed_by(&key, &issuer).map_err(|e| TlsError::Certificate(e.to_string()))?;
        Ok(Identity { ca_pem: self.cert_pem.clone(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// The longest a client certificate issued by `issue_client` may live.
pub const CLIENT_CERT_TTL_MAX: std::time::Duration = std::time::Duration::from_secs(10 * 365 * 24 * 3600);

impl ClusterCa {
    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, TlsError> {
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(|e| TlsError::Certificate(format!("CA key: {e}")))?;
        Ok(Issuer::new(ca_params(&self.cluster_id)?, ca_key))
    }

    /// The HTTPS API's serving certificate: `names` (host names and IP
    /// addresses) become its subject alternative names, so clients verify
    /// the address they dialled.
    pub fn issue_serving(&self, common_name: &str, names: &[String]) -> Result<Identity, TlsError> {
        let key = KeyPair::generate().map_err(|e| TlsError::Certificate(e.to_string()))?;
        // rcgen reads a name that parses as an IP address as an IP SAN.
        let mut params =
            CertificateParams::new(names.to_vec()).map_err(|e| TlsError::Certificate(format!("server names {names:?}: {e}")))?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
        let cert = params.signed_by(&key, &self.issuer()?).map_err(|e| TlsError::Certificate(e.to_string()))?;
        Ok(Identity { ca_pem: self.cert_pem.clone(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }

    /// A client certificate for the HTTPS API, read the way Kubernetes reads
    /// one: the user is the common name, the group the organization. rcgen
    /// writes one organization per name, so a certificate carries at most
    /// one group.
    pub fn issue_client(&self, user: &str, group: Option<&str>, valid_for: std::time::Duration) -> Result<Identity, TlsError> {
        if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
            return Err(TlsError::Certificate(format!("user name {user:?} must be 1 to 256 printable characters")));
        }
        if valid_for.is_zero() || valid_for > CLIENT_CERT_TTL_MAX {
            return Err(TlsError::Certificate(format!("validity {valid_for:?} must be more than zero and at most ten years")));
        }
        let key = KeyPair::generate().map_err(|e| TlsError::Certificate(e.to_string()))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| TlsError::Certificate(e.to_string()))?;
        params.distinguished_name.push(DnType::CommonName, user);
        if let Some(group) = group {
            params.distinguished_name.push(DnType::OrganizationName, group);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::seconds(valid_for.as_secs().min(i64::MAX as u64) as i64);
        let cert = params.signed_by(&key, &self.issuer()?).map_err(|e| TlsError::Certificate(e.to_string()))?;
        Ok(Identity { ca_pem: self.cert_pem.clone(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// How long a node certificate lives; an agent asks for a fresh one at
/// every start.
pub const NODE_CERT_TTL: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

impl ClusterCa {
    /// A node agent's certificate, read the way Kubernetes reads a kubelet's:
    /// user `system:node:NAME`, group `system:nodes`. It serves the agent's
    /// endpoint, so the node's name and addresses are its subject
    /// alternative names: the API servers dial a node by name and check it.
    pub fn issue_node(&self, node: &str, addresses: &[String]) -> Result<Identity, TlsError> {
        let key = KeyPair::generate().map_err(|e| TlsError::Certificate(e.to_string()))?;
        let mut names = vec![node.to_string()];
        names.extend(addresses.iter().filter(|a| a.parse::<std::net::IpAddr>().is_ok()).cloned());
        let mut params =
            CertificateParams::new(names).map_err(|e| TlsError::Certificate(format!("node {node:?} and its addresses: {e}")))?;
        params.distinguished_name.push(DnType::CommonName, format!("system:node:{node}"));
        params.distinguished_name.push(DnType::OrganizationName, "system:nodes");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::seconds(NODE_CERT_TTL.as_secs() as i64);
        let cert = params.signed_by(&key, &self.issuer()?).map_err(|e| TlsError::Certificate(e.to_string()))?;
        Ok(Identity { ca_pem: self.cert_pem.clone(), cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A member's own certificate and key, with the CA it trusts.
#[derive(Clone)]
pub struct Identity {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Identity {
    fn parts(&self) -> Result<(CertificateDer<'static>, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        let ca =
            CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).map_err(|e| TlsError::Certificate(format!("CA certificate: {e}")))?;
        let leaf = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| TlsError::Certificate(format!("member certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| TlsError::Certificate(format!("member key: {e}")))?;
        // The CA rides along in the chain so token holders can pin it.
        Ok((ca.clone(), vec![leaf, ca], key))
    }

    /// The peer port's server side: members must show a CA-signed
    /// certificate; clients without one are let in only to present a token.
    pub fn server_config(&self, limits: &Limits) -> Result<quinn::ServerConfig, TlsError> {
        let (ca, chain, key) = self.parts()?;
        let mut roots = RootCertStore::empty();
        roots.add(ca).map_err(|e| TlsError::Config(e.to_string()))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        // A caller starts with room for its `Hello` and no more; the
        // server opens the connection up once it has authenticated.
        let mut transport = transport_config(limits);
        transport.max_concurrent_bidi_streams(limits.unauthenticated_streams_max.into());
        transport.receive_window(limits.unauthenticated_receive_window_bytes.into());
        config.transport_config(Arc::new(transport));
        Ok(config)
    }

    /// Client side for a member dialling a member: verifies the CA and shows
    /// its own certificate.
    pub fn client_config(&self, limits: &Limits) -> Result<quinn::ClientConfig, TlsError> {
        let (ca, chain, key) = self.parts()?;
        let mut roots = RootCertStore::empty();
        roots.add(ca).map_err(|e| TlsError::Config(e.to_string()))?;
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        finish_client(tls, limits)
    }
}

fn finish_client(tls: rustls::ClientConfig, limits: &Limits) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(limits)));
    Ok(config)
}

/// Keep-alive and idle timeout decide how fast a dead peer is noticed.
fn transport_config(limits: &Limits) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(std::time::Duration::from_millis(limits.keep_alive_ms)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(std::time::Duration::from_millis(limits.idle_timeout_ms)) {
        t.max_idle_timeout(Some(idle));
    }
    t.max_concurrent_bidi_streams(limits.peer_streams_max.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.stream_receive_window((16u32 * 1024 * 1024).min(limits.peer_receive_window_bytes).into());
    t.receive_window(limits.peer_receive_window_bytes.into());
    t.send_window(64 * 1024 * 1024);
    t
}

/// Whether two secrets (or their digests) are equal, taking the same time
/// wherever they differ, so the time taken says nothing about them.
pub fn same_in_constant_time(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A parsed join token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinToken {
    /// sha256 of the cluster CA certificate, hex.
    pub ca_fingerprint: String,
    /// The shared secret, hex.
    pub secret: String,
    pub role: TokenRole,
}

/// Which of the cluster's two tokens this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRole {
    /// Members join with it, operators' `flotilla store` uses it: everything.
    Server,
    /// Node agents join with it: the agent protocol only.
    Agent,
}

impl JoinToken {
    pub fn new(ca: &ClusterCa) -> Result<Self, TlsError> {
        let secret: [u8; 16] = rand::random();
        Ok(JoinToken { ca_fingerprint: ca.fingerprint()?, secret: hex::encode(secret), role: TokenRole::Server })
    }

    pub fn parse(text: &str) -> Result<Self, TlsError> {
        let text = text.trim();
        let mut parts = text.split('-');
        let (prefix, fp, secret) = (parts.next(), parts.next(), parts.next());
        let is_hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        match (prefix, fp, secret, parts.next()) {
            (Some(prefix @ (TOKEN_PREFIX | AGENT_TOKEN_PREFIX)), Some(fp), Some(secret), None) if is_hex(fp, 64) && is_hex(secret, 32) => {
                let role = if prefix == AGENT_TOKEN_PREFIX { TokenRole::Agent } else { TokenRole::Server };
                Ok(JoinToken { ca_fingerprint: fp.to_ascii_lowercase(), secret: secret.to_ascii_lowercase(), role })
            }
            _ => Err(TlsError::BadToken(format!("expected {TOKEN_PREFIX}-<64 hex digits>-<32 hex digits>, got {} characters", text.len()))),
        }
    }

    /// The agent token of the cluster this token is the server token of:
    /// the same CA, a secret derived from this one. It admits a node agent
    /// to the agent protocol and to nothing else (no join, no raw store),
    /// so the credential every node holds is not the cluster's keys.
    pub fn agent(&self) -> JoinToken {
        if self.role == TokenRole::Agent {
            return self.clone();
        }
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest([b"flotilla agent token\0".as_slice(), self.secret.as_bytes()].concat());
        JoinToken { ca_fingerprint: self.ca_fingerprint.clone(), secret: hex::encode(&digest[..16]), role: TokenRole::Agent }
    }

    /// A new agent token for this token's cluster: the same CA, a fresh
    /// random secret. What `flotilla token rotate` hands out.
    pub fn new_agent(&self) -> JoinToken {
        let secret: [u8; 16] = rand::random();
        JoinToken { ca_fingerprint: self.ca_fingerprint.clone(), secret: hex::encode(secret), role: TokenRole::Agent }
    }

    /// The agent token of this token's cluster whose secret is `secret`
    /// (32 hex digits, as the store keeps it once rotated).
    pub fn agent_with_secret(&self, secret: &str) -> Result<JoinToken, TlsError> {
        let secret = secret.trim();
        if secret.len() != 32 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(TlsError::BadToken(format!("an agent token's secret is 32 hex digits, not {} characters", secret.len())));
        }
        Ok(JoinToken { ca_fingerprint: self.ca_fingerprint.clone(), secret: secret.to_ascii_lowercase(), role: TokenRole::Agent })
    }

    /// Compares secrets in constant time.
    pub fn secret_matches(&self, presented: &str) -> bool {
        same_in_constant_time(self.secret.as_bytes(), presented.as_bytes())
    }

    /// Client side for a token holder: trusts only a server whose chain
    /// carries the CA the token pins.
    pub fn client_config(&self, limits: &Limits) -> Result<quinn::ClientConfig, TlsError> {
        let fingerprint: [u8; 32] = hex::decode(&self.ca_fingerprint)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| TlsError::BadToken("CA fingerprint is not 32 bytes".into()))?;
        let verifier = PinnedCaVerifier { fingerprint, provider: provider() };
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        finish_client(tls, limits)
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix = if self.role == TokenRole::Agent { AGENT_TOKEN_PREFIX } else { TOKEN_PREFIX };
        write!(f, "{prefix}-{}-{}", self.ca_fingerprint, self.secret)
    }
}

/// Accepts a server certificate only if it chains to the CA whose hash the
/// token carries; the chain is then checked by webpki as usual.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.fingerprint)
            .ok_or_else(|| rustls::Error::General("the server belongs to another cluster: its CA does not match the join token".into()))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_and_rejects_garbage() {
        let ca = ClusterCa::generate("c1").unwrap();
        let token = JoinToken::new(&ca).unwrap();
        assert_eq!(JoinToken::parse(&token.to_string()).unwrap(), token);
        assert_eq!(token.ca_fingerprint, ca.fingerprint().unwrap());
        assert!(JoinToken::parse("flt1-abc-def").is_err());
        assert!(JoinToken::parse("").is_err());
        assert!(token.secret_matches(&token.secret.clone()));
        assert!(!token.secret_matches("00000000000000000000000000000000"));
    }

    #[test]
    fn issued_certificates_build_configs() {
        let ca = ClusterCa::generate("c1").unwrap();
        let id = ca.issue("member-1").unwrap();
        let limits = Limits::default();
        id.server_config(&limits).unwrap();
        id.client_config(&limits).unwrap();
    }
}
