//! Container runtimes behind one trait: `process` (a child process per
//! container, the default where no Docker engine answers) and `sim`
//! (nothing runs; containers live in memory with injectable crashes, for
//! tests and benchmarks of the control plane).

pub mod cgroup;
pub mod docker;
pub mod process;
pub mod sim;

use std::time::Duration;

/// What a runtime needs to run one container of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    pub pod_uid: String,
    pub pod_name: String,
    pub namespace: String,
    pub node: String,
    pub name: String,
    pub image: String,
    pub pull_policy: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<String>,
    pub cpu_millis: Option<i64>,
    pub memory_bytes: Option<i64>,
    /// Who the container runs as (`securityContext`, the container's over
    /// the pod's).
    pub run_as: RunAs,
    /// The pod's volumes this container mounts (runtimes that cannot mount
    /// refuse a container that has any).
    pub mounts: Vec<Mount>,
}

/// A host directory (or file) a container sees at `container_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub host_path: std::path::PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

/// The identity a container asks to run with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunAs {
    pub user: Option<u32>,
    pub group: Option<u32>,
    /// `runAsNonRoot`: refuse to start rather than run as uid 0.
    pub non_root: bool,
}

impl RunAs {
    /// Refuses a container that asked not to run as root but would: `uid`
    /// is the user it would run as (its `runAsUser`, else the image's or
    /// the runtime's own), None where that cannot be known to be numeric.
    pub fn check_non_root(&self, uid: Option<u32>, whose: &str) -> Result<(), RuntimeError> {
        if !self.non_root {
            return Ok(());
        }
        match uid {
            Some(0) => Err(RuntimeError::Config(format!(
                "the container has runAsNonRoot and would run as root ({whose} is uid 0); set securityContext.runAsUser to a non-zero uid"
            ))),
            Some(_) => Ok(()),
            None => Err(RuntimeError::Config(format!(
                "the container has runAsNonRoot and {whose} is not a numeric uid, so it cannot be verified to be non-root; set securityContext.runAsUser"
            ))),
        }
    }
}

/// How a container ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: i64,
    /// Completed, Error, OOMKilled.
    pub reason: String,
    pub message: String,
}

impl Exit {
    pub fn from_code(code: i64) -> Exit {
        Exit { code, reason: if code == 0 { "Completed".into() } else { "Error".into() }, message: String::new() }
    }
}

/// A container the runtime already has, found at start-up (for adoption).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedContainer {
    pub id: String,
    pub pod_uid: String,
    pub container: String,
    pub running: bool,
}

/// Why a runtime call failed; `reason()` is what the pod status shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The image cannot be had (no registry, unknown image).
    #[error("image {image:?} cannot be pulled: {message}")]
    ImagePull { image: String, message: String },
    /// The container could not be created (command not found, bad spec).
    #[error("cannot create container: {0}")]
    Create(String),
    /// The container's own settings forbid starting it (runAsNonRoot on a
    /// root user, a user the runtime cannot switch to).
    #[error("{0}")]
    Config(String),
    /// The runtime itself is not reachable (Docker engine down). Retryable.
    #[error("container runtime unavailable: {0}")]
    Unavailable(String),
    /// No such container.
    #[error("no container {0}")]
    NotFound(String),
}

impl RuntimeError {
    /// The waiting reason Kubernetes shows for this failure.
    pub fn reason(&self) -> &'static str {
        match self {
            RuntimeError::ImagePull { .. } => "ErrImagePull",
            RuntimeError::Create(_) => "CreateContainerError",
            RuntimeError::Config(_) => "CreateContainerConfigError",
            RuntimeError::Unavailable(_) => "RuntimeUnavailable",
            RuntimeError::NotFound(_) => "ContainerMissing",
        }
    }
}

/// The node's pod network, for runtimes that give each pod its own address
/// (docker): the node's pod subnet and the cluster DNS pods resolve with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodNetwork {
    pub node: String,
    /// `spec.podCIDR` of the node, e.g. `10.224.3.0/24`.
    pub subnet: String,
    /// The subnet's first address: the host's side of the bridge.
    pub gateway: String,
    /// Cluster DNS for the pods, once it listens (on the gateway); until
    /// then pods keep the host's resolvers rather than one that is silent.
    pub dns: Option<String>,
    /// The cluster domain (`cluster.local`), for pods' DNS search lists.
    pub cluster_domain: String,
}

