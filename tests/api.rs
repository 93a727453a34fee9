//! API tests against real server members in the test process: HTTP on a
//! loopback port, the registry over a real replicated store.

use std::sync::Arc;
use std::time::Duration;

use flotilla::api::auth::{Authenticator, User};
use flotilla::api::rbac_cache::RbacCache;
use flotilla::api::serve::{serve, ApiTls};
use flotilla::api::{router, ApiState};
use flotilla_actors::Registry;
use flotilla_raft::{Member, StartMode, StoreConfig};
use futures::StreamExt;
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(30);

fn free_udp() -> String {
    std::net::UdpSocket::bind("127.0.0.1:0").expect("udp").local_addr().expect("addr").to_string()
}

/// The token the tests present, in group `system:masters`.
const ADMIN_TOKEN: &str = "test-admin-token";
/// A token for a user in no group.
const ALICE_TOKEN: &str = "test-alice-token";

struct Api {
    member: Arc<Member>,
    /// Plain HTTP (tokens only).
    base: String,
    /// HTTPS with the cluster CA's serving certificate.
    https: String,
    task: tokio::task::JoinHandle<()>,
    _rbac: RbacCache,
}

fn user(name: &str, groups: &[&str]) -> User {
    User { name: name.into(), groups: groups.iter().map(|g| g.to_string()).chain(["system:authenticated".to_string()]).collect() }
}

impl Api {
    async fn start(member: Arc<Member>) -> Api {
        flotilla::install_crypto_provider();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind http");
        let tls_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind https");
        let addr = listener.local_addr().expect("addr");
        let tls_addr = tls_listener.local_addr().expect("addr");
        let registry = Registry::new(member.clone());
        let rbac = RbacCache::start(registry.clone());
        let authn = Authenticator::with_tokens([(ADMIN_TOKEN, user("test-admin", &["system:masters"])), (ALICE_TOKEN, user("alice", &[]))]);
        let state = ApiState {
            registry: registry.clone(),
            http_addr: addr.to_string(),
            agents: Default::default(),
            kubelet: Some(Arc::new(flotilla::kubelet_client::KubeletClient::new(member.ca()).expect("kubelet client"))),
            authn: Arc::new(authn),
            rbac: rbac.view.clone(),
        };
        let ca = member.ca().clone();
        let serving = ca.issue_serving("test-apiserver", &["127.0.0.1".into(), "localhost".into()]).expect("serving certificate");
        let tls = ApiTls::new(&ca.cert_pem, &serving.cert_pem, &serving.key_pem).expect("tls");
        let app = router(state);
        let task = tokio::spawn(async move {
            tokio::join!(serve(listener, None, app.clone()), serve(tls_listener, Some(tls), app));
        });
        let start = tokio::time::Instant::now();
        while let Err(e) = registry.ensure_builtin_objects().await {
            assert!(start.elapsed() < DEADLINE, "the built-in objects were never created: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Ready when the API's RBAC cache holds the default bindings.
        let discovery = flotilla::api::auth::attributes(&reqwest::Method::GET, "/apis", "");
        let alice = user("alice", &[]);
        while flotilla::api::auth::authorize(&alice, &discovery, rbac.view.snapshot().as_deref()).is_err() {
            assert!(start.elapsed() < DEADLINE, "the RBAC cache never read the default bindings");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Api { member, base: format!("http://{addr}"), https: format!("https://{tls_addr}"), task, _rbac: rbac }
    }
}

async fn single() -> (tempfile::TempDir, Api) {
    let dir = tempfile::tempdir().expect("tempdir");
    let member = Member::start(StoreConfig::new(1, dir.path().join("m1"), free_udp(), StartMode::Bootstrap)).await.expect("member");
    let api = Api::start(member).await;
    (dir, api)
}

/// A client that presents `token` (none when empty).
fn http_with(token: &str) -> reqwest::Client {
    flotilla::install_crypto_provider();
    let mut headers = reqwest::header::HeaderMap::new();
    if !token.is_empty() {
        headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {token}").parse().expect("header"));
    }
    reqwest::Client::builder().default_headers(headers).build().expect("http client")
}

async fn call(method: reqwest::Method, url: &str, content_type: &str, body: &str) -> (u16, Value) {
    call_as(&http_with(ADMIN_TOKEN), method, url, content_type, body).await
}

async fn call_as(client: &reqwest::Client, method: reqwest::Method, url: &str, content_type: &str, body: &str) -> (u16, Value) {
    let mut req = client.request(method, url);
    if !content_type.is_empty() {
        req = req.header("Content-Type", content_type);
    }
    if !body.is_empty() {
        req = req.body(body.to_string());
    }
    let resp = req.send().await.expect("request");
    let code = resp.status().as_u16();
    let v = resp.json::<Value>().await.unwrap_or(Value::Null);
    (code, v)
}

const CM: &str = "/api/v1/namespaces/default/configmaps";
const APPLIED: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: applied\n  namespace: default\ndata:\n  k: v\n";
const DEPLOY: &str = "/apis/apps/v1/namespaces/default/deployments";

fn deployment(name: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "labels": {"app": name}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": "flotilla/busybox:latest"}]}}}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crud_with_optimistic_concurrency_and_selectors() {
    let (_dir, api) = single().await;
    let b = &api.base;
    let (code, created) = call(
        reqwest::Method::POST,
        &format!("{b}{CM}"),
        "application/json",
        &json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "app", "labels": {"tier": "fe"}}, "data": {"k": "v"}})
            .to_string(),
    )
    .await;
    assert_eq!(code, 201, "{created}");
    let rv = created["metadata"]["resourceVersion"].as_str().expect("rv").to_string();
    assert_eq!(created["metadata"]["namespace"], "default");
    assert!(created["metadata"]["uid"].as_str().is_some_and(|u| u.len() == 36));

    let (code, got) = call(reqwest::Method::GET, &format!("{b}{CM}/app"), "", "").await;
    assert_eq!((code, got["data"]["k"].clone()), (200, json!("v")));
    assert_eq!(got["metadata"]["resourceVersion"], json!(rv));

    // Replace with the current resourceVersion, then again with the stale one.
    let mut changed = got.clone();
    changed["data"]["k"] = json!("v2");
    let (code, updated) = call(reqwest::Method::PUT, &format!("{b}{CM}/app"), "application/json", &changed.to_string()).await;
    assert_eq!(code, 200, "{updated}");
    let (code, stale) = call(reqwest::Method::PUT, &format!("{b}{CM}/app"), "application/json", &changed.to_string()).await;
    assert_eq!(code, 409);
    assert_eq!(stale["reason"], "Conflict");

