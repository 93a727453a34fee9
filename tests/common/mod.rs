//! Helpers shared by the process-level tests: start `flotilla`
//! processes (killed when dropped), run CLI commands, wait for conditions
//! with a deadline.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
pub const DEADLINE: Duration = Duration::from_secs(60);

pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The bearer token every test process presents; the servers the tests
/// start know it from [`token_file`], in group `system:masters`.
pub const TEST_TOKEN: &str = "flotilla-test-admin-token";

/// A static token file (Kubernetes' --token-auth-file) with [`TEST_TOKEN`],
/// written once per test process.
pub fn token_file() -> String {
    static FILE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    FILE.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("flotilla-test-tokens-{}.csv", std::process::id()));
        std::fs::write(&path, format!("{TEST_TOKEN},test-admin,1,system:masters\n")).expect("write the test token file");
        path.display().to_string()
    })
    .clone()
}

/// An HTTP client that presents [`TEST_TOKEN`].
pub fn api_http(timeout: Duration) -> reqwest::Client {
    flotilla::install_crypto_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {TEST_TOKEN}").parse().expect("header"));
    reqwest::Client::builder().default_headers(headers).timeout(timeout).build().expect("http client")
}

pub fn free_udp() -> String {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("udp").local_addr().expect("addr").to_string()
}

pub fn free_tcp() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").expect("tcp").local_addr().expect("addr").to_string()
}

/// Waits for a file (a join token, say) to hold something; its trimmed text.
pub fn wait_for_file(path: &std::path::Path) -> String {
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

pub fn spawn(args: &[&str]) -> Proc {
    spawn_env(args, &[])
}

/// `spawn` with more environment variables (they win over the defaults).
pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
    // FLOTILLA_TEST_LOGS=DIR keeps each process's stderr there, to read
    // when a test fails.
    let stderr = match std::env::var_os("FLOTILLA_TEST_LOGS") {
        Some(dir) => {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = std::path::Path::new(&dir).join(format!("{}-{n}-{}.log", std::process::id(), args.first().unwrap_or(&"x")));
            std::fs::File::create(path).map(Stdio::from).unwrap_or_else(|_| Stdio::null())
        }
        None => Stdio::null(),
    };
    Proc(
        Command::new(BIN)
            .args(args)
            // Tests run side by side on one host: no fixed DNS port, and no
            // kernel rules unless a test asks for them with --proxy.
            .env("FLOTILLA_PROXY", "off")
            .env("FLOTILLA_DNS_LISTEN", "127.0.0.1:0")
            .env("FLOTILLA_TOKEN_AUTH_FILE", token_file())
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn flotilla"),
    )
}

/// Runs the CLI against `server`: (exit code, stdout, stderr).
pub fn flotilla(server: &str, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .env("FLOTILLA_SERVER", server)
        .env("FLOTILLA_API_TOKEN", TEST_TOKEN)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flotilla");
    if let Some(s) = stdin {
        child.stdin.take().expect("stdin").write_all(s.as_bytes()).expect("write");
    }
    let out = child.wait_with_output().expect("output");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs the CLI against `server`: (exit code, stdout).
pub fn cli(server: &str, args: &[&str], stdin: Option<&str>) -> (i32, String) {
    let (code, out, _) = flotilla(server, args, stdin);
    (code, out)
}

/// Running pods whose names start with `prefix`, from `flotilla get pods
/// -o wide`: (name, node, restarts).
pub fn running_pods(api: &str, prefix: &str) -> Vec<(String, String, String)> {
    let (code, out) = cli(api, &["get", "pods", "-o", "wide"], None);
    if code != 0 {
        return vec![];
    }
    out.lines()
        .skip(1)
        .filter(|l| l.starts_with(prefix) && l.contains(" Running "))
        .filter_map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            Some((c.first()?.to_string(), c.get(6)?.to_string(), c.get(3)?.to_string()))
        })
        .collect()
}

pub fn until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Three `flotilla server` processes joined into one cluster.
pub struct Servers {
    pub procs: Vec<Option<Proc>>,
    pub peers: Vec<String>,
    pub https: Vec<String>,
    pub token: String,
}

impl Servers {
    pub fn start(root: &std::path::Path, extra: &[&str]) -> Servers {
        let dir = |i: usize| root.join(format!("m{i}"));
        let peers: Vec<String> = (0..3).map(|_| free_udp()).collect();
        let https: Vec<String> = (0..3).map(|_| free_tcp()).collect();
        let mut procs = Vec::new();
        for i in 0..3 {
            let d = dir(i + 1);
            let id = (i + 1).to_string();
            let mut args = vec![
                "server",
                "--id",
                &id,
                "--data-dir",
                d.to_str().expect("utf8"),
                "--peer",
                &peers[i],
                "--insecure-http",
                &https[i],
                "--http",
                "127.0.0.1:0",
            ];
            args.extend_from_slice(extra);
            if i == 0 {
                args.push("--bootstrap");
                procs.push(Some(spawn(&args)));
                until("join token", || dir(1).join("join-token").exists());
            } else {
                let token = std::fs::read_to_string(dir(1).join("join-token")).expect("token").trim().to_string();
                args.extend_from_slice(&["--join", &peers[0], "--token", &token]);
                procs.push(Some(spawn(&args)));
            }
        }
        let token = std::fs::read_to_string(dir(1).join("join-token")).expect("token").trim().to_string();
        let s = Servers { procs, peers, https, token };
        until("the cluster serves the API", || cli(&s.api(2), &["get", "namespaces"], None).1.contains("default"));
        s
    }

