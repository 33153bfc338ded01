//! The `Keyguard` RPC object (one per connection) over the `Vault` (one per process).
//!
//! Everything runs on one thread. No handler awaits between reading the vault and changing it,
//! so two `createIdentity` calls, even on two connections, can never both see "no identity"
//! and create two: the second finds the first's.

use std::cell::RefCell;
use std::fmt;
use std::rc::Rc;

use smvs_crypto::{
    hkdf_sha256, AgreementPublicKey, IdentityBundle, IdentityKeys, SignContext, SigningPublicKey,
    Zeroizing,
};
use smvs_directory::clock::now_ms;
use smvs_directory::{Registration, TransportCertificate};
use smvs_schema::canonical::{self, TRANSPORT_CERTIFICATE_LIFETIME_MS};
use smvs_schema::common_capnp::identity_bundle;
use smvs_schema::keyguard_capnp::keyguard;
use smvs_schema::{HostAddress, Username};

use crate::keydir::{KeyDir, KeyDirError};
use crate::session_keys::{HandshakeAsk, SessionSecrets};
use crate::storage_epochs::{Epoch, StorageEpochs};

/// HKDF salt and info for the storage key. Changing either changes every user's storage key.
/// The largest salt and info `deriveSharedKey` takes. Real callers use a few dozen bytes.
pub(crate) const MAX_SALT_LEN: usize = 1024;
pub(crate) const MAX_INFO_LEN: usize = 1024;

/// The identity, with its public bundle computed once.
struct Identity {
    keys: IdentityKeys,
    bundle: IdentityBundle,
}

impl Identity {
    fn new(keys: IdentityKeys) -> Identity {
        let bundle = keys.bundle();
        Identity { keys, bundle }
    }
}

/// The process's secrets: the key directory, the identity once it exists, and the storage key
/// (the storage secret itself is dropped, and zeroed, as soon as the key is derived).
pub(crate) struct Vault {
    dir: KeyDir,
    identity: RefCell<Option<Identity>>,
    /// Session v2's secrets, loaded (or made) at their first use, after the identity.
    session: RefCell<Option<SessionSecrets>>,
    storage: RefCell<StorageEpochs>,
}

impl Vault {
    pub(crate) fn open(dir: KeyDir) -> Result<Vault, KeyDirError> {
        let storage = RefCell::new(StorageEpochs::load(&dir)?);
        let identity = dir.load_identity()?.map(Identity::new);
        Ok(Vault {
            dir,
            identity: RefCell::new(identity),
            session: RefCell::new(None),
            storage,
        })
    }

    pub(crate) fn bundle(&self) -> Option<IdentityBundle> {
        self.identity.borrow().as_ref().map(|id| id.bundle)
    }

    /// The identity's bundle, and whether this call created it.
    fn create_identity(&self) -> Result<(IdentityBundle, bool), KeyDirError> {
        if let Some(bundle) = self.bundle() {
            return Ok((bundle, false));
        }
        let identity = Identity::new(self.dir.create_identity()?);
        let bundle = identity.bundle;
        *self.identity.borrow_mut() = Some(identity);
        Ok((bundle, true))
    }

    /// Runs `f` on the identity and session v2's secrets (loading or making those first).
    fn with_session<T>(
        &self,
        f: impl FnOnce(&IdentityKeys, &mut SessionSecrets) -> Result<T, capnp::Error>,
    ) -> Result<T, capnp::Error> {
        let identity = self.identity.borrow();
        let Some(identity) = identity.as_ref() else {
            return Err(refuse("no identity: register first"));
        };
        let mut session = self.session.borrow_mut();
        if session.is_none() {
            *session = Some(SessionSecrets::load(&self.dir).map_err(|e| {
                tracing::error!(error = %e, "cannot load the session keys");
                refuse(format!("cannot load the session keys: {e}"))
            })?);
        }
        match session.as_mut() {
            Some(session) => f(&identity.keys, session),
            None => Err(refuse("no session keys")),
        }
    }

