//! Process-level tests of the store: real `flotilla server` processes,
//! `kill -9`, restarts from the data directory, and the `flotilla store`
//! command line with bad input.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_raft::{Role, StoreClient};

mod common;
use common::{free_udp as free_addr, wait_for_file, StoreServer, BIN};

const DEADLINE: Duration = Duration::from_secs(60);

async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_survive_kill_9_of_the_leader_without_losing_acknowledged_writes() {
    let root = tempfile::tempdir().expect("tempdir");
    let mut servers: Vec<StoreServer> = (1..=3).map(|id| StoreServer::new(id, root.path().join(format!("m{id}")), free_addr())).collect();
    servers[0].spawn(&["--bootstrap"]);
    let token = wait_for_file(&servers[0].dir.join("join-token"));
    let first = servers[0].peer.clone();
    for s in servers.iter_mut().skip(1) {
        s.spawn(&["--join", &first, "--token", &token]);
    }
    let all: Vec<String> = servers.iter().map(|s| s.peer.clone()).collect();
    let admin = StoreClient::new(all.clone(), &token).expect("client");
    until("three voters and a leader", || async {
        match admin.members().await {
            Ok(m) => m.len() == 3 && m.iter().any(|x| x.role == Role::Leader) && m.iter().all(|x| x.role != Role::Learner),
            Err(_) => false,
        }
    })
    .await;
    let members = admin.members().await.expect("members");
    let leader_id = members.iter().find(|m| m.role == Role::Leader).expect("leader").id;
    // Write through the followers; the cluster carries writes to whoever leads.
    let followers: Vec<String> = servers.iter().filter(|s| s.id != leader_id).map(|s| s.peer.clone()).collect();
    let writer_client = StoreClient::new(followers.clone(), &token).expect("client");

    let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(1024);
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..400u32 {
            if writer_client.put(format!("k/{i:04}").as_bytes(), i.to_string().as_bytes()).await.is_ok() {
                acked.push(i);
                let _ = tx.send(i).await;
            }
        }
        acked
    });
    let mut seen = 0;
    while seen < 100 {
        rx.recv().await.expect("writer is running");
        seen += 1;
    }
    let leader = servers.iter_mut().find(|s| s.id == leader_id).expect("leader server");
    leader.kill9();
    drop(rx);
    let acked = writer.await.expect("writer");
    assert!(acked.len() > 200, "writes continued after the leader died: {} acked", acked.len());

    let survivors = StoreClient::new(followers, &token).expect("client");
    for i in &acked {
        let (kv, _) = survivors.get(format!("k/{i:04}").as_bytes(), true).await.expect("read from survivors");
        assert_eq!(kv.map(|kv| kv.value), Some(i.to_string().into_bytes()), "acknowledged write {i} lost");
    }

    // The killed member restarts from its directory, without --bootstrap or
    // --join, and catches up.
    let leader = servers.iter_mut().find(|s| s.id == leader_id).expect("old leader");
    leader.spawn(&[]);
    let restarted = StoreClient::new(vec![leader.peer.clone()], &token).expect("client");
    let last = format!("k/{:04}", acked.last().expect("acked"));
    until("restarted member caught up", || async { matches!(restarted.get(last.as_bytes(), false).await, Ok((Some(_), _))) }).await;
}

