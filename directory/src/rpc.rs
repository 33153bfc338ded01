//! The directory's RPC objects: `DirectoryRpc` (one per connection, anonymous) and `SessionRpc`
//! (the capability an authenticated user gets). Each method checks its limits, parses its
//! input into validated types, asks the store, and signs what it answers.

use std::cell::Cell;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use smvs_crypto::{
    blake2b_256, random_array, seal, AgreementKeyPair, IdentityBundle, SignContext, Signature,
    SigningPublicKey,
};
use smvs_schema::canonical::{self, RegistrationFields};
use smvs_schema::directory_capnp::{directory, register_request, rotate_request, session};
use smvs_schema::{HostAddress, Username};

use crate::clock::now_ms;
use crate::error::{ErrorCode, Refusal};
use crate::record::{
    read_identity, sign_record, verify_transport_certificate, CertificateProblem, MovedStatement,
    PublishedSessionKeys, TransportCertificate, UserRecord, PREKEY_MAX_AHEAD_S,
};
use crate::state::Shared;
use crate::store::{NewKeys, StoreError};
use crate::transparency::{encode_append_only_proof, encode_history_proof};

/// How long a sealed token may be spent.
pub const TOKEN_LIFETIME_MS: i64 = 60_000;
/// How far a signed request's timestamp may be from the directory's clock.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60_000;
/// How long a session capability stays usable.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(600);

fn text<'a>(what: &str, t: capnp::Result<capnp::text::Reader<'a>>) -> Result<&'a str, Refusal> {
    t.map_err(|e| Refusal::new(ErrorCode::BadRequest, format!("{what}: {e}")))?
        .to_str()
        .map_err(|_| Refusal::new(ErrorCode::BadRequest, format!("{what} is not UTF-8")))
}

fn data<'a>(what: &str, d: capnp::Result<&'a [u8]>) -> Result<&'a [u8], Refusal> {
    d.map_err(|e| Refusal::new(ErrorCode::BadRequest, format!("{what}: {e}")))
}

/// A name this directory may hold: an identity address (`smvs:…`) is a name of the DHT's,
/// which no directory hands out or answers for.
fn username(t: capnp::Result<capnp::text::Reader<'_>>) -> Result<Username, Refusal> {
    let name = Username::parse(text("username", t)?)
        .map_err(|e| Refusal::new(ErrorCode::InvalidUsername, e.to_string()))?;
    if name.is_identity_address() {
        return Err(Refusal::new(
            ErrorCode::InvalidUsername,
            "an identity address (smvs:…) is found in the DHT, not registered at a directory",
        ));
    }
    Ok(name)
}

fn host_address(t: capnp::Result<capnp::text::Reader<'_>>) -> Result<HostAddress, Refusal> {
    HostAddress::parse(text("host address", t)?)
        .map_err(|e| Refusal::new(ErrorCode::BadRequest, e.to_string()))
}

/// The digest a token is stored and looked up by. A hashing failure refuses the request: a
/// placeholder digest would be the same for every token.
fn digest(token: &[u8]) -> Result<[u8; 32], Refusal> {
    blake2b_256(token).map_err(Refusal::internal)
}

fn store_refusal(e: StoreError) -> Refusal {
    match e {
        StoreError::Taken => Refusal::new(ErrorCode::Taken, "username is already registered"),
        other => Refusal::internal(other),
    }
}

fn check_timestamp(timestamp: i64) -> Result<(), Refusal> {
    // abs_diff: a timestamp far from now (i64::MIN) must not overflow the subtraction, which
    // panics in a debug build and, wrapped, passes the check in a release one.
    if now_ms().abs_diff(timestamp) > MAX_CLOCK_SKEW_MS.unsigned_abs() {
        return Err(Refusal::new(
            ErrorCode::Stale,
            "request timestamp is more than 5 minutes from the directory's clock",
        ));
    }
    Ok(())
}

