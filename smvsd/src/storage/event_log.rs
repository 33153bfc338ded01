//! The event log: every event devices hear, in order, sealed, so a device that was away (a
//! suspended laptop, a host restart in between) gets exactly what it missed. The device hub
//! (`events`) gives out the seqs and appends; devices read after their cursor.
//!
//! What a row keeps is what the live event carried: ids, names, times, statuses, never message
//! text. It goes when:
//! - the message it is about is deleted or expires (trigger `messages_events`, by the message's
//!   row, `msg`), or the whole conversation is deleted (its messages' rows go, and the events of
//!   no message go by the conversation's tag, which only they carry);
//! - it is older than [`EVENT_LOG_DAYS`], or more than [`EVENT_LOG_MAX`] newer events exist.
//!
//! A device whose cursor is older than what pruning removed is told to resync.

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use smvs_schema::Username;

use super::{cached_exec, cached_row, Result, Storage, StorageError};
use crate::model::{
    Answerer, CallId, CallInfo, CallState, Direction, HostEvent, MessageId, Status,
};

/// Events older than this are pruned (by the hourly expiry run).
pub const EVENT_LOG_DAYS: i64 = 30;
/// The most events the log keeps; older ones are pruned as new ones come.
pub const EVENT_LOG_MAX: u64 = 100_000;
/// Count pruning runs once per this many appends.
const PRUNE_EVERY: u64 = 1024;
const DAY_MS: i64 = 24 * 3600 * 1000;
/// Seqs each durable append reserves past its own for lazy appends (see
/// [`Storage::append_events_lazily`]): a restart numbers on after the reservation, so a seq that
/// a device saw from a lazy append a power cut then took is never given to another event.
pub const LAZY_ROOM: u64 = 4096;

/// The log's newest seq and how far pruning has removed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventLogState {
    /// The newest seq ever given out (0: none yet).
    pub head: u64,
    /// Every event up to this seq is gone, pruned or deleted.
    pub pruned_upto: u64,
    /// Seqs up to here may have been given out by lazy appends: numbering goes on after it.
    pub reserved: u64,
}

/// One page of the log, oldest first.
#[derive(Debug)]
pub struct EventPage {
    pub events: Vec<(u64, HostEvent)>,
    /// Whether events after the asked-for seq were pruned (the reader missed some for good).
    pub pruned: bool,
    /// Whether the page reached `upto` (nothing more to read up to it).
    pub complete: bool,
}

impl Storage {
    pub async fn event_log_state(&self) -> Result<EventLogState> {
        self.call(|c, _| state(c)).await
    }

    /// One event alone: [`Storage::append_events`] with a run of one.
    #[cfg(test)]
    pub async fn append_event(&self, seq: u64, at: i64, event: HostEvent) -> Result<()> {
        self.append_events(vec![(seq, at, event)]).await
    }

    /// Appends a run of events, `(seq, at, event)` in seq order (the hub gives the seqs out),
    /// in one job; all of them are written or none is. Every [`PRUNE_EVERY`] appends, what is
    /// past [`EVENT_LOG_MAX`] is pruned in the same transaction.
    ///
    /// A row keeps its day, not its time (pruning needs no more), and never an earlier day
    /// than the row before it, so a clock that was wrong once cannot prune everything after.
    /// An event about a message that is gone by the time it is written (deleted between the
    /// change and its append) is not written: the deletion already took what the log had of it.
    /// Nor is a `sent` status, which only the outbox's memory holds: a device back from an
    /// absence reads the row's state, queued until the receipt makes it delivered.
    ///
    /// The append is durable, and reserves [`LAZY_ROOM`] seqs past the run's last for lazy
    /// appends.
    pub async fn append_events(&self, events: Vec<(u64, i64, HostEvent)>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.call(move |c, k| append(c, k, &events, true)).await
    }

    /// [`Storage::append_events`] with a commit that skips the fsync (see
    /// `SqliteWorker::call_lazy`), for events a restart makes true again when a power cut takes
    /// them: a delivery status (the message goes out again and its receipt comes back), or one
    /// the log does not keep. Every seq in the run must be within the reservation of an
    /// earlier durable append.
    pub async fn append_events_lazily(&self, events: Vec<(u64, i64, HostEvent)>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        self.call_lazy(move |c, k| append(c, k, &events, false))
            .await
    }

