//! What can go wrong in `smvsctl`, and how smvsd's refusals are read back.
//!
//! smvsd refuses a request with a Cap'n Proto exception whose text starts with a stable code
//! ([`ErrorCode`], shared with smvsd and the D-Bus error names). By the time it reaches us, capnp-rpc has wrapped it:
//! `remote exception: key-changed: bob's identity key changed; …`. [`CtlError::from`] strips the
//! wrapping and the code, keeps the code as data, and leaves the human part for the user.

use std::path::PathBuf;

use thiserror::Error;

pub use smvs_schema::ErrorCode;

/// Everything `smvsctl` reports. Each message is one line, ready to follow `smvsctl: `.
#[derive(Debug, Error)]
pub enum CtlError {
    /// The socket is missing, refused us, or is not ours to open.
    #[error("cannot reach smvsd at {}: {source}; smvsd must be running (another socket: --socket PATH or $SMVS_SOCKET)", path.display())]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    /// smvsd understood the request and refused it. `code` is `None` when the refusal carried no
    /// code we know (a newer smvsd).
    #[error("{message}")]
    Refused {
        code: Option<ErrorCode>,
        message: String,
    },
    /// The connection ended before the answer arrived.
    #[error("lost the connection to smvsd: {0}")]
    Disconnected(String),
    /// smvsd does not know the method: it is older than this smvsctl.
    #[error("this smvsd does not support the request (is it older than smvsctl?): {0}")]
    Unsupported(String),
    /// An answer we could not read, or a local Cap'n Proto failure.
    #[error("unexpected answer from smvsd: {0}")]
    Protocol(String),
    /// Reading the message body or writing the output failed.
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    /// Something the user asked for that cannot be done, found before asking smvsd.
    #[error("{0}")]
    Local(String),
}

impl CtlError {
    /// The process exit status for this error: every failure of an operation is 1 (bad usage, 2,
    /// is caught by the argument parser before anything runs).
    pub fn exit_code(&self) -> u8 {
        1
    }

    /// The code smvsd refused the request with, if any.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            CtlError::Refused { code, .. } => *code,
            _ => None,
        }
    }

    /// True when stdout was closed under us (`smvsctl history bob | head`): the reader has what
    /// it wanted, so the process ends quietly.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CtlError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }

    pub(crate) fn output(source: std::io::Error) -> Self {
        CtlError::Io {
            what: "cannot write the output",
            source,
        }
    }
}

/// The wrapping capnp-rpc puts around an exception that came over the connection.
const REMOTE_PREFIX: &str = "remote exception: ";

/// Splits `text` (an exception's text, wrapping already removed) into its stable code and the
/// human part. The code must open the text; a code word later in a sentence is not a code.
pub fn split_code(text: &str) -> (Option<ErrorCode>, &str) {
    ErrorCode::split(text)
}

/// Removes every layer of capnp-rpc's `remote exception: ` wrapping (an exception relayed by a
/// proxy is wrapped once per hop). Returns the rest and whether any layer was there.
fn strip_remote(mut text: &str) -> (&str, bool) {
    let mut remote = false;
    while let Some(rest) = text.strip_prefix(REMOTE_PREFIX) {
        text = rest;
        remote = true;
    }
    (text, remote)
}

impl From<capnp::Error> for CtlError {
    fn from(e: capnp::Error) -> Self {
        let (text, remote) = strip_remote(&e.extra);
        let (code, human) = split_code(text);
        if code.is_some() {
            return CtlError::Refused {
                code,
                message: human.to_string(),
            };
        }
        match e.kind {
            capnp::ErrorKind::Disconnected => CtlError::Disconnected(describe(text)),
            capnp::ErrorKind::Unimplemented => CtlError::Unsupported(describe(text)),
            _ if remote => CtlError::Refused {
                code: None,
                message: describe(text),
            },
            _ => CtlError::Protocol(e.to_string()),
        }
    }
}

fn describe(text: &str) -> String {
    if text.is_empty() {
        "no reason given".to_string()
    } else {
        text.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(kind: capnp::ErrorKind, reason: &str) -> capnp::Error {
        capnp::Error {
            kind,
            extra: format!("{REMOTE_PREFIX}{reason}"),
        }
    }

    #[test]
    fn strips_the_wrapping_and_the_code() {
        let e = CtlError::from(remote(
            capnp::ErrorKind::Failed,
            "key-changed: bob's identity key changed; run `smvsctl verify bob`",
        ));
        assert_eq!(e.code(), Some(ErrorCode::KeyChanged));
        assert_eq!(
            e.to_string(),
            "bob's identity key changed; run `smvsctl verify bob`"
        );
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn every_code_is_recognised() {
        for &code in ErrorCode::ALL {
            let e = CtlError::from(remote(
                capnp::ErrorKind::Failed,
                &format!("{}: what happened", code.as_str()),
            ));
            assert_eq!(e.code(), Some(code));
            assert_eq!(e.to_string(), "what happened");
        }
    }

    #[test]
    fn nested_wrapping_is_stripped() {
        let e = CtlError::from(remote(
            capnp::ErrorKind::Failed,
            "remote exception: not-found: no message with that id",
        ));
        assert_eq!(e.code(), Some(ErrorCode::NotFound));
        assert_eq!(e.to_string(), "no message with that id");
    }

    #[test]
    fn a_code_word_inside_the_sentence_is_not_a_code() {
        let (code, human) = split_code("cannot talk to the directory: timed out");
        assert_eq!(code, None);
        assert_eq!(human, "cannot talk to the directory: timed out");
        // "blocked" followed by something other than ':' is a sentence, not a code.
        assert_eq!(split_code("blocked users cannot write").0, None);
    }

    #[test]
    fn a_refusal_without_a_known_code_keeps_its_text() {
        let e = CtlError::from(remote(capnp::ErrorKind::Failed, "rate-limited: slow down"));
        assert_eq!(e.code(), None);
        assert_eq!(e.to_string(), "rate-limited: slow down");
    }

    #[test]
    fn disconnects_and_unimplemented_methods_say_so() {
        let e = CtlError::from(capnp::Error::disconnected("Peer disconnected.".into()));
        assert!(matches!(e, CtlError::Disconnected(_)));
        assert_eq!(
            e.to_string(),
            "lost the connection to smvsd: Peer disconnected."
        );
        let e = CtlError::from(remote(
            capnp::ErrorKind::Unimplemented,
            "Method not implemented.",
        ));
        assert!(matches!(e, CtlError::Unsupported(_)));
    }

    #[test]
    fn local_failures_are_protocol_errors() {
        let e = CtlError::from(capnp::Error::failed("message too deeply nested".into()));
        assert!(matches!(e, CtlError::Protocol(_)));
        assert!(e.to_string().starts_with("unexpected answer from smvsd: "));
    }

    #[test]
    fn connect_errors_name_the_socket_and_smvsd() {
        let e = CtlError::Connect {
            path: "/run/smvs/smvsd.sock".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        let text = e.to_string();
        assert!(text.starts_with("cannot reach smvsd at /run/smvs/smvsd.sock: "));
        assert!(text.contains("smvsd must be running"));
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn broken_pipe_is_recognised() {
        let e = CtlError::output(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(e.is_broken_pipe());
        let e = CtlError::output(std::io::Error::from(std::io::ErrorKind::Other));
        assert!(!e.is_broken_pipe());
    }
}
