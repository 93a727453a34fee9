//! `flotilla secrets-encrypt status | rotate-keys`: shows the data keys
//! that seal Secrets at rest and rotates them, through the API (an admin's
//! kubeconfig).

use clap::Subcommand;
use serde_json::Value;

use crate::api::secrets_encryption::{ROTATE_PATH, STATUS_PATH};
use crate::client::ApiClient;

#[derive(Subcommand)]
pub enum SecretsEncryptCommand {
    /// The data keys, which one seals new Secrets, and how many each seals.
    Status,
    /// Make a new data key, seal every Secret again under it and delete
    /// the old keys.
    RotateKeys,
}

pub async fn run(client: &ApiClient, command: SecretsEncryptCommand) -> Result<i32, String> {
    match command {
        SecretsEncryptCommand::Status => {
            let status = client.get(STATUS_PATH, false).await.map_err(|e| e.to_string())?;
            println!("{:<22}  {:<14}  SECRETS", "KEY", "STATE");
            for key in status.get("keys").and_then(Value::as_array).into_iter().flatten() {
                let field = |f: &str| key.get(f).map(|v| v.as_str().map_or_else(|| v.to_string(), String::from)).unwrap_or_default();
                println!("{:<22}  {:<14}  {}", field("name"), field("state"), field("values"));
            }
            Ok(0)
        }
        SecretsEncryptCommand::RotateKeys => {
            let done = client.call(reqwest::Method::POST, ROTATE_PATH, false, None).await.map_err(|e| e.to_string())?;
            let field = |f: &str| done.get(f).map(|v| v.as_str().map_or_else(|| v.to_string(), String::from)).unwrap_or_default();
            println!(
                "Secrets are sealed under data key {}: {} rewritten, {} old key(s) deleted",
                field("key"),
                field("resealed"),
                field("retired")
            );
            Ok(0)
        }
    }
}
