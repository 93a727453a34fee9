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

use super::cache::{CacheState, ClusterCache};
use super::command::{Command, Decision, Now, Outcome};
use super::executor::{execute, ClusterWriter, ExecLimits, Executed};
use super::settings::LeaderSettings;
use crate::model::addresses::NetworkPlan;
use crate::model::heartbeats::Heartbeats;
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
    /// A store or admission error the retry table says is not a race.
    #[error("{controller}: {source}")]
    Registry {
        controller: &'static str,
        #[source]
        source: RegistryError,
    },
}

/// What a step decides from.
pub struct StepInput<'a> {
    pub cache: &'a mut CacheState,
    pub settings: &'a LeaderSettings,
    /// Look at everything, not only what the cache marked as changed.
    pub resync: bool,
    pub now: &'a Now,
    /// The cluster's address plan (pod subnets come from it).
    pub network: &'a NetworkPlan,
}

/// One controller's decisions, without the actor plumbing or the I/O:
/// `step` reads the cache and returns the writes to make; the executor
/// makes them and `feedback` hears how each went.
pub trait Reconciler: Send + 'static {
    fn name(&self) -> &'static str;
    /// One pass.
    fn step(&mut self, input: StepInput<'_>) -> Decision;
    /// The outcome of each command of the last step, in order.
    fn feedback(&mut self, _commands: &[Command], _outcomes: &[Outcome]) {}
}

/// Makes a reconciler; called again on every restart.
pub type ReconcilerFactory = fn() -> Box<dyn Reconciler>;

/// One pass of `reconciler` against `writer`: step, execute, feed back.
/// What the server's controller actors and the simulation both run.
pub async fn run_pass(
    reconciler: &mut dyn Reconciler,
    cache: &std::sync::RwLock<CacheState>,
    writer: &dyn ClusterWriter,
    settings: &LeaderSettings,
    network: &NetworkPlan,
    resync: bool,
    now: &Now,
) -> Result<Pass, ControllerError> {
    let decision = {
        let mut s = cache.write().unwrap_or_else(|p| p.into_inner());
        reconciler.step(StepInput { cache: &mut s, settings, resync, now, network })
    };
    if decision.commands.is_empty() {
        return Ok(Pass { commands: vec![], executed: Executed { more: decision.more, ..Executed::default() } });
    }
    let mut executed = execute(writer, &decision.commands, ExecLimits::from_settings(settings))
        .await
        .map_err(|source| ControllerError::Registry { controller: reconciler.name(), source })?;
    reconciler.feedback(&decision.commands, &executed.outcomes);
    executed.more |= decision.more;
    Ok(Pass { commands: decision.commands, executed })
}

/// A pass: what it decided and what came of it.
pub struct Pass {
    pub commands: Vec<Command>,
    pub executed: Executed,
}

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
        let now = Now::on(state.ctx.clock.as_ref());
        let ctx = &state.ctx;
        let outcome =
            run_pass(state.reconciler.as_mut(), ctx.cache.state(), &ctx.registry, &ctx.settings, ctx.registry.network_plan(), resync, &now)
                .await?
                .executed;
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
