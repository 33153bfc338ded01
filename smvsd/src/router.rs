//! The router: every message in and out passes here.
//!
//! ```text
//!  local API ──SendText──► Router ──► storage (outbox, durable) ──► PeerLinks::Kick(peer)
//!  host link ──Incoming──► Router ──► checks ─► session open ─► storage ─► receipt
//!                                  └──► DeviceHub (events)
//! ```
//!
//! The actor's mailbox is the bounded entry point; the work itself runs on the shared
//! [`HostCore`], one future per message, on the daemon's main thread.

use std::rc::Rc;

use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture};
use smvs_crypto::{AgreementPublicKey, IdentityBundle};
use smvs_schema::Username;

use crate::calls::{CallManager, SignalIn};
use crate::error::{HostError, IncomingError};
use crate::host::HostCore;
use crate::model::{Direction, HostEvent, Integrity, MessageId, Payload, Status, StoredMessage};
use crate::peers::{Kick, PeerLinks};
use crate::session::{self, Content, Header, MAX_TEXT_BYTES};
use crate::storage::{bundle_to_hex, Arrival, Contact};

/// Requests waiting for the router before senders are made to wait.
pub const ROUTER_MAILBOX: usize = 8192;

pub struct Router {
    core: Rc<HostCore>,
    peers: Addr<PeerLinks>,
    calls: Addr<CallManager>,
}

impl Router {
    pub fn new(core: Rc<HostCore>, peers: Addr<PeerLinks>, calls: Addr<CallManager>) -> Router {
        Router { core, peers, calls }
    }
}

impl Actor for Router {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(ROUTER_MAILBOX);
    }
}

/// A device asks to send a text.
#[derive(Message)]
#[rtype(result = "Result<StoredMessage, HostError>")]
pub struct SendText {
    pub to: String,
    pub body: String,
}

impl Handler<SendText> for Router {
    type Result = ResponseFuture<Result<StoredMessage, HostError>>;
    fn handle(&mut self, msg: SendText, _: &mut Self::Context) -> Self::Result {
        let (core, peers) = (self.core.clone(), self.peers.clone());
        Box::pin(async move {
            let to = parse_user(&msg.to)?;
            if msg.body.len() > MAX_TEXT_BYTES {
                return Err(HostError::new(
                    "too-large",
                    format!(
                        "a message may hold at most {MAX_TEXT_BYTES} bytes; this one has {}",
                        msg.body.len()
                    ),
                ));
            }
            queue(&core, &peers, &to, Payload::Text(msg.body)).await
        })
    }
}

fn parse_user(name: &str) -> Result<Username, HostError> {
    Username::parse(name).map_err(|e| HostError::bad_request(e.to_string()))
}

/// Puts a payload for `to` in the outbox and wakes its link.
async fn queue(
    core: &HostCore,
    peers: &Addr<PeerLinks>,
    to: &Username,
    payload: Payload,
) -> Result<StoredMessage, HostError> {
    let me = core.me()?;
    if to == &me.username {
        return Err(HostError::bad_request(
            "you cannot send messages to yourself",
        ));
    }
    check_can_send(core, to).await?;
    accept_request(core, to).await?;
    let stored = core
        .storage
        .queue_outgoing(&me.username, to, payload)
        .await?;
    core.publish(HostEvent::MessageStatus {
        id: stored.id,
        peer: to.clone(),
        status: Status::Queued,
    });
    peers.do_send(Kick(to.clone()));
    Ok(stored)
}

/// Writing to someone who wrote first (in contacts-only mode) accepts them: their held
/// messages become ordinary received ones.
pub(crate) async fn accept_request(core: &HostCore, peer: &Username) -> Result<(), HostError> {
    let Some(mut contact) = core.contact(peer).await? else {
        return Ok(());
    };
    if !contact.request {
        return Ok(());
    }
    contact.request = false;
    core.put_contact(contact).await?;
    let released = core.storage.release_held(peer).await?;
    tracing::debug!(peer = %peer, released = released.len(), "accepted a message request");
    for id in released {
        core.publish(HostEvent::MessageStatus {
            id,
            peer: peer.clone(),
            status: Status::Received,
        });
    }
    Ok(())
}

/// Refuses sending to a blocked contact or one whose changed key is not accepted yet.
async fn check_can_send(core: &HostCore, to: &Username) -> Result<(), HostError> {
    if let Some(contact) = core.contact(to).await? {
        if contact.blocked {
            return Err(HostError::new(
                "blocked",
                format!("{to} is blocked; `smvsctl unblock {to}` first"),
            ));
        }
        if contact.pending_identity.is_some() {
            return Err(HostError::new(
                "key-changed",
                format!("{to}'s identity key changed; compare safety numbers with `smvsctl verify {to}` and accept with `--accept-new-key`"),
            ));
        }
    }
    Ok(())
}

