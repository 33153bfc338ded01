//! The full-screen chat: the terminal in raw mode on its alternate screen, one loop that waits
//! for a key, a host event, a call update or the second's tick, applies it and draws again.

use std::future::Future;
use std::io::IsTerminal;
use std::rc::Rc;
use std::time::Duration;

use crossterm::event::{Event, EventStream, KeyEvent};
use futures::StreamExt;
use smvs_schema::Username;
use tokio::sync::mpsc;

use super::app::{parse_duration, App, Confirm, Focus, Overlay, Prompt};
use super::calls::Calls;
use super::keys::{action, Action};
use super::view;
use crate::call::CallCommand;
use crate::cli::MediaArgs;
use crate::client::{HostClient, KeyChoice, EVENT_QUEUE};
use crate::error::CtlError;

/// The terminal, given back as it was found when this is dropped (also on an error, and while
/// a panic of the chat's own task unwinds). Set up by hand rather than with `ratatui::init`,
/// whose panic hook would give the terminal back on a panic of *any* thread or task (a call's
/// media, say) while the chat goes on drawing.
///
/// While the screen is up, stderr goes to an unnamed temporary file (else /dev/null): what
/// libraries print there (GStreamer and ALSA warnings when a call starts) would be drawn over
/// the chat and stay there. When the screen is given back, the last of what was written there
/// is printed on the real stderr, after the screen.
struct Screen {
    terminal: ratatui::Terminal<ratatui::backend::CrosstermBackend<std::io::Stdout>>,
    stderr: Option<HeldStderr>,
}

/// The real stderr, and the file standing in for it (None: /dev/null).
struct HeldStderr {
    real: std::os::fd::OwnedFd,
    file: Option<std::fs::File>,
}

impl Screen {
    fn start() -> Result<Screen, CtlError> {
        let io = |what| move |source| CtlError::Io { what, source };
        crossterm::terminal::enable_raw_mode().map_err(io("cannot set up the terminal"))?;
        // From here on, dropping the screen gives everything back.
        let mut screen = Screen {
            terminal: ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(
                std::io::stdout(),
            ))
            .map_err(io("cannot set up the terminal"))?,
            stderr: None,
        };
        // A paste arrives as one piece, newlines and all, not as keys (Enter would send).
        crossterm::execute!(
            std::io::stdout(),
            crossterm::terminal::EnterAlternateScreen,
            crossterm::event::EnableBracketedPaste
        )
        .map_err(io("cannot set up the terminal"))?;
        screen.stderr = quiet_stderr();
        screen.clear()?;
        Ok(screen)
    }

    fn clear(&mut self) -> Result<(), CtlError> {
        self.terminal.clear().map_err(|source| CtlError::Io {
            what: "cannot draw on the terminal",
            source,
        })
    }

    fn draw(&mut self, app: &App) -> Result<(), CtlError> {
        self.terminal
            .draw(|frame| view::draw(frame, app))
            .map(|_| ())
            .map_err(|source| CtlError::Io {
                what: "cannot draw on the terminal",
                source,
            })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let _ = crossterm::execute!(
            std::io::stdout(),
            crossterm::event::DisableBracketedPaste,
            crossterm::terminal::LeaveAlternateScreen,
            crossterm::cursor::Show
        );
        let _ = crossterm::terminal::disable_raw_mode();
        restore_stderr(self.stderr.take());
    }
}

/// What stands in for stderr is emptied when it passes this (a long call with GStreamer's
/// debug output on would fill a tmpfs).
const STDERR_KEPT: u64 = 1024 * 1024;

impl Screen {
    /// Keeps the stand-in for stderr small.
    fn trim_stderr(&self) {
        if let Some(file) = self.stderr.as_ref().and_then(|h| h.file.as_ref()) {
            if file.metadata().is_ok_and(|m| m.len() > STDERR_KEPT) {
                let _ = file.set_len(0);
            }
        }
    }
}

/// Points stderr at an unnamed temporary file (no name on disk, gone when closed), or at
/// /dev/null where the temporary directory cannot hold one; returns the real one to put back.
fn quiet_stderr() -> Option<HeldStderr> {
    use std::os::fd::AsFd;
    use std::os::unix::fs::OpenOptionsExt;
    // Appended to, so that emptying it (see `trim_stderr`) starts it over.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_TMPFILE)
        .open(std::env::temp_dir())
        .ok();
    let stand_in = match &file {
        Some(file) => file.try_clone().ok()?,
        None => std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .ok()?,
    };
    // A copy closed on exec: no child (the GStreamer plugin scanner) inherits the terminal.
    let real = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    nix::unistd::dup2_stderr(&stand_in).ok()?;
    Some(HeldStderr { real, file })
}

