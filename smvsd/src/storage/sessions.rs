//! Session v2's per-contact state at rest: one sealed row per contact (`sessions`: the
//! contact's tag and the state sealed under the storage key, naming the tag), and the rollback
//! counter seen last (a setting).
//!
//! The state changes in the same transaction as what it was changed for: an incoming message
//! is stored together with the ratchet that opened it ([`Storage::store_incoming`] takes it);
//! an outgoing batch's ratchet is saved before any of its envelopes leaves.

use rusqlite::{params, OptionalExtension};
use smvs_crypto::Zeroizing;
use smvs_schema::Username;

use super::{cached_exec, cached_row, Result, Storage};
use crate::model::MessageId;

const SESSION_KIND: &str = "session-v2";
/// The rollback counter the database was last stamped with.
const COUNTER_SETTING: &str = "rollback-counter";

/// A session state to save together with something else, for `peer`.
pub struct SessionWrite {
    pub peer: Username,
    pub state: Zeroizing<Vec<u8>>,
    /// A prekey handshake this session came from (its transcript hash, and until when, Unix
    /// s, a repeat of it must be refused): remembered with the state.
    pub prekey_transcript: Option<([u8; 32], i64)>,
    /// Both sides have the session (not a prekey session of ours the peer has not answered
    /// yet): the peer has spoken v2 with us, for good.
    pub confirmed: bool,
}

/// Remembers a prekey handshake's transcript until `until` (Unix s), as a keyed mark, and
/// drops the marks whose time is over.
pub(super) fn remember_prekey_transcript(
    c: &rusqlite::Connection,
    k: &super::AtRest,
    (transcript, until): ([u8; 32], i64),
) -> Result<()> {
    cached_exec(
        c,
        "DELETE FROM prekey_transcripts WHERE until < ?1",
        [crate::model::now_ms() / 1000],
    )?;
    cached_exec(
        c,
        "INSERT OR IGNORE INTO prekey_transcripts VALUES (?1, ?2)",
        params![k.prekey_mark(&transcript)?, until],
    )?;
    Ok(())
}

pub(super) fn write_session(
    c: &rusqlite::Connection,
    k: &super::AtRest,
    write: &SessionWrite,
) -> Result<()> {
    let tag = k.tag(&write.peer)?;
    let sealed = k.seal(SESSION_KIND, &tag, &write.state)?;
    cached_exec(
        c,
        "INSERT INTO sessions VALUES (?1, ?2) ON CONFLICT (tag) DO UPDATE SET sealed = excluded.sealed",
        params![tag, sealed],
    )?;
    if write.confirmed {
        cached_exec(c, "INSERT OR IGNORE INTO spoke_v2 VALUES (?1)", [&tag])?;
    }
    if let Some(seen) = write.prekey_transcript {
        remember_prekey_transcript(c, k, seen)?;
    }
    Ok(())
}

impl Storage {
    /// `peer`'s stored session state, if there is one.
    pub async fn session(&self, peer: &Username) -> Result<Option<Zeroizing<Vec<u8>>>> {
        let peer = peer.clone();
        self.call(move |c, k| {
            let tag = k.tag(&peer)?;
            let sealed: Option<Vec<u8>> = cached_row(
                c,
                "SELECT sealed FROM sessions WHERE tag = ?1",
                [&tag],
                |r| r.get(0),
            )
            .optional()?;
            Ok(sealed.map(|s| k.open(SESSION_KIND, &tag, &s)).transpose()?)
        })
        .await
    }

    /// Saves a session state (before anything sealed under it leaves the host: the answer
    /// comes after the commit). Deferred like the inbox's writes (see [`defer_session_write`]),
    /// so that whichever of the peer's states comes last in a transaction is the one on disk.
    pub async fn save_session(&self, mut write: SessionWrite) -> Result<()> {
        let keys = self.keys.clone();
        self.worker
            .call(move |c| {
                if let Some(seen) = write.prekey_transcript.take() {
                    remember_prekey_transcript(c, &keys, seen)?;
                }
                defer_session_write(keys.clone(), write);
                Ok(())
            })
            .await
    }

