//! D-Bus: `org.smvs.Daemon1` at `/org/smvs/Daemon1`, on the system bus (a system service, with
//! the policy in `dist/dbus/`) or the session bus (a per-user service, which also raises
//! desktop notifications itself).
//!
//! ```text
//!  busctl / desktop ──method call──► Daemon1 (zbus, Send) ──actix message──► Commands (façade)
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
use zbus::message::Header;
use zbus::object_server::SignalEmitter;
use zbus::{interface, DBusError};

use smvs_schema::ErrorCode;

use crate::commands::{
    parse_user, AnswerViaAgent, Commands, Contacts, Conversations, Delete, GetMessage, Hangup,
    History, HostStatus, Introduce, LinkDevice, ListCalls, ListDevices, MarkRead, PlaceViaAgent,
    Register, RevokeDevice, SendText, SetBlocked, Status, Verify,
};
use crate::config::{BusKind, NotifyMode};
use crate::error::HostError;
use crate::events::{DeviceHub, Feed, Logged, DEVICE_QUEUE};
use crate::model::{CallId, CallInfo, HostEvent, MessageId, Payload, StoredMessage, Viewer};
use crate::trust::KeyDecision;

pub const BUS_NAME: &str = "org.smvs.Daemon1";
pub const OBJECT_PATH: &str = "/org/smvs/Daemon1";

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
    DirectoriesDisagree(String),
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
    Storage(String),
    NotAllowed(String),
    AddressRefused(String),
    Internal(String),
}

impl From<HostError> for Daemon1Error {
    fn from(e: HostError) -> Self {
        let m = e.message;
        // Exhaustive: a new code does not build until it has a D-Bus name (a test checks the
        // names match `ErrorCode::dbus_name`).
        match e.code {
            ErrorCode::BadRequest => Daemon1Error::BadRequest(m),
            ErrorCode::NotRegistered => Daemon1Error::NotRegistered(m),
            ErrorCode::AlreadyRegistered => Daemon1Error::AlreadyRegistered(m),
            ErrorCode::Taken => Daemon1Error::Taken(m),
            ErrorCode::UnknownUser => Daemon1Error::UnknownUser(m),
            ErrorCode::KeyChanged => Daemon1Error::KeyChanged(m),
            ErrorCode::DirectoriesDisagree => Daemon1Error::DirectoriesDisagree(m),
            ErrorCode::Blocked => Daemon1Error::Blocked(m),
            ErrorCode::TooLarge => Daemon1Error::TooLarge(m),
            ErrorCode::Directory => Daemon1Error::Directory(m),
            ErrorCode::Keyguard => Daemon1Error::Keyguard(m),
            ErrorCode::Proxy => Daemon1Error::Proxy(m),
            ErrorCode::NotFound => Daemon1Error::NotFound(m),
            ErrorCode::Busy => Daemon1Error::Busy(m),
            ErrorCode::Offline => Daemon1Error::Offline(m),
            ErrorCode::Refused => Daemon1Error::Refused(m),
            ErrorCode::NoDevice => Daemon1Error::NoDevice(m),
            ErrorCode::Ended => Daemon1Error::Ended(m),
            ErrorCode::Storage => Daemon1Error::Storage(m),
            ErrorCode::NotAllowed => Daemon1Error::NotAllowed(m),
            ErrorCode::AddressRefused => Daemon1Error::AddressRefused(m),
            ErrorCode::Internal => Daemon1Error::Internal(m),
        }
    }
}

impl From<actix::MailboxError> for Daemon1Error {
    fn from(_: actix::MailboxError) -> Self {
        HostError::shutting_down().into()
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
        m.integrity.as_str().to_owned(),
    )
}

fn parse_id(id: &str) -> Result<MessageId, Daemon1Error> {
    id.parse()
        .map_err(|e: smvs_schema::IdError| HostError::bad_request(e.to_string()).into())
}

fn parse_call_id(id: &str) -> Result<Option<CallId>, Daemon1Error> {
    if id.is_empty() {
        return Ok(None);
    }
    id.parse()
        .map(Some)
        .map_err(|e: smvs_schema::IdError| HostError::bad_request(e.to_string()).into())
}

