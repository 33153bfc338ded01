//! Encryption at rest. Nothing a person wrote, and no contact's name, is stored in clear:
//!
//! - a conversation is found by its *tag*, a keyed BLAKE2b of the peer's name;
//! - a deleted received message leaves a tombstone of keyed BLAKE2b marks (of its tag and id,
//!   and of its chain hash), under a key of their own, so nobody who lacks the storage key can
//!   confirm from the file that a given message was received;
//! - each conversation has its own random key, stored only wrapped by the storage key (which
//!   comes from smvs-keyguard at start-up and is never written by smvsd); deleting or
//!   overwriting the wrapped key destroys the conversation (crypto-shredding);
//! - message rows, contact rows and settings are XChaCha20-Poly1305 boxes whose associated data
//!   names what they are and where they belong, so a row moved elsewhere does not open.

use smvs_crypto::{AeadKey, CryptoError, Zeroizing};
use smvs_schema::Username;

/// The storage keys: the current storage epoch's key, which seals values directly (and moves
/// on at each new epoch, on the storage thread), and the fixed tag, chain and tombstone keys.
pub struct AtRest {
    epoch: std::sync::RwLock<(u32, AeadKey)>,
    tag_key: Zeroizing<Vec<u8>>,
    chain_key: Zeroizing<Vec<u8>>,
    tombstone_key: Zeroizing<Vec<u8>>,
}

impl AtRest {
    /// The keys of storage epoch `epoch` (`key`), with the fixed keys keyguard keeps beside
    /// the epochs (`derived`: tag, chain and tombstone keys, 32 bytes each).
    pub fn with_epoch(derived: &[u8], epoch: u32, key: AeadKey) -> Result<AtRest, CryptoError> {
        if derived.len() != 96 {
            return Err(CryptoError::InvalidKey {
                what: "derived storage keys",
            });
        }
        Ok(AtRest {
            epoch: std::sync::RwLock::new((epoch, key)),
            tag_key: Zeroizing::new(derived[..32].to_vec()),
            chain_key: Zeroizing::new(derived[32..64].to_vec()),
            tombstone_key: Zeroizing::new(derived[64..].to_vec()),
        })
    }

    /// The storage epoch values are sealed under now.
    pub fn epoch(&self) -> u32 {
        self.epoch.read().unwrap_or_else(|e| e.into_inner()).0
    }

    /// Moves on to epoch `id` (once everything is re-sealed under `key` and committed).
    pub(super) fn set_epoch(&self, id: u32, key: AeadKey) {
        *self.epoch.write().unwrap_or_else(|e| e.into_inner()) = (id, key);
    }

    /// A value sealed under the current epoch ([`AtRest::seal`]), sealed instead under `next`.
    pub(super) fn reseal(
        &self,
        kind: &str,
        tag: &[u8],
        sealed: &[u8],
        next: &AeadKey,
    ) -> Result<Vec<u8>, CryptoError> {
        let plain = self.open(kind, tag, sealed)?;
        next.seal(&Self::ad(kind, tag, &[]), &plain)
    }

    /// The keys as they were before storage epochs: one storage key, sealing values directly
    /// (epoch 1) and deriving the others (keyguard converts its files to the same keys).
    pub fn new(storage: AeadKey) -> Result<AtRest, CryptoError> {
        let tag_key = smvs_crypto::hkdf_sha256(
            b"smvs-storage-v1",
            storage.expose(),
            b"conversation tags",
            32,
        )?;
        let chain_key =
            smvs_crypto::hkdf_sha256(b"smvs-storage-v1", storage.expose(), b"chain hashes", 32)?;
        let tombstone_key =
            smvs_crypto::hkdf_sha256(b"smvs-storage-v1", storage.expose(), b"tombstones", 32)?;
        Ok(AtRest {
            epoch: std::sync::RwLock::new((1, storage)),
            tag_key,
            chain_key,
            tombstone_key,
        })
    }

    /// What a tombstone keeps of a deleted received message's id: a keyed BLAKE2b-256
    /// (libsodium's `crypto_generichash` with a key HKDF-derived from the storage key) of its
    /// conversation tag and id. A late resend of the message is still recognised (it hashes
    /// alike), but whoever holds the database file, even knowing the id, cannot tell that
    /// the message was here: without the storage key the mark is just 32 random-looking bytes.
    pub fn tombstone_mark(&self, tag: &[u8], id: &[u8]) -> Result<Vec<u8>, CryptoError> {
        smvs_crypto::blake2b(32, Some(&self.tombstone_key), &[b"id\0", tag, id])
    }

