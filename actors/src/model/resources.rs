//! A served resource's names, with its API group, version, plural name,
//! scope and short names, and the lookups that routing, discovery, storage
//! keys and the CLI share. Each kind's `Resource` and behaviour live in its
//! file under `model::kinds`.

use super::kinds::Strategy;
pub use super::kinds::RESOURCES;

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

/// The API groups other than core, with their one version each, in the
/// order their first kind is served.
pub fn groups() -> Vec<(&'static str, &'static str)> {
    let mut groups: Vec<(&'static str, &'static str)> = Vec::new();
    for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
        if !groups.iter().any(|(g, _)| *g == r.group) {
            groups.push((r.group, r.version));
        }
    }
    groups
}

/// Finds a resource by what a user types: plural, singular, kind or short
/// name, case-insensitively, optionally with `.group`.
pub fn lookup(name: &str) -> Option<&'static Resource> {
    let lower = name.to_ascii_lowercase();
    let (base, group) = match lower.split_once('.') {
        Some((b, g)) => (b.to_string(), Some(g.to_string())),
        None => (lower, None),
    };
    RESOURCES.iter().find(|r| {
        (r.plural == base || r.singular == base || r.kind.eq_ignore_ascii_case(&base) || r.short_names.contains(&base.as_str()))
            && group.as_deref().is_none_or(|g| g == r.group || r.group.starts_with(g))
    })
}

/// Finds the resource for an object's `apiVersion` and `kind`.
pub fn by_kind(api_version: &str, kind: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.kind == kind && r.api_version() == api_version)
}

/// Finds the resource served at `group/version` under `plural`.
pub fn by_path(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_accept_what_kubectl_users_type() {
        assert_eq!(lookup("po").map(|r| r.kind), Some("Pod"));
        assert_eq!(lookup("Deployments").map(|r| r.kind), Some("Deployment"));
        assert_eq!(lookup("deploy").map(|r| r.kind), Some("Deployment"));
        assert_eq!(lookup("deployments.apps").map(|r| r.kind), Some("Deployment"));
        assert_eq!(lookup("netpol").map(|r| r.kind), Some("NetworkPolicy"));
        assert_eq!(lookup("widgets"), None);
        assert_eq!(by_kind("apps/v1", "ReplicaSet").map(|r| r.plural), Some("replicasets"));
        assert_eq!(by_kind("v1", "Deployment"), None);
        assert_eq!(groups(), vec![("apps", "v1"), ("networking.k8s.io", "v1")]);
    }

    #[test]
    fn keys_are_scoped() {
        let pods = lookup("pods").unwrap();
        assert_eq!(pods.key(Some("default"), "web-1"), "/registry/pods/default/web-1");
        assert_eq!(pods.namespace_prefix(Some("default")), "/registry/pods/default/");
        let nodes = lookup("nodes").unwrap();
        assert_eq!(nodes.key(None, "n1"), "/registry/nodes/n1");
        let deploy = lookup("deploy").unwrap();
        assert_eq!(deploy.key(Some("a"), "b"), "/registry/deployments.apps/a/b");
    }
}