fn user(name: &str) -> Result<smvs_schema::Username, Daemon1Error> {
    Ok(parse_user(name)?)
}

/// A call on D-Bus: (id, peer, outgoing, state, reason, video, audio, since in Unix ms).
pub type CallTuple = (String, String, bool, String, String, bool, bool, i64);

/// A device on D-Bus: (name, fingerprint, admin, paired at, last seen, last address,
/// connected), times in Unix ms.
pub type DeviceTuple = (String, String, bool, i64, i64, String, bool);

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
    commands: Addr<Commands>,
    state: Arc<Mutex<HostStatus>>,
    /// The uids the Unix socket lets in; D-Bus callers are held to the same list (the bus
    /// policy lets a whole group reach the name, which is wider).
    allowed_uids: Arc<Vec<u32>>,
}

impl Daemon1 {
    /// Refuses a caller whose uid is not allowed, as the Unix socket does on accept.
    async fn check_caller(
        &self,
        bus: &zbus::Connection,
        header: Option<&Header<'_>>,
    ) -> Result<(), Daemon1Error> {
        let sender = header.and_then(|h| h.sender()).ok_or_else(|| {
            HostError::new(
                ErrorCode::NotAllowed,
                "a call without a sender is not allowed",
            )
        })?;
        let dbus = zbus::fdo::DBusProxy::new(bus)
            .await
            .map_err(|e| HostError::internal(format!("D-Bus: {e}")))?;
        let uid = dbus
            .get_connection_unix_user(sender.clone().into())
            .await
            .map_err(|e| HostError::internal(format!("D-Bus: the caller's uid: {e}")))?;
        if self.allowed_uids.contains(&uid) {
            return Ok(());
        }
        smvs_service::security_event!(
            warn,
            smvs_service::logging::LOCAL_CLIENT_REFUSED,
            uid,
            "refused a D-Bus caller whose uid is not allowed"
        );
        Err(HostError::new(
            ErrorCode::NotAllowed,
            format!("uid {uid} may not use this host (allowed_uids)"),
        )
        .into())
    }

    /// [`Daemon1::check_caller`] for a property read. A read with no header is the object
    /// reading its own property (to send PropertiesChanged), which the signal policy guards.
    async fn check_property(
        &self,
        bus: &zbus::Connection,
        header: Option<&Header<'_>>,
    ) -> zbus::fdo::Result<()> {
        if header.is_none() {
            return Ok(());
        }
        self.check_caller(bus, header)
            .await
            .map_err(|e| zbus::fdo::Error::AccessDenied(e.to_string()))
    }

    fn state(&self) -> HostStatus {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

#[interface(name = "org.smvs.Daemon1")]
impl Daemon1 {
    /// Queues a text for `to`; returns its id once it is durably queued.
    async fn send(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        to: String,
        text: String,
    ) -> Result<String, Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let to = user(&to)?;
        let id = self.commands.send(SendText { to, body: text }).await??;
        Ok(id.to_hex())
    }

    /// The last `limit` messages with `peer` (0: all), oldest first.
    async fn history(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        peer: String,
        limit: u32,
    ) -> Result<Vec<MessageTuple>, Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let peer = user(&peer)?;
        let messages = self
            .commands
            .send(History {
                peer,
                limit,
                before: None,
            })
            .await??
            .messages;
        Ok(messages.iter().map(tuple).collect())
    }