/// An envelope as it arrived on a host link, as plain owned data.
#[derive(Debug, Clone)]
pub struct EnvelopeData {
    pub format: u16,
    pub id: Vec<u8>,
    pub sender: String,
    pub recipient: String,
    pub session_version: u16,
    pub sealed: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct ReceiptData {
    pub id: MessageId,
    pub recipient: Username,
    pub stored_at: i64,
    pub tag: Vec<u8>,
}

/// An envelope from the host whose Noise key is `remote_key`.
#[derive(Message)]
#[rtype(result = "Result<ReceiptData, IncomingError>")]
pub struct Incoming {
    pub remote_key: AgreementPublicKey,
    pub envelope: EnvelopeData,
}

/// The most a sealed envelope may be: the largest bucket plus nonce and tag.
pub const MAX_SEALED: usize = 131072 + 24 + 16;

impl Handler<Incoming> for Router {
    type Result = ResponseFuture<Result<ReceiptData, IncomingError>>;
    fn handle(&mut self, msg: Incoming, _: &mut Self::Context) -> Self::Result {
        let (core, calls) = (self.core.clone(), self.calls.clone());
        Box::pin(async move { accept_envelope(&core, &calls, msg.remote_key, msg.envelope).await })
    }
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

async fn accept_envelope(
    core: &HostCore,
    calls: &Addr<CallManager>,
    remote_key: AgreementPublicKey,
    env: EnvelopeData,
) -> Result<ReceiptData, IncomingError> {
    let me = core.me().map_err(|_| refused("this host has no user"))?;
    if env.format != session::ENVELOPE_FORMAT || env.session_version != session::SESSION_V1 {
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
    let turn = core.arrival_turn(&sender).await;

    // Blocked senders are turned away before anything is decrypted or stored. The answer does
    // not say why.
    let known = core.contact(&sender).await.map_err(busy_here)?;
    if known.as_ref().is_some_and(|c| c.blocked) {
        tracing::debug!(peer = %sender, "refused an envelope from a blocked contact");
        return Err(refused("not accepted"));
    }
    // In contacts-only mode, someone we never wrote to is a request: held until we answer.
    let request = core.config.contacts_only && known.as_ref().is_none_or(|c| c.request);
    // The cached record may predate a move or a new key: on a mismatch, ask again.
    let mut checked = check_sender(core, &sender, &remote_key, false, request).await;
    // (An unknown sender came from the directory just now: asking again would not help.)
    if matches!(&checked, Err(IncomingError::Refused(why)) if why != UNKNOWN_SENDER) {
        checked = check_sender(core, &sender, &remote_key, true, request).await;
    }
    let mut contact = checked?;
    // Checked again: a block may have landed while the sender was being looked up.
    if contact.blocked {
        return Err(refused("not accepted"));
    }
    if request && !contact.request {
        contact.request = true;
        core.put_contact(contact.clone()).await.map_err(busy_here)?;
    }
    let identity = contact.identity()?;
    let keys = core
        .session_keys(&sender, &identity)
        .await
        .map_err(busy_here)?;
    let header = Header {
        id: &id,
        sender: &sender,
        recipient: &me.username,
    };
    let content = session::open(&keys, &header, &env.sealed).map_err(|e| refused(e.to_string()))?;
    let inner = session::decode_inner(&content).map_err(|e| refused(e.to_string()))?;
    if inner.id != id || inner.from != sender || inner.to != me.username {
        return Err(refused("envelope header and content disagree"));
    }
    let payload = match inner.content {
        Content::Message(payload) => payload,
        Content::Call(signal) => {
            drop(turn);
            // Someone we never answered does not get to ring us (their answer to our own call
            // is fine: calling them accepted their request).
            if request && signal.kind == crate::calls::SignalKind::Offer {
                return Err(refused("not accepted"));
            }
            calls
                .send(SignalIn {
                    from: sender.clone(),
                    from_identity: identity.to_bytes().to_vec(),
                    time: inner.time,
                    signal,
                })
                .await
                .map_err(|_| IncomingError::Later("the host is shutting down".into()))??;
            return Ok(receipt(&keys, id, &me.username));
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
        integrity: Integrity::Unchecked,
        direction: Direction::In,
    };
    let arrival = core
        .storage
        .store_incoming(message, move || drop(turn))
        .await?;
    if let Arrival::Stored(integrity) = arrival {
        match &payload {
            Payload::Text(_) => {
                core.publish(HostEvent::MessageReceived {
                    id,
                    peer: sender.clone(),
                    time: inner.time,
                });
                if matches!(integrity, Integrity::Gap | Integrity::OutOfOrder) {
                    tracing::warn!(peer = %sender, ?integrity, "conversation integrity problem");
                    core.publish(HostEvent::IntegrityProblem {
                        id,
                        peer: sender.clone(),
                        time: inner.time,
                    });
                }
            }
            Payload::Delete(ids) => {
                if core.config.honour_remote_delete {
                    apply_delete(core, &sender, ids, id).await?;
                }
            }
            Payload::Expire(seconds) => {
                // Expiry deletes history too, so it obeys the same switch as remote deletes.
                if core.config.honour_remote_delete {
                    core.storage.set_expiry(&sender, *seconds).await?
                }
            }
        }
    }
    Ok(receipt(&keys, id, &me.username))
}

fn receipt(keys: &session::SessionKeys, id: MessageId, me: &Username) -> ReceiptData {
    let stored_at = crate::model::now_ms();
    ReceiptData {
        id,
        recipient: me.clone(),
        stored_at,
        tag: session::receipt_tag(keys, &id, me, stored_at),
    }
}

const UNKNOWN_SENDER: &str = "unknown sender";

/// The sender's pinned contact, provided the directory's record for the sender names the host
/// key this envelope came with.
async fn check_sender(
    core: &HostCore,
    sender: &Username,
    remote_key: &AgreementPublicKey,
    fresh: bool,
    request: bool,
) -> Result<Contact, IncomingError> {
    // The link's key is checked against the directory before anything is pinned or stored, so
    // a host that merely claims a name leaves no trace.
    if core.recently_unknown(sender) {
        // Not refused: the name may have been registered since (its host will retry).
        return Err(IncomingError::Later(
            "the sender was not in the directory a moment ago".into(),
        ));
    }
    let record = match core.lookup(sender, fresh).await {
        Ok(record) => record,
        Err(e) if e.code == "unknown-user" => {
            core.note_unknown(sender);
            return Err(refused(UNKNOWN_SENDER));
        }
        Err(_) => {
            return Err(IncomingError::Later(
                "the sender cannot be looked up now".into(),
            ))
        }
    };
    if &record.user.transport_key != remote_key {
        if fresh {
            smvs_service::security_event!(warn, smvs_service::logging::PEER_REFUSED, peer = %sender, "refused an envelope: the sending host's key is not the sender's");
        }
        return Err(refused(
            "the sending host's key does not match the sender's directory record",
        ));
    }
    match core.trusted_contact_as(sender, false, request).await {
        Ok((contact, _)) => Ok(contact),
        Err(e) if e.code == "key-changed" => Err(IncomingError::Later(
            "the sender's identity key changed and is not accepted yet".into(),
        )),
        Err(_) => Err(IncomingError::Later(
            "the sender cannot be checked now".into(),
        )),
    }
}

async fn apply_delete(
    core: &HostCore,
    peer: &Username,
    ids: &[MessageId],
    request: MessageId,
) -> Result<(), IncomingError> {
    if ids.is_empty() {
        core.storage.delete(peer, None, Some(request)).await?;
        core.publish(HostEvent::Deleted {
            id: None,
            peer: peer.clone(),
        });
    } else {
        // All in one storage job and one checkpoint, however many ids the request names; only
        // what was here is announced.
        for id in core.storage.delete_from_peer(peer, ids.to_vec()).await? {
            core.publish(HostEvent::Deleted {
                id: Some(id),
                peer: peer.clone(),
            });
        }
    }
    Ok(())
}

/// `verify USER [--accept-new-key]`.
#[derive(Message)]
#[rtype(result = "Result<Verification, HostError>")]
pub struct Verify {
    pub user: String,
    pub accept_new_key: bool,
}

#[derive(Debug, Clone)]
pub struct Verification {
    pub safety_number: String,
    pub transcript_hash: String,
    pub key_changed: bool,
    pub accepted: bool,
}

impl Handler<Verify> for Router {
    type Result = ResponseFuture<Result<Verification, HostError>>;
    fn handle(&mut self, msg: Verify, _: &mut Self::Context) -> Self::Result {
        let (core, peers) = (self.core.clone(), self.peers.clone());
        Box::pin(async move {
            let peer = parse_user(&msg.user)?;
            let me = core.me()?;
            // Refresh from the directory, so a key change is noticed here too.
            let _ = core.lookup(&peer, true).await;
            let mut contact = match core.trusted_contact(&peer).await {
                Ok((contact, _)) => contact,
                Err(e) if e.code == "key-changed" => core
                    .storage
                    .contact(&peer)
                    .await?
                    .ok_or_else(|| HostError::internal("changed key without a contact"))?,
                Err(e) => return Err(e),
            };
            let key_changed = contact.pending_identity.is_some();
            let mut accepted = false;
            if let (Some(pending), true) = (contact.pending_identity.clone(), msg.accept_new_key) {
                // Only the key whose safety number the user was shown (and compared).
                if !core.take_shown_pending(&peer, &pending) {
                    return Err(HostError::new(
                        "key-changed",
                        format!("{peer}'s new key has not been shown to you, or it changed again since: compare the safety number of `smvsctl verify {peer}` with {peer}, then accept"),
                    ));
                }
                accept_pending(&mut contact);
                core.put_contact(contact.clone()).await?;
                core.forget_session(&peer);
                accepted = true;
                tracing::info!(peer = %peer, "accepted a contact's new identity key");
                peers.do_send(Kick(peer.clone()));
            }
            let shown: IdentityBundle = if key_changed && !accepted {
                if let Some(pending) = &contact.pending_identity {
                    core.showed_pending(&peer, pending);
                }
                contact.pending()?.unwrap_or(contact.identity()?)
            } else {
                contact.identity()?
            };
            let safety_number = smvs_crypto::safety_number(
                me.username.as_str(),
                &me.identity,
                peer.as_str(),
                &shown,
            )
            .map_err(HostError::internal)?;
            let transcript = core.storage.transcript_hash(&peer).await?;
            Ok(Verification {
                safety_number,
                transcript_hash: hex::encode(transcript),
                key_changed: key_changed && !accepted,
                accepted,
            })
        })
    }
}

fn accept_pending(contact: &mut Contact) {
    if let Some(identity) = contact.pending_identity.take() {
        contact.identity = identity;
    }
    if let Some(key) = contact.pending_transport_key.take() {
        contact.transport_key = key;
    }
    // The next look-up refreshes host address and serial.
    contact.serial = 0;
}

/// `block USER` / `unblock USER`: blocking pins the user's current key, so the block holds for
/// that key even if they never wrote before.
#[derive(Message)]
#[rtype(result = "Result<(), HostError>")]
pub struct SetBlocked {
    pub user: String,
    pub blocked: bool,
}

impl Handler<SetBlocked> for Router {
    type Result = ResponseFuture<Result<(), HostError>>;
    fn handle(&mut self, msg: SetBlocked, _: &mut Self::Context) -> Self::Result {
        let (core, calls) = (self.core.clone(), self.calls.clone());
        Box::pin(async move {
            let peer = parse_user(&msg.user)?;
            let mut contact = match core.contact(&peer).await? {
                Some(c) => c,
                None => {
                    let record = core.lookup(&peer, true).await?;
                    Contact {
                        username: peer.to_string(),
                        identity: bundle_to_hex(&record.user.identity),
                        transport_key: record.user.transport_key.to_hex(),
                        host_address: record.user.host_address.to_string(),
                        serial: record.user.serial,
                        blocked: false,
                        pending_identity: None,
                        pending_transport_key: None,
                        request: false,
                    }
                }
            };
            contact.blocked = msg.blocked;
            core.put_contact(contact).await?;
            tracing::info!(peer = %peer, blocked = msg.blocked, "contact block changed");
            if msg.blocked {
                calls.do_send(crate::calls::PeerBlocked(peer));
            }
            Ok(())
        })
    }
}

/// `delete USER [--id ID] [--everywhere]`.
#[derive(Message)]
#[rtype(result = "Result<u32, HostError>")]
pub struct Delete {
    pub peer: String,
    pub id: Option<MessageId>,
    pub everywhere: bool,
}

impl Handler<Delete> for Router {
    type Result = ResponseFuture<Result<u32, HostError>>;
    fn handle(&mut self, msg: Delete, _: &mut Self::Context) -> Self::Result {
        let (core, peers) = (self.core.clone(), self.peers.clone());
        Box::pin(async move {
            let peer = parse_user(&msg.peer)?;
            // If the request cannot go (blocked, changed key), nothing is deleted and the user
            // is told why. It is queued after the local delete, which would otherwise remove it
            // from the outbox along with the conversation.
            if msg.everywhere {
                check_can_send(&core, &peer).await?;
            }
            let n = core.storage.delete(&peer, msg.id, None).await?;
            core.publish(HostEvent::Deleted {
                id: msg.id,
                peer: peer.clone(),
            });
            if msg.everywhere {
                let ids = msg.id.into_iter().collect();
                queue(&core, &peers, &peer, Payload::Delete(ids)).await?;
            }
            Ok(n)
        })
    }
}

/// `expire USER SECONDS`.
#[derive(Message)]
#[rtype(result = "Result<(), HostError>")]
pub struct Expire {
    pub peer: String,
    pub seconds: u32,
}

impl Handler<Expire> for Router {
    type Result = ResponseFuture<Result<(), HostError>>;
    fn handle(&mut self, msg: Expire, _: &mut Self::Context) -> Self::Result {
        let (core, peers) = (self.core.clone(), self.peers.clone());
        Box::pin(async move {
            let peer = parse_user(&msg.peer)?;
            // Refuse before changing anything if the setting cannot reach the peer.
            check_can_send(&core, &peer).await?;
            core.storage.set_expiry(&peer, msg.seconds).await?;
            queue(&core, &peers, &peer, Payload::Expire(msg.seconds)).await?;
            Ok(())
        })
    }
}

/// `register USERNAME`.
#[derive(Message)]
#[rtype(result = "Result<(), HostError>")]
pub struct Register(pub String);

impl Handler<Register> for Router {
    type Result = ResponseFuture<Result<(), HostError>>;
    fn handle(&mut self, msg: Register, _: &mut Self::Context) -> Self::Result {
        let core = self.core.clone();
        Box::pin(async move {
            let name = parse_user(&msg.0)?;
            core.register(name).await.map(|_| ())
        })
    }
}

/// Reads for interfaces whose handlers must be `Send` (D-Bus): they ask the router, which owns
/// the `!Send` core, and get plain data back.
#[derive(Message)]
#[rtype(result = "Result<HostSnapshot, HostError>")]
pub struct Snapshot;

/// The host's state as devices see it.
#[derive(Debug, Clone, Default)]
pub struct HostSnapshot {
    pub username: Option<String>,
    pub fingerprint: String,
    pub host_address: String,
    pub queued: u32,
}

impl Handler<Snapshot> for Router {
    type Result = ResponseFuture<Result<HostSnapshot, HostError>>;
    fn handle(&mut self, _: Snapshot, _: &mut Self::Context) -> Self::Result {
        let core = self.core.clone();
        Box::pin(async move {
            let me = core.me.borrow().clone();
            Ok(HostSnapshot {
                fingerprint: me
                    .as_ref()
                    .and_then(|m| smvs_crypto::fingerprint(m.username.as_str(), &m.identity).ok())
                    .unwrap_or_default(),
                username: me.map(|m| m.username.to_string()),
                host_address: core
                    .config
                    .public_address
                    .as_ref()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|| core.config.listen.to_string()),
                queued: core.storage.queued_count().await?,
            })
        })
    }
}

/// The last `limit` messages with a peer (0: all), oldest first, with live statuses.
#[derive(Message)]
#[rtype(result = "Result<Vec<StoredMessage>, HostError>")]
pub struct History {
    pub peer: String,
    pub limit: u32,
    /// Only this message (by id), when set.
    pub only: Option<MessageId>,
}

impl Handler<History> for Router {
    type Result = ResponseFuture<Result<Vec<StoredMessage>, HostError>>;
    fn handle(&mut self, msg: History, _: &mut Self::Context) -> Self::Result {
        let core = self.core.clone();
        Box::pin(async move {
            let peer = parse_user(&msg.peer)?;
            let mut messages = match msg.only {
                Some(id) => core.storage.message(&peer, id).await?.into_iter().collect(),
                None => core.storage.history(&peer, msg.limit).await?,
            };
            for m in &mut messages {
                if m.status == Status::Queued && core.is_sent(&m.id) {
                    m.status = Status::Sent;
                }
            }
            Ok(messages)
        })
    }
}

/// Conversations and contacts, for listing.
#[derive(Message)]
#[rtype(result = "Result<(Vec<crate::storage::ConversationSummary>, Vec<Contact>), HostError>")]
pub struct Listing;

impl Handler<Listing> for Router {
    type Result =
        ResponseFuture<Result<(Vec<crate::storage::ConversationSummary>, Vec<Contact>), HostError>>;
    fn handle(&mut self, _: Listing, _: &mut Self::Context) -> Self::Result {
        let core = self.core.clone();
        Box::pin(async move {
            Ok((
                core.storage.conversations().await?,
                core.storage.contacts().await?,
            ))
        })
    }
}
