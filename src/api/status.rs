//! Errors as Kubernetes `Status` objects with the matching HTTP code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use flotilla_actors::model::admission::AdmissionError;
use flotilla_actors::RegistryError;
use flotilla_raft::StoreError;
use serde_json::{json, Value};

/// An API error, rendered as a `Status`.
#[derive(Debug)]
pub struct ApiError {
    pub code: StatusCode,
    pub reason: &'static str,
    pub message: String,
    pub details: Value,
}

impl ApiError {
    pub fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: json!({}) }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", message)
    }
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", message)
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", format!("the request body is over the limit of {limit} bytes"))
    }

    pub fn to_status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason,
            "details": self.details, "code": self.code.as_u16(),
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.code, [(axum::http::header::CONTENT_TYPE, "application/json")], self.to_status().to_string()).into_response()
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        let message = e.to_string();
        match e {
            RegistryError::NotFound { kind, name } => {
                ApiError { details: json!({"name": name, "kind": kind}), ..ApiError::not_found(message) }
            }
            RegistryError::AlreadyExists { kind, name } => {
                ApiError { details: json!({"name": name, "kind": kind}), ..ApiError::new(StatusCode::CONFLICT, "AlreadyExists", message) }
            }
            RegistryError::Conflict { kind, name, .. } => {
                ApiError { details: json!({"name": name, "kind": kind}), ..ApiError::new(StatusCode::CONFLICT, "Conflict", message) }
            }
            RegistryError::Admission(AdmissionError::BadRequest(m)) => ApiError::bad_request(m),
            RegistryError::Admission(AdmissionError::Invalid { kind, name, errors }) => {
                let causes: Vec<Value> =
                    errors.iter().map(|e| json!({"reason": "FieldValueInvalid", "message": e.message, "field": e.field})).collect();
                ApiError {
                    details: json!({"name": name, "kind": kind, "causes": causes}),
                    ..ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", message)
                }
            }
            RegistryError::BadRequest(m) => ApiError::bad_request(m),
            RegistryError::NamespaceNotFound(ns) => {
                ApiError { details: json!({"name": ns, "kind": "namespaces"}), ..ApiError::not_found(message) }
            }
            RegistryError::NamespaceTerminating(_) => ApiError::new(StatusCode::FORBIDDEN, "Forbidden", message),
            RegistryError::Expired { .. } => ApiError::new(StatusCode::GONE, "Expired", message),
            RegistryError::Store(s) => store_error(s),
            RegistryError::Internal(m) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", m),
        }
    }
}

pub fn store_error(e: StoreError) -> ApiError {
    let message = e.to_string();
    match e {
        StoreError::NoLeader(_) | StoreError::Timeout { .. } | StoreError::Unreachable { .. } | StoreError::Stale { .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", message)
        }
        // Kubernetes' "Timeout" (504): the request may still take effect.
        // Never a 409 or a 5xx that reads as "not applied".
        StoreError::Indeterminate(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "Timeout", message),
        StoreError::ValueTooLarge { .. } => ApiError::too_large(0).with_message(message),
        StoreError::Invalid(_) => ApiError::bad_request(message),
        StoreError::Compacted { .. } => ApiError::new(StatusCode::GONE, "Expired", message),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message),
    }
}

impl ApiError {
    fn with_message(mut self, message: String) -> Self {
        self.message = message;
        self
    }
}
