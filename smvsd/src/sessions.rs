//! The sessions owner: the keys each contact's envelopes are sealed with.
//!
//! Owns: session v1's keys per contact (derived through keyguard the first time they are
//! needed, and dropped when the contact's pinned identity changes), and session v2's state per
//! contact (loaded from storage, changed only under the contact's lock, saved before anything
//! sealed under it leaves the host or together with what it opened), and the handshakes that
//! make v2 sessions.
//!
//! ```text
//!  outbox: no session ─► link.sessionKeys ─► Initiator ─► link.handshake ─► keyguard (2) ─► save
//!  inbox:  handshake  ─► respond ─► keyguard (2) ─► save (replacing ours) ─► response
//!  start:  rollback counter: keyguard's ≠ the database's ─► forget every v2 session
//! ```
//!
//! Serializes: each contact's v2 state has an async lock ([`Sessions::lock`]), held from
//! loading the state to saving it (sealing a batch, opening an envelope, a handshake). A
//! handshake asked for while ours with that contact is under way is answered "later"; the
//! outbox's backoff (with jitter) settles who goes first. v1 keys need no lock: two first uses
//! derive the same keys twice and the second insert wins.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

use smvs_crypto::{IdentityBundle, Signature, XWingPublicKey, Zeroizing};
use smvs_schema::host_capnp::{handshake_outcome, host_link};
use smvs_schema::Username;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::HostError;
use crate::guard::Guard;
use crate::session::fresh::OsFresh;
use crate::session::handshake::{self, GuardAsk, Initiator, Party, Pending};
use crate::session::{self, PrekeyOffer, SessionKeys, SessionV2};
use crate::storage::{SessionWrite, Storage};

/// Keyguard's question for `ask` of `pending`.
pub fn question<'a>(
    pending: &'a Pending,
    ask: &'a GuardAsk,
) -> smvs_keyguard::HandshakeQuestion<'a> {
    let (prekey, peer, ciphertext) = ask.inputs();
    smvs_keyguard::HandshakeQuestion {
        operation: ask.operation(),
        component: ask.component(),
        transcript: pending.transcript(),
        prekey,
        peer,
        ciphertext,
    }
}

/// Why no v2 session could be made with a contact.
#[derive(Debug)]
pub enum HandshakeFailure {
    /// The peer's host has no session v2 (it answered "unimplemented").
    NotSpoken,
    /// Not now (the peer is busy with a handshake of its own, keyguard is away, …).
    Later(String),
    /// Never (the peer refused, or answered something that does not check out).
    Refused(String),
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeFailure::NotSpoken => f.write_str("the peer's host does not speak session v2"),
            HandshakeFailure::Later(why) => write!(f, "session handshake, later: {why}"),
            HandshakeFailure::Refused(why) => write!(f, "session handshake refused: {why}"),
        }
    }
}

/// Handshakes a peer may make us answer, and envelopes of theirs that may fail to open, in
/// [`TROUBLE_WINDOW`]; past that they are answered "later" without the work (each costs
/// keyguard calls, ML-KEM operations and up to [`crate::session::ratchet::MAX_SKIP`] key
/// derivations).
const TROUBLE_PER_WINDOW: u32 = 8;
/// The same, over all peers together: many hostile contacts do not multiply keyguard's work
/// past this (honest handshakes then wait a window, as after "later").
const ALL_TROUBLE_PER_WINDOW: u32 = 64;
const TROUBLE_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

