//! `flotilla store`: the operator's low-level tool for the replicated store,
//! over the peer port with the cluster's join token.

use clap::{Args, Subcommand};
use flotilla_raft::{EventKind, StoreClient};

#[derive(Args)]
pub struct StoreArgs {
    /// Member(s) to talk to, comma-separated; tried in order.
    #[arg(long, global = true, default_value = "127.0.0.1:7400", value_delimiter = ',')]
    peer: Vec<String>,
    /// The cluster's join token (else $FLOTILLA_TOKEN, else ./flotilla-data/join-token).
    #[arg(long, global = true, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    op: StoreOp,
}

#[derive(Subcommand)]
enum StoreOp {
    /// Write KEY=VALUE (VALUE from stdin when omitted); prints the revision.
    Put { key: String, value: Option<String> },
    /// Print KEY's value; exit 1 if it is absent.
    Get {
        key: String,
        /// Read this member's state without confirming with a majority.
        #[arg(long)]
        serializable: bool,
    },
    /// Delete KEY (or every key under it with --prefix); prints how many went.
    Del {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
    /// Print KEY<TAB>VALUE for every key under PREFIX.
    List { prefix: String },
    /// Print changes under PREFIX as they happen.
    Watch {
        prefix: String,
        /// Start at this revision (inclusive) instead of now.
        #[arg(long)]
        from: Option<u64>,
    },
    /// Print the members: id, address, role.
    Members,
    /// Remove a member from the cluster.
    RemoveMember { id: u64 },
    /// Forget history before REVISION.
    Compact { revision: u64 },
    /// Measure write throughput and latency.
    Bench(crate::store_bench::BenchArgs),
    /// Back up the cluster's data, or start a new cluster from a backup.
    #[command(subcommand)]
    Snapshot(SnapshotOp),
}

#[derive(Subcommand)]
enum SnapshotOp {
    /// Save everything the cluster holds to FILE (checksummed), read from a
    /// member that a majority confirms is current.
    Save { file: std::path::PathBuf },
    /// Make DIR the data directory of the first member of a new cluster
    /// holding FILE's data; then run `flotilla server --id ID --data-dir DIR`.
    Restore {
        file: std::path::PathBuf,
        #[arg(long)]
        data_dir: std::path::PathBuf,
        /// The new member's id.
        #[arg(long, default_value_t = 1)]
        id: u64,
        /// The peer address the new member will listen on.
        #[arg(long, default_value = "127.0.0.1:7400")]
        member_addr: String,
    },
}

fn token(args: &StoreArgs) -> Result<String, String> {
    server_token(args.token.as_deref())
}

/// The server token: as given (flag or environment), else the local
/// `flotilla up`'s.
pub fn server_token(given: Option<&str>) -> Result<String, String> {
    if let Some(t) = given {
        return Ok(t.to_string());
    }
    std::fs::read_to_string("flotilla-data/join-token").map(|t| t.trim().to_string()).map_err(|_| {
        "no token: pass --token TOKEN or set FLOTILLA_TOKEN (the first server printed it; it is in DATA_DIR/join-token)".to_string()
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub async fn run(args: StoreArgs) -> Result<i32, String> {
    // A restore works on files only: it needs no cluster and no token.
    if let StoreOp::Snapshot(SnapshotOp::Restore { file, data_dir, id, member_addr }) = &args.op {
        let made = flotilla_raft::backup::restore(file, data_dir, *id, member_addr).map_err(|e| e.to_string())?;
        println!(
            "restored {} keys at revision {} into {} as member {id} of new cluster {}; start it with: flotilla server --id {id} --data-dir {} --peer {member_addr}",
            made.keys,
            made.revision,
            data_dir.display(),
            made.cluster_id,
            data_dir.display()
        );
        return Ok(0);
    }
    let token = token(&args)?;
    let client = StoreClient::new(args.peer.clone(), &token).map_err(|e| e.to_string())?;
    let e = |e: flotilla_raft::StoreError| e.to_string();
    match args.op {
        StoreOp::Put { key, value } => {
            let value = match value {
                Some(v) => v.into_bytes(),
                None => {
                    use std::io::Read;
                    let mut buf = Vec::new();
                    std::io::stdin().read_to_end(&mut buf).map_err(|err| format!("reading the value from stdin: {err}"))?;
                    buf
                }
            };
            println!("{}", client.put(key.as_bytes(), &value).await.map_err(e)?);
        }
        StoreOp::Get { key, serializable } => match client.get(key.as_bytes(), !serializable).await.map_err(e)? {
            (Some(kv), _) => println!("{}", text(&kv.value)),
            (None, _) => {
                eprintln!("{key}: not found");
                return Ok(1);
            }
        },
        StoreOp::Del { key, prefix } => {
            let (deleted, _) = client.delete(key.as_bytes(), prefix).await.map_err(e)?;
            println!("{deleted}");
        }
        StoreOp::List { prefix } => {
            for kv in client.list(prefix.as_bytes()).await.map_err(e)? {
                println!("{}\t{}", text(&kv.key), text(&kv.value));
            }
        }
        StoreOp::Watch { prefix, from } => {
            let mut watch = client.watch(prefix.into_bytes(), from.unwrap_or(0));
            loop {
                let ev = watch.next().await.map_err(e)?;
                let kind = match ev.kind {
                    EventKind::Put => "PUT",
                    EventKind::Delete => "DELETE",
                };
                println!("{}\t{kind}\t{}\t{}", ev.kv.mod_revision, text(&ev.kv.key), text(&ev.kv.value));
            }
        }
        StoreOp::Members => {
            println!("{:<6}{:<24}ROLE", "ID", "ADDRESS");
            for m in client.members().await.map_err(e)? {
                println!("{:<6}{:<24}{}", m.id, m.addr, m.role);
            }
        }
        StoreOp::RemoveMember { id } => {
            client.remove_member(id).await.map_err(e)?;
            println!("member {id} removed");
        }
        StoreOp::Compact { revision } => {
            client.compact(revision).await.map_err(e)?;
            println!("compacted up to revision {revision}");
        }
        StoreOp::Bench(bench) => return crate::store_bench::run(&args.peer, &token, bench).await,
        StoreOp::Snapshot(SnapshotOp::Save { file }) => {
            let bytes = client.backup_to(&file).await.map_err(e)?;
            println!("saved {bytes} bytes to {}", file.display());
        }
        StoreOp::Snapshot(SnapshotOp::Restore { .. }) => unreachable!("handled before connecting"),
    }
    Ok(0)
}
