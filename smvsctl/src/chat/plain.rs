//! `smvsctl chat --plain`: the chat as lines, for screen readers and pipes. No drawing, no
//! cursor movement: every message, status change and call is one line on stdout, and each
//! line read from stdin is sent to the open conversation (or is a `/command`).
//!
//! ```text
//!  * chat with bob; /help lists the commands
//!  [09:14] bob: see you at eight
//!  [09:15] me: fine (delivered)
//!  * your message of 09:16 to bob: delivered
//! ```

use std::future::Future;
use std::io::Write;
use std::rc::Rc;

use smvs_schema::{Username, MAX_TEXT_BYTES};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

use super::text;
use super::view::local_time;
use crate::client::{EventView, HostClient, KeyChoice, MessageStatus, MessageView, EVENT_QUEUE};
use crate::error::{CtlError, ErrorCode};

/// Messages shown when a conversation is opened.
const SHOWN_ON_OPEN: u32 = 20;

const HELP: &str = "\
* /open USER    chat with USER (the last messages are shown)
* /list         conversations, with unread counts
* /history N    the last N messages of this chat
* /verify       the safety number with this contact
* /accept       accept this contact's new key (after /verify showed its number)
* /quit         leave (so does the end of input)
* Any other line is sent to the open chat; start it with // to send a line beginning with /.";

struct Plain<'a> {
    host: &'a HostClient,
    me: String,
    peer: Option<Username>,
    /// Whose safety number `/verify` printed last: `/accept` accepts only that contact's key.
    verified: Option<Username>,
    out: std::io::Stdout,
}

pub async fn run(
    host: &Rc<HostClient>,
    user: Option<&Username>,
    stop: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    let me = super::registered_user(host).await?;
    let (tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let _subscription = host.subscribe(tx).await?;
    let mut chat = Plain {
        host,
        me,
        peer: None,
        verified: None,
        out: std::io::stdout(),
    };
    match user {
        Some(user) => chat.open(user).await?,
        None => chat.line("* no chat open: /open USER, or /list; /help lists the commands")?,
    }
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            reason = host.closed() => return Err(CtlError::Disconnected(reason)),
            line = lines.next_line() => {
                let line = line.map_err(|source| CtlError::Io { what: "cannot read stdin", source })?;
                let Some(line) = line else { return Ok(()) };
                match chat.input(&line).await {
                    Ok(true) => {}
                    Ok(false) => return Ok(()),
                    Err(e) => chat.line(&format!("* error: {}", text::visible(&e.to_string())))?,
                }
            }
            event = events.recv() => match event {
                Some(Ok(event)) => {
                    if let Err(e) = chat.event(event).await {
                        chat.line(&format!("* error: {}", text::visible(&e.to_string())))?;
                    }
                }
                Some(Err(e)) => return Err(e),
                None => return Err(CtlError::Disconnected("smvsd ended the event stream".into())),
            },
        }
    }
}