/// Puts the real stderr back and prints on it the last 16 KiB of what was written meanwhile.
fn restore_stderr(held: Option<HeldStderr>) {
    use std::io::{Read, Seek, SeekFrom, Write};
    const KEPT: u64 = 16 * 1024;
    let Some(HeldStderr { real, file }) = held else {
        return;
    };
    if nix::unistd::dup2_stderr(real).is_err() {
        return;
    }
    let Some(mut file) = file else {
        return;
    };
    let len = file.seek(SeekFrom::End(0)).unwrap_or(0);
    if len == 0
        || file
            .seek(SeekFrom::Start(len.saturating_sub(KEPT)))
            .is_err()
    {
        return;
    }
    let mut text = Vec::new();
    let _ = file.read_to_end(&mut text);
    let _ = std::io::stderr().write_all(&text);
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Go,
    Redraw,
    Quit,
}

/// What ended a stretch of the chat's loop.
enum Stop {
    /// The user quit, or a signal came: the chat ends with this.
    End(Result<(), CtlError>),
    /// The connection to the host broke: the chat tries again.
    Lost(String),
}

pub async fn run(
    host: Rc<HostClient>,
    reach: &super::Reach,
    user: Option<&Username>,
    media: &MediaArgs,
    stop: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        return Err(CtlError::Local(
            "smvsctl chat draws on a terminal; under a pipe or for a screen reader use \
             smvsctl chat --plain"
                .into(),
        ));
    }
    let mut host = host;
    let me = super::registered_user(&host).await?;
    // Subscribed before the state is read, so nothing that happens in between is missed.
    let (tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let mut subscription = host.subscribe(tx).await?;
    let mut app = App::new(me, super::colour_allowed());
    app.reload(&host).await?;
    if let Some(user) = user {
        app.open_conversation(&host, user).await?;
        app.focus = Focus::Compose;
    }
    let mut calls = Calls::new(media.clone());
    let mut screen = Screen::start()?;
    let mut keys = EventStream::new();
    tokio::pin!(stop);
    // Kept across connections, and started over only once one has lasted: a host that takes
    // a connection and drops it at once is not tried every second.
    let mut backoff = crate::agent::Backoff::new();
    let result = loop {
        let began = std::time::Instant::now();
        let lost = match session(
            &mut app,
            &host,
            &mut events,
            &mut calls,
            &mut screen,
            &mut keys,
            &mut stop,
        )
        .await
        {
            Stop::End(result) => break result,
            Stop::Lost(reason) => reason,
        };
        // Whatever still uses the old connection (a call) ends with it.
        host.disconnect();
        if began.elapsed() >= STEADY {
            backoff.reset();
        }
        // The link broke (the host restarted, the laptop slept, the network changed): try
        // again, waiting 1 s doubling to 30 s; the quit keys and signals still end the chat.
        let mut why = lost;
        let connected = loop {
            let wait = backoff.next_wait();
            app.warn(format!(
                "the host is unreachable ({why}); trying again in {} s · Ctrl-C quits",
                wait.as_secs_f64().ceil()
            ));
            if let Err(e) = screen.draw(&app) {
                return finish(calls, screen, Err(e)).await;
            }
            let pause = tokio::time::sleep(wait);
            tokio::pin!(pause);
            if let Some(end) = outage(&app, &mut screen, &mut keys, &mut stop, &mut pause).await {
                return finish(calls, screen, end).await;
            }
            app.say("connecting to the host…");
            if let Err(e) = screen.draw(&app) {
                return finish(calls, screen, Err(e)).await;
            }
            // Connecting, subscribing and reading the state again, within a limit, while the
            // quit keys and signals still end the chat.
            let attempt = tokio::time::timeout(CONNECT_LIMIT, reconnect(reach));
            tokio::pin!(attempt);
            let mut never = std::future::pending::<()>();
            let attempted = tokio::select! {
                attempted = &mut attempt => attempted,
                end = outage(&app, &mut screen, &mut keys, &mut stop, &mut never) => {
                    return finish(calls, screen, end.unwrap_or(Ok(()))).await;
                }
            };
            match attempted {
                Ok(Ok(again)) => break again,
                Ok(Err(e)) => why = e.to_string(),
                Err(_) => why = format!("no answer within {} s", CONNECT_LIMIT.as_secs()),
            }
        };
        host = connected.0;
        events = connected.1;
        subscription = connected.2;
        match within(app.reload(&host)).await {
            Ok(()) => app.say("connected to the host again"),
            Err(e) => app.fail(&e),
        }
    };
    drop(subscription);
    finish(calls, screen, result).await
}

