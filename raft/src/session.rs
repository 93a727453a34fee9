//! Client sessions: what makes every write apply exactly once, whatever
//! retries happen below (Ongaro's dissertation, section 6.3).
//!
//! Every write carries its client's id, a sequence number and the lowest
//! sequence number that client still waits for (`ack_below`). The state
//! machine keeps, per client, the results of the writes the client has not
//! yet acknowledged. A write whose sequence number it has seen answers the
//! first result and changes nothing; one below `ack_below` (the client has
//! moved on, so this is a zombie: a forwarded or re-proposed copy of a
//! request that was answered or abandoned) is refused and changes nothing.
//!
//! Everything here is a plain function of the log: every member applies the
//! same entries and reaches the same table. Time comes from the entries'
//! stamps, never from a local clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};

use crate::types::CommandResult;

pub use crate::types::{ClientId, Session};

/// The store's session limits. Part of the replicated state's rules, so every
/// member must run with the same values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionLimits {
    /// Clients remembered at most; past it the least recently active is forgotten.
    pub clients_max: usize,
    /// A client silent for this long (by the entries' stamps) is forgotten.
    pub idle_ms: u64,
    /// Unacknowledged results kept per client; past it the oldest is dropped
    /// and `ack_below` is raised over it, so it can never be applied again.
    pub results_per_client_max: usize,
    /// A proposal stamped this much earlier than the newest stamp applied is
    /// refused as too old to be told apart from a duplicate.
    pub proposal_age_max_ms: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits { clients_max: 50_000, idle_ms: 10 * 60 * 1000, results_per_client_max: 4096, proposal_age_max_ms: 60 * 1000 }
    }
}

/// One client's remembered state.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ClientRecord {
    pub ack_below: u64,
    pub last_active_ms: u64,
    /// Results of the client's requests at or above `ack_below`.
    pub results: BTreeMap<u64, CommandResult>,
}

/// What the state machine must do with one proposal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A new request: apply it, then [`SessionTable::record`] its result.
    Apply,
    /// A retry of a request already applied: answer this, change nothing.
    Duplicate(CommandResult),
    /// A request the client has already moved past, or one too old: change
    /// nothing; the caller learns that its outcome is unknown.
    Refuse(String),
}

/// Every client's session, as of the last applied entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionTable {
    clients: HashMap<ClientId, ClientRecord>,
    /// (last_active_ms, client): the order in which clients are forgotten.
    by_activity: BTreeSet<(u64, ClientId)>,
    /// The newest stamp applied: the table's notion of now.
    clock_ms: u64,
    /// Clients changed or removed since [`SessionTable::take_dirty`].
    dirty: BTreeSet<ClientId>,
    /// Results recorded since then, by client: only these are written, so
    /// a write costs its own result, not every result the client holds.
    fresh: BTreeMap<ClientId, Vec<u64>>,
    /// Results forgotten since then, by client (point deletes: a range
    /// delete per write would leave the store a tombstone per write).
    dropped: BTreeMap<ClientId, Vec<u64>>,
}

/// What changed of one client since the last [`SessionTable::take_dirty`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionChange {
    /// The client's header (`ack_below`, `last_active_ms`, no results),
    /// its results recorded since, and those forgotten since.
    Put { client: ClientId, header: ClientRecord, fresh: Vec<(u64, CommandResult)>, dropped: Vec<u64> },
    /// The client is forgotten, with all its results.
    Forget { client: ClientId },
}

impl SessionTable {
    /// Rebuilds a table from stored records.
    pub fn from_records(clock_ms: u64, records: impl IntoIterator<Item = (ClientId, ClientRecord)>) -> Self {
        let mut table = SessionTable { clock_ms, ..Default::default() };
        for (client, record) in records {
            table.by_activity.insert((record.last_active_ms, client));
            table.clients.insert(client, record);
        }
        table
    }

    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    pub fn get(&self, client: ClientId) -> Option<&ClientRecord> {
        self.clients.get(&client)
    }

