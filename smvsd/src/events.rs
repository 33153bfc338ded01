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
//! to another event after a crash. The exception is an event a restart makes true again (a
//! message stored, sent or delivered) whose seq a durable append has reserved: it goes out as it
//! is published, when every event before it is out, and its append follows without an fsync.
//! A restart numbers past the reservation, and announces again what such an event said should a
//! crash or power cut take it from the log. A device that was away [`join`]s after the last seq it
//! took in: the hub replays the newest events from memory, or the device's task reads older
//! ones from the log page by page and then joins again, so nothing is missed and nothing comes
//! twice. A device keeps a named [`Cursor`] on the host when it wants the host to remember
//! where it is.
//!
//! A device that stops draining its queue is dropped rather than allowed to hold the host
//! back. Events carry ids and names, never message text.

use std::collections::{HashMap, VecDeque};

use actix::{Actor, AsyncContext, Context, Handler, Message, MessageResult};
use smvs_schema::Username;
use tokio::sync::{mpsc, oneshot};

use crate::model::Status;
use crate::model::{now_ms, HostEvent, MessageId};
use crate::storage::{EventLogState, Storage, LAZY_ROOM};

/// Events a device may have waiting before it is considered stuck.
pub const DEVICE_QUEUE: usize = 4096;
/// The newest events kept in memory for devices that come back after a short absence.
const RECENT: usize = 2048;
/// Room a device's queue must have, beyond what is replayed into it, when it goes live.
const HEADROOM: usize = 1024;
/// Events one read of the log returns.
const PAGE: usize = 256;
/// Named cursors one device may keep on the host.
pub const MAX_CURSORS: u64 = 16;
/// How long a cursor's new stream waits for the old one (taken over) to save where it got.
const TAKEOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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
    /// Events after the device's position are gone from the log (pruned, the log is newer
    /// than the position, or one could not be written): it should re-read its state. The
    /// events that follow are complete. (An event sent out ahead of its append that then
    /// could not be written is followed by this too, perhaps after later events.)
    Resync,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub HostEvent);

/// The append of the events `seqs` is over (`written`: they are in the log).
#[derive(Message)]
#[rtype(result = "()")]
struct Appended {
    seqs: std::ops::RangeInclusive<u64>,
    written: bool,
    /// A durable append's reservation for lazy ones (see [`DeviceHub::reserved`]).
    reserved: Option<u64>,
}

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
    /// seq sent out.
    Live { head: u64 },
    /// `since` is older than what the hub has in memory, or the queue has no room for the
    /// replay: read the log after it, up to `head`, make room, and ask again. The feed was not
    /// subscribed.
    Behind { head: u64 },
}

/// The storage handle and log head, for readers of the log and cursors.
#[derive(Message)]
#[rtype(result = "(Storage, u64)")]
struct LogAccess;

/// Claims a device's cursor for a new stream; an older stream on it is told to stop, and the
/// claimant waits for it (`previous`) before it reads the position.
#[derive(Message)]
#[rtype(result = "Claim")]
struct ClaimCursor {
    key: (String, String),
}

struct Claim {
    generation: u64,
    stop: oneshot::Receiver<()>,
    /// Sent when the new stream has saved and closed (to whoever takes it over next).
    closed: oneshot::Sender<()>,
    previous: Option<oneshot::Receiver<()>>,
}

#[derive(Message)]
#[rtype(result = "()")]
struct ReleaseCursor {
    key: (String, String),
    generation: u64,
}

/// A stream open on a cursor: how to stop it, and how to hear that it has saved and closed.
struct OpenCursor {
    generation: u64,
    stop: oneshot::Sender<()>,
    closed: oneshot::Receiver<()>,
}

/// An event that has its seq and waits for its append.
struct Pending {
    seq: u64,
    event: HostEvent,
    written: Option<bool>,
    /// Sent out as it was published, before its append (see [`redone_after_restart`]).
    out: bool,
}

