//! A Jepsen-style test of the store: three `flotilla server` processes,
//! concurrent clients doing linearizable reads, writes and compare-and-
//! swaps on a few keys, a watcher, and nemeses: kill -9 and restart of the
//! leader and of a follower, SIGSTOP and SIGCONT of the leader, a rolling
//! restart, and lost replies (one client reaches a member through a UDP
//! relay that drops that member's answers for a while, so the client
//! retries a write that was applied).
//!
//! Checked at the end, over the whole recorded history:
//! - every key's history is linearizable (a register with CAS);
//! - no value was applied twice, and no write answered as failed was applied;
//! - the watch saw every revision once, in order, equal to the store's history;
//! - all members converge to the same revision and values.
//!
//! It runs for `FLOTILLA_JEPSEN_SECS` seconds of faults (30 by default,
//! the bounded form CI runs; set it higher for a long run).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use flotilla_raft::linearizability::{check, Operation, RegisterOp, RegisterResult};
use flotilla_raft::{Compare, CompareOp, CompareTarget, EventKind, Outcome, Role, StoreClient, StoreError, TxnOp};

mod common;
use common::StoreServer;

const DEADLINE: Duration = Duration::from_secs(60);
const KEYS: [&str; 3] = ["j/a", "j/b", "j/c"];
const CLIENTS: usize = 4;

fn free_addr() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral port");
    s.local_addr().expect("local address").to_string()
}

/// A UDP relay in front of one member. While `drop_replies` is set, the
/// member's datagrams to the client are dropped: the member applies what
/// it is sent and its answer never arrives.
struct Relay {
    addr: String,
    drop_replies: Arc<std::sync::atomic::AtomicBool>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Relay {
    fn start(target: &str) -> Relay {
        let front = std::net::UdpSocket::bind("127.0.0.1:0").expect("relay front");
        let back = std::net::UdpSocket::bind("127.0.0.1:0").expect("relay back");
        back.connect(target).expect("relay target");
        for s in [&front, &back] {
            s.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        }
        let addr = front.local_addr().expect("addr").to_string();
        let drop_replies = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client: Arc<Mutex<Option<std::net::SocketAddr>>> = Arc::default();
        let (front2, back2) = (front.try_clone().expect("clone"), back.try_clone().expect("clone"));
        let (stop1, stop2, client2, drops) = (stop.clone(), stop.clone(), client.clone(), drop_replies.clone());
        let up = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop1.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((n, from)) = front.recv_from(&mut buf) {
                    *client.lock().expect("lock") = Some(from);
                    let _ = back.send(&buf[..n]);
                }
            }
        });
        let down = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(n) = back2.recv(&mut buf) {
                    if drops.load(std::sync::atomic::Ordering::Relaxed) {
                        continue;
                    }
                    if let Some(to) = *client2.lock().expect("lock") {
                        let _ = front2.send_to(&buf[..n], to);
                    }
                }
            }
        });
        Relay { addr, drop_replies, stop, threads: vec![up, down] }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn wait_for_file(path: &std::path::Path) -> String {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.trim().is_empty() {
                return s.trim().to_string();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{} never appeared", path.display());
}

async fn leader_of(admin: &StoreClient) -> Option<u64> {
    admin.members().await.ok()?.into_iter().find(|m| m.role == Role::Leader).map(|m| m.id)
}

/// One change as the watcher saw it: (revision, kind, key, value).
type Seen = (u64, EventKind, String, u64);

/// What one client did, with the values of writes that definitely failed.
#[derive(Default)]
struct Recorded {
    ops: Vec<(String, Operation)>,
    failed_values: Vec<(String, u64)>,
}

fn parse(v: &[u8]) -> u64 {
    std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)
}

