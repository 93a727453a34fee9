//! The state machine's core as plain functions: given the current keys and
//! a [`Command`], decide the new keys, the events and the answer. No I/O
//! happens here; [`KvState`] is implemented over RocksDB by the state machine
//! and over a `BTreeMap` by the unit tests, which assert exact results.

use std::collections::BTreeMap;

use crate::types::{Command, Compare, CompareOp, CompareTarget, Event, EventKind, KeyValue, Outcome, Revisions, Txn, TxnOp, TxnOpResult};

/// A read from the backing store failed; the entry cannot be applied.
#[derive(Debug, thiserror::Error)]
#[error("state machine storage failed: {0}")]
pub struct KvFault(pub String);

/// The keys as the apply logic sees them. Writes made through it must be
/// visible to later reads within the same apply.
pub trait KvState {
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, KvFault>;
    /// Every key starting with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, KvFault>;
    fn put(&mut self, kv: KeyValue);
    fn delete(&mut self, key: &[u8]);
    /// Append an event to the history at `revision`.
    fn record(&mut self, revision: u64, event: Event);
    /// Drop history before `revision`.
    fn compact(&mut self, revision: u64);
}

/// Applies one command, updating `revs`. A command that changes nothing
/// leaves the revision as it was, as etcd does.
pub fn apply_command(state: &mut impl KvState, revs: &mut Revisions, command: &Command) -> Result<Outcome, KvFault> {
    let next = revs.revision + 1;
    let (outcome, wrote) = match command {
        Command::Put { key, value } => (Outcome::Put { prev: put(state, next, key, value)? }, true),
        Command::Delete { key, prefix } => {
            let deleted = delete(state, next, key, *prefix)?;
            (Outcome::Delete { deleted }, deleted > 0)
        }
        Command::Txn(txn) => {
            let (succeeded, results, wrote) = apply_txn(state, next, txn)?;
            (Outcome::Txn { succeeded, results }, wrote)
        }
        Command::Compact { revision } => return Ok(compact(state, revs, *revision)),
    };
    if wrote {
        revs.revision = next;
    }
    Ok(outcome)
}

/// Keeps history to the last `retain` revisions. Runs after every applied
/// entry on every member, so all members compact at the same revisions.
/// Compacts in steps of a tenth of `retain` so it is not a delete per write.
pub fn auto_compact(state: &mut impl KvState, revs: &mut Revisions, retain: u64) {
    if retain == 0 {
        return;
    }
    let step = (retain / 10).max(1);
    if revs.revision > revs.compact_revision + retain + step {
        let to = revs.revision - retain;
        state.compact(to);
        revs.compact_revision = to;
    }
}

fn compact(state: &mut impl KvState, revs: &mut Revisions, revision: u64) -> Outcome {
    if revision <= revs.compact_revision {
        return Outcome::Rejected(format!("revision {revision} is already compacted (compacted up to {})", revs.compact_revision));
    }
    if revision > revs.revision {
        return Outcome::Rejected(format!("revision {revision} is in the future (the store is at revision {})", revs.revision));
    }
    state.compact(revision);
    revs.compact_revision = revision;
    Outcome::Compacted
}

fn put(state: &mut impl KvState, revision: u64, key: &[u8], value: &[u8]) -> Result<Option<KeyValue>, KvFault> {
    let prev = state.get(key)?;
    let kv = KeyValue {
        key: key.to_vec(),
        value: value.to_vec(),
        create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
        mod_revision: revision,
        version: prev.as_ref().map_or(0, |p| p.version) + 1,
    };
    state.put(kv.clone());
    state.record(revision, Event { kind: EventKind::Put, kv });
    Ok(prev)
}

fn delete(state: &mut impl KvState, revision: u64, key: &[u8], prefix: bool) -> Result<u64, KvFault> {
    let victims = if prefix { state.scan_prefix(key)? } else { state.get(key)?.into_iter().collect() };
    for mut kv in victims.iter().cloned() {
        state.delete(&kv.key);
        kv.mod_revision = revision;
        state.record(revision, Event { kind: EventKind::Delete, kv });
    }
    Ok(victims.len() as u64)
}

fn apply_txn(state: &mut impl KvState, revision: u64, txn: &Txn) -> Result<(bool, Vec<TxnOpResult>, bool), KvFault> {
    let mut succeeded = true;
    for compare in &txn.compares {
        if !evaluate(compare, state.get(&compare.key)?.as_ref()) {
            succeeded = false;
            break;
        }
    }
    let ops = if succeeded { &txn.success } else { &txn.failure };
    let mut wrote = false;
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        results.push(match op {
            TxnOp::Put { key, value } => {
                wrote = true;
                TxnOpResult::Put { prev: put(state, revision, key, value)? }
            }
            TxnOp::Delete { key, prefix } => {
                let deleted = delete(state, revision, key, *prefix)?;
                wrote |= deleted > 0;
                TxnOpResult::Delete { deleted }
            }
            TxnOp::Get { key } => TxnOpResult::Get { kv: state.get(key)? },
        });
    }
    Ok((succeeded, results, wrote))
}