    fn with_identity<T>(&self, f: impl FnOnce(&IdentityKeys) -> T) -> Result<T, capnp::Error> {
        match self.identity.borrow().as_ref() {
            Some(identity) => Ok(f(&identity.keys)),
            None => Err(refuse("no identity: register first")),
        }
    }
}

/// Who is on the other end of a connection, from SO_PEERCRED.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub uid: u32,
    /// 0 when unknown, as the kernel reports a peer in another pid namespace.
    pub pid: i32,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uid {} pid {}", self.uid, self.pid)
    }
}

fn refuse(text: impl Into<String>) -> capnp::Error {
    capnp::Error::failed(text.into())
}

fn write_bundle(mut b: identity_bundle::Builder<'_>, bundle: &IdentityBundle) {
    b.set_signing_key(bundle.signing_key.as_bytes());
    b.set_agreement_key(bundle.agreement_key.as_bytes());
    b.set_agreement_signature(bundle.agreement_signature.as_bytes());
}

fn read_username(t: capnp::Result<capnp::text::Reader<'_>>) -> Result<Username, capnp::Error> {
    let text = t?.to_str().map_err(|_| refuse("username is not UTF-8"))?;
    Username::parse(text).map_err(|e| refuse(format!("username: {e}")))
}

fn read_transport_key(bytes: capnp::Result<&[u8]>) -> Result<AgreementPublicKey, capnp::Error> {
    AgreementPublicKey::from_bytes(bytes?).map_err(|e| refuse(format!("transport key: {e}")))
}

fn read_directory_key(bytes: capnp::Result<&[u8]>) -> Result<SigningPublicKey, capnp::Error> {
    SigningPublicKey::from_bytes(bytes?).map_err(|e| refuse(format!("directory key: {e}")))
}

/// The certificate keyguard makes for a transport key: the expiry is keyguard's own clock plus
/// the fixed lifetime, whatever the caller would like.
fn certify(
    id: &IdentityKeys,
    username: &Username,
    key: AgreementPublicKey,
) -> TransportCertificate {
    let not_after = now_ms().saturating_add(TRANSPORT_CERTIFICATE_LIFETIME_MS);
    TransportCertificate::sign_locally(id, username, key, not_after)
}

/// A `certifyTransport` request as read from the wire.
struct CertifyRequest {
    username: Username,
    transport_key: AgreementPublicKey,
}

impl CertifyRequest {
    fn read(params: keyguard::certify_transport_params::Reader<'_>) -> Result<Self, capnp::Error> {
        Ok(CertifyRequest {
            username: read_username(params.get_username())?,
            transport_key: read_transport_key(params.get_transport_key())?,
        })
    }

    fn answer(&self, id: &IdentityKeys) -> TransportCertificate {
        certify(id, &self.username, self.transport_key)
    }
}

/// A `signRegistration` request as read from the wire. What it is signed into is built here:
/// the identity is keyguard's own, the certificate and the timestamp keyguard's.
struct RegistrationRequest {
    directory_key: SigningPublicKey,
    username: Username,
    transport_key: AgreementPublicKey,
    host_address: HostAddress,
}

impl RegistrationRequest {
    fn read(params: keyguard::sign_registration_params::Reader<'_>) -> Result<Self, capnp::Error> {
        let host = params
            .get_host_address()?
            .to_str()
            .map_err(|_| refuse("host address is not UTF-8"))?;
        Ok(RegistrationRequest {
            directory_key: read_directory_key(params.get_directory_key())?,
            username: read_username(params.get_username())?,
            transport_key: read_transport_key(params.get_transport_key())?,
            host_address: HostAddress::parse(host)
                .map_err(|e| refuse(format!("host address: {e}")))?,
        })
    }

    fn answer(&self, id: &IdentityKeys) -> Registration {
        let timestamp = now_ms();
        Registration::sign_with_certificate(
            &self.directory_key,
            self.username.clone(),
            id,
            certify(id, &self.username, self.transport_key),
            self.host_address.clone(),
            timestamp,
        )
    }
}

/// An `openLoginToken` request as read from the wire.
struct LoginTokenRequest<'a> {
    directory_key: SigningPublicKey,
    username: Username,
    sealed: &'a [u8],
}

