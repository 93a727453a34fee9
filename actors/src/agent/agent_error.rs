//! What an agent's calls to its control plane can fail with, and which of
//! those it tries again.

use crate::registry::RegistryError;

/// Why a control-plane call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// The control plane did not answer or refused for now. Retryable.
    #[error("control plane unavailable: {0}")]
    Unavailable(String),
    /// The watch fell behind compaction; list again.
    #[error("pod watch expired: {0}")]
    Expired(String),
    /// The object is gone or was replaced (uid changed).
    #[error("{0}")]
    Gone(String),
    /// Refused for good.
    #[error("{0}")]
    Refused(String),
}

impl From<RegistryError> for AgentError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound { .. } => AgentError::Gone(e.to_string()),
            RegistryError::Expired { .. } => AgentError::Expired(e.to_string()),
            // An indeterminate write is safe to send again: the agent's
            // writes replace whole statuses or are guarded by uid.
            RegistryError::Store(ref s) if s.is_retryable() || matches!(s, flotilla_raft::StoreError::Indeterminate(_)) => {
                AgentError::Unavailable(e.to_string())
            }
            RegistryError::Conflict { .. } => AgentError::Unavailable(e.to_string()),
            other => AgentError::Refused(other.to_string()),
        }
    }
}
