//! The command façade: every operation a device can ask for, whichever way it arrives (the
//! Unix socket, D-Bus, soon a linked device's port), is one typed request handled here, with a
//! typed reply or a [`HostError`] whose code is shared with smvsctl and the D-Bus error names.
//!
//! ```text
//!  api::local ──┐                       ┌──► trust (contacts, verify, block, register)
//!  api::dbus ───┼──► Commands (actor) ──┼──► outbox (send, delete/expire everywhere, "sent")
//!  (device port)┘                       ├──► storage (history, conversations)
//!                                       └──► CallManager (calls)
//! ```
//!
//! The adapters only translate: they parse names and ids at the edge (with [`parse_user`]),
//! send one of the messages below, and write the answer in their own format. Status and the
//! "sent" overlay exist only here.
//!
//! Owns: nothing but handles to the owners. Serializes: nothing itself (each request runs as its
//! own future on the main thread); ordering lives with the owners.

use std::rc::Rc;

use actix::{Actor, Addr, Context, Handler, Message, ResponseFuture};
use smvs_schema::{ErrorCode, HostAddress, Username};
use tokio::sync::mpsc;

use crate::calls::{self, AgentRequest, CallManager, DeviceNotice};
use crate::devices::{Device, Devices, LinkCode};
use crate::error::HostError;
use crate::events::Events;
use crate::model::{
    CallId, CallInfo, Contact, DeviceCall, HostEvent, Media, MessageId, Payload, StoredMessage,
};
use crate::outbox::Outbox;
use crate::session::MAX_TEXT_BYTES;
use crate::sessions::Sessions;
use crate::storage::{ConversationSummary, HistoryPage, Storage, StorageError};
use crate::trust::{KeyDecision, Trust, Verification};

/// Requests waiting for the façade before senders are made to wait.
pub const MAILBOX: usize = 8192;

/// A user name from a device, parsed at the edge (`alice@work` too).
pub fn parse_user(name: &str) -> Result<Username, HostError> {
    Username::parse_local(name).map_err(|e| HostError::bad_request(e.to_string()))
}

/// The owners the façade asks.
pub struct Owners {
    pub trust: Rc<Trust>,
    pub sessions: Rc<Sessions>,
    pub outbox: Outbox,
    pub storage: Storage,
    pub epochs: Rc<crate::epochs::StorageEpochs>,
    pub calls: Addr<CallManager>,
    pub events: Events,
    pub devices: Rc<Devices>,
    /// The address published in the directory.
    pub host_address: HostAddress,
    /// Where devices reach the call port (STUN and the relay), if the host has one.
    pub call_address: Option<std::net::SocketAddr>,
}

pub struct Commands {
    owners: Rc<Owners>,
}

impl Commands {
    pub fn new(owners: Owners) -> Commands {
        Commands {
            owners: Rc::new(owners),
        }
    }
}

impl Actor for Commands {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX);
    }
}

/// Each command: the message, its reply type, and its body (an async block over `o`, the
/// owners).
macro_rules! command {
    ($msg:ident => $reply:ty, |$o:ident, $m:pat_param| $body:block) => {
        impl Handler<$msg> for Commands {
            type Result = ResponseFuture<Result<$reply, HostError>>;
            fn handle(&mut self, msg: $msg, _: &mut Self::Context) -> Self::Result {
                let $o = self.owners.clone();
                let $m = msg;
                Box::pin(async move { $body })
            }
        }
    };
}

// ----- the host -----

/// The host's state as devices see it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStatus {
    pub username: Option<Username>,
    pub fingerprint: Option<String>,
    pub host_address: String,
    pub directory: String,
    pub queued: u32,
    pub version: &'static str,
    /// Where devices reach the call port, if the host has one.
    pub call_port: Option<String>,
    /// The host's DHT node (UDP), if it is in the DHT.
    pub dht_node: Option<String>,
}

#[derive(Message)]
#[rtype(result = "Result<HostStatus, HostError>")]
pub struct Status;

