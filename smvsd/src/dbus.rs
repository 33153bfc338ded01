//! D-Bus: `org.smvs.Daemon1` at `/org/smvs/Daemon1`, on the system bus (a system service, with
//! the policy in `dist/dbus/`) or the session bus (a per-user service, which also raises
//! desktop notifications itself).
//!
//! ```text
//!  busctl / desktop ──method call──► Daemon1 (zbus, Send) ──actix message──► Router ──► core
//!  DeviceHub ──events──► forwarder task ──► signals, PropertiesChanged, Notify (session bus)
//! ```
//!
//! Broadcast signals carry ids and names, never text: the text is fetched with `GetMessage`,
//! a method call the bus policy guards. The interface XML in `dist/dbus/` is the contract; a
//! test compares it with the live object.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::Addr;
use tokio::sync::mpsc;
use zbus::object_server::SignalEmitter;
use zbus::{interface, DBusError};

use crate::calls::{CallId, CallInfo, CallManager, CallState, Hangup, ListCalls, ViaAgent};
use crate::devices::{DeviceHub, Subscribe, DEVICE_QUEUE};
use crate::error::HostError;
use crate::model::{HostEvent, Integrity, MessageId, Payload, StoredMessage};
use crate::router::{
    Delete, History, HostSnapshot, Listing, Register, Router, SendText, SetBlocked, Snapshot,
    Verify,
};

pub const BUS_NAME: &str = "org.smvs.Daemon1";
pub const OBJECT_PATH: &str = "/org/smvs/Daemon1";

/// Which bus to serve on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    System,
    Session,
}

/// What a desktop notification for an incoming message shows (session mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyMode {
    Off,
    /// "New message from alice".
    Sender,
    /// The sender and the start of the text.
    Preview,
}

/// Errors as D-Bus names them: `org.smvs.Daemon1.Error.KeyChanged` and so on.
#[derive(DBusError, Debug)]
#[zbus(prefix = "org.smvs.Daemon1.Error")]
pub enum Daemon1Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    BadRequest(String),
    NotRegistered(String),
    AlreadyRegistered(String),
    Taken(String),
    UnknownUser(String),
    KeyChanged(String),
    Blocked(String),
    TooLarge(String),
    Directory(String),
    Keyguard(String),
    Proxy(String),
    NotFound(String),
    Busy(String),
    Offline(String),
    Refused(String),
    NoDevice(String),
    Ended(String),
    Internal(String),
}

impl From<HostError> for Daemon1Error {
    fn from(e: HostError) -> Self {
        let m = e.message;
        match e.code {
            "bad-request" => Daemon1Error::BadRequest(m),
            "not-registered" => Daemon1Error::NotRegistered(m),
            "already-registered" => Daemon1Error::AlreadyRegistered(m),
            "taken" => Daemon1Error::Taken(m),
            "unknown-user" => Daemon1Error::UnknownUser(m),
            "key-changed" => Daemon1Error::KeyChanged(m),
            "blocked" => Daemon1Error::Blocked(m),
            "too-large" => Daemon1Error::TooLarge(m),
            "directory" => Daemon1Error::Directory(m),
            "keyguard" => Daemon1Error::Keyguard(m),
            "proxy" => Daemon1Error::Proxy(m),
            "not-found" => Daemon1Error::NotFound(m),
            "busy" => Daemon1Error::Busy(m),
            "offline" => Daemon1Error::Offline(m),
            "refused" => Daemon1Error::Refused(m),
            "no-device" => Daemon1Error::NoDevice(m),
            "ended" => Daemon1Error::Ended(m),
            _ => Daemon1Error::Internal(m),
        }
    }
}

impl From<actix::MailboxError> for Daemon1Error {
    fn from(_: actix::MailboxError) -> Self {
        Daemon1Error::Internal("the host is shutting down".into())
    }
}

/// A message on D-Bus: (id, from, to, time in Unix ms, body, status, integrity).
pub type MessageTuple = (String, String, String, i64, String, String, String);

fn tuple(m: &StoredMessage) -> MessageTuple {
    (
        m.id.to_hex(),
        m.from.to_string(),
        m.to.to_string(),
        m.time,
        match &m.payload {
            Payload::Text(t) => t.clone(),
            _ => String::new(),
        },
        m.status.as_str().to_owned(),
        match m.integrity {
            Integrity::Ok => "ok",
            Integrity::Gap => "gap",
            Integrity::OutOfOrder => "out_of_order",
            Integrity::Unchecked => "unchecked",
        }
        .to_owned(),
    )
}

fn parse_id(id: &str) -> Result<MessageId, Daemon1Error> {
    hex::decode(id)
        .ok()
        .and_then(|b| MessageId::from_slice(&b))
        .ok_or_else(|| {
            Daemon1Error::BadRequest(format!("{id:?} is not a message id (32 hex digits)"))
        })
}

