//! The directory client a host uses: look-ups checked against the pinned directory key,
//! registration, sealed-token login, and the authenticated session operations.
//!
//! RPC capabilities are `!Send`: use a client inside a `tokio::task::LocalSet`.

use smvs_crypto::{
    AgreementKeyPair, AgreementPublicKey, CryptoError, IdentityBundle, IdentityKeys, SignContext,
    Signature, SigningPublicKey,
};
use smvs_schema::canonical::{self, RegistrationFields};
use smvs_schema::common_capnp::signed_record;
use smvs_schema::directory_capnp::{directory, session};
use smvs_schema::{HostAddress, Username};
use zeroize::Zeroizing;

use crate::error::{ClientError, ErrorCode};
use crate::record::{
    verify_record, write_identity, write_transport, TransportCertificate, VerifiedRecord,
};
use crate::transparency::{LogChain, LogHead, LogPosition, LoggedValue, LoggedVersion};

/// A registration request, signed by the identity it registers.
#[derive(Debug, Clone)]
pub struct Registration {
    pub username: Username,
    pub identity: IdentityBundle,
    pub transport_key: AgreementPublicKey,
    pub transport_certificate: Signature,
    pub transport_not_after: i64,
    pub host_address: HostAddress,
    pub timestamp: i64,
    pub signature: Signature,
}

impl Registration {
    /// The bytes the identity must sign (context `DirectoryRegistration`); keyguard builds and
    /// signs them itself (`signRegistration`).
    pub fn signed_bytes(&self, directory_key: &SigningPublicKey) -> Vec<u8> {
        RegistrationFields {
            directory_key,
            username: &self.username,
            identity: &self.identity,
            transport_key: &self.transport_key,
            transport_certificate: self.transport_certificate.as_bytes(),
            transport_not_after: self.transport_not_after,
            host_address: Some(&self.host_address),
            timestamp: self.timestamp,
        }
        .to_bytes()
    }

