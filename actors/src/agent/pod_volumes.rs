//! A pod's volumes on its node: what each volume holds ([`plan`], pure:
//! emptyDir, secret, configMap, downwardAPI and projected volumes, and the
//! ServiceAccount volume every pod gets unless it opts out), where each
//! container mounts them ([`mounts`]), and writing them into the node's
//! pod directory ([`write`]) the way the kubelet's atomic writer does: the
//! files go into a fresh directory and one rename of the `..data` link
//! swaps them in, so a container reading a Secret while it is rotated sees
//! the old set or the new one, never half of each.

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use k8s_openapi::api::core::v1 as core;
use sha2::{Digest, Sha256};

use super::pod_env::{field_value, resource_value, PodFacts};
use super::pod_inputs::{PodInputs, SERVICE_ACCOUNT_MOUNT_PATH};
use super::volume_tmpfs;
use crate::limits::{MEMORY_EMPTY_DIR_DEFAULT_BYTES, SECRET_VOLUME_TMPFS_BYTES};
use crate::model::quantity::Quantity;
use crate::model::service_account_token::API_AUDIENCE;

/// The name of the volume that carries the ServiceAccount token, CA and
/// namespace (Kubernetes adds `kube-api-access-XXXXX`).
pub const SERVICE_ACCOUNT_VOLUME: &str = "kube-api-access";

/// Kubernetes' default mode of files in secret, configMap, downwardAPI and
/// projected volumes.
const DEFAULT_FILE_MODE: u32 = 0o644;

/// A file of a volume.
#[derive(Clone, PartialEq, Eq)]
pub struct VolumeFile {
    /// Relative to the volume, checked to stay inside it.
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// What a volume holds.
#[derive(Clone, PartialEq, Eq)]
pub enum VolumeContent {
    /// An empty directory the pod's containers share, kept for the pod's life.
    EmptyDir,
    /// Files made from the control plane's objects, rewritten when they change.
    Files(Vec<VolumeFile>),
}

#[derive(Clone, PartialEq, Eq)]
pub struct PlannedVolume {
    pub name: String,
    pub content: VolumeContent,
    /// The size of the tmpfs it lives on, for volumes that hold Secrets or
    /// tokens and memory-medium emptyDirs; None: the node's disk.
    pub memory_bytes: Option<u64>,
}

/// Where one container mounts one volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountPlan {
    pub volume: String,
    pub container_path: String,
    pub read_only: bool,
    pub sub_path: Option<String>,
}

/// A relative path that stays inside its volume: no `..`, not absolute,
/// not empty, and not starting with `..` (the writer's own names).
fn check_path(what: &str, path: &str) -> Result<(), String> {
    let p = Path::new(path);
    let ok =
        !path.is_empty() && !path.starts_with("..") && p.components().all(|c| matches!(c, Component::Normal(_))) && !path.contains('\0');
    if ok {
        Ok(())
    } else {
        Err(format!("{what} {path:?} must be a relative path inside the volume, without '..'"))
    }
}

fn mode_of(mode: Option<i32>, default: u32, what: &str) -> Result<u32, String> {
    match mode {
        None => Ok(default),
        Some(m) if (0..=0o777).contains(&m) => Ok(m as u32),
        Some(m) => Err(format!("{what}: mode {m} must be from 0 to 0777 (511)")),
    }
}

/// The files of the keys of one object: all of them, or the items asked
/// for (a missing key is an error unless the source is optional).
fn key_files(
    pairs: Vec<(String, Vec<u8>)>,
    items: Option<&Vec<core::KeyToPath>>,
    default_mode: u32,
    what: &str,
    optional: bool,
) -> Result<Vec<VolumeFile>, String> {
    let Some(items) = items.filter(|i| !i.is_empty()) else {
        return pairs
            .into_iter()
            .map(|(k, data)| {
                check_path(&format!("{what} key"), &k)?;
                Ok(VolumeFile { path: k, data, mode: default_mode })
            })
            .collect();
    };
    let mut out = Vec::new();
    for item in items {
        let Some((_, data)) = pairs.iter().find(|(k, _)| *k == item.key) else {
            if optional {
                continue;
            }
            return Err(format!("{what}: couldn't find key {}", item.key));
        };
        check_path(&format!("{what} item path"), &item.path)?;
        out.push(VolumeFile { path: item.path.clone(), data: data.clone(), mode: mode_of(item.mode, default_mode, what)? });
    }
    Ok(out)
}

