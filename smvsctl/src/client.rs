//! The connection to smvsd and typed calls over it.
//!
//! [`connect`] opens smvsd's Unix socket and runs plain Cap'n Proto two-party RPC over it (no
//! Noise: on a local socket, file permissions and smvsd's `SO_PEERCRED` check decide who may
//! talk). The RPC system is driven by a task spawned with `spawn_local`, so everything here must
//! run inside a `tokio::task::LocalSet` on one thread; [`HostClient`] is `!Send`.
//!
//! Each method of [`HostClient`] makes one call of `schema/local.capnp`'s `Host` interface and
//! turns the answer into plain owned Rust values (the `*View` types and [`HostStatus`]), checked
//! on the way in: usernames are parsed, ids must be 16 bytes, enums must be known. Output never
//! sees a Cap'n Proto reader.
//!
//! Events flow the other way: [`HostClient::subscribe`] hands smvsd an `EventSink` served here;
//! each event smvsd calls it with is parsed into an [`EventView`] and put on a bounded channel.
//! The sink's call returns only once the event is queued, so a slow reader slows smvsd's calls
//! to this sink instead of growing a queue.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};
use smvs_schema::local_capnp::{
    call_agent, call_control, call_device, call_event, call_info, call_media, call_relay, event,
    event_sink, host, message, subscription,
};
use smvs_schema::Username;
use tokio::sync::{mpsc, watch};

use crate::error::CtlError;

/// How many parsed events may wait for the watcher before the sink stops answering smvsd.
pub const EVENT_QUEUE: usize = 64;

// ---------------------------------------------------------------------------------------------
// Ids, statuses and call states: smvsd's own words (smvs_schema::vocab), so they cannot drift.

pub use smvs_schema::{CallId, CallState, IdError, Integrity, MessageId, Status as MessageStatus};

// ---------------------------------------------------------------------------------------------
// Views: what smvsd answered, as plain values

/// Serializes a value by its `Display` form (usernames).
pub(crate) fn as_display<T: fmt::Display, S: Serializer>(
    value: &T,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(value)
}

/// The host's state, from `status` and `register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostStatus {
    /// `None` until a user is registered on this host.
    pub username: Option<String>,
    pub registered: bool,
    /// Of our own identity; `None` before registration.
    pub fingerprint: Option<String>,
    /// As published in the directory; `None` before registration.
    pub host_address: Option<String>,
    pub directory: String,
    /// Outgoing messages not yet delivered.
    pub queued: u32,
    pub version: String,
    /// Where this device reaches the host's call port (STUN and the call relay, UDP).
    pub call_port: Option<String>,
    /// The host's node in the hosts' DHT (UDP), when it is in one.
    pub dht_node: Option<String>,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageView {
    pub id: MessageId,
    #[serde(serialize_with = "as_display")]
    pub from: Username,
    #[serde(serialize_with = "as_display")]
    pub to: Username,
    /// Unix milliseconds, as the sender stated it.
    pub time: i64,
    pub status: MessageStatus,
    /// Why a failed message failed (a code such as `unknown-user`); empty otherwise.
    pub reason: String,
    pub integrity: Integrity,
    pub body: String,
}

/// One conversation in the list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversationView {
    #[serde(serialize_with = "as_display")]
    pub peer: Username,
    pub messages: u32,
    /// Received and not yet read on any of the user's devices.
    pub unread: u32,
    /// Unix milliseconds of the newest message.
    pub last_time: i64,
    /// 0: messages do not expire.
    pub expire_seconds: u32,
}

/// One contact (a user whose identity key this host has pinned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContactView {
    #[serde(serialize_with = "as_display")]
    pub username: Username,
    pub fingerprint: String,
    pub blocked: bool,
    /// The directory now shows another key; sends are refused until it is accepted.
    pub key_changed: bool,
    /// Not a contact yet: their messages are held.
    pub request: bool,
    /// Set while the directories disagree about the contact's key: which showed which.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    /// The contact who introduced this one (None: pinned from a directory).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub introduced_by: Option<String>,
    /// The user's own name for this identity address (`petname add`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub petname: Option<String>,
}

/// The answer of `verify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerificationView {
    /// Whom this verification is about (the request's user).
    #[serde(serialize_with = "as_display")]
    pub user: Username,
    /// 60 digits, the same on both sides.
    pub safety_number: String,
    /// Hex; the same on both sides when both saw the same history.
    pub transcript_hash: String,
    pub key_changed: bool,
    /// A changed key was accepted by this call.
    pub accepted: bool,
    /// Set while the directories disagree about the contact's key: which showed which.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alarm: Option<String>,
    /// While a change is pending, the pinned key's safety number (`safety_number` is the
    /// pending key's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned_safety_number: Option<String>,
    /// The session in use with the contact: 2 (forward-secret, post-quantum) or 1.
    pub session_version: u16,
    /// The signed directory record the pinned key came from (hex), so it can be shown to
    /// others and checked against the directory's key; `None` for contacts pinned before hosts
    /// kept records.
    pub record: Option<SignedRecordView>,
}

/// A directory's signed statement, as the host kept it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignedRecordView {
    /// The record's bytes (Cap'n Proto `UserRecord`), hex.
    pub record: String,
    /// The directory's Ed25519 signature over them, hex.
    pub signature: String,
    /// The directory's Ed25519 key, hex.
    pub directory_key: String,
    /// Unix ms.
    pub issued_at: i64,
}