    /// Reads a registration request off the wire (keyguard's answer to `signRegistration`),
    /// checking lengths and that the identity bundle verifies; the directory checks the rest.
    pub fn read(
        r: smvs_schema::directory_capnp::register_request::Reader<'_>,
    ) -> Result<Registration, String> {
        let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, String> {
            t.map_err(|e| e.to_string())?
                .to_string()
                .map_err(|e| e.to_string())
        };
        let transport = TransportCertificate::read(r.get_transport().map_err(|e| e.to_string())?)?;
        Ok(Registration {
            username: Username::parse(&text(r.get_username())?).map_err(|e| e.to_string())?,
            identity: crate::record::read_identity(r.get_identity().map_err(|e| e.to_string())?)?,
            transport_key: transport.key,
            transport_certificate: transport.certificate,
            transport_not_after: transport.not_after,
            host_address: HostAddress::parse(&text(r.get_host_address())?)
                .map_err(|e| e.to_string())?,
            timestamp: r.get_timestamp(),
            signature: Signature::from_bytes(r.get_signature().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?,
        })
    }

    /// Writes the request (what keyguard answers `signRegistration` with).
    pub fn write(&self, mut r: smvs_schema::directory_capnp::register_request::Builder<'_>) {
        r.set_username(self.username.as_str());
        write_identity(r.reborrow().init_identity(), &self.identity);
        write_transport(
            r.reborrow().init_transport(),
            &self.transport_key,
            &self.transport_certificate,
            self.transport_not_after,
        );
        r.set_host_address(self.host_address.as_str());
        r.set_timestamp(self.timestamp);
        r.set_signature(self.signature.as_bytes());
    }

    /// Builds and signs a registration with identity keys held in this process (keyguard,
    /// tests, demo, benchmarks). The transport certificate is valid for the standard lifetime
    /// from `timestamp`.
    pub fn sign_locally(
        directory_key: &SigningPublicKey,
        username: Username,
        identity: &IdentityKeys,
        transport_key: AgreementPublicKey,
        host_address: HostAddress,
        timestamp: i64,
    ) -> Registration {
        let transport = TransportCertificate::sign_locally(
            identity,
            &username,
            transport_key,
            timestamp.saturating_add(canonical::TRANSPORT_CERTIFICATE_LIFETIME_MS),
        );
        Self::sign_with_certificate(
            directory_key,
            username,
            identity,
            transport,
            host_address,
            timestamp,
        )
    }

    /// As [`Registration::sign_locally`], with a transport certificate made elsewhere (an
    /// expired one, in tests).
    pub fn sign_with_certificate(
        directory_key: &SigningPublicKey,
        username: Username,
        identity: &IdentityKeys,
        transport: TransportCertificate,
        host_address: HostAddress,
        timestamp: i64,
    ) -> Registration {
        let mut registration = Registration {
            signature: transport.certificate,
            username,
            identity: identity.bundle(),
            transport_key: transport.key,
            transport_certificate: transport.certificate,
            transport_not_after: transport.not_after,
            host_address,
            timestamp,
        };
        registration.signature = identity.signing.sign(
            SignContext::DirectoryRegistration,
            &registration.signed_bytes(directory_key),
        );
        registration
    }
}

/// A key rotation request, signed by the identity being replaced.
#[derive(Debug, Clone)]
pub struct Rotation {
    pub identity: IdentityBundle,
    pub transport_key: AgreementPublicKey,
    pub transport_certificate: Signature,
    pub transport_not_after: i64,
    pub timestamp: i64,
    pub signature: Signature,
}

impl Rotation {
    /// Signs a rotation from `old` to `new` with both held in this process: the operator's
    /// `smvs-keyguard rotate` (which reads the key files itself) and tests. Keyguard's socket
    /// never makes one.
    pub fn sign_locally(
        directory_key: &SigningPublicKey,
        username: &Username,
        old: &IdentityKeys,
        new: &IdentityKeys,
        transport_key: AgreementPublicKey,
        timestamp: i64,
    ) -> Rotation {
        let transport = TransportCertificate::sign_locally(
            new,
            username,
            transport_key,
            timestamp.saturating_add(canonical::TRANSPORT_CERTIFICATE_LIFETIME_MS),
        );
        let identity = new.bundle();
        let bytes = RegistrationFields {
            directory_key,
            username,
            identity: &identity,
            transport_key: &transport.key,
            transport_certificate: transport.certificate.as_bytes(),
            transport_not_after: transport.not_after,
            host_address: None,
            timestamp,
        }
        .to_bytes();
        Rotation {
            identity,
            transport_key: transport.key,
            transport_certificate: transport.certificate,
            transport_not_after: transport.not_after,
            timestamp,
            signature: old.signing.sign(SignContext::KeyRotation, &bytes),
        }
    }
}

/// A deregistration, signed by the identity being removed (see
/// `smvs_schema::canonical::deregistration`).
#[derive(Debug, Clone)]
pub struct Deregistration {
    pub serial: u64,
    pub timestamp: i64,
    pub signature: Signature,
}

impl Deregistration {
    /// Signs the deletion of `username`'s record as it stands at `serial`, with the identity
    /// held in this process (the operator's `smvs-keyguard deregister`, tests).
    pub fn sign_locally(
        directory_key: &SigningPublicKey,
        username: &Username,
        identity: &IdentityKeys,
        serial: u64,
        timestamp: i64,
    ) -> Deregistration {
        Deregistration {
            serial,
            timestamp,
            signature: identity.signing.sign(
                SignContext::Deregistration,
                &canonical::deregistration(directory_key, username, serial, timestamp),
            ),
        }
    }
}

/// A connection to one directory whose key is pinned.
pub struct DirectoryClient {
    directory: directory::Client,
    directory_key: SigningPublicKey,
}

fn check(
    signed: capnp::Result<signed_record::Reader<'_>>,
    key: &SigningPublicKey,
    expected: Option<&Username>,
) -> Result<VerifiedRecord, ClientError> {
    verify_record(signed?, key, expected).map_err(ClientError::Verification)
}

/// What a directory answers for a name.
#[derive(Debug, Clone)]
// Short-lived (one per look-up, unpacked at once): boxing the record would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum LookupAnswer {
    Record(VerifiedRecord),
    /// The user moved to another directory; their identity signed where to.
    Moved(crate::record::MovedStatement),
}

