//! The namespace controller: finishes deleting every namespace left
//! Terminating (a cleanup that failed, or a server that crashed while
//! doing it), so none stays Terminating for ever. The API server does the
//! work at once when it can; this is the retry, on every resync.

use serde_json::Value;

use super::command::{Command, Decision};
use super::controller::{Reconciler, StepInput};

pub struct NamespaceController;

pub fn make() -> Box<dyn Reconciler> {
    Box::new(NamespaceController)
}

/// The namespaces whose deletion is unfinished.
pub fn terminating(namespaces: &[Value]) -> Vec<String> {
    namespaces
        .iter()
        .filter(|n| n.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating"))
        .filter_map(|n| n.pointer("/metadata/name").and_then(Value::as_str).map(String::from))
        .collect()
}

impl Reconciler for NamespaceController {
    fn name(&self) -> &'static str {
        "namespace-controller"
    }

    fn step(&mut self, input: StepInput<'_>) -> Decision {
        // Namespaces are few and not cached: the executor lists them.
        Decision { commands: if input.resync { vec![Command::FinishNamespaces] } else { vec![] }, more: false }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_terminating_namespaces_are_finished() {
        let items = vec![
            json!({"metadata": {"name": "default"}, "status": {"phase": "Active"}}),
            json!({"metadata": {"name": "gone"}, "status": {"phase": "Terminating"}}),
            json!({"metadata": {"name": "new"}}),
        ];
        assert_eq!(terminating(&items), vec!["gone".to_string()]);
    }
}
