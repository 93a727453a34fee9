//! The `process` runtime: each container is a child process of the agent
//! (its `command` and `args`, its own process group, its env and working
//! directory), with stdout and stderr captured to a size-bounded log file.
//! The image is recorded, not pulled. A record per container in the state
//! directory lets a restarted agent find and adopt processes it started.
//! A container with a memory or CPU limit runs in a cgroup of its own
//! (see [`super::cgroup`]) where the host lets the agent make one; a
//! container over its memory limit is killed and reported OOMKilled, and
//! its usage is the cgroup's. Elsewhere limits are not enforced, which is
//! logged once, and usage is the main process's resident memory.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::cgroup::{self, Cgroup, Hierarchy, Limits};
use super::{tail_lines, ContainerRuntime, ContainerSpec, Exit, OwnedContainer, RuntimeError, Usage};
use crate::tasks::OwnedTask;

/// A container's log file is rotated (one previous file kept) past this.
pub const LOG_FILE_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// How often an adopted (non-child) process is checked for exit.
const ADOPTED_POLL: Duration = Duration::from_millis(200);
/// The OOM killer counts its kill as it sends it; a victim reaped first is
/// looked at once more after this.
const OOM_RECHECK: Duration = Duration::from_millis(50);

#[derive(Serialize, Deserialize, Clone)]
struct Record {
    id: String,
    pid: i32,
    node: String,
    pod_uid: String,
    container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cgroup: Option<cgroup::Paths>,
}

struct Entry {
    record: Record,
    exit: watch::Sender<Option<Exit>>,
    cgroup: Option<Arc<Cgroup>>,
    /// The exit waiter and log copiers: they end with the entry (removed,
    /// or the runtime dropped; a later agent adopts the process).
    _tasks: Vec<OwnedTask>,
}

/// Runs containers as local processes.
pub struct ProcessRuntime {
    state_dir: PathBuf,
    next: AtomicU64,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    /// Where containers' cgroups go; None where limits cannot be enforced.
    cgroups: Option<Hierarchy>,
    /// A container that could not have its cgroup is logged at info once.
    cgroup_failure_logged: AtomicBool,
}

fn pid_alive(pid: i32) -> bool {
    // Signal 0 checks existence; a zombie of ours counts as gone.
    unsafe { libc::kill(pid, 0) == 0 }
}

fn signal_group(pid: i32, sig: i32) {
    unsafe {
        libc::kill(-pid, sig);
    }
}

fn oom_exit() -> Exit {
    Exit { code: 128 + libc::SIGKILL as i64, reason: "OOMKilled".into(), message: "the container used more memory than its limit".into() }
}

/// Whether the kernel's OOM killer acted in the container's cgroup.
async fn oom_killed(cgroup: Option<&Cgroup>) -> bool {
    let Some(cgroup) = cgroup else { return false };
    if cgroup.oom_kills() > 0 {
        return true;
    }
    tokio::time::sleep(OOM_RECHECK).await;
    cgroup.oom_kills() > 0
}

impl ProcessRuntime {
    pub fn new(state_dir: impl Into<PathBuf>) -> Result<Self, RuntimeError> {
        let state_dir = state_dir.into();
        std::fs::create_dir_all(state_dir.join("logs")).map_err(|e| RuntimeError::Unavailable(format!("{}: {e}", state_dir.display())))?;
        std::fs::create_dir_all(state_dir.join("containers"))
            .map_err(|e| RuntimeError::Unavailable(format!("{}: {e}", state_dir.display())))?;
        let cgroups = match Hierarchy::detect() {
            Ok(hierarchy) => {
                tracing::debug!(?hierarchy, "containers with limits get cgroups");
                Some(hierarchy)
            }
            Err(e) => {
                tracing::info!("memory and CPU limits are not enforced on the process runtime: cgroups are not usable here ({e})");
                None
            }
        };
        let runtime = ProcessRuntime {
            state_dir,
            next: AtomicU64::new(0),
            entries: Arc::new(Mutex::new(HashMap::new())),
            cgroups,
            cgroup_failure_logged: AtomicBool::new(false),
        };
        runtime.load_records();
        Ok(runtime)
    }

