//! The host's shared core: who we are, our keys' helpers (keyguard, directory), the contacts we
//! have pinned, and the per-contact session keys. It lives on the daemon's main thread (its
//! Cap'n Proto capabilities are `!Send`) and is shared by the actors there through `Rc`.
//!
//! Every operation the actors perform is a method here, so the rules (trust on first use, a
//! changed key blocks sending until accepted, blocked contacts are refused before decryption)
//! are written once.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use smvs_crypto::{AgreementKeyPair, AgreementPublicKey, IdentityBundle, SignContext};
use smvs_directory::{DirectoryClient, Registration, VerifiedRecord};
use smvs_keyguard::client::KeyguardClient;
use smvs_schema::{canonical, HostAddress, Username};

use crate::config::Config;
use crate::error::HostError;
use crate::model::{HostEvent, MessageId};
use crate::session::{self, SessionKeys};
use crate::storage::{bundle_to_hex, Contact, Storage};

/// How long a directory call may take before the link is considered dead.
const DIRECTORY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a sender name the directory did not know is answered "later" without asking the
/// directory again (envelopes under made-up names must not spend our directory budget).
const UNKNOWN_SENDER_TTL: Duration = Duration::from_secs(30);
/// Unknown sender names remembered at most.
const UNKNOWN_SENDERS_KEPT: usize = 4096;
/// Per-sender arrival locks kept before unused ones are dropped.
const ARRIVAL_LOCKS_KEPT: usize = 1024;
/// How long a directory answer is reused before asking again.
const RECORD_TTL: Duration = Duration::from_secs(30);

/// This host's own user, once registered.
#[derive(Debug, Clone)]
pub struct Me {
    pub username: Username,
    pub identity: IdentityBundle,
}

pub struct HostCore {
    pub config: Config,
    pub storage: Storage,
    pub keyguard: KeyguardClient,
    /// The host's Noise static key (certified by the identity in the directory record).
    pub transport: AgreementKeyPair,
    pub me: RefCell<Option<Me>>,
    directory: RefCell<Option<Rc<DirectoryClient>>>,
    records: RefCell<HashMap<Username, (VerifiedRecord, Instant)>>,
    sessions: RefCell<HashMap<Username, (IdentityBundle, Rc<SessionKeys>)>>,
    contacts: RefCell<HashMap<Username, Contact>>,
    /// Outgoing messages handed to the peer's host and waiting for a receipt. "Sent" is a
    /// passing state, so it lives here rather than costing a disk write per message; after a
    /// restart such messages read as queued again, which is what they are until the receipt.
    sent: RefCell<std::collections::HashSet<MessageId>>,
    /// One FIFO lock per sender: incoming envelopes from one host keep their order up to the
    /// moment they are queued for storage.
    arrival_order: RefCell<HashMap<Username, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    events: RefCell<Option<actix::Recipient<crate::devices::Publish>>>,
    /// The changed identity (hex) each contact's safety number was last shown for: only that
    /// identity may be accepted, so a key that changes again between `verify` and
    /// `verify --accept-new-key` is not accepted unseen.
    shown_pending: RefCell<HashMap<Username, String>>,
    /// Sender names the directory did not know, and when it said so.
    unknown_senders: RefCell<HashMap<Username, Instant>>,
}

impl HostCore {
    pub fn new(
        config: Config,
        storage: Storage,
        keyguard: KeyguardClient,
        transport: AgreementKeyPair,
        me: Option<Me>,
    ) -> HostCore {
        HostCore {
            config,
            storage,
            keyguard,
            transport,
            me: RefCell::new(me),
            directory: RefCell::new(None),
            records: RefCell::new(HashMap::new()),
            sessions: RefCell::new(HashMap::new()),
            contacts: RefCell::new(HashMap::new()),
            sent: RefCell::new(std::collections::HashSet::new()),
            arrival_order: RefCell::new(HashMap::new()),
            events: RefCell::new(None),
            shown_pending: RefCell::new(HashMap::new()),
            unknown_senders: RefCell::new(HashMap::new()),
        }
    }