async fn status(o: &Owners) -> Result<HostStatus, HostError> {
    let me = o.trust.registered();
    Ok(HostStatus {
        fingerprint: me.as_ref().map(|m| {
            // A Username is at most 32 bytes, the only input that could make this fail.
            smvs_crypto::fingerprint(m.username.as_str(), &m.identity).unwrap_or_default()
        }),
        username: me.map(|m| m.username),
        host_address: o.host_address.to_string(),
        directory: o.trust.directory_address(),
        queued: o.storage.queued_count().await?,
        version: env!("CARGO_PKG_VERSION"),
        call_port: o.call_address.map(|a| a.to_string()),
        dht_node: o.trust.dht().map(|node| node.local_addr().to_string()),
    })
}

command!(Status => HostStatus, |o, _m| { status(&o).await });

/// `register --dht`: the user's name is the identity's address.
#[derive(Message)]
#[rtype(result = "Result<HostStatus, HostError>")]
pub struct RegisterInDht;

command!(RegisterInDht => HostStatus, |o, _m| {
    o.trust.register_in_dht().await?;
    o.storage
        .set_setting(
            crate::storage::ANNOUNCED_ADDRESS,
            o.host_address.as_str().as_bytes().to_vec(),
        )
        .await?;
    status(&o).await
});

/// `register USERNAME`.
#[derive(Message)]
#[rtype(result = "Result<HostStatus, HostError>")]
pub struct Register(pub Username);

command!(Register => HostStatus, |o, Register(name)| {
    if o.trust.is_petname(&name) {
        return Err(HostError::bad_request(format!(
            "{name} is a petname here: remove it first (smvsctl petname remove {name})"
        )));
    }
    o.trust.register(name).await?;
    // What contacts will know this host by: a later start elsewhere announces the move.
    o.storage
        .set_setting(
            crate::storage::ANNOUNCED_ADDRESS,
            o.host_address.as_str().as_bytes().to_vec(),
        )
        .await?;
    // Publishes session v2's keys now rather than at the next hourly check (best effort).
    if let Err(e) = o.trust.renew_if_due().await {
        tracing::warn!(error = %e, "cannot publish the session keys now; trying again later");
    }
    status(&o).await
});

// ----- messages -----

/// A device asks to send a text; the reply is its id once it is durably queued.
#[derive(Message)]
#[rtype(result = "Result<MessageId, HostError>")]
pub struct SendText {
    pub to: Username,
    pub body: String,
}

command!(SendText => MessageId, |o, m| {
    // A petname given by a device means the address it stands for.
    let mut m = m;
    m.to = o.trust.resolve_name(m.to).await?;
    if m.body.len() > MAX_TEXT_BYTES {
        return Err(HostError::new(
            ErrorCode::TooLarge,
            format!(
                "a message may hold at most {MAX_TEXT_BYTES} bytes; this one has {}",
                m.body.len()
            ),
        ));
    }
    Ok(o.outbox.queue(&m.to, Payload::Text(m.body)).await?.id)
});

/// The last `limit` messages with a peer (0: all) before the message `before` (None: the
/// newest), oldest first, with live statuses.
#[derive(Message)]
#[rtype(result = "Result<HistoryPage, HostError>")]
pub struct History {
    pub peer: Username,
    pub limit: u32,
    pub before: Option<MessageId>,
}

command!(History => HistoryPage, |o, m| {
    // A petname given by a device means the address it stands for.
    let mut m = m;
    m.peer = o.trust.resolve_name(m.peer).await?;
    let Some(mut page) = o.storage.history_page(&m.peer, m.limit, m.before).await? else {
        return Err(HostError::new(
            ErrorCode::NotFound,
            format!("there is no message {} with {} to page back from", m.before.map(|id| id.to_hex()).unwrap_or_default(), m.peer),
        ));
    };
    o.outbox.overlay(&mut page.messages);
    Ok(page)
});

/// One message, text included (events never carry text).
#[derive(Message)]
#[rtype(result = "Result<StoredMessage, HostError>")]
pub struct GetMessage {
    pub peer: Username,
    pub id: MessageId,
}

