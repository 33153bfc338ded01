//! What every worker of one directory process shares, built once by `server::bind` and handed to
//! each connection's RPC objects as an `Arc`.
//!
//! It sits below both `rpc` (which reads it to answer requests) and `server` (which builds it
//! and runs the workers), so neither has to name the other to reach it. Everything here is
//! `Send + Sync`: workers are threads, each with its own single-threaded runtime.

use std::sync::Arc;
use std::time::Duration;

use smvs_crypto::{AgreementKeyPair, SigningKeyPair};
use smvs_schema::{AddressKind, HostAddress};
use tokio::sync::Semaphore;

use crate::error::{ErrorCode, Refusal};
use crate::limits::Limits;
use crate::store::Store;

pub(crate) struct Shared {
    pub store: Store,
    /// Signs every record the directory answers with.
    pub key: SigningKeyPair,
    /// The X25519 form of `key`, for the Noise handshake: one pinned key covers both.
    pub noise_key: AgreementKeyPair,
    pub limits: Limits,
    /// One permit per open connection; a connection that finds none is closed at once.
    pub connections: Arc<Semaphore>,
    pub handshake_timeout: Duration,
    /// `--allow-private-host-addresses`: see [`Shared::check_host_address`].
    pub allow_private_host_addresses: bool,
}

impl Shared {
    /// Refuses a host address of a local kind (loopback, link-local, private, shared, or one
    /// nothing can be sent to) unless the directory serves a LAN or a test
    /// (`--allow-private-host-addresses`). Other users' hosts connect to what the directory
    /// publishes, so such an address would point them at services on their own machine or
    /// network. A name is taken as it is: hosts check what it resolves to when they connect.
    pub fn check_host_address(&self, host: &HostAddress) -> Result<(), Refusal> {
        match host.kind() {
            Some(kind) if kind != AddressKind::Public && !self.allow_private_host_addresses => {
                Err(Refusal::new(
                    ErrorCode::AddressRefused,
                    format!(
                        "host address {host} is {}; this directory publishes only public host addresses (a directory for a LAN or a test is started with --allow-private-host-addresses)",
                        kind.describe()
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}
