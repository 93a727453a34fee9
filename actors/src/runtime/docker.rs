//! The `docker` runtime: containers through the Docker Engine API (bollard)
//! on `/var/run/docker.sock` or `$DOCKER_HOST`. Containers carry labels
//! naming their node, pod and container, so a restarted agent adopts what
//! it owns. Requests and limits become NanoCPUs and Memory; a container
//! killed for memory reports OOMKilled. No registry is reachable here, so a
//! missing image is ErrImagePull unless the policy allows a pull that works.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, Ipam, IpamConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;

use super::{tail_lines, ContainerRuntime, ContainerSpec, Exit, OwnedContainer, PodNetwork, RuntimeError, Usage};

pub const LABEL_NODE: &str = "io.flotilla.node";
pub const LABEL_POD_UID: &str = "io.flotilla.pod-uid";
pub const LABEL_POD: &str = "io.flotilla.pod";
pub const LABEL_NAMESPACE: &str = "io.flotilla.namespace";
pub const LABEL_CONTAINER: &str = "io.flotilla.container";
/// Deadline of one Docker API call that is not a wait.
const DOCKER_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Back-off while the Docker engine does not answer, first and last.
const ENGINE_RETRY_FIRST: Duration = Duration::from_millis(200);
const ENGINE_RETRY_MAX: Duration = Duration::from_secs(5);
/// Bytes of logs read at most per request.
const LOGS_MAX_BYTES: usize = 16 * 1024 * 1024;

pub struct DockerRuntime {
    docker: Docker,
    /// The node's pod network once it is set up: (network name, config).
    network: std::sync::RwLock<Option<(String, PodNetwork)>>,
    /// Set when the agent manages a pod network: pods wait for it rather
    /// than start on Docker's default bridge.
    wants_network: std::sync::atomic::AtomicBool,
}

/// Docker's network for a node's pods.
pub fn network_name(node: &str) -> String {
    format!("flotilla-{node}")
}

/// The bridge's interface name: Linux allows 15 characters, node names
/// are longer, so it is a hash of the name.
fn bridge_name(node: &str) -> String {
    let h = node.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3));
    format!("flt{:08x}", h as u32)
}

fn unavailable(e: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Unavailable(e.to_string())
}

async fn timed<T>(f: impl std::future::Future<Output = Result<T, bollard::errors::Error>>) -> Result<T, RuntimeError> {
    match tokio::time::timeout(DOCKER_CALL_TIMEOUT, f).await {
        Err(_) => Err(RuntimeError::Unavailable(format!("the Docker engine did not answer within {DOCKER_CALL_TIMEOUT:?}"))),
        Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, message })) => Err(RuntimeError::NotFound(message)),
        Ok(Err(e)) => Err(unavailable(e)),
        Ok(Ok(v)) => Ok(v),
    }
}

impl DockerRuntime {
    /// Connects and negotiates the API version; fails if no engine answers.
    pub async fn connect() -> Result<DockerRuntime, RuntimeError> {
        let docker = Docker::connect_with_defaults().map_err(unavailable)?;
        let docker = tokio::time::timeout(Duration::from_secs(3), docker.negotiate_version())
            .await
            .map_err(|_| RuntimeError::Unavailable("the Docker engine did not answer within 3 s".into()))?
            .map_err(unavailable)?;
        timed(docker.ping()).await?;
        Ok(DockerRuntime { docker, network: Default::default(), wants_network: Default::default() })
    }

    async fn create_network(&self, name: &str, net: &PodNetwork) -> Result<(), RuntimeError> {
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(net.subnet.clone()),
                    gateway: Some(net.gateway.clone()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            options: Some(HashMap::from([("com.docker.network.bridge.name".to_string(), bridge_name(&net.node))])),
            labels: Some(HashMap::from([(LABEL_NODE.to_string(), net.node.clone())])),
            ..Default::default()
        };
        if timed(self.docker.create_network(request.clone())).await.is_ok() {
            return Ok(());
        }
        // A network of an earlier flotilla node that holds the subnet and
        // no containers is left over (its agent was killed): reclaim it.
        self.remove_stale_networks(&net.subnet, name).await;
        timed(self.docker.create_network(request)).await.map(|_| ()).map_err(|e| {
            RuntimeError::Unavailable(format!(
                "cannot create network {name} with subnet {}: {e}; is the subnet used by another network?",
                net.subnet
            ))
        })
    }

