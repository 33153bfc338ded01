//! Storage epochs at rest (docs/protocol.md, 10.4): the database records, in clear, which
//! epoch its sealed values are under (`storage_epoch`), and moves them all to a new epoch in
//! one transaction ([`Storage::move_to_epoch`]); then the write-ahead log is wiped, and keyguard
//! may destroy the old epoch's key. Messages are sealed under their conversation keys, which
//! are themselves values sealed under the epoch: they are re-wrapped, not re-sealed.
//!
//! ```text
//!  open:  stored epoch = keyguard's current ─► use it (a previous one left: retire it)
//!         stored epoch = keyguard's previous ─► use it, move to the current, retire
//!         anything else                     ─► EpochGone (an old copy: it stays shut)
//! ```

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use smvs_crypto::{AeadKey, Zeroizing};

use super::{cached_exec, AtRest, Result, Storage, StorageError};

/// One storage epoch's key.
pub struct Epoch {
    pub id: u32,
    pub key: AeadKey,
}

/// Keyguard's storage keys.
pub struct EpochKeys {
    /// Tag, chain and tombstone keys (3 x 32 bytes), the same in every epoch.
    pub derived: Zeroizing<Vec<u8>>,
    pub current: Epoch,
    /// The previous epoch, until it is retired.
    pub previous: Option<Epoch>,
}

/// What is left to do for the epochs after opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EpochWork {
    /// Nothing.
    None,
    /// The database is under the current epoch; keyguard still holds the previous one (a
    /// move finished, and its retirement did not): retire it.
    Retire(u32),
    /// The database is still under the previous epoch (a move was cut short): move to the
    /// current one, then retire the previous.
    Move { from: u32 },
}

/// The epoch the database at `path` says it is under, if it says (read before the storage
/// thread starts; a database without the table or the row is from before epochs).
pub(super) fn stored_epoch(path: &Path) -> Result<Option<u32>> {
    if !path.exists() {
        return Ok(None);
    }
    let conn = Connection::open(path)?;
    let has_table: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'storage_epoch')",
        [],
        |r| r.get(0),
    )?;
    if !has_table {
        return Ok(None);
    }
    let epoch: Option<i64> = conn
        .query_row("SELECT epoch FROM storage_epoch", [], |r| r.get(0))
        .optional()?;
    epoch
        .map(|e| u32::try_from(e).map_err(|_| StorageError::Corrupt(format!("storage epoch {e}"))))
        .transpose()
}

/// The epoch to open with. A database that names none is either new (the current epoch) or
/// from before epochs (epoch 1, which keyguard made of its old storage key).
pub(super) fn choose(found: Option<u32>, keys: &EpochKeys) -> Result<Epoch> {
    // No row: epoch 1 if keyguard still holds it, else the current one (a database from
    // before epochs that is not under it is caught by settle_on_open).
    let wanted = found.unwrap_or(match &keys.previous {
        Some(p) if p.id == 1 => 1,
        _ => keys.current.id,
    });
    let copy = |e: &Epoch| -> Result<Epoch> {
        Ok(Epoch {
            id: e.id,
            key: AeadKey::from_bytes(e.key.expose())?,
        })
    };
    if wanted == keys.current.id {
        return copy(&keys.current);
    }
    match &keys.previous {
        Some(p) if p.id == wanted => copy(p),
        _ => Err(StorageError::EpochGone {
            found: wanted,
            held: match &keys.previous {
                Some(p) => format!("epochs {} and {}", p.id, keys.current.id),
                None => format!("epoch {}", keys.current.id),
            },
        }),
    }
}

/// Right after the migrations: records the epoch of a database that names none, and says what
/// is left to do. A database from before epochs, opened while keyguard is past epoch 1, is
/// refused if its values do not open under the key chosen.
pub(super) fn settle_on_open(
    c: &Connection,
    keys: &AtRest,
    current: Option<u32>,
) -> Result<EpochWork> {
    let stored: Option<i64> = c
        .query_row("SELECT epoch FROM storage_epoch", [], |r| r.get(0))
        .optional()?;
    if stored.is_none() {
        if holds_sealed_values(c)? && keys.epoch() != 1 {
            return Err(StorageError::EpochGone {
                found: 1,
                held: format!("epoch {}", keys.epoch()),
            });
        }
        c.execute(
            "INSERT INTO storage_epoch VALUES (1, ?1, ?2)",
            params![i64::from(keys.epoch()), crate::model::now_ms()],
        )?;
    }
    let at = keys.epoch();
    Ok(match current {
        Some(current) if current != at => EpochWork::Move { from: at },
        Some(_) | None => EpochWork::None,
    })
}

