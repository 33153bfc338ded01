//! The chat's state: what is on screen, kept in step with the host's events.
//!
//! Nothing here is polled. The conversation list and contacts are read once (and again after a
//! resync); every change after that comes from the event stream, the same one every device
//! sees: a new message is fetched by id, a status change or a read mark is applied in place.
//! The open conversation holds only the pages read so far ([`PAGE`] messages each), newest last;
//! scrolling past the oldest reads the page before it.

use std::collections::HashMap;
use std::time::Instant;

use smvs_schema::{Username, MAX_TEXT_BYTES};

use crate::client::{
    CallEventView, CallState, ContactView, ConversationView, EventView, HostClient, MessageId,
    MessageStatus, MessageView, VerificationView,
};
use crate::error::{CtlError, ErrorCode};

/// Messages read from the host at a time.
pub const PAGE: u32 = 100;
/// How long after a (re)load the conversation list is read once more.
pub const LIST_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// Where the keys go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Focus {
    /// The conversation list: up and down choose, Enter opens.
    List,
    /// The open conversation: up and down choose a message (to delete it), scroll back.
    Messages,
    /// The compose line: keys type.
    Compose,
}

/// A window over the rest, which takes the keys until it is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overlay {
    Help,
    /// The safety number screen of a contact.
    Verify(VerificationView),
    /// Asks before something that cannot be undone.
    Confirm(Confirm),
    /// Reads a line: a username, a duration.
    Prompt(Prompt, String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    /// The message, and how it is shown in the question (time, who, its start).
    DeleteMessage(Username, MessageId, String),
    DeleteConversation(Username),
    Block(Username),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    /// Whom to write to.
    NewConversation,
    /// How long messages in the open conversation last.
    Disappearing,
}

/// The conversation on the right.
#[derive(Debug, Clone)]
pub struct Open {
    pub peer: Username,
    /// Oldest first: the pages read so far.
    pub messages: Vec<MessageView>,
    /// Older messages exist on the host.
    pub more: bool,
    /// The message chosen with up and down; None follows the newest.
    pub selected: Option<usize>,
}

/// The line being written.
#[derive(Debug, Clone, Default)]
pub struct Compose {
    pub text: String,
    /// Byte offset of the cursor in `text` (always on a char boundary).
    pub cursor: usize,
}

impl Compose {
    pub fn insert(&mut self, c: char) {
        self.text.insert(self.cursor, c);
        self.cursor += c.len_utf8();
    }

    pub fn insert_str(&mut self, text: &str) {
        self.text.insert_str(self.cursor, text);
        self.cursor += text.len();
    }

    pub fn backspace(&mut self) {
        if let Some(c) = self.text[..self.cursor].chars().next_back() {
            self.cursor -= c.len_utf8();
            self.text.remove(self.cursor);
        }
    }

    pub fn delete(&mut self) {
        if self.cursor < self.text.len() {
            self.text.remove(self.cursor);
        }
    }

    pub fn left(&mut self) {
        if let Some(c) = self.text[..self.cursor].chars().next_back() {
            self.cursor -= c.len_utf8();
        }
    }

    pub fn right(&mut self) {
        if let Some(c) = self.text[self.cursor..].chars().next() {
            self.cursor += c.len_utf8();
        }
    }

    pub fn home(&mut self) {
        self.cursor = self.text[..self.cursor].rfind('\n').map_or(0, |i| i + 1);
    }

    pub fn end(&mut self) {
        self.cursor = self.text[self.cursor..]
            .find('\n')
            .map_or(self.text.len(), |i| self.cursor + i);
    }

    pub fn clear(&mut self) {
        self.text.clear();
        self.cursor = 0;
    }

    /// Bytes over the limit smvsd accepts (0 when it fits).
    pub fn over_limit(&self) -> usize {
        self.text.len().saturating_sub(MAX_TEXT_BYTES)
    }
}

