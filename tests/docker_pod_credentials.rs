//! What a pod gets of the cluster, on real containers (`flotilla up
//! --runtime docker` with the nftables proxy): a Secret and a ConfigMap as
//! environment variables and as files; its ServiceAccount's token, the CA
//! and its namespace at the path in-cluster clients read; and, through the
//! `kubernetes` Service's virtual IP, the API itself: the stock kubectl,
//! run inside the pods with no configuration (client-go's in-cluster
//! config: the environment, the token and `ca.crt`, checked against the
//! serving certificate), lists pods only where a Role allows it. A pod naming a Secret that
//! is not there waits with CreateContainerConfigError and starts once it
//! is created. Needs a Docker engine, root, nft and a kubectl binary (put
//! into an image on top of the test image); elsewhere it prints SKIPPED.

mod common;
use common::*;

const OBJECTS: &str = "apiVersion: v1
kind: Namespace
metadata: {name: creds}
---
apiVersion: v1
kind: Secret
metadata: {name: db, namespace: creds}
stringData: {password: hunter2, user: admin}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: creds}
data: {level: debug}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader, namespace: creds}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: pod-reader, namespace: creds}
rules: [{apiGroups: [''], resources: [pods], verbs: [get, list]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader-reads-pods, namespace: creds}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: pod-reader}
subjects: [{kind: ServiceAccount, name: reader, namespace: creds}]
---
apiVersion: v1
kind: Pod
metadata: {name: reader, namespace: creds}
spec:
  serviceAccountName: reader
  terminationGracePeriodSeconds: 1
  securityContext: {runAsUser: 65534, runAsNonRoot: true}
  containers:
  - name: main
    image: flotilla/kubectl:latest
    imagePullPolicy: IfNotPresent
    command: [sleep, '3600']
    env:
    - {name: HOME, value: /tmp}
    - {name: PASSWORD, valueFrom: {secretKeyRef: {name: db, key: password}}}
    - {name: LEVEL, valueFrom: {configMapKeyRef: {name: settings, key: level}}}
    - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
    volumeMounts: [{name: db, mountPath: /etc/db}]
  volumes: [{name: db, secret: {secretName: db}}]
---
apiVersion: v1
kind: Pod
metadata: {name: stranger, namespace: creds}
spec:
  terminationGracePeriodSeconds: 1
  securityContext: {runAsUser: 65534}
  containers:
  - name: main
    image: flotilla/kubectl:latest
    imagePullPolicy: IfNotPresent
    command: [sleep, '3600']
    env: [{name: HOME, value: /tmp}]
";

const WAITS_FOR_SECRET: &str = "apiVersion: v1
kind: Pod
metadata: {name: patient, namespace: creds}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: flotilla/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sleep, '3600']
    envFrom: [{secretRef: {name: later}}]
";

const LATER: &str = "apiVersion: v1
kind: Secret
metadata: {name: later, namespace: creds}
stringData: {TOKEN: arrived}
";

/// A shell command's output inside `container`.
fn sh(container: &str, script: &str) -> (bool, String) {
    docker(&["exec", container, "timeout", "5", "sh", "-c", script])
}

/// kubectl inside `container`, configured by nothing but the pod: (exit
/// status 0, stdout and stderr).
fn kubectl_in(container: &str, args: &str) -> (bool, String) {
    sh(container, &format!("kubectl {args} 2>&1"))
}

/// Builds `flotilla/kubectl:latest`: the test image with a stock kubectl
/// (a static binary) in it. False when this machine has no kubectl.
fn build_kubectl_image() -> bool {
    let found = ["/usr/lib/google-cloud-sdk/bin/kubectl.1.33", "/usr/bin/kubectl", "/usr/local/bin/kubectl"]
        .iter()
        .map(std::path::Path::new)
        .find(|p| p.is_file())
        .map(std::path::Path::to_path_buf);
    let Some(kubectl) = found else { return false };
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&kubectl, dir.path().join("kubectl")).expect("copy kubectl");
    std::fs::write(dir.path().join("Dockerfile"), "FROM flotilla/busybox:latest\nCOPY kubectl /bin/kubectl\n").expect("Dockerfile");
    let built = docker(&["build", "-q", "-t", "flotilla/kubectl:latest", dir.path().to_str().expect("utf8")]);
    assert!(built.0, "docker build of flotilla/kubectl failed: {}", built.1);
    true
}