impl<'a> LoginTokenRequest<'a> {
    fn read(params: keyguard::open_login_token_params::Reader<'a>) -> Result<Self, capnp::Error> {
        Ok(LoginTokenRequest {
            directory_key: read_directory_key(params.get_directory_key())?,
            username: read_username(params.get_username())?,
            sealed: params.get_sealed_token()?,
        })
    }

    /// Opens the box, and answers only with the token, only when the plaintext is an
    /// unexpired login token of that directory for that user: keyguard opens nothing else.
    fn answer(&self, id: &IdentityKeys) -> Result<[u8; 32], capnp::Error> {
        let plaintext = id
            .agreement
            .open_sealed(self.sealed)
            .map_err(|_| refuse("not a login token sealed to this identity"))?;
        let (expires_at, token) =
            canonical::parse_auth_token(&plaintext, &self.directory_key, &self.username)
                .ok_or_else(|| {
                    refuse(format!(
                        "the sealed box is not a login token of directory {} for {}",
                        self.directory_key.to_hex(),
                        self.username
                    ))
                })?;
        if expires_at < now_ms() {
            return Err(refuse(
                "the login token has expired; ask the directory again",
            ));
        }
        Ok(token)
    }
}

/// A `deriveSharedKey` request as read from the wire, its sizes checked.
struct DeriveRequest<'a> {
    peer: AgreementPublicKey,
    salt: &'a [u8],
    info: &'a [u8],
}

impl<'a> DeriveRequest<'a> {
    fn read(params: keyguard::derive_shared_key_params::Reader<'a>) -> Result<Self, capnp::Error> {
        let salt = params.get_salt()?;
        let info = params.get_info()?;
        if info.is_empty() {
            return Err(refuse(
                "info must not be empty: it names what the derived key is for",
            ));
        }
        if info.len() > MAX_INFO_LEN {
            return Err(refuse(format!(
                "info is {} bytes; at most {MAX_INFO_LEN} are allowed",
                info.len()
            )));
        }
        if salt.len() > MAX_SALT_LEN {
            return Err(refuse(format!(
                "salt is {} bytes; at most {MAX_SALT_LEN} are allowed",
                salt.len()
            )));
        }
        let peer = AgreementPublicKey::from_bytes(params.get_peer_agreement_key()?)
            .map_err(|e| refuse(format!("peer agreement key: {e}")))?;
        Ok(DeriveRequest { peer, salt, info })
    }

    fn answer(&self, id: &IdentityKeys) -> Result<Zeroizing<Vec<u8>>, capnp::Error> {
        let shared = id
            .agreement
            .agree(&self.peer)
            .map_err(|e| refuse(format!("peer agreement key: {e}")))?;
        hkdf_sha256(self.salt, shared.expose(), self.info, 32).map_err(|e| {
            tracing::error!(error = %e, "HKDF failed");
            refuse("key derivation failed")
        })
    }
}