async fn client_loop(n: usize, client: StoreClient, start: Instant, until: Instant) -> Recorded {
    let mut rec = Recorded::default();
    let mut counter = 0u64;
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64 ^ (n as u64 + 1);
    let mut rand = move |m: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state % m
    };
    let now = |start: Instant| start.elapsed().as_nanos() as u64;
    while Instant::now() < until {
        let key = KEYS[rand(KEYS.len() as u64) as usize];
        let call = now(start);
        let (op, result) = match rand(3) {
            0 => {
                let r = client.get(key.as_bytes(), true).await;
                let result = match r {
                    Ok((kv, _)) => RegisterResult::Read(kv.map(|kv| parse(&kv.value))),
                    Err(_) => RegisterResult::Unknown,
                };
                (RegisterOp::Read, result)
            }
            1 => {
                counter += 1;
                let v = (n as u64 + 1) * 1_000_000 + counter;
                let result = match client.put(key.as_bytes(), v.to_string().as_bytes()).await {
                    Ok(_) => RegisterResult::Written,
                    Err(StoreError::Indeterminate(_)) => RegisterResult::Unknown,
                    Err(_) => {
                        rec.failed_values.push((key.to_string(), v));
                        continue;
                    }
                };
                (RegisterOp::Write(v), result)
            }
            _ => {
                // CAS from what a serializable read suggests, so both
                // outcomes happen.
                let from = match client.get(key.as_bytes(), false).await {
                    Ok((Some(kv), _)) => parse(&kv.value),
                    _ => continue,
                };
                counter += 1;
                let to = (n as u64 + 1) * 1_000_000 + counter;
                let compares = vec![Compare {
                    key: key.as_bytes().to_vec(),
                    op: CompareOp::Equal,
                    target: CompareTarget::Value(Some(from.to_string().into_bytes())),
                }];
                let success = vec![TxnOp::Put { key: key.as_bytes().to_vec(), value: to.to_string().into_bytes() }];
                let call = now(start);
                let result = match client.txn(compares, success, vec![]).await {
                    Ok(r) => match r.outcome {
                        Outcome::Txn { succeeded, .. } => RegisterResult::Cas(succeeded),
                        other => panic!("unexpected CAS outcome {other:?}"),
                    },
                    Err(StoreError::Indeterminate(_)) => RegisterResult::Unknown,
                    Err(_) => {
                        rec.failed_values.push((key.to_string(), to));
                        continue;
                    }
                };
                let ret = now(start);
                rec.ops.push((key.to_string(), Operation { client: n, op: RegisterOp::Cas { from, to }, call, ret, result }));
                continue;
            }
        };
        let ret = now(start);
        rec.ops.push((key.to_string(), Operation { client: n, op, call, ret, result }));
        tokio::time::sleep(Duration::from_millis(5 + rand(10))).await;
    }
    rec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn histories_under_kills_pauses_restarts_and_lost_replies_are_linearizable_and_exact() {
    let fault_secs: u64 = std::env::var("FLOTILLA_JEPSEN_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let root = tempfile::tempdir().expect("tempdir");
    let mut servers: Vec<StoreServer> = (1..=3).map(|id| StoreServer::new(id, root.path().join(format!("m{id}")), free_addr())).collect();
    servers[0].spawn(&["--bootstrap"]);
    let token = wait_for_file(&servers[0].dir.join("join-token"));
    let first = servers[0].peer.clone();
    for s in servers.iter_mut().skip(1) {
        s.spawn(&["--join", &first, "--token", &token]);
    }
    let peers: Vec<String> = servers.iter().map(|s| s.peer.clone()).collect();
    let admin = StoreClient::new(peers.clone(), &token).expect("client");
    let start = Instant::now();
    loop {
        if let Ok(m) = admin.members().await {
            if m.len() == 3 && m.iter().any(|x| x.role == Role::Leader) && m.iter().all(|x| x.role != Role::Learner) {
                break;
            }
        }
        assert!(start.elapsed() < DEADLINE, "the cluster did not form");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for key in KEYS {
        admin.put(key.as_bytes(), b"0").await.expect("initial value");
    }
    let (_, base_revision) = admin.get(KEYS[0].as_bytes(), true).await.expect("read");

    // The watcher follows the keys from before the first client write.
    let watch_client = StoreClient::new(peers.clone(), &token).expect("client");
    let watched: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let watched_w = watched.clone();
    let watcher = tokio::spawn(async move {
        let mut w = watch_client.watch(b"j/".to_vec(), base_revision + 1);
        loop {
            match w.next().await {
                Ok(ev) => watched_w.lock().expect("lock").push((
                    ev.kv.mod_revision,
                    ev.kind,
                    String::from_utf8_lossy(&ev.kv.key).into_owned(),
                    parse(&ev.kv.value),
                )),
                Err(e) => panic!("the watch failed: {e}"),
            }
        }
    });

    let relay = Relay::start(&servers[0].peer);
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(fault_secs);
    let mut tasks = Vec::new();
    for n in 0..CLIENTS {
        // Client 0 reaches member 1 through the lossy relay only, first.
        let mut list = peers.clone();
        if n == 0 {
            list[0] = relay.addr.clone();
        }
        list.rotate_left(n % 3);
        let client = StoreClient::new(list, &token).expect("client");
        tasks.push(tokio::spawn(client_loop(n, client, t0, until)));
    }

    // The nemesis: one fault after another until the time is up.
    let mut round = 0usize;
    while Instant::now() + Duration::from_secs(3) < until {
        let leader = leader_of(&admin).await;
        let victim = match round % 5 {
            0..=2 => leader.unwrap_or(1),
            _ => (leader.unwrap_or(1) % 3) + 1,
        };
        let i = (victim - 1) as usize;
        match round % 5 {
            0 => {
                servers[i].kill9();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                servers[i].spawn(&[]);
            }
            1 => {
                servers[i].signal("-STOP");
                tokio::time::sleep(Duration::from_millis(2000)).await;
                servers[i].signal("-CONT");
            }
            2 => {
                relay.drop_replies.store(true, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                relay.drop_replies.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            3 => {
                servers[i].kill9();
                tokio::time::sleep(Duration::from_millis(1000)).await;
                servers[i].spawn(&[]);
            }
            _ => {
                for s in servers.iter_mut() {
                    s.kill9();
                    s.spawn(&[]);
                    tokio::time::sleep(Duration::from_millis(800)).await;
                }
            }
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let mut recorded = Vec::new();
    for t in tasks {
        recorded.push(t.await.expect("client task"));
    }
    drop(relay);

    // Convergence: every member reaches the same revision and values.
    let mut converged = None;
    let settle = Instant::now();
    while settle.elapsed() < DEADLINE {
        let mut seen = Vec::new();
        for p in &peers {
            let one = StoreClient::new(vec![p.clone()], &token).expect("client");
            let mut values = BTreeMap::new();
            let mut revision = 0;
            for key in KEYS {
                if let Ok((kv, rev)) = one.get(key.as_bytes(), false).await {
                    values.insert(key, kv.map(|kv| parse(&kv.value)));
                    revision = rev;
                }
            }
            seen.push((revision, values));
        }
        if seen.iter().all(|s| s == &seen[0] && s.1.len() == KEYS.len()) {
            converged = Some(seen[0].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (final_revision, final_values) = converged.expect("the members converged");

    // Linearizability per key.
    let mut per_key: HashMap<String, Vec<Operation>> = HashMap::new();
    for r in &recorded {
        for (k, op) in &r.ops {
            per_key.entry(k.clone()).or_default().push(op.clone());
        }
    }
    let total: usize = per_key.values().map(|v| v.len()).sum();
    let unknown = per_key.values().flatten().filter(|o| o.result == RegisterResult::Unknown).count();
    assert!(total > 100, "too few operations recorded: {total}");
    for (key, ops) in &per_key {
        if let Err(e) = check(Some(0), ops) {
            panic!("key {key}: {e}");
        }
    }

    // The watch: wait until it has delivered the last change to the keys.
    let mut target = 0;
    for key in KEYS {
        let (kv, _) = admin.get(key.as_bytes(), true).await.expect("read");
        target = target.max(kv.map_or(0, |kv| kv.mod_revision));
    }
    let settle = Instant::now();
    while watched.lock().expect("lock").last().map_or(0, |e| e.0) < target {
        assert!(settle.elapsed() < DEADLINE, "the watch never delivered revision {target}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    watcher.abort();
    let events = watched.lock().expect("lock").clone();
    let revisions: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "watch revisions are not strictly increasing (a revision twice or out of order)");
    // Every value is put at most once.
    let mut puts = HashSet::new();
    for (rev, kind, key, value) in &events {
        if *kind == EventKind::Put {
            assert!(puts.insert((key.clone(), *value)), "value {value} of {key} was applied twice (again at revision {rev})");
        }
    }
    for r in &recorded {
        for (key, v) in &r.failed_values {
            assert!(!puts.contains(&(key.clone(), *v)), "write of {v} to {key} was answered as failed but was applied");
        }
    }
    // The watch agrees with a fresh read of the history, replayed on a member.
    let replay_client = StoreClient::new(peers.clone(), &token).expect("client");
    let mut replay = replay_client.watch(b"j/".to_vec(), base_revision + 1);
    let mut replayed = Vec::new();
    while replayed.len() < events.len() {
        let ev = tokio::time::timeout(DEADLINE, replay.next()).await.expect("replay within the deadline").expect("replay");
        replayed.push((ev.kv.mod_revision, ev.kind, String::from_utf8_lossy(&ev.kv.key).into_owned(), parse(&ev.kv.value)));
    }
    assert_eq!(replayed, events, "the live watch and the replayed history differ");
    // The last value of each key in the watch is the converged value.
    for key in KEYS {
        let last = events.iter().rev().find(|e| e.2 == key).map(|e| e.3).unwrap_or(0);
        assert_eq!(final_values.get(key).copied().flatten(), Some(last), "key {key} converged to another value than the watch's last");
    }
    eprintln!(
        "jepsen: {total} operations ({unknown} of unknown outcome) in {fault_secs} s with {round} faults; {} watch events; final revision {final_revision}",
        events.len()
    );
}