    // Merge patch.
    let (code, patched) =
        call(reqwest::Method::PATCH, &format!("{b}{CM}/app"), "application/merge-patch+json", r#"{"data":{"extra":"1"}}"#).await;
    assert_eq!(code, 200);
    assert_eq!(patched["data"], json!({"k": "v2", "extra": "1"}));

    // Label and field selectors.
    call(
        reqwest::Method::POST,
        &format!("{b}{CM}"),
        "application/yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: other\n  labels: {tier: db}\n",
    )
    .await;
    let (_, list) = call(reqwest::Method::GET, &format!("{b}{CM}?labelSelector=tier%3Dfe"), "", "").await;
    assert_eq!(list["kind"], "ConfigMapList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let (_, list) = call(reqwest::Method::GET, &format!("{b}{CM}?fieldSelector=metadata.name%3Dother"), "", "").await;
    assert_eq!(list["items"][0]["metadata"]["name"], "other");

    // Delete, then it is gone.
    let (code, _) = call(reqwest::Method::DELETE, &format!("{b}{CM}/app"), "", "").await;
    assert_eq!(code, 200);
    let (code, gone) = call(reqwest::Method::GET, &format!("{b}{CM}/app"), "", "").await;
    assert_eq!((code, gone["reason"].clone()), (404, json!("NotFound")));

    // Scale subresource.
    call(reqwest::Method::POST, &format!("{b}{DEPLOY}"), "application/json", &deployment("web", 2).to_string()).await;
    let (code, scale) =
        call(reqwest::Method::PATCH, &format!("{b}{DEPLOY}/web/scale"), "application/merge-patch+json", r#"{"spec":{"replicas":5}}"#).await;
    assert_eq!((code, scale["kind"].clone(), scale["spec"]["replicas"].clone()), (200, json!("Scale"), json!(5)));
    let (_, d) = call(reqwest::Method::GET, &format!("{b}{DEPLOY}/web"), "", "").await;
    assert_eq!(d["spec"]["replicas"], 5);
    assert_eq!(d["metadata"]["generation"], 2);
    api.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_refused_with_the_right_status_and_changes_nothing() {
    let (_dir, api) = single().await;
    let b = &api.base;
    call(
        reqwest::Method::POST,
        &format!("{b}{CM}"),
        "application/json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"exists"}}"#,
    )
    .await;
    let before = api.member.revisions().revision;
    let big = format!(
        r#"{{"apiVersion":"v1","kind":"ConfigMap","metadata":{{"name":"big"}},"data":{{"x":"{}"}}}}"#,
        "x".repeat(3 * 1024 * 1024 + 10)
    );
    let mismatched = deployment("web", 1)
        .to_string()
        .replace(r#""labels":{"app":"web"}},"spec":{"containers""#, r#""labels":{"app":"other"}},"spec":{"containers""#);
    // (method, path, content type, body, status, message fragment)
    let cases: Vec<(reqwest::Method, String, &str, String, u16, &str)> = vec![
        (reqwest::Method::POST, CM.into(), "application/json", "{not json".into(), 400, "not valid JSON"),
        (reqwest::Method::POST, CM.into(), "application/yaml", "a: [".into(), 400, "not valid YAML"),
        (reqwest::Method::POST, CM.into(), "application/json", r#"{"apiVersion":"v1","kind":"Widget","metadata":{"name":"w"}}"#.into(), 400, "does not match the resource"),
        (reqwest::Method::POST, CM.into(), "application/json", r#"{"apiVersion":"v9","kind":"ConfigMap","metadata":{"name":"w"}}"#.into(), 400, "apiVersion"),
        (reqwest::Method::POST, "/api/v1/namespaces/default/widgets".into(), "application/json", "{}".into(), 404, "does not serve resource"),
        (reqwest::Method::POST, CM.into(), "application/json", r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{}}"#.into(), 422, "name or generateName is required"),
        (reqwest::Method::POST, CM.into(), "application/json", r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"Bad_Name"}}"#.into(), 422, "DNS-1123 subdomain"),
        (reqwest::Method::POST, "/api/v1/namespaces/default/pods".into(), "application/json", r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"i","resources":{"requests":{"cpu":"lots"}}}]}}"#.into(), 422, "spec.containers[0].resources.requests.cpu"),
        (reqwest::Method::POST, DEPLOY.into(), "application/json", mismatched, 422, "`selector` does not match template `labels`"),
        (reqwest::Method::POST, DEPLOY.into(), "application/json", deployment("neg", -1).to_string(), 422, "spec.replicas"),
        (reqwest::Method::POST, CM.into(), "application/json", r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"exists"}}"#.into(), 409, "already exists"),
        (reqwest::Method::PUT, format!("{CM}/exists"), "application/json", r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"exists","resourceVersion":"1"}}"#.into(), 409, "has been modified"),
        (reqwest::Method::DELETE, format!("{CM}/missing"), "", "".into(), 404, "not found"),
        (reqwest::Method::POST, "/api/v1/namespaces/nowhere/configmaps".into(), "application/json", r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#.into(), 404, "namespace \"nowhere\" not found"),
        (reqwest::Method::POST, CM.into(), "application/json", big, 413, "over the limit"),
        (reqwest::Method::POST, CM.into(), "text/plain", "hello".into(), 415, "not supported"),
        (reqwest::Method::PUT, CM.into(), "application/json", "{}".into(), 405, "not supported"),
        (reqwest::Method::GET, format!("{CM}?watch=true&resourceVersion=abc"), "", "".into(), 400, "resourceVersion"),
        (reqwest::Method::GET, format!("{CM}?labelSelector=app%20in%20(a"), "", "".into(), 400, "invalid selector"),
    ];
    for (method, path, ct, body, code, fragment) in cases {
        let (got, status) = call(method.clone(), &format!("{b}{path}"), ct, &body).await;
        assert_eq!(got, code, "{method} {path}: {status}");
        assert_eq!(status["kind"], "Status", "{method} {path}");
        assert_eq!(status["code"], code);
        let message = status["message"].as_str().unwrap_or("");
        assert!(message.contains(fragment), "{method} {path}: {message:?} lacks {fragment:?}");
    }
    assert_eq!(api.member.revisions().revision, before, "no bad request changed stored data");

    // Watch from a compacted revision: 410 Gone with reason Expired.
    for i in 0..5 {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{i}")}}).to_string();
        call(reqwest::Method::POST, &format!("{b}{CM}"), "application/json", &body).await;
    }
    let now = api.member.revisions().revision;
    api.member.compact(now).await.expect("compact");
    let (code, status) = call(reqwest::Method::GET, &format!("{b}{CM}?watch=true&resourceVersion=2"), "", "").await;
    assert_eq!((code, status["reason"].clone()), (410, json!("Expired")), "{status}");
    api.task.abort();
}

async fn read_events(resp: reqwest::Response, n: usize) -> Vec<Value> {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut body = resp.bytes_stream();
    while out.len() < n {
        let chunk = tokio::time::timeout(DEADLINE, body.next()).await.expect("watch event in time").expect("stream open").expect("chunk");
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let ev: Value = serde_json::from_slice(&line).expect("event json");
            if ev["type"] != "BOOKMARK" {
                out.push(ev);
            }
        }
    }
    out.truncate(n);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_resumed_from_its_last_resource_version_misses_nothing_and_repeats_nothing() {
    let (_dir, api) = single().await;
    let b = api.base.clone();
    let (_, list) = call(reqwest::Method::GET, &format!("{b}{CM}"), "", "").await;
    let mut rv: u64 = list["metadata"]["resourceVersion"].as_str().expect("rv").parse().expect("number");
    let writer = {
        let b = b.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                let body =
                    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("w{i}")}, "data": {"i": i.to_string()}})
                        .to_string();
                let (code, _) = call(reqwest::Method::POST, &format!("{b}{CM}"), "application/json", &body).await;
                assert_eq!(code, 201);
            }
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 60 {
        let resp = http_with(ADMIN_TOKEN).get(format!("{b}{CM}?watch=true&resourceVersion={rv}")).send().await.expect("watch");
        assert_eq!(resp.status(), 200);
        // Read a few events, then drop the connection and resume.
        let take = (60 - seen.len()).min(7);
        for ev in read_events(resp, take).await {
            assert_eq!(ev["type"], "ADDED");
            rv = ev["object"]["metadata"]["resourceVersion"].as_str().expect("rv").parse().expect("number");
            seen.push(ev["object"]["metadata"]["name"].as_str().expect("name").to_string());
        }
    }
    writer.await.expect("writer");
    let expected: Vec<String> = (0..60).map(|i| format!("w{i}")).collect();
    assert_eq!(seen, expected);
    api.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_an_owner_or_a_namespace_deletes_what_it_holds() {
    let (_dir, api) = single().await;
    let b = &api.base;
    let (_, owner) = call(
        reqwest::Method::POST,
        &format!("{b}{CM}"),
        "application/json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"owner"}}"#,
    )
    .await;
    let uid = owner["metadata"]["uid"].as_str().expect("uid");
    let (_, keeper) = call(
        reqwest::Method::POST,
        &format!("{b}{CM}"),
        "application/json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"keeper"}}"#,
    )
    .await;
    let keeper_uid = keeper["metadata"]["uid"].as_str().expect("uid");
    let owner_ref = |name: &str, uid: &str| json!({"apiVersion": "v1", "kind": "ConfigMap", "name": name, "uid": uid});
    for i in 0..3 {
        let dep = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("dep{i}"), "ownerReferences": [owner_ref("owner", uid)]}});
        call(reqwest::Method::POST, &format!("{b}{CM}"), "application/json", &dep.to_string()).await;
    }
    // Owned by dep0 in turn, so the cascade goes two levels down.
    let (_, dep0) = call(reqwest::Method::GET, &format!("{b}{CM}/dep0"), "", "").await;
    let grandchild = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "dep-grandchild",
        "ownerReferences": [owner_ref("dep0", dep0["metadata"]["uid"].as_str().expect("uid"))]}});
    call(reqwest::Method::POST, &format!("{b}{CM}"), "application/json", &grandchild.to_string()).await;
    // Co-owned: it stays, with only the owner that stays.
    let shared = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "shared",
        "ownerReferences": [owner_ref("owner", uid), owner_ref("keeper", keeper_uid)]}});
    call(reqwest::Method::POST, &format!("{b}{CM}"), "application/json", &shared.to_string()).await;
    let (code, _) = call(reqwest::Method::DELETE, &format!("{b}{CM}/owner"), "", "").await;
    assert_eq!(code, 200);
    // The cascade is part of the request: nothing is left when it answers.
    let (_, list) = call(reqwest::Method::GET, &format!("{b}{CM}"), "", "").await;
    let names: Vec<&str> = list["items"].as_array().expect("items").iter().filter_map(|o| o["metadata"]["name"].as_str()).collect();
    assert!(!names.iter().any(|n| n.starts_with("dep")), "dependents left: {names:?}");
    let (_, shared) = call(reqwest::Method::GET, &format!("{b}{CM}/shared"), "", "").await;
    assert_eq!(shared["metadata"]["ownerReferences"], json!([owner_ref("keeper", keeper_uid)]));

    // Orphaning leaves the dependent without its reference to the owner, so
    // the garbage collector does not take it later.
    let (code, _) = call(reqwest::Method::DELETE, &format!("{b}{CM}/keeper?propagationPolicy=Orphan"), "", "").await;
    assert_eq!(code, 200);
    let (code, shared) = call(reqwest::Method::GET, &format!("{b}{CM}/shared"), "", "").await;
    assert_eq!(code, 200, "an orphaned dependent stays");
    assert!(shared["metadata"].get("ownerReferences").is_none(), "{shared}");

    let (code, _) = call(
        reqwest::Method::POST,
        &format!("{b}/api/v1/namespaces"),
        "application/json",
        r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"team-a"}}"#,
    )
    .await;
    assert_eq!(code, 201);
    let (_, ns) = call(reqwest::Method::GET, &format!("{b}/api/v1/namespaces/team-a"), "", "").await;
    assert_eq!(ns["metadata"]["labels"]["kubernetes.io/metadata.name"], "team-a");
    for i in 0..3 {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("c{i}")}}).to_string();
        let (code, _) = call(reqwest::Method::POST, &format!("{b}/api/v1/namespaces/team-a/configmaps"), "application/json", &body).await;
        assert_eq!(code, 201);
    }
    let (code, _) = call(reqwest::Method::DELETE, &format!("{b}/api/v1/namespaces/team-a"), "", "").await;
    assert_eq!(code, 200);
    let start = tokio::time::Instant::now();
    loop {
        let (code, _) = call(reqwest::Method::GET, &format!("{b}/api/v1/namespaces/team-a"), "", "").await;
        let (_, list) = call(reqwest::Method::GET, &format!("{b}/api/v1/namespaces/team-a/configmaps"), "", "").await;
        if code == 404 && list["items"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "namespace not cleaned up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, _) = call(reqwest::Method::DELETE, &format!("{b}/api/v1/namespaces/default"), "", "").await;
    assert_eq!(code, 400, "the default namespace cannot be deleted");
    api.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discovery_and_tables_for_kubectl() {
    let (_dir, api) = single().await;
    let b = &api.base;
    let (_, version) = call(reqwest::Method::GET, &format!("{b}/version"), "", "").await;
    assert_eq!(version["major"], "1");
    let (_, apis) = call(reqwest::Method::GET, &format!("{b}/apis"), "", "").await;
    assert_eq!(apis["kind"], "APIGroupList");
    let (_, core) = call(reqwest::Method::GET, &format!("{b}/api/v1"), "", "").await;
    assert!(core["resources"].as_array().expect("resources").iter().any(|r| r["name"] == "pods" && r["namespaced"] == true));
    let (_, apps) = call(reqwest::Method::GET, &format!("{b}/apis/apps/v1"), "", "").await;
    assert!(apps["resources"].as_array().expect("resources").iter().any(|r| r["name"] == "deployments/scale"));
    let table = http_with(ADMIN_TOKEN)
        .get(format!("{b}/api/v1/namespaces"))
        .header("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
        .send()
        .await
        .expect("table")
        .json::<Value>()
        .await
        .expect("json");
    assert_eq!(table["kind"], "Table");
    let names: Vec<&str> = table["rows"].as_array().expect("rows").iter().filter_map(|r| r["cells"][0].as_str()).collect();
    assert_eq!(names, vec!["default", "flotilla-system"]);
    api.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_kubectl_lists_gets_and_deletes() {
    let Ok(out) = std::process::Command::new("kubectl").arg("version").arg("--client").output() else {
        eprintln!("SKIPPED stock_kubectl_lists_gets_and_deletes: kubectl is not installed");
        return;
    };
    assert!(out.status.success());
    let (_dir, api) = single().await;
    let b = api.base.clone();
    call(reqwest::Method::POST, &format!("{b}{DEPLOY}"), "application/json", &deployment("web", 2).to_string()).await;
    call(
        reqwest::Method::POST,
        &format!("{b}{CM}"),
        "application/json",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"settings"},"data":{"a":"1"}}"#,
    )
    .await;
    let kinds =
        ["namespaces", "nodes", "pods", "deployments", "replicasets", "services", "endpoints", "configmaps", "events", "networkpolicies"];
    // Over HTTPS with the admin kubeconfig, as a user runs it.
    let kubeconfig_dir = tempfile::tempdir().expect("tempdir");
    let kubeconfig = flotilla::kubeconfig::write_admin(kubeconfig_dir.path(), &api.https, api.member.ca()).expect("admin kubeconfig");
    let results = tokio::task::spawn_blocking(move || {
        let kubectl = |args: &[&str]| {
            let out = std::process::Command::new("kubectl").arg("--kubeconfig").arg(&kubeconfig).args(args).output().expect("run kubectl");
            (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let kubectl_in = |args: &[&str], stdin: &str| {
            use std::io::Write;
            let mut child = std::process::Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("run kubectl");
            child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write");
            let out = child.wait_with_output().expect("kubectl output");
            (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let mut results = Vec::new();
        for kind in kinds {
            results.push((kind, kubectl(&["get", kind])));
        }
        results.push(("deploy-yaml", kubectl(&["get", "deployment", "web", "-o", "yaml"])));
        results.push(("cm-json", kubectl(&["get", "configmap", "settings", "-o", "json"])));
        results.push(("delete", kubectl(&["delete", "configmap", "settings"])));
        results.push(("after-delete", kubectl(&["get", "configmap", "settings"])));
        results.push(("can-i", kubectl(&["auth", "can-i", "delete", "pods", "-n", "default"])));
        results.push(("apply", kubectl_in(&["apply", "--validate=false", "-f", "-"], APPLIED)));
        results
    })
    .await
    .expect("kubectl runs");
    for (what, (ok, stdout, stderr)) in &results[..10] {
        assert!(ok, "kubectl get {what} failed: {stderr}");
        let _ = stdout;
    }
    let (_, ns_out, _) = &results[0].1;
    assert!(ns_out.contains("NAME") && ns_out.contains("default") && ns_out.contains("Active"), "{ns_out}");
    let (_, deploy_out, _) = &results[3].1;
    assert!(deploy_out.contains("READY") && deploy_out.contains("web"), "{deploy_out}");
    let (ok, yaml, err) = &results[10].1;
    assert!(*ok && yaml.contains("kind: Deployment") && yaml.contains("replicas: 2"), "{yaml}{err}");
    let (ok, json_out, err) = &results[11].1;
    assert!(*ok && json_out.contains("\"settings\""), "{json_out}{err}");
    let (ok, out, err) = &results[12].1;
    assert!(*ok && out.contains("deleted"), "{out}{err}");
    let (ok, _, err) = &results[13].1;
    assert!(!*ok && (err.contains("NotFound") || err.contains("not found")), "{err}");
    let (ok, out, err) = &results[14].1;
    assert!(*ok && out.trim() == "yes", "kubectl auth can-i as system:masters: {out}{err}");
    let (ok, out, err) = &results[15].1;
    // --validate=false: flotilla serves no OpenAPI document yet (#13).
    assert!(*ok && out.contains("configmap/applied"), "kubectl apply over TLS: {out}{err}");
    let (code, got) = call(reqwest::Method::GET, &format!("{b}{CM}/applied"), "", "").await;
    assert_eq!((code, got["data"]["k"].as_str()), (200, Some("v")), "{got}");
    api.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_member_serves_the_api_and_it_survives_the_leader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = Member::start(StoreConfig::new(1, dir.path().join("m1"), free_udp(), StartMode::Bootstrap)).await.expect("m1");
    let token = first.token().to_string();
    let via = first.peer_addr().to_string();
    let mut members = vec![first];
    for id in 2..=3 {
        let m = Member::start(StoreConfig::new(
            id,
            dir.path().join(format!("m{id}")),
            free_udp(),
            StartMode::Join { via: via.clone(), token: token.clone() },
        ))
        .await
        .expect("join");
        members.push(m);
    }
    let mut apis = Vec::new();
    for m in &members {
        apis.push(Api::start(m.clone()).await);
    }
    // A write through each member is readable through every other.
    for (i, api) in apis.iter().enumerate() {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("from-{i}")}}).to_string();
        let (code, v) = call(reqwest::Method::POST, &format!("{}{CM}", api.base), "application/json", &body).await;
        assert_eq!(code, 201, "{v}");
    }
    for api in &apis {
        let (_, list) = call(reqwest::Method::GET, &format!("{}{CM}", api.base), "", "").await;
        assert_eq!(list["items"].as_array().map(Vec::len), Some(3));
    }
    // A Secret sealed through one member opens through the others (each
    // derives the same key-encryption key from the CA the join gave it),
    // and so does one sealed after a rotation asked of another member.
    let secrets = "/api/v1/namespaces/default/secrets";
    let secret =
        |name: &str| json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"k": name}}).to_string();
    let (code, v) = call(reqwest::Method::POST, &format!("{}{secrets}", apis[0].base), "application/json", &secret("one")).await;
    assert_eq!(code, 201, "{v}");
    let (code, v) = call(reqwest::Method::POST, &format!("{}/flotilla/v1/secrets-encryption/rotate", apis[1].base), "", "").await;
    assert_eq!(code, 200, "{v}");
    let (code, v) = call(reqwest::Method::POST, &format!("{}{secrets}", apis[0].base), "application/json", &secret("two")).await;
    assert_eq!(code, 201, "member 0's view of the keys was stale; the write is sealed again, not refused: {v}");
    for api in &apis {
        for name in ["one", "two"] {
            let (code, got) = call(reqwest::Method::GET, &format!("{}{secrets}/{name}", api.base), "", "").await;
            assert_eq!((code, got["data"]["k"].as_str()), (200, Some(base64_encode(name).as_str())), "{name} via {}: {got}", api.base);
        }
    }
    // Stop the leader; the others keep serving after the election.
    let leader = members.iter().position(|m| m.is_leader()).expect("a leader");
    members[leader].shutdown().await;
    apis[leader].task.abort();
    let survivor = &apis[(leader + 1) % 3];
    let start = tokio::time::Instant::now();
    loop {
        let body = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "after"}}).to_string();
        let (code, _) = call(reqwest::Method::POST, &format!("{}{CM}", survivor.base), "application/json", &body).await;
        if code == 201 || code == 409 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "no write accepted after the leader stopped (last code {code})");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, got) = call(reqwest::Method::GET, &format!("{}{CM}/after", apis[(leader + 2) % 3].base), "", "").await;
    assert_eq!(code, 200, "{got}");
}

