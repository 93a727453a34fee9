//! Three `flotilla server` processes on loopback for the store benchmarks:
//! started, signalled, killed and restarted the way an operator would, with
//! their data under one directory that the benchmark removes at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flotilla_raft::wire::{Reply, Request};
use flotilla_raft::{Role, StoreClient};

/// Longest wait for the cluster to form or settle.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(30);

/// One member process.
pub struct Server {
    pub id: u64,
    dir: PathBuf,
    pub peer: String,
    /// Flags every start of this member gets (Raft timing, say).
    flags: Vec<String>,
    starts: u32,
    child: Option<Child>,
}

impl Server {
    pub fn spawn(&mut self, extra: &[&str]) -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let http = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?;
        // FLOTILLA_BENCH_LOGS=DIR keeps each start's log there (at info, or
        // FLOTILLA_BENCH_LOG_LEVEL).
        let (level, stderr) = match std::env::var_os("FLOTILLA_BENCH_LOGS") {
            Some(dir) => {
                self.starts += 1;
                let path = std::path::Path::new(&dir).join(format!("m{}.{}.log", self.id, self.starts));
                let file = std::fs::File::create(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
                let level = std::env::var("FLOTILLA_BENCH_LOG_LEVEL").unwrap_or_else(|_| "info".into());
                (level, Stdio::from(file))
            }
            None => ("error".to_string(), Stdio::null()),
        };
        let child = Command::new(exe)
            .args(["server", "--id", &self.id.to_string(), "--data-dir"])
            .arg(&self.dir)
            .args(["--peer", &self.peer, "--http", &http.to_string()])
            .args(&self.flags)
            .args(extra)
            .env("FLOTILLA_LOG", &level)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot start a server: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, SIGKILL) at once, with no process
    /// started in between, so the time taken just before is the fault's.
    pub fn signal(&self, signal: libc::c_int) -> Result<(), String> {
        let pid = self.child.as_ref().ok_or("server not running")?.id();
        let pid = libc::pid_t::try_from(pid).map_err(|_| format!("pid {pid} out of range"))?;
        // SAFETY: kill(2) on our own child's pid; no memory is shared.
        let rc = unsafe { libc::kill(pid, signal) };
        (rc == 0).then_some(()).ok_or_else(|| format!("kill({pid}, {signal}) failed: {}", std::io::Error::last_os_error()))
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_udp() -> Result<String, String> {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.to_string()).map_err(|e| e.to_string())
}

/// Three members, the join token, and a client of each member alone (for
/// asking one member what it thinks).
pub struct BenchCluster {
    pub servers: Vec<Server>,
    pub token: String,
    each: Vec<StoreClient>,
}

impl BenchCluster {
    /// Starts three members under `root`, each with `flags`, and waits until
    /// all three are voters under one leader.
    pub async fn start(root: &Path, flags: &[String]) -> Result<Self, String> {
        let mut servers = Vec::new();
        for id in 1..=3u64 {
            servers.push(Server { id, dir: root.join(format!("m{id}")), peer: free_udp()?, flags: flags.to_vec(), starts: 0, child: None });
        }
        servers[0].spawn(&["--bootstrap"])?;
        let token_path = servers[0].dir.join("join-token");
        let started = Instant::now();
        let token = loop {
            if let Ok(t) = std::fs::read_to_string(&token_path) {
                break t.trim().to_string();
            }
            if started.elapsed() > SETTLE_DEADLINE {
                return Err("the first server did not start".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let first = servers[0].peer.clone();
        for s in servers.iter_mut().skip(1) {
            s.spawn(&["--join", &first, "--token", &token])?;
        }
        let each =
            servers.iter().map(|s| StoreClient::new(vec![s.peer.clone()], &token).map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
        let cluster = BenchCluster { servers, token, each };
        cluster.settled_leader().await?;
        Ok(cluster)
    }

    pub fn peers(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.peer.clone()).collect()
    }

    /// A client of its own (its own session), trying `first` first.
    pub fn client(&self, first: Option<u64>) -> Result<StoreClient, String> {
        let mut peers = self.peers();
        if let Some(i) = first.and_then(|id| self.servers.iter().position(|s| s.id == id)) {
            peers.rotate_left(i);
        }
        StoreClient::new(peers, &self.token).map_err(|e| e.to_string())
    }

    /// Clients of each member but `id`, alone.
    pub fn others(&self, id: u64) -> Vec<&StoreClient> {
        self.servers.iter().zip(&self.each).filter(|(s, _)| s.id != id).map(|(_, c)| c).collect()
    }

    pub fn server(&mut self, id: u64) -> &mut Server {
        let i = self.servers.iter().position(|s| s.id == id).expect("member ids are 1 to 3");
        &mut self.servers[i]
    }

    /// Waits until every member answers, all three are voters, and all
    /// name the same leader (a member that was frozen may still think it
    /// leads); its id.
    pub async fn settled_leader(&self) -> Result<u64, String> {
        let deadline = Instant::now() + SETTLE_DEADLINE;
        loop {
            let mut leaders = Vec::new();
            for client in &self.each {
                let reply = client.call_within(&Request::Members, Duration::from_millis(500)).await;
                let Ok(Reply::Members(members)) = reply else { break };
                if members.len() != 3 || members.iter().any(|m| m.role == Role::Learner) {
                    break;
                }
                leaders.extend(members.iter().find(|m| m.role == Role::Leader).map(|m| m.id));
            }
            if leaders.len() == 3 && leaders.iter().all(|&l| l == leaders[0]) {
                return Ok(leaders[0]);
            }
            if Instant::now() > deadline {
                return Err("the cluster did not settle".into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
