//! Who is asking, and may they: authentication as Kubernetes does it
//! (client certificates signed by the cluster CA, user = CN and group = O;
//! bearer tokens from a static token file), anonymous requests refused
//! except the health and version endpoints, the request's attributes
//! (verb, resource, namespace, name) read once, and RBAC's decision on them
//! from the API's cached RBAC objects (no store read per request).
//! `system:masters` is allowed everything without RBAC, as in Kubernetes,
//! so an administrator is never locked out by a bad role.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::status::ApiError;
use super::ApiState;

pub use super::user::{User, AUTHENTICATED_GROUP, MASTERS_GROUP};
/// Largest static token file read.
pub const TOKEN_FILE_MAX_BYTES: u64 = 1024 * 1024;

/// What the TLS layer learnt of the client's certificate, per connection.
#[derive(Clone, Debug, Default)]
pub enum ClientCertificate {
    /// No certificate was shown (or the connection is plain HTTP).
    #[default]
    None,
    /// A certificate that chains to the cluster CA and is within its dates,
    /// with its serial number (checked against the revocation list at every
    /// request).
    Verified { user: User, serial: String },
    /// A certificate was shown and refused; the reason goes in the 401.
    Rejected(String),
}

/// Static bearer tokens (Kubernetes' `--token-auth-file`), looked up by
/// their sha256 so the table holds no secret in the clear.
#[derive(Clone, Debug, Default)]
pub struct Authenticator {
    tokens: HashMap<[u8; 32], User>,
}

/// A token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("token file {path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("token file {path} is {size} bytes, over the limit of {TOKEN_FILE_MAX_BYTES}")]
    TooLarge { path: String, size: u64 },
    #[error("token file {path}, line {line}: {message} (each line is token,user,uid[,\"group1,group2\"])")]
    Line { path: String, line: usize, message: String },
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Authenticator {
    /// An authenticator that knows the given tokens.
    pub fn with_tokens<'a>(tokens: impl IntoIterator<Item = (&'a str, User)>) -> Self {
        Authenticator { tokens: tokens.into_iter().map(|(t, u)| (digest(t), u)).collect() }
    }

    /// Reads a CSV token file: `token,user,uid[,"group1,group2"]` per line;
    /// blank lines and lines starting with `#` are skipped.
    pub fn from_token_file(path: &Path) -> Result<Self, TokenFileError> {
        let shown = path.display().to_string();
        let size = std::fs::metadata(path).map_err(|error| TokenFileError::Read { path: shown.clone(), error })?.len();
        if size > TOKEN_FILE_MAX_BYTES {
            return Err(TokenFileError::TooLarge { path: shown, size });
        }
        let text = std::fs::read_to_string(path).map_err(|error| TokenFileError::Read { path: shown.clone(), error })?;
        Self::parse_token_file(&text).map_err(|(line, message)| TokenFileError::Line { path: shown, line, message })
    }

    /// The token file's grammar, apart from the file: (line number, what is wrong).
    pub fn parse_token_file(text: &str) -> Result<Self, (usize, String)> {
        let mut tokens = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.splitn(4, ',');
            let token = fields.next().unwrap_or("").trim();
            let user = fields.next().unwrap_or("").trim();
            let _uid = fields.next().ok_or((i + 1, "expected at least three fields".to_string()))?;
            if token.is_empty() || user.is_empty() {
                return Err((i + 1, "the token and the user name must not be empty".into()));
            }
            let mut groups: Vec<String> = match fields.next().map(str::trim) {
                None | Some("") => vec![],
                Some(g) => {
                    let g = g.strip_prefix('"').and_then(|g| g.strip_suffix('"')).unwrap_or(g);
                    g.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect()
                }
            };
            groups.push(AUTHENTICATED_GROUP.into());
            if tokens.insert(digest(token), User { name: user.into(), groups }).is_some() {
                return Err((i + 1, "this token appears on an earlier line too".into()));
            }
        }
        Ok(Authenticator { tokens })
    }

    /// Who presented this bearer token, if anyone.
    pub fn token_user(&self, token: &str) -> Option<&User> {
        self.tokens.get(&digest(token))
    }
}

pub use flotilla_actors::model::rbac::Attributes;
use flotilla_actors::model::rbac::RbacSnapshot;