/// Evaluates one comparison against the key's current state; a missing key
/// compares as absent value, zero revisions and version zero.
pub fn evaluate(compare: &Compare, current: Option<&KeyValue>) -> bool {
    use std::cmp::Ordering;
    let ordering: Option<Ordering> = match &compare.target {
        CompareTarget::Value(expected) => {
            let actual = current.map(|kv| kv.value.as_slice());
            match (actual, expected.as_deref()) {
                (Some(a), Some(e)) => Some(a.cmp(e)),
                (None, None) => Some(Ordering::Equal),
                // Absent is neither greater nor less than a value; only
                // (not-)equal comparisons are meaningful.
                _ => None,
            }
        }
        CompareTarget::ModRevision(r) => Some(current.map_or(0, |kv| kv.mod_revision).cmp(r)),
        CompareTarget::CreateRevision(r) => Some(current.map_or(0, |kv| kv.create_revision).cmp(r)),
        CompareTarget::Version(v) => Some(current.map_or(0, |kv| kv.version).cmp(v)),
    };
    match (compare.op, ordering) {
        (CompareOp::Equal, Some(o)) => o == Ordering::Equal,
        (CompareOp::NotEqual, Some(o)) => o != Ordering::Equal,
        (CompareOp::NotEqual, None) => true,
        (CompareOp::Greater, Some(o)) => o == Ordering::Greater,
        (CompareOp::Less, Some(o)) => o == Ordering::Less,
        (_, None) => false,
    }
}

/// An in-memory [`KvState`], for tests and for reasoning about the apply
/// logic without RocksDB.
#[derive(Default, Debug, Clone)]
pub struct MemKv {
    pub keys: BTreeMap<Vec<u8>, KeyValue>,
    pub history: Vec<(u64, Event)>,
}

