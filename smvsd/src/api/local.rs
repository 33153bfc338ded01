//! The local API: Cap'n Proto `Host` (schema/local.capnp) on a Unix socket, for devices.
//!
//! Who may connect is decided twice: the socket's directory and file modes, and the peer's uid
//! (SO_PEERCRED) checked against the allowed list on every accept. Every request is translated
//! into one of the command façade's messages and its answer written back; nothing here reads
//! or changes state itself. Event subscriptions get a bounded queue from the device hub and a
//! task that forwards it to the device's `EventSink`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::rc::Rc;

use actix::Addr;
use smvs_schema::local_capnp::{call_event, event, event_sink, host, message, subscription};
use smvs_schema::Username;
use tokio::net::UnixListener;
use tokio::sync::mpsc;

use super::local_calls;
use crate::commands::{
    parse_user, Commands, Contacts, Conversations, Delete, Expire, GetMessage, History, HostStatus,
    Introduce, LinkDevice, ListDevices, MarkRead, Register, RevokeDevice, SendText, SetBlocked,
    Verify,
};
use crate::devices::Device;
use crate::error::HostError;
use crate::events::{Cursor, DeviceHub, Feed, JoinError, DEVICE_QUEUE};
use crate::model::{
    Answerer, CallInfo, HostEvent, Integrity, MessageId, Payload, Status, StoredMessage, Viewer,
};
use crate::trust::KeyDecision;

/// Local clients served at once.
pub const MAX_LOCAL_CLIENTS: usize = 256;
/// The most message text one `history` answer carries.
const HISTORY_ANSWER_BYTES: usize = 3 * 1024 * 1024;

/// Creates the socket's directory (0700 when new), replaces a stale socket, binds, and sets
/// the socket to 0660 (the uid check decides the rest).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        } else {
            return Err(std::io::Error::other(format!(
                "{} exists and is not a socket",
                path.display()
            )));
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

pub struct LocalApi {
    pub commands: Addr<Commands>,
    pub hub: Addr<DeviceHub>,
    pub allowed_uids: Vec<u32>,
}

impl LocalApi {
    pub async fn serve(self, listener: UnixListener) {
        let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_LOCAL_CLIENTS));
        let me = Rc::new(self);
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a local client failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let cred = match stream.peer_cred() {
                Ok(cred) => cred,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read a local client's credentials; closing it");
                    continue;
                }
            };
            if !me.allowed_uids.contains(&cred.uid()) {
                smvs_service::security_event!(
                    warn,
                    smvs_service::logging::LOCAL_CLIENT_REFUSED,
                    uid = cred.uid(),
                    pid = cred.pid().unwrap_or(0),
                    "refused a local client whose uid is not allowed"
                );
                continue;
            }
            let Ok(permit) = budget.clone().try_acquire_owned() else {
                tracing::warn!("local client limit reached; closing a new client");
                continue;
            };
            let api = me.clone();
            tokio::task::spawn_local(async move {
                // A local client is the host's own user: it may manage devices.
                let host = host_api(api.commands.clone(), api.hub.clone(), true, None);
                if let Err(e) = smvs_transport::rpc::local_server(stream, host.client).await {
                    tracing::debug!(error = %e, "local client connection ended");
                }
                drop(permit);
            });
        }
    }
}

struct HostRpc {
    commands: Addr<Commands>,
    hub: Addr<DeviceHub>,
    /// May list, link and revoke devices.
    admin: bool,
    /// The host's own socket (not a linked device's link).
    local: bool,
    /// Whose event cursors these are: [`LOCAL_CURSORS`], or a linked device's key.
    device: String,
    /// A linked device's requests are metered; the socket's are not (its users are the
    /// host's own, checked by uid).
    budget: Option<RequestBudget>,
    /// This connection among the user's clients (which one picked up a call that rang on all).
    client: u64,
    /// Event streams open on this connection.
    streams: Rc<std::cell::Cell<usize>>,
}

/// Numbers the connections, for [`HostRpc::client`].
static NEXT_CLIENT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A linked device link's request budget: a burst of [`DEVICE_BURST`] requests, refilled at
/// [`DEVICE_RATE`] a second. Far above what a person's device asks (a history page, a send),
/// far below what would let one stolen device keep the host busy.
pub(super) struct RequestBudget {
    tokens: std::cell::Cell<f64>,
    last: std::cell::Cell<std::time::Instant>,
}

