//! Directory records: how the server signs an answer and how a host checks one.
//!
//! A `SignedRecord` carries the record as serialized Cap'n Proto bytes plus the directory's
//! signature over exactly those bytes, so the check never depends on re-encoding.

use smvs_crypto::{
    AgreementPublicKey, IdentityBundle, SignContext, Signature, SigningKeyPair, SigningPublicKey,
};
use smvs_crypto::{SignedPrekey, XWingPublicKey};
use smvs_schema::canonical;
use smvs_schema::common_capnp::{
    directory_record, identity_bundle, moved_statement, session_keys, signed_prekey, signed_record,
    transport_key,
};
use smvs_schema::{HostAddress, Username};

/// The record format this code writes and accepts.
pub const RECORD_FORMAT: u16 = 1;

/// What the directory knows about one user (and all it knows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub username: Username,
    pub identity: IdentityBundle,
    pub transport_key: AgreementPublicKey,
    pub transport_certificate: Signature,
    /// Unix ms after which the transport certificate is void (signed by it).
    pub transport_not_after: i64,
    pub host_address: HostAddress,
    pub serial: u64,
    /// Session v2's published keys (checked against `identity`); `None`: a v1-only user.
    pub session_keys: Option<PublishedSessionKeys>,
}

/// How far ahead a published prekey's expiry may be (keyguard's prekeys live 14 days).
pub const PREKEY_MAX_AHEAD_S: i64 = 30 * 24 * 3600;

/// Session v2's public keys as a record carries them (docs/protocol.md, 3.4): the identity's
/// X-Wing key with the identity's signature, and the current signed prekey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishedSessionKeys {
    pub kem: XWingPublicKey,
    pub kem_signature: Signature,
    pub prekey: SignedPrekey,
}

/// Bytes of [`PublishedSessionKeys::to_bytes`]: kem, its signature, then the prekey's id,
/// expiry, X25519 key, X-Wing key and signature.
const SESSION_KEYS_LEN: usize = 1216 + 64 + 4 + 8 + 32 + 1216 + 64;

impl PublishedSessionKeys {
    /// Both signatures are `identity`'s (the prekey's expiry is not judged here).
    pub fn verify(&self, identity: &IdentityBundle) -> Result<(), String> {
        smvs_crypto::verify_identity_kem(identity, &self.kem, &self.kem_signature)
            .map_err(|_| "the X-Wing key is not signed by the identity".to_string())?;
        self.prekey
            .verify(identity)
            .map_err(|_| "the prekey is not signed by the identity".to_string())
    }

    /// Reads them off the wire (lengths checked, the signatures not yet).
    pub fn read(r: session_keys::Reader<'_>) -> Result<Self, String> {
        let p = r.get_prekey().map_err(|e| e.to_string())?;
        Ok(PublishedSessionKeys {
            kem: XWingPublicKey::from_bytes(r.get_kem().map_err(|e| e.to_string())?)
                .map_err(|e| format!("X-Wing key: {e}"))?,
            kem_signature: Signature::from_bytes(r.get_kem_signature().map_err(|e| e.to_string())?)
                .map_err(|e| format!("X-Wing key signature: {e}"))?,
            prekey: read_prekey(p)?,
        })
    }

    pub fn write(&self, mut b: session_keys::Builder<'_>) {
        b.set_kem(self.kem.as_bytes());
        b.set_kem_signature(self.kem_signature.as_bytes());
        write_prekey(b.init_prekey(), &self.prekey);
    }

