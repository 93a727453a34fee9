//! One simulated cluster and its loop. Time moves in fixed steps on a
//! manual clock; each step delivers heartbeats, feeds the leader's cache
//! from the store's change log, runs every due reconciler pass and the
//! failure detector through the real deciders and the real executor, ticks
//! every agent, applies the workload and fault schedule drawn from the
//! seed, and checks the invariants. Nothing here reads the machine's clock
//! or randomness, and every map is ordered, so a seed is a run.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::{json, Value};

use super::agent::{Beat, SimAgent, NODE_PODS_MAX};
use super::invariants::{self, Violation};
use super::rng::SimRng;
use super::store::MemStore;
use super::trace::Trace;
pub use super::workload::Workload;
use crate::clock::{Clock, ManualClock, Mono};
use crate::leader::cache::{CacheState, Kind};
use crate::leader::command::{Command, Now, Outcome};
use crate::leader::controller::{run_pass, Reconciler, ReconcilerFactory};
use crate::leader::executor::{run_one, ExecLimits};
use crate::leader::node_health::{NodeCommand, NodeHealth, NodeInput};
use crate::leader::node_lifecycle::{health_settings, observations, writes};
use crate::leader::LeaderSettings;
use crate::model::addresses::NetworkPlan;
use crate::model::heartbeats::{Heartbeats, NodeUsage};
use crate::model::object;

/// The length of one simulation step.
pub const STEP: Mono = Mono::from_millis(100);
/// How often agents beat (as the real agent does).
pub const BEAT_PERIOD: Mono = Mono::from_millis(200);
/// How often (in steps) the harness adds the pods up afresh to check the
/// sums it keeps.
const TALLY_AUDIT_STEPS: u64 = 1_000;
/// How long the cluster is left alone at the end before liveness is judged.
pub const QUIET_PERIOD: Mono = Mono::from_secs(60);
/// How much longer than the quiet period convergence may take (a rolling
/// update of a large Deployment with a surge of one pod takes minutes).
pub const LIVENESS_GRACE: Mono = Mono::from_secs(120);
/// Attempts a workload client makes at a create the store refuses.
const CREATE_TRIES_MAX: usize = 50;
/// Namespaces the workloads are spread over.
const NAMESPACES: [&str; 3] = ["default", "shop", "batch"];

/// How hard the run is on the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultProfile {
    None,
    Default,
    Heavy,
}

impl std::str::FromStr for FaultProfile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(FaultProfile::None),
            "default" => Ok(FaultProfile::Default),
            "heavy" => Ok(FaultProfile::Heavy),
            other => Err(format!("unknown fault profile {other:?}; use none, default or heavy")),
        }
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub servers: usize,
    pub nodes: usize,
    /// Replicas over all Deployments at the start.
    pub pods: usize,
    pub duration: Mono,
    pub faults: FaultProfile,
    /// Print every trace line as it happens.
    pub print_trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            servers: 3,
            nodes: 50,
            pods: 1000,
            duration: Mono::from_secs(600),
            faults: FaultProfile::Default,
            print_trace: false,
        }
    }
}

/// What a run came to.
#[derive(Debug, Clone)]
pub struct SimReport {
    pub seed: u64,
    pub steps: u64,
    pub simulated: Mono,
    pub digest: u64,
    pub trace_lines: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub terms: u64,
    pub nodes_marked_not_ready: u64,
    pub pods_evicted: u64,
    pub pods_running: usize,
    pub store_writes_failed: u64,
    pub controller_restarts: u64,
    /// How long after the last fault and workload change it converged.
    pub converged_after: Option<Mono>,
    pub violation: Option<Violation>,
}

struct Slot {
    factory: ReconcilerFactory,
    reconciler: Box<dyn Reconciler>,
    next_resync: Mono,
    blocked_until: Mono,
    failures: u32,
    more: bool,
    /// Its last pass wrote up to this revision: like the server's
    /// controller, it waits (up to `cache_catch_up_ms`) until the cache
    /// has seen it, so it never decides twice on a stale view.
    catch_up: Option<(u64, Mono)>,
}