/// Hostile numbers and preconditions from #12: each is refused with 400 or
/// 405 and a message, never a panic, and never ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_numbers_and_preconditions_are_refused() {
    let (_dir, api) = single().await;
    let b = &api.base;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "keep"}, "data": {"a": "1"}}).to_string();
    let (code, _) = call(reqwest::Method::POST, &format!("{b}{CM}"), "application/json", &cm).await;
    assert_eq!(code, 201);
    let (code, v) = call(reqwest::Method::GET, &format!("{b}{CM}?watch=true&resourceVersion=18446744073709551615"), "", "").await;
    assert_eq!(code, 400, "{v}");
    let url = format!("{b}{CM}/keep");
    let (code, v) = call(reqwest::Method::DELETE, &format!("{url}?gracePeriodSeconds=9223372036854775807"), "", "").await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = call(reqwest::Method::DELETE, &url, "application/json", r#"{"gracePeriodSeconds": 9223372036854775807}"#).await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = call(reqwest::Method::DELETE, &url, "application/json", r#"{"preconditions": {"resourceVersion": "abc"}}"#).await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = call(
        reqwest::Method::PATCH,
        &url,
        "application/merge-patch+json",
        r#"{"metadata": {"resourceVersion": "abc"}, "data": {"a": "2"}}"#,
    )
    .await;
    assert_eq!(code, 400, "{v}");
    let (code, v) = call(reqwest::Method::DELETE, &format!("{b}/api/v1/configmaps"), "", "").await;
    assert_eq!(code, 405, "{v}");
    let (code, v) = call(reqwest::Method::GET, &url, "", "").await;
    assert_eq!((code, v["data"]["a"].as_str()), (200, Some("1")), "the ConfigMap survives every refused request unchanged");
    let (code, v) =
        call(reqwest::Method::POST, &format!("{b}{DEPLOY}"), "application/json", &deployment("huge", 2147483647).to_string()).await;
    assert_eq!(code, 422, "{v}");
    let containers: Vec<Value> = (0..1000).map(|i| json!({"name": format!("c{i}"), "image": "x"})).collect();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "wide"}, "spec": {"containers": containers}});
    let (code, v) = call(reqwest::Method::POST, &format!("{b}/api/v1/namespaces/default/pods"), "application/json", &pod.to_string()).await;
    assert_eq!(code, 422, "{v}");
    // YAML costs more to parse than JSON: its bodies are bounded tighter,
    // and parsed off the threads that answer everyone else.
    let yaml = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: y}}\ndata:\n{}", "  k: v\n".repeat(200_000));
    let (code, v) = call(reqwest::Method::POST, &format!("{b}{CM}"), "application/yaml", &yaml).await;
    assert!(code == 413 && v["message"].as_str().unwrap_or("").contains("send larger objects as JSON"), "{code} {v}");
    api.task.abort();
}