    /// A flat encoding, for the directory's store.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SESSION_KEYS_LEN);
        out.extend_from_slice(self.kem.as_bytes());
        out.extend_from_slice(self.kem_signature.as_bytes());
        out.extend_from_slice(&self.prekey.id.to_be_bytes());
        out.extend_from_slice(&self.prekey.expires.to_be_bytes());
        out.extend_from_slice(self.prekey.dh.as_bytes());
        out.extend_from_slice(self.prekey.kem.as_bytes());
        out.extend_from_slice(self.prekey.signature.as_bytes());
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        if bytes.len() != SESSION_KEYS_LEN {
            return Err(format!("session keys of {} bytes", bytes.len()));
        }
        let mut at = 0;
        let mut take = |n: usize| {
            let part = &bytes[at..at + n];
            at += n;
            part
        };
        let kem = XWingPublicKey::from_bytes(take(1216)).map_err(|e| e.to_string())?;
        let kem_signature = Signature::from_bytes(take(64)).map_err(|e| e.to_string())?;
        let id = u32::from_be_bytes(take(4).try_into().map_err(|_| "id")?);
        let expires = i64::from_be_bytes(take(8).try_into().map_err(|_| "expires")?);
        let dh = AgreementPublicKey::from_bytes(take(32)).map_err(|e| e.to_string())?;
        let prekey_kem = XWingPublicKey::from_bytes(take(1216)).map_err(|e| e.to_string())?;
        let signature = Signature::from_bytes(take(64)).map_err(|e| e.to_string())?;
        Ok(PublishedSessionKeys {
            kem,
            kem_signature,
            prekey: SignedPrekey {
                id,
                expires,
                dh,
                kem: prekey_kem,
                signature,
            },
        })
    }
}

/// Reads a signed prekey off the wire (lengths checked, the signature not yet).
pub fn read_prekey(p: signed_prekey::Reader<'_>) -> Result<SignedPrekey, String> {
    Ok(SignedPrekey {
        id: p.get_id(),
        expires: p.get_expires(),
        dh: AgreementPublicKey::from_bytes(p.get_dh().map_err(|e| e.to_string())?)
            .map_err(|e| format!("prekey: {e}"))?,
        kem: XWingPublicKey::from_bytes(p.get_kem().map_err(|e| e.to_string())?)
            .map_err(|e| format!("prekey: {e}"))?,
        signature: Signature::from_bytes(p.get_signature().map_err(|e| e.to_string())?)
            .map_err(|e| format!("prekey: {e}"))?,
    })
}

pub fn write_prekey(mut b: signed_prekey::Builder<'_>, prekey: &SignedPrekey) {
    b.set_id(prekey.id);
    b.set_expires(prekey.expires);
    b.set_dh(prekey.dh.as_bytes());
    b.set_kem(prekey.kem.as_bytes());
    b.set_signature(prekey.signature.as_bytes());
}

/// A record whose directory signature, identity binding and transport certificate (signature
/// and expiry) have all been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRecord {
    pub user: UserRecord,
    pub issued_at: i64,
    pub directory_key: SigningPublicKey,
    /// The signed bytes and signature, to show to others or store as evidence.
    pub record_bytes: Vec<u8>,
    pub signature: Signature,
    /// For a look-up's answer, where the directory's key log holds this record as the name's
    /// latest version: the signed head and the version number (`crate::transparency`).
    pub logged_at: Option<crate::transparency::LogPosition>,
}

pub(crate) fn write_identity(mut b: identity_bundle::Builder<'_>, id: &IdentityBundle) {
    b.set_signing_key(id.signing_key.as_bytes());
    b.set_agreement_key(id.agreement_key.as_bytes());
    b.set_agreement_signature(id.agreement_signature.as_bytes());
}

pub(crate) fn read_identity(r: identity_bundle::Reader<'_>) -> Result<IdentityBundle, String> {
    IdentityBundle::from_parts(
        r.get_signing_key().map_err(|e| e.to_string())?,
        r.get_agreement_key().map_err(|e| e.to_string())?,
        r.get_agreement_signature().map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())
}

/// A transport key with the identity's certificate for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportCertificate {
    pub key: AgreementPublicKey,
    pub certificate: Signature,
    /// Unix ms after which the certificate is void.
    pub not_after: i64,
}

impl TransportCertificate {
    /// Reads one off the wire (lengths checked, the signature not yet).
    pub fn read(r: transport_key::Reader<'_>) -> Result<Self, String> {
        Ok(TransportCertificate {
            key: AgreementPublicKey::from_bytes(r.get_key().map_err(|e| e.to_string())?)
                .map_err(|e| format!("transport key: {e}"))?,
            certificate: Signature::from_bytes(r.get_certificate().map_err(|e| e.to_string())?)
                .map_err(|e| format!("transport certificate: {e}"))?,
            not_after: r.get_not_after(),
        })
    }