fn flotilla(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("FLOTILLA_TOKEN")
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flotilla");
    if let Some(input) = stdin {
        child.stdin.take().expect("stdin").write_all(input).expect("write stdin");
    }
    let out = child.wait_with_output().expect("flotilla output");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_command_line_works_and_refuses_bad_input_clearly() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("m1");
    let mut server = StoreServer::new(1, dir.clone(), free_addr());
    server.spawn(&["--bootstrap"]);
    let token = wait_for_file(&dir.join("join-token"));
    let peer = server.peer.clone();
    let base = ["store", "--peer", peer.as_str(), "--token", token.as_str()];
    let run = |extra: &[&str], stdin: Option<&[u8]>| {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        flotilla(&args, stdin)
    };
    // The server may still be electing itself; wait for the first write.
    let start = Instant::now();
    let mut put = run(&["put", "app/a", "1"], None);
    while put.0 != 0 && start.elapsed() < DEADLINE {
        std::thread::sleep(Duration::from_millis(100));
        put = run(&["put", "app/a", "1"], None);
    }
    assert_eq!(put.0, 0, "put: {}", put.2);
    let rev_a: u64 = put.1.trim().parse().expect("put prints the revision");
    // The server writes its own objects (built-in namespaces) once it leads, so
    // other revisions may fall between these two puts; only the order is fixed.
    let put_b = run(&["put", "app/b", "2"], None);
    assert!(put_b.1.trim().parse::<u64>().expect("revision") > rev_a, "revisions increase: {} then {}", rev_a, put_b.1);

    assert_eq!(run(&["get", "app/a"], None).1.trim(), "1");
    let missing = run(&["get", "app/zz"], None);
    assert_eq!(missing.0, 1, "absent key exits 1");
    assert_eq!(run(&["list", "app/"], None).1, "app/a\t1\napp/b\t2\n");
    let members = run(&["members"], None);
    assert!(members.1.contains("leader") && members.1.contains(&peer), "{}", members.1);
    assert_eq!(run(&["del", "app/a"], None).1.trim(), "1");
    assert_eq!(run(&["get", "app/a"], None).0, 1);

    // A value over 1.5 MiB is refused with the limit named; nothing changes.
    let big = vec![b'x'; 1536 * 1024 + 1];
    let (code, _, err) = run(&["put", "app/big"], Some(&big));
    assert_eq!(code, 1);
    assert!(err.contains("over the limit of 1572864 bytes"), "{err}");
    assert_eq!(run(&["get", "app/big"], None).0, 1);

    // A wrong token.
    let wrong = format!("{}{}", &token[..token.len() - 32], "f".repeat(32));
    let (code, _, err) = flotilla(&["store", "--peer", &peer, "--token", &wrong, "get", "app/b"], None);
    assert_eq!(code, 1);
    assert!(err.contains("wrong token"), "{err}");
    // A malformed token.
    let (code, _, err) = flotilla(&["store", "--peer", &peer, "--token", "nonsense", "get", "app/b"], None);
    assert_eq!(code, 1);
    assert!(err.contains("malformed join token"), "{err}");
    // A peer nobody listens on: bounded wait, the address named.
    let silent = free_addr();
    let started = Instant::now();
    let (code, _, err) = flotilla(&["store", "--peer", &silent, "--token", &token, "get", "k"], None);
    assert_eq!(code, 1);
    assert!(err.contains(&silent), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));

    // Server start-up refusals.
    let (code, _, err) = flotilla(
        &[
            "server",
            "--id",
            "2",
            "--data-dir",
            root.path().join("none").to_str().expect("utf8"),
            "--peer",
            &free_addr(),
            "--http",
            "127.0.0.1:0",
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("does not exist") && err.contains("--bootstrap"), "{err}");
    server.kill9();
    // Same directory, another id.
    let (code, _, err) = flotilla(
        &["server", "--id", "3", "--data-dir", dir.to_str().expect("utf8"), "--peer", &free_addr(), "--http", "127.0.0.1:0"],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("holds member 1"), "{err}");
    // A directory of another cluster given to --join.
    let other = root.path().join("other");
    let mut other_server = StoreServer::new(1, other.clone(), free_addr());
    other_server.spawn(&["--bootstrap"]);
    let _ = wait_for_file(&other.join("join-token"));
    other_server.kill9();
    let (code, _, err) = flotilla(
        &[
            "server",
            "--id",
            "1",
            "--data-dir",
            other.to_str().expect("utf8"),
            "--peer",
            &free_addr(),
            "--http",
            "127.0.0.1:0",
            "--join",
            &peer,
            "--token",
            &token,
        ],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("belongs to cluster"), "{err}");
    // A corrupt database: garbage where RocksDB's files are.
    let db = dir.join("db");
    for entry in std::fs::read_dir(&db).expect("db dir") {
        let path = entry.expect("entry").path();
        if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("MANIFEST")) {
            std::fs::write(&path, b"garbage").expect("corrupt manifest");
        }
    }
    let (code, _, err) = flotilla(
        &["server", "--id", "1", "--data-dir", dir.to_str().expect("utf8"), "--peer", &free_addr(), "--http", "127.0.0.1:0"],
        None,
    );
    assert_eq!(code, 1);
    assert!(err.contains("cannot open the database"), "{err}");
}