/// The error a plain look-up gives for a user who moved away.
fn moved_away(moved: &crate::record::MovedStatement) -> ClientError {
    ClientError::Refused {
        code: ErrorCode::NotFound,
        message: format!(
            "{} moved to the directory at {} (key {})",
            moved.username,
            moved.to_address,
            moved.to.to_hex()
        ),
    }
}

impl DirectoryClient {
    /// Connects to `addr` and proves, in the Noise handshake, that the server holds the private
    /// half of `directory_key`. `local` is this side's Noise static key (a host's transport key).
    pub async fn connect(
        addr: &str,
        directory_key: SigningPublicKey,
        local: &AgreementKeyPair,
    ) -> Result<DirectoryClient, ClientError> {
        let expected = Self::expected_key(&directory_key)?;
        let channel = smvs_transport::connect(
            addr,
            local,
            smvs_transport::DIRECTORY_PROLOGUE,
            Some(&expected),
        )
        .await?;
        Ok(Self::over(channel, directory_key))
    }

    /// As [`DirectoryClient::connect`], over a TCP stream already opened (through a SOCKS5
    /// proxy, say); `addr` is only for messages.
    pub async fn connect_over(
        tcp: tokio::net::TcpStream,
        addr: &str,
        directory_key: SigningPublicKey,
        local: &AgreementKeyPair,
    ) -> Result<DirectoryClient, ClientError> {
        let expected = Self::expected_key(&directory_key)?;
        let channel = smvs_transport::connect_over(
            tcp,
            addr,
            local,
            smvs_transport::DIRECTORY_PROLOGUE,
            Some(&expected),
        )
        .await?;
        Ok(Self::over(channel, directory_key))
    }

    /// The Noise key the directory must present: the X25519 form of its signing key.
    fn expected_key(directory_key: &SigningPublicKey) -> Result<AgreementPublicKey, ClientError> {
        directory_key
            .to_agreement_public()
            .map_err(|e| ClientError::Local(format!("pinned directory key: {e}")))
    }

    fn over(
        channel: smvs_transport::SecureChannel,
        directory_key: SigningPublicKey,
    ) -> DirectoryClient {
        let (system, directory) = smvs_transport::rpc::client::<directory::Client>(channel);
        tokio::task::spawn_local(async move {
            if let Err(e) = system.await {
                tracing::debug!(error = %e, "directory connection ended");
            }
        });
        DirectoryClient {
            directory,
            directory_key,
        }
    }

    pub fn directory_key(&self) -> SigningPublicKey {
        self.directory_key
    }

    /// The directory's key and clock, as it states them.
    pub async fn info(&self) -> Result<(SigningPublicKey, i64), ClientError> {
        let response = self.directory.info_request().send().promise.await?;
        let r = response.get()?;
        let key = SigningPublicKey::from_bytes(r.get_directory_key()?)
            .map_err(|e| ClientError::Verification(e.to_string()))?;
        Ok((key, r.get_time()))
    }

    /// The key log's roots from epoch `from` to a later signed head (at most 64 epochs on),
    /// checked: the head is this directory's, and the append-only proof holds between them.
    pub async fn log_consistency(&self, from: u64) -> Result<LogChain, ClientError> {
        let mut request = self.directory.log_consistency_request();
        request.get().set_from(from);
        let response = request.send().promise.await?;
        let r = response.get()?;
        let head = signed_head(r.get_head()?, &self.directory_key)?;
        let list = r.get_roots()?;
        if u64::from(list.len()) > crate::transparency::MAX_CONSISTENCY_EPOCHS + 1 {
            return Err(ClientError::Verification(format!(
                "a consistency answer of {} roots",
                list.len()
            )));
        }
        let mut roots = Vec::with_capacity(list.len() as usize);
        for root in list.iter() {
            roots.push(<[u8; 32]>::try_from(root?).map_err(|_| {
                ClientError::Verification("a log root that is not 32 bytes".into())
            })?);
        }
        crate::transparency::verify_consistency(from, roots, head, r.get_proof()?)
            .await
            .map_err(ClientError::Verification)
    }

