//! The API's listeners as `flotilla up` and `flotilla server` are told to
//! open them: HTTPS always, plain HTTP only on loopback and only when asked,
//! the serving certificate issued from the cluster CA at each start, and the
//! admin kubeconfig written beside the data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::Args;
use flotilla_actors::tasks::OwnedTask;
use tokio::net::TcpListener;

use super::auth::Authenticator;
use super::serve::ApiTls;

#[derive(Args, Clone, Debug)]
pub struct ApiFlags {
    /// Address of the HTTPS API (port 0: any free port).
    #[arg(long = "http", visible_alias = "https", default_value = "127.0.0.1:8080")]
    pub https: String,
    /// Also serve the API in plain HTTP here; loopback addresses only.
    /// Requests still need a credential (a bearer token: plain HTTP cannot
    /// carry a client certificate).
    #[arg(long, value_name = "ADDR")]
    pub insecure_http: Option<String>,
    /// Another host name or IP address for the serving certificate (as
    /// k3s's --tls-san), for clients that reach this server by a name it
    /// does not know; repeat for more.
    #[arg(long = "tls-san", value_name = "NAME")]
    pub tls_san: Vec<String>,
    /// Static bearer tokens, one `token,user,uid[,"group1,group2"]` per line
    /// (Kubernetes' --token-auth-file).
    #[arg(long, env = "FLOTILLA_TOKEN_AUTH_FILE", value_name = "FILE")]
    pub token_auth_file: Option<PathBuf>,
}

/// Listeners bound before the store starts, so a port in use fails at once.
pub struct ApiListeners {
    https: TcpListener,
    pub https_addr: SocketAddr,
    insecure: Option<(TcpListener, SocketAddr)>,
    tls_san: Vec<String>,
    pub authn: Arc<Authenticator>,
}

/// The running API: ends when dropped.
pub struct RunningApi {
    _tasks: Vec<OwnedTask>,
    /// The HTTPS URL clients use.
    pub url: String,
    pub insecure_url: Option<String>,
    pub kubeconfig: PathBuf,
}

fn parse_addr(flag: &str, text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| format!("{flag} {text:?} must be an address such as 127.0.0.1:8080"))
}

impl ApiFlags {
    /// Checks the flags and binds the listeners.
    pub async fn bind(&self) -> Result<ApiListeners, String> {
        let https = parse_addr("--http", &self.https)?;
        let insecure = match &self.insecure_http {
            None => None,
            Some(text) => {
                let addr = parse_addr("--insecure-http", text)?;
                if !super::serve::is_loopback(&addr) {
                    return Err(format!(
                        "--insecure-http {addr}: plain HTTP is served on a loopback address only (127.0.0.1 or ::1), since anyone on \
                         the network could read its tokens; serve other addresses over HTTPS with --http"
                    ));
                }
                Some(addr)
            }
        };
        let authn = match &self.token_auth_file {
            Some(path) => Authenticator::from_token_file(path).map_err(|e| format!("--token-auth-file: {e}"))?,
            None => Authenticator::default(),
        };
        let https_listener = TcpListener::bind(https).await.map_err(|e| format!("cannot listen on {https} for the HTTPS API: {e}"))?;
        let https_addr = https_listener.local_addr().map_err(|e| e.to_string())?;
        let insecure = match insecure {
            None => None,
            Some(addr) => {
                let l = TcpListener::bind(addr).await.map_err(|e| format!("cannot listen on {addr} for the plain HTTP API: {e}"))?;
                let bound = l.local_addr().map_err(|e| e.to_string())?;
                Some((l, bound))
            }
        };
        Ok(ApiListeners { https: https_listener, https_addr, insecure, tls_san: self.tls_san.clone(), authn: Arc::new(authn) })
    }
}

/// The names the serving certificate vouches for: loopback, the in-cluster
/// `kubernetes` Service's names, this host, the bound address and any the
/// operator added.
fn serving_names(bound: &SocketAddr, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> =
        ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim().to_ascii_lowercase();
        if !host.is_empty() {
            names.push(host);
        }
    }
    names.push("127.0.0.1".into());
    names.push("::1".into());
    if !bound.ip().is_unspecified() {
        names.push(bound.ip().to_string());
    }
    names.extend(extra.iter().cloned());
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

impl ApiListeners {
    /// Another name or address for the serving certificate (the
    /// `kubernetes` Service's virtual IP, which in-cluster clients dial).
    pub fn add_san(&mut self, name: String) {
        if !self.tls_san.contains(&name) {
            self.tls_san.push(name);
        }
    }

    /// The URL clients on this machine use.
    pub fn local_url(&self) -> String {
        let host = if self.https_addr.ip().is_unspecified() { "127.0.0.1".to_string() } else { self.https_addr.ip().to_string() };
        match self.https_addr {
            SocketAddr::V6(_) if !self.https_addr.ip().is_unspecified() => format!("https://[{host}]:{}", self.https_addr.port()),
            _ => format!("https://{host}:{}", self.https_addr.port()),
        }
    }

    /// Issues the serving certificate, writes the admin kubeconfig (unless
    /// one for this URL is there) and starts serving `app`.
    pub fn start(self, ca: &flotilla_raft::tls::ClusterCa, data_dir: &Path, app: axum::Router) -> Result<RunningApi, String> {
        let names = serving_names(&self.https_addr, &self.tls_san);
        let serving = ca.issue_serving("flotilla-apiserver", &names).map_err(|e| format!("the API's serving certificate: {e}"))?;
        let tls = ApiTls::new(&ca.cert_pem, &serving.cert_pem, &serving.key_pem)?;
        let url = self.local_url();
        let kubeconfig = data_dir.join(crate::kubeconfig::ADMIN_KUBECONFIG);
        let current = std::fs::read_to_string(&kubeconfig)
            .ok()
            .and_then(|text| crate::kubeconfig::parse(&text, data_dir, "admin").ok())
            .is_some_and(|c| c.server.as_deref() == Some(url.as_str()) && c.ca_pem.as_deref() == Some(ca.cert_pem.as_str()));
        if !current {
            crate::kubeconfig::write_admin(data_dir, &url, ca)?;
        }
        let mut tasks = vec![OwnedTask::spawn(super::serve::serve(self.https, Some(tls), app.clone()))];
        let insecure_url = self.insecure.map(|(listener, addr)| {
            tasks.push(OwnedTask::spawn(super::serve::serve(listener, None, app)));
            format!("http://{addr}")
        });
        Ok(RunningApi { _tasks: tasks, url, insecure_url, kubeconfig })
    }
}