/// The leader side of the current term.
struct Leader {
    cache: RwLock<CacheState>,
    cursor: u64,
    slots: Vec<Slot>,
    health: NodeHealth,
    next_check: Mono,
    heartbeats: Heartbeats,
    /// The cache feed stalls (a slow store) until then.
    slow_until: Mono,
    /// When the term began.
    started: Mono,
}

pub struct World {
    cfg: SimConfig,
    rng: SimRng,
    clock: Arc<ManualClock>,
    store: Arc<MemStore>,
    pub agents: Vec<SimAgent>,
    in_flight: Vec<Beat>,
    leader: Leader,
    leader_member: usize,
    settings: LeaderSettings,
    network: NetworkPlan,
    pub trace: Trace,
    pub workloads: BTreeMap<String, Workload>,
    /// Objects a client means to delete and will retry until the store
    /// takes the delete: (kind, namespace, name).
    pub leftovers: Vec<(Kind, String, String)>,
    /// The end of the latest fault: the checks that need calm wait past it.
    pub faults_until: Mono,
    fault_counts: BTreeMap<&'static str, u64>,
    /// The world's own watch (for agents and checks).
    cursor: u64,
    /// The first node each pod uid was seen bound to.
    pub bound_to: BTreeMap<String, String>,
    /// Pods seen bound to a second node: (uid, first, second).
    pub rebinds: Vec<(String, String, String)>,
    /// What the checks need of each pod, by uid.
    pub pod_summaries: BTreeMap<String, invariants::PodSummary>,
    /// The Deployment (namespace/name) of each ReplicaSet, by uid.
    pub set_owners: BTreeMap<String, String>,
    pub node_allocatable: BTreeMap<String, (i64, i64, i64)>,
    agent_index: BTreeMap<String, usize>,
    /// The pod summaries added up, kept as they change.
    tallies: invariants::Tallies,
    step: u64,
    terms: u64,
    not_ready_marks: u64,
    evicted: u64,
    controller_restarts: u64,
    next_workload: Mono,
    next_fault: Mono,
    made: u32,
}

impl World {
    pub fn new(cfg: SimConfig) -> World {
        let mut rng = SimRng::new(cfg.seed);
        let clock = ManualClock::new(1_800_000_000_000 + rng.below(1_000_000_000));
        let store = Arc::new(MemStore::new(rng.next_u64(), clock.clone()));
        let settings = LeaderSettings::default();
        let heartbeats = Heartbeats::with_clock(clock.clone());
        let leader = Leader::new(&settings, heartbeats, Mono::ZERO, &store);
        let agents = (0..cfg.nodes).map(SimAgent::new).collect();
        let trace = Trace::new(cfg.print_trace);
        World {
            leader_member: 0,
            rng,
            clock,
            store,
            agents,
            in_flight: Vec::new(),
            leader,
            settings,
            network: NetworkPlan::default(),
            trace,
            workloads: BTreeMap::new(),
            leftovers: Vec::new(),
            faults_until: Mono::ZERO,
            fault_counts: BTreeMap::new(),
            cursor: 1,
            bound_to: BTreeMap::new(),
            rebinds: Vec::new(),
            pod_summaries: BTreeMap::new(),
            set_owners: BTreeMap::new(),
            node_allocatable: BTreeMap::new(),
            tallies: Default::default(),
            agent_index: (0..cfg.nodes).map(|i| (SimAgent::new(i).name, i)).collect(),
            step: 0,
            terms: 1,
            not_ready_marks: 0,
            evicted: 0,
            controller_restarts: 0,
            next_workload: Mono::from_secs(20),
            next_fault: Mono::from_secs(15),
            made: 0,
            cfg,
        }
    }

    pub fn now(&self) -> Mono {
        self.clock.mono()
    }

    /// The pods added up per node and per Deployment, as of now.
    pub fn tallies(&self) -> &invariants::Tallies {
        &self.tallies
    }

