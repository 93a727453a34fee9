//! `flotilla token create SERVICEACCOUNT -n NS`: asks the API for a
//! ServiceAccount token (a TokenRequest, as `kubectl create token` does)
//! and prints it. `flotilla token rotate`: replaces the agent token that
//! new nodes join with, over the peer port with the server token.

use clap::{Args, Subcommand};
use flotilla_raft::member::AGENT_TOKEN_KEY;
use flotilla_raft::tls::{JoinToken, TokenRole};
use flotilla_raft::StoreClient;
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
    /// Replace the agent token with a new random one and print it. Nodes
    /// that have joined keep working (they hold their own credentials);
    /// new nodes need the new token; the old one admits nobody.
    Rotate(RotateArgs),
}

#[derive(Args)]
pub struct RotateArgs {
    /// Member(s) to talk to, comma-separated; tried in order.
    #[arg(long, default_value = "127.0.0.1:7400", value_delimiter = ',')]
    peer: Vec<String>,
    /// The server token (else $FLOTILLA_TOKEN, else ./flotilla-data/join-token).
    #[arg(long, env = "FLOTILLA_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Stores a new random agent token for `server`'s cluster through
/// `client` (which must hold the server token) and answers it.
pub async fn rotate_agent_token(client: &StoreClient, server: &JoinToken) -> Result<JoinToken, flotilla_raft::StoreError> {
    let new = server.new_agent();
    // The client's session makes a retried put apply once.
    client.put(AGENT_TOKEN_KEY, new.secret.as_bytes()).await?;
    Ok(new)
}

pub async fn rotate(args: RotateArgs) -> Result<i32, String> {
    let token = crate::cmd_store::server_token(args.token.as_deref())?;
    let server = JoinToken::parse(&token).map_err(|e| format!("--token: {e}"))?;
    if server.role != TokenRole::Server {
        return Err("that is the agent token; rotating it takes the server token (DATA_DIR/join-token on a server)".into());
    }
    let client = StoreClient::new(args.peer, &token).map_err(|e| e.to_string())?;
    let new = rotate_agent_token(&client, &server).await.map_err(|e| format!("storing the new agent token: {e}"))?;
    eprintln!(
        "agent token rotated: nodes that have joined keep working; new nodes join with the token below, \
         which every server also writes to DATA_DIR/agent-token. The old token admits nobody now."
    );
    println!("{new}");
    Ok(0)
}

pub async fn run(client: &ApiClient, command: TokenCommand) -> Result<i32, String> {
    let TokenCommand::Create { service_account, namespace, duration, audiences } = command else {
        return Err("rotate talks to the peer port, not the API".into());
    };
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
