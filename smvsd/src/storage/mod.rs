//! The storage actor: the host's encrypted SQLite database, owned by one thread
//! (`smvs-sqlite`), reached through the cheap, cloneable [`Storage`] handle.
//!
//! ```text
//!  router / peer links / local API ──► Storage::method() ──job──► storage thread (group commit)
//! ```
//!
//! What is on disk (see `crypt` for how): conversations (tag, sealed peer name, wrapped key,
//! hash-chain heads, expiry), messages (tag, id, direction, status, integrity, whether it is a
//! control message, sealed content), contacts (tag, sealed record), settings (sealed),
//! tombstones of deleted received messages for 7 days (keyed marks only: no tag, no id, no
//! chain hash). The outbox is the set of outgoing messages whose status is queued or sent. WAL
//! mode, `synchronous=FULL`, `secure_delete=ON`, temporary files (savepoint sub-journals) in memory.

mod crypt;
mod epochs;
mod event_log;
mod sessions;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use smvs_crypto::{AeadKey, AgreementPublicKey, IdentityBundle, Zeroizing};
use smvs_schema::ErrorCode;
use smvs_schema::{HostAddress, Username};
use smvs_sqlite::SqliteWorker;
use thiserror::Error;

pub use crypt::AtRest;
pub use epochs::{Epoch, EpochKeys, EpochWork};
pub use event_log::{EventLogState, EVENT_LOG_DAYS, LAZY_ROOM};
pub use sessions::SessionWrite;

use crate::error::{HostError, IncomingError};
use crate::model::{
    message_hash, Contact, Direction, Evidence, FailReason, Integrity, MessageId, Payload,
    PendingKey, Status, StoredMessage,
};

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored data does not decrypt: {0}")]
    Crypto(#[from] smvs_crypto::CryptoError),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("the storage thread stopped or could not commit")]
    Gone,
    #[error("database: {0}")]
    Migration(String),
    #[error("another reader holds the database: deleted messages are gone from it, but their old pages are not yet wiped from the write-ahead log (they will be at the next checkpoint)")]
    CheckpointBusy,
    #[error("the disk is full: nothing of the request was stored")]
    DiskFull,
    #[error("the database is sealed under storage epoch {found}, which the key guard does not hold (it holds {held}): a copy from before the key guard moved on (whose key is destroyed), or a database of another key guard; it cannot be opened")]
    EpochGone { found: u32, held: String },
    #[error("cannot make {path} private (mode 0600): {source}")]
    Permissions {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// What a device hears when storage fails: a full disk is said plainly (`storage`); anything
/// else is internal, with the details in the log.
impl From<StorageError> for HostError {
    fn from(e: StorageError) -> Self {
        if matches!(e, StorageError::CheckpointBusy) {
            tracing::error!(error = %e, "a deletion could not be wiped from the WAL yet");
            return HostError::new(ErrorCode::Storage, e.to_string());
        }
        if e.is_disk_full() {
            tracing::error!(error = %e, "storage is full");
            return HostError::new(
                ErrorCode::Storage,
                "the host's disk is full; nothing was stored (free some space and try again)",
            );
        }
        HostError::internal(e)
    }
}

/// What a peer host hears when storage fails: "later", and nothing of our error.
impl From<StorageError> for IncomingError {
    fn from(e: StorageError) -> Self {
        tracing::error!(error = %e, "storage failed while accepting an envelope");
        IncomingError::Later("storage failure".into())
    }
}

impl StorageError {
    /// The disk (or the database's quota) is full: nothing of the job was written.
    pub fn is_disk_full(&self) -> bool {
        match self {
            StorageError::DiskFull => true,
            StorageError::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        }
    }
}

impl From<smvs_sqlite::WorkerGone> for StorageError {
    fn from(e: smvs_sqlite::WorkerGone) -> Self {
        if e.disk_full {
            StorageError::DiskFull
        } else {
            StorageError::Gone
        }
    }
}

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE settings (name TEXT PRIMARY KEY NOT NULL, sealed BLOB NOT NULL) STRICT;
    CREATE TABLE conversations (
        tag BLOB PRIMARY KEY NOT NULL,
        sealed_peer BLOB NOT NULL,
        wrapped_key BLOB NOT NULL,
        expire_seconds INTEGER NOT NULL DEFAULT 0,
        last_sent_hash BLOB NOT NULL DEFAULT x'',
        last_recv_hash BLOB NOT NULL DEFAULT x''
    ) STRICT;
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        tag BLOB NOT NULL REFERENCES conversations (tag) ON DELETE CASCADE,
        id BLOB NOT NULL,
        direction INTEGER NOT NULL,
        status INTEGER NOT NULL,
        integrity INTEGER NOT NULL,
        stored_at INTEGER NOT NULL,
        hash BLOB NOT NULL,
        sealed BLOB NOT NULL,
        UNIQUE (tag, id, direction)
    ) STRICT;
    CREATE INDEX messages_outbox ON messages (tag, seq) WHERE direction = 0 AND status IN (0, 1);
    CREATE TABLE contacts (tag BLOB PRIMARY KEY NOT NULL, sealed BLOB NOT NULL) STRICT;
",
    "
    -- 1: control messages (delete requests, expiry settings) are rows too, but not messages a
    -- person wrote: they are not counted. Rows from before this migration count as text.
        ALTER TABLE messages ADD COLUMN control INTEGER NOT NULL DEFAULT 0;
",
    "
    -- 2: the ids of received messages that were deleted or expired, so a late resend of one
    -- (its sender never saw our receipt) is a duplicate, not a new message. Kept for
    -- TOMBSTONE_DAYS (the id is random and the tag keyed: they say a message was there, not
    -- what or from whom).
    CREATE TABLE tombstones (
        tag BLOB NOT NULL,
        id BLOB NOT NULL,
        deleted_at INTEGER NOT NULL,
        PRIMARY KEY (tag, id)
    ) STRICT, WITHOUT ROWID;
    CREATE TRIGGER messages_tombstone AFTER DELETE ON messages WHEN OLD.direction = 1
    BEGIN
        INSERT OR IGNORE INTO tombstones (tag, id, deleted_at)
        VALUES (OLD.tag, OLD.id, CAST(strftime('%s', 'now') AS INTEGER) * 1000);
    END;
",
    "
    -- 3: why an outgoing message failed (a FailReason code; empty unless failed).
    ALTER TABLE messages ADD COLUMN reason TEXT NOT NULL DEFAULT '';
",
    "
    -- 4: tombstones keep keyed marks, not the conversation tag and the plain id: with the id
    -- (which the sender, and whoever saw the envelope, knows) the old row confirmed for a week
    -- that the deleted message had been here. The marks are keyed BLAKE2b under a key derived
    -- from the storage key (AtRest::tombstone_mark, AtRest::tombstone_chain), computed by SQL
    -- functions `Storage::open` registers; `chain` also keeps the deleted message's place in
    -- the sender's hash chain (empty for rows from before, whose chain hash is gone).
    CREATE TABLE tombstones_keyed (
        mark BLOB PRIMARY KEY NOT NULL,
        chain BLOB NOT NULL,
        deleted_at INTEGER NOT NULL
    ) STRICT, WITHOUT ROWID;
    INSERT OR IGNORE INTO tombstones_keyed (mark, chain, deleted_at)
        SELECT smvs_tombstone_mark(tag, id), x'', deleted_at FROM tombstones;
    DROP TRIGGER messages_tombstone;
    DROP TABLE tombstones;
    ALTER TABLE tombstones_keyed RENAME TO tombstones;
    CREATE INDEX tombstones_chain ON tombstones (chain);
    CREATE TRIGGER messages_tombstone AFTER DELETE ON messages WHEN OLD.direction = 1
    BEGIN
        INSERT OR IGNORE INTO tombstones (mark, chain, deleted_at)
        VALUES (smvs_tombstone_mark(OLD.tag, OLD.id), smvs_tombstone_chain(OLD.tag, OLD.hash),
                CAST(strftime('%s', 'now') AS INTEGER) * 1000);
    END;
",
    "
    -- 5: read state, shared by all the user's devices: received messages up to this seq are
    -- read. What was there before this migration counts as read.
    ALTER TABLE conversations ADD COLUMN read_upto INTEGER NOT NULL DEFAULT 0;
    UPDATE conversations SET read_upto =
        coalesce((SELECT max(seq) FROM messages m WHERE m.tag = conversations.tag), 0);
",
    "
    -- 6: the event log every device reads with a cursor (see event_log.rs). One sealed row per
    -- event; `tag` is the conversation's (NULL for events of no conversation), `mark` the
    -- message's keyed mark (the same function as its tombstone's; NULL for events of no
    -- message), so that deleting a message or a conversation deletes what the log says of it.
    -- `event_log` keeps the newest seq ever given out (which deletions must not lower), where
    -- pruning has reached, and the newest row's day. `at` is a day (Unix ms at 00:00 UTC).
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY NOT NULL,
        at INTEGER NOT NULL,
        tag BLOB,
        mark BLOB,
        sealed BLOB NOT NULL
    ) STRICT;
    CREATE INDEX events_tag ON events (tag) WHERE tag IS NOT NULL;
    CREATE INDEX events_mark ON events (mark) WHERE mark IS NOT NULL;
    CREATE TABLE event_log (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        head INTEGER NOT NULL,
        pruned_upto INTEGER NOT NULL,
        last_at INTEGER NOT NULL
    ) STRICT;
    -- (last_at starts now: what was received before the log existed is not announced again.)
    INSERT INTO event_log VALUES (1, 0, 0, CAST(strftime('%s', 'now') AS INTEGER) * 1000);
    CREATE TABLE cursors (
        device BLOB NOT NULL,
        name BLOB NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (device, name)
    ) STRICT, WITHOUT ROWID;
    CREATE TRIGGER messages_events AFTER DELETE ON messages
    BEGIN
        DELETE FROM events WHERE mark = smvs_tombstone_mark(OLD.tag, OLD.id);
    END;
