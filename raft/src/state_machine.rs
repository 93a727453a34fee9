//! The replicated state machine in RocksDB: applies committed commands with
//! [`crate::kv_apply`], keeps the change history for watches, builds and
//! installs snapshots, and publishes every applied revision to the
//! [`WatchHub`].

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError, StoredMembership};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};

use crate::db::{cf, history_key, history_key_revision, Db, CF_HISTORY, CF_KV, CF_SESSIONS, CF_SM_META};
use crate::kv_apply::{apply_command, auto_compact, KvFault, KvState};
use crate::session::{ClientId, ClientRecord, Decision, SessionChange, SessionLimits, SessionTable};
use crate::snapshot_file::{seal, unseal};
use crate::types::{CommandResult, Event, KeyValue, Member, NodeId, Outcome, RangePage, Revisions, TypeConfig};
use crate::watch_hub::{WatchBatch, WatchHub};
use crate::wire::{decode, encode};

const KEY_REVS: &[u8] = b"revs";
const KEY_APPLIED: &[u8] = b"applied";
const KEY_MEMBERSHIP: &[u8] = b"membership";
const KEY_SESSION_CLOCK: &[u8] = b"session_clock";

type StoreResult<T> = Result<T, StorageError<NodeId>>;

fn sm_read_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&std::io::Error::other(e.to_string())).into()
}
fn sm_write_err(e: impl std::fmt::Display) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(e.to_string())).into()
}

/// What a snapshot holds: every key, the retained history and the client
/// sessions (without them a member restored from a snapshot would apply a
/// retried write a second time).
#[derive(Serialize, Deserialize)]
pub struct SnapshotPayload {
    pub revs: Revisions,
    pub kvs: Vec<KeyValue>,
    pub history: Vec<(u64, u32, Event)>,
    pub session_clock_ms: u64,
    pub sessions: Vec<(ClientId, ClientRecord)>,
}

/// A client's header (`ack_below`, `last_active_ms`): its id, 16 bytes.
fn session_key(client: ClientId) -> [u8; 16] {
    client.to_be_bytes()
}

/// One remembered result: the client's id, then the request's number. Each
/// result has a key of its own, so a write stores its own result only, not
/// every result its client still holds (that made each write cost as much
/// as all the client's unacknowledged ones).
fn session_result_key(client: ClientId, seq: u64) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..16].copy_from_slice(&client.to_be_bytes());
    k[16..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Past every key of `client`.
fn session_end_key(client: ClientId) -> Vec<u8> {
    match client.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 25],
    }
}

/// One entry of a RocksDB iterator.
type DbItem = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>;

/// Reads the sessions column: headers (16-byte keys; older data dirs keep
/// results inside them) and results (24-byte keys).
fn read_sessions(items: impl Iterator<Item = DbItem>) -> Result<Vec<(ClientId, ClientRecord)>, String> {
    let mut records: BTreeMap<ClientId, ClientRecord> = BTreeMap::new();
    for item in items {
        let (k, v) = item.map_err(|e| e.to_string())?;
        match k.len() {
            16 => {
                let client = u128::from_be_bytes(k.as_ref().try_into().map_err(|_| "session key".to_string())?);
                let header: ClientRecord = decode(&v).map_err(|e| format!("session record: {e}"))?;
                let record = records.entry(client).or_default();
                record.ack_below = header.ack_below;
                record.last_active_ms = header.last_active_ms;
                record.results.extend(header.results);
            }
            24 => {
                let client = u128::from_be_bytes(k[..16].try_into().map_err(|_| "session result key".to_string())?);
                let seq = u64::from_be_bytes(k[16..].try_into().map_err(|_| "session result key".to_string())?);
                let result: CommandResult = decode(&v).map_err(|e| format!("session result: {e}"))?;
                records.entry(client).or_default().results.insert(seq, result);
            }
            n => return Err(format!("session key of {n} bytes (expected 16 or 24)")),
        }
    }
    let mut out: Vec<(ClientId, ClientRecord)> = records.into_iter().collect();
    for (_, r) in &mut out {
        let ack = r.ack_below;
        r.results.retain(|seq, _| *seq >= ack);
    }
    Ok(out)
}

