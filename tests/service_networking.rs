//! Services on the process runtime, from the host: `flotilla up` with the
//! nftables proxy and cluster DNS. Three pods behind a Service answer on
//! its virtual IP, connections spread over them, cluster DNS names the
//! VIP, a Service without ready endpoints refuses at once, a deleted pod
//! leaves the rotation, and bad Services are refused with the status code
//! and the field named. Needs root and nft; elsewhere it prints SKIPPED.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

mod common;
use common::*;

fn web_pod(i: usize, port: u16, dir: &std::path::Path) -> String {
    let root = dir.join(format!("web-{i}"));
    std::fs::create_dir_all(&root).expect("dir");
    std::fs::write(root.join("index.html"), format!("web-{i}\n")).expect("index");
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: web-{i}, namespace: shop, labels: {{app: web}}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: http
    image: python
    command: [python3, -m, http.server, '{port}', --bind, 127.0.0.1, --directory, '{}']
    ports: [{{name: http, containerPort: {port}}}]
    readinessProbe: {{tcpSocket: {{port: {port}}}, periodSeconds: 1}}
",
        root.display()
    )
}

const SERVICES: &str = "apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: nobody, namespace: shop}
spec:
  selector: {app: nothing-has-this}
  ports: [{port: 80}]
";

fn cluster_ip(api: &str, name: &str) -> Option<String> {
    let (code, out) = cli(api, &["get", "service", name, "-n", "shop", "-o", "json"], None);
    if code != 0 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    v.pointer("/spec/clusterIP").and_then(|s| s.as_str()).map(String::from)
}

/// Tables this test's nodes leave when killed (a node stopped gracefully
/// removes its own): they would steer the same VIPs to dead ports in the
/// next run, so they go before and after.
fn remove_test_tables() {
    let out = std::process::Command::new("nft").args(["list", "tables"]).output().expect("nft");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(table) = line.strip_prefix("table ip ").filter(|t| t.starts_with("flotilla_net")) {
            let _ = std::process::Command::new("nft").args(["delete", "table", "ip", table]).status();
        }
    }
}

struct TablesGone;

impl Drop for TablesGone {
    fn drop(&mut self) {
        remove_test_tables();
    }
}

#[test]
fn services_reach_their_pods_through_virtual_ips_and_cluster_dns() {
    if !nft_usable() {
        eprintln!("SKIPPED: programming nftables needs root and the nft tool");
        return;
    }
    remove_test_tables();
    let _tables_gone = TablesGone;
    let dir = tempfile::tempdir().expect("tempdir");
    let http = free_tcp();
    let dns = free_tcp();
    let api = format!("http://{http}");
    let data = dir.path().join("data");
    let node = format!("net{}", std::process::id());
    let _up = spawn(&[
        "up",
        "--runtime",
        "process",
        "--node-name",
        &node,
        "--data-dir",
        data.to_str().expect("utf8"),
        "--peer",
        &free_udp(),
        "--insecure-http",
        &http,
        "--http",
        "127.0.0.1:0",
        "--proxy",
        "nftables",
        "--dns-listen",
        &dns,
    ]);
    until("the node is ready", || cli(&api, &["get", "nodes"], None).1.contains(" Ready"));
    assert_eq!(cli(&api, &["apply", "-f", "-"], Some(SERVICES)).0, 0);
    let ports: Vec<u16> = (0..3).map(|_| free_tcp().rsplit(':').next().and_then(|p| p.parse().ok()).expect("port")).collect();
    for (i, port) in ports.iter().enumerate() {
        assert_eq!(cli(&api, &["apply", "-f", "-"], Some(&web_pod(i, *port, dir.path()))).0, 0);
    }
    let vip = cluster_ip(&api, "web").expect("web has a cluster IP");
    assert!(
        vip.starts_with("10.9") || vip.starts_with("10.10") || vip.starts_with("10.11"),
        "VIP {vip} from the service range 10.96.0.0/12"
    );
    let nobody = cluster_ip(&api, "nobody").expect("nobody has a cluster IP");
    assert_ne!(vip, nobody, "two services never share a VIP");

    // Through the VIP, connections spread over the three pods.
    let target = format!("{vip}:80");
    until("all three pods answer through the VIP", || {
        let seen: BTreeSet<String> = (0..30).filter_map(|_| http_get(&target).ok()).map(|b| b.trim().to_string()).collect();
        seen.len() == 3
    });

    // Cluster DNS: the full name is the VIP; unknown names do not exist.
    assert_eq!(dns_a(&dns, "web.shop.svc.cluster.local"), Ok(vec![vip.parse().expect("ip")]));
    assert_eq!(dns_a(&dns, "WEB.shop.svc.cluster.local."), Ok(vec![vip.parse().expect("ip")]), "names are case-insensitive");
    assert_eq!(dns_a(&dns, "ghost.shop.svc.cluster.local"), Err(3), "an unknown service is NXDOMAIN");

    // No ready endpoints: refused at once, never left hanging.
    let started = Instant::now();
    let refused = http_get(&format!("{nobody}:80"));
    assert!(refused.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused), "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "refused after {:?}", started.elapsed());

    // A deleted pod leaves the rotation.
    assert_eq!(cli(&api, &["delete", "pod", "web-0", "-n", "shop"], None).0, 0);
    until("web-0 gets no more connections", || {
        let seen: BTreeSet<String> = (0..20).filter_map(|_| http_get(&target).ok()).map(|b| b.trim().to_string()).collect();
        seen == BTreeSet::from(["web-1".to_string(), "web-2".to_string()])
    });

    // Bad Services: the field is named and the status code is right.
    let bad_port = "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: shop}\nspec: {ports: [{port: 70000}]}\n";
    let (code, _, err) = flotilla(&api, &["apply", "-f", "-"], Some(bad_port));
    assert!(code != 0 && err.contains("spec.ports[0].port"), "{err}");
    let dup = "apiVersion: v1\nkind: Service\nmetadata: {name: dup, namespace: shop}\nspec: {ports: [{name: a, port: 80}, {name: b, port: 80}]}\n";
    let (code, _, err) = flotilla(&api, &["apply", "-f", "-"], Some(dup));
    assert!(code != 0 && err.contains("duplicate port 80/TCP"), "{err}");
    let np = |name: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{type: NodePort, selector: {{app: web}}, ports: [{{port: 80, targetPort: http, nodePort: 30999}}]}}\n")
    };
    assert_eq!(cli(&api, &["apply", "-f", "-"], Some(&np("np-one"))).0, 0);
    let (code, _, err) = flotilla(&api, &["apply", "-f", "-"], Some(&np("np-two")));
    assert!(code != 0 && err.contains("30999 is already allocated to service shop/np-one"), "{err}");
    let policy = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: shop}\nspec: {podSelector: {matchExpressions: [{key: app, operator: Sideways}]}}\n";
    let (code, _, err) = flotilla(&api, &["apply", "-f", "-"], Some(policy));
    assert!(code != 0 && err.contains("spec.podSelector"), "{err}");
}