    pub async fn register(&self, reg: &Registration) -> Result<VerifiedRecord, ClientError> {
        self.register_unchecked(reg, reg.username.as_str(), reg.host_address.as_str())
            .await
    }

    /// Sends `reg` with the username and host address given as raw strings, unparsed. For
    /// testing the directory's own checks; use [`DirectoryClient::register`].
    pub async fn register_unchecked(
        &self,
        reg: &Registration,
        username: &str,
        host_address: &str,
    ) -> Result<VerifiedRecord, ClientError> {
        let mut request = self.directory.register_request();
        {
            let mut r = request.get().init_request();
            r.set_username(username);
            write_identity(r.reborrow().init_identity(), &reg.identity);
            write_transport(
                r.reborrow().init_transport(),
                &reg.transport_key,
                &reg.transport_certificate,
                reg.transport_not_after,
            );
            r.set_host_address(host_address);
            r.set_timestamp(reg.timestamp);
            r.set_signature(reg.signature.as_bytes());
        }
        let response = request.send().promise.await?;
        check(
            response.get()?.get_record(),
            &self.directory_key,
            Some(&reg.username),
        )
    }

    /// The signed record of `username`, checked against the pinned key.
    pub async fn lookup(&self, username: &Username) -> Result<VerifiedRecord, ClientError> {
        match self.lookup_answer(username).await? {
            LookupAnswer::Record(record) => Ok(record),
            LookupAnswer::Moved(moved) => Err(moved_away(&moved)),
        }
    }

    /// The user's record, or the statement of a user who moved to another directory (for
    /// whoever pinned their identity to check and follow).
    pub async fn lookup_answer(&self, username: &Username) -> Result<LookupAnswer, ClientError> {
        let mut request = self.directory.lookup_request();
        request.get().set_username(username.as_str());
        let response = request.send().promise.await?;
        let r = response.get()?;
        if r.has_moved() {
            let moved = crate::record::MovedStatement::read(r.get_moved()?)
                .map_err(ClientError::Verification)?;
            if &moved.username != username || moved.from != self.directory_key {
                return Err(ClientError::Verification(
                    "a moved statement for another user or another directory".into(),
                ));
            }
            let logged = moved.logged().map_err(ClientError::Verification)?;
            self.check_logged(r, username, &logged)?;
            return Ok(LookupAnswer::Moved(moved));
        }
        let mut record = check(r.get_record(), &self.directory_key, Some(username))?;
        record.logged_at = Some(self.check_logged(r, username, &record.logged())?);
        Ok(LookupAnswer::Record(record))
    }

    /// Checks a look-up answer's key-log proof: that the directory's signed head commits to
    /// `logged` as `username`'s latest version. An answer without one is refused: every
    /// directory keeps a log, and one that stops showing it is hiding something.
    fn check_logged(
        &self,
        r: directory::lookup_results::Reader<'_>,
        username: &Username,
        logged: &LoggedValue,
    ) -> Result<LogPosition, ClientError> {
        if !r.has_head() || !r.has_proof() {
            return Err(ClientError::Verification(
                "the answer carries no proof from the directory's key log".into(),
            ));
        }
        let head = signed_head(r.get_head()?, &self.directory_key)?;
        let (in_log, version) = crate::transparency::verify_lookup(&head, username, r.get_proof()?)
            .map_err(ClientError::Verification)?;
        if &in_log != logged {
            return Err(ClientError::Verification(format!(
                "the directory's key log shows another latest version of {username} than the \
                 answer it gave ({}): a record it did not log, or an older one",
                describe(&in_log)
            )));
        }
        Ok(LogPosition { head, version })
    }

    /// Asks for `username`'s record and returns only the answer's size in bytes, checking
    /// nothing: for load generators, which check a sample of their answers with
    /// [`DirectoryClient::lookup`] and must not spend their CPU on the rest. What it asked for
    /// is never seen, so nothing unchecked can be trusted.
    #[doc(hidden)]
    pub async fn lookup_unchecked(&self, username: &Username) -> Result<usize, ClientError> {
        let mut request = self.directory.lookup_request();
        request.get().set_username(username.as_str());
        let response = request.send().promise.await?;
        let r = response.get()?;
        let record = if r.has_record() {
            r.get_record()?.get_record()?.len()
        } else {
            0
        };
        Ok(record + r.get_proof()?.len())
    }

