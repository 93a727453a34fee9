//! The object commands run as a user runs them: the built `flotilla`
//! binary against a `flotilla server` process.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

fn start_server(dir: &std::path::Path) -> (Proc, String) {
    let http = free_tcp();
    let child = Command::new(BIN)
        .args(["server", "--id", "1", "--bootstrap", "--data-dir"])
        .arg(dir)
        .args(["--peer", &free_udp(), "--insecure-http", &http, "--http", "127.0.0.1:0"])
        .env("FLOTILLA_TOKEN_AUTH_FILE", token_file())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let url = format!("http://{http}");
    let start = Instant::now();
    loop {
        let (code, out, _) = flotilla(&url, &["get", "namespaces"], None);
        if code == 0 && out.contains("default") {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "server never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    (Proc(child), url)
}

const MANIFEST: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: flotilla/busybox:latest
        resources:
          requests: {cpu: 250m, memory: 64Mi}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: shop
data:
  colour: blue
"#;

#[test]
fn apply_get_describe_scale_delete_like_kubectl() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_server, url) = start_server(&dir.path().join("data"));
    let file = dir.path().join("shop.yaml");
    std::fs::write(&file, MANIFEST).expect("write manifest");
    let f = file.to_str().expect("utf8");

    let (code, out, err) = flotilla(&url, &["apply", "-f", f], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "namespace/shop created\ndeployment.apps/web created\nconfigmap/settings created\n");
    let (_, out, _) = flotilla(&url, &["apply", "-f", f], None);
    assert_eq!(out, "namespace/shop unchanged\ndeployment.apps/web unchanged\nconfigmap/settings unchanged\n");
    // Change one field and drop another: configured, and the dropped key goes.
    let changed = MANIFEST.replace("colour: blue", "size: large").replace("replicas: 2", "replicas: 3");
    let (_, out, err) = flotilla(&url, &["apply", "-f", "-"], Some(&changed));
    assert_eq!(out, "namespace/shop unchanged\ndeployment.apps/web configured\nconfigmap/settings configured\n", "{err}");
    let (_, yaml, _) = flotilla(&url, &["get", "configmap", "settings", "-n", "shop", "-o", "yaml"], None);
    assert!(yaml.contains("size: large") && !yaml.contains("colour"), "{yaml}");

    let (code, table, _) = flotilla(&url, &["get", "deployments", "-n", "shop"], None);
    assert_eq!(code, 0);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("READY") && lines[0].contains("UP-TO-DATE") && lines[0].contains("AGE"),
        "{table}"
    );
    assert!(lines[1].starts_with("web ") && lines[1].contains("0/3"), "{table}");
    let (_, wide, _) = flotilla(&url, &["get", "deploy", "-n", "shop", "-o", "wide"], None);
    assert!(wide.contains("IMAGES") && wide.contains("flotilla/busybox:latest"), "{wide}");
    let (_, all, _) = flotilla(&url, &["get", "configmaps", "-A"], None);
    assert!(all.starts_with("NAMESPACE") && all.contains("shop"), "{all}");
    let (_, json_out, _) = flotilla(&url, &["get", "deployment", "web", "-n", "shop", "-o", "json"], None);
    let v: serde_json::Value = serde_json::from_str(&json_out).expect("json output");
    assert_eq!(v["spec"]["replicas"], 3);
    let (_, labelled, _) = flotilla(&url, &["get", "deploy", "-n", "shop", "-l", "app=nope"], None);
    assert!(labelled.is_empty());

    let (code, out, _) = flotilla(&url, &["scale", "deployment", "web", "-n", "shop", "--replicas", "5"], None);
    assert_eq!((code, out.as_str()), (0, "deployment.apps/web scaled\n"));
    let (_, described, _) = flotilla(&url, &["describe", "deployment", "web", "-n", "shop"], None);
    assert!(described.contains("Name:         web") && described.contains("replicas: 5") && described.contains("Events:"), "{described}");

    let (code, out, _) = flotilla(&url, &["delete", "configmap", "settings", "-n", "shop"], None);
    assert_eq!((code, out.as_str()), (0, "configmap \"settings\" deleted\n"));
    let (code, _, err) = flotilla(&url, &["get", "configmap", "settings", "-n", "shop"], None);
    assert_eq!(code, 1);
    assert!(err.contains("not found"), "{err}");
    let (code, _, _) = flotilla(&url, &["events", "-A"], None);
    assert_eq!(code, 0);
}

