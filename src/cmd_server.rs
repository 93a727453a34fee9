//! `flotilla server`: runs one control-plane member until SIGINT/SIGTERM.

use std::path::PathBuf;

use clap::Args;
use flotilla_raft::{Member, StartMode, StoreConfig};

#[derive(Args)]
pub struct ServerArgs {
    /// This member's id in the cluster (a positive number, unique per member).
    #[arg(long)]
    id: u64,
    /// Where the member keeps its database, certificates and join token.
    #[arg(long, default_value = "./flotilla-data")]
    data_dir: PathBuf,
    /// Address of the peer (QUIC) port, to listen on and to advertise.
    #[arg(long, default_value = "127.0.0.1:7400")]
    peer: String,
    #[command(flatten)]
    api: crate::api::listen::ApiFlags,
    /// Create a new cluster with this member as its first voter.
    #[arg(long, conflicts_with = "join")]
    bootstrap: bool,
    /// Join the cluster of the member at PEER_ADDR.
    #[arg(long, value_name = "PEER_ADDR", requires = "token")]
    join: Option<String>,
    /// The cluster's join token (else $FLOTILLA_TOKEN).
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// How long a node's heartbeats may stop before it is NotReady and its
    /// pods are replaced elsewhere. Use the same value on every member.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    node_grace_ms: u64,
    /// Raft heartbeat interval (etcd's --heartbeat-interval). Use the same
    /// value on every member.
    #[arg(long, default_value_t = flotilla_raft::Limits::default().heartbeat_ms)]
    heartbeat_interval_ms: u64,
    /// Raft election timeout range, MIN-MAX (etcd's --election-timeout). A
    /// follower that hears nothing from the leader for about MAX plus a
    /// random time in the range starts an election. Use the same value on
    /// every member.
    #[arg(long, value_name = "MIN-MAX")]
    election_timeout_ms: Option<String>,
    #[command(flatten)]
    plan: crate::node_network::PlanFlags,
}

pub async fn run(args: ServerArgs) -> Result<i32, String> {
    if args.id == 0 {
        return Err("--id must be a positive number".into());
    }
    let start = match (&args.join, args.bootstrap) {
        (Some(via), _) => StartMode::Join { via: via.clone(), token: args.token.clone().unwrap_or_default() },
        (None, true) => StartMode::Bootstrap,
        (None, false) => StartMode::Restart,
    };
    let bootstrapping = matches!(start, StartMode::Bootstrap) && !args.data_dir.join("member.json").exists();
    let plan = args.plan.plan()?;
    let mut config = StoreConfig::new(args.id, &args.data_dir, &args.peer, start);
    let (election_min, election_max) = match &args.election_timeout_ms {
        Some(range) => flotilla_raft::Limits::parse_election_range(range).map_err(|e| format!("--election-timeout-ms: {e}"))?,
        None => (config.limits.election_timeout_min_ms, config.limits.election_timeout_max_ms),
    };
    config.limits = config
        .limits
        .with_raft_timing(args.heartbeat_interval_ms, election_min, election_max)
        .map_err(|e| format!("--heartbeat-interval-ms/--election-timeout-ms: {e}"))?;
    let mut listeners = args.api.bind().await?;
    let member = Member::start(config).await.map_err(|e| e.to_string())?;
    let registry = flotilla_actors::Registry::new(member.clone()).with_network_plan(plan);
    if let Some(vip) = registry.api_service_ip() {
        listeners.add_san(vip.to_string());
    }
    let api_addr = listeners.https_addr;
    // Node agents reach the control plane through this member.
    let heartbeats = flotilla_actors::agent::control_plane::Heartbeats::default();
    let local = flotilla_actors::agent::control_plane::LocalControlPlane::new(registry.clone(), heartbeats.clone());
    member.set_app_handler(std::sync::Arc::new(flotilla_actors::agent::remote::AgentService::new(local, Some(member.clone()))));
    let settings = flotilla_actors::leader::LeaderSettings {
        node_grace_ms: args.node_grace_ms,
        node_grace_max_ms: args.node_grace_ms.saturating_mul(5),
        ..Default::default()
    };
    let (leader, _) = crate::wiring::start_leader_supervisor(registry.clone(), heartbeats, settings).await?;
    let rbac = crate::api::rbac_cache::RbacCache::start(registry.clone());
    let state = crate::api::ApiState {
        registry: registry.clone(),
        http_addr: listeners.https_addr.to_string(),
        agents: Default::default(),
        kubelet: Some(std::sync::Arc::new(crate::kubelet_client::KubeletClient::new(member.ca())?)),
        authn: listeners.authn.clone(),
        rbac: rbac.view.clone(),
    };
    let api = listeners.start(member.ca(), &args.data_dir, crate::api::router(state))?;
    // Ends with the server, if it has not finished by then.
    let _namespaces = flotilla_actors::tasks::OwnedTask::spawn(ensure_namespaces(registry, member.id(), api_addr));
    println!(
        "flotilla server: member {} of cluster {} serving peers on {}, API on {}",
        member.id(),
        member.cluster_id(),
        member.peer_addr(),
        api.url
    );
    println!("admin kubeconfig: {}", api.kubeconfig.display());
    if let Some(url) = &api.insecure_url {
        println!("also plain HTTP on {url} (loopback; bearer tokens only)");
    }
    if bootstrapping {
        println!("join token: {}", member.token());
        println!("(also written to {}; for members and `flotilla store`)", args.data_dir.join("join-token").display());
        match member.agent_token() {
            Ok(agent) => println!("agent token: {agent}"),
            Err(e) => eprintln!("warning: {e}"),
        }
        println!("(also written to {}; for `flotilla agent --token`)", args.data_dir.join("agent-token").display());
    }
    wait_for_signal().await;
    eprintln!("flotilla server: shutting down member {}", member.id());
    leader.stop(None);
    drop(api);
    member.shutdown().await;
    Ok(0)
}

/// Creates `default` and `flotilla-system` once the cluster has a leader
/// (every member tries, and creating an existing namespace is a no-op),
/// and adds this member to the `kubernetes` Service's endpoints.
async fn ensure_namespaces(registry: flotilla_actors::Registry, member: u64, api: std::net::SocketAddr) {
    for attempt in 0u32.. {
        let done = match registry.ensure_builtin_objects().await {
            Ok(()) => registry.ensure_api_service(member, api).await,
            Err(e) => Err(e),
        };
        match done {
            Ok(()) => return,
            Err(e) => {
                if attempt % 20 == 19 {
                    tracing::warn!(error = %e, "built-in namespaces not created yet; retrying");
                }
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            }
        }
    }
}

pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