/// Writes whole records (a snapshot's) in the column's layout.
fn put_sessions(batch: &mut WriteBatch, sessions_cf: &rocksdb::ColumnFamily, records: &[(ClientId, ClientRecord)]) -> StoreResult<()> {
    for (client, record) in records {
        let header = ClientRecord { ack_below: record.ack_below, last_active_ms: record.last_active_ms, results: BTreeMap::new() };
        batch.put_cf(sessions_cf, session_key(*client), encode(&header).map_err(sm_write_err)?);
        for (seq, result) in &record.results {
            batch.put_cf(sessions_cf, session_result_key(*client, *seq), encode(result).map_err(sm_write_err)?);
        }
    }
    Ok(())
}

/// A built snapshot as kept on disk. `data` is a sealed
/// [`SnapshotPayload`] (see `snapshot_file.rs`): the same bytes that go to
/// a follower, checked before they are installed or loaded.
#[derive(Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta<NodeId, Member>,
    pub data: Vec<u8>,
}

/// openraft's state machine over RocksDB.
pub struct StateMachine {
    db: Db,
    hub: Arc<WatchHub>,
    revs: Revisions,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
    snapshot_path: PathBuf,
    history_retain_revisions: u64,
    sessions: SessionTable,
    session_limits: SessionLimits,
}

impl StateMachine {
    /// Loads the state machine's bookkeeping from `db`.
    pub fn open(
        db: Db,
        hub: Arc<WatchHub>,
        snapshot_path: PathBuf,
        history_retain_revisions: u64,
        session_limits: SessionLimits,
    ) -> Result<Self, String> {
        let meta = |key: &[u8]| db.get_cf(cf(&db, CF_SM_META), key).map_err(|e| e.to_string());
        let revs = match meta(KEY_REVS)? {
            Some(b) => decode(&b).map_err(|e| format!("state machine revisions: {e}"))?,
            None => Revisions::default(),
        };
        let last_applied = match meta(KEY_APPLIED)? {
            Some(b) => decode(&b).map_err(|e| format!("state machine applied index: {e}"))?,
            None => None,
        };
        let membership = match meta(KEY_MEMBERSHIP)? {
            Some(b) => decode(&b).map_err(|e| format!("state machine membership: {e}"))?,
            None => StoredMembership::default(),
        };
        let clock_ms = match meta(KEY_SESSION_CLOCK)? {
            Some(b) => decode(&b).map_err(|e| format!("state machine session clock: {e}"))?,
            None => 0,
        };
        let records = read_sessions(db.iterator_cf(cf(&db, CF_SESSIONS), IteratorMode::Start))?;
        let sessions = SessionTable::from_records(clock_ms, records);
        hub.set_revisions(revs);
        Ok(StateMachine { db, hub, revs, last_applied, membership, snapshot_path, history_retain_revisions, sessions, session_limits })
    }

    fn write_meta(&mut self, batch: &mut WriteBatch) -> StoreResult<()> {
        let meta = cf(&self.db, CF_SM_META);
        batch.put_cf(meta, KEY_REVS, encode(&self.revs).map_err(sm_write_err)?);
        batch.put_cf(meta, KEY_APPLIED, encode(&self.last_applied).map_err(sm_write_err)?);
        batch.put_cf(meta, KEY_MEMBERSHIP, encode(&self.membership).map_err(sm_write_err)?);
        batch.put_cf(meta, KEY_SESSION_CLOCK, encode(&self.sessions.clock_ms()).map_err(sm_write_err)?);
        let sessions_cf = cf(&self.db, CF_SESSIONS);
        for change in self.sessions.take_dirty() {
            match change {
                SessionChange::Put { client, header, fresh, dropped } => {
                    batch.put_cf(sessions_cf, session_key(client), encode(&header).map_err(sm_write_err)?);
                    for seq in dropped {
                        batch.delete_cf(sessions_cf, session_result_key(client, seq));
                    }
                    for (seq, result) in fresh {
                        batch.put_cf(sessions_cf, session_result_key(client, seq), encode(&result).map_err(sm_write_err)?);
                    }
                }
                SessionChange::Forget { client } => {
                    batch.delete_range_cf(sessions_cf, session_key(client).to_vec(), session_end_key(client));
                }
            }
        }
        Ok(())
    }

    fn read_stored_snapshot(&self) -> StoreResult<Option<StoredSnapshot>> {
        read_snapshot_file(&self.snapshot_path).map_err(sm_read_err)
    }
}