command!(GetMessage => StoredMessage, |o, m| {
    // A petname given by a device means the address it stands for.
    let mut m = m;
    m.peer = o.trust.resolve_name(m.peer).await?;
    let found = o.storage.message(&m.peer, m.id).await?;
    let mut found: Vec<StoredMessage> = found.into_iter().collect();
    o.outbox.overlay(&mut found);
    found.pop().ok_or_else(|| {
        HostError::new(ErrorCode::NotFound, format!("no message {} with {}", m.id, m.peer))
    })
});

/// Every conversation.
#[derive(Message)]
#[rtype(result = "Result<Vec<ConversationSummary>, HostError>")]
pub struct Conversations;

command!(Conversations => Vec<ConversationSummary>, |o, _m| {
    Ok(o.storage.conversations().await?)
});

/// `read USER`: everything received from USER so far is read, on every device.
#[derive(Message)]
#[rtype(result = "Result<u32, HostError>")]
pub struct MarkRead {
    pub peer: Username,
}

command!(MarkRead => u32, |o, m| {
    // A petname given by a device means the address it stands for.
    let mut m = m;
    m.peer = o.trust.resolve_name(m.peer).await?;
    let was_unread = o.storage.mark_read(&m.peer).await?;
    // Nothing was unread: the other devices already show it read, and a chat open on several
    // devices marks each arriving message read from each of them.
    if was_unread > 0 {
        o.events.publish(HostEvent::Read { peer: m.peer });
    }
    Ok(was_unread)
});

/// `delete USER [--id ID] [--everywhere]`: how many messages were deleted here.
#[derive(Message)]
#[rtype(result = "Result<u32, HostError>")]
pub struct Delete {
    pub peer: Username,
    pub id: Option<MessageId>,
    pub everywhere: bool,
}

command!(Delete => u32, |o, m| {
    // A petname given by a device means the address it stands for.
    let mut m = m;
    m.peer = o.trust.resolve_name(m.peer).await?;
    // If the request cannot go (blocked, changed key), nothing is deleted and the user is told
    // why. It is queued after the local delete, which would otherwise remove it from the
    // outbox along with the conversation.
    if m.everywhere {
        o.trust.check_can_send(&m.peer).await?;
    }
    // A checkpoint a reader held back means the rows are gone but their old pages are not
    // yet wiped: the rest (the event, the request to the peer) still happens, then the user
    // hears it.
    // Before the deletion's job: the outbox's next read comes after it.
    o.outbox.forget(&m.peer, m.id);
    let (n, unwiped) = match o.storage.delete(&m.peer, m.id, None).await {
        Ok(n) => (n, None),
        Err(e @ StorageError::CheckpointBusy) => (0, Some(e)),
        Err(e) => return Err(e.into()),
    };
    o.events.publish(HostEvent::Deleted {
        id: m.id,
        peer: m.peer.clone(),
    });
    // A whole conversation gone: the storage epoch moves on, so that its key (and with it an
    // older copy of the database) is destroyed.
    // (Also when the WAL could not be wiped yet: the move wipes it again.)
    if m.id.is_none() {
        o.epochs.kick();
    }
    if m.everywhere {
        let ids = m.id.into_iter().collect();
        o.outbox.queue(&m.peer, Payload::Delete(ids)).await?;
    }
    match unwiped {
        Some(e) => Err(e.into()),
        None => Ok(n),
    }
});

/// `expire USER SECONDS`: disappearing messages, on both hosts.
#[derive(Message)]
#[rtype(result = "Result<(), HostError>")]
pub struct Expire {
    pub peer: Username,
    pub seconds: u32,
}

command!(Expire => (), |o, m| {
    // A petname given by a device means the address it stands for.
    let mut m = m;
    m.peer = o.trust.resolve_name(m.peer).await?;
    // Refuse before changing anything if the setting cannot reach the peer.
    o.trust.check_can_send(&m.peer).await?;
    o.storage.set_expiry(&m.peer, m.seconds).await?;
    o.outbox.queue(&m.peer, Payload::Expire(m.seconds)).await?;
    Ok(())
});