/// The keys of a registration or rotation request, each checked against the identity.
pub(crate) fn read_keys(
    name: &Username,
    identity: capnp::Result<smvs_schema::common_capnp::identity_bundle::Reader<'_>>,
    transport: capnp::Result<smvs_schema::common_capnp::transport_key::Reader<'_>>,
) -> Result<(IdentityBundle, TransportCertificate), Refusal> {
    let identity =
        identity.map_err(|e| Refusal::new(ErrorCode::BadRequest, format!("identity: {e}")))?;
    let identity = read_identity(identity).map_err(|e| {
        Refusal::new(
            ErrorCode::BadSignature,
            format!("identity keys do not verify: {e}"),
        )
    })?;
    let transport = read_transport(name, &identity, transport)?;
    Ok((identity, transport))
}

/// A transport key and its certificate, checked against `identity` and the clock: signed,
/// not expired, and not valid for longer than keyguard ever makes one (plus clock skew).
pub(crate) fn read_transport(
    name: &Username,
    identity: &IdentityBundle,
    transport: capnp::Result<smvs_schema::common_capnp::transport_key::Reader<'_>>,
) -> Result<TransportCertificate, Refusal> {
    let transport = transport
        .map_err(|e| Refusal::new(ErrorCode::BadRequest, format!("transport key: {e}")))?;
    let transport = TransportCertificate::read(transport)
        .map_err(|e| Refusal::new(ErrorCode::BadRequest, e))?;
    let now = now_ms();
    verify_transport_certificate(
        name,
        identity,
        &transport.key,
        &transport.certificate,
        transport.not_after,
        now,
    )
    .map_err(|problem| match problem {
        CertificateProblem::NotCertified => Refusal::new(
            ErrorCode::BadSignature,
            "transport key is not certified by the identity",
        ),
        CertificateProblem::Expired { .. } => Refusal::new(
            ErrorCode::Stale,
            "the transport key's certificate has expired",
        ),
    })?;
    let longest = now
        .saturating_add(canonical::TRANSPORT_CERTIFICATE_LIFETIME_MS)
        .saturating_add(MAX_CLOCK_SKEW_MS);
    if transport.not_after > longest {
        return Err(Refusal::new(
            ErrorCode::BadRequest,
            format!(
                "the transport key's certificate is valid for longer than {} days",
                canonical::TRANSPORT_CERTIFICATE_LIFETIME_MS / 86_400_000
            ),
        ));
    }
    Ok(transport)
}

pub(crate) struct DirectoryRpc {
    shared: Arc<Shared>,
    peer: IpAddr,
}

impl DirectoryRpc {
    pub fn new(shared: Arc<Shared>, peer: IpAddr) -> Self {
        DirectoryRpc { shared, peer }
    }

    fn check_registration(&self, req: register_request::Reader<'_>) -> Result<UserRecord, Refusal> {
        check_registration(&self.shared.key.public(), req)
    }
}

/// Reads and checks a registration request for the directory whose key is `directory_key`.
pub fn check_registration(
    directory_key: &SigningPublicKey,
    req: register_request::Reader<'_>,
) -> Result<UserRecord, Refusal> {
    let name = username(req.get_username())?;
    let host = host_address(req.get_host_address())?;
    // The clock first: it costs nothing, and a stale request needs no signature checked.
    let timestamp = req.get_timestamp();
    check_timestamp(timestamp)?;
    let (identity, transport) = read_keys(&name, req.get_identity(), req.get_transport())?;
    let signature = Signature::from_bytes(data("signature", req.get_signature())?)
        .map_err(|e| Refusal::new(ErrorCode::BadRequest, e.to_string()))?;
    let fields = RegistrationFields {
        directory_key,
        username: &name,
        identity: &identity,
        transport_key: &transport.key,
        transport_certificate: transport.certificate.as_bytes(),
        transport_not_after: transport.not_after,
        host_address: Some(&host),
        timestamp,
    };
    identity
        .signing_key
        .verify(
            SignContext::DirectoryRegistration,
            &fields.to_bytes(),
            &signature,
        )
        .map_err(|_| {
            Refusal::new(
                ErrorCode::BadSignature,
                "registration is not signed by the identity",
            )
        })?;
    Ok(UserRecord {
        username: name,
        identity,
        transport_key: transport.key,
        transport_certificate: transport.certificate,
        transport_not_after: transport.not_after,
        host_address: host,
        serial: 0,
        session_keys: None,
    })
}

