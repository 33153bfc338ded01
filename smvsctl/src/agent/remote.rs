//! The agent on a linked device: the host's events over the device link, and a new link after
//! the old one drops (suspend and resume, a network change, the host restarting).
//!
//! ```text
//!  connect ─► subscribe from the device's cursor `agent` ─► replayed events ─► one summary
//!     ▲                                                  └─► live events ─► notifications,
//!     │                                     until the link drops or a heartbeat goes unanswered
//!     └──── backoff: 1 s, doubling to 30 s, each wait jittered ◄──┘
//! ```
//!
//! The host keeps the cursor and moves it as the agent hands each event back as handled, so
//! after a gap the agent gets exactly what it missed (`replayed`), then live events. What it
//! missed is not notified message by message: the messages are summed up in one notification
//! ("3 new messages from alice, bob while you were away"), shown when the first live event
//! comes or the replay has gone quiet. A cursor the agent never used starts at the host's
//! head, so its first start replays nothing.

use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use smvs_schema::Username;
use tokio::sync::mpsc;

use super::{Agent, News};
use crate::client::{Delivered, EventView, HostClient, Start, Subscription};
use crate::error::CtlError;

/// The agent's cursor in the host's event log (each device has its own of that name).
const CURSOR: &str = "agent";
/// How long the replay may pause before what was missed is summed up.
const REPLAY_QUIET: Duration = Duration::from_secs(2);

/// The first wait before trying again, and the longest.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often a quiet link is checked, and how long the host has to answer: a link that died
/// without a word (the laptop slept, the network changed) is noticed within a minute.
const HEARTBEAT: Duration = Duration::from_secs(30);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits between attempts: doubling from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], each wait drawn
/// from its upper half at random, so devices that lost the same host do not all come back in
/// the same instant.
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff { next: BACKOFF_MIN }
    }

    pub fn reset(&mut self) {
        self.next = BACKOFF_MIN;
    }

    /// The next wait, given a random number.
    pub fn next_with(&mut self, random: u64) -> Duration {
        let base = self.next;
        self.next = (base * 2).min(BACKOFF_MAX);
        let half = base / 2;
        let spread = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_millis(random % (spread + 1))
    }

    pub fn next_wait(&mut self) -> Duration {
        self.next_with(u64::from_le_bytes(smvs_crypto::random_array::<8>()))
    }
}

/// What arrived while the agent was away: messages per peer, in name order.
#[derive(Default)]
pub struct Missed {
    from: BTreeMap<String, (Username, u32)>,
}

impl Missed {
    pub fn add(&mut self, peer: &Username) {
        self.from
            .entry(peer.as_str().to_owned())
            .or_insert_with(|| (peer.clone(), 0))
            .1 += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.from.is_empty()
    }

    /// The one notification's text, and a fresh start.
    pub fn take_summary(&mut self) -> Option<String> {
        if self.from.is_empty() {
            return None;
        }
        let from = std::mem::take(&mut self.from);
        let total: u32 = from.values().map(|(_, n)| n).sum();
        let names: Vec<&str> = from.values().map(|(peer, _)| peer.as_str()).collect();
        let noun = if total == 1 { "message" } else { "messages" };
        Some(format!(
            "{total} new {noun} from {} while you were away",
            names.join(", ")
        ))
    }
}

/// One live link: the client and its event stream.
struct Link {
    host: Rc<HostClient>,
    _subscription: Subscription,
    events: mpsc::Receiver<Result<Delivered, CtlError>>,
}

async fn open(address: Option<&str>, proxy: Option<&str>) -> Result<Link, CtlError> {
    let host = Rc::new(crate::client::connect_device(address, proxy).await?);
    let (tx, events) = mpsc::channel(crate::client::EVENT_QUEUE);
    let subscription = host
        .subscribe_from(&Start::Cursor(CURSOR.into()), tx)
        .await?;
    Ok(Link {
        host,
        _subscription: subscription,
        events,
    })
}