const DEVICE_BURST: f64 = 200.0;
const DEVICE_RATE: f64 = 100.0;

impl RequestBudget {
    fn new() -> RequestBudget {
        RequestBudget {
            tokens: std::cell::Cell::new(DEVICE_BURST),
            last: std::cell::Cell::new(std::time::Instant::now()),
        }
    }

    fn take(&self) -> bool {
        let now = std::time::Instant::now();
        let refill = now.duration_since(self.last.get()).as_secs_f64() * DEVICE_RATE;
        self.last.set(now);
        let tokens = (self.tokens.get() + refill).min(DEVICE_BURST);
        if tokens >= 1.0 {
            self.tokens.set(tokens - 1.0);
            true
        } else {
            self.tokens.set(tokens);
            false
        }
    }
}

impl HostRpc {
    /// Trust decisions (which directories, which key a contact has, the user's registration)
    /// are made only by the host's own user (its socket) or an admin device: a lost laptop
    /// must not be able to drop the honest directories or accept a forged key. `what` says
    /// what was refused.
    fn admin_only(&self, what: &str) -> Result<(), capnp::Error> {
        if self.admin {
            Ok(())
        } else {
            Err(HostError::new(
                smvs_schema::ErrorCode::NotAllowed,
                format!("only an admin device (or the host's own socket) {what}"),
            )
            .into())
        }
    }

    /// Spends one request of a linked device's budget; refuses when it is spent.
    fn admit(&self) -> Result<(), capnp::Error> {
        match &self.budget {
            Some(budget) if !budget.take() => Err(HostError::new(
                smvs_schema::ErrorCode::Busy,
                "too many requests from this device; slow down",
            )
            .into()),
            _ => Ok(()),
        }
    }
}

/// The owner of the Unix socket clients' event cursors (they share them).
pub(super) const LOCAL_CURSORS: &str = "local";

/// The local API for one client: the Unix socket (`device: None`), or a paired device's link
/// (`device`: its key, which owns its event cursors).
pub(super) fn host_api(
    commands: Addr<Commands>,
    hub: Addr<DeviceHub>,
    admin: bool,
    device: Option<String>,
) -> host::Client {
    let local = device.is_none();
    capnp_rpc::new_client(HostRpc {
        commands,
        hub,
        admin,
        local,
        device: device.unwrap_or_else(|| LOCAL_CURSORS.to_string()),
        budget: (!local).then(RequestBudget::new),
        client: NEXT_CLIENT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        streams: Rc::default(),
    })
}

fn text<'a>(t: capnp::Result<capnp::text::Reader<'a>>) -> Result<&'a str, capnp::Error> {
    t?.to_str()
        .map_err(|_| HostError::bad_request("text is not UTF-8").into())
}

fn write_directory(
    mut b: smvs_schema::local_capnp::directory_info::Builder<'_>,
    d: &crate::trust::DirectoryEntry,
) {
    b.set_name(&d.name);
    b.set_address(&d.address);
    b.set_key(&d.key);
    b.set_left(d.left);
    b.set_scoped(d.scoped);
}

fn write_petname(mut b: smvs_schema::local_capnp::petname::Builder<'_>, p: &crate::trust::Petname) {
    b.set_name(p.name.as_str());
    b.set_address(p.address.as_str());
}

fn user(t: capnp::Result<capnp::text::Reader<'_>>) -> Result<Username, capnp::Error> {
    Ok(parse_user(text(t)?)?)
}

fn id(raw: &[u8]) -> Result<MessageId, capnp::Error> {
    MessageId::from_slice(raw)
        .ok_or_else(|| HostError::bad_request("a message id is 16 bytes").into())
}

fn mailbox<T>(r: Result<T, actix::MailboxError>) -> Result<T, capnp::Error> {
    r.map_err(|_| HostError::shutting_down().into())
}

fn status_of(s: Status) -> message::Status {
    match s {
        Status::Queued => message::Status::Queued,
        Status::Sent => message::Status::Sent,
        Status::Delivered => message::Status::Delivered,
        Status::Received => message::Status::Received,
        Status::Failed => message::Status::Failed,
        Status::Held => message::Status::Held,
    }
}