impl directory::Server for DirectoryRpc {
    async fn register(
        self: Rc<Self>,
        params: directory::RegisterParams,
        mut results: directory::RegisterResults,
    ) -> Result<(), capnp::Error> {
        self.shared.limits.request(self.peer)?;
        let user = {
            let params = params.get()?;
            let req = params.get_request()?;
            self.check_registration(req)?
        };
        self.shared.check_host_address(&user.host_address)?;
        self.shared.limits.registration(self.peer)?;
        let stored = self
            .shared
            .store
            .insert_user(user)
            .await
            .map_err(store_refusal)?;
        // No name in the journal: a deregistered name must leave no trace (it is kept only as
        // a keyed hash).
        tracing::debug!("a user registered");
        self.shared.publish(&stored.username).await;
        sign_record(
            &self.shared.key,
            &stored,
            now_ms(),
            results.get().init_record(),
        );
        Ok(())
    }

    async fn lookup(
        self: Rc<Self>,
        params: directory::LookupParams,
        mut results: directory::LookupResults,
    ) -> Result<(), capnp::Error> {
        self.shared.limits.request(self.peer)?;
        let name = username(params.get()?.get_username())?;
        let answer = self.shared.answer(&name).await?;
        answer.write(&name, results.get())?;
        Ok(())
    }

    async fn challenge(
        self: Rc<Self>,
        params: directory::ChallengeParams,
        mut results: directory::ChallengeResults,
    ) -> Result<(), capnp::Error> {
        self.shared.limits.request(self.peer)?;
        let name = username(params.get()?.get_username())?;
        self.shared.limits.auth(self.peer, name.as_str())?;
        let now = now_ms();
        let expires_at = now + TOKEN_LIFETIME_MS;
        let token: [u8; 32] = random_array();
        let plaintext =
            canonical::auth_token_plaintext(&self.shared.key.public(), &name, expires_at, &token);
        let user = self
            .shared
            .store
            .get_user(&name)
            .await
            .map_err(store_refusal)?;
        // An unknown user gets the same shape of answer after the same amount of work: a sealed
        // box of the same length (to a throw-away key) and one store write.
        let sealed = match user {
            Some(user) => {
                self.shared
                    .store
                    .put_token(digest(&token)?, &name, expires_at, now)
                    .await
                    .map_err(store_refusal)?;
                seal(&user.identity.agreement_key, &plaintext)
            }
            None => {
                // The same write as for a real user (so the same commit and about the same
                // time): the digest of a token nobody will ever see, which expires unused.
                self.shared
                    .store
                    .put_token(digest(&random_array::<32>())?, &name, expires_at, now)
                    .await
                    .map_err(store_refusal)?;
                let throwaway = AgreementKeyPair::generate().map_err(Refusal::internal)?;
                seal(&throwaway.public(), &plaintext)
            }
        }
        .map_err(Refusal::internal)?;
        results.get().set_sealed_token(&sealed);
        Ok(())
    }

    async fn authenticate(
        self: Rc<Self>,
        params: directory::AuthenticateParams,
        mut results: directory::AuthenticateResults,
    ) -> Result<(), capnp::Error> {
        self.shared.limits.request(self.peer)?;
        let failed = || Refusal::new(ErrorCode::AuthFailed, "authentication failed");
        let (name, token) = {
            let params = params.get()?;
            let name = username(params.get_username())?;
            let token: [u8; 32] = params.get_token()?.try_into().map_err(|_| failed())?;
            (name, token)
        };
        let valid = self
            .shared
            .store
            .take_token(digest(&token)?, &name, now_ms())
            .await
            .map_err(store_refusal)?;
        if !valid {
            return Err(failed().into());
        }
        let user = self
            .shared
            .store
            .get_user(&name)
            .await
            .map_err(store_refusal)?
            .ok_or_else(failed)?;
        let session = SessionRpc {
            shared: self.shared.clone(),
            username: name,
            identity: Cell::new(user.identity.signing_key),
            peer: self.peer,
            alive: Cell::new(true),
            expires: Instant::now() + SESSION_LIFETIME,
        };
        results.get().set_session(capnp_rpc::new_client(session));
        Ok(())
    }

    async fn info(
        self: Rc<Self>,
        _: directory::InfoParams,
        mut results: directory::InfoResults,
    ) -> Result<(), capnp::Error> {
        self.shared.limits.request(self.peer)?;
        let mut r = results.get();
        r.set_directory_key(self.shared.key.public().as_bytes());
        r.set_server_version(env!("CARGO_PKG_VERSION"));
        r.set_time(now_ms());
        Ok(())
    }