    pub fn set_event_sink(&self, sink: actix::Recipient<crate::devices::Publish>) {
        *self.events.borrow_mut() = Some(sink);
    }

    /// Tells local devices. Never blocks: a full hub drops the event (and says so).
    pub fn publish(&self, event: HostEvent) {
        if let Some(sink) = self.events.borrow().as_ref() {
            if sink.try_send(crate::devices::Publish(event)).is_err() {
                tracing::warn!("device hub is full; an event was dropped");
            }
        }
    }

    /// The stored contact for `peer` (cached; the cache is written through).
    pub async fn contact(&self, peer: &Username) -> Result<Option<Contact>, HostError> {
        if let Some(c) = self.contacts.borrow().get(peer) {
            return Ok(Some(c.clone()));
        }
        let stored = self.storage.contact(peer).await?;
        if let Some(c) = &stored {
            self.contacts.borrow_mut().insert(peer.clone(), c.clone());
        }
        Ok(stored)
    }

    pub async fn put_contact(&self, contact: Contact) -> Result<(), HostError> {
        let name = Username::parse(&contact.username).map_err(HostError::internal)?;
        // The cache first: a reader that runs while the write is on its way must see the new
        // state (a block in progress must not be overwritten by a stale copy). Storage runs
        // writes in the order they are queued, so disk ends in the same state.
        self.contacts
            .borrow_mut()
            .insert(name.clone(), contact.clone());
        if let Err(e) = self.storage.put_contact(contact).await {
            self.contacts.borrow_mut().remove(&name);
            return Err(e.into());
        }
        Ok(())
    }

    /// Records that these messages are on their way (status "sent").
    pub fn mark_sent(&self, ids: &[MessageId]) {
        self.sent.borrow_mut().extend(ids.iter().copied());
    }

    /// Forgets the "sent" state of these messages (delivered, failed, or the link broke).
    pub fn unmark_sent(&self, ids: &[MessageId]) {
        let mut sent = self.sent.borrow_mut();
        for id in ids {
            sent.remove(id);
        }
    }

    pub fn is_sent(&self, id: &MessageId) -> bool {
        self.sent.borrow().contains(id)
    }

    /// Waits for this sender's turn (first come, first served).
    pub async fn arrival_turn(&self, sender: &Username) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut order = self.arrival_order.borrow_mut();
            // Any name can arrive (the key check comes later), so the table is kept small:
            // a lock nobody holds or waits for is only in the table, and can go.
            if order.len() >= ARRIVAL_LOCKS_KEPT {
                order.retain(|_, lock| std::sync::Arc::strong_count(lock) > 1);
            }
            order
                .entry(sender.clone())
                .or_insert_with(|| std::sync::Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        lock.lock_owned().await
    }

    pub fn me(&self) -> Result<Me, HostError> {
        self.me.borrow().clone().ok_or_else(|| {
            HostError::new(
                "not-registered",
                "this host has no user yet; run `smvsctl register NAME`",
            )
        })
    }