/// How often the database is stamped with a new rollback counter.
pub const RESTAMP_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// How long each handshake call to the peer's host may take (the contact's lock is held).
const HANDSHAKE_RPC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A peer's words, for our log: cut short, control characters dropped.
fn peer_text(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// How much costly session work peers may cause: [`TROUBLE_PER_WINDOW`] per peer and
/// [`ALL_TROUBLE_PER_WINDOW`] in all, per [`TROUBLE_WINDOW`].
struct TroubleBudget {
    per_peer: HashMap<Username, (u32, std::time::Instant)>,
    all: (u32, std::time::Instant),
}

impl TroubleBudget {
    fn new(now: std::time::Instant) -> TroubleBudget {
        TroubleBudget {
            per_peer: HashMap::new(),
            all: (0, now),
        }
    }

    fn may_try(&mut self, peer: &Username, counted: bool, now: std::time::Instant) -> bool {
        if self.per_peer.len() >= 4096 {
            self.per_peer
                .retain(|_, (_, since)| now.duration_since(*since) < TROUBLE_WINDOW);
        }
        let entry = self.per_peer.entry(peer.clone()).or_insert((0, now));
        if now.duration_since(entry.1) >= TROUBLE_WINDOW {
            *entry = (0, now);
        }
        if now.duration_since(self.all.1) >= TROUBLE_WINDOW {
            self.all = (0, now);
        }
        // (The shared cap stops only new costly work, never the check before an envelope is
        // opened: hostile contacts cannot hold up everyone's messages with it.)
        if entry.0 >= TROUBLE_PER_WINDOW || counted && self.all.0 >= ALL_TROUBLE_PER_WINDOW {
            return false;
        }
        if counted {
            entry.0 += 1;
            self.all.0 += 1;
        }
        true
    }
}

pub struct Sessions {
    keyguard: Rc<Guard>,
    storage: Storage,
    /// The highest session version this host speaks (1 turns v2 off, as an old host).
    max_version: u16,
    keys: RefCell<HashMap<Username, (IdentityBundle, Rc<SessionKeys>)>>,
    v2: RefCell<HashMap<Username, SessionV2>>,
    locks: RefCell<HashMap<Username, Arc<Mutex<()>>>>,
    /// Our identity's X-Wing key and its signature, once asked for.
    own_kem: RefCell<Option<(IdentityBundle, XWingPublicKey, Signature)>>,
    /// Handshakes answered and envelopes that did not open, per peer and in all.
    trouble: RefCell<TroubleBudget>,
}

impl Sessions {
    pub fn new(keyguard: Rc<Guard>, storage: Storage, max_version: u16) -> Sessions {
        Sessions {
            keyguard,
            storage,
            max_version,
            keys: RefCell::new(HashMap::new()),
            v2: RefCell::new(HashMap::new()),
            locks: RefCell::new(HashMap::new()),
            own_kem: RefCell::new(None),
            trouble: RefCell::new(TroubleBudget::new(std::time::Instant::now())),
        }
    }

    /// Whether `peer` may make us do costly session work now (a handshake, or trying an
    /// envelope after failed ones); counts it when `counted`.
    pub fn may_try(&self, peer: &Username, counted: bool) -> bool {
        self.trouble
            .borrow_mut()
            .may_try(peer, counted, std::time::Instant::now())
    }

    /// Whether this host speaks session v2.
    pub fn speaks_v2(&self) -> bool {
        self.max_version >= session::SESSION_V2
    }

    /// The session v1 keys between our identity `me` and `peer`'s pinned `identity`.
    pub async fn keys(
        &self,
        me: &IdentityBundle,
        peer: &Username,
        identity: &IdentityBundle,
    ) -> Result<Rc<SessionKeys>, HostError> {
        if let Some((pinned, keys)) = self.keys.borrow().get(peer) {
            if pinned == identity {
                return Ok(keys.clone());
            }
        }
        let salt = session::agreement_salt(me, identity);
        let shared = self
            .keyguard
            .derive_shared_key(&identity.agreement_key, &salt, session::AGREEMENT_INFO)
            .await?;
        let keys = Rc::new(SessionKeys::from_shared(&shared).map_err(HostError::internal)?);
        self.keys
            .borrow_mut()
            .insert(peer.clone(), (*identity, keys.clone()));
        Ok(keys)
    }

    /// Drops everything kept for `peer` (its pinned identity changed): v1 keys and the v2
    /// session (a new identity needs a new handshake).
    pub async fn forget(&self, peer: &Username) -> Result<(), HostError> {
        self.keys.borrow_mut().remove(peer);
        let _turn = self.lock(peer).await;
        self.v2.borrow_mut().remove(peer);
        self.storage.forget_session(peer, true).await?;
        Ok(())
    }

    /// Waits for `peer`'s v2 state to be ours.
    pub async fn lock(&self, peer: &Username) -> OwnedMutexGuard<()> {
        self.lock_of(peer).lock_owned().await
    }

    /// `peer`'s v2 state, if nobody else has it now.
    pub fn try_lock(&self, peer: &Username) -> Option<OwnedMutexGuard<()>> {
        self.lock_of(peer).try_lock_owned().ok()
    }

    fn lock_of(&self, peer: &Username) -> Arc<Mutex<()>> {
        let mut locks = self.locks.borrow_mut();
        if locks.len() >= 4096 {
            locks.retain(|_, l| Arc::strong_count(l) > 1);
        }
        locks
            .entry(peer.clone())
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone()
    }

    /// `peer`'s v2 session, if there is one (call under [`Sessions::lock`]: it fills the
    /// cache). A stored state that does not read is forgotten (logged), so the contact gets a
    /// new handshake rather than a stall.
    pub async fn current(&self, peer: &Username) -> Result<Option<SessionV2>, HostError> {
        if let Some(s) = self.v2.borrow().get(peer) {
            return Ok(Some(s.clone()));
        }
        let Some(bytes) = self.storage.session(peer).await? else {
            return Ok(None);
        };
        match SessionV2::from_bytes(&bytes) {
            Ok(s) => {
                self.v2.borrow_mut().insert(peer.clone(), s.clone());
                Ok(Some(s))
            }
            Err(e) => {
                tracing::error!(%peer, error = %e, "a stored session does not read; it is forgotten and a new one will be made");
                self.storage.forget_session(peer, false).await?;
                Ok(None)
            }
        }
    }

    /// Whether `peer` has spoken v2 with us: then it never gets or gives v1 again. Reads
    /// without the lock, and never fills the cache.
    pub async fn spoke_v2(&self, peer: &Username) -> Result<bool, HostError> {
        // (A prekey session of ours the peer has not answered does not count.)
        if self
            .v2
            .borrow()
            .get(peer)
            .is_some_and(|s| s.offer().is_none())
        {
            return Ok(true);
        }
        Ok(self.storage.spoke_v2(peer).await?)
    }

    /// Whether envelopes to `peer` are sealed in v2 now: it has spoken v2 with us, or we hold
    /// a session with it (one made from its prekey included, answered or not). For `verify`.
    pub async fn uses_v2(&self, peer: &Username) -> Result<bool, HostError> {
        if self.v2.borrow().contains_key(peer) || self.spoke_v2(peer).await? {
            return Ok(true);
        }
        Ok(self.storage.session(peer).await?.is_some())
    }

    /// Drops `peer`'s cached state, so that the next reader reads what is on disk (after a
    /// save that failed).
    pub fn drop_cached(&self, peer: &Username) {
        self.v2.borrow_mut().remove(peer);
    }

    /// What to store for `peer`'s session `s` (with what it opened, or before what it sealed
    /// leaves); then [`Sessions::saved`].
    pub fn write(&self, peer: &Username, s: &SessionV2) -> Result<SessionWrite, HostError> {
        Ok(SessionWrite {
            peer: peer.clone(),
            state: s.to_bytes().map_err(HostError::internal)?,
            prekey_transcript: None,
            confirmed: s.offer().is_none(),
        })
    }

    /// For sealing a message as it is queued (`Outbox::queue`): `peer`'s confirmed v2 session,
    /// from memory, with its lock, which the caller holds until the message and the state
    /// that sealed it are stored (and then [`Sessions::saved`]). `None` when there is no such
    /// session in memory, or someone has the lock: the message is then sealed on delivery, as
    /// before. (Waiting would make a burst of sends commit one by one, each holding the lock
    /// across its commit, instead of sharing commits.)
    pub fn for_queue_seal(&self, peer: &Username) -> Option<(OwnedMutexGuard<()>, SessionV2)> {
        if self.max_version < session::SESSION_V2 {
            return None;
        }
        let turn = self.try_lock(peer)?;
        let s = self
            .v2
            .borrow()
            .get(peer)
            .filter(|s| s.offer().is_none())
            .cloned()?;
        Some((turn, s))
    }

    /// The id of `peer`'s v2 session in memory, if any.
    pub fn current_id(&self, peer: &Username) -> Option<[u8; 16]> {
        self.v2.borrow().get(peer).map(|s| s.id())
    }

    /// Records that `s` is stored as `peer`'s session.
    pub fn saved(&self, peer: &Username, s: SessionV2) {
        self.v2.borrow_mut().insert(peer.clone(), s);
    }

    /// Stores `s` as `peer`'s session (call under the lock). The cache holds nothing for the
    /// peer while the write is under way: a cancelled save leaves the next reader on the disk.
    pub async fn save(&self, peer: &Username, s: SessionV2) -> Result<(), HostError> {
        self.save_with(peer, s, None).await
    }

    /// [`Sessions::save`], remembering the prekey handshake the session came from.
    pub async fn save_with(
        &self,
        peer: &Username,
        s: SessionV2,
        prekey_transcript: Option<([u8; 32], i64)>,
    ) -> Result<(), HostError> {
        let mut write = self.write(peer, &s)?;
        write.prekey_transcript = prekey_transcript;
        self.drop_cached(peer);
        self.storage.save_session(write).await?;
        self.saved(peer, s);
        Ok(())
    }

    /// Drops `peer`'s session if it is still the one named `id` (the peer no longer has it).
    pub async fn forget_if(&self, peer: &Username, id: [u8; 16]) -> Result<(), HostError> {
        let _turn = self.lock(peer).await;
        if self.current(peer).await?.is_some_and(|s| s.id() == id) {
            tracing::info!(%peer, "the peer's host has no longer our session; a new one is made");
            self.v2.borrow_mut().remove(peer);
            self.storage.forget_session(peer, false).await?;
        }
        Ok(())
    }

    /// Our complete identity for the handshake.
    pub async fn own_party(
        &self,
        username: &Username,
        identity: &IdentityBundle,
    ) -> Result<(Party, Signature), HostError> {
        let cached = self.own_kem.borrow().clone();
        let (kem, signature) = match cached {
            Some((bundle, kem, signature)) if &bundle == identity => (kem, signature),
            _ => {
                let keys = self.keyguard.session_keys(identity).await?;
                *self.own_kem.borrow_mut() =
                    Some((*identity, keys.kem.clone(), keys.kem_signature));
                (keys.kem, keys.kem_signature)
            }
        };
        Ok((
            Party {
                username: username.clone(),
                identity: *identity,
                kem,
            },
            signature,
        ))
    }

    /// Asks keyguard every question of `pending`.
    async fn answers(&self, pending: &Pending) -> Result<Vec<Zeroizing<[u8; 32]>>, HostError> {
        let mut answers = Vec::with_capacity(pending.asks().len());
        for ask in pending.asks() {
            answers.push(
                self.keyguard
                    .handshake_secret(question(pending, ask))
                    .await?,
            );
        }
        Ok(answers)
    }

    /// Makes a v2 session with `peer` over `link` (we initiate) and stores it. Call under the
    /// lock.
    pub async fn initiate(
        &self,
        me: &Party,
        my_kem_signature: &Signature,
        peer: &Username,
        identity: &IdentityBundle,
        link: &host_link::Client,
    ) -> Result<SessionV2, HandshakeFailure> {
        let later = |e: HostError| HandshakeFailure::Later(e.message);
        let asked = link.session_keys_request().send().promise;
        let keys = match tokio::time::timeout(HANDSHAKE_RPC_TIMEOUT, asked).await {
            Err(_) => {
                return Err(HandshakeFailure::Later(
                    "the peer's host did not answer".into(),
                ))
            }
            Ok(Ok(keys)) => keys,
            Ok(Err(e)) if e.kind == capnp::ErrorKind::Unimplemented => {
                return Err(HandshakeFailure::NotSpoken)
            }
            Ok(Err(e)) if e.extra.contains("session v2 is off") => {
                return Err(HandshakeFailure::NotSpoken)
            }
            Ok(Err(e)) => return Err(HandshakeFailure::Later(peer_text(&e.to_string()))),
        };
        let theirs = (|| -> Result<Party, String> {
            let r = keys.get().map_err(|e| e.to_string())?;
            let kem = XWingPublicKey::from_bytes(r.get_kem().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let signature =
                Signature::from_bytes(r.get_kem_signature().map_err(|e| e.to_string())?)
                    .map_err(|e| e.to_string())?;
            smvs_crypto::verify_identity_kem(identity, &kem, &signature)
                .map_err(|_| "its X-Wing key is not signed by the pinned identity".to_string())?;
            Ok(Party {
                username: peer.clone(),
                identity: *identity,
                kem,
            })
        })()
        .map_err(HandshakeFailure::Refused)?;
        let initiator = Initiator::start(me.clone(), theirs, &mut OsFresh)
            .map_err(|e| HandshakeFailure::Refused(e.to_string()))?;
        let mut request = link.handshake_request();
        {
            let mut r = request.get();
            r.set_sender(me.username.as_str());
            r.set_init(initiator.message());
            r.set_kem(me.kem.as_bytes());
            r.set_kem_signature(my_kem_signature.as_bytes());
        }
        let answer = tokio::time::timeout(HANDSHAKE_RPC_TIMEOUT, request.send().promise)
            .await
            .map_err(|_| HandshakeFailure::Later("the peer's host did not answer".into()))?
            .map_err(|e| HandshakeFailure::Later(peer_text(&e.to_string())))?;
        let outcome = answer
            .get()
            .and_then(|r| r.get_outcome())
            .map_err(|e| HandshakeFailure::Refused(e.to_string()))?;
        let text = |t: capnp::Result<capnp::text::Reader<'_>>| {
            t.ok()
                .and_then(|t| t.to_string().ok())
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect::<String>()
        };
        let response = match outcome.which() {
            Ok(handshake_outcome::Response(r)) => {
                r.map_err(|e| HandshakeFailure::Refused(e.to_string()))?
            }
            Ok(handshake_outcome::Refused(why)) => {
                return Err(HandshakeFailure::Refused(text(why)))
            }
            Ok(handshake_outcome::Later(why)) => return Err(HandshakeFailure::Later(text(why))),
            Err(_) => return Err(HandshakeFailure::Refused("unknown outcome".into())),
        };
        let pending = initiator
            .on_response(response)
            .map_err(|e| HandshakeFailure::Refused(e.to_string()))?;
        let answers = self.answers(&pending).await.map_err(later)?;
        let session: SessionV2 = pending
            .finish(answers, &mut OsFresh)
            .map_err(|e| HandshakeFailure::Refused(e.to_string()))?
            .into();
        self.save(peer, session.clone()).await.map_err(later)?;
        tracing::info!(%peer, "made a session v2 (we initiated)");
        Ok(session)
    }

    /// Answers `peer`'s handshake `init` (its complete identity is `theirs`) and stores the
    /// session, replacing any we had. Call under the lock.
    pub async fn respond(
        &self,
        me: &Party,
        theirs: &Party,
        init: &[u8],
    ) -> Result<Vec<u8>, HostError> {
        let (response, pending) = handshake::respond(me, theirs, init, &mut OsFresh)
            .map_err(|e| HostError::bad_request(e.to_string()))?;
        let answers = self.answers(&pending).await?;
        let session: SessionV2 = pending
            .finish(answers, &mut OsFresh)
            .map_err(|e| HostError::bad_request(e.to_string()))?
            .into();
        self.save(&theirs.username, session).await?;
        tracing::info!(peer = %theirs.username, "made a session v2 (the peer initiated)");
        Ok(response)
    }

    /// Makes a v2 session with `peer` from its published prekey (its host is away), unless
    /// there is one already; stores it with the offer its envelopes will carry until the peer
    /// answers. `keys` were checked against `identity` (the pinned one). Returns whether a
    /// session was made.
    pub async fn initiate_with_prekey(
        &self,
        me: &Username,
        my_identity: &IdentityBundle,
        peer: &Username,
        identity: &IdentityBundle,
        keys: &smvs_directory::PublishedSessionKeys,
    ) -> Result<bool, HostError> {
        if !self.speaks_v2() {
            return Ok(false);
        }
        let _turn = self.lock(peer).await;
        if self.current(peer).await?.is_some() {
            return Ok(false);
        }
        let now_s = crate::model::now_ms() / 1000;
        let prekey = match handshake::verify_prekey(&keys.prekey, identity, now_s) {
            Ok(prekey) => prekey,
            Err(e) => {
                tracing::info!(%peer, error = %e, "the peer's published prekey cannot be used");
                return Ok(false);
            }
        };
        let (party, signature) = self.own_party(me, my_identity).await?;
        let theirs = Party {
            username: peer.clone(),
            identity: *identity,
            kem: keys.kem.clone(),
        };
        let (init, pending) =
            handshake::initiate_with_prekey(&party, &theirs, prekey, &mut OsFresh)
                .map_err(HostError::internal)?;
        let answers = self.answers(&pending).await?;
        let session = SessionV2::from(
            pending
                .finish(answers, &mut OsFresh)
                .map_err(HostError::internal)?,
        )
        .with_offer(PrekeyOffer {
            init,
            kem: party.kem.as_bytes().to_vec(),
            kem_signature: signature.as_bytes().to_vec(),
        });
        self.save(peer, session).await?;
        tracing::info!(%peer, prekey = keys.prekey.id, "made a session v2 from the peer's prekey (its host is away)");
        Ok(true)
    }

    /// Answers `theirs`'s prekey handshake `init` (it came with an envelope; the peer's X-Wing
    /// key was checked against its pinned identity): the session, not yet stored, and what to
    /// store with it so that the same handshake is refused if it comes again. Call under the
    /// lock.
    pub async fn accept_prekey(
        &self,
        me: &Party,
        my_identity: &IdentityBundle,
        theirs: &Party,
        init: &[u8],
    ) -> Result<PrekeyAcceptance, HostError> {
        let id = handshake::prekey_id(init).map_err(|e| HostError::bad_request(e.to_string()))?;
        let keys = self.keyguard.session_keys(my_identity).await?;
        let Some(prekey) = std::iter::once(keys.prekey)
            .chain(keys.previous_prekey)
            .find(|p| p.id == id)
        else {
            return Ok(PrekeyAcceptance::Gone(id));
        };
        let pending = handshake::accept_prekey(me, theirs, &prekey, init)
            .map_err(|e| HostError::bad_request(e.to_string()))?;
        let transcript = *pending.transcript();
        if self.storage.prekey_transcript_seen(transcript).await? {
            return Ok(PrekeyAcceptance::Replayed);
        }
        let answers = self.answers(&pending).await?;
        let session: SessionV2 = pending
            .finish(answers, &mut OsFresh)
            .map_err(|e| HostError::bad_request(e.to_string()))?
            .into();
        // Kept a day past the prekey's expiry: keyguard answers for it no longer than that.
        Ok(PrekeyAcceptance::Made(
            Box::new(session),
            (transcript, prekey.expires + 86_400),
        ))
    }

    /// At start-up: if the database's rollback stamp is not keyguard's counter, the database
    /// is older than the last run (restored from a copy) and its ratchets may be behind the
    /// peers': every v2 session is forgotten, and each contact gets a new handshake. Then the
    /// counter moves on, and the database is stamped with it.
    pub async fn check_rollback(&self) -> Result<(), HostError> {
        let counter = self.keyguard.rollback_counter(false).await?;
        let stamp = self.storage.rollback_stamp().await?;
        if stamp != counter {
            let forgotten = self.storage.forget_sessions().await?;
            self.v2.borrow_mut().clear();
            tracing::warn!(
                stamp,
                counter,
                forgotten,
                "the database is older than the key guard's counter (restored from a copy?): every session v2 starts anew"
            );
        }
        self.restamp().await
    }

    /// Moves keyguard's counter on and stamps the database with it. Run at start and every
    /// [`RESTAMP_EVERY`]: a copy of the database taken since the last stamp is caught when it
    /// is restored. (A crash between the two steps costs new handshakes at the next start,
    /// nothing else.)
    pub async fn restamp(&self) -> Result<(), HostError> {
        let next = self.keyguard.rollback_counter(true).await?;
        self.storage.set_rollback_stamp(next).await?;
        Ok(())
    }
}

/// What came of a peer's prekey handshake.
pub enum PrekeyAcceptance {
    /// The session, not yet stored, and the transcript to remember with it (until, Unix s).
    Made(Box<SessionV2>, ([u8; 32], i64)),
    /// Accepted before: a replay, or an envelope of a session since forgotten here.
    Replayed,
    /// It names a prekey keyguard no longer holds (rotated out, or expired).
    Gone(u32),
}

/// Which session seals for a peer in one delivery round.
#[derive(Clone)]
pub enum Sealer {
    V1(Rc<SessionKeys>),
    /// The peer's current v2 session, loaded afresh for every batch.
    V2,
}

/// What checks the peer's receipt for an envelope: the receipt key of the session that sealed
/// it (and, for v2, that session's id).
#[derive(Clone)]
pub enum ReceiptCheck {
    V1(Rc<SessionKeys>),
    V2(session::V2Receipts),
}

impl ReceiptCheck {
    pub fn tag(
        &self,
        id: &crate::model::MessageId,
        recipient: &Username,
        stored_at: i64,
    ) -> Result<Vec<u8>, HostError> {
        match self {
            ReceiptCheck::V1(keys) => session::receipt_tag(keys, id, recipient, stored_at),
            ReceiptCheck::V2(r) => r.tag(id, recipient, stored_at),
        }
        .map_err(HostError::internal)
    }

    /// The v2 session the envelope was sealed under.
    pub fn session_id(&self) -> Option<[u8; 16]> {
        match self {
            ReceiptCheck::V1(_) => None,
            ReceiptCheck::V2(r) => Some(r.session),
        }
    }
}

/// An envelope's sealed part, ready to go.
pub struct SealedEnvelope {
    pub version: u16,
    /// v2: the session's id (empty for v1).
    pub session_id: Vec<u8>,
    pub sealed: Vec<u8>,
    pub receipt: ReceiptCheck,
    /// v2, prekey mode: the offer that goes with the envelope until the peer answers.
    pub offer: Option<Rc<PrekeyOffer>>,
}

/// Why a batch could not be sealed.
#[derive(Debug)]
pub enum SealError {
    /// The v2 session is gone (the peer asked for a new one): the round starts over.
    NoSession,
    Host(HostError),
}

impl From<HostError> for SealError {
    fn from(e: HostError) -> Self {
        SealError::Host(e)
    }
}

impl Sessions {
    /// Which session seals for `peer` (pinned `identity`) this round: its v2 session, made
    /// over `link` when there is none yet; v1 when this host or the peer's does not speak v2.
    pub async fn sealer(
        &self,
        me: &Username,
        my_identity: &IdentityBundle,
        peer: &Username,
        identity: &IdentityBundle,
        link: &host_link::Client,
    ) -> Result<Sealer, HandshakeFailure> {
        if !self.speaks_v2() {
            return self.v1_sealer(my_identity, peer, identity).await;
        }
        let _turn = self.lock(peer).await;
        if self
            .current(peer)
            .await
            .map_err(|e| HandshakeFailure::Later(e.message))?
            .is_some()
        {
            return Ok(Sealer::V2);
        }
        let (party, signature) = self
            .own_party(me, my_identity)
            .await
            .map_err(|e| HandshakeFailure::Later(e.message))?;
        match self
            .initiate(&party, &signature, peer, identity, link)
            .await
        {
            Ok(_) => Ok(Sealer::V2),
            // A host that does not speak v2, and never did with us: v1 it is. One that did
            // gets nothing until it speaks v2 again (no downgrade); the messages wait.
            Err(HandshakeFailure::NotSpoken) => {
                if self
                    .spoke_v2(peer)
                    .await
                    .map_err(|e| HandshakeFailure::Later(e.message))?
                {
                    tracing::warn!(%peer, "the peer's host no longer speaks session v2; nothing is sent in v1 (a downgrade)");
                    return Err(HandshakeFailure::Later(
                        "the peer's host no longer speaks session v2, and v1 is a downgrade".into(),
                    ));
                }
                self.v1_sealer(my_identity, peer, identity).await
            }
            Err(e) => Err(e),
        }
    }

    async fn v1_sealer(
        &self,
        my_identity: &IdentityBundle,
        peer: &Username,
        identity: &IdentityBundle,
    ) -> Result<Sealer, HandshakeFailure> {
        self.keys(my_identity, peer, identity)
            .await
            .map(Sealer::V1)
            .map_err(|e| HandshakeFailure::Later(e.message))
    }

    /// Seals `inners` (from us to `peer`) in order. For v2, under the peer's lock, with the
    /// state saved before this returns: nothing sealed under a state leaves before it is on
    /// disk.
    pub async fn seal_all(
        &self,
        sealer: &Sealer,
        inners: &[session::Inner],
    ) -> Result<Vec<SealedEnvelope>, SealError> {
        let header = |inner: &session::Inner| (inner.id, inner.from.clone(), inner.to.clone());
        match sealer {
            Sealer::V1(keys) => inners
                .iter()
                .map(|inner| {
                    let (id, from, to) = header(inner);
                    let h = session::Header {
                        id: &id,
                        sender: &from,
                        recipient: &to,
                    };
                    let sealed = session::seal(keys, &h, &session::encode_inner(inner))
                        .map_err(HostError::internal)?;
                    Ok(SealedEnvelope {
                        version: session::SESSION_V1,
                        session_id: Vec::new(),
                        sealed,
                        receipt: ReceiptCheck::V1(keys.clone()),
                        offer: None,
                    })
                })
                .collect(),
            Sealer::V2 => {
                let Some(peer) = inners.first().map(|i| i.to.clone()) else {
                    return Ok(Vec::new());
                };
                let _turn = self.lock(&peer).await;
                let Some(mut s) = self.current(&peer).await? else {
                    return Err(SealError::NoSession);
                };
                let mut sealed = Vec::with_capacity(inners.len());
                for inner in inners {
                    let (id, from, to) = header(inner);
                    let h = session::Header {
                        id: &id,
                        sender: &from,
                        recipient: &to,
                    };
                    sealed.push(
                        s.seal(&h, &session::encode_inner(inner), &mut OsFresh)
                            .map_err(HostError::internal)?,
                    );
                }
                self.save(&peer, s.clone()).await?;
                let check = ReceiptCheck::V2(s.receipts());
                let offer = s.offer().cloned().map(Rc::new);
                Ok(sealed
                    .into_iter()
                    .map(|sealed| SealedEnvelope {
                        version: session::SESSION_V2,
                        session_id: s.id().to_vec(),
                        sealed,
                        receipt: check.clone(),
                        offer: offer.clone(),
                    })
                    .collect())
            }
        }
    }
}

/// A message sealed as it was queued: what goes out, and the session state that sealed it.
pub struct QueueSealed {
    pub sealed: Vec<u8>,
    pub session: SessionV2,
}

impl QueueSealed {
    /// The envelope to send (the session is confirmed: no prekey offer goes with it).
    pub fn envelope(&self) -> SealedEnvelope {
        SealedEnvelope {
            version: session::SESSION_V2,
            session_id: self.session.id().to_vec(),
            sealed: self.sealed.clone(),
            receipt: ReceiptCheck::V2(self.session.receipts()),
            offer: None,
        }
    }
}

/// On the storage thread, in the job that queues `message`: seals it under `s` (as delivery
/// would, carrying `log_heads`), and gives the state to store with it. `None` if sealing fails
/// (the message is then sealed on delivery).
pub fn seal_queued(
    mut s: SessionV2,
    message: &crate::model::StoredMessage,
    log_heads: Vec<smvs_directory::transparency::LogHead>,
) -> Option<(QueueSealed, SessionWrite)> {
    let inner = session::Inner {
        id: message.id,
        from: message.from.clone(),
        to: message.to.clone(),
        time: message.time,
        prev_hash: message.prev_hash.clone(),
        content: session::Content::Message(message.payload.clone()),
        log_heads,
    };
    let header = session::Header {
        id: &inner.id,
        sender: &inner.from,
        recipient: &inner.to,
    };
    let sealed = s
        .seal(&header, &session::encode_inner(&inner), &mut OsFresh)
        .inspect_err(|e| tracing::warn!(error = %e, "sealing a message as it was queued failed; it is sealed on delivery"))
        .ok()?;
    let state = s.to_bytes().ok()?;
    let write = SessionWrite {
        peer: message.peer.clone(),
        state,
        prekey_transcript: None,
        confirmed: true,
    };
    Some((QueueSealed { sealed, session: s }, write))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_trouble_budget_caps_each_peer_and_all_peers_and_renews_each_window() {
        let start = std::time::Instant::now();
        let mut budget = TroubleBudget::new(start);
        let peer = |i: u32| Username::parse(&format!("peer{i}")).unwrap();
        // 8 per peer.
        for _ in 0..TROUBLE_PER_WINDOW {
            assert!(budget.may_try(&peer(0), true, start));
        }
        assert!(!budget.may_try(&peer(0), true, start));
        assert!(
            !budget.may_try(&peer(0), false, start),
            "past its own cap, not even a look"
        );
        // 64 in all: seven more peers' worth, then everyone's new work waits ...
        for i in 1..8 {
            for _ in 0..TROUBLE_PER_WINDOW {
                assert!(budget.may_try(&peer(i), true, start));
            }
        }
        assert!(!budget.may_try(&peer(100), true, start));
        // ... but a peer within its own budget may still have its envelope opened.
        assert!(budget.may_try(&peer(100), false, start));
        // A new window: both caps start over.
        let later = start + TROUBLE_WINDOW;
        assert!(budget.may_try(&peer(0), true, later));
        assert!(budget.may_try(&peer(100), true, later));
    }
}
