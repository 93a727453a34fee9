//! `flotilla token create SERVICEACCOUNT -n NS`: asks the API for a
//! ServiceAccount token (a TokenRequest, as `kubectl create token` does)
//! and prints it.

use clap::Subcommand;
use serde_json::{json, Value};

use crate::client::ApiClient;

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Print a signed, expiring token for a ServiceAccount.
    Create {
        /// The ServiceAccount.
        service_account: String,
        /// Its namespace (default: "default").
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// How long the token lives: 10m to 48h, e.g. 30m, 1h (default 1h).
        #[arg(long, default_value = "1h")]
        duration: String,
        /// Who the token is for (repeatable; default: this API).
        #[arg(long = "audience")]
        audiences: Vec<String>,
    },
}

pub async fn run(client: &ApiClient, command: TokenCommand) -> Result<i32, String> {
    let TokenCommand::Create { service_account, namespace, duration, audiences } = command;
    let ttl = crate::cmd_kubeconfig::parse_ttl(&duration).map_err(|e| format!("--duration: {e}"))?;
    let ns = namespace.unwrap_or_else(|| "default".into());
    let mut spec = json!({"expirationSeconds": ttl.as_secs()});
    if !audiences.is_empty() {
        spec["audiences"] = json!(audiences);
    }
    let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec});
    let path = format!("/api/v1/namespaces/{ns}/serviceaccounts/{service_account}/token");
    let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
    let answer = client.call(reqwest::Method::POST, &path, false, Some(("application/json", body))).await.map_err(|e| e.to_string())?;
    let token = answer.pointer("/status/token").and_then(Value::as_str).ok_or("the server's answer holds no token")?;
    println!("{token}");
    Ok(0)
}