pub struct DeviceHub {
    storage: Storage,
    devices: Vec<mpsc::Sender<Feed>>,
    /// The next seq to give out.
    next: u64,
    /// Every event up to this seq has been appended (or failed to be) and sent out.
    committed: u64,
    /// Every event up to this seq has been sent out or will never be (at least `committed`;
    /// more when events went out before their appends).
    sent: u64,
    /// Seqs up to here are reserved on disk by a durable append: events among them that a
    /// restart makes true again may be appended lazily (no fsync before devices hear them).
    reserved: u64,
    /// Given a seq, waiting for the append, in seq order.
    pending: VecDeque<Pending>,
    /// Published and not yet handed to storage: the next [`Flush`] appends them.
    unwritten: Vec<(u64, i64, HostEvent)>,
    flush_queued: bool,
    /// A [`Flush`] is due in [`LAZY_APPEND_DELAY`] (only events already sent out wait).
    flush_later: bool,
    /// The newest committed events, in order (gaps where deletions took some).
    recent: VecDeque<(u64, HostEvent)>,
    /// Cursors with a stream open, by (device, name).
    cursors: HashMap<(String, String), OpenCursor>,
    generations: u64,
    last_publish: std::time::Instant,
    /// [`AllAppended`]s waiting, each for the seq up to which it waits.
    appended_waiters: Vec<(u64, Option<oneshot::Sender<()>>)>,
}

impl DeviceHub {
    /// A hub that numbers on from the log's head.
    pub fn new(storage: Storage, log: EventLogState) -> DeviceHub {
        DeviceHub {
            storage,
            devices: Vec::new(),
            // Past the reservation too: a lazy append a power cut took may have given out seqs
            // beyond the head.
            next: log.head.max(log.reserved) + 1,
            committed: log.head.max(log.reserved),
            sent: log.head.max(log.reserved),
            reserved: log.reserved,
            pending: VecDeque::new(),
            unwritten: Vec::new(),
            flush_queued: false,
            flush_later: false,
            recent: VecDeque::with_capacity(RECENT),
            cursors: HashMap::new(),
            generations: 0,
            last_publish: std::time::Instant::now(),
            appended_waiters: Vec::new(),
        }
    }

    /// Sends a live event to every device and keeps it for those that come back soon.
    fn give_out(&mut self, seq: u64, event: &HostEvent) {
        self.send_out(Feed::Event(Box::new(Logged {
            seq,
            event: event.clone(),
            replayed: false,
        })));
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back((seq, event.clone()));
        self.sent = self.sent.max(seq);
    }

