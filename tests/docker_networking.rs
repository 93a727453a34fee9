//! Service networking on real containers: `flotilla up --runtime docker`
//! with the nftables proxy. Two namespaces each run a web Deployment of
//! three replicas behind a Service and a client pod. A client reaches its
//! own service by short name, by full name and by VIP; connections spread
//! over the replicas; a killed replica does not break the service; a
//! NetworkPolicy admitting only its own namespace stops the other
//! namespace's client while its own gets through, until it is deleted; a
//! NodePort answers connections from another network namespace (another
//! machine, as far as the node can tell).
//! Needs a Docker engine, root and nft; elsewhere it prints SKIPPED.

use std::collections::BTreeSet;

mod common;
use common::*;

fn namespace(ns: &str) -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: {ns}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}}}
spec:
  replicas: 3
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: flotilla/busybox:latest
        imagePullPolicy: IfNotPresent
        command: [sh, -c, 'hostname > /www/index.html; exec httpd -f -p 8080 -h /www']
        ports: [{{name: http, containerPort: 8080}}]
        readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  selector: {{app: web}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - {{name: main, image: flotilla/busybox:latest, imagePullPolicy: IfNotPresent, command: [sleep, '3600']}}
"
    )
}

const NODE_PORT: &str = "apiVersion: v1
kind: Service
metadata: {name: web-outside, namespace: alpha}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http, nodePort: 30777}]
";

/// A network namespace joined to the host by a veth pair: a client from
/// outside the node. Removed when dropped.
struct OutsideHost {
    netns: String,
    host_side: String,
}

impl OutsideHost {
    fn new(tag: &str) -> Option<OutsideHost> {
        let (netns, host_side, inside) = (format!("fl{tag}"), format!("fv{tag}a"), format!("fv{tag}b"));
        let me = OutsideHost { netns: netns.clone(), host_side: host_side.clone() };
        let ip = |args: &[&str]| std::process::Command::new("ip").args(args).status().map(|s| s.success()).unwrap_or(false);
        let ok = ip(&["netns", "add", &netns])
            && ip(&["link", "add", &host_side, "type", "veth", "peer", "name", &inside])
            && ip(&["link", "set", &inside, "netns", &netns])
            && ip(&["addr", "add", "192.168.251.1/30", "dev", &host_side])
            && ip(&["link", "set", &host_side, "up"])
            && ip(&["netns", "exec", &netns, "ip", "addr", "add", "192.168.251.2/30", "dev", &inside])
            && ip(&["netns", "exec", &netns, "ip", "link", "set", &inside, "up"]);
        ok.then_some(me)
    }

    /// One GET from outside to the node's address on `port`.
    fn fetch(&self, port: u16) -> Option<String> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &self.netns, "curl", "-s", "-m", "3", &format!("http://192.168.251.1:{port}/")])
            .output()
            .ok()?;
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !body.is_empty()).then_some(body)
    }
}

impl Drop for OutsideHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.host_side]).status();
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.netns]).status();
    }
}

const OWN_NAMESPACE_ONLY: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: own-namespace-only, namespace: alpha}
spec:
  podSelector: {}
  policyTypes: [Ingress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: alpha}}}]
";

/// One HTTP GET from inside `container`; the body, or None when it failed
/// or took more than 3 s (a dropped connection hangs until then).
fn fetch_from(container: &str, url: &str) -> Option<String> {
    let (ok, out) = docker(&["exec", container, "timeout", "3", "wget", "-q", "-O", "-", url]);
    ok.then(|| out.trim().to_string()).filter(|s| !s.is_empty())
}

#[test]
fn services_dns_and_network_policy_on_real_containers() {
    if !docker_and_nft_ready() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let node = format!("dn{}", std::process::id());
    let (_leftovers, _table) = (DockerLeftovers(vec![node.clone()]), TableGone(node.clone()));
    let http = free_tcp();
    let api = format!("http://{http}");
    let _up = docker_up(&node, &dir.path().join("data"), &http, "10.233.0.0/16");
    until("the node is ready", || cli(&api, &["get", "nodes"], None).1.contains(" Ready"));
    for ns in ["alpha", "beta"] {
        assert_eq!(cli(&api, &["apply", "-f", "-"], Some(&namespace(ns))).0, 0);
    }
    until("six web replicas and two clients running", || {
        let (_, out) = cli(&api, &["get", "pods", "-A"], None);
        out.lines().filter(|l| l.contains("web-") && l.contains("Running")).count() == 6
            && out.lines().filter(|l| l.contains("client") && l.contains("Running")).count() == 2
    });
    let (client_a, client_b) =
        (container_of(&node, "alpha", "client").expect("client a"), container_of(&node, "beta", "client").expect("client b"));
    let (_, svc) = cli(&api, &["get", "service", "web", "-n", "alpha", "-o", "json"], None);
    let svc: serde_json::Value = serde_json::from_str(&svc).expect("service json");
    let vip = svc.pointer("/spec/clusterIP").and_then(|v| v.as_str()).expect("cluster IP").to_string();

    // Its own service by short name, full name and VIP.
    until("client a reaches web by its short name", || fetch_from(&client_a, "http://web").is_some());
    assert!(fetch_from(&client_a, "http://web.alpha.svc.cluster.local").is_some(), "by full name");
    assert!(fetch_from(&client_a, &format!("http://{vip}")).is_some(), "by VIP");
    assert!(fetch_from(&client_b, "http://web.alpha").is_some(), "another namespace's service by NAME.NAMESPACE");

    // Connections spread over the three replicas.
    until("all three replicas answer through the service", || {
        let seen: BTreeSet<String> = (0..20).filter_map(|_| fetch_from(&client_a, "http://web")).collect();
        seen.len() == 3
    });

    // Killing a replica does not break the service.
    let (_, replicas) = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=io.flotilla.node={node}"),
        "--filter",
        "label=io.flotilla.namespace=alpha",
        "--filter",
        "label=io.flotilla.container=httpd",
    ]);
    let victim = replicas.lines().next().expect("a web replica of alpha").to_string();
    assert!(docker(&["kill", &victim]).0);
    until("ten requests in a row succeed after a replica was killed", || (0..10).all(|_| fetch_from(&client_a, "http://web").is_some()));

    // A node port answers from outside the node (Docker's own forwarding
    // rules would drop it without the agent's DOCKER-USER rule).
    assert_eq!(cli(&api, &["apply", "-f", "-"], Some(NODE_PORT)).0, 0);
    let curl = std::process::Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success());
    match OutsideHost::new(&std::process::id().to_string()).filter(|_| curl) {
        Some(outside) => until("the node port answers a client outside the node", || outside.fetch(30777).is_some()),
        None => eprintln!("SKIPPED (node port from outside): no `ip netns` or curl here"),
    }

    // Only alpha may reach alpha's pods, through the service or not.
    assert_eq!(cli(&api, &["apply", "-f", "-"], Some(OWN_NAMESPACE_ONLY)).0, 0);
    until("beta's client is stopped by the policy", || fetch_from(&client_b, "http://web.alpha").is_none());
    assert!(fetch_from(&client_a, "http://web").is_some(), "alpha's own client still gets through");
    assert!(fetch_from(&client_b, "http://web").is_some(), "beta's own service is not affected");
    assert_eq!(cli(&api, &["delete", "networkpolicy", "own-namespace-only", "-n", "alpha"], None).0, 0);
    until("beta's client gets through again", || fetch_from(&client_b, "http://web.alpha").is_some());
}
