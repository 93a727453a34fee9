//! PodActor: one per pod bound to the node. It supervises a ContainerActor
//! per container, applies the restart policy with capped exponential
//! backoff when one exits, writes every transition into the pod's status,
//! and carries out a graceful deletion (stop containers, then remove the
//! pod object).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use serde_json::{json, Value};

use super::container_actor::{
    ContainerActor, ContainerArgs, ContainerMsg, ContainerReport, ContainerState as ContainerActorState, ReportTo,
};
use super::control_plane::{AgentError, ControlPlane};
use super::pod_env::{environment, expand, PodFacts};
use super::pod_inputs::{references, PodInputs};
use super::pod_state::{
    after_exit, pod_phase, pod_ready, AfterExit, BackoffPolicy, ContainerState, ContainerView, RestartPolicy, Stopping,
};
use super::pod_volumes::{self, VolumeContent};
use super::probe::Probe;
use crate::limits::{POD_INPUTS_RETRY_FIRST, POD_INPUTS_RETRY_MAX, POD_VOLUME_REFRESH};
use crate::model::object;
use crate::model::quantity::Quantity;
use crate::runtime::{ContainerRuntime, ContainerSpec, Mount, RunAs, RuntimeError};

/// How soon a status or finalize write that failed is tried again.
const CONTROL_RETRY: Duration = Duration::from_millis(500);

pub struct PodActor;

pub struct PodArgs {
    pub pod: Value,
    pub node: String,
    pub node_ip: String,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub control: Arc<dyn ControlPlane>,
    /// Running containers of this pod found at agent start-up, by name.
    pub adopt: HashMap<String, String>,
    pub backoff: BackoffPolicy,
    /// Where the node keeps its pods' volumes (one directory per pod uid).
    pub volumes_dir: PathBuf,
    /// The node's allocatable CPU and memory (for `resourceFieldRef`s to
    /// limits a container does not set).
    pub node_cpu_millis: i64,
    pub node_memory_bytes: i64,
}

pub enum PodMsg {
    /// Fetch what the pod needs (Secrets, ConfigMaps, tokens), build its
    /// containers' environment and write its volumes; the first success
    /// starts the containers, later ones bring the volumes up to date.
    Prepare,
    StartContainer {
        index: usize,
    },
    ContainerStarted {
        index: usize,
        id: String,
        has_readiness: bool,
    },
    /// A readiness probe's verdict changed.
    Readiness {
        index: usize,
        ready: bool,
    },
    /// A newer version of the pod object.
    Update(Value),
    /// The pod was deleted outright: stop everything, remove nothing.
    Kill,
    WriteStatus,
    Finalize,
}

/// A container actor's reports as this actor's messages.
fn report_to(pod: ActorRef<PodMsg>) -> ReportTo {
    Arc::new(move |report| {
        let msg = match report {
            ContainerReport::Started { index, id, has_readiness } => PodMsg::ContainerStarted { index, id, has_readiness },
            ContainerReport::Readiness { index, ready } => PodMsg::Readiness { index, ready },
        };
        // A pod actor that is gone has no use for the report.
        let _ = pod.send_message(msg);
    })
}

struct Slot {
    spec: ContainerSpec,
    liveness: Option<Probe>,
    readiness: Option<Probe>,
    actor: Option<ActorRef<ContainerMsg>>,
    id: Option<String>,
    previous_id: Option<String>,
    view: ContainerView,
    last_state: Option<ContainerState>,
    restarts: i64,
    last_delay: Option<Duration>,
    started: Option<Instant>,
}