    fn send_out(&mut self, feed: Feed) {
        self.devices
            .retain(|device| match device.try_send(feed.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!("a device is not reading its events; ending its stream");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }

    /// What a deletion takes away is no longer replayed from memory either (the log's rows
    /// went with the deletion itself).
    fn forget_deleted(&mut self, id: Option<&MessageId>, peer: &Username) {
        self.recent.retain(|(_, e)| {
            let about = e.peer() == Some(peer);
            !(about && (id.is_none() || e.message() == id))
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
        self.last_publish = std::time::Instant::now();
        if let HostEvent::Deleted { id, peer } = &msg.0 {
            self.forget_deleted(id.as_ref(), peer);
        }
        // Out now, ahead of its append, when a restart would make it true again, its seq is
        // reserved on disk, and every event before it is out (devices see events in order).
        // (Those sent early are always the first of `pending`.)
        // At most what `recent` holds runs ahead of the appends, so a device that joins can be
        // given everything after the log's head from memory.
        let out = seq <= self.reserved
            && redone_after_restart(&msg.0)
            && self.pending.back().is_none_or(|p| p.out)
            && self.sent.saturating_sub(self.committed) < RECENT as u64;
        if out {
            self.give_out(seq, &msg.0);
        }
        self.pending.push_back(Pending {
            seq,
            event: msg.0.clone(),
            written: None,
            out,
        });
        self.unwritten.push((seq, now_ms(), msg.0));
        if out {
            // Devices have it; its append can wait for the others of the next moment (a
            // message's sent, on-its-way and delivered events in one storage job).
            if !self.flush_queued && !self.flush_later {
                self.flush_later = true;
                ctx.notify_later(Flush, LAZY_APPEND_DELAY);
            }
        } else {
            self.flush_now(ctx);
        }
    }
}

/// How long the append of events already sent out may wait for more to share its job.
const LAZY_APPEND_DELAY: std::time::Duration = std::time::Duration::from_millis(2);

impl DeviceHub {
    /// Appends what is unwritten as soon as the mailbox's publishes are in.
    fn flush_now(&mut self, ctx: &mut Context<Self>) {
        if !self.flush_queued {
            self.flush_queued = true;
            ctx.notify(Flush);
        }
    }
}

/// Whether an event is one a restart makes true again should a power cut take it from the log:
/// a message stored, sent or received (the daemon announces stored messages the log lacks
/// when it starts: `Storage::unannounced_messages`), delivered (its status write is lazy too;
/// the message goes out again and its receipt comes back) or on its way (a status the log does
/// not keep). Its append then needs no fsync of its own: the message's own commit was durable.
fn redone_after_restart(event: &HostEvent) -> bool {
    matches!(
        event,
        HostEvent::MessageSent { .. }
            | HostEvent::MessageReceived { .. }
            | HostEvent::MessageStatus {
                status: Status::Delivered | Status::Sent,
                ..
            }
    )
}

/// Appends what was published since the last flush, in one storage job: the hub handles the
/// publishes already in its mailbox first, so a burst of events costs one job, not one each.
#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

impl Handler<Flush> for DeviceHub {
    type Result = ();
    fn handle(&mut self, _: Flush, ctx: &mut Self::Context) {
        // (A delayed flush that comes after an earlier one finds nothing, or the next run.)
        self.flush_queued = false;
        self.flush_later = false;
        let run = std::mem::take(&mut self.unwritten);
        let Some(last) = run.last().map(|(seq, _, _)| *seq) else {
            return;
        };
        let first = run[0].0;
        let lazy = last <= self.reserved && run.iter().all(|(_, _, e)| redone_after_restart(e));
        let storage = self.storage.clone();
        let hub = ctx.address();
        actix::spawn(async move {
            let appended = if lazy {
                storage.append_events_lazily(run).await
            } else {
                storage.append_events(run).await
            };
            let written = match appended {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, first, last, "events could not be written to the event log");
                    false
                }
            };
            hub.do_send(Appended {
                seqs: first..=last,
                written,
                reserved: (written && !lazy).then(|| last.saturating_add(LAZY_ROOM)),
            });
        });
    }
}

impl Handler<Appended> for DeviceHub {
    type Result = ();
    fn handle(&mut self, msg: Appended, _: &mut Self::Context) {
        if let Some(reserved) = msg.reserved {
            self.reserved = self.reserved.max(reserved);
        }
        let Some(first) = self.pending.front().map(|p| p.seq) else {
            return;
        };
        let skip = usize::try_from(msg.seqs.start().saturating_sub(first)).unwrap_or(usize::MAX);
        for p in self.pending.iter_mut().skip(skip) {
            if !msg.seqs.contains(&p.seq) {
                break;
            }
            p.written = Some(msg.written);
        }
        // Out in seq order, each once its own append is over.
        let mut lost = false;
        while self.pending.front().is_some_and(|p| p.written.is_some()) {
            let Some(p) = self.pending.pop_front() else {
                break;
            };
            self.committed = p.seq;
            self.sent = self.sent.max(p.seq);
            if p.written != Some(true) {
                // Not in the log: nobody gets it (or, sent out early, its seq is reserved), so
                // no device holds a seq that a restart could give to another event; the ones
                // listening re-read their state.
                lost = true;
                continue;
            }
            if !p.out {
                self.give_out(p.seq, &p.event);
            }
        }
        if lost {
            self.send_out(Feed::Resync);
        }
        let committed = self.committed;
        self.appended_waiters.retain_mut(|(upto, waiter)| {
            if *upto > committed {
                return true;
            }
            if let Some(waiter) = waiter.take() {
                let _ = waiter.send(());
            }
            false
        });
    }
}

/// Answers once every event published before it has been appended (or failed to be).
#[derive(Message)]
#[rtype(result = "()")]
struct AllAppended(oneshot::Sender<()>);

impl Handler<AllAppended> for DeviceHub {
    type Result = ();
    fn handle(&mut self, msg: AllAppended, ctx: &mut Self::Context) {
        let upto = self.next - 1;
        if self.committed >= upto {
            let _ = msg.0.send(());
        } else {
            self.appended_waiters.push((upto, Some(msg.0)));
            // Someone waits for them: no delay.
            if !self.unwritten.is_empty() {
                self.flush_now(ctx);
            }
        }
    }
}

impl Handler<Subscribe> for DeviceHub {
    type Result = MessageResult<Subscribe>;
    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        // The log can be read up to `head`; devices were given events up to `sent`, which
        // may be further (events sent out before their appends), and are replayed from memory.
        let head = self.committed;
        let sent = self.sent.max(head);
        let Some(since) = msg.since else {
            self.devices.push(msg.feed);
            return MessageResult(Joined::Live { head: sent });
        };
        if since >= self.next {
            // A position this log never gave out: the log was replaced (a new database).
            if msg.feed.try_send(Feed::Resync).is_err() {
                return MessageResult(Joined::Behind { head });
            }
            self.devices.push(msg.feed);
            return MessageResult(Joined::Live { head: sent });
        }
        if since < sent {
            let oldest = self.recent.front().map_or(sent + 1, |(seq, _)| *seq);
            let replay = self.recent.iter().filter(|(seq, _)| *seq > since);
            // The queue must take the replay and leave room for live events; else the device
            // reads the log and makes room first.
            if since + 1 < oldest || msg.feed.capacity() < replay.clone().count() + HEADROOM {
                return MessageResult(Joined::Behind { head });
            }
            for (seq, event) in replay {
                let replayed = Feed::Event(Box::new(Logged {
                    seq: *seq,
                    event: event.clone(),
                    replayed: true,
                }));
                if msg.feed.try_send(replayed).is_err() {
                    // Checked above; a queue that closed meanwhile is simply gone.
                    return MessageResult(Joined::Behind { head });
                }
            }
        }
        self.devices.push(msg.feed);
        MessageResult(Joined::Live { head: sent })
    }
}

impl Handler<LogAccess> for DeviceHub {
    type Result = MessageResult<LogAccess>;
    fn handle(&mut self, _: LogAccess, _: &mut Self::Context) -> Self::Result {
        MessageResult((self.storage.clone(), self.committed))
    }
}

impl Handler<ClaimCursor> for DeviceHub {
    type Result = MessageResult<ClaimCursor>;
    fn handle(&mut self, msg: ClaimCursor, _: &mut Self::Context) -> Self::Result {
        self.generations += 1;
        let generation = self.generations;
        let (stop_tx, stop) = oneshot::channel();
        let (closed_tx, closed) = oneshot::channel();
        let previous = self
            .cursors
            .insert(
                msg.key,
                OpenCursor {
                    generation,
                    stop: stop_tx,
                    closed,
                },
            )
            .map(|old| {
                let _ = old.stop.send(());
                old.closed
            });
        MessageResult(Claim {
            generation,
            stop,
            closed: closed_tx,
            previous,
        })
    }
}

impl Handler<ReleaseCursor> for DeviceHub {
    type Result = ();
    fn handle(&mut self, msg: ReleaseCursor, _: &mut Self::Context) {
        if self
            .cursors
            .get(&msg.key)
            .is_some_and(|c| c.generation == msg.generation)
        {
            self.cursors.remove(&msg.key);
        }
    }
}

/// Whether every event published so far has been appended, and how long ago the last one
/// was published.
#[derive(Message)]
#[rtype(result = "(bool, std::time::Duration)")]
struct Drained;

impl Handler<Drained> for DeviceHub {
    type Result = MessageResult<Drained>;
    fn handle(&mut self, _: Drained, _: &mut Self::Context) -> Self::Result {
        MessageResult((self.pending.is_empty(), self.last_publish.elapsed()))
    }
}

/// How long the hub must have been quiet, everything appended, for a stopping host to go on.
const DRAIN_QUIET: std::time::Duration = std::time::Duration::from_millis(300);
/// The most a stopping host waits for that.
const DRAIN_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits, on a stopping host, until every event published has been appended and none has come
/// for [`DRAIN_QUIET`] (the last envelopes being stored publish theirs), or [`DRAIN_LIMIT`].
pub async fn drain(hub: &actix::Addr<DeviceHub>) {
    let deadline = tokio::time::Instant::now() + DRAIN_LIMIT;
    while tokio::time::Instant::now() < deadline {
        match hub.send(Drained).await {
            Ok((true, quiet)) if quiet >= DRAIN_QUIET => return,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            Err(_) => return,
        }
    }
    tracing::warn!("events were still being published as the host stopped");
}

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("the device hub stopped")]
    Hub,
    #[error("the device's queue closed")]
    Closed,
    #[error("reading the event log failed: {0}")]
    Log(#[from] crate::storage::StorageError),
    #[error(
        "this device already keeps {MAX_CURSORS} cursors on the host; reuse one of their names"
    )]
    TooManyCursors,
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
                // Up to `head`, what is not in the log was deleted. (A device may stand past
                // `head`, on events sent out ahead of their appends: it keeps its place.)
                from = from.max(head);
                break;
            }
        }
        since = Some(from);
        // Wait until the device has taken in enough of what it was sent for the hub's replay
        // from memory and some live events to fit.
        drop(
            feed.reserve_many(RECENT + HEADROOM)
                .await
                .map_err(|_| JoinError::Closed)?,
        );
    }
}

