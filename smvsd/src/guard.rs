//! The link to the key guard, made again when the key guard went away.
//!
//! The key guard may be restarted (an upgrade, a crash) while smvsd runs. Every call here goes
//! over the current connection; a call that finds the connection gone drops it, connects again
//! and tries once more, so the host carries on without a restart once the key guard is back.
//! Until then the call fails with the key guard's own error (which names its socket), and the
//! host keeps serving everything that does not need the key guard: messages stay queued, reads
//! work.
//!
//! Owns: the one connection. Serializes: nothing needs to; two calls that both find the link
//! gone both reconnect, and the second connection replaces the first.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use smvs_crypto::{AeadKey, AgreementPublicKey, IdentityBundle, SigningPublicKey};
use smvs_directory::{Registration, TransportCertificate};
use smvs_keyguard::client::{KeyguardClient, KeyguardError};
use smvs_schema::{HostAddress, Username};

/// How long connecting to the key guard may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Guard {
    path: PathBuf,
    client: RefCell<Option<Rc<KeyguardClient>>>,
}

/// Whether `e` means the connection is gone (as opposed to a refusal of the request).
fn link_lost(e: &KeyguardError) -> bool {
    matches!(
        e,
        KeyguardError::Disconnected { .. }
            | KeyguardError::Rpc { .. }
            | KeyguardError::Connect { .. }
    )
}

impl Guard {
    pub fn new(client: KeyguardClient) -> Guard {
        Guard {
            path: client.path().to_owned(),
            client: RefCell::new(Some(Rc::new(client))),
        }
    }

    async fn client(&self) -> Result<Rc<KeyguardClient>, KeyguardError> {
        if let Some(c) = self.client.borrow().as_ref() {
            return Ok(c.clone());
        }
        let connecting = KeyguardClient::connect(&self.path);
        let client = match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(connected) => Rc::new(connected?),
            Err(_) => {
                return Err(KeyguardError::Connect {
                    path: self.path.clone(),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                })
            }
        };
        tracing::info!(keyguard = %self.path.display(), "connected to the key guard again");
        *self.client.borrow_mut() = Some(client.clone());
        Ok(client)
    }

    /// Runs `call` on the connection; if the connection turns out to be gone, once more on a
    /// new one.
    async fn with_client<T, F, Fut>(&self, call: F) -> Result<T, KeyguardError>
    where
        F: Fn(Rc<KeyguardClient>) -> Fut,
        Fut: std::future::Future<Output = Result<T, KeyguardError>>,
    {
        let first = call(self.client().await?).await;
        match first {
            Err(e) if link_lost(&e) => {
                tracing::warn!(error = %e, "the key guard connection was lost; connecting again");
                self.client.borrow_mut().take();
                call(self.client().await?).await
            }
            other => other,
        }
    }

    pub async fn create_identity(&self) -> Result<IdentityBundle, KeyguardError> {
        self.with_client(|c| async move { c.create_identity().await })
            .await
    }

    pub async fn certify_transport(
        &self,
        username: &Username,
        transport_key: &AgreementPublicKey,
    ) -> Result<TransportCertificate, KeyguardError> {
        self.with_client(|c| async move { c.certify_transport(username, transport_key).await })
            .await
    }

    /// The identity's statement that `username`'s host is at `address` now.
    pub async fn sign_host_address(
        &self,
        username: &Username,
        address: &HostAddress,
    ) -> Result<(i64, smvs_crypto::Signature), KeyguardError> {
        self.with_client(|c| async move { c.sign_host_address(username, address).await })
            .await
    }

    /// The identity's signature over this host's record for the DHT at sequence `seq`.
    pub async fn sign_dht_record(
        &self,
        record: &[u8],
        seq: i64,
    ) -> Result<smvs_crypto::Signature, KeyguardError> {
        self.with_client(|c| async move { c.sign_dht_record(record, seq).await })
            .await
    }

    /// The identity's statement that `username` moves from directory `from` to `to`.
    pub async fn sign_directory_move(
        &self,
        username: &Username,
        from: &SigningPublicKey,
        to: &SigningPublicKey,
        to_address: &str,
    ) -> Result<smvs_directory::MovedStatement, KeyguardError> {
        self.with_client(
            |c| async move { c.sign_directory_move(username, from, to, to_address).await },
        )
        .await
    }

    pub async fn sign_registration(
        &self,
        directory_key: &SigningPublicKey,
        username: &Username,
        transport_key: &AgreementPublicKey,
        host_address: &HostAddress,
    ) -> Result<Registration, KeyguardError> {
        self.with_client(|c| async move {
            c.sign_registration(directory_key, username, transport_key, host_address)
                .await
        })
        .await
    }

    pub async fn open_login_token(
        &self,
        directory_key: &SigningPublicKey,
        username: &Username,
        sealed: &[u8],
    ) -> Result<[u8; 32], KeyguardError> {
        self.with_client(
            |c| async move { c.open_login_token(directory_key, username, sealed).await },
        )
        .await
    }

    pub async fn derive_shared_key(
        &self,
        peer: &AgreementPublicKey,
        salt: &[u8],
        info: &[u8],
    ) -> Result<AeadKey, KeyguardError> {
        self.with_client(|c| async move { c.derive_shared_key(peer, salt, info).await })
            .await
    }

    /// Session v2's public keys of our identity (checked against it by the client).
    pub async fn session_keys(
        &self,
        identity: &IdentityBundle,
    ) -> Result<smvs_keyguard::SessionPublicKeys, KeyguardError> {
        let identity = *identity;
        self.with_client(|c| async move { c.session_keys(&identity).await })
            .await
    }

    /// One session v2 handshake question.
    pub async fn handshake_secret(
        &self,
        question: smvs_keyguard::HandshakeQuestion<'_>,
    ) -> Result<smvs_crypto::Zeroizing<[u8; 32]>, KeyguardError> {
        self.with_client(|c| async move { c.handshake_secret(&question).await })
            .await
    }

    pub async fn storage_keys(&self) -> Result<smvs_keyguard::StorageKeys, KeyguardError> {
        self.with_client(|c| async move { c.storage_keys().await })
            .await
    }

    /// A new storage epoch: (current, previous).
    pub async fn new_storage_epoch(
        &self,
    ) -> Result<(smvs_keyguard::StorageEpoch, smvs_keyguard::StorageEpoch), KeyguardError> {
        self.with_client(|c| async move { c.new_storage_epoch().await })
            .await
    }

    pub async fn retire_storage_epoch(&self, id: u32) -> Result<(), KeyguardError> {
        self.with_client(|c| async move { c.retire_storage_epoch(id).await })
            .await
    }

    /// The rollback counter (moved up by one first when `advance`).
    pub async fn rollback_counter(&self, advance: bool) -> Result<u64, KeyguardError> {
        self.with_client(|c| async move { c.rollback_counter(advance).await })
            .await
    }
}
