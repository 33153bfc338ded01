//! The call manager: every call's state, and its signalling with the peer's host.
//!
//! ```text
//!  device ──placeCall──► CallManager ──offer──► Outbox::send_now ──► peer host ─► its CallManager
//!                           │  ▲                                               │ rings (event)
//!  device ◄──answered/ended─┘  └──────────── Inbox ◄── answer/decline/busy/hangup ─┘
//! ```
//!
//! A host has at most one call at a time: a second offer is answered "busy". A call rings for
//! `--ring-seconds` (30 s by default); then the caller's host ends it ("no-answer") and tells the callee's host.
//! Signals are sealed envelopes between the two identities (`session::codec`), sent at once
//! through [`Outbox::send_now`]; they are never stored. The media itself runs in the devices and
//! never passes through here: the host only carries each device's fresh X25519 key and UDP
//! addresses to the other side, and gives each call an allocation on its call port
//! ([`crate::relay`]), which forwards the call's sealed datagrams between its own device and the
//! peer host's allocation when the devices cannot reach each other, or must not learn each
//! other's addresses (relay only: `relay_calls`, or the device asked). Then the host takes its
//! device's addresses out of what it sends, and the peer's out of what its devices see.
//!
//! Owns: the call table (every call ringing or active, the device running each, the registered
//! call agent, recent rings per peer). Who may ask: devices through the command façade (place,
//! answer, hang up, list, register an agent), the inbox (signals from peers), and the façade
//! when a contact is blocked. Serializes: it is an actor; the table is shared only by its own
//! futures (`Rc<RefCell<_>>`, one thread), and no borrow is held across an `.await`.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix::{Actor, Addr, AsyncContext, Context, Handler, Message, ResponseFuture};
use smvs_schema::{AddressKind, Username};
use tokio::sync::{mpsc, oneshot};

use smvs_schema::ErrorCode;

use crate::error::{HostError, IncomingError};
use crate::events::Events;
use crate::model::{
    now_ms, Answerer, CallId, CallInfo, CallSignal, CallState, HostEvent, Media, SignalKind,
};
use crate::model::{DeviceCall, RelayGrant, RelayPoint};
use crate::outbox::{Outbox, SendFailure};
use crate::relay::CallPort;
use crate::trust::Trust;

/// The callee's host rings a little longer than its own `--ring-seconds`, so the caller's
/// "no answer" normally ends it; if that never comes, the callee's host ends it and says so.
const CALLEE_GRACE: Duration = Duration::from_secs(5);
/// Signals whose stated time is further than this from ours are refused as stale (or replayed).
const SIGNAL_MAX_SKEW_MS: u64 = 120_000;
/// One peer may ring this host at most [`RINGS_PER_WINDOW`] times per [`RING_WINDOW`]; more
/// offers are refused (ringing raises notifications, and every answer costs a look-up).
const RINGS_PER_WINDOW: usize = 10;
const RING_WINDOW: Duration = Duration::from_secs(10);

/// What the call manager works with.
pub struct CallContext {
    pub trust: Rc<Trust>,
    /// Signals go out through it, at once (never queued).
    pub outbox: Outbox,
    pub events: Events,
    /// How long an outgoing call rings before it ends unanswered.
    pub ring_timeout: Duration,
    /// The call port that relays calls, and the address peers' hosts and our devices reach it
    /// at; None: calls go without a relay.
    pub relays: Option<(CallPort, std::net::SocketAddr)>,
    /// Every call relayed only, our devices' addresses never sent (config `relay_calls`).
    pub relay_calls: bool,
}

/// What the device running a call's media hears.
#[derive(Debug, Clone)]
pub enum DeviceNotice {
    Answered(Media),
    Ended(String),
}

/// A request handed to the registered call agent (D-Bus PlaceCall / AnswerCall).
pub enum AgentRequest {
    Place {
        peer: Username,
        video: bool,
        audio: bool,
        reply: oneshot::Sender<Result<CallId, HostError>>,
    },
    Answer {
        id: CallId,
        reply: oneshot::Sender<Result<CallId, HostError>>,
    },
}