fn write_message(mut b: message::Builder<'_>, m: &StoredMessage) {
    b.set_id(&m.id.0);
    b.set_from(m.from.as_str());
    b.set_to(m.to.as_str());
    b.set_time(m.time);
    if let Payload::Text(t) = &m.payload {
        b.set_body(t);
    }
    b.set_status(status_of(m.status));
    b.set_reason(m.reason.as_str());
    b.set_integrity(match m.integrity {
        Integrity::Ok => message::Integrity::Ok,
        Integrity::Gap => message::Integrity::Gap,
        Integrity::OutOfOrder => message::Integrity::OutOfOrder,
        Integrity::Unchecked => message::Integrity::Unchecked,
    });
}

impl HostRpc {
    async fn set_blocked(&self, user: Username, blocked: bool) -> Result<(), capnp::Error> {
        mailbox(self.commands.send(SetBlocked { user, blocked }).await)??;
        Ok(())
    }
}

fn write_status(mut s: smvs_schema::local_capnp::host_status::Builder<'_>, status: &HostStatus) {
    s.set_queued(status.queued);
    s.set_directory(&status.directory);
    s.set_version(status.version);
    s.set_host_address(&status.host_address);
    if let Some(name) = &status.username {
        s.set_username(name.as_str());
        s.set_registered(true);
    }
    if let Some(fingerprint) = &status.fingerprint {
        s.set_fingerprint(fingerprint);
    }
    if let Some(call_port) = &status.call_port {
        s.set_call_port(call_port);
    }
    if let Some(node) = &status.dht_node {
        s.set_dht_node(node);
    }
}

impl host::Server for HostRpc {
    async fn status(
        self: Rc<Self>,
        _: host::StatusParams,
        mut results: host::StatusResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let status = mailbox(self.commands.send(crate::commands::Status).await)??;
        write_status(results.get().init_status(), &status);
        Ok(())
    }

    async fn register(
        self: Rc<Self>,
        params: host::RegisterParams,
        mut results: host::RegisterResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        self.admin_only("registers the host's user")?;
        let name = user(params.get()?.get_username())?;
        let status = mailbox(self.commands.send(Register(name)).await)??;
        write_status(results.get().init_status(), &status);
        Ok(())
    }

    async fn send(
        self: Rc<Self>,
        params: host::SendParams,
        mut results: host::SendResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let (to, body) = {
            let p = params.get()?;
            (user(p.get_to())?, text(p.get_body())?.to_owned())
        };
        let id = mailbox(self.commands.send(SendText { to, body }).await)??;
        results.get().set_id(&id.0);
        Ok(())
    }

    async fn history(
        self: Rc<Self>,
        params: host::HistoryParams,
        mut results: host::HistoryResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let (peer, limit, before) = {
            let p = params.get()?;
            let before = p.get_before()?;
            let before = if before.is_empty() {
                None
            } else {
                Some(id(before)?)
            };
            (user(p.get_peer())?, p.get_limit(), before)
        };
        let page = mailbox(
            self.commands
                .send(History {
                    peer,
                    limit,
                    before,
                })
                .await,
        )??;
        let mut messages = page.messages;
        // Keep the newest messages that fit in one answer (well under the 4 MiB reader limit).
        let mut budget = HISTORY_ANSWER_BYTES;
        let keep = messages
            .iter()
            .rev()
            .take_while(|m| {
                let size = 128
                    + match &m.payload {
                        Payload::Text(t) => t.len(),
                        _ => 0,
                    };
                budget = budget.saturating_sub(size);
                budget > 0
            })
            .count();
        let more = page.older || keep < messages.len();
        messages.drain(..messages.len() - keep);
        let mut r = results.get();
        r.set_more(more);
        let mut list = r.init_messages(super::list_len(messages.len())?);
        for (i, m) in (0..).zip(messages.iter()) {
            write_message(list.reborrow().get(i), m);
        }
        Ok(())
    }

    async fn message(
        self: Rc<Self>,
        params: host::MessageParams,
        mut results: host::MessageResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let (peer, id) = {
            let p = params.get()?;
            (user(p.get_peer())?, id(p.get_id()?)?)
        };
        let m = mailbox(self.commands.send(GetMessage { peer, id }).await)??;
        write_message(results.get().init_message(), &m);
        Ok(())
    }