fn holds_sealed_values(c: &Connection) -> Result<bool> {
    Ok(c.query_row(
        "SELECT EXISTS (SELECT 1 FROM settings) OR EXISTS (SELECT 1 FROM contacts)
             OR EXISTS (SELECT 1 FROM conversations) OR EXISTS (SELECT 1 FROM sessions)
             OR EXISTS (SELECT 1 FROM events)",
        [],
        |r| r.get(0),
    )?)
}

impl Storage {
    /// The epoch the database is under now.
    pub fn epoch(&self) -> u32 {
        self.keys.epoch()
    }

    /// When the database moved to its epoch (Unix ms, wall clock).
    pub async fn epoch_since(&self) -> Result<i64> {
        self.call(|c, _| Ok(c.query_row("SELECT since FROM storage_epoch", [], |r| r.get(0))?))
            .await
    }

    /// Re-seals every value sealed under the current epoch under `next` (epoch `id`), records
    /// the epoch, commits, and wipes the write-ahead log: all in one job that runs alone, so no
    /// other write sees a half-moved database. Returns how many values moved (0: already
    /// there). Only after this may keyguard retire the old epoch.
    pub async fn move_to_epoch(&self, next: Epoch) -> Result<usize> {
        let keys = self.keys.clone();
        self.worker
            .call_alone(move |c| {
                if keys.epoch() == next.id {
                    return Ok(0);
                }
                c.execute_batch("BEGIN IMMEDIATE")?;
                let moved = reseal_all(c, &keys, &next.key).and_then(|moved| {
                    c.execute(
                        "UPDATE storage_epoch SET epoch = ?1, since = ?2",
                        params![i64::from(next.id), crate::model::now_ms()],
                    )?;
                    c.execute_batch("COMMIT")?;
                    Ok(moved)
                });
                let moved = match moved {
                    Ok(moved) => moved,
                    Err(e) => {
                        let _ = c.execute_batch("ROLLBACK");
                        return Err(e);
                    }
                };
                keys.set_epoch(next.id, next.key);
                // The old values' pages: out of the WAL now (secure_delete wipes freed pages
                // in the file).
                let busy: i64 = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
                if busy != 0 {
                    return Err(StorageError::CheckpointBusy);
                }
                Ok(moved)
            })
            .await
    }
}

/// Every value sealed directly under the storage epoch, sealed again under `next`.
fn reseal_all(c: &Connection, k: &AtRest, next: &AeadKey) -> Result<usize> {
    let mut moved = 0;
    // (table, key column, sealed column, kind); the key column is the AD's tag.
    for (table, key, column, kind) in [
        ("settings", "name", "sealed", "setting"),
        ("contacts", "tag", "sealed", "contact"),
        ("sessions", "tag", "sealed", "session-v2"),
        ("conversations", "tag", "sealed_peer", "peer"),
        ("conversations", "tag", "wrapped_key", "conversation-key"),
        ("conversations", "tag", "last_sent_hash", "chain-head"),
        ("conversations", "tag", "last_recv_hash", "chain-head"),
    ] {
        let rows: Vec<(rusqlite::types::Value, Vec<u8>)> = c
            .prepare(&format!("SELECT {key}, {column} FROM {table}"))?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let mut update = c.prepare(&format!(
            "UPDATE {table} SET {column} = ?2 WHERE {key} = ?1"
        ))?;
        for (id, sealed) in rows {
            // An empty chain head is "none", not a sealed value.
            if sealed.is_empty() {
                continue;
            }
            let tag = match &id {
                rusqlite::types::Value::Text(t) => t.as_bytes().to_vec(),
                rusqlite::types::Value::Blob(b) => b.clone(),
                other => return Err(StorageError::Corrupt(format!("{table} key {other:?}"))),
            };
            update.execute(params![id, k.reseal(kind, &tag, &sealed, next)?])?;
            moved += 1;
        }
    }
    let events: Vec<(i64, Vec<u8>)> = c
        .prepare("SELECT seq, sealed FROM events")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (seq, sealed) in events {
        let tag = (seq as u64).to_be_bytes();
        cached_exec(
            c,
            "UPDATE events SET sealed = ?2 WHERE seq = ?1",
            params![seq, k.reseal("event", &tag, &sealed, next)?],
        )?;
        moved += 1;
    }
    Ok(moved)
}
