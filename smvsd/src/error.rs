//! Errors of the host, as local clients and peer hosts see them.
//!
//! Local API errors start with a stable code (listed in `schema/local.capnp`); host-link errors
//! start with `refused:` when the sending host must not retry that envelope.

use thiserror::Error;

/// A failed local request. The code is what scripts branch on.
#[derive(Debug, Error)]
#[error("{code}: {message}")]
pub struct HostError {
    pub code: &'static str,
    pub message: String,
}

impl HostError {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        HostError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        HostError::new("bad-request", message)
    }

    pub fn internal(what: impl std::fmt::Display) -> Self {
        tracing::error!(error = %what, "internal error");
        HostError::new("internal", "internal error; see the daemon's log")
    }
}

impl From<crate::storage::StorageError> for HostError {
    fn from(e: crate::storage::StorageError) -> Self {
        HostError::internal(e)
    }
}

impl From<smvs_keyguard::client::KeyguardError> for HostError {
    fn from(e: smvs_keyguard::client::KeyguardError) -> Self {
        HostError::new("keyguard", e.to_string())
    }
}

impl From<smvs_directory::ClientError> for HostError {
    fn from(e: smvs_directory::ClientError) -> Self {
        match e.code() {
            Some(smvs_directory::ErrorCode::NotFound) => {
                HostError::new("unknown-user", e.to_string())
            }
            _ => HostError::new("directory", e.to_string()),
        }
    }
}

impl From<HostError> for capnp::Error {
    fn from(e: HostError) -> Self {
        capnp::Error::failed(e.to_string())
    }
}

/// Why an incoming envelope was not accepted.
#[derive(Debug, Error)]
pub enum IncomingError {
    /// Never retry this envelope: it will never be accepted.
    #[error("refused: {0}")]
    Refused(String),
    /// Try again later (directory unreachable, key change not yet accepted, …).
    #[error("later: {0}")]
    Later(String),
}

impl From<IncomingError> for capnp::Error {
    fn from(e: IncomingError) -> Self {
        capnp::Error::failed(e.to_string())
    }
}

impl From<crate::storage::StorageError> for IncomingError {
    fn from(e: crate::storage::StorageError) -> Self {
        tracing::error!(error = %e, "storage failed while accepting an envelope");
        IncomingError::Later("storage failure".into())
    }
}
