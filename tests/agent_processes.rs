//! A remote node agent process (sim runtime) reaching three server
//! processes over QUIC with the join token: it runs the pods bound to its
//! node, and when the server it talks to is killed it carries on through
//! another, keeping its pods; its pods' logs and usage are served through
//! any server.

use std::path::PathBuf;

mod common;
use common::*;

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
        "--insecure-http",
        &https[0],
        "--http",
        "127.0.0.1:0",
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
            "--insecure-http",
            &https[i],
            "--http",
            "127.0.0.1:0",
            "--join",
            &peers[0],
            "--token",
            &token,
        ])));
    }
    let api = format!("http://{}", https[2]);
    until("the cluster serves the API", || cli(&api, &["get", "namespaces"], None).1.contains("default"));
    let server_list = format!("{},{}", peers[0], peers[1]);
    // Agents get the agent token, which reaches the agent protocol only.
    let agent_token = std::fs::read_to_string(dir(1).join("agent-token")).expect("agent token").trim().to_string();
    let agent_dir = root.path().join("agent");
    let _agent = spawn(&[
        "agent",
        "--state-dir",
        agent_dir.to_str().expect("utf8"),
        "--kubelet-listen",
        "127.0.0.1:0",
        "--name",
        "far-1",
        "--server",
        &server_list,
        "--token",
        &agent_token,
        "--runtime",
        "sim",
        "--cpu",
        "2",
        "--memory",
        "4Gi",
    ]);
    until("the node registered", || cli(&api, &["get", "nodes"], None).1.contains("far-1"));
    assert!(agent_dir.join("node-credential").exists(), "the agent keeps its node credential in its state dir");
    // A second agent process claiming far-1 is refused, and says why.
    let impostor_dir = root.path().join("impostor");
    let mut impostor = std::process::Command::new(BIN)
        .args(["agent", "--state-dir", impostor_dir.to_str().expect("utf8"), "--kubelet-listen", "127.0.0.1:0"])
        .args(["--name", "far-1", "--server", &server_list, "--token", &agent_token, "--runtime", "sim"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the impostor");
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = impostor.try_wait().expect("wait") {
            break status;
        }
        if start.elapsed() > DEADLINE {
            let _ = impostor.kill();
            panic!("a second agent as far-1 was not refused within {DEADLINE:?}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut impostor.stderr.take().expect("stderr"), &mut err).expect("stderr");
    assert!(!status.success() && err.contains("held by another agent"), "the impostor is refused: {status}, {err}");
    let (code, _) = cli(&api, &["apply", "-f", "-"], Some(&pod("p1")));
    assert_eq!(code, 0);
    until("p1 running", || {
        let out = cli(&api, &["get", "pods"], None).1;
        out.lines().any(|l| l.starts_with("p1 ") && l.contains("Running"))
    });

    // Logs and usage of a pod on an agent in another process come through
    // any server, which fetches them from the agent's own endpoint.
    let (code, logs) = cli(&api, &["logs", "p1"], None);
    assert_eq!((code, logs.trim()), (0, "simulated container c of pod p1"), "logs of a remote agent's pod");
    let (code, top) = cli(&api, &["top", "pods"], None);
    assert!(code == 0 && top.lines().any(|l| l.split_whitespace().nth(1) == Some("p1")), "top pods lists the remote pod: {top}");

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