/// A Secret or ConfigMap a volume shows, with the items it picks.
struct ObjectSource<'a> {
    /// `secret` or `configmap`, as the kubelet names them in errors.
    kind: &'static str,
    name: &'a str,
    items: Option<&'a Vec<core::KeyToPath>>,
    optional: bool,
}

impl ObjectSource<'_> {
    /// Its files, given its keys (None: the object is not there, which
    /// only an optional source may be).
    fn files(&self, pairs: Option<Vec<(String, Vec<u8>)>>, mode: u32, what: &str) -> Result<Vec<VolumeFile>, String> {
        match pairs {
            Some(pairs) => key_files(pairs, self.items, mode, what, self.optional),
            None if self.optional => Ok(vec![]),
            None => Err(format!("{what}: {} {:?} not found", self.kind, self.name)),
        }
    }
}

fn secret_pairs(inputs: &PodInputs, name: &str) -> Option<Vec<(String, Vec<u8>)>> {
    let s: core::Secret = serde_json::from_value(inputs.secrets.get(name)?.clone()).ok()?;
    Some(s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)).collect())
}

fn config_map_pairs(inputs: &PodInputs, name: &str) -> Option<Vec<(String, Vec<u8>)>> {
    let cm: core::ConfigMap = serde_json::from_value(inputs.config_maps.get(name)?.clone()).ok()?;
    let mut pairs: Vec<(String, Vec<u8>)> = cm.data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.into_bytes())).collect();
    pairs.extend(cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0)));
    Some(pairs)
}

fn downward_files(
    pod: &core::Pod,
    items: &[core::DownwardAPIVolumeFile],
    default_mode: u32,
    facts: &PodFacts,
    what: &str,
) -> Result<Vec<VolumeFile>, String> {
    let mut out = Vec::new();
    for item in items {
        check_path(&format!("{what} path"), &item.path)?;
        let value = if let Some(f) = &item.field_ref {
            field_value(pod, &f.field_path, facts)?
        } else if let Some(r) = &item.resource_field_ref {
            let own = pod.spec.as_ref().and_then(|s| s.containers.first()).cloned().unwrap_or_default();
            resource_value(pod, &own, r, facts)?
        } else {
            return Err(format!("{what} item {:?} names no fieldRef or resourceFieldRef", item.path));
        };
        out.push(VolumeFile { path: item.path.clone(), data: value.into_bytes(), mode: mode_of(item.mode, default_mode, what)? });
    }
    Ok(out)
}

/// The token (for this API), CA and namespace files of a pod's
/// ServiceAccount volume.
fn service_account_files(pod: &core::Pod, inputs: &PodInputs) -> Result<Vec<VolumeFile>, String> {
    let token = inputs
        .tokens
        .get(API_AUDIENCE)
        .ok_or_else(|| format!("no ServiceAccount token for audience {API_AUDIENCE:?} was issued for this pod"))?;
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let file = |path: &str, data: Vec<u8>| VolumeFile { path: path.into(), data, mode: DEFAULT_FILE_MODE };
    Ok(vec![
        file("token", token.token.clone().into_bytes()),
        file("ca.crt", inputs.ca_pem.clone().into_bytes()),
        file("namespace", ns.into_bytes()),
    ])
}

/// Whether `container` gets the ServiceAccount volume: the pod gets one
/// and the container mounts nothing of its own at its path.
fn takes_service_account(container: &core::Container, inputs: &PodInputs) -> bool {
    inputs.automount && !container.volume_mounts.iter().flatten().any(|m| m.mount_path.trim_end_matches('/') == SERVICE_ACCOUNT_MOUNT_PATH)
}

