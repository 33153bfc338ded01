//! `smvsctl agent`: the user's desktop end of a system service.
//!
//! ```text
//!  smvsd ──signals on the system bus──► agent ──Notify on the session bus──► the desktop
//! ```
//!
//! A hardened system service has no business on a user's session bus (nor on its camera,
//! microphone and windows); this small process, run by `systemd --user` in the session, carries
//! the news across, and is the device that runs calls: it registers with smvsd's socket as the
//! call agent, so D-Bus `PlaceCall` and `AnswerCall` run their media here. Signals carry ids and
//! names only; with `--preview` the agent fetches the text with `GetMessage`, a call the bus
//! policy allows only to the daemon's clients.

use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::rc::Rc;

use futures::StreamExt;
use smvs_media::Role;
use smvs_schema::local_capnp::call_agent;
use smvs_schema::Username;

use crate::cli::{AudioArg, MediaArgs, VideoArg};
use crate::client::{CallId, HostClient, Subscription};
use crate::error::CtlError;
use crate::output::Format;

const BUS_NAME: &str = "org.smvs.Daemon1";
const OBJECT_PATH: &str = "/org/smvs/Daemon1";

fn bus_error(what: &'static str) -> impl Fn(zbus::Error) -> CtlError {
    move |e| CtlError::Local(format!("{what}: {e}"))
}

/// Relays smvsd's signals to desktop notifications, and runs calls as the call agent, until
/// `stop` resolves.
pub async fn run(
    preview: bool,
    daemon_on_session_bus: bool,
    socket: &Path,
    media: &MediaArgs,
    stop: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    let session = zbus::Connection::session()
        .await
        .map_err(bus_error("cannot reach the session bus"))?;
    let daemon_bus = if daemon_on_session_bus {
        session.clone()
    } else {
        zbus::Connection::system()
            .await
            .map_err(bus_error("cannot reach the system bus"))?
    };
    let daemon = zbus::Proxy::new(&daemon_bus, BUS_NAME, OBJECT_PATH, BUS_NAME)
        .await
        .map_err(bus_error("cannot address org.smvs.Daemon1"))?;
    let mut received = daemon
        .receive_signal("MessageReceived")
        .await
        .map_err(bus_error("cannot subscribe to MessageReceived"))?;
    let mut key_changes = daemon
        .receive_signal("KeyChanged")
        .await
        .map_err(bus_error("cannot subscribe to KeyChanged"))?;
    let mut rings = daemon
        .receive_signal("CallIncoming")
        .await
        .map_err(bus_error("cannot subscribe to CallIncoming"))?;
    // Without the socket the agent still relays notifications; calls then run elsewhere.
    let _registration = match register_call_agent(socket, media).await {
        Ok(registration) => Some(registration),
        Err(e) => {
            eprintln!("smvsctl agent: not running calls: {e}");
            None
        }
    };
    // Subscribed: say so (supervisors and tests wait for this line).
    println!("smvsctl agent: relaying org.smvs.Daemon1 signals to desktop notifications");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            signal = received.next() => {
                let Some(signal) = signal else { return Err(CtlError::Local("smvsd's signals ended".into())) };
                let Ok((id, sender, _time)) = signal.body().deserialize::<(String, String, i64)>() else { continue };
                let mut body = format!("New message from {sender}");
                if preview {
                    let fetched: zbus::Result<(String, String, String, i64, String, String, String)> =
                        daemon.call("GetMessage", &(sender.as_str(), id.as_str())).await;
                    if let Ok((_, _, _, _, text, _, _)) = fetched {
                        body = format!("{sender}: {}", text.chars().take(120).collect::<String>());
                    }
                }
                notify(&session, "SMVS", &body).await;
            }
            signal = rings.next() => {
                let Some(signal) = signal else { return Err(CtlError::Local("smvsd's signals ended".into())) };
                let Ok((id, peer, _video, _audio)) = signal.body().deserialize::<(String, String, bool, bool)>() else { continue };
                notify(&session, "SMVS call", &format!("{peer} is calling (smvsctl answer {id})")).await;
            }
            signal = key_changes.next() => {
                let Some(signal) = signal else { return Err(CtlError::Local("smvsd's signals ended".into())) };
                let Ok(peer) = signal.body().deserialize::<String>() else { continue };
                let body = format!("{peer}'s identity key changed. Compare safety numbers before you write again.");
                notify(&session, "Security: key changed", &body).await;
            }
        }
    }
}