/// Reads and checks `snapshot.bin`; `None` when there is none.
pub fn read_snapshot_file(path: &std::path::Path) -> Result<Option<StoredSnapshot>, String> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let stored: StoredSnapshot = decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
            unseal(&stored.data).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(Some(stored))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Writes `bytes` to `path` so that a crash leaves the old or the new file,
/// never a torn one.
pub(crate) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// A [`KvState`] over RocksDB with an overlay, so commands in one apply
/// batch see each other's writes before the batch is written.
struct BatchKv<'a> {
    db: &'a DB,
    overlay: BTreeMap<Vec<u8>, Option<KeyValue>>,
    batch: WriteBatch,
    events: Vec<(u64, Event)>,
    next_index: (u64, u32),
}

impl<'a> BatchKv<'a> {
    fn new(db: &'a DB) -> Self {
        BatchKv { db, overlay: BTreeMap::new(), batch: WriteBatch::default(), events: Vec::new(), next_index: (0, 0) }
    }
}

impl KvState for BatchKv<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, KvFault> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        match self.db.get_cf(cf(self.db, CF_KV), key).map_err(|e| KvFault(e.to_string()))? {
            None => Ok(None),
            Some(b) => decode(&b).map(Some).map_err(|e| KvFault(e.to_string())),
        }
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, KvFault> {
        let mut merged: BTreeMap<Vec<u8>, KeyValue> = BTreeMap::new();
        let it = self.db.iterator_cf(cf(self.db, CF_KV), IteratorMode::From(prefix, Direction::Forward));
        for item in it {
            let (k, v) = item.map_err(|e| KvFault(e.to_string()))?;
            if !k.starts_with(prefix) {
                break;
            }
            merged.insert(k.to_vec(), decode(&v).map_err(|e| KvFault(e.to_string()))?);
        }
        for (k, v) in self.overlay.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)) {
            match v {
                Some(kv) => merged.insert(k.clone(), kv.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_values().collect())
    }

    fn put(&mut self, kv: KeyValue) {
        // Encoding plain data into a Vec cannot fail.
        let bytes = encode(&kv).unwrap_or_default();
        self.batch.put_cf(cf(self.db, CF_KV), &kv.key, bytes);
        self.overlay.insert(kv.key.clone(), Some(kv));
    }

    fn delete(&mut self, key: &[u8]) {
        self.batch.delete_cf(cf(self.db, CF_KV), key);
        self.overlay.insert(key.to_vec(), None);
    }

    fn record(&mut self, revision: u64, event: Event) {
        let index = if self.next_index.0 == revision { self.next_index.1 } else { 0 };
        self.next_index = (revision, index + 1);
        self.batch.put_cf(cf(self.db, CF_HISTORY), history_key(revision, index), encode(&event).unwrap_or_default());
        self.events.push((revision, event));
    }

    fn compact(&mut self, revision: u64) {
        self.batch.delete_range_cf(cf(self.db, CF_HISTORY), history_key(0, 0), history_key(revision, 0));
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> StoreResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StoreResult<Vec<CommandResult>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let db = self.db.clone();
        let mut kv = BatchKv::new(&db);
        let mut results = Vec::new();
        for entry in entries {
            self.last_applied = Some(entry.log_id);
            let outcome = match entry.payload {
                EntryPayload::Blank => Outcome::None,
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m);
                    Outcome::None
                }
                EntryPayload::Normal(proposal) => match self.sessions.check(&proposal.session, proposal.stamp_ms, &self.session_limits) {
                    Decision::Apply => {
                        let outcome = apply_command(&mut kv, &mut self.revs, &proposal.command).map_err(sm_read_err)?;
                        auto_compact(&mut kv, &mut self.revs, self.history_retain_revisions);
                        let result = CommandResult { revision: self.revs.revision, outcome };
                        self.sessions.record(&proposal.session, proposal.stamp_ms, &result, &self.session_limits);
                        results.push(result);
                        continue;
                    }
                    Decision::Duplicate(first) => {
                        results.push(first);
                        continue;
                    }
                    Decision::Refuse(reason) => Outcome::Refused(reason),
                },
            };
            results.push(CommandResult { revision: self.revs.revision, outcome });
        }
        let BatchKv { mut batch, events, .. } = kv;
        self.write_meta(&mut batch)?;
        db.write(batch).map_err(sm_write_err)?;
        self.hub.publish(self.revs, group_by_revision(events));
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { db: self.db.clone(), snapshot_path: self.snapshot_path.clone() }
    }

    async fn begin_receiving_snapshot(&mut self) -> StoreResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta<NodeId, Member>, snapshot: Box<Cursor<Vec<u8>>>) -> StoreResult<()> {
        let data = snapshot.into_inner();
        // A damaged snapshot is refused before anything is replaced.
        let payload: SnapshotPayload = decode(unseal(&data).map_err(sm_read_err)?).map_err(sm_read_err)?;
        let mut batch = WriteBatch::default();
        let (kv_cf, hist_cf, sessions_cf) = (cf(&self.db, CF_KV), cf(&self.db, CF_HISTORY), cf(&self.db, CF_SESSIONS));
        // Keys are arbitrary bytes; this bound is past any key flotilla allows.
        batch.delete_range_cf(kv_cf, Vec::<u8>::new(), vec![0xffu8; 8192]);
        batch.delete_range_cf(hist_cf, history_key(0, 0), history_key(u64::MAX, u32::MAX));
        batch.delete_range_cf(sessions_cf, vec![0u8; 16], vec![0xffu8; 17]);
        put_sessions(&mut batch, sessions_cf, &payload.sessions)?;
        self.sessions = SessionTable::from_records(payload.session_clock_ms, payload.sessions.clone());
        for kv in &payload.kvs {
            batch.put_cf(kv_cf, &kv.key, encode(kv).map_err(sm_write_err)?);
        }
        for (rev, idx, ev) in &payload.history {
            batch.put_cf(hist_cf, history_key(*rev, *idx), encode(ev).map_err(sm_write_err)?);
        }
        self.revs = payload.revs;
        self.last_applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.write_meta(&mut batch)?;
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts).map_err(sm_write_err)?;
        let stored = StoredSnapshot { meta: meta.clone(), data };
        write_atomically(&self.snapshot_path, &encode(&stored).map_err(sm_write_err)?).map_err(sm_write_err)?;
        tracing::info!(revision = self.revs.revision, "installed snapshot {}", meta.snapshot_id);
        self.hub.resync(self.revs);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StoreResult<Option<Snapshot<TypeConfig>>> {
        Ok(self.read_stored_snapshot()?.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}

fn group_by_revision(events: Vec<(u64, Event)>) -> Vec<WatchBatch> {
    let mut out: Vec<WatchBatch> = Vec::new();
    for (rev, ev) in events {
        match out.last_mut() {
            Some(b) if b.revision == rev => b.events.push(ev),
            _ => out.push(WatchBatch { revision: rev, events: vec![ev] }),
        }
    }
    out
}

/// Builds snapshots from a consistent RocksDB snapshot, so applying may go
/// on while it runs.
pub struct SnapshotBuilder {
    db: Db,
    snapshot_path: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> StoreResult<Snapshot<TypeConfig>> {
        // Reading and encoding the whole store takes seconds at scale: on a
        // worker thread it would stall every task scheduled there.
        let builder = SnapshotBuilder { db: self.db.clone(), snapshot_path: self.snapshot_path.clone() };
        tokio::task::spawn_blocking(move || builder.build_blocking()).await.map_err(sm_write_err)?
    }
}

/// A payload with the log position and membership it was read at.
pub type PayloadAt = (SnapshotPayload, Option<LogId<NodeId>>, StoredMembership<NodeId, Member>);

/// Everything the state machine holds, read from one consistent RocksDB
/// snapshot: the payload, and the log position and membership it is at.
pub fn read_payload(db: &DB) -> StoreResult<PayloadAt> {
    let snap = db.snapshot();
    let meta_get = |key: &[u8]| snap.get_cf(cf(db, CF_SM_META), key).map_err(sm_read_err);
    let revs: Revisions = meta_get(KEY_REVS)?.map(|b| decode(&b)).transpose().map_err(sm_read_err)?.unwrap_or_default();
    let last_applied: Option<LogId<NodeId>> = meta_get(KEY_APPLIED)?.map(|b| decode(&b)).transpose().map_err(sm_read_err)?.flatten();
    let membership: StoredMembership<NodeId, Member> =
        meta_get(KEY_MEMBERSHIP)?.map(|b| decode(&b)).transpose().map_err(sm_read_err)?.unwrap_or_default();
    let mut kvs = Vec::new();
    for item in snap.iterator_cf(cf(db, CF_KV), IteratorMode::Start) {
        let (_, v) = item.map_err(sm_read_err)?;
        kvs.push(decode(&v).map_err(sm_read_err)?);
    }
    let mut history = Vec::new();
    for item in snap.iterator_cf(cf(db, CF_HISTORY), IteratorMode::Start) {
        let (k, v) = item.map_err(sm_read_err)?;
        let rev = history_key_revision(&k).ok_or_else(|| sm_read_err("short history key"))?;
        let idx = u32::from_be_bytes(k.get(8..12).ok_or_else(|| sm_read_err("short history key"))?.try_into().map_err(sm_read_err)?);
        history.push((rev, idx, decode(&v).map_err(sm_read_err)?));
    }
    let session_clock_ms: u64 = meta_get(KEY_SESSION_CLOCK)?.map(|b| decode(&b)).transpose().map_err(sm_read_err)?.unwrap_or(0);
    let sessions = read_sessions(snap.iterator_cf(cf(db, CF_SESSIONS), IteratorMode::Start)).map_err(sm_read_err)?;
    Ok((SnapshotPayload { revs, kvs, history, session_clock_ms, sessions }, last_applied, membership))
}

/// Writes a restored payload into a new, empty database: the keys, the
/// history and the revisions, without sessions (the restored cluster has
/// new clients) and without a log position (the cluster starts anew).
pub fn write_restored(db: &DB, payload: &SnapshotPayload) -> Result<(), String> {
    let mut batch = WriteBatch::default();
    for kv in &payload.kvs {
        batch.put_cf(cf(db, CF_KV), &kv.key, encode(kv).map_err(|e| e.to_string())?);
    }
    for (rev, idx, ev) in &payload.history {
        batch.put_cf(cf(db, CF_HISTORY), history_key(*rev, *idx), encode(ev).map_err(|e| e.to_string())?);
    }
    batch.put_cf(cf(db, CF_SM_META), KEY_REVS, encode(&payload.revs).map_err(|e| e.to_string())?);
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts).map_err(|e| e.to_string())
}

