//! Errors of the directory, as the server raises them and as a client reads them back.
//!
//! On the wire an error is a Cap'n Proto exception whose text starts with a stable code
//! (`"taken: username is already registered"`), so clients of any language can branch on it.

use thiserror::Error;

/// The stable codes, as listed in `schema/directory.capnp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidUsername,
    Taken,
    NotFound,
    AuthFailed,
    RateLimited,
    BadSignature,
    BadRequest,
    Stale,
    /// The host address is of a local kind (loopback, private, …) and this directory takes
    /// only public ones (`--allow-private-host-addresses` lifts that, for a LAN or a test).
    AddressRefused,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::InvalidUsername,
        ErrorCode::Taken,
        ErrorCode::NotFound,
        ErrorCode::AuthFailed,
        ErrorCode::RateLimited,
        ErrorCode::BadSignature,
        ErrorCode::BadRequest,
        ErrorCode::Stale,
        ErrorCode::AddressRefused,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidUsername => "invalid-username",
            ErrorCode::Taken => "taken",
            ErrorCode::NotFound => "not-found",
            ErrorCode::AuthFailed => "auth-failed",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::BadSignature => "bad-signature",
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::Stale => "stale",
            ErrorCode::AddressRefused => "address-refused",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error the directory answers a request with.
#[derive(Debug, Error)]
#[error("{}: {message}", code.as_str())]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }

    pub fn internal(what: impl std::fmt::Display) -> Self {
        // The detail goes to the operator's log, not to the client.
        tracing::error!(error = %what, "internal error answering a request");
        Refusal::new(ErrorCode::Internal, "internal error")
    }
}

impl From<Refusal> for capnp::Error {
    fn from(r: Refusal) -> Self {
        capnp::Error::failed(r.to_string())
    }
}

/// What a directory client can run into.
#[derive(Debug, Error)]
pub enum ClientError {
    #[error("directory refused the request: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("directory link: {0}")]
    Transport(#[from] smvs_transport::TransportError),
    #[error("directory protocol: {0}")]
    Rpc(String),
    #[error("directory answer failed verification: {0}")]
    Verification(String),
    #[error("{0}")]
    Local(String),
}

impl ClientError {
    /// The server's code, when the directory refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<capnp::Error> for ClientError {
    fn from(e: capnp::Error) -> Self {
        let text = e.extra.clone();
        for code in ErrorCode::ALL {
            let prefix = format!("{}: ", code.as_str());
            if let Some(at) = text.find(&prefix) {
                return ClientError::Refused {
                    code,
                    message: text[at..].to_string(),
                };
            }
        }
        ClientError::Rpc(e.to_string())
    }
}