/// A client of the HTTPS API with `cert` (user, group, validity) from `issuer`,
/// trusting the test cluster's CA, through the CLI's own client code.
fn cert_client(
    api: &Api,
    dir: &std::path::Path,
    name: &str,
    issuer: &flotilla_raft::tls::ClusterCa,
    group: Option<&str>,
    ttl: Duration,
) -> flotilla::client::ApiClient {
    let id = issuer.issue_client(name, group, ttl).expect("client certificate");
    let text = flotilla::kubeconfig::render("t", &api.https, &api.member.ca().cert_pem, name, &id.cert_pem, &id.key_pem);
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, text).expect("write kubeconfig");
    let target = flotilla::client::ClientTarget { server: None, kubeconfig: Some(path), token: None };
    flotilla::client::ApiClient::new(&target).expect("client")
}

/// #12's table: (identity, verb, path) against (status, message), over plain
/// HTTP with tokens and over HTTPS with client certificates. A refused
/// request changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn who_may_ask_is_decided_before_anything_is_done() {
    let (_dir, api) = single().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let b = api.base.clone();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kept"}}).to_string();
    let (code, _) = call(reqwest::Method::POST, &format!("{b}{CM}"), "application/json", &cm).await;
    assert_eq!(code, 201);
    let anonymous = http_with("");
    let garbage = http_with("garbage");
    let alice = http_with(ALICE_TOKEN);
    let admin = http_with(ADMIN_TOKEN);
    let basic = {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(reqwest::header::AUTHORIZATION, "Basic YWRtaW46YWRtaW4=".parse().expect("header"));
        reqwest::Client::builder().default_headers(h).build().expect("client")
    };
    let pods = "/api/v1/namespaces/default/pods";
    let cases: Vec<(&str, &reqwest::Client, reqwest::Method, String, u16, &str)> = vec![
        ("anonymous", &anonymous, reqwest::Method::GET, pods.into(), 401, "needs a credential"),
        ("anonymous", &anonymous, reqwest::Method::GET, "/api".into(), 401, "needs a credential"),
        ("anonymous", &anonymous, reqwest::Method::DELETE, format!("{CM}/kept"), 401, "needs a credential"),
        ("anonymous", &anonymous, reqwest::Method::GET, "/healthz".into(), 200, ""),
        ("anonymous", &anonymous, reqwest::Method::GET, "/livez".into(), 200, ""),
        ("anonymous", &anonymous, reqwest::Method::GET, "/readyz".into(), 200, ""),
        ("anonymous", &anonymous, reqwest::Method::GET, "/version".into(), 200, ""),
        ("Bearer garbage", &garbage, reqwest::Method::GET, pods.into(), 401, "not known to this cluster"),
        ("Basic", &basic, reqwest::Method::GET, pods.into(), 401, "Bearer TOKEN"),
        (
            "alice",
            &alice,
            reqwest::Method::GET,
            pods.into(),
            403,
            "User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\"",
        ),
        ("alice", &alice, reqwest::Method::GET, format!("{pods}?watch=true"), 403, "cannot watch resource \"pods\""),
        ("alice", &alice, reqwest::Method::DELETE, format!("{CM}/kept"), 403, "cannot delete resource \"configmaps\""),
        ("alice", &alice, reqwest::Method::DELETE, CM.into(), 403, "cannot deletecollection"),
        ("alice", &alice, reqwest::Method::GET, "/api/v1/nodes".into(), 403, "at the cluster scope"),
        ("alice", &alice, reqwest::Method::GET, "/apis".into(), 200, ""),
        ("alice", &alice, reqwest::Method::GET, "/api/v1".into(), 200, ""),
        ("admin", &admin, reqwest::Method::GET, pods.into(), 200, ""),
    ];
    for (who, client, method, path, want, message) in cases {
        let (code, v) = call_as(client, method.clone(), &format!("{b}{path}"), "", "").await;
        assert_eq!(code, want, "{who} {method} {path}: {v}");
        if want >= 400 {
            assert_eq!(v["kind"], "Status", "{who} {method} {path}: {v}");
            assert_eq!(v["code"], want, "{who} {method} {path}: {v}");
            let text = v["message"].as_str().unwrap_or("");
            assert!(text.contains(message), "{who} {method} {path}: {text:?} should say {message:?}");
        }
    }
    let (code, _) = call(reqwest::Method::GET, &format!("{b}{CM}/kept"), "", "").await;
    assert_eq!(code, 200, "a refused delete deleted nothing");

    // A Role and RoleBinding let alice list pods in `default`, and only there.
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]});
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "alice-reads"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "User", "name": "alice"}]});
    let rbac_ns = format!("{b}/apis/rbac.authorization.k8s.io/v1/namespaces/default");
    let (code, v) = call(reqwest::Method::POST, &format!("{rbac_ns}/roles"), "application/json", &role.to_string()).await;
    assert_eq!(code, 201, "{v}");
    let (code, v) =
        call_as(&alice, reqwest::Method::POST, &format!("{rbac_ns}/rolebindings"), "application/json", &binding.to_string()).await;
    assert_eq!(code, 403, "alice cannot grant herself a role: {v}");
    let (code, v) = call(reqwest::Method::POST, &format!("{rbac_ns}/rolebindings"), "application/json", &binding.to_string()).await;
    assert_eq!(code, 201, "{v}");
    let start = tokio::time::Instant::now();
    loop {
        let (code, _) = call_as(&alice, reqwest::Method::GET, &format!("{b}{pods}"), "", "").await;
        if code == 200 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the RoleBinding never took effect (last {code})");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _) = call_as(&alice, reqwest::Method::GET, &format!("{b}/api/v1/namespaces/flotilla-system/pods"), "", "").await;
    assert_eq!(code, 403, "the RoleBinding grants nothing outside its namespace");
    let (code, _) = call_as(&alice, reqwest::Method::DELETE, &format!("{b}{pods}/nothing"), "", "").await;
    assert_eq!(code, 403, "the Role grants get and list only");
    // What `kubectl auth can-i` asks, answered by the same decision.
    let review = |verb: &str, ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
               "spec": {"resourceAttributes": {"namespace": ns, "verb": verb, "resource": "pods"}}})
        .to_string()
    };
    let ssar = format!("{b}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews");
    for (verb, ns, allowed) in [("list", "default", true), ("delete", "default", false), ("list", "flotilla-system", false)] {
        let (code, v) = call_as(&alice, reqwest::Method::POST, &ssar, "application/json", &review(verb, ns)).await;
        assert_eq!((code, v["status"]["allowed"].as_bool()), (201, Some(allowed)), "alice {verb} pods in {ns}: {v}");
    }
    let sar = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "alice", "resourceAttributes": {"namespace": "default", "verb": "get", "resource": "pods"}}})
    .to_string();
    let sar_path = format!("{b}/apis/authorization.k8s.io/v1/subjectaccessreviews");
    let (code, v) = call_as(&alice, reqwest::Method::POST, &sar_path, "application/json", &sar).await;
    assert_eq!(code, 403, "only administrators review others: {v}");
    let (code, v) = call(reqwest::Method::POST, &sar_path, "application/json", &sar).await;
    assert_eq!((code, v["status"]["allowed"].as_bool()), (201, Some(true)), "{v}");
    let mut changed = binding.clone();
    changed["roleRef"]["name"] = json!("cluster-admin");
    changed["roleRef"]["kind"] = json!("ClusterRole");
    let (code, v) =
        call(reqwest::Method::PUT, &format!("{rbac_ns}/rolebindings/alice-reads"), "application/json", &changed.to_string()).await;
    assert_eq!(code, 422, "roleRef is immutable: {v}");

    // HTTPS: the user is the certificate's CN, the group its O.
    let ca = api.member.ca().clone();
    let other_ca = flotilla_raft::tls::ClusterCa::generate("someone-else").expect("other CA");
    let hour = Duration::from_secs(3600);
    let root = cert_client(&api, dir.path(), "root", &ca, Some("system:masters"), hour);
    let bob = cert_client(&api, dir.path(), "bob", &ca, None, hour);
    let stranger = cert_client(&api, dir.path(), "mallory", &other_ca, Some("system:masters"), hour);
    let brief = cert_client(&api, dir.path(), "brief", &ca, Some("system:masters"), Duration::from_secs(1));
    let no_cert = {
        let path = dir.path().join("nocert.kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {}\n    certificate-authority-data: {}\ncontexts:\n- name: t\n  context: {{cluster: t}}\ncurrent-context: t\n",
            api.https,
            base64_encode(&ca.cert_pem)
        );
        std::fs::write(&path, text).expect("write");
        flotilla::client::ApiClient::new(&flotilla::client::ClientTarget { server: None, kubeconfig: Some(path), token: None })
            .expect("client")
    };
    let listed = root.get(pods, false).await.expect("system:masters over a client certificate lists pods");
    assert_eq!(listed["kind"], "PodList");
    let e = bob.get(pods, false).await.expect_err("bob is in no group");
    assert!(e.code == 403 && e.message.contains("User \"bob\" cannot list"), "{e:?}");
    let e = stranger.get(pods, false).await.expect_err("a certificate from another CA");
    assert!(e.code == 401 && e.message.contains("client certificate was refused"), "{e:?}");
    let e = no_cert.get(pods, false).await.expect_err("no credential over HTTPS");
    assert!(e.code == 401, "{e:?}");
    no_cert.get("/healthz", false).await.expect_err("healthz is not JSON: the CLI's client says so rather than succeed");
    // Out of date: wait (on the clock, not a guess) until the one-second
    // certificate has expired.
    let issued = std::time::SystemTime::now();
    while issued.elapsed().unwrap_or_default() < Duration::from_millis(2500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = brief.get(pods, false).await.expect_err("an expired certificate");
    assert!(e.code == 401 && e.message.contains("client certificate was refused"), "{e:?}");
    api.task.abort();
}

