//! The agent protocol over the peer port: a remote node agent reaches the
//! control plane through any server member with the join token
//! ([`RemoteControlPlane`]); each member answers with [`AgentService`],
//! which is the in-process control plane behind the store's app hook.
//! Given several servers, the agent moves to the next when one goes away.

use std::sync::{Arc, Weak};

use flotilla_raft::app::{AppFrames, AppHandler, APP_STREAM_QUEUE_MAX};
use flotilla_raft::{StoreClient, StoreError};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use super::control_plane::{AgentError, ControlPlane, LocalControlPlane, NodeUsage};
use super::heartbeat_relay::{HeartbeatRelay, SendBeat};
use crate::limits::{HEARTBEAT_RELAYS_IN_FLIGHT_MAX, HEARTBEAT_RELAY_NODES_MAX, HEARTBEAT_RELAY_TIMEOUT};
use crate::registry::{WatchEvent, WatchEventKind};

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
}

/// The answer; errors carry the agent error's kind so retries work the same
/// remotely as locally.
#[derive(Serialize, Deserialize, Debug)]
pub enum AgentReply {
    Done,
    Pods { pods: Vec<Value>, revision: u64 },
    Event { kind: String, object: Value },
    Beat { order: Option<String> },
    Failed { retryable: bool, gone: bool, expired: bool, message: String },
}

fn failed(e: AgentError) -> AgentReply {
    AgentReply::Failed {
        retryable: matches!(e, AgentError::Unavailable(_)),
        gone: matches!(e, AgentError::Gone(_)),
        expired: matches!(e, AgentError::Expired(_)),
        message: e.to_string(),
    }
}

fn encode(reply: &AgentReply) -> Vec<u8> {
    serde_json::to_vec(reply).unwrap_or_default()
}

/// Deadline of one heartbeat call to one server.
const HEARTBEAT_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(300);
/// Deadline of any other agent call to one server.
const AGENT_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves agents on a server member. Heartbeats are kept where they
/// arrive and relayed to the leader, whose failure detector judges them.
pub struct AgentService {
    local: LocalControlPlane,
    /// Weak: the member holds this service, so a strong reference here
    /// would keep both (and the relay's task) alive for ever.
    member: Option<Weak<flotilla_raft::Member>>,
    relay: Option<HeartbeatRelay>,
}

impl AgentService {
    /// Serves agents through `local`; with a `member`, beats that reach it
    /// while it follows are relayed to the leader.
    pub fn new(local: LocalControlPlane, member: Option<Arc<flotilla_raft::Member>>) -> Self {
        let member = member.as_ref().map(Arc::downgrade);
        let relay = member.clone().map(|member| {
            let send: SendBeat = Arc::new(move |name, usage: NodeUsage| {
                let member = member.clone();
                Box::pin(async move {
                    let member = member.upgrade().ok_or("the member has stopped")?;
                    let request = AgentRequest::Heartbeat {
                        name,
                        cpu_millis: usage.cpu_millis,
                        memory_bytes: usage.memory_bytes,
                        pods: usage.pods,
                        relayed: true,
                        probe_only: false,
                    };
                    let body = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
                    member.call_leader_app(body, HEARTBEAT_RELAY_TIMEOUT).await.map(|_| ()).map_err(|e| e.to_string())
                })
            });
            HeartbeatRelay::start(send, HEARTBEAT_RELAYS_IN_FLIGHT_MAX, HEARTBEAT_RELAY_NODES_MAX)
        });
        AgentService { local, member, relay }
    }

    fn relay_heartbeat(&self, name: String, usage: NodeUsage) {
        let (Some(member), Some(relay)) = (self.member.as_ref().and_then(Weak::upgrade), &self.relay) else { return };
        if !member.is_leader() && !relay.relay(name, usage) {
            tracing::debug!("heartbeat relay full; beat dropped (the next one takes its place)");
        }
    }
}