    /// Every record, in client order (for snapshots).
    pub fn records(&self) -> Vec<(ClientId, ClientRecord)> {
        let mut out: Vec<_> = self.clients.iter().map(|(c, r)| (*c, r.clone())).collect();
        out.sort_by_key(|(c, _)| *c);
        out
    }

    /// Decides what to do with a proposal stamped `stamp_ms`, advancing the
    /// table's clock and forgetting idle clients first.
    pub fn check(&mut self, session: &Session, stamp_ms: u64, limits: &SessionLimits) -> Decision {
        self.advance(stamp_ms, limits);
        if stamp_ms.saturating_add(limits.proposal_age_max_ms) < self.clock_ms {
            return Decision::Refuse(format!(
                "proposal stamped {} ms before the newest applied write; it may be a copy of an older request",
                self.clock_ms - stamp_ms
            ));
        }
        let Some(record) = self.clients.get_mut(&session.client) else {
            return Decision::Apply;
        };
        if let Some(result) = record.results.get(&session.seq) {
            return Decision::Duplicate(result.clone());
        }
        if session.seq < record.ack_below {
            return Decision::Refuse(format!(
                "request {} of client {:032x} was already answered or abandoned (the client waits for nothing below {})",
                session.seq, session.client, record.ack_below
            ));
        }
        Decision::Apply
    }

    /// Remembers the result of an applied request and forgets the results
    /// the client has acknowledged.
    pub fn record(&mut self, session: &Session, stamp_ms: u64, result: &CommandResult, limits: &SessionLimits) {
        let record = self.clients.entry(session.client).or_default();
        self.by_activity.remove(&(record.last_active_ms, session.client));
        record.last_active_ms = record.last_active_ms.max(stamp_ms).max(self.clock_ms);
        // `ack_below` only grows: an older request, reordered behind a newer
        // one, must not lower it.
        record.ack_below = record.ack_below.max(session.ack_below);
        let ack = record.ack_below;
        let acked: Vec<u64> = record.results.range(..ack).map(|(seq, _)| *seq).collect();
        let dropped = self.dropped.entry(session.client).or_default();
        for seq in acked {
            record.results.remove(&seq);
            dropped.push(seq);
        }
        if session.seq >= record.ack_below {
            record.results.insert(session.seq, result.clone());
            self.fresh.entry(session.client).or_default().push(session.seq);
        }
        while record.results.len() > limits.results_per_client_max {
            if let Some((oldest, _)) = record.results.pop_first() {
                record.ack_below = record.ack_below.max(oldest + 1);
                dropped.push(oldest);
            }
        }
        self.by_activity.insert((record.last_active_ms, session.client));
        self.dirty.insert(session.client);
        self.evict_over_limit(limits);
    }

    fn advance(&mut self, stamp_ms: u64, limits: &SessionLimits) {
        self.clock_ms = self.clock_ms.max(stamp_ms);
        let horizon = self.clock_ms.saturating_sub(limits.idle_ms);
        while let Some(&(active, client)) = self.by_activity.first() {
            if active >= horizon {
                break;
            }
            self.forget(active, client);
        }
    }

    fn evict_over_limit(&mut self, limits: &SessionLimits) {
        while self.clients.len() > limits.clients_max {
            let Some(&(active, client)) = self.by_activity.first() else { break };
            self.forget(active, client);
        }
    }

    fn forget(&mut self, active: u64, client: ClientId) {
        self.by_activity.remove(&(active, client));
        self.clients.remove(&client);
        self.fresh.remove(&client);
        self.dropped.remove(&client);
        self.dirty.insert(client);
    }

    /// What changed since the last call, client by client.
    pub fn take_dirty(&mut self) -> Vec<SessionChange> {
        let dirty = std::mem::take(&mut self.dirty);
        let mut fresh = std::mem::take(&mut self.fresh);
        let mut dropped = std::mem::take(&mut self.dropped);
        dirty
            .into_iter()
            .map(|client| match self.clients.get(&client) {
                None => SessionChange::Forget { client },
                Some(r) => {
                    let header = ClientRecord { ack_below: r.ack_below, last_active_ms: r.last_active_ms, results: BTreeMap::new() };
                    let fresh = fresh
                        .remove(&client)
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|seq| r.results.get(&seq).map(|res| (seq, res.clone())))
                        .collect();
                    let dropped = dropped.remove(&client).unwrap_or_default();
                    SessionChange::Put { client, header, fresh, dropped }
                }
            })
            .collect()
    }
}

