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
use crate::agent::control_plane::{ControlPlane, NetworkSource};
use crate::tasks::OwnedTask;
use crate::watcher::{Backoff, Reflector, Watched, Watcher};

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
    /// What the watcher of one kind saw.
    Watched(usize, Watched),
    Sync,
    /// The node's API relay listens here: the `kubernetes` Service's
    /// virtual IP is carried to it rather than to the servers (which may
    /// listen where pods cannot reach).
    ApiRelay(std::net::SocketAddrV4),
}

pub struct ProxyState {
    args: ProxyArgs,
    table_name: String,
    objects: Vec<Reflector>,
    sync_pending: bool,
    applied: Option<String>,
    api_relay: Option<std::net::SocketAddrV4>,
    _informers: Vec<OwnedTask>,
    userspace: super::userspace_proxy::UserspaceProxy,
}

pub struct ProxyActor;

/// nft identifiers: the node's name with anything but letters, digits
/// and `_` turned into `_`. One table per node, so several agents on one
/// host (tests, `flotilla up` next to an agent) do not overwrite each other.
pub fn table_name(node: &str) -> String {
    let clean: String = node.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    format!("flotilla_{clean}")
}

/// Follows one kind and hands on what it sees; ends with the actor.
async fn inform(index: usize, control: Arc<dyn ControlPlane>, actor: ActorRef<ProxyMsg>) {
    let source = NetworkSource { control, plural: KINDS[index] };
    let mut watcher = Watcher::new(source, Backoff { first: RETRY_FIRST, max: RETRY_MAX });
    loop {
        let watched = watcher.next().await;
        if actor.send_message(ProxyMsg::Watched(index, watched)).is_err() {
            return;
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
        if self.objects.iter().any(|r| !r.listed) {
            return None;
        }
        let services: Vec<Value> = self.objects[0].objects.values().cloned().collect();
        let endpoints: Vec<Value> = self.objects[1].objects.values().cloned().collect();
        Some(ServiceTable::build(&services, &endpoints))
    }

    /// The kernel rules for `table` and the policies: only the nftables
    /// mode pays for resolving policies and rendering.
    fn script(&self, table: &ServiceTable) -> String {
        let pods: Vec<PodNet> = self.objects[2].objects.values().filter_map(PodNet::from_pod).collect();
        let namespaces: Vec<(String, BTreeMap<String, String>)> = self.objects[3]
            .objects
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
        let policies: Vec<Value> = self.objects[4].objects.values().cloned().collect();
        let isolated = isolated_pods(&policies, &pods, &namespaces);
        nft::render_table(&NodeRules { services: table, isolated: &isolated, node_ports: true }, &self.table_name)
    }
}

impl Actor for ProxyActor {
    type Msg = ProxyMsg;
    type State = ProxyState;
    type Arguments = ProxyArgs;

    async fn pre_start(&self, myself: ActorRef<ProxyMsg>, args: ProxyArgs) -> Result<ProxyState, ActorProcessingErr> {
        let informers = (0..KINDS.len()).map(|i| OwnedTask::spawn(inform(i, args.control.clone(), myself.clone()))).collect::<Vec<_>>();
        tracing::info!(node = %args.node, mode = ?args.mode, "proxy started");
        Ok(ProxyState {
            table_name: table_name(&args.node),
            args,
            objects: vec![Reflector::default(); KINDS.len()],
            sync_pending: false,
            applied: None,
            api_relay: None,
            _informers: informers,
            userspace: Default::default(),
        })
    }

    async fn handle(&self, myself: ActorRef<ProxyMsg>, msg: ProxyMsg, state: &mut ProxyState) -> Result<(), ActorProcessingErr> {
        match msg {
            ProxyMsg::ApiRelay(addr) => {
                state.api_relay = Some(addr);
                state.schedule(&myself);
            }
            ProxyMsg::Watched(i, watched) => {
                state.objects[i].apply(watched);
                state.schedule(&myself);
            }
            ProxyMsg::Sync => {
                state.sync_pending = false;
                let Some(table) = state.table() else { return Ok(()) };
                let script = match state.args.mode {
                    ProxyMode::Nftables => Some(match state.api_relay {
                        Some(relay) => {
                            let (ns, name) = super::api_relay::API_SERVICE;
                            state.script(&table.with_backend_for(ns, name, relay))
                        }
                        None => state.script(&table),
                    }),
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
        // A node that leaves takes its rules along, so nothing steers
        // traffic to pods that are no longer looked after.
        if state.args.mode == ProxyMode::Nftables {
            let table = state.table_name.clone();
            let _ = tokio::task::spawn_blocking(move || nft::remove_table(&table)).await;
        }
        Ok(())
    }
}
