//! `/flotilla/v1/secrets-encryption`: the state of the keys that seal
//! Secrets at rest, and their rotation (what `k3s secrets-encrypt` does).
//! Non-resource paths, so only roles granting them (cluster-admin) open
//! them.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::status::ApiError;
use super::ApiState;

/// Where the status is read.
pub const STATUS_PATH: &str = "/flotilla/v1/secrets-encryption";
/// Where a rotation is asked for (POST).
pub const ROTATE_PATH: &str = "/flotilla/v1/secrets-encryption/rotate";

/// The data keys, each with its state and how many values it seals.
pub async fn status(State(state): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let keys = state.registry.secrets_key_status().await?;
    let keys: Vec<Value> = keys.into_iter().map(|(name, state, values)| json!({"name": name, "state": state, "values": values})).collect();
    Ok(Json(json!({"kind": "SecretsEncryptionStatus", "keys": keys})))
}

/// A new data key, every Secret sealed again under it, the old keys gone.
pub async fn rotate(State(state): State<Arc<ApiState>>) -> Result<Json<Value>, ApiError> {
    let span = tracing::info_span!("secrets_key_rotation");
    let _enter = span.enter();
    let done = state.registry.rotate_secrets_key().await?;
    tracing::info!(key = %done.key, resealed = done.resealed, retired = done.retired, "Secrets' data key rotated");
    Ok(Json(json!({"kind": "SecretsKeyRotation", "key": done.key, "resealed": done.resealed, "retired": done.retired})))
}
