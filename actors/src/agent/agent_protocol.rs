//! The agent protocol's messages: what a node agent sends a server member
//! over the peer port (JSON in the store's application frames), and what
//! it gets back.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// What travels on the wire from an agent.
#[derive(Serialize, Deserialize)]
pub enum AgentMessage {
    /// An agent-token holder takes node `node`, with a secret it chose and
    /// keeps: granted when no other agent holds the name, and again (a
    /// retry, a restart) to the one that does.
    Claim { node: String, secret: String },
    /// A node's request, with the credential that proves it is that node.
    AsNode { node: String, secret: String, request: AgentRequest },
    /// A request a member passes on (heartbeats relayed to the leader):
    /// members only.
    Relayed(AgentRequest),
}

/// What an agent asks of the control plane.
#[derive(Serialize, Deserialize, Debug)]
pub enum AgentRequest {
    RegisterNode(Value),
    UpdateNodeStatus {
        name: String,
        status: Value,
    },
    /// `relayed` is set when a member passes the beat on to the leader.
    Heartbeat {
        name: String,
        cpu_millis: i64,
        memory_bytes: i64,
        pods: i64,
        #[serde(default)]
        relayed: bool,
        /// Only ask for chaos orders; record no beat.
        #[serde(default)]
        probe_only: bool,
    },
    ListPods {
        node: String,
    },
    WatchPods {
        node: String,
        after: u64,
    },
    UpdatePodStatus {
        namespace: String,
        name: String,
        uid: String,
        status: Value,
    },
    FinalizePod {
        namespace: String,
        name: String,
        uid: String,
    },
    RecordEvent {
        involved: Value,
        event_type: String,
        reason: String,
        message: String,
    },
    /// One of `NETWORK_KINDS`, all namespaces.
    ListObjects {
        plural: String,
    },
    WatchObjects {
        plural: String,
        after: u64,
    },
    /// What a pod bound to this node needs before it starts: the Secrets
    /// and ConfigMaps it names, its tokens, the CA and where the API is.
    PodInputs {
        namespace: String,
        name: String,
        uid: String,
    },
    /// A fresh node certificate (user `system:node:NAME`) naming these
    /// addresses, for the agent's own endpoint.
    Certificate {
        addresses: Vec<String>,
    },
}

/// The answer; errors carry the agent error's kind so retries work the same
/// remotely as locally. No Debug: a certificate reply carries a key.
#[derive(Serialize, Deserialize)]
pub enum AgentReply {
    Done,
    Pods { pods: Vec<Value>, revision: u64 },
    Event { kind: String, object: Value },
    Beat { order: Option<String> },
    Failed { retryable: bool, gone: bool, expired: bool, message: String },
    Certificate { ca_pem: String, cert_pem: String, key_pem: String },
    PodInputs(Box<super::pod_inputs::PodInputs>),
}