    /// Forgets `peer`'s session state; with `everything`, also that it spoke v2 (its
    /// identity changed: the new one starts afresh).
    pub async fn forget_session(&self, peer: &Username, everything: bool) -> Result<()> {
        let keys = self.keys.clone();
        let peer = peer.clone();
        self.worker
            .call(move |_| {
                let tag = keys.tag(&peer)?;
                // In the same slot as a deferred save of the peer's state: whichever comes
                // last in the transaction wins.
                smvs_sqlite::defer_write(
                    session_slot(&peer),
                    Box::new(move |c| {
                        c.prepare_cached("DELETE FROM sessions WHERE tag = ?1")?
                            .execute([&tag])?;
                        if everything {
                            c.prepare_cached("DELETE FROM spoke_v2 WHERE tag = ?1")?
                                .execute([&tag])?;
                        }
                        Ok(())
                    }),
                );
                Ok(())
            })
            .await
    }

    /// Whether `peer` has spoken session v2 with us (whether or not a session is kept now).
    pub async fn spoke_v2(&self, peer: &Username) -> Result<bool> {
        let peer = peer.clone();
        self.call(move |c, k| {
            Ok(cached_row(
                c,
                "SELECT EXISTS (SELECT 1 FROM spoke_v2 WHERE tag = ?1)",
                [k.tag(&peer)?],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Whether a prekey handshake with this transcript hash was accepted before (and its
    /// prekey may still be in use): then it is a replay.
    pub async fn prekey_transcript_seen(&self, transcript: [u8; 32]) -> Result<bool> {
        self.call(move |c, k| {
            Ok(cached_row(
                c,
                "SELECT EXISTS (SELECT 1 FROM prekey_transcripts WHERE mark = ?1)",
                [k.prekey_mark(&transcript)?],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// Forgets every session state (a rollback was detected: each contact gets a new
    /// handshake). Returns how many there were.
    pub async fn forget_sessions(&self) -> Result<usize> {
        self.call(|c, _| Ok(cached_exec(c, "DELETE FROM sessions", [])?))
            .await
    }

    /// Whether the message `id` from `peer` is stored, or was and was deleted (a tombstone):
    /// checked before a ratchet is asked to open it again.
    pub async fn has_incoming(&self, peer: &Username, id: MessageId) -> Result<bool> {
        let peer = peer.clone();
        self.call(move |c, k| {
            let tag = k.tag(&peer)?;
            Ok(cached_row(
                c,
                "SELECT EXISTS (SELECT 1 FROM messages WHERE tag = ?1 AND id = ?2 AND direction = 1)
                     OR EXISTS (SELECT 1 FROM tombstones WHERE mark = ?3)",
                params![tag, &id.0[..], k.tombstone_mark(&tag, &id.0)?],
                |r| r.get(0),
            )?)
        })
        .await
    }

    /// The rollback counter this database was last stamped with (0: never).
    pub async fn rollback_stamp(&self) -> Result<u64> {
        Ok(self
            .setting(COUNTER_SETTING)
            .await?
            .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0))
    }

    pub async fn set_rollback_stamp(&self, value: u64) -> Result<()> {
        self.set_setting(COUNTER_SETTING, value.to_be_bytes().to_vec())
            .await
    }
}

/// The key of `peer`'s state among a transaction's deferred writes.
fn session_slot(peer: &Username) -> Vec<u8> {
    [b"session\0".as_slice(), peer.as_str().as_bytes()].concat()
}

/// Defers `write` to the end of the storage thread's current transaction (in place of an
/// earlier write of the same peer's state in it): see `smvs_sqlite::defer_write`.
pub(super) fn defer_session_write(keys: std::sync::Arc<super::AtRest>, write: SessionWrite) {
    smvs_sqlite::defer_write(
        session_slot(&write.peer),
        Box::new(move |c| {
            write_session(c, &keys, &write).map_err(|e| match e {
                super::StorageError::Sqlite(e) => e,
                other => rusqlite::Error::ToSqlConversionFailure(Box::new(other)),
            })
        }),
    );
}
