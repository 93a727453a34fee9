//! A node's service networking, started next to its agent (by `flotilla
//! agent` and `flotilla up`): the Proxy actor, which programs the kernel
//! for service virtual IPs and NetworkPolicy; cluster DNS, which answers
//! from the proxy's service table; and, for runtimes that give pods their
//! own addresses (docker), the node's pod network on the subnet the
//! leader assigned it, with cluster DNS on its gateway for the pods.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use flotilla_actors::agent::control_plane::ControlPlane;
use flotilla_actors::network::api_relay::ApiRelay;
use flotilla_actors::network::dns::{self, DnsConfig, DnsServer};
use flotilla_actors::network::nft;
use flotilla_actors::network::proxy::{ProxyActor, ProxyArgs, ProxyMode, ProxyMsg};
use flotilla_actors::network::service_table::ServiceTable;
use flotilla_actors::runtime::{ContainerRuntime, PodNetwork};
use ractor::{Actor, ActorRef};

/// The cluster domain, as Kubernetes names it by default.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// How often the agent looks for its node's pod subnet until it has one.
const POD_CIDR_POLL: std::time::Duration = std::time::Duration::from_millis(500);
/// Failed attempts at the pod network (about 15 s) before pods start
/// without it.
const POD_NETWORK_TRIES_BEFORE_FALLBACK: u32 = 5;
/// The DNS port pods ask on their gateway.
const POD_DNS_PORT: u16 = 53;
/// Where the API relay listens on the gateway: the `kubernetes` Service's
/// own port, so the rules only change the address.
const API_RELAY_PORT: u16 = 443;

/// The cluster's address plan, given to every server (the same on each).
#[derive(Args, Clone, Debug)]
pub struct PlanFlags {
    /// Where Services' virtual IPs come from.
    #[arg(long, default_value = "10.96.0.0/12")]
    pub service_cidr: String,
    /// Where nodes' pod subnets come from.
    #[arg(long, default_value = "10.224.0.0/11")]
    pub cluster_cidr: String,
    /// The prefix length of each node's pod subnet.
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask: u8,
}