impl AppHandler for AgentService {
    fn call(&self, request: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, StoreError>> {
        let local = self.local.clone();
        let request: AgentRequest = match serde_json::from_slice(&request) {
            Ok(r) => r,
            Err(e) => return Box::pin(async move { Err(StoreError::Protocol(format!("agent request: {e}"))) }),
        };
        if let AgentRequest::Heartbeat { name, cpu_millis, memory_bytes, pods, relayed: false, probe_only: false } = &request {
            self.relay_heartbeat(name.clone(), NodeUsage { cpu_millis: *cpu_millis, memory_bytes: *memory_bytes, pods: *pods });
        }
        Box::pin(async move {
            let reply = match request {
                AgentRequest::RegisterNode(node) => local.register_node(node).await.map(|_| AgentReply::Done),
                AgentRequest::UpdateNodeStatus { name, status } => local.update_node_status(&name, status).await.map(|_| AgentReply::Done),
                AgentRequest::Heartbeat { name, cpu_millis, memory_bytes, pods, probe_only, .. } => local
                    .heartbeat(&name, NodeUsage { cpu_millis, memory_bytes, pods }, probe_only)
                    .await
                    .map(|order| AgentReply::Beat { order }),
                AgentRequest::ListPods { node } => local.list_pods(&node).await.map(|(pods, revision)| AgentReply::Pods { pods, revision }),
                AgentRequest::UpdatePodStatus { namespace, name, uid, status } => {
                    local.update_pod_status(&namespace, &name, &uid, status).await.map(|_| AgentReply::Done)
                }
                AgentRequest::FinalizePod { namespace, name, uid } => {
                    local.finalize_pod(&namespace, &name, &uid).await.map(|_| AgentReply::Done)
                }
                AgentRequest::RecordEvent { involved, event_type, reason, message } => {
                    local.record_event(&involved, &event_type, &reason, &message).await;
                    Ok(AgentReply::Done)
                }
                AgentRequest::ListObjects { plural } => {
                    local.list_objects(&plural).await.map(|(pods, revision)| AgentReply::Pods { pods, revision })
                }
                AgentRequest::WatchPods { .. } | AgentRequest::WatchObjects { .. } => {
                    return Err(StoreError::Invalid("watches are stream requests".into()))
                }
            };
            Ok(encode(&reply.unwrap_or_else(failed)))
        })
    }

    fn stream(&self, request: Vec<u8>) -> BoxFuture<'static, Result<AppFrames, StoreError>> {
        let local = self.local.clone();
        Box::pin(async move {
            let request: AgentRequest =
                serde_json::from_slice(&request).map_err(|e| StoreError::Protocol(format!("agent request: {e}")))?;
            let watch = match request {
                AgentRequest::WatchPods { node, after } => local.watch_pods(&node, after).await,
                AgentRequest::WatchObjects { plural, after } => local.watch_objects(&plural, after).await,
                _ => return Err(StoreError::Invalid("only watches are stream requests".into())),
            };
            let (tx, rx) = mpsc::channel(APP_STREAM_QUEUE_MAX);
            match watch {
                Err(e) => {
                    let _ = tx.send(Ok(encode(&failed(e)))).await;
                }
                Ok(mut events) => {
                    tokio::spawn(async move {
                        // Ends when the agent hangs up, not only at the next
                        // event: a quiet kind would hold its watch forever.
                        while let Some(ev) = tokio::select! {
                            ev = events.recv() => ev,
                            _ = tx.closed() => None,
                        } {
                            let reply = match ev {
                                Ok(WatchEvent { kind, object }) => AgentReply::Event { kind: kind.as_str().to_string(), object },
                                Err(e) => failed(e),
                            };
                            if tx.send(Ok(encode(&reply))).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            }
            Ok(rx)
        })
    }
}

/// The control plane seen from a node agent in another process.
pub struct RemoteControlPlane {
    client: Arc<StoreClient>,
}

impl RemoteControlPlane {
    pub fn new(servers: Vec<String>, token: &str) -> Result<Self, AgentError> {
        Ok(RemoteControlPlane { client: Arc::new(StoreClient::new(servers, token).map_err(|e| AgentError::Refused(e.to_string()))?) })
    }

    async fn call(&self, request: AgentRequest) -> Result<AgentReply, AgentError> {
        // Heartbeats must reach some server well within the node grace
        // period, so a member that died silently costs them little.
        let timeout = match request {
            AgentRequest::Heartbeat { .. } => HEARTBEAT_CALL_TIMEOUT,
            _ => AGENT_CALL_TIMEOUT,
        };
        let body = serde_json::to_vec(&request).map_err(|e| AgentError::Refused(e.to_string()))?;
        let bytes = self.client.app_call_within(body, timeout).await.map_err(store_error)?;
        let reply: AgentReply =
            serde_json::from_slice(&bytes).map_err(|e| AgentError::Refused(format!("bad reply from the server: {e}")))?;
        match reply {
            AgentReply::Failed { retryable, gone, expired, message } => Err(if gone {
                AgentError::Gone(message)
            } else if expired {
                AgentError::Expired(message)
            } else if retryable {
                AgentError::Unavailable(message)
            } else {
                AgentError::Refused(message)
            }),
            other => Ok(other),
        }
    }

    /// A watch stream: the pods of a node, or the objects of a network kind.
    async fn watch(&self, request: AgentRequest) -> Result<mpsc::Receiver<Result<WatchEvent, AgentError>>, AgentError> {
        let body = serde_json::to_vec(&request).map_err(|e| AgentError::Refused(e.to_string()))?;
        let mut frames = self.client.app_stream(body).await.map_err(store_error)?;
        let (tx, rx) = mpsc::channel(super::control_plane::POD_EVENT_QUEUE_MAX);
        tokio::spawn(async move {
            while let Some(frame) = tokio::select! {
                f = frames.recv() => f,
                _ = tx.closed() => None,
            } {
                let item = match frame {
                    Err(e) => Err(store_error(e)),
                    Ok(bytes) => match serde_json::from_slice::<AgentReply>(&bytes) {
                        Ok(AgentReply::Event { kind, object }) => match WatchEventKind::parse(&kind) {
                            Some(kind) => Ok(WatchEvent { kind, object }),
                            None => Err(AgentError::Unavailable(format!("watch: unknown event type {kind:?}"))),
                        },
                        Ok(AgentReply::Failed { expired: true, message, .. }) => Err(AgentError::Expired(message)),
                        Ok(other) => Err(AgentError::Unavailable(format!("watch: {other:?}"))),
                        Err(e) => Err(AgentError::Unavailable(format!("watch: {e}"))),
                    },
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(rx)
    }
}

fn store_error(e: StoreError) -> AgentError {
    if e.is_retryable() || matches!(e, StoreError::Fatal { .. } | StoreError::Protocol(_) | StoreError::Indeterminate(_)) {
        AgentError::Unavailable(e.to_string())
    } else {
        AgentError::Refused(e.to_string())
    }
}

#[async_trait::async_trait]
impl ControlPlane for RemoteControlPlane {
    async fn register_node(&self, node: Value) -> Result<(), AgentError> {
        self.call(AgentRequest::RegisterNode(node)).await.map(|_| ())
    }

    async fn update_node_status(&self, name: &str, status: Value) -> Result<(), AgentError> {
        self.call(AgentRequest::UpdateNodeStatus { name: name.into(), status }).await.map(|_| ())
    }

    async fn heartbeat(&self, name: &str, usage: NodeUsage, probe_only: bool) -> Result<Option<String>, AgentError> {
        let reply = self
            .call(AgentRequest::Heartbeat {
                name: name.into(),
                cpu_millis: usage.cpu_millis,
                memory_bytes: usage.memory_bytes,
                pods: usage.pods,
                relayed: false,
                probe_only,
            })
            .await?;
        Ok(match reply {
            AgentReply::Beat { order } => order,
            _ => None,
        })
    }

    async fn list_pods(&self, node: &str) -> Result<(Vec<Value>, u64), AgentError> {
        match self.call(AgentRequest::ListPods { node: node.into() }).await? {
            AgentReply::Pods { pods, revision } => Ok((pods, revision)),
            other => Err(AgentError::Refused(format!("unexpected reply {other:?}"))),
        }
    }

    async fn watch_pods(&self, node: &str, after: u64) -> Result<mpsc::Receiver<Result<WatchEvent, AgentError>>, AgentError> {
        self.watch(AgentRequest::WatchPods { node: node.into(), after }).await
    }

    async fn list_objects(&self, plural: &str) -> Result<(Vec<Value>, u64), AgentError> {
        match self.call(AgentRequest::ListObjects { plural: plural.into() }).await? {
            AgentReply::Pods { pods, revision } => Ok((pods, revision)),
            other => Err(AgentError::Refused(format!("unexpected reply {other:?}"))),
        }
    }

    async fn watch_objects(&self, plural: &str, after: u64) -> Result<mpsc::Receiver<Result<WatchEvent, AgentError>>, AgentError> {
        self.watch(AgentRequest::WatchObjects { plural: plural.into(), after }).await
    }
    async fn update_pod_status(&self, namespace: &str, name: &str, uid: &str, status: Value) -> Result<(), AgentError> {
        self.call(AgentRequest::UpdatePodStatus { namespace: namespace.into(), name: name.into(), uid: uid.into(), status })
            .await
            .map(|_| ())
    }

    async fn finalize_pod(&self, namespace: &str, name: &str, uid: &str) -> Result<(), AgentError> {
        self.call(AgentRequest::FinalizePod { namespace: namespace.into(), name: name.into(), uid: uid.into() }).await.map(|_| ())
    }

    async fn record_event(&self, involved: &Value, event_type: &str, reason: &str, message: &str) {
        let request = AgentRequest::RecordEvent {
            involved: involved.clone(),
            event_type: event_type.into(),
            reason: reason.into(),
            message: message.into(),
        };
        if let Err(e) = self.call(request).await {
            tracing::debug!(error = %e, "event not recorded");
        }
    }
}
