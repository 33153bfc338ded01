//! The inbox: envelopes from other hosts, checked, opened and stored in the order they came.
//!
//! ```text
//!  peer port ──Envelope──► Inbox ──► blocked? ─► sender's record (trust): link key must match
//!                                 ─► session open (sessions) ─► storage (dedupe, hash chain)
//!                                 ─► receipt                  └─► events
//!                                 └─ call signals ─► CallManager (never stored)
//! ```
//!
//! Owns: one FIFO lock per sender (arrival order) and the sender names the directory said it
//! does not know (answered "later" for a while without asking again, so envelopes under
//! made-up names cannot spend our directory budget).
//!
//! Serializes: envelopes from one sender take that sender's lock when they arrive and hold it
//! until their storage job has its place in the storage queue, so one sender's messages are
//! stored (and their hash chain checked) in the order the sending host sent them. Different
//! senders do not wait for each other.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::Addr;
use smvs_crypto::AgreementPublicKey;
use smvs_schema::{ErrorCode, Username};

use crate::calls::{CallManager, SignalIn};
use crate::error::{HostError, IncomingError};
use crate::events::Events;
use crate::model::{
    Contact, Direction, FailReason, HostEvent, Integrity, MessageId, Payload, SignalKind, Status,
    StoredMessage,
};
use crate::outbox::Outbox;
use crate::session::fresh::OsFresh;
use crate::session::{self, Content, Header, SessionV2};
use crate::sessions::{PrekeyAcceptance, ReceiptCheck, Sessions};
use crate::storage::{Arrival, Storage};
use crate::trust::Trust;

/// How long a sender name the directory did not know is answered "later" without asking the
/// directory again.
const UNKNOWN_SENDER_TTL: Duration = Duration::from_secs(30);
/// Unknown sender names remembered at most.
const UNKNOWN_SENDERS_KEPT: usize = 4096;
/// Per-sender arrival locks kept before unused ones are dropped.
const ARRIVAL_LOCKS_KEPT: usize = 1024;
/// The most a sealed envelope may be: session v2's largest bucket (v1's is 131072 + 40).
pub const MAX_SEALED: usize = 135_168;

/// An envelope as it arrived on a host link, as plain owned data.
#[derive(Debug, Clone)]
pub struct EnvelopeData {
    pub format: u16,
    pub id: Vec<u8>,
    pub sender: String,
    pub recipient: String,
    pub session_version: u16,
    /// Session v2: the id of the session it was sealed under (empty for v1).
    pub session_id: Vec<u8>,
    pub sealed: Vec<u8>,
    /// Session v2, prekey mode: the sender's handshake, sent until we answer.
    pub prekey_init: Option<session::PrekeyOffer>,
}

/// A session v2 handshake as it arrived on a host link.
#[derive(Debug, Clone)]
pub struct HandshakeOffer {
    pub sender: String,
    pub init: Vec<u8>,
    pub kem: Vec<u8>,
    pub kem_signature: Vec<u8>,
}

/// An envelope opened by its session: the content (None: stored before), what authenticates
/// the receipt, and for v2 the session as it is after opening (to be saved with the content).
struct Opened {
    content: Option<smvs_crypto::Zeroizing<Vec<u8>>>,
    check: ReceiptCheck,
    session: Option<SessionV2>,
    /// The session came from a prekey handshake just accepted: its transcript, remembered
    /// with it (see `SessionWrite::prekey_transcript`).
    prekey_transcript: Option<([u8; 32], i64)>,
}

/// What the receiving host signs for the sender.
#[derive(Debug, Clone)]
pub struct ReceiptData {
    pub id: MessageId,
    pub recipient: Username,
    pub stored_at: i64,
    pub tag: Vec<u8>,
}

/// What a name's directories say of an arriving link's host key (`Inbox::vouching`).
enum Vouching {
    /// Theirs, certified by this identity.
    Yes(smvs_crypto::IdentityBundle),
    /// They name another key.
    OtherKey,
    /// Nobody of that name there.
    Unknown,
    /// Cannot be told now (a directory down, directories that disagree, a record just asked).
    Unsure,
}

/// How many senders one link may still make us look up in the directory. Each link gets its
/// own (see `api::peer`); a link that names many users runs out and hears "later".
pub struct LookupBudget {
    left: std::cell::Cell<usize>,
}

impl LookupBudget {
    pub fn new(lookups: usize) -> LookupBudget {
        LookupBudget {
            left: std::cell::Cell::new(lookups),
        }
    }

    /// Takes one look-up; false when none is left.
    fn take(&self) -> bool {
        let left = self.left.get();
        if left == 0 {
            return false;
        }
        self.left.set(left - 1);
        true
    }
}

