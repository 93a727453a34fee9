//! A simulated node agent: what the control plane sees of a real one. It
//! registers its Node, beats on its own (possibly drifting) clock, learns
//! the pods bound to it from a watch that holds changes while it cannot
//! reach the servers, runs them on the sim runtime (a container starts,
//! becomes ready, may crash and restart), reports their status and
//! finishes their graceful deletion. Faults act on it from outside: a
//! crash (its containers keep running, as with Docker), a freeze
//! (SIGSTOP), a partition from the servers, a crash storm.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{json, Value};

use super::rng::SimRng;
use super::store::{Change, MemStore};
use super::trace::Trace;
use crate::clock::Mono;
use crate::leader::cache::Kind;
use crate::model::object;
use crate::registry::WatchEventKind;

/// Pods a simulated node can run.
pub const NODE_PODS_MAX: u64 = 110;
/// CPU of a simulated node, in millicores.
pub const NODE_CPU_MILLIS: i64 = 4_000;
/// How soon a failed report or finalization is tried again.
const STEP_RETRY: Mono = Mono::from_millis(100);
/// Memory of a simulated node, in MiB.
pub const NODE_MEMORY_MIB: i64 = 8_192;

/// One container of the sim runtime.
#[derive(Debug, Clone)]
pub struct SimContainer {
    pub namespace: String,
    pub name: String,
    /// Running from this time on (it starts a little after creation).
    pub running_at: Mono,
    /// Ready from this time on, if running.
    pub ready_at: Mono,
    pub restarts: u32,
    /// Stopping: gone at this time, then the pod is finalized.
    pub stopping_at: Option<Mono>,
}

/// What the agent last wrote of a pod.
type Reported = (bool, bool, u32);

pub struct SimAgent {
    pub name: String,
    pub index: usize,
    /// The process is dead until then.
    pub down_until: Mono,
    /// The process is stopped (SIGSTOP) until then.
    pub frozen_until: Mono,
    /// No packets between it and the servers until then.
    pub partitioned_until: Mono,
    /// Containers crash at random until then.
    pub storm_until: Mono,
    /// Its clock runs this many parts per million fast (or slow).
    pub drift_ppm: i64,
    /// Until then, its heartbeats are delayed by up to this many ms, and
    /// dropped with this probability (per million).
    pub beat_fault: (Mono, u64, u64),
    /// The end of the last fault that touched it (for "healthy").
    pub disturbed_until: Mono,
    next_beat: Mono,
    registered: bool,
    /// Pods bound to it, as its watch last told it.
    pods: BTreeMap<String, Value>,
    /// Pod changes its watch holds until it can deliver them.
    inbox: Vec<Arc<Change>>,
    /// When its pods next need looking at (a container starting, getting
    /// ready or stopping; a report to retry), unless a change comes first.
    next_wake: Mono,
    /// Containers by pod uid.
    pub containers: BTreeMap<String, SimContainer>,
    reported: BTreeMap<String, Reported>,
    next_ip: u32,
}

/// A heartbeat on its way to the leader.
#[derive(Debug, Clone)]
pub struct Beat {
    pub node: String,
    pub arrives: Mono,
}

impl SimAgent {
    pub fn new(index: usize) -> SimAgent {
        SimAgent {
            name: format!("node-{index:03}"),
            index,
            down_until: Mono::ZERO,
            frozen_until: Mono::ZERO,
            partitioned_until: Mono::ZERO,
            storm_until: Mono::ZERO,
            drift_ppm: 0,
            beat_fault: (Mono::ZERO, 0, 0),
            disturbed_until: Mono::ZERO,
            next_beat: Mono::ZERO,
            registered: false,
            pods: BTreeMap::new(),
            inbox: Vec::new(),
            next_wake: Mono::ZERO,
            containers: BTreeMap::new(),
            reported: BTreeMap::new(),
            next_ip: 2,
        }
    }

    pub fn up(&self, now: Mono) -> bool {
        now >= self.down_until
    }

    fn acting(&self, now: Mono) -> bool {
        self.up(now) && now >= self.frozen_until
    }

    fn connected(&self, now: Mono) -> bool {
        now >= self.partitioned_until
    }

