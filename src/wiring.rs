//! Wiring shared by `flotilla server`, `flotilla up`, the benchmarks and
//! the tests: the supervised leader side of a server member.

use flotilla_actors::agent::control_plane::Heartbeats;
use flotilla_actors::leader::leader_supervisor::LeaderMsg;
use flotilla_actors::leader::{LeaderArgs, LeaderSettings, LeaderSupervisor};
use flotilla_actors::Registry;
use ractor::{Actor, ActorRef};

/// Starts the LeaderSupervisor of this member: it runs the scheduler, node
/// lifecycle and controllers whenever the member leads.
pub async fn start_leader_supervisor(
    registry: Registry,
    heartbeats: Heartbeats,
    settings: LeaderSettings,
) -> Result<(ActorRef<LeaderMsg>, tokio::task::JoinHandle<()>), String> {
    let (actor, handle) = Actor::spawn(None, LeaderSupervisor, LeaderArgs { registry, heartbeats, settings })
        .await
        .map_err(|e| format!("the leader supervisor did not start: {e}"))?;
    Ok((actor, handle))
}