/// One event from a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum EventView {
    MessageReceived {
        id: MessageId,
        #[serde(serialize_with = "as_display")]
        peer: Username,
        time: i64,
    },
    /// The user wrote a message to `peer`, on this device or another of theirs.
    MessageSent {
        id: MessageId,
        #[serde(serialize_with = "as_display")]
        peer: Username,
        time: i64,
    },
    MessageStatus {
        id: MessageId,
        #[serde(serialize_with = "as_display")]
        peer: Username,
        status: MessageStatus,
    },
    KeyChanged {
        #[serde(serialize_with = "as_display")]
        peer: Username,
    },
    IntegrityProblem {
        id: MessageId,
        #[serde(serialize_with = "as_display")]
        peer: Username,
        time: i64,
    },
    /// `id: None`: the whole conversation was deleted.
    Deleted {
        id: Option<MessageId>,
        #[serde(serialize_with = "as_display")]
        peer: Username,
        time: i64,
    },
    /// A call rings here.
    CallIncoming(CallEventView),
    /// A call rings at the peer, became active, or ended (`reason` says why).
    CallState(CallEventView),
    /// The directory served an older record of `peer` than before.
    DirectoryAlarm {
        #[serde(serialize_with = "as_display")]
        peer: Username,
    },
    /// The conversation with `peer` was read on one of the user's devices.
    Read {
        #[serde(serialize_with = "as_display")]
        peer: Username,
    },
    /// A device was paired with the host.
    DeviceLinked { name: String },
    /// A device was revoked.
    DeviceRevoked { name: String },
    /// Events this device had not seen are gone from the host's log (it was away longer than
    /// the log keeps them): re-read conversations and history.
    Resync,
}

/// One event of a subscription with its place in the host's event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoggedEvent {
    /// The event's seq in the host's log (0 for a resync).
    pub seq: u64,
    /// From the log, for a device that was away (not live).
    pub replayed: bool,
    #[serde(flatten)]
    pub event: EventView,
}

/// Where a subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// Live events only.
    Live,
    /// After this seq of the host's log.
    After(u64),
    /// After this device's cursor of that name, which the host keeps and moves as the
    /// subscriber hands events back as handled ([`Delivered::handled`]).
    Cursor(String),
}

/// An event that the host waits to hear was handled before it moves the device's cursor.
#[derive(Debug)]
pub struct Delivered {
    pub event: LoggedEvent,
    handled: tokio::sync::oneshot::Sender<()>,
}

impl Delivered {
    /// The event is safely handled (printed, shown): the host may move the cursor past it.
    /// Dropping a `Delivered` unhandled ends the stream there instead.
    pub fn handled(self) {
        let _ = self.handled.send(());
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallEventView {
    pub id: CallId,
    #[serde(serialize_with = "as_display")]
    pub peer: Username,
    pub state: CallState,
    /// Why it ended; empty while it lasts.
    pub reason: String,
    pub video: bool,
    pub audio: bool,
    pub outgoing: bool,
}

/// One endpoint's media set-up: its fresh call key and where it receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallMediaView {
    #[serde(serialize_with = "as_hex")]
    pub public_key: [u8; 32],
    /// The endpoint's own address; None in the peer's media when relaying hides it.
    pub address: Option<std::net::SocketAddr>,
    /// What the endpoint's NAT shows the world.
    pub reflexive: Option<std::net::SocketAddr>,
    /// Ours: relay only and hide this device's addresses; the peer's: it does so.
    pub relay_only: bool,
    pub video: bool,
    pub audio: bool,
    /// The X-Wing half of the call's keys: the caller's public key in an offer, the callee's
    /// encapsulation in an answer. Not printed: it is 1 KiB of key material nobody reads.
    #[serde(skip)]
    pub kem: Vec<u8>,
}

/// A call as smvsd describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallView {
    pub id: CallId,
    #[serde(serialize_with = "as_display")]
    pub peer: Username,
    pub outgoing: bool,
    pub state: CallState,
    pub reason: String,
    #[serde(skip)]
    pub caller_identity: Vec<u8>,
    #[serde(skip)]
    pub callee_identity: Vec<u8>,
    #[serde(skip)]
    pub peer_media: Option<CallMediaView>,
    pub since: i64,
}

fn as_hex<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// What smvsd tells the device running a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallNotice {
    Answered(CallMediaView),
    Ended(String),
}

/// The `CallDevice` smvsd calls: queues each notice for the call's runner.
struct Device {
    notices: mpsc::UnboundedSender<CallNotice>,
}

impl call_device::Server for Device {
    async fn answered(
        self: capnp::capability::Rc<Self>,
        params: call_device::AnsweredParams,
        _: call_device::AnsweredResults,
    ) -> Result<(), capnp::Error> {
        let media = CallMediaView::read(params.get()?.get_media()?)
            .map_err(|e| capnp::Error::failed(e.to_string()))?;
        let _ = self.notices.send(CallNotice::Answered(media));
        Ok(())
    }

    async fn ended(
        self: capnp::capability::Rc<Self>,
        params: call_device::EndedParams,
        _: call_device::EndedResults,
    ) -> Result<(), capnp::Error> {
        let reason = params.get()?.get_reason()?.to_string().unwrap_or_default();
        let _ = self.notices.send(CallNotice::Ended(reason));
        Ok(())
    }
}

/// A call this device runs: its description, the notices smvsd sends about it, and the
/// control that hangs it up (dropping it hangs up too).
pub struct DeviceCall {
    pub call: CallView,
    pub notices: mpsc::UnboundedReceiver<CallNotice>,
    pub control: call_control::Client,
    /// This device's side of the call's relay on its host, if it gave one.
    pub relay: Option<smvs_media::RelayGrant>,
    /// The host says the call is relayed only: take no other path.
    pub relay_only: bool,
}

impl Device {
    /// The capability to hand smvsd, and where its notices arrive.
    fn channel() -> (call_device::Client, mpsc::UnboundedReceiver<CallNotice>) {
        let (tx, notices) = mpsc::unbounded_channel();
        (capnp_rpc::new_client(Device { notices: tx }), notices)
    }
}

impl DeviceCall {
    fn read(
        call: call_info::Reader<'_>,
        control: call_control::Client,
        relay: Option<call_relay::Reader<'_>>,
        notices: mpsc::UnboundedReceiver<CallNotice>,
    ) -> Result<DeviceCall, CtlError> {
        Ok(DeviceCall {
            call: CallView::read(call)?,
            notices,
            control,
            relay_only: relay.as_ref().is_some_and(|r| r.get_relay_only()),
            relay: relay.map(read_relay).transpose()?,
        })
    }

