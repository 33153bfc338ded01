//! Session v2's secrets in keyguard: the identity's X-Wing key, the signed prekeys (made and
//! rotated here, never anywhere else), the rollback counter, and the one handshake operation.
//!
//! ```text
//!  sessionKeys      ─► identity X-Wing key + its signature, current prekey (rotated when due)
//!  handshakeSecret  ─► (operation, component) allowed? ─► X25519 or X-Wing with the identity or
//!                      a prekey secret ─► transcript_bound(label, transcript, secret) (32 bytes)
//!  rollbackCounter  ─► rollback.counter + 1, synced before the answer
//! ```
//!
//! A prekey is current for [`PREKEY_ROTATE_AFTER_S`] and published with an expiry
//! [`PREKEY_LIFETIME_S`] after it was made; when a new one takes over, the old one is kept
//! (for handshakes made while this host was away) until its expiry, then its secrets are
//! removed from the file.

use smvs_crypto::{
    sign_identity_kem, transcript_bound, AgreementKeyPair, AgreementPublicKey, GuardOperation,
    HandshakeComponent, IdentityKeys, Signature, SignedPrekey, XWingCiphertext, XWingKeyPair,
    Zeroizing, XWING_CIPHERTEXT_LEN,
};

use crate::keydir::{KeyDir, KeyDirError, KEY_FILE_LEN, PREKEYS_FILE_LEN, PREKEY_SLOT_LEN};

/// How long a prekey is the one published.
pub const PREKEY_ROTATE_AFTER_S: i64 = 7 * 86_400;
/// How long after it was made an initiator may use a prekey (and keyguard keeps it).
pub const PREKEY_LIFETIME_S: i64 = 14 * 86_400;

/// One prekey's secrets.
struct Prekey {
    id: u32,
    expires: i64,
    dh: AgreementKeyPair,
    kem: XWingKeyPair,
    /// The seeds, as stored.
    dh_secret: Zeroizing<[u8; KEY_FILE_LEN]>,
    kem_seed: Zeroizing<[u8; KEY_FILE_LEN]>,
}

impl Prekey {
    fn from_secrets(
        id: u32,
        expires: i64,
        dh_secret: Zeroizing<[u8; KEY_FILE_LEN]>,
        kem_seed: Zeroizing<[u8; KEY_FILE_LEN]>,
    ) -> Result<Prekey, smvs_crypto::CryptoError> {
        Ok(Prekey {
            id,
            expires,
            dh: AgreementKeyPair::from_secret_bytes(&dh_secret[..])?,
            kem: XWingKeyPair::from_seed(&kem_seed[..])?,
            dh_secret,
            kem_seed,
        })
    }

    fn signed(&self, identity: &IdentityKeys) -> SignedPrekey {
        SignedPrekey::sign(
            identity,
            self.id,
            self.expires,
            self.dh.public(),
            self.kem.public().clone(),
        )
    }
}

/// The public session keys keyguard hands out.
pub(crate) struct PublicSessionKeys {
    pub kem: smvs_crypto::XWingPublicKey,
    pub kem_signature: Signature,
    pub prekey: SignedPrekey,
    /// The previous prekey, while keyguard still answers for it.
    pub previous: Option<SignedPrekey>,
}

/// Session v2's secrets of the identity. Made when first asked for (after the identity).
pub(crate) struct SessionSecrets {
    kem: XWingKeyPair,
    /// The current prekey first, then the previous one (if still kept).
    prekeys: Vec<Prekey>,
}

fn bad_key(dir: &KeyDir, name: &str) -> impl Fn(smvs_crypto::CryptoError) -> KeyDirError {
    let path = dir.path().join(name);
    move |source| KeyDirError::BadKey {
        path: path.clone(),
        source,
    }
}

