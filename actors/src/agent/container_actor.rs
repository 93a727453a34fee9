//! ContainerActor: owns one container. It starts it in `pre_start` (a
//! failed start fails the spawn), waits for it to exit, and then fails, so
//! its supervisor (the PodActor) decides about a restart. Asked to stop, it
//! stops the container gracefully and terminates cleanly instead.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::pod_actor::PodMsg;
use crate::runtime::{ContainerRuntime, ContainerSpec, Exit};

/// How a container actor ends when its container exits on its own.
#[derive(Debug, thiserror::Error)]
#[error("container {name} exited with code {}", exit.code)]
pub struct ContainerExited {
    pub name: String,
    pub exit: Exit,
}

pub struct ContainerActor;

pub struct ContainerArgs {
    pub index: usize,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub spec: ContainerSpec,
    pub pod: ActorRef<PodMsg>,
    /// A container of this pod found running at agent start-up.
    pub adopt: Option<String>,
}

pub enum ContainerMsg {
    Exited(Exit),
    Stop { grace: Duration },
}

pub struct ContainerState {
    runtime: Arc<dyn ContainerRuntime>,
    name: String,
    id: String,
    stopping: bool,
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
        let _ = args.pod.send_message(PodMsg::ContainerStarted { index: args.index, id: id.clone() });
        let runtime = args.runtime.clone();
        let waiter_id = id.clone();
        let me = myself.clone();
        tokio::spawn(async move {
            let exit = runtime.wait(&waiter_id).await.unwrap_or_else(|e| Exit {
                code: 128,
                reason: "Error".into(),
                message: format!("lost track of the container: {e}"),
            });
            let _ = me.send_message(ContainerMsg::Exited(exit));
        });
        Ok(ContainerState { runtime: args.runtime, name: args.spec.name, id, stopping: false })
    }

    async fn handle(
        &self,
        myself: ActorRef<ContainerMsg>,
        msg: ContainerMsg,
        state: &mut ContainerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ContainerMsg::Exited(exit) => {
                if state.stopping {
                    myself.stop(Some(format!("stopped with code {}", exit.code)));
                    return Ok(());
                }
                Err(Box::new(ContainerExited { name: state.name.clone(), exit }))
            }
            ContainerMsg::Stop { grace } => {
                state.stopping = true;
                let (runtime, id) = (state.runtime.clone(), state.id.clone());
                // Stopping can take the whole grace period; do not block the mailbox.
                tokio::spawn(async move {
                    if let Err(e) = runtime.stop(&id, grace).await {
                        tracing::warn!(container = %id, error = %e, "stop failed");
                    }
                });
                Ok(())
            }
        }
    }
}
