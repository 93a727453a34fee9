//! A Jepsen-style test of the store: three `flotilla server` processes,
//! concurrent clients doing linearizable reads, writes and compare-and-
//! swaps on a few keys, a watcher, and nemeses: kill -9 and restart of the
//! leader and of a follower, SIGSTOP and SIGCONT of the leader, a rolling
//! restart, a partition of the leader from both followers (nftables rules
//! on loopback between the members' peer ports; skipped with a message
//! where nftables cannot be used), and lost replies (one client reaches a
//! member through a UDP relay that drops that member's answers for a
//! while, so the client retries a write that was applied). Two more
//! clients work on a ConfigMap through the HTTP API (GET, PUT, and PUT
//! with the resourceVersion read as a compare-and-swap), moving to another
//! server when one does not answer, so the API's 409, 503 and 504 are
//! checked against what was applied.
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
use common::{free_udp as free_addr, wait_for_file, Partitions, StoreServer};

const DEADLINE: Duration = Duration::from_secs(60);
const KEYS: [&str; 3] = ["j/a", "j/b", "j/c"];
const CLIENTS: usize = 4;
const HTTP_CLIENTS: usize = 2;
/// The ConfigMap the HTTP clients share, and its store key.
const HTTP_OBJECT: &str = "jepsen-h";
const HTTP_KEY: &str = "/registry/configmaps/default/jepsen-h";

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

/// A register's value: the store clients' bytes, or the HTTP clients'
/// ConfigMap's `data.v` (an API answer's JSON, or the stored object: one
/// format byte, 1, then JSON).
fn parse(v: &[u8]) -> u64 {
    let json = match v {
        [b'{', ..] => Some(v),
        [1, rest @ ..] => Some(rest),
        _ => None,
    };
    if let Some(json) = json {
        let obj: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
        return obj.pointer("/data/v").and_then(|v| v.as_str()).and_then(|s| s.parse().ok()).unwrap_or(u64::MAX);
    }
    std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()).unwrap_or(u64::MAX)
}

fn configmap(v: u64, resource_version: Option<&str>) -> serde_json::Value {
    let mut meta = serde_json::json!({"name": HTTP_OBJECT, "namespace": "default"});
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = rv.into();
    }
    serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"v": v.to_string()}})
}

/// What an API answer says about a write: applied, not applied, or unknown.
enum Answer {
    Ok(serde_json::Value),
    Conflict,
    Failed,
    Unknown,
}

/// One HTTP client of the API: tries its servers in turn.
struct ApiClient {
    http: reqwest::Client,
    bases: Vec<String>,
    next: usize,
}

impl ApiClient {
    fn url(&self) -> String {
        format!("{}/api/v1/namespaces/default/configmaps/{HTTP_OBJECT}", self.bases[self.next % self.bases.len()])
    }

    async fn send(&mut self, req: reqwest::RequestBuilder) -> Answer {
        let answer = match req.send().await {
            Ok(r) => {
                let code = r.status().as_u16();
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                match code {
                    200 | 201 => Answer::Ok(body),
                    409 => Answer::Conflict,
                    // Kubernetes' reading: 503 is "not done, try again".
                    503 => Answer::Failed,
                    500..=599 => Answer::Unknown,
                    other => panic!("the API answered {other} to a request the test thinks is valid: {body}"),
                }
            }
            // The request may have arrived and been applied.
            Err(_) => Answer::Unknown,
        };
        if !matches!(answer, Answer::Ok(_) | Answer::Conflict) {
            self.next += 1;
        }
        answer
    }

    async fn get(&mut self) -> Answer {
        let req = self.http.get(self.url());
        self.send(req).await
    }

    async fn put(&mut self, body: serde_json::Value) -> Answer {
        let req = self.http.put(self.url()).json(&body);
        self.send(req).await
    }
}

