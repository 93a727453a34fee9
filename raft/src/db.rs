//! The member's RocksDB: one database, a column family per concern. The
//! Raft log and the state machine share it, so one fsynced write covers the
//! write-ahead log of both.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, DB};

use crate::error::DataDirError;

/// Raft log entries by index.
pub const CF_LOG: &str = "log";
/// Vote, committed index, last purged log id.
pub const CF_LOG_META: &str = "log_meta";
/// Current keys.
pub const CF_KV: &str = "kv";
/// Change history by (revision, index), for watches.
pub const CF_HISTORY: &str = "history";
/// State machine bookkeeping: revisions, last applied, membership, the
/// session clock.
pub const CF_SM_META: &str = "sm_meta";
/// Client sessions by client id (16 bytes, big-endian).
pub const CF_SESSIONS: &str = "sessions";

const ALL_CFS: [&str; 6] = [CF_LOG, CF_LOG_META, CF_KV, CF_HISTORY, CF_SM_META, CF_SESSIONS];

pub type Db = Arc<DB>;

/// Whose database this is: stamped when it is created, checked on every
/// open, so a database copied under another member's files is refused.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct DbIdentity {
    pub cluster_id: String,
    pub member_id: u64,
    /// The layout of the database; bumped when it changes.
    pub format: u32,
}

/// The database layout this build reads and writes.
pub const DB_FORMAT: u32 = 2;
const KEY_IDENTITY: &[u8] = b"identity";

/// Whether `open` may create the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// First start of a member: the database must not exist yet.
    Create,
    /// Restart: the database must exist and be whole.
    Existing,
}

fn db_error(path: &Path, reason: impl std::fmt::Display) -> DataDirError {
    DataDirError::Database { dir: path.display().to_string(), reason: reason.to_string() }
}

/// RocksDB refused to open the files: say what to do instead of starting.
fn damaged(path: &Path, e: rocksdb::Error) -> DataDirError {
    db_error(
        path,
        format!(
            "{e}; the database is damaged or incomplete: do not start this member as it is; \
             restore it from another member (remove it with flotilla store remove-member ID, empty the directory, join again) \
             or from a backup"
        ),
    )
}

/// Opens the database at `path`. Recovery is strict: a write-ahead log
/// that cannot be replayed to its end (cut short, or damaged) is refused
/// rather than opened with its tail silently dropped.
pub fn open(path: &Path, mode: OpenMode) -> Result<Db, DataDirError> {
    let create = mode == OpenMode::Create;
    if !create && !path.join("CURRENT").exists() {
        return Err(db_error(
            path,
            "the database is missing or empty although this directory holds a member; \
             do not start a fresh one in its place: remove this member from the cluster (flotilla store remove-member ID), \
             empty the directory and join again, or restore the directory from a backup",
        ));
    }
    if create && path.exists() && std::fs::read_dir(path).map(|mut d| d.next().is_some()).unwrap_or(false) {
        return Err(db_error(path, "a database already exists where a new member's database was to be created"));
    }
    let mut opts = Options::default();
    opts.create_if_missing(create);
    opts.create_missing_column_families(create);
    opts.set_paranoid_checks(true);
    opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::AbsoluteConsistency);
    // Bounded write buffers keep the server's memory steady.
    opts.set_write_buffer_size(16 * 1024 * 1024);
    opts.set_max_write_buffer_number(3);
    opts.set_max_background_jobs(2);
    opts.set_keep_log_file_num(3);
    opts.set_max_total_wal_size(64 * 1024 * 1024);
    let cfs = ALL_CFS.iter().map(|name| {
        let mut cf_opts = Options::default();
        cf_opts.set_write_buffer_size(16 * 1024 * 1024);
        ColumnFamilyDescriptor::new(*name, cf_opts)
    });
    DB::open_cf_descriptors(&opts, path, cfs).map(Arc::new).map_err(|e| damaged(path, e))
}