    async fn log_consistency(
        self: Rc<Self>,
        params: directory::LogConsistencyParams,
        mut results: directory::LogConsistencyResults,
    ) -> Result<(), capnp::Error> {
        self.shared.limits.request(self.peer)?;
        let from = params.get()?.get_from();
        let (grown, head) = self.shared.consistency(from).await?;
        let mut r = results.get();
        head.write(r.reborrow().init_head());
        let mut roots = r.reborrow().init_roots(grown.roots.len() as u32);
        for (i, root) in (0..).zip(&grown.roots) {
            roots.set(i, root);
        }
        if let Some(proof) = &grown.proof {
            r.set_proof(&encode_append_only_proof(proof));
        }
        Ok(())
    }
}

/// The rights of one authenticated user on one connection.
struct SessionRpc {
    shared: Arc<Shared>,
    username: Username,
    /// The identity that logged in. A session speaks for that identity only: if the name is
    /// deregistered and registered again by someone else, the old session is worthless.
    identity: Cell<SigningPublicKey>,
    peer: IpAddr,
    alive: Cell<bool>,
    expires: Instant,
}

impl SessionRpc {
    async fn check(&self) -> Result<(), Refusal> {
        self.shared.limits.request(self.peer)?;
        if !self.alive.get() || Instant::now() > self.expires {
            return Err(Refusal::new(
                ErrorCode::AuthFailed,
                "session has ended; authenticate again",
            ));
        }
        let current = self.current_user().await?;
        if current.identity.signing_key != self.identity.get() {
            return Err(self.gone());
        }
        Ok(())
    }

    /// The record of the user this session acts for (gone: deregistered meanwhile).
    async fn current_user(&self) -> Result<UserRecord, Refusal> {
        self.shared
            .store
            .get_user(&self.username)
            .await
            .map_err(store_refusal)?
            .ok_or_else(|| self.gone())
    }

    fn gone(&self) -> Refusal {
        self.alive.set(false);
        Refusal::new(ErrorCode::AuthFailed, "the account no longer exists")
    }

    async fn check_rotation(&self, req: rotate_request::Reader<'_>) -> Result<NewKeys, Refusal> {
        let (identity, transport) =
            read_keys(&self.username, req.get_identity(), req.get_transport())?;
        let timestamp = req.get_timestamp();
        check_timestamp(timestamp)?;
        let signature = Signature::from_bytes(data("signature", req.get_signature())?)
            .map_err(|e| Refusal::new(ErrorCode::BadRequest, e.to_string()))?;
        let old = self
            .shared
            .store
            .get_user(&self.username)
            .await
            .map_err(store_refusal)?
            .ok_or_else(|| self.gone())?;
        let fields = RegistrationFields {
            directory_key: &self.shared.key.public(),
            username: &self.username,
            identity: &identity,
            transport_key: &transport.key,
            transport_certificate: transport.certificate.as_bytes(),
            transport_not_after: transport.not_after,
            host_address: None,
            timestamp,
        };
        old.identity
            .signing_key
            .verify(SignContext::KeyRotation, &fields.to_bytes(), &signature)
            .map_err(|_| {
                Refusal::new(
                    ErrorCode::BadSignature,
                    "rotation is not signed by the current identity",
                )
            })?;
        Ok(NewKeys {
            current: old.identity.signing_key,
            identity,
            transport_key: transport.key,
            transport_certificate: transport.certificate,
            transport_not_after: transport.not_after,
        })
    }

