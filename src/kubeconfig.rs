//! Kubeconfig files: the admin one `flotilla up` and the bootstrapping
//! `flotilla server` write (as k3s writes its `k3s.yaml`), and the reading
//! every client command does to find the server and its credentials.
//!
//! Read: `current-context` (or the only context), its cluster's `server`,
//! `certificate-authority(-data)` and `insecure-skip-tls-verify`, and its
//! user's `client-certificate(-data)`, `client-key(-data)`, `token` and
//! `tokenFile`. Exec and auth-provider plugins are not run.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde_yaml::Value;

/// Largest kubeconfig (or file it names) read.
pub const KUBECONFIG_MAX_BYTES: u64 = 1024 * 1024;
/// Where `flotilla up` keeps its data by default, and so its kubeconfig.
pub const DEFAULT_DATA_DIR: &str = "./flotilla-data";
pub const ADMIN_KUBECONFIG: &str = "admin.kubeconfig";

/// What a client needs from a kubeconfig.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credentials {
    /// Which file it came from, for messages.
    pub source: String,
    pub server: Option<String>,
    pub ca_pem: Option<String>,
    pub insecure_skip_tls_verify: bool,
    pub client_cert_pem: Option<String>,
    pub client_key_pem: Option<String>,
    pub token: Option<String>,
}

fn read_bounded(path: &Path) -> Result<String, String> {
    let size = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?.len();
    if size > KUBECONFIG_MAX_BYTES {
        return Err(format!("{} is {size} bytes, over the limit of {KUBECONFIG_MAX_BYTES}", path.display()));
    }
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The kubeconfig to use: `explicit` (`--kubeconfig`), else the first file of
/// `$KUBECONFIG`, else `~/.kube/config`, else `./flotilla-data/admin.kubeconfig`.
/// An explicit file that is missing is an error; a default that is missing
/// is skipped.
pub fn find(explicit: Option<&Path>) -> Result<Option<PathBuf>, String> {
    if let Some(p) = explicit {
        if !p.exists() {
            return Err(format!("--kubeconfig {}: no such file", p.display()));
        }
        return Ok(Some(p.to_path_buf()));
    }
    if let Some(list) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        for p in std::env::split_paths(&list) {
            if p.exists() {
                return Ok(Some(p));
            }
        }
        return Err(format!("KUBECONFIG={}: none of these files exists", list.to_string_lossy()));
    }
    let home = std::env::var_os("HOME").map(|h| Path::new(&h).join(".kube").join("config"));
    let local = Path::new(DEFAULT_DATA_DIR).join(ADMIN_KUBECONFIG);
    Ok(home.into_iter().chain([local]).find(|p| p.exists()))
}

fn named<'a>(doc: &'a Value, list: &str, name: &str, field: &str) -> Result<&'a Value, String> {
    doc.get(list)
        .and_then(Value::as_sequence)
        .and_then(|items| items.iter().find(|i| i.get("name").and_then(Value::as_str) == Some(name)))
        .and_then(|i| i.get(field))
        .ok_or_else(|| format!("it has no {list} entry named {name:?}"))
}

/// Parses a kubeconfig; relative file paths in it are taken from `base`.
pub fn parse(text: &str, base: &Path, source: &str) -> Result<Credentials, String> {
    let wrap = |e: String| format!("kubeconfig {source}: {e}");
    let doc: Value = serde_yaml::from_str(text).map_err(|e| wrap(format!("not YAML: {e}")))?;
    let contexts = doc.get("contexts").and_then(Value::as_sequence).cloned().unwrap_or_default();
    let context_name = match doc.get("current-context").and_then(Value::as_str).filter(|s| !s.is_empty()) {
        Some(c) => c.to_string(),
        None if contexts.len() == 1 => contexts[0].get("name").and_then(Value::as_str).unwrap_or("").to_string(),
        None => return Err(wrap("it sets no current-context; set one with kubectl config use-context".into())),
    };
    let context = named(&doc, "contexts", &context_name, "context").map_err(wrap)?;
    let cluster_name =
        context.get("cluster").and_then(Value::as_str).ok_or_else(|| wrap(format!("context {context_name:?} names no cluster")))?;
    let cluster = named(&doc, "clusters", cluster_name, "cluster").map_err(wrap)?;
    let text_of = |v: &Value, data: &str, file: &str| -> Result<Option<String>, String> {
        if let Some(d) = v.get(data).and_then(Value::as_str) {
            let bytes =
                base64::engine::general_purpose::STANDARD.decode(d.trim()).map_err(|e| wrap(format!("{data} is not base64: {e}")))?;
            return String::from_utf8(bytes).map(Some).map_err(|_| wrap(format!("{data} is not PEM text")));
        }
        match v.get(file).and_then(Value::as_str) {
            Some(p) => read_bounded(&base.join(p)).map(Some).map_err(|e| wrap(format!("{file}: {e}"))),
            None => Ok(None),
        }
    };
    let mut creds = Credentials {
        source: source.to_string(),
        server: cluster.get("server").and_then(Value::as_str).map(String::from),
        ca_pem: text_of(cluster, "certificate-authority-data", "certificate-authority")?,
        insecure_skip_tls_verify: cluster.get("insecure-skip-tls-verify").and_then(Value::as_bool).unwrap_or(false),
        ..Default::default()
    };
    if let Some(user_name) = context.get("user").and_then(Value::as_str) {
        let user = named(&doc, "users", user_name, "user").map_err(wrap)?;
        creds.client_cert_pem = text_of(user, "client-certificate-data", "client-certificate")?;
        creds.client_key_pem = text_of(user, "client-key-data", "client-key")?;
        creds.token = match user.get("token").and_then(Value::as_str) {
            Some(t) => Some(t.trim().to_string()),
            None => match user.get("tokenFile").and_then(Value::as_str) {
                Some(p) => Some(read_bounded(&base.join(p)).map_err(|e| wrap(format!("tokenFile: {e}")))?.trim().to_string()),
                None => None,
            },
        };
        if user.get("exec").is_some() || user.get("auth-provider").is_some() {
            tracing::warn!("kubeconfig {source}: user {user_name:?} uses an exec or auth-provider plugin, which flotilla does not run");
        }
    }
    if creds.client_cert_pem.is_some() != creds.client_key_pem.is_some() {
        return Err(wrap("the user has a client certificate without its key, or a key without its certificate".into()));
    }
    Ok(creds)
}

