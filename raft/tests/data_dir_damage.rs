//! Damaged or foreign data directories are refused, never served, and
//! the refusal changes nothing on disk. Each case starts from a copy of a
//! healthy stopped member's directory, damages it as a failing disk or a
//! careless operator would, and checks that the restart fails with a
//! message that says what to do, leaving every data file as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use flotilla_raft::{Consistency, Limits, Member, StartMode, StoreConfig};
use sha2::{Digest, Sha256};

fn free_addr() -> String {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind an ephemeral port");
    s.local_addr().expect("local address").to_string()
}

fn limits() -> Limits {
    // Small snapshots, so the directory holds a snapshot.bin.
    Limits { snapshot_every_entries: 8, log_kept_behind_snapshot: 4, client_rpc_timeout_ms: 4_000, ..Limits::default() }
}

async fn start(dir: &Path, addr: &str, mode: StartMode) -> Result<Arc<Member>, flotilla_raft::StartError> {
    let mut config = StoreConfig::new(1, dir, addr, mode);
    config.limits = limits();
    Member::start(config).await
}

/// A stopped single-member cluster holding `keys` keys and a snapshot.
async fn healthy(dir: &Path, keys: usize) {
    let addr = free_addr();
    let m = start(dir, &addr, StartMode::Bootstrap).await.expect("bootstrap");
    for i in 0..keys {
        m.put(format!("k{i:03}"), format!("v{i}")).await.expect("put");
    }
    m.raft().trigger().snapshot().await.expect("ask for a snapshot");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !dir.join("snapshot.bin").exists() {
        assert!(std::time::Instant::now() < deadline, "no snapshot was built");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (kv, _) = m.get(format!("k{:03}", keys - 1).as_bytes(), Consistency::Linearizable).await.expect("read");
    assert!(kv.is_some());
    m.shutdown().await;
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// Every file's digest, except RocksDB's diagnostics (its info LOG and the
/// LOCK it takes), which any open writes.
fn digest(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    if !dir.exists() {
        return out;
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string();
            if path.is_dir() {
                stack.push(path);
            } else if name != "LOCK" && !name.starts_with("LOG") {
                let bytes = std::fs::read(&path).expect("read file");
                out.insert(path.strip_prefix(dir).expect("inside").to_path_buf(), hex::encode(Sha256::digest(&bytes)));
            }
        }
    }
    out
}

fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)));
    found
}

fn cut(path: &Path, fraction: f64) {
    let len = std::fs::metadata(path).expect("stat").len();
    let f = std::fs::OpenOptions::new().write(true).open(path).expect("open");
    f.set_len((len as f64 * fraction) as u64).expect("truncate");
}

fn scribble(path: &Path, bytes: usize) {
    use std::io::{Seek, SeekFrom, Write};
    let len = std::fs::metadata(path).expect("stat").len();
    let mut f = std::fs::OpenOptions::new().write(true).open(path).expect("open");
    let at = (len / 2).saturating_sub(bytes as u64 / 2);
    f.seek(SeekFrom::Start(at)).expect("seek");
    let noise: Vec<u8> = (0..bytes).map(|i| (i as u8).wrapping_mul(151).wrapping_add(89)).collect();
    f.write_all(&noise).expect("write");
}

/// Flushes the memtables of a stopped member's database into SST files.
fn flush_to_sst(db_path: &Path) {
    let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), db_path).expect("list column families");
    let db = rocksdb::DB::open_cf(&rocksdb::Options::default(), db_path, &names).expect("open");
    for name in &names {
        db.flush_cf(db.cf_handle(name).expect("cf")).expect("flush");
    }
}

/// Damages a copied directory.
type Damage = Box<dyn Fn(&Path, &Path)>;