struct Call {
    info: CallInfo,
    /// The device running this call's media, and its token (so a device that left cannot end
    /// a call another device took over).
    device: Option<(u64, mpsc::UnboundedSender<DeviceNotice>)>,
    /// Our call port's allocation for this call, released when it ends.
    relay: Option<[u8; 8]>,
    /// The peer's media set-up as its host sent it (its addresses and relay point): only the
    /// device running the call is given the addresses, never the call's published info.
    peer_media: Option<Media>,
    /// Our side relays only: our devices' addresses stay here, and they are not told the
    /// peer's.
    relay_only: bool,
}

/// A relay allocation for a new call on our call port, with the point the peer's host is told
/// and the grant our device is given. None when there is no call port, or no allocation left
/// (the call goes without one), unless `required`: then that is an error.
fn allocate(
    core: &CallContext,
    required: bool,
) -> Result<Option<(RelayPoint, RelayGrant)>, HostError> {
    let refused = |why: String| {
        HostError::new(
            ErrorCode::Refused,
            format!("this call must be relayed, and {why}"),
        )
    };
    let Some((port, public)) = &core.relays else {
        return match required {
            true => Err(refused(
                "this host has no call port to relay it (`call_listen`)".into(),
            )),
            false => Ok(None),
        };
    };
    match port.allocate() {
        Ok(grant) => Ok(Some((
            RelayPoint {
                address: *public,
                alloc: grant.alloc,
            },
            RelayGrant {
                address: *public,
                alloc: grant.alloc,
                token: grant.token,
            },
        ))),
        Err(e) if required => Err(refused(format!("the call port cannot: {e}"))),
        Err(e) => {
            tracing::warn!(error = %e, "a call goes without a relay");
            Ok(None)
        }
    }
}

/// Joins our allocation to the peer host's, so the call port forwards between them. The peer
/// names its relay point, so the rule hosts apply to each other's addresses applies: no
/// loopback, private or link-local address unless our call port's is of that kind too (else
/// our host would send to services beside it), and never our own call port.
fn connect_relay(core: &CallContext, ours: Option<[u8; 8]>, theirs: Option<RelayPoint>) {
    let (Some((port, public)), Some(ours), Some(theirs)) = (&core.relays, ours, theirs) else {
        return;
    };
    let kind = AddressKind::of(theirs.address.ip());
    if theirs.address == *public || !AddressKind::of(public.ip()).may_reach(kind) {
        tracing::info!(
            relay = %theirs.address,
            "the peer named a relay this host does not send to ({}); the call goes without it",
            kind.describe()
        );
        return;
    }
    if let Err(e) = port.connect(ours, theirs.address, theirs.alloc) {
        tracing::warn!(error = %e, "the call's relay could not be joined to the peer's");
    }
}

#[derive(Default)]
struct Table {
    calls: HashMap<CallId, Call>,
    next_token: u64,
    agent: Option<(u64, mpsc::UnboundedSender<AgentRequest>)>,
    /// When each peer rang lately (within [`RING_WINDOW`]).
    rings: HashMap<Username, VecDeque<Instant>>,
}

impl Table {
    fn token(&mut self) -> u64 {
        self.next_token += 1;
        self.next_token
    }

    /// The call that is ringing or active, if any.
    fn current(&self) -> Option<&Call> {
        self.calls
            .values()
            .find(|c| c.info.state != CallState::Ended)
    }

    /// Counts a ring from `peer`; false when it rang too often lately.
    fn may_ring(&mut self, peer: &Username) -> bool {
        let now = Instant::now();
        self.rings.retain(|_, times| {
            while times
                .front()
                .is_some_and(|t| now.duration_since(*t) > RING_WINDOW)
            {
                times.pop_front();
            }
            !times.is_empty()
        });
        let times = self.rings.entry(peer.clone()).or_default();
        if times.len() >= RINGS_PER_WINDOW {
            return false;
        }
        times.push_back(now);
        true
    }
}

/// Ends the call when its device goes away without hanging up (its connection dropped while
/// the call was being set up, or later): the notices' receiver is gone.
fn watch_device(
    manager: Addr<CallManager>,
    device: &mpsc::UnboundedSender<DeviceNotice>,
    id: CallId,
    token: u64,
) {
    let device = device.clone();
    tokio::task::spawn_local(async move {
        device.closed().await;
        manager.do_send(Hangup {
            id: Some(id),
            token: Some(token),
            device_gone: true,
        });
    });
}

