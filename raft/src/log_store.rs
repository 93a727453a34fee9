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

/// How often the log floor is written while entries are appended.
const FLOOR_WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What this member has durably promised, kept outside RocksDB's
/// write-ahead log: the last log index it acknowledged and the last vote it
/// cast. If the WAL later loses its tail (a disk that lies, a file cut
/// short), the log on disk ends below the floor and the member refuses to
/// start, instead of voting or counting towards a commit with a log that
/// went backwards.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct Floor {
    pub last_index: Option<u64>,
    pub vote: Option<Vote<NodeId>>,
}

/// The floor file, written atomically and fsynced.
pub struct LogFloor {
    path: std::path::PathBuf,
    state: std::sync::Mutex<(Floor, Option<std::time::Instant>)>,
}

impl LogFloor {
    /// Reads the floor at `path` (a missing file is an empty floor).
    pub fn open(path: std::path::PathBuf) -> Result<Self, String> {
        let floor = match std::fs::read(&path) {
            Ok(bytes) => decode(&bytes).map_err(|e| format!("{} is damaged: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Floor::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(LogFloor { path, state: std::sync::Mutex::new((floor, None)) })
    }

    pub fn get(&self) -> Floor {
        self.lock().0.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Floor, Option<std::time::Instant>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self, floor: &Floor) -> std::io::Result<()> {
        crate::state_machine::write_atomically(&self.path, &encode(floor).map_err(std::io::Error::other)?)
    }

    /// After an fsynced append: raises the floor, writing it at most once
    /// a second (the WAL's own sync covers the time between).
    fn appended(&self, last_index: u64) -> std::io::Result<()> {
        let mut state = self.lock();
        if state.0.last_index.is_some_and(|i| i >= last_index) {
            return Ok(());
        }
        let due = state.1.is_none_or(|t| t.elapsed() >= FLOOR_WRITE_INTERVAL);
        if !due {
            return Ok(());
        }
        let next = Floor { last_index: Some(last_index), ..state.0.clone() };
        self.write(&next)?;
        *state = (next, Some(std::time::Instant::now()));
        Ok(())
    }

    /// After a vote is saved: the vote is written at once.
    fn voted(&self, vote: &Vote<NodeId>) -> std::io::Result<()> {
        let mut state = self.lock();
        let next = Floor { vote: Some(*vote), ..state.0.clone() };
        self.write(&next)?;
        state.0 = next;
        Ok(())
    }

    /// Before conflicting entries from `from_index` on are removed (a new
    /// leader overrides entries that were never committed).
    fn truncating(&self, from_index: u64) -> std::io::Result<()> {
        let mut state = self.lock();
        let below = from_index.checked_sub(1);
        if state.0.last_index.is_some_and(|i| Some(i) > below) {
            let next = Floor { last_index: below, ..state.0.clone() };
            self.write(&next)?;
            state.0 = next;
        }
        Ok(())
    }
}

/// The log store; clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Db,
    floor: std::sync::Arc<LogFloor>,
}

type StoreResult<T> = Result<T, StorageError<NodeId>>;

fn read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_logs(&std::io::Error::other(e.to_string())).into()
}
fn write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_logs(&std::io::Error::other(e.to_string())).into()
}

impl LogStore {
    pub fn new(db: Db, floor: std::sync::Arc<LogFloor>) -> Self {
        LogStore { db, floor }
    }

    /// Raises the floor to the log's last durable entry now (on a clean
    /// shutdown, so the floor is exact there; a crash leaves it at most a
    /// second behind).
    pub fn settle_floor(&self) -> Result<(), String> {
        let last = self.last_log_id().map_err(|e| e.to_string())?;
        let mut state = self.floor.lock();
        let Some(last) = last else { return Ok(()) };
        if state.0.last_index.is_some_and(|i| i >= last.index) {
            return Ok(());
        }
        let next = Floor { last_index: Some(last.index), ..state.0.clone() };
        self.floor.write(&next).map_err(|e| e.to_string())?;
        state.0 = next;
        Ok(())
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

/// Refuses a log (in `db`) that ends below what the member durably
/// promised in `floor`, or whose vote is older than the one it cast.
pub fn check_floor(db: &rocksdb::DB, floor: &Floor) -> Result<(), String> {
    let meta = |key: &[u8]| db.get_cf(cf(db, CF_LOG_META), key).map_err(|e| e.to_string());
    let last_purged: Option<LogId<NodeId>> = meta(KEY_LAST_PURGED)?.map(|b| decode(&b)).transpose().map_err(|e| e.to_string())?;
    let mut it = db.iterator_cf(cf(db, CF_LOG), IteratorMode::End);
    let last_entry: Option<LogId<NodeId>> = match it.next() {
        None => None,
        Some(item) => {
            let (_, v) = item.map_err(|e| e.to_string())?;
            Some(decode::<Entry<TypeConfig>>(&v).map_err(|e| e.to_string())?.log_id)
        }
    };
    let last = last_entry.or(last_purged).map(|l| l.index);
    if floor.last_index > last {
        return Err(format!(
            "the Raft log on disk ends at index {} but this member had acknowledged entries up to index {}: \
             its write-ahead log lost its tail",
            last.map_or("none".to_string(), |i| i.to_string()),
            floor.last_index.unwrap_or(0)
        ));
    }
    let vote: Option<Vote<NodeId>> = meta(KEY_VOTE)?.map(|b| decode(&b)).transpose().map_err(|e| e.to_string())?;
    if let Some(promised) = floor.vote {
        if vote.is_none_or(|v| v < promised) {
            return Err(format!(
                "the vote on disk ({}) is older than the vote this member cast ({promised}): its write-ahead log lost its tail",
                vote.map_or("none".to_string(), |v| v.to_string())
            ));
        }
    }
    Ok(())
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
        let vote_err = |e: String| -> StorageError<NodeId> { StorageIOError::write_vote(&std::io::Error::other(e)).into() };
        self.sync_write(batch).map_err(|e| vote_err(e.to_string()))?;
        self.floor.voted(vote).map_err(|e| vote_err(e.to_string()))
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
        let mut last_index = None;
        for entry in entries {
            batch.put_cf(log, u64_key(entry.log_id.index), encode(&entry).map_err(write_err)?);
            last_index = Some(entry.log_id.index);
        }
        // The fsync runs on a blocking thread: on a worker it would stall
        // every task scheduled there (agents' heartbeats included) for the
        // length of the disk flush.
        let store = self.clone();
        let result = tokio::task::spawn_blocking(move || {
            store.sync_write(batch).map_err(|e| e.to_string())?;
            match last_index {
                Some(i) => store.floor.appended(i).map_err(|e| e.to_string()),
                None => Ok(()),
            }
        })
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
        self.floor.truncating(log_id.index).map_err(write_err)?;
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
