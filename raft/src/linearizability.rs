//! A linearizability checker for a register with compare-and-swap, for the
//! fault tests' recorded histories (one register per key).
//!
//! The search is Wing and Gong's, with Lowe's memoisation as porcupine
//! does it: walk the history's calls and returns in time order; at a call,
//! try to linearize that operation now (if the model allows it and the
//! (linearized set, state) pair has not been tried before), else move on;
//! at a return whose operation is not yet linearized, undo the last choice.
//! Operations whose outcome is unknown (a write that timed out) return at
//! infinity and need not be linearized at all: they may have taken effect
//! at any time after their call, or never.

use std::collections::HashSet;

/// What a client did to the register.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    Read,
    Write(u64),
    /// Set to `to` if the value is `from`.
    Cas {
        from: u64,
        to: u64,
    },
}

/// What the client was told.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterResult {
    /// A read's value (`None`: the key is absent).
    Read(Option<u64>),
    Written,
    /// Whether the compare held.
    Cas(bool),
    /// The outcome is unknown: it may have taken effect, once, or never.
    Unknown,
}

/// One operation of a history; times are any monotonic clock's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    pub client: usize,
    pub op: RegisterOp,
    pub call: u64,
    pub ret: u64,
    pub result: RegisterResult,
}

/// Why a history is not linearizable, for the test's failure message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The operations that were linearized in the longest attempt.
    pub linearized_longest: Vec<Operation>,
    /// The first operation that could not be placed after them.
    pub stuck_at: Option<Operation>,
}

/// Searches at most this many steps before giving up: histories in the
/// tests are kept small enough to stay far below it.
const STEPS_MAX: u64 = 50_000_000;

/// The register's rule: whether `op` with `result` is possible from
/// `state`, and the state after it.
fn step(state: Option<u64>, op: &RegisterOp, result: &RegisterResult) -> Option<Option<u64>> {
    match (op, result) {
        (RegisterOp::Read, RegisterResult::Read(v)) => (state == *v).then_some(state),
        (RegisterOp::Read, RegisterResult::Unknown) => Some(state),
        (RegisterOp::Write(v), RegisterResult::Written | RegisterResult::Unknown) => Some(Some(*v)),
        (RegisterOp::Cas { from, to }, RegisterResult::Cas(true)) => (state == Some(*from)).then_some(Some(*to)),
        (RegisterOp::Cas { from, .. }, RegisterResult::Cas(false)) => (state != Some(*from)).then_some(state),
        (RegisterOp::Cas { from, to }, RegisterResult::Unknown) => Some(if state == Some(*from) { Some(*to) } else { state }),
        _ => None,
    }
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    time: u64,
}

/// Checks one register's history starting from `initial`. `Err` when no
/// order of the operations agrees with both real time and the register, or
/// when the search ran out of steps (the message says which).
pub fn check(initial: Option<u64>, history: &[Operation]) -> Result<(), String> {
    // Reads whose outcome is unknown tell nothing: leave them out.
    let ops: Vec<&Operation> = history.iter().filter(|o| !(o.op == RegisterOp::Read && o.result == RegisterResult::Unknown)).collect();
    let n = ops.len();
    let mut events: Vec<Event> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        events.push(Event { op: i, is_call: true, time: o.call });
        let ret = if o.result == RegisterResult::Unknown { u64::MAX } else { o.ret };
        events.push(Event { op: i, is_call: false, time: ret });
    }
    // At equal times returns go first: an operation that returned at t
    // precedes one called at t.
    events.sort_by_key(|e| (e.time, e.is_call, e.op));
    let must = ops.iter().filter(|o| o.result != RegisterResult::Unknown).count();

    // A doubly linked list over the events, so entries can be lifted out
    // and put back in O(1).
    let len = events.len();
    let mut next: Vec<usize> = (1..=len).collect();
    let mut prev: Vec<usize> = (0..len).map(|i| i.wrapping_sub(1)).collect();
    let head_sentinel = len; // index used as "before the first"
    next.push(if len > 0 { 0 } else { usize::MAX });
    prev.push(usize::MAX);
    if len > 0 {
        prev[0] = head_sentinel;
    }
    let mut return_of = vec![usize::MAX; n];
    for (i, e) in events.iter().enumerate() {
        if !e.is_call {
            return_of[e.op] = i;
        }
    }
    let lift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = nx;
        if nx < len {
            prev[nx] = p;
        }
    };
    let unlift = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, nx) = (prev[i], next[i]);
        next[p] = i;
        if nx < len {
            prev[nx] = i;
        }
    };

    let words = n.div_ceil(64).max(1);
    let mut linearized = vec![0u64; words];
    let mut done_must = 0usize;
    let mut cache: HashSet<(Vec<u64>, Option<u64>)> = HashSet::new();
    // (call event index, state before it)
    let mut stack: Vec<(usize, Option<u64>)> = Vec::new();
    let mut state = initial;
    let mut entry = next[head_sentinel];
    let mut steps = 0u64;
    let mut longest: Vec<usize> = Vec::new();
    let mut stuck: Option<usize> = None;

    while done_must < must {
        steps += 1;
        if steps > STEPS_MAX {
            return Err(format!("gave up after {STEPS_MAX} steps on a history of {n} operations: make the history smaller"));
        }
        // Past the end (only returns at infinity were left), or at a return
        // whose call is not linearized: the choice made last was wrong.
        if entry < len {
            let e = events[entry];
            if e.is_call {
                let o = ops[e.op];
                if let Some(after) = step(state, &o.op, &o.result) {
                    let mut bits = linearized.clone();
                    bits[e.op / 64] |= 1 << (e.op % 64);
                    if cache.insert((bits.clone(), after)) {
                        stack.push((entry, state));
                        linearized = bits;
                        state = after;
                        if o.result != RegisterResult::Unknown {
                            done_must += 1;
                        }
                        lift(&mut next, &mut prev, entry);
                        lift(&mut next, &mut prev, return_of[e.op]);
                        if stack.len() > longest.len() {
                            longest = stack.iter().map(|(c, _)| events[*c].op).collect();
                            stuck = None;
                        }
                        entry = next[head_sentinel];
                        continue;
                    }
                }
                entry = next[entry];
                continue;
            }
            if ops[e.op].result == RegisterResult::Unknown {
                // An operation of unknown outcome need not have happened.
                entry = next[entry];
                continue;
            }
            if stack.len() == longest.len() && stuck.is_none() {
                stuck = Some(e.op);
            }
        }
        let Some((call, before)) = stack.pop() else {
            return Err(violation_message(&ops, &longest, stuck));
        };
        let op = events[call].op;
        if ops[op].result != RegisterResult::Unknown {
            done_must -= 1;
        }
        linearized[op / 64] &= !(1 << (op % 64));
        state = before;
        unlift(&mut next, &mut prev, return_of[op]);
        unlift(&mut next, &mut prev, call);
        entry = next[call];
    }
    if done_must == must {
        Ok(())
    } else {
        Err(violation_message(&ops, &longest, stuck))
    }
}