",
    "
    -- 7: session v2's state per contact (storage/sessions.rs): the contact's tag and the state
    -- sealed under the storage key; and the contacts that have spoken v2 with us (their tags),
    -- which outlives a session that is forgotten: such a contact never gets v1 again.
    CREATE TABLE sessions (tag BLOB PRIMARY KEY NOT NULL, sealed BLOB NOT NULL) STRICT;
    CREATE TABLE spoke_v2 (tag BLOB PRIMARY KEY NOT NULL) STRICT, WITHOUT ROWID;
",
    "
    -- 8: the prekey handshakes accepted (as keyed marks of their transcript hashes), kept
    -- until their prekey is gone (Unix s), so that a replayed one is refused.
    CREATE TABLE prekey_transcripts (mark BLOB PRIMARY KEY NOT NULL, until INTEGER NOT NULL) STRICT, WITHOUT ROWID;
",
    "
    -- 9: the storage epoch the database's sealed values are under (storage/epochs.rs), in
    -- clear: it names a key, and is none. Written at the first open after this migration.
    -- `since`: when the database moved to it (Unix ms, wall clock), for the daily move.
    CREATE TABLE storage_epoch (one INTEGER PRIMARY KEY CHECK (one = 1), epoch INTEGER NOT NULL, since INTEGER NOT NULL) STRICT;
",
    "
    -- 10: an event about a message names the message's row (`msg`, its seq) instead of its keyed
    -- mark. The marks were random, so their index took a random page for every event; seqs
    -- grow, so this index grows at its end. Deleting the message still deletes its events (the
    -- trigger), so no row names a message that is gone. What the file shows without the key:
    -- before, the events of one message shared a mark; now they name its row, so which row's
    -- events came in which order among all events is exact (their days only are kept, and the
    -- row's status and direction were in the clear already).
    ALTER TABLE events ADD COLUMN msg INTEGER;
    CREATE TEMP TABLE message_marks AS
        SELECT smvs_tombstone_mark(tag, id) AS mark, seq FROM messages;
    CREATE INDEX temp.message_marks_mark ON message_marks (mark);
    UPDATE events SET msg = (SELECT seq FROM temp.message_marks mm WHERE mm.mark = events.mark)
        WHERE mark IS NOT NULL;
    DROP TABLE temp.message_marks;
    DROP TRIGGER messages_events;
    DROP INDEX events_mark;
    ALTER TABLE events DROP COLUMN mark;
    CREATE INDEX events_msg ON events (msg) WHERE msg IS NOT NULL;
    CREATE TRIGGER messages_events AFTER DELETE ON messages
    BEGIN
        DELETE FROM events WHERE msg = OLD.seq;
    END;
",
    "
    -- 11: a page of history is a range of this index read backwards (the newest 101 before a
    -- seq), not every message of the conversation found by tag and then sorted: 90 ms a page
    -- at 100,000 messages, growing with the conversation, before; a few ms, whatever its size,
    -- after. Each stored message adds one entry, at the end of its conversation's range.
    CREATE INDEX messages_history ON messages (tag, control, seq);
",
    "
    -- 12: the seqs the last durable event append reserved for lazy ones past its own
    -- (event_log::LAZY_ROOM): the hub numbers on after them when it starts.
    ALTER TABLE event_log ADD COLUMN reserved INTEGER NOT NULL DEFAULT 0;
",
];

/// Puts an outgoing message in `peer`'s outbox (see [`Storage::queue_outgoing`]); gives its
/// position in the outbox too.
fn queue_outgoing_in(
    c: &Connection,
    k: &AtRest,
    me: &Username,
    peer: &Username,
    payload: Payload,
) -> Result<(i64, StoredMessage)> {
    let (tag, key) = conversation(c, k, peer, true)?
        .ok_or_else(|| StorageError::Corrupt("conversation".into()))?;
    let sealed_prev: Vec<u8> = cached_row(
        c,
        "SELECT last_sent_hash FROM conversations WHERE tag = ?1",
        [&tag],
        |r| r.get(0),
    )?;
    let prev = k.open_head(&tag, &sealed_prev)?;
    let msg = StoredMessage {
        id: MessageId::random(),
        peer: peer.clone(),
        from: me.clone(),
        to: peer.clone(),
        time: crate::model::now_ms(),
        payload,
        prev_hash: prev,
        status: Status::Queued,
        reason: FailReason::None,
        integrity: Integrity::Unchecked,
        direction: Direction::Out,
    };
    let hash = insert_message(c, k, &tag, &key, &msg)?;
    let seq = c.last_insert_rowid();
    cached_exec(
        c,
        "UPDATE conversations SET last_sent_hash = ?2 WHERE tag = ?1",
        params![tag, k.seal_head(&tag, &hash)?],
    )?;
    Ok((seq, msg))
}

/// The most messages one run of [`Storage::expire`] deletes.
pub const EXPIRE_BATCH: i64 = 1_000;

/// A page of history: the newest `?3` messages of conversation `?1` below seq `?2`, read
/// backwards along `messages_history` (migration 11).
const HISTORY_PAGE: &str = "SELECT id, direction, status, integrity, sealed, reason FROM messages
     WHERE tag = ?1 AND control = 0 AND seq < ?2 ORDER BY seq DESC LIMIT ?3";

/// Registers the SQL functions the tombstone trigger and migration 4 call: the keyed marks of
/// [`AtRest::tombstone_mark`] and [`AtRest::tombstone_chain`]. They read nothing but their
/// arguments and have no side effect (`INNOCUOUS`, so the trigger may call them whatever the
/// `trusted_schema` setting); the key stays in this process.
fn register_tombstone_functions(conn: &Connection, keys: &Arc<AtRest>) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    let flags = FunctionFlags::SQLITE_UTF8
        | FunctionFlags::SQLITE_DETERMINISTIC
        | FunctionFlags::SQLITE_INNOCUOUS;
    let blob = |ctx: &rusqlite::functions::Context<'_>, i: usize| -> rusqlite::Result<Vec<u8>> {
        ctx.get::<Vec<u8>>(i)
    };
    let user_error = |e: smvs_crypto::CryptoError| rusqlite::Error::UserFunctionError(Box::new(e));
    let k = keys.clone();
    conn.create_scalar_function("smvs_tombstone_mark", 2, flags, move |ctx| {
        k.tombstone_mark(&blob(ctx, 0)?, &blob(ctx, 1)?)
            .map_err(user_error)
    })?;
    let k = keys.clone();
    conn.create_scalar_function("smvs_tombstone_chain", 2, flags, move |ctx| {
        k.tombstone_chain(&blob(ctx, 0)?, &blob(ctx, 1)?)
            .map_err(user_error)
    })?;
    Ok(())
}

/// How long the mark of a deleted received message is remembered (see migrations 2 and 4).
const TOMBSTONE_DAYS: i64 = 7;

