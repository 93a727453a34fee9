//! How the API servers reach a node agent's endpoint (logs and usage): over
//! HTTPS to the address the Node advertises, trusting there only the
//! certificate the cluster CA issued to that node by name, and showing the
//! servers' own client certificate. A listener at an address an API client
//! wrote into a Node gets no credential: TLS 1.3 sends the client's
//! certificate only after the server's has been verified, and a
//! certificate proves nothing once replayed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flotilla_raft::tls::ClusterCa;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The user the API servers are to agents' endpoints, in the group those
/// endpoints accept.
pub const APISERVER_KUBELET_CLIENT_USER: &str = "system:flotilla:apiserver";
/// The group an agent's endpoint requires of its callers.
pub const KUBELET_CALLER_GROUP: &str = "system:masters";
/// How long the servers' client certificate lives (a new one each start).
const CLIENT_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// Deadline of connecting to an agent's endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Nodes whose clients (and so pooled connections) are kept at once; then
/// all are dropped and made again as needed.
const NODE_CLIENTS_MAX: usize = 1024;

pub struct KubeletClient {
    tls: rustls::ClientConfig,
    /// One client per node and address, so `top` over a node's pods reuses
    /// one TLS connection instead of a handshake per pod.
    clients: Mutex<HashMap<(String, SocketAddr), reqwest::Client>>,
}

impl KubeletClient {
    /// Issues this server's client certificate from the cluster CA.
    pub fn new(ca: &ClusterCa) -> Result<KubeletClient, String> {
        let identity = ca
            .issue_client(APISERVER_KUBELET_CLIENT_USER, Some(KUBELET_CALLER_GROUP), CLIENT_CERT_TTL)
            .map_err(|e| format!("the API server's certificate for agents: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let ca_der = CertificateDer::from_pem_slice(identity.ca_pem.as_bytes()).map_err(|e| format!("cluster CA: {e}"))?;
        roots.add(ca_der).map_err(|e| format!("cluster CA: {e}"))?;
        let leaf = CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).map_err(|e| e.to_string())?;
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).map_err(|e| e.to_string())?;
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![leaf], key)
            .map_err(|e| format!("the API server's certificate for agents: {e}"))?;
        Ok(KubeletClient { tls, clients: Mutex::default() })
    }

    /// A client for node `node`'s endpoint at `addr`, and the base URL to
    /// ask it at: the URL names the node, so the certificate is checked
    /// against the node's name whatever address it is reached at.
    pub fn for_node(&self, node: &str, addr: SocketAddr) -> Result<(String, reqwest::Client), String> {
        let base = format!("https://{node}:{}", addr.port());
        let key = (node.to_string(), addr);
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&key) {
            return Ok((base, client.clone()));
        }
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(self.tls.clone())
            .resolve(node, addr)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| format!("a client for node {node:?}: {e}"))?;
        if clients.len() >= NODE_CLIENTS_MAX {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok((base, client))
    }
}
