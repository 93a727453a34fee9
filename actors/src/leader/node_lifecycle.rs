//! Node lifecycle: one NodeLifecycle actor per leadership term ticks the
//! failure detector ([`super::node_health`]) with what the cache and the
//! heartbeats say of every node, and carries out the writes it decides on:
//! NotReady, Ready, evictions (their ReplicaSets replace the pods
//! elsewhere) and Events. A node being lost is a decision, not an actor
//! failure: this actor fails only if something here broke, and the writes
//! it started are tasks it owns, so they stop when leadership moves.

use std::collections::BTreeMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::{json, Value};
use tokio::task::JoinSet;

use super::controller::LeaderContext;
use super::node_health::{HealthSettings, NodeCommand, NodeHealth, NodeInput, NodeObservation};
use crate::clock::SharedClock;
use crate::model::object;
use crate::model::resources::lookup;
use crate::registry::{set_condition, RegistryError};

/// Whether the node's stored Ready condition is True.
pub fn node_ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
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

pub struct NodeLifecycle;

pub enum NodeLifecycleMsg {
    Tick,
    /// The writes for one node are done.
    Done {
        node: String,
    },
}

pub struct NodeLifecycleArgs {
    pub ctx: Arc<LeaderContext>,
    pub clock: SharedClock,
}

pub struct NodeLifecycleState {
    ctx: Arc<LeaderContext>,
    clock: SharedClock,
    health: NodeHealth,
    /// The writes in flight, one task per node; dropped (aborted) with
    /// the actor, so none outlives the leadership term.
    writes: JoinSet<()>,
    writes_allowed: Arc<tokio::sync::Semaphore>,
}

/// The detector's settings from the leader's.
pub fn health_settings(s: &super::LeaderSettings) -> HealthSettings {
    HealthSettings {
        grace: s.node_grace(),
        grace_max: s.node_grace_max(),
        period: s.node_check(),
        takeover_grace: s.takeover_grace(),
        confirm_ticks: s.node_confirm_ticks,
        action_retry: s.node_action_retry(),
    }
}

impl NodeLifecycleState {
    fn observe(&self) -> Option<Vec<NodeObservation>> {
        let cache = self.ctx.cache.read();
        if !cache.synced() {
            return None;
        }
        Some(
            cache
                .nodes
                .iter()
                .map(|(name, node)| NodeObservation {
                    name: name.clone(),
                    stored_ready: node_ready(node),
                    pods_bound: cache.pods_on(name).count(),
                    beat: self.ctx.heartbeats.last(name).map(|b| (b.at, b.interval)),
                })
                .collect(),
        )
    }

    /// Starts the commands of one step: per node in order, in a task of
    /// its own that reports back when done.
    fn execute(&mut self, myself: &ActorRef<NodeLifecycleMsg>, commands: Vec<NodeCommand>) {
        let mut by_node: BTreeMap<String, Vec<NodeCommand>> = BTreeMap::new();
        for c in commands {
            match &c {
                NodeCommand::MassSilence(Some((silent, total))) => {
                    tracing::warn!(silent, total, "most nodes are silent at once; no node is judged until they answer again")
                }
                NodeCommand::MassSilence(None) => tracing::info!("nodes answer again; judging resumes"),
                NodeCommand::MarkNotReady { node, .. }
                | NodeCommand::MarkReady { node, .. }
                | NodeCommand::Evict { node }
                | NodeCommand::Event { node, .. } => by_node.entry(node.clone()).or_default().push(c.clone()),
            }
        }
        for (node, commands) in by_node {
            let (ctx, me, allowed) = (self.ctx.clone(), myself.clone(), self.writes_allowed.clone());
            self.writes.spawn(async move {
                let _permit = allowed.acquire_owned().await;
                run_commands(&ctx, &node, commands).await;
                let _ = me.send_message(NodeLifecycleMsg::Done { node });
            });
        }
    }
}

async fn run_commands(ctx: &LeaderContext, node: &str, commands: Vec<NodeCommand>) {
    for c in commands {
        match c {
            NodeCommand::MarkNotReady { message, .. } => {
                tracing::warn!(node, reason = %message, "node lost");
                if let Err(e) = set_ready(ctx, node, false, &message).await {
                    tracing::warn!(node, error = %e, "could not mark the node NotReady; trying again");
                    return;
                }
            }
            NodeCommand::MarkReady { message, .. } => {
                if let Err(e) = set_ready(ctx, node, true, &message).await {
                    tracing::warn!(node, error = %e, "could not mark the node Ready; trying again");
                    return;
                }
                tracing::info!(node, "node is Ready");
            }
            NodeCommand::Evict { .. } => {
                let n = evict(ctx, node).await;
                if n > 0 {
                    tracing::info!(node, pods = n, "evicted the pods of a lost node");
                }
            }
            NodeCommand::Event { warning, reason, message, .. } => {
                let involved = ctx.cache.read().nodes.get(node).cloned();
                if let Some(involved) = involved {
                    ctx.registry.record_event(&involved, if warning { "Warning" } else { "Normal" }, reason, &message).await;
                }
            }
            NodeCommand::MassSilence(_) => {}
        }
    }
}

impl Actor for NodeLifecycle {
    type Msg = NodeLifecycleMsg;
    type State = NodeLifecycleState;
    type Arguments = NodeLifecycleArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeLifecycleMsg>,
        args: NodeLifecycleArgs,
    ) -> Result<NodeLifecycleState, ActorProcessingErr> {
        myself.send_message(NodeLifecycleMsg::Tick)?;
        let health = NodeHealth::new(health_settings(&args.ctx.settings));
        let allowed = Arc::new(tokio::sync::Semaphore::new(args.ctx.settings.write_concurrency_max.max(1)));
        Ok(NodeLifecycleState { ctx: args.ctx, clock: args.clock, health, writes: JoinSet::new(), writes_allowed: allowed })
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeLifecycleMsg>,
        msg: NodeLifecycleMsg,
        state: &mut NodeLifecycleState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeLifecycleMsg::Tick => {
                while state.writes.try_join_next().is_some() {}
                if let Some(observations) = state.observe() {
                    let commands = state.health.step(NodeInput::Tick(observations), state.clock.mono());
                    state.execute(&myself, commands);
                }
                // The next tick is asked for after this one is done, so a
                // slow tick delays the next instead of queueing more.
                myself.send_after(state.ctx.settings.node_check(), || NodeLifecycleMsg::Tick);
            }
            NodeLifecycleMsg::Done { node } => {
                let commands = state.health.step(NodeInput::Done { node }, state.clock.mono());
                state.execute(&myself, commands);
            }
        }
        Ok(())
    }
}