    /// Up to `limit` events after `since` and no later than `upto`, oldest first.
    pub async fn events_after(&self, since: u64, upto: u64, limit: usize) -> Result<EventPage> {
        self.call(move |c, k| {
            let log = state(c)?;
            let mut statement = c.prepare_cached(
                "SELECT seq, sealed FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
            )?;
            let rows = statement.query_map(
                params![
                    sql_seq(since)?,
                    sql_seq(upto)?,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ],
                |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)),
            )?;
            let mut events = Vec::new();
            for row in rows {
                let (seq, sealed) = row?;
                let seq = seq as u64;
                let record = k.open("event", &seq.to_be_bytes(), &sealed)?;
                let record: EventRecord = serde_json::from_slice(&record)
                    .map_err(|e| StorageError::Corrupt(format!("event {seq}: {e}")))?;
                events.push((seq, record.into_event()?));
            }
            Ok(EventPage {
                complete: events.len() < limit,
                events,
                pruned: since < log.pruned_upto,
            })
        })
        .await
    }

    /// The seq where `device`'s cursor `name` stands, if it was ever saved.
    pub async fn cursor(&self, device: String, name: String) -> Result<Option<u64>> {
        self.call(move |c, k| {
            let (device, name) = k.cursor_marks(&device, &name)?;
            let seq: Option<i64> = rusqlite::OptionalExtension::optional(cached_row(
                c,
                "SELECT seq FROM cursors WHERE device = ?1 AND name = ?2",
                params![device, name],
                |r| r.get(0),
            ))?;
            Ok(seq.map(|s| s as u64))
        })
        .await
    }

    /// Makes `device`'s cursor `name`, at `seq` (an existing one stays where it is).
    pub async fn create_cursor(&self, device: String, name: String, seq: u64) -> Result<()> {
        self.call(move |c, k| {
            let (device, name) = k.cursor_marks(&device, &name)?;
            cached_exec(
                c,
                "INSERT OR IGNORE INTO cursors (device, name, seq) VALUES (?1, ?2, ?3)",
                params![device, name, sql_seq(seq)?],
            )?;
            Ok(())
        })
        .await
    }

    /// Moves an existing cursor. One that is gone (its device was revoked meanwhile) stays
    /// gone: a late save from a stream that was just cut must not bring it back.
    pub async fn set_cursor(&self, device: String, name: String, seq: u64) -> Result<()> {
        self.call(move |c, k| {
            let (device, name) = k.cursor_marks(&device, &name)?;
            cached_exec(
                c,
                "UPDATE cursors SET seq = ?3 WHERE device = ?1 AND name = ?2",
                params![device, name, sql_seq(seq)?],
            )?;
            Ok(())
        })
        .await
    }

    /// How many cursors `device` keeps.
    pub async fn cursor_count(&self, device: String) -> Result<u64> {
        self.call(move |c, k| {
            let (device, _) = k.cursor_marks(&device, "")?;
            let n: i64 = cached_row(
                c,
                "SELECT count(*) FROM cursors WHERE device = ?1",
                [device],
                |r| r.get(0),
            )?;
            Ok(n.max(0) as u64)
        })
        .await
    }

    /// Deletes every cursor of `device` (a revoked device).
    pub async fn forget_cursors(&self, device: String) -> Result<()> {
        self.call(move |c, k| {
            let (device, _) = k.cursor_marks(&device, "")?;
            cached_exec(c, "DELETE FROM cursors WHERE device = ?1", [device])?;
            Ok(())
        })
        .await
    }
}