impl SessionSecrets {
    pub(crate) fn load(dir: &KeyDir) -> Result<SessionSecrets, KeyDirError> {
        let seed = dir.identity_kem_seed()?;
        let kem =
            XWingKeyPair::from_seed(&seed[..]).map_err(bad_key(dir, crate::keydir::KEM_FILE))?;
        let mut prekeys = Vec::new();
        if let Some(slots) = dir.prekeys()? {
            for slot in slots.chunks_exact(PREKEY_SLOT_LEN) {
                let id = u32::from_be_bytes([slot[0], slot[1], slot[2], slot[3]]);
                if id == 0 {
                    continue;
                }
                let mut expires = [0u8; 8];
                expires.copy_from_slice(&slot[4..12]);
                let mut dh_secret = Zeroizing::new([0u8; KEY_FILE_LEN]);
                dh_secret.copy_from_slice(&slot[12..12 + KEY_FILE_LEN]);
                let mut kem_seed = Zeroizing::new([0u8; KEY_FILE_LEN]);
                kem_seed.copy_from_slice(&slot[12 + KEY_FILE_LEN..]);
                prekeys.push(
                    Prekey::from_secrets(id, i64::from_be_bytes(expires), dh_secret, kem_seed)
                        .map_err(bad_key(dir, crate::keydir::PREKEYS_FILE))?,
                );
            }
        }
        Ok(SessionSecrets { kem, prekeys })
    }

    /// Session secrets with an X-Wing key made from the identity and no prekeys: only for
    /// the fuzz targets, which answer requests without a key directory.
    pub(crate) fn without_prekeys(
        identity: &IdentityKeys,
    ) -> Result<SessionSecrets, smvs_crypto::CryptoError> {
        Ok(SessionSecrets {
            kem: XWingKeyPair::from_seed(identity.agreement.expose_secret())?,
            prekeys: Vec::new(),
        })
    }

    fn store(&self, dir: &KeyDir) -> Result<(), KeyDirError> {
        let mut slots = Zeroizing::new([0u8; PREKEYS_FILE_LEN]);
        for (slot, prekey) in slots.chunks_exact_mut(PREKEY_SLOT_LEN).zip(&self.prekeys) {
            slot[..4].copy_from_slice(&prekey.id.to_be_bytes());
            slot[4..12].copy_from_slice(&prekey.expires.to_be_bytes());
            slot[12..12 + KEY_FILE_LEN].copy_from_slice(&prekey.dh_secret[..]);
            slot[12 + KEY_FILE_LEN..].copy_from_slice(&prekey.kem_seed[..]);
        }
        dir.write_prekeys(&slots)
    }

    /// Makes a new current prekey when there is none or the current one is due, and forgets
    /// an expired previous one; stores the result when anything changed.
    fn rotate_if_due(&mut self, dir: &KeyDir, now_s: i64) -> Result<(), KeyDirError> {
        let before = self.prekeys.len();
        self.prekeys.truncate(2);
        let expired_previous = self.prekeys.len() == 2 && self.prekeys[1].expires < now_s;
        if expired_previous {
            self.prekeys.pop();
        }
        let due = self.prekeys.first().is_none_or(|current| {
            now_s >= current.expires - (PREKEY_LIFETIME_S - PREKEY_ROTATE_AFTER_S)
        });
        if due {
            let id = match self.prekeys.first() {
                Some(current) => current.id.checked_add(1).unwrap_or(1),
                None => 1,
            };
            let dh_secret = Zeroizing::new(smvs_crypto::random_array::<KEY_FILE_LEN>());
            let kem_seed = Zeroizing::new(smvs_crypto::random_array::<KEY_FILE_LEN>());
            let prekey = Prekey::from_secrets(id, now_s + PREKEY_LIFETIME_S, dh_secret, kem_seed)
                .map_err(bad_key(dir, crate::keydir::PREKEYS_FILE))?;
            self.prekeys.insert(0, prekey);
            self.prekeys.truncate(2);
            tracing::info!(prekey = id, "made a new session prekey");
        }
        if due || expired_previous || before != self.prekeys.len() {
            self.store(dir)?;
        }
        Ok(())
    }

    /// The public keys, rotating the prekey first when it is due.
    pub(crate) fn public(
        &mut self,
        dir: &KeyDir,
        identity: &IdentityKeys,
        now_s: i64,
    ) -> Result<PublicSessionKeys, KeyDirError> {
        self.rotate_if_due(dir, now_s)?;
        let current = self.prekeys.first().ok_or_else(|| KeyDirError::BadKey {
            path: dir.path().join(crate::keydir::PREKEYS_FILE),
            source: smvs_crypto::CryptoError::InvalidKey { what: "prekey" },
        })?;
        Ok(PublicSessionKeys {
            kem: self.kem.public().clone(),
            kem_signature: sign_identity_kem(identity, self.kem.public()),
            prekey: current.signed(identity),
            previous: self.prekeys.get(1).map(|p| p.signed(identity)),
        })
    }