async fn notify(session: &zbus::Connection, summary: &str, body: &str) {
    let hints: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
    let actions: Vec<&str> = Vec::new();
    let result = session
        .call_method(
            Some("org.freedesktop.Notifications"),
            "/org/freedesktop/Notifications",
            Some("org.freedesktop.Notifications"),
            "Notify",
            &("SMVS", 0u32, "", summary, body, actions, hints, -1i32),
        )
        .await;
    if let Err(e) = result {
        eprintln!("smvsctl agent: notification not shown: {e}");
    }
}

/// Connects to smvsd's socket and registers this agent as the device for D-Bus calls.
async fn register_call_agent(socket: &Path, media: &MediaArgs) -> Result<Subscription, CtlError> {
    let host = Rc::new(crate::client::connect(socket).await?);
    let agent: call_agent::Client = capnp_rpc::new_client(CallAgent {
        host: host.clone(),
        media: media.clone(),
    });
    host.register_call_agent(agent).await
}

/// The call agent smvsd hands D-Bus `PlaceCall` and `AnswerCall` to. Each call's media runs in
/// a task of its own; its report goes to stdout (the journal under systemd).
struct CallAgent {
    host: Rc<HostClient>,
    media: MediaArgs,
}

impl CallAgent {
    fn media(&self, video: bool, audio: bool) -> MediaArgs {
        let mut media = self.media.clone();
        if !video {
            media.video = VideoArg::None;
        }
        if !audio {
            media.audio = AudioArg::None;
        }
        media
    }
}

fn failed(e: CtlError) -> capnp::Error {
    capnp::Error::failed(e.to_string())
}

/// Runs an answered call's media and logs how it ended.
fn spawn_media(
    call: crate::client::DeviceCall,
    endpoint: crate::call::Endpoint,
    peer_media: crate::client::CallMediaView,
    role: Role,
    media: MediaArgs,
) {
    tokio::task::spawn_local(async move {
        let mut out = std::io::stdout();
        let result = crate::call::run(
            call,
            endpoint,
            peer_media,
            role,
            &media,
            Format::Text,
            &mut out,
            std::future::pending::<()>(),
        )
        .await;
        if let Err(e) = result {
            eprintln!("smvsctl agent: {e}");
        }
    });
}

impl call_agent::Server for CallAgent {
    async fn place(
        self: capnp::capability::Rc<Self>,
        params: call_agent::PlaceParams,
        mut results: call_agent::PlaceResults,
    ) -> Result<(), capnp::Error> {
        let (peer, media) = {
            let p = params.get()?;
            let peer = p
                .get_peer()?
                .to_str()
                .map_err(|_| capnp::Error::failed("bad-request: peer is not UTF-8".into()))?;
            let peer = Username::parse(peer)
                .map_err(|e| capnp::Error::failed(format!("bad-request: {e}")))?;
            (peer, self.media(p.get_video(), p.get_audio()))
        };
        let (mut call, endpoint) = crate::call::ring(&self.host, &peer, &media)
            .await
            .map_err(failed)?;
        results.get().set_id(call.call.id.as_bytes());
        tokio::task::spawn_local(async move {
            match crate::call::wait_answer(&mut call, &peer).await {
                Ok(peer_media) => spawn_media(call, endpoint, peer_media, Role::Caller, media),
                Err(e) => eprintln!("smvsctl agent: {e}"),
            }
        });
        Ok(())
    }

    async fn answer(
        self: capnp::capability::Rc<Self>,
        params: call_agent::AnswerParams,
        _: call_agent::AnswerResults,
    ) -> Result<(), capnp::Error> {
        let id = CallId::from_slice(params.get()?.get_id()?)
            .ok_or_else(|| capnp::Error::failed("bad-request: a call id is 16 bytes".into()))?;
        let call = self
            .host
            .calls()
            .await
            .map_err(failed)?
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| capnp::Error::failed(format!("not-found: no call {id}")))?;
        let media = self.media(call.peer_media.as_ref().is_none_or(|m| m.video), true);
        let (call, endpoint, peer_media) = crate::call::pick_up(&self.host, &id, &media)
            .await
            .map_err(failed)?;
        spawn_media(call, endpoint, peer_media, Role::Callee, media);
        Ok(())
    }
}