/// Our call, as this client runs it.
#[derive(Debug, Clone)]
pub struct OurCall {
    pub peer: Username,
    pub id: Option<crate::client::CallId>,
    pub video: bool,
    /// We called (else we answered).
    pub outgoing: bool,
    /// None while it rings at the peer (or our answer is being set up); talking since.
    pub since: Option<Instant>,
    pub stats: Option<smvs_media::CallStats>,
    pub muted: bool,
    /// The video size we send.
    pub size: (u32, u32),
}

/// A short line at the bottom: what just happened, or what went wrong.
#[derive(Debug, Clone)]
pub struct Notice {
    pub text: String,
    pub error: bool,
}

pub struct App {
    pub me: String,
    /// Newest first.
    pub conversations: Vec<ConversationView>,
    pub contacts: HashMap<Username, ContactView>,
    /// Index in `conversations`.
    pub selected: usize,
    pub open: Option<Open>,
    pub focus: Focus,
    pub compose: Compose,
    pub overlay: Option<Overlay>,
    pub notice: Option<Notice>,
    /// Incoming calls that ring now, oldest first.
    pub ringing: Vec<CallEventView>,
    pub call: Option<OurCall>,
    /// Draw with colours (false under NO_COLOR: words and symbols carry everything anyway).
    pub colour: bool,
    /// The chat opened last is to be marked read once drawn.
    read_pending: bool,
    /// When to read the list once more after a (re)load: see [`App::refresh_list`].
    reread_list_at: Option<Instant>,
    /// The size of the last frame drawn (columns, rows): whether the verification screen fit.
    pub screen: std::cell::Cell<(u16, u16)>,
}

impl App {
    pub fn new(me: String, colour: bool) -> App {
        App {
            me,
            conversations: Vec::new(),
            contacts: HashMap::new(),
            selected: 0,
            open: None,
            focus: Focus::List,
            compose: Compose::default(),
            overlay: None,
            notice: None,
            ringing: Vec::new(),
            call: None,
            colour,
            read_pending: false,
            reread_list_at: None,
            screen: std::cell::Cell::new((0, 0)),
        }
    }

    /// Shows `text` on the notice line. Every notice is made visible here, whatever it holds
    /// (a host's error text, a device's name, a call's end reason).
    pub fn say(&mut self, text: impl AsRef<str>) {
        self.notice(text, false);
    }

    /// Shows `text` on the notice line as a warning or an error.
    pub fn warn(&mut self, text: impl AsRef<str>) {
        self.notice(text, true);
    }

    pub fn fail(&mut self, error: &CtlError) {
        self.warn(error.to_string());
    }

    fn notice(&mut self, text: impl AsRef<str>, error: bool) {
        let text = text.as_ref().lines().collect::<Vec<_>>().join(" ");
        self.notice = Some(Notice {
            text: super::text::visible(&text),
            error,
        });
    }

    pub fn open_peer(&self) -> Option<&Username> {
        self.open.as_ref().map(|o| &o.peer)
    }

    pub fn contact(&self, user: &Username) -> Option<&ContactView> {
        self.contacts.get(user)
    }

    pub fn selected_peer(&self) -> Option<&Username> {
        self.conversations.get(self.selected).map(|c| &c.peer)
    }

    /// Reads the conversation list, contacts and ringing calls from the host (at start and
    /// after a resync).
    pub async fn reload(&mut self, host: &HostClient) -> Result<(), CtlError> {
        self.read_list(host).await?;
        self.reread_list_at = Some(Instant::now() + LIST_REFRESH);
        self.refresh_contacts(host).await?;
        self.ringing = host
            .calls()
            .await?
            .into_iter()
            .filter(|c| !c.outgoing && c.state == CallState::Ringing)
            .map(|c| CallEventView {
                id: c.id,
                video: c.peer_media.as_ref().is_none_or(|m| m.video),
                audio: c.peer_media.as_ref().is_none_or(|m| m.audio),
                peer: c.peer,
                state: c.state,
                reason: c.reason,
                outgoing: false,
            })
            .collect();
        if let Some(open) = &self.open {
            let peer = open.peer.clone();
            let listed = self.conversations.iter().any(|c| c.peer == peer);
            if listed || open.messages.is_empty() {
                self.open_conversation(host, &peer).await?;
            } else {
                // Deleted meanwhile (the resync lost its event): not brought back.
                self.open = None;
                self.focus = Focus::List;
            }
        }
        Ok(())
    }

