//! Trust: who we are, what the directory says about others, and which identity we pinned for
//! each of them.
//!
//! ```text
//!  commands / outbox / inbox / calls ──► Trust ──► directory (signed records, cached briefly)
//!                                          └────► storage (contacts, sealed)
//! ```
//!
//! Owns: this host's user ([`Me`]), the directory link, the record cache, the contacts cache
//! (written through to storage), and which changed key's safety number the user was shown.
//! Nobody else changes a contact: block, accept a request, accept a changed key and pin on
//! first contact are all methods here, so the rules are written once:
//! - trust on first use pins the identity the directory shows;
//! - a different identity later is recorded as pending, raises `KeyChanged` once, and every
//!   send to that contact is refused until the user accepts it (after seeing its safety number);
//! - a blocked contact is refused before anything of theirs is decrypted;
//! - a contact whose host address is of a local kind (loopback, private, …) is not connected
//!   to unless this host's own address is of that same kind ([`may_connect`]): whoever
//!   connects to a contact's host (the outbox, the call manager) gets it through
//!   [`Trust::trusted_contact`], which applies the rule; only the inbox, which answers on the
//!   link the peer opened, uses [`Trust::pinned_contact`], which does not.
//!
//! Serializes: it lives on the main thread; each method finishes its cache change before it
//! awaits storage, so a reader that runs meanwhile sees the new state (storage runs writes in
//! the order they are queued, so the disk ends in the same state). No borrow is held across an
//! `.await`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use smvs_crypto::{AgreementKeyPair, IdentityBundle, SigningPublicKey};
use smvs_directory::{DirectoryClient, VerifiedRecord};
use smvs_schema::canonical::TRANSPORT_CERTIFICATE_LIFETIME_MS;
use smvs_schema::{AddressKind, ErrorCode, HostAddress, Username};

use crate::error::HostError;
use crate::events::Events;
use crate::guard::Guard;
use crate::model::{Contact, Evidence, HostEvent, PendingKey, Status};
use crate::storage::Storage;

/// How long a directory call may take before the link is considered dead.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a directory answer is reused before asking again. Records are signed, so a cached
/// one is as good as a new one until the user moves or changes keys, which is noticed sooner
/// when it matters: a link that presents another key, or a delivery that failed, asks again
/// (see [`Trust::may_refresh`]). Look-ups are few, so the directory learns little about who
/// talks to whom.
const RECORD_TTL: Duration = Duration::from_secs(600);
/// The least time between two directory look-ups of one user, however often a peer or a
/// failing delivery asks for a fresh one.
const MIN_REFRESH: Duration = Duration::from_secs(5);
/// How often smvsd checks whether its transport certificate is due for renewal (besides at
/// start). Renewal is due with half the lifetime (15 days) left, so an hour is plenty.
pub const RENEW_CHECK: Duration = Duration::from_secs(3600);

/// This host's own user, once registered.
#[derive(Debug, Clone)]
pub struct Me {
    pub username: Username,
    pub identity: IdentityBundle,
}

/// Where the directory is, which key it must present, and how to reach it.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    pub address: String,
    pub key: SigningPublicKey,
    /// Reach it through this SOCKS5 proxy, as other hosts are reached.
    pub socks5_proxy: Option<String>,
    /// The address this host publishes there.
    pub host_address: HostAddress,
    /// Publish session v2's keys (the X-Wing key and keyguard's current prekey) there.
    pub session_keys: bool,
}

/// What `verify` found.
#[derive(Debug, Clone)]
pub struct Verification {
    pub safety_number: String,
    pub transcript_hash: String,
    pub key_changed: bool,
    pub accepted: bool,
    /// The signed record the pinned identity came from, to show others.
    pub evidence: Option<Evidence>,
    /// The session version in use with the contact (filled in by the sessions owner).
    pub session_version: u16,
}

pub struct Trust {
    directory_config: DirectoryConfig,
    /// The host's Noise key: certified at registration. Directory links never present it
    /// (each shows a throwaway key, see [`Trust::directory`]).
    transport: Rc<AgreementKeyPair>,
    /// The address this host publishes: what [`may_connect`] compares a contact's with.
    host_address: HostAddress,
    keyguard: Rc<Guard>,
    storage: Storage,
    events: Events,
    me: RefCell<Option<Me>>,
    directory: RefCell<Option<Rc<DirectoryClient>>>,
    /// Records and contacts are shared (`Rc`), not copied, with whoever asks: every arriving
    /// envelope asks for both, and each holds a signed record of a few kilobytes.
    records: RefCell<HashMap<Username, (Rc<VerifiedRecord>, Instant)>>,
    contacts: RefCell<HashMap<Username, Rc<Contact>>>,
    /// The changed identity each contact's safety number was last shown for: only that
    /// identity may be accepted, so a key that changes again between `verify` and
    /// `verify --accept-new-key` is not accepted unseen.
    shown_pending: RefCell<HashMap<Username, IdentityBundle>>,
}