#[test]
fn pods_get_secrets_config_and_a_token_that_rbac_limits() {
    if !docker_and_nft_ready() {
        return;
    }
    if !build_kubectl_image() {
        eprintln!("SKIPPED: no kubectl binary on this machine to run inside the pods");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let node = format!("pc{}", std::process::id());
    let (_leftovers, _table) = (DockerLeftovers(vec![node.clone()]), TableGone(node.clone()));
    let http = free_tcp();
    let api = format!("http://{http}");
    let _up = docker_up(&node, &data, &http, "10.234.0.0/16");
    until("the node is ready", || cli(&api, &["get", "nodes"], None).1.contains(" Ready"));
    let (_, svc) = cli(&api, &["get", "service", "kubernetes", "-n", "default", "-o", "json"], None);
    let svc: serde_json::Value = serde_json::from_str(&svc).expect("the kubernetes Service exists");
    assert_eq!(svc.pointer("/spec/clusterIP").and_then(|v| v.as_str()), Some("10.96.0.1"), "{svc}");
    assert_eq!(svc.pointer("/spec/ports/0/port").and_then(|v| v.as_u64()), Some(443), "{svc}");

    let (code, out) = cli(&api, &["apply", "-f", "-"], Some(OBJECTS));
    assert_eq!(code, 0, "{out}");
    until("both pods running", || {
        let (_, out) = cli(&api, &["get", "pods", "-n", "creds"], None);
        out.lines().filter(|l| l.contains("Running")).count() == 2
    });
    let reader = container_of(&node, "creds", "reader").expect("reader's container");
    let stranger = container_of(&node, "creds", "stranger").expect("stranger's container");

    // The Secret and ConfigMap, as variables and as files.
    assert_eq!(sh(&reader, "echo $PASSWORD $LEVEL $POD_NAME"), (true, "hunter2 debug reader".to_string()));
    assert_eq!(sh(&reader, "cat /etc/db/password; echo; cat /etc/db/user"), (true, "hunter2\nadmin".to_string()));
    assert_eq!(sh(&reader, "id -u"), (true, "65534".to_string()), "the files are readable by the user the pod runs as");
    let (ok, _) = sh(&reader, "echo x > /etc/db/password");
    assert!(!ok, "a secret volume is read-only");

    // The account's files, where in-cluster clients look.
    let sa = "/var/run/secrets/kubernetes.io/serviceaccount";
    assert_eq!(sh(&reader, &format!("cat {sa}/namespace")), (true, "creds".to_string()));
    let (_, ca) = sh(&reader, &format!("cat {sa}/ca.crt"));
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
    let (_, token) = sh(&reader, &format!("cat {sa}/token"));
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert_eq!(sh(&reader, "echo $KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT"), (true, "10.96.0.1:443".to_string()));
    // The Secret's and the token's volumes are in memory, as the kubelet
    // keeps them: a tmpfs on the node, bound into the container.
    let (_, mounts) = sh(&reader, "cat /proc/mounts");
    for path in ["/etc/db", sa] {
        let line = mounts.lines().find(|l| l.split(' ').nth(1) == Some(path)).unwrap_or_default();
        assert!(line.starts_with("tmpfs ") || line.contains(" tmpfs "), "{path} is not a tmpfs: {line:?}\n{mounts}");
    }

    // kubectl in the pod, as client-go's in-cluster config sets it up:
    // RBAC lets the reader list its namespace's pods, and nothing else;
    // the stranger, nothing.
    until("kubectl in the reader's pod lists its namespace's pods", || {
        let (ok, out) = kubectl_in(&reader, "get pods -o name");
        ok && out.contains("pod/stranger") && out.contains("pod/reader")
    });
    let (ok, out) = kubectl_in(&reader, "get pods -n default");
    assert!(!ok && out.contains("Forbidden") && out.contains("system:serviceaccount:creds:reader"), "another namespace: {out}");
    let (ok, out) = kubectl_in(&reader, "get secrets");
    assert!(!ok && out.contains("Forbidden"), "secrets: {out}");
    let (ok, out) = kubectl_in(&reader, "auth can-i delete pods");
    assert!(!ok && out.starts_with("no"), "{out}");
    assert_eq!(kubectl_in(&reader, "auth can-i list pods"), (true, "yes".to_string()));
    let (ok, out) = kubectl_in(&stranger, "get pods");
    assert!(!ok && out.contains("Forbidden") && out.contains("system:serviceaccount:creds:default"), "the default account: {out}");

    // The token is bound to its pod: it opens the API (to what its
    // account may see) until the pod is gone, then no more.
    let (_, stranger_token) = sh(&stranger, &format!("cat {sa}/token"));
    let status_with = |token: &str| -> String {
        let out = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5", "-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("{api}/api/v1/namespaces/creds/pods"))
            .output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    };
    if std::process::Command::new("curl").arg("--version").output().is_ok_and(|o| o.status.success()) {
        assert_eq!(status_with(&stranger_token), "403", "authenticated, and not allowed");
        let (_, stranger_json) = cli(&api, &["get", "pod", "stranger", "-n", "creds", "-o", "json"], None);
        let stranger_pod: serde_json::Value = serde_json::from_str(&stranger_json).expect("the stranger's pod");
        let uid = stranger_pod.pointer("/metadata/uid").and_then(|v| v.as_str()).expect("a uid").to_string();
        let mounted = || std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().contains(&uid);
        assert!(mounted(), "the stranger's token volume is a tmpfs on the node");
        assert_eq!(cli(&api, &["delete", "pod", "stranger", "-n", "creds"], None).0, 0);
        until("the stranger's pod is gone", || !cli(&api, &["get", "pods", "-n", "creds"], None).1.contains("stranger"));
        until("and its volumes unmounted", || !mounted());
        assert_eq!(status_with(&stranger_token), "401", "the token of a deleted pod opens nothing");
    } else {
        eprintln!("SKIPPED (bound token after the pod is gone): no curl here");
    }

    // A pod naming a Secret that is not there waits, and says why.
    let (code, out) = cli(&api, &["apply", "-f", "-"], Some(WAITS_FOR_SECRET));
    assert_eq!(code, 0, "{out}");
    until("the pod waits with CreateContainerConfigError", || {
        let (_, out) = cli(&api, &["get", "pod", "patient", "-n", "creds", "-o", "json"], None);
        out.contains("CreateContainerConfigError") && out.contains("secret \\\"later\\\" not found")
    });
    let (code, out) = cli(&api, &["apply", "-f", "-"], Some(LATER));
    assert_eq!(code, 0, "{out}");
    until("the pod starts once the Secret exists", || {
        let (_, out) = cli(&api, &["get", "pods", "-n", "creds"], None);
        out.lines().any(|l| l.starts_with("patient") && l.contains("Running"))
    });
    let patient = container_of(&node, "creds", "patient").expect("patient's container");
    assert_eq!(sh(&patient, "echo $TOKEN"), (true, "arrived".to_string()));

    // Nothing of the Secret's value lies on the disk in plain text: not in
    // the store, and not in the pods' volumes (memory, which the walk
    // does not enter).
    let mut plain = Vec::new();
    for entry in walk(&data) {
        if std::fs::read(&entry).is_ok_and(|b| b.windows(7).any(|w| w == b"hunter2")) {
            plain.push(entry);
        }
    }
    assert!(plain.is_empty(), "the secret's value in plain text in {plain:?}");
}

/// The files under `dir` on its own file system (no other mount is entered).
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let device = std::fs::metadata(dir).map(|m| m.dev()).unwrap_or_default();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else { continue };
        if meta.is_dir() && meta.dev() == device {
            out.extend(walk(&p));
        } else if meta.is_dir() {
            continue;
        } else {
            out.push(p);
        }
    }
    out
}