/// What the fuzz targets in `fuzz/` drive: the requests that take input, read from one Cap'n
/// Proto message and answered with `id` exactly as the handlers below do. Public (and hidden)
/// only so that the fuzzers run this code rather than a copy of it.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// The methods of `Keyguard` that take parameters.
    #[derive(Debug, Clone, Copy)]
    pub enum Method {
        HandshakeSecret,
        OpenLoginToken,
        DeriveSharedKey,
        CertifyTransport,
        SignRegistration,
    }

    /// Reads `message` (with the peer-facing reader limits) as `method`'s parameters and
    /// answers it.
    pub fn answer(
        id: &IdentityKeys,
        method: Method,
        message: &[u8],
    ) -> Result<Vec<u8>, capnp::Error> {
        // Read into owned segments, as the RPC layer reads a call off the socket.
        let mut slice = message;
        let message = capnp::serialize::read_message(&mut slice, smvs_schema::reader_options())?;
        Ok(match method {
            Method::HandshakeSecret => {
                let p = message.get_root::<keyguard::handshake_secret_params::Reader<'_>>()?;
                let ask = HandshakeAsk::new(
                    crate::purpose::operation(p.get_operation()?),
                    crate::purpose::component(p.get_component()?),
                    p.get_transcript()?,
                    p.get_prekey(),
                    p.get_peer()?,
                    p.get_ciphertext()?,
                )
                .map_err(refuse)?;
                let value = SessionSecrets::without_prekeys(id)
                    .map_err(|e| refuse(e.to_string()))?
                    .answer(id, &ask)
                    .map_err(refuse)?;
                value.to_vec()
            }
            Method::OpenLoginToken => {
                let params = message.get_root::<keyguard::open_login_token_params::Reader<'_>>()?;
                LoginTokenRequest::read(params)?.answer(id)?.to_vec()
            }
            Method::CertifyTransport => {
                let params =
                    message.get_root::<keyguard::certify_transport_params::Reader<'_>>()?;
                let cert = CertifyRequest::read(params)?.answer(id);
                cert.certificate.as_bytes().to_vec()
            }
            Method::SignRegistration => {
                let params =
                    message.get_root::<keyguard::sign_registration_params::Reader<'_>>()?;
                let registration = RegistrationRequest::read(params)?.answer(id);
                registration.signature.as_bytes().to_vec()
            }
            Method::DeriveSharedKey => {
                let params =
                    message.get_root::<keyguard::derive_shared_key_params::Reader<'_>>()?;
                DeriveRequest::read(params)?.answer(id)?.to_vec()
            }
        })
    }
}

pub(crate) struct KeyguardRpc {
    vault: Rc<Vault>,
    peer: Peer,
}

impl KeyguardRpc {
    pub(crate) fn new(vault: Rc<Vault>, peer: Peer) -> KeyguardRpc {
        KeyguardRpc { vault, peer }
    }
}

impl keyguard::Server for KeyguardRpc {
    async fn public_keys(
        self: Rc<Self>,
        _: keyguard::PublicKeysParams,
        mut results: keyguard::PublicKeysResults,
    ) -> Result<(), capnp::Error> {
        let mut r = results.get();
        match self.vault.bundle() {
            Some(bundle) => {
                write_bundle(r.reborrow().init_identity(), &bundle);
                r.set_exists(true);
            }
            None => r.set_exists(false),
        }
        Ok(())
    }

    async fn create_identity(
        self: Rc<Self>,
        _: keyguard::CreateIdentityParams,
        mut results: keyguard::CreateIdentityResults,
    ) -> Result<(), capnp::Error> {
        let (bundle, created) = self.vault.create_identity().map_err(|e| {
            tracing::error!(error = %e, "cannot create the identity");
            refuse(format!("cannot create the identity: {e}"))
        })?;
        if created {
            tracing::info!(
                signing_key = %bundle.signing_key.to_hex(),
                uid = self.peer.uid,
                pid = self.peer.pid,
                "created the identity"
            );
        }
        write_bundle(results.get().init_identity(), &bundle);
        Ok(())
    }

    // `retiredSign` is not implemented either: keyguard signs nothing on request.
    // `retiredOpenSealed` is not implemented: the default answer is "unimplemented".

    async fn open_login_token(
        self: Rc<Self>,
        params: keyguard::OpenLoginTokenParams,
        mut results: keyguard::OpenLoginTokenResults,
    ) -> Result<(), capnp::Error> {
        let request = LoginTokenRequest::read(params.get()?)?;
        let token = self.vault.with_identity(|id| request.answer(id))??;
        tracing::debug!(peer = %self.peer, username = %request.username, "opened a login token");
        results.get().set_token(&token);
        Ok(())
    }

    async fn certify_transport(
        self: Rc<Self>,
        params: keyguard::CertifyTransportParams,
        mut results: keyguard::CertifyTransportResults,
    ) -> Result<(), capnp::Error> {
        let request = CertifyRequest::read(params.get()?)?;
        let cert = self.vault.with_identity(|id| request.answer(id))?;
        tracing::info!(
            peer = %self.peer,
            username = %request.username,
            transport_key = %cert.key.to_hex(),
            not_after = cert.not_after,
            "certified a transport key"
        );
        cert.write(results.get().init_transport());
        Ok(())
    }

