//! The outbox: getting messages to other hosts, and knowing where each one is.
//!
//! ```text
//!  commands ──queue──► Outbox ──► storage (durable, status queued) ──kick──► delivery task for peer
//!                                                                          loop: outbox rows ─► trust (pinned contact)
//!                                                                                ─► link (pinned transport key)
//!                                                                                ─► sessions: v2 (handshake
//!                                                                                   on the link if none) or v1
//!                                                                                ─► seal the batch (v2: state
//!                                                                                   saved before it leaves)
//!                                                                                ─► deliverBatch × N (or deliver),
//!                                                                                   pipelined
//!                                                                                ─► receipts ─► delivered / failed
//!                                                                          on a broken or silent link: back off (exponential, jitter)
//!  calls ──send_now──► Outbox ──► one fresh link, one envelope, its receipt (never stored)
//! ```
//!
//! Owns: one delivery task per peer (woken by [`Outbox::kick`]) and the set of messages that are
//! "sent" (handed to the peer's host, no receipt yet). "Sent" is a passing state, so it lives in
//! memory rather than costing a disk write per message; after a restart such messages read as
//! queued again, which is what they are until the receipt. Readers apply it with
//! [`Outbox::overlay`]; nobody else changes it.
//!
//! Serializes: one task per peer, so a peer's messages go out in the order they were queued.
//! Many envelopes travel at once on one connection; Cap'n Proto delivers calls on one
//! capability in order, and the receiving host queues them for storage in that order. The
//! outbox lives in storage, so a restart loses nothing: at start-up every peer with queued
//! messages gets a kick.
//!
//! A path that stops carrying packets (a black hole, a host that is stopped) does not fail: TCP
//! just waits. So nothing here waits on the network without a bound: opening a link may take
//! [`CONNECT_TIMEOUT`], and a link on which the peer answers no envelope for
//! [`RECEIPT_TIMEOUT`] is dropped. A failed round is retried after an exponential backoff
//! capped at `retry_max` (jitter never takes it past the cap), and at once when the peer's host
//! reaches us (its path is back). So once a path heals, the backlog moves within `retry_max`
//! plus one connect, however long the outage was.
//!
//! Nothing is retried for ever: a recipient the directory does not know (never registered, or
//! deregistered since) fails everything queued for them, with that reason; an envelope the
//! peer's host refuses fails with "refused". Everything else (a host that is away, a directory
//! that cannot be reached) is temporary and retried with backoff.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use smvs_crypto::AgreementKeyPair;
use smvs_schema::host_capnp::{delivery_outcome, host_link};
use smvs_schema::{ErrorCode, Username};
use tokio::sync::Notify;

use crate::error::HostError;
use crate::events::Events;
use crate::model::{
    now_ms, CallSignal, FailReason, HostEvent, MessageId, Payload, Status, StoredMessage,
};
use crate::session::{Content, Inner};
use crate::sessions::{
    seal_queued, HandshakeFailure, ReceiptCheck, SealError, SealedEnvelope, Sealer, Sessions,
};
use crate::storage::Storage;
use crate::trust::Trust;

/// Envelopes in flight on one link at a time.
pub const WINDOW: u32 = 2048;
/// Envelopes in one `deliverBatch` call at most, and the bytes one call may carry (a link takes
/// messages of up to 512 KiB, `api::peer` checks that this leaves half of it spare; the largest
/// envelope is about 140 KB with a prekey offer). A backlog goes in calls of many envelopes: a
/// call costs both hosts more than the envelope in it. The window is topped up when half of it
/// is answered, so calls are full but for the last of a backlog.
const BATCH_ENVELOPES: usize = 128;
pub(crate) const BATCH_BYTES: usize = 256 * 1024;
/// How long reaching the peer's host and handing it a call signal may take.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a link may take: TCP (or SOCKS5) and the Noise handshake. Without it a
/// black-holed path holds a delivery round until the kernel gives up, about two minutes.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the peer's host may leave the oldest envelope in flight unanswered before the link
/// is taken for dead. Envelopes are answered in order as they are stored, and the largest is
/// 128 KiB, so a healthy host answers well within this even on a slow link; a stopped host or
/// a black-holed path never does. (A resend after a false alarm is harmless: the receiving
/// host recognises the id and answers with a receipt again.)
pub const RECEIPT_TIMEOUT: Duration = Duration::from_secs(20);

/// How the outbox reaches other hosts.
#[derive(Debug, Clone)]
pub struct OutboxSettings {
    /// The longest wait between two delivery attempts to an unreachable host.
    pub retry_max: Duration,
    /// Connect through this SOCKS5 proxy (which resolves names, so onion addresses work).
    pub socks5_proxy: Option<String>,
}

/// The outbox's handle; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    inner: Rc<OutboxState>,
}

struct OutboxState {
    trust: Rc<Trust>,
    sessions: Rc<Sessions>,
    storage: Storage,
    events: Events,
    transport: Rc<AgreementKeyPair>,
    settings: OutboxSettings,
    /// Each peer's delivery task, by its wake-ups.
    links: RefCell<HashMap<Username, Rc<Wake>>>,
    /// Outgoing messages handed to the peer's host and waiting for a receipt.
    sent: RefCell<HashSet<MessageId>>,
    /// Outgoing messages whose receipt is in hand and told to devices, while their status is
    /// written: the write follows the news rather than holding it up (a crash between the two
    /// sends the message again after the restart; the peer's host knows the id and answers
    /// with a receipt again).
    delivering: RefCell<HashSet<MessageId>>,
    /// Peers whose host answered `deliverBatch` with "unimplemented" (an older host): they
    /// get `deliver` for each envelope until this host restarts.
    no_batch: RefCell<HashSet<Username>>,
    /// Envelopes sealed as their messages were queued (one commit for the message and the
    /// ratchet), by peer and message, until delivery sends them. One that is not used (its
    /// session was replaced, the round failed after sending it) only costs its message key:
    /// the message is sealed again under the ratchet's next one.
    presealed: RefCell<HashMap<Username, HashMap<MessageId, SealedEnvelope>>>,
}

/// The most envelopes sealed at queue time that wait for one peer; past it, messages are
/// sealed on delivery. Sealing ahead is for the next message or few: a burst is sealed as a
/// batch on delivery anyway, and every envelope left unused is a key the peer skips (its
/// ratchet keeps 2,000).
const MAX_PRESEALED: usize = 64;

/// Why a call signal did not reach the peer's host.
#[derive(Debug)]
pub enum SendFailure {
    /// The peer's host cannot be reached (or did not answer in time).
    Offline(String),
    /// The peer's host will not take it (blocked, not a contact, busy, stale).
    Refused(String),
    /// Our side cannot send it (not registered, key changed, directory).
    Local(HostError),
}

impl std::fmt::Display for SendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendFailure::Offline(why) => write!(f, "offline: {why}"),
            SendFailure::Refused(why) => write!(f, "refused: {why}"),
            SendFailure::Local(e) => write!(f, "{e}"),
        }
    }
}