pub struct PodState {
    args_node: String,
    node_ip: String,
    runtime: Arc<dyn ContainerRuntime>,
    control: Arc<dyn ControlPlane>,
    backoff: BackoffPolicy,
    pod: Value,
    uid: String,
    namespace: String,
    name: String,
    policy: RestartPolicy,
    slots: Vec<Slot>,
    by_actor: HashMap<ActorId, usize>,
    adopt: HashMap<String, String>,
    terminating: bool,
    killed: bool,
    start_time: String,
    /// The pod's own address where the runtime gives it one (docker).
    pod_ip: Option<String>,
    /// This pod's volumes on the node.
    pod_dir: PathBuf,
    node_cpu_millis: i64,
    node_memory_bytes: i64,
    /// Whether the containers have their environment and volumes (and so
    /// have been started).
    prepared: bool,
    /// The last wait before preparing again after a failure, and what failed.
    prepare_retry: Option<Duration>,
    prepare_error: Option<String>,
}

fn quantity(v: Option<&Value>) -> Option<Quantity> {
    match v? {
        Value::String(s) => Quantity::parse(s).ok(),
        Value::Number(n) => Quantity::parse(&n.to_string()).ok(),
        _ => None,
    }
}

/// The annotation `flotilla chaos kill-pod` sets (to a fresh value each
/// time) to have the agent kill the pod's containers.
pub const CHAOS_KILL_ANNOTATION: &str = "chaos.flotilla.io/kill";

/// How soon a container actor that failed (a fault of ours) is replaced.
const ACTOR_RESTART_DELAY: Duration = Duration::from_millis(100);

/// Retry period while the runtime is unavailable.
const RUNTIME_UNAVAILABLE_RETRY: Duration = Duration::from_millis(500);

fn chaos_kill_order(pod: &Value) -> Option<&str> {
    pod.pointer("/metadata/annotations").and_then(|a| a.get(CHAOS_KILL_ANNOTATION)).and_then(Value::as_str)
}

/// Who a container runs as: its own securityContext over the pod's, as in
/// Kubernetes. Validation keeps the ids in range; one that is not (an
/// object written before that check) counts as unset.
fn run_as(pod: &Value, container: &Value) -> RunAs {
    use k8s_openapi::api::core::v1::{PodSecurityContext, SecurityContext};
    let pod_ctx: PodSecurityContext =
        pod.pointer("/spec/securityContext").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
    let ctx: SecurityContext = container.get("securityContext").and_then(|v| serde_json::from_value(v.clone()).ok()).unwrap_or_default();
    let id = |v: Option<i64>| v.and_then(|n| u32::try_from(n).ok());
    RunAs {
        user: id(ctx.run_as_user.or(pod_ctx.run_as_user)),
        group: id(ctx.run_as_group.or(pod_ctx.run_as_group)),
        non_root: ctx.run_as_non_root.or(pod_ctx.run_as_non_root).unwrap_or(false),
    }
}

/// The runtime's view of one container of a pod object.
pub fn container_spec(pod: &Value, container: &Value, node: &str) -> ContainerSpec {
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array).map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    // Only limits are enforced, as in Kubernetes: a container may use more
    // than it requested (requests are the scheduler's business).
    let limits = container.pointer("/resources/limits");
    let pick = |k: &str| quantity(limits.and_then(|l| l.get(k)));
    let env = container
        .get("env")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    Some((e.get("name")?.as_str()?.to_string(), e.get("value").and_then(Value::as_str).unwrap_or("").to_string()))
                })
                .collect()
        })
        .unwrap_or_default();
    ContainerSpec {
        pod_uid: object::uid(pod).unwrap_or("").into(),
        pod_name: object::name(pod).unwrap_or("").into(),
        namespace: object::namespace(pod).unwrap_or("default").into(),
        node: node.into(),
        name: container.get("name").and_then(Value::as_str).unwrap_or("").into(),
        image: container.get("image").and_then(Value::as_str).unwrap_or("").into(),
        pull_policy: container.get("imagePullPolicy").and_then(Value::as_str).unwrap_or("IfNotPresent").into(),
        command: strings(container.get("command")),
        args: strings(container.get("args")),
        env,
        working_dir: container.get("workingDir").and_then(Value::as_str).map(String::from),
        cpu_millis: pick("cpu").map(|q| q.millis()),
        memory_bytes: pick("memory").map(|q| q.value()),
        run_as: run_as(pod, container),
        mounts: vec![],
    }
}