fn base64_encode(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The finding: the API server sent its kubelet credential to whatever
/// address a client-written Node named. Now it speaks TLS there, wants the
/// node's own certificate, and shows nothing before it has seen one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_a_client_wrote_gets_no_credential() {
    let (_dir, api) = single().await;
    let decoy = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("decoy");
    let port = decoy.local_addr().expect("addr").port();
    let heard = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut conn, _) = decoy.accept().await.expect("the server dials the decoy");
        let mut bytes = vec![0u8; 64 * 1024];
        let n = tokio::time::timeout(DEADLINE, conn.read(&mut bytes)).await.expect("it says something").expect("read");
        // A plain HTTP answer: a server that sent a request in the clear would take it.
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi").await;
        bytes.truncate(n);
        bytes
    });
    let node = json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "decoy"},
        "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": port}}}});
    let (code, body) = call(reqwest::Method::POST, &format!("{}/api/v1/nodes", api.base), "application/json", &node.to_string()).await;
    assert_eq!(code, 201, "{body}");
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bait"},
        "spec": {"nodeName": "decoy", "containers": [{"name": "c", "image": "busybox"}]}});
    let pods = format!("{}/api/v1/namespaces/default/pods", api.base);
    let (code, mut created) = call(reqwest::Method::POST, &pods, "application/json", &pod.to_string()).await;
    assert_eq!(code, 201, "{created}");
    created["status"] = json!({"phase": "Running", "containerStatuses": [{"name": "c", "containerID": "sim://bait-c", "image": "busybox",
        "imageID": "", "ready": true, "restartCount": 0, "state": {"running": {}}}]});
    let (code, body) = call(reqwest::Method::PUT, &format!("{pods}/bait/status"), "application/json", &created.to_string()).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = call(reqwest::Method::GET, &format!("{pods}/bait/log"), "", "").await;
    assert_eq!(code, 502, "the decoy is no agent: {body}");
    let bytes = heard.await.expect("decoy task");
    assert_eq!(bytes.first(), Some(&0x16), "the server opened with a TLS handshake, not a request in the clear");
    let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    assert!(!text.contains("bearer") && !text.contains("authorization"), "no credential reached the decoy");
    api.task.abort();
}