    /// A container's own cgroup, when it has limits and the host allows
    /// one; without it the container still runs, unlimited.
    fn cgroup_for(&self, spec: &ContainerSpec, n: u64) -> Option<Arc<Cgroup>> {
        let hierarchy = self.cgroups.as_ref()?;
        let limits = Limits { cpu_millis: spec.cpu_millis, memory_bytes: spec.memory_bytes };
        if limits.is_empty() {
            return None;
        }
        match Cgroup::create(hierarchy, &format!("{}-{}-{n}", spec.pod_uid, spec.name), &limits) {
            Ok(cgroup) => Some(Arc::new(cgroup)),
            Err(e) => {
                self.no_limits(&spec.name, &e);
                None
            }
        }
    }

    fn no_limits(&self, container: &str, why: &dyn std::fmt::Display) {
        if self.cgroup_failure_logged.swap(true, Ordering::Relaxed) {
            tracing::debug!(container, "running without memory and CPU limits: {why}");
        } else {
            tracing::info!(container, "running without memory and CPU limits (logged once): {why}");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log_path(&self, id: &str) -> PathBuf {
        self.state_dir.join("logs").join(format!("{id}.log"))
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.state_dir.join("containers").join(format!("{id}.json"))
    }

    /// Re-finds processes started by an earlier agent run.
    fn load_records(&self) {
        let Ok(dir) = std::fs::read_dir(self.state_dir.join("containers")) else { return };
        for entry in dir.flatten() {
            let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
            let Ok(record) = serde_json::from_str::<Record>(&text) else { continue };
            let cgroup = record.cgroup.clone().and_then(Cgroup::open).map(Arc::new);
            let (exit, _) = watch::channel(if pid_alive(record.pid) { None } else { Some(Exit::from_code(0)) });
            let mut tasks = Vec::new();
            if exit.borrow().is_none() {
                let tx = exit.clone();
                let pid = record.pid;
                let watched = cgroup.clone();
                tasks.push(OwnedTask::spawn(async move {
                    while pid_alive(pid) {
                        tokio::time::sleep(ADOPTED_POLL).await;
                    }
                    // The exit code of a process we did not start is
                    // unknown, but its cgroup knows about OOM kills.
                    let exit = if oom_killed(watched.as_deref()).await {
                        oom_exit()
                    } else {
                        Exit { code: 0, reason: "Completed".into(), message: "adopted process exited".into() }
                    };
                    tx.send_replace(Some(exit));
                }));
            }
            self.next.fetch_max(record.id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0) + 1, Ordering::Relaxed);
            self.lock().insert(record.id.clone(), Entry { record, exit, cgroup, _tasks: tasks });
        }
    }
}

/// The uid and gid a container's process gets, where they differ from the
/// agent's: `runAsUser` with `runAsGroup`, else the user's own id as its
/// group, so a container that drops root never keeps root's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Switch {
    uid: u32,
    gid: u32,
}

/// Checks the container's identity against what this agent can do and
/// answers the switch to make, if any.
fn identity(spec: &ContainerSpec, agent_uid: u32) -> Result<Option<Switch>, RuntimeError> {
    let run_as = &spec.run_as;
    let whose = if run_as.user.is_some() { "its runAsUser" } else { "the agent that runs it" };
    run_as.check_non_root(Some(run_as.user.unwrap_or(agent_uid)), whose)?;
    let Some(uid) = run_as.user.or(run_as.group.map(|_| agent_uid)) else { return Ok(None) };
    let gid = run_as.group.unwrap_or(uid);
    if agent_uid != 0 && (uid != agent_uid || run_as.group.is_some()) {
        return Err(RuntimeError::Config(format!(
            "container {:?} asks to run as uid {uid} gid {gid}, and this agent runs as uid {agent_uid}, which cannot switch users; run the agent as root or drop runAsUser and runAsGroup",
            spec.name
        )));
    }
    Ok(Some(Switch { uid, gid }))
}