/// Why a delivery round ended early.
#[derive(Debug, thiserror::Error)]
enum DeliveryError {
    #[error("{0}")]
    Host(#[from] HostError),
    #[error("link: {0}")]
    Link(#[from] smvs_transport::TransportError),
    #[error("rpc: {0}")]
    Rpc(#[from] capnp::Error),
    #[error("the peer's receipt does not check out")]
    BadReceipt,
    #[error("the peer's host said later: {0}")]
    Later(String),
    #[error("the peer's host did not answer within {} s", .0.as_secs())]
    Silent(Duration),
    #[error("the peer's host takes one envelope per call (it has no deliverBatch)")]
    NoBatch,
}

/// How a peer's delivery task is woken.
#[derive(Default)]
struct Wake {
    /// There is new work (a message was queued).
    work: Notify,
    /// A message was queued since the delivery task last read the outbox: a round that read
    /// to the end of it reads again only then, rather than after every receipt.
    queued: Cell<bool>,
    /// Messages queued since the last round, as they were stored, in no particular order.
    handed: RefCell<Vec<(i64, StoredMessage)>>,
    /// The last round ended with everything it read from the outbox answered and nothing
    /// queued after its last read: from then on, what waits is what `handed` holds, and the
    /// next round takes it from there rather than reading the outbox (one storage round trip
    /// less before a message leaves). Anything that could leave the outbox and `handed` apart
    /// (a failed status write, a message dropped on its way in) clears it.
    caught_up: Cell<bool>,
    /// The outbox and `handed` may disagree (a status write failed, a message was deleted or
    /// dropped on its way in), whenever that happened: `caught_up` is not set again until a
    /// round has read the whole outbox anew.
    stale: Cell<bool>,
    /// [`Outbox::queue`] calls for this peer between their storage job and handing the
    /// message over: while there are any, a round reads the outbox (a message may be stored
    /// and not yet handed).
    queuing: Cell<u32>,
    /// The peer's host has just reached us, so the path to it works again: a task waiting out
    /// a backoff tries now. (Woken with `notify_waiters`: a task that is not waiting is not
    /// told, so this never cuts a later backoff short.)
    path_back: Notify,
    /// When `path_back` last woke the task: at most once per [`PATH_BACK_INTERVAL`], so a
    /// peer's envelopes cannot turn our backoff into one connection attempt each.
    path_back_at: Cell<Option<std::time::Instant>>,
}

/// A message on its way into the outbox, for [`Wake::queuing`]: handed over once stored, or,
/// when the call ends before that, the next round reads the outbox.
struct Handing {
    wake: Rc<Wake>,
    handed: bool,
}

impl Handing {
    fn new(wake: Rc<Wake>) -> Handing {
        wake.queuing.set(wake.queuing.get() + 1);
        Handing {
            wake,
            handed: false,
        }
    }

    fn hand(mut self, seq: i64, message: StoredMessage) {
        self.wake.handed.borrow_mut().push((seq, message));
        self.handed = true;
    }
}

impl Drop for Handing {
    fn drop(&mut self) {
        self.wake.queuing.set(self.wake.queuing.get() - 1);
        if !self.handed {
            self.wake.stale.set(true);
        }
    }
}

/// The least time between two early retries caused by a peer reaching us.
const PATH_BACK_INTERVAL: Duration = Duration::from_secs(1);

/// What the peer's host answered to one envelope.
enum Answer {
    Stored,
    Refused(String),
    Later(String),
}

impl Outbox {
    pub fn new(
        trust: Rc<Trust>,
        sessions: Rc<Sessions>,
        storage: Storage,
        events: Events,
        transport: Rc<AgreementKeyPair>,
        settings: OutboxSettings,
    ) -> Outbox {
        Outbox {
            inner: Rc::new(OutboxState {
                trust,
                sessions,
                storage,
                events,
                transport,
                settings,
                links: RefCell::new(HashMap::new()),
                sent: RefCell::new(HashSet::new()),
                delivering: RefCell::new(HashSet::new()),
                no_batch: RefCell::new(HashSet::new()),
                presealed: RefCell::new(HashMap::new()),
            }),
        }
    }

    /// Puts a payload for `to` in the outbox (durably) and wakes its delivery task.
    ///
    /// A recipient we never wrote to is looked up first: a name the directory does not know
    /// is refused now (`unknown-user`) rather than queued for nobody. When the directory cannot
    /// be reached, the message is queued anyway and the look-up is tried again on delivery.
    pub async fn queue(&self, to: &Username, payload: Payload) -> Result<StoredMessage, HostError> {
        let me = self.inner.trust.me()?;
        if to == &me.username {
            return Err(HostError::bad_request(
                "you cannot send messages to yourself",
            ));
        }
        let trust = &self.inner.trust;
        if trust.contact(to).await?.is_none() {
            match trust.trusted_contact(to, false, false).await {
                Ok(_) => {}
                Err(e) if e.code == ErrorCode::UnknownUser => {
                    return Err(HostError::new(
                        ErrorCode::UnknownUser,
                        format!("there is no user {to} at the directory"),
                    ))
                }
                // A name that cannot be anyone's here (`alice@` a scope this host lacks).
                Err(e) if e.code == ErrorCode::BadRequest => return Err(e),
                Err(e) => {
                    tracing::debug!(peer = %to, error = %e, "queueing for a new contact without a look-up")
                }
            }
        }
        trust.check_can_send(to).await?;
        trust.accept_request(to).await?;
        let handing = Handing::new(self.wake(to));
        let (seq, stored) = self.store_and_seal(&me.username, to, payload).await?;
        handing.hand(seq, stored.clone());
        // Every device of the user sees it, as written by the user.
        self.inner.events.publish(HostEvent::MessageSent {
            id: stored.id,
            peer: to.clone(),
            time: stored.time,
        });
        self.kick(to);
        Ok(stored)
    }

    /// Stores the message in the outbox; with a confirmed v2 session in memory, it is sealed
    /// in the same storage job, so that one commit (the outbox's) holds the message and the
    /// ratchet, and delivery sends it as it is.
    async fn store_and_seal(
        &self,
        me: &Username,
        to: &Username,
        payload: Payload,
    ) -> Result<(i64, StoredMessage), HostError> {
        let state = &self.inner;
        let waiting = state.presealed.borrow().get(to).map_or(0, HashMap::len);
        let session = if waiting < MAX_PRESEALED {
            state.sessions.for_queue_seal(to)
        } else {
            None
        };
        let Some((_turn, session)) = session else {
            let unsealed = |_: &StoredMessage| None::<((), crate::storage::SessionWrite)>;
            let (seq, stored, _) = state
                .storage
                .queue_outgoing_sealed(me, to, payload, unsealed)
                .await?;
            return Ok((seq, stored));
        };
        // As the first of a delivery batch does: the checked key log heads, for the peer's host
        // to compare (only when nothing sealed before waits, not on every envelope of a burst).
        let log_heads = if waiting == 0 {
            state.trust.heads_to_share()
        } else {
            Vec::new()
        };
        let (seq, stored, sealed) = state
            .storage
            .queue_outgoing_sealed(me, to, payload, move |message| {
                seal_queued(session, message, log_heads)
            })
            .await?;
        if let Some(sealed) = sealed {
            state
                .presealed
                .borrow_mut()
                .entry(to.clone())
                .or_default()
                .insert(stored.id, sealed.envelope());
            state.sessions.saved(to, sealed.session);
        }
        Ok((seq, stored))
    }

    /// Wakes `peer`'s delivery task (starting it the first time).
    pub fn kick(&self, peer: &Username) {
        if let Some(wake) = self.inner.links.borrow().get(peer) {
            wake.queued.set(true);
            wake.work.notify_one();
            return;
        }
        self.wake(peer);
    }

    /// `peer`'s delivery task's wake-ups, starting the task the first time (it begins with a
    /// round).
    fn wake(&self, peer: &Username) -> Rc<Wake> {
        if let Some(wake) = self.inner.links.borrow().get(peer) {
            return wake.clone();
        }
        let wake = Rc::new(Wake::default());
        self.inner
            .links
            .borrow_mut()
            .insert(peer.clone(), wake.clone());
        tokio::task::spawn_local(delivery_task(
            self.inner.clone(),
            peer.clone(),
            wake.clone(),
        ));
        wake
    }

    /// `peer`'s host has just delivered to us (an envelope that opened under its session
    /// keys, so it is really theirs): if messages for them wait out a backoff, send them now.
    pub fn peer_reached_us(&self, peer: &Username) {
        if let Some(wake) = self.inner.links.borrow().get(peer) {
            let now = std::time::Instant::now();
            if wake
                .path_back_at
                .get()
                .is_some_and(|at| now.duration_since(at) < PATH_BACK_INTERVAL)
            {
                return;
            }
            wake.path_back_at.set(Some(now));
            wake.path_back.notify_waiters();
        }
    }

    /// Shows messages that are on their way as "sent", and those whose receipt is in hand as
    /// "delivered" (the status disk holds is "queued" until it is written).
    pub fn overlay(&self, messages: &mut [StoredMessage]) {
        let sent = self.inner.sent.borrow();
        let delivering = self.inner.delivering.borrow();
        for m in messages {
            if m.status == Status::Queued {
                if delivering.contains(&m.id) {
                    m.status = Status::Delivered;
                } else if sent.contains(&m.id) {
                    m.status = Status::Sent;
                }
            }
        }
    }

    /// A message about to be deleted here (`id`), or `peer`'s whole conversation (`None`): it
    /// is no longer shown as on its way, and its receipt, if one still comes, is not announced.
    /// Called before the deletion's storage job is queued: the next delivery round reads the
    /// outbox after that job, so it does not send what was deleted. (A round that read it
    /// before may still send it.)
    pub fn forget(&self, peer: &Username, id: Option<MessageId>) {
        if let Some(wake) = self.inner.links.borrow().get(peer) {
            wake.handed
                .borrow_mut()
                .retain(|(_, m)| id.is_some_and(|id| m.id != id));
            wake.stale.set(true);
        }
        let Some(id) = id else {
            return;
        };
        self.inner.sent.borrow_mut().remove(&id);
        self.inner.delivering.borrow_mut().remove(&id);
        for envelopes in self.inner.presealed.borrow_mut().values_mut() {
            envelopes.remove(&id);
        }
    }

    /// Tells `contact`'s host where this host is now (the identity's signed statement), on a
    /// fresh link. `Ok(false)`: that host does not take statements (one from before them).
    pub async fn announce_address(
        &self,
        contact: &crate::model::Contact,
        statement: &(
            Username,
            smvs_schema::HostAddress,
            i64,
            smvs_crypto::Signature,
        ),
    ) -> Result<bool, String> {
        let (username, address, issued_at, signature) = statement;
        let announcing = async {
            let link = connect(&self.inner, contact)
                .await
                .map_err(|e| e.to_string())?;
            let mut request = link.client().announce_address_request();
            let mut p = request.get();
            p.set_username(username.wire_str());
            p.set_host_address(address.as_str());
            p.set_issued_at(*issued_at);
            p.set_signature(signature.as_bytes());
            match request.send().promise.await {
                Ok(_) => Ok(true),
                Err(e) if e.kind == capnp::ErrorKind::Unimplemented => Ok(false),
                Err(e) => Err(e.to_string()),
            }
        };
        tokio::time::timeout(SIGNAL_TIMEOUT, announcing)
            .await
            .unwrap_or_else(|_| Err("no answer in time".into()))
    }

    /// Seals `signal` for `peer` and hands it to the peer's host on a fresh link; returns once
    /// the peer's host has accepted it (its receipt checks out). Signals are never stored and
    /// never wait in the outbox: a ring that arrives an hour late is worse than none.
    pub async fn send_now(&self, peer: &Username, signal: CallSignal) -> Result<(), SendFailure> {
        match tokio::time::timeout(SIGNAL_TIMEOUT, self.send_signal(peer, signal)).await {
            Ok(result) => result,
            Err(_) => Err(SendFailure::Offline(format!(
                "{peer}'s host did not answer within {} s",
                SIGNAL_TIMEOUT.as_secs()
            ))),
        }
    }

    async fn send_signal(&self, peer: &Username, signal: CallSignal) -> Result<(), SendFailure> {
        let inner = &self.inner;
        let me = inner.trust.me().map_err(SendFailure::Local)?;
        let (contact, _) = inner
            .trust
            .trusted_contact(peer, false, false)
            .await
            .map_err(SendFailure::Local)?;
        let message = Inner {
            id: MessageId::random(),
            from: me.username.clone(),
            to: peer.clone(),
            time: now_ms(),
            prev_hash: Vec::new(),
            content: Content::Call(signal),
            log_heads: Vec::new(),
        };
        // One connection per signal, closed (the link dropped) once the signal is answered or
        // timed out: calls are rare, and a link kept open would outlive the call for nothing.
        let link = connect(inner, &contact).await.map_err(|e| match e {
            DeliveryError::Host(e) if e.code != ErrorCode::Proxy => SendFailure::Local(e),
            other => SendFailure::Offline(format!("cannot reach {peer}'s host: {other}")),
        })?;
        let sealer = inner
            .sessions
            .sealer(
                &me.username,
                &me.identity,
                peer,
                &contact.identity,
                link.client(),
            )
            .await
            .map_err(|e| SendFailure::Offline(e.to_string()))?;
        let sealed = match inner
            .sessions
            .seal_all(&sealer, std::slice::from_ref(&message))
            .await
        {
            Ok(mut sealed) => sealed
                .pop()
                .ok_or_else(|| SendFailure::Local(HostError::internal("nothing was sealed")))?,
            Err(SealError::NoSession) => {
                return Err(SendFailure::Offline(format!(
                    "the session with {peer} was replaced just now; try again"
                )))
            }
            Err(SealError::Host(e)) => return Err(SendFailure::Local(e)),
        };
        let mut request = link.client().deliver_request();
        fill_envelope(request.get().init_envelope(), &message, &sealed);
        let response = request.send().promise.await.map_err(|e| {
            SendFailure::Offline(format!("{peer}'s host did not take the call: {}", e.extra))
        })?;
        let outcome = response
            .get()
            .and_then(|r| r.get_outcome())
            .map_err(|e| SendFailure::Offline(format!("{peer}'s host answered badly: {e}")))?;
        match read_answer(&sealed.receipt, &message.id, peer, outcome) {
            Ok(Answer::Stored) => Ok(()),
            Ok(Answer::Refused(why)) => Err(SendFailure::Refused(why)),
            Ok(Answer::Later(why)) => {
                forget_reset_session(inner, peer, &sealed.receipt, &why).await;
                Err(SendFailure::Offline(format!(
                    "{peer}'s host cannot take the call now: {why}"
                )))
            }
            Err(e) => Err(SendFailure::Offline(format!(
                "{peer}'s host answered badly: {e}"
            ))),
        }
    }
}

/// The waits between failed rounds: exponential from 250 ms, capped at `max`, each drawn from
/// the upper half of its step so that hosts do not retry in lockstep. (backon's own jitter
/// adds up to a whole step on top, which would take the wait to twice the cap.)
fn backoff(max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(max)
        .without_max_times()
        .build()
        .map(|step| {
            let [r] = smvs_crypto::random_array::<1>();
            step.mul_f64(0.5 + f64::from(r) / 510.0)
        })
}

async fn delivery_task(outbox: Rc<OutboxState>, peer: Username, wake: Rc<Wake>) {
    let retry_max = outbox.settings.retry_max;
    let mut delays = backoff(retry_max);
    // The link stays up between bursts; a failure drops it and the next round reconnects.
    let mut link: Option<Link> = None;
    // After a failed round the peer's record is asked for anew (the peer may have moved, or
    // left the directory), at the pace trust allows.
    let mut failed = false;
    loop {
        let fresh = failed && outbox.trust.may_refresh(&peer);
        match stream_outbox(&outbox, &peer, &wake, &mut link, fresh).await {
            Ok(()) => {
                failed = false;
                delays = backoff(retry_max);
                // The outbox is empty: wait for new work (or look again now and then).
                tokio::select! {
                    _ = wake.work.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            }
            Err(e) => {
                link = None;
                failed = true;
                let delay = delays.next().unwrap_or(retry_max);
                tracing::debug!(%peer, error = %e, ?delay, "delivery failed; will retry");
                tokio::select! {
                    _ = wake.path_back.notified() => {
                        tracing::debug!(%peer, "the peer's host reached us; retrying now");
                    }
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// A connection to another host's `HostLink`, closed when dropped.
type Link = smvs_transport::rpc::Link<host_link::Client>;

/// Opens a link to `contact`'s host: its pinned transport key, directly or through the
/// SOCKS5 proxy.
async fn connect(
    outbox: &OutboxState,
    contact: &crate::model::Contact,
) -> Result<Link, DeliveryError> {
    tokio::time::timeout(CONNECT_TIMEOUT, open_link(outbox, contact))
        .await
        .unwrap_or(Err(DeliveryError::Silent(CONNECT_TIMEOUT)))
}

async fn open_link(
    outbox: &OutboxState,
    contact: &crate::model::Contact,
) -> Result<Link, DeliveryError> {
    let key = contact.transport_key;
    let address = contact.host_address.as_str();
    let transport = &outbox.transport;
    let channel = match &outbox.settings.socks5_proxy {
        None => {
            smvs_transport::connect_within(
                outbox.trust.own_kind(),
                address,
                transport,
                smvs_transport::HOST_PROLOGUE,
                Some(&key),
            )
            .await?
        }
        Some(proxy) => {
            // The proxy resolves the name (an onion address, say); we only hand it the text.
            let tcp = smvs_transport::socks5_tcp(proxy, address)
                .await
                .map_err(|e| {
                    HostError::new(
                        ErrorCode::Proxy,
                        format!("SOCKS5 proxy {proxy} cannot reach {address}: {e}"),
                    )
                })?;
            smvs_transport::connect_over(
                tcp,
                address,
                transport,
                smvs_transport::HOST_PROLOGUE,
                Some(&key),
            )
            .await?
        }
    };
    Ok(Link::open(channel))
}

/// Connects to the peer's host and streams the outbox to it until the outbox is empty:
/// up to [`WINDOW`] envelopes in flight, topped up from storage as receipts come back, so the
/// link never idles between batches. Statuses are written off the critical path; whatever
/// ends the round, the receipts in hand are written before it returns.
async fn stream_outbox(
    outbox: &Rc<OutboxState>,
    peer: &Username,
    wake: &Wake,
    link: &mut Option<Link>,
    fresh: bool,
) -> Result<(), DeliveryError> {
    let mut delivered = Vec::new();
    let result = stream_round(outbox, peer, wake, link, fresh, &mut delivered).await;
    if !delivered.is_empty() {
        write_delivered(outbox, peer, delivered).await;
    }
    result
}

/// [`stream_outbox`]'s work; `delivered` gathers the ids whose receipts are in hand and whose
/// status is not written yet.
async fn stream_round(
    outbox: &Rc<OutboxState>,
    peer: &Username,
    wake: &Wake,
    link: &mut Option<Link>,
    fresh: bool,
    delivered: &mut Vec<MessageId>,
) -> Result<(), DeliveryError> {
    let storage = &outbox.storage;
    // Cleared before each read: a message queued after it is committed before its kick, so
    // either the read sees it or the flag is set again. (What was handed over before a read
    // is in it, or was in an earlier one.)
    wake.queued.set(false);
    let handed = wake.handed.take();
    let caught_up = wake.caught_up.replace(false);
    let mut pending: VecDeque<(i64, StoredMessage)> =
        if caught_up && wake.queuing.get() == 0 && !handed.is_empty() {
            // Everything before these was answered, and every message queued since was
            // handed over: they are what the outbox holds, in the order it holds them.
            let mut handed = handed;
            handed.sort_unstable_by_key(|(seq, _)| *seq);
            handed.into()
        } else {
            wake.stale.set(false);
            storage
                .outbox(peer, 0, WINDOW)
                .await
                .map_err(HostError::from)?
                .into()
        };
    // The read reached the end of the outbox: what is there is in `pending`.
    let mut read_to_end = pending.len() < WINDOW as usize;
    // Envelopes sealed ahead for messages no longer among the first that wait (deleted,
    // expired) go.
    if let Some(envelopes) = outbox.presealed.borrow_mut().get_mut(peer) {
        envelopes.retain(|id, _| pending.iter().any(|(_, m)| &m.id == id));
    }
    if pending.is_empty() {
        caught_up_at_end(wake);
        return Ok(());
    }
    let me = outbox.trust.me()?;
    let (contact, record) = match outbox.trust.trusted_contact(peer, fresh, false).await {
        Ok(found) => found,
        Err(e) if e.code == ErrorCode::UnknownUser || e.code == ErrorCode::AddressRefused => {
            // Never registered, or deregistered since; or their record names an address this
            // host never connects to: nobody will take these, so they fail rather than wait.
            let reason = if e.code == ErrorCode::UnknownUser {
                FailReason::UnknownUser
            } else {
                FailReason::AddressRefused
            };
            let failed = storage
                .fail_outbox(peer, reason)
                .await
                .map_err(HostError::from)?;
            tracing::info!(%peer, failed = failed.len(), reason = reason.as_str(), "the recipient cannot be reached at all; their queued messages failed");
            forget_sent(outbox, &failed);
            publish_all(outbox, peer, failed, Status::Failed);
            return Ok(());
        }
        Err(e) => return Err(e.into()),
    };
    let client = match link {
        Some(open) => open.client().clone(),
        None => match connect(outbox, &contact).await {
            Ok(open) => link.insert(open).client().clone(),
            Err(e) => {
                if let Some(record) = &record {
                    prekey_session(outbox, &me, &contact, record).await;
                }
                return Err(e);
            }
        },
    };
    let sealer = match outbox
        .sessions
        .sealer(&me.username, &me.identity, peer, &contact.identity, &client)
        .await
    {
        Ok(sealer) => sealer,
        // The peer's host will not make a session with us (it blocked us, say): as when it
        // refuses envelopes, what waits for it fails rather than waiting for ever.
        Err(HandshakeFailure::Refused(why)) => {
            tracing::warn!(%peer, reason = %why, "the peer's host refused a session; its queued messages failed");
            let failed = storage
                .fail_outbox(peer, FailReason::Refused)
                .await
                .map_err(HostError::from)?;
            forget_sent(outbox, &failed);
            publish_all(outbox, peer, failed, Status::Failed);
            return Ok(());
        }
        Err(e) => return Err(DeliveryError::Later(e.to_string())),
    };

    let mut in_flight = VecDeque::with_capacity(WINDOW as usize);
    let mut last_seq = 0;
    loop {
        let mut sent_now = Vec::new();
        let mut batch = Vec::new();
        let mut presealed = Vec::new();
        while in_flight.len() + batch.len() < WINDOW as usize {
            let Some((seq, message)) = pending.pop_front() else {
                break;
            };
            last_seq = seq;
            if outbox.delivering.borrow().contains(&message.id) {
                // Its receipt came in an earlier round whose write did not land: not sent
                // again, written now.
                delivered.push(message.id);
                continue;
            }
            if message.status == Status::Queued {
                sent_now.push(message.id);
            } else {
                outbox.sent.borrow_mut().insert(message.id);
            }
            // The first of a batch carries our checked key log heads, for the peer's host to
            // compare with its own (trust::log_heads).
            let log_heads = if batch.is_empty() {
                outbox.trust.heads_to_share()
            } else {
                Vec::new()
            };
            presealed.push(take_presealed(outbox, peer, &sealer, &message.id));
            batch.push(Inner {
                id: message.id,
                from: me.username.clone(),
                to: peer.clone(),
                time: message.time,
                prev_hash: message.prev_hash.clone(),
                content: Content::Message(message.payload.clone()),
                log_heads,
            });
        }
        if !batch.is_empty() {
            // The first envelopes sealed as their messages were queued go as they are (with
            // the ratchet in the same commit as the message); the rest are sealed now.
            let ready = presealed.iter().take_while(|e| e.is_some()).count();
            let mut sealed: Vec<SealedEnvelope> =
                presealed.into_iter().flatten().take(ready).collect();
            if ready < batch.len() {
                // Sealed as a batch: for v2 the ratchet is on disk before the first of them
                // leaves. Their keys come after every key sealed at queue time, so they follow
                // the ones above in order. Envelopes sealed at queue time that are left (later
                // in this batch, or still waiting) are never sent now: their keys are older
                // than these, and the peer's ratchet keeps only so many skipped keys. The peer
                // skips them once, when the next envelope arrives.
                outbox.presealed.borrow_mut().remove(peer);
                match outbox.sessions.seal_all(&sealer, &batch[ready..]).await {
                    Ok(rest) => sealed.extend(rest),
                    Err(SealError::NoSession) => {
                        return Err(DeliveryError::Later(
                            "the session was replaced; starting the round over".into(),
                        ))
                    }
                    Err(SealError::Host(e)) => return Err(e.into()),
                }
            }
            let batching = !outbox.no_batch.borrow().contains(peer);
            in_flight.extend(send_all(&client, &batch, sealed, batching));
        }
        if !sent_now.is_empty() {
            outbox.sent.borrow_mut().extend(sent_now.iter().copied());
            publish_all(outbox, peer, sent_now, Status::Sent);
        }
        let more_waits = !read_to_end || wake.queued.get();
        if pending.is_empty() && in_flight.len() < WINDOW as usize / 2 && more_waits {
            let room = WINDOW - u32::try_from(in_flight.len()).unwrap_or(WINDOW);
            wake.queued.set(false);
            wake.handed.borrow_mut().clear();
            let more = storage
                .outbox(peer, last_seq, room)
                .await
                .map_err(HostError::from)?;
            read_to_end = more.len() < room as usize;
            if !more.is_empty() {
                pending.extend(more);
                continue;
            }
        }
        let Some((id, (promise, check))) = in_flight.pop_front() else {
            // Written by `stream_outbox`, awaited: the next round reads the outbox, and must
            // not see these again as undelivered (they would be sent twice).
            caught_up_at_end(wake);
            return Ok(());
        };
        let answer = tokio::time::timeout(RECEIPT_TIMEOUT, promise.answer(&check, &id, peer))
            .await
            .unwrap_or(Err(DeliveryError::Silent(RECEIPT_TIMEOUT)));
        match answer {
            Ok(Answer::Stored) => {
                receipt_in_hand(outbox, peer, id);
                delivered.push(id);
            }
            Ok(Answer::Refused(why)) => {
                tracing::warn!(%peer, id = %id, reason = %why, "the peer's host refused a message; it will not be retried");
                record_failed(outbox, peer, vec![id], FailReason::Refused);
            }
            Ok(Answer::Later(why)) => {
                give_up_round(outbox, id, &in_flight);
                forget_reset_session(outbox, peer, &check, &why).await;
                return Err(DeliveryError::Later(why));
            }
            Err(e) => {
                give_up_round(outbox, id, &in_flight);
                if matches!(e, DeliveryError::NoBatch) {
                    tracing::info!(%peer, "the peer's host has no batch delivery (an older host); sending one envelope per call");
                    outbox.no_batch.borrow_mut().insert(peer.clone());
                }
                return Err(e);
            }
        }
        if delivered.len() >= WINDOW as usize / 2 {
            record_delivered(outbox, peer, std::mem::take(delivered));
        }
    }
}

/// A round ends with everything it read answered: unless a message was queued since its last
/// read, what the next round has to send is what is handed over from now on.
fn caught_up_at_end(wake: &Wake) {
    if !wake.queued.get() && !wake.stale.get() {
        // Handed over before the last read, so stored before it: the read had them.
        wake.handed.borrow_mut().clear();
        wake.caught_up.set(true);
    }
}

/// The envelope sealed for message `id` as it was queued, if there is one and it was sealed
/// under the session delivery uses now (taken either way: an envelope is sent at most once as
/// it was sealed; a resend is sealed anew).
fn take_presealed(
    outbox: &OutboxState,
    peer: &Username,
    sealer: &Sealer,
    id: &MessageId,
) -> Option<SealedEnvelope> {
    let envelope = outbox.presealed.borrow_mut().get_mut(peer)?.remove(id)?;
    let current = match sealer {
        Sealer::V2 => outbox.sessions.current_id(peer),
        Sealer::V1(_) => None,
    };
    current
        .is_some_and(|current| envelope.session_id == current)
        .then_some(envelope)
}

/// The peer's host is away: if we have no v2 session with it, one is made from the prekey
/// its record publishes (docs/protocol.md, 4.5), so that what waits goes in one flight when the
/// host is back, with no handshake round trip first. Best effort: on any failure the next
/// round tries again, and the interactive handshake remains once the host answers.
async fn prekey_session(
    outbox: &OutboxState,
    me: &crate::trust::Me,
    contact: &crate::model::Contact,
    record: &smvs_directory::VerifiedRecord,
) {
    // The record's keys were checked against the record's identity: usable only when that is
    // the identity we pinned (a changed key waits for the user).
    let Some(keys) = record.user.session_keys.as_ref() else {
        return;
    };
    if record.user.identity != contact.identity {
        return;
    }
    if let Err(e) = outbox
        .sessions
        .initiate_with_prekey(
            &me.username,
            &me.identity,
            &contact.username,
            &contact.identity,
            keys,
        )
        .await
    {
        tracing::info!(peer = %contact.username, error = %e, "cannot make a session from the peer's prekey now");
    }
}

/// Where one envelope's answer comes from: its own `deliver` call, or its place in a
/// `deliverBatch` call that the envelopes of the batch share.
enum Delivery {
    One(
        capnp::capability::Promise<
            capnp::capability::Response<host_link::deliver_results::Owned>,
            capnp::Error,
        >,
    ),
    InBatch(BatchAnswer, u32),
}

type BatchAnswer = futures::future::Shared<
    futures::future::LocalBoxFuture<
        'static,
        Result<
            Rc<capnp::capability::Response<host_link::deliver_batch_results::Owned>>,
            capnp::Error,
        >,
    >,
>;

impl Delivery {
    /// The peer's answer to the envelope `id`, its receipt checked.
    async fn answer(
        self,
        check: &ReceiptCheck,
        id: &MessageId,
        peer: &Username,
    ) -> Result<Answer, DeliveryError> {
        match self {
            Delivery::One(promise) => {
                let response = promise.await?;
                read_answer(check, id, peer, response.get()?.get_outcome()?)
            }
            Delivery::InBatch(batch, i) => {
                let response = batch.await.map_err(|e| match e.kind {
                    capnp::ErrorKind::Unimplemented => DeliveryError::NoBatch,
                    _ => DeliveryError::Rpc(e),
                })?;
                let outcomes = response.get()?.get_outcomes()?;
                if i >= outcomes.len() {
                    return Err(DeliveryError::BadReceipt);
                }
                read_answer(check, id, peer, outcomes.get(i))
            }
        }
    }
}

/// Hands the sealed envelopes to the peer's host, in order: in `deliverBatch` calls of up to
/// [`BATCH_ENVELOPES`] and [`BATCH_BYTES`] when `batching` (a lone envelope too: were it sent
/// with `deliver`, a host without batches would store it before the batches it refused, out of
/// order), else one `deliver` each.
fn send_all(
    client: &host_link::Client,
    batch: &[Inner],
    sealed: Vec<SealedEnvelope>,
    batching: bool,
) -> Vec<(MessageId, (Delivery, ReceiptCheck))> {
    let mut out = Vec::with_capacity(batch.len());
    let mut group: Vec<(&Inner, SealedEnvelope)> = Vec::new();
    let mut bytes = 0;
    for (inner, sealed) in batch.iter().zip(sealed) {
        let size = wire_size(&sealed);
        if !group.is_empty() && (group.len() == BATCH_ENVELOPES || bytes + size > BATCH_BYTES) {
            send_group(client, std::mem::take(&mut group), batching, &mut out);
            bytes = 0;
        }
        bytes += size;
        group.push((inner, sealed));
    }
    send_group(client, group, batching, &mut out);
    out
}

/// About what an envelope takes in a call: its sealed bytes, a prekey offer beside it (4.8 KB
/// on every envelope of a session made from a prekey), and room for the ids, names and framing.
fn wire_size(sealed: &SealedEnvelope) -> usize {
    let offer = sealed
        .offer
        .as_ref()
        .map_or(0, |o| o.init.len() + o.kem.len() + o.kem_signature.len());
    sealed.sealed.len() + sealed.session_id.len() + offer + 256
}

fn send_group(
    client: &host_link::Client,
    group: Vec<(&Inner, SealedEnvelope)>,
    batching: bool,
    out: &mut Vec<(MessageId, (Delivery, ReceiptCheck))>,
) {
    if group.is_empty() {
        return;
    }
    if !batching {
        for (inner, sealed) in group {
            let mut request = client.deliver_request();
            fill_envelope(request.get().init_envelope(), inner, &sealed);
            let delivery = Delivery::One(request.send().promise);
            out.push((inner.id, (delivery, sealed.receipt)));
        }
        return;
    }
    use futures::FutureExt;
    let mut request = client.deliver_batch_request();
    {
        let mut list = request
            .get()
            .init_envelopes(u32::try_from(group.len()).unwrap_or(u32::MAX));
        for (i, (inner, sealed)) in (0u32..).zip(&group) {
            fill_envelope(list.reborrow().get(i), inner, sealed);
        }
    }
    let answer: BatchAnswer = request
        .send()
        .promise
        .map(|r| r.map(Rc::new))
        .boxed_local()
        .shared();
    for (i, (inner, sealed)) in (0u32..).zip(group) {
        out.push((
            inner.id,
            (Delivery::InBatch(answer.clone(), i), sealed.receipt),
        ));
    }
}

fn fill_envelope(
    mut e: smvs_schema::host_capnp::envelope::Builder<'_>,
    inner: &Inner,
    sealed: &SealedEnvelope,
) {
    e.set_format_version(crate::session::ENVELOPE_FORMAT);
    e.set_id(&inner.id.0);
    e.set_sender(inner.from.wire_str());
    e.set_recipient(inner.to.wire_str());
    e.set_session_version(sealed.version);
    e.set_session_id(&sealed.session_id);
    e.set_sealed(&sealed.sealed);
    if let Some(offer) = &sealed.offer {
        let mut p = e.init_prekey_init();
        p.set_init(&offer.init);
        p.set_kem(&offer.kem);
        p.set_kem_signature(&offer.kem_signature);
    }
}

/// The peer's host no longer has the v2 session an envelope was sealed under
/// ("session-reset"): forget it (if it is still ours), so that the next round makes a new one.
async fn forget_reset_session(
    outbox: &OutboxState,
    peer: &Username,
    check: &ReceiptCheck,
    why: &str,
) {
    let Some(id) = check.session_id() else {
        return;
    };
    // "Session v2 is off" there: the session goes too, and the next round finds out what the
    // host speaks. If the peer ever answered in v2, the no-downgrade mark stays (messages
    // wait); if it never did (a prekey session it did not take), v1 is no downgrade.
    if why.starts_with(crate::error::SESSION_RESET) || why.contains("session v2 is off") {
        if let Err(e) = outbox.sessions.forget_if(peer, id).await {
            tracing::warn!(%peer, error = %e, "cannot forget a session the peer reset");
        }
    }
}

/// Reads the peer's answer: a receipt that must check out, a refusal, or "later".
fn read_answer(
    check: &ReceiptCheck,
    id: &MessageId,
    peer: &Username,
    outcome: delivery_outcome::Reader<'_>,
) -> Result<Answer, DeliveryError> {
    let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, DeliveryError> {
        // The peer's words, for our log only; cut short.
        let why = t?.to_string().unwrap_or_else(|_| "(not UTF-8)".into());
        Ok(why.chars().take(200).collect())
    };
    let receipt = match outcome.which() {
        Ok(delivery_outcome::Receipt(receipt)) => receipt?,
        Ok(delivery_outcome::Refused(why)) => return Ok(Answer::Refused(text(why)?)),
        Ok(delivery_outcome::Later(why)) => return Ok(Answer::Later(text(why)?)),
        Err(_) => return Err(DeliveryError::BadReceipt),
    };
    let recipient = receipt
        .get_recipient()?
        .to_str()
        .map_err(|_| DeliveryError::BadReceipt)?;
    let expected = check.tag(id, peer, receipt.get_stored_at())?;
    if receipt.get_id()? != id.0
        || recipient != peer.wire_str()
        || !smvs_crypto::constant_time_eq(receipt.get_signature()?, &expected)
    {
        return Err(DeliveryError::BadReceipt);
    }
    Ok(Answer::Stored)
}

fn forget_sent(outbox: &OutboxState, ids: &[MessageId]) {
    let mut sent = outbox.sent.borrow_mut();
    for id in ids {
        sent.remove(id);
    }
}

/// The link broke: what was on its way is back to "queued" (it is resent on the next round).
fn give_up_round<T>(
    outbox: &OutboxState,
    current: MessageId,
    in_flight: &VecDeque<(MessageId, T)>,
) {
    let mut ids: Vec<MessageId> = in_flight.iter().map(|(id, _)| *id).collect();
    ids.push(current);
    forget_sent(outbox, &ids);
}

/// The peer's host has stored `id` (its receipt checked out): devices are told now, and the
/// status is written after ([`OutboxState::delivering`]), off the path a message waits on. A
/// message deleted while on its way ([`Outbox::forget`]) is not announced.
fn receipt_in_hand(outbox: &OutboxState, peer: &Username, id: MessageId) {
    if outbox.sent.borrow_mut().remove(&id) {
        outbox.delivering.borrow_mut().insert(id);
        publish_all(outbox, peer, vec![id], Status::Delivered);
    }
}

/// Writes that these ids were delivered, and stops showing them from memory once it is
/// written. A failed write keeps them shown as delivered: the next round finds them in the
/// outbox and writes them again rather than sending them.
async fn write_delivered(outbox: &OutboxState, peer: &Username, ids: Vec<MessageId>) {
    // After the Delivered events' appends: both are lazy, and should the status write share a
    // durable commit, the events must be on disk with it (devices catching up from the log
    // would never hear of a status that a power cut left without its event).
    outbox.events.all_appended().await;
    match outbox.storage.record_delivered(peer, ids.clone()).await {
        Ok(_) => forget_delivering(outbox, &ids),
        Err(e) => {
            tracing::error!(error = %e, "recording delivery statuses failed");
            read_outbox_again(outbox, peer);
        }
    }
}

/// A status write failed, so the outbox holds messages `peer`'s delivery task no longer
/// knows of: a round reads the outbox before any takes what is handed over.
fn read_outbox_again(outbox: &OutboxState, peer: &Username) {
    if let Some(wake) = outbox.links.borrow().get(peer) {
        wake.caught_up.set(false);
        wake.stale.set(true);
    }
}

fn forget_delivering(outbox: &OutboxState, ids: &[MessageId]) {
    let mut delivering = outbox.delivering.borrow_mut();
    for id in ids {
        delivering.remove(id);
    }
}

/// Writes the statuses of messages whose receipts are in hand (devices were told on each
/// receipt), without holding up the link. Storage runs jobs in the order they are queued, and
/// a delivered message is never set back to sent.
fn record_delivered(outbox: &Rc<OutboxState>, peer: &Username, ids: Vec<MessageId>) {
    if ids.is_empty() {
        return;
    }
    let (outbox, peer) = (outbox.clone(), peer.clone());
    tokio::task::spawn_local(async move { write_delivered(&outbox, &peer, ids).await });
}

/// Writes that the peer's host refused these messages and tells devices, without holding up
/// the link.
fn record_failed(
    outbox: &Rc<OutboxState>,
    peer: &Username,
    ids: Vec<MessageId>,
    reason: FailReason,
) {
    if ids.is_empty() {
        return;
    }
    forget_sent(outbox, &ids);
    let (outbox, peer) = (outbox.clone(), peer.clone());
    tokio::task::spawn_local(async move {
        match outbox.storage.set_failed(&peer, ids, reason).await {
            Ok(changed) => publish_all(&outbox, &peer, changed, Status::Failed),
            Err(e) => {
                tracing::error!(error = %e, "recording delivery statuses failed");
                read_outbox_again(&outbox, &peer);
            }
        }
    });
}

fn publish_all(outbox: &OutboxState, peer: &Username, ids: Vec<MessageId>, status: Status) {
    for id in ids {
        outbox.events.publish(HostEvent::MessageStatus {
            id,
            peer: peer.clone(),
            status,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// A peer's host in-process: answers every envelope "refused: <its id in hex>", so a test
    /// sees which answer went to which envelope; counts the calls of each kind. `batches: false`
    /// plays a host from before `deliverBatch` (it answers "unimplemented").
    struct FakeHost {
        batches: bool,
        singles: Cell<u32>,
        batch_sizes: RefCell<Vec<u32>>,
        /// Each batch call's parameters, in bytes as they crossed the link.
        batch_bytes: RefCell<Vec<u64>>,
    }

    impl FakeHost {
        fn new(batches: bool) -> Rc<FakeHost> {
            Rc::new(FakeHost {
                batches,
                singles: Cell::new(0),
                batch_sizes: RefCell::new(Vec::new()),
                batch_bytes: RefCell::new(Vec::new()),
            })
        }
    }

    impl host_link::Server for FakeHost {
        async fn deliver(
            self: Rc<Self>,
            params: host_link::DeliverParams,
            mut results: host_link::DeliverResults,
        ) -> Result<(), capnp::Error> {
            self.singles.set(self.singles.get() + 1);
            let id = hex::encode(params.get()?.get_envelope()?.get_id()?);
            results.get().init_outcome().set_refused(id);
            Ok(())
        }

        async fn deliver_batch(
            self: Rc<Self>,
            params: host_link::DeliverBatchParams,
            mut results: host_link::DeliverBatchResults,
        ) -> Result<(), capnp::Error> {
            if !self.batches {
                return Err(capnp::Error::unimplemented("deliverBatch".into()));
            }
            let envelopes = params.get()?.get_envelopes()?;
            self.batch_sizes.borrow_mut().push(envelopes.len());
            let words = params.get()?.total_size()?.word_count;
            self.batch_bytes.borrow_mut().push(words * 8);
            let mut outcomes = results.get().init_outcomes(envelopes.len());
            for (i, e) in (0u32..).zip(envelopes.iter()) {
                outcomes
                    .reborrow()
                    .get(i)
                    .set_refused(hex::encode(e.get_id()?));
            }
            Ok(())
        }
    }

    /// `n` envelopes for bob, each with `size` sealed bytes (not really sealed: the fake host
    /// reads only ids).
    fn envelopes(n: usize, size: usize) -> (Vec<Inner>, Vec<SealedEnvelope>) {
        envelopes_offered(n, size, None)
    }

    /// [`envelopes`], each with `offer` beside it (prekey mode).
    fn envelopes_offered(
        n: usize,
        size: usize,
        offer: Option<Rc<crate::session::PrekeyOffer>>,
    ) -> (Vec<Inner>, Vec<SealedEnvelope>) {
        let keys = Rc::new(
            crate::session::SessionKeys::from_shared(&smvs_crypto::AeadKey::generate()).unwrap(),
        );
        (0..n)
            .map(|i| {
                let inner = Inner {
                    id: MessageId::random(),
                    from: Username::parse("alice").unwrap(),
                    to: Username::parse("bob").unwrap(),
                    time: 1,
                    prev_hash: Vec::new(),
                    content: Content::Message(Payload::Text(format!("m{i}"))),
                    log_heads: Vec::new(),
                };
                let sealed = SealedEnvelope {
                    version: crate::session::SESSION_V1,
                    session_id: Vec::new(),
                    sealed: vec![0; size],
                    receipt: ReceiptCheck::V1(keys.clone()),
                    offer: offer.clone(),
                };
                (inner, sealed)
            })
            .unzip()
    }

    /// Sends through `send_all` and awaits every answer: the refusal's text (the id the fake
    /// host saw) for each envelope, in order.
    async fn answers(
        host: &host_link::Client,
        batch: &[Inner],
        sealed: Vec<SealedEnvelope>,
        batching: bool,
    ) -> Vec<Result<String, String>> {
        let bob = Username::parse("bob").unwrap();
        let mut out = Vec::new();
        for (id, (delivery, check)) in send_all(host, batch, sealed, batching) {
            out.push(match delivery.answer(&check, &id, &bob).await {
                Ok(Answer::Refused(seen)) => Ok(seen),
                Ok(_) => Err("stored or later".into()),
                Err(e) => Err(e.to_string()),
            });
        }
        out
    }

    fn run_local<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    #[test]
    fn a_backlog_goes_in_batches_and_each_answer_finds_its_envelope() {
        run_local(async {
            let fake = FakeHost::new(true);
            let host: host_link::Client = capnp_rpc::new_client_from_rc(fake.clone());
            // 300 small envelopes: calls of 128, 128 and 44, answers in order.
            let (batch, sealed) = envelopes(300, 100);
            let got = answers(&host, &batch, sealed, true).await;
            let expected: Vec<Result<String, String>> =
                batch.iter().map(|m| Ok(hex::encode(m.id.0))).collect();
            assert_eq!(got, expected);
            assert_eq!(*fake.batch_sizes.borrow(), [128, 128, 44]);
            assert_eq!(fake.singles.get(), 0);
            // Large envelopes: no call carries more than BATCH_BYTES of them; the fifth goes
            // alone, still in a batch (never a `deliver` while batching).
            fake.batch_sizes.borrow_mut().clear();
            let (batch, sealed) = envelopes(5, 100_000);
            assert!(answers(&host, &batch, sealed, true)
                .await
                .iter()
                .all(|a| a.is_ok()));
            assert_eq!(*fake.batch_sizes.borrow(), [2, 2, 1]);
            assert_eq!(fake.singles.get(), 0);
        });
    }

    /// The worst common case: a backlog in prekey mode, where every envelope carries a 4.8 KB
    /// offer beside the largest short-message bucket. Every call stays within what a link
    /// takes (512 KiB), with room to spare.
    #[test]
    fn a_backlog_with_prekey_offers_goes_in_calls_a_link_takes() {
        run_local(async {
            let fake = FakeHost::new(true);
            let host: host_link::Client = capnp_rpc::new_client_from_rc(fake.clone());
            let offer = Rc::new(crate::session::PrekeyOffer {
                init: vec![1; crate::session::handshake::PREKEY_INIT_LEN],
                kem: vec![2; smvs_crypto::XWING_PUBLIC_KEY_LEN],
                kem_signature: vec![3; 64],
            });
            let (batch, sealed) = envelopes_offered(300, 4096, Some(offer));
            assert!(answers(&host, &batch, sealed, true)
                .await
                .iter()
                .all(|a| a.is_ok()));
            let sizes = fake.batch_sizes.borrow();
            assert_eq!(sizes.iter().sum::<u32>(), 300);
            assert!(
                sizes.len() > 3,
                "split by bytes, not only by count: {sizes:?}"
            );
            let bytes = fake.batch_bytes.borrow();
            assert!(
                bytes.iter().all(|b| *b as usize <= BATCH_BYTES + 64 * 1024),
                "{bytes:?}"
            );
        });
    }

    #[test]
    fn a_host_without_batches_is_told_apart_and_sent_one_envelope_per_call() {
        run_local(async {
            let fake = FakeHost::new(false);
            let host: host_link::Client = capnp_rpc::new_client_from_rc(fake.clone());
            let (batch, sealed) = envelopes(3, 100);
            let got = answers(&host, &batch, sealed, true).await;
            let no_batch = DeliveryError::NoBatch.to_string();
            assert_eq!(got, vec![Err(no_batch); 3]);
            assert_eq!(fake.singles.get(), 0);
            // What the outbox does next round for such a peer: one deliver each.
            let (_, sealed) = envelopes(3, 100);
            let got = answers(&host, &batch, sealed, false).await;
            let expected: Vec<Result<String, String>> =
                batch.iter().map(|m| Ok(hex::encode(m.id.0))).collect();
            assert_eq!(got, expected);
            assert_eq!(fake.singles.get(), 3);
        });
    }

    #[test]
    fn backoff_grows_to_the_cap_and_jitter_never_passes_it() {
        let max = Duration::from_secs(30);
        let delays: Vec<Duration> = backoff(max).take(40).collect();
        assert!(delays[0] >= Duration::from_millis(125) && delays[0] <= Duration::from_millis(250));
        assert!(delays.iter().all(|d| *d <= max), "{delays:?}");
        // Once at the cap, every wait is in its upper half: a healed path is tried within the
        // cap, and hosts do not retry in lockstep.
        assert!(delays[20..].iter().all(|d| *d >= max / 2), "{delays:?}");
        assert!(
            delays[20..].windows(2).any(|w| w[0] != w[1]),
            "no jitter: {delays:?}"
        );
    }
}