    /// Running normally and reaching the servers, with nothing done to it
    /// for `settle`: a node the failure detector must never judge lost.
    pub fn healthy(&self, now: Mono, settle: Mono) -> bool {
        self.acting(now) && self.connected(now) && now >= self.disturbed_until + settle && now >= self.beat_fault.0
    }

    /// Marks the agent touched by a fault lasting until `until`.
    pub fn disturb(&mut self, until: Mono) {
        self.disturbed_until = self.disturbed_until.max(until);
    }

    /// The process dies and comes back at `until`; it forgets what its
    /// watch told it (it lists again), its containers keep running.
    pub fn crash(&mut self, until: Mono) {
        self.down_until = until;
        self.pods.clear();
        self.inbox.clear();
        self.reported.clear();
        self.registered = false;
        self.disturb(until);
    }

    /// The agent's watch: pod changes for this node, held until delivered.
    pub fn watched(&mut self, change: &Arc<Change>) {
        // A dead process has no watch; it lists again when it restarts.
        if self.registered {
            self.inbox.push(change.clone());
        }
    }

    /// One step of the agent at `now`: heartbeats (returned, for the
    /// network to carry), then its pods.
    pub fn tick(&mut self, now: Mono, period: Mono, store: &MemStore, rng: &mut SimRng, trace: &mut Trace) -> Option<Beat> {
        if !self.up(now) {
            self.inbox.clear();
            return None;
        }
        if !self.acting(now) {
            return None;
        }
        let connected = self.connected(now);
        if !self.registered {
            if !connected {
                return None;
            }
            if !self.register(store, trace) {
                return None;
            }
        }
        let mut beat = None;
        if now >= self.next_beat {
            let interval = period.as_nanos() as i128 * (1_000_000 + self.drift_ppm as i128) / 1_000_000;
            self.next_beat = now + Mono::from_nanos(interval.max(1) as u64);
            let (until, delay_max, loss) = self.beat_fault;
            let faulty = now < until;
            let delay = if faulty { rng.between(1, delay_max.max(1)) } else { rng.between(1, 5) };
            let lost = faulty && rng.chance(loss);
            if connected && !lost {
                beat = Some(Beat { node: self.name.clone(), arrives: now + Mono::from_millis(delay) });
            }
        }
        let mut changed = false;
        if connected {
            for change in std::mem::take(&mut self.inbox) {
                changed = true;
                let key = format!(
                    "{}/{}",
                    object::namespace(&change.event.object).unwrap_or("default"),
                    object::name(&change.event.object).unwrap_or("")
                );
                if change.event.kind == WatchEventKind::Deleted {
                    self.pods.remove(&key);
                } else {
                    self.pods.insert(key, change.event.object.clone());
                }
            }
        }
        if changed || now >= self.next_wake || now < self.storm_until {
            self.next_wake = self.run_pods(now, connected, store, rng, trace);
        }
        beat
    }

    /// Creates (or finds) its Node and lists its pods.
    fn register(&mut self, store: &MemStore, trace: &mut Trace) -> bool {
        let node = json!({"apiVersion": "v1", "kind": "Node",
        "metadata": {"name": self.name, "labels": {"kubernetes.io/hostname": self.name}},
        "spec": {},
        "status": {
            "capacity": {"cpu": format!("{}m", NODE_CPU_MILLIS), "memory": format!("{}Mi", NODE_MEMORY_MIB), "pods": NODE_PODS_MAX.to_string()},
            "allocatable": {"cpu": format!("{}m", NODE_CPU_MILLIS), "memory": format!("{}Mi", NODE_MEMORY_MIB), "pods": NODE_PODS_MAX.to_string()},
            "conditions": [{"type": "Ready", "status": "True", "reason": "AgentReady", "message": "agent is running"}],
        }});
        match store.create_object(Kind::Nodes, node) {
            Ok(_) | Err(crate::registry::RegistryError::AlreadyExists { .. }) => {}
            Err(_) => return false,
        }
        self.pods = store
            .list(Kind::Pods)
            .into_iter()
            .filter(|p| p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(self.name.as_str()))
            .map(|p| (format!("{}/{}", object::namespace(&p).unwrap_or("default"), object::name(&p).unwrap_or("")), p))
            .collect();
        self.inbox.clear();
        self.registered = true;
        self.next_wake = Mono::ZERO;
        trace.push(format!("{} registered with {} pods, {} containers running", self.name, self.pods.len(), self.containers.len()));
        true
    }

