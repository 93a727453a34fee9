//! A remote node agent process (sim runtime) reaching three server
//! processes over QUIC with the join token: it runs the pods bound to its
//! node, and when the server it talks to is killed it carries on through
//! another, keeping its pods.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_flotilla");
const DEADLINE: Duration = Duration::from_secs(60);

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp() -> String {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("udp").local_addr().expect("addr").to_string()
}

fn free_tcp() -> String {
    std::net::TcpListener::bind("127.0.0.1:0").expect("tcp").local_addr().expect("addr").to_string()
}

fn spawn(args: &[&str]) -> Proc {
    Proc(Command::new(BIN).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn flotilla"))
}

fn cli(server: &str, args: &[&str], stdin: Option<&str>) -> (i32, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(args)
        .env("FLOTILLA_SERVER", server)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if let Some(s) = stdin {
        child.stdin.take().expect("stdin").write_all(s.as_bytes()).expect("write");
    }
    let out = child.wait_with_output().expect("output");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn pod(name: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec: {{nodeName: far-1, containers: [{{name: c, image: flotilla/busybox:latest}}]}}\n")
}

#[test]
fn a_remote_agent_runs_pods_and_survives_the_loss_of_its_server() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = |i: u32| -> PathBuf { root.path().join(format!("m{i}")) };
    let peers: Vec<String> = (0..3).map(|_| free_udp()).collect();
    let https: Vec<String> = (0..3).map(|_| free_tcp()).collect();
    let mut servers = vec![Some(spawn(&[
        "server",
        "--id",
        "1",
        "--data-dir",
        dir(1).to_str().expect("utf8"),
        "--peer",
        &peers[0],
        "--http",
        &https[0],
        "--bootstrap",
    ]))];
    until("join token", || dir(1).join("join-token").exists());
    let token = std::fs::read_to_string(dir(1).join("join-token")).expect("token").trim().to_string();
    for i in 1..3 {
        let d = dir(i as u32 + 1);
        servers.push(Some(spawn(&[
            "server",
            "--id",
            &(i + 1).to_string(),
            "--data-dir",
            d.to_str().expect("utf8"),
            "--peer",
            &peers[i],
            "--http",
            &https[i],
            "--join",
            &peers[0],
            "--token",
            &token,
        ])));
    }
    let api = format!("http://{}", https[2]);
    until("the cluster serves the API", || cli(&api, &["get", "namespaces"], None).1.contains("default"));
    let server_list = format!("{},{}", peers[0], peers[1]);
    let _agent = spawn(&[
        "agent",
        "--name",
        "far-1",
        "--server",
        &server_list,
        "--token",
        &token,
        "--runtime",
        "sim",
        "--cpu",
        "2",
        "--memory",
        "4Gi",
    ]);
    until("the node registered", || cli(&api, &["get", "nodes"], None).1.contains("far-1"));
    let (code, _) = cli(&api, &["apply", "-f", "-"], Some(&pod("p1")));
    assert_eq!(code, 0);
    until("p1 running", || {
        let out = cli(&api, &["get", "pods"], None).1;
        out.lines().any(|l| l.starts_with("p1 ") && l.contains("Running"))
    });

    // Kill the server the agent talks to first.
    servers[0].take();
    // It was the leader too: writes wait for the election.
    until("p2 accepted", || cli(&api, &["apply", "-f", "-"], Some(&pod("p2"))).0 == 0);
    until("p2 running through the other server", || {
        let out = cli(&api, &["get", "pods"], None).1;
        out.lines().any(|l| l.starts_with("p2 ") && l.contains("Running"))
    });
    let out = cli(&api, &["get", "pods"], None).1;
    let p1 = out.lines().find(|l| l.starts_with("p1 ")).expect("p1 listed");
    assert!(p1.contains("Running") && p1.split_whitespace().nth(3) == Some("0"), "p1 kept running without a restart: {p1}");
    let (code, _) = cli(&api, &["delete", "pod", "p1"], None);
    assert_eq!(code, 0);
    until("p1 deleted by the agent", || cli(&api, &["get", "pod", "p1"], None).0 == 1);
}
