//! Chaos orders for node agents (`flotilla chaos kill-node|partition|heal`)
//! travel as an annotation on the Node object, so they reach an agent
//! through whichever server it talks to. Each server keeps the current
//! orders in memory from one watch on nodes and hands a node's order back
//! in the reply to its heartbeat; a partitioned agent keeps asking (and
//! only asking) so that it can hear `heal`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;

use crate::model::kinds::NODES;
use crate::model::object;
use crate::registry::Registry;
use crate::tasks::OwnedTask;
use crate::watcher::{is_delete, Backoff, RegistrySource, Watched, Watcher};

/// The Node annotation: `ACTION UNIX_MS`, e.g. `partition 1764170000000`.
pub const CHAOS_NODE_ANNOTATION: &str = "chaos.flotilla.io/order";

/// What an agent is told to do to itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChaosAction {
    /// Stop as if the machine died: containers killed, agent gone.
    KillNode,
    /// Drop all traffic to servers (but keep listening for `heal`).
    Partition,
    /// Restore traffic.
    Heal,
}

/// One order, identified by when it was given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChaosOrder {
    pub action: ChaosAction,
    pub issued_unix_ms: u64,
}

impl ChaosOrder {
    pub fn parse(s: &str) -> Option<ChaosOrder> {
        let (action, at) = s.trim().split_once(' ')?;
        let action = match action {
            "kill-node" => ChaosAction::KillNode,
            "partition" => ChaosAction::Partition,
            "heal" => ChaosAction::Heal,
            _ => return None,
        };
        Some(ChaosOrder { action, issued_unix_ms: at.trim().parse().ok()? })
    }

    pub fn render(&self) -> String {
        let action = match self.action {
            ChaosAction::KillNode => "kill-node",
            ChaosAction::Partition => "partition",
            ChaosAction::Heal => "heal",
        };
        format!("{action} {}", self.issued_unix_ms)
    }
}

/// The orders on every node, kept current from a watch. The watch is a
/// task of the clones handed out: it ends when the last of them is dropped.
#[derive(Clone)]
pub struct ChaosOrders {
    registry: Registry,
    orders: Arc<RwLock<HashMap<String, String>>>,
    watch: Arc<Mutex<Option<OwnedTask>>>,
}

fn order_of(node: &Value) -> Option<String> {
    node.pointer("/metadata/annotations").and_then(|a| a.get(CHAOS_NODE_ANNOTATION)).and_then(Value::as_str).map(String::from)
}

impl ChaosOrders {
    pub fn new(registry: Registry) -> Self {
        ChaosOrders { registry, orders: Default::default(), watch: Default::default() }
    }

    /// The order on `node`, if any (starts the watch on first use).
    pub fn get(&self, node: &str) -> Option<String> {
        let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
        if watch.is_none() {
            // The task's copy has no hold on the task, so dropping every
            // outside clone drops (and aborts) it.
            let me = ChaosOrders { watch: Arc::default(), ..self.clone() };
            *watch = Some(OwnedTask::spawn(me.run()));
        }
        drop(watch);
        self.orders.read().unwrap_or_else(|p| p.into_inner()).get(node).cloned()
    }

    fn set(&self, node: &Value, deleted: bool) {
        let name = object::name(node).unwrap_or_default().to_string();
        let mut orders = self.orders.write().unwrap_or_else(|p| p.into_inner());
        match order_of(node).filter(|_| !deleted) {
            Some(o) => orders.insert(name, o),
            None => orders.remove(&name),
        };
    }

    async fn run(self) {
        let nodes = &NODES;
        let mut watcher = Watcher::new(RegistrySource { registry: self.registry.clone(), res: nodes }, Backoff::default());
        loop {
            match watcher.next().await {
                Watched::Restarted { objects, .. } => {
                    self.orders.write().unwrap_or_else(|p| p.into_inner()).clear();
                    for n in &objects {
                        self.set(n, false);
                    }
                }
                Watched::Changes { events, .. } => {
                    for ev in events {
                        self.set(&ev.object, is_delete(&ev));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_round_trip_and_bad_ones_are_ignored() {
        let o = ChaosOrder { action: ChaosAction::Partition, issued_unix_ms: 42 };
        assert_eq!(ChaosOrder::parse(&o.render()), Some(o));
        assert_eq!(ChaosOrder::parse("kill-node 7").map(|o| o.action), Some(ChaosAction::KillNode));
        assert_eq!(ChaosOrder::parse("heal 9").map(|o| o.issued_unix_ms), Some(9));
        assert_eq!(ChaosOrder::parse("explode 1"), None);
        assert_eq!(ChaosOrder::parse("heal soon"), None);
        assert_eq!(ChaosOrder::parse(""), None);
    }
}