pub struct CallManager {
    core: Rc<CallContext>,
    table: Rc<RefCell<Table>>,
}

impl CallManager {
    pub fn new(core: CallContext) -> CallManager {
        CallManager {
            core: Rc::new(core),
            table: Rc::new(RefCell::new(Table::default())),
        }
    }
}

impl Actor for CallManager {
    type Context = Context<Self>;
}

/// Ends a call here: takes it out of the table, tells its device and everyone listening.
fn end(core: &CallContext, table: &RefCell<Table>, id: &CallId, reason: &str) -> Option<CallInfo> {
    let call = table.borrow_mut().calls.remove(id)?;
    if let (Some((port, _)), Some(alloc)) = (&core.relays, call.relay) {
        port.release(alloc);
    }
    let mut info = call.info;
    info.state = CallState::Ended;
    info.reason = reason.to_string();
    info.since = now_ms();
    if let Some((_, device)) = call.device {
        let _ = device.send(DeviceNotice::Ended(reason.to_string()));
    }
    tracing::info!(call = %id, peer = %info.peer, reason, "call ended");
    core.events.publish(HostEvent::CallState(info.clone()));
    Some(info)
}

/// Sends a signal in the background; a failure only matters to the log (the call is over here).
fn send_later(core: &Rc<CallContext>, peer: &Username, signal: CallSignal) {
    let (core, peer) = (core.clone(), peer.clone());
    tokio::task::spawn_local(async move {
        if let Err(e) = core.outbox.send_now(&peer, signal).await {
            tracing::debug!(%peer, error = %e, "a call signal did not reach the peer's host");
        }
    });
}

fn failure(peer: &Username, e: SendFailure) -> HostError {
    match e {
        SendFailure::Offline(why) => HostError::new(
            ErrorCode::Offline,
            format!("{peer} cannot be reached: {why}"),
        ),
        SendFailure::Refused(why) if why.starts_with("busy") => {
            HostError::new(ErrorCode::Busy, format!("{peer} is busy in another call"))
        }
        SendFailure::Refused(why) if why.starts_with("too many calls") => HostError::new(
            ErrorCode::Refused,
            format!(
                "{peer}'s host refused the call: too many calls lately; try again in a few seconds"
            ),
        ),
        SendFailure::Refused(_) => HostError::new(
            ErrorCode::Refused,
            format!("{peer}'s host refused the call"),
        ),
        SendFailure::Local(e) => e,
    }
}

/// A device places a call.
#[derive(Message)]
#[rtype(result = "Result<DeviceCall, HostError>")]
pub struct PlaceCall {
    pub peer: Username,
    pub media: Media,
    pub device: mpsc::UnboundedSender<DeviceNotice>,
}