/// The client side: hands out sequence numbers and knows which requests are
/// still waiting, so every request can say how far the client has got.
#[derive(Debug)]
pub struct SessionClient {
    id: ClientId,
    state: std::sync::Mutex<ClientCounters>,
}

#[derive(Debug, Default)]
struct ClientCounters {
    next_seq: u64,
    waiting: BTreeSet<u64>,
}

impl SessionClient {
    /// A client with a fresh random id.
    pub fn new() -> Self {
        Self::with_id(rand::random::<u128>())
    }

    pub fn with_id(id: ClientId) -> Self {
        SessionClient { id, state: std::sync::Mutex::new(ClientCounters { next_seq: 1, waiting: BTreeSet::new() }) }
    }

    pub fn id(&self) -> ClientId {
        self.id
    }

    /// Starts a request. Keep the ticket for every retry of it; drop it once
    /// the request is answered or given up.
    pub fn begin(&self) -> SessionTicket<'_> {
        let mut s = self.lock();
        let seq = s.next_seq;
        s.next_seq += 1;
        s.waiting.insert(seq);
        SessionTicket { client: self, seq }
    }

    /// The session to send with the ticket's request now.
    fn session(&self, seq: u64) -> Session {
        let s = self.lock();
        let ack_below = s.waiting.first().copied().unwrap_or(s.next_seq).min(seq);
        Session { client: self.id, seq, ack_below }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClientCounters> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Default for SessionClient {
    fn default() -> Self {
        Self::new()
    }
}

/// One request in flight; see [`SessionClient::begin`].
#[derive(Debug)]
pub struct SessionTicket<'a> {
    client: &'a SessionClient,
    seq: u64,
}

impl SessionTicket<'_> {
    pub fn session(&self) -> Session {
        self.client.session(self.seq)
    }
}