    pub async fn hangup(&self) -> Result<(), CtlError> {
        self.control.hangup_request().send().promise.await?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Reading answers

fn text(what: &str, t: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, CtlError> {
    t?.to_string()
        .map_err(|_| CtlError::Protocol(format!("{what} is not UTF-8")))
}

fn optional_text(
    what: &str,
    t: capnp::Result<capnp::text::Reader<'_>>,
) -> Result<Option<String>, CtlError> {
    let t = text(what, t)?;
    Ok((!t.is_empty()).then_some(t))
}

fn username(what: &str, t: capnp::Result<capnp::text::Reader<'_>>) -> Result<Username, CtlError> {
    let t = text(what, t)?;
    Username::parse_local(&t).map_err(|e| CtlError::Protocol(format!("{what}: {e}")))
}

fn message_id(what: &str, d: capnp::Result<&[u8]>) -> Result<MessageId, CtlError> {
    let d = d?;
    MessageId::from_slice(d).ok_or_else(|| {
        CtlError::Protocol(format!(
            "{what} is {} bytes, not {}",
            d.len(),
            MessageId::LEN
        ))
    })
}

fn call_id(what: &str, d: capnp::Result<&[u8]>) -> Result<CallId, CtlError> {
    let d = d?;
    CallId::from_slice(d).ok_or_else(|| {
        CtlError::Protocol(format!("{what} is {} bytes, not {}", d.len(), CallId::LEN))
    })
}

fn unknown(what: &str, e: capnp::NotInSchema) -> CtlError {
    CtlError::Protocol(format!(
        "unknown {what} {} (is smvsctl older than smvsd?)",
        e.0
    ))
}

fn read_status(s: Result<message::Status, capnp::NotInSchema>) -> Result<MessageStatus, CtlError> {
    Ok(match s.map_err(|e| unknown("message status", e))? {
        message::Status::Queued => MessageStatus::Queued,
        message::Status::Sent => MessageStatus::Sent,
        message::Status::Delivered => MessageStatus::Delivered,
        message::Status::Received => MessageStatus::Received,
        message::Status::Failed => MessageStatus::Failed,
        message::Status::Held => MessageStatus::Held,
    })
}

fn read_integrity(
    i: Result<message::Integrity, capnp::NotInSchema>,
) -> Result<Integrity, CtlError> {
    Ok(match i.map_err(|e| unknown("integrity state", e))? {
        message::Integrity::Ok => Integrity::Ok,
        message::Integrity::Gap => Integrity::Gap,
        message::Integrity::OutOfOrder => Integrity::OutOfOrder,
        message::Integrity::Unchecked => Integrity::Unchecked,
    })
}

impl HostStatus {
    pub fn read(r: smvs_schema::local_capnp::host_status::Reader<'_>) -> Result<Self, CtlError> {
        Ok(HostStatus {
            username: optional_text("username", r.get_username())?,
            registered: r.get_registered(),
            fingerprint: optional_text("fingerprint", r.get_fingerprint())?,
            host_address: optional_text("host address", r.get_host_address())?,
            directory: text("directory", r.get_directory())?,
            queued: r.get_queued(),
            version: text("version", r.get_version())?,
            call_port: optional_text("call port", r.get_call_port())?,
            dht_node: optional_text("dht node", r.get_dht_node())?,
        })
    }
}

impl MessageView {
    pub fn read(r: message::Reader<'_>) -> Result<Self, CtlError> {
        Ok(MessageView {
            id: message_id("message id", r.get_id())?,
            from: username("sender", r.get_from())?,
            to: username("recipient", r.get_to())?,
            time: r.get_time(),
            status: read_status(r.get_status())?,
            reason: text("failure reason", r.get_reason())?,
            integrity: read_integrity(r.get_integrity())?,
            body: text("message body", r.get_body())?,
        })
    }
}

impl ConversationView {
    pub fn read(r: smvs_schema::local_capnp::conversation::Reader<'_>) -> Result<Self, CtlError> {
        Ok(ConversationView {
            peer: username("conversation peer", r.get_peer())?,
            messages: r.get_messages(),
            unread: r.get_unread(),
            last_time: r.get_last_time(),
            expire_seconds: r.get_expire_seconds(),
        })
    }
}

/// A device paired with the host (`devices`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceView {
    pub name: String,
    pub fingerprint: String,
    pub admin: bool,
    /// Unix milliseconds.
    pub paired_at: i64,
    /// Unix milliseconds of its last connection; 0: never since pairing.
    pub last_seen: i64,
    pub last_address: String,
    pub connected: bool,
}

impl DeviceView {
    pub fn read(r: smvs_schema::local_capnp::device::Reader<'_>) -> Result<Self, CtlError> {
        Ok(DeviceView {
            name: text("device name", r.get_name())?,
            fingerprint: text("fingerprint", r.get_fingerprint())?,
            admin: r.get_admin(),
            paired_at: r.get_paired_at(),
            last_seen: r.get_last_seen(),
            last_address: text("address", r.get_last_address())?,
            connected: r.get_connected(),
        })
    }
}

/// A pairing code for a new device (`devices link`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceLinkView {
    pub code: String,
    /// Unix milliseconds.
    pub expires_at: i64,
    pub device_address: String,
    pub host_fingerprint: String,
}

fn directory_view(
    d: smvs_schema::local_capnp::directory_info::Reader<'_>,
) -> Result<DirectoryView, CtlError> {
    Ok(DirectoryView {
        name: text("directory name", d.get_name())?,
        address: text("directory address", d.get_address())?,
        key: text("directory key", d.get_key())?,
        left: d.get_left(),
        scoped: d.get_scoped(),
    })
}

fn petname_view(p: smvs_schema::local_capnp::petname::Reader<'_>) -> Result<PetnameView, CtlError> {
    Ok(PetnameView {
        name: text("petname", p.get_name())?,
        address: text("identity address", p.get_address())?,
    })
}

/// A petname as `petname list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PetnameView {
    pub name: String,
    /// The identity address (smvs:…) it stands for.
    pub address: String,
}

