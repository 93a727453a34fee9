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
use tokio::task::JoinSet;

use super::cache::{CacheState, Kind};
use super::command::{Command, Now};
use super::controller::LeaderContext;
use super::executor::{run_one, ExecLimits};
use super::node_health::{HealthSettings, NodeCommand, NodeHealth, NodeInput, NodeObservation};
use crate::clock::SharedClock;
use crate::model::heartbeats::Heartbeats;
pub use crate::model::kinds::node::node_ready;

/// The store writes one decision of the failure detector comes to, on
/// the cache as it is now (an eviction takes the pods bound at the time).
pub fn writes(c: &NodeCommand, cache: &CacheState, now: &Now) -> Vec<Command> {
    match c {
        NodeCommand::MarkNotReady { node, message } | NodeCommand::MarkReady { node, message } => {
            let ready = matches!(c, NodeCommand::MarkReady { .. });
            vec![Command::SetNodeReady { node: node.clone(), ready, message: message.clone(), at: now.wall.clone() }]
        }
        NodeCommand::Evict { node } => {
            let items: Vec<(String, String)> = cache.pods_on(node).map(|p| (p.namespace.clone(), p.name.clone())).collect();
            if items.is_empty() {
                vec![]
            } else {
                vec![Command::DeleteNow { kind: Kind::Pods, items }]
            }
        }
        NodeCommand::Event { node, warning, reason, message } => match cache.nodes.get(node) {
            Some(involved) => {
                vec![Command::Event { involved: involved.clone(), warning: *warning, reason: reason.to_string(), message: message.clone() }]
            }
            None => vec![],
        },
        NodeCommand::MassSilence(_) => vec![],
    }
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

/// What the failure detector is told of every node: the cache's view and
/// the node's last heartbeat.
pub fn observations(cache: &CacheState, heartbeats: &Heartbeats) -> Vec<NodeObservation> {
    cache
        .nodes
        .iter()
        .map(|(name, node)| NodeObservation {
            name: name.clone(),
            stored_ready: node_ready(node),
            pods_bound: cache.pods_on(name).count(),
            beat: heartbeats.last(name).map(|b| (b.at, b.interval)),
        })
        .collect()
}

impl NodeLifecycleState {
    fn observe(&self) -> Option<Vec<NodeObservation>> {
        let cache = self.ctx.cache.read();
        cache.synced().then(|| observations(&cache, &self.ctx.heartbeats))
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

/// Runs one node's commands in order; a write that fails ends the run
/// (the detector decides again at its next retry).
async fn run_commands(ctx: &LeaderContext, node: &str, commands: Vec<NodeCommand>) {
    let limits = ExecLimits::from_settings(&ctx.settings);
    for c in commands {
        let planned = writes(&c, &ctx.cache.read(), &Now::on(ctx.clock.as_ref()));
        for w in &planned {
            if let Err(e) = run_one(&ctx.registry, w, limits).await {
                tracing::warn!(node, write = %w.describe(), error = %e, "a node lifecycle write failed; trying again");
                return;
            }
        }
        match &c {
            NodeCommand::MarkNotReady { message, .. } => tracing::warn!(node, reason = %message, "node lost"),
            NodeCommand::MarkReady { .. } => tracing::info!(node, "node is Ready"),
            NodeCommand::Evict { .. } => {
                if let Some(Command::DeleteNow { items, .. }) = planned.first() {
                    tracing::info!(node, pods = items.len(), "evicted the pods of a lost node");
                }
            }
            NodeCommand::Event { .. } | NodeCommand::MassSilence(_) => {}
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