    /// Answers one handshake question.
    pub(crate) fn answer(
        &self,
        identity: &IdentityKeys,
        ask: &HandshakeAsk,
    ) -> Result<Zeroizing<[u8; 32]>, String> {
        let prekey = || {
            self.prekeys
                .iter()
                .find(|p| p.id == ask.prekey)
                .ok_or_else(|| format!("no prekey {} (expired, or never made)", ask.prekey))
        };
        let dh = |pair: &AgreementKeyPair| -> Result<Zeroizing<Vec<u8>>, String> {
            let peer =
                AgreementPublicKey::from_bytes(&ask.peer).map_err(|e| format!("peer key: {e}"))?;
            let shared = pair.agree(&peer).map_err(|e| format!("peer key: {e}"))?;
            Ok(Zeroizing::new(shared.expose().to_vec()))
        };
        let decapsulate = |pair: &XWingKeyPair| -> Result<Zeroizing<Vec<u8>>, String> {
            let ciphertext = XWingCiphertext::from_bytes(&ask.ciphertext)
                .map_err(|e| format!("ciphertext: {e}"))?;
            let shared = pair
                .decapsulate(&ciphertext)
                .map_err(|e| format!("ciphertext: {e}"))?;
            Ok(Zeroizing::new(shared.expose().to_vec()))
        };
        let secret = match ask.operation {
            GuardOperation::IdentityDh => dh(&identity.agreement)?,
            GuardOperation::IdentityDecapsulate => decapsulate(&self.kem)?,
            GuardOperation::PrekeyDh => dh(&prekey()?.dh)?,
            GuardOperation::PrekeyDecapsulate => decapsulate(&prekey()?.kem)?,
        };
        transcript_bound(ask.component.label(), &ask.transcript, &secret)
            .map_err(|e| format!("derivation: {e}"))
    }
}