impl PlanFlags {
    pub fn plan(&self) -> Result<flotilla_actors::model::addresses::NetworkPlan, String> {
        flotilla_actors::model::addresses::NetworkPlan::new(&self.service_cidr, &self.cluster_cidr, self.node_cidr_mask)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProxyChoice {
    /// nftables when running as root with a working `nft`, else userspace.
    Auto,
    Nftables,
    /// Node ports through listeners in the agent (no root needed); no VIPs.
    Userspace,
    Off,
}

#[derive(Args, Clone, Debug)]
pub struct NetworkFlags {
    /// How service virtual IPs and NetworkPolicy are carried out on this
    /// node: nftables rules (needs root), or off.
    #[arg(long, value_enum, default_value = "auto", env = "FLOTILLA_PROXY")]
    pub proxy: ProxyChoice,
    /// Where cluster DNS answers, UDP and TCP (port 0 picks one), or "off".
    #[arg(long, default_value = "127.0.0.1:10053", env = "FLOTILLA_DNS_LISTEN")]
    pub dns_listen: String,
}

/// The running pieces; `stop` takes the node's rules down with them.
pub struct NodeNetwork {
    proxy: ActorRef<ProxyMsg>,
    proxy_handle: tokio::task::JoinHandle<()>,
    dns: Option<DnsServer>,
    forward: tokio::task::JoinHandle<()>,
    pod_network: Option<tokio::task::JoinHandle<()>>,
    pub mode: ProxyMode,
}

impl NodeNetwork {
    pub fn dns_addr(&self) -> Option<SocketAddr> {
        self.dns.as_ref().map(DnsServer::local_addr)
    }

    pub async fn stop(self) {
        self.forward.abort();
        if let Some(t) = self.pod_network {
            t.abort();
        }
        self.proxy.stop(None);
        let _ = self.proxy_handle.await;
        if let Some(d) = self.dns {
            d.stop().await;
        }
    }
}

/// Docker drops forwarded traffic to its bridges unless it is a published
/// port (FORWARD policy DROP): node-port connections from other machines
/// and pods on other nodes would never reach this node's pods. One rule
/// in DOCKER-USER, the chain Docker leaves to its users, admits the pod
/// subnet; NetworkPolicy still applies (its drops, in flotilla's own
/// table, come first).
fn admit_forwarding(subnet: &str) -> Result<(), String> {
    let rule = ["DOCKER-USER", "-d", subnet, "-m", "comment", "--comment", "flotilla pod subnet", "-j", "ACCEPT"];
    let run = |action: &str| {
        std::process::Command::new("iptables")
            .args(["-w", "5", action])
            .args(rule)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .output()
            .map_err(|e| format!("iptables: {e}"))
    };
    if run("-C")?.status.success() {
        return Ok(());
    }
    let out = run("-I")?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("iptables -I DOCKER-USER: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Waits for the leader to give the node a pod subnet, sets up the pod
/// network on it, and serves cluster DNS on its gateway for the pods.
async fn run_pod_network(
    node: String,
    control: Arc<dyn ControlPlane>,
    runtime: Arc<dyn ContainerRuntime>,
    table: dns::SharedServiceTable,
    relay: Option<(ActorRef<ProxyMsg>, tokio::sync::watch::Receiver<Arc<ServiceTable>>)>,
) {
    let network = loop {
        let cidr = control.list_objects("nodes").await.ok().and_then(|(nodes, _)| {
            nodes
                .into_iter()
                .find(|n| n.pointer("/metadata/name").and_then(|v| v.as_str()) == Some(node.as_str()))
                .and_then(|n| n.pointer("/spec/podCIDR").and_then(|v| v.as_str()).filter(|s| !s.is_empty()).map(String::from))
        });
        if let Some(cidr) = cidr.and_then(|c| flotilla_actors::model::addresses::Cidr::parse(&c).ok()) {
            break PodNetwork {
                node: node.clone(),
                subnet: cidr.to_string(),
                gateway: cidr.gateway().to_string(),
                cluster_domain: CLUSTER_DOMAIN.into(),
                // The server binds in a moment, once the bridge holds the
                // gateway address; pods started meanwhile retry their query.
                dns: Some(cidr.gateway().to_string()),
            };
        }
        tokio::time::sleep(POD_CIDR_POLL).await;
    };
    let mut delay = POD_CIDR_POLL;
    let mut tries = 0;
    while let Err(e) = runtime.set_pod_network(&network).await {
        tries += 1;
        if tries == POD_NETWORK_TRIES_BEFORE_FALLBACK {
            // Pods that never start help no one: run them on Docker's own
            // bridge (addresses unique on this node only, no cluster DNS
            // for them) and keep trying to set the pod network up.
            tracing::error!(node = %node, subnet = %network.subnet, error = %e,
                "cannot set up the pod network; pods start on Docker's default bridge meanwhile (see docs/NETWORKING.md)");
            runtime.forgo_pod_network();
        } else {
            tracing::warn!(node = %node, subnet = %network.subnet, error = %e, "pod network not set up yet; retrying");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_secs(10));
    }
    tracing::info!(node = %node, subnet = %network.subnet, "pod network ready");
    let subnet = network.subnet.clone();
    match tokio::task::spawn_blocking(move || admit_forwarding(&subnet)).await.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(()) => {}
        Err(e) => tracing::warn!(node = %node, error = %e, "pods are not reachable from other machines or through node ports"),
    }
    let Ok(gateway) = network.gateway.parse::<std::net::Ipv4Addr>() else { return };
    // Pods reach the API through the node (the servers may listen on
    // loopback); the relay ends with this task.
    let _relay = match relay {
        None => None,
        Some((proxy, tables)) => match ApiRelay::start(SocketAddr::from((gateway, API_RELAY_PORT)), tables).await {
            Ok(relay) => {
                let _ = proxy.send_message(ProxyMsg::ApiRelay(std::net::SocketAddrV4::new(gateway, API_RELAY_PORT)));
                tracing::info!(node = %node, addr = %relay.local_addr, "API relay for pods listening");
                Some(relay)
            }
            Err(e) => {
                tracing::warn!(node = %node, error = %e, "API relay for pods not started; pods cannot reach the API");
                None
            }
        },
    };
    let gateway = std::net::IpAddr::V4(gateway);
    let bind = SocketAddr::new(gateway, POD_DNS_PORT);
    let config = DnsConfig { bind, zone: CLUSTER_DOMAIN.into(), upstreams: dns::host_upstreams(bind) };
    match DnsServer::start(config, table).await {
        // Serves until this task is aborted (the server stops when dropped).
        Ok(server) => {
            let _server = server;
            std::future::pending::<()>().await
        }
        // Binding port 53 needs root: without it pods started from now on
        // keep the host's resolvers (no cluster names), rather than one
        // that never answers.
        Err(e) => {
            tracing::warn!(node = %node, error = %e, "cluster DNS for pods not started; pods resolve through the host's resolvers");
            let _ = runtime.set_pod_network(&PodNetwork { dns: None, ..network }).await;
        }
    }
}

pub async fn start(
    node: &str,
    control: Arc<dyn ControlPlane>,
    runtime: Arc<dyn ContainerRuntime>,
    flags: &NetworkFlags,
) -> Result<NodeNetwork, String> {
    let mode = match flags.proxy {
        ProxyChoice::Off => ProxyMode::Off,
        ProxyChoice::Userspace => ProxyMode::Userspace,
        ProxyChoice::Nftables => {
            if !nft::available() {
                return Err(
                    "--proxy nftables: nftables cannot be programmed here (run as root with the nft tool installed), or use --proxy off"
                        .into(),
                );
            }
            ProxyMode::Nftables
        }
        ProxyChoice::Auto => {
            if tokio::task::spawn_blocking(nft::available).await.unwrap_or(false) {
                ProxyMode::Nftables
            } else {
                tracing::info!("not root or no nft: node ports are carried in userspace; virtual IPs do not answer on this node");
                ProxyMode::Userspace
            }
        }
    };
    let dns = if flags.dns_listen == "off" {
        None
    } else {
        let bind: SocketAddr = flags
            .dns_listen
            .parse()
            .map_err(|_| format!("--dns-listen {:?} must be an address such as 127.0.0.1:10053, or off", flags.dns_listen))?;
        let config = DnsConfig { bind, zone: CLUSTER_DOMAIN.into(), upstreams: dns::host_upstreams(bind) };
        Some(DnsServer::start(config, dns::share(ServiceTable::default())).await.map_err(|e| format!("--dns-listen: {e}"))?)
    };
    let (tables, mut table_rx) = tokio::sync::watch::channel(Arc::new(ServiceTable::default()));
    // One table for every DNS listener: the host's and the pods'.
    let shared = dns.as_ref().map_or_else(|| dns::share(ServiceTable::default()), |d| d.shared());
    let relay_tables = tables.subscribe();
    let (proxy, proxy_handle) =
        Actor::spawn(None, ProxyActor, ProxyArgs { node: node.to_string(), control: control.clone(), mode, tables })
            .await
            .map_err(|e| format!("the proxy did not start: {e}"))?;
    // Only the kernel's rules carry the API's virtual IP to the relay.
    let relay = (mode == ProxyMode::Nftables).then(|| (proxy.clone(), relay_tables));
    let pod_network = (runtime.kind() == "docker").then(|| {
        runtime.expect_pod_network();
        tokio::spawn(run_pod_network(node.to_string(), control.clone(), runtime.clone(), shared.clone(), relay))
    });
    let forward = tokio::spawn(async move {
        while table_rx.changed().await.is_ok() {
            let table = table_rx.borrow_and_update().clone();
            *shared.write().unwrap_or_else(std::sync::PoisonError::into_inner) = table;
        }
    });
    Ok(NodeNetwork { proxy, proxy_handle, dns, forward, pod_network, mode })
}