impl Storage {
    /// Messages received or sent that the event log says nothing of: what a host that stopped
    /// hard (SIGKILL) stored in its last moment, after which it could not append the event, or
    /// whose event a power cut took (message events are appended lazily: see
    /// `events::redone_after_restart`). Oldest first: (peer, id, time, direction). Only
    /// messages stored since the day of the newest logged event are looked at, so pruned
    /// events do not count as missing.
    pub async fn unannounced_messages(&self) -> Result<Vec<(Username, MessageId, i64, Direction)>> {
        self.call(|c, k| {
            let mut statement = c.prepare_cached(
                "SELECT c.tag, c.sealed_peer, m.id, m.direction, m.status, m.integrity, m.sealed, m.reason
                 FROM messages m JOIN conversations c ON c.tag = m.tag
                 WHERE m.control = 0 AND (m.direction = 0 OR m.status IN (3, 5))
                   AND m.stored_at >= (SELECT last_at FROM event_log WHERE id = 1)
                   AND NOT EXISTS (SELECT 1 FROM events e WHERE e.msg = m.seq)
                 ORDER BY m.seq",
            )?;
            let rows = statement
                .query_map([], |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, Vec<u8>>(1)?,
                        (
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                            r.get(7)?,
                        ),
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut out = Vec::with_capacity(rows.len());
            for (tag, sealed_peer, row) in rows {
                let peer = super::peer_name(k, &tag, &sealed_peer)?;
                let Some((_, key)) = super::conversation(c, k, &peer, false)? else {
                    continue;
                };
                let message = super::decode_row(&key, &tag, &peer, row)?;
                out.push((peer, message.id, message.time, message.direction));
            }
            Ok(out)
        })
        .await
    }
}

/// Appends `events` (see [`Storage::append_events`]); `reserve`: and reserves the lazy room.
fn append(
    c: &Connection,
    k: &super::AtRest,
    events: &[(u64, i64, HostEvent)],
    reserve: bool,
) -> Result<()> {
    let mut last_at: i64 = cached_row(c, "SELECT last_at FROM event_log WHERE id = 1", [], |r| {
        r.get(0)
    })?;
    let mut head = 0i64;
    // Most runs are about one or two peers: their tags are computed once.
    let mut tags: Vec<(Username, Vec<u8>)> = Vec::new();
    for (seq, at, event) in events {
        let seq = sql_seq(*seq)?;
        head = head.max(seq);
        // "Sent" is kept in the outbox's memory only: the row stays queued until its
        // receipt, and a restart forgets it. Devices hear it live; the log keeps what
        // the row keeps (a third of an outgoing message's rows, for nothing).
        if matches!(
            event,
            HostEvent::MessageStatus {
                status: Status::Sent,
                ..
            }
        ) {
            continue;
        }
        // A deleted conversation's event names no tag: nothing links it to the rows
        // that went with the deletion, and it goes with age.
        let tag = match event {
            HostEvent::Deleted { id: None, .. } => None,
            _ => match event.peer() {
                Some(p) => Some(match tags.iter().find(|(u, _)| u == p) {
                    Some((_, tag)) => tag.clone(),
                    None => {
                        let tag = k.tag(p)?;
                        tags.push((p.clone(), tag.clone()));
                        tag
                    }
                }),
                None => None,
            },
        };
        // The message's row: its events go when it goes. (tag, id) names two rows if
        // a peer reused one of our ids in the other direction (new ones are refused as
        // collisions): the event's own direction says which.
        let msg: Option<i64> = match (&tag, event.message_row()) {
            (Some(tag), Some((id, direction))) => {
                let row: Option<i64> = cached_row(
                    c,
                    "SELECT seq FROM messages WHERE tag = ?1 AND id = ?2 AND direction = ?3",
                    params![tag, &id.0[..], direction as i64],
                    |r| r.get(0),
                )
                .optional()?;
                if row.is_none() {
                    continue;
                }
                row
            }
            _ => None,
        };
        let record = serde_json::to_vec(&EventRecord::from(event))
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        let sealed = k.seal("event", &(seq as u64).to_be_bytes(), &record)?;
        last_at = last_at.max(at - at.rem_euclid(DAY_MS));
        // An event of a message names its row only: the row's deletion takes it, also
        // when the whole conversation goes (the rows go first). Only events of no
        // message carry the conversation's tag, and its index stays their size.
        let tag = if msg.is_some() { None } else { tag };
        cached_exec(
            c,
            "INSERT INTO events (seq, at, tag, msg, sealed) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![seq, last_at, tag, msg, sealed],
        )?;
        if seq as u64 % PRUNE_EVERY == 0 {
            if let Some(upto) = (seq as u64).checked_sub(EVENT_LOG_MAX) {
                prune_upto(c, sql_seq(upto)?)?;
            }
        }
    }
    cached_exec(
        c,
        "UPDATE event_log SET head = max(head, ?1), last_at = max(last_at, ?2) WHERE id = 1",
        params![head, last_at],
    )?;
    if reserve {
        cached_exec(
            c,
            "UPDATE event_log SET reserved = max(reserved, ?1) WHERE id = 1",
            [head.saturating_add(LAZY_ROOM as i64)],
        )?;
    }
    Ok(())
}

fn sql_seq(seq: u64) -> Result<i64> {
    i64::try_from(seq).map_err(|_| StorageError::Corrupt("event seq out of range".into()))
}

fn state(c: &Connection) -> Result<EventLogState> {
    let (head, pruned_upto, reserved): (i64, i64, i64) = cached_row(
        c,
        "SELECT head, pruned_upto, reserved FROM event_log WHERE id = 1",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(EventLogState {
        head: head.max(0) as u64,
        pruned_upto: pruned_upto.max(0) as u64,
        reserved: reserved.max(0) as u64,
    })
}

fn prune_upto(c: &Connection, upto: i64) -> Result<()> {
    cached_exec(c, "DELETE FROM events WHERE seq <= ?1", [upto])?;
    cached_exec(
        c,
        "UPDATE event_log SET pruned_upto = max(pruned_upto, ?1) WHERE id = 1",
        [upto],
    )?;
    Ok(())
}

/// Prunes events older than [`EVENT_LOG_DAYS`] (part of the expiry run, every second).
///
/// A row's day never goes back as seqs grow (`last_at`), so the old rows are the lowest seqs:
/// when the oldest row is young enough, nothing is. That look at one row is all most runs do;
/// `at` has no index, and finding the newest old row scans the table.
pub(super) fn prune_by_age(c: &Connection, now: i64) -> Result<()> {
    let oldest_kept = now - EVENT_LOG_DAYS * DAY_MS;
    let oldest_at: Option<i64> =
        cached_row(c, "SELECT at FROM events ORDER BY seq LIMIT 1", [], |r| {
            r.get(0)
        })
        .optional()?;
    if oldest_at.is_none_or(|at| at >= oldest_kept) {
        return Ok(());
    }
    let upto: Option<i64> = cached_row(
        c,
        "SELECT max(seq) FROM events WHERE at < ?1",
        [oldest_kept],
        |r| r.get(0),
    )?;
    if let Some(upto) = upto {
        prune_upto(c, upto)?;
    }
    Ok(())
}

/// An event as it is sealed in the log (JSON; ids in hex).
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum EventRecord {
    MessageReceived {
        id: String,
        peer: String,
        time: i64,
    },
    MessageSent {
        id: String,
        peer: String,
        time: i64,
    },
    MessageStatus {
        id: String,
        peer: String,
        status: i64,
    },
    KeyChanged {
        peer: String,
    },
    DirectoryAlarm {
        peer: String,
    },
    IntegrityProblem {
        id: String,
        peer: String,
        time: i64,
    },
    Deleted {
        id: Option<String>,
        peer: String,
    },
    Read {
        peer: String,
    },
    DeviceLinked {
        name: String,
    },
    DeviceRevoked {
        name: String,
    },
    CallIncoming(CallRecord),
    CallState(CallRecord),
}

/// What the log keeps of a call event: what devices were told (not the media set-up, which
/// is of no use once the moment has passed).
#[derive(Serialize, Deserialize)]
struct CallRecord {
    id: String,
    peer: String,
    outgoing: bool,
    state: String,
    reason: String,
    video: bool,
    audio: bool,
    since: i64,
    /// Picked up on one of the user's devices: whether that was a linked device. (Which
    /// connection it was means nothing once read back, so every reader is told "elsewhere".)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    answered_on_linked_device: Option<bool>,
}

impl From<&CallInfo> for CallRecord {
    fn from(c: &CallInfo) -> Self {
        CallRecord {
            id: c.id.to_hex(),
            peer: c.peer.to_string(),
            outgoing: c.outgoing,
            state: c.state.as_str().to_string(),
            reason: c.reason.clone(),
            video: c.video,
            audio: c.audio,
            since: c.since,
            answered_on_linked_device: c.answered_by.map(|a| a.linked_device),
        }
    }
}

impl CallRecord {
    fn into_info(self) -> Result<CallInfo> {
        let state = match self.state.as_str() {
            "ringing" => CallState::Ringing,
            "active" => CallState::Active,
            "ended" => CallState::Ended,
            _ => return Err(corrupt("call state")),
        };
        Ok(CallInfo {
            id: self.id.parse::<CallId>().map_err(|_| corrupt("call id"))?,
            peer: user(&self.peer)?,
            outgoing: self.outgoing,
            state,
            reason: self.reason,
            caller_identity: Vec::new(),
            callee_identity: Vec::new(),
            peer_media: None,
            video: self.video,
            audio: self.audio,
            since: self.since,
            answered_by: self
                .answered_on_linked_device
                .map(|linked_device| Answerer {
                    client: Answerer::EARLIER,
                    linked_device,
                }),
        })
    }
}

fn corrupt(what: &str) -> StorageError {
    StorageError::Corrupt(format!("event {what}"))
}

fn user(name: &str) -> Result<Username> {
    Username::parse_local(name).map_err(|_| corrupt("peer"))
}

fn message_id(hex: &str) -> Result<MessageId> {
    hex.parse().map_err(|_| corrupt("message id"))
}

impl From<&HostEvent> for EventRecord {
    fn from(e: &HostEvent) -> Self {
        match e {
            HostEvent::MessageReceived { id, peer, time } => EventRecord::MessageReceived {
                id: id.to_hex(),
                peer: peer.to_string(),
                time: *time,
            },
            HostEvent::MessageSent { id, peer, time } => EventRecord::MessageSent {
                id: id.to_hex(),
                peer: peer.to_string(),
                time: *time,
            },
            HostEvent::MessageStatus { id, peer, status } => EventRecord::MessageStatus {
                id: id.to_hex(),
                peer: peer.to_string(),
                status: *status as i64,
            },
            HostEvent::KeyChanged { peer } => EventRecord::KeyChanged {
                peer: peer.to_string(),
            },
            HostEvent::DirectoryAlarm { peer } => EventRecord::DirectoryAlarm {
                peer: peer.to_string(),
            },
            HostEvent::IntegrityProblem { id, peer, time } => EventRecord::IntegrityProblem {
                id: id.to_hex(),
                peer: peer.to_string(),
                time: *time,
            },
            HostEvent::Deleted { id, peer } => EventRecord::Deleted {
                id: id.map(|i| i.to_hex()),
                peer: peer.to_string(),
            },
            HostEvent::Read { peer } => EventRecord::Read {
                peer: peer.to_string(),
            },
            HostEvent::DeviceLinked { name } => EventRecord::DeviceLinked { name: name.clone() },
            HostEvent::DeviceRevoked { name } => EventRecord::DeviceRevoked { name: name.clone() },
            HostEvent::CallIncoming(info) => EventRecord::CallIncoming(info.into()),
            HostEvent::CallState(info) => EventRecord::CallState(info.into()),
        }
    }
}

impl EventRecord {
    fn into_event(self) -> Result<HostEvent> {
        Ok(match self {
            EventRecord::MessageReceived { id, peer, time } => HostEvent::MessageReceived {
                id: message_id(&id)?,
                peer: user(&peer)?,
                time,
            },
            EventRecord::MessageSent { id, peer, time } => HostEvent::MessageSent {
                id: message_id(&id)?,
                peer: user(&peer)?,
                time,
            },
            EventRecord::MessageStatus { id, peer, status } => HostEvent::MessageStatus {
                id: message_id(&id)?,
                peer: user(&peer)?,
                status: Status::from_i64(status).ok_or_else(|| corrupt("status"))?,
            },
            EventRecord::KeyChanged { peer } => HostEvent::KeyChanged { peer: user(&peer)? },
            EventRecord::DirectoryAlarm { peer } => {
                HostEvent::DirectoryAlarm { peer: user(&peer)? }
            }
            EventRecord::IntegrityProblem { id, peer, time } => HostEvent::IntegrityProblem {
                id: message_id(&id)?,
                peer: user(&peer)?,
                time,
            },
            EventRecord::Deleted { id, peer } => HostEvent::Deleted {
                id: id.as_deref().map(message_id).transpose()?,
                peer: user(&peer)?,
            },
            EventRecord::Read { peer } => HostEvent::Read { peer: user(&peer)? },
            EventRecord::DeviceLinked { name } => HostEvent::DeviceLinked { name },
            EventRecord::DeviceRevoked { name } => HostEvent::DeviceRevoked { name },
            EventRecord::CallIncoming(c) => HostEvent::CallIncoming(c.into_info()?),
            EventRecord::CallState(c) => HostEvent::CallState(c.into_info()?),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::model::{Viewer, ANSWERED_ELSEWHERE};

    #[test]
    fn a_call_picked_up_on_some_device_reads_back_as_answered_elsewhere() {
        let info = CallInfo::answered_on_a_linked_device(CallId([5; 16]), 7);
        let record = EventRecord::from(&HostEvent::CallState(info));
        let HostEvent::CallState(back) = record.into_event().unwrap() else {
            panic!("not a call state");
        };
        let by = back.answered_by.unwrap();
        assert_eq!((by.client, by.linked_device), (Answerer::EARLIER, true));
        // The connection that picked up is gone once the event is read back: every device
        // that replays it stops ringing.
        assert_eq!(back.seen_by(Viewer::Client(7)).reason, ANSWERED_ELSEWHERE);
    }
}
