//! The `process` runtime: each container is a child process of the agent
//! (its `command` and `args`, its own process group, its env and working
//! directory), with stdout and stderr captured to a size-bounded log file.
//! The image is recorded, not pulled. A record per container in the state
//! directory lets a restarted agent find and adopt processes it started.
//! Memory and CPU limits are not enforced on this runtime.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::{tail_lines, ContainerRuntime, ContainerSpec, Exit, OwnedContainer, RuntimeError, Usage};

/// A container's log file is rotated (one previous file kept) past this.
pub const LOG_FILE_MAX_BYTES: u64 = 8 * 1024 * 1024;
/// How often an adopted (non-child) process is checked for exit.
const ADOPTED_POLL: Duration = Duration::from_millis(200);

#[derive(Serialize, Deserialize, Clone)]
struct Record {
    id: String,
    pid: i32,
    node: String,
    pod_uid: String,
    container: String,
}

struct Entry {
    record: Record,
    exit: watch::Sender<Option<Exit>>,
}

/// Runs containers as local processes.
pub struct ProcessRuntime {
    state_dir: PathBuf,
    next: AtomicU64,
    entries: Arc<Mutex<HashMap<String, Entry>>>,
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

impl ProcessRuntime {
    pub fn new(state_dir: impl Into<PathBuf>) -> Result<Self, RuntimeError> {
        let state_dir = state_dir.into();
        std::fs::create_dir_all(state_dir.join("logs")).map_err(|e| RuntimeError::Unavailable(format!("{}: {e}", state_dir.display())))?;
        std::fs::create_dir_all(state_dir.join("containers"))
            .map_err(|e| RuntimeError::Unavailable(format!("{}: {e}", state_dir.display())))?;
        let runtime = ProcessRuntime { state_dir, next: AtomicU64::new(0), entries: Arc::new(Mutex::new(HashMap::new())) };
        runtime.load_records();
        Ok(runtime)
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
            let (exit, _) = watch::channel(if pid_alive(record.pid) { None } else { Some(Exit::from_code(0)) });
            if exit.borrow().is_none() {
                let tx = exit.clone();
                let pid = record.pid;
                tokio::spawn(async move {
                    while pid_alive(pid) {
                        tokio::time::sleep(ADOPTED_POLL).await;
                    }
                    // The exit code of a process we did not start is unknown.
                    tx.send_replace(Some(Exit { code: 0, reason: "Completed".into(), message: "adopted process exited".into() }));
                });
            }
            self.next.fetch_max(record.id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0) + 1, Ordering::Relaxed);
            self.lock().insert(record.id.clone(), Entry { record, exit });
        }
    }
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
        let id = format!("{}-{}-{}", spec.pod_name, spec.name, self.next.fetch_add(1, Ordering::Relaxed));
        let log_path = self.log_path(&id);
        let file = tokio::fs::File::create(&log_path).await.map_err(|e| RuntimeError::Unavailable(format!("log file: {e}")))?;
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
        let mut child = cmd.spawn().map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => RuntimeError::Create(format!("executable {program:?} not found")),
            std::io::ErrorKind::PermissionDenied => RuntimeError::Create(format!("executable {program:?} is not executable")),
            _ => RuntimeError::Create(format!("{program:?}: {e}")),
        })?;
        let pid = child.id().map(|p| p as i32).ok_or_else(|| RuntimeError::Create("process exited before it could be tracked".into()))?;
        let file = Arc::new(tokio::sync::Mutex::new(file));
        if let Some(out) = child.stdout.take() {
            tokio::spawn(copy_capped(out, log_path.clone(), file.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(copy_capped(err, log_path.clone(), file.clone()));
        }
        let record = Record { id: id.clone(), pid, node: spec.node.clone(), pod_uid: spec.pod_uid.clone(), container: spec.name.clone() };
        if let Ok(text) = serde_json::to_string(&record) {
            let _ = std::fs::write(self.record_path(&id), text);
        }
        let (exit, _) = watch::channel(None);
        let tx = exit.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let exit = match status {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    match (s.code(), s.signal()) {
                        (Some(code), _) => Exit::from_code(code as i64),
                        (None, Some(sig)) => {
                            Exit { code: 128 + sig as i64, reason: "Error".into(), message: format!("killed by signal {sig}") }
                        }
                        _ => Exit::from_code(1),
                    }
                }
                Err(e) => Exit { code: 1, reason: "Error".into(), message: e.to_string() },
            };
            tx.send_replace(Some(exit));
        });
        self.lock().insert(id.clone(), Entry { record, exit });
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
        let (pid, mut rx) = {
            let guard = self.lock();
            let e = guard.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
            (e.record.pid, e.exit.subscribe())
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
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.lock().remove(id);
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
        let pid = self.lock().get(id).map(|e| e.record.pid).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        Ok(Usage { cpu_millis: 0, memory_bytes: rss_bytes(pid).unwrap_or(0) })
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
        }
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
}