impl SnapshotBuilder {
    fn build_blocking(&self) -> StoreResult<Snapshot<TypeConfig>> {
        // Everything the snapshot covers must be durable before the log
        // behind it may be purged.
        self.db.flush_wal(true).map_err(sm_write_err)?;
        let (payload, last_applied, membership) = read_payload(&self.db)?;
        let revs = payload.revs;
        let data = seal(&encode(&payload).map_err(sm_write_err)?);
        let meta = SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id: format!(
                "{}-{}",
                last_applied.map_or(0, |l| l.index),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis())
            ),
        };
        let stored = StoredSnapshot { meta: meta.clone(), data };
        write_atomically(&self.snapshot_path, &encode(&stored).map_err(sm_write_err)?).map_err(sm_write_err)?;
        tracing::info!(revision = revs.revision, bytes = stored.data.len(), "built snapshot {}", meta.snapshot_id);
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data)) })
    }
}

/// Reads of the local state machine, shared by API handlers and watchers.
#[derive(Clone)]
pub struct StoreReader {
    db: Db,
    hub: Arc<WatchHub>,
}

impl StoreReader {
    pub fn new(db: Db, hub: Arc<WatchHub>) -> Self {
        StoreReader { db, hub }
    }

    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn revisions(&self) -> Revisions {
        self.hub.revisions()
    }

