//! The agent beside its host: smvsd's signals on D-Bus, its socket for calls.

use std::future::Future;
use std::path::Path;
use std::rc::Rc;

use futures::StreamExt;
use smvs_schema::Username;

use super::{Agent, News};
use crate::client::{CallId, CallState};
use crate::error::CtlError;

const BUS_NAME: &str = "org.smvs.Daemon1";
const OBJECT_PATH: &str = "/org/smvs/Daemon1";

fn bus_error(what: &'static str) -> impl Fn(zbus::Error) -> CtlError {
    move |e| CtlError::Local(format!("{what}: {e}"))
}

/// D-Bus names and ids as the agent's types; `None` for a malformed signal (skipped).
fn user(name: &str) -> Option<Username> {
    Username::parse_local(name).ok()
}

fn call_id(id: &str) -> Option<CallId> {
    id.parse().ok()
}

fn call_state(state: &str) -> Option<CallState> {
    match state {
        "ringing" => Some(CallState::Ringing),
        "active" => Some(CallState::Active),
        "ended" => Some(CallState::Ended),
        _ => None,
    }
}

pub async fn run(
    agent: Rc<Agent>,
    socket: &Path,
    daemon_on_session_bus: bool,
    stop: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    let daemon_bus = if daemon_on_session_bus {
        agent.desktop.session().clone()
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
    let mut states = daemon
        .receive_signal("CallStateChanged")
        .await
        .map_err(bus_error("cannot subscribe to CallStateChanged"))?;
    // Without the socket the agent still relays notifications; calls then run elsewhere.
    let _registration = match crate::client::connect(socket).await {
        Ok(host) => {
            let host = Rc::new(host);
            match super::calls::register(&agent, &host).await {
                Ok(registration) => {
                    agent.set_host(Some(host));
                    Some(registration)
                }
                Err(e) => {
                    eprintln!("smvsctl agent: not running calls: {e}");
                    None
                }
            }
        }
        Err(e) => {
            eprintln!("smvsctl agent: not running calls: {e}");
            None
        }
    };
    // Subscribed: say so (supervisors and tests wait for this line).
    println!("smvsctl agent: relaying org.smvs.Daemon1 signals to desktop notifications");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let ended = || CtlError::Local("smvsd's signals ended".into());
    let preview = |from: Username, id: crate::client::MessageId| {
        let daemon = daemon.clone();
        async move {
            let fetched: zbus::Result<(String, String, String, i64, String, String, String)> =
                daemon
                    .call("GetMessage", &(from.as_str(), id.to_string().as_str()))
                    .await;
            fetched.ok().map(|(_, _, _, _, text, _, _)| text)
        }
    };
    tokio::pin!(stop);
    loop {
        let news = tokio::select! {
            _ = &mut stop => return Ok(()),
            signal = received.next() => {
                let signal = signal.ok_or_else(ended)?;
                let Ok((id, sender, _time)) = signal.body().deserialize::<(String, String, i64)>() else { continue };
                let (Ok(id), Some(from)) = (id.parse(), user(&sender)) else { continue };
                News::Message { id, from }
            }
            signal = rings.next() => {
                let signal = signal.ok_or_else(ended)?;
                let Ok((id, peer, video, audio)) = signal.body().deserialize::<(String, String, bool, bool)>() else { continue };
                let (Some(id), Some(peer)) = (call_id(&id), user(&peer)) else { continue };
                News::Ringing { id, peer, video, audio }
            }
            signal = states.next() => {
                let signal = signal.ok_or_else(ended)?;
                let Ok((id, peer, state, reason)) = signal.body().deserialize::<(String, String, String, String)>() else { continue };
                let (Some(id), Some(peer), Some(state)) = (call_id(&id), user(&peer), call_state(&state)) else { continue };
                News::Call { id, peer, state, reason }
            }
            signal = key_changes.next() => {
                let signal = signal.ok_or_else(ended)?;
                let Ok(peer) = signal.body().deserialize::<String>() else { continue };
                let Some(peer) = user(&peer) else { continue };
                News::KeyChanged(peer)
            }
        };
        agent.tell(news, preview).await;
    }
}
