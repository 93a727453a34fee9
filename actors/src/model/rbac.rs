//! RBAC decisions (`rbac.authorization.k8s.io/v1`) as a plain function of
//! (user, groups, request attributes, the RBAC objects), with Kubernetes'
//! semantics: a ClusterRoleBinding grants its role everywhere, a
//! RoleBinding only inside its namespace (and never non-resource URLs);
//! rules match verbs, API groups, `resource/subresource`, resourceNames and
//! non-resource URLs, with `*` wildcards and `/prefix/*` URLs. Aggregation
//! is not read. Nothing here does I/O: the API keeps an [`RbacSnapshot`]
//! current from a watch and asks it.

use std::collections::HashMap;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject};

/// The attributes of a request that authorization decides on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attributes {
    Resource {
        verb: &'static str,
        group: String,
        resource: String,
        subresource: Option<String>,
        namespace: Option<String>,
        name: Option<String>,
    },
    NonResource {
        verb: &'static str,
        path: String,
    },
}

/// The RBAC objects a decision reads, indexed for it.
#[derive(Clone, Debug, Default)]
pub struct RbacSnapshot {
    /// (namespace, name) → rules.
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    /// namespace → bindings in it.
    role_bindings: HashMap<String, Vec<RoleBinding>>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
}

impl RbacSnapshot {
    pub fn new(
        roles: Vec<Role>,
        cluster_roles: Vec<ClusterRole>,
        role_bindings: Vec<RoleBinding>,
        cluster_role_bindings: Vec<ClusterRoleBinding>,
    ) -> Self {
        let mut s = RbacSnapshot { cluster_role_bindings, ..Default::default() };
        for r in roles {
            let key = (r.metadata.namespace.clone().unwrap_or_default(), r.metadata.name.clone().unwrap_or_default());
            s.roles.insert(key, r.rules.unwrap_or_default());
        }
        for r in cluster_roles {
            s.cluster_roles.insert(r.metadata.name.clone().unwrap_or_default(), r.rules.unwrap_or_default());
        }
        for b in role_bindings {
            s.role_bindings.entry(b.metadata.namespace.clone().unwrap_or_default()).or_default().push(b);
        }
        s
    }

    /// The rules a RoleBinding or ClusterRoleBinding's `roleRef` names;
    /// none if it names nothing that exists (Kubernetes grants nothing then).
    fn referenced(&self, kind: &str, name: &str, namespace: Option<&str>) -> &[PolicyRule] {
        match (kind, namespace) {
            ("ClusterRole", _) => self.cluster_roles.get(name).map_or(&[], Vec::as_slice),
            ("Role", Some(ns)) => self.roles.get(&(ns.to_string(), name.to_string())).map_or(&[], Vec::as_slice),
            _ => &[],
        }
    }
}

/// The user name a ServiceAccount authenticates as.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

fn subject_matches(subject: &Subject, user: &str, groups: &[String], binding_namespace: Option<&str>) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == user,
        "Group" => groups.contains(&subject.name),
        "ServiceAccount" => {
            let ns = subject.namespace.as_deref().filter(|n| !n.is_empty()).or(binding_namespace).unwrap_or("");
            !ns.is_empty() && service_account_user(ns, &subject.name) == user
        }
        _ => false,
    }
}

fn has(list: &Option<Vec<String>>, wanted: &str) -> bool {
    list.as_ref().is_some_and(|l| l.iter().any(|x| x == "*" || x == wanted))
}

/// Whether one rule allows the request.
pub fn rule_allows(rule: &PolicyRule, attrs: &Attributes) -> bool {
    let verb_ok = |verb: &str| rule.verbs.iter().any(|v| v == "*" || v == verb);
    match attrs {
        Attributes::Resource { verb, group, resource, subresource, name, .. } => {
            if !verb_ok(verb) || !has(&rule.api_groups, group) {
                return false;
            }
            let combined = match subresource {
                Some(sub) => format!("{resource}/{sub}"),
                None => resource.clone(),
            };
            let resource_ok = rule.resources.as_ref().is_some_and(|rs| {
                rs.iter().any(|r| r == "*" || *r == combined || subresource.as_ref().is_some_and(|sub| *r == format!("*/{sub}")))
            });
            if !resource_ok {
                return false;
            }
            match rule.resource_names.as_ref().filter(|n| !n.is_empty()) {
                None => true,
                Some(names) => name.as_ref().is_some_and(|n| names.iter().any(|x| x == n)),
            }
        }
        Attributes::NonResource { verb, path } => {
            verb_ok(verb)
                && rule.non_resource_urls.as_ref().is_some_and(|urls| {
                    urls.iter().any(|u| u == "*" || u == path || u.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix)))
                })
        }
    }
}