impl Drop for SessionTicket<'_> {
    fn drop(&mut self) {
        self.client.lock().waiting.remove(&self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Outcome;

    fn result(revision: u64) -> CommandResult {
        CommandResult { revision, outcome: Outcome::Put { prev: None } }
    }

    fn s(client: ClientId, seq: u64, ack_below: u64) -> Session {
        Session { client, seq, ack_below }
    }

    #[test]
    fn a_retry_answers_the_first_result_and_a_new_request_applies() {
        let limits = SessionLimits::default();
        let mut t = SessionTable::default();
        assert_eq!(t.check(&s(7, 1, 1), 1000, &limits), Decision::Apply);
        t.record(&s(7, 1, 1), 1000, &result(5), &limits);
        assert_eq!(t.check(&s(7, 1, 1), 1001, &limits), Decision::Duplicate(result(5)));
        assert_eq!(t.check(&s(7, 2, 1), 1002, &limits), Decision::Apply);
        assert_eq!(t.check(&s(8, 1, 1), 1002, &limits), Decision::Apply);
    }

    #[test]
    fn a_zombie_below_the_acknowledged_mark_is_refused_and_results_are_forgotten() {
        let limits = SessionLimits::default();
        let mut t = SessionTable::default();
        t.record(&s(7, 1, 1), 1000, &result(5), &limits);
        t.record(&s(7, 3, 3), 1000, &result(6), &limits);
        let record = t.get(7).unwrap();
        assert_eq!(record.ack_below, 3);
        assert_eq!(record.results.keys().copied().collect::<Vec<_>>(), vec![3]);
        // Seq 1 was answered, seq 2 abandoned: neither may ever apply.
        assert!(matches!(t.check(&s(7, 1, 1), 1000, &limits), Decision::Refuse(_)));
        assert!(matches!(t.check(&s(7, 2, 2), 1000, &limits), Decision::Refuse(_)));
        assert_eq!(t.check(&s(7, 3, 3), 1000, &limits), Decision::Duplicate(result(6)));
    }

    #[test]
    fn a_reordered_older_request_does_not_lower_the_mark() {
        let limits = SessionLimits::default();
        let mut t = SessionTable::default();
        t.record(&s(1, 5, 5), 10, &result(1), &limits);
        t.record(&s(1, 4, 2), 10, &result(2), &limits);
        assert_eq!(t.get(1).unwrap().ack_below, 5);
        assert!(!t.get(1).unwrap().results.contains_key(&4));
    }

    #[test]
    fn idle_clients_expire_by_the_entries_clock_and_old_proposals_are_refused() {
        let limits = SessionLimits { idle_ms: 100, proposal_age_max_ms: 50, ..Default::default() };
        let mut t = SessionTable::default();
        t.record(&s(1, 1, 1), 1000, &result(1), &limits);
        t.record(&s(2, 1, 1), 1080, &result(2), &limits);
        assert_eq!(t.check(&s(3, 1, 1), 1150, &limits), Decision::Apply);
        assert!(t.get(1).is_none(), "client 1 was idle for 150 ms");
        assert!(t.get(2).is_some());
        assert!(matches!(t.check(&s(2, 1, 1), 1090, &limits), Decision::Refuse(_)), "stamped 60 ms before the clock");
        let dirty = t.take_dirty();
        let header = ClientRecord { ack_below: 1, last_active_ms: 1080, results: BTreeMap::new() };
        assert_eq!(
            dirty,
            vec![
                SessionChange::Forget { client: 1 },
                SessionChange::Put { client: 2, header, fresh: vec![(1, result(2))], dropped: vec![] }
            ]
        );
        assert!(t.take_dirty().is_empty());
        // A later write carries only its own result, not the ones before.
        t.record(&s(2, 2, 1), 1100, &result(3), &limits);
        let header = ClientRecord { ack_below: 1, last_active_ms: 1150, results: BTreeMap::new() };
        assert_eq!(t.take_dirty(), vec![SessionChange::Put { client: 2, header, fresh: vec![(2, result(3))], dropped: vec![] }]);
        // Acknowledging forgets the older results one by one.
        t.record(&s(2, 3, 3), 1150, &result(4), &limits);
        let header = ClientRecord { ack_below: 3, last_active_ms: 1150, results: BTreeMap::new() };
        assert_eq!(t.take_dirty(), vec![SessionChange::Put { client: 2, header, fresh: vec![(3, result(4))], dropped: vec![1, 2] }]);
    }

    #[test]
    fn limits_on_clients_and_results_never_allow_a_second_apply() {
        let limits = SessionLimits { clients_max: 2, results_per_client_max: 2, ..Default::default() };
        let mut t = SessionTable::default();
        for seq in 1..=3 {
            t.record(&s(9, seq, 1), 10, &result(seq), &limits);
        }
        let r = t.get(9).unwrap();
        assert_eq!(r.results.keys().copied().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(r.ack_below, 2);
        assert!(matches!(t.check(&s(9, 1, 1), 10, &limits), Decision::Refuse(_)));
        t.record(&s(10, 1, 1), 11, &result(4), &limits);
        t.record(&s(11, 1, 1), 12, &result(5), &limits);
        assert_eq!(t.len(), 2);
        assert!(t.get(9).is_none(), "the least recently active client goes first");
    }

    #[test]
    fn the_client_reports_the_lowest_request_still_waiting() {
        let c = SessionClient::with_id(42);
        let a = c.begin();
        let b = c.begin();
        assert_eq!(b.session(), Session { client: 42, seq: 2, ack_below: 1 });
        drop(a);
        assert_eq!(b.session(), Session { client: 42, seq: 2, ack_below: 2 });
        drop(b);
        let d = c.begin();
        assert_eq!(d.session(), Session { client: 42, seq: 3, ack_below: 3 });
    }
}