/// A directory as `directory list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectoryView {
    pub name: String,
    pub address: String,
    /// Hex.
    pub key: String,
    /// This host's user moved away from it.
    pub left: bool,
    /// Its users are written NAME@name.
    pub scoped: bool,
}

/// What `verify` is to do about a changed identity key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyChoice {
    /// Only show the safety number(s).
    Look,
    /// Accept the new key (`--accept-new-key`).
    Accept,
    /// Keep the pinned key and refuse the other (`--keep-key`).
    Keep,
}

impl ContactView {
    pub fn read(r: smvs_schema::local_capnp::contact::Reader<'_>) -> Result<Self, CtlError> {
        Ok(ContactView {
            username: username("contact", r.get_username())?,
            fingerprint: text("fingerprint", r.get_fingerprint())?,
            blocked: r.get_blocked(),
            key_changed: r.get_key_changed(),
            request: r.get_request(),
            alarm: optional_text("alarm", r.get_alarm())?,
            introduced_by: optional_text("introducer", r.get_introduced_by())?,
            petname: optional_text("petname", r.get_petname())?,
        })
    }
}

impl VerificationView {
    pub fn read(
        user: Username,
        r: smvs_schema::local_capnp::verification::Reader<'_>,
    ) -> Result<Self, CtlError> {
        Ok(VerificationView {
            user,
            safety_number: text("safety number", r.get_safety_number())?,
            transcript_hash: text("transcript hash", r.get_transcript_hash())?,
            key_changed: r.get_key_changed(),
            accepted: r.get_accepted(),
            alarm: optional_text("alarm", r.get_alarm())?,
            pinned_safety_number: optional_text(
                "pinned safety number",
                r.get_pinned_safety_number(),
            )?,
            session_version: r.get_session_version().max(1),
            record: {
                let record = r.get_record()?;
                (!record.is_empty())
                    .then(|| -> Result<SignedRecordView, CtlError> {
                        Ok(SignedRecordView {
                            record: hex::encode(record),
                            signature: hex::encode(r.get_record_signature()?),
                            directory_key: hex::encode(r.get_directory_key()?),
                            issued_at: r.get_record_issued_at(),
                        })
                    })
                    .transpose()?
            },
        })
    }
}

/// An optional IP:port (empty: none).
fn optional_addr(
    what: &str,
    t: capnp::Result<capnp::text::Reader<'_>>,
) -> Result<Option<std::net::SocketAddr>, CtlError> {
    optional_text(what, t)?
        .map(|a| {
            a.parse()
                .map_err(|_| CtlError::Protocol(format!("{what} {a:?} is not IP:port")))
        })
        .transpose()
}

fn read_relay(r: call_relay::Reader<'_>) -> Result<smvs_media::RelayGrant, CtlError> {
    let address = text("relay address", r.get_address())?;
    Ok(smvs_media::RelayGrant {
        address: address
            .parse()
            .map_err(|_| CtlError::Protocol(format!("relay address {address:?} is not IP:port")))?,
        alloc: r
            .get_alloc()?
            .try_into()
            .map_err(|_| CtlError::Protocol("a relay allocation is 8 bytes".into()))?,
        token: r
            .get_token()?
            .try_into()
            .map_err(|_| CtlError::Protocol("a relay token is 16 bytes".into()))?,
    })
}

impl CallMediaView {
    pub fn read(r: call_media::Reader<'_>) -> Result<Self, CtlError> {
        let key = r.get_public_key()?;
        let public_key: [u8; 32] = key.try_into().map_err(|_| {
            CtlError::Protocol(format!("a call key is {} bytes, not 32", key.len()))
        })?;
        Ok(CallMediaView {
            public_key,
            address: optional_addr("media address", r.get_address())?,
            reflexive: optional_addr("reflexive media address", r.get_reflexive())?,
            relay_only: r.get_relay_only(),
            video: r.get_video(),
            audio: r.get_audio(),
            kem: r.get_kem()?.to_vec(),
        })
    }

    fn write(&self, mut b: call_media::Builder<'_>) {
        let text = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        b.set_public_key(&self.public_key);
        b.set_address(text(self.address));
        b.set_reflexive(text(self.reflexive));
        b.set_relay_only(self.relay_only);
        b.set_kem(&self.kem);
        b.set_video(self.video);
        b.set_audio(self.audio);
    }
}

fn read_call_state(
    s: Result<smvs_schema::local_capnp::CallState, capnp::NotInSchema>,
) -> Result<CallState, CtlError> {
    use smvs_schema::local_capnp::CallState as S;
    Ok(match s.map_err(|e| unknown("call state", e))? {
        S::Ringing => CallState::Ringing,
        S::Active => CallState::Active,
        S::Ended => CallState::Ended,
    })
}

impl CallView {
    pub fn read(r: call_info::Reader<'_>) -> Result<Self, CtlError> {
        Ok(CallView {
            id: call_id("call id", r.get_id())?,
            peer: username("peer", r.get_peer())?,
            outgoing: r.get_outgoing(),
            state: read_call_state(r.get_state())?,
            reason: text("reason", r.get_reason())?,
            caller_identity: r.get_caller_identity()?.to_vec(),
            callee_identity: r.get_callee_identity()?.to_vec(),
            peer_media: if r.get_has_peer_media() {
                Some(CallMediaView::read(r.get_peer_media()?)?)
            } else {
                None
            },
            since: r.get_since(),
        })
    }
}