/// ServiceAccounts: every namespace has a `default` one, a TokenRequest
/// issues a signed expiring token for it, and the token opens only what
/// the account's bindings allow, until it expires or the account goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_account_tokens_open_what_their_roles_allow() {
    use flotilla::api::token_request::{claims, API_AUDIENCE};
    let (_dir, api) = single().await;
    let b = &api.base;
    let post = |url: String, body: Value| async move { call(reqwest::Method::POST, &url, "application/json", &body.to_string()).await };
    let (code, body) =
        post(format!("{b}/api/v1/namespaces"), json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}})).await;
    assert_eq!(code, 201, "{body}");
    let (code, account) = call(reqwest::Method::GET, &format!("{b}/api/v1/namespaces/team/serviceaccounts/default"), "", "").await;
    assert_eq!(code, 200, "a new namespace has its default account: {account}");
    let uid = account["metadata"]["uid"].as_str().expect("uid").to_string();

    let token_url = format!("{b}/api/v1/namespaces/team/serviceaccounts/default/token");
    let request = |spec: Value| json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let (code, issued) = post(token_url.clone(), request(json!({"expirationSeconds": 600}))).await;
    assert_eq!(code, 201, "{issued}");
    assert_eq!(issued["spec"]["expirationSeconds"], 600);
    assert!(issued["status"]["expirationTimestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{issued}");
    let token = issued["status"]["token"].as_str().expect("a token").to_string();
    let robot = http_with(&token);

    let team_pods = format!("{b}/api/v1/namespaces/team/pods");
    let (code, body) = call_as(&robot, reqwest::Method::GET, &team_pods, "", "").await;
    assert_eq!(code, 403, "no binding yet: {body}");
    assert!(body["message"].as_str().unwrap_or("").contains("system:serviceaccount:team:default"), "{body}");
    let binding = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "robot-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "team"}]});
    let (code, body) = post(format!("{b}/apis/rbac.authorization.k8s.io/v1/namespaces/team/rolebindings"), binding).await;
    assert_eq!(code, 201, "{body}");
    let start = tokio::time::Instant::now();
    loop {
        let (code, body) = call_as(&robot, reqwest::Method::GET, &team_pods, "", "").await;
        if code == 200 {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "the binding never took effect: {code} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _) = call_as(&robot, reqwest::Method::GET, &format!("{b}/api/v1/namespaces/default/pods"), "", "").await;
    assert_eq!(code, 403, "the binding is in team only");
    let (code, _) = call_as(&robot, reqwest::Method::DELETE, &format!("{team_pods}/x"), "", "").await;
    assert_eq!(code, 403, "view does not delete");

    // Tokens that must not open anything.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    let aud = [API_AUDIENCE.to_string()];
    let expired = api.member.ca().sign_jwt(&claims("team", "default", &uid, &aud, now - 7200, 600)).expect("sign");
    let other_ca = flotilla_raft::tls::ClusterCa::generate("other").expect("another CA");
    let foreign = other_ca.sign_jwt(&claims("team", "default", &uid, &aud, now, 600)).expect("sign");
    let (code, vault) = post(token_url.clone(), request(json!({"audiences": ["vault"]}))).await;
    assert_eq!(code, 201, "{vault}");
    let vault = vault["status"]["token"].as_str().expect("token").to_string();
    for (what, bad, says) in
        [("expired", expired, "expired"), ("another CA's", foreign, "not signed"), ("for another audience", vault, "audience")]
    {
        let (code, body) = call_as(&http_with(&bad), reqwest::Method::GET, &team_pods, "", "").await;
        assert_eq!(code, 401, "an {what} token: {body}");
        assert!(body["message"].as_str().unwrap_or("").contains(says), "an {what} token: {body}");
    }
    let (code, _) = post(format!("{b}/api/v1/namespaces/team/serviceaccounts/ghost/token"), request(json!({}))).await;
    assert_eq!(code, 404, "no token for an account that does not exist");
    for spec in [json!({"expirationSeconds": 60}), json!({"expirationSeconds": 9_223_372_036_854_775_807i64}), json!({"audiences": "x"})] {
        let (code, body) = post(token_url.clone(), request(spec.clone())).await;
        assert_eq!(code, 400, "{spec}: {body}");
    }

    // Deleting the account ends its tokens.
    let (code, body) = call(reqwest::Method::DELETE, &format!("{b}/api/v1/namespaces/team/serviceaccounts/default"), "", "").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = call_as(&robot, reqwest::Method::GET, &team_pods, "", "").await;
    assert_eq!(code, 401, "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("no longer exists"), "{body}");
    api.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn secrets_are_sealed_at_rest_readable_through_the_api_and_rotated() {
    use flotilla_raft::Consistency;
    let (_dir, api) = single().await;
    let b = &api.base;
    let secrets = format!("{b}/api/v1/namespaces/default/secrets");
    let secret = |name: &str, password: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"password": password}}).to_string()
    };
    let (code, created) = call(reqwest::Method::POST, &secrets, "application/json", &secret("db", "hunter2-db")).await;
    assert_eq!(code, 201, "{created}");
    assert_eq!(created["type"], "Opaque");
    assert_eq!(created["data"]["password"], base64_encode("hunter2-db"), "stringData is merged into data");
    assert_eq!(created.get("stringData"), None, "stringData is not kept");
    for i in 0..5 {
        let (code, body) =
            call(reqwest::Method::POST, &secrets, "application/json", &secret(&format!("s{i}"), &format!("hunter2-{i}"))).await;
        assert_eq!(code, 201, "{body}");
    }

    // What the store holds is sealed: no plain text, no base64 of it.
    let raw = |name: &str| {
        let member = api.member.clone();
        let key = format!("/registry/secrets/default/{name}");
        async move { member.get(key.as_bytes(), Consistency::Linearizable).await.expect("read").0.expect("stored").value }
    };
    let stored = raw("db").await;
    assert_eq!(stored[0], flotilla_actors::secrets_keyring::FORMAT_SEALED_V1, "the value is sealed");
    for plain in ["hunter2-db".to_string(), base64_encode("hunter2-db"), "password".to_string()] {
        assert!(!stored.windows(plain.len()).any(|w| w == plain.as_bytes()), "{plain:?} is in the stored bytes");
    }
    let first_key = flotilla_actors::secrets_keyring::SecretsKeyring::sealed_under(&stored).expect("names its key").to_string();
    let (code, read) = call(reqwest::Method::GET, &format!("{secrets}/db"), "", "").await;
    assert_eq!((code, &read["data"]["password"]), (200, &json!(base64_encode("hunter2-db"))), "{read}");
    let (code, listed) = call(reqwest::Method::GET, &secrets, "", "").await;
    assert_eq!((code, listed["items"].as_array().map(Vec::len)), (200, Some(6)), "{listed}");

    // A sealed value copied to another key does not open there: a 500
    // that names the key, not a panic and not the value.
    api.member.put(b"/registry/secrets/default/copied".to_vec(), stored.clone()).await.expect("raw put");
    let (code, body) = call(reqwest::Method::GET, &format!("{secrets}/copied"), "", "").await;
    assert_eq!(code, 500, "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains("does not open"), "{body}");
    api.member.delete(b"/registry/secrets/default/copied".to_vec(), false).await.expect("raw delete");

    // `view` does not read Secrets; `edit` does.
    let binding = |role: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": format!("alice-{role}")},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "User", "name": "alice"}]})
        .to_string()
    };
    let bindings = format!("{b}/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings");
    let alice = http_with(ALICE_TOKEN);
    let (code, body) = call(reqwest::Method::POST, &bindings, "application/json", &binding("view")).await;
    assert_eq!(code, 201, "{body}");
    let pods = format!("{b}/api/v1/namespaces/default/pods");
    let start = tokio::time::Instant::now();
    while call_as(&alice, reqwest::Method::GET, &pods, "", "").await.0 != 200 {
        assert!(start.elapsed() < DEADLINE, "the view binding never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, body) = call_as(&alice, reqwest::Method::GET, &format!("{secrets}/db"), "", "").await;
    assert_eq!(code, 403, "view reads no Secrets: {body}");
    let status_url = format!("{b}/flotilla/v1/secrets-encryption");
    let (code, _) = call_as(&alice, reqwest::Method::POST, &format!("{status_url}/rotate"), "", "").await;
    assert_eq!(code, 403, "only cluster-admin rotates keys");

    // Rotation: a new key, every Secret under it, the old key gone, the
    // data unchanged; a second rotation works the same.
    for round in 0..2 {
        let (code, done) = call(reqwest::Method::POST, &format!("{status_url}/rotate"), "", "").await;
        assert_eq!(code, 200, "{done}");
        assert_eq!((done["resealed"].as_u64(), done["retired"].as_u64()), (Some(6), Some(1)), "round {round}: {done}");
        let key = done["key"].as_str().expect("key").to_string();
        assert_ne!(key, first_key);
        for name in ["db", "s0", "s4"] {
            let under = flotilla_actors::secrets_keyring::SecretsKeyring::sealed_under(&raw(name).await).map(String::from);
            assert_eq!(under.as_deref(), Some(key.as_str()), "{name} after round {round}");
        }
        let (code, status) = call(reqwest::Method::GET, &status_url, "", "").await;
        assert_eq!(code, 200, "{status}");
        assert_eq!(status["keys"], json!([{"name": key, "state": "active", "values": 6}]), "round {round}");
    }
    let (code, read) = call(reqwest::Method::GET, &format!("{secrets}/s3"), "", "").await;
    assert_eq!((code, &read["data"]["password"]), (200, &json!(base64_encode("hunter2-3"))), "{read}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_bound_to_a_pod_ends_with_the_pod() {
    let (_dir, api) = single().await;
    let b = &api.base;
    let post = |url: String, body: Value| async move { call(reqwest::Method::POST, &url, "application/json", &body.to_string()).await };
    let pod = |name: &str, account: Option<&str>| {
        let mut spec = json!({"containers": [{"name": "c", "image": "flotilla/busybox:latest"}]});
        if let Some(a) = account {
            spec["serviceAccountName"] = json!(a);
        }
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})
    };
    let (code, web) = post(format!("{b}/api/v1/namespaces/default/pods"), pod("web", None)).await;
    assert_eq!(code, 201, "{web}");
    let uid = web["metadata"]["uid"].as_str().expect("uid").to_string();
    let (code, body) = post(
        format!("{b}/api/v1/namespaces/default/serviceaccounts"),
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder"}}),
    )
    .await;
    assert_eq!(code, 201, "{body}");
    let (code, body) = post(format!("{b}/api/v1/namespaces/default/pods"), pod("build", Some("builder"))).await;
    assert_eq!(code, 201, "{body}");

    let token_url = |sa: &str| format!("{b}/api/v1/namespaces/default/serviceaccounts/{sa}/token");
    let bound = |name: &str, uid: Option<&str>| {
        let mut r = json!({"kind": "Pod", "apiVersion": "v1", "name": name});
        if let Some(u) = uid {
            r["uid"] = json!(u);
        }
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"boundObjectRef": r}})
    };
    // Refused: another account's pod, a stale uid, a pod that is not there,
    // a kind that cannot be bound.
    let (code, body) = post(token_url("default"), bound("build", None)).await;
    assert_eq!(code, 400, "build runs as builder: {body}");
    assert!(body["message"].as_str().unwrap_or("").contains("builder"), "{body}");
    let (code, body) = post(token_url("default"), bound("web", Some("not-the-uid"))).await;
    assert_eq!(code, 409, "{body}");
    let (code, body) = post(token_url("default"), bound("ghost", None)).await;
    assert_eq!(code, 404, "{body}");
    let (code, body) = post(
        token_url("default"),
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"boundObjectRef": {"kind": "Node", "name": "n1"}}}),
    )
    .await;
    assert_eq!(code, 400, "{body}");

    let (code, issued) = post(token_url("default"), bound("web", Some(&uid))).await;
    assert_eq!(code, 201, "{issued}");
    assert_eq!(issued["spec"]["boundObjectRef"]["uid"], json!(uid), "{issued}");
    let token = issued["status"]["token"].as_str().expect("token").to_string();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
    let claims = api.member.ca().verify_jwt(&token, flotilla::api::token_request::API_AUDIENCE, now);
    let claims = claims.expect("the token verifies");
    assert_eq!(claims["kubernetes.io"]["pod"], json!({"name": "web", "uid": uid}), "{claims}");

    // The token opens the API (who it is: the account) while the pod lives.
    let robot = http_with(&token);
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "default"}}});
    let reviews = format!("{b}/apis/authorization.k8s.io/v1/selfsubjectaccessreviews");
    let review = review.to_string();
    let ask = || call_as(&robot, reqwest::Method::POST, &reviews, "application/json", &review);
    let (code, body) = ask().await;
    assert_eq!(code, 201, "the bound token authenticates: {body}");
    let (code, body) = call(reqwest::Method::DELETE, &format!("{b}/api/v1/namespaces/default/pods/web?gracePeriodSeconds=0"), "", "").await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = ask().await;
    assert_eq!(code, 401, "the pod is gone, and its token with it: {body}");
    assert!(body["message"].as_str().unwrap_or("").contains("no longer exists"), "{body}");
}