/// A device's named position in the event log, which the host keeps for it: the device
/// takes events in, answers each once it has handled it, and the cursor moves to it. One
/// stream at a time: a new one on the same cursor (the device reconnected before the host
/// noticed the old link was dead) takes it over, after the old one has saved where it got.
pub struct Cursor {
    hub: actix::Addr<DeviceHub>,
    storage: Storage,
    key: (String, String),
    generation: u64,
    /// Fires when another stream takes this cursor over.
    stop: Option<oneshot::Receiver<()>>,
    closed: Option<oneshot::Sender<()>>,
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
    /// what happens from now on is kept for it. Refused past [`MAX_CURSORS`] names.
    pub async fn open(
        hub: &actix::Addr<DeviceHub>,
        device: String,
        name: String,
    ) -> Result<Cursor, JoinError> {
        let key = (device, name);
        let claim = hub.send(ClaimCursor { key: key.clone() }).await?;
        let mut cursor = Cursor {
            hub: hub.clone(),
            storage: hub.send(LogAccess).await?.0,
            key,
            generation: claim.generation,
            stop: Some(claim.stop),
            closed: Some(claim.closed),
            acked: 0,
            saved: 0,
            saved_at: std::time::Instant::now(),
        };
        if let Some(previous) = claim.previous {
            // Its last answers first; a stream that hangs does not hold this one up for long.
            let _ = tokio::time::timeout(TAKEOVER_WAIT, previous).await;
        }
        let (storage, head) = hub.send(LogAccess).await?;
        let (device, name) = cursor.key.clone();
        cursor.acked = match storage.cursor(device.clone(), name.clone()).await? {
            Some(seq) => seq,
            None => {
                if storage.cursor_count(device.clone()).await? >= MAX_CURSORS {
                    return Err(JoinError::TooManyCursors);
                }
                storage.create_cursor(device, name, head).await?;
                head
            }
        };
        cursor.saved = cursor.acked;
        Ok(cursor)
    }

