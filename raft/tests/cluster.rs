//! In-process cluster tests: real members, real QUIC on loopback, real
//! RocksDB in temporary directories, with the transport's fault table to
//! drop traffic between chosen members.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use flotilla_raft::{Consistency, Event, EventKind, Faults, Limits, Member, StartMode, StoreConfig, StoreError};

const DEADLINE: Duration = Duration::from_secs(30);

fn free_addr() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral port");
    s.local_addr().expect("local address").to_string()
}

fn test_limits() -> Limits {
    Limits { client_rpc_timeout_ms: 4_000, join_timeout_ms: 20_000, ..Limits::default() }
}

/// Polls `check` until it holds or the deadline passes.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = tokio::time::Instant::now();
    while start.elapsed() < DEADLINE {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

struct Cluster {
    _root: tempfile::TempDir,
    dirs: Vec<std::path::PathBuf>,
    addrs: Vec<String>,
    members: Vec<Option<Arc<Member>>>,
    faults: Faults,
    limits: Limits,
}

impl Cluster {
    async fn start(n: usize, limits: Limits) -> Cluster {
        let root = tempfile::tempdir().expect("tempdir");
        let faults = Faults::default();
        let mut cluster = Cluster {
            dirs: (1..=n).map(|i| root.path().join(format!("m{i}"))).collect(),
            addrs: (0..n).map(|_| free_addr()).collect(),
            _root: root,
            members: Vec::new(),
            faults,
            limits,
        };
        let first = cluster.open(1, StartMode::Bootstrap).await.expect("bootstrap member 1");
        cluster.members.push(Some(first.clone()));
        let token = first.token().to_string();
        for id in 2..=n as u64 {
            let m = cluster
                .open(id, StartMode::Join { via: cluster.addrs[0].clone(), token: token.clone() })
                .await
                .unwrap_or_else(|e| panic!("member {id} joins: {e}"));
            cluster.members.push(Some(m));
        }
        cluster
    }

    async fn open(&self, id: u64, start: StartMode) -> Result<Arc<Member>, flotilla_raft::StartError> {
        let i = (id - 1) as usize;
        let mut config = StoreConfig::new(id, &self.dirs[i], &self.addrs[i], start);
        config.limits = self.limits.clone();
        config.faults = self.faults.clone();
        Member::start(config).await
    }

    fn member(&self, id: u64) -> Arc<Member> {
        self.members[(id - 1) as usize].clone().expect("member is running")
    }

    fn running(&self) -> Vec<Arc<Member>> {
        self.members.iter().flatten().cloned().collect()
    }

    async fn leader(&self) -> Arc<Member> {
        let mut found = None;
        eventually("a leader among the running members", || {
            found = self.running().into_iter().find(|m| m.is_leader());
            let ok = found.is_some();
            async move { ok }
        })
        .await;
        found.expect("leader found")
    }

    async fn stop(&mut self, id: u64) {
        if let Some(m) = self.members[(id - 1) as usize].take() {
            m.shutdown().await;
        }
    }

    async fn restart(&mut self, id: u64) {
        let m = self.open(id, StartMode::Restart).await.unwrap_or_else(|e| panic!("restart member {id}: {e}"));
        self.members[(id - 1) as usize] = Some(m);
    }
}

/// Reads a key; a retryable failure (an election in progress) is retried
/// until the deadline, any other failure fails the test.
async fn value(m: &Member, key: &str, consistency: Consistency) -> Option<String> {
    let start = tokio::time::Instant::now();
    loop {
        match m.get(key.as_bytes(), consistency).await {
            Ok((kv, _)) => return kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
            Err(e) if e.is_retryable() && start.elapsed() < DEADLINE => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("read of {key} on member {} failed: {e}", m.id()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn elects_a_leader_and_replicates_writes_sent_to_any_member() {
    let cluster = Cluster::start(3, test_limits()).await;
    let leader = cluster.leader().await;
    let follower = cluster.running().into_iter().find(|m| m.id() != leader.id()).expect("a follower");
    // A write sent to a follower is carried to the leader.
    let r = follower.put("greeting", "hello").await.expect("put via follower");
    assert!(r.revision >= 1);
    for m in cluster.running() {
        assert_eq!(value(&m, "greeting", Consistency::Linearizable).await.as_deref(), Some("hello"), "member {}", m.id());
    }
    let members = leader.members();
    assert_eq!(members.iter().map(|m| m.id).collect::<BTreeSet<_>>(), BTreeSet::from([1, 2, 3]));
    assert_eq!(members.iter().filter(|m| m.role == flotilla_raft::Role::Leader).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_acknowledged_write_is_lost_when_the_leader_dies_mid_stream() {
    let mut cluster = Cluster::start(3, test_limits()).await;
    let leader = cluster.leader().await;
    let leader_id = leader.id();
    drop(leader);
    let writer_member = cluster.running().into_iter().find(|m| m.id() != leader_id).expect("a follower");
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..300u32 {
            // Failures during the election are expected; only acks count.
            if writer_member.put(format!("stream/{i:04}"), i.to_string()).await.is_ok() {
                acked.push(i);
            }
        }
        acked
    });
    // Let some writes through, then kill the leader in the middle.
    let probe = cluster.member(if leader_id == 1 { 2 } else { 1 });
    eventually("50 writes applied", || {
        let p = probe.clone();
        async move { p.revisions().revision >= 50 }
    })
    .await;
    cluster.stop(leader_id).await;
    let acked = writer.await.expect("writer task");
    assert!(acked.len() > 100, "writes kept being acknowledged after the failover ({} acked)", acked.len());
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader.id(), leader_id);
    for m in cluster.running() {
        for i in &acked {
            assert_eq!(
                value(&m, &format!("stream/{i:04}"), Consistency::Linearizable).await,
                Some(i.to_string()),
                "acknowledged write {i} missing on member {}",
                m.id()
            );
        }
    }
    // The old leader comes back from its directory and catches up.
    cluster.restart(leader_id).await;
    let back = cluster.member(leader_id);
    let last = format!("stream/{:04}", acked.last().expect("some writes"));
    eventually("restarted member caught up", || {
        let (b, k) = (back.clone(), last.clone());
        async move { value(&b, &k, Consistency::Serializable).await.is_some() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minority_cannot_commit_while_the_majority_goes_on() {
    let limits = Limits { client_rpc_timeout_ms: 2_000, ..test_limits() };
    let cluster = Cluster::start(3, limits).await;
    let leader = cluster.leader().await;
    let isolated = cluster.running().into_iter().find(|m| m.id() != leader.id()).expect("a follower");
    let others: Vec<u64> = cluster.running().iter().map(|m| m.id()).filter(|id| *id != isolated.id()).collect();
    cluster.faults.partition(isolated.id(), &others);

    // The isolated member cannot get a write committed, and says so in bounded time.
    let started = std::time::Instant::now();
    let err = isolated.put("minority", "x").await.expect_err("a minority must not commit");
    assert!(err.is_retryable(), "retryable error expected, got {err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Nor a linearizable read.
    assert!(isolated.get(b"minority", Consistency::Linearizable).await.expect_err("no linearizable read in a minority").is_retryable());

    // The majority keeps committing.
    let majority_leader = cluster.leader().await;
    let majority_leader = if majority_leader.id() == isolated.id() {
        // The isolated member may still believe it leads; ask the others.
        let mut l = None;
        eventually("a leader in the majority", || {
            l = cluster.running().into_iter().find(|m| m.id() != isolated.id() && m.is_leader());
            let ok = l.is_some();
            async move { ok }
        })
        .await;
        l.expect("majority leader")
    } else {
        majority_leader
    };
    majority_leader.put("majority", "y").await.expect("majority commits");
    assert_eq!(value(&isolated, "minority", Consistency::Serializable).await, None);

    cluster.faults.heal();
    eventually("healed member sees the majority's write", || {
        let i = isolated.clone();
        async move { value(&i, "majority", Consistency::Serializable).await.as_deref() == Some("y") }
    })
    .await;
    assert_eq!(value(&isolated, "minority", Consistency::Linearizable).await, None, "the minority's write never happened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_far_behind_catches_up_from_a_snapshot() {
    let limits = Limits { snapshot_every_entries: 100, log_kept_behind_snapshot: 10, ..test_limits() };
    let cluster = Cluster::start(3, limits).await;
    let leader = cluster.leader().await;
    let lagging = cluster.running().into_iter().find(|m| m.id() != leader.id()).expect("a follower");
    let others: Vec<u64> = cluster.running().iter().map(|m| m.id()).filter(|id| *id != lagging.id()).collect();
    cluster.faults.partition(lagging.id(), &others);
    let writer = cluster.leader().await;
    for i in 0..400u32 {
        writer.put(format!("bulk/{i:04}"), format!("v{i}")).await.expect("write while a follower is cut off");
    }
    // The leader's log behind its snapshot is purged, so the follower can
    // only catch up by installing the snapshot.
    eventually("leader purged its log", || {
        let w = writer.clone();
        async move { w.raft().metrics().borrow().purged.is_some() }
    })
    .await;
    cluster.faults.heal();
    eventually("lagging follower caught up", || {
        let l = lagging.clone();
        async move { value(&l, "bulk/0399", Consistency::Serializable).await.as_deref() == Some("v399") }
    })
    .await;
    assert!(lagging.raft().metrics().borrow().snapshot.is_some(), "the follower installed a snapshot");
    let page = lagging.range(b"bulk/", 0, None, Consistency::Serializable).await.expect("range");
    assert_eq!(page.kvs.len(), 400);
    assert_eq!(lagging.revisions(), writer.revisions());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_member_restarts_from_disk_with_all_data() {
    let mut cluster = Cluster::start(3, test_limits()).await;
    let leader = cluster.leader().await;
    for i in 0..50u32 {
        leader.put(format!("durable/{i}"), format!("{i}")).await.expect("put");
    }
    leader.delete("durable/7", false).await.expect("delete");
    let revs = leader.revisions();
    drop(leader);
    for id in 1..=3 {
        cluster.stop(id).await;
    }
    for id in 1..=3 {
        cluster.restart(id).await;
    }
    let leader = cluster.leader().await;
    let page = leader.range(b"durable/", 0, None, Consistency::Linearizable).await.expect("range after restart");
    assert_eq!(page.kvs.len(), 49);
    assert_eq!(value(&leader, "durable/7", Consistency::Linearizable).await, None);
    assert_eq!(value(&leader, "durable/42", Consistency::Linearizable).await.as_deref(), Some("42"));
    assert!(leader.revisions().revision >= revs.revision);
    // And it takes writes again.
    leader.put("after-restart", "ok").await.expect("write after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_that_disconnects_and_resumes_sees_every_event_once_in_order() {
    let cluster = Cluster::start(3, test_limits()).await;
    let leader = cluster.leader().await;
    let follower = cluster.running().into_iter().find(|m| m.id() != leader.id()).expect("a follower");
    let start_rev = leader.revisions().revision + 1;
    let writer = {
        let leader = leader.clone();
        tokio::spawn(async move {
            for i in 0..200u32 {
                leader.put(format!("w/{}", i % 20), i.to_string()).await.expect("put");
                if i % 50 == 49 {
                    leader.delete(format!("w/{}", i % 20), false).await.expect("delete");
                }
            }
        })
    };
    let mut seen: Vec<Event> = Vec::new();
    let mut from = start_rev;
    // Watch on a follower in short sessions, dropping the watcher each time.
    // The last delete comes after the last put: wait for all 204 events.
    while seen.len() < 204 {
        let mut w = follower.watch(b"w/".to_vec(), from).expect("open watch");
        // Up to three batches per session, but none after the last event:
        // nothing more would come.
        for _ in 0..3 {
            if seen.len() >= 204 {
                break;
            }
            match tokio::time::timeout(DEADLINE, w.next()).await.expect("watch event in time").expect("watch") {
                flotilla_raft::WatchItem::Events { revision, events } => {
                    seen.extend(events);
                    from = revision + 1;
                }
            }
        }
    }
    writer.await.expect("writer");
    let revisions: Vec<u64> = seen.iter().map(|e| e.kv.mod_revision).collect();
    let mut sorted = revisions.clone();
    sorted.dedup();
    assert_eq!(revisions, sorted, "events strictly in order and never twice");
    assert_eq!(seen.iter().filter(|e| e.kind == EventKind::Put).count(), 200);
    assert_eq!(seen.iter().filter(|e| e.kind == EventKind::Delete).count(), 4);
    assert_eq!(revisions.first(), Some(&start_rev));
    assert_eq!(revisions.len(), 204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compaction_makes_old_watches_answer_compacted() {
    let cluster = Cluster::start(1, test_limits()).await;
    let m = cluster.leader().await;
    for i in 0..10 {
        m.put("c", format!("{i}")).await.expect("put");
    }
    m.compact(6).await.expect("compact");
    match m.watch(b"c".to_vec(), 3) {
        Err(StoreError::Compacted { requested: 3, compact_revision: 6 }) => {}
        Err(other) => panic!("expected Compacted, got {other}"),
        Ok(_) => panic!("expected Compacted, got a watch"),
    }
    let mut w = m.watch(b"c".to_vec(), 6).expect("watch from the compaction point");
    match w.next().await.expect("history") {
        flotilla_raft::WatchItem::Events { events, .. } => assert_eq!(events[0].kv.mod_revision, 6),
    }
    assert!(matches!(m.compact(5).await, Err(StoreError::Invalid(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transactions_compare_and_swap_atomically() {
    use flotilla_raft::{Compare, CompareOp, CompareTarget, Outcome, TxnOp};
    let cluster = Cluster::start(3, test_limits()).await;
    let m = cluster.member(2);
    let created = m
        .txn(
            vec![Compare { key: b"lock".to_vec(), op: CompareOp::Equal, target: CompareTarget::CreateRevision(0) }],
            vec![TxnOp::Put { key: b"lock".to_vec(), value: b"owner-a".to_vec() }],
            vec![],
        )
        .await
        .expect("txn");
    assert!(matches!(created.outcome, Outcome::Txn { succeeded: true, .. }));
    let second = m
        .txn(
            vec![Compare { key: b"lock".to_vec(), op: CompareOp::Equal, target: CompareTarget::CreateRevision(0) }],
            vec![TxnOp::Put { key: b"lock".to_vec(), value: b"owner-b".to_vec() }],
            vec![TxnOp::Get { key: b"lock".to_vec() }],
        )
        .await
        .expect("txn");
    match second.outcome {
        Outcome::Txn { succeeded: false, results } => match &results[0] {
            flotilla_raft::TxnOpResult::Get { kv: Some(kv) } => assert_eq!(kv.value, b"owner-a"),
            other => panic!("unexpected result {other:?}"),
        },
        other => panic!("unexpected outcome {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_gets_clear_errors_and_changes_nothing() {
    let cluster = Cluster::start(1, test_limits()).await;
    let m = cluster.leader().await;
    let before = m.revisions();
    let big = vec![0u8; m.limits().value_size_max_bytes + 1];
    match m.put("big", big).await {
        Err(StoreError::ValueTooLarge { .. }) => {}
        other => panic!("expected ValueTooLarge, got {other:?}"),
    }
    assert!(matches!(m.put("", "v").await, Err(StoreError::Invalid(_))));
    assert_eq!(m.revisions(), before);

    // A join with a wrong token is refused and leaves no member behind.
    let root = tempfile::tempdir().expect("tempdir");
    let real = m.token().to_string();
    let wrong = format!("{}{}", &real[..real.len() - 32], "0".repeat(32));
    let mut config =
        StoreConfig::new(9, root.path().join("intruder"), free_addr(), StartMode::Join { via: m.peer_addr().to_string(), token: wrong });
    config.limits = test_limits();
    let err = Member::start(config).await.expect_err("wrong token must be refused");
    assert!(err.to_string().contains("wrong token"), "{err}");
    assert!(!root.path().join("intruder").join("member.json").exists());
    assert_eq!(m.members().len(), 1);

    // A token of another cluster does not even get past TLS.
    let other_ca = flotilla_raft::tls::ClusterCa::generate("other").expect("ca");
    let foreign = flotilla_raft::tls::JoinToken::new(&other_ca).expect("token").to_string();
    let client = flotilla_raft::StoreClient::new(vec![m.peer_addr().to_string()], &foreign).expect("client");
    let err = client.put(b"k", b"v").await.expect_err("foreign token refused");
    assert!(!err.is_retryable() || err.to_string().contains("another cluster"), "{err}");

    // A missing data directory, without --bootstrap or --join.
    let config = StoreConfig::new(5, root.path().join("missing"), free_addr(), StartMode::Restart);
    let err = Member::start(config).await.expect_err("missing data dir");
    assert!(err.to_string().contains("does not exist"), "{err}");

    // A corrupt member.json.
    let corrupt = root.path().join("corrupt");
    std::fs::create_dir_all(&corrupt).expect("mkdir");
    std::fs::write(corrupt.join("member.json"), "{not json").expect("write");
    let err = Member::start(StoreConfig::new(5, &corrupt, free_addr(), StartMode::Restart)).await.expect_err("corrupt");
    assert!(err.to_string().contains("corrupt"), "{err}");

    // A peer that does not answer: bounded wait, error names the address.
    let silent = free_addr();
    let client = flotilla_raft::StoreClient::new(vec![silent.clone()], &real).expect("client");
    let started = std::time::Instant::now();
    let err = client.put(b"k", b"v").await.expect_err("nobody listens");
    assert!(err.to_string().contains(&silent), "{err}");
    assert!(started.elapsed() < Duration::from_secs(15));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_can_be_removed_and_the_rest_go_on() {
    let mut cluster = Cluster::start(3, test_limits()).await;
    let leader = cluster.leader().await;
    let victim = cluster.running().into_iter().map(|m| m.id()).find(|id| *id != leader.id()).expect("a follower");
    leader.remove_member(victim).await.expect("remove a follower");
    let ids: BTreeSet<u64> = leader.members().iter().map(|m| m.id).collect();
    assert!(!ids.contains(&victim), "{ids:?}");
    cluster.stop(victim).await;
    leader.put("after-removal", "ok").await.expect("two members still commit");
    assert!(matches!(leader.remove_member(99).await, Err(StoreError::Membership(_))));
    // The removed id cannot simply come back under a different address.
    let other = cluster.running().into_iter().find(|m| m.id() != leader.id()).expect("the other member");
    assert!(other.members().iter().all(|m| m.id != victim));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_watcher_is_cut_off_and_never_holds_writers_back() {
    let limits = Limits { watch_queue_max: 8, ..test_limits() };
    let cluster = Cluster::start(1, limits).await;
    let m = cluster.leader().await;
    let mut slow = m.watch(b"s/".to_vec(), 0).expect("watch");
    let start = tokio::time::Instant::now();
    for i in 0..100 {
        m.put(format!("s/{i}"), "v").await.expect("writes go on while the watcher sleeps");
    }
    assert!(start.elapsed() < Duration::from_secs(20));
    match slow.next().await {
        Err(StoreError::WatchOverflow { queue_max: 8 }) => {}
        other => panic!("expected WatchOverflow, got {other:?}"),
    }
    // It resumes from history where it left off.
    let mut resumed = m.watch(b"s/".to_vec(), slow.progress_revision() + 1).expect("resume");
    let flotilla_raft::WatchItem::Events { events, .. } = resumed.next().await.expect("history");
    assert_eq!(events.first().map(|e| e.kv.key.clone()), Some(b"s/0".to_vec()));
}

// ---- Exactly-once writes, zombies, a dead member, stale watches (issue 10) ----

use flotilla_raft::session::Session;
use flotilla_raft::{Command, CompareOp, CompareTarget, Outcome, TxnOp};

fn put(key: &str, value: &str) -> Command {
    Command::Put { key: key.into(), value: value.into() }
}

async fn version_of(m: &Member, key: &str) -> u64 {
    let (kv, _) = m.get(key.as_bytes(), Consistency::Linearizable).await.expect("read");
    kv.map_or(0, |kv| kv.version)
}

/// A write whose reply was lost is sent again, to other members, under
/// the same session: every copy answers the first result and the key is
/// written once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_retried_on_every_member_applies_once() {
    let cluster = Cluster::start(3, test_limits()).await;
    let session = Session { client: 0xfeed, seq: 1, ack_below: 1 };
    let first = cluster.member(2).propose_for(session, put("once", "v1")).await.expect("first try");
    for id in [1, 3, 2] {
        let again = cluster.member(id).propose_for(session, put("once", "v1")).await.expect("retry");
        assert_eq!(again, first, "a retry through member {id} must answer the first result");
    }
    assert_eq!(version_of(&cluster.member(1), "once").await, 1, "the key was written once");
    let (_, revision) = cluster.member(3).get(b"once", Consistency::Linearizable).await.expect("read");
    assert_eq!(revision, first.revision, "the retries made no revision of their own");
}

/// The zombie of the issue: a copy of a write that was answered (or given
/// up) arrives after the client's later writes. It must not take the key
/// back to the older value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_zombie_copy_of_an_answered_write_is_refused() {
    let cluster = Cluster::start(3, test_limits()).await;
    let client = 0xabcd;
    cluster.member(1).propose_for(Session { client, seq: 1, ack_below: 1 }, put("z", "A")).await.expect("A");
    cluster.member(2).propose_for(Session { client, seq: 2, ack_below: 2 }, put("z", "B")).await.expect("B");
    let zombie = cluster.member(3).propose_for(Session { client, seq: 1, ack_below: 1 }, put("z", "A")).await;
    assert!(matches!(zombie, Err(StoreError::Indeterminate(_))), "the zombie must be refused, got {zombie:?}");
    assert_eq!(value(&cluster.member(1), "z", Consistency::Linearizable).await.as_deref(), Some("B"));
    assert_eq!(version_of(&cluster.member(1), "z").await, 2);
}

/// A compare-and-swap that succeeded and whose reply was lost is retried:
/// the retry must answer "succeeded", not a failed compare (which the API
/// would turn into a 409 that makes Kubernetes clients apply twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_compare_and_swap_answers_its_first_success() {
    let cluster = Cluster::start(3, test_limits()).await;
    let created = cluster.member(1).put("cas", "v1").await.expect("create").revision;
    let cas = Command::Txn(flotilla_raft::types::Txn {
        compares: vec![flotilla_raft::Compare { key: "cas".into(), op: CompareOp::Equal, target: CompareTarget::ModRevision(created) }],
        success: vec![TxnOp::Put { key: "cas".into(), value: "v2".into() }],
        failure: vec![],
    });
    let session = Session { client: 0x5eed, seq: 7, ack_below: 7 };
    let first = cluster.member(2).propose_for(session, cas.clone()).await.expect("cas");
    assert!(matches!(first.outcome, Outcome::Txn { succeeded: true, .. }));
    let retry = cluster.member(3).propose_for(session, cas).await.expect("retry");
    assert_eq!(retry, first);
}

/// With one of three members gone, every write and linearizable read
/// through the others succeeds (no 503 while a majority is up).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_member_down_costs_no_write_or_read() {
    let mut cluster = Cluster::start(3, test_limits()).await;
    let leader = cluster.leader().await.id();
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let dead = (1..=3).find(|id| *id != leader && *id != follower).expect("a third member");
    cluster.stop(dead).await;
    for i in 0..100 {
        let via = if i % 2 == 0 { leader } else { follower };
        let m = cluster.member(via);
        m.put(format!("k{i}"), format!("v{i}")).await.unwrap_or_else(|e| panic!("write {i} through member {via}: {e}"));
        let (kv, _) =
            m.get(format!("k{i}").as_bytes(), Consistency::Linearizable).await.unwrap_or_else(|e| panic!("read {i} through {via}: {e}"));
        assert_eq!(kv.map(|kv| kv.value), Some(format!("v{i}").into_bytes()));
    }
}

/// A member cut off from the others ends its watches with `Stale` (and
/// refuses to count itself current) instead of serving a watch that
/// silently stops moving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_on_a_cut_off_member_ends_as_stale() {
    let cluster = Cluster::start(3, test_limits()).await;
    let leader = cluster.leader().await.id();
    let isolated = (1..=3).find(|id| *id != leader).expect("a follower");
    let member = cluster.member(isolated);
    let mut watch = member.watch(b"w/".to_vec(), 0).expect("watch");
    let others: Vec<u64> = (1..=3).filter(|id| *id != isolated).collect();
    cluster.faults.partition(isolated, &others);
    let ended = tokio::time::timeout(DEADLINE, watch.next()).await.expect("the watch ended within the deadline");
    assert!(matches!(ended, Err(StoreError::Stale { member, .. }) if member == isolated), "got {ended:?}");
    assert!(matches!(member.check_current().await, Err(StoreError::Stale { .. })));
    cluster.faults.heal();
    eventually("the healed member is current again", || {
        let m = member.clone();
        async move { m.check_current().await.is_ok() }
    })
    .await;
}
