//! `flotilla up`: everything in one process, a single-member server (store
//! and API) and one local node agent, for a first try on one machine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use flotilla_actors::agent::control_plane::{Heartbeats, LocalControlPlane};
use flotilla_actors::agent::node_agent::{NodeAgent, NodeAgentArgs};
use flotilla_actors::agent::pod_state::BackoffPolicy;
use flotilla_actors::runtime::docker::DockerRuntime;
use flotilla_actors::runtime::process::ProcessRuntime;
use flotilla_actors::runtime::sim::SimRuntime;
use flotilla_actors::runtime::ContainerRuntime;
use flotilla_actors::Registry;
use flotilla_raft::{Member, StartMode, StoreConfig};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RuntimeChoice {
    Auto,
    Docker,
    Process,
    Sim,
}

#[derive(Args)]
pub struct UpArgs {
    #[arg(long, default_value = "./flotilla-data")]
    data_dir: PathBuf,
    #[command(flatten)]
    api: crate::api::listen::ApiFlags,
    #[arg(long, default_value = "127.0.0.1:7400")]
    peer: String,
    #[arg(long, value_enum, default_value = "auto")]
    runtime: RuntimeChoice,
    /// Name of the local node (default: this machine's host name).
    #[arg(long)]
    node_name: Option<String>,
    #[command(flatten)]
    network: crate::node_network::NetworkFlags,
    #[command(flatten)]
    plan: crate::node_network::PlanFlags,
}

/// This machine's host name, made a valid node name.
pub fn host_node_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "local".into());
    let name: String =
        raw.trim().to_ascii_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '-' }).collect();
    let name = name.trim_matches(|c| c == '-' || c == '.').to_string();
    if name.is_empty() {
        "local".into()
    } else {
        name
    }
}

/// Total memory of this machine, from /proc/meminfo.
pub fn host_memory_bytes() -> i64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<i64>().ok())
        })
        .map_or(4 << 30, |kb| kb * 1024)
}

pub async fn run(args: UpArgs) -> Result<i32, String> {
    let mut listeners = args.api.bind().await?;
    let start = if args.data_dir.join("member.json").exists() { StartMode::Restart } else { StartMode::Bootstrap };
    let member = Member::start(StoreConfig::new(1, &args.data_dir, &args.peer, start)).await.map_err(|e| e.to_string())?;
    // The agent's state lives beside the store, once the store exists.
    let (runtime, note): (Arc<dyn ContainerRuntime>, &str) = match args.runtime {
        RuntimeChoice::Sim => (Arc::new(SimRuntime::new(Duration::from_millis(10))), ""),
        RuntimeChoice::Docker => match DockerRuntime::connect().await {
            Ok(d) => (Arc::new(d), ""),
            Err(e) => {
                member.shutdown().await;
                return Err(format!("--runtime docker: {e}; is the Docker engine running (or DOCKER_HOST set)?"));
            }
        },
        RuntimeChoice::Auto => match DockerRuntime::connect().await {
            Ok(d) => (Arc::new(d), " (auto: the Docker engine answered)"),
            Err(_) => (
                Arc::new(ProcessRuntime::new(args.data_dir.join("agent")).map_err(|e| e.to_string())?),
                " (auto: no Docker engine answered)",
            ),
        },
        RuntimeChoice::Process => (Arc::new(ProcessRuntime::new(args.data_dir.join("agent")).map_err(|e| e.to_string())?), ""),
    };
    let registry = Registry::new(member.clone()).with_network_plan(args.plan.plan()?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let done = match registry.ensure_builtin_objects().await {
            Ok(()) => registry.ensure_api_service(member.id(), listeners.https_addr).await,
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() > deadline => return Err(format!("the store did not become writable: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    if let Some(vip) = registry.api_service_ip() {
        listeners.add_san(vip.to_string());
    }
    let heartbeats = Heartbeats::default();
    let (leader, _) = crate::wiring::start_leader_supervisor(registry.clone(), heartbeats.clone(), Default::default()).await?;
    let node_name = args.node_name.clone().unwrap_or_else(host_node_name);
    let rbac = crate::api::rbac_cache::RbacCache::start(registry.clone());
    let state = crate::api::ApiState {
        registry: registry.clone(),
        http_addr: listeners.https_addr.to_string(),
        agents: Default::default(),
        kubelet: None,
        authn: listeners.authn.clone(),
        rbac: rbac.view.clone(),
    };
    state.agents.register(&node_name, runtime.clone());
    let api = listeners.start(member.ca(), &args.data_dir, crate::api::router(state))?;
    let control: Arc<dyn flotilla_actors::agent::control_plane::ControlPlane> =
        Arc::new(LocalControlPlane::new(registry.clone(), heartbeats));
    let network = crate::node_network::start(&node_name, control.clone(), runtime.clone(), &args.network).await?;
    let agent_args = NodeAgentArgs {
        name: node_name.clone(),
        node_ip: "127.0.0.1".into(),
        labels: BTreeMap::new(),
        cpu_millis: std::thread::available_parallelism().map_or(1, |n| n.get() as i64) * 1000,
        memory_bytes: host_memory_bytes(),
        heartbeat: Duration::from_millis(200),
        status_period: Duration::from_secs(10),
        control: control.clone(),
        runtime: runtime.clone(),
        backoff: BackoffPolicy::default(),
        fence: flotilla_actors::agent::node_agent::FENCE_DEFAULT,
        pods_max: flotilla_actors::agent::node_agent::PODS_MAX_DEFAULT,
        kubelet_port: None,
        volumes_dir: args.data_dir.join("pod-volumes"),
    };
    let (agent, _) = ractor::Actor::spawn(None, NodeAgent, agent_args).await.map_err(|e| format!("the node agent did not start: {e}"))?;
    println!("flotilla is up: API on {}, node {node_name:?} with the {} runtime{note}", api.url, runtime.kind());
    println!("credentials: {} (system:masters; flotilla's commands find it here, kubectl takes --kubeconfig)", api.kubeconfig.display());
    if let Some(url) = &api.insecure_url {
        println!("also plain HTTP on {url} (loopback; bearer tokens only)");
    }
    match network.dns_addr() {
        Some(dns) => println!(
            "services: {:?} proxy; cluster DNS on {dns} (try: nslookup -port={} NAME.default.svc.cluster.local {})",
            network.mode,
            dns.port(),
            dns.ip()
        ),
        None => println!("services: {:?} proxy; cluster DNS off", network.mode),
    }
    println!("data in {}; stop with Ctrl-C", args.data_dir.display());
    println!("next: flotilla apply -f examples/hello-pod.yaml && flotilla get pods -w");
    crate::cmd_server::wait_for_signal().await;
    eprintln!("flotilla: shutting down (containers keep running and are adopted on the next start)");
    agent.stop(None);
    network.stop().await;
    leader.stop(None);
    drop(api);
    member.shutdown().await;
    Ok(0)
}