    fn read_revs(snap: &rocksdb::SnapshotWithThreadMode<'_, DB>, db: &DB) -> Result<Revisions, String> {
        match snap.get_cf(cf(db, CF_SM_META), KEY_REVS).map_err(|e| e.to_string())? {
            Some(b) => decode(&b).map_err(|e| e.to_string()),
            None => Ok(Revisions::default()),
        }
    }

    pub fn get(&self, key: &[u8]) -> Result<(Option<KeyValue>, u64), String> {
        let snap = self.db.snapshot();
        let revs = Self::read_revs(&snap, &self.db)?;
        let kv = match snap.get_cf(cf(&self.db, CF_KV), key).map_err(|e| e.to_string())? {
            Some(b) => Some(decode(&b).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok((kv, revs.revision))
    }

    /// Up to `limit` keys starting with `prefix`, after `continue_from`
    /// (exclusive) when given, read at one revision.
    pub fn range(&self, prefix: &[u8], limit: usize, continue_from: Option<&[u8]>) -> Result<RangePage, String> {
        let snap = self.db.snapshot();
        let revs = Self::read_revs(&snap, &self.db)?;
        let start = match continue_from {
            Some(c) if c > prefix => c.to_vec(),
            _ => prefix.to_vec(),
        };
        let mut kvs = Vec::new();
        let mut more = false;
        for item in snap.iterator_cf(cf(&self.db, CF_KV), IteratorMode::From(&start, Direction::Forward)) {
            let (k, v) = item.map_err(|e| e.to_string())?;
            if !k.starts_with(prefix) {
                break;
            }
            if continue_from.is_some_and(|c| k.as_ref() <= c) {
                continue;
            }
            if kvs.len() == limit {
                more = true;
                break;
            }
            kvs.push(decode(&v).map_err(|e| e.to_string())?);
        }
        Ok(RangePage { kvs, more, revision: revs.revision })
    }

    /// History from `from_revision` (inclusive) on, at most `max_events`
    /// events, whole revisions only (a revision is never split).
    pub fn history(&self, prefix: &[u8], from_revision: u64, max_events: usize) -> Result<(Vec<Event>, u64), String> {
        let snap = self.db.snapshot();
        let revs = Self::read_revs(&snap, &self.db)?;
        let mut events = Vec::new();
        let mut scanned_to = from_revision.saturating_sub(1);
        let mut scanned = 0usize;
        for item in snap.iterator_cf(cf(&self.db, CF_HISTORY), IteratorMode::From(&history_key(from_revision, 0), Direction::Forward)) {
            let (k, v) = item.map_err(|e| e.to_string())?;
            let rev = history_key_revision(&k).ok_or("short history key")?;
            if rev > revs.revision {
                break;
            }
            if rev != scanned_to && scanned >= max_events {
                break;
            }
            scanned_to = rev;
            scanned += 1;
            let event: Event = decode(&v).map_err(|e| e.to_string())?;
            if event.kv.key.starts_with(prefix) {
                events.push(event);
            }
        }
        if scanned < max_events {
            scanned_to = revs.revision.max(scanned_to);
        }
        Ok((events, scanned_to))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(revision: u64) -> CommandResult {
        CommandResult { revision, outcome: Outcome::Put { prev: None } }
    }

    fn item(k: &[u8], v: Vec<u8>) -> DbItem {
        Ok((k.to_vec().into_boxed_slice(), v.into_boxed_slice()))
    }

    #[test]
    fn sessions_are_read_from_headers_and_result_keys_and_from_the_older_layout() {
        let header = ClientRecord { ack_below: 3, last_active_ms: 50, results: BTreeMap::new() };
        let older = ClientRecord { ack_below: 1, last_active_ms: 60, results: BTreeMap::from([(1, result(10)), (2, result(11))]) };
        let items = vec![
            item(&session_key(7), encode(&header).unwrap()),
            // Below the mark: left over from before an acknowledgement.
            item(&session_result_key(7, 2), encode(&result(20)).unwrap()),
            item(&session_result_key(7, 3), encode(&result(21)).unwrap()),
            item(&session_result_key(7, 4), encode(&result(22)).unwrap()),
            // A data dir written before results had keys of their own.
            item(&session_key(9), encode(&older).unwrap()),
        ];
        let records = read_sessions(items.into_iter()).unwrap();
        assert_eq!(
            records,
            vec![
                (7, ClientRecord { ack_below: 3, last_active_ms: 50, results: BTreeMap::from([(3, result(21)), (4, result(22))]) }),
                (9, older),
            ]
        );
        assert!(read_sessions(vec![item(&[1, 2, 3], vec![])].into_iter()).unwrap_err().contains("3 bytes"));
    }

    #[test]
    fn a_client_s_keys_sort_between_its_header_and_the_next_client() {
        assert!(session_key(7).as_slice() < session_result_key(7, 0).as_slice());
        assert!(session_result_key(7, u64::MAX).as_slice() < session_end_key(7).as_slice());
        assert!(session_end_key(7).as_slice() <= session_key(8).as_slice());
        assert!(session_result_key(u128::MAX, u64::MAX).as_slice() < session_end_key(u128::MAX).as_slice());
    }
}
