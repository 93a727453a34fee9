//! The Proxy actor: what kube-proxy is to a Kubernetes node. It keeps a
//! view of Services, Endpoints, pods, namespaces and NetworkPolicies (a
//! list, then a resumed watch per kind, through the agent's control
//! plane), and whenever they change it recomputes the node's rules
//! ([`nft::render_table`]) and, when they differ from what the kernel has,
//! replaces them in one atomic `nft -f`. It also hands the service table
//! to cluster DNS. Changes are coalesced for [`SYNC_DELAY`], so a rollout
//! of many pods costs one rewrite, and reach the kernel within a second.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;
use tokio::sync::watch;

use super::nft::{self, NodeRules};
use super::policy::{isolated_pods, PodNet};
use super::service_table::ServiceTable;
use crate::agent::control_plane::{AgentError, ControlPlane};
use crate::registry::WatchEvent;

/// How long changes are gathered before the rules are rewritten.
pub const SYNC_DELAY: Duration = Duration::from_millis(50);
/// Back-off between failed list or watch attempts, first and last.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The kinds the proxy reads, in the order it asks for them.
const KINDS: [&str; 5] = ["services", "endpoints", "pods", "namespaces", "networkpolicies"];

/// Where the node's service traffic is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    /// nftables rules in the kernel (needs root and the `nft` tool).
    Nftables,
    /// No root: node ports through listeners in this process; virtual IPs
    /// do not answer (only root can make them local); DNS works.
    Userspace,
    /// No rules: DNS only.
    Off,
}

pub struct ProxyArgs {
    pub node: String,
    pub control: Arc<dyn ControlPlane>,
    pub mode: ProxyMode,
    /// Receives every new service table (cluster DNS answers from it).
    pub tables: watch::Sender<Arc<ServiceTable>>,
}

pub enum ProxyMsg {
    /// A kind's full list (after a list or a relist).
    Replace(usize, Vec<Value>),
    Event(usize, WatchEvent),
    Sync,
}

pub struct ProxyState {
    args: ProxyArgs,
    table_name: String,
    objects: Vec<BTreeMap<String, Value>>,
    listed: Vec<bool>,
    sync_pending: bool,
    applied: Option<String>,
    informers: Vec<tokio::task::JoinHandle<()>>,
    userspace: super::userspace_proxy::UserspaceProxy,
}

pub struct ProxyActor;

fn key(o: &Value) -> String {
    format!(
        "{}/{}",
        o.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(""),
        o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
    )
}

/// nft identifiers: the node's name with anything but letters, digits
/// and `_` turned into `_`. One table per node, so several agents on one
/// host (tests, `flotilla up` next to an agent) do not overwrite each other.
pub fn table_name(node: &str) -> String {
    let clean: String = node.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("flotilla_{clean}")
}