    /// Reads the conversation list, keeping the selection, and a chat opened but not yet
    /// written in (only that: a chat the host no longer lists was deleted).
    async fn read_list(&mut self, host: &HostClient) -> Result<(), CtlError> {
        let keep = self.selected_peer().cloned();
        let mut conversations = host.conversations().await?;
        if let Some(open) = self.open.as_ref().filter(|o| o.messages.is_empty()) {
            if let Some(empty) = self
                .conversations
                .iter()
                .find(|c| c.peer == open.peer && !conversations.iter().any(|n| n.peer == open.peer))
            {
                conversations.push(empty.clone());
            }
        }
        self.conversations = conversations;
        self.sort();
        self.select_peer(keep.as_ref());
        Ok(())
    }

    /// The counts in the list follow events from the moment the chat subscribed, which was
    /// before the list was read: an event that raced with that read is counted twice. So the
    /// list is read once more [`LIST_REFRESH`] after each (re)load, when those events are in.
    pub async fn refresh_list(&mut self, host: &HostClient) -> Result<(), CtlError> {
        if self.reread_list_at.is_some_and(|at| at <= Instant::now()) {
            self.reread_list_at = None;
            self.read_list(host).await?;
        }
        Ok(())
    }

    fn sort(&mut self) {
        self.conversations
            .sort_by(|a, b| b.last_time.cmp(&a.last_time).then(a.peer.cmp(&b.peer)));
    }

    fn select_peer(&mut self, peer: Option<&Username>) {
        if let Some(i) = peer.and_then(|p| self.conversations.iter().position(|c| &c.peer == p)) {
            self.selected = i;
        }
        self.selected = self
            .selected
            .min(self.conversations.len().saturating_sub(1));
    }

    /// Opens the conversation with `peer`: its newest page. It is marked read on every device
    /// once it has been drawn ([`App::mark_read_pending`]): the first screen does not wait for
    /// the host to mark a long conversation's unread messages.
    pub async fn open_conversation(
        &mut self,
        host: &HostClient,
        peer: &Username,
    ) -> Result<(), CtlError> {
        let (messages, more) = host.history_page(peer, PAGE, None).await?;
        self.open = Some(Open {
            peer: peer.clone(),
            messages,
            more,
            selected: None,
        });
        if !self.conversations.iter().any(|c| &c.peer == peer) {
            // A conversation not written in yet: listed from now on, at the top.
            self.conversations.insert(
                0,
                ConversationView {
                    peer: peer.clone(),
                    messages: 0,
                    unread: 0,
                    last_time: now_ms(),
                    expire_seconds: 0,
                },
            );
        }
        self.select_peer(Some(peer));
        self.read_pending = true;
        Ok(())
    }

    /// Marks the chat opened last read, if that is still to be done; true when it was.
    pub async fn mark_read_pending(&mut self, host: &HostClient) -> Result<bool, CtlError> {
        if !std::mem::take(&mut self.read_pending) {
            return Ok(false);
        }
        self.mark_read(host, false).await?;
        Ok(true)
    }

    /// Marks the open conversation read (the host tells the user's other devices): when it
    /// shows unread messages, or always (`anyway`: a message just arrived into it).
    async fn mark_read(&mut self, host: &HostClient, anyway: bool) -> Result<(), CtlError> {
        let Some(peer) = self.open_peer().cloned() else {
            return Ok(());
        };
        let unread = self
            .conversations
            .iter()
            .find(|c| c.peer == peer)
            .is_some_and(|c| c.unread > 0);
        if unread || anyway {
            host.mark_read(&peer).await?;
            if let Some(c) = self.conversations.iter_mut().find(|c| c.peer == peer) {
                c.unread = 0;
            }
        }
        Ok(())
    }