impl Handler<PlaceCall> for CallManager {
    type Result = ResponseFuture<Result<DeviceCall, HostError>>;
    fn handle(&mut self, msg: PlaceCall, ctx: &mut Self::Context) -> Self::Result {
        let (core, table, manager) = (self.core.clone(), self.table.clone(), ctx.address());
        Box::pin(async move {
            let peer = msg.peer;
            let me = core.trust.me()?;
            if peer == me.username {
                return Err(HostError::bad_request("you cannot call yourself"));
            }
            if let Some(current) = table.borrow().current() {
                return Err(HostError::new(
                    ErrorCode::Busy,
                    format!("already in a call with {}", current.info.peer),
                ));
            }
            let (contact, _) = core.trust.trusted_contact(&peer, false, false).await?;
            if contact.blocked {
                return Err(HostError::new(
                    ErrorCode::Blocked,
                    format!("you blocked {peer}; unblock them to call"),
                ));
            }
            if contact.request {
                // Calling someone answers their message request, as writing to them does.
                core.trust.accept_request(&peer).await?;
            }
            let callee = contact.identity;
            let relay_only = core.relay_calls || msg.media.relay_only;
            let id = CallId::random();
            let info = CallInfo {
                id,
                peer: peer.clone(),
                outgoing: true,
                state: CallState::Ringing,
                reason: String::new(),
                caller_identity: me.identity.to_bytes().to_vec(),
                callee_identity: callee.to_bytes().to_vec(),
                peer_media: None,
                video: msg.media.video,
                audio: msg.media.audio,
                since: now_ms(),
                answered_by: None,
            };
            let (token, relay) = {
                let mut t = table.borrow_mut();
                // Checked again: another call may have started during the look-up.
                if let Some(current) = t.current() {
                    return Err(HostError::new(
                        ErrorCode::Busy,
                        format!("already in a call with {}", current.info.peer),
                    ));
                }
                // Allocated only once the call is sure to be in the table, which releases it.
                let relay = allocate(&core, relay_only)?;
                let token = t.token();
                watch_device(manager, &msg.device, id, token);
                t.calls.insert(
                    id,
                    Call {
                        info: info.clone(),
                        device: Some((token, msg.device)),
                        relay: relay.as_ref().map(|(point, _)| point.alloc),
                        peer_media: None,
                        relay_only,
                    },
                );
                (token, relay)
            };
            let mut media = msg.media;
            media.relay = relay.as_ref().map(|(point, _)| *point);
            if relay_only {
                media = media.hidden();
            }
            let offer = CallSignal {
                call_id: id,
                kind: SignalKind::Offer,
                media: Some(media),
            };
            let hangup = CallSignal {
                call_id: id,
                kind: SignalKind::Hangup,
                media: None,
            };
            if let Err(e) = core.outbox.send_now(&peer, offer).await {
                let gone = table.borrow_mut().calls.remove(&id);
                if let (Some((port, _)), Some(alloc)) = (&core.relays, gone.and_then(|c| c.relay)) {
                    port.release(alloc);
                }
                tracing::info!(call = %id, %peer, error = %e, "a call could not ring");
                if matches!(e, SendFailure::Offline(_)) {
                    // The offer may have arrived even so (a late answer): make sure it stops.
                    send_later(&core, &peer, hangup);
                }
                return Err(failure(&peer, e));
            }
            let state = table.borrow().calls.get(&id).map(|c| c.info.state);
            match state {
                None => {
                    // Hung up (or the device left) while the offer was on its way; that hang-up
                    // may have overtaken the offer, so say it again.
                    send_later(&core, &peer, hangup);
                    return Err(HostError::new(
                        ErrorCode::Ended,
                        "the call ended before it rang",
                    ));
                }
                Some(CallState::Ringing) => {
                    tracing::info!(call = %id, %peer, "calling");
                    core.events.publish(HostEvent::CallState(info.clone()));
                }
                // Answered before the receipt came back: "active" is already published.
                Some(_) => {}
            }
            let (core2, table2) = (core.clone(), table.clone());
            tokio::task::spawn_local(async move {
                tokio::time::sleep(core2.ring_timeout).await;
                let ringing = table2
                    .borrow()
                    .calls
                    .get(&id)
                    .is_some_and(|c| c.info.state == CallState::Ringing);
                if ringing {
                    if let Some(info) = end(&core2, &table2, &id, "no-answer") {
                        send_later(
                            &core2,
                            &info.peer,
                            CallSignal {
                                call_id: id,
                                kind: SignalKind::NoAnswer,
                                media: None,
                            },
                        );
                    }
                }
            });
            Ok(DeviceCall {
                info,
                token,
                relay: relay.map(|(_, grant)| grant),
                relay_only,
            })
        })
    }
}

/// A device picks up a ringing call (`None`: the one that rings).
#[derive(Message)]
#[rtype(result = "Result<DeviceCall, HostError>")]
pub struct AnswerCall {
    pub id: Option<CallId>,
    pub media: Media,
    pub device: mpsc::UnboundedSender<DeviceNotice>,
    /// The client picking up: the other devices that rang are told it was answered elsewhere.
    pub by: Answerer,
}

