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
use crate::client::{HostClient, EVENT_QUEUE};
use crate::error::CtlError;

/// The terminal, given back as it was found when this is dropped (also on an error).
///
/// While the screen is up, stderr goes to an unnamed temporary file: what libraries print
/// there (GStreamer and ALSA warnings when a call starts) would be drawn over the chat and stay
/// there. When the screen is given back (also while a panic unwinds), what was written there
/// is printed on the real stderr, after the screen.
struct Screen {
    terminal: ratatui::DefaultTerminal,
    stderr: Option<HeldStderr>,
}

/// The real stderr, and the file standing in for it.
struct HeldStderr {
    real: std::os::fd::OwnedFd,
    file: std::fs::File,
}

impl Screen {
    fn start() -> Result<Screen, CtlError> {
        let io = |what| move |source| CtlError::Io { what, source };
        let stderr = quiet_stderr();
        let terminal = match ratatui::try_init() {
            Ok(terminal) => terminal,
            Err(source) => {
                ratatui::restore();
                restore_stderr(stderr);
                return Err(io("cannot set up the terminal")(source));
            }
        };
        let screen = Screen { terminal, stderr };
        // A paste arrives as one piece, newlines and all, not as keys (Enter would send).
        crossterm::execute!(std::io::stdout(), crossterm::event::EnableBracketedPaste)
            .map_err(io("cannot set up the terminal"))?;
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
        let _ = crossterm::execute!(std::io::stdout(), crossterm::event::DisableBracketedPaste);
        ratatui::restore();
        restore_stderr(self.stderr.take());
    }
}

/// Points stderr at an unnamed temporary file (no name on disk, gone when closed); returns the
/// real one to put back. None (stderr left alone) where no such file can be made.
fn quiet_stderr() -> Option<HeldStderr> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_TMPFILE)
        .open(std::env::temp_dir())
        .ok()?;
    let real = nix::unistd::dup(std::io::stderr()).ok()?;
    nix::unistd::dup2_stderr(&file).ok()?;
    Some(HeldStderr { real, file })
}

/// Puts the real stderr back and prints on it the last 16 KiB of what was written meanwhile.
fn restore_stderr(held: Option<HeldStderr>) {
    use std::io::{Read, Seek, SeekFrom, Write};
    const KEPT: u64 = 16 * 1024;
    let Some(HeldStderr { real, mut file }) = held else {
        return;
    };
    if nix::unistd::dup2_stderr(real).is_err() {
        return;
    }
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

pub async fn run(
    host: Rc<HostClient>,
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
    let status = host.status().await?;
    let me = status.username.ok_or_else(|| {
        CtlError::Local("no user is registered on this host yet: smvsctl register NAME".into())
    })?;
    // Subscribed before the state is read, so nothing that happens in between is missed.
    let (tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let _subscription = host.subscribe(tx).await?;
    let mut app = App::new(me, host.is_remote(), super::colour_allowed());
    app.reload(&host).await?;
    if let Some(user) = user {
        app.open_conversation(&host, user).await?;
        app.focus = Focus::Compose;
    }
    let mut calls = Calls::new(media.clone());
    let mut screen = Screen::start()?;
    let mut keys = EventStream::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tokio::pin!(stop);
    let result = loop {
        screen.draw(&app)?;
        tokio::select! {
            _ = &mut stop => break Ok(()),
            reason = host.closed() => break Err(CtlError::Disconnected(reason)),
            key = keys.next() => match key {
                Some(Ok(Event::Key(key))) => {
                    match handle_key(&mut app, &host, &mut calls, key).await {
                        Ok(Flow::Quit) => break Ok(()),
                        Ok(Flow::Redraw) => screen.clear()?,
                        Ok(Flow::Go) => {}
                        Err(e) => app.fail(&e),
                    }
                }
                Some(Ok(Event::Paste(text))) => paste(&mut app, &text),
                // A resize (or anything else) only needs drawing again.
                Some(Ok(_)) => {}
                Some(Err(source)) => break Err(CtlError::Io { what: "cannot read the terminal", source }),
                None => break Ok(()),
            },
            event = events.recv() => match event {
                Some(Ok(event)) => {
                    if let Err(e) = app.apply(&host, event).await {
                        app.fail(&e);
                    }
                }
                Some(Err(e)) => break Err(e),
                None => break Err(CtlError::Disconnected("smvsd ended the event stream".into())),
            },
            update = calls.next_update() => calls.apply(&mut app, update),
            _ = tick.tick() => {
                calls.refresh(&mut app);
                app.expire_shown();
                if let Err(e) = app.refresh_list(&host).await {
                    app.fail(&e);
                }
            }
        }
    };
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

/// The longest compose text kept: a paste beyond it is cut (the host takes 64 KiB).
const COMPOSE_MAX: usize = 4 * smvs_schema::MAX_TEXT_BYTES;

/// A paste goes into the prompt or the compose box as one piece.
fn paste(app: &mut App, text: &str) {
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    match app.overlay.as_mut() {
        Some(Overlay::Prompt(_, input)) => {
            input.extend(
                text.chars()
                    .filter(|c| !c.is_control())
                    .take(64 - input.len().min(64)),
            );
        }
        Some(_) => {}
        None => {
            let room = COMPOSE_MAX.saturating_sub(app.compose.text.len());
            let mut cut = room.min(text.len());
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            app.compose.insert_str(&text[..cut]);
            app.focus = Focus::Compose;
            if cut < text.len() {
                app.say("the paste was cut: a message holds 64 KiB");
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
                if input.len() < 64 {
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
                    app.overlay = Some(Overlay::Confirm(Confirm::DeleteMessage(
                        open.peer.clone(),
                        m.id,
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
                Some(Overlay::Confirm(Confirm::DeleteMessage(peer, id))) => {
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
                let v = host.verify(&peer, false).await?;
                app.overlay = Some(Overlay::Verify(v));
            }
        }
        Action::AcceptKey => {
            // Only from the verification screen, after its numbers were drawn.
            if let Some(Overlay::Verify(shown)) = &app.overlay {
                if shown.key_changed && !view::verify_fits(shown, app.screen.get()) {
                    app.fail(&CtlError::Local(
                        "the numbers do not fit on this terminal: make it larger to compare \
                         them before accepting"
                            .into(),
                    ));
                } else if shown.key_changed {
                    let user = shown.user.clone();
                    let v = host.verify(&user, true).await?;
                    app.overlay = Some(Overlay::Verify(v));
                    app.reload(host).await?;
                    app.say(format!("{user}'s new key is accepted"));
                }
            }
        }
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
            if let Some(call) = &app.call {
                calls.command(CallCommand::Mute(!call.muted));
            }
        }
    }
    Ok(Flow::Go)
}

async fn submit(app: &mut App, host: &Rc<HostClient>) -> Result<(), CtlError> {
    let Some(Overlay::Prompt(prompt, input)) = app.overlay.take() else {
        return Ok(());
    };
    match prompt {
        Prompt::NewConversation => {
            let user = Username::parse(input.trim())
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
