//! HeartbeatRelay: a follower passes the heartbeats its agents send it on
//! to the leader, whose failure detector judges them. Beats wait one per
//! node (a newer beat replaces the one still waiting) and go out with a
//! bounded number in flight, from one task that belongs to the relay. A
//! leader slow to answer then costs a bounded map, never a task per beat;
//! a beat that cannot wait is dropped, and the node's next one, a beat
//! interval later, takes its place.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Notify;

use super::control_plane::NodeUsage;
use crate::tasks::OwnedTask;

/// Delivers one beat to the leader; an error is the relay's to log, not
/// to retry (the next beat is the retry).
pub type SendBeat = Arc<dyn Fn(String, NodeUsage) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Default)]
struct Waiting {
    /// Nodes in the order their oldest waiting beat arrived.
    order: VecDeque<String>,
    beats: HashMap<String, NodeUsage>,
}

impl Waiting {
    fn pop(&mut self) -> Option<(String, NodeUsage)> {
        let name = self.order.pop_front()?;
        let usage = self.beats.remove(&name)?;
        Some((name, usage))
    }
}

/// Relays beats to the leader; the relaying task ends when this is dropped.
pub struct HeartbeatRelay {
    waiting: Arc<Mutex<Waiting>>,
    wake: Arc<Notify>,
    nodes_max: usize,
    _task: OwnedTask,
}

impl HeartbeatRelay {
    /// At most `in_flight_max` beats on their way at once, and beats of at
    /// most `nodes_max` nodes waiting.
    pub fn start(send: SendBeat, in_flight_max: usize, nodes_max: usize) -> Self {
        let (waiting, wake) = (Arc::new(Mutex::new(Waiting::default())), Arc::new(Notify::new()));
        let task = OwnedTask::spawn(relay(waiting.clone(), wake.clone(), send, in_flight_max.max(1)));
        HeartbeatRelay { waiting, wake, nodes_max, _task: task }
    }

    /// Queues `name`'s beat, replacing one of its beats still waiting.
    /// False when it was dropped because too many nodes are waiting.
    pub fn relay(&self, name: String, usage: NodeUsage) -> bool {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(beat) = waiting.beats.get_mut(&name) {
            *beat = usage;
        } else if waiting.beats.len() >= self.nodes_max {
            return false;
        } else {
            waiting.beats.insert(name.clone(), usage);
            waiting.order.push_back(name);
        }
        drop(waiting);
        self.wake.notify_one();
        true
    }

    /// Beats waiting to go out.
    pub fn waiting(&self) -> usize {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).beats.len()
    }
}

async fn relay(waiting: Arc<Mutex<Waiting>>, wake: Arc<Notify>, send: SendBeat, in_flight_max: usize) {
    let mut in_flight = FuturesUnordered::new();
    loop {
        while in_flight.len() < in_flight_max {
            let Some((name, usage)) = waiting.lock().unwrap_or_else(|p| p.into_inner()).pop() else { break };
            in_flight.push(send(name, usage));
        }
        tokio::select! {
            // A notification that came while nothing waited is kept, so a
            // beat queued between the pops above and here is not missed.
            _ = wake.notified() => {}
            Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "heartbeat not relayed to the leader");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::{mpsc, Semaphore};

    fn usage(pods: i64) -> NodeUsage {
        NodeUsage { cpu_millis: 0, memory_bytes: 0, pods }
    }

    /// A leader that takes a beat only when the test lets it, and reports
    /// each beat it took.
    fn gated_leader() -> (SendBeat, Arc<Semaphore>, mpsc::UnboundedReceiver<(String, i64)>) {
        let (gate, (tx, rx)) = (Arc::new(Semaphore::new(0)), mpsc::unbounded_channel());
        let g = gate.clone();
        let send: SendBeat = Arc::new(move |name, usage| {
            let (g, tx) = (g.clone(), tx.clone());
            Box::pin(async move {
                g.acquire().await.map_err(|e| e.to_string())?.forget();
                let _ = tx.send((name, usage.pods));
                Ok(())
            })
        });
        (send, gate, rx)
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<(String, i64)>) -> (String, i64) {
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("a beat within 10 s").expect("relay alive")
    }

    #[tokio::test]
    async fn a_slow_leader_costs_one_waiting_beat_per_node_and_the_newest_goes_out() {
        let (send, gate, mut taken) = gated_leader();
        let relay = HeartbeatRelay::start(send, 1, 2);
        assert!(relay.relay("a".into(), usage(1)));
        // The relay takes "a" on its way; wait until it is no longer waiting.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while relay.waiting() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the first beat never left");
            tokio::task::yield_now().await;
        }
        // With one in flight and the leader stalled, later beats wait, one per node.
        for pods in 2..=5 {
            assert!(relay.relay("a".into(), usage(pods)));
        }
        assert!(relay.relay("b".into(), usage(1)));
        assert_eq!(relay.waiting(), 2);
        assert!(!relay.relay("c".into(), usage(1)), "a third node is over the bound");
        gate.add_permits(3);
        assert_eq!(next(&mut taken).await, ("a".into(), 1));
        assert_eq!(next(&mut taken).await, ("a".into(), 5), "the newest waiting beat of a node is the one relayed");
        assert_eq!(next(&mut taken).await, ("b".into(), 1));
        assert_eq!(relay.waiting(), 0);
    }

    #[tokio::test]
    async fn dropping_the_relay_ends_its_task() {
        let (send, _gate, mut taken) = gated_leader();
        let relay = HeartbeatRelay::start(send, 4, 8);
        relay.relay("a".into(), usage(1));
        drop(relay);
        // The task held the leader's sender; with the task gone it is closed.
        assert!(tokio::time::timeout(Duration::from_secs(10), taken.recv()).await.expect("ended within 10 s").is_none());
    }
}