fn violation_message(ops: &[&Operation], longest: &[usize], stuck: Option<usize>) -> String {
    let shown: Vec<String> = longest.iter().map(|i| format!("{:?}", ops[*i])).collect();
    format!(
        "not linearizable: the longest order found was [{}], and then {} could not be placed",
        shown.join(", "),
        stuck.map_or("nothing".to_string(), |i| format!("{:?}", ops[i]))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, op: RegisterOp, call: u64, ret: u64, result: RegisterResult) -> Operation {
        Operation { client, op, call, ret, result }
    }
    use RegisterOp::*;
    use RegisterResult as R;

    #[test]
    fn sequential_and_overlapping_histories_that_fit_pass() {
        let h = vec![
            op(0, Write(1), 0, 10, R::Written),
            op(1, Read, 11, 12, R::Read(Some(1))),
            op(0, Cas { from: 1, to: 2 }, 13, 20, R::Cas(true)),
            // Overlaps the CAS: may see either value.
            op(1, Read, 14, 15, R::Read(Some(1))),
            op(2, Read, 16, 25, R::Read(Some(2))),
            op(1, Cas { from: 1, to: 3 }, 26, 27, R::Cas(false)),
        ];
        assert_eq!(check(None, &h), Ok(()));
    }

    #[test]
    fn a_stale_read_is_caught() {
        let h = vec![op(0, Write(1), 0, 10, R::Written), op(0, Write(2), 11, 20, R::Written), op(1, Read, 21, 22, R::Read(Some(1)))];
        assert!(check(None, &h).unwrap_err().starts_with("not linearizable"));
    }

    #[test]
    fn the_zombie_write_of_the_issue_is_caught() {
        // (3,v0) (4,A) (5,B) (6,A): A acknowledged, B acknowledged after it,
        // then a read sees A again.
        let h = vec![
            op(0, Write(10), 0, 1, R::Written),
            op(0, Write(11), 2, 3, R::Written),
            op(0, Write(12), 4, 5, R::Written),
            op(1, Read, 6, 7, R::Read(Some(11))),
        ];
        assert!(check(None, &h).is_err());
    }

    #[test]
    fn an_unknown_write_may_take_effect_late_or_never() {
        let late = vec![
            op(0, Write(1), 0, 1, R::Written),
            op(1, Write(2), 2, 3, R::Unknown),
            op(0, Read, 4, 5, R::Read(Some(1))),
            op(0, Read, 6, 7, R::Read(Some(2))),
        ];
        assert_eq!(check(None, &late), Ok(()));
        let never = vec![op(1, Write(2), 0, 1, R::Unknown), op(0, Read, 4, 5, R::Read(None))];
        assert_eq!(check(None, &never), Ok(()));
        // But only once: it cannot come back after a later write.
        let twice = vec![
            op(1, Write(2), 0, 1, R::Unknown),
            op(0, Read, 2, 3, R::Read(Some(2))),
            op(0, Write(3), 4, 5, R::Written),
            op(0, Read, 6, 7, R::Read(Some(2))),
        ];
        assert!(check(None, &twice).is_err());
    }

    #[test]
    fn a_failed_cas_must_have_seen_another_value() {
        let h = vec![op(0, Write(1), 0, 1, R::Written), op(1, Cas { from: 1, to: 2 }, 2, 3, R::Cas(false))];
        assert!(check(None, &h).is_err());
    }

    #[test]
    fn many_concurrent_clients_finish_quickly() {
        // 8 clients, 200 overlapping writes and reads that fit one order.
        let mut h = Vec::new();
        for i in 0..200u64 {
            let c = (i % 8) as usize;
            h.push(op(c, Write(i), i * 10, i * 10 + 15, R::Written));
            h.push(op(c, Read, i * 10 + 16, i * 10 + 17, R::Read(Some(i))));
        }
        // The reads overlap the next write; all fit.
        assert_eq!(check(None, &h), Ok(()));
    }
}