    /// As [`DirectoryClient::lookup`], but a record whose transport certificate expired is
    /// still returned (the rest is checked as always): its owner may still rotate or
    /// deregister it. Never use it to reach someone.
    pub async fn lookup_for_owner(
        &self,
        username: &Username,
    ) -> Result<VerifiedRecord, ClientError> {
        let mut request = self.directory.lookup_request();
        request.get().set_username(username.as_str());
        let response = request.send().promise.await?;
        let r = response.get()?;
        if r.has_moved() {
            // Not "not found": the owner moved away from here (see `lookup_answer`).
            return Err(ClientError::Verification(format!(
                "{username} moved away from this directory"
            )));
        }
        let mut record = crate::record::verify_record_at(
            r.get_record()?,
            &self.directory_key,
            Some(username),
            i64::MIN,
        )
        .map_err(ClientError::Verification)?;
        record.logged_at = Some(self.check_logged(r, username, &record.logged())?);
        Ok(record)
    }

    /// Asks for a sealed token (step one of logging in).
    pub async fn challenge(&self, username: &str) -> Result<Vec<u8>, ClientError> {
        let mut request = self.directory.challenge_request();
        request.get().set_username(username);
        let response = request.send().promise.await?;
        Ok(response.get()?.get_sealed_token()?.to_vec())
    }

    /// Hands a token back (step two).
    pub async fn authenticate(
        &self,
        username: &str,
        token: &[u8],
    ) -> Result<DirectorySession, ClientError> {
        let mut request = self.directory.authenticate_request();
        request.get().set_username(username);
        request.get().set_token(token);
        let response = request.send().promise.await?;
        let session = response.get()?.get_session()?;
        let username = Username::parse(username).map_err(|e| ClientError::Local(e.to_string()))?;
        Ok(DirectorySession {
            session,
            username,
            directory_key: self.directory_key,
        })
    }

    /// The whole login with the token opened elsewhere: challenge, have `open` turn the sealed
    /// token into the 32-byte token (keyguard's `openLoginToken`, which checks that it names
    /// this directory and user), and hand it back.
    pub async fn login_with<F, Fut, E>(
        &self,
        username: &Username,
        open: F,
    ) -> Result<DirectorySession, ClientError>
    where
        F: FnOnce(Vec<u8>) -> Fut,
        Fut: std::future::Future<Output = Result<[u8; 32], E>>,
        E: std::fmt::Display,
    {
        let sealed = self.challenge(username.as_str()).await?;
        let token = open(sealed).await.map_err(|e| {
            ClientError::Local(format!("cannot open the directory's login token: {e}"))
        })?;
        self.authenticate(username.as_str(), &token).await
    }