/// Rotations racing each other and a stream of Secret writes: every write
/// that was acknowledged is what a read shows afterwards, none is refused
/// for the rotation's sake, and once the writes stop one more rotation
/// leaves every Secret under one key and the old keys gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotations_racing_writes_lose_no_acknowledged_secret() {
    let (_dir, api) = single().await;
    let secrets = format!("{}/api/v1/namespaces/default/secrets", api.base);
    let body = |name: &str, value: &str| {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": {"v": value}}).to_string()
    };
    const SECRETS: usize = 8;
    for i in 0..SECRETS {
        let (code, v) = call(reqwest::Method::POST, &secrets, "application/json", &body(&format!("s{i}"), "0")).await;
        assert_eq!(code, 201, "{v}");
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..SECRETS {
        let (url, stop) = (format!("{secrets}/s{i}"), stop.clone());
        writers.push(tokio::spawn(async move {
            // Each Secret has one writer, so the last acknowledged value is
            // the one that must be there.
            let mut acknowledged = 0u64;
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let patch = json!({"stringData": {"v": n.to_string()}}).to_string();
                let (code, v) = call(reqwest::Method::PATCH, &url, "application/merge-patch+json", &patch).await;
                assert_eq!(code, 200, "a write during rotation was refused: {v}");
                acknowledged = n;
            }
            acknowledged
        }));
    }
    let rotate = format!("{}/flotilla/v1/secrets-encryption/rotate", api.base);
    let mut rotations = Vec::new();
    for _ in 0..2 {
        let url = rotate.clone();
        rotations.push(tokio::spawn(async move {
            let mut done = 0;
            for _ in 0..3 {
                let (code, v) = call(reqwest::Method::POST, &url, "", "").await;
                // A rotation outrun by writers says so (409) and keeps the
                // new key in use; anything else is a failure.
                assert!(code == 200 || code == 409, "{code} {v}");
                done += usize::from(code == 200);
            }
            done
        }));
    }
    for r in rotations {
        r.await.expect("rotation task");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut last = Vec::new();
    for w in writers {
        last.push(w.await.expect("writer"));
    }
    let (code, done) = call(reqwest::Method::POST, &rotate, "", "").await;
    assert_eq!(code, 200, "with the writes stopped a rotation completes: {done}");
    for (i, n) in last.iter().enumerate() {
        let (code, got) = call(reqwest::Method::GET, &format!("{secrets}/s{i}"), "", "").await;
        assert_eq!((code, got["data"]["v"].as_str()), (200, Some(base64_encode(&n.to_string()).as_str())), "s{i}: {got}");
    }
    let (_, status) = call(reqwest::Method::GET, &format!("{}/flotilla/v1/secrets-encryption", api.base), "", "").await;
    assert_eq!(status["keys"], json!([{"name": done["key"], "state": "active", "values": SECRETS}]), "{status}");
    assert!(last.iter().all(|n| *n > 0), "every writer wrote: {last:?}");
}

