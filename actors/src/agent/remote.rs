//! The agent protocol over the peer port: a remote node agent reaches the
//! control plane through any server member with the agent token
//! ([`RemoteControlPlane`]); each member answers with [`AgentService`],
//! which is the in-process control plane behind the store's app hook.
//! Given several servers, the agent moves to the next when one goes away.
//!
//! The token only admits an agent to claim a node name; every other
//! request carries that node's credential and is held to that node
//! ([`super::node_restriction`]).

use std::sync::{Arc, Weak};

use flotilla_raft::app::{AppCaller, AppFrames, AppHandler, APP_STREAM_QUEUE_MAX};
use flotilla_raft::{StoreClient, StoreError};
use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::mpsc;

pub use super::agent_protocol::{AgentMessage, AgentReply, AgentRequest};
use super::control_plane::{AgentError, ControlPlane, LocalControlPlane, NodeUsage};
use super::heartbeat_relay::{HeartbeatRelay, SendBeat};
use super::node_credential::NodeCredential;
use super::node_restriction::{may, NodeCredentials};
use super::pod_inputs::PodInputs;
use crate::limits::{HEARTBEAT_RELAYS_IN_FLIGHT_MAX, HEARTBEAT_RELAY_NODES_MAX, HEARTBEAT_RELAY_TIMEOUT, NODE_CERT_ADDRESSES_MAX};
use crate::model::kinds::PODS;
use crate::registry::{WatchEvent, WatchEventKind};

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
    inner: Arc<ServiceInner>,
}

struct ServiceInner {
    local: LocalControlPlane,
    /// Weak: the member holds this service, so a strong reference here
    /// would keep both (and the relay's task) alive for ever.
    member: Option<Weak<flotilla_raft::Member>>,
    relay: Option<HeartbeatRelay>,
    credentials: NodeCredentials,
}

impl AgentService {
    /// Serves agents through `local`; with a `member`, beats that reach it
    /// while it follows are relayed to the leader.
    pub fn new(local: LocalControlPlane, member: Option<Arc<flotilla_raft::Member>>) -> Self {
        let credentials = NodeCredentials::new(local.registry.member().clone());
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
                    let body = serde_json::to_vec(&AgentMessage::Relayed(request)).map_err(|e| e.to_string())?;
                    member.call_leader_app(body, HEARTBEAT_RELAY_TIMEOUT).await.map(|_| ()).map_err(|e| e.to_string())
                })
            });
            HeartbeatRelay::start(send, HEARTBEAT_RELAYS_IN_FLIGHT_MAX, HEARTBEAT_RELAY_NODES_MAX)
        });
        AgentService { inner: Arc::new(ServiceInner { local, member, relay, credentials }) }
    }
}

impl ServiceInner {
    fn relay_heartbeat(&self, name: String, usage: NodeUsage) {
        let (Some(member), Some(relay)) = (self.member.as_ref().and_then(Weak::upgrade), &self.relay) else { return };
        if !member.is_leader() && !relay.relay(name, usage) {
            tracing::debug!("heartbeat relay full; beat dropped (the next one takes its place)");
        }
    }

    /// Who is asking and what: a claim is answered here; a node's request
    /// comes back with the node it was proven to come from (None: relayed
    /// by a member).
    async fn admit(&self, caller: AppCaller, message: AgentMessage) -> Result<(Option<String>, AgentRequest), AgentReply> {
        match message {
            AgentMessage::Claim { node, secret } => Err(match self.credentials.claim(&node, &secret).await {
                Ok(()) => AgentReply::Done,
                Err(e) => failed(e),
            }),
            AgentMessage::Relayed(request) if caller == AppCaller::Trusted => Ok((None, request)),
            AgentMessage::Relayed(_) => Err(failed(AgentError::Refused("only members relay requests".into()))),
            AgentMessage::AsNode { node, secret, request } => {
                // Beats come five times a second; everything else is rare and
                // checked against the store each time, so a removed node's
                // agent cannot register it again.
                let cached = matches!(request, AgentRequest::Heartbeat { .. });
                self.credentials.verify(&node, &secret, cached).await.map_err(failed)?;
                may(&node, &request).map_err(|e| failed(AgentError::Refused(e)))?;
                Ok((Some(node), request))
            }
        }
    }

