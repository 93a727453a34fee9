//! What a node agent needs from the control plane, as a trait: register
//! its Node, send heartbeats, learn its pods (list, then a resumable
//! watch), write pod status, and finish a pod's deletion. The in-process
//! implementation ([`LocalControlPlane`]) calls the registry directly; it
//! serves `flotilla up` and the sim benchmarks.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::chaos_orders::ChaosOrders;
use super::pod_fanout::PodFanout;
use super::pod_inputs::{references, service_account, IssuedToken, PodInputs, MOUNTED_TOKEN_TTL_SECONDS};
use crate::model::kinds::lookup;
use crate::model::kinds::{CONFIGMAPS, NODES, PODS, SECRETS, SERVICES, SERVICE_ACCOUNTS};
use crate::model::object;
use crate::model::selector::Selector;
use crate::registry::{Registry, RegistryError, WatchEvent};
use crate::watcher::{ChannelStream, EventStream, SourceError, WatchSource};

pub use crate::limits::POD_EVENT_QUEUE_MAX;

pub use super::agent_error::AgentError;

pub use crate::model::heartbeats::{BeatRecord, Heartbeats, NodeUsage, BEAT_INTERVAL_SAMPLE_MAX};

/// A node agent's view of the control plane.
#[async_trait::async_trait]
pub trait ControlPlane: Send + Sync + 'static {
    /// Creates the Node, or updates its labels and status if it exists.
    async fn register_node(&self, node: Value) -> Result<(), AgentError>;
    /// Replaces the Node's status (conditions, capacity, usage).
    async fn update_node_status(&self, name: &str, status: Value) -> Result<(), AgentError>;
    /// A liveness beat with current usage (not a store write). The reply
    /// carries the node's chaos order, if any. With `probe_only` nothing
    /// is recorded: a partitioned agent only listens for its orders.
    async fn heartbeat(&self, name: &str, usage: NodeUsage, probe_only: bool) -> Result<Option<String>, AgentError>;
    /// The pods bound to `node`, and the revision of the list.
    async fn list_pods(&self, node: &str) -> Result<(Vec<Value>, u64), AgentError>;
    /// Changes to pods bound to `node` after revision `after`.
    async fn watch_pods(&self, node: &str, after: u64) -> Result<mpsc::Receiver<Result<WatchEvent, AgentError>>, AgentError>;
    /// Writes a pod's status, if the pod still has uid `uid`.
    async fn update_pod_status(&self, namespace: &str, name: &str, uid: &str, status: Value) -> Result<(), AgentError>;
    /// Removes a pod whose containers have stopped, if it still has uid `uid`.
    async fn finalize_pod(&self, namespace: &str, name: &str, uid: &str) -> Result<(), AgentError>;
    /// Records an Event about an object (best effort).
    async fn record_event(&self, involved: &Value, event_type: &str, reason: &str, message: &str);
    /// What pod `namespace/name` (uid `uid`), bound to this node, needs
    /// before its containers start: the Secrets and ConfigMaps it names,
    /// its ServiceAccount tokens, the cluster CA and where the API is.
    async fn pod_inputs(&self, namespace: &str, name: &str, uid: &str) -> Result<PodInputs, AgentError>;
    /// All objects of one of the kinds a node's network needs
    /// ([`NETWORK_KINDS`]), and the revision of the list.
    async fn list_objects(&self, plural: &str) -> Result<(Vec<Value>, u64), AgentError>;
    /// Changes to objects of such a kind after revision `after`.
    async fn watch_objects(&self, plural: &str, after: u64) -> Result<mpsc::Receiver<Result<WatchEvent, AgentError>>, AgentError>;
}

/// What an agent may read beyond its own pods: what the proxy, cluster
/// DNS and policy enforcement on its node are made from. Nothing else
/// (secrets, for one) is readable with the join token this way.
pub const NETWORK_KINDS: &[&str] = &["services", "endpoints", "pods", "namespaces", "networkpolicies", "nodes"];