    pub fn write(&self, b: transport_key::Builder<'_>) {
        write_transport(b, &self.key, &self.certificate, self.not_after)
    }

    /// Makes one with identity keys held in this process (operator commands, tests).
    pub fn sign_locally(
        identity: &smvs_crypto::IdentityKeys,
        username: &Username,
        key: AgreementPublicKey,
        not_after: i64,
    ) -> Self {
        TransportCertificate {
            key,
            certificate: identity.signing.sign(
                SignContext::TransportCertificate,
                &canonical::transport_certificate(username, &key, not_after),
            ),
            not_after,
        }
    }
}

pub(crate) fn write_transport(
    mut b: transport_key::Builder<'_>,
    key: &AgreementPublicKey,
    cert: &Signature,
    not_after: i64,
) {
    b.set_key(key.as_bytes());
    b.set_certificate(cert.as_bytes());
    b.set_not_after(not_after);
}

/// Why a transport certificate is not good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateProblem {
    /// Not signed by the identity for this user, key and expiry.
    NotCertified,
    /// Signed, but its time is over.
    Expired { not_after: i64 },
}

impl std::fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertificateProblem::NotCertified => {
                f.write_str("the transport key is not certified by the identity")
            }
            CertificateProblem::Expired { not_after } => write!(
                f,
                "the transport key's certificate expired at {not_after} (Unix ms); its host \
                 renews it when it starts"
            ),
        }
    }
}

/// Checks that `identity` vouches for `key` as `username`'s transport key until `not_after`,
/// and that `now` (Unix ms) is not past it.
pub fn verify_transport_certificate(
    username: &Username,
    identity: &IdentityBundle,
    key: &AgreementPublicKey,
    cert: &Signature,
    not_after: i64,
    now: i64,
) -> Result<(), CertificateProblem> {
    identity
        .signing_key
        .verify(
            SignContext::TransportCertificate,
            &canonical::transport_certificate(username, key, not_after),
            cert,
        )
        .map_err(|_| CertificateProblem::NotCertified)?;
    if now > not_after {
        return Err(CertificateProblem::Expired { not_after });
    }
    Ok(())
}

/// Serializes and signs `user` as issued now.
pub fn sign_record(
    key: &SigningKeyPair,
    user: &UserRecord,
    issued_at: i64,
    out: signed_record::Builder<'_>,
) {
    let (bytes, signature) = signed_record(key, user, issued_at);
    let mut out = out;
    out.set_record(&bytes);
    out.set_signature(signature.as_bytes());
}

/// `user`'s record as of `issued_at`, as the directory signs it: the bytes and the signature.
pub fn signed_record(
    key: &SigningKeyPair,
    user: &UserRecord,
    issued_at: i64,
) -> (Vec<u8>, Signature) {
    let bytes = encode_record(user, issued_at, &key.public());
    let signature = key.sign(SignContext::DirectoryRecord, &bytes);
    (bytes, signature)
}

/// `user` as record bytes, naming `signer` as the key that vouches for it.
fn encode_record(user: &UserRecord, issued_at: i64, signer: &SigningPublicKey) -> Vec<u8> {
    let mut message = capnp::message::Builder::new_default();
    {
        let mut r = message.init_root::<directory_record::Builder<'_>>();
        r.set_format_version(RECORD_FORMAT);
        r.set_username(user.username.as_str());
        write_identity(r.reborrow().init_identity(), &user.identity);
        write_transport(
            r.reborrow().init_transport(),
            &user.transport_key,
            &user.transport_certificate,
            user.transport_not_after,
        );
        r.set_host_address(user.host_address.as_str());
        r.set_serial(user.serial);
        r.set_issued_at(issued_at);
        r.set_directory_key(signer.as_bytes());
        if let Some(keys) = &user.session_keys {
            keys.write(r.reborrow().init_session_keys());
        }
    }
    capnp::serialize::write_message_to_words(&message)
}