/// Drops to `switch` between fork and exec: supplementary groups first
/// (root's would otherwise stay), then the group, then the user, which
/// ends the right to change the others. Async-signal-safe calls only.
fn drop_to(switch: Switch) -> std::io::Result<()> {
    let check = |rc: libc::c_int| if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) };
    unsafe {
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setgid(switch.gid))?;
        check(libc::setuid(switch.uid))
    }
}

/// The command for a container; with `join`, the child moves itself into
/// those cgroups before exec, so all it runs is limited from the start,
/// and then takes the container's user (after the join, which needs the
/// agent's rights over the cgroup).
fn command(
    program: &str,
    rest: &[String],
    spec: &ContainerSpec,
    join: Option<Vec<CString>>,
    switch: Option<Switch>,
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(rest)
        .envs(spec.env.iter().cloned())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    if let Some(dir) = &spec.working_dir {
        cmd.current_dir(dir);
    }
    if join.is_some() || switch.is_some() {
        // SAFETY: runs between fork and exec and makes only
        // async-signal-safe calls (open, write, close, setgroups, setgid,
        // setuid) on paths formatted before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(files) = &join {
                    cgroup::join_self(files)?;
                }
                match switch {
                    Some(switch) => drop_to(switch),
                    None => Ok(()),
                }
            });
        }
    }
    cmd
}

