//! `flotilla agent`: a node agent in its own process, reaching the control
//! plane over QUIC through any of the given servers: it claims its node's
//! name with the agent token, then speaks as that node only.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use flotilla_actors::agent::node_agent::{NodeAgent, NodeAgentArgs};
use flotilla_actors::agent::pod_state::BackoffPolicy;
use flotilla_actors::agent::remote::RemoteControlPlane;
use flotilla_actors::model::quantity::Quantity;
use flotilla_actors::runtime::docker::DockerRuntime;
use flotilla_actors::runtime::process::ProcessRuntime;
use flotilla_actors::runtime::sim::SimRuntime;
use flotilla_actors::runtime::ContainerRuntime;

use crate::cmd_up::{host_memory_bytes, RuntimeChoice};

#[derive(Args)]
pub struct AgentArgs {
    /// The node's name.
    #[arg(long)]
    name: String,
    /// Server peer addresses, comma-separated; the agent moves to the next
    /// when one goes away.
    #[arg(long, value_delimiter = ',', required = true)]
    server: Vec<String>,
    /// The cluster's agent token, DATA_DIR/agent-token on the first server
    /// (else $FLOTILLA_TOKEN).
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    token: String,
    #[arg(long, value_enum, default_value = "auto")]
    runtime: RuntimeChoice,
    /// CPU capacity to report (cores, e.g. 2 or 500m); default: this machine's.
    #[arg(long)]
    cpu: Option<String>,
    /// Memory capacity to report (e.g. 4Gi); default: this machine's.
    #[arg(long)]
    memory: Option<String>,
    /// Node labels, k=v,...
    #[arg(long, value_delimiter = ',')]
    labels: Vec<String>,
    /// Where the agent keeps its node credential, and the process runtime
    /// its logs and records.
    #[arg(long, default_value = "./flotilla-agent")]
    state_dir: PathBuf,
    /// Cut off from every server for this long, the agent stops its own
    /// containers (they have been replaced elsewhere by then).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(500..=86_400_000))]
    fence_ms: u64,
    /// The address pods are reported at, and servers reach this agent at.
    #[arg(long, default_value = "127.0.0.1")]
    node_ip: String,
    /// Where this agent serves container logs and usage to the servers
    /// (the kubelet's port); port 0 picks a free one.
    #[arg(long, default_value = "0.0.0.0:10250")]
    kubelet_listen: String,
    #[command(flatten)]
    network: crate::node_network::NetworkFlags,
}

pub async fn run(args: AgentArgs) -> Result<i32, String> {
    let cpu_millis = match &args.cpu {
        Some(c) => Quantity::parse(c).map_err(|e| format!("--cpu: {e}"))?.millis(),
        None => std::thread::available_parallelism().map_or(1, |n| n.get() as i64) * 1000,
    };
    let memory_bytes = match &args.memory {
        Some(m) => Quantity::parse(m).map_err(|e| format!("--memory: {e}"))?.value(),
        None => host_memory_bytes(),
    };
    let mut labels = BTreeMap::new();
    for l in args.labels.iter().filter(|l| !l.is_empty()) {
        let (k, v) = l.split_once('=').ok_or_else(|| format!("--labels: {l:?} must be key=value"))?;
        labels.insert(k.to_string(), v.to_string());
    }
    let runtime: Arc<dyn ContainerRuntime> = match args.runtime {
        RuntimeChoice::Sim => Arc::new(SimRuntime::new(Duration::from_millis(10))),
        RuntimeChoice::Docker => Arc::new(DockerRuntime::connect().await.map_err(|e| format!("--runtime docker: {e}"))?),
        RuntimeChoice::Process => Arc::new(ProcessRuntime::new(&args.state_dir).map_err(|e| e.to_string())?),
        RuntimeChoice::Auto => match DockerRuntime::connect().await {
            Ok(d) => Arc::new(d),
            Err(_) => Arc::new(ProcessRuntime::new(&args.state_dir).map_err(|e| e.to_string())?),
        },
    };
    if args.node_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(format!("--node-ip {:?} must be an IP address", args.node_ip));
    }
    // The token buys this agent its node's name, once; from then on it is
    // that node, with the credential kept in --state-dir.
    let remote = RemoteControlPlane::join(args.server.clone(), &args.token, &args.name, &args.state_dir)
        .await
        .map_err(|e| format!("joining as node {}: {e}", args.name))?;
    let certificate =
        remote.certificate(vec![args.node_ip.clone()]).await.map_err(|e| format!("the certificate of node {}: {e}", args.name))?;
    let (kubelet_port, kubelet) = crate::kubelet_api::serve(&args.kubelet_listen, runtime.clone(), &certificate).await?;
    let control: Arc<dyn flotilla_actors::agent::control_plane::ControlPlane> = Arc::new(remote);
    let network = crate::node_network::start(&args.name, control.clone(), runtime.clone(), &args.network).await?;
    let agent_args = NodeAgentArgs {
        name: args.name.clone(),
        node_ip: args.node_ip.clone(),
        labels,
        cpu_millis,
        memory_bytes,
        heartbeat: Duration::from_millis(200),
        status_period: Duration::from_secs(10),
        control,
        runtime: runtime.clone(),
        backoff: BackoffPolicy::default(),
        fence: Duration::from_millis(args.fence_ms),
        pods_max: flotilla_actors::agent::node_agent::PODS_MAX_DEFAULT,
        kubelet_port: Some(kubelet_port),
        volumes_dir: args.state_dir.join("pod-volumes"),
    };
    let (agent, mut handle) =
        ractor::Actor::spawn(None, NodeAgent, agent_args).await.map_err(|e| format!("the agent could not register its node: {e}"))?;
    println!(
        "flotilla agent: node {} ({} runtime) serving through {}; logs and usage on port {kubelet_port}",
        args.name,
        runtime.kind(),
        args.server.join(", ")
    );
    tokio::select! {
        _ = crate::cmd_server::wait_for_signal() => {
            agent.stop(None);
            let _ = handle.await;
            network.stop().await;
            kubelet.abort();
            Ok(0)
        }
        _ = &mut handle => {
            // Only `flotilla chaos kill-node` stops the agent on its own.
            eprintln!("flotilla agent: node {} killed by chaos", args.name);
            Ok(137)
        }
    }
}