/// Why a pod's environment and volumes could not be prepared.
enum PrepareError {
    /// The pod was replaced or deleted: nothing to do.
    Gone,
    /// What the pod's status and events say.
    Failed(String),
}

impl PodState {
    /// Fetches the pod's inputs (where it names any, or may mount its
    /// ServiceAccount token), builds each container's environment and
    /// mounts and writes the volumes. Answers whether the volumes show
    /// anything that changes (and so are to be brought up to date).
    async fn prepare(&mut self) -> Result<bool, PrepareError> {
        let pod: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(self.pod.clone()).map_err(|e| PrepareError::Failed(format!("the pod object cannot be read: {e}")))?;
        let mounts = self.runtime.mounts_volumes();
        let mut inputs = if mounts || !references(&pod).is_empty() {
            match self.control.pod_inputs(&self.namespace, &self.name, &self.uid).await {
                Ok(inputs) => inputs,
                Err(AgentError::Gone(_)) => return Err(PrepareError::Gone),
                Err(e) => return Err(PrepareError::Failed(e.to_string())),
            }
        } else {
            PodInputs::default()
        };
        // Without a file system of its own a container has nowhere to
        // mount the token; it gets the rest.
        inputs.automount &= mounts;
        let facts = PodFacts {
            node_ip: &self.node_ip,
            pod_ip: (!self.runtime.gives_pods_addresses()).then_some(self.node_ip.as_str()),
            node_cpu_millis: self.node_cpu_millis,
            node_memory_bytes: self.node_memory_bytes,
        };
        let planned = pod_volumes::plan(&pod, &inputs, &facts).map_err(PrepareError::Failed)?;
        let containers = pod.spec.as_ref().map(|s| s.containers.clone()).unwrap_or_default();
        let mut built = Vec::with_capacity(self.slots.len());
        for (slot, c) in self.slots.iter().zip(&containers) {
            let env = environment(&pod, c, &inputs, &facts).map_err(|m| PrepareError::Failed(format!("container {}: {m}", c.name)))?;
            let plans = pod_volumes::mounts(&pod, c, &inputs).map_err(|m| PrepareError::Failed(format!("container {}: {m}", c.name)))?;
            let mounts: Vec<Mount> = plans
                .into_iter()
                .map(|m| {
                    let dir = pod_volumes::volume_dir(&self.pod_dir, &m.volume);
                    Mount {
                        host_path: m.sub_path.map_or(dir.clone(), |sub| dir.join(sub)),
                        container_path: m.container_path,
                        read_only: m.read_only,
                    }
                })
                .collect();
            let vars: std::collections::BTreeMap<String, String> = env.iter().cloned().collect();
            let base = container_spec(&self.pod, &serde_json::to_value(c).unwrap_or_default(), &slot.spec.node);
            built.push(ContainerSpec {
                command: base.command.iter().map(|a| expand(a, &vars)).collect(),
                args: base.args.iter().map(|a| expand(a, &vars)).collect(),
                env,
                mounts,
                ..base
            });
        }
        let refresh = planned.iter().any(|v| matches!(&v.content, VolumeContent::Files(f) if !f.is_empty()));
        if !planned.is_empty() {
            let dir = self.pod_dir.clone();
            tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                // Only root (and the runtime, which is root) reads the
                // node's pod volumes on the host.
                if let Some(root) = dir.parent().filter(|r| !r.exists()) {
                    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700).create(root)?;
                }
                std::fs::create_dir_all(&dir)?;
                planned.iter().try_for_each(|v| pod_volumes::write(&dir, v))
            })
            .await
            .map_err(|e| PrepareError::Failed(format!("writing the pod's volumes: {e}")))?
            .map_err(|e| PrepareError::Failed(format!("writing the pod's volumes under {}: {e}", self.pod_dir.display())))?;
        }
        for (slot, spec) in self.slots.iter_mut().zip(built) {
            slot.spec = spec;
        }
        Ok(refresh)
    }

    fn status(&self) -> Value {
        // Where pods get addresses of their own, a pod has none until its
        // first container runs; never the node's, which would stand for
        // everything the node sends in policies.
        let pod_ip = match (&self.pod_ip, self.runtime.gives_pods_addresses()) {
            (Some(ip), _) => Some(ip.as_str()),
            (None, false) => Some(self.node_ip.as_str()),
            (None, true) => None,
        };
        let views: Vec<ContainerView> = self.slots.iter().map(|s| s.view.clone()).collect();
        let phase = pod_phase(self.policy, &views);
        let ready = pod_ready(&views);
        let now = object::now();
        let cond = |t: &str, ok: bool| json!({"type": t, "status": if ok { "True" } else { "False" }, "lastTransitionTime": now});
        let statuses: Vec<Value> = self
            .slots
            .iter()
            .map(|s| {
                let mut v = json!({
                    "name": s.spec.name, "image": s.spec.image, "imageID": "",
                    "state": s.view.state.to_json(), "ready": s.view.ready,
                    "restartCount": s.restarts, "started": matches!(s.view.state, ContainerState::Running { .. }),
                });
                // A container that ended and is not restarted keeps its id
                // (in `previous_id`), so its logs can still be read.
                let ended = matches!(s.view.state, ContainerState::Terminated { .. });
                if let Some(id) = s.id.as_ref().or(s.previous_id.as_ref().filter(|_| ended)) {
                    let id = format!("{}://{id}", self.runtime.kind());
                    if let Some(t) = v["state"].get_mut("terminated") {
                        t["containerID"] = json!(id);
                    }
                    v["containerID"] = json!(id);
                }
                if let Some(last) = &s.last_state {
                    v["lastState"] = last.to_json();
                    if let (Some(prev), Some(t)) = (&s.previous_id, v["lastState"].get_mut("terminated")) {
                        t["containerID"] = json!(format!("{}://{prev}", self.runtime.kind()));
                    }
                }
                v
            })
            .collect();
        json!({
            "phase": phase.as_str(),
            "conditions": [cond("PodScheduled", true), cond("Initialized", true), cond("ContainersReady", ready), cond("Ready", ready)],
            "hostIP": self.node_ip, "podIP": pod_ip, "podIPs": pod_ip.map(|ip| vec![json!({"ip": ip})]).unwrap_or_default(),
            "startTime": self.start_time,
            "containerStatuses": statuses,
        })
    }

    fn all_stopped(&self) -> bool {
        self.slots.iter().all(|s| s.actor.is_none())
    }
}

