//! The Endpoints controller: for each Service with a selector whose
//! selected pods or spec changed, asks to write the Endpoints that
//! [`endpoints_for`] computes when they differ from the stored ones, and
//! removes the Endpoints it made for Services that are gone.

use std::collections::BTreeMap;

use serde_json::json;

use super::cache::{Kind, PodView};
use super::command::{Command, Decision};
use super::controller::{Reconciler, StepInput};
use super::endpoints::{endpoints_for, same_endpoints};
use crate::model::object;

/// Marks Endpoints this controller owns, so hand-made ones are left alone.
pub const MANAGED_BY_LABEL: &str = "endpoints.flotilla.io/managed-by";

pub struct EndpointsController;

pub fn make() -> Box<dyn Reconciler> {
    Box::new(EndpointsController)
}

impl Reconciler for EndpointsController {
    fn name(&self) -> &'static str {
        "endpoints-controller"
    }

    fn step(&mut self, input: StepInput<'_>) -> Decision {
        let s = input.cache;
        let keys = s.take_services(input.resync);
        let mut decision = Decision::default();
        // Pods by namespace, gathered once for the namespaces that need them.
        let mut by_namespace: BTreeMap<&str, Vec<&PodView>> = BTreeMap::new();
        for key in &keys {
            let (ns, _) = key.split_once('/').unwrap_or(("default", key));
            match s.services.get(key) {
                Some(svc) => {
                    if !by_namespace.contains_key(ns) {
                        by_namespace.insert(ns, s.pods.values().filter(|p| p.namespace == ns).collect());
                    }
                    let pods = &by_namespace[ns];
                    let Some(mut desired) = endpoints_for(svc, pods.iter().copied()) else { continue };
                    desired["metadata"]["labels"][MANAGED_BY_LABEL] = json!("flotilla");
                    if !s.endpoints.get(key).is_some_and(|current| same_endpoints(current, &desired)) {
                        decision.commands.push(Command::Upsert { kind: Kind::Endpoints, object: desired });
                    }
                }
                None => {
                    // Endpoints this controller made for a Service that is gone.
                    let Some(ep) = s.endpoints.get(key) else { continue };
                    if ep.pointer("/metadata/labels").and_then(|l| l.get(MANAGED_BY_LABEL)).is_some() {
                        decision.commands.push(Command::Delete {
                            kind: Kind::Endpoints,
                            namespace: Some(ns.to_string()),
                            name: object::name(ep).unwrap_or_default().to_string(),
                        });
                    }
                }
            }
        }
        decision
    }
}