// ----- contacts -----

/// Every contact, with the petname the user gave it, if any.
#[derive(Message)]
#[rtype(result = "Result<Vec<(Contact, Option<Username>)>, HostError>")]
pub struct Contacts;

command!(Contacts => Vec<(Contact, Option<Username>)>, |o, _m| {
    let all = o.trust.contacts().await?;
    Ok(all.into_iter().map(|c| {
        let petname = o.trust.petname_of(&c.username);
        (c, petname)
    }).collect())
});

/// `block USER` / `unblock USER`.
#[derive(Message)]
#[rtype(result = "Result<(), HostError>")]
pub struct SetBlocked {
    pub user: Username,
    pub blocked: bool,
}

command!(SetBlocked => (), |o, m| {
    // A petname given by a device means the address it stands for.
    let mut m = m;
    m.user = o.trust.resolve_name(m.user).await?;
    o.trust.set_blocked(&m.user, m.blocked).await?;
    if m.blocked {
        o.calls.do_send(calls::PeerBlocked(m.user));
    }
    Ok(())
});

/// `directory move NAME`: leaves the home directory for the configured directory `NAME`.
/// Returns the name of the directory left.
#[derive(Message)]
#[rtype(result = "Result<String, HostError>")]
pub struct MoveDirectory(pub String);

command!(MoveDirectory => String, |o, MoveDirectory(to)| {
    o.trust.move_directory(&to).await
});

/// `directory add NAME ADDRESS KEY`: one more directory. Returns its entry.
#[derive(Message)]
#[rtype(result = "Result<crate::trust::DirectoryEntry, HostError>")]
pub struct AddDirectory {
    pub name: String,
    pub address: String,
    pub key: String,
    /// A name space of its own (`alice@NAME`).
    pub scoped: bool,
}

command!(AddDirectory => crate::trust::DirectoryEntry, |o, m| {
    o.trust.add_directory(&m.name, &m.address, &m.key, m.scoped).await
});

/// `directory remove NAME`: one directory fewer.
#[derive(Message)]
#[rtype(result = "Result<(), HostError>")]
pub struct RemoveDirectory(pub String);

command!(RemoveDirectory => (), |o, RemoveDirectory(name)| {
    o.trust.remove_directory(&name).await
});

/// `directory list`: every directory in use.
#[derive(Message)]
#[rtype(result = "Result<Vec<crate::trust::DirectoryEntry>, HostError>")]
pub struct ListDirectories;

command!(ListDirectories => Vec<crate::trust::DirectoryEntry>, |o, _m| {
    Ok(o.trust.directories())
});

/// `petname add NAME ADDRESS`: the user's own name for an identity address.
#[derive(Message)]
#[rtype(result = "Result<crate::trust::Petname, HostError>")]
pub struct AddPetname {
    pub name: Username,
    pub address: Username,
}

command!(AddPetname => crate::trust::Petname, |o, m| {
    o.trust.add_petname(&m.name, &m.address).await
});

/// `petname remove NAME`.
#[derive(Message)]
#[rtype(result = "Result<(), HostError>")]
pub struct RemovePetname(pub Username);

command!(RemovePetname => (), |o, RemovePetname(name)| {
    o.trust.remove_petname(&name).await
});

/// `petname list`.
#[derive(Message)]
#[rtype(result = "Result<Vec<crate::trust::Petname>, HostError>")]
pub struct ListPetnames;

command!(ListPetnames => Vec<crate::trust::Petname>, |o, _m| { Ok(o.trust.petnames()) });

/// `introduce USER TO`: hands `to` the signed record we pinned `user` from.
#[derive(Message)]
#[rtype(result = "Result<(), HostError>")]
pub struct Introduce {
    pub user: Username,
    pub to: Username,
}