fn key_changed(peer: &Username) -> HostError {
    HostError::new(
        ErrorCode::KeyChanged,
        format!("{peer}'s identity key changed; compare safety numbers with `smvsctl verify {peer}` and accept with `--accept-new-key`"),
    )
}

/// Whether we may write to `to`, given what we know of them: not if they are blocked, nor
/// while their changed key is not accepted. Someone we never wrote to may be written to.
pub fn may_send(to: &Username, contact: Option<&Contact>) -> Result<(), HostError> {
    if let Some(contact) = contact {
        if contact.blocked {
            return Err(HostError::new(
                ErrorCode::Blocked,
                format!("{to} is blocked; `smvsctl unblock {to}` first"),
            ));
        }
        if contact.pending.is_some() {
            return Err(key_changed(to));
        }
    }
    Ok(())
}

/// The kind of network this host is on, as far as its published address says: a name (other
/// than `localhost`) says nothing, and is taken as public, the strictest choice.
pub fn own_kind(ours: &HostAddress) -> AddressKind {
    ours.kind().unwrap_or(AddressKind::Public)
}

/// Whether this host (published as `ours`) may connect to `peer`'s host at `theirs`: the
/// address rule of [`AddressKind::may_reach`], for an address written as an IP (or
/// `localhost`). A name is judged when it is resolved, at connect time (`smvs_transport`
/// checks every address it resolves to against [`own_kind`]); through a SOCKS5 proxy the proxy
/// resolves it, and its own policy applies.
pub fn may_connect(
    ours: &HostAddress,
    peer: &Username,
    theirs: &HostAddress,
) -> Result<(), HostError> {
    let mine = own_kind(ours);
    match theirs.kind() {
        Some(kind) if !mine.may_reach(kind) => Err(HostError::new(
            ErrorCode::AddressRefused,
            format!(
                "{peer}'s host address {theirs} is {}, and this host (published as {ours}) is not on such a network; refusing to connect there",
                kind.describe()
            ),
        )),
        _ => Ok(()),
    }
}

/// What a directory record means for what we pinned.
#[derive(Debug, PartialEq, Eq)]
pub enum Judgement {
    /// First contact: pin the identity the directory shows (trust on first use).
    Pin(Contact),
    /// Same identity, nothing new (the pinned contact as it is shared, not copied: this is
    /// every arriving envelope's case).
    Unchanged(Rc<Contact>),
    /// Same identity at a newer serial: a new host address or transport key, certified by it.
    Update(Contact),
    /// Another identity than the pinned one: recorded as pending; refused until the user
    /// accepts it. `first_seen` is false when that same change is already pending (nothing to
    /// write, no second alarm).
    KeyChanged { contact: Contact, first_seen: bool },
    /// The same identity at a lower serial than we acted on: the directory re-served an old
    /// record. The pinned contact is kept as it is, and the alarm is raised.
    Rollback(Rc<Contact>),
}

/// The trust rules, as a pure function of what we stored and what the directory says.
pub fn judge(stored: Option<Rc<Contact>>, record: &VerifiedRecord, request: bool) -> Judgement {
    let Some(shared) = stored else {
        return Judgement::Pin(Contact::from_record(record, request));
    };
    let user = &record.user;
    // A record older than one the directory served before changes nothing, and is an alarm.
    // (Serial 0 is what accepting a changed key leaves, to take whatever comes next.)
    if shared.identity == user.identity {
        if user.serial < shared.serial {
            return Judgement::Rollback(shared);
        }
        if user.serial == shared.serial {
            return Judgement::Unchanged(shared);
        }
    }
    let mut contact = Rc::unwrap_or_clone(shared);
    if contact.identity != user.identity {
        let first_seen = contact
            .pending
            .as_ref()
            .is_none_or(|p| p.identity != user.identity);
        if first_seen {
            contact.pending = Some(PendingKey {
                identity: user.identity,
                transport_key: user.transport_key,
            });
        }
        return Judgement::KeyChanged {
            contact,
            first_seen,
        };
    }
    // The same identity at a newer serial.
    contact.transport_key = user.transport_key;
    contact.host_address = user.host_address.clone();
    contact.serial = user.serial;
    contact.pending = None;
    contact.evidence = Some(Evidence::of(record));
    Judgement::Update(contact)
}