    async fn remove_stale_networks(&self, subnet: &str, keep: &str) {
        let filters = HashMap::from([("label", vec![LABEL_NODE.to_string()])]);
        let options = bollard::query_parameters::ListNetworksOptionsBuilder::new().filters(&filters).build();
        let Ok(networks) = timed(self.docker.list_networks(Some(options))).await else { return };
        for n in networks {
            let Some(name) = n.name.clone() else { continue };
            let holds =
                n.ipam.as_ref().and_then(|p| p.config.as_ref()).is_some_and(|c| c.iter().any(|c| c.subnet.as_deref() == Some(subnet)));
            if name == keep || !holds {
                continue;
            }
            let Ok(detail) = timed(self.docker.inspect_network(&name, None)).await else { continue };
            if detail.containers.as_ref().is_none_or(|c| c.is_empty()) {
                tracing::info!(network = %name, subnet, "removing a left-over flotilla network that holds this node's subnet");
                let _ = timed(self.docker.remove_network(&name)).await;
            }
        }
    }

    /// How a container that exited with `code` ended (OOMKilled or not).
    async fn exit_of(&self, id: &str, code: i64) -> Exit {
        let oom =
            timed(self.docker.inspect_container(id, None)).await.ok().and_then(|i| i.state).and_then(|s| s.oom_killed).unwrap_or(false);
        if oom {
            return Exit { code, reason: "OOMKilled".into(), message: "the container used more memory than its limit".into() };
        }
        Exit::from_code(code)
    }

    /// Docker's `User` for the container: `runAsUser[:runAsGroup]`, or the
    /// image's own user (None) once runAsNonRoot has been checked on it.
    async fn user_for(&self, spec: &ContainerSpec) -> Result<Option<String>, RuntimeError> {
        let run_as = &spec.run_as;
        if let Some(uid) = run_as.user {
            run_as.check_non_root(Some(uid), "its runAsUser")?;
            return Ok(Some(match run_as.group {
                Some(gid) => format!("{uid}:{gid}"),
                None => uid.to_string(),
            }));
        }
        if !run_as.non_root && run_as.group.is_none() {
            return Ok(None);
        }
        let image = timed(self.docker.inspect_image(&spec.image)).await?;
        let user = image.config.and_then(|c| c.user).unwrap_or_default();
        run_as.check_non_root(image_uid(&user), &format!("the image's user {user:?}"))?;
        // A group alone: the image's user with that group, as Kubernetes.
        Ok(run_as.group.map(|gid| {
            let name = user.split(':').next().filter(|n| !n.is_empty()).unwrap_or("0");
            format!("{name}:{gid}")
        }))
    }

    async fn ensure_image(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let present = match timed(self.docker.inspect_image(&spec.image)).await {
            Ok(_) => true,
            Err(RuntimeError::NotFound(_)) => false,
            // The engine is away: say so, rather than "image missing".
            Err(e) => return Err(e),
        };
        let must_pull = spec.pull_policy == "Always" && !spec.image.starts_with("flotilla/");
        if present && !must_pull {
            return Ok(());
        }
        if spec.pull_policy == "Never" {
            return Err(RuntimeError::ImagePull {
                image: spec.image.clone(),
                message: "image is not present and imagePullPolicy is Never".into(),
            });
        }
        let options = CreateImageOptionsBuilder::new().from_image(&spec.image).build();
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(step) = pull.next().await {
            if let Err(e) = step {
                if present {
                    // The pull failed but a local copy exists: use it.
                    return Ok(());
                }
                return Err(RuntimeError::ImagePull { image: spec.image.clone(), message: e.to_string() });
            }
        }
        Ok(())
    }
}