    async fn subscribe(
        self: Rc<Self>,
        params: host::SubscribeParams,
        mut results: host::SubscribeResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let (sink, since, cursor) = {
            let p = params.get()?;
            (
                p.get_sink()?,
                p.get_since(),
                text(p.get_cursor())?.to_owned(),
            )
        };
        let Some(slot) = StreamSlot::take(&self.streams) else {
            return Err(HostError::new(
                smvs_schema::ErrorCode::Busy,
                format!("one connection has at most {STREAMS_PER_LINK} event streams open"),
            )
            .into());
        };
        let cursor = if cursor.is_empty() {
            None
        } else {
            if cursor.len() > 64 || cursor.chars().any(char::is_control) {
                return Err(HostError::bad_request(
                    "a cursor name is at most 64 characters, with no control characters",
                )
                .into());
            }
            match Cursor::open(&self.hub, self.device.clone(), cursor).await {
                Ok(cursor) => Some(cursor),
                Err(e @ JoinError::TooManyCursors) => {
                    return Err(HostError::new(smvs_schema::ErrorCode::Busy, e.to_string()).into())
                }
                Err(e) => return Err(HostError::internal(e).into()),
            }
        };
        let since = match &cursor {
            Some(cursor) => Some(cursor.position()),
            None => (since > 0).then_some(since),
        };
        let (tx, rx) = mpsc::channel(DEVICE_QUEUE);
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let hub = self.hub.clone();
        let join = async move { crate::events::join(&hub, since, tx).await };
        let viewer = Viewer::Client(self.client);
        tokio::task::spawn_local(forward_events(
            rx, join, sink, cursor, cancelled, viewer, slot,
        ));
        results
            .get()
            .set_subscription(capnp_rpc::new_client(SubscriptionRpc { _cancel: cancel }));
        Ok(())
    }

    async fn conversations(
        self: Rc<Self>,
        _: host::ConversationsParams,
        mut results: host::ConversationsResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let all = mailbox(self.commands.send(Conversations).await)??;
        let mut list = results
            .get()
            .init_conversations(super::list_len(all.len())?);
        for (i, c) in (0..).zip(all.iter()) {
            let mut b = list.reborrow().get(i);
            b.set_peer(c.peer.as_str());
            b.set_messages(c.messages);
            b.set_last_time(c.last_time);
            b.set_expire_seconds(c.expire_seconds);
            b.set_unread(c.unread);
        }
        Ok(())
    }

    async fn mark_read(
        self: Rc<Self>,
        params: host::MarkReadParams,
        mut results: host::MarkReadResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let peer = user(params.get()?.get_peer())?;
        let was = mailbox(self.commands.send(MarkRead { peer }).await)??;
        results.get().set_was_unread(was);
        Ok(())
    }

    async fn contacts(
        self: Rc<Self>,
        _: host::ContactsParams,
        mut results: host::ContactsResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let all = mailbox(self.commands.send(Contacts).await)??;
        let mut list = results.get().init_contacts(super::list_len(all.len())?);
        for (i, (c, petname)) in (0..).zip(all.iter()) {
            let mut b = list.reborrow().get(i);
            b.set_username(c.username.as_str());
            if let Some(petname) = petname {
                b.set_petname(petname.as_str());
            }
            b.set_fingerprint(c.fingerprint());
            b.set_blocked(c.blocked);
            b.set_key_changed(c.pending.is_some());
            b.set_request(c.request);
            if let Some(how) = &c.alarm {
                b.set_alarm(how);
            }
            if let Some(by) = &c.introduced_by {
                b.set_introduced_by(by.as_str());
            }
        }
        Ok(())
    }

    async fn block(
        self: Rc<Self>,
        params: host::BlockParams,
        _: host::BlockResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let user = user(params.get()?.get_user())?;
        self.set_blocked(user, true).await
    }

    async fn unblock(
        self: Rc<Self>,
        params: host::UnblockParams,
        _: host::UnblockResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let user = user(params.get()?.get_user())?;
        self.set_blocked(user, false).await
    }