/// The size of a memory-medium emptyDir: its `sizeLimit`, else a default.
fn memory_size(limit: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>, what: &str) -> Result<u64, String> {
    let Some(limit) = limit else { return Ok(MEMORY_EMPTY_DIR_DEFAULT_BYTES) };
    let q = Quantity::parse(&limit.0).map_err(|e| format!("{what}: sizeLimit {:?}: {e}", limit.0))?;
    match q.value() {
        n if n > 0 => Ok(n as u64),
        _ => Err(format!("{what}: sizeLimit {:?} must be more than zero", limit.0)),
    }
}

/// What each of the pod's volumes holds, or why one cannot be made.
pub fn plan(pod: &core::Pod, inputs: &PodInputs, facts: &PodFacts) -> Result<Vec<PlannedVolume>, String> {
    let mut out = Vec::new();
    let Some(spec) = &pod.spec else { return Ok(out) };
    for v in spec.volumes.iter().flatten() {
        let what = format!("volume {:?}", v.name);
        // Kubernetes' choice: what may carry a Secret or a token lives in
        // memory; configMap and downwardAPI volumes on disk.
        let mut memory_bytes = (v.secret.is_some() || v.projected.is_some()).then_some(SECRET_VOLUME_TMPFS_BYTES);
        let content = if let Some(e) = &v.empty_dir {
            if e.medium.as_deref() == Some("Memory") {
                memory_bytes = Some(memory_size(e.size_limit.as_ref(), &what)?);
            }
            VolumeContent::EmptyDir
        } else if let Some(s) = &v.secret {
            let name = s.secret_name.clone().unwrap_or_default();
            let mode = mode_of(s.default_mode, DEFAULT_FILE_MODE, &what)?;
            let source = ObjectSource { kind: "secret", name: &name, items: s.items.as_ref(), optional: s.optional == Some(true) };
            VolumeContent::Files(source.files(secret_pairs(inputs, &name), mode, &what)?)
        } else if let Some(m) = &v.config_map {
            let mode = mode_of(m.default_mode, DEFAULT_FILE_MODE, &what)?;
            let source = ObjectSource { kind: "configmap", name: &m.name, items: m.items.as_ref(), optional: m.optional == Some(true) };
            VolumeContent::Files(source.files(config_map_pairs(inputs, &m.name), mode, &what)?)
        } else if let Some(d) = &v.downward_api {
            let mode = mode_of(d.default_mode, DEFAULT_FILE_MODE, &what)?;
            VolumeContent::Files(downward_files(pod, d.items.as_deref().unwrap_or_default(), mode, facts, &what)?)
        } else if let Some(p) = &v.projected {
            let mode = mode_of(p.default_mode, DEFAULT_FILE_MODE, &what)?;
            let mut files = Vec::new();
            for source in p.sources.iter().flatten() {
                if let Some(s) = &source.secret {
                    let from = ObjectSource { kind: "secret", name: &s.name, items: s.items.as_ref(), optional: s.optional == Some(true) };
                    files.extend(from.files(secret_pairs(inputs, &s.name), mode, &what)?);
                } else if let Some(m) = &source.config_map {
                    let from =
                        ObjectSource { kind: "configmap", name: &m.name, items: m.items.as_ref(), optional: m.optional == Some(true) };
                    files.extend(from.files(config_map_pairs(inputs, &m.name), mode, &what)?);
                } else if let Some(d) = &source.downward_api {
                    files.extend(downward_files(pod, d.items.as_deref().unwrap_or_default(), mode, facts, &what)?);
                } else if let Some(t) = &source.service_account_token {
                    check_path(&format!("{what} token path"), &t.path)?;
                    let audience = t.audience.as_deref().filter(|a| !a.is_empty()).unwrap_or(API_AUDIENCE);
                    let token =
                        inputs.tokens.get(audience).ok_or_else(|| format!("{what}: no token for audience {audience:?} was issued"))?;
                    files.push(VolumeFile { path: t.path.clone(), data: token.token.clone().into_bytes(), mode });
                }
            }
            VolumeContent::Files(files)
        } else {
            return Err(format!(
                "{what}: flotilla supports emptyDir, secret, configMap, downwardAPI and projected volumes; \
                 hostPath, persistent volumes and the rest are not supported"
            ));
        };
        out.push(PlannedVolume { name: v.name.clone(), content, memory_bytes });
    }
    if spec.containers.iter().any(|c| takes_service_account(c, inputs)) {
        out.push(PlannedVolume {
            name: SERVICE_ACCOUNT_VOLUME.into(),
            content: VolumeContent::Files(service_account_files(pod, inputs)?),
            memory_bytes: Some(SECRET_VOLUME_TMPFS_BYTES),
        });
    }
    Ok(out)
}