/// Lists a kind, then follows it; relists when the watch expires; retries
/// with a capped back-off while the control plane is away.
async fn inform(index: usize, control: Arc<dyn ControlPlane>, actor: ActorRef<ProxyMsg>) {
    let plural = KINDS[index];
    let mut delay = RETRY_FIRST;
    loop {
        let (items, revision) = match control.list_objects(plural).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(kind = plural, error = %e, "proxy list failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(RETRY_MAX);
                continue;
            }
        };
        if actor.send_message(ProxyMsg::Replace(index, items)).is_err() {
            return;
        }
        let mut after = revision;
        loop {
            let mut events = match control.watch_objects(plural, after).await {
                Ok(rx) => rx,
                Err(AgentError::Expired(_)) => break,
                Err(e) => {
                    tracing::debug!(kind = plural, error = %e, "proxy watch failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_MAX);
                    continue;
                }
            };
            delay = RETRY_FIRST;
            let mut expired = false;
            while let Some(item) = events.recv().await {
                match item {
                    Ok(ev) => {
                        // One revision may change many objects (a batch of
                        // evictions): resume from just before the latest, so
                        // a stream cut inside it replays the whole of it
                        // (applying an event twice changes nothing).
                        if let Some(rv) =
                            ev.object.pointer("/metadata/resourceVersion").and_then(Value::as_str).and_then(|r| r.parse::<u64>().ok())
                        {
                            after = after.max(rv.saturating_sub(1));
                        }
                        if actor.send_message(ProxyMsg::Event(index, ev)).is_err() {
                            return;
                        }
                    }
                    Err(AgentError::Expired(_)) => {
                        expired = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            if expired {
                break;
            }
            tokio::time::sleep(delay).await;
        }
    }
}

impl ProxyState {
    fn schedule(&mut self, myself: &ActorRef<ProxyMsg>) {
        if !self.sync_pending {
            self.sync_pending = true;
            myself.send_after(SYNC_DELAY, || ProxyMsg::Sync);
        }
    }

    /// The services as they stand; None until every kind has been listed
    /// once (half a view would drop live services).
    fn table(&self) -> Option<ServiceTable> {
        if self.listed.iter().any(|l| !l) {
            return None;
        }
        let services: Vec<Value> = self.objects[0].values().cloned().collect();
        let endpoints: Vec<Value> = self.objects[1].values().cloned().collect();
        Some(ServiceTable::build(&services, &endpoints))
    }

    /// The kernel rules for `table` and the policies: only the nftables
    /// mode pays for resolving policies and rendering.
    fn script(&self, table: &ServiceTable) -> String {
        let pods: Vec<PodNet> = self.objects[2].values().filter_map(PodNet::from_pod).collect();
        let namespaces: Vec<(String, BTreeMap<String, String>)> = self.objects[3]
            .values()
            .map(|n| {
                let name = n.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("").to_string();
                let labels = n
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
                    .unwrap_or_default();
                (name, labels)
            })
            .collect();
        let policies: Vec<Value> = self.objects[4].values().cloned().collect();
        let isolated = isolated_pods(&policies, &pods, &namespaces);
        nft::render_table(&NodeRules { services: table, isolated: &isolated, node_ports: true }, &self.table_name)
    }
}

impl Actor for ProxyActor {
    type Msg = ProxyMsg;
    type State = ProxyState;
    type Arguments = ProxyArgs;

    async fn pre_start(&self, myself: ActorRef<ProxyMsg>, args: ProxyArgs) -> Result<ProxyState, ActorProcessingErr> {
        let informers = (0..KINDS.len()).map(|i| tokio::spawn(inform(i, args.control.clone(), myself.clone()))).collect::<Vec<_>>();
        tracing::info!(node = %args.node, mode = ?args.mode, "proxy started");
        Ok(ProxyState {
            table_name: table_name(&args.node),
            args,
            objects: vec![BTreeMap::new(); KINDS.len()],
            listed: vec![false; KINDS.len()],
            sync_pending: false,
            applied: None,
            informers,
            userspace: Default::default(),
        })
    }

    async fn handle(&self, myself: ActorRef<ProxyMsg>, msg: ProxyMsg, state: &mut ProxyState) -> Result<(), ActorProcessingErr> {
        match msg {
            ProxyMsg::Replace(i, items) => {
                state.objects[i] = items.into_iter().map(|o| (key(&o), o)).collect();
                state.listed[i] = true;
                state.schedule(&myself);
            }
            ProxyMsg::Event(i, ev) => {
                let k = key(&ev.object);
                if ev.kind == "DELETED" {
                    state.objects[i].remove(&k);
                } else {
                    state.objects[i].insert(k, ev.object);
                }
                state.schedule(&myself);
            }
            ProxyMsg::Sync => {
                state.sync_pending = false;
                let Some(table) = state.table() else { return Ok(()) };
                let script = match state.args.mode {
                    ProxyMode::Nftables => Some(state.script(&table)),
                    ProxyMode::Userspace => {
                        state.userspace.sync(&table).await;
                        None
                    }
                    ProxyMode::Off => None,
                };
                let _ = state.args.tables.send(Arc::new(table));
                if let Some(script) = script.filter(|s| state.applied.as_deref() != Some(s.as_str())) {
                    let started = std::time::Instant::now();
                    let to_apply = script.clone();
                    match tokio::task::spawn_blocking(move || nft::apply(&to_apply)).await {
                        Ok(Ok(())) => {
                            tracing::debug!(node = %state.args.node, ms = started.elapsed().as_millis() as u64, "service rules replaced");
                            state.applied = Some(script);
                        }
                        Ok(Err(e)) => {
                            // Try again on the next change or in a second.
                            tracing::warn!(node = %state.args.node, error = %e, "service rules not applied");
                            myself.send_after(Duration::from_secs(1), || ProxyMsg::Sync);
                            state.sync_pending = true;
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(())
    }

    async fn post_stop(&self, _myself: ActorRef<ProxyMsg>, state: &mut ProxyState) -> Result<(), ActorProcessingErr> {
        for t in &state.informers {
            t.abort();
        }
        // A node that leaves takes its rules along, so nothing steers
        // traffic to pods that are no longer looked after.
        if state.args.mode == ProxyMode::Nftables {
            let table = state.table_name.clone();
            let _ = tokio::task::spawn_blocking(move || nft::remove_table(&table)).await;
        }
        Ok(())
    }
}