/// Reads the attributes off a request the way the Kubernetes API server
/// does: GET of a collection is `list`, or `watch` with `watch=true`;
/// DELETE of a collection is `deletecollection`.
pub fn attributes(method: &Method, path: &str, query: &str) -> Attributes {
    let watching = || {
        serde_urlencoded::from_str::<Vec<(String, String)>>(query)
            .unwrap_or_default()
            .iter()
            .any(|(k, v)| k == "watch" && (v == "true" || v == "1"))
    };
    match super::parse_path(path) {
        Some(p) if p.plural.is_some() => {
            let named = p.name.is_some();
            let verb = match (method.as_str(), named) {
                ("GET" | "HEAD", _) if watching() => "watch",
                ("GET" | "HEAD", true) => "get",
                ("GET" | "HEAD", false) => "list",
                ("POST", _) => "create",
                ("PUT", _) => "update",
                ("PATCH", _) => "patch",
                ("DELETE", true) => "delete",
                ("DELETE", false) => "deletecollection",
                _ => "unknown",
            };
            Attributes::Resource {
                verb,
                group: p.group,
                resource: p.plural.unwrap_or_default(),
                subresource: p.subresource,
                namespace: p.namespace,
                name: p.name,
            }
        }
        _ => {
            let verb = match method.as_str() {
                "GET" | "HEAD" => "get",
                "POST" => "post",
                "PUT" => "put",
                "PATCH" => "patch",
                "DELETE" => "delete",
                _ => "unknown",
            };
            Attributes::NonResource { verb, path: path.to_string() }
        }
    }
}

/// Paths anyone may read without a credential (load balancers and probes
/// have none).
pub fn is_public(method: &Method, path: &str) -> bool {
    (method == Method::GET || method == Method::HEAD) && matches!(path, "/healthz" | "/readyz" | "/livez" | "/version")
}

/// Allowed, or the 403 message: `system:masters` always, everyone else as
/// RBAC says (nothing until the RBAC objects have been read once).
pub fn authorize(user: &User, attrs: &Attributes, rbac: Option<&RbacSnapshot>) -> Result<(), String> {
    if user.in_group(MASTERS_GROUP) {
        return Ok(());
    }
    match rbac {
        Some(snapshot) => flotilla_actors::model::rbac::authorize(snapshot, &user.name, &user.groups, attrs),
        None => Err(format!(
            "{}: the API server has not read the RBAC roles yet; try again in a moment",
            flotilla_actors::model::rbac::denial(&user.name, attrs)
        )),
    }
}

fn unauthorized(message: impl Into<String>) -> Response {
    ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", message).into_response()
}

/// Who a request asks to act as (`Impersonate-User`, `Impersonate-Group`,
/// what `kubectl --as` and `--as-group` send); None when it asks nothing.
pub struct Impersonation {
    pub user: String,
    pub groups: Vec<String>,
}

/// Reads the impersonation headers; groups without a user are refused, as
/// in Kubernetes. `Impersonate-Extra-*` and `-Uid` are not supported.
pub fn impersonation(headers: &axum::http::HeaderMap) -> Result<Option<Impersonation>, String> {
    let text = |v: &axum::http::HeaderValue| v.to_str().map(str::to_string).map_err(|_| "impersonation headers must be text".to_string());
    let user = headers.get("impersonate-user").map(text).transpose()?;
    let groups = headers.get_all("impersonate-group").iter().map(text).collect::<Result<Vec<_>, _>>()?;
    if headers.keys().any(|k| k.as_str().starts_with("impersonate-extra-") || k.as_str() == "impersonate-uid") {
        return Err("Impersonate-Extra-* and Impersonate-Uid are not supported; impersonate a user and groups only".into());
    }
    match user {
        None if groups.is_empty() => Ok(None),
        None => Err("Impersonate-Group needs Impersonate-User".into()),
        Some(u) if u.is_empty() => Err("Impersonate-User is empty".into()),
        Some(user) => Ok(Some(Impersonation { user, groups })),
    }
}

/// The user `caller` acts as, if RBAC lets it impersonate that user (or
/// ServiceAccount) and each group, as Kubernetes checks: verb
/// `impersonate` on `users`, `serviceaccounts` or `groups`.
pub fn impersonate(caller: &User, wanted: Impersonation, rbac: Option<&RbacSnapshot>) -> Result<User, String> {
    let as_account = wanted.user.strip_prefix("system:serviceaccount:").and_then(|rest| rest.split_once(':'));
    let target = match as_account {
        Some((ns, name)) => Attributes::Resource {
            verb: "impersonate",
            group: String::new(),
            resource: "serviceaccounts".into(),
            subresource: None,
            namespace: Some(ns.into()),
            name: Some(name.into()),
        },
        None => Attributes::Resource {
            verb: "impersonate",
            group: String::new(),
            resource: "users".into(),
            subresource: None,
            namespace: None,
            name: Some(wanted.user.clone()),
        },
    };
    authorize(caller, &target, rbac)?;
    for group in &wanted.groups {
        let attrs = Attributes::Resource {
            verb: "impersonate",
            group: String::new(),
            resource: "groups".into(),
            subresource: None,
            namespace: None,
            name: Some(group.clone()),
        };
        authorize(caller, &attrs, rbac)?;
    }
    let mut groups = wanted.groups;
    if let Some((ns, _)) = as_account {
        // A ServiceAccount's own groups come with it, as when it logs in.
        groups.extend(["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{ns}")]);
    }
    if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
        groups.push(AUTHENTICATED_GROUP.into());
    }
    tracing::info!(user = %caller.name, as_user = %wanted.user, "impersonating");
    Ok(User { name: wanted.user, groups })
}