/// Allowed, or why not (the message a 403 carries).
pub fn authorize(snapshot: &RbacSnapshot, user: &str, groups: &[String], attrs: &Attributes) -> Result<(), String> {
    for b in &snapshot.cluster_role_bindings {
        if b.subjects.iter().flatten().any(|s| subject_matches(s, user, groups, None))
            && snapshot.referenced(&b.role_ref.kind, &b.role_ref.name, None).iter().any(|r| rule_allows(r, attrs))
        {
            return Ok(());
        }
    }
    if let Attributes::Resource { namespace: Some(ns), .. } = attrs {
        for b in snapshot.role_bindings.get(ns).into_iter().flatten() {
            if b.subjects.iter().flatten().any(|s| subject_matches(s, user, groups, Some(ns)))
                && snapshot.referenced(&b.role_ref.kind, &b.role_ref.name, Some(ns)).iter().any(|r| rule_allows(r, attrs))
            {
                return Ok(());
            }
        }
    }
    Err(denial(user, attrs))
}

/// Kubernetes' wording: `User "alice" cannot list resource "pods" in API
/// group "" in the namespace "default"`.
pub fn denial(user: &str, attrs: &Attributes) -> String {
    match attrs {
        Attributes::NonResource { verb, path } => format!("User {user:?} cannot {verb} path {path:?}"),
        Attributes::Resource { verb, group, resource, subresource, namespace, name } => {
            let mut what = format!("resource {resource:?}");
            if let Some(sub) = subresource {
                what = format!("{what}/{sub:?}");
            }
            if let Some(n) = name {
                what = format!("{what} named {n:?}");
            }
            let scope = match namespace {
                Some(ns) => format!("in the namespace {ns:?}"),
                None => "at the cluster scope".into(),
            };
            format!("User {user:?} cannot {verb} {what} in API group {group:?} {scope}")
        }
    }
}