    /// May `node` record an event about `involved`: itself, or a pod bound to it.
    async fn may_record(&self, node: &str, involved: &Value) -> bool {
        let name = involved.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("");
        match involved.get("kind").and_then(Value::as_str) {
            Some("Node") => name == node,
            Some("Pod") => {
                let ns = involved.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or("default");
                match self.local.registry.get(&PODS, Some(ns), name).await {
                    Ok(pod) => pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node),
                    Err(_) => false,
                }
            }
            _ => false,
        }
    }

    async fn serve(&self, node: Option<String>, request: AgentRequest) -> Result<AgentReply, AgentError> {
        let local = &self.local;
        let bound = node.as_deref();
        match request {
            AgentRequest::RegisterNode(object) => local.register_node(object).await.map(|_| AgentReply::Done),
            AgentRequest::UpdateNodeStatus { name, status } => local.update_node_status(&name, status).await.map(|_| AgentReply::Done),
            AgentRequest::Heartbeat { name, cpu_millis, memory_bytes, pods, probe_only, relayed } => {
                let usage = NodeUsage { cpu_millis, memory_bytes, pods };
                if !relayed && !probe_only {
                    self.relay_heartbeat(name.clone(), usage);
                }
                local.heartbeat(&name, usage, probe_only).await.map(|order| AgentReply::Beat { order })
            }
            AgentRequest::ListPods { node } => local.list_pods(&node).await.map(|(pods, revision)| AgentReply::Pods { pods, revision }),
            AgentRequest::UpdatePodStatus { namespace, name, uid, status } => {
                local.update_pod_status_on(bound, &namespace, &name, &uid, status).await.map(|_| AgentReply::Done)
            }
            AgentRequest::FinalizePod { namespace, name, uid } => {
                local.finalize_pod_on(bound, &namespace, &name, &uid).await.map(|_| AgentReply::Done)
            }
            AgentRequest::PodInputs { namespace, name, uid } => {
                local.pod_inputs_on(bound, &namespace, &name, &uid).await.map(|inputs| AgentReply::PodInputs(Box::new(inputs)))
            }
            AgentRequest::RecordEvent { involved, event_type, reason, message } => {
                if let Some(node) = bound {
                    if !self.may_record(node, &involved).await {
                        return Err(AgentError::Refused(format!("node {node:?} may record events only about itself and its pods")));
                    }
                }
                local.record_event(&involved, &event_type, &reason, &message).await;
                Ok(AgentReply::Done)
            }
            AgentRequest::ListObjects { plural } => {
                local.list_objects(&plural).await.map(|(pods, revision)| AgentReply::Pods { pods, revision })
            }
            AgentRequest::Certificate { addresses } => {
                let node = bound.ok_or_else(|| AgentError::Refused("a certificate is issued to a node".into()))?;
                if addresses.len() > NODE_CERT_ADDRESSES_MAX || addresses.iter().any(|a| a.parse::<std::net::IpAddr>().is_err()) {
                    return Err(AgentError::Refused(format!("a node certificate names at most {NODE_CERT_ADDRESSES_MAX} IP addresses")));
                }
                let identity = local
                    .registry
                    .member()
                    .ca()
                    .issue_node(node, &addresses)
                    .map_err(|e| AgentError::Unavailable(format!("issuing the node certificate: {e}")))?;
                Ok(AgentReply::Certificate { ca_pem: identity.ca_pem, cert_pem: identity.cert_pem, key_pem: identity.key_pem })
            }
            AgentRequest::WatchPods { .. } | AgentRequest::WatchObjects { .. } => {
                Err(AgentError::Refused("watches are stream requests".into()))
            }
        }
    }
}

