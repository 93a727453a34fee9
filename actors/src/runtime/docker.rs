//! The `docker` runtime: containers through the Docker Engine API (bollard)
//! on `/var/run/docker.sock` or `$DOCKER_HOST`. Containers carry labels
//! naming their node, pod and container, so a restarted agent adopts what
//! it owns. Requests and limits become NanoCPUs and Memory; a container
//! killed for memory reports OOMKilled. No registry is reachable here, so a
//! missing image is ErrImagePull unless the policy allows a pull that works.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerCreateBody, ContainerSummaryStateEnum, HostConfig};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, StatsOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;

use super::{tail_lines, ContainerRuntime, ContainerSpec, Exit, OwnedContainer, RuntimeError, Usage};

pub const LABEL_NODE: &str = "io.flotilla.node";
pub const LABEL_POD_UID: &str = "io.flotilla.pod-uid";
pub const LABEL_POD: &str = "io.flotilla.pod";
pub const LABEL_NAMESPACE: &str = "io.flotilla.namespace";
pub const LABEL_CONTAINER: &str = "io.flotilla.container";
/// Deadline of one Docker API call that is not a wait.
const DOCKER_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of logs read at most per request.
const LOGS_MAX_BYTES: usize = 16 * 1024 * 1024;

pub struct DockerRuntime {
    docker: Docker,
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
        Ok(DockerRuntime { docker })
    }

    async fn ensure_image(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let present = timed(self.docker.inspect_image(&spec.image)).await.is_ok();
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

#[async_trait::async_trait]
impl ContainerRuntime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        self.ensure_image(spec).await?;
        let labels = HashMap::from([
            (LABEL_NODE.to_string(), spec.node.clone()),
            (LABEL_POD_UID.to_string(), spec.pod_uid.clone()),
            (LABEL_POD.to_string(), spec.pod_name.clone()),
            (LABEL_NAMESPACE.to_string(), spec.namespace.clone()),
            (LABEL_CONTAINER.to_string(), spec.name.clone()),
        ]);
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            entrypoint: (!spec.command.is_empty()).then(|| spec.command.clone()),
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: spec.working_dir.clone(),
            labels: Some(labels),
            host_config: Some(HostConfig {
                nano_cpus: spec.cpu_millis.map(|m| m * 1_000_000),
                memory: spec.memory_bytes,
                init: Some(true),
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
        let mut stream = self.docker.wait_container(id, None);
        let code = match stream.next().await {
            Some(Ok(r)) => r.status_code,
            Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
            Some(Err(e)) => return Err(unavailable(e)),
            None => return Err(RuntimeError::Unavailable("the wait stream ended without a status".into())),
        };
        let oom =
            timed(self.docker.inspect_container(id, None)).await.ok().and_then(|i| i.state).and_then(|s| s.oom_killed).unwrap_or(false);
        if oom {
            return Ok(Exit { code, reason: "OOMKilled".into(), message: "the container used more memory than its limit".into() });
        }
        Ok(Exit::from_code(code))
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
