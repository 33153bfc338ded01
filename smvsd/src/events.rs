//! Events: the device hub, which numbers every host event, appends it to the event log, and
//! fans it out to every subscribed device (local socket and device-port subscribers, D-Bus);
//! and [`Events`], the handle every owner publishes through.
//!
//! ```text
//!  trust / outbox / inbox / calls ──Events::publish──► DeviceHub ──append──► event log (storage)
//!                                                         │ once committed
//!                                                         └──try_send──► one bounded queue per device
//!                                                                        └─► api task ─► EventSink / D-Bus
//! ```
//!
//! Owns: the list of subscribers, the seq counter, the newest events in memory. Serializes: by
//! being an actor (one mailbox, handled in order), so every device sees the events in the
//! order they were published, numbered without gaps.
//!
//! An event goes out only once the log has it on disk: a seq a device has seen is never given
//! to another event after a crash. A device that was away [`join`]s after the last seq it
//! took in: the hub replays the newest events from memory, or the device's task reads older
//! ones from the log page by page and then joins again, so nothing is missed and nothing comes
//! twice. A device keeps a named [`Cursor`] on the host when it wants the host to remember
//! where it is.
//!
//! A device that stops draining its queue is dropped rather than allowed to hold the host
//! back. Events carry ids and names, never message text.

use std::collections::VecDeque;

use actix::{Actor, AsyncContext, Context, Handler, Message, MessageResult};
use tokio::sync::mpsc;

use crate::model::{now_ms, HostEvent};
use crate::storage::{EventLogState, Storage};

/// Events a device may have waiting before it is considered stuck.
pub const DEVICE_QUEUE: usize = 4096;
/// The newest events kept in memory for devices that come back after a short absence.
const RECENT: usize = 2048;
/// Events one read of the log returns.
const PAGE: usize = 256;

/// One event as devices get it: its place in the log, and whether it is replayed (the device
/// was away when it happened) or live.
#[derive(Debug, Clone)]
pub struct Logged {
    pub seq: u64,
    pub event: HostEvent,
    pub replayed: bool,
}

/// What a device's queue carries.
#[derive(Debug, Clone)]
pub enum Feed {
    Event(Box<Logged>),
    /// Events after the device's position are gone from the log (pruned, or the log is newer
    /// than the position): it should re-read its state. The events that follow are complete.
    Resync,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub HostEvent);

/// The append of event `seq` (and every one before it) is over.
#[derive(Message)]
#[rtype(result = "()")]
struct Committed(u64);

/// Subscribes `feed`: live events only (`since: None`), or the events after `since` and then
/// live ones. Use [`join`], which also reads what is no longer in memory.
#[derive(Message)]
#[rtype(result = "Joined")]
struct Subscribe {
    since: Option<u64>,
    feed: mpsc::Sender<Feed>,
}

enum Joined {
    /// Subscribed; what came after `since` is in the queue or on its way. `head`: the newest
    /// seq given out.
    Live { head: u64 },
    /// `since` is older than what the hub has in memory: read the log after it, up to `head`,
    /// and ask again. The feed was not subscribed.
    Behind { head: u64 },
}

/// The storage handle and log head, for readers of the log and cursors.
#[derive(Message)]
#[rtype(result = "(Storage, u64)")]
struct LogAccess;

pub struct DeviceHub {
    storage: Storage,
    devices: Vec<mpsc::Sender<Feed>>,
    /// The next seq to give out.
    next: u64,
    /// Every event up to this seq has been appended (or failed to be) and sent out.
    committed: u64,
    /// Given a seq, not yet appended.
    pending: VecDeque<(u64, HostEvent)>,
    /// The newest committed events, in order, without gaps.
    recent: VecDeque<(u64, HostEvent)>,
}

impl DeviceHub {
    /// A hub that numbers on from the log's head.
    pub fn new(storage: Storage, log: EventLogState) -> DeviceHub {
        DeviceHub {
            storage,
            devices: Vec::new(),
            next: log.head + 1,
            committed: log.head,
            pending: VecDeque::new(),
            recent: VecDeque::with_capacity(RECENT),
        }
    }