fn decode_message(bytes: &[u8]) -> Result<AgentMessage, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Protocol(format!("agent request: {e}")))
}

impl AppHandler for AgentService {
    fn call(&self, caller: AppCaller, request: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, StoreError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let message = decode_message(&request)?;
            let reply = match inner.admit(caller, message).await {
                Err(answered) => answered,
                Ok((node, request)) => inner.serve(node, request).await.unwrap_or_else(failed),
            };
            Ok(encode(&reply))
        })
    }

    fn authenticate_node(&self, node: String, secret: String) -> BoxFuture<'static, bool> {
        let inner = self.inner.clone();
        Box::pin(async move {
            // Nothing malformed costs a store read before authentication.
            let well_formed = node.len() <= 253 && secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit());
            well_formed && inner.credentials.verify(&node, &secret, false).await.is_ok()
        })
    }

    fn stream(&self, caller: AppCaller, request: Vec<u8>) -> BoxFuture<'static, Result<AppFrames, StoreError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let message = decode_message(&request)?;
            let (tx, rx) = mpsc::channel(APP_STREAM_QUEUE_MAX);
            let watch = match inner.admit(caller, message).await {
                Err(answered) => {
                    let _ = tx.send(Ok(encode(&answered))).await;
                    return Ok(rx);
                }
                Ok((_, AgentRequest::WatchPods { node, after })) => inner.local.watch_pods(&node, after).await,
                Ok((_, AgentRequest::WatchObjects { plural, after })) => inner.local.watch_objects(&plural, after).await,
                Ok(_) => return Err(StoreError::Invalid("only watches are stream requests".into())),
            };
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

/// The control plane seen from a node agent in another process, as the
/// node its credential names.
pub struct RemoteControlPlane {
    client: Arc<StoreClient>,
    credential: NodeCredential,
}

/// A node certificate and key, with the cluster CA, in PEM.
pub struct NodeCertificate {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl RemoteControlPlane {
    /// Takes node `node` for this agent: with the credential kept in
    /// `state_dir`, or a new one written there before it is claimed (so a
    /// claim whose answer was lost is made again with the same secret,
    /// which the servers grant again).
    pub async fn join(servers: Vec<String>, token: &str, node: &str, state_dir: &std::path::Path) -> Result<Self, AgentError> {
        let parsed = flotilla_raft::tls::JoinToken::parse(token).map_err(|e| AgentError::Refused(format!("--token: {e}")))?;
        let cluster = parsed.ca_fingerprint;
        let credential = match NodeCredential::load(state_dir).map_err(|e| AgentError::Refused(e.to_string()))? {
            Some(c) if c.cluster == cluster && c.node == node => {
                // Claimed before, most likely: then the credential alone
                // admits it, whatever has become of the agent token.
                let client =
                    StoreClient::as_node(servers.clone(), token, node, &c.secret).map_err(|e| AgentError::Refused(e.to_string()))?;
                let plane = RemoteControlPlane { client: Arc::new(client), credential: c.clone() };
                let claim = AgentMessage::Claim { node: node.to_string(), secret: c.secret.clone() };
                match plane.send(&claim, AGENT_CALL_TIMEOUT).await {
                    Ok(_) => return Ok(plane),
                    // Never claimed (the answer to the claim was lost), or
                    // the node was deleted: claim it with the token.
                    Err(AgentError::Refused(reason)) => {
                        tracing::info!(node, %reason, "the node credential is not known; claiming the node with the token")
                    }
                    Err(e) => return Err(e),
                }
                c
            }
            Some(c) if c.cluster == cluster => {
                return Err(AgentError::Refused(format!(
                    "{} holds the credential of node {:?}, not {node:?}; give each agent its own --state-dir",
                    state_dir.display(),
                    c.node
                )))
            }
            // Another cluster's (or none): this cluster never knew it.
            _ => {
                let c = NodeCredential::generate(&cluster, node);
                c.store(state_dir).map_err(|e| AgentError::Refused(e.to_string()))?;
                c
            }
        };
        let with_token = StoreClient::new(servers.clone(), token).map_err(|e| AgentError::Refused(e.to_string()))?;
        let claimer = RemoteControlPlane { client: Arc::new(with_token), credential: credential.clone() };
        let claim = AgentMessage::Claim { node: node.to_string(), secret: credential.secret.clone() };
        claimer.send(&claim, AGENT_CALL_TIMEOUT).await?;
        // From here on the credential alone: a rotated token must not cut
        // off a node at its next reconnection.
        let client = StoreClient::as_node(servers, token, node, &credential.secret).map_err(|e| AgentError::Refused(e.to_string()))?;
        Ok(RemoteControlPlane { client: Arc::new(client), credential })
    }