/// The uid an image's `User` names: empty is root; `NAME` or `NAME:GROUP`
/// cannot be known without the image's passwd file (None), as Kubernetes
/// treats it.
fn image_uid(user: &str) -> Option<u32> {
    let name = user.split(':').next().unwrap_or("");
    match name {
        "" | "root" => Some(0),
        n => n.parse().ok(),
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.ensure_image(spec).await?;
        let user = self.user_for(spec).await?;
        let labels = HashMap::from([
            (LABEL_NODE.to_string(), spec.node.clone()),
            (LABEL_POD_UID.to_string(), spec.pod_uid.clone()),
            (LABEL_POD.to_string(), spec.pod_name.clone()),
            (LABEL_NAMESPACE.to_string(), spec.namespace.clone()),
            (LABEL_CONTAINER.to_string(), spec.name.clone()),
        ]);
        let network = self.network.read().unwrap_or_else(|p| p.into_inner()).clone();
        if network.is_none() && self.wants_network.load(std::sync::atomic::Ordering::Acquire) {
            return Err(RuntimeError::Unavailable("the node has no pod subnet yet (the leader assigns one); retrying".into()));
        }
        let network_mode = network.as_ref().map(|(name, _)| name.clone());
        let (dns, dns_search) = match network.as_ref().and_then(|(_, net)| net.dns.as_ref().map(|d| (d, net))) {
            Some((dns, net)) => (
                Some(vec![dns.clone()]),
                Some(vec![
                    format!("{}.svc.{}", spec.namespace, net.cluster_domain),
                    format!("svc.{}", net.cluster_domain),
                    net.cluster_domain.clone(),
                ]),
            ),
            None => (None, None),
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: spec.working_dir.clone(),
            user,
            labels: Some(labels),
            host_config: Some(HostConfig {
                nano_cpus: spec.cpu_millis.map(|m| m * 1_000_000),
                memory: spec.memory_bytes,
                init: Some(true),
                dns_options: dns.as_ref().map(|_| vec!["ndots:5".to_string()]),
                network_mode,
                binds: (!spec.mounts.is_empty()).then(|| {
                    spec.mounts
                        .iter()
                        .map(|m| format!("{}:{}:{}", m.host_path.display(), m.container_path, if m.read_only { "ro" } else { "rw" }))
                        .collect()
                }),
                dns,
                dns_search,
                ..Default::default()
            }),
            ..Default::default()
        };
        let name = format!("flotilla_{}_{}_{}_{:08x}", spec.namespace, spec.pod_name, spec.name, rand::random::<u32>());
        let options = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = timed(self.docker.create_container(Some(options), body)).await.map_err(|e| match e {
            RuntimeError::NotFound(m) => RuntimeError::ImagePull { image: spec.image.clone(), message: m },
            RuntimeError::Unavailable(m) if m.contains("No such image") => {
                RuntimeError::ImagePull { image: spec.image.clone(), message: m }
            }
            other => RuntimeError::Create(other.to_string()),
        })?;
        if let Err(e) = timed(self.docker.start_container(&created.id, None)).await {
            let _ = self.remove(&created.id).await;
            return Err(RuntimeError::Create(e.to_string()));
        }
        Ok(created.id)
    }

    async fn wait(&self, id: &str) -> Result<Exit, RuntimeError> {
        let mut delay = ENGINE_RETRY_FIRST;
        loop {
            let mut stream = self.docker.wait_container(id, None);
            let code = match stream.next().await {
                Some(Ok(r)) => Some(r.status_code),
                Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => Some(code),
                Some(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, message })) => {
                    return Err(RuntimeError::NotFound(message))
                }
                Some(Err(e)) => {
                    tracing::debug!(container = id, error = %e, "lost the wait on a container; waiting for the engine");
                    None
                }
                None => None,
            };
            if let Some(code) = code {
                return Ok(self.exit_of(id, code).await);
            }
            // The engine went away (restarted, say): the container may well
            // still run. Once the engine answers, wait again if it does, or
            // report how it ended if it does not; never count the outage
            // as a crash.
            loop {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(ENGINE_RETRY_MAX);
                match timed(self.docker.inspect_container(id, None)).await {
                    Ok(info) => {
                        let state = info.state.unwrap_or_default();
                        if state.running == Some(true) {
                            break;
                        }
                        return Ok(self.exit_of(id, state.exit_code.unwrap_or(0)).await);
                    }
                    Err(RuntimeError::NotFound(m)) => return Err(RuntimeError::NotFound(m)),
                    Err(_) => continue,
                }
            }
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let options = StopContainerOptionsBuilder::new().t(grace.as_secs().min(i32::MAX as u64) as i32).build();
        match tokio::time::timeout(grace + DOCKER_CALL_TIMEOUT, self.docker.stop_container(id, Some(options))).await {
            Err(_) => Err(RuntimeError::Unavailable("the Docker engine did not stop the container in time".into())),
            Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code: 304, .. })) => Ok(()),
            Ok(Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, message })) => {
                Err(RuntimeError::NotFound(message))
            }
            Ok(Err(e)) => Err(unavailable(e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::new().force(true).build();
        match timed(self.docker.remove_container(id, Some(options))).await {
            Ok(()) | Err(RuntimeError::NotFound(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn logs(&self, id: &str, tail: Option<usize>) -> Result<Vec<u8>, RuntimeError> {
        let tail_text = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let options = LogsOptionsBuilder::new().stdout(true).stderr(true).tail(&tail_text).build();
        let mut stream = self.docker.logs(id, Some(options));
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(c) => out.extend_from_slice(&c.into_bytes()),
                Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, message }) => {
                    return Err(RuntimeError::NotFound(message))
                }
                Err(e) => return Err(unavailable(e)),
            }
            if out.len() > LOGS_MAX_BYTES {
                break;
            }
        }
        Ok(match tail {
            Some(n) => tail_lines(&out, n),
            None => out,
        })
    }

    async fn usage(&self, id: &str) -> Result<Usage, RuntimeError> {
        let options = StatsOptionsBuilder::new().stream(false).one_shot(false).build();
        let mut stream = self.docker.stats(id, Some(options));
        let stats = match tokio::time::timeout(DOCKER_CALL_TIMEOUT, stream.next()).await {
            Ok(Some(Ok(s))) => s,
            Ok(Some(Err(e))) => return Err(unavailable(e)),
            _ => return Err(RuntimeError::Unavailable("no stats".into())),
        };
        let memory = stats.memory_stats.as_ref().and_then(|m| m.usage).unwrap_or(0) as i64;
        let cpu = (|| {
            let now = stats.cpu_stats.as_ref()?;
            let before = stats.precpu_stats.as_ref()?;
            let used = now.cpu_usage.as_ref()?.total_usage? as f64 - before.cpu_usage.as_ref()?.total_usage? as f64;
            let system = now.system_cpu_usage? as f64 - before.system_cpu_usage? as f64;
            let cpus = now.online_cpus.unwrap_or(1) as f64;
            (system > 0.0).then(|| (used / system * cpus * 1000.0) as i64)
        })()
        .unwrap_or(0);
        Ok(Usage { cpu_millis: cpu.max(0), memory_bytes: memory })
    }

    async fn exec(&self, id: &str, command: &[String]) -> Result<i64, RuntimeError> {
        let options = bollard::exec::CreateExecOptions {
            cmd: Some(command.to_vec()),
            attach_stdout: Some(false),
            attach_stderr: Some(false),
            ..Default::default()
        };
        let created = timed(self.docker.create_exec(id, options)).await?;
        timed(self.docker.start_exec(&created.id, Some(bollard::exec::StartExecOptions { detach: true, ..Default::default() }))).await?;
        loop {
            let state = timed(self.docker.inspect_exec(&created.id)).await?;
            if state.running != Some(true) {
                return Ok(state.exit_code.unwrap_or(1));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn address(&self, id: &str) -> Option<String> {
        let info = timed(self.docker.inspect_container(id, None)).await.ok()?;
        info.network_settings?.networks?.values().find_map(|n| n.ip_address.clone().filter(|ip| !ip.is_empty()))
    }

    async fn pod_ip(&self, id: &str) -> Option<String> {
        self.address(id).await
    }

    fn mounts_volumes(&self) -> bool {
        true
    }

    fn gives_pods_addresses(&self) -> bool {
        true
    }

    fn expect_pod_network(&self) {
        self.wants_network.store(true, std::sync::atomic::Ordering::Release);
    }

    fn forgo_pod_network(&self) {
        self.wants_network.store(false, std::sync::atomic::Ordering::Release);
    }

    async fn set_pod_network(&self, net: &PodNetwork) -> Result<(), RuntimeError> {
        let name = network_name(&net.node);
        if self.network.read().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|(_, n)| n == net) {
            return Ok(());
        }
        let subnet_of = |i: &bollard::models::NetworkInspect| {
            i.ipam.as_ref().and_then(|p| p.config.as_ref()).and_then(|c| c.first()).and_then(|c| c.subnet.clone())
        };
        match timed(self.docker.inspect_network(&name, None)).await {
            Ok(existing) if subnet_of(&existing).as_deref() == Some(net.subnet.as_str()) => {}
            Ok(existing) => {
                // The node was given another subnet (a new cluster, say):
                // the old network must go, which Docker allows only once
                // no container uses it.
                timed(self.docker.remove_network(&name)).await.map_err(|e| {
                    RuntimeError::Unavailable(format!(
                        "network {name} has subnet {:?}, the node now has {}; remove its containers so it can be replaced: {e}",
                        subnet_of(&existing),
                        net.subnet
                    ))
                })?;
                self.create_network(&name, net).await?;
            }
            Err(RuntimeError::NotFound(_)) => self.create_network(&name, net).await?,
            Err(e) => return Err(e),
        }
        *self.network.write().unwrap_or_else(|p| p.into_inner()) = Some((name, net.clone()));
        Ok(())
    }

    async fn list(&self, node: &str) -> Result<Vec<OwnedContainer>, RuntimeError> {
        let filters = HashMap::from([("label", vec![format!("{LABEL_NODE}={node}")])]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let list = timed(self.docker.list_containers(Some(options))).await?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                Some(OwnedContainer {
                    id: c.id?,
                    pod_uid: labels.get(LABEL_POD_UID)?.clone(),
                    container: labels.get(LABEL_CONTAINER)?.clone(),
                    running: c.state == Some(ContainerSummaryStateEnum::RUNNING),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_users_count_as_root_unless_a_non_zero_uid() {
        assert_eq!(super::image_uid(""), Some(0));
        assert_eq!(super::image_uid("root"), Some(0));
        assert_eq!(super::image_uid("0:0"), Some(0));
        assert_eq!(super::image_uid("65534"), Some(65534));
        assert_eq!(super::image_uid("1000:1000"), Some(1000));
        assert_eq!(super::image_uid("app"), None);
    }
}
