//! The Endpoints controller: for each Service with a selector in a
//! namespace whose pods or services changed, writes the Endpoints that
//! [`endpoints_for`] computes when they differ from the stored ones, and
//! removes the Endpoints it made for Services that are gone.

use serde_json::{json, Value};

use super::cache::Kind;
use super::controller::{ControllerError, LeaderContext, PassOutcome, Reconciler};
use super::endpoints::{endpoints_for, same_endpoints};
use crate::model::object;
use crate::model::resources::lookup;
use crate::registry::{Propagation, RegistryError};

/// Marks Endpoints this controller owns, so hand-made ones are left alone.
pub const MANAGED_BY_LABEL: &str = "endpoints.flotilla.io/managed-by";

pub struct EndpointsController;

pub fn make() -> Box<dyn Reconciler> {
    Box::new(EndpointsController)
}

fn err(source: RegistryError) -> ControllerError {
    ControllerError::Registry { controller: "endpoints-controller", source }
}

enum Change {
    Put(Value),
    Delete { namespace: String, name: String },
}

#[async_trait::async_trait]
impl Reconciler for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoints-controller"
    }

    async fn reconcile(&mut self, ctx: &LeaderContext, resync: bool) -> Result<PassOutcome, ControllerError> {
        let mut outcome = PassOutcome::default();
        let changes = {
            let mut s = ctx.cache.write();
            let namespaces = s.take_service_namespaces(resync);
            let mut changes = Vec::new();
            for ns in &namespaces {
                let prefix = format!("{ns}/");
                let in_ns = |m: &std::collections::BTreeMap<String, Value>| {
                    m.range(prefix.clone()..).next().is_some_and(|(k, _)| k.starts_with(&prefix))
                };
                if !in_ns(&s.services) && !in_ns(&s.endpoints) {
                    // No services here: pod churn changes nothing.
                    continue;
                }
                let pods: Vec<_> = s.pods.values().filter(|p| &p.namespace == ns).collect();
                for (key, svc) in s.services.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)) {
                    let Some(mut desired) = endpoints_for(svc, pods.iter().copied()) else { continue };
                    desired["metadata"]["labels"][MANAGED_BY_LABEL] = json!("flotilla");
                    if !s.endpoints.get(key).is_some_and(|current| same_endpoints(current, &desired)) {
                        changes.push(Change::Put(desired));
                    }
                }
                for (key, ep) in s.endpoints.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)) {
                    let ours = ep.pointer("/metadata/labels").and_then(|l| l.get(MANAGED_BY_LABEL)).is_some();
                    if ours && !s.services.contains_key(key) {
                        changes.push(Change::Delete { namespace: ns.clone(), name: object::name(ep).unwrap_or_default().to_string() });
                    }
                }
            }
            changes
        };
        let endpoints = lookup("endpoints").expect("endpoints are served");
        for change in changes {
            let written = match change {
                Change::Put(desired) => {
                    let ns = object::namespace(&desired).unwrap_or("default").to_string();
                    let name = object::name(&desired).unwrap_or_default().to_string();
                    match ctx.registry.create(endpoints, Some(&ns), desired.clone()).await {
                        Err(RegistryError::AlreadyExists { .. }) => {
                            ctx.registry
                                .read_modify_write(
                                    endpoints,
                                    Some(&ns),
                                    &name,
                                    None,
                                    |old| {
                                        let mut new = old.clone();
                                        new["subsets"] = desired["subsets"].clone();
                                        new["metadata"]["labels"] = desired["metadata"]["labels"].clone();
                                        Ok(new)
                                    },
                                    None,
                                )
                                .await
                        }
                        other => other,
                    }
                }
                Change::Delete { namespace, name } => {
                    ctx.registry.delete(endpoints, Some(&namespace), &name, None, Propagation::Background).await
                }
            };
            match written {
                Ok(obj) => {
                    if let Some(rv) = object::resource_version(&obj) {
                        outcome.note_write(Kind::Endpoints, rv);
                    }
                }
                Err(RegistryError::NotFound { .. } | RegistryError::Conflict { .. } | RegistryError::NamespaceTerminating(_)) => {}
                Err(e) => return Err(err(e)),
            }
        }
        Ok(outcome)
    }
}
