//! The Raft log in RocksDB. `append` answers openraft only after the batch
//! is fsynced, so an acknowledged write is on disk on a majority.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions};

use crate::db::{cf, u64_key, Db, CF_LOG, CF_LOG_META};
use crate::types::{NodeId, TypeConfig};
use crate::wire::{decode, encode};

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

/// The log store; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Db,
}

type StoreResult<T> = Result<T, StorageError<NodeId>>;

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_logs(&std::io::Error::other(e.to_string())).into()
}
fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_logs(&std::io::Error::other(e.to_string())).into()
}

impl LogStore {
    pub fn new(db: Db) -> Self {
        LogStore { db }
    }

    fn sync_write(&self, batch: WriteBatch) -> Result<(), rocksdb::Error> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)
    }

    fn meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> StoreResult<Option<T>> {
        match self.db.get_cf(cf(&self.db, CF_LOG_META), key).map_err(read_err)? {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some).map_err(read_err),
        }
    }

    fn last_log_id(&self) -> StoreResult<Option<LogId<NodeId>>> {
        let mut it = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::End);
        match it.next() {
            None => Ok(None),
            Some(item) => {
                let (_, v) = item.map_err(read_err)?;
                let entry: Entry<TypeConfig> = decode(&v).map_err(read_err)?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StoreResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(&n) => n,
            Bound::Excluded(&n) => n + 1,
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        let it = self.db.iterator_cf(cf(&self.db, CF_LOG), IteratorMode::From(&u64_key(start), Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(read_err)?;
            let index = u64::from_be_bytes(k.as_ref().try_into().map_err(read_err)?);
            if !range.contains(&index) {
                break;
            }
            out.push(decode(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StoreResult<LogState<TypeConfig>> {
        let last_purged_log_id: Option<LogId<NodeId>> = self.meta(KEY_LAST_PURGED)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StoreResult<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_LOG_META), KEY_VOTE, encode(vote).map_err(write_err)?);
        self.sync_write(batch).map_err(|e| StorageIOError::write_vote(&std::io::Error::other(e.to_string())).into())
    }

    async fn read_vote(&mut self) -> StoreResult<Option<Vote<NodeId>>> {
        self.meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StoreResult<()> {
        // Not fsynced: a lost committed index is recomputed by the leader.
        self.db.put_cf(cf(&self.db, CF_LOG_META), KEY_COMMITTED, encode(&committed).map_err(write_err)?).map_err(write_err)
    }

    async fn read_committed(&mut self) -> StoreResult<Option<LogId<NodeId>>> {
        Ok(self.meta::<Option<LogId<NodeId>>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StoreResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = WriteBatch::default();
        let log = cf(&self.db, CF_LOG);
        for entry in entries {
            batch.put_cf(log, u64_key(entry.log_id.index), encode(&entry).map_err(write_err)?);
        }
        // The fsync runs on a blocking thread: on a worker it would stall
        // every task scheduled there (agents' heartbeats included) for the
        // length of the disk flush.
        let store = self.clone();
        let result = tokio::task::spawn_blocking(move || store.sync_write(batch))
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))
            .and_then(|r| r.map_err(std::io::Error::other));
        let failed = result.as_ref().err().map(|e| e.to_string());
        callback.log_io_completed(result);
        match failed {
            Some(e) => Err(write_err(e)),
            None => Ok(()),
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf(&self.db, CF_LOG), u64_key(log_id.index), u64_key(u64::MAX));
        self.sync_write(batch).map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StoreResult<()> {
        let mut batch = WriteBatch::default();
        batch.put_cf(cf(&self.db, CF_LOG_META), KEY_LAST_PURGED, encode(&log_id).map_err(write_err)?);
        batch.delete_range_cf(cf(&self.db, CF_LOG), u64_key(0), u64_key(log_id.index + 1));
        self.sync_write(batch).map_err(write_err)
    }
}
