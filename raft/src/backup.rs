//! Backup and restore of a whole cluster's data (etcdctl's `snapshot save`
//! and `snapshot restore`). A backup is a sealed snapshot payload (header,
//! payload, SHA-256), read from one consistent view of a member that is
//! current; restoring it makes a new data directory for the first member
//! of a new cluster that starts with the backup's keys, history and
//! revisions.

use std::path::Path;

use crate::data_dir::{DataDir, MemberFile};
use crate::db;
use crate::error::DataDirError;
use crate::snapshot_file::{seal, unseal};
use crate::state_machine::{read_payload, write_restored, SnapshotPayload};
use crate::tls::{ClusterCa, JoinToken};
use crate::types::NodeId;
use crate::wire::{decode, encode};

/// Bytes of one backup frame on the wire.
pub const BACKUP_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// The member's applied state as a sealed backup.
pub fn sealed_backup(database: &rocksdb::DB) -> Result<Vec<u8>, String> {
    let (mut payload, _, _) = read_payload(database).map_err(|e| e.to_string())?;
    // Sessions belong to this cluster's clients, not to a restored one.
    payload.sessions.clear();
    Ok(seal(&encode(&payload).map_err(|e| e.to_string())?))
}

/// What a restore made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreSummary {
    pub cluster_id: String,
    pub revision: u64,
    pub keys: usize,
}

/// Checks a backup file and returns its payload.
pub fn read_backup(file: &Path) -> Result<SnapshotPayload, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let body = unseal(&bytes).map_err(|e| format!("{}: {e}", file.display()))?;
    decode(body).map_err(|e| format!("{}: the backup's contents do not decode: {e}", file.display()))
}

/// Makes `data_dir` (new or empty) the first member of a new cluster
/// holding the backup in `file`. The member is started with
/// `flotilla server --id ID --data-dir DIR`; others join it as usual.
pub fn restore(file: &Path, data_dir: &Path, id: NodeId, peer_addr: &str) -> Result<RestoreSummary, DataDirError> {
    let payload = read_backup(file).map_err(|reason| DataDirError::Invalid { dir: data_dir.display().to_string(), reason })?;
    let dir = DataDir::new(data_dir);
    dir.create_empty()?;
    let made = restore_into(&dir, &payload, id, peer_addr);
    if made.is_err() {
        // Leave the directory as it was found: empty.
        let _ = dir.remove_contents();
    }
    made
}

fn restore_into(dir: &DataDir, payload: &SnapshotPayload, id: NodeId, peer_addr: &str) -> Result<RestoreSummary, DataDirError> {
    let invalid = |reason: String| DataDirError::Invalid { dir: dir.path.display().to_string(), reason };
    let cluster_id = hex::encode(rand::random::<[u8; 8]>());
    let ca = ClusterCa::generate(&cluster_id).map_err(|e| invalid(e.to_string()))?;
    dir.write_ca(&ca)?;
    dir.write_identity(&ca.issue(&format!("member-{id}")).map_err(|e| invalid(e.to_string()))?)?;
    dir.write_token(&JoinToken::new(&ca).map_err(|e| invalid(e.to_string()))?)?;
    let database = db::open(&dir.db_path(), db::OpenMode::Create)?;
    db::write_identity(
        &database,
        &dir.db_path(),
        &db::DbIdentity { cluster_id: cluster_id.clone(), member_id: id, format: db::DB_FORMAT },
    )?;
    write_restored(&database, payload).map_err(|e| invalid(format!("writing the restored keys: {e}")))?;
    drop(database);
    dir.write_member(&MemberFile {
        id,
        cluster_id: cluster_id.clone(),
        peer_addr: peer_addr.into(),
        join_via: None,
        initialize_pending: true,
    })?;
    dir.finish_first_start()?;
    Ok(RestoreSummary { cluster_id, revision: payload.revs.revision, keys: payload.kvs.len() })
}