async fn copy_capped(mut from: impl AsyncRead + Unpin, path: PathBuf, file: Arc<tokio::sync::Mutex<tokio::fs::File>>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let mut f = file.lock().await;
        if f.metadata().await.map(|m| m.len()).unwrap_or(0) > LOG_FILE_MAX_BYTES {
            let _ = tokio::fs::rename(&path, path.with_extension("log.1")).await;
            if let Ok(new) = tokio::fs::File::create(&path).await {
                *f = new;
            }
        }
        let _ = f.write_all(&buf[..n]).await;
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for ProcessRuntime {
    fn kind(&self) -> &'static str {
        "process"
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let argv: Vec<String> = spec.command.iter().chain(&spec.args).cloned().collect();
        let Some((program, rest)) = argv.split_first() else {
            return Err(RuntimeError::Create(format!(
                "container {:?} has no command: the process runtime runs `command` and `args` (it does not read images)",
                spec.name
            )));
        };
        if let Some(m) = spec.mounts.first() {
            return Err(RuntimeError::Config(format!(
                "container {:?} mounts a volume at {}: the process runtime runs containers in the host's own file system \
                 and cannot mount volumes; run this node with --runtime docker, or use env (valueFrom) instead",
                spec.name, m.container_path
            )));
        }
        let switch = identity(spec, unsafe { libc::geteuid() })?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}-{}-{n}", spec.pod_name, spec.name);
        let log_path = self.log_path(&id);
        let file = tokio::fs::File::create(&log_path).await.map_err(|e| RuntimeError::Unavailable(format!("log file: {e}")))?;
        let mut cgroup = self.cgroup_for(spec, n);
        let mut spawned = command(program, rest, spec, cgroup.as_ref().map(|c| c.procs().to_vec()), switch).spawn();
        if spawned.is_err() && cgroup.is_some() {
            // The child reports only an errno, so a cgroup it could not
            // join looks like a program that cannot run. Once more without
            // the cgroup tells them apart: the first attempt never got to
            // exec, so nothing runs twice.
            let retried = command(program, rest, spec, None, switch).spawn();
            if let (Err(first), true) = (&spawned, retried.is_ok()) {
                self.no_limits(&spec.name, &format!("the process could not join its cgroup: {first}"));
            }
            spawned = retried;
            if let Some(failed) = cgroup.take() {
                if let Err(e) = failed.remove().await {
                    tracing::debug!(container = %spec.name, error = %e, "cgroup not removed");
                }
            }
        }
        let mut child = spawned.map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RuntimeError::Create(format!("executable {program:?} not found")),
            std::io::ErrorKind::PermissionDenied => RuntimeError::Create(format!("executable {program:?} is not executable")),
            _ => RuntimeError::Create(format!("{program:?}: {e}")),
        })?;
        let Some(pid) = child.id().map(|p| p as i32) else {
            if let Some(c) = &cgroup {
                let _ = c.remove().await;
            }
            return Err(RuntimeError::Create("process exited before it could be tracked".into()));
        };
        let file = Arc::new(tokio::sync::Mutex::new(file));
        let mut tasks = Vec::new();
        if let Some(out) = child.stdout.take() {
            tasks.push(OwnedTask::spawn(copy_capped(out, log_path.clone(), file.clone())));
        }
        if let Some(err) = child.stderr.take() {
            tasks.push(OwnedTask::spawn(copy_capped(err, log_path.clone(), file.clone())));
        }
        let record = Record {
            id: id.clone(),
            pid,
            node: spec.node.clone(),
            pod_uid: spec.pod_uid.clone(),
            container: spec.name.clone(),
            cgroup: cgroup.as_ref().map(|c| c.paths().clone()),
        };
        if let Ok(text) = serde_json::to_string(&record) {
            let _ = std::fs::write(self.record_path(&id), text);
        }
        let (exit, _) = watch::channel(None);
        let tx = exit.clone();
        let watched = cgroup.clone();
        tasks.push(OwnedTask::spawn(async move {
            use std::os::unix::process::ExitStatusExt;
            let status = child.wait().await;
            let killed = matches!(&status, Ok(s) if s.signal() == Some(libc::SIGKILL));
            let oom = killed && oom_killed(watched.as_deref()).await;
            let exit = match status {
                Ok(_) if oom => oom_exit(),
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(code), _) => Exit::from_code(code as i64),
                    (None, Some(sig)) => {
                        Exit { code: 128 + sig as i64, reason: "Error".into(), message: format!("killed by signal {sig}") }
                    }
                    _ => Exit::from_code(1),
                },
                Err(e) => Exit { code: 1, reason: "Error".into(), message: e.to_string() },
            };
            tx.send_replace(Some(exit));
        }));
        self.lock().insert(id.clone(), Entry { record, exit, cgroup, _tasks: tasks });
        Ok(id)
    }

    async fn wait(&self, id: &str) -> Result<Exit, RuntimeError> {
        let mut rx = self.lock().get(id).map(|e| e.exit.subscribe()).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        loop {
            if let Some(exit) = rx.borrow_and_update().clone() {
                return Ok(exit);
            }
            if rx.changed().await.is_err() {
                return Err(RuntimeError::NotFound(id.into()));
            }
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let (pid, mut rx, cgroup) = {
            let guard = self.lock();
            let e = guard.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
            (e.record.pid, e.exit.subscribe(), e.cgroup.clone())
        };
        if rx.borrow().is_some() {
            return Ok(());
        }
        signal_group(pid, libc::SIGTERM);
        let exited = tokio::time::timeout(grace, async {
            while rx.borrow_and_update().is_none() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if exited.is_err() {
            signal_group(pid, libc::SIGKILL);
            // Also what left the process group.
            if let Some(c) = &cgroup {
                c.kill_all();
            }
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let removed = self.lock().remove(id);
        if let Some(cgroup) = removed.and_then(|e| e.cgroup) {
            if let Err(e) = cgroup.remove().await {
                tracing::warn!(container = %id, error = %e, "cgroup not removed");
            }
        }
        let _ = std::fs::remove_file(self.record_path(id));
        let _ = std::fs::remove_file(self.log_path(id));
        let _ = std::fs::remove_file(self.log_path(id).with_extension("log.1"));
        Ok(())
    }

    async fn logs(&self, id: &str, tail: Option<usize>) -> Result<Vec<u8>, RuntimeError> {
        if !self.lock().contains_key(id) {
            return Err(RuntimeError::NotFound(id.into()));
        }
        let path = self.log_path(id);
        let mut bytes = tokio::fs::read(path.with_extension("log.1")).await.unwrap_or_default();
        bytes.extend(tokio::fs::read(&path).await.unwrap_or_default());
        Ok(match tail {
            Some(n) => tail_lines(&bytes, n),
            None => bytes,
        })
    }

    async fn usage(&self, id: &str) -> Result<Usage, RuntimeError> {
        let (pid, cgroup) =
            self.lock().get(id).map(|e| (e.record.pid, e.cgroup.clone())).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        // Without a cgroup the CPU rate of a process tree is not at hand.
        let Some(cgroup) = cgroup else { return Ok(Usage { cpu_millis: 0, memory_bytes: rss_bytes(pid).unwrap_or(0) }) };
        let memory_bytes = cgroup.memory_bytes().or_else(|| rss_bytes(pid)).unwrap_or(0);
        Ok(Usage { cpu_millis: cgroup.cpu_millis().await.unwrap_or(0), memory_bytes })
    }

    async fn exec(&self, id: &str, command: &[String]) -> Result<i64, RuntimeError> {
        if !self.lock().contains_key(id) {
            return Err(RuntimeError::NotFound(id.into()));
        }
        let (program, rest) = command.split_first().ok_or_else(|| RuntimeError::Create("empty exec command".into()))?;
        let status = tokio::process::Command::new(program)
            .args(rest)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .map_err(|e| RuntimeError::Create(format!("exec {program:?}: {e}")))?;
        Ok(status.code().map_or(1, i64::from))
    }

    /// Processes share the host's network.
    async fn address(&self, _id: &str) -> Option<String> {
        Some("127.0.0.1".into())
    }

    async fn list(&self, node: &str) -> Result<Vec<OwnedContainer>, RuntimeError> {
        Ok(self
            .lock()
            .values()
            .filter(|e| e.record.node == node)
            .map(|e| OwnedContainer {
                id: e.record.id.clone(),
                pod_uid: e.record.pod_uid.clone(),
                container: e.record.container.clone(),
                running: e.exit.borrow().is_none(),
            })
            .collect())
    }
}

/// Resident memory of a process, from /proc.
pub fn rss_bytes(pid: i32) -> Option<i64> {
    let status = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(command: &[&str]) -> ContainerSpec {
        ContainerSpec {
            pod_uid: "u1".into(),
            pod_name: "p".into(),
            namespace: "default".into(),
            node: "n1".into(),
            name: "c".into(),
            image: "busybox".into(),
            pull_policy: "IfNotPresent".into(),
            command: command.iter().map(|s| s.to_string()).collect(),
            args: vec![],
            env: vec![("GREETING".into(), "hi".into())],
            working_dir: None,
            cpu_millis: None,
            memory_bytes: None,
            run_as: Default::default(),
            mounts: vec![],
        }
    }

    fn run_as(user: Option<u32>, group: Option<u32>, non_root: bool) -> ContainerSpec {
        ContainerSpec { run_as: crate::runtime::RunAs { user, group, non_root }, ..spec(&["id"]) }
    }

    #[test]
    fn identity_follows_run_as_user_and_what_the_agent_may_do() {
        // A root agent switches to what is asked; the group defaults to
        // the user's own id, never root's.
        assert_eq!(identity(&run_as(Some(65534), None, false), 0), Ok(Some(Switch { uid: 65534, gid: 65534 })));
        assert_eq!(identity(&run_as(Some(1000), Some(100), true), 0), Ok(Some(Switch { uid: 1000, gid: 100 })));
        assert_eq!(identity(&run_as(None, Some(100), false), 0), Ok(Some(Switch { uid: 0, gid: 100 })));
        assert_eq!(identity(&run_as(None, None, false), 0), Ok(None));
        // runAsNonRoot: refused where the process would be root.
        assert!(matches!(identity(&run_as(None, None, true), 0), Err(RuntimeError::Config(m)) if m.contains("uid 0")));
        assert!(matches!(identity(&run_as(Some(0), None, true), 1000), Err(RuntimeError::Config(m)) if m.contains("uid 0")));
        // An unprivileged agent runs containers as itself only.
        assert_eq!(identity(&run_as(None, None, true), 1000), Ok(None));
        assert_eq!(identity(&run_as(Some(1000), None, false), 1000), Ok(Some(Switch { uid: 1000, gid: 1000 })));
        assert!(matches!(identity(&run_as(Some(65534), None, false), 1000), Err(RuntimeError::Config(m)) if m.contains("cannot switch")));
    }

    #[tokio::test]
    async fn a_container_runs_as_its_run_as_user_not_as_the_agent() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: switching users needs the test to run as root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path()).unwrap();
        let id = rt
            .start(&ContainerSpec {
                command: vec!["sh".into(), "-c".into(), "echo $(id -u) $(id -g) $(id -G)".into()],
                ..run_as(Some(65534), None, true)
            })
            .await
            .unwrap();
        assert_eq!(rt.wait(&id).await.unwrap().code, 0);
        let start = std::time::Instant::now();
        loop {
            let logs = String::from_utf8(rt.logs(&id, None).await.unwrap()).unwrap();
            if !logs.is_empty() {
                assert_eq!(logs, "65534 65534 65534\n", "uid, gid and every group are the container's, none is root's");
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no output");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let refused = rt.start(&run_as(None, None, true)).await;
        assert!(matches!(refused, Err(RuntimeError::Config(_))), "{refused:?}");
    }

    #[tokio::test]
    async fn runs_captures_output_and_reports_exit_codes() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path()).unwrap();
        let id = rt.start(&spec(&["sh", "-c", "echo $GREETING; echo oops >&2; exit 3"])).await.unwrap();
        let exit = rt.wait(&id).await.unwrap();
        assert_eq!((exit.code, exit.reason.as_str()), (3, "Error"));
        // Output is copied by tasks that may finish just after the exit.
        let start = std::time::Instant::now();
        loop {
            let logs = String::from_utf8(rt.logs(&id, None).await.unwrap()).unwrap();
            if logs.contains("hi\n") && logs.contains("oops\n") {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "logs: {logs:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(rt.list("n1").await.unwrap().len(), 1);
        rt.remove(&id).await.unwrap();
        assert!(rt.list("n1").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn stop_is_graceful_then_forceful() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path()).unwrap();
        // Exits cleanly on SIGTERM.
        let polite = rt.start(&spec(&["sh", "-c", "trap 'exit 0' TERM; echo ready; while true; do sleep 0.1; done"])).await.unwrap();
        // Signal only once the shell has set its trap.
        let start = std::time::Instant::now();
        while !String::from_utf8_lossy(&rt.logs(&polite, None).await.unwrap()).contains("ready") {
            assert!(start.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        rt.stop(&polite, Duration::from_secs(10)).await.unwrap();
        assert_eq!(rt.wait(&polite).await.unwrap().code, 0);
        // Ignores SIGTERM: killed after the grace period.
        let stubborn = rt.start(&spec(&["sh", "-c", "trap '' TERM; echo ready; while true; do sleep 0.1; done"])).await.unwrap();
        let start = std::time::Instant::now();
        while !String::from_utf8_lossy(&rt.logs(&stubborn, None).await.unwrap()).contains("ready") {
            assert!(start.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let t = std::time::Instant::now();
        rt.stop(&stubborn, Duration::from_millis(300)).await.unwrap();
        let exit = rt.wait(&stubborn).await.unwrap();
        assert_eq!(exit.code, 128 + libc::SIGKILL as i64);
        assert!(t.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn a_missing_command_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path()).unwrap();
        let e = rt.start(&spec(&["/no/such/binary"])).await.unwrap_err();
        assert_eq!(e.reason(), "CreateContainerError");
        assert!(e.to_string().contains("not found"), "{e}");
        let e = rt.start(&spec(&[])).await.unwrap_err();
        assert!(e.to_string().contains("has no command"), "{e}");
    }

    /// Each limited container gets a pod uid of its own: cgroups are named
    /// after it, and the tests run side by side.
    fn limited(command: &[&str], cpu_millis: Option<i64>, memory_bytes: Option<i64>) -> ContainerSpec {
        ContainerSpec { cpu_millis, memory_bytes, pod_uid: uuid::Uuid::new_v4().to_string(), ..spec(command) }
    }

    fn cgroup_dirs(rt: &ProcessRuntime, id: &str) -> Vec<PathBuf> {
        rt.lock().get(id).and_then(|e| e.cgroup.as_ref().map(|c| c.dirs())).unwrap_or_default()
    }

    #[tokio::test]
    async fn a_container_over_its_memory_limit_is_oom_killed() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path()).unwrap();
        if rt.cgroups.is_none() {
            eprintln!("SKIPPED: no writable cgroup hierarchy with the memory controller here, so memory limits are not enforced");
            return;
        }
        // The shell keeps 100 MB of `a`s in a variable, far past 32Mi.
        let hog = limited(&["sh", "-c", "x=$(head -c 100000000 /dev/zero | tr '\\0' a); echo survived; sleep 5"], None, Some(32 << 20));
        let id = rt.start(&hog).await.unwrap();
        let dirs = cgroup_dirs(&rt, &id);
        assert!(!dirs.is_empty(), "the container runs in a cgroup of its own");
        let exit = tokio::time::timeout(Duration::from_secs(60), rt.wait(&id)).await.expect("the hog ends").unwrap();
        assert_eq!((exit.code, exit.reason.as_str()), (137, "OOMKilled"), "{exit:?}");
        rt.remove(&id).await.unwrap();
        assert!(dirs.iter().all(|d| !d.exists()), "cgroups left behind: {dirs:?}");
    }

    #[tokio::test]
    async fn limits_are_written_to_the_cgroup_and_usage_is_read_from_it() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path()).unwrap();
        if rt.cgroups.is_none() {
            eprintln!("SKIPPED: no writable cgroup hierarchy here, so limits are not enforced");
            return;
        }
        let id = rt.start(&limited(&["sh", "-c", "while :; do :; done"], Some(100), Some(64 << 20))).await.unwrap();
        let dirs = cgroup_dirs(&rt, &id);
        assert!(!dirs.is_empty(), "the container runs in a cgroup of its own");
        let read = |file: &str| dirs.iter().find_map(|d| std::fs::read_to_string(d.join(file)).ok()).map(|s| s.trim().to_string());
        // Each limit is checked where the host has its controller.
        let v2 = dirs.iter().any(|d| d.join("cgroup.controllers").exists());
        let (cpu_file, cpu_value, memory_file) =
            if v2 { ("cpu.max", "10000 100000", "memory.max") } else { ("cpu.cfs_quota_us", "10000", "memory.limit_in_bytes") };
        if let Some(cpu) = read(cpu_file) {
            assert_eq!(cpu, cpu_value);
        }
        if let Some(memory) = read(memory_file) {
            assert_eq!(memory, (64u64 << 20).to_string());
        }
        // The second look averages over the half second since the first:
        // about 100m, never the full core the loop would take unlimited.
        rt.usage(&id).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let usage = rt.usage(&id).await.unwrap();
        if read(cpu_file).is_some() {
            assert!(usage.cpu_millis <= 300, "{usage:?}");
        }
        assert!(usage.memory_bytes > 0, "{usage:?}");
        rt.stop(&id, Duration::ZERO).await.unwrap();
        assert_eq!(rt.wait(&id).await.unwrap().reason, "Error", "a kill by `stop` is not an OOM kill");
        rt.remove(&id).await.unwrap();
        assert!(dirs.iter().all(|d| !d.exists()), "cgroups left behind: {dirs:?}");
    }

    #[tokio::test]
    async fn a_container_without_limits_gets_no_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        let rt = ProcessRuntime::new(dir.path()).unwrap();
        let id = rt.start(&spec(&["sh", "-c", "exit 0"])).await.unwrap();
        assert!(cgroup_dirs(&rt, &id).is_empty());
        assert_eq!(rt.wait(&id).await.unwrap().code, 0);
        rt.remove(&id).await.unwrap();
    }
}
