//! Storage epochs: the key smvsd seals its database's values under (contacts, settings, peer
//! names, wrapped conversation keys, chain heads, session states, the event log) changes daily
//! and after each deleted conversation, and keyguard destroys the old one once smvsd has
//! re-sealed everything under the new one. A copy of the database from before that cannot be
//! opened with anything keyguard still holds (docs/protocol.md, 10.4).
//!
//! ```text
//!  storage.derived  96 bytes: tag, chain and tombstone keys (fixed; tags must stay stable)
//!  storage.epochs   72 bytes: [current id, secret] [previous id, secret, or zeros once retired]
//!  an epoch's key = HKDF-SHA256(salt "smvs-storage-key-v1", secret, "storage")
//!  newStorageEpoch  ─► [new, current]        (refused while a previous one is not retired)
//!  retireStorageEpoch(previous) ─► [current, 0]
//! ```
//!
//! A key directory from before epochs has `storage.secret`: it becomes epoch 1's secret (so
//! epoch 1's key is the storage key of before) and its derived keys `storage.derived`, both
//! written before the file is removed (a crash in between redoes the same conversion).

use smvs_crypto::{hkdf_sha256, Zeroizing};

use crate::keydir::{
    KeyDir, KeyDirError, KEY_FILE_LEN, STORAGE_DERIVED_LEN, STORAGE_EPOCHS_FILE,
    STORAGE_EPOCHS_LEN, STORAGE_EPOCH_SLOT_LEN,
};

const STORAGE_KEY_SALT: &[u8] = b"smvs-storage-key-v1";
const STORAGE_KEY_INFO: &[u8] = b"storage";
/// smvsd's derivations from the storage key of before epochs (`AtRest`), kept so that tags,
/// chain marks and tombstones of existing databases stay what they are.
const DERIVED_SALT: &[u8] = b"smvs-storage-v1";
const DERIVED_LABELS: [&[u8]; 3] = [b"conversation tags", b"chain hashes", b"tombstones"];

/// One storage epoch.
pub(crate) struct Epoch {
    pub id: u32,
    secret: Zeroizing<[u8; KEY_FILE_LEN]>,
}

impl Epoch {
    /// The key smvsd seals under in this epoch (never the file's bytes).
    pub(crate) fn key(&self) -> Result<Zeroizing<Vec<u8>>, smvs_crypto::CryptoError> {
        hkdf_sha256(STORAGE_KEY_SALT, &self.secret[..], STORAGE_KEY_INFO, 32)
    }
}

pub(crate) struct StorageEpochs {
    pub derived: Zeroizing<[u8; STORAGE_DERIVED_LEN]>,
    pub current: Epoch,
    /// Until smvsd says it re-sealed everything under `current`.
    pub previous: Option<Epoch>,
}

fn bad(dir: &KeyDir, what: &'static str) -> KeyDirError {
    KeyDirError::BadKey {
        path: dir.path().join(STORAGE_EPOCHS_FILE),
        source: smvs_crypto::CryptoError::InvalidKey { what },
    }
}

impl StorageEpochs {
    /// Loads the epochs; converts (or, in a new key directory, makes) them on first use.
    pub(crate) fn load(dir: &KeyDir) -> Result<StorageEpochs, KeyDirError> {
        if let (Some(derived), Some(epochs)) = (dir.storage_derived()?, dir.storage_epochs()?) {
            // Both written: a secret still there is one a crash left behind.
            dir.remove_legacy_storage_secret()?;
            return Self::parse(dir, derived, &epochs);
        }
        let secret = match dir.legacy_storage_secret()? {
            Some(secret) => secret,
            None if dir.storage_derived()?.is_some() || dir.storage_epochs()?.is_some() => {
                return Err(bad(
                    dir,
                    "storage epochs without their derived keys, or the reverse",
                ))
            }
            // A new key directory: a random secret, converted below like an old one.
            None => dir.storage_secret()?,
        };
        let legacy = hkdf_sha256(STORAGE_KEY_SALT, &secret[..], STORAGE_KEY_INFO, 32)
            .map_err(|_| bad(dir, "storage key"))?;
        let mut derived = Zeroizing::new([0u8; STORAGE_DERIVED_LEN]);
        for (i, label) in DERIVED_LABELS.iter().enumerate() {
            let key = hkdf_sha256(DERIVED_SALT, &legacy, label, 32)
                .map_err(|_| bad(dir, "derived storage key"))?;
            derived[i * KEY_FILE_LEN..(i + 1) * KEY_FILE_LEN].copy_from_slice(&key);
        }
        let epochs = StorageEpochs {
            derived,
            current: Epoch { id: 1, secret },
            previous: None,
        };
        dir.write_storage_epochs(&epochs.encode())?;
        dir.write_storage_derived(&epochs.derived)?;
        dir.remove_legacy_storage_secret()?;
        tracing::info!("storage keys now live in storage epochs (epoch 1)");
        Ok(epochs)
    }

    fn parse(
        dir: &KeyDir,
        derived: Zeroizing<[u8; STORAGE_DERIVED_LEN]>,
        bytes: &[u8; STORAGE_EPOCHS_LEN],
    ) -> Result<StorageEpochs, KeyDirError> {
        let slot = |i: usize| -> Option<Epoch> {
            let s = &bytes[i * STORAGE_EPOCH_SLOT_LEN..(i + 1) * STORAGE_EPOCH_SLOT_LEN];
            let id = u32::from_be_bytes([s[0], s[1], s[2], s[3]]);
            (id != 0).then(|| {
                let mut secret = Zeroizing::new([0u8; KEY_FILE_LEN]);
                secret.copy_from_slice(&s[4..]);
                Epoch { id, secret }
            })
        };
        let current = slot(0).ok_or_else(|| bad(dir, "no current storage epoch"))?;
        let previous = slot(1);
        if previous.as_ref().is_some_and(|p| p.id >= current.id) {
            return Err(bad(dir, "storage epochs out of order"));
        }
        Ok(StorageEpochs {
            derived,
            current,
            previous,
        })
    }