struct Case {
    name: &'static str,
    /// Which template: the WAL one (recent writes only in the WAL) or the
    /// SST one (everything flushed to tables).
    sst: bool,
    damage: Damage,
    /// One of these must appear in the refusal.
    says: &'static [&'static str],
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_or_foreign_directories_are_refused_and_left_as_they_were() {
    let root = tempfile::tempdir().expect("tempdir");
    let wal_template = root.path().join("wal");
    let sst_template = root.path().join("sst");
    let foreign = root.path().join("foreign");
    healthy(&wal_template, 20).await;
    copy_dir(&wal_template, &sst_template);
    flush_to_sst(&sst_template.join("db"));
    healthy(&foreign, 5).await;
    assert!(!files_ending(&wal_template.join("db"), ".log").is_empty(), "the template has a WAL");
    assert!(!files_ending(&sst_template.join("db"), ".sst").is_empty(), "the flushed template has tables");

    let damaged_db: &[&str] = &["damaged or incomplete", "lost its tail", "is damaged"];
    let foreign_ref = foreign.clone();
    let cases = vec![
        Case {
            name: "WAL cut to 99%",
            sst: false,
            damage: Box::new(|d, _| cut(&files_ending(&d.join("db"), ".log")[0], 0.99)),
            says: damaged_db,
        },
        Case {
            name: "WAL cut to 90%",
            sst: false,
            damage: Box::new(|d, _| cut(&files_ending(&d.join("db"), ".log")[0], 0.90)),
            says: damaged_db,
        },
        Case {
            name: "4 KiB of noise in the WAL",
            sst: false,
            damage: Box::new(|d, _| scribble(&files_ending(&d.join("db"), ".log")[0], 4096)),
            says: damaged_db,
        },
        Case {
            name: "noise inside an SST",
            sst: true,
            damage: Box::new(|d, _| scribble(&files_ending(&d.join("db"), ".sst")[0], 4096)),
            says: damaged_db,
        },
        Case {
            name: "db/ removed, snapshot.bin kept",
            sst: false,
            damage: Box::new(|d, _| std::fs::remove_dir_all(d.join("db")).expect("rm")),
            says: &["database is missing"],
        },
        Case {
            name: "db/ emptied",
            sst: false,
            damage: Box::new(|d, _| {
                std::fs::remove_dir_all(d.join("db")).expect("rm");
                std::fs::create_dir(d.join("db")).expect("mkdir");
            }),
            says: &["database is missing or empty"],
        },
        Case {
            name: "another cluster's db/ and snapshot.bin",
            sst: false,
            damage: Box::new(move |d, _| {
                std::fs::remove_dir_all(d.join("db")).expect("rm");
                copy_dir(&foreign_ref.join("db"), &d.join("db"));
                std::fs::copy(foreign_ref.join("snapshot.bin"), d.join("snapshot.bin")).expect("copy");
            }),
            says: &["belongs to member 1 of cluster", "two members were mixed"],
        },
        Case {
            name: "a changed byte in snapshot.bin",
            sst: false,
            damage: Box::new(|d, _| {
                let p = d.join("snapshot.bin");
                let mut bytes = std::fs::read(&p).expect("read");
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0x40;
                std::fs::write(&p, bytes).expect("write");
            }),
            says: &["snapshot"],
        },
        Case {
            name: "an edited cluster_id",
            sst: false,
            damage: Box::new(|d, _| {
                let p = d.join("member.json");
                let text = std::fs::read_to_string(&p).expect("read");
                let mut json: serde_json::Value = serde_json::from_str(&text).expect("json");
                json["cluster_id"] = serde_json::json!("0123456789abcdef");
                std::fs::write(&p, serde_json::to_string(&json).expect("encode")).expect("write");
            }),
            says: &["two members were mixed"],
        },
    ];

    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let dir = root.path().join(format!("case{i}"));
        copy_dir(if case.sst { &sst_template } else { &wal_template }, &dir);
        (case.damage)(&dir, root.path());
        let before = digest(&dir);
        let outcome = start(&dir, &free_addr(), StartMode::Restart).await;
        let after = digest(&dir);
        match outcome {
            Ok(m) => {
                m.shutdown().await;
                failures.push(format!("{}: started", case.name));
            }
            Err(e) => {
                let message = e.to_string();
                if !case.says.iter().any(|s| message.contains(s)) {
                    failures.push(format!("{}: refused, but the message does not say why: {message}", case.name));
                }
            }
        }
        if before != after {
            failures.push(format!("{}: the refused start changed files on disk", case.name));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The undamaged template still starts and serves everything.
    let m = start(&wal_template, &free_addr(), StartMode::Restart).await.expect("the healthy directory starts");
    let (kv, _) = m.get(b"k019", Consistency::Linearizable).await.expect("read");
    assert_eq!(kv.map(|kv| kv.value), Some(b"v19".to_vec()));
    m.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_start_that_fails_leaves_nothing_and_a_crashed_one_is_recognised() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().join("m1");
    // The port is taken: the start fails before anything is written.
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let refused = start(&dir, &addr, StartMode::Bootstrap).await.expect_err("the port is busy");
    assert!(refused.to_string().contains("cannot listen"), "{refused}");
    assert!(digest(&dir).is_empty(), "a failed first start left files behind");
    drop(busy);
    let m = start(&dir, &addr, StartMode::Bootstrap).await.expect("a second first start works");
    m.shutdown().await;

    // A first start that died half-way (the marker, some files, no member.json).
    let crashed = root.path().join("m2");
    std::fs::create_dir_all(&crashed).expect("mkdir");
    std::fs::write(crashed.join(".first-start"), b"x").expect("marker");
    std::fs::write(crashed.join("ca.pem"), b"half").expect("file");
    for mode in [StartMode::Bootstrap, StartMode::Restart] {
        let e = start(&crashed, &free_addr(), mode).await.expect_err("a half-made directory is refused");
        assert!(e.to_string().contains("first start that did not finish"), "{e}");
    }
}