    /// Where the stream starts: after this seq.
    pub fn position(&self) -> u64 {
        self.acked
    }

    /// What fires when another stream takes this cursor over (once; the stream waits on it).
    pub fn take_stop(&mut self) -> Option<oneshot::Receiver<()>> {
        self.stop.take()
    }

    /// The device has handled event `seq` (answers come in order; after a resync, a seq may
    /// be lower than the last one: the log was replaced).
    pub fn acked(&mut self, seq: u64) {
        self.acked = seq;
        if self.saved_at.elapsed() >= CURSOR_SAVE {
            self.saved = self.acked;
            self.saved_at = std::time::Instant::now();
            let (storage, (device, name), seq) = (self.storage.clone(), self.key.clone(), seq);
            actix::spawn(async move {
                if let Err(e) = storage.set_cursor(device, name, seq).await {
                    tracing::warn!(error = %e, "a device's event cursor could not be saved");
                }
            });
        }
    }

    /// The stream ended: saves where the device got, then lets a stream that takes the
    /// cursor over go on.
    pub async fn close(mut self) {
        if self.acked != self.saved {
            let (device, name) = self.key.clone();
            if let Err(e) = self.storage.set_cursor(device, name, self.acked).await {
                tracing::warn!(error = %e, "a device's event cursor could not be saved");
            }
            self.saved = self.acked;
        }
        self.release();
    }

    fn release(&mut self) {
        if let Some(closed) = self.closed.take() {
            let _ = closed.send(());
            self.hub.do_send(ReleaseCursor {
                key: self.key.clone(),
                generation: self.generation,
            });
        }
    }
}

impl Drop for Cursor {
    /// Dropped without [`Cursor::close`] (its task was cancelled): save in the background.
    fn drop(&mut self) {
        if self.closed.is_some() && self.acked != self.saved {
            let (storage, (device, name), seq) =
                (self.storage.clone(), self.key.clone(), self.acked);
            actix::spawn(async move {
                let _ = storage.set_cursor(device, name, seq).await;
            });
        }
        self.release();
    }
}

/// Where owners publish events. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct Events {
    hub: actix::Recipient<Publish>,
    appended: actix::Recipient<AllAppended>,
}

impl Events {
    pub fn new(hub: &actix::Addr<DeviceHub>) -> Events {
        Events {
            hub: hub.clone().recipient(),
            appended: hub.clone().recipient(),
        }
    }