    fn send_out(&mut self, feed: Feed) {
        self.devices
            .retain(|device| match device.try_send(feed.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!("a device is not reading its events; unsubscribing it");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }
}

impl Actor for DeviceHub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(DEVICE_QUEUE);
    }
}

impl Handler<Publish> for DeviceHub {
    type Result = ();
    fn handle(&mut self, msg: Publish, ctx: &mut Self::Context) {
        let seq = self.next;
        self.next += 1;
        self.pending.push_back((seq, msg.0.clone()));
        let storage = self.storage.clone();
        let hub = ctx.address();
        // The storage thread runs appends in the order they are asked for, so when this one
        // is over, so is every earlier one.
        actix::spawn(async move {
            if let Err(e) = storage.append_event(seq, now_ms(), msg.0).await {
                // Devices still get it live; one that is away when it happens will not.
                tracing::error!(error = %e, seq, "an event could not be written to the event log");
            }
            hub.do_send(Committed(seq));
        });
    }
}

impl Handler<Committed> for DeviceHub {
    type Result = ();
    fn handle(&mut self, msg: Committed, _: &mut Self::Context) {
        self.committed = self.committed.max(msg.0);
        while self
            .pending
            .front()
            .is_some_and(|(seq, _)| *seq <= self.committed)
        {
            let Some((seq, event)) = self.pending.pop_front() else {
                break;
            };
            self.send_out(Feed::Event(Box::new(Logged {
                seq,
                event: event.clone(),
                replayed: false,
            })));
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back((seq, event));
        }
    }
}

impl Handler<Subscribe> for DeviceHub {
    type Result = MessageResult<Subscribe>;
    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        let head = self.committed;
        let Some(since) = msg.since else {
            self.devices.push(msg.feed);
            return MessageResult(Joined::Live { head });
        };
        if since >= self.next {
            // A position this log never gave out: the log was replaced (a new database).
            let _ = msg.feed.try_send(Feed::Resync);
            self.devices.push(msg.feed);
            return MessageResult(Joined::Live { head });
        }
        if since < head {
            let oldest = self.recent.front().map_or(head + 1, |(seq, _)| *seq);
            if since + 1 < oldest {
                return MessageResult(Joined::Behind { head });
            }
            for (seq, event) in self.recent.iter().filter(|(seq, _)| *seq > since) {
                let replayed = Feed::Event(Box::new(Logged {
                    seq: *seq,
                    event: event.clone(),
                    replayed: true,
                }));
                // A new queue holds DEVICE_QUEUE > RECENT events; one that is full was not
                // read from, and is dropped below like any stuck device.
                if msg.feed.try_send(replayed).is_err() {
                    return MessageResult(Joined::Live { head });
                }
            }
        }
        self.devices.push(msg.feed);
        MessageResult(Joined::Live { head })
    }
}