/// Reads the kubeconfig `find` picks, if any.
pub fn load(explicit: Option<&Path>) -> Result<Option<Credentials>, String> {
    let Some(path) = find(explicit)? else { return Ok(None) };
    let text = read_bounded(&path)?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse(&text, &base, &path.display().to_string()).map(Some)
}

/// A kubeconfig with one cluster, one user and one context, its
/// credentials inline (base64), as kubectl writes them.
pub fn render(cluster: &str, server: &str, ca_pem: &str, user: &str, cert_pem: &str, key_pem: &str) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: {cluster}\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\n\
         users:\n- name: {user}\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
         contexts:\n- name: {cluster}\n  context:\n    cluster: {cluster}\n    user: {user}\ncurrent-context: {cluster}\n",
        b64(ca_pem),
        b64(cert_pem),
        b64(key_pem),
    )
}

/// Writes `text` to `path` readable by its owner only, replacing it whole
/// (a reader never sees half a file).
pub fn write_private(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Issues a `system:masters` client certificate and writes
/// `DATA_DIR/admin.kubeconfig` for `server_url`; answers its path.
pub fn write_admin(data_dir: &Path, server_url: &str, ca: &flotilla_raft::tls::ClusterCa) -> Result<PathBuf, String> {
    let id = ca
        .issue_client("flotilla-admin", Some(crate::api::auth::MASTERS_GROUP), flotilla_raft::tls::CLIENT_CERT_TTL_MAX)
        .map_err(|e| e.to_string())?;
    let path = data_dir.join(ADMIN_KUBECONFIG);
    write_private(&path, &render("flotilla", server_url, &ca.cert_pem, "flotilla-admin", &id.cert_pem, &id.key_pem))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rendered_kubeconfig_reads_back() {
        let text = render("c", "https://127.0.0.1:6443", "CA PEM", "u", "CERT PEM", "KEY PEM");
        let creds = parse(&text, Path::new("/"), "test").unwrap();
        assert_eq!(creds.server.as_deref(), Some("https://127.0.0.1:6443"));
        assert_eq!(creds.ca_pem.as_deref(), Some("CA PEM"));
        assert_eq!(creds.client_cert_pem.as_deref(), Some("CERT PEM"));
        assert_eq!(creds.client_key_pem.as_deref(), Some("KEY PEM"));
        assert_eq!(creds.token, None);
    }

    #[test]
    fn bad_kubeconfigs_say_what_is_wrong() {
        let no_context = "apiVersion: v1\nclusters: []\ncontexts: []\nusers: []\n";
        assert!(parse(no_context, Path::new("/"), "k").unwrap_err().contains("current-context"));
        let dangling = "current-context: x\ncontexts:\n- name: x\n  context: {cluster: gone, user: u}\n";
        assert!(parse(dangling, Path::new("/"), "k").unwrap_err().contains("no clusters entry named \"gone\""));
        let bad_b64 = "current-context: x\ncontexts:\n- name: x\n  context: {cluster: c}\nclusters:\n- name: c\n  cluster: {server: 'https://h', certificate-authority-data: '%%%'}\n";
        assert!(parse(bad_b64, Path::new("/"), "k").unwrap_err().contains("not base64"));
        let token = "current-context: x\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\nclusters:\n- name: c\n  cluster: {server: 'http://h'}\nusers:\n- name: u\n  user: {token: ' abc '}\n";
        assert_eq!(parse(token, Path::new("/"), "k").unwrap().token.as_deref(), Some("abc"));
        assert!(parse("[", Path::new("/"), "k").unwrap_err().contains("not YAML"));
    }
}