    /// The whole login: challenge, open the sealed token with `open` (the identity's agreement
    /// key, held in this process), check that it names this directory and user, and hand it
    /// back.
    pub async fn login(
        &self,
        username: &Username,
        open: impl FnOnce(&[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError>,
    ) -> Result<DirectorySession, ClientError> {
        let sealed = self.challenge(username.as_str()).await?;
        let plaintext = open(&sealed).map_err(|_| {
            ClientError::Verification("the token is not sealed to this identity".into())
        })?;
        let (_, token) = canonical::parse_auth_token(&plaintext, &self.directory_key, username)
            .ok_or_else(|| {
                ClientError::Verification("the token names another directory or user".into())
            })?;
        self.authenticate(username.as_str(), &token).await
    }
}

/// What an authenticated user may do.
pub struct DirectorySession {
    session: session::Client,
    username: Username,
    directory_key: SigningPublicKey,
}

impl DirectorySession {
    pub fn username(&self) -> &Username {
        &self.username
    }

    pub async fn update_host_address(
        &self,
        host: &HostAddress,
    ) -> Result<VerifiedRecord, ClientError> {
        let mut request = self.session.update_host_address_request();
        request.get().set_host_address(host.as_str());
        let response = request.send().promise.await?;
        check(
            response.get()?.get_record(),
            &self.directory_key,
            Some(&self.username),
        )
    }

    pub async fn rotate_keys(&self, rotation: &Rotation) -> Result<VerifiedRecord, ClientError> {
        let mut request = self.session.rotate_keys_request();
        {
            let mut r = request.get().init_request();
            write_identity(r.reborrow().init_identity(), &rotation.identity);
            write_transport(
                r.reborrow().init_transport(),
                &rotation.transport_key,
                &rotation.transport_certificate,
                rotation.transport_not_after,
            );
            r.set_timestamp(rotation.timestamp);
            r.set_signature(rotation.signature.as_bytes());
        }
        let response = request.send().promise.await?;
        check(
            response.get()?.get_record(),
            &self.directory_key,
            Some(&self.username),
        )
    }

    /// Replaces the transport key and certificate (a renewal, made by keyguard's
    /// `certifyTransport`).
    pub async fn renew_transport(
        &self,
        transport: &TransportCertificate,
    ) -> Result<VerifiedRecord, ClientError> {
        let mut request = self.session.renew_transport_request();
        transport.write(request.get().init_transport());
        let response = request.send().promise.await?;
        check(
            response.get()?.get_record(),
            &self.directory_key,
            Some(&self.username),
        )
    }

    /// Publishes session v2's keys (keyguard's `sessionKeys`); the directory checks their
    /// signatures against the record's identity.
    pub async fn publish_session_keys(
        &self,
        keys: &crate::record::PublishedSessionKeys,
    ) -> Result<VerifiedRecord, ClientError> {
        let mut request = self.session.publish_session_keys_request();
        keys.write(request.get().init_keys());
        let response = request.send().promise.await?;
        check(
            response.get()?.get_record(),
            &self.directory_key,
            Some(&self.username),
        )
    }

    /// Leaves this directory for the one `statement` names (signed by the identity).
    pub async fn leave(
        &self,
        statement: &crate::record::MovedStatement,
    ) -> Result<(), ClientError> {
        let mut request = self.session.leave_request();
        statement.write(request.get().init_statement());
        request.send().promise.await?;
        Ok(())
    }

    /// Every version of this user's name in the directory's key log, oldest first, and the
    /// signed head the proof holds against (both checked).
    pub async fn key_history(&self) -> Result<(LogHead, Vec<LoggedVersion>), ClientError> {
        let response = self.session.key_history_request().send().promise.await?;
        let r = response.get()?;
        if !r.has_head() || !r.has_proof() {
            return Err(ClientError::Verification(
                "the answer carries no proof from the directory's key log".into(),
            ));
        }
        let head = signed_head(r.get_head()?, &self.directory_key)?;
        let versions = crate::transparency::verify_history(&head, &self.username, r.get_proof()?)
            .map_err(ClientError::Verification)?;
        Ok((head, versions))
    }

    /// Deletes the record; `deregistration` must be signed by the identity.
    pub async fn deregister(&self, deregistration: &Deregistration) -> Result<(), ClientError> {
        let mut request = self.session.deregister_request();
        {
            let mut r = request.get();
            r.set_timestamp(deregistration.timestamp);
            r.set_serial(deregistration.serial);
            r.set_signature(deregistration.signature.as_bytes());
        }
        request.send().promise.await?;
        Ok(())
    }
}

/// What the log shows, in words (no key material beyond a serial).
fn describe(logged: &LoggedValue) -> String {
    match logged {
        LoggedValue::Record { serial, .. } => format!("a record at serial {serial}"),
        LoggedValue::Gone => "deregistered".into(),
        LoggedValue::Moved { .. } => "moved away".into(),
    }
}

/// A log head from an answer, signed by the pinned directory key.
fn signed_head(
    r: smvs_schema::common_capnp::log_head::Reader<'_>,
    directory_key: &SigningPublicKey,
) -> Result<LogHead, ClientError> {
    let head = LogHead::read(r).map_err(ClientError::Verification)?;
    head.verify(directory_key)
        .map_err(ClientError::Verification)?;
    Ok(head)
}
