//! The keyguard client: what smvsd uses to have its identity certify its transport key, sign
//! its registration, open directory login tokens, derive keys and answer session v2's
//! handshake questions, and what `smvs-keyguard check` uses to test access.
//!
//! Cap'n Proto capabilities are `!Send`: create and use a [`KeyguardClient`] inside a
//! `tokio::task::LocalSet` (the connection is driven by a task spawned there), and keep it on
//! that thread. Other threads talk to it through owned messages.
//!
//! Every answer is checked before it is handed back: bundles must verify, keys and signatures
//! must have their exact lengths.

use std::path::{Path, PathBuf};

use smvs_crypto::{
    AeadKey, AgreementPublicKey, GuardOperation, HandshakeComponent, IdentityBundle, Signature,
    SignedPrekey, SigningPublicKey, XWingPublicKey, Zeroizing,
};
use smvs_directory::{Registration, TransportCertificate};
use smvs_schema::common_capnp::identity_bundle;
use smvs_schema::keyguard_capnp::keyguard;
use smvs_schema::{HostAddress, Username};
use thiserror::Error;

/// Session v2's public keys as keyguard gives them (checked against the identity).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPublicKeys {
    pub kem: XWingPublicKey,
    pub kem_signature: Signature,
    pub prekey: SignedPrekey,
    /// The previous prekey, while keyguard still answers for it.
    pub previous_prekey: Option<SignedPrekey>,
}

/// One storage epoch: its id and the key values are sealed under in it.
pub struct StorageEpoch {
    pub id: u32,
    pub key: AeadKey,
}

/// What [`KeyguardClient::storage_keys`] answers.
pub struct StorageKeys {
    /// The conversation-tag, chain and tombstone keys (3 × 32 bytes), fixed.
    pub derived: Zeroizing<Vec<u8>>,
    pub current: StorageEpoch,
    pub previous: Option<StorageEpoch>,
}

fn read_epoch(
    r: capnp::Result<smvs_schema::keyguard_capnp::storage_epoch::Reader<'_>>,
) -> Result<StorageEpoch, String> {
    let r = r.map_err(|e| e.to_string())?;
    if r.get_id() == 0 {
        return Err("storage epoch 0".into());
    }
    Ok(StorageEpoch {
        id: r.get_id(),
        key: AeadKey::from_bytes(r.get_key().map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?,
    })
}

/// One handshake question for keyguard (see `smvs_crypto::HandshakeComponent`).
#[derive(Debug, Clone, Copy)]
pub struct HandshakeQuestion<'a> {
    pub operation: GuardOperation,
    pub component: HandshakeComponent,
    pub transcript: &'a [u8; 32],
    /// The prekey's id for the prekey operations; 0 otherwise.
    pub prekey: u32,
    /// The peer's X25519 key for the DH operations; empty otherwise.
    pub peer: &'a [u8],
    /// The X-Wing ciphertext for the decapsulations; empty otherwise.
    pub ciphertext: &'a [u8],
}

/// What can go wrong talking to keyguard. Every variant says which keyguard (its socket) and,
/// once connected, which operation.
#[derive(Debug, Error)]
pub enum KeyguardError {
    #[error("cannot connect to keyguard at {path}: {source}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Keyguard answered with an error (for example "no identity: register first").
    #[error("keyguard at {path} refused {operation}: {message}")]
    Refused {
        path: PathBuf,
        operation: &'static str,
        message: String,
    },
    /// The connection ended, typically because keyguard does not serve this uid.
    #[error(
        "keyguard at {path} closed the connection during {operation} ({detail}); is this uid \
         among its --allow-uid?"
    )]
    Disconnected {
        path: PathBuf,
        operation: &'static str,
        detail: String,
    },
    #[error("keyguard at {path}: {operation} failed: {detail}")]
    Rpc {
        path: PathBuf,
        operation: &'static str,
        detail: String,
    },
    #[error("keyguard at {path} answered {operation} with {what}")]
    BadAnswer {
        path: PathBuf,
        operation: &'static str,
        what: String,
    },
}

/// A connection to keyguard.
pub struct KeyguardClient {
    keyguard: keyguard::Client,
    path: PathBuf,
}