/// A connection that lasted this long starts the backoff over when it is lost.
const STEADY: Duration = Duration::from_secs(60);
/// How long connecting (with the subscription) may take before it counts as failed.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);
/// How long one request to the host may take before the link counts as lost (a link that
/// died without a word answers nothing, and TCP takes many minutes to say so).
const REQUEST_LIMIT: Duration = Duration::from_secs(20);

/// `request`, or the link counted as lost when it takes longer than [`REQUEST_LIMIT`].
async fn within<T>(request: impl Future<Output = Result<T, CtlError>>) -> Result<T, CtlError> {
    tokio::time::timeout(REQUEST_LIMIT, request)
        .await
        .unwrap_or_else(|_| {
            Err(CtlError::Disconnected(format!(
                "the host did not answer for {} s",
                REQUEST_LIMIT.as_secs()
            )))
        })
}

/// Waits out `pause` while the host is away: keys still quit (Ctrl-C, or q outside the
/// compose box) and a signal still ends the chat; other keys are not acted on. Some(end) when
/// the chat is to end.
async fn outage(
    app: &App,
    screen: &mut Screen,
    keys: &mut EventStream,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    pause: &mut (impl Future<Output = ()> + Unpin),
) -> Option<Result<(), CtlError>> {
    loop {
        tokio::select! {
            _ = stop.as_mut() => return Some(Ok(())),
            _ = &mut *pause => return None,
            key = keys.next() => match key {
                Some(Ok(Event::Key(key)))
                    if action(key, app.focus, app.overlay.as_ref()) == Action::Quit => {
                    return Some(Ok(()));
                }
                Some(Ok(_)) => {
                    if let Err(e) = screen.draw(app) {
                        return Some(Err(e));
                    }
                }
                Some(Err(source)) => {
                    return Some(Err(CtlError::Io { what: "cannot read the terminal", source }))
                }
                None => return Some(Ok(())),
            },
        }
    }
}

type Connected = (
    Rc<HostClient>,
    mpsc::Receiver<Result<crate::client::EventView, CtlError>>,
    crate::client::Subscription,
);

/// A new connection to the host, subscribed.
async fn reconnect(reach: &super::Reach) -> Result<Connected, CtlError> {
    let host = Rc::new(reach.connect().await?);
    let (tx, events) = mpsc::channel(EVENT_QUEUE);
    let subscription = host.subscribe(tx).await?;
    Ok((host, events, subscription))
}

/// Hangs up a call still running, and gives the terminal back.
async fn finish(
    mut calls: Calls,
    screen: Screen,
    result: Result<(), CtlError>,
) -> Result<(), CtlError> {
    if calls.busy() {
        // Hang up on the way out; give the task a moment to tell the host.
        calls.command(CallCommand::Hangup);
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while !matches!(
                calls.next_update().await,
                super::calls::CallUpdate::Ended(_)
            ) {}
        })
        .await;
    }
    drop(screen);
    result
}