/// The rules the inbox applies.
#[derive(Debug, Clone, Copy)]
pub struct InboxSettings {
    /// Hold messages from users who are not contacts yet as requests.
    pub contacts_only: bool,
    /// Whether a peer's "delete everywhere" (and expiry) requests delete here too.
    pub honour_remote_delete: bool,
}

pub struct Inbox {
    trust: Rc<Trust>,
    sessions: Rc<Sessions>,
    storage: Storage,
    events: Events,
    calls: Addr<CallManager>,
    /// Told when a peer's envelope opens: their host reaches us, so ours may reach theirs.
    outbox: Outbox,
    settings: InboxSettings,
    arrival_order: RefCell<HashMap<Username, Arc<tokio::sync::Mutex<()>>>>,
    unknown_senders: RefCell<HashMap<Username, Instant>>,
    /// Moved on when the peer deletes a whole conversation here.
    epochs: Rc<crate::epochs::StorageEpochs>,
}

/// A local failure while taking an envelope: the peer hears "later" and no more (our storage
/// or keyguard errors are nobody else's business); the log has the details.
fn busy_here(e: HostError) -> IncomingError {
    tracing::warn!(error = %e, "could not take an envelope now");
    IncomingError::Later("the host cannot take it now".into())
}

fn refused(why: impl Into<String>) -> IncomingError {
    IncomingError::Refused(why.into())
}

/// The owners the inbox hands what arrives to.
pub struct InboxOwners {
    pub trust: Rc<Trust>,
    pub sessions: Rc<Sessions>,
    pub storage: Storage,
    pub events: Events,
    pub calls: Addr<CallManager>,
    pub outbox: Outbox,
    pub epochs: Rc<crate::epochs::StorageEpochs>,
}

/// Why a sender did not check out.
enum SenderCheck {
    /// The directory does not know the name: asking again at once would not help.
    Unknown,
    /// The link's key is not the one in the sender's record (possibly a stale cached record).
    WrongKey,
    Other(IncomingError),
}

impl Inbox {
    pub fn new(owners: InboxOwners, settings: InboxSettings) -> Inbox {
        let InboxOwners {
            trust,
            sessions,
            storage,
            events,
            calls,
            outbox,
            epochs,
        } = owners;
        Inbox {
            trust,
            sessions,
            storage,
            events,
            calls,
            outbox,
            epochs,
            settings,
            arrival_order: RefCell::new(HashMap::new()),
            unknown_senders: RefCell::new(HashMap::new()),
        }
    }

