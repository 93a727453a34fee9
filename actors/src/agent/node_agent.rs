//! NodeAgent: one per node. Registers the Node, beats its heart, learns
//! its pods from a [`Watcher`] (a list, then a watch resumed from where it
//! broke), and runs a PodActor per pod. At start it adopts the
//! containers its runtime still holds for known pods and removes the rest.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::{json, Value};

use super::chaos_orders::{ChaosAction, ChaosOrder};
use super::control_plane::{ControlPlane, NodePodsSource, NodeUsage, PartitionableControlPlane};
use super::pod_actor::{PodActor, PodArgs, PodMsg};
use super::pod_state::BackoffPolicy;
use crate::model::object;
use crate::model::quantity::Quantity;
use crate::registry::WatchEventKind;
use crate::runtime::ContainerRuntime;
use crate::tasks::OwnedTask;
use crate::watcher::{Backoff, Watched, Watcher};

/// The reason an agent stopped by `flotilla chaos kill-node` gives.
pub const KILLED_BY_CHAOS: &str = "chaos: kill-node";

/// The first back-off of the pod watcher.
const RELIST_DELAY: Duration = Duration::from_millis(500);

/// Everything a node agent is started with.
#[derive(Clone)]
pub struct NodeAgentArgs {
    pub name: String,
    pub node_ip: String,
    pub labels: BTreeMap<String, String>,
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub heartbeat: Duration,
    /// How often the Node's status is written to the store.
    pub status_period: Duration,
    pub control: Arc<dyn ControlPlane>,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub backoff: BackoffPolicy,
    /// Cut off from every server for this long, the agent stops its own
    /// containers (their replicas have been placed elsewhere by then).
    pub fence: Duration,
    /// Pods this node takes (Kubernetes' kubelet default is 110).
    pub pods_max: i64,
    /// Where the agent serves logs and usage to the API servers (the
    /// kubelet's port); advertised in the Node's `daemonEndpoints`.
    pub kubelet_port: Option<u16>,
    /// Where the node keeps its pods' volumes (Secrets, ConfigMaps, the
    /// ServiceAccount token); only root and the runtime need to read it.
    pub volumes_dir: std::path::PathBuf,
}

/// The kubelet's default `maxPods`.
pub const PODS_MAX_DEFAULT: i64 = 110;

/// Kubernetes has no fencing; ten seconds is ten node grace periods.
pub const FENCE_DEFAULT: Duration = Duration::from_secs(10);

pub struct NodeAgent;

pub enum NodeAgentMsg {
    /// (Re)starts following this node's pods from a fresh list.
    Relist,
    /// What the pod watcher of one generation saw.
    Pods {
        generation: u64,
        watched: Watched,
    },
    /// A chaos order came with a heartbeat's reply.
    Order(ChaosOrder),
    /// No server answered a heartbeat for longer than the fence.
    Fence,
    /// A server answers heartbeats again after a fence.
    Unfence,
    ReportStatus,
}

pub use crate::limits::POD_BATCHES_QUEUED_MAX;

pub struct NodeAgentState {
    args: NodeAgentArgs,
    /// Containers stopped because no server could be reached.
    fenced: bool,
    /// Set by `flotilla chaos partition`: traffic to servers is dropped.
    cut: Arc<std::sync::atomic::AtomicBool>,
    /// Orders older than the agent (or already done) are ignored.
    started_unix_ms: u64,
    last_order_ms: u64,
    pods: HashMap<String, ActorRef<PodMsg>>,
    by_actor: HashMap<ActorId, String>,
    adoptable: HashMap<String, HashMap<String, String>>,
    watch_task: Option<OwnedTask>,
    /// Messages of older watchers still in the mailbox are dropped.
    watch_generation: u64,
    /// Room in the mailbox for the current watcher's batches.
    watch_room: Arc<tokio::sync::Semaphore>,
    /// Beats on its own, so a slow store write or list in this actor never
    /// delays a heartbeat.
    _heartbeat_task: OwnedTask,
    /// Pods here, for the heartbeats' usage.
    pods_count: Arc<std::sync::atomic::AtomicI64>,
    /// The node status write in flight, if one is (one at a time).
    status_task: Option<OwnedTask>,
}

/// What the heartbeat task needs.
struct HeartbeatLoop {
    control: Arc<dyn ControlPlane>,
    name: String,
    period: Duration,
    fence: Duration,
    cut: Arc<std::sync::atomic::AtomicBool>,
    pods: Arc<std::sync::atomic::AtomicI64>,
    agent: ActorRef<NodeAgentMsg>,
}