/// A TCP stream to `address` (HOST:PORT) through the SOCKS5 proxy, which resolves the name.
async fn socks5_connect(
    proxy: &str,
    address: &str,
) -> Result<tokio::net::TcpStream, smvs_directory::ClientError> {
    let failed = |why: String| {
        smvs_directory::ClientError::Local(format!(
            "SOCKS5 proxy {proxy} cannot reach the directory at {address}: {why}"
        ))
    };
    smvs_transport::socks5_tcp(proxy, address)
        .await
        .map_err(failed)
}

impl Trust {
    pub fn new(
        directory_config: DirectoryConfig,
        transport: Rc<AgreementKeyPair>,
        host_address: HostAddress,
        keyguard: Rc<Guard>,
        storage: Storage,
        events: Events,
        me: Option<Me>,
    ) -> Trust {
        Trust {
            directory_config,
            transport,
            host_address,
            keyguard,
            storage,
            events,
            me: RefCell::new(me),
            directory: RefCell::new(None),
            records: RefCell::new(HashMap::new()),
            contacts: RefCell::new(HashMap::new()),
            shown_pending: RefCell::new(HashMap::new()),
        }
    }

    pub fn me(&self) -> Result<Me, HostError> {
        self.me.borrow().clone().ok_or_else(|| {
            HostError::new(
                ErrorCode::NotRegistered,
                "this host has no user yet; run `smvsctl register NAME`",
            )
        })
    }

    /// This host's user, if registered.
    pub fn registered(&self) -> Option<Me> {
        self.me.borrow().clone()
    }

    pub fn directory_address(&self) -> &str {
        &self.directory_config.address
    }

    /// The kind of network this host is on ([`own_kind`] of its published address): the
    /// addresses a contact's host name resolves to must be reachable from it.
    pub fn own_kind(&self) -> AddressKind {
        own_kind(&self.host_address)
    }

    // ----- contacts -----

    /// The stored contact for `peer` (cached; the cache is written through).
    pub async fn contact(&self, peer: &Username) -> Result<Option<Rc<Contact>>, HostError> {
        if let Some(c) = self.contacts.borrow().get(peer) {
            return Ok(Some(c.clone()));
        }
        let stored = self.storage.contact(peer).await?.map(Rc::new);
        if let Some(c) = &stored {
            self.contacts.borrow_mut().insert(peer.clone(), c.clone());
        }
        Ok(stored)
    }

    pub async fn contacts(&self) -> Result<Vec<Contact>, HostError> {
        Ok(self.storage.contacts().await?)
    }

    /// Stores `contact`; the cache then holds it as given (an `Rc` is shared, not copied).
    async fn put_contact(&self, contact: impl Into<Rc<Contact>>) -> Result<(), HostError> {
        let contact: Rc<Contact> = contact.into();
        let name = contact.username.clone();
        // The cache first: a reader that runs while the write is on its way must see the new
        // state (a block in progress must not be overwritten by a stale copy).
        let before = self
            .contacts
            .borrow_mut()
            .insert(name.clone(), contact.clone());
        if let Err(e) = self.storage.put_contact(Contact::clone(&contact)).await {
            let mut cache = self.contacts.borrow_mut();
            match before {
                Some(old) => cache.insert(name, old),
                None => cache.remove(&name),
            };
            return Err(e.into());
        }
        Ok(())
    }

    /// Refuses sending to a blocked contact, one whose changed key is not accepted yet, or one
    /// whose host address this host does not connect to ([`may_connect`]).
    pub async fn check_can_send(&self, to: &Username) -> Result<(), HostError> {
        let contact = self.contact(to).await?;
        may_send(to, contact.as_deref())?;
        match contact {
            Some(contact) => may_connect(&self.host_address, to, &contact.host_address),
            None => Ok(()),
        }
    }

    /// Writing to (or calling) someone who wrote first in contacts-only mode accepts them:
    /// their held messages become ordinary received ones.
    pub async fn accept_request(&self, peer: &Username) -> Result<(), HostError> {
        let Some(contact) = self.contact(peer).await? else {
            return Ok(());
        };
        if !contact.request {
            return Ok(());
        }
        let mut contact = Rc::unwrap_or_clone(contact);
        contact.request = false;
        self.put_contact(contact).await?;
        let released = self.storage.release_held(peer).await?;
        tracing::debug!(peer = %peer, released = released.len(), "accepted a message request");
        for id in released {
            self.events.publish(HostEvent::MessageStatus {
                id,
                peer: peer.clone(),
                status: Status::Received,
            });
        }
        Ok(())
    }

