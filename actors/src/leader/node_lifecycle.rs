//! Node lifecycle: the NodeSupervisor keeps one NodeActor per registered
//! node. A NodeActor fails when its node's heartbeats stop for longer than
//! `node_grace_ms`; the supervisor then marks the node NotReady, records an
//! Event and evicts its pods (their ReplicaSets replace them elsewhere), and
//! starts a new NodeActor that watches for the node to come back, marks it
//! Ready again when it does, and evicts whatever is still bound to it
//! meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::{json, Value};

use super::controller::LeaderContext;
use crate::model::object;
use crate::model::resources::lookup;
use crate::registry::{set_condition, RegistryError};

/// How often a NodeActor acts on the store: evicting a lost node's
/// leftover pods again, or correcting a live node stored as NotReady.
const ACTION_RETRY: Duration = Duration::from_secs(1);

/// Whether the node's stored Ready condition is True.
pub fn node_ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// Why a NodeActor failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node {node}: no heartbeat for {silent_ms} ms (grace {grace_ms} ms)")]
    HeartbeatsStopped { node: String, silent_ms: u128, grace_ms: u64 },
}

/// Writes the node's Ready condition.
async fn set_ready(ctx: &LeaderContext, node: &str, ready: bool, message: &str) -> Result<(), RegistryError> {
    let nodes = lookup("nodes").expect("nodes are served");
    let (status, reason) = if ready { ("True", "AgentReady") } else { ("Unknown", "NodeStatusUnknown") };
    let now = object::now();
    ctx.registry
        .read_modify_write(
            nodes,
            None,
            node,
            None,
            |old| {
                let mut new = old.clone();
                let transition = node_ready(old) != ready;
                let last = old
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                    .and_then(|c| c.get("lastTransitionTime").cloned());
                set_condition(
                    &mut new,
                    json!({"type": "Ready", "status": status, "reason": reason, "message": message,
                           "lastHeartbeatTime": now,
                           "lastTransitionTime": if transition { json!(now) } else { last.unwrap_or(json!(now)) }}),
                );
                Ok(new)
            },
            Some("status"),
        )
        .await?;
    Ok(())
}

/// Deletes at once every pod bound to `node` (its agent is gone, so no one
/// would finish a graceful deletion), in transactions of
/// `bind_txn_pods_max` pods. Returns how many went.
pub async fn evict(ctx: &LeaderContext, node: &str) -> usize {
    if let Some((silent, total)) = mass_silence(ctx) {
        // Like Kubernetes' unhealthy-zone rule: when most nodes go quiet at
        // once, the fault is more likely ours (a partitioned or new
        // leader) than theirs, and evicting everything would be the outage.
        tracing::warn!(node, silent, total, "most nodes are silent at once; evictions paused until they answer again");
        return 0;
    }
    let victims: Vec<(String, String)> = ctx.cache.read().pods_on(node).map(|p| (p.namespace.clone(), p.name.clone())).collect();
    let pods = lookup("pods").expect("pods are served");
    let mut evicted = 0;
    for chunk in victims.chunks(ctx.settings.bind_txn_pods_max.max(1)) {
        match ctx.registry.delete_many_now(pods, chunk).await {
            Ok(_) => evicted += chunk.len(),
            Err(e) => tracing::warn!(node, error = %e, "eviction failed; the lost node's actor tries again"),
        }
    }
    evicted
}

/// Some((silent, total)) when more than half of three or more nodes have
/// sent no heartbeat within the grace period.
/// Counted at most every node check period: with thousands of nodes lost
/// together, counting for each of them would be quadratic.
fn mass_silence(ctx: &LeaderContext) -> Option<(usize, usize)> {
    let mut memo = ctx.silence.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((at, verdict)) = *memo {
        if at.elapsed() < ctx.settings.node_check() {
            return verdict;
        }
    }
    let grace = ctx.settings.node_grace();
    let (silent, total) = {
        let cache = ctx.cache.read();
        let silent = cache.nodes.keys().filter(|n| ctx.heartbeats.last(n).is_none_or(|(t, _)| t.elapsed() > grace)).count();
        (silent, cache.nodes.len())
    };
    let verdict = (total >= 3 && silent * 2 > total).then_some((silent, total));
    *memo = Some((std::time::Instant::now(), verdict));
    verdict
}

