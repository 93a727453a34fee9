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
/// State machine bookkeeping: revisions, last applied, membership.
pub const CF_SM_META: &str = "sm_meta";

const ALL_CFS: [&str; 5] = [CF_LOG, CF_LOG_META, CF_KV, CF_HISTORY, CF_SM_META];

pub type Db = Arc<DB>;

/// Opens (or creates) the database at `path`.
pub fn open(path: &Path, create: bool) -> Result<Db, DataDirError> {
    let mut opts = Options::default();
    opts.create_if_missing(create);
    opts.create_missing_column_families(create);
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
    DB::open_cf_descriptors(&opts, path, cfs)
        .map(Arc::new)
        .map_err(|e| DataDirError::Database { dir: path.display().to_string(), reason: e.to_string() })
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
