//! The API's view of the RBAC objects: one watcher and reflector per kind
//! (Role, ClusterRole, RoleBinding, ClusterRoleBinding), folded into one
//! [`RbacSnapshot`] that every authorization reads without a store read.
//! The tasks end when the cache is dropped.

use std::sync::{Arc, RwLock};

use flotilla_actors::model::kinds::{CLUSTER_ROLES, CLUSTER_ROLE_BINDINGS, ROLES, ROLE_BINDINGS};
use flotilla_actors::model::rbac::RbacSnapshot;
use flotilla_actors::tasks::OwnedTask;
use flotilla_actors::watcher::{Backoff, Reflector, RegistrySource, Watcher};
use flotilla_actors::Registry;
use serde::de::DeserializeOwned;

#[derive(Default)]
struct Parts {
    roles: Reflector,
    cluster_roles: Reflector,
    role_bindings: Reflector,
    cluster_role_bindings: Reflector,
}

impl Parts {
    fn listed(&self) -> bool {
        self.roles.listed && self.cluster_roles.listed && self.role_bindings.listed && self.cluster_role_bindings.listed
    }

    fn snapshot(&self) -> RbacSnapshot {
        fn typed<T: DeserializeOwned>(r: &Reflector) -> Vec<T> {
            // The registry admitted these as their type; one that no longer
            // decodes grants nothing rather than failing every request.
            r.objects.values().filter_map(|o| serde_json::from_value(o.clone()).ok()).collect()
        }
        RbacSnapshot::new(typed(&self.roles), typed(&self.cluster_roles), typed(&self.role_bindings), typed(&self.cluster_role_bindings))
    }
}

/// What authorization reads; cloned into every request's state.
#[derive(Clone, Default)]
pub struct RbacView {
    current: Arc<RwLock<Option<Arc<RbacSnapshot>>>>,
}

impl RbacView {
    /// The latest snapshot, or None until every kind has been listed once.
    pub fn snapshot(&self) -> Option<Arc<RbacSnapshot>> {
        self.current.read().ok().and_then(|g| g.clone())
    }

    /// A view that holds `snapshot` for good (tests, benchmarks).
    pub fn fixed(snapshot: RbacSnapshot) -> RbacView {
        RbacView { current: Arc::new(RwLock::new(Some(Arc::new(snapshot)))) }
    }
}

/// The running reflectors; dropping this stops them.
pub struct RbacCache {
    pub view: RbacView,
    _tasks: Vec<OwnedTask>,
}

#[derive(Clone, Copy)]
enum Which {
    Roles,
    ClusterRoles,
    RoleBindings,
    ClusterRoleBindings,
}

impl RbacCache {
    pub fn start(registry: Registry) -> RbacCache {
        let view = RbacView::default();
        let parts = Arc::new(std::sync::Mutex::new(Parts::default()));
        let kinds = [
            (&ROLES, Which::Roles),
            (&CLUSTER_ROLES, Which::ClusterRoles),
            (&ROLE_BINDINGS, Which::RoleBindings),
            (&CLUSTER_ROLE_BINDINGS, Which::ClusterRoleBindings),
        ];
        let tasks = kinds
            .into_iter()
            .map(|(res, which)| {
                let (registry, parts, view) = (registry.clone(), parts.clone(), view.clone());
                OwnedTask::spawn(async move {
                    let mut watcher = Watcher::new(RegistrySource { registry, res }, Backoff::default());
                    loop {
                        let seen = watcher.next().await;
                        let Ok(mut p) = parts.lock() else { return };
                        let reflector = match which {
                            Which::Roles => &mut p.roles,
                            Which::ClusterRoles => &mut p.cluster_roles,
                            Which::RoleBindings => &mut p.role_bindings,
                            Which::ClusterRoleBindings => &mut p.cluster_role_bindings,
                        };
                        reflector.apply(seen);
                        if p.listed() {
                            let snapshot = Arc::new(p.snapshot());
                            if let Ok(mut current) = view.current.write() {
                                *current = Some(snapshot);
                            }
                        }
                    }
                })
            })
            .collect();
        RbacCache { view, _tasks: tasks }
    }
}