/// Why `id` (or, `None`, any incoming call) cannot be picked up: it is not ringing. The call
/// rang on every device, and one of them took it: say so, rather than "not found", so the
/// device that lost the race knows what happened.
fn not_ringing(t: &Table, id: Option<CallId>) -> HostError {
    let taken = t.calls.values().find(|c| {
        !c.info.outgoing && c.info.state == CallState::Active && id.is_none_or(|id| id == c.info.id)
    });
    match (taken, id) {
        (Some(call), _) => HostError::new(
            ErrorCode::Busy,
            format!(
                "the call from {} was answered on another device",
                call.info.peer
            ),
        ),
        (None, Some(id)) => HostError::new(ErrorCode::NotFound, format!("no call {id} is ringing")),
        (None, None) => HostError::new(ErrorCode::NotFound, "no call is ringing"),
    }
}

impl Handler<AnswerCall> for CallManager {
    type Result = ResponseFuture<Result<DeviceCall, HostError>>;
    fn handle(&mut self, msg: AnswerCall, ctx: &mut Self::Context) -> Self::Result {
        let (core, table, manager) = (self.core.clone(), self.table.clone(), ctx.address());
        Box::pin(async move {
            let (info, token, relay, relay_only, seen) = {
                let mut t = table.borrow_mut();
                let token = t.token();
                let ringing = t
                    .calls
                    .values()
                    .find(|c| {
                        !c.info.outgoing
                            && c.info.state == CallState::Ringing
                            && msg.id.is_none_or(|id| id == c.info.id)
                    })
                    .map(|c| c.info.id);
                let Some(call) = ringing.and_then(|id| t.calls.get_mut(&id)) else {
                    return Err(not_ringing(&t, msg.id));
                };
                // Relayed only when we say so, or when the caller does: it will not use our
                // addresses, so they need not leave this host either.
                let caller_hides = call.peer_media.as_ref().is_some_and(|m| m.relay_only);
                let relay_only = call.relay_only || msg.media.relay_only || caller_hides;
                let relay = allocate(&core, relay_only)?;
                call.relay = relay.as_ref().map(|(point, _)| point.alloc);
                call.relay_only = relay_only;
                connect_relay(
                    &core,
                    call.relay,
                    call.peer_media.as_ref().and_then(|m| m.relay),
                );
                let seen = call
                    .peer_media
                    .as_ref()
                    .map(|m| m.for_our_device(relay_only));
                // Active at once, in this one handler: a second device's answer, handled next,
                // finds it taken.
                call.info.state = CallState::Active;
                call.info.since = now_ms();
                call.info.answered_by = Some(msg.by);
                watch_device(manager, &msg.device, call.info.id, token);
                call.device = Some((token, msg.device));
                (call.info.clone(), token, relay, relay_only, seen)
            };
            let mut media = msg.media;
            media.relay = relay.as_ref().map(|(point, _)| *point);
            if relay_only {
                media = media.hidden();
            }
            let answer = CallSignal {
                call_id: info.id,
                kind: SignalKind::Answer,
                media: Some(media),
            };
            if let Err(e) = core.outbox.send_now(&info.peer, answer).await {
                let (reason, error) = match e {
                    SendFailure::Refused(_) => (
                        "remote-hangup",
                        HostError::new(
                            ErrorCode::Ended,
                            format!("{} hung up before the answer arrived", info.peer),
                        ),
                    ),
                    SendFailure::Offline(_) => ("offline", failure(&info.peer, e)),
                    SendFailure::Local(_) => ("failed", failure(&info.peer, e)),
                };
                end(&core, &table, &info.id, reason);
                return Err(error);
            }
            if !table.borrow().calls.contains_key(&info.id) {
                return Err(HostError::new(ErrorCode::Ended, "the caller hung up"));
            }
            tracing::info!(call = %info.id, peer = %info.peer, relay_only, "call answered");
            core.events.publish(HostEvent::CallState(info.clone()));
            // The device that answered, alone, is told where the caller can be reached.
            let mut info = info;
            info.peer_media = seen;
            Ok(DeviceCall {
                info,
                token,
                relay: relay.map(|(_, grant)| grant),
                relay_only,
            })
        })
    }
}

/// Ends a call (`id` None: the current one). From a device's control (`token` set: only if
/// that device still runs the call), the local API or D-Bus.
#[derive(Message)]
#[rtype(result = "Result<(), HostError>")]
pub struct Hangup {
    pub id: Option<CallId>,
    pub token: Option<u64>,
    /// The device went away without hanging up.
    pub device_gone: bool,
}

