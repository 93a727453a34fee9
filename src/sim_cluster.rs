//! A whole cluster in one process, for the benchmarks and the tests:
//! server members (store, registry, agent service and LeaderSupervisor
//! each, joined over real QUIC) and sim-runtime node agents that reach the
//! control plane either in-process (thousands of nodes, for benchmarks) or
//! over QUIC with the agent token, as `flotilla agent` does.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flotilla_actors::agent::control_plane::{ControlPlane, Heartbeats, LocalControlPlane};
use flotilla_actors::agent::node_agent::{NodeAgent, NodeAgentArgs, NodeAgentMsg, FENCE_DEFAULT};
use flotilla_actors::agent::pod_state::BackoffPolicy;
use flotilla_actors::agent::remote::{AgentService, RemoteControlPlane};
use flotilla_actors::leader::leader_supervisor::LeaderMsg;
use flotilla_actors::leader::LeaderSettings;
use flotilla_actors::runtime::sim::SimRuntime;
use flotilla_actors::Registry;
use flotilla_raft::{Member, StartMode, StoreConfig};
use ractor::ActorRef;

/// One server member of the cluster.
pub struct SimServer {
    pub member: Arc<Member>,
    pub registry: Registry,
    pub heartbeats: Heartbeats,
    pub local: LocalControlPlane,
    pub leader: ActorRef<LeaderMsg>,
    pub dir: PathBuf,
}

impl SimServer {
    pub async fn stop(&self) {
        self.leader.stop(None);
        self.member.shutdown().await;
    }
}

/// One sim node agent.
pub struct SimNode {
    pub agent: ActorRef<NodeAgentMsg>,
    pub handle: tokio::task::JoinHandle<()>,
    pub runtime: Arc<SimRuntime>,
}

/// How a node is made.
#[derive(Clone, Debug)]
pub struct NodeShape {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub labels: BTreeMap<String, String>,
    /// The status write period (heartbeats are every 200 ms regardless).
    pub status_period: Duration,
    pub start_latency: Duration,
    pub fence: Duration,
    pub pods_max: i64,
}

impl Default for NodeShape {
    fn default() -> Self {
        NodeShape {
            cpu_millis: 4_000,
            memory_bytes: 8 << 30,
            labels: BTreeMap::new(),
            status_period: Duration::from_secs(10),
            start_latency: Duration::from_millis(5),
            fence: FENCE_DEFAULT,
            pods_max: flotilla_actors::agent::node_agent::PODS_MAX_DEFAULT,
        }
    }
}

pub struct SimCluster {
    pub servers: Vec<SimServer>,
    pub nodes: HashMap<String, SimNode>,
    pub root: PathBuf,
    agent_token: String,
}

fn free_udp() -> Result<String, String> {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.to_string()).map_err(|e| e.to_string())
}

async fn start_server(id: u64, dir: PathBuf, start: StartMode, settings: &LeaderSettings) -> Result<SimServer, String> {
    let member = Member::start(StoreConfig::new(id, &dir, free_udp()?, start)).await.map_err(|e| e.to_string())?;
    let registry = Registry::new(member.clone());
    let heartbeats = Heartbeats::default();
    let local = LocalControlPlane::new(registry.clone(), heartbeats.clone());
    member.set_app_handler(Arc::new(AgentService::new(local.clone(), Some(member.clone()))));
    let (leader, _) = crate::wiring::start_leader_supervisor(registry.clone(), heartbeats.clone(), settings.clone()).await?;
    Ok(SimServer { member, registry, heartbeats, local, leader, dir })
}

impl SimCluster {
    /// Starts `members` servers under `root` (the first bootstraps, the
    /// others join) and waits until the store takes writes.
    pub async fn start(root: PathBuf, members: usize, settings: LeaderSettings) -> Result<SimCluster, String> {
        let _ = std::fs::remove_dir_all(&root);
        let first = start_server(1, root.join("m1"), StartMode::Bootstrap, &settings).await?;
        let token = first.member.token().to_string();
        let via = first.member.peer_addr().to_string();
        let mut servers = vec![first];
        for id in 2..=members as u64 {
            let join = StartMode::Join { via: via.clone(), token: token.clone() };
            servers.push(start_server(id, root.join(format!("m{id}")), join, &settings).await?);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while servers[0].registry.ensure_builtin_objects().await.is_err() {
            if Instant::now() > deadline {
                return Err("the store did not become writable within 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Agents hold the agent token, as `flotilla agent` should.
        let agent_token = servers[0].member.agent_token().map_err(|e| e.to_string())?.to_string();
        Ok(SimCluster { servers, nodes: HashMap::new(), root, agent_token })
    }

    /// The registry of any live member.
    pub fn registry(&self) -> &Registry {
        &self.servers[0].registry
    }

    /// The server that leads now, if one does.
    pub fn leader_index(&self) -> Option<usize> {
        self.servers.iter().position(|s| s.member.is_leader())
    }

    pub fn peer_addrs(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.member.peer_addr().to_string()).collect()
    }

    /// Starts a sim node agent. `over_quic` makes it reach the servers the
    /// way `flotilla agent` does; otherwise it calls the first member in
    /// process (what the benchmarks use for thousands of nodes).
    pub async fn add_node(&mut self, name: &str, shape: &NodeShape, over_quic: bool) -> Result<(), String> {
        let control: Arc<dyn ControlPlane> = if over_quic {
            let state_dir = self.root.join("agents").join(name);
            Arc::new(RemoteControlPlane::join(self.peer_addrs(), &self.agent_token, name, &state_dir).await.map_err(|e| e.to_string())?)
        } else {
            Arc::new(self.servers[0].local.clone())
        };
        let runtime = Arc::new(SimRuntime::new(shape.start_latency));
        let args = NodeAgentArgs {
            name: name.to_string(),
            node_ip: "127.0.0.1".into(),
            labels: shape.labels.clone(),
            cpu_millis: shape.cpu_millis,
            memory_bytes: shape.memory_bytes,
            heartbeat: Duration::from_millis(200),
            status_period: shape.status_period,
            control,
            runtime: runtime.clone(),
            backoff: BackoffPolicy::default(),
            fence: shape.fence,
            pods_max: shape.pods_max,
            kubelet_port: None,
            volumes_dir: std::env::temp_dir().join(format!("flotilla-sim-volumes-{}", std::process::id())).join(name),
        };
        let (agent, handle) = ractor::Actor::spawn(None, NodeAgent, args).await.map_err(|e| format!("agent {name}: {e}"))?;
        self.nodes.insert(name.to_string(), SimNode { agent, handle, runtime });
        Ok(())
    }

    /// The node's machine dies: its containers and its agent stop at once,
    /// and nothing is written back.
    pub async fn kill_node(&mut self, name: &str) {
        if let Some(node) = self.nodes.remove(name) {
            node.agent.kill();
            let _ = node.handle.await;
            node.runtime.kill_all();
        }
    }

    pub async fn shutdown(mut self) {
        let names: Vec<String> = self.nodes.keys().cloned().collect();
        for n in names {
            self.kill_node(&n).await;
        }
        for s in &self.servers {
            s.stop().await;
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