impl Actor for PodActor {
    type Msg = PodMsg;
    type State = PodState;
    type Arguments = PodArgs;

    async fn pre_start(&self, myself: ActorRef<PodMsg>, args: PodArgs) -> Result<PodState, ActorProcessingErr> {
        let pod = args.pod;
        let containers = pod.pointer("/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default();
        let slots = containers
            .iter()
            .map(|c| Slot {
                spec: container_spec(&pod, c, &args.node),
                liveness: Probe::parse(c.get("livenessProbe"), c),
                readiness: Probe::parse(c.get("readinessProbe"), c),
                actor: None,
                id: None,
                previous_id: None,
                view: ContainerView {
                    name: c.get("name").and_then(Value::as_str).unwrap_or("").into(),
                    state: ContainerState::Waiting { reason: "ContainerCreating".into(), message: String::new() },
                    ever_started: false,
                    ready: false,
                },
                last_state: None,
                restarts: 0,
                last_delay: None,
                started: None,
            })
            .collect::<Vec<_>>();
        let state = PodState {
            args_node: args.node,
            node_ip: args.node_ip,
            runtime: args.runtime,
            control: args.control,
            backoff: args.backoff,
            uid: object::uid(&pod).unwrap_or("").into(),
            namespace: object::namespace(&pod).unwrap_or("default").into(),
            name: object::name(&pod).unwrap_or("").into(),
            policy: RestartPolicy::parse(pod.pointer("/spec/restartPolicy").and_then(Value::as_str)),
            slots,
            by_actor: HashMap::new(),
            adopt: args.adopt,
            terminating: false,
            killed: false,
            start_time: object::now(),
            pod_ip: None,
            pod_dir: args.volumes_dir.join(object::uid(&pod).unwrap_or("no-uid")),
            node_cpu_millis: args.node_cpu_millis,
            node_memory_bytes: args.node_memory_bytes,
            prepared: false,
            prepare_retry: None,
            prepare_error: None,
            pod,
        };
        if object::meta_str(&state.pod, "deletionTimestamp").is_some() {
            myself.send_message(PodMsg::Update(state.pod.clone()))?;
        } else {
            myself.send_message(PodMsg::Prepare)?;
            myself.send_message(PodMsg::WriteStatus)?;
        }
        Ok(state)
    }

    async fn handle(&self, myself: ActorRef<PodMsg>, msg: PodMsg, state: &mut PodState) -> Result<(), ActorProcessingErr> {
        match msg {
            PodMsg::Prepare => {
                if state.terminating || state.killed {
                    return Ok(());
                }
                match state.prepare().await {
                    Ok(refresh) => {
                        state.prepare_retry = None;
                        state.prepare_error = None;
                        if !state.prepared {
                            state.prepared = true;
                            for index in 0..state.slots.len() {
                                myself.send_message(PodMsg::StartContainer { index })?;
                            }
                        }
                        if refresh {
                            myself.send_after(POD_VOLUME_REFRESH, || PodMsg::Prepare);
                        }
                    }
                    Err(PrepareError::Gone) => {}
                    Err(PrepareError::Failed(message)) => {
                        let delay = state.prepare_retry.map_or(POD_INPUTS_RETRY_FIRST, |d| (d * 2).min(POD_INPUTS_RETRY_MAX));
                        state.prepare_retry = Some(delay);
                        let new = state.prepare_error.as_deref() != Some(message.as_str());
                        if state.prepared {
                            // Running containers keep what their volumes
                            // last held, as in Kubernetes.
                            if new {
                                tracing::warn!(pod = %state.name, error = %message, "pod volumes not brought up to date");
                            }
                            myself.send_after(POD_VOLUME_REFRESH, || PodMsg::Prepare);
                        } else {
                            for slot in &mut state.slots {
                                slot.view.state =
                                    ContainerState::Waiting { reason: "CreateContainerConfigError".into(), message: message.clone() };
                            }
                            myself.send_after(delay, || PodMsg::Prepare);
                            if new {
                                tracing::info!(pod = %state.name, error = %message, "pod cannot start yet; retrying in {delay:?}");
                                state.control.record_event(&state.pod, "Warning", "Failed", &message).await;
                                myself.send_message(PodMsg::WriteStatus)?;
                            }
                        }
                        state.prepare_error = Some(message);
                    }
                }
            }
            PodMsg::StartContainer { index } => {
                if state.terminating || state.killed || state.slots.get(index).is_none_or(|s| s.actor.is_some()) {
                    return Ok(());
                }
                let adopt = state.adopt.remove(&state.slots[index].spec.name);
                let slot = &state.slots[index];
                let args = ContainerArgs {
                    index,
                    runtime: state.runtime.clone(),
                    spec: slot.spec.clone(),
                    pod: report_to(myself.clone()),
                    adopt,
                    liveness: slot.liveness.clone(),
                    readiness: slot.readiness.clone(),
                };
                match Actor::spawn_linked(None, ContainerActor, args, myself.get_cell()).await {
                    Ok((actor, _)) => {
                        state.by_actor.insert(actor.get_id(), index);
                        state.slots[index].actor = Some(actor);
                    }
                    Err(e) => {
                        let (reason, message) = match &e {
                            ractor::SpawnErr::StartupFailed(inner) => match inner.downcast_ref::<RuntimeError>() {
                                Some(re) => (re.reason(), re.to_string()),
                                None => ("CreateContainerError", inner.to_string()),
                            },
                            other => ("CreateContainerError", other.to_string()),
                        };
                        let slot = &mut state.slots[index];
                        // The runtime being away (an engine restarting, the
                        // node's pod network not there yet) is no fault of
                        // the container: no restart counted, no back-off
                        // built up, one event while it lasts.
                        let transient = reason == "RuntimeUnavailable";
                        let already_waiting = matches!(&slot.view.state, ContainerState::Waiting { reason: r, .. } if r == reason);
                        let delay = if transient {
                            RUNTIME_UNAVAILABLE_RETRY
                        } else {
                            let d = state.backoff.next_delay(slot.last_delay, Duration::ZERO);
                            slot.last_delay = Some(d);
                            d
                        };
                        // Between pull attempts Kubernetes shows ImagePullBackOff.
                        let shown = if reason == "ErrImagePull" && slot.restarts > 0 { "ImagePullBackOff" } else { reason };
                        // Nothing was started for an image that cannot be had or a
                        // container its own settings forbid, so nothing restarted.
                        slot.restarts += i64::from(!matches!(reason, "ErrImagePull" | "CreateContainerConfigError") && !transient);
                        slot.view.state = ContainerState::Waiting { reason: shown.into(), message: message.clone() };
                        myself.send_after(delay, move || PodMsg::StartContainer { index });
                        if transient && already_waiting {
                            // Nothing new to say: no event, no status write.
                            tracing::debug!(pod = %state.name, container = %slot.spec.name, "runtime still unavailable");
                            return Ok(());
                        }
                        tracing::info!(pod = %state.name, container = %slot.spec.name, reason, "container could not start; retrying in {delay:?}");
                        state
                            .control
                            .record_event(&state.pod, "Warning", "Failed", &format!("container {}: {message}", slot.spec.name))
                            .await;
                        myself.send_message(PodMsg::WriteStatus)?;
                    }
                }
            }
            PodMsg::Readiness { index, ready } => {
                if let Some(slot) = state.slots.get_mut(index) {
                    if slot.actor.is_some() && matches!(slot.view.state, ContainerState::Running { .. }) && slot.view.ready != ready {
                        slot.view.ready = ready;
                        myself.send_message(PodMsg::WriteStatus)?;
                    }
                }
            }
            PodMsg::ContainerStarted { index, id, has_readiness } => {
                let Some(slot) = state.slots.get_mut(index) else { return Ok(()) };
                // Supervision events overtake ordinary messages: a container
                // that exited at once may already have been handled.
                if slot.actor.is_none() {
                    slot.previous_id = Some(id);
                    return Ok(());
                }
                if slot.id.as_deref() == Some(id.as_str()) && matches!(slot.view.state, ContainerState::Running { .. }) {
                    // The same container, adopted by a new actor after ours
                    // failed: nothing about it changed.
                    return Ok(());
                }
                if let Some(old) = slot.previous_id.take() {
                    let _ = state.runtime.remove(&old).await;
                }
                // A restarted container is a new one with a new address
                // (pods here have no pause container holding it): the first
                // container's is the pod's.
                if index == 0 || state.pod_ip.is_none() {
                    if let Some(ip) = state.runtime.pod_ip(&id).await {
                        state.pod_ip = Some(ip);
                    }
                }
                let Some(slot) = state.slots.get_mut(index) else { return Ok(()) };
                slot.id = Some(id);
                slot.started = Some(Instant::now());
                slot.view.state = ContainerState::Running { started_at: object::now() };
                slot.view.ever_started = true;
                slot.view.ready = !has_readiness;
                myself.send_message(PodMsg::WriteStatus)?;
            }
            PodMsg::Update(pod) => {
                let deleting = object::meta_str(&pod, "deletionTimestamp").is_some();
                let kill_order = chaos_kill_order(&pod);
                if kill_order.is_some() && kill_order != chaos_kill_order(&state.pod) && !deleting {
                    // `flotilla chaos kill-pod`: the containers die as if they
                    // crashed, and the restart policy takes it from there.
                    tracing::info!(pod = %state.name, "chaos: killing the pod's containers");
                    for slot in &state.slots {
                        if let Some(id) = &slot.id {
                            let _ = state.runtime.stop(id, Duration::ZERO).await;
                        }
                    }
                }
                state.pod = pod;
                if deleting && !state.terminating {
                    state.terminating = true;
                    let grace = state
                        .pod
                        .pointer("/metadata/deletionGracePeriodSeconds")
                        .or_else(|| state.pod.pointer("/spec/terminationGracePeriodSeconds"))
                        .and_then(Value::as_i64)
                        .unwrap_or(30)
                        .max(0) as u64;
                    for slot in &state.slots {
                        if let Some(a) = &slot.actor {
                            let _ = a.send_message(ContainerMsg::Stop { grace: Duration::from_secs(grace) });
                        }
                    }
                    if state.all_stopped() {
                        myself.send_message(PodMsg::Finalize)?;
                    }
                }
            }
            PodMsg::Kill => {
                state.killed = true;
                for slot in &state.slots {
                    if let Some(a) = &slot.actor {
                        let _ = a.send_message(ContainerMsg::Stop { grace: Duration::from_secs(2) });
                    }
                }
                if state.all_stopped() {
                    cleanup(state).await;
                    myself.stop(Some("pod deleted".into()));
                }
            }
            PodMsg::WriteStatus => {
                if state.killed {
                    return Ok(());
                }
                match state.control.update_pod_status(&state.namespace, &state.name, &state.uid, state.status()).await {
                    Ok(()) => {}
                    Err(AgentError::Gone(_)) => {}
                    Err(AgentError::Refused(e)) => tracing::warn!(pod = %state.name, error = %e, "pod status refused by the API"),
                    Err(e) => {
                        tracing::debug!(pod = %state.name, error = %e, "status write failed; retrying");
                        myself.send_after(CONTROL_RETRY, || PodMsg::WriteStatus);
                    }
                }
            }
            PodMsg::Finalize => match state.control.finalize_pod(&state.namespace, &state.name, &state.uid).await {
                Ok(()) | Err(AgentError::Gone(_)) => {
                    cleanup(state).await;
                    myself.stop(Some("pod deleted".into()));
                }
                Err(e) => {
                    tracing::debug!(pod = %state.name, error = %e, "finalize failed; retrying");
                    myself.send_after(CONTROL_RETRY, || PodMsg::Finalize);
                }
            },
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<PodMsg>,
        evt: SupervisionEvent,
        state: &mut PodState,
    ) -> Result<(), ActorProcessingErr> {
        // A container actor ends with its container's exit in its final
        // state. Without one (it failed, panicked or was killed) our actor
        // broke, not the container: the container is still there, or its
        // exit is, so a new actor adopts it and nothing about it changes.
        let (cell, exit, fault) = match evt {
            SupervisionEvent::ActorTerminated(cell, final_state, reason) => {
                let exit = final_state.and_then(|mut b| b.take::<ContainerActorState>().ok()).and_then(|s| s.exited);
                let fault = exit.is_none().then(|| reason.unwrap_or_else(|| "stopped".into()));
                (cell, exit, fault)
            }
            SupervisionEvent::ActorFailed(cell, err) => (cell, None, Some(err.to_string())),
            _ => return Ok(()),
        };
        let Some(index) = state.by_actor.remove(&cell.get_id()) else { return Ok(()) };
        if let Some(fault) = fault {
            let slot = &mut state.slots[index];
            tracing::warn!(pod = %state.name, container = %slot.spec.name, error = %fault, "container actor ended without its container exiting");
            if state.terminating || state.killed {
                // It was being stopped: make sure it is, then carry on as
                // if it had stopped.
                if let Some(id) = &slot.id {
                    let _ = state.runtime.stop(id, Duration::ZERO).await;
                }
            } else {
                slot.actor = None;
                if let Some(id) = slot.id.clone() {
                    state.adopt.insert(slot.spec.name.clone(), id);
                }
                myself.send_after(ACTOR_RESTART_DELAY, move || PodMsg::StartContainer { index });
                return Ok(());
            }
        }
        let slot = &mut state.slots[index];
        slot.actor = None;
        let ran_for = slot.started.map(|s| s.elapsed()).unwrap_or_default();
        let terminated = ContainerState::Terminated {
            exit_code: exit.as_ref().map_or(0, |e| e.code),
            reason: exit.as_ref().map_or_else(|| "Completed".to_string(), |e| e.reason.clone()),
            message: exit.as_ref().map_or_else(String::new, |e| e.message.clone()),
            started_at: match &slot.view.state {
                ContainerState::Running { started_at } => started_at.clone(),
                _ => String::new(),
            },
            finished_at: object::now(),
        };
        slot.view.ready = false;
        slot.view.ever_started = true;
        slot.previous_id = slot.id.take().or(slot.previous_id.take());
        let code = exit.as_ref().map_or(0, |e| e.code);
        let stopping = match (state.killed, state.terminating) {
            (true, _) => Stopping::Killed,
            (false, true) => Stopping::Terminating,
            (false, false) => Stopping::No,
        };
        let (last_delay, all_stopped) = (slot.last_delay, state.all_stopped());
        match after_exit(state.policy, &state.backoff, last_delay, ran_for, code, stopping, all_stopped) {
            AfterExit::AwaitOthers => {
                state.slots[index].view.state = terminated;
                return Ok(());
            }
            AfterExit::Finalize => {
                state.slots[index].view.state = terminated;
                myself.send_message(PodMsg::Finalize)?;
                return Ok(());
            }
            AfterExit::CleanUpAndStop => {
                state.slots[index].view.state = terminated;
                cleanup(state).await;
                myself.stop(Some("pod deleted".into()));
                return Ok(());
            }
            AfterExit::Restart { delay } => {
                let slot = &mut state.slots[index];
                slot.last_delay = Some(delay);
                slot.restarts += 1;
                slot.last_state = Some(terminated);
                slot.view.state = ContainerState::Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: format!("back-off {}s restarting failed container {}", delay.as_secs_f64(), slot.spec.name),
                };
                tracing::info!(pod = %state.name, container = %slot.spec.name, code, "container exited; restarting in {delay:?}");
                let message = format!("container {} exited with code {code}; restarting in {:.1}s", slot.spec.name, delay.as_secs_f64());
                state.control.record_event(&state.pod, "Warning", "BackOff", &message).await;
                myself.send_after(delay, move || PodMsg::StartContainer { index });
            }
            AfterExit::StayTerminated => state.slots[index].view.state = terminated,
        }
        myself.send_message(PodMsg::WriteStatus)?;
        Ok(())
    }
}

async fn cleanup(state: &mut PodState) {
    for slot in &mut state.slots {
        for id in [slot.id.take(), slot.previous_id.take()].into_iter().flatten() {
            let _ = state.runtime.remove(&id).await;
        }
    }
    let dir = state.pod_dir.clone();
    match tokio::task::spawn_blocking(move || pod_volumes::remove_pod_dir(&dir)).await {
        Ok(Err(e)) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(pod = %state.name, error = %e, "the pod's volumes could not be removed")
        }
        _ => {}
    }
    tracing::debug!(pod = %state.name, node = %state.args_node, "pod cleaned up");
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn a_containers_security_context_overrides_the_pods() {
        let pod = json!({"metadata": {"name": "p", "uid": "u"},
            "spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 100, "runAsNonRoot": true}, "containers": []}});
        let inherits = super::container_spec(&pod, &json!({"name": "a", "image": "i"}), "n1");
        assert_eq!(inherits.run_as, crate::runtime::RunAs { user: Some(1000), group: Some(100), non_root: true });
        let own = json!({"name": "b", "image": "i", "securityContext": {"runAsUser": 65534, "runAsNonRoot": false}});
        assert_eq!(
            super::container_spec(&pod, &own, "n1").run_as,
            crate::runtime::RunAs { user: Some(65534), group: Some(100), non_root: false }
        );
        let bare = super::container_spec(&json!({"spec": {}}), &json!({"name": "c"}), "n1");
        assert_eq!(bare.run_as, crate::runtime::RunAs::default());
    }
}