/// Passes a registry watch's events that `keep` accepts, shaped by `shape`, to a bounded
/// channel, until the receiver goes away or the watch fails (its error is
/// passed on last).
fn forward_watch(
    mut watch: crate::registry::RegistryWatch,
    keep: impl Fn(&Value) -> bool + Send + 'static,
    shape: impl Fn(Value) -> Value + Send + 'static,
) -> mpsc::Receiver<Result<WatchEvent, AgentError>> {
    let (tx, rx) = mpsc::channel(POD_EVENT_QUEUE_MAX);
    tokio::spawn(async move {
        loop {
            let batch = tokio::select! {
                b = watch.next() => b,
                _ = tx.closed() => return,
            };
            match batch {
                Ok(events) => {
                    for ev in events {
                        if keep(&ev.object) && tx.send(Ok(WatchEvent { kind: ev.kind, object: shape(ev.object) })).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
            }
        }
    });
    rx
}

/// What a node's network needs of an object, and no more: pods go out
/// without their containers' commands, environment and the rest, which
/// the join token need not reveal to every agent.
fn for_network(plural: &str, mut obj: Value) -> Value {
    if plural != "pods" {
        return obj;
    }
    let ports: Vec<Value> = obj
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| cs.iter().map(|c| json!({"name": c.get("name"), "ports": c.get("ports").cloned().unwrap_or(json!([]))})).collect())
        .unwrap_or_default();
    let meta = obj.get_mut("metadata").map(Value::take).unwrap_or(json!({}));
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                     "labels": meta.get("labels"), "resourceVersion": meta.get("resourceVersion"),
                     "deletionTimestamp": meta.get("deletionTimestamp")},
        "spec": {"nodeName": obj.pointer("/spec/nodeName"), "hostNetwork": obj.pointer("/spec/hostNetwork"), "containers": ports},
        "status": {"phase": obj.pointer("/status/phase"), "podIP": obj.pointer("/status/podIP")},
    })
}

fn network_kind(plural: &str) -> Result<&'static crate::model::resources::Resource, AgentError> {
    if !NETWORK_KINDS.contains(&plural) {
        return Err(AgentError::Refused(format!("agents may not read {plural}; only {}", NETWORK_KINDS.join(", "))));
    }
    lookup(plural).ok_or_else(|| AgentError::Refused(format!("no resource {plural}")))
}

/// The control plane in the same process.
#[derive(Clone)]
pub struct LocalControlPlane {
    pub registry: Registry,
    pub heartbeats: Heartbeats,
    fanout: PodFanout,
    chaos: ChaosOrders,
}

impl LocalControlPlane {
    /// One per process: its agents share one pod watch.
    pub fn new(registry: Registry, heartbeats: Heartbeats) -> Self {
        LocalControlPlane { fanout: PodFanout::new(registry.clone()), chaos: ChaosOrders::new(registry.clone()), registry, heartbeats }
    }
}

fn node_selector(node: &str) -> Selector {
    Selector { requirements: vec![crate::model::selector::Requirement::Equals("spec.nodeName".into(), node.into())] }
}

#[async_trait::async_trait]
impl ControlPlane for LocalControlPlane {
    async fn list_objects(&self, plural: &str) -> Result<(Vec<Value>, u64), AgentError> {
        let res = network_kind(plural)?;
        let (items, rv, _) = self.registry.list(res, None, &Selector::default(), &Selector::default(), 0, None).await?;
        Ok((items.into_iter().map(|o| for_network(plural, o)).collect(), rv))
    }

    async fn watch_objects(&self, plural: &str, after: u64) -> Result<mpsc::Receiver<Result<WatchEvent, AgentError>>, AgentError> {
        let res = network_kind(plural)?;
        let plural = plural.to_string();
        Ok(forward_watch(self.registry.watch(res, None, after)?, |_| true, move |o| for_network(&plural, o)))
    }