/// The roles and bindings every cluster starts with, as Kubernetes ships
/// them (trimmed to the kinds flotilla serves): `cluster-admin` bound to
/// `system:masters`; `admin`, `edit` and `view` to bind per namespace;
/// discovery and self-review for every authenticated user. Created when
/// missing, never overwritten, so an operator's edits stay.
pub fn builtin_objects() -> Vec<serde_json::Value> {
    use serde_json::json;
    let workloads = json!(["", "apps", "networking.k8s.io"]);
    let readable = json!([
        "pods",
        "pods/log",
        "pods/status",
        "services",
        "services/status",
        "endpoints",
        "configmaps",
        "events",
        "namespaces",
        "namespaces/status",
        "deployments",
        "deployments/scale",
        "deployments/status",
        "replicasets",
        "replicasets/scale",
        "replicasets/status",
        "networkpolicies",
        "serviceaccounts"
    ]);
    let read = json!(["get", "list", "watch"]);
    let all = json!(["*"]);
    let cluster_role = |name: &str, rules: serde_json::Value| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
               "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}}, "rules": rules})
    };
    let binding = |name: &str, role: &str, group: &str| {
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
               "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": group}]})
    };
    vec![
        cluster_role("cluster-admin", json!([{"apiGroups": all, "resources": all, "verbs": all}, {"nonResourceURLs": all, "verbs": all}])),
        cluster_role(
            "admin",
            json!([{"apiGroups": ["", "apps", "networking.k8s.io", "rbac.authorization.k8s.io"], "resources": all, "verbs": all}]),
        ),
        cluster_role(
            "edit",
            json!([{"apiGroups": workloads, "resources": all, "verbs": ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]}]),
        ),
        cluster_role("view", json!([{"apiGroups": workloads, "resources": readable, "verbs": read}])),
        cluster_role(
            "system:discovery",
            json!([{"nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*", "/version", "/version/"], "verbs": ["get"]}]),
        ),
        cluster_role(
            "system:public-info-viewer",
            json!([{"nonResourceURLs": ["/healthz", "/livez", "/readyz", "/version", "/version/"], "verbs": ["get"]}]),
        ),
        cluster_role(
            "system:basic-user",
            json!([{"apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]}]),
        ),
        binding("cluster-admin", "cluster-admin", "system:masters"),
        binding("system:discovery", "system:discovery", "system:authenticated"),
        binding("system:public-info-viewer", "system:public-info-viewer", "system:authenticated"),
        binding("system:basic-user", "system:basic-user", "system:authenticated"),
    ]
}

/// A snapshot of just the built-in roles and bindings.
pub fn builtin_snapshot() -> RbacSnapshot {
    let objects = builtin_objects();
    fn of<T: serde::de::DeserializeOwned>(objects: &[serde_json::Value], kind: &str) -> Vec<T> {
        objects.iter().filter(|o| o["kind"] == kind).filter_map(|o| serde_json::from_value(o.clone()).ok()).collect()
    }
    RbacSnapshot::new(vec![], of(&objects, "ClusterRole"), vec![], of(&objects, "ClusterRoleBinding"))
}

/// The verbs Kubernetes knows; a rule naming another is refused, since it
/// would never match and its author meant something else.
pub const VERBS: &[&str] = &[
    "*",
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
    "post",
    "put",
    "head",
    "options",
    "bind",
    "escalate",
    "impersonate",
    "approve",
    "sign",
    "use",
];

/// Field checks of a Role's or ClusterRole's rules.
pub fn validate_rules(rules: &[PolicyRule], non_resource_allowed: bool, errors: &mut crate::model::field_errors::Errors) {
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("rules[{i}]");
        if rule.verbs.is_empty() {
            errors.add(format!("{at}.verbs"), "must name at least one verb (or \"*\")");
        }
        for (j, verb) in rule.verbs.iter().enumerate() {
            if !VERBS.contains(&verb.as_str()) {
                errors.add(format!("{at}.verbs[{j}]"), format!("{verb:?} is not a verb Kubernetes knows"));
            }
        }
        let has_resources = rule.resources.as_ref().is_some_and(|r| !r.is_empty());
        let has_urls = rule.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty());
        match (has_resources, has_urls) {
            (false, false) => errors.add(&at, "must name resources (with apiGroups) or nonResourceURLs"),
            (true, true) => errors.add(&at, "may name resources or nonResourceURLs, not both"),
            (true, false) if rule.api_groups.is_none() => {
                errors.add(format!("{at}.apiGroups"), "is required with resources (\"\" is the core group)")
            }
            (false, true) if !non_resource_allowed => {
                errors.add(format!("{at}.nonResourceURLs"), "only a ClusterRole may grant non-resource URLs")
            }
            _ => {}
        }
        for (j, url) in rule.non_resource_urls.iter().flatten().enumerate() {
            if !(url == "*" || url.starts_with('/')) || url[..url.len().saturating_sub(1)].contains('*') {
                errors
                    .add(format!("{at}.nonResourceURLs[{j}]"), format!("{url:?} must be a path such as /healthz, with * only at its end"));
            }
        }
    }
}