    /// The directory connection, made on first use and again after a failure.
    pub async fn directory(&self) -> Result<Rc<DirectoryClient>, HostError> {
        if let Some(d) = self.directory.borrow().as_ref() {
            return Ok(d.clone());
        }
        let connecting = DirectoryClient::connect(
            &self.config.directory,
            self.config.directory_key,
            &self.transport,
        );
        let client = tokio::time::timeout(DIRECTORY_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                HostError::new(
                    "directory",
                    format!("cannot reach the directory at {}: no answer within {} s", self.config.directory, DIRECTORY_TIMEOUT.as_secs()),
                )
            })?
            .map_err(|e| {
                if matches!(e, smvs_directory::ClientError::Transport(smvs_transport::TransportError::KeyMismatch { .. })) {
                    smvs_service::security_event!(error, smvs_service::logging::DIRECTORY_KEY_MISMATCH, directory = %self.config.directory, "directory key mismatch: the directory is not the one pinned in the config");
                }
                HostError::new("directory", format!("cannot reach the directory at {}: {e}", self.config.directory))
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

    /// The directory's signed record for `peer` (cached briefly).
    pub async fn lookup(&self, peer: &Username, fresh: bool) -> Result<VerifiedRecord, HostError> {
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
                    "directory",
                    format!(
                        "the directory at {} did not answer within {} s",
                        self.config.directory,
                        DIRECTORY_TIMEOUT.as_secs()
                    ),
                ));
            }
        };
        match answer {
            Ok(record) => {
                self.records
                    .borrow_mut()
                    .insert(peer.clone(), (record.clone(), Instant::now()));
                Ok(record)
            }
            Err(e) => {
                self.directory_failed(&e);
                Err(e.into())
            }
        }
    }

    /// The pinned contact for `peer`, checked against the directory's current record.
    /// First contact pins the identity (trust on first use). A different identity is recorded
    /// as pending, raises a KeyChanged event once, and is an error until accepted.
    pub async fn trusted_contact(
        &self,
        peer: &Username,
    ) -> Result<(Contact, VerifiedRecord), HostError> {
        self.trusted_contact_with(peer, false).await
    }

    /// As [`HostCore::trusted_contact`]; `fresh` skips the look-up cache (used when what a
    /// peer presents disagrees with the cached record).
    pub async fn trusted_contact_with(
        &self,
        peer: &Username,
        fresh: bool,
    ) -> Result<(Contact, VerifiedRecord), HostError> {
        self.trusted_contact_as(peer, fresh, false).await
    }

    /// As [`HostCore::trusted_contact_with`]; a contact created now is marked as a message
    /// request when `request` is set (in the same write).
    pub async fn trusted_contact_as(
        &self,
        peer: &Username,
        fresh: bool,
        request: bool,
    ) -> Result<(Contact, VerifiedRecord), HostError> {
        let record = self.lookup(peer, fresh).await?;
        let stored = self.contact(peer).await?;
        let identity_hex = bundle_to_hex(&record.user.identity);
        let contact = match stored {
            None => {
                let contact = Contact {
                    username: peer.to_string(),
                    identity: identity_hex,
                    transport_key: record.user.transport_key.to_hex(),
                    host_address: record.user.host_address.to_string(),
                    serial: record.user.serial,
                    blocked: false,
                    pending_identity: None,
                    pending_transport_key: None,
                    request,
                };
                self.put_contact(contact.clone()).await?;
                contact
            }
            Some(mut contact) => {
                if contact.identity != identity_hex {
                    if contact.pending_identity.as_deref() != Some(identity_hex.as_str()) {
                        contact.pending_identity = Some(identity_hex);
                        contact.pending_transport_key = Some(record.user.transport_key.to_hex());
                        self.put_contact(contact.clone()).await?;
                        smvs_service::security_event!(warn, smvs_service::logging::KEY_CHANGED, peer = %peer, "a contact's identity key changed; refusing until accepted");
                        self.publish(HostEvent::KeyChanged { peer: peer.clone() });
                    }
                    return Err(HostError::new(
                        "key-changed",
                        format!("{peer}'s identity key changed; compare safety numbers with `smvsctl verify {peer}` and accept with `--accept-new-key`"),
                    ));
                }
                if record.user.serial > contact.serial {
                    // Same identity, new host address or transport key (certified by it).
                    contact.transport_key = record.user.transport_key.to_hex();
                    contact.host_address = record.user.host_address.to_string();
                    contact.serial = record.user.serial;
                    contact.pending_identity = None;
                    contact.pending_transport_key = None;
                    self.put_contact(contact.clone()).await?;
                }
                contact
            }
        };
        Ok((contact, record))
    }

    /// The session keys shared with `peer`'s identity, derived through keyguard once.
    pub async fn session_keys(
        &self,
        peer: &Username,
        identity: &IdentityBundle,
    ) -> Result<Rc<SessionKeys>, HostError> {
        if let Some((pinned, keys)) = self.sessions.borrow().get(peer) {
            if pinned == identity {
                return Ok(keys.clone());
            }
        }
        let me = self.me()?;
        let salt = session::agreement_salt(&me.identity, identity);
        let shared = self
            .keyguard
            .derive_shared_key(&identity.agreement_key, &salt, session::AGREEMENT_INFO)
            .await?;
        let keys = Rc::new(SessionKeys::from_shared(&shared).map_err(HostError::internal)?);
        self.sessions
            .borrow_mut()
            .insert(peer.clone(), (*identity, keys.clone()));
        Ok(keys)
    }

    /// Whether the directory said lately that it does not know `sender`.
    pub fn recently_unknown(&self, sender: &Username) -> bool {
        self.unknown_senders
            .borrow()
            .get(sender)
            .is_some_and(|at| at.elapsed() < UNKNOWN_SENDER_TTL)
    }

    /// Remembers that the directory does not know `sender` (for a while, and only so many).
    pub fn note_unknown(&self, sender: &Username) {
        let mut unknown = self.unknown_senders.borrow_mut();
        if unknown.len() >= UNKNOWN_SENDERS_KEPT {
            unknown.retain(|_, at| at.elapsed() < UNKNOWN_SENDER_TTL);
        }
        if unknown.len() < UNKNOWN_SENDERS_KEPT {
            unknown.insert(sender.clone(), Instant::now());
        }
    }

    /// Records that the safety number for `peer`'s changed identity `pending` was shown.
    pub fn showed_pending(&self, peer: &Username, pending: &str) {
        self.shown_pending
            .borrow_mut()
            .insert(peer.clone(), pending.to_owned());
    }

    /// Whether `pending` is the changed identity of `peer` whose safety number was shown last;
    /// forgets it either way.
    pub fn take_shown_pending(&self, peer: &Username, pending: &str) -> bool {
        self.shown_pending.borrow_mut().remove(peer).as_deref() == Some(pending)
    }

    pub fn forget_session(&self, peer: &Username) {
        self.sessions.borrow_mut().remove(peer);
        self.records.borrow_mut().remove(peer);
    }

    /// Registers `username` at the directory: keyguard makes the identity, certifies our
    /// transport key and signs the request.
    pub async fn register(&self, username: Username) -> Result<Me, HostError> {
        if let Some(me) = self.me.borrow().as_ref() {
            return Err(HostError::new(
                "already-registered",
                format!("this host is already registered as {}", me.username),
            ));
        }
        let identity = self.keyguard.create_identity().await?;
        let transport_key = self.transport.public();
        let certificate = self
            .keyguard
            .sign(
                SignContext::TransportCertificate,
                &canonical::transport_certificate(&username, &transport_key),
            )
            .await?;
        let host_address = match &self.config.public_address {
            Some(a) => a.clone(),
            None => {
                HostAddress::parse(&self.config.listen.to_string()).map_err(HostError::internal)?
            }
        };
        let mut registration = Registration {
            username: username.clone(),
            identity,
            transport_key,
            transport_certificate: certificate,
            host_address,
            timestamp: crate::model::now_ms(),
            signature: certificate,
        };
        let bytes = registration.signed_bytes(&self.config.directory_key);
        registration.signature = self
            .keyguard
            .sign(SignContext::DirectoryRegistration, &bytes)
            .await?;
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
                            "taken",
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

    /// The transport key a peer host must present, from its pinned contact.
    pub fn contact_transport_key(contact: &Contact) -> Result<AgreementPublicKey, HostError> {
        let bytes = hex::decode(&contact.transport_key).map_err(HostError::internal)?;
        AgreementPublicKey::from_bytes(&bytes).map_err(HostError::internal)
    }
}
