//! The two-user set-up most host tests start from, and reading `smvsctl --json history`.

use serde_json::Value;

use crate::directory::DirectoryProcess;
use crate::host::HostProcess;
use crate::watch::LIMIT;

/// alice on 127.0.0.1 and bob on 127.0.0.2 (with `bob_extra` flags), both registered.
pub fn alice_and_bob(
    dir: &DirectoryProcess,
    bob_extra: &[&str],
) -> anyhow::Result<(HostProcess, HostProcess)> {
    let alice = HostProcess::start("alice", dir, "127.0.0.1", &[])?;
    let bob = HostProcess::start("bob", dir, "127.0.0.2", bob_extra)?;
    alice.register()?;
    bob.register()?;
    Ok((alice, bob))
}

/// Sends `to` n messages over `client` (`body(i)` each) with up to `in_flight` requests
/// outstanding; returns once every one is durably queued.
pub async fn send_many(
    client: &std::rc::Rc<smvsctl::client::HostClient>,
    to: &smvs_schema::Username,
    n: usize,
    in_flight: usize,
    body: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    let mut pending = std::collections::VecDeque::new();
    for i in 0..n {
        let (client, to, text) = (client.clone(), to.clone(), body(i));
        pending.push_back(tokio::task::spawn_local(async move {
            client.send(&to, &text).await
        }));
        if pending.len() >= in_flight {
            if let Some(first) = pending.pop_front() {
                first.await??;
            }
        }
    }
    for p in pending {
        p.await??;
    }
    Ok(())
}

/// Waits on a subscription's events until message `id` is `delivered` (30 s at most per event).
pub async fn until_delivered(
    events: &mut tokio::sync::mpsc::Receiver<
        Result<smvsctl::client::EventView, smvsctl::error::CtlError>,
    >,
    id: &smvsctl::client::MessageId,
) -> anyhow::Result<()> {
    use anyhow::Context;
    use smvsctl::client::{EventView, MessageStatus};
    loop {
        let event = tokio::time::timeout(LIMIT, events.recv())
            .await
            .context("no delivered event within 30 s")?
            .context("event stream ended")??;
        if let EventView::MessageStatus {
            id: got,
            status: MessageStatus::Delivered,
            ..
        } = event
        {
            if &got == id {
                return Ok(());
            }
        }
    }
}

/// The ids of a history, in order (`""` for a message without one).
pub fn ids(history: &[Value]) -> Vec<&str> {
    history
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_default())
        .collect()
}

/// A message's text (`""` for a message without one, which no test expects).
pub fn body(m: &Value) -> &str {
    m["body"].as_str().unwrap_or_default()
}

/// alice → bob, bob → alice, alice → bob; returns the three ids once both histories hold all
/// three and every message is delivered.
pub fn exchange_three(alice: &HostProcess, bob: &HostProcess) -> anyhow::Result<[String; 3]> {
    let a1 = alice.send("bob", "one, from alice")?;
    bob.wait_history("alice", LIMIT, |h| h.len() == 1)?;
    let b1 = bob.send("alice", "two, from bob")?;
    alice.wait_history("bob", LIMIT, |h| h.len() == 2)?;
    let a2 = alice.send("bob", "three, from alice")?;
    let all = [a1, b1, a2];
    let done = |h: &[Value]| {
        ids(h) == all.iter().map(String::as_str).collect::<Vec<_>>()
            && h.iter()
                .all(|m| m["status"] == "delivered" || m["status"] == "received")
    };
    alice.wait_history("bob", LIMIT, done)?;
    bob.wait_history("alice", LIMIT, done)?;
    Ok(all)
}