    async fn register_node(&self, node: Value) -> Result<(), AgentError> {
        let nodes = &NODES;
        let name = object::name(&node).unwrap_or_default().to_string();
        match self.registry.create(nodes, None, node.clone()).await {
            Ok(_) => Ok(()),
            Err(RegistryError::AlreadyExists { .. }) => {
                let labels = node.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
                self.registry
                    .read_modify_write(
                        nodes,
                        None,
                        &name,
                        None,
                        |old| {
                            let mut new = old.clone();
                            new["metadata"]["labels"] = labels.clone();
                            Ok(new)
                        },
                        None,
                    )
                    .await?;
                self.update_node_status(&name, node.get("status").cloned().unwrap_or(json!({}))).await
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn update_node_status(&self, name: &str, status: Value) -> Result<(), AgentError> {
        let nodes = &NODES;
        self.registry.write_status(nodes, None, name, &status).await?;
        Ok(())
    }

    async fn heartbeat(&self, name: &str, usage: NodeUsage, probe_only: bool) -> Result<Option<String>, AgentError> {
        if !probe_only {
            self.heartbeats.beat(name, usage);
        }
        Ok(self.chaos.get(name))
    }

    async fn list_pods(&self, node: &str) -> Result<(Vec<Value>, u64), AgentError> {
        let pods = &PODS;
        let (items, rv, _) = self.registry.list(pods, None, &Selector::default(), &node_selector(node), 0, None).await?;
        Ok((items, rv))
    }

    async fn watch_pods(&self, node: &str, after: u64) -> Result<mpsc::Receiver<Result<WatchEvent, AgentError>>, AgentError> {
        if let Some(rx) = self.fanout.subscribe(node, after, POD_EVENT_QUEUE_MAX) {
            return Ok(rx);
        }
        let pods = &PODS;
        let node = node.to_string();
        Ok(forward_watch(
            self.registry.watch(pods, None, after)?,
            move |o| o.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node.as_str()),
            |o| o,
        ))
    }

    async fn update_pod_status(&self, namespace: &str, name: &str, uid: &str, status: Value) -> Result<(), AgentError> {
        self.update_pod_status_on(None, namespace, name, uid, status).await
    }

    async fn finalize_pod(&self, namespace: &str, name: &str, uid: &str) -> Result<(), AgentError> {
        self.finalize_pod_on(None, namespace, name, uid).await
    }

    async fn record_event(&self, involved: &Value, event_type: &str, reason: &str, message: &str) {
        self.registry.record_event(involved, event_type, reason, message).await;
    }

    async fn pod_inputs(&self, namespace: &str, name: &str, uid: &str) -> Result<PodInputs, AgentError> {
        self.pod_inputs_on(None, namespace, name, uid).await
    }
}

/// Refuses a node's write to a pod bound elsewhere (NodeRestriction).
fn bound_here(node: Option<&str>, pod: &Value) -> Result<(), RegistryError> {
    let Some(node) = node else { return Ok(()) };
    let bound = pod.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or("");
    if bound == node {
        return Ok(());
    }
    Err(RegistryError::BadRequest(format!(
        "node {node:?} may not write pod {}/{}: it is bound to {}",
        object::namespace(pod).unwrap_or(""),
        object::name(pod).unwrap_or(""),
        if bound.is_empty() { "no node".to_string() } else { format!("node {bound:?}") }
    )))
}

impl LocalControlPlane {
    /// Writes a pod's status, if the pod still has uid `uid` and (given a
    /// node) is bound to that node.
    pub async fn update_pod_status_on(
        &self,
        node: Option<&str>,
        namespace: &str,
        name: &str,
        uid: &str,
        status: Value,
    ) -> Result<(), AgentError> {
        let pods = &PODS;
        let uid = uid.to_string();
        self.registry
            .read_modify_write(
                pods,
                Some(namespace),
                name,
                None,
                |old| {
                    if object::uid(old) != Some(uid.as_str()) {
                        return Err(RegistryError::NotFound { kind: "pods".into(), name: object::name(old).unwrap_or("").into() });
                    }
                    bound_here(node, old)?;
                    let mut new = old.clone();
                    new["status"] = status.clone();
                    Ok(new)
                },
                Some("status"),
            )
            .await?;
        Ok(())
    }

    /// Removes a pod whose containers have stopped, if it still has uid
    /// `uid` and (given a node) is bound to that node. The read revision
    /// is the delete's precondition, so the binding checked is the one
    /// deleted.
    pub async fn finalize_pod_on(&self, node: Option<&str>, namespace: &str, name: &str, uid: &str) -> Result<(), AgentError> {
        let pods = &PODS;
        let current = self.registry.get(pods, Some(namespace), name).await?;
        if object::uid(&current) != Some(uid) {
            return Err(AgentError::Gone(format!("pod {namespace}/{name} was replaced")));
        }
        bound_here(node, &current)?;
        let rv = object::resource_version(&current);
        self.registry.delete_now(pods, Some(namespace), name, rv).await?;
        Ok(())
    }
}

/// An object that may not exist: None when it does not.
async fn get_optional(
    registry: &Registry,
    res: &crate::model::resources::Resource,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<Value>, AgentError> {
    match registry.get(res, ns, name).await {
        Ok(v) => Ok(Some(v)),
        Err(RegistryError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl LocalControlPlane {
    /// A pod's inputs, if the pod still has uid `uid` and (given a node)
    /// is bound to that node: only the objects the pod itself names are
    /// read, so a node reads no Secret no pod of its own asks for.
    pub async fn pod_inputs_on(&self, node: Option<&str>, namespace: &str, name: &str, uid: &str) -> Result<PodInputs, AgentError> {
        let object = self.registry.get(&PODS, Some(namespace), name).await?;
        if object::uid(&object) != Some(uid) {
            return Err(AgentError::Gone(format!("pod {namespace}/{name} was replaced")));
        }
        bound_here(node, &object)?;
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(object.clone())
            .map_err(|e| AgentError::Refused(format!("pod {namespace}/{name} is not a valid Pod: {e}")))?;
        let refs = references(&pod);
        let mut inputs = PodInputs { ca_pem: self.registry.member().ca().cert_pem.clone(), ..PodInputs::default() };
        let mut bytes = 0usize;
        for secret in &refs.secrets {
            if let Some(v) = get_optional(&self.registry, &SECRETS, Some(namespace), secret).await? {
                bytes += v.to_string().len();
                inputs.secrets.insert(secret.clone(), v);
            }
        }
        for cm in &refs.config_maps {
            if let Some(v) = get_optional(&self.registry, &CONFIGMAPS, Some(namespace), cm).await? {
                bytes += v.to_string().len();
                inputs.config_maps.insert(cm.clone(), v);
            }
        }
        if bytes > crate::limits::POD_INPUTS_MAX_BYTES {
            return Err(AgentError::Refused(format!(
                "the Secrets and ConfigMaps pod {namespace}/{name} names hold {bytes} bytes; a pod may name at most {} bytes of them",
                crate::limits::POD_INPUTS_MAX_BYTES
            )));
        }
        let account_name = service_account(&pod);
        let account = get_optional(&self.registry, &SERVICE_ACCOUNTS, Some(namespace), account_name).await?;
        let account_opts_out = account.as_ref().and_then(|a| a.get("automountServiceAccountToken")).and_then(Value::as_bool) == Some(false);
        // As in Kubernetes, the pod's own setting wins over its account's.
        inputs.automount = match pod.spec.as_ref().and_then(|s| s.automount_service_account_token) {
            Some(own) => own,
            None => !account_opts_out,
        };
        let mut audiences = refs.token_audiences.clone();
        if inputs.automount {
            let api = crate::model::service_account_token::API_AUDIENCE.to_string();
            let ttl = audiences.get(&api).copied().unwrap_or(MOUNTED_TOKEN_TTL_SECONDS).min(MOUNTED_TOKEN_TTL_SECONDS);
            audiences.insert(api, ttl);
        }
        if !audiences.is_empty() {
            let account = account.ok_or_else(|| {
                AgentError::Refused(format!(
                    "serviceaccount {namespace}/{account_name} not found: create it, or set spec.serviceAccountName to one that exists"
                ))
            })?;
            let account_uid = object::uid(&account).unwrap_or_default().to_string();
            let node_name = object.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default().to_string();
            let node_uid = get_optional(&self.registry, &NODES, None, &node_name)
                .await?
                .and_then(|n| object::uid(&n).map(String::from))
                .unwrap_or_default();
            let bound = crate::model::service_account_token::BoundPod {
                name: name.to_string(),
                uid: uid.to_string(),
                node: (!node_name.is_empty()).then(|| (node_name.clone(), node_uid)),
            };
            let now = crate::model::service_account_token::now_secs();
            for (audience, ttl) in audiences {
                let claims = crate::model::service_account_token::claims_bound(
                    namespace,
                    account_name,
                    &account_uid,
                    std::slice::from_ref(&audience),
                    now,
                    ttl,
                    Some(&bound),
                );
                let token = self
                    .registry
                    .member()
                    .ca()
                    .sign_jwt(&claims)
                    .map_err(|e| AgentError::Unavailable(format!("signing pod {namespace}/{name}'s token: {e}")))?;
                inputs.tokens.insert(audience, IssuedToken { token, expires_unix: now + ttl, ttl_seconds: ttl });
            }
        }
        if let Some(svc) = get_optional(&self.registry, &SERVICES, Some("default"), "kubernetes").await? {
            let ip = svc.pointer("/spec/clusterIP").and_then(Value::as_str).filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok());
            let port = svc.pointer("/spec/ports/0/port").and_then(Value::as_u64).and_then(|p| u16::try_from(p).ok());
            if let (Some(ip), Some(port)) = (ip, port) {
                inputs.api = Some((ip.to_string(), port));
            }
        }
        Ok(inputs)
    }
}

fn source_error(e: AgentError) -> SourceError {
    match e {
        AgentError::Expired(m) => SourceError::Expired(m),
        other => SourceError::Unavailable(other.to_string()),
    }
}

/// The pods bound to one node, through the agent's control plane.
pub struct NodePodsSource {
    pub control: Arc<dyn ControlPlane>,
    pub node: String,
}

#[async_trait::async_trait]
impl WatchSource for NodePodsSource {
    async fn list(&self) -> Result<(Vec<Value>, u64), SourceError> {
        self.control.list_pods(&self.node).await.map_err(source_error)
    }
    async fn watch(&self, after: u64) -> Result<Box<dyn EventStream>, SourceError> {
        let rx = self.control.watch_pods(&self.node, after).await.map_err(source_error)?;
        Ok(Box::new(ChannelStream::new(rx, after, source_error)))
    }
    fn describe(&self) -> String {
        format!("pods on {}", self.node)
    }
}

/// One of the kinds a node's network needs ([`NETWORK_KINDS`]), through
/// the agent's control plane.
pub struct NetworkSource {
    pub control: Arc<dyn ControlPlane>,
    pub plural: &'static str,
}

#[async_trait::async_trait]
impl WatchSource for NetworkSource {
    async fn list(&self) -> Result<(Vec<Value>, u64), SourceError> {
        self.control.list_objects(self.plural).await.map_err(source_error)
    }
    async fn watch(&self, after: u64) -> Result<Box<dyn EventStream>, SourceError> {
        let rx = self.control.watch_objects(self.plural, after).await.map_err(source_error)?;
        Ok(Box::new(ChannelStream::new(rx, after, source_error)))
    }
    fn describe(&self) -> String {
        self.plural.to_string()
    }
}

/// A control plane that can be cut off (`flotilla chaos partition`): while
/// cut, every call fails as if the network dropped it, except heartbeat
/// probes, which only ask for chaos orders so that `heal` can be heard.
pub struct PartitionableControlPlane {
    pub inner: Arc<dyn ControlPlane>,
    pub cut: Arc<std::sync::atomic::AtomicBool>,
}

impl PartitionableControlPlane {
    fn check(&self) -> Result<(), AgentError> {
        if self.cut.load(std::sync::atomic::Ordering::Acquire) {
            Err(AgentError::Unavailable("partitioned from every server (flotilla chaos partition)".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait::async_trait]
impl ControlPlane for PartitionableControlPlane {
    async fn list_objects(&self, plural: &str) -> Result<(Vec<Value>, u64), AgentError> {
        self.check()?;
        self.inner.list_objects(plural).await
    }
    async fn watch_objects(&self, plural: &str, after: u64) -> Result<mpsc::Receiver<Result<WatchEvent, AgentError>>, AgentError> {
        self.check()?;
        self.inner.watch_objects(plural, after).await
    }
    async fn register_node(&self, node: Value) -> Result<(), AgentError> {
        self.check()?;
        self.inner.register_node(node).await
    }
    async fn update_node_status(&self, name: &str, status: Value) -> Result<(), AgentError> {
        self.check()?;
        self.inner.update_node_status(name, status).await
    }
    async fn heartbeat(&self, name: &str, usage: NodeUsage, probe_only: bool) -> Result<Option<String>, AgentError> {
        let cut = self.cut.load(std::sync::atomic::Ordering::Acquire);
        self.inner.heartbeat(name, usage, probe_only || cut).await
    }
    async fn list_pods(&self, node: &str) -> Result<(Vec<Value>, u64), AgentError> {
        self.check()?;
        self.inner.list_pods(node).await
    }
    async fn watch_pods(&self, node: &str, after: u64) -> Result<mpsc::Receiver<Result<WatchEvent, AgentError>>, AgentError> {
        self.check()?;
        self.inner.watch_pods(node, after).await
    }
    async fn update_pod_status(&self, namespace: &str, name: &str, uid: &str, status: Value) -> Result<(), AgentError> {
        self.check()?;
        self.inner.update_pod_status(namespace, name, uid, status).await
    }
    async fn finalize_pod(&self, namespace: &str, name: &str, uid: &str) -> Result<(), AgentError> {
        self.check()?;
        self.inner.finalize_pod(namespace, name, uid).await
    }
    async fn record_event(&self, involved: &Value, event_type: &str, reason: &str, message: &str) {
        if self.check().is_ok() {
            self.inner.record_event(involved, event_type, reason, message).await
        }
    }
    async fn pod_inputs(&self, namespace: &str, name: &str, uid: &str) -> Result<PodInputs, AgentError> {
        self.check()?;
        self.inner.pod_inputs(namespace, name, uid).await
    }
}
