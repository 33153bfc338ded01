//! `smvsctl agent`: the user's desktop end of their host.
//!
//! ```text
//!  beside the host:   smvsd ──signals on the system bus──► agent ──Notify on the session bus──► desktop
//!  on a linked device: smvsd ══device port: subscribe══════► agent ──Notify on the session bus──► desktop
//! ```
//!
//! A hardened system service has no business on a user's session bus (nor on its camera,
//! microphone and windows); this small process, run by `systemd --user` in the session, carries
//! the news across, and is a device that runs calls. Beside the host it registers with smvsd's
//! socket as the call agent, so D-Bus `PlaceCall` and `AnswerCall` run their media here. On
//! another machine (`--host`, `$SMVS_HOST`, or the pairing it remembers) there is no D-Bus of
//! the host: it subscribes over the device link instead, and reconnects when the link drops
//! ([`remote`]). Either way a call that rings shows Answer and Decline buttons; the first of the
//! user's devices to answer takes the call, and the others say it was answered elsewhere.
//! Signals and events carry ids and names only; with `--preview` the agent fetches the text.

mod calls;
mod desktop;
mod local;
mod remote;

pub use remote::Backoff;

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::rc::Rc;

use futures::StreamExt;
use smvs_schema::Username;

use crate::cli::MediaArgs;
use crate::client::{CallId, CallState, HostClient, MessageId};
use crate::error::CtlError;

pub use desktop::Desktop;

/// Where the agent's host is.
pub enum Reach<'a> {
    /// smvsd on this machine: its signals on D-Bus (`session`: the session bus, for a per-user
    /// smvsd; else the system bus), its socket for calls.
    Local { socket: &'a Path, session: bool },
    /// The paired host over its device port (`address`: HOST:PORT, or where it was paired).
    Remote {
        address: Option<String>,
        proxy: Option<String>,
    },
}

/// Relays the host's news to desktop notifications and runs calls, until `stop` resolves.
pub async fn run(
    reach: Reach<'_>,
    preview: bool,
    media: &MediaArgs,
    stop: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    let desktop = Desktop::connect().await?;
    let actions = desktop.actions().await?;
    let agent = Rc::new(Agent {
        desktop,
        preview,
        media: media.clone(),
        host: RefCell::new(None),
        calls: RefCell::new(Calls::default()),
    });
    // The buttons on our notifications (Answer, Decline), for as long as the agent runs.
    let pressed = agent.clone();
    tokio::task::spawn_local(async move {
        tokio::pin!(actions);
        while let Some((notification, action)) = actions.next().await {
            pressed.pressed(notification, &action).await;
        }
    });
    match reach {
        Reach::Local { socket, session } => local::run(agent, socket, session, stop).await,
        Reach::Remote { address, proxy } => remote::run(agent, address, proxy, stop).await,
    }
}

/// What the host told the agent, whichever way it came.
#[derive(Debug, Clone)]
pub enum News {
    Message {
        id: MessageId,
        from: Username,
    },
    KeyChanged(Username),
    DeviceLinked(String),
    /// A call rings here.
    Ringing {
        id: CallId,
        peer: Username,
        video: bool,
        audio: bool,
    },
    /// A call changed state (`reason`: why it ended, or "answered-elsewhere").
    Call {
        id: CallId,
        peer: Username,
        state: CallState,
        reason: String,
    },
}

/// The reason smvsd gives a ringing device when another of the user's devices picked up.
const ANSWERED_ELSEWHERE: &str = "answered-elsewhere";

/// Why a call that rang here stopped ringing, as the callee sees it.
fn ring_end_text(peer: &Username, reason: &str) -> String {
    match reason {
        "declined" => format!("The call from {peer} was declined"),
        "missed" | "no-answer" | "remote-hangup" => format!("Missed call from {peer}"),
        other => crate::output::call_end_text(peer.as_str(), other),
    }
}

/// The calls this agent knows of.
#[derive(Default)]
struct Calls {
    /// Ringing here: the notification showing it, and who calls.
    ringing: HashMap<CallId, Ring>,
    /// Picked up by this agent (being answered, or running): their becoming active is ours,
    /// not "elsewhere".
    mine: HashSet<CallId>,
}

struct Ring {
    notification: u32,
    peer: Username,
    video: bool,
}

pub struct Agent {
    desktop: Desktop,
    preview: bool,
    media: MediaArgs,
    /// The connection calls are answered and declined on (none while a link is down, or when
    /// smvsd's socket is out of reach).
    host: RefCell<Option<Rc<HostClient>>>,
    calls: RefCell<Calls>,
}