pub async fn run(
    agent: Rc<Agent>,
    address: Option<String>,
    proxy: Option<String>,
    stop: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    tokio::pin!(stop);
    // A device that is not paired has nothing to retry.
    let dir = crate::remote::config_dir()?;
    let Some(paired) = crate::remote::paired_host(&dir)? else {
        return Err(CtlError::Local(format!(
            "this machine is not paired with a host ({} has no host.toml): run `smvsctl pair HOST CODE` first",
            dir.display()
        )));
    };
    let shown = address
        .as_deref()
        .map(crate::remote::with_default_port)
        .unwrap_or(paired.address);
    let mut backoff = Backoff::new();
    // The last seq handled: a host that crashed may replay the last moment's events again
    // (it saves cursors every half second), and seqs are never reused.
    let mut seen = 0;
    loop {
        let opened = tokio::select! {
            _ = &mut stop => return Ok(()),
            opened = open(address.as_deref(), proxy.as_deref()) => opened,
        };
        match opened {
            Ok(mut link) => {
                backoff.reset();
                agent.set_host(Some(link.host.clone()));
                // Supervisors and tests wait for this line.
                println!(
                    "smvsctl agent: connected to the host at {shown}; relaying its events to desktop notifications"
                );
                let _ = std::io::Write::flush(&mut std::io::stdout());
                let why = serve(&agent, &mut link, &mut seen, &mut stop).await;
                agent.set_host(None);
                match why {
                    None => return Ok(()),
                    Some(why) => eprintln!("smvsctl agent: lost the link to the host: {why}"),
                }
            }
            Err(e) => eprintln!("smvsctl agent: cannot reach the host: {e}"),
        }
        let wait = backoff.next_wait();
        eprintln!("smvsctl agent: trying again in {:.1} s", wait.as_secs_f64());
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Relays one link's events until it drops (`Some(why)`) or `stop` (`None`). Each event is
/// handed back as handled once notified (or, replayed, counted in the summary), so the host's
/// cursor moves past it; one seen before (up to `seen`) is handed back at once.
async fn serve(
    agent: &Rc<Agent>,
    link: &mut Link,
    seen: &mut u64,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<String> {
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    let host = link.host.clone();
    let preview = |from: Username, id: crate::client::MessageId| {
        let host = host.clone();
        async move { host.message(&from, &id).await.ok().map(|m| m.body) }
    };
    let mut missed = Missed::default();
    let quiet = tokio::time::sleep(REPLAY_QUIET);
    tokio::pin!(quiet);
    loop {
        let delivered = tokio::select! {
            _ = stop.as_mut() => return None,
            reason = host.closed() => return Some(reason),
            _ = heartbeat.tick() => {
                match tokio::time::timeout(HEARTBEAT_TIMEOUT, host.status()).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => return Some(e.to_string()),
                    Err(_) => return Some("the host stopped answering".into()),
                }
            }
            _ = &mut quiet, if !missed.is_empty() => {
                summarise(agent, &mut missed).await;
                continue;
            }
            delivered = link.events.recv() => match delivered {
                Some(Ok(delivered)) => delivered,
                // The host ended the stream (it fell behind, say): subscribe again.
                Some(Err(CtlError::Disconnected(reason))) => return Some(reason),
                Some(Err(e)) => {
                    eprintln!("smvsctl agent: an event could not be read: {e}");
                    continue;
                }
                None => return Some("the host ended the subscription".into()),
            },
        };
        let (seq, replayed) = (delivered.event.seq, delivered.event.replayed);
        if seq != 0 {
            if seq <= *seen {
                delivered.handled();
                continue;
            }
            *seen = seq;
        }
        let event = delivered.event.event.clone();
        if replayed {
            // Gathered, not shown one by one; the summary comes when the replay goes quiet.
            quiet
                .as_mut()
                .reset(tokio::time::Instant::now() + REPLAY_QUIET);
            if let EventView::MessageReceived { peer, .. } = &event {
                missed.add(peer);
                delivered.handled();
                continue;
            }
        } else {
            // The first live event: the replay is over.
            summarise(agent, &mut missed).await;
        }
        let news = match event {
            EventView::MessageReceived { id, peer, .. } => Some(News::Message { id, from: peer }),
            EventView::KeyChanged { peer } => Some(News::KeyChanged(peer)),
            EventView::DeviceLinked { name } => Some(News::DeviceLinked(name)),
            // A call that rang while the agent was away has stopped ringing by now.
            EventView::CallIncoming(c) if !replayed => Some(News::Ringing {
                id: c.id,
                peer: c.peer,
                video: c.video,
                audio: c.audio,
            }),
            EventView::CallState(c) => Some(News::Call {
                id: c.id,
                peer: c.peer,
                state: c.state,
                reason: c.reason,
            }),
            EventView::Resync => {
                agent
                    .desktop
                    .notify(
                        0,
                        "SMVS",
                        "You were away longer than your host keeps a record of: open your conversations to catch up",
                        &[],
                    )
                    .await;
                None
            }
            _ => None,
        };
        if let Some(news) = news {
            agent.tell(news, preview).await;
        }
        delivered.handled();
    }
}

/// Shows what was missed, if anything, as one notification.
async fn summarise(agent: &Agent, missed: &mut Missed) {
    if let Some(text) = missed.take_summary() {
        agent.desktop.notify(0, "SMVS", &text, &[]).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_starts_over_after_a_link() {
        let mut b = Backoff::new();
        let waits: Vec<Duration> = (0..8).map(|_| b.next_with(u64::MAX)).collect();
        for (wait, base) in waits.iter().zip([1u64, 2, 4, 8, 16, 30, 30, 30]) {
            let base = Duration::from_secs(base);
            assert!(*wait >= base / 2 && *wait <= base, "{wait:?} for {base:?}");
        }
        assert_eq!(b.next_with(0), BACKOFF_MAX / 2, "the low end of the jitter");
        b.reset();
        assert!(b.next_with(12345) <= BACKOFF_MIN);
    }

    #[test]
    fn what_arrived_while_away_is_one_summary() {
        let user = |n: &str| Username::parse(n).unwrap();
        let mut missed = Missed::default();
        assert_eq!(missed.take_summary(), None);
        for peer in ["bob", "alice", "bob", "alice", "alice"] {
            missed.add(&user(peer));
        }
        assert_eq!(
            missed.take_summary().unwrap(),
            "5 new messages from alice, bob while you were away"
        );
        assert!(missed.is_empty());
        missed.add(&user("carol"));
        assert_eq!(
            missed.take_summary().unwrap(),
            "1 new message from carol while you were away"
        );
    }
}