impl KvState for MemKv {
    fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, KvFault> {
        Ok(self.keys.get(key).cloned())
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Vec<KeyValue>, KvFault> {
        Ok(self.keys.range(prefix.to_vec()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v.clone()).collect())
    }
    fn put(&mut self, kv: KeyValue) {
        self.keys.insert(kv.key.clone(), kv);
    }
    fn delete(&mut self, key: &[u8]) {
        self.keys.remove(key);
    }
    fn record(&mut self, revision: u64, event: Event) {
        self.history.push((revision, event));
    }
    fn compact(&mut self, revision: u64) {
        self.history.retain(|(r, _)| *r >= revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_cmd(k: &str, v: &str) -> Command {
        Command::Put { key: k.into(), value: v.into() }
    }

    fn kv(k: &str, v: &str, create: u64, modr: u64, version: u64) -> KeyValue {
        KeyValue { key: k.into(), value: v.into(), create_revision: create, mod_revision: modr, version }
    }

    #[test]
    fn put_sets_etcd_counters_and_prev() {
        let (mut s, mut r) = (MemKv::default(), Revisions::default());
        assert_eq!(apply_command(&mut s, &mut r, &put_cmd("a", "1")).unwrap(), Outcome::Put { prev: None });
        assert_eq!(apply_command(&mut s, &mut r, &put_cmd("a", "2")).unwrap(), Outcome::Put { prev: Some(kv("a", "1", 1, 1, 1)) });
        assert_eq!(r.revision, 2);
        assert_eq!(s.keys[&b"a".to_vec()], kv("a", "2", 1, 2, 2));
        assert_eq!(
            s.history,
            vec![
                (1, Event { kind: EventKind::Put, kv: kv("a", "1", 1, 1, 1) }),
                (2, Event { kind: EventKind::Put, kv: kv("a", "2", 1, 2, 2) }),
            ]
        );
    }

    #[test]
    fn delete_of_missing_key_does_not_bump_revision() {
        let (mut s, mut r) = (MemKv::default(), Revisions::default());
        let out = apply_command(&mut s, &mut r, &Command::Delete { key: "x".into(), prefix: false });
        assert_eq!(out.unwrap(), Outcome::Delete { deleted: 0 });
        assert_eq!(r.revision, 0);
        assert!(s.history.is_empty());
    }

    #[test]
    fn prefix_delete_removes_only_the_prefix_in_one_revision() {
        let (mut s, mut r) = (MemKv::default(), Revisions::default());
        for k in ["p/a", "p/b", "q/a"] {
            apply_command(&mut s, &mut r, &put_cmd(k, "v")).unwrap();
        }
        let out = apply_command(&mut s, &mut r, &Command::Delete { key: "p/".into(), prefix: true });
        assert_eq!(out.unwrap(), Outcome::Delete { deleted: 2 });
        assert_eq!(r.revision, 4);
        assert_eq!(s.keys.keys().cloned().collect::<Vec<_>>(), vec![b"q/a".to_vec()]);
        let deletes: Vec<_> = s.history.iter().filter(|(rev, _)| *rev == 4).collect();
        assert_eq!(deletes.len(), 2);
        assert_eq!(deletes[0].1, Event { kind: EventKind::Delete, kv: kv("p/a", "v", 1, 4, 1) });
    }

    #[test]
    fn txn_compare_and_swap_on_mod_revision() {
        let (mut s, mut r) = (MemKv::default(), Revisions::default());
        apply_command(&mut s, &mut r, &put_cmd("k", "v1")).unwrap();
        let cas = |expected_rev: u64, value: &str| {
            Command::Txn(Txn {
                compares: vec![Compare { key: "k".into(), op: CompareOp::Equal, target: CompareTarget::ModRevision(expected_rev) }],
                success: vec![TxnOp::Put { key: "k".into(), value: value.into() }],
                failure: vec![TxnOp::Get { key: "k".into() }],
            })
        };
        let won = apply_command(&mut s, &mut r, &cas(1, "v2")).unwrap();
        assert_eq!(won, Outcome::Txn { succeeded: true, results: vec![TxnOpResult::Put { prev: Some(kv("k", "v1", 1, 1, 1)) }] });
        let lost = apply_command(&mut s, &mut r, &cas(1, "v3")).unwrap();
        assert_eq!(lost, Outcome::Txn { succeeded: false, results: vec![TxnOpResult::Get { kv: Some(kv("k", "v2", 1, 2, 2)) }] });
        // A txn that only read does not create a revision.
        assert_eq!(r.revision, 2);
    }

    #[test]
    fn compare_on_missing_key() {
        let absent = |op, target| evaluate(&Compare { key: "m".into(), op, target }, None);
        assert!(absent(CompareOp::Equal, CompareTarget::Value(None)));
        assert!(absent(CompareOp::Equal, CompareTarget::CreateRevision(0)));
        assert!(absent(CompareOp::NotEqual, CompareTarget::Value(Some(b"x".to_vec()))));
        assert!(!absent(CompareOp::Greater, CompareTarget::Value(Some(b"x".to_vec()))));
        assert!(!absent(CompareOp::Greater, CompareTarget::Version(0)));
        let present = kv("m", "b", 3, 5, 2);
        let on = |op, target| evaluate(&Compare { key: "m".into(), op, target }, Some(&present));
        assert!(on(CompareOp::Greater, CompareTarget::Value(Some(b"a".to_vec()))));
        assert!(on(CompareOp::Less, CompareTarget::ModRevision(6)));
        assert!(on(CompareOp::Equal, CompareTarget::Version(2)));
        assert!(!on(CompareOp::Equal, CompareTarget::Value(None)));
    }

    #[test]
    fn compaction_rules() {
        let (mut s, mut r) = (MemKv::default(), Revisions::default());
        for i in 0..5 {
            apply_command(&mut s, &mut r, &put_cmd("k", &i.to_string())).unwrap();
        }
        assert_eq!(
            apply_command(&mut s, &mut r, &Command::Compact { revision: 9 }).unwrap(),
            Outcome::Rejected("revision 9 is in the future (the store is at revision 5)".into())
        );
        assert_eq!(apply_command(&mut s, &mut r, &Command::Compact { revision: 3 }).unwrap(), Outcome::Compacted);
        assert_eq!(r, Revisions { revision: 5, compact_revision: 3 });
        assert_eq!(s.history.iter().map(|(rev, _)| *rev).collect::<Vec<_>>(), vec![3, 4, 5]);
        assert!(matches!(apply_command(&mut s, &mut r, &Command::Compact { revision: 3 }).unwrap(), Outcome::Rejected(_)));
    }

    #[test]
    fn auto_compaction_keeps_the_last_revisions_in_steps() {
        let (mut s, mut r) = (MemKv::default(), Revisions::default());
        for i in 0..110 {
            apply_command(&mut s, &mut r, &put_cmd("k", &i.to_string())).unwrap();
            auto_compact(&mut s, &mut r, 100);
        }
        // 110 revisions with retain 100 and a step of 10: not yet over 110.
        assert_eq!(r.compact_revision, 0);
        apply_command(&mut s, &mut r, &put_cmd("k", "x")).unwrap();
        auto_compact(&mut s, &mut r, 100);
        assert_eq!(r.compact_revision, 11);
        assert_eq!(s.history.first().map(|(rev, _)| *rev), Some(11));
    }
}