    /// What the invariants look at.
    fn observed(&self) -> invariants::Observed<'_> {
        invariants::Observed {
            now: self.now(),
            faults_until: self.faults_until,
            store: self.store(),
            agents: &self.agents,
            rebinds: &self.rebinds,
            node_allocatable: &self.node_allocatable,
            tallies: self.tallies(),
            workloads: &self.workloads,
            leftovers: &self.leftovers,
        }
    }

    pub fn store(&self) -> &MemStore {
        &self.store
    }

    pub fn settings(&self) -> &LeaderSettings {
        &self.settings
    }

    /// Runs to the end or the first violation.
    pub fn run(mut self) -> SimReport {
        let end = self.cfg.duration.max(QUIET_PERIOD + Mono::from_secs(10));
        let calm_from = end.saturating_sub(QUIET_PERIOD);
        self.trace.push(format!(
            "seed {} servers {} nodes {} pods {} duration {}s faults {:?}",
            self.cfg.seed,
            self.cfg.servers,
            self.cfg.nodes,
            self.cfg.pods,
            end.as_secs(),
            self.cfg.faults
        ));
        self.initial_workloads();
        let mut violation = None;
        let mut converged_after = None;
        while self.now() < end {
            if let Err(v) = self.tick(Some(calm_from)) {
                violation = Some(v);
                break;
            }
            // Once calm, see each second whether it has converged yet.
            if self.now() >= calm_from
                && converged_after.is_none()
                && self.step.is_multiple_of(10)
                && invariants::liveness(&self.observed()).is_ok()
            {
                converged_after = Some(self.now() - calm_from);
            }
        }
        // Liveness: converged within a bound after the last fault and the
        // last workload change, checked each second of a grace that ends
        // as soon as it holds.
        if violation.is_none() {
            loop {
                let last = invariants::liveness(&self.observed());
                if last.is_ok() {
                    converged_after.get_or_insert(self.now().saturating_sub(calm_from));
                    break;
                }
                // It held once and no longer does: nothing changed, so
                // something flaps.
                converged_after = None;
                if self.now() >= end + LIVENESS_GRACE {
                    violation = last.err();
                    break;
                }
                for _ in 0..(Mono::from_secs(1).as_millis() / STEP.as_millis()) {
                    if let Err(v) = self.tick(None) {
                        violation = Some(v);
                        break;
                    }
                }
                if violation.is_some() {
                    break;
                }
            }
        }
        let violation = violation.map(|mut v| {
            v.step = self.step;
            v.at = self.now();
            v.tail = self.trace.tail();
            v
        });
        let pods_running = self.agents.iter().map(|a| a.containers.len()).sum();
        SimReport {
            seed: self.cfg.seed,
            steps: self.step,
            simulated: self.now(),
            digest: self.trace.digest(),
            trace_lines: self.trace.lines(),
            faults: self.fault_counts.clone(),
            terms: self.terms,
            nodes_marked_not_ready: self.not_ready_marks,
            pods_evicted: self.evicted,
            pods_running,
            store_writes_failed: self.store.writes_failed(),
            controller_restarts: self.controller_restarts,
            converged_after,
            violation,
        }
    }

    /// One step: faults and workload changes (until `calm_from`, if
    /// given), heartbeats, the watch, the leader, the agents, the checks.
    fn tick(&mut self, calm_from: Option<Mono>) -> Result<(), Violation> {
        self.clock.advance(STEP);
        self.step += 1;
        self.trace.now = self.now();
        let now = self.now();
        if let Some(calm_from) = calm_from.filter(|c| now < *c) {
            self.maybe_workload(now);
            self.maybe_fault(now, calm_from);
        }
        self.deliver_beats(now);
        self.feed_world(now);
        self.leader_step(now)?;
        self.agents_step(now);
        if self.step.is_multiple_of(TALLY_AUDIT_STEPS) && !self.tallies.agree_with(self.pod_summaries.values()) {
            return Err(Violation::new("the simulation's kept tallies match its pods", format!("{:?}", self.tallies)));
        }
        invariants::safety(&self.observed())
    }

    fn deployment(&mut self, namespace: &str, name: &str, replicas: i64) -> Value {
        let surge = self.rng.between(0, 3) as i64;
        let unavailable = if surge == 0 { self.rng.between(1, 2) } else { self.rng.between(0, 2) } as i64;
        self.workloads.insert(
            format!("{namespace}/{name}"),
            Workload { namespace: namespace.into(), name: name.into(), replicas, surge, unavailable, image: 1, resized_at: self.now() },
        );
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": name, "namespace": namespace},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}},
                        "template": {"metadata": {"labels": {"app": name}},
                                     "spec": {"terminationGracePeriodSeconds": 2,
                                              "containers": [{"name": "main", "image": "app:1",
                                                              "ports": [{"containerPort": 8080}],
                                                              "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}}}]}}}})
    }

    fn service(namespace: &str, name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
               "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}})
    }

    fn initial_workloads(&mut self) {
        let count = (self.cfg.pods / 50).clamp(1, 40);
        let mut left = self.cfg.pods as i64;
        for i in 0..count {
            let replicas = if i + 1 == count { left } else { (self.cfg.pods / count) as i64 };
            left -= replicas;
            self.create_workload(replicas.max(0));
        }
    }

    fn create_workload(&mut self, replicas: i64) {
        self.made += 1;
        let ns = NAMESPACES[self.made as usize % NAMESPACES.len()];
        let name = format!("app-{}", self.made);
        let d = self.deployment(ns, &name, replicas);
        // A client retries a create the store refused for now (a failing
        // store fails each write independently); a workload that never
        // got made would otherwise be checked as if it had been.
        let created = (0..CREATE_TRIES_MAX).map(|_| self.store.create_object(Kind::Deployments, d.clone())).find(Result::is_ok);
        let svc = (0..CREATE_TRIES_MAX).map(|_| self.store.create_object(Kind::Services, Self::service(ns, &name))).find(Result::is_ok);
        let made = created.is_some() && svc.is_some();
        if !made {
            self.workloads.remove(&format!("{ns}/{name}"));
            self.leftovers.push((Kind::Deployments, ns.to_string(), name.clone()));
            self.leftovers.push((Kind::Services, ns.to_string(), name.clone()));
            self.delete_leftovers();
        }
        self.trace.push(format!("workload: create deployment {ns}/{name} replicas {replicas}: {}", if made { "ok" } else { "refused" }));
    }

    /// Retries the deletes a client still owes; gone already counts as done.
    fn delete_leftovers(&mut self) {
        let store = &self.store;
        self.leftovers.retain(|(kind, ns, name)| {
            !matches!(store.delete_object(*kind, Some(ns), name), Ok(_) | Err(crate::registry::RegistryError::NotFound { .. }))
        });
    }

    fn maybe_workload(&mut self, now: Mono) {
        if !self.leftovers.is_empty() {
            self.delete_leftovers();
        }
        if now < self.next_workload || self.workloads.is_empty() {
            return;
        }
        self.next_workload = now + Mono::from_secs(self.rng.between(10, 30));
        let keys: Vec<String> = self.workloads.keys().cloned().collect();
        let key = self.rng.pick(&keys).cloned().unwrap_or_default();
        let Some(w) = self.workloads.get(&key).cloned() else { return };
        let capacity = (self.cfg.nodes as i64 * NODE_PODS_MAX as i64) / 2;
        let total: i64 = self.workloads.values().map(|w| w.replicas).sum();
        match self.rng.below(10) {
            0..=3 => {
                let to = (w.replicas + self.rng.between(0, 10) as i64 - 5).clamp(0, (w.replicas + capacity - total).max(0));
                let r = self.change_deployment(&w, |d| d["spec"]["replicas"] = json!(to));
                if r.is_ok() {
                    let w = self.workloads.get_mut(&key).expect("picked from the map");
                    w.replicas = to;
                    w.resized_at = now;
                }
                self.trace.push(format!("workload: scale {key} {} -> {to}: {}", w.replicas, ok(&r)));
            }
            4..=7 => {
                let image = w.image + 1;
                let r =
                    self.change_deployment(&w, |d| d["spec"]["template"]["spec"]["containers"][0]["image"] = json!(format!("app:{image}")));
                if r.is_ok() {
                    self.workloads.get_mut(&key).expect("picked from the map").image = image;
                }
                self.trace.push(format!("workload: roll {key} to app:{image}: {}", ok(&r)));
            }
            _ => {
                // The Service goes once its Deployment has: a workload whose
                // Deployment stayed keeps its Service, and a Service delete
                // the store refuses is retried until it is taken.
                let r = self.store.delete_object(Kind::Deployments, Some(&w.namespace), &w.name);
                self.trace.push(format!("workload: delete {key}: {}", ok(&r)));
                if r.is_ok() {
                    self.workloads.remove(&key);
                    self.leftovers.push((Kind::Services, w.namespace.clone(), w.name.clone()));
                    self.delete_leftovers();
                    self.create_workload(w.replicas);
                }
            }
        }
    }

    /// A client's read-modify-write of a workload's Deployment.
    fn change_deployment(&self, w: &Workload, edit: impl Fn(&mut Value)) -> Result<Value, crate::registry::RegistryError> {
        let change = |d: &Value| {
            let mut d = d.clone();
            edit(&mut d);
            d
        };
        self.store.modify_object(Kind::Deployments, Some(&w.namespace), &w.name, &change, false)
    }

    fn count(&mut self, kind: &'static str) {
        *self.fault_counts.entry(kind).or_default() += 1;
    }

    fn maybe_fault(&mut self, now: Mono, calm_from: Mono) {
        let mean_gap_s = match self.cfg.faults {
            FaultProfile::None => return,
            FaultProfile::Default => 20,
            FaultProfile::Heavy => 4,
        };
        if now < self.next_fault {
            return;
        }
        self.next_fault = now + Mono::from_millis(self.rng.between(mean_gap_s * 500, mean_gap_s * 1500));
        // At most a fifth of the nodes faulted at once (the blast radius).
        let busy = self.agents.iter().filter(|a| a.disturbed_until > now).count();
        let room = busy < (self.agents.len() / 5).max(1);
        let latest = calm_from.saturating_sub(now);
        let dur = |rng: &mut SimRng, lo: u64, hi: u64| Mono::from_millis(rng.between(lo, hi)).min(latest);
        let i = self.rng.below(self.agents.len() as u64) as usize;
        let choice = self.rng.below(10);
        let name = self.agents[i].name.clone();
        match choice {
            0 | 1 if room => {
                let until = now + dur(&mut self.rng, 2_000, 20_000);
                self.agents[i].crash(until);
                self.agent_fault(i, "agent-crash", until, format!("fault: {name} crashes until {}", secs(until)));
            }
            2 if room => {
                let until = now + dur(&mut self.rng, 3_000, 20_000);
                self.agents[i].partitioned_until = until;
                self.agent_fault(i, "partition", until, format!("fault: {name} partitioned from the servers until {}", secs(until)));
            }
            3 if room => {
                let until = now + dur(&mut self.rng, 300, 8_000);
                self.agents[i].frozen_until = until;
                self.agent_fault(i, "freeze", until, format!("fault: {name} frozen (SIGSTOP) until {}", secs(until)));
            }
            4 if room => {
                let until = now + dur(&mut self.rng, 3_000, 15_000);
                let delay = self.rng.between(20, 400);
                let loss = self.rng.between(0, 300_000);
                self.agents[i].beat_fault = (until, delay, loss);
                let line =
                    format!("fault: {name} heartbeats delayed up to {delay} ms, {} in 1000 lost, until {}", loss / 1000, secs(until));
                self.agent_fault(i, "message-delay-loss", until, line);
            }
            5 if room => {
                let until = now + dur(&mut self.rng, 5_000, 30_000);
                self.agents[i].storm_until = until;
                self.agent_fault(i, "crash-storm", until, format!("fault: crash storm on {name} until {}", secs(until)));
            }
            6 => {
                let ppm = self.rng.between(0, 100_000) as i64 - 50_000;
                self.agents[i].drift_ppm = ppm;
                self.count("clock-drift");
                self.clock_skew(ppm);
                self.trace.push(format!("fault: {name} clock runs {ppm} ppm off"));
            }
            7 => {
                self.count("leader-change");
                let servers = self.cfg.servers.max(1) as u64;
                self.leader_member = ((self.leader_member as u64 + 1 + self.rng.below(servers - 1)) % servers) as usize;
                self.new_term(now);
                // Agents move to the new leader within a beat or two.
                self.faults_until = self.faults_until.max(now + self.settings.takeover_grace());
            }
            8 => {
                let until = now + dur(&mut self.rng, 2_000, 10_000);
                let per_million = self.rng.between(100_000, 500_000);
                self.store.fail_writes(until, per_million);
                self.count("store-write-failures");
                self.faults_until = self.faults_until.max(until);
                self.trace.push(format!("fault: store fails {} in 1000 writes until {}", per_million / 1000, secs(until)));
            }
            9 => {
                let until = now + dur(&mut self.rng, 1_000, 5_000);
                self.leader.slow_until = until;
                self.count("slow-store");
                self.faults_until = self.faults_until.max(until);
                self.trace.push(format!("fault: the leader's store feed lags until {}", secs(until)));
            }
            _ => {}
        }
    }

    /// Books a fault on agent `i` lasting until `until`.
    fn agent_fault(&mut self, i: usize, kind: &'static str, until: Mono, line: String) {
        self.agents[i].disturb(until);
        self.count(kind);
        self.faults_until = self.faults_until.max(until);
        self.trace.push(line);
    }

    /// Wall clocks drift too; objects' timestamps move with the leader's.
    fn clock_skew(&mut self, ppm: i64) {
        self.clock.skew_wall_ms(ppm / 1_000);
    }

    fn new_term(&mut self, now: Mono) {
        self.terms += 1;
        let heartbeats = Heartbeats::with_clock(self.clock.clone());
        self.leader = Leader::new(&self.settings, heartbeats, now, &self.store);
        self.trace.push(format!("fault: leadership moves to server {} (term {})", self.leader_member, self.terms));
    }

    fn deliver_beats(&mut self, now: Mono) {
        let (due, later): (Vec<Beat>, Vec<Beat>) = std::mem::take(&mut self.in_flight).into_iter().partition(|b| b.arrives <= now);
        self.in_flight = later;
        // Beats arrive in the order of their arrival times (reordered by delay).
        let mut due = due;
        due.sort_by(|a, b| a.arrives.cmp(&b.arrives).then_with(|| a.node.cmp(&b.node)));
        for b in due {
            self.leader.heartbeats.beat(&b.node, NodeUsage::default());
        }
    }

    /// The world's watch: hands pod changes to the agents they concern and
    /// checks that no pod ever moves between nodes.
    fn feed_world(&mut self, _now: Mono) {
        let (changes, latest) = self.store.changes_after(self.cursor);
        for c in &changes {
            let obj = &c.event.object;
            let deleted = c.event.kind == crate::registry::WatchEventKind::Deleted;
            let uid = object::uid(obj).unwrap_or_default().to_string();
            match c.kind {
                Kind::ReplicaSets if deleted => {
                    self.set_owners.remove(&uid);
                }
                Kind::ReplicaSets => {
                    if let Some(d) = object::controller_ref(obj).and_then(|r| r.get("name")).and_then(Value::as_str) {
                        self.set_owners.insert(uid, format!("{}/{d}", object::namespace(obj).unwrap_or("default")));
                    }
                }
                Kind::Nodes if deleted => {
                    self.node_allocatable.remove(object::name(obj).unwrap_or_default());
                }
                Kind::Nodes => {
                    self.node_allocatable.insert(object::name(obj).unwrap_or_default().to_string(), invariants::allocatable(obj));
                }
                Kind::Pods => {
                    let old = if deleted {
                        self.pod_summaries.remove(&uid)
                    } else {
                        let new = invariants::PodSummary::of(obj, &self.set_owners);
                        self.tallies.count(&new, 1);
                        self.pod_summaries.insert(uid.clone(), new)
                    };
                    if let Some(old) = old {
                        self.tallies.count(&old, -1);
                    }
                    let Some(node) = obj.pointer("/spec/nodeName").and_then(Value::as_str) else { continue };
                    let first = self.bound_to.entry(uid.clone()).or_insert_with(|| node.to_string());
                    if first != node {
                        self.rebinds.push((uid, first.clone(), node.to_string()));
                    }
                    if let Some(a) = self.agent_index.get(node).and_then(|&i| self.agents.get_mut(i)) {
                        a.watched(c);
                    }
                }
                _ => {}
            }
        }
        self.cursor = latest;
        self.store.trim(self.cursor.min(self.leader.cursor));
    }

    fn leader_step(&mut self, now: Mono) -> Result<(), Violation> {
        let fed = self.leader.feed(&self.store, now, &mut self.rng);
        let wall = Now::on(self.clock.as_ref());
        let synced = self.leader.cache.read().unwrap_or_else(|p| p.into_inner()).synced();
        if !synced {
            return Ok(());
        }
        for i in 0..self.leader.slots.len() {
            let slot = &mut self.leader.slots[i];
            if now < slot.blocked_until {
                continue;
            }
            if let Some((revision, deadline)) = slot.catch_up {
                if self.leader.cursor < revision && now < deadline {
                    continue;
                }
                slot.catch_up = None;
            }
            let resync = now >= slot.next_resync;
            if !(fed || slot.more || resync) {
                continue;
            }
            if resync {
                slot.next_resync = now + self.settings.resync();
            }
            let name = slot.reconciler.name();
            let result = futures::executor::block_on(run_pass(
                slot.reconciler.as_mut(),
                &self.leader.cache,
                self.store.as_ref(),
                &self.settings,
                &self.network,
                resync,
                &wall,
            ));
            if let Ok(pass) = &result {
                for line in describe_outcomes(&pass.commands, &pass.executed.outcomes) {
                    self.trace.push(format!("{name}: {line}"));
                }
            }
            let slot = &mut self.leader.slots[i];
            match result {
                Ok(pass) => {
                    slot.more = pass.executed.more;
                    slot.failures = 0;
                    if let Some(revision) = pass.executed.wrote.iter().map(|(_, r)| *r).max() {
                        slot.catch_up = Some((revision, now + self.settings.cache_catch_up()));
                    }
                }
                Err(e) => {
                    // The supervisor's answer to a failed pass: a fresh
                    // reconciler after the back-off.
                    let delay = self.settings.restart_backoff().delay(slot.failures);
                    slot.failures += 1;
                    slot.reconciler = (slot.factory)();
                    slot.blocked_until = now + delay;
                    slot.more = true;
                    self.controller_restarts += 1;
                    self.trace.push(format!("{name}: pass failed ({e}); restarted in {} ms", delay.as_millis()));
                }
            }
        }
        if now >= self.leader.next_check {
            self.leader.next_check = now + self.settings.node_check();
            self.node_lifecycle(now, &wall)?;
        }
        Ok(())
    }

    fn node_lifecycle(&mut self, now: Mono, wall: &Now) -> Result<(), Violation> {
        let observations = {
            let cache = self.leader.cache.read().unwrap_or_else(|p| p.into_inner());
            observations(&cache, &self.leader.heartbeats)
        };
        let commands = self.leader.health.step(NodeInput::Tick(observations), now);
        let limits = ExecLimits::from_settings(&self.settings);
        let mut done_nodes = BTreeSet::new();
        for c in &commands {
            if let NodeCommand::MarkNotReady { node, message } = c {
                self.not_ready_marks += 1;
                let settle = self.settings.node_grace_max() + Duration::from_secs(1);
                if let Some(a) = self.agents.iter().find(|a| &a.name == node) {
                    let takeover = now < self.leader.started + self.settings.takeover_grace() + settle;
                    if a.healthy(now, settle) && !takeover {
                        return Err(Violation::new(
                            "no healthy, heartbeating node is marked NotReady",
                            format!("{node} was judged lost ({message}) while its agent ran, reached the servers and beat"),
                        ));
                    }
                }
            }
            let planned = {
                let cache = self.leader.cache.read().unwrap_or_else(|p| p.into_inner());
                writes(c, &cache, wall)
            };
            for w in &planned {
                let r = futures::executor::block_on(run_one(self.store.as_ref(), w, limits));
                if let (Command::DeleteNow { items, .. }, Ok(_)) = (w, &r) {
                    self.evicted += items.len() as u64;
                }
                self.trace.push(format!(
                    "node-lifecycle: {}: {}",
                    w.describe(),
                    r.as_ref().map_or_else(|e| e.to_string(), |_| "ok".into())
                ));
                if r.is_err() {
                    break;
                }
            }
            if let NodeCommand::MassSilence(m) = c {
                self.trace.push(format!("node-lifecycle: mass silence {m:?}"));
            }
            match c {
                NodeCommand::MarkNotReady { node, .. }
                | NodeCommand::MarkReady { node, .. }
                | NodeCommand::Evict { node }
                | NodeCommand::Event { node, .. } => {
                    done_nodes.insert(node.clone());
                }
                NodeCommand::MassSilence(_) => {}
            }
        }
        for node in done_nodes {
            self.leader.health.step(NodeInput::Done { node }, now);
        }
        Ok(())
    }

    fn agents_step(&mut self, now: Mono) {
        for a in &mut self.agents {
            if let Some(beat) = a.tick(now, BEAT_PERIOD, &self.store, &mut self.rng, &mut self.trace) {
                self.in_flight.push(beat);
            }
        }
    }
}

impl Leader {
    fn new(settings: &LeaderSettings, heartbeats: Heartbeats, now: Mono, store: &MemStore) -> Leader {
        let mut factories: Vec<ReconcilerFactory> = vec![crate::leader::scheduler::make];
        factories.extend(crate::leader::leader_supervisor::controllers().into_iter().map(|(_, f)| f));
        let slots = factories
            .into_iter()
            .map(|factory| Slot {
                factory,
                reconciler: factory(),
                next_resync: now,
                blocked_until: now,
                failures: 0,
                more: false,
                catch_up: None,
            })
            .collect();
        // A new leader lists everything, as its cache's feeds do.
        let mut cache = CacheState::default();
        let revision = store.revision();
        for kind in Kind::ALL {
            cache.replace_all(kind, store.list(kind), revision);
        }
        Leader {
            cache: RwLock::new(cache),
            cursor: revision,
            slots,
            health: NodeHealth::new(health_settings(settings)),
            next_check: now,
            heartbeats,
            slow_until: Mono::ZERO,
            started: now,
        }
    }

    /// Takes in the store's changes since the last step; false if none.
    fn feed(&mut self, store: &MemStore, now: Mono, rng: &mut SimRng) -> bool {
        if now < self.slow_until && rng.chance(800_000) {
            return false;
        }
        let (changes, latest) = store.changes_after(self.cursor);
        if changes.is_empty() {
            self.cursor = latest;
            return false;
        }
        let mut s = self.cache.write().unwrap_or_else(|p| p.into_inner());
        for c in &changes {
            s.apply(c.kind, &c.event);
        }
        for kind in Kind::ALL {
            s.seen(kind, latest);
        }
        self.cursor = latest;
        true
    }
}

fn ok<T, E: std::fmt::Display>(r: &Result<T, E>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => e.to_string(),
    }
}

fn secs(t: Mono) -> String {
    format!("{}.{:03}", t.as_secs(), t.subsec_millis())
}

/// For traces of what a pass decided, the commands and their outcomes.
pub fn describe_outcomes(commands: &[Command], outcomes: &[Outcome]) -> Vec<String> {
    commands.iter().zip(outcomes).map(|(c, o)| format!("{} -> {o:?}", c.describe())).collect()
}