/// Where `container` mounts the pod's volumes. Volumes made from objects
/// are read-only, as Kubernetes mounts them.
pub fn mounts(pod: &core::Pod, container: &core::Container, inputs: &PodInputs) -> Result<Vec<MountPlan>, String> {
    let volumes = pod.spec.as_ref().and_then(|s| s.volumes.as_ref());
    let mut out = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .and_then(|vs| vs.iter().find(|v| v.name == m.name))
            .ok_or_else(|| format!("volumeMount {:?} names no volume of the pod", m.name))?;
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            check_path("subPath", sub)?;
            // The runtime resolves a subPath on the host: in a directory the
            // pod writes, a container could make it a link to anywhere on
            // the node (CVE-2017-1002101). The agent writes the others.
            if volume.empty_dir.is_some() {
                return Err(format!(
                    "volumeMount {:?}: subPath is not supported on an emptyDir volume, since a container could turn it into a \
                     link to any path of the node; mount the whole volume instead",
                    m.name
                ));
            }
        }
        out.push(MountPlan {
            volume: m.name.clone(),
            container_path: m.mount_path.clone(),
            read_only: m.read_only == Some(true) || volume.empty_dir.is_none(),
            sub_path: m.sub_path.clone().filter(|s| !s.is_empty()),
        });
    }
    if takes_service_account(container, inputs) {
        out.push(MountPlan {
            volume: SERVICE_ACCOUNT_VOLUME.into(),
            container_path: SERVICE_ACCOUNT_MOUNT_PATH.into(),
            read_only: true,
            sub_path: None,
        });
    }
    Ok(out)
}

/// Removes a pod's volume directory, its memory volumes unmounted first.
pub fn remove_pod_dir(pod_dir: &Path) -> std::io::Result<()> {
    if !pod_dir.exists() {
        return Ok(());
    }
    volume_tmpfs::unmount_under(pod_dir)?;
    std::fs::remove_dir_all(pod_dir)
}