/// The sealed content of a message row.
#[derive(Serialize, Deserialize)]
struct Content {
    from: String,
    to: String,
    time: i64,
    prev: String,
    #[serde(flatten)]
    payload: ContentPayload,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum ContentPayload {
    Text {
        text: String,
    },
    Delete {
        ids: Vec<String>,
    },
    Expire {
        seconds: u32,
    },
    Introduction {
        record: String,
        signature: String,
        directory_key: String,
    },
}

impl From<&Payload> for ContentPayload {
    fn from(p: &Payload) -> Self {
        match p {
            Payload::Text(t) => ContentPayload::Text { text: t.clone() },
            Payload::Delete(ids) => ContentPayload::Delete {
                ids: ids.iter().map(|i| i.to_hex()).collect(),
            },
            Payload::Expire(s) => ContentPayload::Expire { seconds: *s },
            Payload::Introduction(e) => ContentPayload::Introduction {
                record: hex::encode(&e.record_bytes),
                signature: hex::encode(&e.signature),
                directory_key: hex::encode(e.directory_key),
            },
        }
    }
}

impl ContentPayload {
    fn into_payload(self) -> Result<Payload, StorageError> {
        Ok(match self {
            ContentPayload::Text { text } => Payload::Text(text),
            ContentPayload::Delete { ids } => Payload::Delete(
                ids.iter()
                    .map(|h| {
                        hex::decode(h)
                            .ok()
                            .and_then(|b| MessageId::from_slice(&b))
                            .ok_or_else(|| StorageError::Corrupt("message id".into()))
                    })
                    .collect::<Result<_, _>>()?,
            ),
            ContentPayload::Expire { seconds } => Payload::Expire(seconds),
            ContentPayload::Introduction {
                record,
                signature,
                directory_key,
            } => {
                let bytes = |h: &str| {
                    hex::decode(h).map_err(|_| StorageError::Corrupt("introduction".into()))
                };
                Payload::Introduction(Evidence {
                    record_bytes: bytes(&record)?,
                    signature: bytes(&signature)?,
                    directory_key: bytes(&directory_key)?
                        .try_into()
                        .map_err(|_| StorageError::Corrupt("introduction's key".into()))?,
                    issued_at: 0,
                })
            }
        })
    }
}

/// A contact as it is sealed on disk (JSON of hex strings; the format of every version so far).
#[derive(Serialize, Deserialize)]
struct ContactRecord {
    username: String,
    identity: String,
    transport_key: String,
    host_address: String,
    serial: u64,
    blocked: bool,
    pending_identity: Option<String>,
    pending_transport_key: Option<String>,
    request: bool,
    /// Hex of the record, its signature and the directory's key (absent in older rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    evidence: Option<EvidenceRecord>,
    /// Directory key (hex) to the newest serial it served (absent in older rows).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    serials: BTreeMap<String, u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alarm: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    address_signed_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    introduced_by: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero")]
    moved_at: i64,
    /// Refused identities (hex bundles).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    refused: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct EvidenceRecord {
    record: String,
    signature: String,
    directory_key: String,
    issued_at: i64,
}

impl ContactRecord {
    fn from_contact(c: &Contact) -> ContactRecord {
        ContactRecord {
            username: c.username.to_string(),
            identity: hex::encode(c.identity.to_bytes()),
            transport_key: c.transport_key.to_hex(),
            host_address: c.host_address.to_string(),
            serial: c.serial,
            blocked: c.blocked,
            pending_identity: c
                .pending
                .as_ref()
                .map(|p| hex::encode(p.identity.to_bytes())),
            pending_transport_key: c.pending.as_ref().map(|p| p.transport_key.to_hex()),
            request: c.request,
            evidence: c.evidence.as_ref().map(|e| EvidenceRecord {
                record: hex::encode(&e.record_bytes),
                signature: hex::encode(&e.signature),
                directory_key: hex::encode(e.directory_key),
                issued_at: e.issued_at,
            }),
            serials: c
                .serials
                .iter()
                .map(|(key, serial)| (hex::encode(key), *serial))
                .collect(),
            alarm: c.alarm.clone(),
            address_signed_at: c.address_signed_at,
            introduced_by: c.introduced_by.as_ref().map(|u| u.to_string()),
            moved_at: c.moved_at,
            refused: c
                .refused
                .iter()
                .map(|id| hex::encode(id.to_bytes()))
                .collect(),
        }
    }

    fn into_contact(self) -> Result<Contact> {
        let corrupt = |what: &str| StorageError::Corrupt(format!("contact {what}"));
        let pending = match (self.pending_identity, self.pending_transport_key) {
            (Some(identity), Some(key)) => Some(PendingKey {
                identity: bundle_from_hex(&identity)?,
                transport_key: key_from_hex(&key)?,
            }),
            (None, None) => None,
            _ => return Err(corrupt("pending key")),
        };
        Ok(Contact {
            username: Username::parse_local(&self.username).map_err(|_| corrupt("name"))?,
            identity: bundle_from_hex(&self.identity)?,
            transport_key: key_from_hex(&self.transport_key)?,
            host_address: HostAddress::parse(&self.host_address)
                .map_err(|_| corrupt("host address"))?,
            serial: self.serial,
            serials: self
                .serials
                .iter()
                .map(|(key, serial)| -> Result<([u8; 32], u64)> {
                    let key = hex::decode(key)
                        .ok()
                        .and_then(|k| <[u8; 32]>::try_from(k).ok())
                        .ok_or_else(|| corrupt("serial's directory key"))?;
                    Ok((key, *serial))
                })
                .collect::<Result<_>>()?,
            blocked: self.blocked,
            pending,
            alarm: self.alarm,
            address_signed_at: self.address_signed_at,
            moved_at: self.moved_at,
            introduced_by: self
                .introduced_by
                .map(|u| Username::parse_local(&u).map_err(|_| corrupt("introducer")))
                .transpose()?,
            refused: self
                .refused
                .iter()
                .map(|h| bundle_from_hex(h))
                .collect::<Result<_>>()?,
            request: self.request,
            evidence: self
                .evidence
                .map(|e| -> Result<Evidence> {
                    let bytes = |h: &str| hex::decode(h).map_err(|_| corrupt("evidence"));
                    Ok(Evidence {
                        record_bytes: bytes(&e.record)?,
                        signature: bytes(&e.signature)?,
                        directory_key: bytes(&e.directory_key)?
                            .try_into()
                            .map_err(|_| corrupt("evidence key"))?,
                        issued_at: e.issued_at,
                    })
                })
                .transpose()?,
        })
    }
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn bundle_from_hex(h: &str) -> Result<IdentityBundle> {
    let bytes = hex::decode(h).map_err(|_| StorageError::Corrupt("identity".into()))?;
    // Verified when it was pinned; the row it comes from is sealed (authenticated) at rest.
    Ok(IdentityBundle::from_verified_bytes(&bytes)?)
}

fn key_from_hex(h: &str) -> Result<AgreementPublicKey> {
    let bytes = hex::decode(h).map_err(|_| StorageError::Corrupt("transport key".into()))?;
    Ok(AgreementPublicKey::from_bytes(&bytes)?)
}

/// What happened to an incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    Stored(Integrity),
    Duplicate,
    /// The id is one of our own outgoing messages in this conversation: refused, so that no
    /// peer can make one id name two messages (and have `delete --id` remove ours).
    Collision,
}

/// One page of a conversation's history.
#[derive(Debug, Default)]
pub struct HistoryPage {
    /// Oldest first.
    pub messages: Vec<StoredMessage>,
    /// Older messages exist (ask again with the first one as `before`).
    pub older: bool,
}

/// A summary line of `conversations`.
#[derive(Debug, Clone)]
pub struct ConversationSummary {
    pub peer: Username,
    pub messages: u32,
    /// Received messages not yet marked read (on any device).
    pub unread: u32,
    pub last_time: i64,
    pub expire_seconds: u32,
}

/// The setting that holds the keys (32 bytes each) of the directories this host's user left.
pub const LEFT_DIRECTORIES: &str = "left_directories";
/// The setting that holds what `directory add|remove` changed in the configured list (JSON:
/// the directories added, by name, address and hex key; the hex keys of configured ones
/// removed, not used even though the configuration names them).
pub const DIRECTORY_CHANGES: &str = "directory_changes";
/// The setting that holds the user's petnames for identity addresses (JSON: petname to
/// address).
pub const PETNAMES: &str = "petnames";
/// The setting that holds the address last announced to contacts' hosts (or registered with).
pub const ANNOUNCED_ADDRESS: &str = "announced_address";
/// The setting that holds the serial of this host's last record in the DHT (8 bytes, big
/// endian): the next one is greater, across restarts.
pub const DHT_SERIAL: &str = "dht_serial";

#[derive(Clone)]
pub struct Storage {
    worker: SqliteWorker,
    keys: Arc<AtRest>,
    /// Told when a conversation's expiry is set, so that the expiry loop may sleep while no
    /// conversation has one.
    expiry_set: Arc<tokio::sync::Notify>,
}

type Result<T, E = StorageError> = std::result::Result<T, E>;

impl Storage {
    /// Opens (creating and migrating) the database at `path`, whose rows are sealed under
    /// `storage_key` as before storage epochs (epoch 1; for tests).
    pub fn open(path: &Path, storage_key: AeadKey) -> Result<Storage> {
        let keys = AtRest::new(storage_key)?;
        let (storage, _) = Self::open_keys(path, keys, None)?;
        Ok(storage)
    }