#[test]
fn bad_input_and_an_absent_server_give_one_line_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nobody = format!("http://{}", free_tcp());
    let (code, _, err) = flotilla(&nobody, &["get", "pods"], None);
    assert_eq!(code, 1);
    assert!(err.starts_with(&format!("error: cannot reach flotilla at {nobody}")), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let (_server, url) = start_server(&dir.path().join("data"));
    let (code, _, err) = flotilla(&url, &["get", "widgets"], None);
    assert_eq!(code, 1);
    assert!(err.contains("doesn't have a resource type \"widgets\""), "{err}");
    let (code, _, err) = flotilla(&url, &["apply", "-f", "-"], Some("kind: [unclosed"));
    assert_eq!(code, 1);
    assert!(err.contains("not valid YAML"), "{err}");
    let bad = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: bad}\nspec:\n  replicas: -1\n  selector: {matchLabels: {app: a}}\n  template:\n    metadata: {labels: {app: b}}\n    spec: {containers: [{name: c, image: i}]}\n";
    let (code, _, err) = flotilla(&url, &["apply", "-f", "-"], Some(bad));
    assert_eq!(code, 1);
    assert!(err.contains("spec.replicas") && err.contains("`selector` does not match template `labels`"), "{err}");
    let (code, _, err) = flotilla(&url, &["delete", "pod", "ghost"], None);
    assert_eq!(code, 1);
    assert!(err.contains("pod \"ghost\"") && err.contains("not found"), "{err}");

    // `delete -f DIR` does what `apply -f DIR` does with a file it cannot
    // resolve: reports it and goes on with the others.
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).expect("mkdir");
    std::fs::write(manifests.join("a.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: keep-a}\n").expect("write");
    std::fs::write(manifests.join("b.yaml"), "apiVersion: v1\nkind: Widget\nmetadata: {name: w}\n").expect("write");
    std::fs::write(manifests.join("c.yaml"), "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: keep-c}\n").expect("write");
    let dir_arg = manifests.to_str().expect("utf8");
    let (code, _, err) = flotilla(&url, &["apply", "-f", dir_arg], None);
    assert_eq!(code, 1, "one file names a kind flotilla does not serve: {err}");
    let (code, out, err) = flotilla(&url, &["delete", "-f", dir_arg], None);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("Widget") && out.contains("keep-a") && out.contains("keep-c"), "{out}{err}");
    let (_, out, _) = flotilla(&url, &["get", "configmaps"], None);
    assert!(!out.contains("keep-a") && !out.contains("keep-c"), "{out}");
}