    /// A deregistration must be signed by the current identity, for this directory, this
    /// user, the record's current serial and a fresh timestamp: a session alone (which whoever
    /// can open the login token gets) is not enough.
    async fn check_deregistration(
        &self,
        params: session::deregister_params::Reader<'_>,
    ) -> Result<(), Refusal> {
        let timestamp = params.get_timestamp();
        check_timestamp(timestamp)?;
        let signature =
            Signature::from_bytes(data("signature", params.get_signature())?).map_err(|e| {
                Refusal::new(
                    ErrorCode::BadSignature,
                    format!("deregistration needs the identity's signature: {e}"),
                )
            })?;
        let current = self.current_user().await?;
        if params.get_serial() != current.serial {
            return Err(Refusal::new(
                ErrorCode::Stale,
                "the deregistration names another serial than the record's current one",
            ));
        }
        let bytes = canonical::deregistration(
            &self.shared.key.public(),
            &self.username,
            current.serial,
            timestamp,
        );
        current
            .identity
            .signing_key
            .verify(SignContext::Deregistration, &bytes, &signature)
            .map_err(|_| {
                Refusal::new(
                    ErrorCode::BadSignature,
                    "deregistration is not signed by the current identity",
                )
            })
    }
}

impl SessionRpc {
    /// A `leave` request's statement, checked: this user, this directory as the one left,
    /// another as the one moved to, dated within the clock skew, signed by the identity.
    async fn check_leave(
        &self,
        params: session::leave_params::Reader<'_>,
    ) -> Result<MovedStatement, Refusal> {
        let bad = |why: String| Refusal::new(ErrorCode::BadRequest, why);
        let statement =
            MovedStatement::read(params.get_statement().map_err(|e| bad(e.to_string()))?)
                .map_err(bad)?;
        check_timestamp(statement.issued_at)?;
        let own = self.shared.key.public();
        if statement.username != self.username || statement.from != own || statement.to == own {
            return Err(bad(
                "the statement must name this user, this directory as the one left, and another"
                    .into(),
            ));
        }
        let current = self.current_user().await?;
        statement
            .verify(&current.identity)
            .map_err(|e| Refusal::new(ErrorCode::BadSignature, e))?;
        Ok(statement)
    }
}

impl session::Server for SessionRpc {
    async fn update_host_address(
        self: Rc<Self>,
        params: session::UpdateHostAddressParams,
        mut results: session::UpdateHostAddressResults,
    ) -> Result<(), capnp::Error> {
        self.check().await?;
        let host = host_address(params.get()?.get_host_address())?;
        self.shared.check_host_address(&host)?;
        let user = self
            .shared
            .store
            .update_host(&self.username, &host)
            .await
            .map_err(store_refusal)?
            .ok_or_else(|| self.gone())?;
        self.shared.publish(&self.username).await;
        sign_record(
            &self.shared.key,
            &user,
            now_ms(),
            results.get().init_record(),
        );
        Ok(())
    }

    async fn rotate_keys(
        self: Rc<Self>,
        params: session::RotateKeysParams,
        mut results: session::RotateKeysResults,
    ) -> Result<(), capnp::Error> {
        self.check().await?;
        let keys = {
            let params = params.get()?;
            self.check_rotation(params.get_request()?).await?
        };
        let user = self
            .shared
            .store
            .replace_keys(&self.username, keys)
            .await
            .map_err(store_refusal)?
            .ok_or_else(|| self.gone())?;
        // The session now speaks for the new identity.
        self.identity.set(user.identity.signing_key);
        smvs_service::security_event!(
            info,
            smvs_service::logging::KEY_CHANGED,
            username = %self.username,
            "identity keys rotated"
        );
        self.shared.publish(&self.username).await;
        sign_record(
            &self.shared.key,
            &user,
            now_ms(),
            results.get().init_record(),
        );
        Ok(())
    }

    async fn renew_transport(
        self: Rc<Self>,
        params: session::RenewTransportParams,
        mut results: session::RenewTransportResults,
    ) -> Result<(), capnp::Error> {
        self.check().await?;
        let current = self.current_user().await?;
        let transport = read_transport(
            &self.username,
            &current.identity,
            params.get()?.get_transport(),
        )?;
        let user = self
            .shared
            .store
            .replace_keys(
                &self.username,
                NewKeys {
                    current: current.identity.signing_key,
                    identity: current.identity,
                    transport_key: transport.key,
                    transport_certificate: transport.certificate,
                    transport_not_after: transport.not_after,
                },
            )
            .await
            .map_err(store_refusal)?
            .ok_or_else(|| self.gone())?;
        tracing::debug!(
            not_after = transport.not_after,
            "a transport certificate was renewed"
        );
        self.shared.publish(&self.username).await;
        sign_record(
            &self.shared.key,
            &user,
            now_ms(),
            results.get().init_record(),
        );
        Ok(())
    }

