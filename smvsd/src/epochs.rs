//! The storage-epoch owner: moves the database to a new storage epoch daily and after each
//! whole conversation deleted, so that a copy of the database taken before (a backup, a
//! snapshot, blocks the disk still holds) cannot be opened with any key that exists afterwards
//! (docs/protocol.md, 10.4).
//!
//! ```text
//!  rotate: keyguard.newStorageEpoch ─► storage.move_to_epoch (one transaction, WAL wiped)
//!          ─► keyguard.retireStorageEpoch(old): the old key is destroyed
//! ```
//!
//! A crash anywhere in between is finished at the next start ([`StorageEpochs::finish`]): a
//! database still under the previous epoch moves on, and a previous epoch left in keyguard is
//! retired. Rotations run one at a time.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use crate::model::now_ms;

use crate::error::HostError;
use crate::guard::Guard;
use crate::storage::{Epoch, EpochKeys, EpochWork, Storage};

fn epoch(e: smvs_keyguard::StorageEpoch) -> Epoch {
    Epoch {
        id: e.id,
        key: e.key,
    }
}

/// Keyguard's storage keys as storage takes them.
pub fn epoch_keys(keys: smvs_keyguard::StorageKeys) -> EpochKeys {
    EpochKeys {
        derived: keys.derived,
        current: epoch(keys.current),
        previous: keys.previous.map(epoch),
    }
}

/// How often the storage epoch moves on by itself (by the wall clock: a host that is
/// restarted or suspended daily still moves on).
pub const EPOCH_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How often the time of the last move is looked at.
const EPOCH_CHECK: Duration = Duration::from_secs(600);

pub struct StorageEpochs {
    keyguard: Rc<Guard>,
    storage: Storage,
    turn: tokio::sync::Mutex<()>,
    /// A kicked rotation is pending or running.
    kicked: Cell<bool>,
    /// A kick came while one was pending or running: one more follows it (never more).
    again: Cell<bool>,
}

impl StorageEpochs {
    pub fn new(keyguard: Rc<Guard>, storage: Storage) -> Rc<StorageEpochs> {
        Rc::new(StorageEpochs {
            keyguard,
            storage,
            turn: tokio::sync::Mutex::new(()),
            kicked: Cell::new(false),
            again: Cell::new(false),
        })
    }

    /// Finishes what opening the database found left to do (see [`EpochWork`]).
    pub async fn finish(&self, work: EpochWork) -> Result<(), HostError> {
        let _turn = self.turn.lock().await;
        self.finish_locked(work).await
    }

    async fn finish_locked(&self, work: EpochWork) -> Result<(), HostError> {
        match work {
            EpochWork::None => Ok(()),
            EpochWork::Retire(previous) => {
                self.keyguard.retire_storage_epoch(previous).await?;
                tracing::info!(
                    epoch = previous,
                    "retired the previous storage epoch left from before"
                );
                Ok(())
            }
            EpochWork::Move { from } => {
                let keys = self.keyguard.storage_keys().await?;
                let moved = self
                    .storage
                    .move_to_epoch(Epoch {
                        id: keys.current.id,
                        key: keys.current.key,
                    })
                    .await?;
                self.keyguard.retire_storage_epoch(from).await?;
                tracing::info!(
                    from,
                    to = keys.current.id,
                    moved,
                    "finished a move to a new storage epoch that was cut short"
                );
                Ok(())
            }
        }
    }

    /// Moves the database to a new storage epoch and has keyguard destroy the old one.
    pub async fn rotate(&self) -> Result<u32, HostError> {
        let _turn = self.turn.lock().await;
        // A previous epoch keyguard still holds (a rotation cut short): finished first,
        // since keyguard begins no new epoch before that one is retired.
        let keys = self.keyguard.storage_keys().await?;
        if let Some(previous) = keys.previous {
            let work = if self.storage.epoch() == keys.current.id {
                EpochWork::Retire(previous.id)
            } else {
                EpochWork::Move { from: previous.id }
            };
            self.finish_locked(work).await?;
        }
        let (current, previous) = self.keyguard.new_storage_epoch().await?;
        let id = current.id;
        let moved = self.storage.move_to_epoch(epoch(current)).await?;
        self.keyguard.retire_storage_epoch(previous.id).await?;
        tracing::info!(
            epoch = id,
            moved,
            "moved to a new storage epoch; the previous one's key is destroyed"
        );
        Ok(id)
    }

    /// Starts a rotation in the background (after a whole conversation was deleted); a
    /// failure is logged and left for the next one.
    pub fn kick(self: &Rc<Self>) {
        if self.kicked.replace(true) {
            // The one under way may have re-sealed before the deletion: one more after it.
            self.again.set(true);
            return;
        }
        let epochs = self.clone();
        tokio::task::spawn_local(async move {
            loop {
                if let Err(e) = epochs.rotate().await {
                    failed(&e);
                }
                if !epochs.again.replace(false) {
                    break;
                }
            }
            epochs.kicked.set(false);
        });
    }
}

/// A move that failed: the previous epoch's key lives on until one succeeds.
fn failed(e: &HostError) {
    tracing::error!(error = %e, "cannot move to a new storage epoch; the previous epoch's key is not destroyed until a move succeeds");
}

/// Moves on whenever the last move is [`EPOCH_EVERY`] old by the wall clock (checked at start
/// and every [`EPOCH_CHECK`]).
pub async fn rotate_loop(epochs: Rc<StorageEpochs>) {
    let mut tick = tokio::time::interval(EPOCH_CHECK);
    loop {
        tick.tick().await;
        let since = match epochs.storage.epoch_since().await {
            Ok(since) => since,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read when the storage epoch last moved");
                continue;
            }
        };
        let every = i64::try_from(EPOCH_EVERY.as_millis()).unwrap_or(i64::MAX);
        if now_ms().saturating_sub(since) >= every {
            if let Err(e) = epochs.rotate().await {
                failed(&e);
            }
        }
    }
}
