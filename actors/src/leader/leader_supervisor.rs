//! LeaderSupervisor: one per server. While this member is the Raft leader
//! it runs the cluster cache, the Scheduler, the NodeLifecycle and the
//! ControllerSupervisor; when leadership moves away it stops them all, and
//! the new leader's supervisor starts its own, which re-read the store and
//! reconcile from there. Failed children are restarted with backoff.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::cache::ClusterCache;
use super::controller::{ControllerActor, ControllerArgs, LeaderContext, ReconcilerFactory};
use super::controller_supervisor::{ControllerSupervisor, ControllerSupervisorArgs};
use super::node_lifecycle::{NodeLifecycle, NodeLifecycleArgs};
use super::settings::LeaderSettings;
use super::{
    deployment_controller, endpoints_controller, gc, namespace_controller, node_ipam_controller, replicaset_controller, scheduler,
};
use crate::model::heartbeats::Heartbeats;
use crate::registry::Registry;

/// How often leadership is looked at (well under one election timeout).
const LEADERSHIP_CHECK: Duration = Duration::from_millis(50);

/// The controllers every leader runs.
pub fn controllers() -> Vec<(&'static str, ReconcilerFactory)> {
    vec![
        ("replicaset-controller", replicaset_controller::make),
        ("deployment-controller", deployment_controller::make),
        ("endpoints-controller", endpoints_controller::make),
        ("garbage-collector", gc::make),
        ("node-ipam-controller", node_ipam_controller::make),
        ("namespace-controller", namespace_controller::make),
    ]
}

pub struct LeaderSupervisor;

pub enum LeaderMsg {
    Check,
    /// Restart a failed child if still leading (the term guards against
    /// restarting into a later term's children).
    Restart {
        term: u64,
        child: ChildKind,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildKind {
    Scheduler,
    Nodes,
    Controllers,
}

pub struct LeaderArgs {
    pub registry: Registry,
    pub heartbeats: Heartbeats,
    pub settings: LeaderSettings,
}

struct Leading {
    term: u64,
    ctx: Arc<LeaderContext>,
    children: Vec<(ChildKind, ActorCell)>,
    failures: u32,
}

pub struct LeaderState {
    args: LeaderArgs,
    leading: Option<Leading>,
    terms: u64,
}

impl LeaderState {
    async fn spawn_child(&mut self, myself: &ActorRef<LeaderMsg>, kind: ChildKind) -> Result<(), ActorProcessingErr> {
        let Some(leading) = self.leading.as_mut() else { return Ok(()) };
        let ctx = leading.ctx.clone();
        let cell = match kind {
            ChildKind::Scheduler => {
                let args = ControllerArgs { make: scheduler::make, ctx: ctx.clone(), resync: ctx.settings.resync() };
                Actor::spawn_linked(None, ControllerActor, args, myself.get_cell()).await?.0.get_cell()
            }
            ChildKind::Nodes => {
                let args = NodeLifecycleArgs { ctx: ctx.clone(), clock: ctx.clock.clone() };
                Actor::spawn_linked(None, NodeLifecycle, args, myself.get_cell()).await?.0.get_cell()
            }
            ChildKind::Controllers => {
                let args = ControllerSupervisorArgs { ctx: ctx.clone(), controllers: controllers() };
                Actor::spawn_linked(None, ControllerSupervisor, args, myself.get_cell()).await?.0.get_cell()
            }
        };
        leading.children.push((kind, cell));
        Ok(())
    }

    async fn start_leading(&mut self, myself: &ActorRef<LeaderMsg>) -> Result<(), ActorProcessingErr> {
        self.terms += 1;
        let ctx = Arc::new(LeaderContext {
            registry: self.args.registry.clone(),
            cache: ClusterCache::start(self.args.registry.clone()),
            heartbeats: self.args.heartbeats.clone(),
            settings: self.args.settings.clone(),
            clock: self.args.heartbeats.clock(),
        });
        self.leading = Some(Leading { term: self.terms, ctx, children: Vec::new(), failures: 0 });
        for kind in [ChildKind::Nodes, ChildKind::Scheduler, ChildKind::Controllers] {
            self.spawn_child(myself, kind).await?;
        }
        tracing::info!(member = self.args.registry.member().id(), "leading: scheduler, node lifecycle and controllers started");
        Ok(())
    }

    fn stop_leading(&mut self) {
        if let Some(leading) = self.leading.take() {
            for (_, cell) in leading.children {
                cell.stop(Some("leadership moved".into()));
            }
            tracing::info!(member = self.args.registry.member().id(), "no longer leading: leader actors stopped");
        }
    }
}

impl Actor for LeaderSupervisor {
    type Msg = LeaderMsg;
    type State = LeaderState;
    type Arguments = LeaderArgs;

    async fn pre_start(&self, myself: ActorRef<LeaderMsg>, args: LeaderArgs) -> Result<LeaderState, ActorProcessingErr> {
        // Re-armed when handled (not an interval), so a supervisor slowed
        // down by a start has one check waiting, not a backlog of them.
        myself.send_after(LEADERSHIP_CHECK, || LeaderMsg::Check);
        Ok(LeaderState { args, leading: None, terms: 0 })
    }

    async fn post_stop(&self, _myself: ActorRef<LeaderMsg>, state: &mut LeaderState) -> Result<(), ActorProcessingErr> {
        state.stop_leading();
        Ok(())
    }

    async fn handle(&self, myself: ActorRef<LeaderMsg>, msg: LeaderMsg, state: &mut LeaderState) -> Result<(), ActorProcessingErr> {
        match msg {
            LeaderMsg::Check => {
                myself.send_after(LEADERSHIP_CHECK, || LeaderMsg::Check);
                let leader = state.args.registry.member().is_leader();
                match (leader, state.leading.is_some()) {
                    (true, false) => state.start_leading(&myself).await?,
                    (false, true) => state.stop_leading(),
                    _ => {}
                }
            }
            LeaderMsg::Restart { term, child } => {
                if state.leading.as_ref().is_some_and(|l| l.term == term && !l.children.iter().any(|(k, _)| *k == child)) {
                    state.spawn_child(&myself, child).await?;
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<LeaderMsg>,
        evt: SupervisionEvent,
        state: &mut LeaderState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(cell, reason) = evt else { return Ok(()) };
        let backoff = state.args.settings.restart_backoff();
        let Some(leading) = state.leading.as_mut() else { return Ok(()) };
        let Some(pos) = leading.children.iter().position(|(_, c)| c.get_id() == cell.get_id()) else { return Ok(()) };
        let (kind, _) = leading.children.remove(pos);
        let delay = backoff.delay(leading.failures);
        leading.failures += 1;
        tracing::warn!(child = ?kind, reason = %reason, delay_ms = delay.as_millis() as u64, "leader child failed; restarting after backoff");
        let term = leading.term;
        myself.send_after(delay, move || LeaderMsg::Restart { term, child: kind });
        Ok(())
    }
}