impl HeartbeatLoop {
    /// Beats every period (a late beat delays the next rather than
    /// bunching them), tells the agent of orders, and of losing and
    /// regaining every server for longer than the fence.
    async fn run(self) {
        let mut ticker = tokio::time::interval(self.period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_contact = tokio::time::Instant::now();
        let mut fenced = false;
        let mut last_order: Option<String> = None;
        loop {
            ticker.tick().await;
            let usage = NodeUsage { pods: self.pods.load(std::sync::atomic::Ordering::Relaxed), ..Default::default() };
            let cut = self.cut.load(std::sync::atomic::Ordering::Acquire);
            let mut told = Ok(());
            match self.control.heartbeat(&self.name, usage, false).await {
                Ok(order) => {
                    if !cut {
                        last_contact = tokio::time::Instant::now();
                        if fenced {
                            fenced = false;
                            told = self.agent.send_message(NodeAgentMsg::Unfence);
                        }
                    }
                    if order.is_some() && order != last_order {
                        if let Some(parsed) = order.as_deref().and_then(ChaosOrder::parse) {
                            told = told.and(self.agent.send_message(NodeAgentMsg::Order(parsed)));
                        }
                    }
                    last_order = order;
                }
                Err(e) => tracing::debug!(node = %self.name, error = %e, "heartbeat failed"),
            }
            if !fenced && last_contact.elapsed() > self.fence {
                fenced = true;
                told = told.and(self.agent.send_message(NodeAgentMsg::Fence));
            }
            if told.is_err() {
                return;
            }
        }
    }
}

/// The Node object an agent registers.
pub fn node_object(args: &NodeAgentArgs) -> Value {
    let mut labels: serde_json::Map<String, Value> = args.labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    labels.insert("kubernetes.io/hostname".into(), json!(args.name));
    labels.insert("kubernetes.io/os".into(), json!("linux"));
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": args.name, "labels": labels},
        "spec": {},
        "status": node_status(args),
    })
}