impl Handler<Hangup> for CallManager {
    type Result = Result<(), HostError>;
    fn handle(&mut self, msg: Hangup, _: &mut Self::Context) -> Self::Result {
        let found = {
            let t = self.table.borrow();
            let call = match msg.id {
                Some(id) => t.calls.get(&id),
                None => t.current(),
            };
            call.filter(|c| {
                msg.token
                    .is_none_or(|token| c.device.as_ref().is_some_and(|(d, _)| *d == token))
            })
            .map(|c| (c.info.id, c.info.outgoing, c.info.state))
        };
        let Some((id, outgoing, state)) = found else {
            if msg.token.is_some() {
                return Ok(()); // that device's call is already over
            }
            return Err(HostError::new(ErrorCode::NotFound, "no such call"));
        };
        let (kind, reason) = if !outgoing && state == CallState::Ringing {
            (SignalKind::Decline, "declined")
        } else if msg.device_gone {
            (SignalKind::Hangup, "device-gone")
        } else {
            (SignalKind::Hangup, "hangup")
        };
        if let Some(info) = end(&self.core, &self.table, &id, reason) {
            send_later(
                &self.core,
                &info.peer,
                CallSignal {
                    call_id: id,
                    kind,
                    media: None,
                },
            );
        }
        Ok(())
    }
}

/// All calls ringing or active.
#[derive(Message)]
#[rtype(result = "Vec<CallInfo>")]
pub struct ListCalls;

impl Handler<ListCalls> for CallManager {
    type Result = Vec<CallInfo>;
    fn handle(&mut self, _: ListCalls, _: &mut Self::Context) -> Self::Result {
        self.table
            .borrow()
            .calls
            .values()
            .map(|c| c.info.clone())
            .collect()
    }
}

/// A signal from `from`'s host, already opened and checked by the router (the link's key is
/// `from`'s, the box opened under `from`'s identity, `from` is not blocked).
#[derive(Message)]
#[rtype(result = "Result<(), IncomingError>")]
pub struct SignalIn {
    pub from: Username,
    /// `from`'s identity bundle (the caller's, for an offer).
    pub from_identity: Vec<u8>,
    /// The time the sender put on the envelope.
    pub time: i64,
    pub signal: CallSignal,
}

impl Handler<SignalIn> for CallManager {
    type Result = Result<(), IncomingError>;
    fn handle(&mut self, msg: SignalIn, _: &mut Self::Context) -> Self::Result {
        if now_ms().abs_diff(msg.time) > SIGNAL_MAX_SKEW_MS {
            return Err(IncomingError::Refused("stale call signal".into()));
        }
        let SignalIn {
            from,
            from_identity,
            signal,
            ..
        } = msg;
        let (core, table) = (&self.core, &self.table);
        let id = signal.call_id;
        if signal.kind == SignalKind::Offer {
            return self.offered(from, from_identity, signal);
        }
        let call = table
            .borrow()
            .calls
            .get(&id)
            .filter(|c| c.info.peer == from)
            .map(|c| (c.info.outgoing, c.info.state));
        let Some((outgoing, state)) = call else {
            if signal.kind == SignalKind::Answer {
                // The callee must not think it is connected to a call that is gone.
                return Err(IncomingError::Refused("no such call".into()));
            }
            // Over already: nothing to do (signals may cross on the wire).
            return Ok(());
        };
        match signal.kind {
            SignalKind::Offer => Ok(()),
            SignalKind::Answer => {
                let (Some(media), true, CallState::Ringing) = (signal.media, outgoing, state)
                else {
                    return Err(IncomingError::Refused("unexpected answer".into()));
                };
                let info = {
                    let mut t = table.borrow_mut();
                    let Some(call) = t.calls.get_mut(&id) else {
                        return Ok(());
                    };
                    call.info.state = CallState::Active;
                    call.info.since = now_ms();
                    connect_relay(core, call.relay, media.relay);
                    // The running device is told where the callee can be reached; the call's
                    // info, which every device can list, is not.
                    let seen = media.for_our_device(call.relay_only);
                    call.info.peer_media = Some(media.for_our_device(true));
                    call.peer_media = Some(media);
                    if let Some((_, device)) = &call.device {
                        let _ = device.send(DeviceNotice::Answered(seen));
                    }
                    call.info.clone()
                };
                tracing::info!(call = %id, peer = %from, "call picked up");
                core.events.publish(HostEvent::CallState(info));
                Ok(())
            }
            SignalKind::Decline | SignalKind::Busy if outgoing => {
                let reason = if signal.kind == SignalKind::Busy {
                    "busy"
                } else {
                    "declined"
                };
                end(core, table, &id, reason);
                Ok(())
            }
            SignalKind::NoAnswer if !outgoing => {
                end(core, table, &id, "missed");
                Ok(())
            }
            SignalKind::Hangup => {
                let reason = match (outgoing, state) {
                    (false, CallState::Ringing) => "missed",
                    (true, CallState::Ringing) => "no-answer",
                    _ => "remote-hangup",
                };
                end(core, table, &id, reason);
                Ok(())
            }
            _ => Err(IncomingError::Refused("unexpected call signal".into())),
        }
    }
}

