//! Calls placed or answered in the chat: their media runs in this process, on a task of its
//! own (as `smvsctl call` runs it), steered by hang-up and mute commands; its statistics come
//! back for the status line.

use std::rc::Rc;
use std::time::Instant;

use smvs_media::{CallStats, Role};
use smvs_schema::Username;
use tokio::sync::{mpsc, watch};

use super::app::{App, OurCall};
use crate::call::{CallCommand, CallControl};
use crate::cli::{AudioArg, MediaArgs, VideoArg};
use crate::client::{CallId, HostClient};
use crate::error::CtlError;
use crate::output::Format;

/// What the call's task reports.
#[derive(Debug)]
pub enum CallUpdate {
    /// Ringing at the peer's devices.
    Placed(CallId),
    /// Answered: the media runs.
    Talking,
    /// Over; `Some` says what went wrong.
    Ended(Option<String>),
}

type Live = watch::Receiver<Option<(CallStats, bool)>>;

/// The one call this client runs at a time.
pub struct Calls {
    media: MediaArgs,
    updates_tx: mpsc::UnboundedSender<CallUpdate>,
    updates: mpsc::UnboundedReceiver<CallUpdate>,
    commands: Option<mpsc::UnboundedSender<CallCommand>>,
    live: Option<Live>,
    /// What the user last asked for (the screen shows what the call reports).
    mute_wanted: bool,
}

impl Calls {
    pub fn new(media: MediaArgs) -> Calls {
        let (updates_tx, updates) = mpsc::unbounded_channel();
        Calls {
            media,
            updates_tx,
            updates,
            commands: None,
            live: None,
            mute_wanted: false,
        }
    }

    pub fn busy(&self) -> bool {
        self.commands.is_some()
    }

    /// The media flags for a call with or without video.
    fn media(&self, video: bool) -> MediaArgs {
        let mut media = crate::call::media_for(&self.media, video, true);
        // A call that would send nothing at all sends the microphone.
        if media.audio == AudioArg::None && media.video == VideoArg::None {
            media.audio = AudioArg::Mic;
        }
        media
    }

    fn control(&mut self) -> (mpsc::UnboundedReceiver<CallCommand>, CallControlParts) {
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let (live_tx, live) = watch::channel(None);
        self.commands = Some(commands_tx);
        self.live = Some(live);
        self.mute_wanted = false;
        (
            commands,
            CallControlParts {
                live: live_tx,
                updates: self.updates_tx.clone(),
            },
        )
    }

    /// Rings `peer` and, once they answer, runs the call.
    pub fn place(&mut self, app: &mut App, host: Rc<HostClient>, peer: Username, video: bool) {
        let media = self.media(video);
        app.call = Some(OurCall {
            peer: peer.clone(),
            id: None,
            video: media.video != VideoArg::None,
            outgoing: true,
            since: None,
            stats: None,
            muted: false,
            size: media.size,
        });
        let (mut commands, parts) = self.control();
        let updates = parts.updates.clone();
        spawn_call(updates, async move {
            let (mut call, endpoint) = crate::call::ring(&host, &peer, &media).await?;
            let _ = parts.updates.send(CallUpdate::Placed(call.call.id));
            let peer_media = tokio::select! {
                answered = crate::call::wait_answer(&mut call, &peer) => answered?,
                _ = hang_up_asked(&mut commands) => {
                    let _ = call.hangup().await;
                    return Ok(());
                }
            };
            let _ = parts.updates.send(CallUpdate::Talking);
            run(
                call,
                endpoint,
                peer_media,
                Role::Caller,
                &media,
                commands,
                parts.live,
            )
            .await
        });
    }

    /// Picks up the ringing call `id` here and runs it.
    pub fn answer(
        &mut self,
        app: &mut App,
        host: Rc<HostClient>,
        id: CallId,
        peer: Username,
        video: bool,
    ) {
        let media = self.media(video);
        app.call = Some(OurCall {
            peer,
            id: Some(id),
            video: media.video != VideoArg::None,
            outgoing: false,
            since: None,
            stats: None,
            muted: false,
            size: media.size,
        });
        let (commands, parts) = self.control();
        let updates = parts.updates.clone();
        spawn_call(updates, async move {
            let (call, endpoint, peer_media) = crate::call::pick_up(&host, &id, &media).await?;
            let _ = parts.updates.send(CallUpdate::Talking);
            run(
                call,
                endpoint,
                peer_media,
                Role::Callee,
                &media,
                commands,
                parts.live,
            )
            .await
        });
    }