/// A `handshakeSecret` request, checked: the operation serves the component, and the inputs
/// have the sizes the operation needs.
#[derive(Debug)]
pub(crate) struct HandshakeAsk {
    pub operation: GuardOperation,
    pub component: HandshakeComponent,
    pub transcript: [u8; 32],
    pub prekey: u32,
    pub peer: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl HandshakeAsk {
    pub(crate) fn new(
        operation: GuardOperation,
        component: HandshakeComponent,
        transcript: &[u8],
        prekey: u32,
        peer: &[u8],
        ciphertext: &[u8],
    ) -> Result<HandshakeAsk, String> {
        if !component.served_by(operation) {
            return Err(format!(
                "{operation:?} does not serve the handshake role {component:?}"
            ));
        }
        let transcript: [u8; 32] = transcript
            .try_into()
            .map_err(|_| format!("a transcript hash is 32 bytes, not {}", transcript.len()))?;
        let (needs_peer, needs_ciphertext) = match operation {
            GuardOperation::IdentityDh | GuardOperation::PrekeyDh => (true, false),
            GuardOperation::IdentityDecapsulate | GuardOperation::PrekeyDecapsulate => {
                (false, true)
            }
        };
        if needs_peer && peer.len() != 32 {
            return Err(format!("a peer key is 32 bytes, not {}", peer.len()));
        }
        if needs_ciphertext && ciphertext.len() != XWING_CIPHERTEXT_LEN {
            return Err(format!(
                "an X-Wing ciphertext is {XWING_CIPHERTEXT_LEN} bytes, not {}",
                ciphertext.len()
            ));
        }
        let uses_prekey = matches!(
            operation,
            GuardOperation::PrekeyDh | GuardOperation::PrekeyDecapsulate
        );
        if uses_prekey == (prekey == 0) {
            return Err("a prekey id (not 0) goes with the prekey operations only".into());
        }
        Ok(HandshakeAsk {
            operation,
            component,
            transcript,
            prekey,
            peer: if needs_peer {
                peer.to_vec()
            } else {
                Vec::new()
            },
            ciphertext: if needs_ciphertext {
                ciphertext.to_vec()
            } else {
                Vec::new()
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> (tempfile::TempDir, KeyDir) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = KeyDir::open(&tmp.path().join("keys")).unwrap();
        (tmp, dir)
    }

    #[test]
    fn prekeys_rotate_weekly_and_the_previous_one_lives_until_its_expiry() {
        let (_tmp, dir) = scratch();
        let identity = IdentityKeys::generate().unwrap();
        let bundle = identity.bundle();
        let mut secrets = SessionSecrets::load(&dir).unwrap();
        let t0 = 1_800_000_000;
        let first = secrets.public(&dir, &identity, t0).unwrap();
        first.prekey.verify(&bundle).unwrap();
        smvs_crypto::verify_identity_kem(&bundle, &first.kem, &first.kem_signature).unwrap();
        assert_eq!(first.prekey.expires, t0 + PREKEY_LIFETIME_S);
        // Within the week: the same prekey, also after a restart.
        let again = SessionSecrets::load(&dir)
            .unwrap()
            .public(&dir, &identity, t0 + 86_400)
            .unwrap();
        assert_eq!(again.prekey, first.prekey);
        assert_eq!(again.kem, first.kem);
        // A week on: a new one; the old one still answers.
        let week = t0 + PREKEY_ROTATE_AFTER_S;
        let second = secrets.public(&dir, &identity, week).unwrap();
        assert_ne!(second.prekey.id, first.prekey.id);
        let ask = |id: u32| {
            HandshakeAsk::new(
                GuardOperation::PrekeyDh,
                HandshakeComponent::EphemeralPrekeyDh,
                &[7; 32],
                id,
                AgreementKeyPair::generate().unwrap().public().as_bytes(),
                &[],
            )
            .unwrap()
        };
        let reloaded = SessionSecrets::load(&dir).unwrap();
        assert!(reloaded.answer(&identity, &ask(first.prekey.id)).is_ok());
        assert!(reloaded.answer(&identity, &ask(second.prekey.id)).is_ok());
        // Past the old one's expiry (and the new one's week): it is gone, from the file too.
        let later = first.prekey.expires + 1;
        secrets.public(&dir, &identity, later).unwrap();
        let reloaded = SessionSecrets::load(&dir).unwrap();
        let gone = reloaded
            .answer(&identity, &ask(first.prekey.id))
            .unwrap_err();
        assert!(gone.contains("no prekey"), "{gone}");
        assert!(reloaded.answer(&identity, &ask(second.prekey.id)).is_ok());
    }

    #[test]
    fn a_request_must_name_an_operation_that_serves_its_role() {
        let peer = [9u8; 32];
        let ok = |op, c, prekey, peer: &[u8], ct: &[u8]| {
            HandshakeAsk::new(op, c, &[1; 32], prekey, peer, ct)
        };
        use GuardOperation as Op;
        use HandshakeComponent as C;
        assert!(ok(Op::IdentityDh, C::InitiatorIdentityDh, 0, &peer, &[]).is_ok());
        // An ephemeral role, a role of the other operation, wrong sizes, a stray prekey id.
        assert!(ok(Op::IdentityDh, C::EphemeralDh, 0, &peer, &[]).is_err());
        assert!(ok(Op::IdentityDh, C::ResponderIdentityKem, 0, &peer, &[]).is_err());
        assert!(ok(Op::PrekeyDh, C::ResponderIdentityDh, 3, &peer, &[]).is_err());
        assert!(ok(Op::IdentityDh, C::InitiatorIdentityDh, 0, &peer[..31], &[]).is_err());
        assert!(ok(Op::IdentityDh, C::InitiatorIdentityDh, 5, &peer, &[]).is_err());
        assert!(ok(Op::PrekeyDh, C::EphemeralPrekeyDh, 0, &peer, &[]).is_err());
        assert!(ok(
            Op::IdentityDecapsulate,
            C::InitiatorIdentityKem,
            0,
            &[],
            &[0; 100]
        )
        .is_err());
        assert!(HandshakeAsk::new(
            Op::IdentityDh,
            C::InitiatorIdentityDh,
            &[1; 31],
            0,
            &peer,
            &[]
        )
        .is_err());
    }
}