impl CallManager {
    /// An offer: ring, or answer "busy".
    fn offered(
        &self,
        from: Username,
        from_identity: Vec<u8>,
        signal: CallSignal,
    ) -> Result<(), IncomingError> {
        let id = signal.call_id;
        let Some(media) = signal.media else {
            return Err(IncomingError::Refused("an offer without media".into()));
        };
        let me = self
            .core
            .trust
            .me()
            .map_err(|_| IncomingError::Refused("this host has no user".into()))?;
        let busy = {
            let mut t = self.table.borrow_mut();
            if t.calls.contains_key(&id) {
                return Ok(()); // the same offer again
            }
            if !t.may_ring(&from) {
                tracing::info!(peer = %from, "refused a call: too many calls from this peer lately");
                return Err(IncomingError::Refused("too many calls".into()));
            }
            t.current().is_some()
        };
        let info = CallInfo {
            id,
            peer: from.clone(),
            outgoing: false,
            state: CallState::Ringing,
            reason: String::new(),
            caller_identity: from_identity,
            callee_identity: me.identity.to_bytes().to_vec(),
            video: media.video,
            audio: media.audio,
            // Every device hears of the ring; none is told where the caller can be reached
            // (the one that answers is, unless the call is relayed only).
            peer_media: Some(media.for_our_device(true)),
            since: now_ms(),
            answered_by: None,
        };
        if busy {
            tracing::info!(call = %id, peer = %from, "a call came in during another; answered busy");
            let mut missed = info;
            missed.state = CallState::Ended;
            missed.reason = "busy".into();
            self.core.events.publish(HostEvent::CallState(missed));
            // Answered in the refusal itself: no connection of ours to the caller's host.
            return Err(IncomingError::Refused("busy".into()));
        }
        self.table.borrow_mut().calls.insert(
            id,
            Call {
                info: info.clone(),
                device: None,
                relay: None,
                peer_media: Some(media),
                relay_only: self.core.relay_calls,
            },
        );
        tracing::info!(call = %id, peer = %from, "incoming call");
        self.core.events.publish(HostEvent::CallIncoming(info));
        let (core, table) = (self.core.clone(), self.table.clone());
        tokio::task::spawn_local(async move {
            tokio::time::sleep(core.ring_timeout + CALLEE_GRACE).await;
            let ringing = table
                .borrow()
                .calls
                .get(&id)
                .is_some_and(|c| c.info.state == CallState::Ringing);
            if ringing {
                if let Some(info) = end(&core, &table, &id, "missed") {
                    send_later(
                        &core,
                        &info.peer,
                        CallSignal {
                            call_id: id,
                            kind: SignalKind::Hangup,
                            media: None,
                        },
                    );
                }
            }
        });
        Ok(())
    }
}

/// Registers the device that runs calls started from D-Bus; returns its token.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct RegisterAgent(pub mpsc::UnboundedSender<AgentRequest>);

impl Handler<RegisterAgent> for CallManager {
    type Result = u64;
    fn handle(&mut self, msg: RegisterAgent, _: &mut Self::Context) -> u64 {
        let mut t = self.table.borrow_mut();
        let token = t.token();
        t.agent = Some((token, msg.0));
        token
    }
}