    async fn verify(
        self: Rc<Self>,
        params: host::VerifyParams,
        mut results: host::VerifyResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let (user, decision) = {
            let p = params.get()?;
            let decision = match (p.get_accept_new_key(), p.get_keep_key()) {
                (false, false) => KeyDecision::Look,
                (true, false) => KeyDecision::Accept,
                (false, true) => KeyDecision::Keep,
                (true, true) => {
                    return Err(HostError::bad_request(
                        "accept the new key or keep the pinned one, not both",
                    )
                    .into())
                }
            };
            (user(p.get_user())?, decision)
        };
        if decision != KeyDecision::Look {
            self.admin_only("accepts or keeps a contact's key")?;
        }
        let v = mailbox(self.commands.send(Verify { user, decision }).await)??;
        let mut b = results.get().init_verification();
        b.set_safety_number(&v.safety_number);
        b.set_transcript_hash(&v.transcript_hash);
        b.set_key_changed(v.key_changed);
        b.set_accepted(v.accepted);
        b.set_session_version(v.session_version);
        if let Some(how) = &v.alarm {
            b.set_alarm(how);
        }
        if let Some(number) = &v.pinned_safety_number {
            b.set_pinned_safety_number(number);
        }
        if let Some(e) = &v.evidence {
            b.set_record(&e.record_bytes);
            b.set_record_signature(&e.signature);
            b.set_directory_key(&e.directory_key);
            b.set_record_issued_at(e.issued_at);
        }
        Ok(())
    }

    async fn delete(
        self: Rc<Self>,
        params: host::DeleteParams,
        mut results: host::DeleteResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let (peer, id, everywhere) = {
            let p = params.get()?;
            let raw = p.get_id()?;
            let id = if raw.is_empty() { None } else { Some(id(raw)?) };
            (user(p.get_peer())?, id, p.get_everywhere())
        };
        let n = mailbox(
            self.commands
                .send(Delete {
                    peer,
                    id,
                    everywhere,
                })
                .await,
        )??;
        results.get().set_deleted(n);
        Ok(())
    }

    async fn expire(
        self: Rc<Self>,
        params: host::ExpireParams,
        _: host::ExpireResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let (peer, seconds) = {
            let p = params.get()?;
            (user(p.get_peer())?, p.get_seconds())
        };
        mailbox(self.commands.send(Expire { peer, seconds }).await)??;
        Ok(())
    }

    async fn move_directory(
        self: Rc<Self>,
        params: host::MoveDirectoryParams,
        mut results: host::MoveDirectoryResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        self.admin_only("changes the directories")?;
        let to = params
            .get()?
            .get_to()?
            .to_string()
            .map_err(|_| capnp::Error::from(HostError::bad_request("name is not UTF-8")))?;
        let left = mailbox(self.commands.send(crate::commands::MoveDirectory(to)).await)??;
        results.get().set_left(left);
        Ok(())
    }

    async fn register_in_dht(
        self: Rc<Self>,
        _: host::RegisterInDhtParams,
        mut results: host::RegisterInDhtResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        self.admin_only("registers the host's user")?;
        let status = mailbox(self.commands.send(crate::commands::RegisterInDht).await)??;
        write_status(results.get().init_status(), &status);
        Ok(())
    }

    async fn directories(
        self: Rc<Self>,
        _: host::DirectoriesParams,
        mut results: host::DirectoriesResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let all = mailbox(self.commands.send(crate::commands::ListDirectories).await)??;
        let mut list = results.get().init_directories(super::list_len(all.len())?);
        for (i, d) in (0..).zip(all.iter()) {
            write_directory(list.reborrow().get(i), d);
        }
        Ok(())
    }

    async fn add_directory(
        self: Rc<Self>,
        params: host::AddDirectoryParams,
        mut results: host::AddDirectoryResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        self.admin_only("changes the directories")?;
        let (name, address, key, scoped) = {
            let p = params.get()?;
            (
                text(p.get_name())?.to_owned(),
                text(p.get_address())?.to_owned(),
                text(p.get_key())?.to_owned(),
                p.get_scoped(),
            )
        };
        let added = mailbox(
            self.commands
                .send(crate::commands::AddDirectory {
                    name,
                    address,
                    key,
                    scoped,
                })
                .await,
        )??;
        write_directory(results.get().init_directory(), &added);
        Ok(())
    }

    async fn remove_directory(
        self: Rc<Self>,
        params: host::RemoveDirectoryParams,
        _: host::RemoveDirectoryResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        self.admin_only("changes the directories")?;
        let name = text(params.get()?.get_name())?.to_owned();
        mailbox(
            self.commands
                .send(crate::commands::RemoveDirectory(name))
                .await,
        )??;
        Ok(())
    }

