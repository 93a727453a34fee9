//! PodFanout: one store watch on pods, shared by every node agent served
//! by this process, dispatching each change to the agents of the node it
//! is bound to. A watch per agent would decode every pod event once per
//! node (5,000 nodes make that 5,000 times). Recent events are kept in a
//! bounded ring so an agent that subscribes from a revision just behind
//! the shared watch is replayed exactly what it missed; one further
//! behind gets a watch of its own.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use super::agent_error::AgentError;
use crate::limits::POD_FANOUT_RING_EVENTS_MAX;
use crate::model::kinds::PODS;
use crate::model::object;
use crate::registry::{Registry, WatchEvent};
use crate::tasks::OwnedTask;
use crate::watcher::{Backoff, EventStream, RegistrySource, SourceError, WatchSource, Watched, Watcher};

/// How long the shared watch waits before starting again after it broke.
const REWATCH_DELAY: Duration = Duration::from_millis(100);

type Subscriber = mpsc::Sender<Result<WatchEvent, AgentError>>;

#[derive(Default)]
struct FanoutState {
    /// The revision through which the shared watch has delivered.
    position: u64,
    /// Recent events, oldest first, with their revisions.
    ring: VecDeque<(u64, Arc<str>, WatchEvent)>,
    subscribers: HashMap<Arc<str>, Vec<(u64, Subscriber)>>,
    started: bool,
}

/// A source whose first "list" is a position given by the first
/// subscriber (nothing to hand on: subscribers list for themselves); only
/// a later restart, after lost history, really lists.
struct FromRevision {
    inner: RegistrySource,
    start: Mutex<Option<u64>>,
}

#[async_trait::async_trait]
impl WatchSource for FromRevision {
    async fn list(&self) -> Result<(Vec<Value>, u64), SourceError> {
        match self.start.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(rev) => Ok((Vec::new(), rev)),
            // The objects are not needed, only where the list stands.
            None => Ok((Vec::new(), self.inner.registry.member().revisions().revision)),
        }
    }
    async fn watch(&self, after: u64) -> Result<Box<dyn EventStream>, SourceError> {
        self.inner.watch(after).await
    }
    fn describe(&self) -> String {
        "shared pod watch".into()
    }
}

/// Shares one pod watch among node agents. The watch is a task of the
/// clones handed out: it ends when the last of them is dropped.
#[derive(Clone)]
pub struct PodFanout {
    registry: Registry,
    state: Arc<Mutex<FanoutState>>,
    watch: Arc<Mutex<Option<OwnedTask>>>,
}

fn node_of(pod: &Value) -> Option<&str> {
    pod.pointer("/spec/nodeName").and_then(Value::as_str).filter(|n| !n.is_empty())
}

impl PodFanout {
    pub fn new(registry: Registry) -> Self {
        PodFanout { registry, state: Arc::new(Mutex::new(FanoutState::default())), watch: Arc::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FanoutState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes to pods bound to `node` after revision `after`, or None when
    /// the shared watch cannot serve that revision (the caller watches on
    /// its own).
    pub fn subscribe(&self, node: &str, after: u64, queue_max: usize) -> Option<mpsc::Receiver<Result<WatchEvent, AgentError>>> {
        let mut st = self.lock();
        if !st.started {
            st.started = true;
            st.position = after;
            // The task's copy has no hold on the task, so dropping every
            // outside clone drops (and aborts) it.
            let me = PodFanout { watch: Arc::default(), ..self.clone() };
            *self.watch.lock().unwrap_or_else(|p| p.into_inner()) = Some(OwnedTask::spawn(me.run(after)));
        }
        let oldest_covered = st.ring.front().map_or(st.position, |(rev, _, _)| rev.saturating_sub(1));
        if after < oldest_covered {
            return None;
        }
        let (tx, rx) = mpsc::channel(queue_max);
        for (rev, n, ev) in &st.ring {
            if *rev > after && n.as_ref() == node && tx.try_send(Ok(ev.clone())).is_err() {
                return None;
            }
        }
        st.subscribers.entry(Arc::from(node)).or_default().push((after, tx));
        Some(rx)
    }

    async fn run(self, position: u64) {
        let pods = &PODS;
        let start = Mutex::new(Some(position));
        let source = FromRevision { inner: RegistrySource { registry: self.registry.clone(), res: pods }, start };
        let mut watcher = Watcher::new(source, Backoff { first: REWATCH_DELAY, ..Backoff::default() });
        let mut first = true;
        loop {
            match watcher.next().await {
                Watched::Restarted { .. } if first => first = false,
                // History is gone: every subscriber must list again.
                Watched::Restarted { revision, .. } => self.reset(revision, "pod watch expired; list again"),
                Watched::Changes { events, revision } => self.dispatch(events, revision),
            }
        }
    }

    fn dispatch(&self, events: Vec<WatchEvent>, revision: u64) {
        let mut st = self.lock();
        for ev in events {
            let Some(node) = node_of(&ev.object).map(Arc::<str>::from) else { continue };
            let rev = object::resource_version(&ev.object).unwrap_or(revision);
            if let Some(subs) = st.subscribers.get_mut(&node) {
                // A subscriber that cannot keep up is dropped; its agent
                // lists again (bounded queues, never unbounded memory).
                subs.retain(|(after, tx)| match if rev > *after { tx.try_send(Ok(ev.clone())) } else { Ok(()) } {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        let _ = tx.try_send(Err(AgentError::Unavailable("pod watch fell behind; list again".into())));
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
                if subs.is_empty() {
                    st.subscribers.remove(&node);
                }
            }
            st.ring.push_back((rev, node, ev));
            if st.ring.len() > POD_FANOUT_RING_EVENTS_MAX {
                st.ring.pop_front();
            }
        }
        st.position = st.position.max(revision);
    }

    fn reset(&self, position: u64, reason: &str) {
        let mut st = self.lock();
        for (_, subs) in st.subscribers.drain() {
            for (_, tx) in subs {
                let _ = tx.try_send(Err(AgentError::Expired(reason.into())));
            }
        }
        st.ring.clear();
        st.position = position;
    }
}