/// The middleware in front of every route: authenticates, authorizes, and
/// hands the `User` on to handlers as a request extension.
pub async fn guard(State(state): State<Arc<ApiState>>, mut request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    if is_public(&method, &path) {
        return next.run(request).await;
    }
    let bearer = match request.headers().get(axum::http::header::AUTHORIZATION) {
        None => None,
        Some(value) => match value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer "))) {
            Some(token) if !token.trim().is_empty() => Some(token.trim().to_string()),
            _ => return unauthorized("Unauthorized: the Authorization header must be \"Bearer TOKEN\""),
        },
    };
    let cert = request.extensions().get::<ClientCertificate>().cloned().unwrap_or_default();
    // A token, when sent, decides; as in Kubernetes a bad token is refused
    // even over a good certificate.
    let user = match (bearer, cert) {
        (Some(token), _) => match state.authn.token_user(&token) {
            Some(u) => u.clone(),
            None if super::token_request::looks_like_jwt(&token) => match super::token_request::authenticate(&state.registry, &token).await
            {
                Ok(u) => u,
                Err(why) => return unauthorized(format!("Unauthorized: the ServiceAccount token is refused: {why}")),
            },
            None => return unauthorized("Unauthorized: the bearer token is not known to this cluster (expired, revoked or mistyped)"),
        },
        (None, ClientCertificate::Verified { user, serial }) => match super::certificate_revocation::is_revoked(&state.registry, &serial) {
            Ok(false) => user,
            Ok(true) => {
                tracing::info!(user = %user.name, %serial, "revoked client certificate refused");
                return unauthorized(format!(
                    "Unauthorized: the client certificate (serial {serial}) was revoked; ask an administrator for a new one (flotilla kubeconfig --user)"
                ));
            }
            Err(why) => return ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", why).into_response(),
        },
        (None, ClientCertificate::Rejected(why)) => {
            return unauthorized(format!("Unauthorized: the client certificate was refused: {why}"))
        }
        (None, ClientCertificate::None) => {
            return unauthorized(
                "Unauthorized: this API needs a credential; use the admin kubeconfig (DATA_DIR/admin.kubeconfig) or a bearer token",
            )
        }
    };
    let user = match impersonation(request.headers()) {
        Ok(None) => user,
        Ok(Some(wanted)) => match impersonate(&user, wanted, state.rbac.snapshot().as_deref()) {
            Ok(as_user) => as_user,
            Err(message) => {
                tracing::info!(user = %user.name, "impersonation refused");
                return ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message).into_response();
            }
        },
        Err(message) => return ApiError::bad_request(message).into_response(),
    };
    let attrs = attributes(&method, &path, request.uri().query().unwrap_or(""));
    if let Err(message) = authorize(&user, &attrs, state.rbac.snapshot().as_deref()) {
        tracing::info!(user = %user.name, ?attrs, "forbidden");
        return ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message).into_response();
    }
    request.extensions_mut().insert(user);
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impersonation_is_read_from_headers_and_checked_like_any_request() {
        let mut h = axum::http::HeaderMap::new();
        assert!(impersonation(&h).unwrap().is_none());
        h.insert("impersonate-group", "dev".parse().unwrap());
        assert!(impersonation(&h).is_err(), "a group alone is refused");
        h.insert("impersonate-user", "system:serviceaccount:team:robot".parse().unwrap());
        let wanted = impersonation(&h).unwrap().unwrap();
        let admin = user("root", &[MASTERS_GROUP]);
        let robot = impersonate(&admin, wanted, None).unwrap();
        assert_eq!(robot.name, "system:serviceaccount:team:robot");
        assert_eq!(
            robot.groups,
            ["dev", "system:serviceaccounts", "system:serviceaccounts:team", AUTHENTICATED_GROUP].map(String::from).to_vec()
        );
        // Nobody else may, without a role granting `impersonate`; and the
        // impersonated user does not keep the caller's groups.
        let alice = user("alice", &[AUTHENTICATED_GROUP]);
        let refused = impersonate(&alice, Impersonation { user: "root".into(), groups: vec![] }, Some(&RbacSnapshot::default()));
        assert!(refused.is_err());
        let plain = impersonate(&admin, Impersonation { user: "bob".into(), groups: vec![] }, None).unwrap();
        assert!(!plain.in_group(MASTERS_GROUP));
        h.insert("impersonate-uid", "1".parse().unwrap());
        assert!(impersonation(&h).is_err());
    }

    fn user(name: &str, groups: &[&str]) -> User {
        User { name: name.into(), groups: groups.iter().map(|g| g.to_string()).collect() }
    }

    #[test]
    fn token_file_parses_like_kubernetes_and_refuses_what_is_wrong() {
        let a =
            Authenticator::parse_token_file("# comment\n\nt1,alice,1,\"system:masters,dev\"\nt2,bob,2\nt3 , carol , 3 , ops\n").unwrap();
        assert_eq!(a.token_user("t1"), Some(&user("alice", &["system:masters", "dev", AUTHENTICATED_GROUP])));
        assert_eq!(a.token_user("t2"), Some(&user("bob", &[AUTHENTICATED_GROUP])));
        assert_eq!(a.token_user("t3"), Some(&user("carol", &["ops", AUTHENTICATED_GROUP])));
        assert_eq!(a.token_user("t4"), None);
        assert_eq!(Authenticator::parse_token_file("t1,alice").unwrap_err().0, 1);
        assert_eq!(Authenticator::parse_token_file("ok,a,1\n,alice,1").unwrap_err().0, 2);
        assert_eq!(Authenticator::parse_token_file("t,a,1\nt,b,2").unwrap_err().0, 2);
    }

    #[test]
    fn attributes_are_read_as_kubernetes_reads_them() {
        let get = |m: Method, p: &str, q: &str| match attributes(&m, p, q) {
            Attributes::Resource { verb, resource, subresource, namespace, name, .. } => {
                format!("{verb} {resource} {subresource:?} {namespace:?} {name:?}")
            }
            Attributes::NonResource { verb, path } => format!("{verb} {path}"),
        };
        assert_eq!(get(Method::GET, "/api/v1/namespaces/default/pods", ""), "list pods None Some(\"default\") None");
        assert_eq!(get(Method::GET, "/api/v1/namespaces/default/pods", "watch=true"), "watch pods None Some(\"default\") None");
        assert_eq!(
            get(Method::GET, "/api/v1/namespaces/default/pods/web/log", ""),
            "get pods Some(\"log\") Some(\"default\") Some(\"web\")"
        );
        assert_eq!(get(Method::DELETE, "/api/v1/namespaces/a/configmaps", ""), "deletecollection configmaps None Some(\"a\") None");
        assert_eq!(get(Method::DELETE, "/api/v1/nodes/n1", ""), "delete nodes None None Some(\"n1\")");
        assert_eq!(
            get(Method::PATCH, "/apis/apps/v1/namespaces/a/deployments/w/scale", ""),
            "patch deployments Some(\"scale\") Some(\"a\") Some(\"w\")"
        );
        assert_eq!(get(Method::GET, "/apis/apps/v1", ""), "get /apis/apps/v1");
        assert_eq!(get(Method::GET, "/healthz", ""), "get /healthz");
    }

    #[test]
    fn masters_need_no_role_and_others_get_what_rbac_grants() {
        let admin = user("admin", &[MASTERS_GROUP, AUTHENTICATED_GROUP]);
        let alice = user("alice", &[AUTHENTICATED_GROUP]);
        let builtin = flotilla_actors::model::rbac::builtin_snapshot();
        let list_pods = attributes(&Method::GET, "/api/v1/namespaces/default/pods", "");
        assert_eq!(authorize(&admin, &list_pods, None), Ok(()));
        let loading = authorize(&alice, &list_pods, None).unwrap_err();
        assert!(loading.contains("has not read the RBAC roles yet"), "{loading}");
        let denied = authorize(&alice, &list_pods, Some(&builtin)).unwrap_err();
        assert!(denied.contains("User \"alice\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""), "{denied}");
        assert_eq!(authorize(&alice, &attributes(&Method::GET, "/apis", ""), Some(&builtin)), Ok(()));
        assert_eq!(authorize(&alice, &attributes(&Method::GET, "/api/v1", ""), Some(&builtin)), Ok(()));
        assert!(authorize(&alice, &attributes(&Method::GET, "/apis/metrics.k8s.io/v1beta1/nodes", ""), Some(&builtin)).is_err());
        assert!(is_public(&Method::GET, "/healthz") && !is_public(&Method::POST, "/healthz") && !is_public(&Method::GET, "/api"));
    }
}