    pub fn api(&self, i: usize) -> String {
        format!("http://{}", self.https[i])
    }

    /// The index of the member that leads now, as `flotilla store members` says.
    pub fn leader(&self) -> Option<usize> {
        for (i, p) in self.procs.iter().enumerate() {
            if p.is_none() {
                continue;
            }
            let out = Command::new(BIN).args(["store", "--peer", &self.peers[i], "--token", &self.token, "members"]).output().ok()?;
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if let Some(line) = text.lines().find(|l| l.contains("leader")) {
                return self.peers.iter().position(|p| line.contains(p.as_str()));
            }
        }
        None
    }
}

/// Asks the DNS server at `server` (UDP) for the A records of `name`:
/// Ok(addresses) on NOERROR, Err(rcode) otherwise (3 is NXDOMAIN).
pub fn dns_a(server: &str, name: &str) -> Result<Vec<std::net::Ipv4Addr>, u8> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    socket.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    let id: u16 = (std::process::id() as u16) ^ 0x5a5a;
    let mut q = vec![(id >> 8) as u8, id as u8, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    socket.send_to(&q, server).expect("send");
    let mut buf = [0u8; 1500];
    let Ok(n) = socket.recv(&mut buf) else { return Err(255) };
    let r = &buf[..n];
    let rcode = r[3] & 0x0f;
    if rcode != 0 {
        return Err(rcode);
    }
    let answers = u16::from_be_bytes([r[6], r[7]]) as usize;
    // Skip the question: the name we sent, then type and class.
    let mut i = q.len();
    let mut out = Vec::new();
    for _ in 0..answers {
        // Owner name: a compression pointer or labels.
        while i < r.len() {
            if r[i] & 0xc0 == 0xc0 {
                i += 2;
                break;
            }
            if r[i] == 0 {
                i += 1;
                break;
            }
            i += r[i] as usize + 1;
        }
        if i + 10 > r.len() {
            break;
        }
        let rtype = u16::from_be_bytes([r[i], r[i + 1]]);
        let len = u16::from_be_bytes([r[i + 8], r[i + 9]]) as usize;
        i += 10;
        if rtype == 1 && len == 4 && i + 4 <= r.len() {
            out.push(std::net::Ipv4Addr::new(r[i], r[i + 1], r[i + 2], r[i + 3]));
        }
        i += len;
    }
    Ok(out)
}

/// One HTTP/1.0 GET of `/` at `addr`: the body, or the connection error.
pub fn http_get(addr: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().expect("socket address");
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default())
}

/// Whether this process may program nftables (root and a working `nft`).
pub fn nft_usable() -> bool {
    let root =
        std::process::Command::new("id").arg("-u").output().map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0").unwrap_or(false);
    root && std::process::Command::new("nft").args(["list", "tables"]).output().map(|o| o.status.success()).unwrap_or(false)
}

/// The nftables table of a node, left when its `flotilla up` is killed;
/// removed when dropped.
pub struct TableGone(pub String);

impl Drop for TableGone {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft").args(["delete", "table", "ip", &format!("flotilla_{}", self.0)]).output();
    }
}

/// Whether the tests on real containers with the nftables proxy can run
/// here (saying why not), with the test image built.
pub fn docker_and_nft_ready() -> bool {
    if !docker(&["info"]).0 {
        eprintln!("SKIPPED: no Docker engine answers");
        return false;
    }
    if !nft_usable() {
        eprintln!("SKIPPED: programming nftables needs root and the nft tool");
        return false;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/build-image.sh");
    assert!(std::process::Command::new("bash").arg(script).status().map(|s| s.success()).unwrap_or(false), "build-image.sh failed");
    true
}

/// `flotilla up` as node `node` on the docker runtime with the nftables
/// proxy, its API in plain HTTP on `http`, pod subnets from `cluster_cidr`
/// (one per test, apart from the other Docker tests').
pub fn docker_up(node: &str, data: &std::path::Path, http: &str, cluster_cidr: &str) -> Proc {
    spawn(&[
        "up",
        "--runtime",
        "docker",
        "--node-name",
        node,
        "--data-dir",
        data.to_str().expect("utf8"),
        "--peer",
        &free_udp(),
        "--insecure-http",
        http,
        "--http",
        "127.0.0.1:0",
        "--proxy",
        "nftables",
        "--dns-listen",
        "127.0.0.1:0",
        "--cluster-cidr",
        cluster_cidr,
    ])
}

/// The container of `pod` in `ns` on `node`.
pub fn container_of(node: &str, ns: &str, pod: &str) -> Option<String> {
    let (_, out) = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.flotilla.node={node}"),
        "--filter",
        &format!("label=io.flotilla.namespace={ns}"),
        "--filter",
        &format!("label=io.flotilla.pod={pod}"),
    ]);
    out.lines().next().map(String::from)
}

