//! The agent on a linked device: the host's events over the device link, and a new link after
//! the old one drops (suspend and resume, a network change, the host restarting).
//!
//! ```text
//!  connect ─► subscribe ─► unread counts ─► (after a reconnect) one summary notification
//!     ▲        └─► events ─► notifications, until the link drops or a heartbeat goes unanswered
//!     └──── backoff: 1 s, doubling to 30 s, each wait jittered ◄──┘
//! ```
//!
//! What arrived while the link was down is not notified message by message: the agent
//! compares each conversation's unread count with what it knew, and shows one notification
//! ("3 new messages from alice, bob while you were away").

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use smvs_schema::Username;
use tokio::sync::mpsc;

use super::{Agent, News};
use crate::client::{EventView, HostClient, Subscription};
use crate::error::CtlError;

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

    fn next(&mut self) -> Duration {
        self.next_with(u64::from_le_bytes(smvs_crypto::random_array::<8>()))
    }
}

/// Unread messages per conversation, as last known.
type Unread = HashMap<Username, u32>;

/// What arrived since `before`: (messages, from whom), the peers in name order.
pub fn missed(before: &Unread, now: &Unread) -> (u32, Vec<Username>) {
    let mut from = BTreeMap::new();
    for (peer, count) in now {
        let new = count.saturating_sub(before.get(peer).copied().unwrap_or(0));
        if new > 0 {
            from.insert(peer.as_str().to_owned(), (peer.clone(), new));
        }
    }
    let total = from.values().map(|(_, n)| n).sum();
    (total, from.into_values().map(|(peer, _)| peer).collect())
}

/// The one notification for what arrived while away.
pub fn summary(total: u32, from: &[Username]) -> String {
    let names: Vec<&str> = from.iter().map(Username::as_str).collect();
    let noun = if total == 1 { "message" } else { "messages" };
    format!(
        "{total} new {noun} from {} while you were away",
        names.join(", ")
    )
}

/// One live link: the client, its event stream, and the unread counts when it opened.
struct Link {
    host: Rc<HostClient>,
    _subscription: Subscription,
    events: mpsc::Receiver<Result<EventView, CtlError>>,
    unread: Unread,
}

async fn open(address: Option<&str>, proxy: Option<&str>) -> Result<Link, CtlError> {
    let host = Rc::new(crate::client::connect_device(address, proxy).await?);
    let (tx, events) = mpsc::channel(crate::client::EVENT_QUEUE);
    // Subscribed before counting, so nothing falls between the count and the stream.
    let subscription = host.subscribe(tx).await?;
    let unread = host
        .conversations()
        .await?
        .into_iter()
        .map(|c| (c.peer, c.unread))
        .collect();
    Ok(Link {
        host,
        _subscription: subscription,
        events,
        unread,
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
    // Unread counts as of the last event seen; None until the first link.
    let mut known: Option<Unread> = None;
    loop {
        let opened = tokio::select! {
            _ = &mut stop => return Ok(()),
            opened = open(address.as_deref(), proxy.as_deref()) => opened,
        };
        match opened {
            Ok(mut link) => {
                backoff.reset();
                if let Some(before) = &known {
                    let (total, from) = missed(before, &link.unread);
                    if total > 0 {
                        agent
                            .desktop
                            .notify(0, "SMVS", &summary(total, &from), &[])
                            .await;
                    }
                }
                agent.set_host(Some(link.host.clone()));
                // Supervisors and tests wait for this line.
                println!(
                    "smvsctl agent: connected to the host at {shown}; relaying its events to desktop notifications"
                );
                let _ = std::io::Write::flush(&mut std::io::stdout());
                let mut unread = std::mem::take(&mut link.unread);
                let why = serve(&agent, &mut link, &mut unread, &mut stop).await;
                known = Some(unread);
                agent.set_host(None);
                match why {
                    None => return Ok(()),
                    Some(why) => eprintln!("smvsctl agent: lost the link to the host: {why}"),
                }
            }
            Err(e) => eprintln!("smvsctl agent: cannot reach the host: {e}"),
        }
        let wait = backoff.next();
        eprintln!("smvsctl agent: trying again in {:.1} s", wait.as_secs_f64());
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Relays one link's events until it drops (`Some(why)`) or `stop` (`None`), keeping `unread`
/// up to date.
async fn serve(
    agent: &Rc<Agent>,
    link: &mut Link,
    unread: &mut Unread,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
) -> Option<String> {
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    let host = link.host.clone();
    let preview = |from: Username, id: crate::client::MessageId| {
        let host = host.clone();
        async move { host.message(&from, &id).await.ok().map(|m| m.body) }
    };
    loop {
        let event = tokio::select! {
            _ = stop.as_mut() => return None,
            reason = host.closed() => return Some(reason),
            _ = heartbeat.tick() => {
                match tokio::time::timeout(HEARTBEAT_TIMEOUT, host.status()).await {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => return Some(e.to_string()),
                    Err(_) => return Some("the host stopped answering".into()),
                }
            }
            event = link.events.recv() => match event {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    eprintln!("smvsctl agent: an event could not be read: {e}");
                    continue;
                }
                None => return Some("the host ended the subscription".into()),
            },
        };
        let news = match event {
            EventView::MessageReceived { id, peer, .. } => {
                *unread.entry(peer.clone()).or_default() += 1;
                News::Message { id, from: peer }
            }
            EventView::Read { peer } => {
                unread.insert(peer, 0);
                continue;
            }
            EventView::Deleted { id: None, peer, .. } => {
                unread.remove(&peer);
                continue;
            }
            EventView::KeyChanged { peer } => News::KeyChanged(peer),
            EventView::DeviceLinked { name } => News::DeviceLinked(name),
            EventView::CallIncoming(c) => News::Ringing {
                id: c.id,
                peer: c.peer,
                video: c.video,
                audio: c.audio,
            },
            EventView::CallState(c) => News::Call {
                id: c.id,
                peer: c.peer,
                state: c.state,
                reason: c.reason,
            },
            _ => continue,
        };
        agent.tell(news, preview).await;
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
        let before: Unread = [(user("alice"), 1), (user("carol"), 2)].into();
        let now: Unread = [(user("alice"), 4), (user("bob"), 2), (user("carol"), 0)].into();
        let (total, from) = missed(&before, &now);
        assert_eq!(total, 5);
        assert_eq!(from, [user("alice"), user("bob")]);
        assert_eq!(
            summary(total, &from),
            "5 new messages from alice, bob while you were away"
        );
        assert_eq!(missed(&now, &now).0, 0);
    }
}