/// How often a quiet link to the host is checked (it has [`REQUEST_LIMIT`] to answer): a link
/// that died without a word (a laptop that slept) is noticed within a minute.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// The chat on one connection: until the user quits (or a signal), or the connection is lost.
#[allow(clippy::too_many_arguments)]
async fn session(
    app: &mut App,
    host: &Rc<HostClient>,
    events: &mut mpsc::Receiver<Result<crate::client::EventView, CtlError>>,
    calls: &mut Calls,
    screen: &mut Screen,
    keys: &mut EventStream,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Stop {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut heartbeat =
        tokio::time::interval_at(tokio::time::Instant::now() + HEARTBEAT, HEARTBEAT);
    loop {
        if let Err(e) = screen.draw(app) {
            return Stop::End(Err(e));
        }
        // A chat just opened is on the screen: now it is marked read (and drawn again).
        match within(app.mark_read_pending(host)).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(CtlError::Disconnected(reason)) => return Stop::Lost(reason),
            Err(e) => app.fail(&e),
        }
        tokio::select! {
            _ = stop.as_mut() => return Stop::End(Ok(())),
            reason = host.closed() => return Stop::Lost(reason),
            key = keys.next() => match key {
                Some(Ok(Event::Key(key))) => {
                    match within(handle_key(app, host, calls, key)).await {
                        Ok(Flow::Quit) => return Stop::End(Ok(())),
                        Ok(Flow::Redraw) => {
                            if let Err(e) = screen.clear() {
                                return Stop::End(Err(e));
                            }
                        }
                        Ok(Flow::Go) => {}
                        Err(CtlError::Disconnected(reason)) => return Stop::Lost(reason),
                        Err(e) => app.fail(&e),
                    }
                }
                Some(Ok(Event::Paste(text))) => paste(app, &text),
                // A resize (or anything else) only needs drawing again.
                Some(Ok(_)) => {}
                Some(Err(source)) => {
                    return Stop::End(Err(CtlError::Io { what: "cannot read the terminal", source }))
                }
                None => return Stop::End(Ok(())),
            },
            event = events.recv() => match event {
                Some(Ok(event)) => match within(app.apply(host, event)).await {
                    Ok(()) => {}
                    Err(CtlError::Disconnected(reason)) => return Stop::Lost(reason),
                    Err(e) => app.fail(&e),
                },
                Some(Err(CtlError::Disconnected(reason))) => return Stop::Lost(reason),
                Some(Err(e)) => app.fail(&e),
                None => return Stop::Lost("smvsd ended the event stream".into()),
            },
            update = calls.next_update() => calls.apply(app, update),
            _ = tick.tick() => {
                calls.refresh(app);
                screen.trim_stderr();
                match within(app.refresh_list(host)).await {
                    Ok(()) => {}
                    Err(CtlError::Disconnected(reason)) => return Stop::Lost(reason),
                    Err(e) => app.fail(&e),
                }
            }
            _ = heartbeat.tick() => {
                match within(host.status()).await {
                    Ok(_) => {}
                    Err(CtlError::Disconnected(reason)) => return Stop::Lost(reason),
                    // A refusal is an answer: the link is alive.
                    Err(e) => app.fail(&e),
                }
            }
        }
    }
}

/// The longest prompt answer (a username, a duration), in bytes.
const PROMPT_MAX: usize = 64;

/// The longest compose text kept: a paste beyond it is cut (the host takes 64 KiB).
const COMPOSE_MAX: usize = 4 * smvs_schema::MAX_TEXT_BYTES;