    async fn petnames(
        self: Rc<Self>,
        _: host::PetnamesParams,
        mut results: host::PetnamesResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let all = mailbox(self.commands.send(crate::commands::ListPetnames).await)??;
        let mut list = results.get().init_petnames(super::list_len(all.len())?);
        for (i, p) in (0..).zip(all.iter()) {
            write_petname(list.reborrow().get(i), p);
        }
        Ok(())
    }

    async fn add_petname(
        self: Rc<Self>,
        params: host::AddPetnameParams,
        mut results: host::AddPetnameResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        // A petname decides who `send NAME` reaches: a trust decision, as accepting a key is.
        self.admin_only("names contacts")?;
        let (name, address) = {
            let p = params.get()?;
            (user(p.get_name())?, user(p.get_address())?)
        };
        let added = mailbox(
            self.commands
                .send(crate::commands::AddPetname { name, address })
                .await,
        )??;
        write_petname(results.get().init_petname(), &added);
        Ok(())
    }

    async fn remove_petname(
        self: Rc<Self>,
        params: host::RemovePetnameParams,
        _: host::RemovePetnameResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        self.admin_only("names contacts")?;
        let name = user(params.get()?.get_name())?;
        mailbox(
            self.commands
                .send(crate::commands::RemovePetname(name))
                .await,
        )??;
        Ok(())
    }

    async fn introduce(
        self: Rc<Self>,
        params: host::IntroduceParams,
        _: host::IntroduceResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let (user, to) = {
            let p = params.get()?;
            (self::user(p.get_user())?, self::user(p.get_to())?)
        };
        mailbox(self.commands.send(Introduce { user, to }).await)??;
        Ok(())
    }

    async fn place_call(
        self: Rc<Self>,
        params: host::PlaceCallParams,
        results: host::PlaceCallResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        local_calls::place(&self.commands, params, results).await
    }

    async fn answer_call(
        self: Rc<Self>,
        params: host::AnswerCallParams,
        results: host::AnswerCallResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let by = Answerer {
            client: self.client,
            linked_device: !self.local,
        };
        local_calls::answer(&self.commands, by, params, results).await
    }

    async fn hangup_call(
        self: Rc<Self>,
        params: host::HangupCallParams,
        _: host::HangupCallResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        local_calls::hangup(&self.commands, params).await
    }

    async fn calls(
        self: Rc<Self>,
        _: host::CallsParams,
        results: host::CallsResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        local_calls::list(&self.commands, Viewer::Client(self.client), results).await
    }

    async fn register_call_agent(
        self: Rc<Self>,
        params: host::RegisterCallAgentParams,
        results: host::RegisterCallAgentResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        if !self.local {
            // The call agent runs the calls the host machine's desktop starts over D-Bus; a
            // linked device taking that over would run them on another machine. Calls ring on
            // a linked device all the same, and it answers them itself (answerCall).
            return Err(HostError::new(
                smvs_schema::ErrorCode::NotAllowed,
                "a linked device does not run the host's D-Bus calls; calls ring on it and it answers them itself",
            )
            .into());
        }
        local_calls::register_agent(&self.commands, params, results).await
    }

    async fn devices(
        self: Rc<Self>,
        _: host::DevicesParams,
        mut results: host::DevicesResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let devices = mailbox(self.commands.send(ListDevices { admin: self.admin }).await)??;
        let mut list = results.get().init_devices(len(devices.len())?);
        for (i, (device, connected)) in devices.iter().enumerate() {
            write_device(list.reborrow().get(len(i)?), device, *connected);
        }
        Ok(())
    }

    async fn link_device(
        self: Rc<Self>,
        params: host::LinkDeviceParams,
        mut results: host::LinkDeviceResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let name = text(params.get()?.get_name())?.to_owned();
        let link = mailbox(
            self.commands
                .send(LinkDevice {
                    admin: self.admin,
                    local: self.local,
                    name,
                })
                .await,
        )??;
        let mut b = results.get().init_link();
        b.set_code(link.code.as_str());
        b.set_expires_at(link.expires_at);
        b.set_device_address(&link.device_address);
        b.set_host_fingerprint(&link.host_fingerprint);
        Ok(())
    }

    async fn revoke_device(
        self: Rc<Self>,
        params: host::RevokeDeviceParams,
        mut results: host::RevokeDeviceResults,
    ) -> Result<(), capnp::Error> {
        self.admit()?;
        let name = text(params.get()?.get_name())?.to_owned();
        let device = mailbox(
            self.commands
                .send(RevokeDevice {
                    admin: self.admin,
                    name,
                })
                .await,
        )??;
        write_device(results.get().init_device(), &device, false);
        Ok(())
    }
}