impl Handler<LogAccess> for DeviceHub {
    type Result = MessageResult<LogAccess>;
    fn handle(&mut self, _: LogAccess, _: &mut Self::Context) -> Self::Result {
        MessageResult((self.storage.clone(), self.committed))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the device hub stopped")]
    Hub,
    #[error("the device's queue closed")]
    Closed,
    #[error("reading the event log failed: {0}")]
    Log(#[from] crate::storage::StorageError),
}

impl From<actix::MailboxError> for JoinError {
    fn from(_: actix::MailboxError) -> Self {
        JoinError::Hub
    }
}

/// Subscribes `feed` to the hub: live events only (`since: None`), or everything after
/// `since` and then live events, each once and in order. Returns the newest seq at the moment
/// the feed went live. Sends into `feed` with back-pressure while it reads the log, so whoever
/// drains the feed must run alongside.
pub async fn join(
    hub: &actix::Addr<DeviceHub>,
    mut since: Option<u64>,
    feed: mpsc::Sender<Feed>,
) -> Result<u64, JoinError> {
    let mut first = true;
    loop {
        let head = match hub
            .send(Subscribe {
                since,
                feed: feed.clone(),
            })
            .await?
        {
            Joined::Live { head } => return Ok(head),
            Joined::Behind { head } => head,
        };
        let (storage, _) = hub.send(LogAccess).await?;
        let mut from = since.unwrap_or(head);
        loop {
            let page = storage.events_after(from, head, PAGE).await?;
            if first && page.pruned {
                feed.send(Feed::Resync)
                    .await
                    .map_err(|_| JoinError::Closed)?;
            }
            first = false;
            for (seq, event) in page.events {
                let replayed = Feed::Event(Box::new(Logged {
                    seq,
                    event,
                    replayed: true,
                }));
                feed.send(replayed).await.map_err(|_| JoinError::Closed)?;
                from = seq;
            }
            if page.complete {
                // Up to `head`, what is not in the log was deleted.
                from = head;
                break;
            }
        }
        since = Some(from);
    }
}

/// A device's named position in the event log, which the host keeps for it: the device
/// takes events in, answers each once it has handled it, and the cursor moves to it.
pub struct Cursor {
    storage: Storage,
    device: String,
    name: String,
    /// The last seq the device answered.
    acked: u64,
    saved: u64,
    saved_at: std::time::Instant,
}

/// How often a moving cursor is written (and always when its stream ends). A host that
/// crashes in between replays the few events of the last moment again; their seqs let a
/// device tell.
const CURSOR_SAVE: std::time::Duration = std::time::Duration::from_millis(500);

impl Cursor {
    /// `device`'s cursor `name`: where it stands, or (never used) the log's head, saved so that
    /// what happens from now on is kept for it.
    pub async fn open(
        hub: &actix::Addr<DeviceHub>,
        device: String,
        name: String,
    ) -> Result<Cursor, JoinError> {
        let (storage, head) = hub.send(LogAccess).await?;
        let acked = match storage.cursor(device.clone(), name.clone()).await? {
            Some(seq) => seq,
            None => {
                storage
                    .set_cursor(device.clone(), name.clone(), head)
                    .await?;
                head
            }
        };
        Ok(Cursor {
            storage,
            device,
            name,
            acked,
            saved: acked,
            saved_at: std::time::Instant::now(),
        })
    }

    /// Where the stream starts: after this seq.
    pub fn position(&self) -> u64 {
        self.acked
    }

    /// The device has handled event `seq` (answers come in order; after a resync, a seq may
    /// be lower than the last one: the log was replaced).
    pub fn acked(&mut self, seq: u64) {
        self.acked = seq;
        if self.saved_at.elapsed() >= CURSOR_SAVE {
            self.spawn_save();
        }
    }

    fn spawn_save(&mut self) {
        if self.acked == self.saved {
            return;
        }
        self.saved = self.acked;
        self.saved_at = std::time::Instant::now();
        let (storage, device, name, seq) = (
            self.storage.clone(),
            self.device.clone(),
            self.name.clone(),
            self.acked,
        );
        actix::spawn(async move {
            if let Err(e) = storage.set_cursor(device, name, seq).await {
                tracing::warn!(error = %e, "a device's event cursor could not be saved");
            }
        });
    }
}

impl Drop for Cursor {
    /// The stream ended (the device left, or its link broke): save where it got to.
    fn drop(&mut self) {
        self.spawn_save();
    }
}

/// Where owners publish events. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct Events {
    hub: actix::Recipient<Publish>,
}

impl Events {
    pub fn new(hub: actix::Recipient<Publish>) -> Events {
        Events { hub }
    }

    /// Tells devices. A full hub drops the event (and says so) rather than hold the host up.
    pub fn publish(&self, event: HostEvent) {
        if self.hub.try_send(Publish(event)).is_err() {
            tracing::warn!("device hub is full; an event was dropped");
        }
    }
}
