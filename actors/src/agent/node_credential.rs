//! A node agent's own credential: a secret the agent chooses and the
//! control plane binds to one node name when the agent first claims it
//! with the agent token (Kubernetes' TLS bootstrap, in one step). The
//! store keeps only its digest, under the node's credential key; the agent
//! keeps the secret in its state directory, so a restarted agent is the
//! same node and a second agent claiming the name is refused. Deleting the
//! Node revokes it.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The file in an agent's state directory that holds its credential.
pub const CREDENTIAL_FILE: &str = "node-credential";

const FILE_HEADER: &str = "flotilla node credential v1";

#[derive(Clone, PartialEq, Eq)]
pub struct NodeCredential {
    /// The cluster it belongs to: the fingerprint of the cluster CA that the
    /// agent token pins.
    pub cluster: String,
    pub node: String,
    /// 32 random bytes, hex.
    pub secret: String,
}

// The secret never reaches a log through Debug.
impl std::fmt::Debug for NodeCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCredential").field("cluster", &self.cluster).field("node", &self.node).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{path}: {reason}; delete the file to make this agent claim its node again")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{path}: {reason}")]
    Io { path: PathBuf, reason: String },
}

/// The digest the store keeps, hex: what a presented secret is compared to.
pub fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(format!("flotilla node credential\0{secret}").as_bytes()))
}

/// Compares two digests without an early exit.
pub fn digests_match(a: &str, b: &str) -> bool {
    flotilla_raft::tls::same_in_constant_time(a.as_bytes(), b.as_bytes())
}

impl NodeCredential {
    pub fn generate(cluster: &str, node: &str) -> NodeCredential {
        let secret: [u8; 32] = rand::random();
        NodeCredential { cluster: cluster.to_string(), node: node.to_string(), secret: hex::encode(secret) }
    }

    pub fn digest(&self) -> String {
        digest(&self.secret)
    }

    pub fn to_text(&self) -> String {
        format!("{FILE_HEADER}\ncluster {}\nnode {}\nsecret {}\n", self.cluster, self.node, self.secret)
    }

    pub fn parse(text: &str) -> Result<NodeCredential, String> {
        let mut lines = text.lines();
        if lines.next() != Some(FILE_HEADER) {
            return Err(format!("the first line is not {FILE_HEADER:?}"));
        }
        let mut field = |name: &str| -> Result<String, String> {
            let line = lines.next().ok_or_else(|| format!("the {name} line is missing"))?;
            let value = line.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).ok_or_else(|| format!("expected a {name} line"))?;
            if value.is_empty() || value.len() > 256 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("the {name} is not one printable word of at most 256 characters"));
            }
            Ok(value.to_string())
        };
        let (cluster, node, secret) = (field("cluster")?, field("node")?, field("secret")?);
        if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("the secret is not 64 hex digits".into());
        }
        Ok(NodeCredential { cluster, node, secret })
    }

    /// Reads the credential in `dir`: None when there is none yet.
    pub fn load(dir: &Path) -> Result<Option<NodeCredential>, CredentialError> {
        let path = dir.join(CREDENTIAL_FILE);
        let text = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CredentialError::Io { path, reason: e.to_string() }),
        };
        let text = String::from_utf8(text).map_err(|_| CredentialError::Corrupt { path: path.clone(), reason: "not UTF-8".into() })?;
        NodeCredential::parse(&text).map(Some).map_err(|reason| CredentialError::Corrupt { path, reason })
    }

    /// Writes the credential to `dir` (owner-only), through a temporary
    /// file so a crash leaves the old one or the new one, never half.
    pub fn store(&self, dir: &Path) -> Result<(), CredentialError> {
        let path = dir.join(CREDENTIAL_FILE);
        let io = |e: std::io::Error| CredentialError::Io { path: path.clone(), reason: e.to_string() };
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = dir.join(format!("{CREDENTIAL_FILE}.tmp"));
        {
            use std::io::Write;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&tmp).map_err(io)?;
            f.write_all(self.to_text().as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_reads_back_as_written_and_garbage_is_refused() {
        let c = NodeCredential::generate("ab12", "worker-a");
        assert_eq!(NodeCredential::parse(&c.to_text()).expect("parses"), c);
        assert_eq!(c.secret.len(), 64);
        assert_ne!(NodeCredential::generate("ab12", "worker-a").secret, c.secret);
        for bad in [
            "",
            "flotilla node credential v1\n",
            "flotilla node credential v2\ncluster a\nnode b\nsecret c\n",
            "flotilla node credential v1\ncluster a\nnode b\nsecret short\n",
            "flotilla node credential v1\ncluster a b\nnode b\nsecret 00\n",
            "flotilla node credential v1\nnode b\ncluster a\nsecret 00\n",
        ] {
            assert!(NodeCredential::parse(bad).is_err(), "{bad:?} refused");
        }
        assert!(format!("{c:?}").find(&c.secret).is_none(), "Debug hides the secret");
    }

    #[test]
    fn digests_compare_by_value() {
        let c = NodeCredential::generate("x", "n");
        assert!(digests_match(&c.digest(), &digest(&c.secret)));
        assert!(!digests_match(&c.digest(), &digest("other")));
        assert!(!digests_match(&c.digest(), ""));
    }

    #[test]
    fn stored_credentials_load_and_only_the_owner_reads_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(NodeCredential::load(dir.path()).expect("no file is fine").is_none());
        let c = NodeCredential::generate("x", "n");
        c.store(dir.path()).expect("stored");
        assert_eq!(NodeCredential::load(dir.path()).expect("loads"), Some(c));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CREDENTIAL_FILE)).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "no access for group or others");
        }
        std::fs::write(dir.path().join(CREDENTIAL_FILE), "junk").expect("write");
        let e = NodeCredential::load(dir.path()).expect_err("corrupt");
        assert!(e.to_string().contains("delete the file"), "{e}");
    }
}