    /// Returns once every event published before the call is in the log (or failed to be): a
    /// write that must not reach the disk before an event about it follows this. (The log's
    /// commits and the write's are in that order in the write-ahead log, so the write's, if
    /// durable, carries the event's to the disk too.)
    pub async fn all_appended(&self) {
        let (tx, rx) = oneshot::channel();
        if self.appended.try_send(AllAppended(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Tells devices. A full hub drops the event (and says so) rather than hold the host up.
    pub fn publish(&self, event: HostEvent) {
        if self.hub.try_send(Publish(event)).is_err() {
            tracing::warn!("device hub is full; an event was dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix::Actor;
    use std::time::Duration;

    fn peer() -> Username {
        Username::parse("bob").unwrap()
    }

    fn sent(id: MessageId) -> HostEvent {
        HostEvent::MessageSent {
            id,
            peer: peer(),
            time: 1,
        }
    }

    async fn next(rx: &mut mpsc::Receiver<Feed>) -> Option<(u64, HostEvent)> {
        match tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            Ok(Some(Feed::Event(logged))) => Some((logged.seq, logged.event)),
            Ok(Some(Feed::Resync)) => panic!("unexpected resync"),
            Ok(None) | Err(_) => None,
        }
    }

    /// An event a restart makes true again, with its seq reserved, reaches devices while its
    /// append still waits (the storage thread is held); an event that is not such waits for
    /// its append, and so does everything published after it: devices see all in order.
    #[test]
    fn reserved_message_events_go_out_before_their_appends_and_in_order() {
        actix::System::new().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let storage = Storage::open(
                &dir.path().join("host.db"),
                smvs_crypto::AeadKey::generate(),
            )
            .unwrap();
            let log = storage.event_log_state().await.unwrap();
            let hub = DeviceHub::new(storage.clone(), log).start();
            // Message events are logged only while their messages exist.
            let me = Username::parse("alice").unwrap();
            let mut ids = Vec::new();
            for text in ["one", "two"] {
                let payload = crate::model::Payload::Text(text.into());
                ids.push(
                    storage
                        .queue_outgoing(&me, &peer(), payload)
                        .await
                        .unwrap()
                        .id,
                );
            }
            let events = Events::new(&hub);
            let (tx, mut rx) = mpsc::channel(DEVICE_QUEUE);
            join(&hub, None, tx).await.unwrap();

            // A durable append reserves seqs for the lazy ones after it.
            events.publish(HostEvent::KeyChanged { peer: peer() });
            events.all_appended().await;
            let (first, _) = next(&mut rx).await.unwrap();

            // Hold the storage thread: no append can land.
            let (release, held) = std::sync::mpsc::channel::<()>();
            let held_storage = storage.clone();
            let holding = tokio::task::spawn_local(async move {
                held_storage
                    .call_for_tests(move |_| {
                        held.recv().ok();
                        Ok(())
                    })
                    .await
            });
            tokio::time::sleep(Duration::from_millis(50)).await;

            let a = ids[0];
            events.publish(sent(a));
            assert_eq!(next(&mut rx).await, Some((first + 1, sent(a))));
            // Not redone after a restart: waits for its append, and what follows waits too.
            events.publish(HostEvent::KeyChanged { peer: peer() });
            let b = ids[1];
            events.publish(sent(b));
            assert_eq!(next(&mut rx).await, None);

            release.send(()).unwrap();
            holding.await.unwrap().unwrap();
            assert_eq!(
                next(&mut rx).await,
                Some((first + 2, HostEvent::KeyChanged { peer: peer() }))
            );
            assert_eq!(next(&mut rx).await, Some((first + 3, sent(b))));

            // All of them are in the log, and a device back from where it left off gets
            // only what came after.
            events.all_appended().await;
            let page = storage.events_after(first, first + 3, 16).await.unwrap();
            let seqs: Vec<u64> = page.events.iter().map(|(seq, _)| *seq).collect();
            assert_eq!(seqs, vec![first + 1, first + 2, first + 3]);
            let (tx, mut again) = mpsc::channel(DEVICE_QUEUE);
            join(&hub, Some(first + 1), tx).await.unwrap();
            assert_eq!(next(&mut again).await.map(|(seq, _)| seq), Some(first + 2));
            assert_eq!(next(&mut again).await.map(|(seq, _)| seq), Some(first + 3));
            assert_eq!(next(&mut again).await, None);
        });
    }
}