/// A client certificate can be taken back before it expires: refused at
/// the next request on a connection it already opened, others unharmed;
/// only cluster-admins revoke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_opens_nothing() {
    let (dir, api) = single().await;
    let ca = api.member.ca().clone();
    let hour = Duration::from_secs(3600);
    let lost = cert_client(&api, dir.path(), "lost-laptop", &ca, Some("system:masters"), hour);
    let kept = cert_client(&api, dir.path(), "desk", &ca, Some("system:masters"), hour);
    let dev = cert_client(&api, dir.path(), "dev", &ca, None, hour);
    async fn get(c: &flotilla::client::ApiClient) -> Result<Value, flotilla::client::CallError> {
        c.call(reqwest::Method::GET, "/api/v1/namespaces/default/configmaps", false, None).await
    }
    get(&lost).await.expect("the laptop's certificate works");
    let pem = std::fs::read_to_string(dir.path().join("lost-laptop.kubeconfig")).expect("kubeconfig");
    let cert = {
        use base64::Engine;
        let line = pem.lines().find_map(|l| l.trim().strip_prefix("client-certificate-data:")).expect("cert data").trim().to_string();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(line).expect("base64")).expect("pem")
    };
    let body = serde_json::to_vec(&json!({"certificate": cert})).expect("json");
    let revoke = flotilla::api::certificate_revocation::REVOKE_PATH;
    let refused = dev.call(reqwest::Method::POST, revoke, false, Some(("application/json", body.clone()))).await.expect_err("dev revokes");
    assert_eq!(refused.code, 403, "{}", refused.message);
    let answer = kept.call(reqwest::Method::POST, revoke, false, Some(("application/json", body))).await.expect("an admin revokes");
    let serial = answer["revoked"]["serial"].as_str().expect("a serial").to_string();
    // The same client, so likely the same connection: refused all the same.
    let e = get(&lost).await.expect_err("a revoked certificate");
    assert_eq!(e.code, 401, "{}", e.message);
    assert!(e.message.contains("revoked") && e.message.contains(&serial), "{}", e.message);
    get(&kept).await.expect("another certificate is untouched");
    get(&dev).await.map(|_| ()).or_else(|e| if e.code == 403 { Ok(()) } else { Err(e) }).expect("dev is still authenticated");
    let list = kept.call(reqwest::Method::GET, flotilla::api::certificate_revocation::LIST_PATH, false, None).await.expect("list");
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{list}");
    assert_eq!(items[0]["serial"], serial.as_str());
    assert!(items[0]["subject"].as_str().unwrap_or("").contains("lost-laptop"), "{list}");
    // Garbage is a 400 that says what to send.
    let bad = kept
        .call(reqwest::Method::POST, revoke, false, Some(("application/json", b"{\"serial\": \"xyz\"}".to_vec())))
        .await
        .expect_err("a bad serial");
    assert_eq!(bad.code, 400, "{}", bad.message);
    api.task.abort();
}