/// The agent with this token left.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UnregisterAgent(pub u64);

impl Handler<UnregisterAgent> for CallManager {
    type Result = ();
    fn handle(&mut self, msg: UnregisterAgent, _: &mut Self::Context) {
        let mut t = self.table.borrow_mut();
        if t.agent.as_ref().is_some_and(|(token, _)| *token == msg.0) {
            t.agent = None;
        }
    }
}

/// D-Bus asks the registered agent to place or answer a call.
#[derive(Message)]
#[rtype(result = "Result<CallId, HostError>")]
pub struct ViaAgent {
    pub place: Option<(Username, bool, bool)>,
    pub answer: Option<CallId>,
}

impl Handler<ViaAgent> for CallManager {
    type Result = ResponseFuture<Result<CallId, HostError>>;
    fn handle(&mut self, msg: ViaAgent, _: &mut Self::Context) -> Self::Result {
        let agent = self.table.borrow().agent.as_ref().map(|(_, a)| a.clone());
        Box::pin(async move {
            let agent = agent.ok_or_else(|| {
                HostError::new(
                    ErrorCode::NoDevice,
                    "no device runs calls for this host; start `smvsctl agent` in your session",
                )
            })?;
            let (reply, answer) = oneshot::channel();
            let request = match (msg.place, msg.answer) {
                (Some((peer, video, audio)), _) => AgentRequest::Place {
                    peer,
                    video,
                    audio,
                    reply,
                },
                (None, Some(id)) => AgentRequest::Answer { id, reply },
                (None, None) => return Err(HostError::bad_request("nothing to do")),
            };
            agent
                .send(request)
                .map_err(|_| HostError::new(ErrorCode::NoDevice, "the call agent left"))?;
            answer
                .await
                .map_err(|_| HostError::new(ErrorCode::NoDevice, "the call agent left"))?
        })
    }
}

/// The user blocked this peer: a call with them ends.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerBlocked(pub Username);

impl Handler<PeerBlocked> for CallManager {
    type Result = ();
    fn handle(&mut self, msg: PeerBlocked, _: &mut Self::Context) {
        let ids: Vec<CallId> = self
            .table
            .borrow()
            .calls
            .values()
            .filter(|c| c.info.peer == msg.0)
            .map(|c| c.info.id)
            .collect();
        for id in ids {
            if let Some(info) = end(&self.core, &self.table, &id, "blocked") {
                send_later(
                    &self.core,
                    &info.peer,
                    CallSignal {
                        call_id: id,
                        kind: SignalKind::Hangup,
                        media: None,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn one_peer_rings_at_most_ten_times_in_ten_seconds() {
        let mut t = Table::default();
        let (mallory, alice) = (
            Username::parse("mallory").unwrap(),
            Username::parse("alice").unwrap(),
        );
        for _ in 0..RINGS_PER_WINDOW {
            assert!(t.may_ring(&mallory));
        }
        assert!(!t.may_ring(&mallory));
        assert!(t.may_ring(&alice), "others still get through");
        // Old rings age out of the window.
        for times in t.rings.values_mut() {
            for at in times.iter_mut() {
                *at -= RING_WINDOW + Duration::from_secs(1);
            }
        }
        assert!(t.may_ring(&mallory));
        assert_eq!(t.rings.len(), 1, "aged-out peers are forgotten");
    }

    #[test]
    fn an_answer_after_another_device_picked_up_is_refused_as_answered_elsewhere() {
        let mut t = Table::default();
        let id = CallId([3; 16]);
        assert_eq!(not_ringing(&t, None).code, ErrorCode::NotFound);
        t.calls.insert(
            id,
            Call {
                info: CallInfo::answered_on_a_linked_device(id, 1),
                device: None,
                relay: None,
                peer_media: None,
                relay_only: false,
            },
        );
        for asked in [None, Some(id)] {
            let refused = not_ringing(&t, asked);
            assert_eq!(refused.code, ErrorCode::Busy);
            assert!(
                refused.message.contains("answered on another device"),
                "{refused:?}"
            );
        }
        assert_eq!(
            not_ringing(&t, Some(CallId([4; 16]))).code,
            ErrorCode::NotFound
        );
    }
}