#[test]
fn up_runs_a_pod_shows_its_logs_and_stops_it_on_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let http = free_tcp();
    let url = format!("http://{http}");
    let child = Command::new(BIN)
        .args(["up", "--runtime", "process", "--node-name", "n1", "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--peer", &free_udp(), "--insecure-http", &http, "--http", "127.0.0.1:0", "--proxy", "off", "--dns-listen", "127.0.0.1:0"])
        .env("FLOTILLA_TOKEN_AUTH_FILE", token_file())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn flotilla up");
    let _up = Proc(child);
    let start = Instant::now();
    loop {
        let (code, out, _) = flotilla(&url, &["get", "nodes"], None);
        if code == 0 && out.contains("n1") && out.contains("Ready") {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "flotilla up never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello-pod.yaml"))
        .expect("example")
        .replace("NODE_NAME", "n1");
    let (code, out, err) = flotilla(&url, &["apply", "-f", "-"], Some(&manifest));
    assert_eq!((code, out.as_str()), (0, "pod/hello created\n"), "{err}");
    let start = Instant::now();
    loop {
        let (_, out, _) = flotilla(&url, &["logs", "hello", "--tail", "1"], None);
        if out.starts_with("hello from flotilla") {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "no logs: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (_, pods, _) = flotilla(&url, &["get", "pods"], None);
    assert!(pods.contains("hello") && pods.contains("Running") && pods.contains("1/1"), "{pods}");
    let (code, _, _) = flotilla(&url, &["delete", "pod", "hello"], None);
    assert_eq!(code, 0);
    let start = Instant::now();
    loop {
        let (code, _, _) = flotilla(&url, &["get", "pod", "hello"], None);
        if code == 1 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "pod never went away");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A pod that ran to completion keeps its logs; it ran as its
    // runAsUser, not as the agent (when the test can switch users).
    let as_root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false);
    let run_as = if as_root { "65534" } else { "" };
    let once = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: once}}\nspec:\n  restartPolicy: Never\n  nodeName: n1\n{}  containers:\n  - name: c\n    image: flotilla/busybox:latest\n    command: [sh, -c, 'echo ran as $(id -u)']\n",
        if as_root { format!("  securityContext: {{runAsUser: {run_as}}}\n") } else { String::new() }
    );
    assert_eq!(flotilla(&url, &["apply", "-f", "-"], Some(&once)).0, 0);
    let start = Instant::now();
    loop {
        let (_, out, err) = flotilla(&url, &["logs", "once"], None);
        let (_, pods, _) = flotilla(&url, &["get", "pod", "once"], None);
        if pods.contains("Completed") && out.starts_with("ran as ") {
            if as_root {
                assert_eq!(out, "ran as 65534\n");
            } else {
                eprintln!("not root: runAsUser is not exercised here");
            }
            break;
        }
        assert!(start.elapsed() < DEADLINE, "a completed pod's logs never showed: {pods} {out} {err}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(flotilla(&url, &["delete", "pod", "once"], None).0, 0);

    // A Deployment through the scheduler and controllers, a rolling
    // update followed with `rollout status`, an undo, and a chaos kill of
    // one replica that its restart policy brings back.
    let web = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/web-deployment.yaml")).expect("example");
    assert_eq!(flotilla(&url, &["apply", "-f", "-"], Some(&web)).0, 0);
    let running =
        |url: &str| flotilla(url, &["get", "pods"], None).1.lines().filter(|l| l.starts_with("web-") && l.contains(" Running ")).count();
    let start = Instant::now();
    while running(&url) != 3 {
        assert!(start.elapsed() < DEADLINE, "3 web replicas never ran");
        std::thread::sleep(Duration::from_millis(200));
    }
    let v2 = web.replace("web v1 serving", "web v2 serving");
    assert_eq!(flotilla(&url, &["apply", "-f", "-"], Some(&v2)).0, 0);
    let (code, out, err) = flotilla(&url, &["rollout", "status", "deployment", "web", "--timeout", "60"], None);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.ends_with("deployment \"web\" successfully rolled out\n"), "{out}");
    let (_, rs, _) = flotilla(&url, &["get", "replicasets"], None);
    assert_eq!(rs.lines().filter(|l| l.starts_with("web-")).count(), 2, "old and new ReplicaSets: {rs}");
    let (code, out, _) = flotilla(&url, &["rollout", "undo", "deployment", "web"], None);
    assert_eq!((code, out.as_str()), (0, "deployment.apps/web rolled back\n"));
    assert_eq!(flotilla(&url, &["rollout", "status", "deployment", "web", "--timeout", "60"], None).0, 0);
    let start = Instant::now();
    loop {
        let (_, pods, _) = flotilla(&url, &["get", "pods"], None);
        let names: Vec<&str> = pods.lines().filter(|l| l.starts_with("web-")).filter_map(|l| l.split_whitespace().next()).collect();
        let logs_v1 = names.iter().all(|n| flotilla(&url, &["logs", n], None).1.contains("web v1 serving"));
        if names.len() == 3 && running(&url) == 3 && logs_v1 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "undo did not bring v1 back: {pods}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let victim = flotilla(&url, &["get", "pods"], None)
        .1
        .lines()
        .find(|l| l.starts_with("web-"))
        .and_then(|l| l.split_whitespace().next())
        .expect("a replica")
        .to_string();
    let (code, out, _) = flotilla(&url, &["chaos", "kill-pod", &victim], None);
    assert!(code == 0 && out.contains("ordered kill-pod default/"), "{out}");
    let start = Instant::now();
    loop {
        let (_, pods, _) = flotilla(&url, &["get", "pods"], None);
        let line = pods.lines().find(|l| l.starts_with(victim.as_str())).unwrap_or_default().to_string();
        if line.contains(" Running ") && line.split_whitespace().nth(3) == Some("1") {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the killed replica was not restarted: {line}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
