//! A served resource: its API group, version, plural name, scope, short
//! names and subresources, its storage keys, and its strategy. Each kind's
//! `Resource` lives in its file under `model::kinds`, with the list and the
//! lookups routing, discovery and the CLI share.

use super::strategy::Strategy;

/// One served resource.
#[derive(Clone, Copy)]
pub struct Resource {
    /// API group; "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    /// Lower-case plural used in paths and storage keys.
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    /// Subresources served under `.../{name}/{sub}`.
    pub subresources: &'static [&'static str],
    /// What the kind does beyond being stored: defaults, validation,
    /// columns, deletion.
    pub strategy: &'static dyn Strategy,
}

impl std::fmt::Debug for Resource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Resource({})", self.api_version_kind())
    }
}

/// Two resources are the same when they are served at the same place.
impl PartialEq for Resource {
    fn eq(&self, other: &Self) -> bool {
        self.group == other.group && self.version == other.version && self.plural == other.plural
    }
}

impl Eq for Resource {}

impl Resource {
    fn api_version_kind(&self) -> String {
        format!("{} {}", self.api_version(), self.kind)
    }

    /// `v1` or `apps/v1`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The store prefix holding every object of this resource.
    pub fn prefix(&self) -> String {
        format!("/registry/{}/", self.storage_name())
    }

    /// The store prefix for one namespace (or all, for cluster-scoped).
    pub fn namespace_prefix(&self, namespace: Option<&str>) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("/registry/{}/{ns}/", self.storage_name()),
            _ => self.prefix(),
        }
    }

    pub fn key(&self, namespace: Option<&str>, name: &str) -> String {
        match (self.namespaced, namespace) {
            (true, Some(ns)) => format!("/registry/{}/{ns}/{name}", self.storage_name()),
            _ => format!("/registry/{}/{name}", self.storage_name()),
        }
    }

    fn storage_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// A core-group (`v1`) resource.
pub(super) const fn core(
    kind: &'static str,
    plural: &'static str,
    singular: &'static str,
    namespaced: bool,
    short_names: &'static [&'static str],
    subresources: &'static [&'static str],
    strategy: &'static dyn Strategy,
) -> Resource {
    Resource { group: "", version: "v1", kind, plural, singular, namespaced, short_names, subresources, strategy }
}

#[cfg(test)]
mod tests {
    use crate::model::kinds::{DEPLOYMENTS, NODES, PODS};

    #[test]
    fn keys_are_scoped() {
        assert_eq!(PODS.key(Some("default"), "web-1"), "/registry/pods/default/web-1");
        assert_eq!(PODS.namespace_prefix(Some("default")), "/registry/pods/default/");
        assert_eq!(NODES.key(None, "n1"), "/registry/nodes/n1");
        assert_eq!(DEPLOYMENTS.key(Some("a"), "b"), "/registry/deployments.apps/a/b");
    }
}
