//! `flotilla chaos`: break things on purpose. Node orders (kill-node,
//! partition, heal) are written as an annotation on the Node, which the
//! node's agent reads from its next heartbeat reply (within about 200 ms);
//! kill-pod annotates the pod, and its agent kills the pod's containers as
//! if they crashed. Each prints what it ordered and when; `flotilla events`
//! shows how the cluster responds.

use flotilla_actors::agent::chaos_orders::{ChaosAction, ChaosOrder, CHAOS_NODE_ANNOTATION};
use flotilla_actors::agent::pod_actor::CHAOS_KILL_ANNOTATION;
use flotilla_actors::model::object;
use serde_json::json;

use crate::client::ApiClient;

#[derive(clap::Subcommand)]
pub enum ChaosCommand {
    /// The node's agent stops as if its machine died (containers killed too).
    KillNode { name: String },
    /// Kill a pod's containers as if they crashed; its restart policy applies.
    KillPod {
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
    },
    /// Drop the node agent's traffic to every server.
    Partition { name: String },
    /// Restore a partitioned node's traffic.
    Heal { name: String },
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub async fn run(client: &ApiClient, command: ChaosCommand) -> Result<i32, String> {
    let now = unix_ms();
    let (path, patch, what) = match &command {
        ChaosCommand::KillPod { name, namespace } => (
            format!("/api/v1/namespaces/{namespace}/pods/{name}"),
            json!({"metadata": {"annotations": {CHAOS_KILL_ANNOTATION: now.to_string()}}}),
            format!("kill-pod {namespace}/{name}: its agent kills the containers; the restart policy brings them back"),
        ),
        ChaosCommand::KillNode { name } | ChaosCommand::Partition { name } | ChaosCommand::Heal { name } => {
            let (action, effect) = match command {
                ChaosCommand::KillNode { .. } => (ChaosAction::KillNode, "the agent and its containers stop as if the machine died"),
                ChaosCommand::Partition { .. } => (ChaosAction::Partition, "the agent's traffic to every server is dropped"),
                _ => (ChaosAction::Heal, "the agent's traffic to servers is restored"),
            };
            let order = ChaosOrder { action, issued_unix_ms: now };
            (
                format!("/api/v1/nodes/{name}"),
                json!({"metadata": {"annotations": {CHAOS_NODE_ANNOTATION: order.render()}}}),
                format!("{} node/{name}: {effect} (on its next heartbeat)", order.render().split(' ').next().unwrap_or_default()),
            )
        }
    };
    let body = serde_json::to_vec(&patch).unwrap_or_default();
    client
        .call(reqwest::Method::PATCH, &path, false, Some(("application/merge-patch+json", body)))
        .await
        .map_err(|e| format!("chaos: {}", e.message))?;
    let at = object::timestamp(std::time::UNIX_EPOCH + std::time::Duration::from_millis(now));
    println!("{at} ordered {what}");
    println!("watch the response: flotilla events -w, flotilla get pods -o wide -w");
    Ok(0)
}