/// Removes the volume directories under `volumes_dir` of pods not in
/// `keep` (by uid): what an agent that was down left of pods deleted
/// meanwhile. Answers how many went.
pub fn sweep(volumes_dir: &Path, keep: &BTreeSet<String>) -> std::io::Result<usize> {
    let entries = match std::fs::read_dir(volumes_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut removed = 0;
    for entry in entries {
        let entry = entry?;
        let uid = entry.file_name().to_string_lossy().into_owned();
        if !keep.contains(&uid) && entry.file_type()?.is_dir() {
            remove_pod_dir(&entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The host directory of volume `name` of a pod whose volumes live in `pod_dir`.
pub fn volume_dir(pod_dir: &Path, name: &str) -> PathBuf {
    pod_dir.join(name)
}

/// The name of the directory a set of files is written into: its digest,
/// so writing the same files again changes nothing.
fn generation(files: &[VolumeFile]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update((f.path.len() as u64).to_le_bytes());
        h.update(f.path.as_bytes());
        h.update(f.mode.to_le_bytes());
        h.update((f.data.len() as u64).to_le_bytes());
        h.update(&f.data);
    }
    format!("..{}", &hex::encode(h.finalize())[..16])
}

/// Makes volume `v` under `pod_dir`, or brings its files up to date.
pub fn write(pod_dir: &Path, v: &PlannedVolume) -> std::io::Result<()> {
    let dir = volume_dir(pod_dir, &v.name);
    std::fs::create_dir_all(&dir)?;
    if let Some(size) = v.memory_bytes {
        volume_tmpfs::ensure(&dir, size)?;
    }
    let files = match &v.content {
        VolumeContent::EmptyDir => {
            // Any user a container runs as may write it, as in Kubernetes.
            return std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777));
        }
        VolumeContent::Files(files) => files,
    };
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    let generation = generation(files);
    let data_link = dir.join("..data");
    if std::fs::read_link(&data_link).is_ok_and(|t| t == Path::new(&generation)) {
        return Ok(());
    }
    let gen_dir = dir.join(&generation);
    if gen_dir.exists() {
        std::fs::remove_dir_all(&gen_dir)?;
    }
    std::fs::create_dir(&gen_dir)?;
    std::fs::set_permissions(&gen_dir, std::fs::Permissions::from_mode(0o755))?;
    for f in files {
        let path = gen_dir.join(&f.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = std::fs::OpenOptions::new().write(true).create_new(true).mode(f.mode).open(&path)?;
        out.write_all(&f.data)?;
        // The mode asked for, whatever this process's umask.
        out.set_permissions(std::fs::Permissions::from_mode(f.mode))?;
    }
    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    std::os::unix::fs::symlink(&generation, &tmp_link)?;
    std::fs::rename(&tmp_link, &data_link)?;
    // The visible names: one link per top-level entry, into `..data`.
    let top: BTreeSet<String> =
        files.iter().filter_map(|f| Path::new(&f.path).components().next().map(|c| c.as_os_str().to_string_lossy().into_owned())).collect();
    for name in &top {
        let link = dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)?;
        }
    }
    for entry in std::fs::read_dir(&dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_link = entry.file_type().is_ok_and(|t| t.is_symlink());
        if name.starts_with("..") {
            if name != generation && name != "..data" && !is_link {
                std::fs::remove_dir_all(entry.path())?;
            }
        } else if is_link && !top.contains(&name) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::pod_inputs::IssuedToken;
    use serde_json::json;
    use std::collections::BTreeMap;

    fn facts() -> PodFacts<'static> {
        PodFacts { node_ip: "192.168.1.7", pod_ip: None, node_cpu_millis: 1000, node_memory_bytes: 1 << 30 }
    }

    fn inputs(automount: bool) -> PodInputs {
        PodInputs {
            secrets: BTreeMap::from([(
                "tls".to_string(),
                json!({"metadata": {"name": "tls"}, "data": {"tls.crt": "Q0VSVA==", "tls.key": "S0VZ"}}),
            )]),
            config_maps: BTreeMap::from([(
                "conf".to_string(),
                json!({"metadata": {"name": "conf"}, "data": {"app.yaml": "level: debug\n"}, "binaryData": {"logo.bin": "AAE="}}),
            )]),
            tokens: BTreeMap::from([(API_AUDIENCE.to_string(), IssuedToken { token: "a.b.c".into(), expires_unix: 0, ttl_seconds: 3607 })]),
            automount,
            ca_pem: "CA PEM".into(),
            api: None,
        }
    }

    fn pod(spec: serde_json::Value) -> core::Pod {
        serde_json::from_value(json!({"metadata": {"name": "p", "namespace": "shop", "labels": {"app": "web"}}, "spec": spec})).unwrap()
    }

    fn files(v: &PlannedVolume) -> Vec<(String, Vec<u8>, u32)> {
        match &v.content {
            VolumeContent::Files(f) => f.iter().map(|f| (f.path.clone(), f.data.clone(), f.mode)).collect(),
            VolumeContent::EmptyDir => vec![],
        }
    }

    #[test]
    fn volumes_hold_their_objects_keys_and_every_pod_its_account() {
        let pod = pod(json!({
            "containers": [{"name": "main", "image": "i", "volumeMounts": [
                {"name": "certs", "mountPath": "/etc/tls"},
                {"name": "conf", "mountPath": "/etc/app/app.yaml", "subPath": "app.yaml"},
                {"name": "scratch", "mountPath": "/tmp/work"},
                {"name": "info", "mountPath": "/etc/info"}]}],
            "volumes": [
                {"name": "certs", "secret": {"secretName": "tls", "items": [{"key": "tls.key", "path": "private/key.pem", "mode": 0o400}]}},
                {"name": "conf", "configMap": {"name": "conf"}},
                {"name": "scratch", "emptyDir": {}},
                {"name": "info", "downwardAPI": {"items": [{"path": "labels-app", "fieldRef": {"fieldPath": "metadata.labels['app']"}}]}}]
        }));
        let planned = plan(&pod, &inputs(true), &facts()).unwrap();
        let names: Vec<&str> = planned.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["certs", "conf", "scratch", "info", SERVICE_ACCOUNT_VOLUME]);
        assert_eq!(files(&planned[0]), vec![("private/key.pem".into(), b"KEY".to_vec(), 0o400)]);
        assert_eq!(
            files(&planned[1]),
            vec![("app.yaml".into(), b"level: debug\n".to_vec(), 0o644), ("logo.bin".into(), vec![0, 1], 0o644)]
        );
        assert!(planned[2].content == VolumeContent::EmptyDir);
        assert_eq!(files(&planned[3]), vec![("labels-app".into(), b"web".to_vec(), 0o644)]);
        assert_eq!(
            files(&planned[4]),
            vec![
                ("token".into(), b"a.b.c".to_vec(), 0o644),
                ("ca.crt".into(), b"CA PEM".to_vec(), 0o644),
                ("namespace".into(), b"shop".to_vec(), 0o644)
            ]
        );
        let c = &pod.spec.as_ref().unwrap().containers[0];
        let m = mounts(&pod, c, &inputs(true)).unwrap();
        let seen: Vec<(&str, &str, bool, Option<&str>)> =
            m.iter().map(|m| (m.volume.as_str(), m.container_path.as_str(), m.read_only, m.sub_path.as_deref())).collect();
        assert_eq!(
            seen,
            vec![
                ("certs", "/etc/tls", true, None),
                ("conf", "/etc/app/app.yaml", true, Some("app.yaml")),
                ("scratch", "/tmp/work", false, None),
                ("info", "/etc/info", true, None),
                (SERVICE_ACCOUNT_VOLUME, SERVICE_ACCOUNT_MOUNT_PATH, true, None),
            ]
        );
        // What may hold a Secret or a token lives in memory.
        let memory: Vec<Option<u64>> = planned.iter().map(|v| v.memory_bytes).collect();
        let secret = Some(SECRET_VOLUME_TMPFS_BYTES);
        assert_eq!(memory, [secret, None, None, None, secret]);
        let ram = |limit: serde_json::Value| {
            let mut dir = json!({"medium": "Memory"});
            if !limit.is_null() {
                dir["sizeLimit"] = limit;
            }
            let p = self::pod(json!({"containers": [{"name": "main", "image": "i"}], "volumes": [{"name": "ram", "emptyDir": dir}]}));
            plan(&p, &inputs(false), &facts()).map(|v| v[0].memory_bytes)
        };
        assert_eq!(ram(json!("16Mi")), Ok(Some(16 * 1024 * 1024)));
        assert_eq!(ram(serde_json::Value::Null), Ok(Some(MEMORY_EMPTY_DIR_DEFAULT_BYTES)));
        // Opted out: no account volume, no mount.
        assert_eq!(plan(&pod, &inputs(false), &facts()).unwrap().len(), 4);
        assert_eq!(mounts(&pod, c, &inputs(false)).unwrap().len(), 4);
    }

    #[test]
    fn what_cannot_be_made_is_refused_with_the_reason() {
        let cases = [
            (json!([{"name": "v", "secret": {"secretName": "nope"}}]), "volume \"v\": secret \"nope\" not found"),
            (json!([{"name": "v", "configMap": {"name": "nope"}}]), "volume \"v\": configmap \"nope\" not found"),
            (
                json!([{"name": "v", "secret": {"secretName": "tls", "items": [{"key": "ca.crt", "path": "ca"}]}}]),
                "volume \"v\": couldn't find key ca.crt",
            ),
            (
                json!([{"name": "v", "secret": {"secretName": "tls", "items": [{"key": "tls.key", "path": "../../etc/shadow"}]}}]),
                "volume \"v\" item path \"../../etc/shadow\" must be a relative path inside the volume, without '..'",
            ),
            (json!([{"name": "v", "hostPath": {"path": "/"}}]), "volume \"v\": flotilla supports emptyDir"),
        ];
        for (volumes, want) in cases {
            let pod = pod(json!({"containers": [{"name": "main", "image": "i"}], "volumes": volumes}));
            let err = plan(&pod, &inputs(false), &facts()).err().unwrap_or_default();
            assert!(err.starts_with(want), "{err:?} starts with {want:?}");
        }
        let optional = pod(json!({"containers": [{"name": "main", "image": "i"}],
            "volumes": [{"name": "v", "secret": {"secretName": "nope", "optional": true}}]}));
        assert!(plan(&optional, &inputs(false), &facts()).is_ok());
        let escape = pod(json!({"containers": [{"name": "main", "image": "i",
                "volumeMounts": [{"name": "shared", "mountPath": "/x", "subPath": "link-to-host-etc"}]}],
            "volumes": [{"name": "shared", "emptyDir": {}}]}));
        let c = &escape.spec.as_ref().unwrap().containers[0];
        assert!(mounts(&escape, c, &inputs(false)).unwrap_err().contains("subPath is not supported on an emptyDir volume"));
        let stray = pod(json!({"containers": [{"name": "main", "image": "i", "volumeMounts": [{"name": "x", "mountPath": "/x"}]}]}));
        let c = &stray.spec.as_ref().unwrap().containers[0];
        assert_eq!(mounts(&stray, c, &inputs(false)), Err("volumeMount \"x\" names no volume of the pod".into()));
    }

    #[test]
    fn rewriting_a_volume_swaps_the_whole_set_and_drops_what_went() {
        let dir = tempfile::tempdir().unwrap();
        let file = |p: &str, d: &str| VolumeFile { path: p.into(), data: d.as_bytes().to_vec(), mode: 0o640 };
        let v1 =
            PlannedVolume { name: "s".into(), content: VolumeContent::Files(vec![file("a", "1"), file("sub/b", "2")]), memory_bytes: None };
        write(dir.path(), &v1).unwrap();
        let vol = dir.path().join("s");
        assert_eq!(std::fs::read_to_string(vol.join("a")).unwrap(), "1");
        assert_eq!(std::fs::read_to_string(vol.join("sub/b")).unwrap(), "2");
        let mode = std::fs::metadata(vol.join("a")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);
        let first = std::fs::read_link(vol.join("..data")).unwrap();
        write(dir.path(), &v1).unwrap();
        assert_eq!(std::fs::read_link(vol.join("..data")).unwrap(), first, "the same files are not written again");
        let v2 = PlannedVolume { name: "s".into(), content: VolumeContent::Files(vec![file("a", "changed")]), memory_bytes: None };
        write(dir.path(), &v2).unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("a")).unwrap(), "changed");
        assert!(std::fs::symlink_metadata(vol.join("sub")).is_err(), "a key that went is gone");
        let entries: BTreeSet<String> =
            std::fs::read_dir(&vol).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(entries.len(), 3, "a, ..data and one generation: {entries:?}");
        let scratch = PlannedVolume { name: "e".into(), content: VolumeContent::EmptyDir, memory_bytes: None };
        write(dir.path(), &scratch).unwrap();
        assert_eq!(std::fs::metadata(dir.path().join("e")).unwrap().permissions().mode() & 0o777, 0o777);
    }
}