/// Field checks of a RoleBinding's or ClusterRoleBinding's role and subjects.
pub fn validate_binding(
    role_ref: &k8s_openapi::api::rbac::v1::RoleRef,
    subjects: &[Subject],
    namespaced: bool,
    errors: &mut crate::model::field_errors::Errors,
) {
    if role_ref.api_group != "rbac.authorization.k8s.io" {
        errors.add("roleRef.apiGroup", "must be rbac.authorization.k8s.io");
    }
    match (role_ref.kind.as_str(), namespaced) {
        ("ClusterRole", _) | ("Role", true) => {}
        ("Role", false) => errors.add("roleRef.kind", "a ClusterRoleBinding may only name a ClusterRole"),
        (other, _) => errors.add("roleRef.kind", format!("{other:?} must be Role or ClusterRole")),
    }
    if role_ref.name.is_empty() {
        errors.add("roleRef.name", "is required");
    }
    for (i, subject) in subjects.iter().enumerate() {
        let at = format!("subjects[{i}]");
        if subject.name.is_empty() {
            errors.add(format!("{at}.name"), "is required");
        }
        match subject.kind.as_str() {
            "User" | "Group" => {}
            "ServiceAccount" if !namespaced && subject.namespace.as_deref().unwrap_or("").is_empty() => {
                errors.add(format!("{at}.namespace"), "is required for a ServiceAccount in a ClusterRoleBinding")
            }
            "ServiceAccount" => {}
            other => errors.add(format!("{at}.kind"), format!("{other:?} must be User, Group or ServiceAccount")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::rbac::v1::RoleRef;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn rule(groups: &[&str], resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
        let v = |xs: &[&str]| Some(xs.iter().map(|s| s.to_string()).collect());
        PolicyRule {
            api_groups: v(groups),
            resources: v(resources),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            resource_names: if names.is_empty() { None } else { v(names) },
            non_resource_urls: None,
        }
    }

    fn meta(ns: Option<&str>, name: &str) -> ObjectMeta {
        ObjectMeta { name: Some(name.into()), namespace: ns.map(String::from), ..Default::default() }
    }

    fn subject(kind: &str, name: &str, ns: Option<&str>) -> Subject {
        Subject { kind: kind.into(), name: name.into(), namespace: ns.map(String::from), api_group: None }
    }

    fn res(verb: &'static str, group: &str, resource: &str, sub: Option<&str>, ns: Option<&str>, name: Option<&str>) -> Attributes {
        Attributes::Resource {
            verb,
            group: group.into(),
            resource: resource.into(),
            subresource: sub.map(String::from),
            namespace: ns.map(String::from),
            name: name.map(String::from),
        }
    }

    fn snapshot() -> RbacSnapshot {
        let admin = ClusterRole {
            metadata: meta(None, "cluster-admin"),
            rules: Some(vec![
                rule(&["*"], &["*"], &["*"], &[]),
                PolicyRule { non_resource_urls: Some(vec!["*".into()]), verbs: vec!["*".into()], ..Default::default() },
            ]),
            ..Default::default()
        };
        let discovery = ClusterRole {
            metadata: meta(None, "system:discovery"),
            rules: Some(vec![PolicyRule {
                non_resource_urls: Some(vec!["/api".into(), "/api/*".into(), "/apis".into(), "/apis/*".into()]),
                verbs: vec!["get".into()],
                ..Default::default()
            }]),
            ..Default::default()
        };
        let view = ClusterRole {
            metadata: meta(None, "view"),
            rules: Some(vec![rule(&["", "apps"], &["pods", "deployments", "pods/log"], &["get", "list", "watch"], &[])]),
            ..Default::default()
        };
        let pod_reader = Role {
            metadata: meta(Some("dev"), "pod-reader"),
            rules: Some(vec![
                rule(&[""], &["pods"], &["get", "list"], &[]),
                rule(&[""], &["configmaps"], &["get", "update"], &["settings"]),
                rule(&["apps"], &["*/scale"], &["patch"], &[]),
            ]),
        };
        let crb = |name: &str, role: &str, subjects: Vec<Subject>| ClusterRoleBinding {
            metadata: meta(None, name),
            role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: "ClusterRole".into(), name: role.into() },
            subjects: Some(subjects),
        };
        let rb = |ns: &str, name: &str, kind: &str, role: &str, subjects: Vec<Subject>| RoleBinding {
            metadata: meta(Some(ns), name),
            role_ref: RoleRef { api_group: "rbac.authorization.k8s.io".into(), kind: kind.into(), name: role.into() },
            subjects: Some(subjects),
        };
        RbacSnapshot::new(
            vec![pod_reader],
            vec![admin, discovery, view],
            vec![
                rb("dev", "alice-reads", "Role", "pod-reader", vec![subject("User", "alice", None)]),
                rb("dev", "robots-view", "ClusterRole", "view", vec![subject("ServiceAccount", "robot", None)]),
                rb("dev", "ghost", "Role", "no-such-role", vec![subject("User", "carol", None)]),
                rb("prod", "ops-view", "ClusterRole", "view", vec![subject("Group", "ops", None)]),
            ],
            vec![
                crb("masters", "cluster-admin", vec![subject("Group", "system:masters", None)]),
                crb("discovery", "system:discovery", vec![subject("Group", "system:authenticated", None)]),
            ],
        )
    }

    #[test]
    fn decisions_follow_kubernetes_rbac() {
        let s = snapshot();
        let authn =
            |extra: &[&str]| -> Vec<String> { extra.iter().map(|g| g.to_string()).chain(["system:authenticated".to_string()]).collect() };
        let robot = service_account_user("dev", "robot");
        let nr = |verb: &'static str, path: &str| Attributes::NonResource { verb, path: path.into() };
        let table: Vec<(&str, Vec<String>, Attributes, bool)> = vec![
            ("root", authn(&["system:masters"]), res("delete", "", "nodes", None, None, Some("n1")), true),
            ("root", authn(&["system:masters"]), nr("get", "/metrics"), true),
            ("alice", authn(&[]), res("list", "", "pods", None, Some("dev"), None), true),
            ("alice", authn(&[]), res("get", "", "pods", None, Some("dev"), Some("web")), true),
            ("alice", authn(&[]), res("watch", "", "pods", None, Some("dev"), None), false),
            ("alice", authn(&[]), res("delete", "", "pods", None, Some("dev"), Some("web")), false),
            ("alice", authn(&[]), res("list", "", "pods", None, Some("prod"), None), false),
            ("alice", authn(&[]), res("list", "", "pods", None, None, None), false),
            ("alice", authn(&[]), res("get", "", "pods", Some("log"), Some("dev"), Some("web")), false),
            ("alice", authn(&[]), res("get", "", "configmaps", None, Some("dev"), Some("settings")), true),
            ("alice", authn(&[]), res("get", "", "configmaps", None, Some("dev"), Some("other")), false),
            ("alice", authn(&[]), res("list", "", "configmaps", None, Some("dev"), None), false),
            ("alice", authn(&[]), res("patch", "apps", "deployments", Some("scale"), Some("dev"), Some("w")), true),
            ("alice", authn(&[]), res("patch", "apps", "deployments", None, Some("dev"), Some("w")), false),
            ("alice", authn(&[]), res("list", "apps", "pods", None, Some("dev"), None), false),
            ("alice", authn(&[]), nr("get", "/apis/apps/v1"), true),
            ("alice", authn(&[]), nr("get", "/apis"), true),
            ("alice", authn(&[]), nr("post", "/apis"), false),
            ("alice", authn(&[]), nr("get", "/metrics"), false),
            (robot.as_str(), authn(&["system:serviceaccounts"]), res("watch", "apps", "deployments", None, Some("dev"), None), true),
            (robot.as_str(), authn(&[]), res("get", "", "pods", Some("log"), Some("dev"), Some("p")), true),
            (robot.as_str(), authn(&[]), res("create", "", "pods", None, Some("dev"), None), false),
            ("system:serviceaccount:prod:robot", authn(&[]), res("list", "", "pods", None, Some("dev"), None), false),
            ("bob", authn(&["ops"]), res("list", "", "pods", None, Some("prod"), None), true),
            ("bob", authn(&["ops"]), res("list", "", "pods", None, Some("dev"), None), false),
            ("carol", authn(&[]), res("get", "", "pods", None, Some("dev"), Some("x")), false),
        ];
        for (user, groups, attrs, want) in table {
            let got = authorize(&s, user, &groups, &attrs);
            assert_eq!(got.is_ok(), want, "{user} {groups:?} {attrs:?}: {got:?}");
        }
    }

    #[test]
    fn the_builtin_roles_are_valid_and_grant_what_their_names_say() {
        for o in builtin_objects() {
            let mut errors = crate::model::field_errors::Errors::default();
            match o["kind"].as_str() {
                Some("ClusterRole") => {
                    let r: ClusterRole = serde_json::from_value(o.clone()).unwrap();
                    validate_rules(r.rules.as_deref().unwrap_or_default(), true, &mut errors);
                }
                Some("ClusterRoleBinding") => {
                    let b: ClusterRoleBinding = serde_json::from_value(o.clone()).unwrap();
                    validate_binding(&b.role_ref, b.subjects.as_deref().unwrap_or_default(), false, &mut errors);
                }
                other => panic!("unexpected builtin {other:?}"),
            }
            assert!(errors.is_empty(), "{o}: {:?}", errors.into_vec());
        }
        let s = builtin_snapshot();
        let masters = vec!["system:masters".to_string(), "system:authenticated".to_string()];
        let someone = vec!["system:authenticated".to_string()];
        assert!(authorize(&s, "root", &masters, &res("delete", "", "nodes", None, None, Some("n"))).is_ok());
        assert!(authorize(&s, "alice", &someone, &Attributes::NonResource { verb: "get", path: "/apis/apps/v1".into() }).is_ok());
        assert!(
            authorize(&s, "alice", &someone, &res("create", "authorization.k8s.io", "selfsubjectaccessreviews", None, None, None)).is_ok()
        );
        assert!(authorize(&s, "alice", &someone, &res("list", "", "pods", None, Some("default"), None)).is_err());
    }

    #[test]
    fn a_denial_names_the_user_the_verb_and_the_resource() {
        let s = snapshot();
        let e = authorize(&s, "alice", &[], &res("delete", "", "pods", None, Some("dev"), Some("web"))).unwrap_err();
        assert_eq!(e, "User \"alice\" cannot delete resource \"pods\" named \"web\" in API group \"\" in the namespace \"dev\"");
        let e = authorize(&s, "alice", &[], &res("list", "", "nodes", None, None, None)).unwrap_err();
        assert_eq!(e, "User \"alice\" cannot list resource \"nodes\" in API group \"\" at the cluster scope");
    }
}