    /// What a tombstone keeps of a deleted received message's place in the sender's hash
    /// chain: a keyed BLAKE2b-256 of its conversation tag and its stored chain hash
    /// ([`AtRest::chain_tag`]), under the tombstone key. A message that names the deleted one
    /// as its predecessor still finds it, so a deletion does not turn a late message into a
    /// gap. Empty in, empty out (no predecessor), as for `chain_tag`.
    pub fn tombstone_chain(&self, tag: &[u8], chain_tag: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if chain_tag.is_empty() {
            return Ok(Vec::new());
        }
        smvs_crypto::blake2b(32, Some(&self.tombstone_key), &[b"chain\0", tag, chain_tag])
    }

    /// What the database keeps of an accepted prekey handshake's transcript hash: a keyed
    /// BLAKE2b-256 under the tombstone key (its own domain), so the file alone does not link
    /// a recorded handshake to this host.
    pub fn prekey_mark(&self, transcript: &[u8]) -> Result<Vec<u8>, CryptoError> {
        smvs_crypto::blake2b(32, Some(&self.tombstone_key), &[b"prekey\0", transcript])
    }

    /// The conversation tag of `peer` (16 bytes).
    pub fn tag(&self, peer: &Username) -> Result<Vec<u8>, CryptoError> {
        smvs_crypto::blake2b(16, Some(&self.tag_key), &[peer.as_str().as_bytes()])
    }

    /// What the event log's cursor table keeps of a device (`device`) and of one of its
    /// cursors (`device`, `name`): keyed BLAKE2b-128 under the tag key, so the file does not say
    /// which devices read the log. (The tag key's other input, a peer's name, never holds a NUL.)
    pub fn cursor_marks(
        &self,
        device: &str,
        name: &str,
    ) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        let device_mark = smvs_crypto::blake2b(
            16,
            Some(&self.tag_key),
            &[b"cursor-device\0", device.as_bytes()],
        )?;
        let name_mark = smvs_crypto::blake2b(
            16,
            Some(&self.tag_key),
            &[b"cursor\0", device.as_bytes(), b"\0", name.as_bytes()],
        )?;
        Ok((device_mark, name_mark))
    }

    fn ad(kind: &str, tag: &[u8], extra: &[u8]) -> Vec<u8> {
        let mut ad = Vec::with_capacity(kind.len() + tag.len() + extra.len() + 2);
        ad.extend_from_slice(kind.as_bytes());
        ad.push(0);
        ad.extend_from_slice(tag);
        ad.push(0);
        ad.extend_from_slice(extra);
        ad
    }

    /// Seals a value under the storage key itself (peer names, wrapped keys, contacts, settings).
    pub fn seal(&self, kind: &str, tag: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.epoch
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .seal(&Self::ad(kind, tag, &[]), plaintext)
    }

    pub fn open(
        &self,
        kind: &str,
        tag: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.epoch
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .open(&Self::ad(kind, tag, &[]), sealed)
    }

    /// A message's chain hash as it is stored for look-ups: keyed, so that whoever holds the
    /// database file cannot test a guessed text against it (the plain hash covers the text).
    /// The empty hash (no predecessor) stays empty.
    pub fn chain_tag(&self, raw: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if raw.is_empty() {
            return Ok(Vec::new());
        }
        smvs_crypto::blake2b(32, Some(&self.chain_key), &[raw])
    }

    /// A conversation's chain head (the last hash sent or received), sealed at rest.
    pub fn seal_head(&self, tag: &[u8], raw: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if raw.is_empty() {
            return Ok(Vec::new());
        }
        self.seal("chain-head", tag, raw)
    }

    pub fn open_head(&self, tag: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
        if sealed.is_empty() {
            return Ok(Vec::new());
        }
        Ok(self.open("chain-head", tag, sealed)?.to_vec())
    }

    /// A fresh conversation key and its wrapped form.
    pub fn new_conversation_key(&self, tag: &[u8]) -> Result<(AeadKey, Vec<u8>), CryptoError> {
        let key = AeadKey::generate();
        let wrapped = self.seal("conversation-key", tag, key.expose())?;
        Ok((key, wrapped))
    }

    pub fn unwrap_conversation_key(
        &self,
        tag: &[u8],
        wrapped: &[u8],
    ) -> Result<AeadKey, CryptoError> {
        AeadKey::from_bytes(&self.open("conversation-key", tag, wrapped)?)
    }

    /// Seals a message row under its conversation key.
    pub fn seal_message(
        key: &AeadKey,
        tag: &[u8],
        id: &[u8],
        direction: i64,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        key.seal(
            &Self::ad("message", tag, &[id, &direction.to_be_bytes()].concat()),
            plaintext,
        )
    }

    pub fn open_message(
        key: &AeadKey,
        tag: &[u8],
        id: &[u8],
        direction: i64,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        key.open(
            &Self::ad("message", tag, &[id, &direction.to_be_bytes()].concat()),
            sealed,
        )
    }
}
