//! `smvsctl agent`: the user's desktop end of a system service.
//!
//! ```text
//!  smvsd ──signals on the system bus──► agent ──Notify on the session bus──► the desktop
//! ```
//!
//! A hardened system service has no business on a user's session bus; this small process,
//! run by `systemd --user` in the session, carries the news across. Signals carry ids and
//! names only; with `--preview` the agent fetches the text with `GetMessage`, a call the bus
//! policy allows only to the daemon's clients.

use std::collections::HashMap;
use std::future::Future;

use futures::StreamExt;

use crate::error::CtlError;

const BUS_NAME: &str = "org.smvs.Daemon1";
const OBJECT_PATH: &str = "/org/smvs/Daemon1";

fn bus_error(what: &'static str) -> impl Fn(zbus::Error) -> CtlError {
    move |e| CtlError::Local(format!("{what}: {e}"))
}

/// Relays smvsd's signals to desktop notifications until `stop` resolves.
pub async fn run(
    preview: bool,
    daemon_on_session_bus: bool,
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
