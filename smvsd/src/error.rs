//! Errors of the host, as local clients and peer hosts see them.
//!
//! [`HostError`] is what a device hears: an [`ErrorCode`] (shared with smvsctl and the D-Bus
//! error names, so they cannot drift) and a sentence for a person. On the Unix socket it
//! travels as an exception whose text starts with the code; on D-Bus as the error named after
//! it. [`IncomingError`] is what a peer host hears about an envelope: refused (never retry) or
//! later, which `host.capnp` carries as typed fields.

use smvs_schema::ErrorCode;
use thiserror::Error;

/// How a host's "later" begins when the envelope's v2 session is not the one it has (or does
/// not open in it): the sender makes a new session and sends again (`host.capnp`).
pub const SESSION_RESET: &str = "session-reset";

/// A failed local request. The code is what scripts branch on.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{code}: {message}")]
pub struct HostError {
    pub code: ErrorCode,
    pub message: String,
}

impl HostError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        HostError {
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        HostError::new(ErrorCode::BadRequest, message)
    }

    /// Something that should not happen: the details go to the log, the device hears only that
    /// it happened.
    pub fn internal(what: impl std::fmt::Display) -> Self {
        tracing::error!(error = %what, "internal error");
        HostError::new(ErrorCode::Internal, "internal error; see the daemon's log")
    }

    pub fn shutting_down() -> Self {
        HostError::new(ErrorCode::Internal, "the host is shutting down")
    }
}

impl From<smvs_keyguard::client::KeyguardError> for HostError {
    fn from(e: smvs_keyguard::client::KeyguardError) -> Self {
        HostError::new(ErrorCode::Keyguard, e.to_string())
    }
}

impl From<smvs_directory::ClientError> for HostError {
    fn from(e: smvs_directory::ClientError) -> Self {
        match e.code() {
            Some(smvs_directory::ErrorCode::NotFound) => {
                HostError::new(ErrorCode::UnknownUser, e.to_string())
            }
            Some(smvs_directory::ErrorCode::AddressRefused) => {
                HostError::new(ErrorCode::AddressRefused, e.to_string())
            }
            _ => HostError::new(ErrorCode::Directory, e.to_string()),
        }
    }
}

impl From<HostError> for capnp::Error {
    fn from(e: HostError) -> Self {
        capnp::Error::failed(e.to_string())
    }
}

/// Why an incoming envelope was not accepted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IncomingError {
    /// Never retry this envelope: it will never be accepted.
    #[error("refused: {0}")]
    Refused(String),
    /// Try again later (directory unreachable, key change not yet accepted, …).
    #[error("later: {0}")]
    Later(String),
}
