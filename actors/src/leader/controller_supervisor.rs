//! ControllerSupervisor: runs one ControllerActor per controller and
//! restarts one that fails after a capped, doubling backoff (reset when it
//! has run for a minute), so a controller that keeps failing cannot spin.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::controller::{ControllerActor, ControllerArgs, ControllerMsg, LeaderContext, ReconcilerFactory};

/// A controller that ran this long without failing starts its backoff over.
const BACKOFF_RESET: Duration = Duration::from_secs(60);

pub struct ControllerSupervisor;

pub enum ControllerSupervisorMsg {
    Start(usize),
}

pub struct ControllerSupervisorArgs {
    pub ctx: Arc<LeaderContext>,
    pub controllers: Vec<(&'static str, ReconcilerFactory)>,
}

struct Child {
    name: &'static str,
    make: ReconcilerFactory,
    actor: Option<ActorRef<ControllerMsg>>,
    failures: u32,
    started: Instant,
}

pub struct ControllerSupervisorState {
    ctx: Arc<LeaderContext>,
    children: Vec<Child>,
    by_actor: HashMap<ActorId, usize>,
}

impl Actor for ControllerSupervisor {
    type Msg = ControllerSupervisorMsg;
    type State = ControllerSupervisorState;
    type Arguments = ControllerSupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ControllerSupervisorMsg>,
        args: ControllerSupervisorArgs,
    ) -> Result<ControllerSupervisorState, ActorProcessingErr> {
        let children: Vec<Child> = args
            .controllers
            .into_iter()
            .map(|(name, make)| Child { name, make, actor: None, failures: 0, started: Instant::now() })
            .collect();
        for i in 0..children.len() {
            myself.send_message(ControllerSupervisorMsg::Start(i))?;
        }
        Ok(ControllerSupervisorState { ctx: args.ctx, children, by_actor: HashMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<ControllerSupervisorMsg>,
        msg: ControllerSupervisorMsg,
        state: &mut ControllerSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let ControllerSupervisorMsg::Start(i) = msg;
        let Some(child) = state.children.get_mut(i) else { return Ok(()) };
        if child.actor.is_some() {
            return Ok(());
        }
        let args = ControllerArgs { make: child.make, ctx: state.ctx.clone(), resync: state.ctx.settings.resync() };
        let (actor, _) = Actor::spawn_linked(None, ControllerActor, args, myself.get_cell()).await?;
        state.by_actor.insert(actor.get_id(), i);
        child.actor = Some(actor);
        child.started = Instant::now();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ControllerSupervisorMsg>,
        evt: SupervisionEvent,
        state: &mut ControllerSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (id, failure) = match &evt {
            SupervisionEvent::ActorFailed(cell, reason) => (cell.get_id(), Some(reason.to_string())),
            SupervisionEvent::ActorTerminated(cell, _, _) => (cell.get_id(), None),
            _ => return Ok(()),
        };
        let Some(i) = state.by_actor.remove(&id) else { return Ok(()) };
        let child = &mut state.children[i];
        child.actor = None;
        if child.started.elapsed() > BACKOFF_RESET {
            child.failures = 0;
        }
        let delay = state.ctx.settings.restart_backoff().delay(child.failures);
        child.failures += 1;
        tracing::warn!(
            controller = child.name,
            reason = failure.as_deref().unwrap_or("stopped"),
            delay_ms = delay.as_millis() as u64,
            "controller stopped; restarting after backoff"
        );
        myself.send_after(delay, move || ControllerSupervisorMsg::Start(i));
        Ok(())
    }
}