/// A list length for Cap'n Proto (which counts in u32).
fn len(n: usize) -> Result<u32, capnp::Error> {
    u32::try_from(n).map_err(|_| HostError::internal("list too long").into())
}

fn write_device(mut b: smvs_schema::local_capnp::device::Builder<'_>, d: &Device, connected: bool) {
    b.set_name(&d.name);
    b.set_fingerprint(d.fingerprint());
    b.set_admin(d.admin);
    b.set_paired_at(d.paired_at);
    b.set_last_seen(d.last_seen);
    b.set_last_address(&d.last_address);
    b.set_connected(connected);
}

struct SubscriptionRpc {
    /// Dropped (when the device releases its subscription) to stop the forwarder.
    _cancel: tokio::sync::oneshot::Sender<()>,
}

impl subscription::Server for SubscriptionRpc {}

/// Events a device may have unanswered before the forwarder waits for it. Calls on one
/// capability arrive in order, so pipelining keeps the order and saves a round trip per event.
const EVENTS_IN_FLIGHT: usize = 64;

/// How long the oldest event sent to a device may go unanswered before its stream is ended
/// (a device that takes nothing in holds a queue, and the log's pages, for nothing).
const SINK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Event streams one connection may have open at once.
const STREAMS_PER_LINK: usize = 4;

/// Counts a connection's open streams; dropping it (the stream's task ends) counts one less.
struct StreamSlot(Rc<std::cell::Cell<usize>>);