    /// Marks `peer` as a message request (contacts-only mode), if it is not one already.
    pub async fn mark_request(&self, contact: &mut Rc<Contact>) -> Result<(), HostError> {
        if !contact.request {
            Rc::make_mut(contact).request = true;
            self.put_contact(contact.clone()).await?;
        }
        Ok(())
    }

    /// `block USER` / `unblock USER`: blocking pins the user's current key, so the block holds
    /// for that key even if they never wrote before.
    pub async fn set_blocked(&self, peer: &Username, blocked: bool) -> Result<(), HostError> {
        let mut contact = match self.contact(peer).await? {
            Some(c) => Rc::unwrap_or_clone(c),
            None => Contact::from_record(&*self.lookup(peer, true).await?, false),
        };
        contact.blocked = blocked;
        self.put_contact(contact).await?;
        tracing::info!(peer = %peer, blocked, "contact block changed");
        Ok(())
    }

    // ----- the directory -----

    /// The directory connection, made on first use and again after a failure.
    async fn directory(&self) -> Result<Rc<DirectoryClient>, HostError> {
        if let Some(d) = self.directory.borrow().as_ref() {
            return Ok(d.clone());
        }
        let address = &self.directory_config.address;
        // Each directory link shows a throwaway Noise key, never the host's transport key: a
        // look-up names nobody, so the directory cannot keep a log of which host asked about
        // whom. (Registration is authenticated by the identity's signature, not by the link.)
        let throwaway = AgreementKeyPair::generate().map_err(HostError::internal)?;
        let key = self.directory_config.key;
        let proxy = self.directory_config.socks5_proxy.clone();
        let connecting = async move {
            match proxy {
                None => DirectoryClient::connect(address, key, &throwaway).await,
                Some(proxy) => {
                    let tcp = socks5_connect(&proxy, address).await?;
                    DirectoryClient::connect_over(tcp, address, key, &throwaway).await
                }
            }
        };
        let client = tokio::time::timeout(DIRECTORY_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                HostError::new(
                    ErrorCode::Directory,
                    format!("cannot reach the directory at {address}: no answer within {} s", DIRECTORY_TIMEOUT.as_secs()),
                )
            })?
            .map_err(|e| {
                if matches!(e, smvs_directory::ClientError::Transport(smvs_transport::TransportError::KeyMismatch { .. })) {
                    smvs_service::security_event!(error, smvs_service::logging::DIRECTORY_KEY_MISMATCH, directory = %address, "directory key mismatch: the directory is not the one pinned in the config");
                }
                HostError::new(ErrorCode::Directory, format!("cannot reach the directory at {address}: {e}"))
            })?;
        let client = Rc::new(client);
        *self.directory.borrow_mut() = Some(client.clone());
        Ok(client)
    }

    fn directory_failed(&self, e: &smvs_directory::ClientError) {
        if e.code().is_none() {
            // A broken link, not a refusal: reconnect next time.
            *self.directory.borrow_mut() = None;
        }
    }

    /// Whether a fresh look-up of `peer` may be made now: the cached record is older than
    /// [`MIN_REFRESH`] (or there is none).
    pub fn may_refresh(&self, peer: &Username) -> bool {
        self.records
            .borrow()
            .get(peer)
            .is_none_or(|(_, at)| at.elapsed() >= MIN_REFRESH)
    }

    /// The directory's signed record for `peer` (cached for [`RECORD_TTL`] unless `fresh`).
    pub async fn lookup(
        &self,
        peer: &Username,
        fresh: bool,
    ) -> Result<Rc<VerifiedRecord>, HostError> {
        if !fresh {
            if let Some((record, at)) = self.records.borrow().get(peer) {
                if at.elapsed() < RECORD_TTL {
                    return Ok(record.clone());
                }
            }
        }
        let directory = self.directory().await?;
        // A link that silently died would otherwise hold the caller until TCP gives up.
        let answer = match tokio::time::timeout(DIRECTORY_TIMEOUT, directory.lookup(peer)).await {
            Ok(answer) => answer,
            Err(_) => {
                *self.directory.borrow_mut() = None;
                return Err(HostError::new(
                    ErrorCode::Directory,
                    format!(
                        "the directory at {} did not answer within {} s",
                        self.directory_config.address,
                        DIRECTORY_TIMEOUT.as_secs()
                    ),
                ));
            }
        };
        match answer {
            Ok(record) => {
                let record = Rc::new(record);
                self.records
                    .borrow_mut()
                    .insert(peer.clone(), (record.clone(), Instant::now()));
                Ok(record)
            }
            Err(e) => {
                self.directory_failed(&e);
                if e.code() == Some(smvs_directory::ErrorCode::NotFound) {
                    self.records.borrow_mut().remove(peer);
                }
                Err(e.into())
            }
        }
    }

    /// [`Trust::pinned_contact`] for whoever will connect to the contact's host (the outbox,
    /// the call manager): also refuses a host address this host does not connect to
    /// ([`may_connect`], `address-refused`). The contact is pinned all the same: the identity
    /// is what it is, wherever its host is.
    pub async fn trusted_contact(
        &self,
        peer: &Username,
        fresh: bool,
        request: bool,
    ) -> Result<(Rc<Contact>, Rc<VerifiedRecord>), HostError> {
        let (contact, record) = self.pinned_contact(peer, fresh, request).await?;
        may_connect(&self.host_address, peer, &contact.host_address)?;
        Ok((contact, record))
    }

    /// The pinned contact for `peer`, checked against the directory's current record (cached
    /// unless `fresh`). First contact pins the identity (trust on first use), marked as a
    /// message request when `request` is set. A different identity is recorded as pending,
    /// raises a KeyChanged event once, and is an error until accepted. The host address is
    /// not judged here: this is for checking a sender on the link it opened (the inbox) and
    /// for `verify`, which connect nowhere.
    pub async fn pinned_contact(
        &self,
        peer: &Username,
        fresh: bool,
        request: bool,
    ) -> Result<(Rc<Contact>, Rc<VerifiedRecord>), HostError> {
        let record = self.lookup(peer, fresh).await?;
        let stored = self.contact(peer).await?;
        let contact = match judge(stored, &record, request) {
            Judgement::Unchanged(contact) => contact,
            Judgement::Rollback(contact) => {
                smvs_service::security_event!(error, smvs_service::logging::DIRECTORY_ROLLBACK, peer = %peer, served = record.user.serial, before = contact.serial, "the directory served an older record of a contact than before; keeping the newer one");
                self.events
                    .publish(HostEvent::DirectoryAlarm { peer: peer.clone() });
                contact
            }
            Judgement::Pin(contact) | Judgement::Update(contact) => {
                let contact = Rc::new(contact);
                self.put_contact(contact.clone()).await?;
                contact
            }
            Judgement::KeyChanged {
                contact,
                first_seen,
            } => {
                if first_seen {
                    self.put_contact(contact).await?;
                    smvs_service::security_event!(warn, smvs_service::logging::KEY_CHANGED, peer = %peer, "a contact's identity key changed; refusing until accepted");
                    self.events
                        .publish(HostEvent::KeyChanged { peer: peer.clone() });
                }
                return Err(key_changed(peer));
            }
        };
        Ok((contact, record))
    }

    // ----- verification -----

    /// `verify USER [--accept-new-key]`: the safety number of the identity to compare (the
    /// changed one, while a change is pending), and, when asked, accepts the changed key whose
    /// safety number was shown last. The caller drops the session keys of an accepted change.
    pub async fn verify(
        &self,
        peer: &Username,
        accept_new_key: bool,
        transcript_hash: [u8; 32],
    ) -> Result<Verification, HostError> {
        let me = self.me()?;
        // Refresh from the directory, so a key change is noticed here too.
        let mut contact = Rc::unwrap_or_clone(match self.pinned_contact(peer, true, false).await {
            Ok((contact, _)) => contact,
            Err(e) if e.code == ErrorCode::KeyChanged => self
                .contact(peer)
                .await?
                .ok_or_else(|| HostError::internal("changed key without a contact"))?,
            Err(e) => return Err(e),
        });
        let mut accepted = false;
        if let (Some(pending), true) = (contact.pending.clone(), accept_new_key) {
            // Only the key whose safety number the user was shown (and compared).
            let shown = self.shown_pending.borrow_mut().remove(peer);
            if shown != Some(pending.identity) {
                return Err(HostError::new(
                    ErrorCode::KeyChanged,
                    format!("{peer}'s new key has not been shown to you, or it changed again since: compare the safety number of `smvsctl verify {peer}` with {peer}, then accept"),
                ));
            }
            contact.identity = pending.identity;
            contact.transport_key = pending.transport_key;
            contact.pending = None;
            // The next look-up refreshes host address and serial.
            contact.serial = 0;
            self.put_contact(contact.clone()).await?;
            self.records.borrow_mut().remove(peer);
            accepted = true;
            tracing::info!(peer = %peer, "accepted a contact's new identity key");
        }
        let shown = match &contact.pending {
            Some(pending) => {
                self.shown_pending
                    .borrow_mut()
                    .insert(peer.clone(), pending.identity);
                pending.identity
            }
            None => contact.identity,
        };
        let safety_number =
            smvs_crypto::safety_number(me.username.as_str(), &me.identity, peer.as_str(), &shown)
                .map_err(HostError::internal)?;
        Ok(Verification {
            safety_number,
            transcript_hash: hex::encode(transcript_hash),
            key_changed: contact.pending.is_some(),
            accepted,
            evidence: contact.evidence.clone(),
            session_version: crate::session::SESSION_V1,
        })
    }

    // ----- registration -----

    /// Renews our registration's transport certificate when it is due: less than half its
    /// lifetime left, or the record names another transport key than ours. Logs in with the
    /// token keyguard opens, has keyguard certify our transport key anew, and hands it to the
    /// directory. Returns the new expiry, or `None` when nothing was due (or we are not
    /// registered). smvsd runs this at start and every [`RENEW_CHECK`] after.
    pub async fn renew_if_due(&self) -> Result<Option<i64>, HostError> {
        let Some(me) = self.registered() else {
            return Ok(None);
        };
        let address = self.directory_config.address.clone();
        let renewing = self.renew(&me);
        match tokio::time::timeout(DIRECTORY_TIMEOUT, renewing).await {
            Ok(result) => result,
            Err(_) => {
                *self.directory.borrow_mut() = None;
                Err(HostError::new(
                    ErrorCode::Directory,
                    format!(
                        "renewing the transport certificate: the directory at {address} did \
                         not answer within {} s",
                        DIRECTORY_TIMEOUT.as_secs()
                    ),
                ))
            }
        }
    }

    async fn renew(&self, me: &Me) -> Result<Option<i64>, HostError> {
        let directory = self.directory().await?;
        let failed = |e: smvs_directory::ClientError| {
            self.directory_failed(&e);
            HostError::from(e)
        };
        let record = directory
            .lookup_for_owner(&me.username)
            .await
            .map_err(failed)?;
        if record.user.identity != me.identity {
            return Err(HostError::new(
                ErrorCode::Directory,
                format!(
                    "the directory's record of {} holds another identity than keyguard's; \
                     was it rotated without restarting smvsd?",
                    me.username
                ),
            ));
        }
        let transport_key = self.transport.public();
        let left = record
            .user
            .transport_not_after
            .saturating_sub(crate::model::now_ms());
        let ours = &self.directory_config.host_address;
        let address_moved = &record.user.host_address != ours;
        let transport_due = record.user.transport_key != transport_key
            || left <= TRANSPORT_CERTIFICATE_LIFETIME_MS / 2;
        // Keyguard rotates the prekey when asked after it is due: what it hands out now is
        // what the record must carry (checked every RENEW_CHECK, well within a prekey's life).
        // A keyguard that cannot give them does not hold up the certificate's renewal.
        let session_keys = if self.directory_config.session_keys {
            match self.keyguard.session_keys(&me.identity).await {
                Ok(keys) => Some(smvs_directory::PublishedSessionKeys {
                    kem: keys.kem,
                    kem_signature: keys.kem_signature,
                    prekey: keys.prekey,
                })
                .filter(|keys| record.user.session_keys.as_ref() != Some(keys)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot get the session keys to publish; trying again at the next check");
                    None
                }
            }
        } else {
            None
        };
        if !transport_due && !address_moved && session_keys.is_none() {
            return Ok(None);
        }
        if address_moved || record.user.transport_key != transport_key {
            // Someone who could log in as us (a process that held keyguard's socket) may have
            // pointed our contacts elsewhere; or the configuration changed. Either way the
            // record must say what this host is, and the operator should know.
            smvs_service::security_event!(
                warn,
                smvs_service::logging::OWN_RECORD_CHANGED,
                published_address = %record.user.host_address,
                our_address = %ours,
                same_transport_key = record.user.transport_key == transport_key,
                "the directory's record of this host's user does not name this host; publishing ours again"
            );
        }
        let key = self.directory_config.key;
        let keyguard = self.keyguard.clone();
        let username = me.username.clone();
        let session = directory
            .login_with(&me.username, |sealed| async move {
                keyguard.open_login_token(&key, &username, &sealed).await
            })
            .await
            .map_err(failed)?;
        let mut record = record;
        if transport_due {
            let certificate = self
                .keyguard
                .certify_transport(&me.username, &transport_key)
                .await?;
            record = session
                .renew_transport(&certificate)
                .await
                .map_err(failed)?;
            tracing::info!(
                not_after = record.user.transport_not_after,
                serial = record.user.serial,
                "renewed the transport certificate"
            );
        }
        if &record.user.host_address != ours {
            record = session.update_host_address(ours).await.map_err(failed)?;
        }
        if let Some(keys) = session_keys {
            // A directory that refuses them (an older one, say) leaves the rest done.
            match session.publish_session_keys(&keys).await {
                Ok(published) => {
                    record = published;
                    tracing::info!(
                        prekey = keys.prekey.id,
                        serial = record.user.serial,
                        "published session v2 keys"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the directory did not take our session keys; trying again at the next check")
                }
            }
        }
        self.records.borrow_mut().remove(&me.username);
        Ok(Some(record.user.transport_not_after))
    }

    /// Registers `username` at the directory: keyguard makes the identity, and builds and signs
    /// the request (with a fresh certificate for our transport key).
    pub async fn register(
        &self,
        username: Username,
        host_address: HostAddress,
    ) -> Result<Me, HostError> {
        if let Some(me) = self.me.borrow().as_ref() {
            return Err(HostError::new(
                ErrorCode::AlreadyRegistered,
                format!("this host is already registered as {}", me.username),
            ));
        }
        let identity = self.keyguard.create_identity().await?;
        let transport_key = self.transport.public();
        let registration = self
            .keyguard
            .sign_registration(
                &self.directory_config.key,
                &username,
                &transport_key,
                &host_address,
            )
            .await?;
        if registration.identity != identity {
            return Err(HostError::internal(
                "keyguard signed a registration of another identity than it created",
            ));
        }
        let directory = self.directory().await?;
        if let Err(e) = directory.register(&registration).await {
            self.directory_failed(&e);
            match e.code() {
                Some(smvs_directory::ErrorCode::Taken) => {
                    // Taken by ourselves, if the record holds our identity and our transport
                    // key: the directory took an earlier registration and this host stopped
                    // before saving it. Then finish that registration here.
                    let ours = self.lookup(&username, true).await.is_ok_and(|r| {
                        r.user.identity == identity && r.user.transport_key == transport_key
                    });
                    if !ours {
                        return Err(HostError::new(
                            ErrorCode::Taken,
                            format!("the name {username} is taken"),
                        ));
                    }
                    tracing::info!(%username, "the directory already holds our registration");
                }
                Some(smvs_directory::ErrorCode::InvalidUsername) => {
                    return Err(HostError::bad_request(e.to_string()))
                }
                _ => return Err(e.into()),
            }
        }
        self.storage
            .set_setting("me", username.as_str().as_bytes().to_vec())
            .await?;
        let me = Me { username, identity };
        *self.me.borrow_mut() = Some(me.clone());
        tracing::info!(username = %me.username, "registered");
        Ok(me)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use smvs_crypto::{IdentityKeys, Signature, SigningKeyPair};
    use smvs_directory::UserRecord;

    use super::*;

    fn record(name: &str, identity: IdentityBundle, serial: u64, address: &str) -> VerifiedRecord {
        let transport = AgreementKeyPair::generate().unwrap().public();
        VerifiedRecord {
            user: UserRecord {
                username: Username::parse(name).unwrap(),
                identity,
                transport_key: transport,
                transport_certificate: Signature::from_bytes(&[0; 64]).unwrap(),
                transport_not_after: i64::MAX,
                host_address: HostAddress::parse(address).unwrap(),
                serial,
                session_keys: None,
            },
            issued_at: 0,
            directory_key: SigningKeyPair::generate().unwrap().public(),
            record_bytes: Vec::new(),
            signature: Signature::from_bytes(&[0; 64]).unwrap(),
        }
    }

    fn identity() -> IdentityBundle {
        IdentityKeys::generate().unwrap().bundle()
    }

    #[test]
    fn first_contact_pins_what_the_directory_shows() {
        let r = record("bob", identity(), 3, "127.0.0.2:7421");
        let Judgement::Pin(c) = judge(None, &r, true) else {
            panic!("first contact must pin")
        };
        assert_eq!(
            (c.identity, c.serial, c.request),
            (r.user.identity, 3, true)
        );
        assert_eq!(c.transport_key, r.user.transport_key);
        assert!(c.pending.is_none() && !c.blocked);
    }

    #[test]
    fn a_newer_record_of_the_same_identity_moves_the_host_and_an_older_one_changes_nothing() {
        let id = identity();
        let pinned = Rc::new(Contact::from_record(
            &record("bob", id, 3, "127.0.0.2:7421"),
            false,
        ));
        let moved = record("bob", id, 4, "127.0.0.9:7000");
        let Judgement::Update(c) = judge(Some(pinned.clone()), &moved, false) else {
            panic!("a newer serial updates")
        };
        assert_eq!(c.host_address.as_str(), "127.0.0.9:7000");
        assert_eq!((c.serial, c.transport_key), (4, moved.user.transport_key));
        let replayed = record("bob", id, 2, "10.9.9.9:1");
        assert_eq!(
            judge(Some(pinned.clone()), &replayed, false),
            Judgement::Rollback(pinned.clone()),
            "an older record is an alarm and changes nothing"
        );
        let same = record("bob", id, 3, "127.0.0.2:7421");
        let Judgement::Unchanged(shared) = judge(Some(pinned.clone()), &same, false) else {
            panic!("the same record changes nothing")
        };
        assert!(
            Rc::ptr_eq(&shared, &pinned),
            "an unchanged contact is shared, not copied"
        );
        // What a newer record says is kept as evidence.
        assert_eq!(c.evidence, Some(Evidence::of(&moved)));
    }

    #[test]
    fn another_identity_is_pending_and_alarms_once() {
        let pinned = Rc::new(Contact::from_record(
            &record("bob", identity(), 3, "127.0.0.2:7421"),
            false,
        ));
        let changed = record("bob", identity(), 4, "127.0.0.2:7421");
        let Judgement::KeyChanged {
            contact,
            first_seen: true,
        } = judge(Some(pinned.clone()), &changed, false)
        else {
            panic!("a new identity is a key change")
        };
        // The pinned identity stays; the new one waits for the user.
        assert_eq!(contact.identity, pinned.identity);
        let pending = contact.pending.clone().unwrap();
        assert_eq!(pending.identity, changed.user.identity);
        assert!(may_send(&contact.username, Some(&contact)).is_err());
        // The same change again: no second alarm, nothing to write.
        let again = judge(Some(Rc::new(contact.clone())), &changed, false);
        assert_eq!(
            again,
            Judgement::KeyChanged {
                contact: contact.clone(),
                first_seen: false
            }
        );
        // Yet another identity while one is pending: a new alarm for the newest.
        let third = record("bob", identity(), 5, "127.0.0.2:7421");
        let Judgement::KeyChanged {
            contact: c,
            first_seen: true,
        } = judge(Some(Rc::new(contact)), &third, false)
        else {
            panic!("a third identity alarms again")
        };
        assert_eq!(c.pending.unwrap().identity, third.user.identity);
    }

    #[test]
    fn contacts_on_a_local_network_are_connected_to_only_from_that_network() {
        let bob = Username::parse("bob").unwrap();
        let at = |s: &str| HostAddress::parse(s).unwrap();
        let refused = |ours: &str, theirs: &str| {
            may_connect(&at(ours), &bob, &at(theirs))
                .err()
                .map(|e| e.code)
        };
        assert_eq!(refused("127.0.0.1:1", "127.0.0.2:7421"), None);
        assert_eq!(refused("10.0.0.9:7421", "192.168.1.1:7421"), None);
        assert_eq!(refused("10.0.0.9:7421", "203.0.113.1:7421"), None);
        for (ours, theirs) in [
            ("203.0.113.5:7421", "127.0.0.2:7421"),
            ("203.0.113.5:7421", "localhost:7421"),
            ("203.0.113.5:7421", "[fd00::1]:7421"),
            ("127.0.0.1:7421", "10.0.0.1:7421"),
            ("127.0.0.1:7421", "0.0.0.0:7421"),
            // Our own address as a name says nothing: taken as public.
            ("me.example:7421", "10.0.0.1:7421"),
        ] {
            assert_eq!(
                refused(ours, theirs),
                Some(ErrorCode::AddressRefused),
                "{ours} -> {theirs}"
            );
        }
        // A contact's name is judged when resolved, at connect time.
        assert_eq!(refused("203.0.113.5:7421", "bob.example:7421"), None);
    }

    #[test]
    fn blocked_contacts_and_unaccepted_keys_cannot_be_written_to() {
        let bob = Username::parse("bob").unwrap();
        assert!(may_send(&bob, None).is_ok(), "a stranger may be written to");
        let mut c = Contact::from_record(&record("bob", identity(), 1, "127.0.0.2:7421"), false);
        assert!(may_send(&bob, Some(&c)).is_ok());
        c.blocked = true;
        assert_eq!(
            may_send(&bob, Some(&c)).unwrap_err().code,
            ErrorCode::Blocked
        );
        c.blocked = false;
        c.pending = Some(PendingKey {
            identity: identity(),
            transport_key: AgreementKeyPair::generate().unwrap().public(),
        });
        assert_eq!(
            may_send(&bob, Some(&c)).unwrap_err().code,
            ErrorCode::KeyChanged
        );
    }
}