/// Removes the Docker containers and networks of these nodes when
/// dropped: a killed agent leaves them, and a failed test must not leave
/// subnets taken for the next.
pub struct DockerLeftovers(pub Vec<String>);

impl Drop for DockerLeftovers {
    fn drop(&mut self) {
        let docker = |args: &[&str]| {
            std::process::Command::new("docker")
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default()
        };
        for node in &self.0 {
            let label = format!("label=io.flotilla.node={node}");
            for id in docker(&["ps", "-aq", "--filter", &label]).lines().filter(|l| !l.is_empty()) {
                docker(&["rm", "-f", id]);
            }
            for id in docker(&["network", "ls", "-q", "--filter", &label]).lines().filter(|l| !l.is_empty()) {
                docker(&["network", "rm", id]);
            }
        }
    }
}

/// Runs the docker CLI: (succeeded, trimmed stdout).
pub fn docker(args: &[&str]) -> (bool, String) {
    match std::process::Command::new("docker").args(args).output() {
        Ok(out) => (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_string()),
        Err(e) => (false, e.to_string()),
    }
}

/// A `flotilla server` process of a test cluster; killed when dropped.
pub struct StoreServer {
    pub id: u64,
    pub dir: std::path::PathBuf,
    pub peer: String,
    /// The HTTP API's address, the same across restarts.
    pub http: String,
    child: Option<Child>,
    stopped: bool,
    starts: u32,
}

impl StoreServer {
    pub fn new(id: u64, dir: std::path::PathBuf, peer: String) -> Self {
        StoreServer { id, dir, peer, http: free_tcp(), child: None, stopped: false, starts: 0 }
    }

    pub fn spawn(&mut self, extra: &[&str]) {
        self.starts += 1;
        let log = std::fs::File::create(self.dir.with_extension(format!("log{}", self.starts))).expect("log file");
        let child = Command::new(BIN)
            .args(["server", "--id", &self.id.to_string(), "--data-dir"])
            .arg(&self.dir)
            .args(["--peer", &self.peer, "--insecure-http", &self.http, "--http", "127.0.0.1:0"])
            .args(extra)
            .env("FLOTILLA_LOG", "warn")
            .env("FLOTILLA_TOKEN_AUTH_FILE", token_file())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn flotilla server");
        self.child = Some(child);
    }

    /// Sends `kill SIG` (e.g. -STOP, -CONT) to the process.
    pub fn signal(&mut self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill").args([sig, &c.id().to_string()]).status().map(|s| s.success()).unwrap_or(false);
            assert!(ok, "kill {sig} failed");
            self.stopped = sig == "-STOP";
        }
    }

    pub fn kill9(&mut self) {
        if self.stopped {
            self.signal("-CONT");
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for StoreServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Network partitions between processes on loopback, with nftables: a rule
/// drops UDP (on receipt, so a sender sees plain loss) from one member's peer port to another's, both ways, so the
/// two members cannot reach each other while clients (other ports) still
/// reach both. Each test gets a table of its own, removed when dropped.
pub struct Partitions {
    table: String,
}

impl Partitions {
    /// `None`, with a message saying why, where nftables cannot be used
    /// (not installed, not root).
    pub fn new() -> Option<Partitions> {
        let table = format!("flotilla_test_{}", std::process::id());
        let script =
            format!("add table inet {table}\nadd chain inet {table} input {{ type filter hook input priority 0; policy accept; }}\n");
        match nft(&script) {
            Ok(()) => Some(Partitions { table }),
            Err(e) => {
                eprintln!("SKIPPED partitions: nftables is not usable here ({e}); run as root with nft installed to include them");
                None
            }
        }
    }

    /// Cuts the link between the members at peer addresses `a` and `b`.
    pub fn cut(&self, a: &str, b: &str) {
        let (pa, pb) = (port_of(a), port_of(b));
        let t = &self.table;
        let script = format!(
            "add rule inet {t} input udp sport {pa} udp dport {pb} drop\nadd rule inet {t} input udp sport {pb} udp dport {pa} drop\n"
        );
        nft(&script).expect("add a partition rule");
    }

    /// Removes every cut.
    pub fn heal(&self) {
        nft(&format!("flush chain inet {} input\n", self.table)).expect("flush the partition rules");
    }
}

impl Drop for Partitions {
    fn drop(&mut self) {
        let _ = nft(&format!("delete table inet {}\n", self.table));
    }
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit(':').next().and_then(|p| p.parse().ok()).expect("an address with a port")
}

fn nft(script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft: {e}"))?;
    child.stdin.take().expect("stdin").write_all(script.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}