/// Creates the HTTP clients' ConfigMap with `v` 0 through any server.
async fn create_http_object(bases: &[String]) {
    let http = common::api_http(Duration::from_secs(5));
    let start = Instant::now();
    for base in bases.iter().cycle() {
        assert!(start.elapsed() < DEADLINE, "the API never created the test ConfigMap");
        let url = format!("{base}/api/v1/namespaces/default/configmaps");
        if let Ok(r) = http.post(&url).json(&configmap(0, None)).send().await {
            if r.status().as_u16() == 201 || r.status().as_u16() == 409 {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn http_client_loop(n: usize, bases: Vec<String>, start: Instant, until: Instant) -> Recorded {
    let http = common::api_http(Duration::from_secs(15));
    let mut api = ApiClient { http, next: n, bases };
    let mut rec = Recorded::default();
    let mut counter = 0u64;
    let now = |start: Instant| start.elapsed().as_nanos() as u64;
    let key = HTTP_KEY.to_string();
    while Instant::now() < until {
        let call = now(start);
        let (op, result) = match (counter + n as u64) % 3 {
            0 => {
                counter += 1;
                let result = match api.get().await {
                    Answer::Ok(obj) => RegisterResult::Read(Some(parse(obj.to_string().as_bytes()))),
                    _ => RegisterResult::Unknown,
                };
                (RegisterOp::Read, result)
            }
            1 => {
                counter += 1;
                let v = (n as u64 + 101) * 1_000_000 + counter;
                let result = match api.put(configmap(v, None)).await {
                    Answer::Ok(_) => RegisterResult::Written,
                    Answer::Unknown => RegisterResult::Unknown,
                    Answer::Conflict | Answer::Failed => {
                        rec.failed_values.push((key.clone(), v));
                        continue;
                    }
                };
                (RegisterOp::Write(v), result)
            }
            _ => {
                counter += 1;
                let Answer::Ok(obj) = api.get().await else { continue };
                let from = parse(obj.to_string().as_bytes());
                let rv = obj.pointer("/metadata/resourceVersion").and_then(|v| v.as_str()).expect("a resourceVersion").to_string();
                let to = (n as u64 + 101) * 1_000_000 + counter;
                let call = now(start);
                let result = match api.put(configmap(to, Some(&rv))).await {
                    Answer::Ok(_) => RegisterResult::Cas(true),
                    // Values are never written twice, so "the resourceVersion
                    // changed" is "the value is no longer `from`".
                    Answer::Conflict => RegisterResult::Cas(false),
                    Answer::Unknown => RegisterResult::Unknown,
                    Answer::Failed => {
                        rec.failed_values.push((key.clone(), to));
                        continue;
                    }
                };
                let ret = now(start);
                rec.ops.push((key.clone(), Operation { client: 100 + n, op: RegisterOp::Cas { from, to }, call, ret, result }));
                continue;
            }
        };
        let ret = now(start);
        rec.ops.push((key.clone(), Operation { client: 100 + n, op, call, ret, result }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rec
}

/// Follows `prefix` from `from` into a shared list.
fn watch_into(client: StoreClient, prefix: &str, from: u64) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Vec<Seen>>>) {
    let watched: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let out = watched.clone();
    let prefix = prefix.as_bytes().to_vec();
    let task = tokio::spawn(async move {
        let mut w = client.watch(prefix, from);
        loop {
            match w.next().await {
                Ok(ev) => out.lock().expect("lock").push((
                    ev.kv.mod_revision,
                    ev.kind,
                    String::from_utf8_lossy(&ev.kv.key).into_owned(),
                    parse(&ev.kv.value),
                )),
                Err(e) => panic!("the watch failed: {e}"),
            }
        }
    });
    (task, watched)
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
async fn histories_under_kills_pauses_restarts_partitions_and_lost_replies_are_linearizable_and_exact() {
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
    let bases: Vec<String> = servers.iter().map(|s| format!("http://{}", s.http)).collect();
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
    create_http_object(&bases).await;
    let (_, base_revision) = admin.get(KEYS[0].as_bytes(), true).await.expect("read");

    // The watchers follow the registers from before the first client write.
    let (watcher, watched) = watch_into(StoreClient::new(peers.clone(), &token).expect("client"), "j/", base_revision + 1);
    let (http_watcher, http_watched) = watch_into(StoreClient::new(peers.clone(), &token).expect("client"), HTTP_KEY, base_revision + 1);

    let partitions = Partitions::new();
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
    for n in 0..HTTP_CLIENTS {
        tasks.push(tokio::spawn(http_client_loop(n, bases.clone(), t0, until)));
    }

    // The nemesis: one fault after another until the time is up.
    let mut round = 0usize;
    let mut faults: BTreeMap<&str, usize> = BTreeMap::new();
    while Instant::now() + Duration::from_secs(3) < until {
        let leader = leader_of(&admin).await;
        let victim = match round % 6 {
            3 => (leader.unwrap_or(1) % 3) + 1,
            _ => leader.unwrap_or(1),
        };
        let i = (victim - 1) as usize;
        let name = match round % 6 {
            0 => {
                servers[i].kill9();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                servers[i].spawn(&[]);
                "kill -9 leader"
            }
            1 => {
                servers[i].signal("-STOP");
                tokio::time::sleep(Duration::from_millis(2000)).await;
                servers[i].signal("-CONT");
                "SIGSTOP leader"
            }
            2 => {
                relay.drop_replies.store(true, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1500)).await;
                relay.drop_replies.store(false, std::sync::atomic::Ordering::Relaxed);
                "lost replies"
            }
            3 => {
                servers[i].kill9();
                tokio::time::sleep(Duration::from_millis(1000)).await;
                servers[i].spawn(&[]);
                "kill -9 follower"
            }
            4 => match &partitions {
                Some(p) => {
                    for other in servers.iter().filter(|s| s.id != victim) {
                        p.cut(&servers[i].peer, &other.peer);
                    }
                    tokio::time::sleep(Duration::from_millis(2500)).await;
                    p.heal();
                    "partition leader"
                }
                None => "partition leader (skipped)",
            },
            _ => {
                for s in servers.iter_mut() {
                    s.kill9();
                    s.spawn(&[]);
                    tokio::time::sleep(Duration::from_millis(800)).await;
                }
                "rolling restart"
            }
        };
        *faults.entry(name).or_default() += 1;
        round += 1;
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let mut recorded = Vec::new();
    for t in tasks {
        recorded.push(t.await.expect("client task"));
    }
    drop(relay);
    drop(partitions);

    // Convergence: every member reaches the same revision and values.
    let mut converged = None;
    let settle = Instant::now();
    while settle.elapsed() < DEADLINE {
        let mut seen = Vec::new();
        for p in &peers {
            let one = StoreClient::new(vec![p.clone()], &token).expect("client");
            let mut values = BTreeMap::new();
            let mut revision = 0;
            for key in KEYS.iter().copied().chain([HTTP_KEY]) {
                if let Ok((kv, rev)) = one.get(key.as_bytes(), false).await {
                    values.insert(key, kv.map(|kv| parse(&kv.value)));
                    revision = rev;
                }
            }
            seen.push((revision, values));
        }
        if seen.iter().all(|s| s == &seen[0] && s.1.len() == KEYS.len() + 1) {
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
    let http_ops = per_key.get(HTTP_KEY).map_or(0, |v| v.len());
    assert!(total > 100, "too few operations recorded: {total}");
    assert!(http_ops > 20, "too few operations through the API recorded: {http_ops}");
    for (key, ops) in &per_key {
        if let Err(e) = check(Some(0), ops) {
            panic!("key {key}: {e}");
        }
    }

    let mut events_total = 0;
    let store_keys: Vec<&str> = KEYS.to_vec();
    for (prefix, watched, keys) in [("j/", &watched, store_keys), (HTTP_KEY, &http_watched, vec![HTTP_KEY])] {
        let events = settled_watch(&admin, watched, &keys).await;
        check_watch(&events, &recorded);
        // The watch agrees with a fresh read of the history, replayed on a member.
        let replay_client = StoreClient::new(peers.clone(), &token).expect("client");
        let mut replay = replay_client.watch(prefix.as_bytes().to_vec(), base_revision + 1);
        let mut replayed = Vec::new();
        while replayed.len() < events.len() {
            let ev = tokio::time::timeout(DEADLINE, replay.next()).await.expect("replay within the deadline").expect("replay");
            replayed.push((ev.kv.mod_revision, ev.kind, String::from_utf8_lossy(&ev.kv.key).into_owned(), parse(&ev.kv.value)));
        }
        assert_eq!(replayed, events, "the live watch of {prefix} and the replayed history differ");
        // The last value of each key in the watch is the converged value.
        for key in keys {
            let last = events.iter().rev().find(|e| e.2 == key).map(|e| e.3).unwrap_or(0);
            assert_eq!(final_values.get(key).copied().flatten(), Some(last), "key {key} converged to another value than the watch's last");
        }
        events_total += events.len();
    }
    watcher.abort();
    http_watcher.abort();
    eprintln!(
        "jepsen: {total} operations ({http_ops} through the API, {unknown} of unknown outcome) in {fault_secs} s with faults {faults:?}; {events_total} watch events; final revision {final_revision}"
    );
}

/// Waits until the watch has delivered the last change to `keys`; what it saw.
async fn settled_watch(admin: &StoreClient, watched: &Mutex<Vec<Seen>>, keys: &[&str]) -> Vec<Seen> {
    let mut target = 0;
    for key in keys {
        let (kv, _) = admin.get(key.as_bytes(), true).await.expect("read");
        target = target.max(kv.map_or(0, |kv| kv.mod_revision));
    }
    let settle = Instant::now();
    while watched.lock().expect("lock").last().map_or(0, |e| e.0) < target {
        assert!(settle.elapsed() < DEADLINE, "the watch never delivered revision {target}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = watched.lock().expect("lock").clone();
    events
}

/// Every revision once and in order; no value applied twice; no write
/// answered as failed applied.
fn check_watch(events: &[Seen], recorded: &[Recorded]) {
    let revisions: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "watch revisions are not strictly increasing (a revision twice or out of order)");
    let mut puts = HashSet::new();
    for (rev, kind, key, value) in events {
        if *kind == EventKind::Put {
            assert!(puts.insert((key.clone(), *value)), "value {value} of {key} was applied twice (again at revision {rev})");
        }
    }
    for r in recorded {
        for (key, v) in &r.failed_values {
            assert!(!puts.contains(&(key.clone(), *v)), "write of {v} to {key} was answered as failed but was applied");
        }
    }
}
