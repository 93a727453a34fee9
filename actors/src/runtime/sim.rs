//! The `sim` runtime: containers "run" in memory. Start latency is
//! configurable and crashes can be injected, so one process can hold
//! thousands of nodes and pods for tests and benchmarks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::{ContainerRuntime, ContainerSpec, Exit, OwnedContainer, RuntimeError, Usage};

struct SimContainer {
    spec: ContainerSpec,
    exit: watch::Sender<Option<Exit>>,
}

/// In-memory runtime.
pub struct SimRuntime {
    start_latency: Duration,
    next_id: AtomicU64,
    containers: Mutex<HashMap<String, SimContainer>>,
}

impl SimRuntime {
    pub fn new(start_latency: Duration) -> Self {
        SimRuntime { start_latency, next_id: AtomicU64::new(1), containers: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SimContainer>> {
        self.containers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a running container exit with `code`, as if it crashed.
    /// Answers whether a running container matched.
    pub fn crash(&self, pod_name: &str, container: &str, code: i64) -> bool {
        let guard = self.lock();
        for c in guard.values() {
            if c.spec.pod_name == pod_name && c.spec.name == container && c.exit.borrow().is_none() {
                c.exit.send_replace(Some(Exit::from_code(code)));
                return true;
            }
        }
        false
    }

    /// How many containers are running now.
    pub fn running(&self) -> usize {
        self.lock().values().filter(|c| c.exit.borrow().is_none()).count()
    }

    /// Stops every container at once, as if the machine died.
    pub fn kill_all(&self) {
        for c in self.lock().values() {
            if c.exit.borrow().is_none() {
                c.exit.send_replace(Some(Exit { code: 137, reason: "Error".into(), message: "killed".into() }));
            }
        }
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for SimRuntime {
    fn kind(&self) -> &'static str {
        "sim"
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        if spec.image.is_empty() || spec.image.contains("doesnotexist") {
            return Err(RuntimeError::ImagePull { image: spec.image.clone(), message: "not found in the simulated registry".into() });
        }
        if !self.start_latency.is_zero() {
            tokio::time::sleep(self.start_latency).await;
        }
        let id = format!("sim-{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let (exit, _) = watch::channel(None);
        self.lock().insert(id.clone(), SimContainer { spec: spec.clone(), exit });
        Ok(id)
    }

    async fn wait(&self, id: &str) -> Result<Exit, RuntimeError> {
        let mut rx = self.lock().get(id).map(|c| c.exit.subscribe()).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        loop {
            if let Some(exit) = rx.borrow_and_update().clone() {
                return Ok(exit);
            }
            if rx.changed().await.is_err() {
                return Err(RuntimeError::NotFound(id.into()));
            }
        }
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        let guard = self.lock();
        let c = guard.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        if c.exit.borrow().is_none() {
            c.exit.send_replace(Some(Exit { code: 0, reason: "Completed".into(), message: "stopped".into() }));
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        self.lock().remove(id);
        Ok(())
    }

    async fn logs(&self, id: &str, _tail: Option<usize>) -> Result<Vec<u8>, RuntimeError> {
        let guard = self.lock();
        let c = guard.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        Ok(format!("simulated container {} of pod {}\n", c.spec.name, c.spec.pod_name).into_bytes())
    }

    async fn usage(&self, id: &str) -> Result<Usage, RuntimeError> {
        let guard = self.lock();
        let c = guard.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        Ok(Usage { cpu_millis: c.spec.cpu_millis.unwrap_or(0) / 2, memory_bytes: c.spec.memory_bytes.unwrap_or(0) / 2 })
    }

    async fn exec(&self, id: &str, command: &[String]) -> Result<i64, RuntimeError> {
        let guard = self.lock();
        let c = guard.get(id).ok_or_else(|| RuntimeError::NotFound(id.into()))?;
        // A simulated probe fails only when it names a file the test marked bad.
        Ok(if command.iter().any(|a| a.contains("fail")) || c.exit.borrow().is_some() { 1 } else { 0 })
    }

    async fn address(&self, _id: &str) -> Option<String> {
        None
    }

    async fn list(&self, node: &str) -> Result<Vec<OwnedContainer>, RuntimeError> {
        Ok(self
            .lock()
            .iter()
            .filter(|(_, c)| c.spec.node == node)
            .map(|(id, c)| OwnedContainer {
                id: id.clone(),
                pod_uid: c.spec.pod_uid.clone(),
                container: c.spec.name.clone(),
                running: c.exit.borrow().is_none(),
            })
            .collect())
    }
}