    async fn sign_host_address(
        self: Rc<Self>,
        params: keyguard::SignHostAddressParams,
        mut results: keyguard::SignHostAddressResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let username = read_username(p.get_username())?;
        let host = p
            .get_host_address()?
            .to_str()
            .map_err(|_| refuse("host address is not UTF-8"))?;
        let address = HostAddress::parse(host).map_err(|e| refuse(format!("host address: {e}")))?;
        let issued_at = now_ms();
        let statement = canonical::host_address_statement(&username, &address, issued_at);
        let signature = self
            .vault
            .with_identity(|id| id.signing.sign(SignContext::HostAddress, &statement))?;
        tracing::info!(peer = %self.peer, %username, %address, "signed a host address");
        let mut r = results.get();
        r.set_issued_at(issued_at);
        r.set_signature(signature.as_bytes());
        Ok(())
    }

    async fn sign_dht_record(
        self: Rc<Self>,
        params: keyguard::SignDhtRecordParams,
        mut results: keyguard::SignDhtRecordResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let record = p.get_record()?;
        let seq = p.get_seq();
        let signature = self.vault.with_identity(|id| {
            smvs_directory::record::check_own_dht_record(&id.bundle(), record, seq, now_ms())
                .map_err(|e| refuse(format!("not this identity's DHT record: {e}")))?;
            Ok::<_, capnp::Error>(id.signing.sign_dht_record(seq, record))
        })??;
        tracing::info!(peer = %self.peer, seq, "signed the host's record for the DHT");
        results.get().set_signature(signature.as_bytes());
        Ok(())
    }

    async fn sign_directory_move(
        self: Rc<Self>,
        params: keyguard::SignDirectoryMoveParams,
        mut results: keyguard::SignDirectoryMoveResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let username = read_username(p.get_username())?;
        let from = read_directory_key(p.get_from_directory())?;
        let to = read_directory_key(p.get_to_directory())?;
        let to_address = p
            .get_to_address()?
            .to_str()
            .map_err(|_| refuse("address is not UTF-8"))?;
        if to_address.is_empty()
            || to_address.len() > smvs_directory::record::MAX_DIRECTORY_ADDRESS
            || from == to
        {
            return Err(refuse(
                "a move names two different directories and an address",
            ));
        }
        let issued_at = now_ms();
        let statement = canonical::directory_move(&username, &from, &to, to_address, issued_at);
        let signature = self
            .vault
            .with_identity(|id| id.signing.sign(SignContext::DirectoryMove, &statement))?;
        tracing::info!(peer = %self.peer, %username, to = %to.to_hex(), "signed a move to another directory");
        let mut r = results.get();
        r.set_issued_at(issued_at);
        r.set_signature(signature.as_bytes());
        Ok(())
    }

    async fn sign_registration(
        self: Rc<Self>,
        params: keyguard::SignRegistrationParams,
        mut results: keyguard::SignRegistrationResults,
    ) -> Result<(), capnp::Error> {
        let request = RegistrationRequest::read(params.get()?)?;
        let registration = self.vault.with_identity(|id| request.answer(id))?;
        tracing::info!(
            peer = %self.peer,
            username = %request.username,
            "signed a registration"
        );
        registration.write(results.get().init_request());
        Ok(())
    }

    async fn derive_shared_key(
        self: Rc<Self>,
        params: keyguard::DeriveSharedKeyParams,
        mut results: keyguard::DeriveSharedKeyResults,
    ) -> Result<(), capnp::Error> {
        let request = DeriveRequest::read(params.get()?)?;
        let key = self.vault.with_identity(|id| request.answer(id))??;
        results.get().set_key(&key);
        Ok(())
    }