fn node_status(args: &NodeAgentArgs) -> Value {
    let now = object::now();
    let cpu = Quantity::from_millis(args.cpu_millis).to_string();
    let memory = Quantity::from_bytes(args.memory_bytes, true).to_string();
    let resources = json!({"cpu": cpu, "memory": memory, "pods": args.pods_max.to_string()});
    json!({
        "capacity": resources, "allocatable": resources,
        "addresses": [{"type": "InternalIP", "address": args.node_ip}, {"type": "Hostname", "address": args.name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": args.kubelet_port.unwrap_or(0)}},
        "conditions": [{"type": "Ready", "status": "True", "reason": "AgentReady", "message": "flotilla agent is posting status",
                        "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "nodeInfo": {
            "machineID": args.name, "systemUUID": args.name, "bootID": "", "kernelVersion": "", "osImage": "",
            "containerRuntimeVersion": format!("{}://flotilla", args.runtime.kind()),
            "kubeletVersion": format!("flotilla-{}", env!("CARGO_PKG_VERSION")), "kubeProxyVersion": "",
            "operatingSystem": "linux", "architecture": std::env::consts::ARCH,
        },
    })
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl NodeAgentState {
    /// No server for longer than the fence: stop every container here.
    async fn fence(&mut self) {
        self.fenced = true;
        self.watch_task = None;
        tracing::warn!(node = %self.args.name, pods = self.pods.len(), fence_ms = self.args.fence.as_millis() as u64,
                       "no server reachable for longer than the fence; stopping this node's containers");
        for actor in self.pods.values() {
            let _ = actor.send_message(PodMsg::Kill);
        }
    }

    /// Carries out a chaos order once.
    async fn obey(&mut self, myself: &ActorRef<NodeAgentMsg>, order: ChaosOrder) {
        if order.issued_unix_ms <= self.started_unix_ms || order.issued_unix_ms == self.last_order_ms {
            return;
        }
        self.last_order_ms = order.issued_unix_ms;
        let name = self.args.name.clone();
        match order.action {
            ChaosAction::Partition => {
                tracing::warn!(node = %name, "chaos: partitioned from every server");
                self.cut.store(true, std::sync::atomic::Ordering::Release);
                self.watch_task = None;
            }
            ChaosAction::Heal => {
                tracing::warn!(node = %name, "chaos: partition healed");
                self.cut.store(false, std::sync::atomic::Ordering::Release);
                let _ = myself.send_message(NodeAgentMsg::Relist);
            }
            ChaosAction::KillNode => {
                tracing::warn!(node = %name, "chaos: killing this node (containers and agent)");
                for c in self.args.runtime.list(&name).await.unwrap_or_default() {
                    let _ = self.args.runtime.stop(&c.id, Duration::ZERO).await;
                }
                // Children stop with their parent; nothing is written back.
                myself.stop(Some(KILLED_BY_CHAOS.into()));
            }
        }
    }

    async fn ensure_pod(&mut self, myself: &ActorRef<NodeAgentMsg>, pod: Value) {
        if self.fenced {
            return;
        }
        let uid = object::uid(&pod).unwrap_or("").to_string();
        if let Some(actor) = self.pods.get(&uid) {
            let _ = actor.send_message(PodMsg::Update(pod));
            return;
        }
        let args = PodArgs {
            pod,
            node: self.args.name.clone(),
            node_ip: self.args.node_ip.clone(),
            runtime: self.args.runtime.clone(),
            control: self.args.control.clone(),
            adopt: self.adoptable.remove(&uid).unwrap_or_default(),
            backoff: self.args.backoff,
            volumes_dir: self.args.volumes_dir.clone(),
            node_cpu_millis: self.args.cpu_millis,
            node_memory_bytes: self.args.memory_bytes,
        };
        match Actor::spawn_linked(None, PodActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), uid.clone());
                self.pods.insert(uid, actor);
                self.pods_count.store(self.pods.len() as i64, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(node = %self.args.name, error = %e, "pod actor did not start"),
        }
    }
}

impl Actor for NodeAgent {
    type Msg = NodeAgentMsg;
    type State = NodeAgentState;
    type Arguments = NodeAgentArgs;

    async fn pre_start(&self, myself: ActorRef<NodeAgentMsg>, mut args: NodeAgentArgs) -> Result<NodeAgentState, ActorProcessingErr> {
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        args.control = Arc::new(PartitionableControlPlane { inner: args.control.clone(), cut: cut.clone() });
        args.control.register_node(node_object(&args)).await?;
        // Containers left by an earlier run of this agent: adopt or remove.
        let mut adoptable: HashMap<String, HashMap<String, String>> = HashMap::new();
        for c in args.runtime.list(&args.name).await.unwrap_or_default() {
            if c.running {
                adoptable.entry(c.pod_uid).or_default().insert(c.container, c.id);
            } else {
                let _ = args.runtime.remove(&c.id).await;
            }
        }
        myself.send_message(NodeAgentMsg::Relist)?;
        let pods_count = Arc::new(std::sync::atomic::AtomicI64::new(0));
        let beats = HeartbeatLoop {
            control: args.control.clone(),
            name: args.name.clone(),
            period: args.heartbeat,
            fence: args.fence,
            cut: cut.clone(),
            pods: pods_count.clone(),
            agent: myself.clone(),
        };
        let heartbeat_task = OwnedTask::spawn(beats.run());
        myself.send_after(args.status_period, || NodeAgentMsg::ReportStatus);
        tracing::info!(node = %args.name, runtime = args.runtime.kind(), "node registered");
        let started_unix_ms = unix_ms();
        Ok(NodeAgentState {
            args,
            fenced: false,
            cut,
            started_unix_ms,
            last_order_ms: 0,
            pods: HashMap::new(),
            by_actor: HashMap::new(),
            adoptable,
            watch_task: None,
            watch_generation: 0,
            watch_room: Arc::new(tokio::sync::Semaphore::new(POD_BATCHES_QUEUED_MAX)),
            _heartbeat_task: heartbeat_task,
            pods_count,
            status_task: None,
        })
    }

    async fn post_stop(&self, _myself: ActorRef<NodeAgentMsg>, state: &mut NodeAgentState) -> Result<(), ActorProcessingErr> {
        state.watch_task = None;
        state.status_task = None;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeAgentMsg>,
        msg: NodeAgentMsg,
        state: &mut NodeAgentState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeAgentMsg::Relist => {
                state.watch_task = None;
                if state.fenced {
                    return Ok(());
                }
                state.watch_generation += 1;
                state.watch_room = Arc::new(tokio::sync::Semaphore::new(POD_BATCHES_QUEUED_MAX));
                let (generation, room, me) = (state.watch_generation, state.watch_room.clone(), myself.clone());
                let source = NodePodsSource { control: state.args.control.clone(), node: state.args.name.clone() };
                state.watch_task = Some(OwnedTask::spawn(async move {
                    let mut watcher = Watcher::new(source, Backoff { first: RELIST_DELAY, ..Backoff::default() });
                    loop {
                        let watched = watcher.next().await;
                        match room.clone().acquire_owned().await {
                            Ok(permit) => permit.forget(),
                            Err(_) => return,
                        }
                        if me.send_message(NodeAgentMsg::Pods { generation, watched }).is_err() {
                            return;
                        }
                    }
                }));
            }
            NodeAgentMsg::Pods { generation, watched } => {
                if generation != state.watch_generation || state.fenced {
                    return Ok(());
                }
                state.watch_room.add_permits(1);
                match watched {
                    Watched::Restarted { objects: pods, .. } => {
                        let listed: std::collections::HashSet<String> =
                            pods.iter().filter_map(|p| object::uid(p).map(String::from)).collect();
                        for (uid, actor) in &state.pods {
                            if !listed.contains(uid) {
                                let _ = actor.send_message(PodMsg::Kill);
                            }
                        }
                        // Containers of pods that no longer exist are removed.
                        let orphans: Vec<String> = state.adoptable.keys().filter(|u| !listed.contains(*u)).cloned().collect();
                        for uid in orphans {
                            for (_, id) in state.adoptable.remove(&uid).unwrap_or_default() {
                                let _ = state.args.runtime.stop(&id, Duration::from_secs(5)).await;
                                let _ = state.args.runtime.remove(&id).await;
                            }
                        }
                        // And the volumes of pods gone while this agent was away.
                        let keep: std::collections::BTreeSet<String> = listed.iter().chain(state.pods.keys()).cloned().collect();
                        let volumes_dir = state.args.volumes_dir.clone();
                        match tokio::task::spawn_blocking(move || super::pod_volumes::sweep(&volumes_dir, &keep)).await {
                            Ok(Ok(0)) => {}
                            Ok(Ok(n)) => tracing::info!(node = %state.args.name, removed = n, "removed the volumes of pods that are gone"),
                            Ok(Err(e)) => {
                                tracing::warn!(node = %state.args.name, error = %e, "could not remove the volumes of pods that are gone")
                            }
                            Err(e) => tracing::warn!(node = %state.args.name, error = %e, "the volume sweep failed"),
                        }
                        for pod in pods {
                            state.ensure_pod(&myself, pod).await;
                        }
                    }
                    Watched::Changes { events, .. } => {
                        for ev in events {
                            let uid = object::uid(&ev.object).unwrap_or("").to_string();
                            if ev.kind == WatchEventKind::Deleted {
                                if let Some(actor) = state.pods.get(&uid) {
                                    let _ = actor.send_message(PodMsg::Kill);
                                }
                            } else {
                                state.ensure_pod(&myself, ev.object).await;
                            }
                        }
                    }
                }
            }
            NodeAgentMsg::Order(order) => state.obey(&myself, order).await,
            NodeAgentMsg::Fence => {
                if !state.fenced {
                    state.fence().await;
                }
            }
            NodeAgentMsg::Unfence => {
                if state.fenced {
                    state.fenced = false;
                    tracing::warn!(node = %state.args.name, "a server answers again; unfencing and relisting pods");
                    myself.send_message(NodeAgentMsg::Relist)?;
                }
            }
            NodeAgentMsg::ReportStatus => {
                // The next report is asked for when this one starts; one
                // still in flight (a slow store) makes this one wait its turn.
                myself.send_after(state.args.status_period, || NodeAgentMsg::ReportStatus);
                if state.status_task.as_ref().is_some_and(|t| !t.is_finished()) {
                    return Ok(());
                }
                let (control, name, status) = (state.args.control.clone(), state.args.name.clone(), node_status(&state.args));
                state.status_task = Some(OwnedTask::spawn(async move {
                    if let Err(e) = control.update_node_status(&name, status).await {
                        tracing::debug!(node = %name, error = %e, "node status write failed");
                    }
                }));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeAgentMsg>,
        evt: SupervisionEvent,
        state: &mut NodeAgentState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(uid) = state.by_actor.remove(&cell.get_id()) {
                    state.pods.remove(&uid);
                    state.pods_count.store(state.pods.len() as i64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                if let Some(uid) = state.by_actor.remove(&cell.get_id()) {
                    state.pods.remove(&uid);
                    state.pods_count.store(state.pods.len() as i64, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(node = %state.args.name, pod = %uid, error = %err, "pod actor failed; relisting to restart it");
                    myself.send_after(RELIST_DELAY, || NodeAgentMsg::Relist);
                }
            }
            _ => {}
        }
        Ok(())
    }
}