/// A paste goes into the prompt or the compose box as one piece.
fn paste(app: &mut App, text: &str) {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    match app.overlay.as_mut() {
        Some(Overlay::Prompt(_, input)) => {
            for c in text.chars().filter(|c| !c.is_control()) {
                if input.len() + c.len_utf8() > PROMPT_MAX {
                    break;
                }
                input.push(c);
            }
        }
        Some(_) => {}
        None if app.open.is_none() => app.say("open a chat before pasting into it"),
        None => {
            let room = COMPOSE_MAX.saturating_sub(app.compose.text.len());
            let mut cut = room.min(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            app.compose.insert_str(&text[..cut]);
            app.focus = Focus::Compose;
            if cut < text.len() {
                app.say(format!(
                    "the paste was cut at {} KiB (a message holds {} KiB)",
                    COMPOSE_MAX / 1024,
                    smvs_schema::MAX_TEXT_BYTES / 1024
                ));
            }
        }
    }
}

/// The peer a key is about: the open conversation, else the one chosen in the list.
fn target(app: &App) -> Option<Username> {
    match app.focus {
        Focus::List => app.selected_peer().cloned(),
        _ => app.open_peer().cloned(),
    }
}

async fn handle_key(
    app: &mut App,
    host: &Rc<HostClient>,
    calls: &mut Calls,
    key: KeyEvent,
) -> Result<Flow, CtlError> {
    let action = action(key, app.focus, app.overlay.as_ref());
    if action != Action::Nothing {
        app.notice = None;
    }
    match action {
        Action::Nothing => {}
        Action::Quit => return Ok(Flow::Quit),
        Action::Redraw => return Ok(Flow::Redraw),
        Action::Help => app.overlay = Some(Overlay::Help),
        Action::Close => {
            if app.overlay.take().is_none() && app.focus == Focus::Messages {
                app.focus = Focus::List;
            }
        }
        Action::Up | Action::Down | Action::PageUp | Action::PageDown => {
            let step: isize = match action {
                Action::Up => -1,
                Action::Down => 1,
                Action::PageUp => -10,
                _ => 10,
            };
            match app.focus {
                Focus::List => {
                    let last = app.conversations.len().saturating_sub(1) as isize;
                    app.selected = (app.selected as isize + step).clamp(0, last) as usize;
                }
                _ => app.move_selection(host, step).await?,
            }
        }
        Action::Oldest => {
            if let Some(open) = app.open.as_mut() {
                open.selected = (!open.messages.is_empty()).then_some(0);
            }
        }
        Action::Newest => {
            if let Some(open) = app.open.as_mut() {
                open.selected = None;
            }
        }
        Action::FocusList => app.focus = Focus::List,
        Action::ToggleFocus => {
            app.focus = match app.focus {
                Focus::List if app.open.is_some() => Focus::Messages,
                _ => Focus::List,
            }
        }
        Action::Open => {
            if let Some(peer) = app.selected_peer().cloned() {
                app.open_conversation(host, &peer).await?;
                app.focus = Focus::Compose;
            }
        }
        Action::Write => {
            if app.open.is_some() {
                app.focus = Focus::Compose;
            } else if let Some(peer) = app.selected_peer().cloned() {
                app.open_conversation(host, &peer).await?;
                app.focus = Focus::Compose;
            }
        }
        Action::StopWriting => app.focus = Focus::Messages,
        Action::Type(c) => match app.overlay.as_mut() {
            Some(Overlay::Prompt(_, input)) => {
                if input.len() + c.len_utf8() <= PROMPT_MAX {
                    input.push(c);
                }
            }
            _ => {
                if app.compose.text.len() < COMPOSE_MAX {
                    app.compose.insert(c);
                }
            }
        },
        Action::NewLine => app.compose.insert('\n'),
        Action::Backspace => match app.overlay.as_mut() {
            Some(Overlay::Prompt(_, input)) => {
                input.pop();
            }
            _ => app.compose.backspace(),
        },
        Action::Delete => app.compose.delete(),
        Action::Left => app.compose.left(),
        Action::Right => app.compose.right(),
        Action::Home => app.compose.home(),
        Action::End => app.compose.end(),
        Action::ClearLine => app.compose.clear(),
        Action::Send => app.send(host).await?,
        Action::NewConversation => {
            app.overlay = Some(Overlay::Prompt(Prompt::NewConversation, String::new()))
        }
        Action::Disappearing => {
            if app.open.is_some() {
                app.overlay = Some(Overlay::Prompt(Prompt::Disappearing, String::new()));
            }
        }
        Action::Submit => submit(app, host).await?,
        Action::DeleteMessage => {
            if let Some(open) = app.open.as_ref().filter(|_| app.focus == Focus::Messages) {
                let chosen = open.selected.or(open.messages.len().checked_sub(1));
                if let Some(m) = chosen.and_then(|i| open.messages.get(i)) {
                    // The dialog shows which message: the time, who, and its start.
                    let preview = format!(
                        "({} {}: {})",
                        view::local_time(m.time),
                        if m.from.as_str() == app.me {
                            "me"
                        } else {
                            m.from.as_str()
                        },
                        super::text::visible(m.body.lines().next().unwrap_or_default())
                    );
                    app.overlay = Some(Overlay::Confirm(Confirm::DeleteMessage(
                        open.peer.clone(),
                        m.id,
                        preview,
                    )));
                }
            }
        }
        Action::DeleteConversation => {
            if let Some(peer) = target(app) {
                app.overlay = Some(Overlay::Confirm(Confirm::DeleteConversation(peer)));
            }
        }
        Action::Yes | Action::Everywhere => {
            let everywhere = action == Action::Everywhere;
            match app.overlay.take() {
                Some(Overlay::Confirm(Confirm::DeleteMessage(peer, id, _))) => {
                    host.delete(&peer, Some(&id), everywhere).await?;
                    app.apply(
                        host,
                        crate::client::EventView::Deleted {
                            id: Some(id),
                            peer,
                            time: 0,
                        },
                    )
                    .await?;
                    app.say(if everywhere {
                        "deleted here; their host was asked to delete it too"
                    } else {
                        "deleted on all your devices"
                    });
                }
                Some(Overlay::Confirm(Confirm::DeleteConversation(peer))) => {
                    host.delete(&peer, None, everywhere).await?;
                    app.apply(
                        host,
                        crate::client::EventView::Deleted {
                            id: None,
                            peer: peer.clone(),
                            time: 0,
                        },
                    )
                    .await?;
                    app.say(format!("the chat with {peer} was deleted"));
                }
                Some(Overlay::Confirm(Confirm::Block(peer))) if !everywhere => {
                    host.block(&peer).await?;
                    app.reload(host).await?;
                    app.say(format!("{peer} is blocked: their messages are refused"));
                }
                other => app.overlay = other,
            }
        }
        Action::ToggleBlock => {
            if let Some(peer) = target(app) {
                if app.contact(&peer).is_some_and(|c| c.blocked) {
                    host.unblock(&peer).await?;
                    app.reload(host).await?;
                    app.say(format!("{peer} is unblocked"));
                } else {
                    app.overlay = Some(Overlay::Confirm(Confirm::Block(peer)));
                }
            }
        }
        Action::Verify => {
            if let Some(peer) = target(app) {
                let v = host.verify(&peer, KeyChoice::Look).await?;
                app.overlay = Some(Overlay::Verify(v));
            }
        }
        Action::AcceptKey => decide_key(app, host, KeyChoice::Accept).await?,
        Action::KeepKey => decide_key(app, host, KeyChoice::Keep).await?,
        Action::CallVideo | Action::CallAudio => {
            if calls.busy() {
                app.say("already in a call: e hangs it up");
            } else if let Some(peer) = app.open_peer().cloned() {
                calls.place(app, host.clone(), peer, action == Action::CallVideo);
            }
        }
        Action::Answer => {
            if calls.busy() {
                app.say("already in a call: e hangs it up first");
            } else if !app.ringing.is_empty() {
                let ringing = app.ringing.remove(0);
                calls.answer(app, host.clone(), ringing.id, ringing.peer, ringing.video);
            }
        }
        Action::Decline => {
            if !app.ringing.is_empty() {
                let ringing = app.ringing.remove(0);
                host.hangup_call(Some(&ringing.id)).await?;
                app.say(format!("declined the call from {}", ringing.peer));
            }
        }
        Action::HangUp => {
            if calls.busy() {
                calls.command(CallCommand::Hangup);
            } else if !app.ringing.is_empty() {
                let ringing = app.ringing.remove(0);
                host.hangup_call(Some(&ringing.id)).await?;
            }
        }
        Action::Mute => {
            // Shown as muted once the call says so (its next snapshot), not before.
            if app.call.is_some() {
                calls.toggle_mute();
            }
        }
    }
    Ok(Flow::Go)
}

/// `A` or `K` on the verification screen: accept the other key, or keep the pinned one. Only
/// there, and only once its numbers were drawn whole (compared, not guessed at).
async fn decide_key(
    app: &mut App,
    host: &Rc<HostClient>,
    choice: KeyChoice,
) -> Result<(), CtlError> {
    let Some(Overlay::Verify(shown)) = &app.overlay else {
        return Ok(());
    };
    if !shown.key_changed {
        return Ok(());
    }
    if !view::verify_fits(shown, app.screen.get()) {
        app.fail(&CtlError::Local(
            "the numbers do not fit on this terminal: make it larger to compare them before \
             deciding"
                .into(),
        ));
        return Ok(());
    }
    let user = shown.user.clone();
    let v = host.verify(&user, choice).await?;
    app.overlay = Some(Overlay::Verify(v));
    app.reload(host).await?;
    app.say(match choice {
        KeyChoice::Keep => format!("kept the key pinned for {user}; the other one is refused"),
        _ => format!("{user}'s new key is accepted"),
    });
    Ok(())
}

async fn submit(app: &mut App, host: &Rc<HostClient>) -> Result<(), CtlError> {
    let Some(Overlay::Prompt(prompt, input)) = app.overlay.take() else {
        return Ok(());
    };
    match prompt {
        Prompt::NewConversation => {
            let user = Username::parse_local(input.trim())
                .map_err(|e| CtlError::Local(format!("not a username: {e}")))?;
            app.open_conversation(host, &user).await?;
            app.focus = Focus::Compose;
        }
        Prompt::Disappearing => {
            let Some(peer) = app.open_peer().cloned() else {
                return Ok(());
            };
            let seconds = parse_duration(&input).ok_or_else(|| {
                CtlError::Local(format!(
                    "{:?} is not a duration such as 30s, 5m, 1h, 1d, 1w or off",
                    super::text::visible(&input)
                ))
            })?;
            host.expire(&peer, seconds).await?;
            app.set_expire_seconds(&peer, seconds);
            app.say(if seconds == 0 {
                "messages no longer disappear".to_string()
            } else {
                format!(
                    "messages now disappear {} after they are sent",
                    crate::output::human_duration(seconds)
                )
            });
        }
    }
    Ok(())
}