impl KeyguardClient {
    /// Connects to the keyguard socket at `path`. Must be called inside a `LocalSet`.
    ///
    /// Connecting succeeds even for a uid keyguard does not serve (it closes the connection
    /// right after accepting it): the first request then fails with
    /// [`KeyguardError::Disconnected`].
    pub async fn connect(path: &Path) -> Result<KeyguardClient, KeyguardError> {
        let stream = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|source| KeyguardError::Connect {
                path: path.to_owned(),
                source,
            })?;
        let (system, keyguard) = smvs_transport::rpc::local_client::<keyguard::Client>(stream);
        tokio::task::spawn_local(async move {
            if let Err(e) = system.await {
                tracing::debug!(error = %e, "keyguard connection ended");
            }
        });
        Ok(KeyguardClient {
            keyguard,
            path: path.to_owned(),
        })
    }

    /// The socket this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The raw capability, for tools and tests that must send requests the typed methods would
    /// refuse to build.
    pub fn capability(&self) -> keyguard::Client {
        self.keyguard.clone()
    }

    /// The identity's public keys, or `None` when no identity has been created yet.
    pub async fn public_keys(&self) -> Result<Option<IdentityBundle>, KeyguardError> {
        const OP: &str = "publicKeys";
        let response = self
            .keyguard
            .public_keys_request()
            .send()
            .promise
            .await
            .map_err(|e| self.rpc_error(OP, e))?;
        let r = response.get().map_err(|e| self.rpc_error(OP, e))?;
        if !r.get_exists() {
            return Ok(None);
        }
        let bundle = r.get_identity().map_err(|e| self.rpc_error(OP, e))?;
        self.read_bundle(OP, bundle).map(Some)
    }

    /// Creates the identity if there is none yet; returns the existing one otherwise.
    pub async fn create_identity(&self) -> Result<IdentityBundle, KeyguardError> {
        const OP: &str = "createIdentity";
        let response = self
            .keyguard
            .create_identity_request()
            .send()
            .promise
            .await
            .map_err(|e| self.rpc_error(OP, e))?;
        let bundle = response
            .get()
            .and_then(|r| r.get_identity())
            .map_err(|e| self.rpc_error(OP, e))?;
        self.read_bundle(OP, bundle)
    }

    /// Opens a directory's login challenge: keyguard answers with the 32-byte token only when
    /// the sealed box holds an unexpired login token of `directory_key` for `username`.
    pub async fn open_login_token(
        &self,
        directory_key: &SigningPublicKey,
        username: &Username,
        sealed: &[u8],
    ) -> Result<[u8; 32], KeyguardError> {
        const OP: &str = "openLoginToken";
        let mut request = self.keyguard.open_login_token_request();
        {
            let mut r = request.get();
            r.set_directory_key(directory_key.as_bytes());
            r.set_username(username.as_str());
            r.set_sealed_token(sealed);
        }
        let response = request
            .send()
            .promise
            .await
            .map_err(|e| self.rpc_error(OP, e))?;
        let token = response
            .get()
            .and_then(|r| r.get_token())
            .map_err(|e| self.rpc_error(OP, e))?;
        token
            .try_into()
            .map_err(|_| self.bad_answer(OP, format!("a token of {} bytes", token.len())))
    }

    /// The identity's certificate for `transport_key` as `username`'s, valid for keyguard's
    /// fixed lifetime from now. Checked before it is handed back.
    pub async fn certify_transport(
        &self,
        username: &Username,
        transport_key: &AgreementPublicKey,
    ) -> Result<TransportCertificate, KeyguardError> {
        const OP: &str = "certifyTransport";
        let mut request = self.keyguard.certify_transport_request();
        request.get().set_username(username.as_str());
        request.get().set_transport_key(transport_key.as_bytes());
        let response = request
            .send()
            .promise
            .await
            .map_err(|e| self.rpc_error(OP, e))?;
        let transport = response
            .get()
            .and_then(|r| r.get_transport())
            .map_err(|e| self.rpc_error(OP, e))?;
        let cert = TransportCertificate::read(transport).map_err(|e| self.bad_answer(OP, e))?;
        if cert.key != *transport_key {
            return Err(self.bad_answer(OP, "a certificate for another key"));
        }
        Ok(cert)
    }

    /// The identity's statement that `username`'s host is at `address` now: (issued at, in
    /// Unix ms, by keyguard's clock; the signature).
    pub async fn sign_host_address(
        &self,
        username: &Username,
        address: &HostAddress,
    ) -> Result<(i64, Signature), KeyguardError> {
        const OP: &str = "signHostAddress";
        let mut request = self.keyguard.sign_host_address_request();
        request.get().set_username(username.as_str());
        request.get().set_host_address(address.as_str());
        let response = request
            .send()
            .promise
            .await
            .map_err(|e| self.rpc_error(OP, e))?;
        let r = response.get().map_err(|e| self.rpc_error(OP, e))?;
        let signature =
            Signature::from_bytes(r.get_signature().map_err(|e| self.rpc_error(OP, e))?)
                .map_err(|e| self.bad_answer(OP, e))?;
        Ok((r.get_issued_at(), signature))
    }

    /// The identity's signature over this host's record for the DHT at sequence `seq`.
    pub async fn sign_dht_record(
        &self,
        record: &[u8],
        seq: i64,
    ) -> Result<Signature, KeyguardError> {
        const OP: &str = "signDhtRecord";
        let mut request = self.keyguard.sign_dht_record_request();
        request.get().set_record(record);
        request.get().set_seq(seq);
        let response = request
            .send()
            .promise
            .await
            .map_err(|e| self.rpc_error(OP, e))?;
        let r = response.get().map_err(|e| self.rpc_error(OP, e))?;
        Signature::from_bytes(r.get_signature().map_err(|e| self.rpc_error(OP, e))?)
            .map_err(|e| self.bad_answer(OP, e))
    }

    /// The identity's statement that `username` leaves the directory `from` for `to` at
    /// `to_address`, now.
    pub async fn sign_directory_move(
        &self,
        username: &Username,
        from: &SigningPublicKey,
        to: &SigningPublicKey,
        to_address: &str,
    ) -> Result<smvs_directory::MovedStatement, KeyguardError> {
        const OP: &str = "signDirectoryMove";
        let mut request = self.keyguard.sign_directory_move_request();
        request.get().set_username(username.as_str());
        request.get().set_from_directory(from.as_bytes());
        request.get().set_to_directory(to.as_bytes());
        request.get().set_to_address(to_address);
        let response = request
            .send()
            .promise
            .await
            .map_err(|e| self.rpc_error(OP, e))?;
        let r = response.get().map_err(|e| self.rpc_error(OP, e))?;
        Ok(smvs_directory::MovedStatement {
            username: username.clone(),
            from: *from,
            to: *to,
            to_address: to_address.to_owned(),
            issued_at: r.get_issued_at(),
            signature: Signature::from_bytes(r.get_signature().map_err(|e| self.rpc_error(OP, e))?)
                .map_err(|e| self.bad_answer(OP, e))?,
        })
    }

    /// A registration of keyguard's identity as `username` at the directory whose key is
    /// `directory_key`, built and signed by keyguard.
    pub async fn sign_registration(
        &self,
        directory_key: &SigningPublicKey,
        username: &Username,
        transport_key: &AgreementPublicKey,
        host_address: &HostAddress,
    ) -> Result<Registration, KeyguardError> {
        const OP: &str = "signRegistration";
        let mut request = self.keyguard.sign_registration_request();
        {
            let mut r = request.get();
            r.set_directory_key(directory_key.as_bytes());
            r.set_username(username.as_str());
            r.set_transport_key(transport_key.as_bytes());
            r.set_host_address(host_address.as_str());
        }
        let response = request
            .send()
            .promise
            .await
            .map_err(|e| self.rpc_error(OP, e))?;
        let answer = response
            .get()
            .and_then(|r| r.get_request())
            .map_err(|e| self.rpc_error(OP, e))?;
        let registration = Registration::read(answer).map_err(|e| self.bad_answer(OP, e))?;
        if &registration.username != username
            || registration.transport_key != *transport_key
            || &registration.host_address != host_address
        {
            return Err(self.bad_answer(OP, "a registration of something else"));
        }
        Ok(registration)
    }

    /// HKDF-SHA256(salt, X25519(identity agreement secret, `peer`), info): a 32-byte key.
    /// Keyguard refuses an empty `info`, a salt or info over 1 KiB and a low-order `peer`.
    pub async fn derive_shared_key(
        &self,
        peer: &AgreementPublicKey,
        salt: &[u8],
        info: &[u8],
    ) -> Result<AeadKey, KeyguardError> {
        const OP: &str = "deriveSharedKey";
        let mut request = self.keyguard.derive_shared_key_request();
        {
            let mut r = request.get();
            r.set_peer_agreement_key(peer.as_bytes());
            r.set_salt(salt);
            r.set_info(info);
        }
        let response = request
            .send()
            .promise
            .await
            .map_err(|e| self.rpc_error(OP, e))?;
        let key = response
            .get()
            .and_then(|r| r.get_key())
            .map_err(|e| self.rpc_error(OP, e))?;
        AeadKey::from_bytes(key).map_err(|e| self.bad_answer(OP, e))
    }

    /// Session v2's public keys: the identity's X-Wing key and its signature, and the current
    /// signed prekey (keyguard rotates it when due). Checked against `identity` here, so a
    /// caller never publishes a key its identity did not sign.
    pub async fn session_keys(
        &self,
        identity: &IdentityBundle,
    ) -> Result<SessionPublicKeys, KeyguardError> {
        const OP: &str = "sessionKeys";
        let response = self
            .keyguard
            .session_keys_request()
            .send()
            .promise
            .await
            .map_err(|e| self.rpc_error(OP, e))?;
        let read = || -> Result<SessionPublicKeys, String> {
            let r = response.get().map_err(|e| e.to_string())?;
            fn bytes(b: capnp::Result<&[u8]>) -> Result<&[u8], String> {
                b.map_err(|e| e.to_string())
            }
            let prekey = |p: capnp::Result<_>| {
                smvs_directory::record::read_prekey(p.map_err(|e: capnp::Error| e.to_string())?)
            };
            let keys = SessionPublicKeys {
                kem: XWingPublicKey::from_bytes(bytes(r.get_kem())?).map_err(|e| e.to_string())?,
                kem_signature: Signature::from_bytes(bytes(r.get_kem_signature())?)
                    .map_err(|e| e.to_string())?,
                prekey: prekey(r.get_prekey())?,
                previous_prekey: if r.has_previous_prekey() {
                    Some(prekey(r.get_previous_prekey())?)
                } else {
                    None
                },
            };
            smvs_crypto::verify_identity_kem(identity, &keys.kem, &keys.kem_signature)
                .map_err(|e| e.to_string())?;
            keys.prekey.verify(identity).map_err(|e| e.to_string())?;
            if let Some(previous) = &keys.previous_prekey {
                previous.verify(identity).map_err(|e| e.to_string())?;
            }
            Ok(keys)
        };
        read().map_err(|e| self.bad_answer(OP, e))
    }

    /// One handshake question (session v2): keyguard uses its identity or prekey secret once
    /// and answers `transcript_bound(label(component), transcript, secret)`.
    pub async fn handshake_secret(
        &self,
        question: &HandshakeQuestion<'_>,
    ) -> Result<Zeroizing<[u8; 32]>, KeyguardError> {
        const OP: &str = "handshakeSecret";
        let mut request = self.keyguard.handshake_secret_request();
        {
            let mut r = request.get();
            r.set_operation(crate::purpose::wire_operation(question.operation));
            r.set_component(crate::purpose::wire_component(question.component));
            r.set_transcript(question.transcript);
            r.set_prekey(question.prekey);
            r.set_peer(question.peer);
            r.set_ciphertext(question.ciphertext);
        }
        let response = request
            .send()
            .promise
            .await
            .map_err(|e| self.rpc_error(OP, e))?;
        let value = response
            .get()
            .and_then(|r| r.get_value())
            .map_err(|e| self.rpc_error(OP, e))?;
        let mut out = Zeroizing::new([0u8; 32]);
        if value.len() != 32 {
            return Err(self.bad_answer(OP, format!("{} bytes, not 32", value.len())));
        }
        out.copy_from_slice(value);
        Ok(out)
    }

    /// The rollback counter; `advance` moves it up by one first (and keyguard has it on disk
    /// before it answers).
    pub async fn rollback_counter(&self, advance: bool) -> Result<u64, KeyguardError> {
        const OP: &str = "rollbackCounter";
        let mut request = self.keyguard.rollback_counter_request();
        request.get().set_advance(advance);
        let response = request
            .send()
            .promise
            .await
            .map_err(|e| self.rpc_error(OP, e))?;
        response
            .get()
            .map(|r| r.get_value())
            .map_err(|e| self.rpc_error(OP, e))
    }

    /// smvsd's storage keys: the fixed derived keys, the current storage epoch and the
    /// previous one while it is not retired.
    pub async fn storage_keys(&self) -> Result<StorageKeys, KeyguardError> {
        const OP: &str = "storageKeys";
        let response = self
            .keyguard
            .storage_keys_request()
            .send()
            .promise
            .await
            .map_err(|e| self.rpc_error(OP, e))?;
        let read = || -> Result<StorageKeys, String> {
            let r = response.get().map_err(|e| e.to_string())?;
            let derived = r.get_derived().map_err(|e| e.to_string())?;
            if derived.len() != 96 {
                return Err(format!("derived keys of {} bytes", derived.len()));
            }
            Ok(StorageKeys {
                derived: Zeroizing::new(derived.to_vec()),
                current: read_epoch(r.get_current())?,
                previous: if r.has_previous() {
                    Some(read_epoch(r.get_previous())?)
                } else {
                    None
                },
            })
        };
        read().map_err(|e| self.bad_answer(OP, e))
    }

    /// Begins a new storage epoch; answers the epochs as [`KeyguardClient::storage_keys`]
    /// would now. Refused while the previous epoch is not retired.
    pub async fn new_storage_epoch(&self) -> Result<(StorageEpoch, StorageEpoch), KeyguardError> {
        const OP: &str = "newStorageEpoch";
        let response = self
            .keyguard
            .new_storage_epoch_request()
            .send()
            .promise
            .await
            .map_err(|e| self.rpc_error(OP, e))?;
        let read = || -> Result<(StorageEpoch, StorageEpoch), String> {
            let r = response.get().map_err(|e| e.to_string())?;
            Ok((read_epoch(r.get_current())?, read_epoch(r.get_previous())?))
        };
        read().map_err(|e| self.bad_answer(OP, e))
    }

    /// Destroys storage epoch `id` (the previous one), once nothing is sealed under it.
    pub async fn retire_storage_epoch(&self, id: u32) -> Result<(), KeyguardError> {
        const OP: &str = "retireStorageEpoch";
        let mut request = self.keyguard.retire_storage_epoch_request();
        request.get().set_epoch(id);
        request
            .send()
            .promise
            .await
            .map(|_| ())
            .map_err(|e| self.rpc_error(OP, e))
    }

    fn read_bundle(
        &self,
        operation: &'static str,
        bundle: identity_bundle::Reader<'_>,
    ) -> Result<IdentityBundle, KeyguardError> {
        let rpc = |e| self.rpc_error(operation, e);
        IdentityBundle::from_parts(
            bundle.get_signing_key().map_err(rpc)?,
            bundle.get_agreement_key().map_err(rpc)?,
            bundle.get_agreement_signature().map_err(rpc)?,
        )
        .map_err(|e| self.bad_answer(operation, format!("an identity that does not verify ({e})")))
    }

    fn bad_answer(&self, operation: &'static str, what: impl ToString) -> KeyguardError {
        KeyguardError::BadAnswer {
            path: self.path.clone(),
            operation,
            what: what.to_string(),
        }
    }

    fn rpc_error(&self, operation: &'static str, e: capnp::Error) -> KeyguardError {
        let path = self.path.clone();
        match e.kind {
            capnp::ErrorKind::Disconnected | capnp::ErrorKind::PrematureEndOfFile => {
                KeyguardError::Disconnected {
                    path,
                    operation,
                    detail: e.extra,
                }
            }
            // Keyguard's own refusals arrive as remote exceptions; a local I/O failure is also
            // of kind Failed, so the prefix tells the two apart.
            capnp::ErrorKind::Failed if e.extra.starts_with(REMOTE_PREFIX) => {
                KeyguardError::Refused {
                    path,
                    operation,
                    message: e.extra[REMOTE_PREFIX.len()..].to_owned(),
                }
            }
            _ => KeyguardError::Rpc {
                path,
                operation,
                detail: e.to_string(),
            },
        }
    }
}

/// How capnp-rpc prefixes an exception thrown by the other side.
const REMOTE_PREFIX: &str = "remote exception: ";
