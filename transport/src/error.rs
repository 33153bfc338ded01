use std::net::{IpAddr, SocketAddr};

use thiserror::Error;

/// What can go wrong on a link. Each variant names the peer and what was being done.
#[derive(Debug, Error)]
pub enum TransportError {
    #[error("{action} {peer}: {source}")]
    Io {
        peer: String,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("handshake with {peer} failed: {reason}")]
    Handshake { peer: SocketAddr, reason: String },
    #[error("handshake with {peer} did not finish within {secs} s")]
    HandshakeTimeout { peer: SocketAddr, secs: u64 },
    #[error("{peer} presented key {presented}, not the pinned key {expected}")]
    KeyMismatch {
        peer: SocketAddr,
        presented: String,
        expected: String,
    },
    #[error("{peer} resolves to {address}, {kind}, which this host does not connect to from where it is")]
    AddressRefused {
        peer: String,
        address: IpAddr,
        /// What kind of address it is, in words (`smvs_schema::AddressKind::describe`).
        kind: &'static str,
    },
}