impl CallEventView {
    pub fn read(r: call_event::Reader<'_>) -> Result<Self, CtlError> {
        Ok(CallEventView {
            id: call_id("call id", r.get_id())?,
            peer: username("peer", r.get_peer())?,
            state: read_call_state(r.get_state())?,
            reason: text("reason", r.get_reason())?,
            video: r.get_video(),
            audio: r.get_audio(),
            outgoing: r.get_outgoing(),
        })
    }
}

impl EventView {
    /// Parses one event. `Ok(None)`: a kind of event this smvsctl does not know (a newer smvsd);
    /// it is skipped rather than ending the watch.
    pub fn read(r: event::Reader<'_>) -> Result<Option<Self>, CtlError> {
        let Ok(which) = r.which() else {
            return Ok(None);
        };
        Ok(Some(match which {
            event::MessageReceived(m) => {
                let m = m?;
                EventView::MessageReceived {
                    id: message_id("message id", m.get_id())?,
                    peer: username("peer", m.get_peer())?,
                    time: m.get_time(),
                }
            }
            event::MessageSent(m) => {
                let m = m?;
                EventView::MessageSent {
                    id: message_id("message id", m.get_id())?,
                    peer: username("peer", m.get_peer())?,
                    time: m.get_time(),
                }
            }
            event::Resync(()) => EventView::Resync,
            event::MessageStatus(s) => {
                let s = s?;
                EventView::MessageStatus {
                    id: message_id("message id", s.get_id())?,
                    peer: username("peer", s.get_peer())?,
                    status: read_status(s.get_status())?,
                }
            }
            event::KeyChanged(peer) => EventView::KeyChanged {
                peer: username("peer", peer)?,
            },
            event::IntegrityProblem(m) => {
                let m = m?;
                EventView::IntegrityProblem {
                    id: message_id("message id", m.get_id())?,
                    peer: username("peer", m.get_peer())?,
                    time: m.get_time(),
                }
            }
            event::Deleted(m) => {
                let m = m?;
                let id = m.get_id()?;
                EventView::Deleted {
                    id: if id.is_empty() {
                        None
                    } else {
                        Some(message_id("message id", Ok(id))?)
                    },
                    peer: username("peer", m.get_peer())?,
                    time: m.get_time(),
                }
            }
            event::CallIncoming(c) => EventView::CallIncoming(CallEventView::read(c?)?),
            event::CallState(c) => EventView::CallState(CallEventView::read(c?)?),
            event::DirectoryAlarm(peer) => EventView::DirectoryAlarm {
                peer: username("peer", peer)?,
            },
            event::Read(peer) => EventView::Read {
                peer: username("peer", peer)?,
            },
            event::DeviceLinked(name) => EventView::DeviceLinked {
                name: text("device name", name)?,
            },
            event::DeviceRevoked(name) => EventView::DeviceRevoked {
                name: text("device name", name)?,
            },
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// The connection

/// A connection to smvsd. Lives on the `LocalSet` it was made on.
pub struct HostClient {
    host: host::Client,
    path: PathBuf,
    /// Becomes `Some(reason)` when the RPC system stops (smvsd closed the connection, or it broke).
    closed: watch::Receiver<Option<String>>,
    link: Link,
    /// The task driving the RPC system: ending it closes the connection.
    rpc: tokio::task::AbortHandle,
}

/// How a client reaches its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// smvsd's Unix socket, on this machine.
    Socket,
    /// A linked device's link over the device port from another machine; `local_ip` is this
    /// end's address on a direct link (where the host sees the device), none through a proxy.
    Device { local_ip: Option<std::net::IpAddr> },
}

/// Connects to smvsd at `path`. Must be called inside a `tokio::task::LocalSet`: the RPC system
/// is spawned on it with `spawn_local`.
pub async fn connect(path: &Path) -> Result<HostClient, CtlError> {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|source| CtlError::Connect {
            path: path.to_owned(),
            source,
        })?;
    let (system, host) = smvs_transport::rpc::local_client::<host::Client>(stream);
    Ok(start(system, host, path.to_owned(), Link::Socket))
}

/// Connects to the host this machine is paired with, over its device port (at `address`, or
/// where it was paired). Must be called inside a `tokio::task::LocalSet`.
pub async fn connect_device(
    address: Option<&str>,
    proxy: Option<&str>,
) -> Result<HostClient, CtlError> {
    let dir = crate::remote::config_dir()?;
    connect_device_from(&dir, address, proxy).await
}

/// [`connect_device`] with the device's key and pairing in `dir` (a program that acts as
/// several devices: tests, benchmarks).
pub async fn connect_device_from(
    dir: &Path,
    address: Option<&str>,
    proxy: Option<&str>,
) -> Result<HostClient, CtlError> {
    let link = crate::remote::connect_from(dir, address, proxy).await?;
    let client = start(
        link.system,
        link.host,
        link.pairing,
        Link::Device {
            local_ip: link.local_ip,
        },
    );
    // The host lets a paired key in or refuses it here, before any other request.
    client.status().await?;
    Ok(client)
}

/// Drives the RPC system on the LocalSet and wraps its bootstrap.
fn start(
    system: capnp_rpc::RpcSystem<capnp_rpc::rpc_twoparty_capnp::Side>,
    host: host::Client,
    path: PathBuf,
    link: Link,
) -> HostClient {
    let (closed_tx, closed) = watch::channel(None);
    let rpc = tokio::task::spawn_local(async move {
        let reason = match system.await {
            Err(e) if e.kind != capnp::ErrorKind::Disconnected => e.to_string(),
            _ => "smvsd closed the connection".to_string(),
        };
        // Nobody may be waiting for the reason any more; that is fine.
        let _ = closed_tx.send(Some(reason));
    });
    HostClient {
        host,
        path,
        closed,
        link,
        rpc: rpc.abort_handle(),
    }
}

/// Keeps a subscription alive; dropping it ends the subscription (smvsd stops calling the sink).
pub struct Subscription {
    _subscription: subscription::Client,
}

/// The `EventSink` smvsd calls: parses each event and queues it for the watcher; answers at
/// once (`Live`), or once the watcher has handled it (`Acknowledged`).
enum Sink {
    Live(mpsc::Sender<Result<EventView, CtlError>>),
    Acknowledged(mpsc::Sender<Result<Delivered, CtlError>>),
}

fn watcher_stopped<T>(_: T) -> capnp::Error {
    capnp::Error::failed("the watcher has stopped".to_string())
}

impl event_sink::Server for Sink {
    async fn ended(
        self: capnp::capability::Rc<Self>,
        params: event_sink::EndedParams,
        _: event_sink::EndedResults,
    ) -> Result<(), capnp::Error> {
        let reason = params
            .get()
            .and_then(|p| p.get_reason())
            .ok()
            .and_then(|r| r.to_str().ok().map(str::to_owned))
            .unwrap_or_default();
        let ended = CtlError::Disconnected(format!("smvsd ended the event stream: {reason}"));
        // Whoever watches hears it as the end of the stream (and may subscribe again).
        let _ = match &*self {
            Sink::Live(events) => events.send(Err(ended)).await.is_ok(),
            Sink::Acknowledged(events) => events.send(Err(ended)).await.is_ok(),
        };
        Ok(())
    }

    async fn event(
        self: capnp::capability::Rc<Self>,
        params: event_sink::EventParams,
        _results: event_sink::EventResults,
    ) -> Result<(), capnp::Error> {
        // A malformed event still reaches the watcher, as an error, so it can say what broke.
        let event = params.get().and_then(|p| p.get_event());
        let (seq, replayed) = event
            .as_ref()
            .map_or((0, false), |e| (e.get_seq(), e.get_replayed()));
        let parsed = event
            .map_err(CtlError::from)
            .and_then(EventView::read)
            .transpose();
        // A kind of event this smvsctl does not know (a newer smvsd) is skipped, and taken.
        let Some(parsed) = parsed else {
            return Ok(());
        };
        match &*self {
            Sink::Live(events) => events.send(parsed).await.map_err(watcher_stopped),
            Sink::Acknowledged(events) => {
                let (handled, done) = tokio::sync::oneshot::channel();
                let delivered = parsed.map(|event| Delivered {
                    event: LoggedEvent {
                        seq,
                        replayed,
                        event,
                    },
                    handled,
                });
                events.send(delivered).await.map_err(watcher_stopped)?;
                // Not handled (the watcher stopped first): not taken, so the host's cursor
                // stays before it.
                done.await.map_err(watcher_stopped)
            }
        }
    }
}

impl HostClient {
    /// The socket this client is connected to (for a linked device: its pairing file).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How this client reaches its host.
    pub fn link(&self) -> Link {
        self.link
    }

    /// Whether this is a linked device's link over the network (not the host's own socket).
    pub fn is_remote(&self) -> bool {
        matches!(self.link, Link::Device { .. })
    }

    /// Closes the connection now (a client that gave up on it, to connect again): everything
    /// still using it (a subscription, a call) ends.
    pub fn disconnect(&self) {
        self.rpc.abort();
    }

    /// Resolves, with the reason, once the connection to smvsd has ended.
    pub async fn closed(&self) -> String {
        let mut closed = self.closed.clone();
        let reason = match closed.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        reason.unwrap_or_else(|| "smvsd closed the connection".to_string())
    }

    pub async fn status(&self) -> Result<HostStatus, CtlError> {
        let answer = self.host.status_request().send().promise.await?;
        HostStatus::read(answer.get()?.get_status()?)
    }

    /// Makes keys in keyguard and registers `username` at the directory.
    /// Registers in the hosts' DHT: the name is the identity address the host makes.
    pub async fn register_in_dht(&self) -> Result<HostStatus, CtlError> {
        let answer = self.host.register_in_dht_request().send().promise.await?;
        HostStatus::read(answer.get()?.get_status()?)
    }

    pub async fn register(&self, username: &Username) -> Result<HostStatus, CtlError> {
        let mut request = self.host.register_request();
        request.get().set_username(username.as_str());
        let answer = request.send().promise.await?;
        HostStatus::read(answer.get()?.get_status()?)
    }

    /// Returns once the message is durably queued.
    pub async fn send(&self, to: &Username, body: &str) -> Result<MessageId, CtlError> {
        let mut request = self.host.send_request();
        {
            let mut params = request.get();
            params.set_to(to.as_str());
            params.set_body(body);
        }
        let answer = request.send().promise.await?;
        message_id("message id", answer.get()?.get_id())
    }

    /// Oldest first; the last `limit` messages (0: all).
    pub async fn history(&self, peer: &Username, limit: u32) -> Result<Vec<MessageView>, CtlError> {
        let (messages, more) = self.history_page(peer, limit, None).await?;
        if more && limit == 0 {
            // The daemon caps one answer (about 3 MiB of text); say so rather than pretend.
            eprintln!(
                "smvsctl: older messages were left out; use --limit and --before to page through them"
            );
        }
        Ok(messages)
    }

    /// One page of history: the last `limit` messages before the message `before` (None: the
    /// newest), oldest first, and whether older ones exist.
    pub async fn history_page(
        &self,
        peer: &Username,
        limit: u32,
        before: Option<&MessageId>,
    ) -> Result<(Vec<MessageView>, bool), CtlError> {
        let mut request = self.host.history_request();
        {
            let mut params = request.get();
            params.set_peer(peer.as_str());
            params.set_limit(limit);
            if let Some(before) = before {
                params.set_before(before.as_bytes());
            }
        }
        let answer = request.send().promise.await?;
        let answer = answer.get()?;
        let messages = answer
            .get_messages()?
            .iter()
            .map(MessageView::read)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((messages, answer.get_more()))
    }

    /// One message.
    pub async fn message(&self, peer: &Username, id: &MessageId) -> Result<MessageView, CtlError> {
        let mut request = self.host.message_request();
        {
            let mut params = request.get();
            params.set_peer(peer.as_str());
            params.set_id(id.as_bytes());
        }
        let answer = request.send().promise.await?;
        MessageView::read(answer.get()?.get_message()?)
    }

    /// Subscribes to live events: each one arrives on `events` (a malformed one as an error).
    /// Events flow until the returned [`Subscription`] is dropped or the connection ends.
    pub async fn subscribe(
        &self,
        events: mpsc::Sender<Result<EventView, CtlError>>,
    ) -> Result<Subscription, CtlError> {
        self.subscribe_with(Sink::Live(events), &Start::Live).await
    }

    /// Subscribes from `start`: what was missed first, then live events. The host waits for
    /// each [`Delivered`] to be handled before it counts it taken (and moves a cursor).
    pub async fn subscribe_from(
        &self,
        start: &Start,
        events: mpsc::Sender<Result<Delivered, CtlError>>,
    ) -> Result<Subscription, CtlError> {
        self.subscribe_with(Sink::Acknowledged(events), start).await
    }

    async fn subscribe_with(&self, sink: Sink, start: &Start) -> Result<Subscription, CtlError> {
        let sink: event_sink::Client = capnp_rpc::new_client(sink);
        let mut request = self.host.subscribe_request();
        {
            let mut params = request.get();
            params.set_sink(sink);
            match start {
                Start::Live => {}
                Start::After(seq) => params.set_since(*seq),
                Start::Cursor(name) => params.set_cursor(name),
            }
        }
        let answer = request.send().promise.await?;
        Ok(Subscription {
            _subscription: answer.get()?.get_subscription()?,
        })
    }

    pub async fn conversations(&self) -> Result<Vec<ConversationView>, CtlError> {
        let answer = self.host.conversations_request().send().promise.await?;
        answer
            .get()?
            .get_conversations()?
            .iter()
            .map(ConversationView::read)
            .collect()
    }

    /// Marks `peer`'s messages read; how many were unread.
    pub async fn mark_read(&self, peer: &Username) -> Result<u32, CtlError> {
        let mut request = self.host.mark_read_request();
        request.get().set_peer(peer.as_str());
        let answer = request.send().promise.await?;
        Ok(answer.get()?.get_was_unread())
    }

    pub async fn contacts(&self) -> Result<Vec<ContactView>, CtlError> {
        let answer = self.host.contacts_request().send().promise.await?;
        answer
            .get()?
            .get_contacts()?
            .iter()
            .map(ContactView::read)
            .collect()
    }

    pub async fn devices(&self) -> Result<Vec<DeviceView>, CtlError> {
        let answer = self.host.devices_request().send().promise.await?;
        answer
            .get()?
            .get_devices()?
            .iter()
            .map(DeviceView::read)
            .collect()
    }

    pub async fn link_device(&self, name: &str) -> Result<DeviceLinkView, CtlError> {
        let mut request = self.host.link_device_request();
        request.get().set_name(name);
        let answer = request.send().promise.await?;
        let link = answer.get()?.get_link()?;
        Ok(DeviceLinkView {
            code: text("code", link.get_code())?,
            expires_at: link.get_expires_at(),
            device_address: text("address", link.get_device_address())?,
            host_fingerprint: text("fingerprint", link.get_host_fingerprint())?,
        })
    }

    pub async fn revoke_device(&self, name: &str) -> Result<DeviceView, CtlError> {
        let mut request = self.host.revoke_device_request();
        request.get().set_name(name);
        let answer = request.send().promise.await?;
        DeviceView::read(answer.get()?.get_device()?)
    }

    pub async fn block(&self, user: &Username) -> Result<(), CtlError> {
        let mut request = self.host.block_request();
        request.get().set_user(user.as_str());
        request.send().promise.await?;
        Ok(())
    }

    pub async fn unblock(&self, user: &Username) -> Result<(), CtlError> {
        let mut request = self.host.unblock_request();
        request.get().set_user(user.as_str());
        request.send().promise.await?;
        Ok(())
    }

    /// The safety number with `user`, and the user's choice about a changed identity key.
    pub async fn verify(
        &self,
        user: &Username,
        choice: KeyChoice,
    ) -> Result<VerificationView, CtlError> {
        let mut request = self.host.verify_request();
        {
            let mut params = request.get();
            params.set_user(user.as_str());
            params.set_accept_new_key(choice == KeyChoice::Accept);
            params.set_keep_key(choice == KeyChoice::Keep);
        }
        let answer = request.send().promise.await?;
        VerificationView::read(user.clone(), answer.get()?.get_verification()?)
    }

    /// Deletes one message (`id`) or, with `None`, the whole conversation (its key is
    /// destroyed); `everywhere` asks the peer's host to delete too. Returns how many messages
    /// were deleted.
    pub async fn delete(
        &self,
        peer: &Username,
        id: Option<&MessageId>,
        everywhere: bool,
    ) -> Result<u32, CtlError> {
        let mut request = self.host.delete_request();
        {
            let mut params = request.get();
            params.set_peer(peer.as_str());
            params.set_id(id.map(|id| &id.as_bytes()[..]).unwrap_or(&[]));
            params.set_everywhere(everywhere);
        }
        let answer = request.send().promise.await?;
        Ok(answer.get()?.get_deleted())
    }

    /// Rings `peer`; returns once the peer's host has the offer. Answers and the end come as
    /// notices on the returned call.
    pub async fn place_call(
        &self,
        peer: &Username,
        media: &CallMediaView,
    ) -> Result<DeviceCall, CtlError> {
        let (device, notices) = Device::channel();
        let mut request = self.host.place_call_request();
        {
            let mut params = request.get();
            params.set_peer(peer.as_str());
            media.write(params.reborrow().init_media());
            params.set_device(device);
        }
        let answer = request.send().promise.await?;
        let answer = answer.get()?;
        let relay = answer.has_relay().then(|| answer.get_relay()).transpose()?;
        DeviceCall::read(answer.get_call()?, answer.get_control()?, relay, notices)
    }

    /// Picks up a ringing call (`None`: the one that rings); the answer's `peer_media` is the
    /// caller's offer.
    pub async fn answer_call(
        &self,
        id: Option<&CallId>,
        media: &CallMediaView,
    ) -> Result<DeviceCall, CtlError> {
        let (device, notices) = Device::channel();
        let mut request = self.host.answer_call_request();
        {
            let mut params = request.get();
            params.set_id(id.map(|id| &id.as_bytes()[..]).unwrap_or(&[]));
            media.write(params.reborrow().init_media());
            params.set_device(device);
        }
        let answer = request.send().promise.await?;
        let answer = answer.get()?;
        let relay = answer.has_relay().then(|| answer.get_relay()).transpose()?;
        DeviceCall::read(answer.get_call()?, answer.get_control()?, relay, notices)
    }

    /// Ends a call (`None`: the current one); a ringing incoming call is declined.
    pub async fn hangup_call(&self, id: Option<&CallId>) -> Result<(), CtlError> {
        let mut request = self.host.hangup_call_request();
        request
            .get()
            .set_id(id.map(|id| &id.as_bytes()[..]).unwrap_or(&[]));
        request.send().promise.await?;
        Ok(())
    }

    /// The calls ringing or active.
    pub async fn calls(&self) -> Result<Vec<CallView>, CtlError> {
        let answer = self.host.calls_request().send().promise.await?;
        answer
            .get()?
            .get_calls()?
            .iter()
            .map(CallView::read)
            .collect()
    }

    /// Registers `agent` to run the calls placed and answered over D-Bus; it stays registered
    /// while the returned subscription is held.
    pub async fn register_call_agent(
        &self,
        agent: call_agent::Client,
    ) -> Result<Subscription, CtlError> {
        let mut request = self.host.register_call_agent_request();
        request.get().set_agent(agent);
        let answer = request.send().promise.await?;
        Ok(Subscription {
            _subscription: answer.get()?.get_registration()?,
        })
    }

    /// Disappearing messages for the conversation with `peer`, on both hosts; 0 turns it off.
    /// The configured directories.
    pub async fn directories(&self) -> Result<Vec<DirectoryView>, CtlError> {
        let answer = self.host.directories_request().send().promise.await?;
        let list = answer.get()?.get_directories()?;
        list.iter().map(directory_view).collect()
    }

    /// Uses one more directory; returns its entry.
    pub async fn add_directory(
        &self,
        name: &str,
        address: &str,
        key: &str,
        scoped: bool,
    ) -> Result<DirectoryView, CtlError> {
        let mut request = self.host.add_directory_request();
        {
            let mut p = request.get();
            p.set_name(name);
            p.set_address(address);
            p.set_key(key);
            p.set_scoped(scoped);
        }
        let answer = request.send().promise.await?;
        directory_view(answer.get()?.get_directory()?)
    }

    /// Every petname the user gave.
    pub async fn petnames(&self) -> Result<Vec<PetnameView>, CtlError> {
        let answer = self.host.petnames_request().send().promise.await?;
        answer
            .get()?
            .get_petnames()?
            .iter()
            .map(petname_view)
            .collect()
    }

    /// Names the identity address `address` `name` on this host.
    pub async fn add_petname(&self, name: &str, address: &str) -> Result<PetnameView, CtlError> {
        let mut request = self.host.add_petname_request();
        {
            let mut p = request.get();
            p.set_name(name);
            p.set_address(address);
        }
        let answer = request.send().promise.await?;
        petname_view(answer.get()?.get_petname()?)
    }

    /// Forgets the petname `name`.
    pub async fn remove_petname(&self, name: &str) -> Result<(), CtlError> {
        let mut request = self.host.remove_petname_request();
        request.get().set_name(name);
        request.send().promise.await?;
        Ok(())
    }

    /// Stops using the directory `name`.
    pub async fn remove_directory(&self, name: &str) -> Result<(), CtlError> {
        let mut request = self.host.remove_directory_request();
        request.get().set_name(name);
        request.send().promise.await?;
        Ok(())
    }

    /// Moves to the directory `to`; returns the name of the one left.
    pub async fn move_directory(&self, to: &str) -> Result<String, CtlError> {
        let mut request = self.host.move_directory_request();
        request.get().set_to(to);
        let answer = request.send().promise.await?;
        text("directory name", answer.get()?.get_left())
    }

    /// Sends `to` the signed record `user` is pinned from.
    pub async fn introduce(&self, user: &Username, to: &Username) -> Result<(), CtlError> {
        let mut request = self.host.introduce_request();
        {
            let mut params = request.get();
            params.set_user(user.as_str());
            params.set_to(to.as_str());
        }
        request.send().promise.await?;
        Ok(())
    }

    pub async fn expire(&self, peer: &Username, seconds: u32) -> Result<(), CtlError> {
        let mut request = self.host.expire_request();
        {
            let mut params = request.get();
            params.set_peer(peer.as_str());
            params.set_seconds(seconds);
        }
        request.send().promise.await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_parse_from_hex() {
        let id: MessageId = "00112233445566778899AABBCCDDEEFF".parse().unwrap();
        assert_eq!(id.to_hex(), "00112233445566778899aabbccddeeff");
        assert_eq!(id.to_string(), id.to_hex());
        assert_eq!(MessageId::from_slice(id.as_bytes()), Some(id));
        assert!("0011".parse::<MessageId>().is_err());
        assert!("zz112233445566778899aabbccddeeff"
            .parse::<MessageId>()
            .is_err());
        assert!("00112233445566778899aabbccddeeff00"
            .parse::<MessageId>()
            .is_err());
        assert_eq!(MessageId::from_slice(&[0; 15]), None);
    }

    #[test]
    fn message_ids_serialize_as_hex() {
        let id = MessageId([0xab; 16]);
        assert_eq!(
            serde_json::to_string(&id).unwrap(),
            format!("\"{}\"", "ab".repeat(16))
        );
    }
}