impl Agent {
    fn host(&self) -> Option<Rc<HostClient>> {
        self.host.borrow().clone()
    }

    fn set_host(&self, host: Option<Rc<HostClient>>) {
        *self.host.borrow_mut() = host;
    }

    /// Raises the notification for one piece of news. `text` fetches a message's text for
    /// `--preview` (from D-Bus or the link).
    async fn tell<F, T>(&self, news: News, text: F)
    where
        F: FnOnce(Username, MessageId) -> T,
        T: Future<Output = Option<String>>,
    {
        match news {
            News::Message { id, from } => {
                let mut body = format!("New message from {from}");
                if self.preview {
                    if let Some(text) = text(from.clone(), id).await {
                        body = format!("{from}: {}", text.chars().take(120).collect::<String>());
                    }
                }
                self.desktop.notify(0, "SMVS", &body, &[]).await;
            }
            News::KeyChanged(peer) => {
                let body = format!(
                    "{peer}'s identity key changed. Compare safety numbers before you write again."
                );
                self.desktop
                    .notify(0, "Security: key changed", &body, &[])
                    .await;
            }
            News::DeviceLinked(name) => {
                let body = format!("A new device, {name}, can now read and send as you.");
                self.desktop
                    .notify(0, "Security: device linked", &body, &[])
                    .await;
            }
            News::Ringing {
                id,
                peer,
                video,
                audio: _,
            } => self.ring(id, peer, video).await,
            News::Call {
                id,
                peer,
                state,
                reason,
            } => self.call_changed(id, &peer, state, &reason).await,
        }
    }

    /// A call rings: a notification with Answer and Decline (when this agent can run calls).
    async fn ring(&self, id: CallId, peer: Username, video: bool) {
        if self.calls.borrow().ringing.contains_key(&id) {
            return; // heard twice (D-Bus and the socket, or again after a reconnect)
        }
        let body = format!("{peer} is calling (smvsctl answer {id})");
        let buttons: &[(&str, &str)] = if self.host().is_some() {
            &[("answer", "Answer"), ("decline", "Decline")]
        } else {
            &[]
        };
        let notification = self.desktop.notify(0, "SMVS call", &body, buttons).await;
        self.calls.borrow_mut().ringing.insert(
            id,
            Ring {
                notification,
                peer,
                video,
            },
        );
    }

    /// A call became active or ended: a call that rang here stops ringing, and says why.
    async fn call_changed(&self, id: CallId, peer: &Username, state: CallState, reason: &str) {
        let (ring, mine) = {
            let mut calls = self.calls.borrow_mut();
            let mine = calls.mine.contains(&id);
            if state == CallState::Ended {
                calls.mine.remove(&id);
            }
            match state {
                CallState::Ringing => return,
                _ => (calls.ringing.remove(&id), mine),
            }
        };
        let Some(ring) = ring else { return };
        let elsewhere =
            format!("The call from {peer} was answered elsewhere, on another of your devices");
        let body = match state {
            // smvsd says so to every device but the one that picked up (D-Bus, beside the
            // host, says so when a linked device picked up).
            CallState::Active if reason == ANSWERED_ELSEWHERE => elsewhere,
            // Picked up here: the media runs in this agent.
            CallState::Active if mine => format!("In a call with {peer}"),
            // Any other answer this agent did not give is another device's.
            CallState::Active => elsewhere,
            _ => ring_end_text(peer, reason),
        };
        self.desktop
            .notify(ring.notification, "SMVS call", &body, &[])
            .await;
    }

    /// A button on one of our notifications was pressed.
    async fn pressed(self: &Rc<Self>, notification: u32, action: &str) {
        if notification == 0 {
            return;
        }
        let found = self
            .calls
            .borrow()
            .ringing
            .iter()
            .find(|(_, r)| r.notification == notification)
            .map(|(id, r)| (*id, r.peer.clone(), r.video));
        let Some((id, peer, video)) = found else {
            return;
        };
        let Some(host) = self.host() else {
            self.desktop
                .notify(
                    notification,
                    "SMVS call",
                    &format!("Cannot reach your host to answer {peer}'s call"),
                    &[],
                )
                .await;
            return;
        };
        match action {
            "answer" => {
                if let Err(e) = calls::answer(self, &host, id, video).await {
                    self.desktop
                        .notify(notification, "SMVS call", &e.to_string(), &[])
                        .await;
                }
            }
            "decline" => {
                if let Err(e) = host.hangup_call(Some(&id)).await {
                    eprintln!("smvsctl agent: declining {peer}'s call: {e}");
                }
            }
            _ => {}
        }
    }
}