/// Checks a signed record against the pinned directory key and the name that was asked for,
/// now: a record whose transport certificate expired is refused.
pub fn verify_record(
    signed: signed_record::Reader<'_>,
    directory_key: &SigningPublicKey,
    expected: Option<&Username>,
) -> Result<VerifiedRecord, String> {
    verify_record_at(signed, directory_key, expected, crate::clock::now_ms())
}

/// [`verify_record`] at the given time (Unix ms).
pub fn verify_record_at(
    signed: signed_record::Reader<'_>,
    directory_key: &SigningPublicKey,
    expected: Option<&Username>,
    now: i64,
) -> Result<VerifiedRecord, String> {
    let bytes = signed.get_record().map_err(|e| e.to_string())?;
    let signature = Signature::from_bytes(signed.get_signature().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    directory_key
        .verify(SignContext::DirectoryRecord, bytes, &signature)
        .map_err(|_| "the record is not signed by the pinned directory key".to_string())?;
    signed_record_of(bytes, &signature, directory_key, expected, now)
}

/// A record whose signature by `signer` was checked, read ([`parse_record`]) and kept with
/// that signature.
fn signed_record_of(
    bytes: &[u8],
    signature: &Signature,
    signer: &SigningPublicKey,
    expected: Option<&Username>,
    now: i64,
) -> Result<VerifiedRecord, String> {
    let (user, issued_at) = parse_record(bytes, signer, expected, now)?;
    Ok(VerifiedRecord {
        user,
        issued_at,
        directory_key: *signer,
        record_bytes: bytes.to_vec(),
        signature: *signature,
        logged_at: None,
    })
}

/// Reads record bytes (a flat Cap'n Proto message) and hands `read` the record.
fn read_record<T>(
    bytes: &[u8],
    read: impl FnOnce(directory_record::Reader<'_>) -> Result<T, String>,
) -> Result<T, String> {
    let mut slice = bytes;
    let message =
        capnp::serialize::read_message_from_flat_slice(&mut slice, smvs_schema::reader_options())
            .map_err(|e| e.to_string())?;
    read(message.get_root().map_err(|e| e.to_string())?)
}

/// Reads record bytes whose signature was checked: the record must name `signer` and (when
/// given) the name `expected`, and its transport certificate must hold at `now`. Returns the
/// user and when the record was issued.
fn parse_record(
    bytes: &[u8],
    signer_key: &SigningPublicKey,
    expected: Option<&Username>,
    now: i64,
) -> Result<(UserRecord, i64), String> {
    read_record(bytes, |r| read_user(r, signer_key, expected, now))
}

/// [`parse_record`] of a record read.
fn read_user(
    r: directory_record::Reader<'_>,
    signer_key: &SigningPublicKey,
    expected: Option<&Username>,
    now: i64,
) -> Result<(UserRecord, i64), String> {
    if r.get_format_version() != RECORD_FORMAT {
        return Err(format!("unknown record format {}", r.get_format_version()));
    }
    let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, String> {
        t.map_err(|e| e.to_string())?
            .to_string()
            .map_err(|e| e.to_string())
    };
    let username = Username::parse(&text(r.get_username())?).map_err(|e| e.to_string())?;
    if let Some(expected) = expected {
        if &username != expected {
            return Err(format!("asked for {expected}, got a record for {username}"));
        }
    }
    let signer = SigningPublicKey::from_bytes(r.get_directory_key().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    if &signer != signer_key {
        return Err("the record names another directory".into());
    }
    let identity = read_identity(r.get_identity().map_err(|e| e.to_string())?)?;
    // An identity address is the identity: whoever signs the record (a directory, or anyone
    // who introduces it), it must give the name the key the name holds.
    if username.is_identity_address()
        && smvs_crypto::parse_identity_address(username.as_str()).ok() != Some(identity.signing_key)
    {
        return Err(format!(
            "the record gives {username} another identity than the one its address names"
        ));
    }
    let transport = TransportCertificate::read(r.get_transport().map_err(|e| e.to_string())?)?;
    verify_transport_certificate(
        &username,
        &identity,
        &transport.key,
        &transport.certificate,
        transport.not_after,
        now,
    )
    .map_err(|problem| problem.to_string())?;
    let host_address =
        HostAddress::parse(&text(r.get_host_address())?).map_err(|e| e.to_string())?;
    // Checked again here: a host trusts the directory for names and addresses, not for
    // signatures it can check itself.
    let session_keys = if r.has_session_keys() {
        let keys = PublishedSessionKeys::read(r.get_session_keys().map_err(|e| e.to_string())?)?;
        keys.verify(&identity)?;
        Some(keys)
    } else {
        None
    };
    Ok((
        UserRecord {
            username,
            identity,
            transport_key: transport.key,
            transport_certificate: transport.certificate,
            transport_not_after: transport.not_after,
            host_address,
            serial: r.get_serial(),
            session_keys,
        },
        r.get_issued_at(),
    ))
}

/// The most a BEP 44 value may hold: a host record in the DHT carries no session v2 keys
/// (they are 2.5 kB), so a user found there speaks session v1.
pub const MAX_DHT_RECORD: usize = 1000;

/// How far ahead of the clock a DHT record's sequence (its serial, Unix ms) may be. Keyguard
/// signs none further, and hosts refuse them: a record signed with a huge sequence would
/// outrank every later one for good (nodes keep the highest), so a host that was broken into
/// once could otherwise take its user's address away for ever.
pub const MAX_DHT_SEQ_AHEAD_MS: i64 = 24 * 3600 * 1000;

/// A host's record for the DHT: `user` (without session keys) as record bytes that name the
/// identity itself as the key vouching for them; the identity signs them with
/// `SigningKeyPair::sign_dht_record` at sequence `user.serial`. The name must be the
/// identity's address.
pub fn dht_record_value(user: &UserRecord, issued_at: i64) -> Result<Vec<u8>, String> {
    if user.username.as_str() != smvs_crypto::identity_address(&user.identity.signing_key) {
        return Err("a DHT record is of the identity's own address".into());
    }
    let mut user = user.clone();
    user.session_keys = None;
    let bytes = encode_record(&user, issued_at, &user.identity.signing_key);
    if bytes.len() > MAX_DHT_RECORD {
        return Err(format!(
            "a DHT record of {} bytes is more than {MAX_DHT_RECORD}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// What keyguard checks before its identity signs `value` for the DHT at `seq`: the record
/// is `identity`'s own, under its own address, with `seq` as its serial, and the transport
/// certificate in it holds at `now` (keyguard made it). Keyguard signs nothing else this way.
pub fn check_own_dht_record(
    identity: &IdentityBundle,
    value: &[u8],
    seq: i64,
    now: i64,
) -> Result<UserRecord, String> {
    if value.len() > MAX_DHT_RECORD {
        return Err(format!("a DHT record of {} bytes", value.len()));
    }
    let name = Username::parse(&smvs_crypto::identity_address(&identity.signing_key))
        .map_err(|e| e.to_string())?;
    let (user, _) = parse_record(value, &identity.signing_key, Some(&name), now)?;
    if &user.identity != identity {
        return Err("the record holds another identity".into());
    }
    if i64::try_from(user.serial).ok() != Some(seq) || seq <= 0 {
        return Err("the record's serial is not its sequence number".into());
    }
    if seq > now.saturating_add(MAX_DHT_SEQ_AHEAD_MS) {
        return Err(format!(
            "the record's serial {seq} is more than a day ahead of the clock ({now})"
        ));
    }
    Ok(user)
}

/// Checks a record found in the DHT for the identity address `name`, at `now`: the identity
/// the address names signed it (BEP 44, at sequence `seq`), it is that identity's record of
/// itself at that address, its serial is `seq`, and its transport certificate holds.
pub fn verify_dht_record_at(
    name: &Username,
    value: &[u8],
    seq: i64,
    signature: &Signature,
    now: i64,
) -> Result<VerifiedRecord, String> {
    let key = smvs_crypto::parse_identity_address(name.as_str()).map_err(|e| e.to_string())?;
    if value.len() > MAX_DHT_RECORD {
        return Err(format!("a DHT record of {} bytes", value.len()));
    }
    key.verify_dht_record(seq, value, signature)
        .map_err(|_| format!("the record is not signed by the identity {name} names"))?;
    let record = signed_record_of(value, signature, &key, Some(name), now)?;
    let user = &record.user;
    if user.identity.signing_key != key {
        return Err(format!(
            "the record holds another identity than {name} names"
        ));
    }
    if i64::try_from(user.serial).ok() != Some(seq) {
        return Err(format!(
            "the record's serial {} is not its sequence number {seq}",
            user.serial
        ));
    }
    if seq > now.saturating_add(MAX_DHT_SEQ_AHEAD_MS) {
        return Err(format!(
            "the record's serial {seq} is more than a day ahead of this host's clock"
        ));
    }
    Ok(record)
}

/// Checks signed record bytes kept as evidence or handed on in an introduction, at `now`:
/// a record of an identity address is checked as the DHT's (the identity signed it, BEP 44),
/// any other as a directory's, signed by `signer` (any directory: whoever hands it on vouches
/// for it).
pub fn verify_signed_record_at(
    bytes: &[u8],
    signature: &Signature,
    signer: &SigningPublicKey,
    now: i64,
) -> Result<VerifiedRecord, String> {
    let (username, serial) = read_record(bytes, |r| {
        let name = r
            .get_username()
            .map_err(|e| e.to_string())?
            .to_str()
            .map_err(|e| e.to_string())?;
        Ok((
            Username::parse(name).map_err(|e| e.to_string())?,
            r.get_serial(),
        ))
    })?;
    if username.is_identity_address() {
        let seq = i64::try_from(serial).map_err(|_| format!("a serial of {serial}"))?;
        return verify_dht_record_at(&username, bytes, seq, signature, now);
    }
    signer
        .verify(SignContext::DirectoryRecord, bytes, signature)
        .map_err(|_| "the record is not signed by the directory it names".to_string())?;
    signed_record_of(bytes, signature, signer, None, now)
}

impl VerifiedRecord {
    /// What the directory's key log must hold as this record's version.
    pub fn logged(&self) -> crate::transparency::LoggedValue {
        crate::transparency::LoggedValue::Record {
            identity: self.user.identity.signing_key,
            serial: self.user.serial,
        }
    }

    /// A JSON view for people and scripts (`smvs-demo`, `smvsctl --json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "username": self.user.username.as_str(),
            "signing_key": self.user.identity.signing_key.to_hex(),
            "agreement_key": self.user.identity.agreement_key.to_hex(),
            "transport_key": self.user.transport_key.to_hex(),
            "transport_not_after_ms": self.user.transport_not_after,
            "host_address": self.user.host_address.as_str(),
            "serial": self.user.serial,
            "issued_at_ms": self.issued_at,
            "directory_key": self.directory_key.to_hex(),
            "record_signature": hex_sig(&self.signature),
        })
    }
}

fn hex_sig(s: &Signature) -> String {
    s.as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// A user's statement that they left one directory for another (`Directory.lookup` answers
/// it in place of the record). The signature is the identity's: only someone who pinned that
/// identity can take it as the user's word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MovedStatement {
    pub username: Username,
    /// The key of the directory left.
    pub from: SigningPublicKey,
    /// The key of the directory moved to, and where it is (HOST:PORT).
    pub to: SigningPublicKey,
    pub to_address: String,
    /// Unix ms.
    pub issued_at: i64,
    pub signature: Signature,
}

/// The longest directory address a statement may name.
pub const MAX_DIRECTORY_ADDRESS: usize = 255;

impl MovedStatement {
    /// What the key log holds for this statement: the BLAKE2b-256 of its signed bytes.
    pub fn logged(&self) -> Result<crate::transparency::LoggedValue, String> {
        let digest = smvs_crypto::blake2b_256(&self.signed_bytes()).map_err(|e| e.to_string())?;
        Ok(crate::transparency::LoggedValue::Moved { statement: digest })
    }

    /// The bytes the identity signs.
    pub fn signed_bytes(&self) -> Vec<u8> {
        canonical::directory_move(
            &self.username,
            &self.from,
            &self.to,
            &self.to_address,
            self.issued_at,
        )
    }

    /// Whether `identity` made it.
    pub fn verify(&self, identity: &IdentityBundle) -> Result<(), String> {
        identity
            .signing_key
            .verify(
                SignContext::DirectoryMove,
                &self.signed_bytes(),
                &self.signature,
            )
            .map_err(|_| "the moved statement is not signed by the identity".to_string())
    }

    /// Reads one off the wire (lengths checked, the signature not yet).
    pub fn read(r: moved_statement::Reader<'_>) -> Result<Self, String> {
        let e = |e: capnp::Error| e.to_string();
        let name = r
            .get_username()
            .map_err(e)?
            .to_str()
            .map_err(|_| "name is not UTF-8")?;
        let to_address = r
            .get_to_address()
            .map_err(e)?
            .to_str()
            .map_err(|_| "address is not UTF-8")?;
        if to_address.is_empty() || to_address.len() > MAX_DIRECTORY_ADDRESS {
            return Err("the new directory's address is empty or too long".into());
        }
        Ok(MovedStatement {
            username: Username::parse(name).map_err(|e| e.to_string())?,
            from: SigningPublicKey::from_bytes(r.get_from_directory().map_err(e)?)
                .map_err(|e| e.to_string())?,
            to: SigningPublicKey::from_bytes(r.get_to_directory().map_err(e)?)
                .map_err(|e| e.to_string())?,
            to_address: to_address.to_owned(),
            issued_at: r.get_issued_at(),
            signature: Signature::from_bytes(r.get_signature().map_err(e)?)
                .map_err(|e| e.to_string())?,
        })
    }

    pub fn write(&self, mut b: moved_statement::Builder<'_>) {
        b.set_username(self.username.as_str());
        b.set_from_directory(self.from.as_bytes());
        b.set_to_directory(self.to.as_bytes());
        b.set_to_address(self.to_address.as_str());
        b.set_issued_at(self.issued_at);
        b.set_signature(self.signature.as_bytes());
    }

    /// As a flat Cap'n Proto message, for the directory's store.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut message = capnp::message::Builder::new_default();
        self.write(message.init_root());
        capnp::serialize::write_message_to_words(&message)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let mut slice = bytes;
        let message = capnp::serialize::read_message_from_flat_slice(
            &mut slice,
            smvs_schema::reader_options(),
        )
        .map_err(|e| e.to_string())?;
        Self::read(message.get_root().map_err(|e| e.to_string())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smvs_crypto::{AgreementKeyPair, IdentityKeys};

    fn dht_user(identity: &IdentityKeys, serial: u64) -> UserRecord {
        let username =
            Username::parse(&smvs_crypto::identity_address(&identity.signing.public())).unwrap();
        let transport = AgreementKeyPair::generate().unwrap();
        let cert = TransportCertificate::sign_locally(
            identity,
            &username,
            transport.public(),
            i64::MAX / 2,
        );
        UserRecord {
            username,
            identity: identity.bundle(),
            transport_key: cert.key,
            transport_certificate: cert.certificate,
            transport_not_after: cert.not_after,
            host_address: HostAddress::parse("127.0.0.9:7400").unwrap(),
            serial,
            session_keys: None,
        }
    }

    #[test]
    fn a_dht_record_holds_only_with_its_identitys_signature() {
        let alice = IdentityKeys::generate().unwrap();
        let user = dht_user(&alice, 42);
        let value = dht_record_value(&user, 1000).unwrap();
        assert!(value.len() <= MAX_DHT_RECORD);
        let signature = alice.signing.sign_dht_record(42, &value);
        let found = verify_dht_record_at(&user.username, &value, 42, &signature, 2000).unwrap();
        assert!(check_own_dht_record(&alice.bundle(), &value, 42, 2000).is_ok());
        assert!(check_own_dht_record(&alice.bundle(), &value, 41, 2000).is_err());
        assert_eq!(found.user, user);
        assert_eq!(found.directory_key, alice.signing.public());
        // Another sequence number than the serial, or another identity's signature.
        let at_43 = alice.signing.sign_dht_record(43, &value);
        assert!(verify_dht_record_at(&user.username, &value, 43, &at_43, 2000).is_err());
        let mallory = IdentityKeys::generate().unwrap();
        let forged = mallory.signing.sign_dht_record(42, &value);
        assert!(verify_dht_record_at(&user.username, &value, 42, &forged, 2000).is_err());
        // Mallory's own record, asked for under alice's address.
        let theirs = dht_user(&mallory, 42);
        let value = dht_record_value(&theirs, 1000).unwrap();
        let signature = mallory.signing.sign_dht_record(42, &value);
        assert!(verify_dht_record_at(&user.username, &value, 42, &signature, 2000).is_err());
        // A name that is not the identity's own address is not published.
        let mut named = dht_user(&alice, 1);
        named.username = Username::parse("alice").unwrap();
        assert!(dht_record_value(&named, 1000).is_err());
    }

    #[test]
    fn a_dht_record_far_ahead_of_the_clock_is_neither_signed_nor_taken() {
        let alice = IdentityKeys::generate().unwrap();
        let now = 1_000_000;
        let far = now + MAX_DHT_SEQ_AHEAD_MS + 1;
        let user = dht_user(&alice, far as u64);
        let value = dht_record_value(&user, now).unwrap();
        assert!(check_own_dht_record(&alice.bundle(), &value, far, now).is_err());
        let signature = alice.signing.sign_dht_record(far, &value);
        assert!(verify_dht_record_at(&user.username, &value, far, &signature, now).is_err());
        // A day later it is a record like any other.
        assert!(verify_dht_record_at(&user.username, &value, far, &signature, far).is_ok());
    }

    #[test]
    fn a_signed_record_gives_an_identity_address_only_its_own_key() {
        let alice = IdentityKeys::generate().unwrap();
        let mallory = IdentityKeys::generate().unwrap();
        // A "directory" of mallory's signs a record that gives alice's address mallory's
        // identity (as an introduction could carry it): refused, whoever signed it.
        let mut forged = dht_user(&mallory, 5);
        let alice_name =
            Username::parse(&smvs_crypto::identity_address(&alice.signing.public())).unwrap();
        let transport = AgreementKeyPair::generate().unwrap();
        let cert = TransportCertificate::sign_locally(
            &mallory,
            &alice_name,
            transport.public(),
            i64::MAX / 2,
        );
        forged.username = alice_name.clone();
        forged.transport_key = cert.key;
        forged.transport_certificate = cert.certificate;
        let directory = SigningKeyPair::generate().unwrap();
        let bytes = encode_record(&forged, 1000, &directory.public());
        let signature = directory.sign(SignContext::DirectoryRecord, &bytes);
        // Kept or introduced: a record of an identity address holds only as the identity's own.
        let refused = verify_signed_record_at(&bytes, &signature, &directory.public(), 2000);
        assert!(refused.is_err());
        // From a directory's look-up path: its signature holds, the identity does not.
        let refused = parse_record(&bytes, &directory.public(), Some(&alice_name), 2000);
        assert!(refused.unwrap_err().contains("another identity"));
        // Alice's own DHT record, kept as evidence, checks out as hers.
        let user = dht_user(&alice, 7);
        let value = dht_record_value(&user, 1000).unwrap();
        let signature = alice.signing.sign_dht_record(7, &value);
        let kept = verify_signed_record_at(&value, &signature, &alice.signing.public(), 2000);
        assert_eq!(kept.unwrap().user, user);
        // An ordinary name's record signed by a directory still checks as before.
        let mut bob = dht_user(&mallory, 9);
        let bob_name = Username::parse("bob").unwrap();
        let cert = TransportCertificate::sign_locally(
            &mallory,
            &bob_name,
            transport.public(),
            i64::MAX / 2,
        );
        bob.username = bob_name;
        bob.transport_certificate = cert.certificate;
        bob.transport_key = cert.key;
        let bytes = encode_record(&bob, 1000, &directory.public());
        let signature = directory.sign(SignContext::DirectoryRecord, &bytes);
        assert!(verify_signed_record_at(&bytes, &signature, &directory.public(), 2000).is_ok());
        let other = SigningKeyPair::generate().unwrap();
        assert!(verify_signed_record_at(&bytes, &signature, &other.public(), 2000).is_err());
    }
}