fn parse_call_id(id: &str) -> Result<Option<CallId>, Daemon1Error> {
    if id.is_empty() {
        return Ok(None);
    }
    hex::decode(id)
        .ok()
        .and_then(|b| CallId::from_slice(&b))
        .map(Some)
        .ok_or_else(|| Daemon1Error::BadRequest(format!("{id:?} is not a call id (32 hex digits)")))
}

/// A call on D-Bus: (id, peer, outgoing, state, reason, video, audio, since in Unix ms).
pub type CallTuple = (String, String, bool, String, String, bool, bool, i64);

fn call_tuple(c: &CallInfo) -> CallTuple {
    (
        c.id.to_hex(),
        c.peer.to_string(),
        c.outgoing,
        c.state.as_str().to_owned(),
        c.reason.clone(),
        c.video,
        c.audio,
        c.since,
    )
}

/// The object served at `/org/smvs/Daemon1`.
pub struct Daemon1 {
    router: Addr<Router>,
    calls: Addr<CallManager>,
    state: Arc<Mutex<HostSnapshot>>,
}

impl Daemon1 {
    fn state(&self) -> HostSnapshot {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[interface(name = "org.smvs.Daemon1")]
impl Daemon1 {
    /// Queues a text for `to`; returns its id once it is durably queued.
    async fn send(&self, to: String, text: String) -> Result<String, Daemon1Error> {
        let stored = self.router.send(SendText { to, body: text }).await??;
        Ok(stored.id.to_hex())
    }

    /// The last `limit` messages with `peer` (0: all), oldest first.
    async fn history(&self, peer: String, limit: u32) -> Result<Vec<MessageTuple>, Daemon1Error> {
        let messages = self
            .router
            .send(History {
                peer,
                limit,
                only: None,
            })
            .await??;
        Ok(messages.iter().map(tuple).collect())
    }

    /// One message, text included (signals never carry text).
    async fn get_message(&self, peer: String, id: String) -> Result<MessageTuple, Daemon1Error> {
        let id = parse_id(&id)?;
        let found = self
            .router
            .send(History {
                peer: peer.clone(),
                limit: 0,
                only: Some(id),
            })
            .await??;
        found
            .first()
            .map(tuple)
            .ok_or_else(|| Daemon1Error::NotFound(format!("no message {id} with {peer}")))
    }

    /// (peer, messages, last time in Unix ms, expiry seconds) for each conversation.
    async fn conversations(&self) -> Result<Vec<(String, u32, i64, u32)>, Daemon1Error> {
        let (conversations, _) = self.router.send(Listing).await??;
        Ok(conversations
            .into_iter()
            .map(|c| {
                (
                    c.peer.to_string(),
                    c.messages,
                    c.last_time,
                    c.expire_seconds,
                )
            })
            .collect())
    }

    /// (username, fingerprint, blocked, key changed, request) for each contact.
    async fn contacts(&self) -> Result<Vec<(String, String, bool, bool, bool)>, Daemon1Error> {
        let (_, contacts) = self.router.send(Listing).await??;
        Ok(contacts
            .into_iter()
            .map(|c| {
                let fingerprint = c
                    .identity()
                    .ok()
                    .and_then(|i| smvs_crypto::fingerprint(&c.username, &i).ok())
                    .unwrap_or_default();
                let changed = c.pending_identity.is_some();
                (c.username, fingerprint, c.blocked, changed, c.request)
            })
            .collect())
    }

    async fn block(&self, user: String) -> Result<(), Daemon1Error> {
        Ok(self
            .router
            .send(SetBlocked {
                user,
                blocked: true,
            })
            .await??)
    }

    async fn unblock(&self, user: String) -> Result<(), Daemon1Error> {
        Ok(self
            .router
            .send(SetBlocked {
                user,
                blocked: false,
            })
            .await??)
    }

    /// (safety number, transcript hash, key changed, accepted).
    async fn verify(
        &self,
        user: String,
        accept_new_key: bool,
    ) -> Result<(String, String, bool, bool), Daemon1Error> {
        let v = self
            .router
            .send(Verify {
                user,
                accept_new_key,
            })
            .await??;
        Ok((
            v.safety_number,
            v.transcript_hash,
            v.key_changed,
            v.accepted,
        ))
    }

    /// Deletes one message (`id`) or the whole conversation (`id` empty); returns how many.
    async fn delete(
        &self,
        peer: String,
        id: String,
        everywhere: bool,
    ) -> Result<u32, Daemon1Error> {
        let id = if id.is_empty() {
            None
        } else {
            Some(parse_id(&id)?)
        };
        Ok(self
            .router
            .send(Delete {
                peer,
                id,
                everywhere,
            })
            .await??)
    }

    async fn register(&self, username: String) -> Result<(), Daemon1Error> {
        Ok(self.router.send(Register(username)).await??)
    }

    /// (username, registered, queued, host address, fingerprint).
    async fn status(&self) -> Result<(String, bool, u32, String, String), Daemon1Error> {
        let s = self.router.send(Snapshot).await??;
        Ok((
            s.username.clone().unwrap_or_default(),
            s.username.is_some(),
            s.queued,
            s.host_address,
            s.fingerprint,
        ))
    }

    /// Calls `user`; the media runs in the registered call device (`smvsctl agent`). Returns
    /// the call's id once it rings.
    async fn place_call(
        &self,
        user: String,
        video: bool,
        audio: bool,
    ) -> Result<String, Daemon1Error> {
        let id = self
            .calls
            .send(ViaAgent {
                place: Some((user, video, audio)),
                answer: None,
            })
            .await??;
        Ok(id.to_hex())
    }

    /// Picks up a ringing call (`id` empty: the one that rings) on the registered call device.
    async fn answer_call(&self, id: String) -> Result<(), Daemon1Error> {
        let id = match parse_call_id(&id)? {
            Some(id) => id,
            None => self
                .calls
                .send(ListCalls)
                .await?
                .into_iter()
                .find(|c| !c.outgoing && c.state == CallState::Ringing)
                .map(|c| c.id)
                .ok_or_else(|| Daemon1Error::NotFound("no call is ringing".into()))?,
        };
        self.calls
            .send(ViaAgent {
                place: None,
                answer: Some(id),
            })
            .await??;
        Ok(())
    }

    /// Ends a call (`id` empty: the current one); a ringing incoming call is declined.
    async fn hangup_call(&self, id: String) -> Result<(), Daemon1Error> {
        let id = parse_call_id(&id)?;
        Ok(self
            .calls
            .send(Hangup {
                id,
                token: None,
                device_gone: false,
            })
            .await??)
    }

    /// The calls ringing or active.
    async fn calls(&self) -> Result<Vec<CallTuple>, Daemon1Error> {
        Ok(self
            .calls
            .send(ListCalls)
            .await?
            .iter()
            .map(call_tuple)
            .collect())
    }

    #[zbus(property)]
    async fn username(&self) -> String {
        self.state().username.unwrap_or_default()
    }

    #[zbus(property)]
    async fn registered(&self) -> bool {
        self.state().username.is_some()
    }

    #[zbus(property)]
    async fn queued(&self) -> u32 {
        self.state().queued
    }

    #[zbus(property)]
    async fn fingerprint(&self) -> String {
        self.state().fingerprint
    }

    #[zbus(signal)]
    async fn message_received(
        emitter: &SignalEmitter<'_>,
        id: &str,
        sender: &str,
        time: i64,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn message_status_changed(
        emitter: &SignalEmitter<'_>,
        id: &str,
        peer: &str,
        status: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn key_changed(emitter: &SignalEmitter<'_>, peer: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn integrity_problem(
        emitter: &SignalEmitter<'_>,
        id: &str,
        peer: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn call_incoming(
        emitter: &SignalEmitter<'_>,
        id: &str,
        peer: &str,
        video: bool,
        audio: bool,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn call_state_changed(
        emitter: &SignalEmitter<'_>,
        id: &str,
        peer: &str,
        state: &str,
        reason: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn message_deleted(emitter: &SignalEmitter<'_>, id: &str, peer: &str)
        -> zbus::Result<()>;
}

/// Connects to the bus, owns `org.smvs.Daemon1`, serves the object and starts forwarding
/// events. Returns the connection (dropping it leaves the bus).
pub async fn start(
    kind: BusKind,
    notify: NotifyMode,
    router: Addr<Router>,
    calls: Addr<CallManager>,
    hub: Addr<DeviceHub>,
) -> Result<zbus::Connection, String> {
    let snapshot = router
        .send(Snapshot)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let state = Arc::new(Mutex::new(snapshot));
    let object = Daemon1 {
        router: router.clone(),
        calls,
        state: state.clone(),
    };
    let builder = match kind {
        BusKind::System => zbus::connection::Builder::system(),
        BusKind::Session => zbus::connection::Builder::session(),
    };
    let connection = builder
        .name(BUS_NAME)
        .serve_at(OBJECT_PATH, object)
        .build()
        .await
        .map_err(|e| format!("{kind:?} bus: {e}"))?;
    let (tx, rx) = mpsc::channel(DEVICE_QUEUE);
    hub.send(Subscribe(tx)).await.map_err(|e| e.to_string())?;
    let notify = if kind == BusKind::Session {
        notify
    } else {
        NotifyMode::Off
    };
    tokio::spawn(forward(connection.clone(), rx, router, state, notify));
    Ok(connection)
}

/// How often the `Queued` property is refreshed while events flow.
const PROPERTY_REFRESH: Duration = Duration::from_millis(200);

async fn forward(
    connection: zbus::Connection,
    mut events: mpsc::Receiver<HostEvent>,
    router: Addr<Router>,
    state: Arc<Mutex<HostSnapshot>>,
    notify: NotifyMode,
) {
    let iface = match connection
        .object_server()
        .interface::<_, Daemon1>(OBJECT_PATH)
        .await
    {
        Ok(iface) => iface,
        Err(e) => {
            tracing::error!(error = %e, "D-Bus object is missing; no signals will be sent");
            return;
        }
    };
    let emitter = iface.signal_emitter().clone();
    let mut refreshed = Instant::now() - PROPERTY_REFRESH;
    while let Some(event) = events.recv().await {
        let sent = match &event {
            HostEvent::MessageReceived { id, peer, time } => {
                if notify != NotifyMode::Off {
                    notify_message(&connection, &router, notify, peer.as_str(), *id).await;
                }
                Daemon1::message_received(&emitter, &id.to_hex(), peer.as_str(), *time).await
            }
            HostEvent::MessageStatus { id, peer, status } => {
                Daemon1::message_status_changed(
                    &emitter,
                    &id.to_hex(),
                    peer.as_str(),
                    status.as_str(),
                )
                .await
            }
            HostEvent::KeyChanged { peer } => {
                if notify != NotifyMode::Off {
                    let body = format!("{peer}'s identity key changed. Compare safety numbers before you write again.");
                    desktop_notify(&connection, "Security: key changed", &body).await;
                }
                Daemon1::key_changed(&emitter, peer.as_str()).await
            }
            HostEvent::IntegrityProblem { id, peer, .. } => {
                Daemon1::integrity_problem(&emitter, &id.to_hex(), peer.as_str()).await
            }
            HostEvent::Deleted { id, peer } => {
                let id = id.map(|i| i.to_hex()).unwrap_or_default();
                Daemon1::message_deleted(&emitter, &id, peer.as_str()).await
            }
            HostEvent::CallIncoming(call) => {
                if notify != NotifyMode::Off {
                    let body = format!("{} is calling", call.peer);
                    desktop_notify(&connection, "SMVS call", &body).await;
                }
                Daemon1::call_incoming(
                    &emitter,
                    &call.id.to_hex(),
                    call.peer.as_str(),
                    call.video,
                    call.audio,
                )
                .await
            }
            HostEvent::CallState(call) => {
                Daemon1::call_state_changed(
                    &emitter,
                    &call.id.to_hex(),
                    call.peer.as_str(),
                    call.state.as_str(),
                    &call.reason,
                )
                .await
            }
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "could not send a D-Bus signal");
        }
        if refreshed.elapsed() >= PROPERTY_REFRESH {
            refreshed = Instant::now();
            if let Ok(Ok(fresh)) = router.send(Snapshot).await {
                let before = state.lock().map(|s| s.clone()).unwrap_or_default();
                if let Ok(mut s) = state.lock() {
                    *s = fresh.clone();
                }
                let object = iface.get().await;
                if before.queued != fresh.queued {
                    let _ = object.queued_changed(&emitter).await;
                }
                if before.username != fresh.username {
                    let _ = object.username_changed(&emitter).await;
                    let _ = object.registered_changed(&emitter).await;
                    let _ = object.fingerprint_changed(&emitter).await;
                }
            }
        }
    }
}

async fn notify_message(
    connection: &zbus::Connection,
    router: &Addr<Router>,
    mode: NotifyMode,
    peer: &str,
    id: MessageId,
) {
    let mut body = format!("New message from {peer}");
    if mode == NotifyMode::Preview {
        if let Ok(Ok(found)) = router
            .send(History {
                peer: peer.to_owned(),
                limit: 0,
                only: Some(id),
            })
            .await
        {
            if let Some(Payload::Text(text)) = found.first().map(|m| &m.payload) {
                let preview: String = text.chars().take(120).collect();
                body = format!("{peer}: {preview}");
            }
        }
    }
    desktop_notify(connection, "SMVS", &body).await;
}

/// `org.freedesktop.Notifications.Notify` on this (session) bus.
pub async fn desktop_notify(connection: &zbus::Connection, summary: &str, body: &str) {
    let hints: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
    let actions: Vec<&str> = Vec::new();
    let result = connection
        .call_method(
            Some("org.freedesktop.Notifications"),
            "/org/freedesktop/Notifications",
            Some("org.freedesktop.Notifications"),
            "Notify",
            &("SMVS", 0u32, "", summary, body, actions, hints, -1i32),
        )
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "desktop notification not shown");
    }
}