    async fn session_keys(
        self: Rc<Self>,
        _: keyguard::SessionKeysParams,
        mut results: keyguard::SessionKeysResults,
    ) -> Result<(), capnp::Error> {
        let now_s = now_ms() / 1000;
        let keys = self.vault.with_session(|identity, session| {
            session
                .public(&self.vault.dir, identity, now_s)
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot make the session keys");
                    refuse(format!("cannot make the session keys: {e}"))
                })
        })?;
        let mut r = results.get();
        r.set_kem(keys.kem.as_bytes());
        r.set_kem_signature(keys.kem_signature.as_bytes());
        smvs_directory::record::write_prekey(r.reborrow().init_prekey(), &keys.prekey);
        if let Some(previous) = &keys.previous {
            smvs_directory::record::write_prekey(r.init_previous_prekey(), previous);
        }
        Ok(())
    }

    async fn handshake_secret(
        self: Rc<Self>,
        params: keyguard::HandshakeSecretParams,
        mut results: keyguard::HandshakeSecretResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let operation = crate::purpose::operation(p.get_operation()?);
        let component = crate::purpose::component(p.get_component()?);
        let ask = HandshakeAsk::new(
            operation,
            component,
            p.get_transcript()?,
            p.get_prekey(),
            p.get_peer()?,
            p.get_ciphertext()?,
        )
        .map_err(refuse)?;
        let value = self
            .vault
            .with_session(|identity, session| session.answer(identity, &ask).map_err(refuse))?;
        tracing::debug!(peer = %self.peer, ?operation, ?component, "answered a handshake question");
        results.get().set_value(&value[..]);
        Ok(())
    }

    async fn rollback_counter(
        self: Rc<Self>,
        params: keyguard::RollbackCounterParams,
        mut results: keyguard::RollbackCounterResults,
    ) -> Result<(), capnp::Error> {
        let advance = params.get()?.get_advance();
        let dir = &self.vault.dir;
        let value = dir
            .counter()
            .and_then(|now| {
                if !advance {
                    return Ok(now);
                }
                let next = now.saturating_add(1);
                dir.write_counter(next).map(|()| next)
            })
            .map_err(|e| {
                tracing::error!(error = %e, "cannot read or advance the rollback counter");
                refuse(format!("rollback counter: {e}"))
            })?;
        results.get().set_value(value);
        Ok(())
    }

    async fn storage_keys(
        self: Rc<Self>,
        _: keyguard::StorageKeysParams,
        mut results: keyguard::StorageKeysResults,
    ) -> Result<(), capnp::Error> {
        let storage = self.vault.storage.borrow();
        let mut r = results.get();
        r.set_derived(&storage.derived[..]);
        write_epoch(r.reborrow().init_current(), &storage.current)?;
        if let Some(previous) = &storage.previous {
            write_epoch(r.init_previous(), previous)?;
        }
        Ok(())
    }

    async fn new_storage_epoch(
        self: Rc<Self>,
        _: keyguard::NewStorageEpochParams,
        mut results: keyguard::NewStorageEpochResults,
    ) -> Result<(), capnp::Error> {
        let mut storage = self.vault.storage.borrow_mut();
        storage.begin_new(&self.vault.dir).map_err(refuse)?;
        let mut r = results.get();
        write_epoch(r.reborrow().init_current(), &storage.current)?;
        if let Some(previous) = &storage.previous {
            write_epoch(r.init_previous(), previous)?;
        }
        Ok(())
    }

    async fn retire_storage_epoch(
        self: Rc<Self>,
        params: keyguard::RetireStorageEpochParams,
        _: keyguard::RetireStorageEpochResults,
    ) -> Result<(), capnp::Error> {
        let id = params.get()?.get_epoch();
        self.vault
            .storage
            .borrow_mut()
            .retire(&self.vault.dir, id)
            .map_err(refuse)?;
        Ok(())
    }
}

fn write_epoch(
    mut b: smvs_schema::keyguard_capnp::storage_epoch::Builder<'_>,
    epoch: &Epoch,
) -> Result<(), capnp::Error> {
    b.set_id(epoch.id);
    let key = epoch
        .key()
        .map_err(|e| capnp::Error::failed(format!("storage epoch key: {e}")))?;
    b.set_key(&key[..]);
    Ok(())
}