/// Resource usage of one container, from the runtime's own figures.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
}

/// A container runtime. Implementations must be cheap to share (`Arc`).
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// `docker`, `process` or `sim`.
    fn kind(&self) -> &'static str;
    /// Pulls if needed, creates and starts; answers the container id.
    async fn start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    /// Waits until the container exits.
    async fn wait(&self, id: &str) -> Result<Exit, RuntimeError>;
    /// Asks the container to stop (SIGTERM), then kills it after `grace`.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Forgets a stopped container and its resources.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// The container's output; the last `tail` lines when given.
    async fn logs(&self, id: &str, tail: Option<usize>) -> Result<Vec<u8>, RuntimeError>;
    /// Current usage.
    async fn usage(&self, id: &str) -> Result<Usage, RuntimeError>;
    /// Containers this runtime holds for `node` (labelled at creation).
    async fn list(&self, node: &str) -> Result<Vec<OwnedContainer>, RuntimeError>;
    /// Runs a command in the container's context (exec probes); answers
    /// its exit code.
    async fn exec(&self, id: &str, command: &[String]) -> Result<i64, RuntimeError>;
    /// The address tcp and http probes dial; None where nothing listens
    /// (sim), which counts as a pass.
    async fn address(&self, id: &str) -> Option<String>;
    /// The pod's own address, where the runtime gives pods one (docker);
    /// None means pods share the node's address (process, sim).
    async fn pod_ip(&self, _id: &str) -> Option<String> {
        None
    }
    /// Whether containers can mount volumes (a file system of their own
    /// to mount them in).
    fn mounts_volumes(&self) -> bool {
        false
    }
    /// Whether pods get addresses of their own (then a pod has none until
    /// its first container runs), rather than the node's.
    fn gives_pods_addresses(&self) -> bool {
        false
    }
    /// From now on pods wait for the node's pod network (set by
    /// `set_pod_network`) instead of starting without one; a no-op for
    /// runtimes whose pods share the node's address.
    fn expect_pod_network(&self) {}
    /// Gives up on the pod network: pods start without it (the runtime's
    /// own default network) rather than wait for ever.
    fn forgo_pod_network(&self) {}
    /// Sets up the node's pod network (idempotent); containers started
    /// after it join it.
    async fn set_pod_network(&self, _network: &PodNetwork) -> Result<(), RuntimeError> {
        Ok(())
    }
}

/// The last `n` lines of `bytes`.
pub fn tail_lines(bytes: &[u8], n: usize) -> Vec<u8> {
    let trimmed = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut count = 0;
    for (i, b) in trimmed.iter().enumerate().rev() {
        if *b == b'\n' {
            count += 1;
            if count == n {
                return bytes[i + 1..].to_vec();
            }
        }
    }
    bytes.to_vec()
}

#[cfg(test)]
mod tests {
    use super::{RunAs, RuntimeError};

    #[test]
    fn non_root_is_checked_on_the_uid_the_container_would_get() {
        let free = RunAs::default();
        assert_eq!(free.check_non_root(Some(0), "the agent"), Ok(()));
        let strict = RunAs { non_root: true, ..RunAs::default() };
        assert_eq!(strict.check_non_root(Some(65534), "runAsUser"), Ok(()));
        assert!(matches!(strict.check_non_root(Some(0), "the agent"), Err(RuntimeError::Config(m)) if m.contains("uid 0")));
        assert!(matches!(strict.check_non_root(None, "the image's user \"app\""), Err(RuntimeError::Config(m)) if m.contains("numeric")));
        assert_eq!(RuntimeError::Config(String::new()).reason(), "CreateContainerConfigError");
    }

    #[test]
    fn tails_lines() {
        assert_eq!(super::tail_lines(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(super::tail_lines(b"a\nb\nc", 1), b"c");
        assert_eq!(super::tail_lines(b"a\n", 5), b"a\n");
    }
}