impl StreamSlot {
    fn take(open: &Rc<std::cell::Cell<usize>>) -> Option<StreamSlot> {
        (open.get() < STREAMS_PER_LINK).then(|| {
            open.set(open.get() + 1);
            StreamSlot(open.clone())
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// Joins the hub (reading what the device missed from the log, through `join`) and forwards
/// the device's queue to its sink, up to [`EVENTS_IN_FLIGHT`] unanswered. Each answer of the
/// sink moves `cursor` to that event; answers already in when the stream ends count too, and
/// the cursor is saved before the task ends. When the host ends the stream (not the device),
/// the sink hears why (`ended`), so the device can subscribe again from its cursor.
async fn forward_events(
    mut rx: mpsc::Receiver<Feed>,
    join: impl std::future::Future<Output = Result<u64, JoinError>>,
    sink: event_sink::Client,
    mut cursor: Option<Cursor>,
    mut cancelled: tokio::sync::oneshot::Receiver<()>,
    viewer: Viewer,
    _slot: StreamSlot,
) {
    tokio::pin!(join);
    let mut joined = false;
    type Answer = capnp::capability::Promise<
        capnp::capability::Response<event_sink::event_results::Owned>,
        capnp::Error,
    >;
    let mut in_flight: std::collections::VecDeque<(u64, tokio::time::Instant, Answer)> =
        std::collections::VecDeque::with_capacity(EVENTS_IN_FLIGHT);
    let stop = cursor.as_mut().and_then(Cursor::take_stop);
    let mut taken_over = std::pin::pin!(async move {
        // Only a sent stop counts: a dropped one means the hub is gone, and nothing takes over.
        if let Some(stop) = stop {
            if stop.await.is_ok() {
                return;
            }
        }
        std::future::pending::<()>().await
    });
    // Why the host ended the stream; None: the device did (or its link broke).
    let mut ended: Option<String> = None;
    let mut answers: Vec<u64> = Vec::new();
    loop {
        let patience = in_flight.front().map(|(_, sent, _)| *sent + SINK_PATIENCE);
        tokio::select! {
            biased;
            _ = &mut cancelled => break,
            () = &mut taken_over => {
                ended = Some("another stream of this device took over its cursor".into());
                break;
            }
            result = &mut join, if !joined => {
                joined = true;
                if let Err(e) = result {
                    tracing::warn!(error = %e, "a device's event stream could not start");
                    ended = Some(format!("the stream could not start: {e}"));
                    break;
                }
            }
            () = async {
                match patience {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                ended = Some("events went unanswered too long".into());
                break;
            }
            answer = async {
                match in_flight.front_mut() {
                    Some((_, _, answer)) => answer.await,
                    None => std::future::pending().await,
                }
            }, if !in_flight.is_empty() =>
            {
                let Some((seq, _, _)) = in_flight.pop_front() else { break };
                if answer.is_err() {
                    // The device refused it or is gone: the stream ends before it.
                    in_flight.clear();
                    break;
                }
                answers.push(seq);
            }
            feed = rx.recv(), if in_flight.len() < EVENTS_IN_FLIGHT => {
                let Some(feed) = feed else {
                    ended = Some("the device fell too far behind".into());
                    break;
                };
                let mut request = sink.event_request();
                let seq = write_feed(request.get().init_event(), &feed, viewer);
                in_flight.push_back((seq, tokio::time::Instant::now(), request.send().promise));
            }
        }
        // (A resync, seq 0, moves nothing: the events after it do.)
        if let Some(c) = cursor.as_mut() {
            for seq in answers.drain(..).filter(|seq| *seq > 0) {
                c.acked(seq);
            }
        }
    }
    while let Some((seq, _, answer)) = in_flight.front_mut() {
        match futures::FutureExt::now_or_never(answer) {
            Some(Ok(_)) => answers.push(*seq),
            _ => break,
        }
        in_flight.pop_front();
    }
    if let Some(mut c) = cursor {
        for seq in answers.drain(..).filter(|seq| *seq > 0) {
            c.acked(seq);
        }
        c.close().await;
    }
    if let Some(reason) = ended {
        let mut request = sink.ended_request();
        request.get().set_reason(&reason);
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(5), request.send().promise).await;
    }
}

/// Writes one item of a device's queue, as `viewer` sees it; returns its seq (0 for a resync).
fn write_feed(mut b: event::Builder<'_>, feed: &Feed, viewer: Viewer) -> u64 {
    match feed {
        Feed::Event(logged) => {
            b.set_seq(logged.seq);
            b.set_replayed(logged.replayed);
            write_event(b, &logged.event.seen_by(viewer));
            logged.seq
        }
        Feed::Resync => {
            b.set_resync(());
            0
        }
    }
}

fn write_event(b: event::Builder<'_>, e: &HostEvent) {
    match e {
        HostEvent::MessageReceived { id, peer, time } => {
            let mut r = b.init_message_received();
            r.set_id(&id.0);
            r.set_peer(peer.as_str());
            r.set_time(*time);
        }
        HostEvent::IntegrityProblem { id, peer, time } => {
            let mut r = b.init_integrity_problem();
            r.set_id(&id.0);
            r.set_peer(peer.as_str());
            r.set_time(*time);
        }
        HostEvent::MessageSent { id, peer, time } => {
            let mut r = b.init_message_sent();
            r.set_id(&id.0);
            r.set_peer(peer.as_str());
            r.set_time(*time);
        }
        HostEvent::MessageStatus { id, peer, status } => {
            let mut r = b.init_message_status();
            r.set_id(&id.0);
            r.set_peer(peer.as_str());
            r.set_status(status_of(*status));
        }
        HostEvent::KeyChanged { peer } => {
            let mut b = b;
            b.set_key_changed(peer.as_str());
        }
        HostEvent::DirectoryAlarm { peer } => {
            let mut b = b;
            b.set_directory_alarm(peer.as_str());
        }
        HostEvent::Deleted { id, peer } => {
            let mut r = b.init_deleted();
            if let Some(id) = id {
                r.set_id(&id.0);
            }
            r.set_peer(peer.as_str());
        }
        HostEvent::Read { peer } => {
            let mut b = b;
            b.set_read(peer.as_str());
        }
        HostEvent::DeviceLinked { name } => {
            let mut b = b;
            b.set_device_linked(name);
        }
        HostEvent::DeviceRevoked { name } => {
            let mut b = b;
            b.set_device_revoked(name);
        }
        HostEvent::CallIncoming(info) => write_call_event(b.init_call_incoming(), info),
        HostEvent::CallState(info) => write_call_event(b.init_call_state(), info),
    }
}

fn write_call_event(mut r: call_event::Builder<'_>, info: &CallInfo) {
    r.set_id(&info.id.0);
    r.set_peer(info.peer.as_str());
    r.set_state(local_calls::call_state(info.state));
    r.set_reason(&info.reason);
    r.set_video(info.video);
    r.set_audio(info.audio);
    r.set_outgoing(info.outgoing);
}