    /// Mutes or unmutes, against what was last asked (twice in a second is twice).
    pub fn toggle_mute(&mut self) {
        self.mute_wanted = !self.mute_wanted;
        self.command(CallCommand::Mute(self.mute_wanted));
    }

    pub fn command(&self, command: CallCommand) {
        if let Some(commands) = &self.commands {
            let _ = commands.send(command);
        }
    }

    /// The next report of the call's task (pending while there is none).
    pub async fn next_update(&mut self) -> CallUpdate {
        match self.updates.recv().await {
            Some(update) => update,
            // We hold a sender ourselves, so this never ends.
            None => std::future::pending().await,
        }
    }

    pub fn apply(&mut self, app: &mut App, update: CallUpdate) {
        match update {
            CallUpdate::Placed(id) => {
                if let Some(call) = app.call.as_mut() {
                    call.id = Some(id);
                }
            }
            CallUpdate::Talking => {
                if let Some(call) = app.call.as_mut() {
                    call.since = Some(Instant::now());
                }
            }
            CallUpdate::Ended(error) => {
                self.commands = None;
                self.live = None;
                if let Some(call) = app.call.take() {
                    match error {
                        Some(e) => app.fail(&CtlError::Local(e)),
                        None => app.say(format!("the call with {} ended", call.peer)),
                    }
                }
            }
        }
    }

    /// Copies the latest statistics into the status line.
    pub fn refresh(&self, app: &mut App) {
        if let (Some(live), Some(call)) = (&self.live, app.call.as_mut()) {
            if let Some((stats, muted)) = live.borrow().clone() {
                call.stats = Some(stats);
                call.muted = muted;
            }
        }
    }
}

struct CallControlParts {
    live: watch::Sender<Option<(CallStats, bool)>>,
    updates: mpsc::UnboundedSender<CallUpdate>,
}

/// Tells the chat the call is over however its task ends: with its result, or, if the task
/// never got to say (it panicked, or the runtime dropped it), that it stopped.
struct EndGuard(Option<mpsc::UnboundedSender<CallUpdate>>);

impl EndGuard {
    fn ended(mut self, result: Result<(), CtlError>) {
        if let Some(updates) = self.0.take() {
            let _ = updates.send(CallUpdate::Ended(result.err().map(|e| e.to_string())));
        }
    }
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        if let Some(updates) = self.0.take() {
            let _ = updates.send(CallUpdate::Ended(Some(
                "the call stopped unexpectedly".into(),
            )));
        }
    }
}

/// Runs a call's task; whatever way it ends, the chat hears [`CallUpdate::Ended`].
fn spawn_call(
    updates: mpsc::UnboundedSender<CallUpdate>,
    call: impl std::future::Future<Output = Result<(), CtlError>> + 'static,
) {
    tokio::task::spawn_local(async move {
        let guard = EndGuard(Some(updates));
        guard.ended(call.await);
    });
}

/// Resolves when the user hangs up before the call was answered (or the chat is gone).
async fn hang_up_asked(commands: &mut mpsc::UnboundedReceiver<CallCommand>) {
    loop {
        match commands.recv().await {
            Some(CallCommand::Hangup) | None => return,
            Some(CallCommand::Mute(_)) => continue,
        }
    }
}

async fn run(
    call: crate::client::DeviceCall,
    endpoint: crate::call::Endpoint,
    peer_media: crate::client::CallMediaView,
    role: Role,
    media: &MediaArgs,
    commands: mpsc::UnboundedReceiver<CallCommand>,
    live: watch::Sender<Option<(CallStats, bool)>>,
) -> Result<(), CtlError> {
    // JSON to nowhere: nothing may be printed over the chat's screen.
    crate::call::run(
        call,
        endpoint,
        peer_media,
        role,
        media,
        Format::Json,
        &mut std::io::sink(),
        std::future::pending::<()>(),
        Some(CallControl { commands, live }),
    )
    .await
}
