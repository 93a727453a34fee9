//! `flotilla rollout status|undo deployment NAME`, as kubectl has them.

use std::time::{Duration, Instant};

use flotilla_actors::leader::rollout::{rollout_status, undo_template};
use flotilla_actors::model::object;
use serde_json::{json, Value};

use crate::client::ApiClient;

#[derive(clap::Subcommand)]
pub enum RolloutCommand {
    /// Wait until the deployment's rollout finishes (or the timeout passes).
    Status {
        kind: String,
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// Print the state once instead of waiting.
        #[arg(short = 'w', long = "watch", default_value_t = true, action = clap::ArgAction::Set)]
        watch: bool,
    },
    /// Roll back to the previous revision (or --to-revision N).
    Undo {
        kind: String,
        name: String,
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        #[arg(long)]
        to_revision: Option<i64>,
    },
}

fn check_kind(kind: &str) -> Result<(), String> {
    match kind {
        "deployment" | "deployments" | "deploy" | "deployment.apps" => Ok(()),
        other => Err(format!("rollout works on deployments, not {other:?}: flotilla rollout status deployment NAME")),
    }
}

pub async fn run(client: &ApiClient, command: RolloutCommand) -> Result<i32, String> {
    match command {
        RolloutCommand::Status { kind, name, namespace, timeout, watch } => {
            check_kind(&kind)?;
            let path = format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}");
            let deadline = Instant::now() + Duration::from_secs(timeout);
            let mut last = String::new();
            loop {
                let d = client.get(&path, false).await.map_err(|e| e.message)?;
                let (done, message) = rollout_status(&d);
                if message != last {
                    println!("{message}");
                    last = message;
                }
                if done {
                    return Ok(0);
                }
                if !watch {
                    return Ok(1);
                }
                if Instant::now() > deadline {
                    return Err(format!("timed out after {timeout} s waiting for the rollout of deployment {name:?}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        RolloutCommand::Undo { kind, name, namespace, to_revision } => {
            check_kind(&kind)?;
            let path = format!("/apis/apps/v1/namespaces/{namespace}/deployments/{name}");
            let d = client.get(&path, false).await.map_err(|e| e.message)?;
            let uid = object::uid(&d).unwrap_or_default().to_string();
            let list = client.get(&format!("/apis/apps/v1/namespaces/{namespace}/replicasets"), false).await.map_err(|e| e.message)?;
            let sets: Vec<Value> = list["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|rs| object::controller_ref(rs).and_then(|r| r.get("uid")).and_then(Value::as_str) == Some(uid.as_str()))
                .cloned()
                .collect();
            let template = undo_template(&d, &sets, to_revision).map_err(|e| e.to_string())?;
            let patch = json!({"metadata": {"resourceVersion": d["metadata"]["resourceVersion"]}, "spec": {"template": template}});
            let body = serde_json::to_vec(&patch).unwrap_or_default();
            client
                .call(reqwest::Method::PATCH, &path, false, Some(("application/merge-patch+json", body)))
                .await
                .map_err(|e| format!("deployment {name:?}: {}", e.message))?;
            println!("deployment.apps/{name} rolled back");
            Ok(0)
        }
    }
}