command!(Introduce => (), |o, m| {
    // A petname given by a device means the address it stands for.
    let mut m = m;
    m.user = o.trust.resolve_name(m.user).await?;
    m.to = o.trust.resolve_name(m.to).await?;
    if m.user == m.to {
        return Err(HostError::bad_request("introduce someone to someone else"));
    }
    let evidence = o.trust.introduction_of(&m.user).await?;
    o.trust.check_can_send(&m.to).await?;
    o.outbox.queue(&m.to, Payload::Introduction(evidence)).await?;
    tracing::info!(user = %m.user, to = %m.to, "introduced a contact");
    Ok(())
});

/// `verify USER [--accept-new-key | --keep-key]`.
#[derive(Message)]
#[rtype(result = "Result<Verification, HostError>")]
pub struct Verify {
    pub user: Username,
    pub decision: KeyDecision,
}

command!(Verify => Verification, |o, m| {
    // A petname given by a device means the address it stands for.
    let mut m = m;
    m.user = o.trust.resolve_name(m.user).await?;
    let transcript = o.storage.transcript_hash(&m.user).await?;
    let mut v = o.trust.verify(&m.user, m.decision, transcript).await?;
    if v.accepted {
        o.sessions.forget(&m.user).await?;
    }
    if m.decision != KeyDecision::Look && !v.key_changed {
        // What waited for the user's decision may go now.
        o.outbox.kick(&m.user);
    }
    if o.sessions.uses_v2(&m.user).await? {
        v.session_version = crate::session::SESSION_V2;
    }
    Ok(v)
});

// ----- calls (the call manager owns them; these are its requests as devices make them) -----

/// A device places a call; the reply is the call, the device's token and its relay.
#[derive(Message)]
#[rtype(result = "Result<DeviceCall, HostError>")]
pub struct PlaceCall {
    pub peer: Username,
    pub media: Media,
    pub device: mpsc::UnboundedSender<DeviceNotice>,
}

command!(PlaceCall => DeviceCall, |o, m| {
    // A petname given by a device means the address it stands for.
    let mut m = m;
    m.peer = o.trust.resolve_name(m.peer).await?;
    o.calls
        .send(calls::PlaceCall { peer: m.peer, media: m.media, device: m.device })
        .await
        .map_err(|_| HostError::shutting_down())?
});

/// A device picks up a ringing call (`None`: the one that rings).
#[derive(Message)]
#[rtype(result = "Result<DeviceCall, HostError>")]
pub struct AnswerCall {
    pub id: Option<CallId>,
    pub media: Media,
    pub device: mpsc::UnboundedSender<DeviceNotice>,
    pub by: crate::model::Answerer,
}

command!(AnswerCall => DeviceCall, |o, m| {
    o.calls
        .send(calls::AnswerCall { id: m.id, media: m.media, device: m.device, by: m.by })
        .await
        .map_err(|_| HostError::shutting_down())?
});

/// Ends a call (`None`: the current one); a ringing incoming call is declined. From a
/// device's control, `token` names the device (only its own call is ended).
#[derive(Message)]
#[rtype(result = "Result<(), HostError>")]
pub struct Hangup {
    pub id: Option<CallId>,
    pub token: Option<u64>,
    pub device_gone: bool,
}

command!(Hangup => (), |o, m| {
    o.calls
        .send(calls::Hangup { id: m.id, token: m.token, device_gone: m.device_gone })
        .await
        .map_err(|_| HostError::shutting_down())?
});

/// The calls ringing or active.
#[derive(Message)]
#[rtype(result = "Result<Vec<CallInfo>, HostError>")]
pub struct ListCalls;

command!(ListCalls => Vec<CallInfo>, |o, _m| {
    o.calls.send(calls::ListCalls).await.map_err(|_| HostError::shutting_down())
});

/// The call that rings here, if any (`AnswerCall` with no id picks it up).
pub fn ringing(calls: &[CallInfo]) -> Option<CallId> {
    calls
        .iter()
        .find(|c| !c.outgoing && c.state == crate::model::CallState::Ringing)
        .map(|c| c.id)
}

