//! `authorization.k8s.io/v1`: SelfSubjectAccessReview (what `kubectl auth
//! can-i` asks) and SubjectAccessReview (an administrator asking for
//! someone else). Nothing is stored: the answer is the authorizer's.

use axum::body::Bytes;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::auth::{authorize, Attributes, User, AUTHENTICATED_GROUP};
use super::status::ApiError;
use super::{ApiState, ResourcePath};

pub const GROUP: &str = "authorization.k8s.io";
pub const VERSION: &str = "v1";

/// The discovery document of the group.
pub fn resource_list() -> Value {
    let entry = |name: &str, kind: &str| json!({"name": name, "singularName": "", "namespaced": false, "kind": kind, "verbs": ["create"]});
    json!({
        "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": format!("{GROUP}/{VERSION}"),
        "resources": [entry("selfsubjectaccessreviews", "SelfSubjectAccessReview"), entry("subjectaccessreviews", "SubjectAccessReview")],
    })
}

/// Verbs as the static strings `Attributes` carries; an unknown one can
/// match only a `*` rule, as in Kubernetes.
fn verb(text: &str) -> &'static str {
    flotilla_actors::model::rbac::VERBS.iter().find(|v| **v == text).copied().unwrap_or("unknown")
}

/// The request attributes a review's spec asks about.
pub fn attributes_of(spec: &Value) -> Result<Attributes, String> {
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).filter(|s| !s.is_empty()).map(String::from);
    if let Some(r) = spec.get("resourceAttributes") {
        return Ok(Attributes::Resource {
            verb: verb(&text(r, "verb").ok_or("spec.resourceAttributes.verb is required")?),
            group: text(r, "group").unwrap_or_default(),
            resource: text(r, "resource").ok_or("spec.resourceAttributes.resource is required")?,
            subresource: text(r, "subresource"),
            namespace: text(r, "namespace"),
            name: text(r, "name"),
        });
    }
    if let Some(n) = spec.get("nonResourceAttributes") {
        return Ok(Attributes::NonResource {
            verb: verb(&text(n, "verb").ok_or("spec.nonResourceAttributes.verb is required")?),
            path: text(n, "path").ok_or("spec.nonResourceAttributes.path is required")?,
        });
    }
    Err("spec must have resourceAttributes or nonResourceAttributes".into())
}

pub async fn handle(
    state: &ApiState,
    method: Method,
    path: ResourcePath,
    headers: &axum::http::HeaderMap,
    caller: Option<User>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(plural) = path.plural.as_deref() else {
        return Ok(axum::Json(resource_list()).into_response());
    };
    let kind = match plural {
        "selfsubjectaccessreviews" => "SelfSubjectAccessReview",
        "subjectaccessreviews" => "SubjectAccessReview",
        other => return Err(ApiError::not_found(format!("the server does not serve resource {other:?} in {GROUP}/{VERSION}"))),
    };
    if method != Method::POST || path.name.is_some() || path.namespace.is_some() {
        return Err(ApiError::method_not_allowed(format!("{kind} is only created (POST /apis/{GROUP}/{VERSION}/{plural})")));
    }
    // kubectl 1.32 and later send reviews as protobuf.
    let mut review: Value = if super::objects::content_type(headers) == super::protobuf::PROTOBUF {
        super::protobuf::access_review(&body).map_err(|e| ApiError::bad_request(format!("the protobuf body cannot be read: {e}")))?
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?
    };
    let spec = review.get("spec").cloned().unwrap_or(Value::Null);
    let attrs = attributes_of(&spec).map_err(ApiError::bad_request)?;
    let subject = if kind == "SelfSubjectAccessReview" {
        caller.ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized"))?
    } else {
        let name = spec.get("user").and_then(Value::as_str).unwrap_or("").to_string();
        let mut groups: Vec<String> =
            spec.get("groups").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(String::from).collect();
        if name.is_empty() && groups.is_empty() {
            return Err(ApiError::bad_request("spec.user or spec.groups is required"));
        }
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.into());
        }
        User { name, groups }
    };
    let decision = authorize(&subject, &attrs, state.rbac.snapshot().as_deref());
    review["apiVersion"] = json!(format!("{GROUP}/{VERSION}"));
    review["kind"] = json!(kind);
    review["status"] = match decision {
        Ok(()) => json!({"allowed": true, "reason": "allowed by RBAC"}),
        Err(reason) => json!({"allowed": false, "reason": reason}),
    };
    Ok((StatusCode::CREATED, axum::Json(review)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn review_specs_read_as_request_attributes() {
        let spec = json!({"resourceAttributes": {"namespace": "dev", "verb": "list", "resource": "pods"}});
        assert_eq!(
            attributes_of(&spec).unwrap(),
            Attributes::Resource {
                verb: "list",
                group: "".into(),
                resource: "pods".into(),
                subresource: None,
                namespace: Some("dev".into()),
                name: None
            }
        );
        let spec = json!({"nonResourceAttributes": {"path": "/healthz", "verb": "get"}});
        assert_eq!(attributes_of(&spec).unwrap(), Attributes::NonResource { verb: "get", path: "/healthz".into() });
        assert!(attributes_of(&json!({})).unwrap_err().contains("resourceAttributes"));
        assert!(attributes_of(&json!({"resourceAttributes": {"verb": "get"}})).unwrap_err().contains("resource is required"));
        let odd = attributes_of(&json!({"resourceAttributes": {"verb": "frobnicate", "resource": "pods"}})).unwrap();
        assert!(matches!(odd, Attributes::Resource { verb: "unknown", .. }));
    }
}
