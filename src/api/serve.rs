//! The API's listeners: HTTPS with the cluster CA's serving certificate
//! (and plain HTTP on loopback where the operator asks for it), with the
//! limits a server on a shared network needs: a bound on connections, a
//! deadline on the TLS handshake and on the request head, and the client
//! certificate read once per connection and handed to the authenticator.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use tokio::net::TcpListener;

use super::auth::{ClientCertificate, User, AUTHENTICATED_GROUP};

/// Connections one listener holds open at most; past it a new connection
/// is closed at once, so idle or slow clients cannot take the server's
/// memory or file descriptors.
pub const HTTP_CONNECTIONS_MAX: usize = 1024;
/// A client must finish the TLS handshake within this.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A request's head (request line and headers) must arrive within this.
pub const HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams one HTTP/2 connection may have open at once.
pub const HTTP2_STREAMS_MAX: u32 = 250;

/// TLS for the API: the serving certificate and the CA client certificates
/// must chain to.
#[derive(Clone)]
pub struct ApiTls {
    acceptor: tokio_rustls::TlsAcceptor,
    verifier: Arc<dyn ClientCertVerifier>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ApiTls {
    /// From PEM: the cluster CA, and the serving certificate and key.
    pub fn new(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<ApiTls, String> {
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| format!("cluster CA certificate: {e}"))?;
        let leaf = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| format!("serving certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| format!("serving key: {e}"))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).map_err(|e| format!("cluster CA certificate: {e}"))?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| format!("client certificate verifier: {e}"))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(Arc::new(DeferredClientCert { inner: verifier.clone() }))
            .with_single_cert(vec![leaf, ca], key)
            .map_err(|e| format!("serving certificate: {e}"))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ApiTls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), verifier })
    }

    /// What the certificates a client showed say about it.
    fn client_certificate(&self, chain: Option<&[CertificateDer<'static>]>) -> ClientCertificate {
        let Some((leaf, intermediates)) = chain.and_then(|c| c.split_first()) else {
            return ClientCertificate::None;
        };
        if let Err(e) = self.verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
            return ClientCertificate::Rejected(format!("{e} (it must be signed by this cluster's CA and within its dates)"));
        }
        match (user_of_certificate(leaf), super::certificate_revocation::serial_of(leaf)) {
            (Ok(user), Ok(serial)) => ClientCertificate::Verified { user, serial },
            (Err(e), _) | (_, Err(e)) => ClientCertificate::Rejected(e),
        }
    }
}

/// The user a verified client certificate names: CN, and each O a group.
pub fn user_of_certificate(der: &CertificateDer<'_>) -> Result<User, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| format!("the certificate does not parse: {e}"))?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .filter(|cn| !cn.is_empty())
        .ok_or("the certificate has no common name (CN) to take as the user name")?
        .to_string();
    let mut groups: Vec<String> = subject.iter_organization().filter_map(|o| o.as_str().ok()).map(String::from).collect();
    groups.push(AUTHENTICATED_GROUP.into());
    Ok(User { name, groups })
}

/// Takes any client certificate during the handshake, checking only that
/// the client holds its key, so that one from another CA or out of date is
/// answered with a 401 that says so rather than a bare TLS alert. The chain
/// is verified right after the handshake, before any request is read.
#[derive(Debug)]
struct DeferredClientCert {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// True for an address only this machine can reach.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}

/// Serves `app` on `listener` until the future is dropped; every
/// connection's task is owned here and ends with it.
pub async fn serve(listener: TcpListener, tls: Option<ApiTls>, app: Router) {
    let permits = Arc::new(tokio::sync::Semaphore::new(HTTP_CONNECTIONS_MAX));
    let mut connections = tokio::task::JoinSet::new();
    let mut refused: u64 = 0;
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to close.
                tracing::warn!(error = %e, "accepting an API connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, limit = HTTP_CONNECTIONS_MAX, "API connection limit reached; closing new connections");
            }
            drop(stream);
            continue;
        };
        let (tls, app) = (tls.clone(), app.clone());
        connections.spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            match tls {
                None => serve_connection(TokioIo::new(stream), ClientCertificate::None, app).await,
                Some(tls) => {
                    let accepted = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let cert = tls.client_certificate(accepted.get_ref().1.peer_certificates());
                    serve_connection(TokioIo::new(accepted), cert, app).await
                }
            }
        });
    }
}

async fn serve_connection<I>(io: TokioIo<I>, cert: ClientCertificate, app: Router)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        request.extensions_mut().insert(cert.clone());
        let mut app = app.clone();
        async move { tower::Service::call(&mut app, request).await }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HTTP_HEADER_READ_TIMEOUT);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(HTTP2_STREAMS_MAX)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    if let Err(e) = builder.serve_connection_with_upgrades(io, service).await {
        tracing::debug!(error = %e, "API connection ended with an error");
    }
}