    /// One message, text included (signals never carry text).
    async fn get_message(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        peer: String,
        id: String,
    ) -> Result<MessageTuple, Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let (peer, id) = (user(&peer)?, parse_id(&id)?);
        let found = self.commands.send(GetMessage { peer, id }).await??;
        Ok(tuple(&found))
    }

    /// (peer, messages, last time in Unix ms, expiry seconds) for each conversation.
    async fn conversations(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
    ) -> Result<Vec<(String, u32, i64, u32)>, Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let conversations = self.commands.send(Conversations).await??;
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
    async fn contacts(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
    ) -> Result<Vec<(String, String, bool, bool, bool)>, Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let contacts = self.commands.send(Contacts).await??;
        Ok(contacts
            .into_iter()
            .map(|(c, _petname)| {
                let fingerprint = c.fingerprint();
                let changed = c.pending.is_some();
                (
                    c.username.to_string(),
                    fingerprint,
                    c.blocked,
                    changed,
                    c.request,
                )
            })
            .collect())
    }

    async fn block(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        user: String,
    ) -> Result<(), Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let user = self::user(&user)?;
        Ok(self
            .commands
            .send(SetBlocked {
                user,
                blocked: true,
            })
            .await??)
    }

    async fn unblock(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        user: String,
    ) -> Result<(), Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let user = self::user(&user)?;
        Ok(self
            .commands
            .send(SetBlocked {
                user,
                blocked: false,
            })
            .await??)
    }

    /// (safety number, transcript hash, key changed, accepted).
    async fn verify(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        user: String,
        accept_new_key: bool,
    ) -> Result<(String, String, bool, bool), Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let user = self::user(&user)?;
        let decision = if accept_new_key {
            KeyDecision::Accept
        } else {
            KeyDecision::Look
        };
        let v = self.commands.send(Verify { user, decision }).await??;
        Ok((
            v.safety_number,
            v.transcript_hash,
            v.key_changed,
            v.accepted,
        ))
    }

    /// What `verify` does not fit in its reply, for a key that is in question: (the pending
    /// key's safety number, the pinned key's, why the directories disagree). Empty strings
    /// when nothing is pending or there is no alarm. Looks the user up afresh, as `Verify`.
    async fn key_question(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        user: String,
    ) -> Result<(String, String, String), Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let user = self::user(&user)?;
        let decision = KeyDecision::Look;
        let v = self.commands.send(Verify { user, decision }).await??;
        Ok(match v.key_changed {
            true => (
                v.safety_number,
                v.pinned_safety_number.unwrap_or_default(),
                v.alarm.unwrap_or_default(),
            ),
            false => Default::default(),
        })
    }

    /// Stays with `user`'s pinned key and refuses the pending one (`smvsctl verify USER
    /// --keep-key`): what the directories showed instead is not heard again. Returns the
    /// pinned key's safety number.
    async fn keep_key(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        user: String,
    ) -> Result<String, Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let user = self::user(&user)?;
        let decision = KeyDecision::Keep;
        Ok(self
            .commands
            .send(Verify { user, decision })
            .await??
            .safety_number)
    }

    /// Deletes one message (`id`) or the whole conversation (`id` empty); returns how many.
    async fn delete(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        peer: String,
        id: String,
        everywhere: bool,
    ) -> Result<u32, Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let peer = user(&peer)?;
        let id = if id.is_empty() {
            None
        } else {
            Some(parse_id(&id)?)
        };
        Ok(self
            .commands
            .send(Delete {
                peer,
                id,
                everywhere,
            })
            .await??)
    }

    async fn register(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        username: String,
    ) -> Result<(), Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let username = user(&username)?;
        self.commands.send(Register(username)).await??;
        Ok(())
    }

    /// (username, registered, queued, host address, fingerprint).
    async fn status(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
    ) -> Result<(String, bool, u32, String, String), Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let s = self.commands.send(Status).await??;
        Ok((
            s.username
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_default(),
            s.username.is_some(),
            s.queued,
            s.host_address,
            s.fingerprint.unwrap_or_default(),
        ))
    }

    /// Calls `user`; the media runs in the registered call device (`smvsctl agent`). Returns
    /// the call's id once it rings.
    async fn place_call(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        user: String,
        video: bool,
        audio: bool,
    ) -> Result<String, Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let peer = self::user(&user)?;
        let id = self
            .commands
            .send(PlaceViaAgent { peer, video, audio })
            .await??;
        Ok(id.to_hex())
    }

    /// Picks up a ringing call (`id` empty: the one that rings) on the registered call device.
    async fn answer_call(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        id: String,
    ) -> Result<(), Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let id = parse_call_id(&id)?;
        self.commands.send(AnswerViaAgent(id)).await??;
        Ok(())
    }

    /// Ends a call (`id` empty: the current one); a ringing incoming call is declined.
    async fn hangup_call(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        id: String,
    ) -> Result<(), Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let id = parse_call_id(&id)?;
        Ok(self
            .commands
            .send(Hangup {
                id,
                token: None,
                device_gone: false,
            })
            .await??)
    }

    /// The calls ringing or active.
    async fn calls(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
    ) -> Result<Vec<CallTuple>, Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        Ok(self
            .commands
            .send(ListCalls)
            .await??
            .into_iter()
            .map(|c| call_tuple(&c.seen_by(Viewer::HostDesktop)))
            .collect())
    }

    /// Marks everything received from `peer` so far as read, on every device; returns how
    /// many messages were unread.
    async fn mark_read(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        peer: String,
    ) -> Result<u32, Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let peer = user(&peer)?;
        Ok(self.commands.send(MarkRead { peer }).await??)
    }

    /// Sends `to` the signed record `user` is pinned from (`smvsctl introduce USER TO`).
    async fn introduce(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        user: String,
        to: String,
    ) -> Result<(), Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let (user, to) = (self::user(&user)?, self::user(&to)?);
        Ok(self.commands.send(Introduce { user, to }).await??)
    }

    /// The devices paired with this host. (Callers on the bus are the host's own users, as on
    /// the socket: they may manage devices.)
    async fn devices(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
    ) -> Result<Vec<DeviceTuple>, Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        Ok(self
            .commands
            .send(ListDevices { admin: true })
            .await??
            .into_iter()
            .map(|(d, connected)| {
                let fingerprint = d.fingerprint();
                (
                    d.name,
                    fingerprint,
                    d.admin,
                    d.paired_at,
                    d.last_seen,
                    d.last_address,
                    connected,
                )
            })
            .collect())
    }

    /// A one-time pairing code for a new device called `name`: (code, device port address,
    /// host key fingerprint, expiry in Unix ms). The code is for the person at the bus's end;
    /// it is never broadcast.
    async fn link_device(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        name: String,
    ) -> Result<(String, String, String, i64), Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        let link = self
            .commands
            .send(LinkDevice {
                admin: true,
                local: true,
                name,
            })
            .await??;
        Ok((
            link.code.to_string(),
            link.device_address,
            link.host_fingerprint,
            link.expires_at,
        ))
    }

    /// Forgets the device called `name` and cuts its connections.
    async fn revoke_device(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] bus: &zbus::Connection,
        name: String,
    ) -> Result<(), Daemon1Error> {
        self.check_caller(bus, Some(&header)).await?;
        self.commands
            .send(RevokeDevice { admin: true, name })
            .await??;
        Ok(())
    }

    #[zbus(property)]
    async fn username(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        #[zbus(connection)] bus: &zbus::Connection,
    ) -> zbus::fdo::Result<String> {
        self.check_property(bus, header.as_ref()).await?;
        Ok(self
            .state()
            .username
            .map(|u| u.to_string())
            .unwrap_or_default())
    }

    #[zbus(property)]
    async fn registered(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        #[zbus(connection)] bus: &zbus::Connection,
    ) -> zbus::fdo::Result<bool> {
        self.check_property(bus, header.as_ref()).await?;
        Ok(self.state().username.is_some())
    }

    #[zbus(property)]
    async fn queued(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        #[zbus(connection)] bus: &zbus::Connection,
    ) -> zbus::fdo::Result<u32> {
        self.check_property(bus, header.as_ref()).await?;
        Ok(self.state().queued)
    }

    #[zbus(property)]
    async fn fingerprint(
        &self,
        #[zbus(header)] header: Option<Header<'_>>,
        #[zbus(connection)] bus: &zbus::Connection,
    ) -> zbus::fdo::Result<String> {
        self.check_property(bus, header.as_ref()).await?;
        Ok(self.state().fingerprint.unwrap_or_default())
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

    /// The directory served `peer`'s record older than one it served before.
    #[zbus(signal)]
    async fn directory_alarm(emitter: &SignalEmitter<'_>, peer: &str) -> zbus::Result<()>;

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

    /// The conversation with `peer` was read on one of the user's devices.
    #[zbus(signal)]
    async fn conversation_read(emitter: &SignalEmitter<'_>, peer: &str) -> zbus::Result<()>;

    /// A device was paired with this host (its name).
    #[zbus(signal)]
    async fn device_linked(emitter: &SignalEmitter<'_>, name: &str) -> zbus::Result<()>;

    /// A device was revoked (its name); its connections are cut.
    #[zbus(signal)]
    async fn device_revoked(emitter: &SignalEmitter<'_>, name: &str) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn message_deleted(emitter: &SignalEmitter<'_>, id: &str, peer: &str)
        -> zbus::Result<()>;
}

/// Connects to the bus, owns `org.smvs.Daemon1`, serves the object and starts forwarding
/// events. Returns the connection (dropping it leaves the bus).
pub async fn start(
    kind: BusKind,
    notify: NotifyMode,
    commands: Addr<Commands>,
    hub: Addr<DeviceHub>,
    allowed_uids: Vec<u32>,
) -> Result<zbus::Connection, String> {
    let snapshot = commands
        .send(Status)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let state = Arc::new(Mutex::new(snapshot));
    let object = Daemon1 {
        commands: commands.clone(),
        state: state.clone(),
        allowed_uids: Arc::new(allowed_uids),
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
    // Live only: D-Bus signals are for whoever listens now.
    crate::events::join(&hub, None, tx)
        .await
        .map_err(|e| e.to_string())?;
    let notify = if kind == BusKind::Session {
        notify
    } else {
        NotifyMode::Off
    };
    tokio::spawn(forward(connection.clone(), rx, commands, state, notify));
    Ok(connection)
}

/// How often the `Queued` property is refreshed while events flow.
const PROPERTY_REFRESH: Duration = Duration::from_millis(200);

async fn forward(
    connection: zbus::Connection,
    mut events: mpsc::Receiver<Feed>,
    commands: Addr<Commands>,
    state: Arc<Mutex<HostStatus>>,
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
    while let Some(feed) = events.recv().await {
        let Feed::Event(logged) = feed else {
            continue;
        };
        let Logged { event, .. } = *logged;
        let sent = match &event {
            HostEvent::MessageReceived { id, peer, time } => {
                if notify != NotifyMode::Off {
                    notify_message(&connection, &commands, notify, peer, *id).await;
                }
                Daemon1::message_received(&emitter, &id.to_hex(), peer.as_str(), *time).await
            }
            // On D-Bus, a message written on one of the user's devices is one queued.
            HostEvent::MessageSent { id, peer, .. } => {
                Daemon1::message_status_changed(
                    &emitter,
                    &id.to_hex(),
                    peer.as_str(),
                    crate::model::Status::Queued.as_str(),
                )
                .await
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
            HostEvent::DirectoryAlarm { peer } => {
                if notify != NotifyMode::Off {
                    let body = format!("The directory served an old record of {peer}. Compare safety numbers before you write again.");
                    desktop_notify(&connection, "Security: directory alarm", &body).await;
                }
                Daemon1::directory_alarm(&emitter, peer.as_str()).await
            }
            HostEvent::DeviceLinked { name } => {
                if notify != NotifyMode::Off {
                    let body = format!("A new device, {name}, can now read and send as you.");
                    desktop_notify(&connection, "Security: device linked", &body).await;
                }
                Daemon1::device_linked(&emitter, name).await
            }
            HostEvent::DeviceRevoked { name } => Daemon1::device_revoked(&emitter, name).await,
            HostEvent::Read { peer } => Daemon1::conversation_read(&emitter, peer.as_str()).await,
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
                let call = call.clone().seen_by(Viewer::HostDesktop);
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
            if let Ok(Ok(fresh)) = commands.send(Status).await {
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
    commands: &Addr<Commands>,
    mode: NotifyMode,
    peer: &smvs_schema::Username,
    id: MessageId,
) {
    let mut body = format!("New message from {peer}");
    if mode == NotifyMode::Preview {
        if let Ok(Ok(found)) = commands
            .send(GetMessage {
                peer: peer.clone(),
                id,
            })
            .await
        {
            if let Payload::Text(text) = &found.payload {
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
