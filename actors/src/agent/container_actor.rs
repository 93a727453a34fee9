//! ContainerActor: owns one container. It starts it in `pre_start` (a
//! failed start fails the spawn), waits for it to exit, and then stops,
//! leaving the exit in its final state for its supervisor (the PodActor),
//! which decides about a restart. Asked to stop, it stops the container
//! gracefully first. The actor fails only when something in it broke; the
//! container is then still there to be adopted, and nothing about it is
//! reported.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::probe::{check_network, Probe, ProbeAction, ProbeState};
use crate::runtime::{ContainerRuntime, ContainerSpec, Exit};
use crate::tasks::OwnedTask;

/// Grace given to a container whose liveness probe failed.
const LIVENESS_KILL_GRACE: Duration = Duration::from_secs(2);

pub struct ContainerActor;

/// What a container actor tells its pod while it runs (how it ended is
/// in its final state).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerReport {
    Started { index: usize, id: String, has_readiness: bool },
    Readiness { index: usize, ready: bool },
}

/// Where reports go: the pod actor turns them into its own messages, so
/// this actor does not depend on the pod actor's.
pub type ReportTo = Arc<dyn Fn(ContainerReport) + Send + Sync>;

pub struct ContainerArgs {
    pub index: usize,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub spec: ContainerSpec,
    pub pod: ReportTo,
    /// A container of this pod found running at agent start-up.
    pub adopt: Option<String>,
    pub liveness: Option<Probe>,
    pub readiness: Option<Probe>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Liveness,
    Readiness,
}

pub enum ContainerMsg {
    Exited(Exit),
    Stop { grace: Duration },
    Probe { kind: ProbeKind, healthy: bool },
}

pub struct ContainerState {
    runtime: Arc<dyn ContainerRuntime>,
    name: String,
    id: String,
    index: usize,
    pod: ReportTo,
    stopping: bool,
    liveness_failed: bool,
    /// The waiter, the probes and any stop in flight: they end with the actor.
    tasks: Vec<OwnedTask>,
    /// How the container ended, once it has: what the supervisor reads
    /// from the actor's final state.
    pub exited: Option<Exit>,
}

impl ContainerState {
    /// The container's id in the runtime.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Keeps a task of this actor's, forgetting the ones that are done.
    fn own(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.retain(|t| !t.is_finished());
        self.tasks.push(OwnedTask::spawn(task));
    }
}

/// Runs one probe every period and reports changes of verdict.
async fn probe_loop(kind: ProbeKind, probe: Probe, runtime: Arc<dyn ContainerRuntime>, id: String, me: ActorRef<ContainerMsg>) {
    tokio::time::sleep(probe.initial_delay).await;
    // Liveness is presumed until proven otherwise; readiness the opposite.
    let mut state = ProbeState::new(kind == ProbeKind::Liveness);
    loop {
        let ok = match &probe.action {
            ProbeAction::Exec(cmd) => match tokio::time::timeout(probe.timeout, runtime.exec(&id, cmd)).await {
                // The runtime is away (an engine restarting): no verdict on
                // the container either way.
                Ok(Err(crate::runtime::RuntimeError::Unavailable(_))) => {
                    tokio::time::sleep(probe.period).await;
                    continue;
                }
                result => matches!(result, Ok(Ok(0))),
            },
            network => match runtime.address(&id).await {
                Some(host) => check_network(network, &host, probe.timeout).await,
                None => true,
            },
        };
        if let Some(healthy) = state.record(ok, &probe) {
            if me.send_message(ContainerMsg::Probe { kind, healthy }).is_err() {
                return;
            }
        }
        tokio::time::sleep(probe.period).await;
    }
}

impl Actor for ContainerActor {
    type Msg = ContainerMsg;
    type State = ContainerState;
    type Arguments = ContainerArgs;

    async fn pre_start(&self, myself: ActorRef<ContainerMsg>, args: ContainerArgs) -> Result<ContainerState, ActorProcessingErr> {
        let id = match args.adopt {
            Some(id) => id,
            None => args.runtime.start(&args.spec).await?,
        };
        tracing::debug!(pod = %args.spec.pod_name, container = %args.spec.name, %id, "container running");
        let has_readiness = args.readiness.is_some();
        (args.pod)(ContainerReport::Started { index: args.index, id: id.clone(), has_readiness });
        let runtime = args.runtime.clone();
        let waiter_id = id.clone();
        let me = myself.clone();
        let waiter = OwnedTask::spawn(async move {
            let exit = runtime.wait(&waiter_id).await.unwrap_or_else(|e| Exit {
                code: 128,
                reason: "Error".into(),
                message: format!("lost track of the container: {e}"),
            });
            let _ = me.send_message(ContainerMsg::Exited(exit));
        });
        let mut tasks = vec![waiter];
        for (kind, probe) in [(ProbeKind::Liveness, args.liveness), (ProbeKind::Readiness, args.readiness)] {
            if let Some(probe) = probe {
                tasks.push(OwnedTask::spawn(probe_loop(kind, probe, args.runtime.clone(), id.clone(), myself.clone())));
            }
        }
        Ok(ContainerState {
            runtime: args.runtime,
            name: args.spec.name,
            id,
            index: args.index,
            pod: args.pod,
            stopping: false,
            liveness_failed: false,
            tasks,
            exited: None,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ContainerMsg>,
        msg: ContainerMsg,
        state: &mut ContainerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ContainerMsg::Exited(exit) => {
                let reason = format!("container {} exited with code {}", state.name, exit.code);
                state.exited = Some(if state.liveness_failed && !state.stopping {
                    Exit { code: exit.code, reason: "Error".into(), message: "liveness probe failed; the container was restarted".into() }
                } else {
                    exit
                });
                myself.stop(Some(reason));
                Ok(())
            }
            ContainerMsg::Stop { grace } => {
                state.stopping = true;
                let (runtime, id) = (state.runtime.clone(), state.id.clone());
                // Stopping can take the whole grace period; do not block the
                // mailbox. The task ends with this actor: if the actor goes
                // first, the pod actor stops the container itself.
                state.own(async move {
                    if let Err(e) = runtime.stop(&id, grace).await {
                        tracing::warn!(container = %id, error = %e, "stop failed");
                    }
                });
                Ok(())
            }
            ContainerMsg::Probe { kind: ProbeKind::Readiness, healthy } => {
                (state.pod)(ContainerReport::Readiness { index: state.index, ready: healthy });
                Ok(())
            }
            ContainerMsg::Probe { kind: ProbeKind::Liveness, healthy } => {
                if !healthy && !state.stopping && !state.liveness_failed {
                    state.liveness_failed = true;
                    tracing::info!(container = %state.name, "liveness probe failed; restarting the container");
                    let (runtime, id) = (state.runtime.clone(), state.id.clone());
                    state.own(async move {
                        let _ = runtime.stop(&id, LIVENESS_KILL_GRACE).await;
                    });
                }
                Ok(())
            }
        }
    }

    async fn post_stop(&self, _myself: ActorRef<ContainerMsg>, state: &mut ContainerState) -> Result<(), ActorProcessingErr> {
        state.tasks.clear();
        Ok(())
    }
}