    /// Brings containers and reports in line with the pods; returns when
    /// to look again if nothing changes.
    fn run_pods(&mut self, now: Mono, connected: bool, store: &MemStore, rng: &mut SimRng, trace: &mut Trace) -> Mono {
        let mut wake = Mono::MAX;
        // Containers whose pod is gone (deleted, evicted) are killed once
        // the agent knows: a partitioned agent keeps running them.
        let wanted: BTreeMap<String, &Value> = self.pods.values().filter_map(|p| object::uid(p).map(|u| (u.to_string(), p))).collect();
        let orphaned: Vec<String> = self.containers.keys().filter(|uid| !wanted.contains_key(*uid)).cloned().collect();
        for uid in orphaned {
            if let Some(c) = self.containers.remove(&uid) {
                trace.push(format!("{} killed the container of {}/{} (pod gone)", self.name, c.namespace, c.name));
            }
            self.reported.remove(&uid);
        }
        let storm = now < self.storm_until;
        for (uid, pod) in wanted {
            let ns = object::namespace(pod).unwrap_or("default").to_string();
            let name = object::name(pod).unwrap_or_default().to_string();
            let terminating = object::meta_str(pod, "deletionTimestamp").is_some();
            let c = self.containers.entry(uid.clone()).or_insert_with(|| {
                let running_at = now + Mono::from_millis(rng.between(200, 1500));
                SimContainer {
                    namespace: ns.clone(),
                    name: name.clone(),
                    running_at,
                    ready_at: running_at + Mono::from_millis(300),
                    restarts: 0,
                    stopping_at: None,
                }
            });
            if terminating {
                let at = *c.stopping_at.get_or_insert(now + Mono::from_millis(rng.between(100, 800)));
                if now >= at && connected && store.finalize_pod(&ns, &name, &uid).is_ok() {
                    self.containers.remove(&uid);
                    self.reported.remove(&uid);
                } else {
                    wake = wake.min(at.max(now + STEP_RETRY));
                }
                continue;
            }
            if storm && now >= c.running_at && rng.chance(20_000) {
                // The process exits; the runtime restarts it after a back-off.
                c.restarts += 1;
                c.running_at = now + Mono::from_millis(rng.between(300, 2000));
                c.ready_at = c.running_at + Mono::from_millis(300);
            }
            let running = now >= c.running_at;
            let ready = running && now >= c.ready_at;
            if !running {
                wake = wake.min(c.running_at);
            } else if !ready {
                wake = wake.min(c.ready_at);
            }
            let state: Reported = (running, ready, c.restarts);
            if self.reported.get(&uid) == Some(&state) {
                continue;
            }
            if !connected {
                wake = wake.min(now + STEP_RETRY);
                continue;
            }
            let ip = match pod.pointer("/status/podIP").and_then(Value::as_str) {
                Some(ip) => ip.to_string(),
                None => {
                    self.next_ip += 1;
                    format!("10.{}.{}.{}", 100 + self.index / 250, self.index % 250, self.next_ip % 250 + 2)
                }
            };
            let status = json!({
                "phase": if running { "Running" } else { "Pending" },
                "podIP": ip, "hostIP": format!("192.168.0.{}", self.index % 250 + 1),
                "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}],
                "containerStatuses": [{"name": "main", "ready": ready, "restartCount": c.restarts,
                                       "state": if running { json!({"running": {}}) } else { json!({"waiting": {"reason": "ContainerCreating"}}) }}],
            });
            let uid_ = uid.clone();
            let change = move |old: &Value| {
                let mut new = old.clone();
                if object::uid(old) == Some(uid_.as_str()) {
                    new["status"] = status.clone();
                }
                new
            };
            if store.modify_object(Kind::Pods, Some(&ns), &name, &change, true).is_ok() {
                self.reported.insert(uid, state);
            } else {
                wake = wake.min(now + STEP_RETRY);
            }
        }
        wake
    }
}