/// Registers the device that runs calls started from D-Bus; the reply is its token.
#[derive(Message)]
#[rtype(result = "Result<u64, HostError>")]
pub struct RegisterAgent(pub mpsc::UnboundedSender<AgentRequest>);

command!(RegisterAgent => u64, |o, RegisterAgent(agent)| {
    o.calls.send(calls::RegisterAgent(agent)).await.map_err(|_| HostError::shutting_down())
});

/// The agent with this token left.
#[derive(Message)]
#[rtype(result = "Result<(), HostError>")]
pub struct UnregisterAgent(pub u64);

command!(UnregisterAgent => (), |o, UnregisterAgent(token)| {
    o.calls.send(calls::UnregisterAgent(token)).await.map_err(|_| HostError::shutting_down())
});

/// Places a call through the registered call agent (D-Bus `PlaceCall`).
#[derive(Message)]
#[rtype(result = "Result<CallId, HostError>")]
pub struct PlaceViaAgent {
    pub peer: Username,
    pub video: bool,
    pub audio: bool,
}

command!(PlaceViaAgent => CallId, |o, m| {
    // A petname given by a device means the address it stands for.
    let mut m = m;
    m.peer = o.trust.resolve_name(m.peer).await?;
    o.calls
        .send(calls::ViaAgent { place: Some((m.peer, m.video, m.audio)), answer: None })
        .await
        .map_err(|_| HostError::shutting_down())?
});

/// Answers a ringing call through the registered call agent (D-Bus `AnswerCall`; `None`: the
/// one that rings).
#[derive(Message)]
#[rtype(result = "Result<CallId, HostError>")]
pub struct AnswerViaAgent(pub Option<CallId>);

command!(AnswerViaAgent => CallId, |o, AnswerViaAgent(id)| {
    let id = match id {
        Some(id) => id,
        None => {
            let calls = o.calls.send(calls::ListCalls).await.map_err(|_| HostError::shutting_down())?;
            ringing(&calls).ok_or_else(|| HostError::new(ErrorCode::NotFound, "no call is ringing"))?
        }
    };
    o.calls
        .send(calls::ViaAgent { place: None, answer: Some(id) })
        .await
        .map_err(|_| HostError::shutting_down())?
});

// ----- linked devices -----

/// Who asks for a device-management command: only local clients and admin devices may.
fn admin_only(admin: bool) -> Result<(), HostError> {
    if admin {
        Ok(())
    } else {
        Err(HostError::new(
            ErrorCode::NotAllowed,
            "only an admin device (or the host's own socket) manages devices",
        ))
    }
}

/// `devices`: the paired devices and whether each is connected.
#[derive(Message)]
#[rtype(result = "Result<Vec<(Device, bool)>, HostError>")]
pub struct ListDevices {
    pub admin: bool,
}

command!(ListDevices => Vec<(Device, bool)>, |o, m| {
    admin_only(m.admin)?;
    Ok(o.devices.list())
});

/// `devices link --name NAME`: a pairing code.
#[derive(Message)]
#[rtype(result = "Result<LinkCode, HostError>")]
pub struct LinkDevice {
    pub admin: bool,
    /// Asked by the host's own user (socket or D-Bus), not by a linked device.
    pub local: bool,
    pub name: String,
}

command!(LinkDevice => LinkCode, |o, m| {
    admin_only(m.admin)?;
    let code = o.devices.link(&m.name, m.local)?;
    tracing::info!(device = %m.name, "made a pairing code for a new device");
    Ok(code)
});

/// `devices revoke NAME`.
#[derive(Message)]
#[rtype(result = "Result<Device, HostError>")]
pub struct RevokeDevice {
    pub admin: bool,
    pub name: String,
}

command!(RevokeDevice => Device, |o, m| {
    admin_only(m.admin)?;
    let device = o.devices.revoke(&m.name).await?;
    tracing::info!(device = %device.name, "revoked a device");
    Ok(device)
});