    /// A node certificate for this agent's endpoint, naming `addresses`.
    pub async fn certificate(&self, addresses: Vec<String>) -> Result<NodeCertificate, AgentError> {
        match self.call(AgentRequest::Certificate { addresses }).await? {
            AgentReply::Certificate { ca_pem, cert_pem, key_pem } => Ok(NodeCertificate { ca_pem, cert_pem, key_pem }),
            _ => Err(AgentError::Refused("unexpected reply to a certificate request".into())),
        }
    }

    fn as_node(&self, request: AgentRequest) -> AgentMessage {
        AgentMessage::AsNode { node: self.credential.node.clone(), secret: self.credential.secret.clone(), request }
    }

    async fn call(&self, request: AgentRequest) -> Result<AgentReply, AgentError> {
        // Heartbeats must reach some server well within the node grace
        // period, so a member that died silently costs them little.
        let timeout = match request {
            AgentRequest::Heartbeat { .. } => HEARTBEAT_CALL_TIMEOUT,
            _ => AGENT_CALL_TIMEOUT,
        };
        self.send(&self.as_node(request), timeout).await
    }

    async fn send(&self, message: &AgentMessage, timeout: std::time::Duration) -> Result<AgentReply, AgentError> {
        let body = serde_json::to_vec(message).map_err(|e| AgentError::Refused(e.to_string()))?;
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
        let body = serde_json::to_vec(&self.as_node(request)).map_err(|e| AgentError::Refused(e.to_string()))?;
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
                        Ok(AgentReply::Failed { retryable: false, gone: false, message, .. }) => Err(AgentError::Refused(message)),
                        Ok(AgentReply::Failed { message, .. }) => Err(AgentError::Unavailable(format!("watch: {message}"))),
                        Ok(_) => Err(AgentError::Unavailable("watch: a reply that is not an event".into())),
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
            _ => Err(AgentError::Refused("unexpected reply to a list".into())),
        }
    }

    async fn watch_pods(&self, node: &str, after: u64) -> Result<mpsc::Receiver<Result<WatchEvent, AgentError>>, AgentError> {
        self.watch(AgentRequest::WatchPods { node: node.into(), after }).await
    }

    async fn list_objects(&self, plural: &str) -> Result<(Vec<Value>, u64), AgentError> {
        match self.call(AgentRequest::ListObjects { plural: plural.into() }).await? {
            AgentReply::Pods { pods, revision } => Ok((pods, revision)),
            _ => Err(AgentError::Refused("unexpected reply to a list".into())),
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

    async fn pod_inputs(&self, namespace: &str, name: &str, uid: &str) -> Result<PodInputs, AgentError> {
        match self.call(AgentRequest::PodInputs { namespace: namespace.into(), name: name.into(), uid: uid.into() }).await? {
            AgentReply::PodInputs(inputs) => Ok(*inputs),
            _ => Err(AgentError::Refused("unexpected reply to a request for a pod's inputs".into())),
        }
    }
}
