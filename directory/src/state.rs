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

use smvs_schema::Username;

use crate::error::{ErrorCode, Refusal};
use crate::keylog::{Consistency, KeyLog, LogError};
use crate::limits::Limits;
use crate::store::Store;
use crate::transparency::{LogHead, LoggedValue};

pub(crate) struct Shared {
    pub store: Store,
    /// Every version of every record, with proofs (key transparency).
    pub log: KeyLog,
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
    /// Brings `name`'s version in the key log in step with the record just changed. A failure
    /// leaves the change made (it is committed) and is only logged: the next look-up of the
    /// name publishes it (`KeyLog::prove`).
    pub async fn publish(&self, name: &Username) {
        if let Err(e) = self.log.sync(name).await {
            tracing::warn!(error = %e, "a changed record is not in the key log yet");
        }
    }

    /// A proof that `name`'s latest version in the key log is `logged`, and the head it holds
    /// against.
    pub async fn prove(
        &self,
        name: &Username,
        logged: &LoggedValue,
    ) -> Result<(akd::LookupProof, LogHead), Refusal> {
        let (proof, head) = self.log.prove(name, logged).await.map_err(|e| {
            tracing::warn!(error = %e, "no key log proof for a look-up");
            Refusal::new(
                ErrorCode::Internal,
                "the key log has no proof of this record yet; ask again",
            )
        })?;
        let head = LogHead::sign(&self.key, head.0, head.1, self.log.vrf_key());
        Ok((proof, head))
    }

    /// The key log's growth from epoch `from` (see [`KeyLog::consistency`]), and the signed
    /// head of the epoch it reaches.
    pub async fn consistency(&self, from: u64) -> Result<(Consistency, LogHead), Refusal> {
        let grown = self.log.consistency(from).await.map_err(|e| match e {
            LogError::NoEpoch { .. } => Refusal::new(ErrorCode::BadRequest, e.to_string()),
            e => {
                tracing::warn!(error = %e, "no key log consistency proof");
                Refusal::new(
                    ErrorCode::Internal,
                    "the key log has no consistency proof from that epoch now; ask again",
                )
            }
        })?;
        let end = grown.from + grown.roots.len() as u64 - 1;
        let root = *grown.roots.last().unwrap_or(&[0; 32]);
        let head = LogHead::sign(&self.key, end, root, self.log.vrf_key());
        Ok((grown, head))
    }

    /// A proof of every version of `name` in the key log, and the head it holds against.
    pub async fn history(&self, name: &Username) -> Result<(akd::HistoryProof, LogHead), Refusal> {
        let (proof, head) = self.log.history(name).await.map_err(|e| {
            tracing::warn!(error = %e, "no key log history for an owner");
            Refusal::new(
                ErrorCode::Internal,
                "the key log has no history of this name now; ask again",
            )
        })?;
        let head = LogHead::sign(&self.key, head.0, head.1, self.log.vrf_key());
        Ok((proof, head))
    }

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