    /// Reads the page before the oldest message shown, if there is one. Returns how many
    /// messages came.
    pub async fn page_back(&mut self, host: &HostClient) -> Result<usize, CtlError> {
        let Some(open) = self.open.as_mut() else {
            return Ok(0);
        };
        if !open.more {
            return Ok(0);
        }
        let before = open.messages.first().map(|m| m.id);
        let peer = open.peer.clone();
        let (older, more) = match host.history_page(&peer, PAGE, before.as_ref()).await {
            Ok(page) => page,
            // The oldest shown is gone (expired or deleted): read from the newest page again.
            Err(CtlError::Refused {
                code: Some(ErrorCode::NotFound),
                ..
            }) => {
                self.open_conversation(host, &peer).await?;
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        let Some(open) = self.open.as_mut() else {
            return Ok(0);
        };
        let n = older.len();
        open.more = more && n > 0;
        open.messages.splice(0..0, older);
        if let Some(s) = open.selected.as_mut() {
            *s += n;
        }
        Ok(n)
    }

    /// Moves the message selection by `delta` (negative: older), reading older pages as the
    /// top is passed.
    pub async fn move_selection(
        &mut self,
        host: &HostClient,
        delta: isize,
    ) -> Result<(), CtlError> {
        let Some(open) = self.open.as_ref() else {
            return Ok(());
        };
        let current = open
            .selected
            .unwrap_or(open.messages.len().saturating_sub(1)) as isize;
        let mut target = current + delta;
        if target < 0 && open.more {
            let n = self.page_back(host).await? as isize;
            target += n;
        }
        if let Some(open) = self.open.as_mut() {
            let last = open.messages.len().saturating_sub(1);
            // Down past the newest follows the newest again.
            if open.messages.is_empty() || (target >= last as isize && delta > 0) {
                open.selected = None;
            } else {
                open.selected = Some(target.clamp(0, last as isize) as usize);
            }
        }
        Ok(())
    }

    /// Sends what was written to the open conversation.
    pub async fn send(&mut self, host: &HostClient) -> Result<(), CtlError> {
        let Some(peer) = self.open_peer().cloned() else {
            return Err(CtlError::Local(
                "open a conversation first (Enter on the list, or n for a new one)".into(),
            ));
        };
        let body = self.compose.text.trim_end_matches('\n').to_string();
        if body.trim().is_empty() {
            return Ok(());
        }
        if body.len() > MAX_TEXT_BYTES {
            return Err(CtlError::Local(format!(
                "the message is {} bytes; at most {MAX_TEXT_BYTES} can be sent",
                body.len()
            )));
        }
        if self.contact(&peer).is_some_and(|c| c.key_changed) {
            return Err(CtlError::Refused {
                code: Some(ErrorCode::KeyChanged),
                message: format!(
                    "{peer}'s key changed: compare the safety number (v) and accept the new key \
                     there before sending"
                ),
            });
        }
        let id = host.send(&peer, &body).await?;
        self.compose.clear();
        self.add_message(host, &peer, &id, false).await
    }

    /// Fetches message `id` of the conversation with `peer` into the open conversation (if it
    /// is the one open and the message is not shown yet).
    async fn add_message(
        &mut self,
        host: &HostClient,
        peer: &Username,
        id: &MessageId,
        received: bool,
    ) -> Result<(), CtlError> {
        let known = self.open.as_ref().is_some_and(|o| {
            &o.peer == peer && o.messages.iter().rev().take(256).any(|m| &m.id == id)
        });
        if known || self.open_peer() != Some(peer) {
            return Ok(());
        }
        let message = match host.message(peer, id).await {
            Ok(m) => m,
            // Deleted (or expired) before we asked: nothing to show.
            Err(CtlError::Refused {
                code: Some(ErrorCode::NotFound),
                ..
            }) => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Some(open) = self.open.as_mut() {
            // In the order the host stored them, which is the order it pages by: the time is
            // the sender's word, shown but never sorted on.
            open.messages.push(message);
        }
        if received {
            self.mark_read(host, true).await?;
        }
        Ok(())
    }

    /// A message was written or arrived: the list moves the conversation up.
    fn count_message(&mut self, peer: &Username, time: i64, received: bool) {
        let open = self.open_peer() == Some(peer);
        match self.conversations.iter_mut().find(|c| &c.peer == peer) {
            Some(c) => {
                c.messages += 1;
                c.last_time = c.last_time.max(time);
                if received && !open {
                    c.unread += 1;
                }
            }
            None => self.conversations.push(ConversationView {
                peer: peer.clone(),
                messages: 1,
                unread: u32::from(received && !open),
                last_time: time,
                expire_seconds: 0,
            }),
        }
        let keep = self.selected_peer().cloned();
        self.sort();
        self.select_peer(keep.as_ref());
    }

    /// Applies one event of the host's stream.
    pub async fn apply(&mut self, host: &HostClient, event: EventView) -> Result<(), CtlError> {
        match event {
            EventView::MessageReceived { id, peer, time } => {
                self.count_message(&peer, time, true);
                if !self.contacts.contains_key(&peer) {
                    self.refresh_contacts(host).await?;
                }
                self.add_message(host, &peer, &id, true).await?;
            }
            EventView::MessageSent { id, peer, time } => {
                self.count_message(&peer, time, false);
                self.add_message(host, &peer, &id, false).await?;
            }
            EventView::MessageStatus { id, peer, status } => {
                self.update_message(host, &peer, &id, Some(status)).await?;
            }
            EventView::IntegrityProblem { id, peer, .. } => {
                // The mark is on the stored message: read it again (or for the first time).
                self.update_message(host, &peer, &id, None).await?;
                self.add_message(host, &peer, &id, false).await?;
            }
            EventView::KeyChanged { peer } => {
                self.refresh_contacts(host).await?;
                if let Some(c) = self.contacts.get_mut(&peer) {
                    c.key_changed = true;
                }
                // Numbers on screen for the old key are no longer the ones to compare.
                if matches!(&self.overlay, Some(Overlay::Verify(v)) if v.user == peer) {
                    self.overlay = None;
                    self.warn(format!(
                        "{peer}'s key changed again: v shows the new numbers"
                    ));
                }
            }
            EventView::Deleted { id, peer, .. } => self.deleted(&peer, id.as_ref()),
            EventView::Read { peer } => {
                if let Some(c) = self.conversations.iter_mut().find(|c| c.peer == peer) {
                    c.unread = 0;
                }
            }
            EventView::CallIncoming(call) => {
                if !self.ringing.iter().any(|c| c.id == call.id) {
                    self.ringing.push(call);
                }
            }
            EventView::CallState(call) => {
                if call.state != CallState::Ringing {
                    // Answered (here or on another device), declined or over: no longer rings.
                    self.ringing.retain(|c| c.id != call.id);
                }
                if let Some(ours) = self.call.as_mut() {
                    if ours.id == Some(call.id) && call.state == CallState::Ended {
                        let reason = crate::output::call_end_text(call.peer.as_str(), &call.reason);
                        self.call = None;
                        self.say(reason);
                    }
                }
            }
            EventView::DirectoryAlarm { peer } => {
                self.warn(format!(
                    "warning: the directories disagree about {peer}'s key, or one served an \
                     older record than before; press v on {peer}'s chat to see which"
                ));
            }
            EventView::DeviceLinked { name } => {
                self.say(format!("a device was linked: {}", name));
            }
            EventView::DeviceRevoked { name } => {
                self.say(format!("a device was revoked: {}", name));
            }
            EventView::Resync => {
                self.reload(host).await?;
                self.say("caught up with the host (its log had moved on)");
            }
        }
        Ok(())
    }

    async fn refresh_contacts(&mut self, host: &HostClient) -> Result<(), CtlError> {
        self.contacts = host
            .contacts()
            .await?
            .into_iter()
            .map(|c| (c.username.clone(), c))
            .collect();
        Ok(())
    }

    /// A status change: applied in place; a failure is read again for its reason.
    async fn update_message(
        &mut self,
        host: &HostClient,
        peer: &Username,
        id: &MessageId,
        status: Option<MessageStatus>,
    ) -> Result<(), CtlError> {
        let Some(open) = self.open.as_mut().filter(|o| &o.peer == peer) else {
            return Ok(());
        };
        let Some(m) = open.messages.iter_mut().rev().find(|m| &m.id == id) else {
            return Ok(());
        };
        match status {
            Some(status) if status != MessageStatus::Failed => m.status = status,
            _ => match host.message(peer, id).await {
                Ok(fresh) => *m = fresh,
                Err(CtlError::Refused {
                    code: Some(ErrorCode::NotFound),
                    ..
                }) => {}
                Err(e) => return Err(e),
            },
        }
        Ok(())
    }

    fn deleted(&mut self, peer: &Username, id: Option<&MessageId>) {
        match id {
            Some(id) => {
                let is_open = self.open_peer() == Some(peer);
                let mut found = false;
                if let Some(open) = self.open.as_mut().filter(|o| &o.peer == peer) {
                    if let Some(i) = open.messages.iter().position(|m| &m.id == id) {
                        found = true;
                        open.messages.remove(i);
                        // The chosen message stays chosen. If it was the one deleted, the one
                        // before it is; with none before, nothing is (the newest is followed):
                        // never silently the next one, which a second `x` would delete.
                        open.selected = match open.selected {
                            _ if open.messages.is_empty() => None,
                            Some(s) if s > i => Some(s - 1),
                            Some(0) if i == 0 => None,
                            Some(s) if s == i => Some(s - 1),
                            other => other,
                        };
                    }
                }
                // Counted once: this device's own delete and the host's event of it both come
                // here, and only the first finds the message.
                if found || !is_open {
                    if let Some(c) = self.conversations.iter_mut().find(|c| &c.peer == peer) {
                        c.messages = c.messages.saturating_sub(1);
                    }
                }
            }
            None => {
                self.conversations.retain(|c| &c.peer != peer);
                if self.open_peer() == Some(peer) {
                    self.open = None;
                    if self.focus != Focus::List {
                        self.focus = Focus::List;
                    }
                }
                self.select_peer(None);
            }
        }
    }

    /// The disappearing-message timer of the conversation with `peer` (0: off).
    pub fn expire_seconds(&self, peer: &Username) -> u32 {
        self.conversations
            .iter()
            .find(|c| &c.peer == peer)
            .map_or(0, |c| c.expire_seconds)
    }

    pub fn set_expire_seconds(&mut self, peer: &Username, seconds: u32) {
        if let Some(c) = self.conversations.iter_mut().find(|c| &c.peer == peer) {
            c.expire_seconds = seconds;
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A duration as the disappearing-message prompt takes it: `30s`, `5m`, `1h`, `1d`, `1w`, a
/// bare number of seconds, or `off`/`0`.
pub fn parse_duration(text: &str) -> Option<u32> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("off") {
        return Some(0);
    }
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u32 = number.parse().ok()?;
    let scale = match unit.trim() {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return None,
    };
    n.checked_mul(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("30"), Some(30));
        assert_eq!(parse_duration("5m"), Some(300));
        assert_eq!(parse_duration("1d"), Some(86_400));
        assert_eq!(parse_duration("2w"), Some(1_209_600));
        assert_eq!(parse_duration("off"), Some(0));
        assert_eq!(parse_duration("0"), Some(0));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5y"), None);
        assert_eq!(parse_duration("99999999w"), None);
    }

    #[test]
    fn the_compose_line_edits_at_its_cursor() {
        let mut c = Compose::default();
        for ch in "hé日".chars() {
            c.insert(ch);
        }
        c.left();
        c.backspace();
        assert_eq!(c.text, "h日");
        c.home();
        c.insert('>');
        c.end();
        c.insert('\n');
        c.insert('x');
        c.home();
        assert_eq!(c.cursor, ">h日\n".len());
        c.delete();
        assert_eq!(c.text, ">h日\n");
        assert_eq!(c.over_limit(), 0);
        c.text = "x".repeat(MAX_TEXT_BYTES + 5);
        assert_eq!(c.over_limit(), 5);
    }
}