    async fn publish_session_keys(
        self: Rc<Self>,
        params: session::PublishSessionKeysParams,
        mut results: session::PublishSessionKeysResults,
    ) -> Result<(), capnp::Error> {
        self.check().await?;
        let current = self.current_user().await?;
        let keys = PublishedSessionKeys::read(params.get()?.get_keys()?)
            .map_err(|e| Refusal::new(ErrorCode::BadRequest, e))?;
        keys.verify(&current.identity)
            .map_err(|e| Refusal::new(ErrorCode::BadSignature, e))?;
        let now_s = now_ms() / 1000;
        if keys.prekey.id == 0
            || keys.prekey.expires < now_s
            || keys.prekey.expires > now_s.saturating_add(PREKEY_MAX_AHEAD_S)
        {
            return Err(Refusal::new(
                ErrorCode::Stale,
                "the prekey has expired, or expires too far ahead, or has id 0",
            )
            .into());
        }
        let user = self
            .shared
            .store
            .set_session_keys(&self.username, current.identity.signing_key, keys)
            .await
            .map_err(store_refusal)?
            .ok_or_else(|| self.gone())?;
        tracing::debug!("session keys were published");
        self.shared.publish(&self.username).await;
        sign_record(
            &self.shared.key,
            &user,
            now_ms(),
            results.get().init_record(),
        );
        Ok(())
    }

    async fn deregister(
        self: Rc<Self>,
        params: session::DeregisterParams,
        _: session::DeregisterResults,
    ) -> Result<(), capnp::Error> {
        self.check().await?;
        self.check_deregistration(params.get()?).await?;
        self.shared
            .store
            .delete_user(&self.username)
            .await
            .map_err(store_refusal)?;
        self.alive.set(false);
        tracing::debug!("a user deregistered");
        self.shared.publish(&self.username).await;
        Ok(())
    }

    async fn leave(
        self: Rc<Self>,
        params: session::LeaveParams,
        _: session::LeaveResults,
    ) -> Result<(), capnp::Error> {
        self.check().await?;
        let statement = self.check_leave(params.get()?).await?;
        let moved = self
            .shared
            .store
            .move_user(&self.username, statement.to_bytes())
            .await
            .map_err(store_refusal)?;
        if !moved {
            return Err(Refusal::new(ErrorCode::NotFound, "no record to leave").into());
        }
        self.alive.set(false);
        tracing::debug!("a user moved to another directory");
        self.shared.publish(&self.username).await;
        Ok(())
    }

    async fn key_history(
        self: Rc<Self>,
        _: session::KeyHistoryParams,
        mut results: session::KeyHistoryResults,
    ) -> Result<(), capnp::Error> {
        self.check().await?;
        let (proof, head) = self.shared.history(&self.username).await?;
        let mut answer = results.get();
        head.write(answer.reborrow().init_head());
        answer.set_proof(&encode_history_proof(&proof));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_far_from_now_are_stale_not_an_overflow() {
        for far in [
            i64::MIN,
            i64::MIN + 1,
            i64::MAX,
            0,
            now_ms() - MAX_CLOCK_SKEW_MS - 1,
        ] {
            let refused = check_timestamp(far).err().map(|r| r.code);
            assert_eq!(refused, Some(ErrorCode::Stale), "{far}");
        }
        assert!(check_timestamp(now_ms()).is_ok());
    }

    /// The input the directory_request fuzz target crashed on: a registration whose keys
    /// verified (under the certificate format of the time) and whose timestamp made
    /// `now - timestamp` overflow. The timestamp is now checked first.
    #[test]
    fn the_fuzzers_timestamp_overflow_is_a_stale_refusal() {
        let input =
            include_bytes!("../../fuzz/corpus/directory_request/regression-timestamp-overflow");
        let mut slice = &input[1..];
        let message =
            capnp::serialize::read_message(&mut slice, smvs_schema::reader_options()).unwrap();
        let params = message
            .get_root::<directory::register_params::Reader<'_>>()
            .unwrap();
        let key = smvs_crypto::SigningKeyPair::generate().unwrap().public();
        let refused = check_registration(&key, params.get_request().unwrap()).err();
        assert_eq!(refused.map(|r| r.code), Some(ErrorCode::Stale));
    }
}