    fn encode(&self) -> Zeroizing<[u8; STORAGE_EPOCHS_LEN]> {
        let mut out = Zeroizing::new([0u8; STORAGE_EPOCHS_LEN]);
        for (i, epoch) in [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .enumerate()
        {
            if let Some(e) = epoch {
                let s = &mut out[i * STORAGE_EPOCH_SLOT_LEN..(i + 1) * STORAGE_EPOCH_SLOT_LEN];
                s[..4].copy_from_slice(&e.id.to_be_bytes());
                s[4..].copy_from_slice(&e.secret[..]);
            }
        }
        out
    }

    /// Starts a new epoch (a new random key); the current one becomes the previous. Refused
    /// while the previous one is not retired: smvsd must first finish moving to the current.
    pub(crate) fn begin_new(&mut self, dir: &KeyDir) -> Result<(), String> {
        if let Some(previous) = &self.previous {
            return Err(format!(
                "storage epoch {} is not retired yet; re-seal under epoch {} and retire it first",
                previous.id, self.current.id
            ));
        }
        let mut secret = Zeroizing::new([0u8; KEY_FILE_LEN]);
        smvs_crypto::random_bytes(&mut secret[..]);
        let id = self
            .current
            .id
            .checked_add(1)
            .ok_or("storage epochs are used up")?;
        let next = StorageEpochs {
            derived: self.derived.clone(),
            current: Epoch { id, secret },
            previous: Some(Epoch {
                id: self.current.id,
                secret: self.current.secret.clone(),
            }),
        };
        dir.write_storage_epochs(&next.encode())
            .map_err(|e| format!("cannot write the storage epochs: {e}"))?;
        *self = next;
        tracing::info!(epoch = id, "began a new storage epoch");
        Ok(())
    }

    /// Destroys epoch `id` if it is the previous one (the file is rewritten without it). The
    /// current epoch is never retired; an id already gone is not an error.
    pub(crate) fn retire(&mut self, dir: &KeyDir, id: u32) -> Result<(), String> {
        if id == self.current.id {
            return Err(format!("storage epoch {id} is the current one"));
        }
        if self.previous.as_ref().is_none_or(|p| p.id != id) {
            return Ok(());
        }
        let previous = self.previous.take();
        if let Err(e) = dir.write_storage_epochs(&self.encode()) {
            self.previous = previous;
            return Err(format!("cannot write the storage epochs: {e}"));
        }
        tracing::info!(epoch = id, "retired a storage epoch: its key is destroyed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dir() -> (tempfile::TempDir, KeyDir) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("keys");
        let dir = KeyDir::open(&path).unwrap();
        (tmp, dir)
    }

    #[test]
    fn a_legacy_secret_becomes_epoch_1_with_the_same_keys_and_is_removed() {
        let (_tmp, dir) = dir();
        let secret = [7u8; 32];
        std::fs::write(dir.path().join(crate::keydir::STORAGE_FILE), secret).unwrap();
        std::fs::set_permissions(
            dir.path().join(crate::keydir::STORAGE_FILE),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        let epochs = StorageEpochs::load(&dir).unwrap();
        let legacy = hkdf_sha256(STORAGE_KEY_SALT, &secret, STORAGE_KEY_INFO, 32).unwrap();
        assert_eq!(epochs.current.id, 1);
        assert_eq!(&epochs.current.key().unwrap()[..], &legacy[..]);
        let tags = hkdf_sha256(DERIVED_SALT, &legacy, b"conversation tags", 32).unwrap();
        assert_eq!(&epochs.derived[..32], &tags[..]);
        assert!(dir.legacy_storage_secret().unwrap().is_none());
        // And it reads back the same.
        let again = StorageEpochs::load(&dir).unwrap();
        assert_eq!(again.current.secret, epochs.current.secret);
        assert_eq!(again.derived, epochs.derived);
    }

    #[test]
    fn a_new_epoch_keeps_the_old_one_until_it_is_retired_and_then_it_is_gone() {
        let (_tmp, dir) = dir();
        let mut epochs = StorageEpochs::load(&dir).unwrap();
        let first = epochs.current.secret.clone();
        epochs.begin_new(&dir).unwrap();
        assert_eq!(epochs.current.id, 2);
        assert_ne!(epochs.current.secret, first);
        assert_eq!(epochs.previous.as_ref().unwrap().secret, first);
        // Not twice before the retirement; the current one is never retired.
        assert!(epochs.begin_new(&dir).is_err());
        assert!(epochs.retire(&dir, 2).is_err());
        let reloaded = StorageEpochs::load(&dir).unwrap();
        assert_eq!(reloaded.previous.as_ref().unwrap().id, 1);
        epochs.retire(&dir, 1).unwrap();
        epochs.retire(&dir, 1).unwrap();
        let reloaded = StorageEpochs::load(&dir).unwrap();
        assert!(reloaded.previous.is_none());
        assert_eq!(reloaded.current.id, 2);
        let file = std::fs::read(dir.path().join(STORAGE_EPOCHS_FILE)).unwrap();
        assert!(
            !file.windows(32).any(|w| w == &first[..]),
            "the old secret is gone from the file"
        );
    }
}
