//! The loop every leader-side reconciler runs in: a ControllerActor wakes
//! when the cache changes (coalesced: one pending wake at a time) and on a
//! resync period, runs one reconcile pass, and after a pass that wrote
//! waits until the cache has seen that write. A pass that fails makes the
//! actor fail; its supervisor restarts it after a capped backoff, with
//! fresh state, and the next pass starts from what the store says.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::cache::{ClusterCache, Kind};
use super::settings::LeaderSettings;
use crate::agent::control_plane::Heartbeats;
use crate::registry::{Registry, RegistryError};
use crate::tasks::OwnedTask;

/// What every leader-side actor works with.
pub struct LeaderContext {
    pub registry: Registry,
    pub cache: Arc<ClusterCache>,
    pub heartbeats: Heartbeats,
    pub settings: LeaderSettings,
    /// The clock heartbeats are timed on, and decisions made by.
    pub clock: crate::clock::SharedClock,
}

/// Why a reconcile pass failed.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A store or admission error the next pass may not hit.
    #[error("{controller}: {source}")]
    Registry {
        controller: &'static str,
        #[source]
        source: RegistryError,
    },
}

/// The result of a pass.
#[derive(Debug, Default, Clone)]
pub struct PassOutcome {
    /// The latest revision the pass wrote, per kind, to wait for (a
    /// kind's feed only moves when that kind changes).
    pub wrote: Vec<(Kind, u64)>,
    /// Work was left for another pass (a batch limit was reached).
    pub more: bool,
}

impl PassOutcome {
    /// Remembers a write of the pass.
    pub fn note_write(&mut self, kind: Kind, revision: u64) {
        match self.wrote.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, r)) => *r = (*r).max(revision),
            None => self.wrote.push((kind, revision)),
        }
    }
}

/// One controller's decision loop, without the actor plumbing.
#[async_trait::async_trait]
pub trait Reconciler: Send + 'static {
    fn name(&self) -> &'static str;
    /// One pass. `resync` asks to look at everything, not only what the
    /// cache marked as changed.
    async fn reconcile(&mut self, ctx: &LeaderContext, resync: bool) -> Result<PassOutcome, ControllerError>;
}

/// Makes a reconciler; called again on every restart.
pub type ReconcilerFactory = fn() -> Box<dyn Reconciler>;

pub struct ControllerActor;

pub enum ControllerMsg {
    Wake,
    Resync,
}

pub struct ControllerArgs {
    pub make: ReconcilerFactory,
    pub ctx: Arc<LeaderContext>,
    pub resync: Duration,
}

pub struct ControllerState {
    reconciler: Box<dyn Reconciler>,
    ctx: Arc<LeaderContext>,
    wake_pending: Arc<AtomicBool>,
    _forwarder: OwnedTask,
    resync: Duration,
}

impl Actor for ControllerActor {
    type Msg = ControllerMsg;
    type State = ControllerState;
    type Arguments = ControllerArgs;

    async fn pre_start(&self, myself: ActorRef<ControllerMsg>, args: ControllerArgs) -> Result<ControllerState, ActorProcessingErr> {
        let reconciler = (args.make)();
        let wake_pending = Arc::new(AtomicBool::new(true));
        let mut changes = args.ctx.cache.subscribe();
        let me = myself.clone();
        let pending = wake_pending.clone();
        let forwarder = OwnedTask::spawn(async move {
            while changes.changed().await.is_ok() {
                if !pending.swap(true, Ordering::AcqRel) && me.send_message(ControllerMsg::Wake).is_err() {
                    return;
                }
            }
        });
        myself.send_message(ControllerMsg::Resync)?;
        tracing::info!(controller = reconciler.name(), "controller started");
        Ok(ControllerState { reconciler, ctx: args.ctx, wake_pending, _forwarder: forwarder, resync: args.resync })
    }

    async fn handle(
        &self,
        myself: ActorRef<ControllerMsg>,
        msg: ControllerMsg,
        state: &mut ControllerState,
    ) -> Result<(), ActorProcessingErr> {
        state.wake_pending.store(false, Ordering::Release);
        if matches!(msg, ControllerMsg::Resync) {
            // Asked for when one starts, so a slow pass never queues more.
            myself.send_after(state.resync, || ControllerMsg::Resync);
        }
        if !state.ctx.cache.read().synced() {
            // Not listed yet: the first change after the lists wakes us.
            return Ok(());
        }
        let resync = matches!(msg, ControllerMsg::Resync);
        let name = state.reconciler.name();
        let span = tracing::debug_span!("reconcile", controller = name, resync);
        let _enter = span.enter();
        let outcome = state.reconciler.reconcile(&state.ctx, resync).await?;
        for &(kind, revision) in &outcome.wrote {
            if !state.ctx.cache.wait_for(kind, revision, state.ctx.settings.cache_catch_up()).await {
                tracing::warn!(controller = name, revision, "the cache did not catch up with our own write in time");
            }
        }
        if outcome.more && !state.wake_pending.swap(true, Ordering::AcqRel) {
            myself.send_message(ControllerMsg::Wake)?;
        }
        Ok(())
    }
}

/// Restarting failed children waits by the shared back-off.
pub type RestartBackoff = crate::backoff::Backoff;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_remembers_its_latest_pod_write() {
        let mut o = PassOutcome::default();
        o.note_write(Kind::ReplicaSets, 10);
        o.note_write(Kind::Pods, 12);
        o.note_write(Kind::Pods, 11);
        assert_eq!(o.wrote, vec![(Kind::ReplicaSets, 10), (Kind::Pods, 12)]);
    }
}