    /// Waits for this sender's turn (first come, first served).
    async fn arrival_turn(&self, sender: &Username) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut order = self.arrival_order.borrow_mut();
            // Any name can arrive (the key check comes later), so the table is kept small:
            // a lock nobody holds or waits for is only in the table, and can go.
            if order.len() >= ARRIVAL_LOCKS_KEPT {
                order.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            order
                .entry(sender.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        lock.lock_owned().await
    }

    /// Whether the directory said lately that it does not know `sender`.
    fn recently_unknown(&self, sender: &Username) -> bool {
        self.unknown_senders
            .borrow()
            .get(sender)
            .is_some_and(|at| at.elapsed() < UNKNOWN_SENDER_TTL)
    }

    /// Remembers that the directory does not know `sender` (for a while, and only so many).
    fn note_unknown(&self, sender: &Username) {
        let mut unknown = self.unknown_senders.borrow_mut();
        if unknown.len() >= UNKNOWN_SENDERS_KEPT {
            unknown.retain(|_, at| at.elapsed() < UNKNOWN_SENDER_TTL);
        }
        if unknown.len() < UNKNOWN_SENDERS_KEPT {
            unknown.insert(sender.clone(), Instant::now());
        }
    }

    /// Takes one envelope from the host whose Noise key is `remote_key`: stores it (or hands
    /// a call signal on) and returns the receipt, or says why not.
    pub async fn accept(
        &self,
        remote_key: AgreementPublicKey,
        env: EnvelopeData,
        lookups: &LookupBudget,
    ) -> Result<ReceiptData, IncomingError> {
        let me = self
            .trust
            .me()
            .map_err(|_| refused("this host has no user"))?;
        if env.session_version == session::SESSION_V2 && !self.sessions.speaks_v2() {
            // Kept at the sender: this host may speak v2 again (a staged upgrade rolled back).
            return Err(IncomingError::Later("session v2 is off here".into()));
        }
        let v2 = env.session_version == session::SESSION_V2;
        if env.format != session::ENVELOPE_FORMAT
            || !(env.session_version == session::SESSION_V1 || v2)
        {
            return Err(refused("unsupported envelope or session version"));
        }
        if env.sealed.len() > MAX_SEALED {
            return Err(refused("envelope too large"));
        }
        if env.recipient != me.username.as_str() {
            return Err(refused("wrong recipient"));
        }
        let sender = Username::parse(&env.sender).map_err(|e| refused(e.to_string()))?;
        let id = MessageId::from_slice(&env.id).ok_or_else(|| refused("bad message id"))?;
        // Envelopes from one sender are checked and queued for storage in arrival order.
        let turn = self.arrival_turn(&sender).await;
        let (contact, request) = self.verified_sender(&sender, remote_key, lookups).await?;
        // From here on the sender goes by the name this host knows them by (`bob@work` when
        // bob is at a scoped directory).
        let sender = contact.username.clone();
        // Session v2's state is ours from opening the envelope to storing what it held.
        let session_turn = if v2 {
            Some(self.sessions.lock(&sender).await)
        } else {
            None
        };
        let header = Header {
            id: &id,
            sender: &sender,
            recipient: &me.username,
        };
        let opened = if v2 {
            self.open_v2(&me, &contact, &header, &env).await?
        } else {
            // A contact that has spoken v2 with us never goes back to v1. Not refused: kept at
            // the sender, whose host may speak v2 again.
            if self.sessions.speaks_v2()
                && self.sessions.spoke_v2(&sender).await.map_err(busy_here)?
            {
                smvs_service::security_event!(warn, smvs_service::logging::PEER_REFUSED, peer = %sender, "did not take a session v1 envelope from a contact that speaks v2 (a downgrade)");
                return Err(IncomingError::Later(
                    "this contact speaks session v2 with us; a v1 envelope is a downgrade".into(),
                ));
            }
            let keys = self
                .sessions
                .keys(&me.identity, &sender, &contact.identity)
                .await
                .map_err(busy_here)?;
            let content =
                session::open(&keys, &header, &env.sealed).map_err(|e| refused(e.to_string()))?;
            Opened {
                content: Some(content),
                check: ReceiptCheck::V1(keys),
                session: None,
                prekey_transcript: None,
            }
        };
        let receipt = |check: &ReceiptCheck| -> Result<ReceiptData, IncomingError> {
            let stored_at = crate::model::now_ms();
            let tag = check.tag(&id, &me.username, stored_at).map_err(busy_here)?;
            Ok(ReceiptData {
                id,
                recipient: me.username.clone(),
                stored_at,
                tag,
            })
        };
        let Some(content) = opened.content else {
            // Stored before (a resend whose receipt was lost): the receipt again.
            return receipt(&opened.check);
        };
        let inner = session::decode_inner(&content).map_err(|e| refused(e.to_string()))?;
        if inner.id != id || inner.from.as_str() != sender.wire_str() || inner.to != me.username {
            return Err(refused("envelope header and content disagree"));
        }
        // It opened under the session keys, so the sender's host really reached us.
        self.outbox.peer_reached_us(&sender);
        // A contact's host passes on the key log heads it checked: compared with ours at once,
        // off this path (a check asks the directory). Not from strangers, who could make us
        // ask at will.
        if !request && self.trust.heads_from_contact(&sender, &inner.log_heads) {
            let trust = self.trust.clone();
            tokio::task::spawn_local(async move { trust.check_log_heads().await });
        }
        let payload = match inner.content {
            Content::Message(payload) => payload,
            Content::Call(signal) => {
                drop(turn);
                // The ratchet moved: on disk before the signal is acted on.
                if let Some(session) = opened.session {
                    self.sessions
                        .save_with(&sender, session, opened.prekey_transcript)
                        .await
                        .map_err(busy_here)?;
                }
                // Someone we never answered does not get to ring us (their answer to our own
                // call is fine: calling them accepted their request).
                if request && signal.kind == SignalKind::Offer {
                    return Err(refused("not accepted"));
                }
                self.calls
                    .send(SignalIn {
                        from: sender.clone(),
                        from_identity: contact.identity.to_bytes().to_vec(),
                        time: inner.time,
                        signal,
                    })
                    .await
                    .map_err(|_| IncomingError::Later("the host is shutting down".into()))??;
                return receipt(&opened.check);
            }
        };
        let message = StoredMessage {
            id,
            peer: sender.clone(),
            from: sender.clone(),
            to: me.username.clone(),
            time: inner.time,
            payload: payload.clone(),
            prev_hash: inner.prev_hash,
            status: if request {
                Status::Held
            } else {
                Status::Received
            },
            reason: FailReason::None,
            integrity: Integrity::Unchecked,
            direction: Direction::In,
        };
        // The message and the ratchet that opened it go to disk in one transaction. The
        // contact's state is the next envelope's as soon as the job has its place in the
        // storage queue (jobs run in order): envelopes of one sender are committed in groups,
        // not one fsync each. Should the job fail, the cache is dropped: the next reader reads
        // the disk.
        let write = match &opened.session {
            Some(session) => {
                let mut write = self.sessions.write(&sender, session).map_err(busy_here)?;
                write.prekey_transcript = opened.prekey_transcript;
                self.sessions.saved(&sender, session.clone());
                Some(write)
            }
            None => None,
        };
        let stored = self
            .storage
            .store_incoming(message, write, move || drop((turn, session_turn)))
            .await;
        if stored.is_err() && opened.session.is_some() {
            self.sessions.drop_cached(&sender);
        }
        let arrival = stored?;
        match arrival {
            Arrival::Stored(integrity) => {
                self.stored(&sender, id, inner.time, &payload, integrity)
                    .await?
            }
            Arrival::Duplicate => {}
            Arrival::Collision => {
                tracing::warn!(peer = %sender, "refused an envelope whose id is one of our own messages");
                return Err(refused("the message id is taken in this conversation"));
            }
        }
        receipt(&opened.check)
    }

    /// `HostLink.announceAddress`: a contact's host moved (see [`Trust::address_announced`]).
    /// What waits for that contact is tried at the new address at once.
    pub async fn accept_address(
        &self,
        remote_key: &AgreementPublicKey,
        peer: &Username,
        address: smvs_schema::HostAddress,
        issued_at: i64,
        signature: &smvs_crypto::Signature,
    ) -> Result<(), HostError> {
        // The contact's name here may be scoped (`bob@work`): what waits is queued under it.
        if let Some(contact) = self
            .trust
            .address_announced(remote_key, peer, address, issued_at, signature)
            .await?
        {
            self.outbox.kick(&contact);
        }
        Ok(())
    }

    /// Our identity's X-Wing key and its signature, for a peer's host that will initiate
    /// (`HostLink.sessionKeys`). Unimplemented when session v2 is off here, as on an old host.
    pub async fn own_session_keys(
        &self,
    ) -> Result<(smvs_crypto::XWingPublicKey, smvs_crypto::Signature), HostError> {
        if !self.sessions.speaks_v2() {
            return Err(HostError::new(
                ErrorCode::BadRequest,
                "session v2 is off here",
            ));
        }
        let me = self.trust.me()?;
        let (party, signature) = self.sessions.own_party(&me.username, &me.identity).await?;
        Ok((party.kem, signature))
    }

    /// Session v2's handshake from `sender`'s host (the link's key is `remote_key`): checked
    /// as an envelope's sender is, then answered, and the new session replaces ours. While a
    /// handshake of ours with the sender is under way (or its session is in use), "later".
    pub async fn accept_handshake(
        &self,
        remote_key: AgreementPublicKey,
        offer: HandshakeOffer,
        lookups: &LookupBudget,
    ) -> Result<Vec<u8>, IncomingError> {
        if !self.sessions.speaks_v2() {
            return Err(refused("session v2 is off here"));
        }
        let me = self
            .trust
            .me()
            .map_err(|_| refused("this host has no user"))?;
        let sender = Username::parse(&offer.sender).map_err(|e| refused(e.to_string()))?;
        let turn = self.arrival_turn(&sender).await;
        let (contact, _request) = self.verified_sender(&sender, remote_key, lookups).await?;
        let sender = contact.username.clone();
        let theirs = self.their_party(&contact, &offer.kem, &offer.kem_signature)?;
        let Some(_session_turn) = self.sessions.try_lock(&sender) else {
            return Err(IncomingError::Later(
                "a session handshake with you is under way here".into(),
            ));
        };
        let (ours, _) = self
            .sessions
            .own_party(&me.username, &me.identity)
            .await
            .map_err(busy_here)?;
        let response = self
            .sessions
            .respond(&ours, &theirs, &offer.init)
            .await
            .map_err(|e| {
                if e.code == ErrorCode::BadRequest {
                    refused(e.message)
                } else {
                    busy_here(e)
                }
            })?;
        drop(turn);
        Ok(response)
    }

    /// The sender's complete identity for a handshake it started: its X-Wing key `kem` must be
    /// signed by its pinned identity. The handshake counts against the sender's budget (and
    /// everyone's): past it, "later" before any work.
    fn their_party(
        &self,
        contact: &Contact,
        kem: &[u8],
        signature: &[u8],
    ) -> Result<crate::session::handshake::Party, IncomingError> {
        let kem = smvs_crypto::XWingPublicKey::from_bytes(kem)
            .map_err(|e| refused(format!("X-Wing key: {e}")))?;
        let signature = smvs_crypto::Signature::from_bytes(signature)
            .map_err(|e| refused(format!("X-Wing key signature: {e}")))?;
        smvs_crypto::verify_identity_kem(&contact.identity, &kem, &signature)
            .map_err(|_| refused("the X-Wing key is not signed by the sender's identity"))?;
        if !self.sessions.may_try(&contact.username, true) {
            return Err(IncomingError::Later(
                "too many session handshakes from you lately".into(),
            ));
        }
        Ok(crate::session::handshake::Party {
            username: contact.username.clone(),
            identity: contact.identity,
            kem,
        })
    }

    /// The contact who sent under the name `sender` (as their directory has it) on a link
    /// whose key is `remote_key`, checked by [`Inbox::verified_as`]. With scoped directories
    /// one name may be several users here (`bob`, `bob@work`), told apart by the link's key:
    /// the one pinned with it, else the one whose directory vouches for it.
    ///
    /// A host key proves nothing by being in a record (a certificate is the record's identity's
    /// word, and anyone may name someone else's key), so a key that two of the names claim is
    /// nobody's until it is not: refused when either is blocked, else "later", and nothing is
    /// pinned meanwhile.
    async fn verified_sender(
        &self,
        sender: &Username,
        remote_key: AgreementPublicKey,
        lookups: &LookupBudget,
    ) -> Result<(Rc<Contact>, bool), IncomingError> {
        let names = self.trust.local_names(sender);
        if names.len() == 1 {
            return self.verified_as(sender, remote_key, lookups).await;
        }
        let pinned = self
            .trust
            .pinned_with_key(sender, &remote_key)
            .await
            .map_err(busy_here)?;
        match pinned.as_slice() {
            [] => {}
            [one] => return self.verified_as(&one.username, remote_key, lookups).await,
            several => {
                if several.iter().any(|c| c.blocked) {
                    return Err(refused("not accepted"));
                }
                return Err(self.ambiguous(sender, "pinned"));
            }
        }
        // Pinned under none of them: what each one's directory says of the key, before
        // anything is pinned. (The look-ups are the ones `verified_as` then reads from the
        // cache; a name the directories did not know a moment ago is not asked again.)
        let mut vouching = Vec::new();
        let mut unsure = false;
        let mut someone_else = false;
        let mut unknown_lately = false;
        for name in &names {
            if self.recently_unknown(name) {
                unknown_lately = true;
                continue;
            }
            if !lookups.take() {
                return Err(IncomingError::Later(
                    "this link named too many senders; open another later".into(),
                ));
            }
            match self.vouching(name, &remote_key).await {
                Vouching::Yes(identity) => vouching.push((name.clone(), identity)),
                Vouching::OtherKey => someone_else = true,
                // Not for a contact (one introduced may be at no directory of ours): anyone
                // could then make the host turn that contact away for a while.
                Vouching::Unknown => {
                    if matches!(self.trust.contact(name).await, Ok(None)) {
                        self.note_unknown(name);
                    }
                }
                Vouching::Unsure => unsure = true,
            }
        }
        // A contact's own identity certifying the key settles it: nobody else can make that.
        let mut proven = Vec::new();
        for (name, identity) in &vouching {
            let contact = self.trust.contact(name).await.map_err(busy_here)?;
            if contact.is_some_and(|c| &c.identity == identity) {
                proven.push(name.clone());
            }
        }
        if let [one] = proven.as_slice() {
            return self.verified_as(one, remote_key, lookups).await;
        }
        // A name not known a moment ago is not asked again so soon, so it cannot tell either.
        if unsure || unknown_lately {
            // One that cannot be checked now might be the sender: never a refusal (which
            // would make the sender's host give the envelope up), nor a pin of another.
            return Err(IncomingError::Later(
                "the sender cannot be looked up now".into(),
            ));
        }
        // The same identity under two names is one user: the first name (the plain one) is
        // theirs (a pin under the other is then refused, as the same identity).
        let one_user = vouching.windows(2).all(|w| w[0].1 == w[1].1);
        match vouching.as_slice() {
            [(one, _), ..] if one_user => self.verified_as(one, remote_key, lookups).await,
            [] if someone_else => {
                smvs_service::security_event!(warn, smvs_service::logging::PEER_REFUSED, peer = %sender, "refused an envelope: the sending host's key is not the sender's");
                Err(refused(
                    "the sending host's key does not match the sender's directory record",
                ))
            }
            [] => Err(refused("unknown sender")),
            _ => Err(self.ambiguous(sender, "vouched for")),
        }
    }

    /// What `name`'s directories say of the host key `key` (see `verified_sender`). A record
    /// that names another key is asked again when it may have changed since it was cached.
    async fn vouching(&self, name: &Username, key: &AgreementPublicKey) -> Vouching {
        let mut fresh = false;
        loop {
            let answers = match self.trust.lookup(name, fresh).await {
                Ok(answers) => answers,
                Err(e) if e.code == ErrorCode::UnknownUser || e.code == ErrorCode::BadRequest => {
                    return Vouching::Unknown
                }
                Err(_) => return Vouching::Unsure,
            };
            match answers.agreed() {
                Ok(record) if &record.user.transport_key == key => {
                    return Vouching::Yes(record.user.identity)
                }
                Ok(_) if !fresh && self.trust.may_refresh(name) => fresh = true,
                // Asked a moment ago: it may have changed since all the same.
                Ok(_) if !fresh => return Vouching::Unsure,
                Ok(_) => return Vouching::OtherKey,
                // The directories disagree: the user's own look-up raises the alarm.
                Err(_) => return Vouching::Unsure,
            }
        }
    }

    /// Two of the names `sender` may have here claim the link's key (see `verified_sender`).
    fn ambiguous(&self, sender: &Username, how: &str) -> IncomingError {
        smvs_service::security_event!(warn, smvs_service::logging::PEER_REFUSED, peer = %sender, how, "a host key is claimed by two users of this name at different directories; nothing is taken from it until one of them is removed or blocked");
        IncomingError::Later(format!(
            "the sending host's key is {how} for more than one user named {} here",
            sender.wire_str()
        ))
    }

    /// The sender's pinned contact, checked: not blocked, and `remote_key` (the link's) is the
    /// host key the directory names for it (within the link's look-up budget). Also whether
    /// it is a request (contacts-only mode, someone we never wrote to), marked as such.
    async fn verified_as(
        &self,
        sender: &Username,
        remote_key: AgreementPublicKey,
        lookups: &LookupBudget,
    ) -> Result<(Rc<Contact>, bool), IncomingError> {
        let sender = sender.clone();
        // Blocked senders are turned away before anything is decrypted or stored. The answer
        // does not say why.
        let known = self.trust.contact(&sender).await.map_err(busy_here)?;
        if known.as_ref().is_some_and(|c| c.blocked) {
            tracing::debug!(peer = %sender, "refused an envelope from a blocked contact");
            return Err(refused("not accepted"));
        }
        // In contacts-only mode, someone we never wrote to is a request: held until we answer.
        let request = self.settings.contacts_only && known.as_ref().is_none_or(|c| c.request);
        // The pinned host key first: a link that presents the key we pinned for this sender
        // costs no directory look-up beyond the shared record cache. A sender we never pinned,
        // or one whose host key is not the pinned one, is looked up, within the link's budget.
        let pinned = known
            .as_ref()
            .is_some_and(|c| c.transport_key == remote_key);
        if !pinned && !lookups.take() {
            tracing::debug!(peer = %sender, "a link asked for more directory look-ups than it may");
            return Err(IncomingError::Later(
                "this link named too many senders; open another later".into(),
            ));
        }
        // The cached record may predate a move or a new key: on a mismatch, ask again, at
        // most once per sender in a while (trust keeps the pace), else "later".
        let checked = match self
            .check_sender(&sender, &remote_key, false, request)
            .await
        {
            Err(SenderCheck::WrongKey) if self.trust.may_refresh(&sender) => {
                self.check_sender(&sender, &remote_key, true, request).await
            }
            Err(SenderCheck::WrongKey) => Err(SenderCheck::Other(IncomingError::Later(
                "the sender's host key is checked again in a few seconds".into(),
            ))),
            other => other,
        };
        let mut contact = checked.map_err(|e| match e {
            SenderCheck::Unknown => refused("unknown sender"),
            SenderCheck::WrongKey => {
                smvs_service::security_event!(warn, smvs_service::logging::PEER_REFUSED, peer = %sender, "refused an envelope: the sending host's key is not the sender's");
                refused("the sending host's key does not match the sender's directory record")
            }
            SenderCheck::Other(e) => e,
        })?;
        // Checked again: a block may have landed while the sender was being looked up.
        if contact.blocked {
            return Err(refused("not accepted"));
        }
        if request {
            self.trust
                .mark_request(&mut contact)
                .await
                .map_err(busy_here)?;
        }
        Ok((contact, request))
    }

    /// Opens a session v2 envelope from `sender` (under its session lock). The same envelope
    /// again, of a message stored before, does not open (its ratchet key is spent): `content`
    /// is None, and the receipt is given again. An envelope of
    /// a session we do not have, or that does not open in ours, is answered "session-reset"
    /// (the sender makes a new session and sends it again), so nothing accepted is lost.
    ///
    /// An envelope that carries a prekey handshake, of a session we do not have, makes that
    /// session first ([`Inbox::accept_prekey`]); it is stored only if the envelope opens.
    async fn open_v2(
        &self,
        me: &crate::trust::Me,
        contact: &Contact,
        header: &Header<'_>,
        env: &EnvelopeData,
    ) -> Result<Opened, IncomingError> {
        let sender = &contact.username;
        let reset =
            |why: &str| IncomingError::Later(format!("{}: {why}", crate::error::SESSION_RESET));
        let current = self.sessions.current(sender).await.map_err(busy_here)?;
        let (mut session, prekey_transcript) = match (current, &env.prekey_init) {
            (Some(session), _) if env.session_id == session.id() => (session, None),
            // A prekey handshake makes a session only where there is none: a live one is not
            // replaced by an offer that may be older (the sender's host reaches us, and makes
            // a new session interactively after the reset).
            (None, Some(offer)) => {
                let (session, seen) = self.accept_prekey(me, contact, offer).await?;
                if env.session_id != session.id() {
                    return Err(refused(
                        "the envelope names another session than its prekey handshake",
                    ));
                }
                (session, Some(seen))
            }
            (None, None) => return Err(reset("no session with you here")),
            (Some(_), _) => return Err(reset("not the session we have with you")),
        };
        if !self.sessions.may_try(sender, false) {
            return Err(IncomingError::Later(
                "too many of your envelopes did not open lately".into(),
            ));
        }
        let content = match session.open(header, &env.sealed, &mut OsFresh) {
            Ok(content) => content,
            // The same envelope again (its receipt was lost): its key is spent, so it does not
            // open; if the message is stored, the receipt again. (A resend our hosts make is
            // sealed anew and opens; storage then finds the duplicate.) Only this path asks
            // storage before the message's own job, which would wait for the commits queued
            // before it.
            Err(_) if self.storage.has_incoming(sender, *header.id).await? => {
                return Ok(Opened {
                    content: None,
                    check: ReceiptCheck::V2(session.receipts()),
                    session: None,
                    prekey_transcript: None,
                });
            }
            Err(e) => {
                self.sessions.may_try(sender, true);
                tracing::info!(peer = %sender, error = %e, "a session v2 envelope did not open; asking for a new session");
                return Err(reset("the envelope does not open in our session"));
            }
        };
        Ok(Opened {
            content: Some(content),
            check: ReceiptCheck::V2(session.receipts()),
            session: Some(session),
            prekey_transcript,
        })
    }

    /// The session of `contact`'s prekey handshake `offer` (under its session lock): its
    /// X-Wing key must be signed by the pinned identity, the handshake must name a prekey
    /// keyguard still holds, and must not have been accepted before (a replay, or a resend of
    /// a session since replaced here, is answered "session-reset": the sender makes a new
    /// one). Costs keyguard five questions, so it counts against the sender's trouble budget.
    async fn accept_prekey(
        &self,
        me: &crate::trust::Me,
        contact: &Contact,
        offer: &session::PrekeyOffer,
    ) -> Result<(SessionV2, ([u8; 32], i64)), IncomingError> {
        let sender = &contact.username;
        let theirs = self.their_party(contact, &offer.kem, &offer.kem_signature)?;
        let (ours, _) = self
            .sessions
            .own_party(&me.username, &me.identity)
            .await
            .map_err(busy_here)?;
        match self
            .sessions
            .accept_prekey(&ours, &me.identity, &theirs, &offer.init)
            .await
        {
            Ok(PrekeyAcceptance::Made(session, seen)) => {
                tracing::info!(peer = %sender, "made a session v2 from our prekey (the peer initiated while we were away)");
                Ok((*session, seen))
            }
            // Rotated out while the sender waited: it makes a new session (we answer now).
            Ok(PrekeyAcceptance::Gone(id)) => Err(IncomingError::Later(format!(
                "{}: the handshake names prekey {id}, which is no longer held here",
                crate::error::SESSION_RESET
            ))),
            Ok(PrekeyAcceptance::Replayed) => {
                smvs_service::security_event!(warn, smvs_service::logging::PEER_REFUSED, peer = %sender, "a prekey handshake accepted before came again (a replay, or a session replaced since)");
                Err(IncomingError::Later(format!(
                    "{}: this prekey handshake was used before",
                    crate::error::SESSION_RESET
                )))
            }
            Err(e) if e.code == ErrorCode::BadRequest => Err(refused(e.message)),
            Err(e) => Err(busy_here(e)),
        }
    }

    /// What follows a newly stored message: events, and what a control message asks for.
    async fn stored(
        &self,
        sender: &Username,
        id: MessageId,
        time: i64,
        payload: &Payload,
        integrity: Integrity,
    ) -> Result<(), IncomingError> {
        match payload {
            Payload::Text(_) => {
                self.events.publish(HostEvent::MessageReceived {
                    id,
                    peer: sender.clone(),
                    time,
                });
                if matches!(integrity, Integrity::Gap | Integrity::OutOfOrder) {
                    tracing::warn!(peer = %sender, ?integrity, "conversation integrity problem");
                    self.events.publish(HostEvent::IntegrityProblem {
                        id,
                        peer: sender.clone(),
                        time,
                    });
                }
            }
            Payload::Delete(ids) => {
                if self.settings.honour_remote_delete {
                    self.apply_delete(sender, ids, id).await?;
                }
            }
            Payload::Expire(seconds) => {
                // Expiry deletes history too, so it obeys the same switch as remote deletes.
                if self.settings.honour_remote_delete {
                    self.storage.set_expiry(sender, *seconds).await?
                }
            }
            Payload::Introduction(evidence) => {
                // Stored already; an introduction that does not check out changes nothing.
                if let Err(e) = self.trust.introduced(sender, evidence).await {
                    tracing::info!(peer = %sender, error = %e, "an introduction was not taken");
                }
            }
        }
        Ok(())
    }

    /// The sender's pinned contact, provided the directory's record for the sender names the
    /// host key this envelope came with. The link's key is checked against the directory
    /// before anything is pinned or stored, so a host that merely claims a name leaves no
    /// trace.
    async fn check_sender(
        &self,
        sender: &Username,
        remote_key: &AgreementPublicKey,
        fresh: bool,
        request: bool,
    ) -> Result<Rc<Contact>, SenderCheck> {
        if self.recently_unknown(sender) {
            // Not refused: the name may have been registered since (its host will retry).
            return Err(SenderCheck::Other(IncomingError::Later(
                "the sender was not in the directory a moment ago".into(),
            )));
        }
        let answers = match self.trust.lookup(sender, fresh).await {
            Ok(answers) => answers,
            // No directory can be reached: a contact we pinned is known by its host key.
            Err(e) if e.code == ErrorCode::Directory => {
                return match self.trust.contact_without_directory(sender).await {
                    Ok(Some(contact)) if &contact.transport_key == remote_key => Ok(contact),
                    _ => Err(SenderCheck::Other(IncomingError::Later(
                        "the sender cannot be looked up now".into(),
                    ))),
                };
            }
            Err(e) if e.code == ErrorCode::UnknownUser => {
                // Someone we were introduced to may be at a directory we do not use: their
                // pinned host key is what we know them by.
                if let Ok(Some(contact)) = self.trust.contact(sender).await {
                    if contact.introduced_by.is_some()
                        && contact.pending.is_none()
                        && contact.alarm.is_none()
                    {
                        return match &contact.transport_key == remote_key {
                            true => Ok(contact),
                            false => Err(SenderCheck::WrongKey),
                        };
                    }
                }
                self.note_unknown(sender);
                return Err(SenderCheck::Unknown);
            }
            Err(_) => {
                return Err(SenderCheck::Other(IncomingError::Later(
                    "the sender cannot be looked up now".into(),
                )))
            }
        };
        // When the directories agree, the link's key must be the one they vouch for. When
        // they do not, a sender we never pinned leaves no trace (the user's own look-up
        // raises the alarm); for a pinned one, judging below raises it, or finds the answers
        // the user still hears in agreement.
        match answers.agreed() {
            Ok(record) if &record.user.transport_key != remote_key => {
                return Err(SenderCheck::WrongKey)
            }
            Ok(_) => {}
            Err(e) => {
                if !answers.names_transport_key(remote_key) {
                    return Err(SenderCheck::WrongKey);
                }
                if self.trust.contact(sender).await.ok().flatten().is_none() {
                    return Err(SenderCheck::Other(IncomingError::Later(e.message)));
                }
            }
        }
        match self.trust.pinned_contact(sender, false, request).await {
            // The key must be one a directory vouches for with the identity that is pinned
            // (not one it shows with an identity the user refused).
            Ok((contact, _)) if !answers.vouches(&contact.identity, remote_key) => {
                Err(SenderCheck::WrongKey)
            }
            Ok((contact, _)) => Ok(contact),
            Err(e) if e.code == ErrorCode::KeyChanged => {
                Err(SenderCheck::Other(IncomingError::Later(
                    "the sender's identity key changed and is not accepted yet".into(),
                )))
            }
            Err(e) if e.code == ErrorCode::DirectoriesDisagree => {
                Err(SenderCheck::Other(IncomingError::Later(
                    "the directories disagree about the sender's identity key".into(),
                )))
            }
            Err(_) => Err(SenderCheck::Other(IncomingError::Later(
                "the sender cannot be checked now".into(),
            ))),
        }
    }

    async fn apply_delete(
        &self,
        peer: &Username,
        ids: &[MessageId],
        request: MessageId,
    ) -> Result<(), IncomingError> {
        if ids.is_empty() {
            let deleted = self.storage.delete(peer, None, Some(request)).await;
            // The key changed whether or not the WAL could be wiped at once (the move to a
            // new epoch wipes it again); a request that found nothing moves nothing on.
            if !matches!(deleted, Ok(0)) {
                self.epochs.kick();
            }
            deleted?;
            self.events.publish(HostEvent::Deleted {
                id: None,
                peer: peer.clone(),
            });
        } else {
            // All in one storage job and one checkpoint, however many ids the request names;
            // only what was here is announced.
            for id in self.storage.delete_from_peer(peer, ids.to_vec()).await? {
                self.events.publish(HostEvent::Deleted {
                    id: Some(id),
                    peer: peer.clone(),
                });
            }
        }
        Ok(())
    }
}