pub struct NodeActor;

pub enum NodeMsg {
    Check,
}

pub struct NodeArgs {
    pub name: String,
    pub ctx: Arc<LeaderContext>,
    /// Lost since this instant (heartbeats stopped), or None when live.
    pub lost_since: Option<Instant>,
}

pub struct NodeState {
    args: NodeArgs,
    started: Instant,
    last_action: Option<Instant>,
}

impl Actor for NodeActor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(&self, myself: ActorRef<NodeMsg>, args: NodeArgs) -> Result<NodeState, ActorProcessingErr> {
        myself.send_interval(args.ctx.settings.node_check(), || NodeMsg::Check);
        Ok(NodeState { args, started: Instant::now(), last_action: None })
    }

    async fn handle(&self, _myself: ActorRef<NodeMsg>, _msg: NodeMsg, state: &mut NodeState) -> Result<(), ActorProcessingErr> {
        let ctx = &state.args.ctx;
        let name = state.args.name.as_str();
        let grace = ctx.settings.node_grace();
        let now = Instant::now();
        let last_beat = ctx.heartbeats.last(name).map(|(t, _)| t);
        let due = state.last_action.is_none_or(|t| now.duration_since(t) >= ACTION_RETRY);
        match state.args.lost_since {
            None => {
                // A new leader gives agents time to find it before judging.
                let reference = last_beat.filter(|b| *b >= state.started).unwrap_or(state.started + ctx.settings.takeover_grace());
                let silent = now.saturating_duration_since(reference);
                // When most nodes are silent together the fault is more
                // likely here (an overloaded or cut-off leader) than in the
                // nodes: marking thousands NotReady would only add to it.
                if silent > grace && mass_silence(ctx).is_none() {
                    return Err(NodeError::HeartbeatsStopped {
                        node: name.to_string(),
                        silent_ms: silent.as_millis(),
                        grace_ms: ctx.settings.node_grace_ms,
                    }
                    .into());
                }
                // Thousands of NodeActors tick several times a second: the
                // stored status is read at most once a second each.
                if !due {
                    return Ok(());
                }
                state.last_action = Some(now);
                let stored_ready = ctx.cache.read().nodes.get(name).map(node_ready);
                if stored_ready == Some(false) && last_beat.is_some_and(|b| now.duration_since(b) < grace) {
                    state.last_action = Some(now);
                    set_ready(ctx, name, true, "flotilla agent is posting heartbeats").await?;
                }
            }
            Some(since) => {
                if last_beat.is_some_and(|b| b > since && now.duration_since(b) < grace) {
                    set_ready(ctx, name, true, "flotilla agent is posting heartbeats again").await?;
                    if let Some(node) = ctx.cache.read().nodes.get(name).cloned() {
                        let registry = ctx.registry.clone();
                        tokio::spawn(async move { registry.record_event(&node, "Normal", "NodeReady", "heartbeats resumed").await });
                    }
                    tracing::info!(node = name, "node is back");
                    state.args.lost_since = None;
                    state.started = now;
                    return Ok(());
                }
                let has_pods = ctx.cache.read().pods_on(name).next().is_some();
                if has_pods && due {
                    state.last_action = Some(now);
                    let n = evict(ctx, name).await;
                    if n > 0 {
                        tracing::info!(node = name, pods = n, "evicted pods left on a lost node");
                    }
                }
            }
        }
        Ok(())
    }
}

pub struct NodeSupervisor;

pub enum NodeSupervisorMsg {
    Sync,
}

pub struct NodeSupervisorState {
    ctx: Arc<LeaderContext>,
    actors: HashMap<String, ActorRef<NodeMsg>>,
    by_actor: HashMap<ActorId, String>,
    forwarder: tokio::task::JoinHandle<()>,
}

