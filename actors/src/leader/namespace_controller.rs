//! The namespace controller: finishes deleting every namespace left
//! Terminating (a cleanup that failed, or a server that crashed while
//! doing it), so none stays Terminating for ever. The API server does the
//! work at once when it can; this is the retry, on every resync.

use serde_json::Value;

use super::controller::{ControllerError, LeaderContext, PassOutcome, Reconciler};
use crate::model::resources::lookup;
use crate::model::selector::Selector;

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

#[async_trait::async_trait]
impl Reconciler for NamespaceController {
    fn name(&self) -> &'static str {
        "namespace-controller"
    }

    async fn reconcile(&mut self, ctx: &LeaderContext, resync: bool) -> Result<PassOutcome, ControllerError> {
        if !resync {
            return Ok(PassOutcome::default());
        }
        let res = lookup("namespaces").expect("namespaces are served");
        let (items, _, _) = ctx
            .registry
            .list(res, None, &Selector::default(), &Selector::default(), 0, None)
            .await
            .map_err(|source| ControllerError::Registry { controller: "namespace-controller", source })?;
        for name in terminating(&items) {
            match ctx.registry.finish_namespace_delete(&name).await {
                Ok(()) => tracing::info!(namespace = %name, "finished deleting a namespace"),
                Err(e) => tracing::warn!(namespace = %name, error = %e, "namespace still Terminating; trying again next resync"),
            }
        }
        Ok(PassOutcome::default())
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
