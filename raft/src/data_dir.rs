//! A member's data directory: who the member is, which cluster it belongs
//! to, its certificates and the join token, beside the RocksDB files.
//!
//! ```text
//! DATA_DIR/member.json     id, cluster id, peer address, join state
//! DATA_DIR/ca.pem          cluster CA certificate
//! DATA_DIR/ca-key.pem      cluster CA key (servers only)
//! DATA_DIR/member.pem      this member's certificate
//! DATA_DIR/member-key.pem  this member's key
//! DATA_DIR/join-token      the cluster's join token
//! DATA_DIR/db/             RocksDB (log and state machine)
//! DATA_DIR/snapshot.bin    the last snapshot built or installed
//! DATA_DIR/log-floor       the last log index and vote this member promised
//! DATA_DIR/.first-start    present only while a first start is unfinished
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::DataDirError;
use crate::tls::{ClusterCa, Identity, JoinToken};
use crate::types::NodeId;

/// Present while a first start is unfinished; see [`DataDir::create_empty`].
const FIRST_START_MARKER: &str = ".first-start";

/// Contents of `member.json`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct MemberFile {
    pub id: NodeId,
    pub cluster_id: String,
    /// The address peers dial; what was given as `--peer`.
    pub peer_addr: String,
    /// Set while a join has not completed: the member it joins through.
    pub join_via: Option<String>,
    /// Set by a restore: the first start makes this member the only voter
    /// of a new cluster over the restored data.
    #[serde(default)]
    pub initialize_pending: bool,
}

/// Everything a member keeps beside its database.
pub struct DataDir {
    pub path: PathBuf,
}

impl DataDir {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DataDir { path: path.into() }
    }

    fn invalid(&self, reason: impl Into<String>) -> DataDirError {
        DataDirError::Invalid { dir: self.path.display().to_string(), reason: reason.into() }
    }

    fn io(&self, source: std::io::Error) -> DataDirError {
        DataDirError::Io { dir: self.path.display().to_string(), source }
    }

    pub fn db_path(&self) -> PathBuf {
        self.path.join("db")
    }
    pub fn snapshot_path(&self) -> PathBuf {
        self.path.join("snapshot.bin")
    }
    pub fn floor_path(&self) -> PathBuf {
        self.path.join("log-floor")
    }
    fn marker_path(&self) -> PathBuf {
        self.path.join(FIRST_START_MARKER)
    }

    /// Marks the end of a first start: from now on the directory holds a member.
    pub fn finish_first_start(&self) -> Result<(), DataDirError> {
        match std::fs::remove_file(self.marker_path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Removes everything in the directory (what a failed first start made).
    pub fn remove_contents(&self) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.path)? {
            let path = entry?.path();
            if path.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Whether the directory already holds a member.
    pub fn has_member(&self) -> bool {
        self.file("member.json").exists()
    }

    /// Prepares a fresh directory and marks a first start as begun;
    /// refuses one that already holds files.
    pub fn create_empty(&self) -> Result<(), DataDirError> {
        if self.path.exists() {
            if self.marker_path().exists() {
                return Err(self.invalid(format!(
                    "holds what a first start that did not finish left behind ({FIRST_START_MARKER} and no member.json); \
                     it holds no data: remove the directory and start again"
                )));
            }
            let mut entries = std::fs::read_dir(&self.path).map_err(|e| self.io(e))?;
            if entries.next().is_some() {
                return Err(self.invalid(
                    "exists and is not empty but holds no flotilla member (no member.json); point --data-dir at an empty or new directory",
                ));
            }
        }
        std::fs::create_dir_all(&self.path).map_err(|e| self.io(e))?;
        std::fs::write(self.marker_path(), b"a first start of this member began here and has not finished\n").map_err(|e| self.io(e))
    }

    fn read_text(&self, name: &str) -> Result<String, DataDirError> {
        std::fs::read_to_string(self.file(name))
            .map_err(|e| self.invalid(format!("cannot read {name}: {e}; the directory is damaged or incomplete")))
    }

    fn write_text(&self, name: &str, text: &str) -> Result<(), DataDirError> {
        use std::io::Write;
        let path = self.file(name);
        let tmp = path.with_extension("tmp");
        let secret = name.ends_with("key.pem") || name.ends_with("-token");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        // A secret is never readable by others, not even for the moment
        // between its creation and a chmod.
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut f = options.open(&tmp).map_err(|e| self.io(e))?;
        f.write_all(text.as_bytes()).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        #[cfg(unix)]
        if secret {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(|e| self.io(e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| self.io(e))?;
        Ok(())
    }

    pub fn read_member(&self) -> Result<MemberFile, DataDirError> {
        if !self.path.exists() {
            return Err(
                self.invalid("does not exist; start a new cluster with --bootstrap, or join one with --join PEER_ADDR --token TOKEN")
            );
        }
        if !self.has_member() && self.marker_path().exists() {
            return Err(self.invalid(format!(
                "holds what a first start that did not finish left behind ({FIRST_START_MARKER} and no member.json); \
                 it holds no data: remove the directory and start again with --bootstrap or --join"
            )));
        }
        if !self.has_member() {
            return Err(self.invalid(
                "holds no flotilla member (no member.json); start a new cluster with --bootstrap, or join one with --join PEER_ADDR --token TOKEN",
            ));
        }
        let text = self.read_text("member.json")?;
        serde_json::from_str(&text).map_err(|e| {
            self.invalid(format!(
                "member.json is corrupt ({e}); restore it from a backup or remove the member and join it again with an empty directory"
            ))
        })
    }

    pub fn write_member(&self, member: &MemberFile) -> Result<(), DataDirError> {
        let text = serde_json::to_string_pretty(member).map_err(|e| self.invalid(e.to_string()))?;
        self.write_text("member.json", &text)
    }

    pub fn write_ca(&self, ca: &ClusterCa) -> Result<(), DataDirError> {
        self.write_text("ca.pem", &ca.cert_pem)?;
        self.write_text("ca-key.pem", &ca.key_pem)
    }

    pub fn read_ca(&self, cluster_id: &str) -> Result<ClusterCa, DataDirError> {
        Ok(ClusterCa { cluster_id: cluster_id.into(), cert_pem: self.read_text("ca.pem")?, key_pem: self.read_text("ca-key.pem")? })
    }

    pub fn write_identity(&self, id: &Identity) -> Result<(), DataDirError> {
        self.write_text("member.pem", &id.cert_pem)?;
        self.write_text("member-key.pem", &id.key_pem)
    }

    pub fn read_identity(&self) -> Result<Identity, DataDirError> {
        Ok(Identity {
            ca_pem: self.read_text("ca.pem")?,
            cert_pem: self.read_text("member.pem")?,
            key_pem: self.read_text("member-key.pem")?,
        })
    }

    pub fn write_token(&self, token: &JoinToken) -> Result<(), DataDirError> {
        self.write_text("join-token", &format!("{token}\n"))
    }

    /// The agent token beside the server's: what node agents are given.
    pub fn write_agent_token(&self, agent: &JoinToken) -> Result<(), DataDirError> {
        self.write_text("agent-token", &format!("{agent}\n"))
    }

    pub fn agent_token_path(&self) -> PathBuf {
        self.file("agent-token")
    }

    pub fn read_token(&self) -> Result<JoinToken, DataDirError> {
        JoinToken::parse(&self.read_text("join-token")?).map_err(|e| self.invalid(format!("join-token: {e}")))
    }

    pub fn token_path(&self) -> PathBuf {
        self.file("join-token")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