impl Plain<'_> {
    fn line(&mut self, text: &str) -> Result<(), CtlError> {
        writeln!(self.out, "{text}").map_err(CtlError::output)?;
        self.out.flush().map_err(CtlError::output)
    }

    /// A message as lines: `[HH:MM] who: text`, continuation lines indented.
    fn message(&mut self, m: &MessageView) -> Result<(), CtlError> {
        let ours = m.from.as_str() == self.me;
        let who = if ours {
            "me".to_string()
        } else {
            m.from.to_string()
        };
        let mut text_lines = m.body.split('\n').map(text::visible);
        let first = text_lines.next().unwrap_or_default();
        let status = match (ours, m.status) {
            (true, MessageStatus::Failed) if !m.reason.is_empty() => format!(
                " (failed: {})",
                crate::output::failure_text(m).unwrap_or_default()
            ),
            (true, status) => format!(" ({})", status.as_str()),
            (false, _) => String::new(),
        };
        let integrity = crate::chat::view::integrity_mark(m)
            .map(|mark| format!(" [{mark}]"))
            .unwrap_or_default();
        let rest: Vec<String> = text_lines.collect();
        let (first_status, last_status) = if rest.is_empty() {
            (status.as_str(), "")
        } else {
            ("", status.as_str())
        };
        self.line(&format!(
            "[{}] {who}: {first}{first_status}{integrity}",
            local_time(m.time)
        ))?;
        let n = rest.len();
        for (i, line) in rest.into_iter().enumerate() {
            let end = if i + 1 == n { last_status } else { "" };
            self.line(&format!("    {line}{end}"))?;
        }
        Ok(())
    }

    async fn open(&mut self, user: &Username) -> Result<(), CtlError> {
        let (messages, more) = self.host.history_page(user, SHOWN_ON_OPEN, None).await?;
        self.peer = Some(user.clone());
        self.line(&format!(
            "* chat with {user}{}; /help lists the commands",
            if more {
                " (older messages: /history N)"
            } else {
                ""
            }
        ))?;
        if self
            .host
            .contacts()
            .await?
            .iter()
            .any(|c| &c.username == user && c.key_changed)
        {
            self.key_warning(user)?;
        }
        for m in &messages {
            self.message(m)?;
        }
        self.host.mark_read(user).await?;
        Ok(())
    }

    fn key_warning(&mut self, user: &Username) -> Result<(), CtlError> {
        self.line(&format!(
            "* WARNING: {user}'s identity key changed. Sending is refused until you compare the \
             safety number (/verify) and accept it (/accept)."
        ))
    }

    /// One line of input; false to stop.
    async fn input(&mut self, line: &str) -> Result<bool, CtlError> {
        let mut words = line.split_whitespace();
        if !line.starts_with("//") && line.starts_with('/') {
            match words.next().unwrap_or_default() {
                "/quit" | "/q" => return Ok(false),
                "/help" => self.line(HELP)?,
                "/open" => {
                    let user = words.next().unwrap_or_default();
                    let user = Username::parse_local(user)
                        .map_err(|e| CtlError::Local(format!("not a username: {e}")))?;
                    self.open(&user).await?;
                }
                "/list" => {
                    let conversations = self.host.conversations().await?;
                    if conversations.is_empty() {
                        self.line("* no chats yet")?;
                    }
                    for c in conversations {
                        self.line(&format!(
                            "* {}: {} messages, {} unread",
                            c.peer, c.messages, c.unread
                        ))?;
                    }
                }
                "/history" => {
                    let peer = self.open_peer()?;
                    let n = words.next().and_then(|n| n.parse().ok()).unwrap_or(20);
                    let (messages, _) = self.host.history_page(&peer, n, None).await?;
                    for m in &messages {
                        self.message(m)?;
                    }
                }
                "/verify" => {
                    let peer = self.open_peer()?;
                    let v = self.host.verify(&peer, KeyChoice::Look).await?;
                    self.line(&format!(
                        "* safety number with {peer}: {}",
                        crate::output::safety_number_rows(&v.safety_number).join("  ")
                    ))?;
                    self.line(&format!(
                        "* transcript hash: {}",
                        text::visible(&v.transcript_hash)
                    ))?;
                    if v.key_changed {
                        self.line("* the key changed: if the numbers match theirs, /accept")?;
                    }
                    self.verified = Some(peer);
                }
                "/accept" => {
                    let peer = self.open_peer()?;
                    if self.verified.as_ref() != Some(&peer) {
                        return Err(CtlError::Local(format!(
                            "/verify first: compare {peer}'s safety number, then /accept"
                        )));
                    }
                    let v = self.host.verify(&peer, KeyChoice::Accept).await?;
                    if v.accepted {
                        self.line(&format!("* {peer}'s new key is accepted"))?;
                    } else {
                        self.line(&format!("* {peer}'s key had not changed"))?;
                    }
                }
                other => self.line(&format!(
                    "* unknown command {}; /help lists them",
                    text::visible(other)
                ))?,
            }
            return Ok(true);
        }
        let body = line.strip_prefix('/').unwrap_or(line);
        if body.trim().is_empty() {
            return Ok(true);
        }
        if body.len() > MAX_TEXT_BYTES {
            return Err(CtlError::Local(format!(
                "the line is {} bytes; at most {MAX_TEXT_BYTES} can be sent",
                body.len()
            )));
        }
        let peer = self.open_peer()?;
        self.host.send(&peer, body).await?;
        Ok(true)
    }

    fn open_peer(&self) -> Result<Username, CtlError> {
        self.peer
            .clone()
            .ok_or_else(|| CtlError::Local("no chat is open: /open USER".into()))
    }

    async fn fetch(
        &mut self,
        peer: &Username,
        id: &crate::client::MessageId,
    ) -> Result<(), CtlError> {
        match self.host.message(peer, id).await {
            Ok(m) => self.message(&m),
            Err(CtlError::Refused {
                code: Some(ErrorCode::NotFound),
                ..
            }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn event(&mut self, event: EventView) -> Result<(), CtlError> {
        let open = self.peer.clone();
        let is_open = |peer: &Username| open.as_ref() == Some(peer);
        match event {
            EventView::MessageReceived { id, peer, .. } if is_open(&peer) => {
                self.fetch(&peer, &id).await?;
                self.host.mark_read(&peer).await?;
            }
            EventView::MessageReceived { peer, .. } => {
                self.line(&format!("* new message from {peer} (/open {peer})"))?;
            }
            EventView::MessageSent { id, peer, .. } if is_open(&peer) => {
                self.fetch(&peer, &id).await?;
            }
            EventView::MessageSent { .. } => {}
            EventView::MessageStatus { id, peer, status } if is_open(&peer) => {
                let when = match self.host.message(&peer, &id).await {
                    Ok(m) => format!(" of {}", local_time(m.time)),
                    Err(_) => String::new(),
                };
                self.line(&format!(
                    "* your message{when} to {peer}: {}",
                    status.as_str()
                ))?;
            }
            EventView::MessageStatus { .. } => {}
            EventView::KeyChanged { peer } => {
                if self.verified.as_ref() == Some(&peer) {
                    self.verified = None;
                }
                self.key_warning(&peer)?
            }
            EventView::IntegrityProblem { peer, .. } => {
                self.line(&format!(
                    "* {peer}: a message arrived out of order, or one before it is missing"
                ))?;
            }
            EventView::Deleted { id: None, peer, .. } => {
                self.line(&format!("* the chat with {peer} was deleted"))?;
            }
            EventView::Deleted {
                id: Some(_), peer, ..
            } => {
                self.line(&format!("* a message with {peer} was deleted"))?;
            }
            EventView::CallIncoming(call) => {
                self.line(&format!(
                    "* {} is calling ({}): answer with smvsctl answer, or smvsctl hangup",
                    call.peer,
                    if call.video { "video" } else { "audio" }
                ))?;
            }
            EventView::CallState(call) => {
                self.line(&format!(
                    "* call with {}: {}{}",
                    call.peer,
                    call.state.as_str(),
                    if call.reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", text::visible(&call.reason))
                    }
                ))?;
            }
            EventView::DirectoryAlarm { peer } => {
                self.line(&format!(
                    "* WARNING: the directories disagree about {peer}'s key, or one served an older record (/verify)"
                ))?;
            }
            EventView::Read { .. }
            | EventView::DeviceLinked { .. }
            | EventView::DeviceRevoked { .. } => {}
            EventView::Resync => self.line("* caught up with the host")?,
        }
        Ok(())
    }
}