/// Opens an existing member's database after checking it on a read-only
/// open, which changes no file: the owner, every block's checksum, and
/// `check` (the log floor). Only a database that passes is opened for
/// writing (which may replay and rewrite its write-ahead log).
pub fn open_checked(
    path: &Path,
    cluster_id: &str,
    member_id: u64,
    check: impl FnOnce(&DB) -> Result<(), DataDirError>,
) -> Result<Db, DataDirError> {
    if !path.join("CURRENT").exists() {
        return open(path, OpenMode::Existing);
    }
    {
        let mut opts = Options::default();
        opts.set_paranoid_checks(true);
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::AbsoluteConsistency);
        let ro = DB::open_cf_for_read_only(&opts, path, ALL_CFS, false).map_err(|e| damaged(path, e))?;
        check_identity(&ro, path, cluster_id, member_id)?;
        verify_all(&ro, path)?;
        check(&ro)?;
    }
    open(path, OpenMode::Existing)
}

/// Stamps a new database with its owner (fsynced).
pub fn write_identity(db: &DB, path: &Path, identity: &DbIdentity) -> Result<(), DataDirError> {
    let bytes = crate::wire::encode(identity).map_err(|e| db_error(path, e))?;
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(true);
    db.put_cf_opt(cf(db, CF_LOG_META), KEY_IDENTITY, bytes, &opts).map_err(|e| db_error(path, e))
}

/// Checks that the database belongs to this member of this cluster.
pub fn check_identity(db: &DB, path: &Path, cluster_id: &str, member_id: u64) -> Result<(), DataDirError> {
    let stored = db.get_cf(cf(db, CF_LOG_META), KEY_IDENTITY).map_err(|e| db_error(path, e))?;
    let Some(bytes) = stored else {
        return Err(db_error(
            path,
            "the database carries no owner: it is not a flotilla member's database, or one made by an older version; use the directory it came from",
        ));
    };
    let identity: DbIdentity =
        crate::wire::decode(&bytes).map_err(|e| db_error(path, format!("the database's owner record is damaged: {e}")))?;
    if identity.cluster_id != cluster_id || identity.member_id != member_id {
        return Err(db_error(
            path,
            format!(
                "the database belongs to member {} of cluster {}, but member.json says member {member_id} of cluster {cluster_id}; \
                 the files of two members were mixed: put each database back under its own member's files",
                identity.member_id, identity.cluster_id
            ),
        ));
    }
    if identity.format != DB_FORMAT {
        return Err(db_error(
            path,
            format!(
                "the database has layout {} and this flotilla reads layout {DB_FORMAT}; run the flotilla version that wrote it",
                identity.format
            ),
        ));
    }
    Ok(())
}

/// Reads every block of every column family, so RocksDB checks each
/// block's checksum: damage anywhere is found at start, not when a read
/// happens to touch it.
pub fn verify_all(db: &DB, path: &Path) -> Result<(), DataDirError> {
    for name in ALL_CFS {
        let mut read = rocksdb::ReadOptions::default();
        read.set_verify_checksums(true);
        read.fill_cache(false);
        for item in db.iterator_cf_opt(cf(db, name), read, rocksdb::IteratorMode::Start) {
            item.map_err(|e| {
                db_error(
                    path,
                    format!(
                        "column family {name} is damaged ({e}); restore this member from another member \
                         (remove it with flotilla store remove-member ID, empty the directory, join again) or from a backup"
                    ),
                )
            })?;
        }
    }
    Ok(())
}

/// A column family that `open` always creates.
pub fn cf<'a>(db: &'a DB, name: &str) -> &'a ColumnFamily {
    db.cf_handle(name).expect("column family created at open")
}

/// Big-endian so RocksDB's byte order is numeric order.
pub fn u64_key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

pub fn history_key(revision: u64, index: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&revision.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

pub fn history_key_revision(key: &[u8]) -> Option<u64> {
    key.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes)
}
