//! Which container runtime serves which node, for the API server's log and
//! usage requests. Agents in the same process register here; a node that is
//! not registered has no reachable agent for those requests.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::runtime::ContainerRuntime;

#[derive(Clone, Default)]
pub struct AgentDirectory {
    nodes: Arc<RwLock<HashMap<String, Arc<dyn ContainerRuntime>>>>,
}

impl AgentDirectory {
    pub fn register(&self, node: &str, runtime: Arc<dyn ContainerRuntime>) {
        self.nodes.write().unwrap_or_else(|p| p.into_inner()).insert(node.to_string(), runtime);
    }

    pub fn runtime(&self, node: &str) -> Option<Arc<dyn ContainerRuntime>> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).get(node).cloned()
    }

    pub fn nodes(&self) -> Vec<String> {
        self.nodes.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
}