    /// Opens the database at `path` with keyguard's storage keys: under the epoch it was left
    /// in (the current one, or the previous one if a move was cut short). What is left to do
    /// for the epochs is returned (see [`EpochWork`]).
    pub fn open_with_epochs(path: &Path, keys: EpochKeys) -> Result<(Storage, EpochWork)> {
        let found = epochs::stored_epoch(path)?;
        let chosen = epochs::choose(found, &keys)?;
        let at_rest = AtRest::with_epoch(&keys.derived, chosen.id, chosen.key)?;
        let (storage, work) = Self::open_keys(path, at_rest, Some(keys.current.id))?;
        let work = match (work, &keys.previous) {
            (EpochWork::None, Some(previous)) => EpochWork::Retire(previous.id),
            (work, _) => work,
        };
        Ok((storage, work))
    }

    fn open_keys(
        path: &Path,
        at_rest: AtRest,
        current: Option<u32>,
    ) -> Result<(Storage, EpochWork)> {
        make_private(path, true)?;
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            make_private(Path::new(&side), false)?;
        }
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Temporary files in memory: each job's savepoint copies the pages it first touches to
        // a sub-journal, which would otherwise spill to a file on disk (a write per page, and
        // old page images left in a temp file) once a job touches more than a few pages.
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // 32 MiB of page cache: the hot pages of a busy conversation stay in memory instead of
        // being read back from the file on every message.
        conn.pragma_update(None, "cache_size", -32768)?;
        // Checkpoint every 8,192 WAL pages (32 MiB) rather than SQLite's 1,000: a busy
        // conversation rewrites the same index pages in every commit, and a checkpoint copies
        // each page once however often the WAL holds it (about 6% more messages/s in
        // `make bench`). Deletions still truncate the WAL at once (`checkpoint`).
        conn.pragma_update(None, "wal_autocheckpoint", 8192)?;
        conn.set_prepared_statement_cache_capacity(64);
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let keys = Arc::new(at_rest);
        register_tombstone_functions(&conn, &keys)?;
        smvs_sqlite::migrate(&mut conn, MIGRATIONS)
            .map_err(|e| StorageError::Migration(e.to_string()))?;
        let work = epochs::settle_on_open(&conn, &keys, current)?;
        // A migration may have dropped rows (the plain tombstones of migration 4) whose old
        // pages still sit in the WAL: wipe it now, as after every deletion.
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            tracing::warn!("{}", StorageError::CheckpointBusy);
        }
        let worker = SqliteWorker::start(conn, "smvsd-storage", 8192)
            .map_err(|e| StorageError::Corrupt(e.to_string()))?;
        Ok((
            Storage {
                worker,
                keys,
                expiry_set: Arc::new(tokio::sync::Notify::new()),
            },
            work,
        ))
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &AtRest) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let keys = self.keys.clone();
        self.worker.call(move |c| f(c, &keys)).await
    }

    /// A job of a test's own (to hold the storage thread, say).
    #[cfg(test)]
    pub(crate) async fn call_for_tests<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.call(move |c, _| f(c)).await
    }

    /// [`Storage::call`] for a write that may be lost to a power cut (`SqliteWorker::call_lazy`).
    async fn call_lazy<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &AtRest) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let keys = self.keys.clone();
        self.worker.call_lazy(move |c| f(c, &keys)).await
    }

    // ----- settings -----

    pub async fn setting(&self, name: &'static str) -> Result<Option<Zeroizing<Vec<u8>>>> {
        self.call(move |c, k| {
            let sealed: Option<Vec<u8>> = cached_row(
                c,
                "SELECT sealed FROM settings WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?;
            Ok(sealed
                .map(|s| k.open("setting", name.as_bytes(), &s))
                .transpose()?)
        })
        .await
    }

    pub async fn set_setting(&self, name: &'static str, value: Vec<u8>) -> Result<()> {
        self.call(move |c, k| {
            let sealed = k.seal("setting", name.as_bytes(), &value)?;
            cached_exec(c,
                "INSERT INTO settings VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET sealed = excluded.sealed",
                params![name, sealed],
            )?;
            Ok(())
        })
        .await
    }

    // ----- contacts -----

    pub async fn contact(&self, peer: &Username) -> Result<Option<Contact>> {
        let peer = peer.clone();
        self.call(move |c, k| get_contact(c, k, &peer)).await
    }

    pub async fn put_contact(&self, contact: Contact) -> Result<()> {
        self.call(move |c, k| put_contact(c, k, &contact)).await
    }

    pub async fn contacts(&self) -> Result<Vec<Contact>> {
        self.call(|c, k| {
            let mut stmt = c.prepare_cached("SELECT tag, sealed FROM contacts")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (tag, sealed) = row?;
                let plain = k.open("contact", &tag, &sealed)?;
                let record: ContactRecord = serde_json::from_slice(&plain)
                    .map_err(|e| StorageError::Corrupt(e.to_string()))?;
                out.push(record.into_contact()?);
            }
            out.sort_by(|a: &Contact, b| a.username.cmp(&b.username));
            Ok(out)
        })
        .await
    }

    // ----- messages -----

    /// Puts an outgoing message in the outbox (status queued) and returns once it is on disk.
    pub async fn queue_outgoing(
        &self,
        me: &Username,
        peer: &Username,
        payload: Payload,
    ) -> Result<StoredMessage> {
        let (me, peer) = (me.clone(), peer.clone());
        self.call(move |c, k| Ok(queue_outgoing_in(c, k, &me, &peer, payload)?.1))
            .await
    }

    /// [`Storage::queue_outgoing`], and seals the message for the peer in the same transaction:
    /// `seal` gets the stored message and gives what to send and the session state to save
    /// with it (one commit for both), or `None` (then nothing but the message is written, and
    /// it is sealed on delivery). Gives the message's position in the outbox too.
    pub async fn queue_outgoing_sealed<T: Send + 'static>(
        &self,
        me: &Username,
        peer: &Username,
        payload: Payload,
        seal: impl FnOnce(&StoredMessage) -> Option<(T, SessionWrite)> + Send + 'static,
    ) -> Result<(i64, StoredMessage, Option<T>)> {
        let (me, peer) = (me.clone(), peer.clone());
        let keys = self.keys.clone();
        self.worker
            .call(move |c| {
                let (seq, msg) = queue_outgoing_in(c, &keys, &me, &peer, payload)?;
                let sealed = seal(&msg).map(|(sealed, write)| {
                    // Last in the job (it can no longer fail): the state that sealed it is on
                    // disk with the message, before anything sealed under it leaves.
                    sessions::defer_session_write(keys.clone(), write);
                    sealed
                });
                Ok((seq, msg, sealed))
            })
            .await
    }

    /// The outbox of `peer` after position `after_seq` (0: from the start), oldest first,
    /// with each message's position.
    pub async fn outbox(
        &self,
        peer: &Username,
        after_seq: i64,
        limit: u32,
    ) -> Result<Vec<(i64, StoredMessage)>> {
        let peer = peer.clone();
        // A read: lazy, so that it does not make the lazy writes of its batch wait for an fsync.
        self.call_lazy(move |c, k| {
            let Some((tag, key)) = conversation(c, k, &peer, false)? else {
                return Ok(Vec::new());
            };
            let mut stmt = c.prepare_cached(
                "SELECT seq, id, direction, status, integrity, sealed, reason FROM messages
                 WHERE tag = ?1 AND direction = 0 AND status IN (0, 1) AND seq > ?2
                 ORDER BY seq LIMIT ?3",
            )?;
            let rows = stmt
                .query_map(params![tag, after_seq, i64::from(limit)], |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        (
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                        ),
                    ))
                })?
                .collect::<rusqlite::Result<Vec<(i64, RowTuple)>>>()?;
            rows.into_iter()
                .map(|(seq, row)| Ok((seq, decode_row(&key, &tag, &peer, row)?)))
                .collect()
        })
        .await
    }

    /// Every peer with something in the outbox.
    pub async fn peers_with_outbox(&self) -> Result<Vec<Username>> {
        self.call(|c, k| {
            let mut stmt = c.prepare_cached(
                "SELECT DISTINCT c.tag, c.sealed_peer FROM conversations c JOIN messages m ON m.tag = c.tag
                 WHERE m.direction = 0 AND m.status IN (0, 1)",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?)))?;
            let mut out = Vec::new();
            for row in rows {
                let (tag, sealed) = row?;
                out.push(peer_name(k, &tag, &sealed)?);
            }
            Ok(out)
        })
        .await
    }

    pub async fn queued_count(&self) -> Result<u32> {
        self.call(|c, _| {
            let n: i64 = cached_row(
                c,
                "SELECT count(*) FROM messages WHERE direction = 0 AND status IN (0, 1)",
                [],
                |r| r.get(0),
            )?;
            // More than 4 billion queued messages reads as u32::MAX (a count for display).
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
        })
        .await
    }

    /// Turns the held messages from `peer` (a message request) into received ones. Returns
    /// their ids.
    pub async fn release_held(&self, peer: &Username) -> Result<Vec<MessageId>> {
        let peer = peer.clone();
        self.call(move |c, k| {
            let tag = k.tag(&peer)?;
            let mut stmt = c.prepare_cached(
                "UPDATE messages SET status = 3 WHERE tag = ?1 AND direction = 1 AND status = 5 RETURNING id",
            )?;
            let ids = stmt
                .query_map([&tag], |r| r.get::<_, Vec<u8>>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            ids.iter()
                .map(|id| MessageId::from_slice(id).ok_or_else(|| StorageError::Corrupt("id".into())))
                .collect()
        })
        .await
    }

    /// Sets the status of outgoing messages. Returns the ids whose status changed.
    pub async fn set_outgoing_status(
        &self,
        peer: &Username,
        ids: Vec<MessageId>,
        status: Status,
    ) -> Result<Vec<MessageId>> {
        self.fail_or_set(peer, ids, status, FailReason::None, true)
            .await
    }

    /// Marks outgoing messages delivered, with a commit that skips the fsync (see
    /// `SqliteWorker::call_lazy`): the receipts were in hand, and should a power cut take the
    /// write, the messages go out again, the peer's host knows their ids and sends receipts
    /// again. Off the path of the next message, which would otherwise wait for this fsync.
    pub async fn record_delivered(
        &self,
        peer: &Username,
        ids: Vec<MessageId>,
    ) -> Result<Vec<MessageId>> {
        self.fail_or_set(peer, ids, Status::Delivered, FailReason::None, false)
            .await
    }

    /// Marks outgoing messages failed, for `reason`. Returns the ids whose status changed.
    pub async fn set_failed(
        &self,
        peer: &Username,
        ids: Vec<MessageId>,
        reason: FailReason,
    ) -> Result<Vec<MessageId>> {
        self.fail_or_set(peer, ids, Status::Failed, reason, true)
            .await
    }

    /// Marks everything in `peer`'s outbox failed, for `reason`. Returns the ids.
    pub async fn fail_outbox(&self, peer: &Username, reason: FailReason) -> Result<Vec<MessageId>> {
        let peer = peer.clone();
        self.call(move |c, k| {
            let tag = k.tag(&peer)?;
            let mut stmt = c.prepare_cached(
                "UPDATE messages SET status = 4, reason = ?2
                 WHERE tag = ?1 AND direction = 0 AND status IN (0, 1) RETURNING id",
            )?;
            let ids = stmt
                .query_map(params![tag, reason.as_str()], |r| r.get::<_, Vec<u8>>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            ids.iter()
                .map(|id| {
                    MessageId::from_slice(id).ok_or_else(|| StorageError::Corrupt("id".into()))
                })
                .collect()
        })
        .await
    }

    async fn fail_or_set(
        &self,
        peer: &Username,
        ids: Vec<MessageId>,
        status: Status,
        reason: FailReason,
        durable: bool,
    ) -> Result<Vec<MessageId>> {
        let peer = peer.clone();
        let keys = self.keys.clone();
        let job = move |c: &Connection| {
            let k = &keys;
            let tag = k.tag(&peer)?;
            let mut changed = Vec::new();
            let mut stmt = c.prepare_cached(
                "UPDATE messages SET status = ?3, reason = ?4 WHERE tag = ?1 AND id = ?2 AND direction = 0 AND status != ?3 AND status != 2",
            )?;
            for id in ids {
                if stmt.execute(params![tag, &id.0[..], status as i64, reason.as_str()])? > 0 {
                    changed.push(id);
                }
            }
            Ok(changed)
        };
        if durable {
            self.worker.call(job).await
        } else {
            self.worker.call_lazy(job).await
        }
    }

    /// Stores an incoming message unless it is already there (de-duplication by id), and
    /// checks it against the sender's hash chain. `queued` runs once the job has its place in
    /// the storage queue (see `SqliteWorker::call_then`).
    ///
    /// `session`, when given, is saved in the same transaction (session v2: the ratchet that
    /// opened the message), whether the message is new or a duplicate.
    pub async fn store_incoming(
        &self,
        msg: StoredMessage,
        session: Option<SessionWrite>,
        queued: impl FnOnce(),
    ) -> Result<Arrival> {
        let keys = self.keys.clone();
        self.worker
            .call_then(
                move |c| {
                    let arrival = store_incoming_in(c, &keys, msg)?;
                    if let Some(mut write) = session {
                        // Written now: a later deferred write of the same peer's state in
                        // this transaction replaces this one, and would not carry it.
                        if let Some(seen) = write.prekey_transcript.take() {
                            sessions::remember_prekey_transcript(c, &keys, seen)?;
                        }
                        // Last in the job (it can no longer fail): one write of the peer's
                        // state per transaction, however many of its messages it holds.
                        sessions::defer_session_write(keys.clone(), write);
                    }
                    Ok(arrival)
                },
                queued,
            )
            .await
    }

    /// The last `limit` messages with `peer` (0: all), oldest first. Control messages
    /// (deletions, expiry settings) are not part of history.
    /// The last `limit` messages with `peer` (0: all), oldest first.
    pub async fn history(&self, peer: &Username, limit: u32) -> Result<Vec<StoredMessage>> {
        Ok(self
            .history_page(peer, limit, None)
            .await?
            .map(|page| page.messages)
            .unwrap_or_default())
    }

    /// One page of history, oldest first: the last `limit` messages (0: all) before the
    /// message `before` (None: the newest). Only that page is read and decrypted. `None`: there
    /// is no message `before` (deleted meanwhile, say).
    pub async fn history_page(
        &self,
        peer: &Username,
        limit: u32,
        before: Option<MessageId>,
    ) -> Result<Option<HistoryPage>> {
        let peer = peer.clone();
        self.call(move |c, k| {
            let Some((tag, key)) = conversation(c, k, &peer, false)? else {
                return Ok(before.is_none().then(HistoryPage::default));
            };
            let below: i64 = match before {
                None => i64::MAX,
                Some(id) => {
                    let seq: Option<i64> = cached_row(
                        c,
                        "SELECT min(seq) FROM messages WHERE tag = ?1 AND id = ?2 AND control = 0",
                        params![tag, &id.0[..]],
                        |r| r.get(0),
                    )?;
                    match seq {
                        Some(seq) => seq,
                        None => return Ok(None),
                    }
                }
            };
            // One more than asked for says whether older ones exist.
            let want = if limit == 0 {
                i64::MAX
            } else {
                i64::from(limit) + 1
            };
            let mut stmt = c.prepare_cached(HISTORY_PAGE)?;
            let rows = stmt
                .query_map(params![tag, below, want], row_tuple)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut messages = rows
                .into_iter()
                .map(|row| decode_row(&key, &tag, &peer, row))
                .collect::<Result<Vec<_>>>()?;
            let older = limit != 0 && messages.len() > limit as usize;
            messages.truncate(if limit == 0 {
                usize::MAX
            } else {
                limit as usize
            });
            // Rows from before migration 1 may be control messages not marked as such.
            messages.retain(|m| matches!(m.payload, Payload::Text(_)));
            messages.reverse();
            Ok(Some(HistoryPage { messages, older }))
        })
        .await
    }

    pub async fn message(&self, peer: &Username, id: MessageId) -> Result<Option<StoredMessage>> {
        let peer = peer.clone();
        self.call(move |c, k| {
            let Some((tag, key)) = conversation(c, k, &peer, false)? else {
                return Ok(None);
            };
            let mut stmt = c.prepare_cached("SELECT id, direction, status, integrity, sealed, reason FROM messages WHERE tag = ?1 AND id = ?2")?;
            let rows = stmt.query_map(params![tag, &id.0[..]], row_tuple)?;
            let mut rows = rows;
            rows.next()
                .transpose()?
                .map(|row| decode_row(&key, &tag, &peer, row))
                .transpose()
        })
        .await
    }

    pub async fn conversations(&self) -> Result<Vec<ConversationSummary>> {
        self.call(|c, k| {
            // A conversation with neither messages nor a setting (deleted, or only control
            // messages so far) is not shown. One pass over each conversation's messages gives
            // the count, the unread count and the newest time (three sub-queries took three
            // passes: about three times as long, 0.65 against 0.2 s over 100,000 messages).
            let mut stmt = c.prepare_cached(
                "SELECT c.tag, c.sealed_peer, c.expire_seconds, count(m.seq),
                        max(m.stored_at),
                        coalesce(sum(m.direction = 1 AND m.seq > c.read_upto), 0)
                 FROM conversations c
                 LEFT JOIN messages m ON m.tag = c.tag AND m.control = 0
                 GROUP BY c.tag
                 HAVING count(m.seq) > 0 OR c.expire_seconds > 0",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (tag, sealed, expire, count, last, unread) = row?;
                out.push(ConversationSummary {
                    peer: peer_name(k, &tag, &sealed)?,
                    messages: u32::try_from(count).unwrap_or(u32::MAX),
                    unread: u32::try_from(unread).unwrap_or(u32::MAX),
                    last_time: last.unwrap_or(0),
                    expire_seconds: u32::try_from(expire).unwrap_or(0),
                });
            }
            out.sort_by_key(|c| std::cmp::Reverse(c.last_time));
            Ok(out)
        })
        .await
    }

    /// Marks everything received from `peer` so far as read; returns how many messages were
    /// unread. (No conversation: nothing to mark, 0.)
    pub async fn mark_read(&self, peer: &Username) -> Result<u32> {
        let peer = peer.clone();
        self.call(move |c, k| {
            let tag = k.tag(&peer)?;
            let unread: i64 = cached_row(
                c,
                "SELECT count(*) FROM messages m, conversations c WHERE c.tag = ?1 AND m.tag = c.tag
                    AND m.control = 0 AND m.direction = 1 AND m.seq > c.read_upto",
                [&tag],
                |r| r.get(0),
            )?;
            cached_exec(
                c,
                "UPDATE conversations SET read_upto =
                    coalesce((SELECT max(seq) FROM messages WHERE tag = ?1), read_upto)
                 WHERE tag = ?1",
                [&tag],
            )?;
            Ok(u32::try_from(unread).unwrap_or(u32::MAX))
        })
        .await
    }

    /// Deletes one message (`Some(id)`) or the whole conversation (`None`: every message, and
    /// its key is destroyed) on the user's own request (`request: None`), or what a peer's
    /// delete request (the id of the control message that carried it) may remove. Then the WAL is checkpointed and truncated so no old page survives
    /// there. Returns how many messages (not counting control messages) went.
    pub async fn delete(
        &self,
        peer: &Username,
        id: Option<MessageId>,
        request: Option<MessageId>,
    ) -> Result<u32> {
        let peer = peer.clone();
        let n = self
            .call(move |c, k| {
                let tag = k.tag(&peer)?;
                let n: i64 = match (id, request) {
                    (Some(id), None) => {
                        let n = cached_row(c,
                            "SELECT count(*) FROM messages WHERE tag = ?1 AND id = ?2 AND control = 0",
                            params![tag, &id.0[..]],
                            |r| r.get(0),
                        )?;
                        cached_exec(c, "DELETE FROM messages WHERE tag = ?1 AND id = ?2", params![tag, &id.0[..]])?;
                        n
                    }
                    (Some(id), Some(_)) => {
                        // A peer's request may only remove what the peer wrote (direction 1).
                        let n = cached_row(c,
                            "SELECT count(*) FROM messages WHERE tag = ?1 AND id = ?2 AND control = 0 AND direction = 1",
                            params![tag, &id.0[..]],
                            |r| r.get(0),
                        )?;
                        cached_exec(c,
                            "DELETE FROM messages WHERE tag = ?1 AND id = ?2 AND direction = 1",
                            params![tag, &id.0[..]],
                        )?;
                        n
                    }
                    (None, Some(request)) => {
                        // A peer's request for the whole conversation covers what came before
                        // the request (a message that arrived after it, and was acknowledged,
                        // stays), and never our own outbox (messages we accepted to send). The
                        // request's own row stays too, so a replay of it is still a duplicate.
                        const BEFORE: &str = "tag = ?1 AND seq < (SELECT seq FROM messages WHERE tag = ?1 AND id = ?2 AND direction = 1)
                             AND NOT (direction = 0 AND status IN (0, 1))";
                        let n = cached_row(c,
                            &format!("SELECT count(*) FROM messages WHERE control = 0 AND {BEFORE}"),
                            params![tag, &request.0[..]],
                            |r| r.get(0),
                        )?;
                        cached_exec(c,
                            &format!("DELETE FROM messages WHERE {BEFORE}"),
                            params![tag, &request.0[..]],
                        )?;
                        // The conversation's key is destroyed here too: what stays is sealed
                        // again under a new one, so that the old key (in an older copy of the
                        // database, and the epochs of before) opens nothing that was deleted.
                        rekey_conversation(c, k, &tag)?;
                        n
                    }
                    (None, None) => {
                        let n = cached_row(c,
                            "SELECT count(*) FROM messages WHERE tag = ?1 AND control = 0",
                            [&tag],
                            |r| r.get(0),
                        )?;
                        cached_exec(c, "DELETE FROM messages WHERE tag = ?1", [&tag])?;
                        // And everything the event log says of the conversation.
                        cached_exec(c, "DELETE FROM events WHERE tag = ?1", [&tag])?;
                        // The key is destroyed by overwriting it with a new one, but the row
                        // stays: its hash-chain heads belong to the two users' chains, not to
                        // the history. Dropping them made our next message look like a first
                        // one to the peer and theirs like a gap to us, an integrity alarm
                        // caused by a deletion. (The expiry setting stays too.)
                        let (_, wrapped) = k.new_conversation_key(&tag)?;
                        cached_exec(c,
                            "UPDATE conversations SET wrapped_key = ?2 WHERE tag = ?1",
                            params![tag, wrapped],
                        )?;
                        n
                    }
                };
                // More than 4 billion queued messages reads as u32::MAX (a count for display).
            Ok(u32::try_from(n).unwrap_or(u32::MAX))
            })
            .await?;
        self.checkpoint().await?;
        Ok(n)
    }

    /// A peer's request (the control message `request`) to delete these messages it wrote, in
    /// one transaction and one checkpoint however many ids it names. Returns the ids that were
    /// here and are now gone.
    pub async fn delete_from_peer(
        &self,
        peer: &Username,
        ids: Vec<MessageId>,
    ) -> Result<Vec<MessageId>> {
        let peer = peer.clone();
        let deleted = self
            .call(move |c, k| {
                let tag = k.tag(&peer)?;
                let mut deleted = Vec::new();
                for id in ids {
                    // Only what the peer wrote (direction 1), never a control message.
                    let n = cached_exec(
                        c,
                        "DELETE FROM messages WHERE tag = ?1 AND id = ?2 AND direction = 1 AND control = 0",
                        params![tag, &id.0[..]],
                    )?;
                    if n > 0 {
                        deleted.push(id);
                    }
                }
                Ok(deleted)
            })
            .await?;
        if !deleted.is_empty() {
            self.checkpoint().await?;
        }
        Ok(deleted)
    }

    /// Copies the WAL into the database and truncates it to zero bytes, so no page a
    /// deletion freed survives in the WAL. Another reader of the file (a backup, say) can hold
    /// the checkpoint back: SQLite's busy handler waits for it (the connection's 5 s busy
    /// timeout), and if it still cannot finish, the error says so (the deletion happened; its
    /// pages are wiped at the next checkpoint) instead of the result being ignored.
    pub async fn checkpoint(&self) -> Result<()> {
        self.worker
            .call_alone(|c| -> Result<()> {
                // (busy, frames in the WAL, frames copied): busy means a reader held it.
                let busy: i64 = cached_row(c, "PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
                if busy != 0 {
                    return Err(StorageError::CheckpointBusy);
                }
                Ok(())
            })
            .await
    }

    pub async fn set_expiry(&self, peer: &Username, seconds: u32) -> Result<()> {
        let peer = peer.clone();
        self.call(move |c, k| {
            let (tag, _) = conversation(c, k, &peer, true)?
                .ok_or_else(|| StorageError::Corrupt("conversation".into()))?;
            cached_exec(
                c,
                "UPDATE conversations SET expire_seconds = ?2 WHERE tag = ?1",
                params![tag, i64::from(seconds)],
            )?;
            Ok(())
        })
        .await?;
        // A stored permit when nobody waits: the loop sees it on its next wait.
        self.expiry_set.notify_one();
        Ok(())
    }

    /// Whether any conversation has disappearing messages on.
    pub async fn any_expiring(&self) -> Result<bool> {
        self.call(|c, _| {
            Ok(cached_row(
                c,
                "SELECT EXISTS(SELECT 1 FROM conversations WHERE expire_seconds > 0)",
                [],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Resolves once a conversation's expiry has been set (since the last call).
    pub async fn expiry_set(&self) {
        self.expiry_set.notified().await
    }

    /// Deletes messages older than their conversation's expiry, at most [`EXPIRE_BATCH`] a
    /// call (a timer set on a long conversation empties it over a few runs, each a short
    /// job). Returns the (peer, id) of each text message that went, for devices to hear of.
    pub async fn expire(&self, now: i64) -> Result<Vec<(Username, MessageId)>> {
        let gone = self
            .call(move |c, k| {
                // CROSS JOIN keeps the conversations outside: this runs every second, and
                // with messages outside SQLite scanned every message of every conversation.
                let rows = c
                    .prepare_cached(
                        "DELETE FROM messages WHERE seq IN (
                            SELECT m.seq FROM conversations c CROSS JOIN messages m ON m.tag = c.tag
                            WHERE c.expire_seconds > 0 AND m.stored_at + c.expire_seconds * 1000 <= ?1
                              AND NOT (m.direction = 0 AND m.status IN (0, 1))
                            LIMIT ?2)
                         RETURNING tag, id, control",
                    )?
                    .query_map(params![now, EXPIRE_BATCH], |r| {
                        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?, r.get::<_, i64>(2)?))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let mut peers: std::collections::HashMap<Vec<u8>, Username> =
                    std::collections::HashMap::new();
                let mut gone = Vec::with_capacity(rows.len());
                for (tag, id, control) in &rows {
                    if *control != 0 {
                        continue;
                    }
                    let peer = match peers.get(tag) {
                        Some(peer) => peer.clone(),
                        None => {
                            let sealed: Vec<u8> = cached_row(
                                c,
                                "SELECT sealed_peer FROM conversations WHERE tag = ?1",
                                [tag],
                                |r| r.get(0),
                            )?;
                            let peer = peer_name(k, tag, &sealed)?;
                            peers.insert(tag.clone(), peer.clone());
                            peer
                        }
                    };
                    let id = MessageId::from_slice(id)
                        .ok_or_else(|| StorageError::Corrupt("message id".into()))?;
                    gone.push((peer, id));
                }
                cached_exec(
                    c,
                    "DELETE FROM tombstones WHERE deleted_at < ?1",
                    [now - TOMBSTONE_DAYS * 24 * 3600 * 1000],
                )?;
                event_log::prune_by_age(c, now)?;
                Ok((rows.len(), gone))
            })
            .await?;
        if gone.0 > 0 {
            self.checkpoint().await?;
        }
        Ok(gone.1)
    }

    /// A hash of the conversation's text messages that both sides compute alike when they saw
    /// the same messages: BLAKE2b over the sorted message hashes.
    pub async fn transcript_hash(&self, peer: &Username) -> Result<[u8; 32]> {
        let history = self.history(peer, 0).await?;
        let mut hashes: Vec<[u8; 32]> = history
            .iter()
            .map(|m| message_hash(&m.id, &m.from, &m.to, m.time, &m.prev_hash, &m.payload))
            .collect::<std::result::Result<_, _>>()?;
        hashes.sort_unstable();
        Ok(smvs_crypto::blake2b_256(&hashes.concat())?)
    }
}

/// Makes the file at `path` mode 0600, creating it (empty, for SQLite to fill) if `create`.
///
/// SQLite creates its files with mode 0644 less the umask, and gives `-wal` and `-shm` the mode
/// of the database file. So the database is created 0600 here, before SQLite opens it, whatever
/// the umask, and its side files then follow; files an older version left readable are narrowed.
/// The process umask is not changed instead: it is process-wide, and the local socket's group
/// access depends on it.
fn make_private(path: &Path, create: bool) -> Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let failed = |source| StorageError::Permissions {
        path: path.to_owned(),
        source,
    };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .create(create)
        .append(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(failed(e)),
    };
    let mode = file.metadata().map_err(failed)?.permissions().mode();
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(failed)?;
    }
    Ok(())
}

/// How many of the conversation's latest gap messages [`named_by_a_gap`] looks at.
const GAP_LOOKBACK: i64 = 1024;

/// Whether a stored incoming message names `msg` as its predecessor, i.e. `msg` arrived after
/// its successor: out of order, even when its own predecessor never arrived either.
///
/// Without this, such a message counted as a gap and moved the chain head back to itself; the
/// in-order messages after it (whose predecessors are stored) then all counted as out of order.
/// Only gap messages need looking at: a message that names one not yet stored was a gap itself
/// when it arrived (its predecessor was unknown). They are few, and only this path (a message
/// that does not follow the head and whose predecessor is unknown) opens them.
fn named_by_a_gap(c: &Connection, key: &AeadKey, tag: &[u8], msg: &StoredMessage) -> Result<bool> {
    let hash = message_hash(
        &msg.id,
        &msg.from,
        &msg.to,
        msg.time,
        &msg.prev_hash,
        &msg.payload,
    )?;
    let mut stmt = c.prepare_cached(
        "SELECT id, direction, status, integrity, sealed, reason FROM messages
         WHERE tag = ?1 AND direction = 1 AND integrity = ?2 ORDER BY seq DESC LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![tag, Integrity::Gap as i64, GAP_LOOKBACK], row_tuple)?;
    for row in rows {
        if decode_row(key, tag, &msg.peer, row?)?.prev_hash == hash {
            return Ok(true);
        }
    }
    Ok(false)
}

fn peer_name(k: &AtRest, tag: &[u8], sealed: &[u8]) -> Result<Username> {
    let plain = k.open("peer", tag, sealed)?;
    let text =
        std::str::from_utf8(&plain).map_err(|_| StorageError::Corrupt("peer name".into()))?;
    Username::parse_local(text).map_err(|e| StorageError::Corrupt(e.to_string()))
}

/// The tag and key of the conversation with `peer`, created when `create` is set.
/// [`Storage::store_incoming`]'s work on the storage thread.
fn store_incoming_in(c: &Connection, keys: &Arc<AtRest>, msg: StoredMessage) -> Result<Arrival> {
    let k: &AtRest = keys;
    let (tag, key) = conversation(c, k, &msg.peer, true)?
        .ok_or_else(|| StorageError::Corrupt("conversation".into()))?;
    // Already here, or here once and deleted since (a tombstone).
    let seen: bool = cached_row(
        c,
        "SELECT EXISTS (SELECT 1 FROM messages WHERE tag = ?1 AND id = ?2 AND direction = 1)
             OR EXISTS (SELECT 1 FROM tombstones WHERE mark = ?3)",
        params![tag, &msg.id.0[..], k.tombstone_mark(&tag, &msg.id.0)?],
        |r| r.get(0),
    )?;
    if seen {
        return Ok(Arrival::Duplicate);
    }
    let ours: bool = cached_row(
        c,
        "SELECT EXISTS (SELECT 1 FROM messages WHERE tag = ?1 AND id = ?2 AND direction = 0)",
        params![tag, &msg.id.0[..]],
        |r| r.get(0),
    )?;
    if ours {
        return Ok(Arrival::Collision);
    }
    let sealed_last: Vec<u8> = cached_row(
        c,
        "SELECT last_recv_hash FROM conversations WHERE tag = ?1",
        [&tag],
        |r| r.get(0),
    )?;
    let last = k.open_head(&tag, &sealed_last)?;
    let integrity = if msg.prev_hash == last {
        if last.is_empty() {
            Integrity::Unchecked
        } else {
            Integrity::Ok
        }
    } else {
        // Is the predecessor something we already have (or had, and deleted:
        // its tombstone keeps its place in the chain), or does a stored
        // message name this one as its predecessor (an older message arriving
        // late), or is it something we never saw (a gap)? Only a gap moves the
        // head; a late message must not pull the chain back.
        let prev = k.chain_tag(&msg.prev_hash)?;
        let known: bool = cached_row(
            c,
            "SELECT EXISTS (SELECT 1 FROM messages WHERE tag = ?1 AND direction = 1 AND hash = ?2)
             OR EXISTS (SELECT 1 FROM tombstones WHERE chain = ?3 AND chain != x'')",
            params![tag, prev, k.tombstone_chain(&tag, &prev)?],
            |r| r.get(0),
        )?;
        if known || named_by_a_gap(c, &key, &tag, &msg)? {
            Integrity::OutOfOrder
        } else {
            Integrity::Gap
        }
    };
    let stored = StoredMessage { integrity, ..msg };
    let hash = insert_message(c, k, &tag, &key, &stored)?;
    if integrity != Integrity::OutOfOrder {
        cached_exec(
            c,
            "UPDATE conversations SET last_recv_hash = ?2 WHERE tag = ?1",
            params![tag, k.seal_head(&tag, &hash)?],
        )?;
    }
    Ok(Arrival::Stored(integrity))
}

/// Gives the conversation `tag` a new key: its remaining message rows are sealed again under
/// it, and the old wrapped key is overwritten (nothing keeps it).
fn rekey_conversation(c: &Connection, k: &AtRest, tag: &[u8]) -> Result<()> {
    let Some(wrapped): Option<Vec<u8>> = cached_row(
        c,
        "SELECT wrapped_key FROM conversations WHERE tag = ?1",
        [tag],
        |r| r.get(0),
    )
    .optional()?
    else {
        return Ok(());
    };
    let old = k.unwrap_conversation_key(tag, &wrapped)?;
    let (new, wrapped) = k.new_conversation_key(tag)?;
    let rows: Vec<(i64, Vec<u8>, i64, Vec<u8>)> = c
        .prepare_cached("SELECT seq, id, direction, sealed FROM messages WHERE tag = ?1")?
        .query_map([tag], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (seq, id, direction, sealed) in rows {
        let plain = AtRest::open_message(&old, tag, &id, direction, &sealed)?;
        let sealed = AtRest::seal_message(&new, tag, &id, direction, &plain)?;
        cached_exec(
            c,
            "UPDATE messages SET sealed = ?2 WHERE seq = ?1",
            params![seq, sealed],
        )?;
    }
    cached_exec(
        c,
        "UPDATE conversations SET wrapped_key = ?2 WHERE tag = ?1",
        params![tag, wrapped],
    )?;
    Ok(())
}

fn conversation(
    c: &Connection,
    k: &AtRest,
    peer: &Username,
    create: bool,
) -> Result<Option<(Vec<u8>, AeadKey)>> {
    let tag = k.tag(peer)?;
    let wrapped: Option<Vec<u8>> = cached_row(
        c,
        "SELECT wrapped_key FROM conversations WHERE tag = ?1",
        [&tag],
        |r| r.get(0),
    )
    .optional()?;
    match wrapped {
        Some(w) => {
            let key = k.unwrap_conversation_key(&tag, &w)?;
            Ok(Some((tag, key)))
        }
        None if create => {
            let (key, wrapped) = k.new_conversation_key(&tag)?;
            let sealed_peer = k.seal("peer", &tag, peer.as_str().as_bytes())?;
            cached_exec(
                c,
                "INSERT INTO conversations (tag, sealed_peer, wrapped_key) VALUES (?1, ?2, ?3)",
                params![tag, sealed_peer, wrapped],
            )?;
            Ok(Some((tag, key)))
        }
        None => Ok(None),
    }
}

fn insert_message(
    c: &Connection,
    k: &AtRest,
    tag: &[u8],
    key: &AeadKey,
    msg: &StoredMessage,
) -> Result<[u8; 32]> {
    let content = Content {
        from: msg.from.to_string(),
        to: msg.to.to_string(),
        time: msg.time,
        prev: hex::encode(&msg.prev_hash),
        payload: ContentPayload::from(&msg.payload),
    };
    let plain = Zeroizing::new(
        serde_json::to_vec(&content).map_err(|e| StorageError::Corrupt(e.to_string()))?,
    );
    let direction = msg.direction as i64;
    let sealed = AtRest::seal_message(key, tag, &msg.id.0, direction, &plain)?;
    let hash = message_hash(
        &msg.id,
        &msg.from,
        &msg.to,
        msg.time,
        &msg.prev_hash,
        &msg.payload,
    )?;
    c.prepare_cached(
        "INSERT INTO messages (tag, id, direction, status, integrity, stored_at, hash, sealed, control)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        tag,
        &msg.id.0[..],
        direction,
        msg.status as i64,
        msg.integrity as i64,
        crate::model::now_ms(),
        k.chain_tag(&hash)?,
        sealed,
        !matches!(msg.payload, Payload::Text(_))
    ])?;
    Ok(hash)
}

type RowTuple = (Vec<u8>, i64, i64, i64, Vec<u8>, String);

fn row_tuple(r: &rusqlite::Row<'_>) -> rusqlite::Result<RowTuple> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn decode_row(
    key: &AeadKey,
    tag: &[u8],
    peer: &Username,
    (id, direction, status, integrity, sealed, reason): RowTuple,
) -> Result<StoredMessage> {
    let plain = AtRest::open_message(key, tag, &id, direction, &sealed)?;
    let content: Content =
        serde_json::from_slice(&plain).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    let name = |s: &str| Username::parse_local(s).map_err(|e| StorageError::Corrupt(e.to_string()));
    Ok(StoredMessage {
        id: MessageId::from_slice(&id).ok_or_else(|| StorageError::Corrupt("id".into()))?,
        peer: peer.clone(),
        from: name(&content.from)?,
        to: name(&content.to)?,
        time: content.time,
        payload: content.payload.into_payload()?,
        prev_hash: hex::decode(&content.prev)
            .map_err(|_| StorageError::Corrupt("prev hash".into()))?,
        status: Status::from_i64(status)
            .ok_or_else(|| StorageError::Corrupt(format!("unknown message status {status}")))?,
        reason: FailReason::parse(&reason)
            .ok_or_else(|| StorageError::Corrupt(format!("unknown failure reason {reason:?}")))?,
        integrity: Integrity::from_i64(integrity)
            .ok_or_else(|| StorageError::Corrupt(format!("unknown integrity {integrity}")))?,
        direction: if direction == 0 {
            Direction::Out
        } else {
            Direction::In
        },
    })
}

fn get_contact(c: &Connection, k: &AtRest, peer: &Username) -> Result<Option<Contact>> {
    let tag = k.tag(peer)?;
    let sealed: Option<Vec<u8>> = cached_row(
        c,
        "SELECT sealed FROM contacts WHERE tag = ?1",
        [&tag],
        |r| r.get(0),
    )
    .optional()?;
    sealed
        .map(|s| {
            let plain = k.open("contact", &tag, &s)?;
            let record: ContactRecord =
                serde_json::from_slice(&plain).map_err(|e| StorageError::Corrupt(e.to_string()))?;
            record.into_contact()
        })
        .transpose()
}

fn put_contact(c: &Connection, k: &AtRest, contact: &Contact) -> Result<()> {
    let tag = k.tag(&contact.username)?;
    let plain = Zeroizing::new(
        serde_json::to_vec(&ContactRecord::from_contact(contact))
            .map_err(|e| StorageError::Corrupt(e.to_string()))?,
    );
    let sealed = k.seal("contact", &tag, &plain)?;
    cached_exec(c,
        "INSERT INTO contacts VALUES (?1, ?2) ON CONFLICT (tag) DO UPDATE SET sealed = excluded.sealed",
        params![tag, sealed],
    )?;
    Ok(())
}

/// `Connection::query_row` through the statement cache: every statement here runs again and
/// again, and parsing SQL each time showed up in the profile.
fn cached_row<T, P: rusqlite::Params>(
    c: &Connection,
    sql: &str,
    params: P,
    f: impl FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    c.prepare_cached(sql)?.query_row(params, f)
}

/// `Connection::execute` through the statement cache.
fn cached_exec<P: rusqlite::Params>(
    c: &Connection,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(params)
}

#[cfg(test)]
mod tests;