impl NodeSupervisorState {
    async fn spawn_node(&mut self, myself: &ActorRef<NodeSupervisorMsg>, name: String, lost_since: Option<Instant>) {
        let args = NodeArgs { name: name.clone(), ctx: self.ctx.clone(), lost_since };
        match Actor::spawn_linked(None, NodeActor, args, myself.get_cell()).await {
            Ok((actor, _)) => {
                self.by_actor.insert(actor.get_id(), name.clone());
                self.actors.insert(name, actor);
            }
            Err(e) => tracing::warn!(node = %name, error = %e, "node actor did not start"),
        }
    }
}

impl Actor for NodeSupervisor {
    type Msg = NodeSupervisorMsg;
    type State = NodeSupervisorState;
    type Arguments = Arc<LeaderContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeSupervisorMsg>,
        ctx: Arc<LeaderContext>,
    ) -> Result<NodeSupervisorState, ActorProcessingErr> {
        let mut changes = ctx.cache.subscribe();
        let me = myself.clone();
        let forwarder = tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                if me.send_message(NodeSupervisorMsg::Sync).is_err() {
                    return;
                }
                // Node churn is slow; a Sync per burst of changes is plenty.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        myself.send_interval(ctx.settings.resync(), || NodeSupervisorMsg::Sync);
        Ok(NodeSupervisorState { ctx, actors: HashMap::new(), by_actor: HashMap::new(), forwarder })
    }

    async fn post_stop(&self, _myself: ActorRef<NodeSupervisorMsg>, state: &mut NodeSupervisorState) -> Result<(), ActorProcessingErr> {
        state.forwarder.abort();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeSupervisorMsg>,
        _msg: NodeSupervisorMsg,
        state: &mut NodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        // Only new and deleted nodes matter here; with thousands of nodes
        // this runs often, so nothing is parsed for the others.
        let (new_nodes, gone): (Vec<(String, bool)>, Vec<String>) = {
            let s = state.ctx.cache.read();
            if !s.synced() {
                return Ok(());
            }
            let new_nodes =
                s.nodes.iter().filter(|(n, _)| !state.actors.contains_key(*n)).map(|(n, v)| (n.clone(), node_ready(v))).collect();
            let gone = if s.nodes.len() == state.actors.len() {
                Vec::new()
            } else {
                state.actors.keys().filter(|n| !s.nodes.contains_key(*n)).cloned().collect()
            };
            (new_nodes, gone)
        };
        for name in gone {
            if let Some(actor) = state.actors.remove(&name) {
                state.by_actor.remove(&actor.get_id());
                actor.stop(Some("node deleted".into()));
            }
        }
        for (name, ready) in new_nodes {
            // A node already NotReady starts out lost: its leftovers are
            // evicted and it is Ready again only when it beats.
            let lost = (!ready).then(Instant::now);
            state.spawn_node(&myself, name, lost).await;
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeSupervisorMsg>,
        evt: SupervisionEvent,
        state: &mut NodeSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, reason) => {
                let Some(name) = state.by_actor.remove(&cell.get_id()) else { return Ok(()) };
                state.actors.remove(&name);
                tracing::warn!(node = %name, reason = %reason, "node lost");
                let ctx = state.ctx.clone();
                let node_name = name.clone();
                let message = reason.to_string();
                tokio::spawn(async move {
                    if let Err(e) = set_ready(&ctx, &node_name, false, &message).await {
                        tracing::warn!(node = %node_name, error = %e, "could not mark the node NotReady");
                    }
                    let evicted = evict(&ctx, &node_name).await;
                    let node = ctx.cache.read().nodes.get(&node_name).cloned();
                    if let Some(node) = node {
                        ctx.registry.record_event(&node, "Warning", "NodeNotReady", &format!("{message}; evicted {evicted} pods")).await;
                    }
                    tracing::info!(node = %node_name, evicted, "node marked NotReady and its pods evicted");
                });
                state.spawn_node(&myself, name, Some(Instant::now())).await;
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                if let Some(name) = state.by_actor.remove(&cell.get_id()) {
                    state.actors.remove(&name);
                }
            }
            _ => {}
        }
        Ok(())
    }
}
