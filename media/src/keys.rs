//! Per-call media keys: one XChaCha20-Poly1305 key per direction, derived from the call's fresh
//! X25519 exchange and its X-Wing encapsulation (post-quantum from the first packet), bound to
//! the call id, both identities and every public value of the exchange.
//!
//! ```text
//! offer  (caller -> callee): caller_public (X25519), caller_kem_public (X-Wing, 1216 bytes)
//! answer (callee -> caller): callee_public (X25519), callee_kem_ciphertext (X-Wing encapsulation
//!                            to caller_kem_public, 1120 bytes)
//! shared = X25519(ours, theirs)                       (agree() refuses low-order points)
//! kem    = X-Wing shared secret                       (the callee's from encapsulating, the
//!                                                      caller's from decapsulating)
//! salt   = "smvs-call-v2" || call_id
//! kem_th = BLAKE2b-256("smvs-call-v2 kem" || caller_kem_public || callee_kem_ciphertext)
//! info_d = "smvs-call-v2 caller->callee" (or "... callee->caller")
//!          || len32(caller_identity) || caller_identity || len32(callee_identity) || callee_identity
//!          || caller_public || callee_public || kem_th
//! key_d  = HKDF-SHA256(salt, shared || kem, info_d, 32)
//! ```
//! The caller sends with `caller->callee` and receives with `callee->caller`; the callee the
//! reverse. Each key is unique per call and direction, so a packet sequence number is a unique
//! nonce under it. Each identity is prefixed with its length (u32, big-endian), so the two
//! cannot trade bytes. Both secrets go into
//! one HKDF input (a concatenation KEM combiner, as X-Wing itself and PQXDH do), so the keys
//! stay secret while either X25519 or ML-KEM-768 holds; a recorded call cannot be opened later by
//! breaking X25519 alone.

use std::fmt;

use smvs_crypto::{
    blake2b, hkdf_sha256, AeadKey, AgreementKeyPair, AgreementPublicKey, KemSharedSecret, Zeroizing,
};

use crate::MediaError;

const LABEL: &[u8] = b"smvs-call-v2";
const KEM_TRANSCRIPT: &[u8] = b"smvs-call-v2 kem";
const CALLER_TO_CALLEE: &[u8] = b"smvs-call-v2 caller->callee";
const CALLEE_TO_CALLER: &[u8] = b"smvs-call-v2 callee->caller";

/// Which end of the call this endpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Caller,
    Callee,
}

/// The public inputs of the derivation, the same on both endpoints.
#[derive(Clone, Copy, Debug)]
pub struct KeyInputs<'a> {
    pub call_id: &'a [u8],
    pub caller_identity: &'a [u8],
    pub callee_identity: &'a [u8],
    pub caller_public: &'a AgreementPublicKey,
    pub callee_public: &'a AgreementPublicKey,
    /// The caller's per-call X-Wing public key (from the offer).
    pub caller_kem_public: &'a [u8],
    /// The callee's X-Wing encapsulation to it (from the answer).
    pub callee_kem_ciphertext: &'a [u8],
}

/// The two AEAD keys of one endpoint: the one it seals with and the one it opens with.
/// `Debug` prints neither.
pub struct MediaKeys {
    pub(crate) send: AeadKey,
    pub(crate) recv: AeadKey,
}

impl fmt::Debug for MediaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MediaKeys { send: [REDACTED], recv: [REDACTED] }")
    }
}

impl MediaKeys {
    /// Opens a datagram as this endpoint's receive path would (no replay check). For tests and
    /// diagnostics that must look inside captured traffic; the call itself never needs it.
    #[doc(hidden)]
    pub fn open_received(
        &self,
        datagram: &[u8],
    ) -> Result<crate::wire::Opened, crate::wire::WireError> {
        crate::wire::open(Some(&self.recv), datagram)
    }
}

/// Derives this endpoint's send and receive keys.
///
/// `ours` is this endpoint's fresh per-call X25519 key; the peer's public key is the other one
/// in `inputs` (the callee's for the caller, the caller's for the callee). `kem` is the X-Wing
/// shared secret of `inputs`' encapsulation.
pub fn derive_media_keys(
    ours: &AgreementKeyPair,
    kem: &KemSharedSecret,
    role: Role,
    inputs: &KeyInputs<'_>,
) -> Result<MediaKeys, MediaError> {
    let theirs = match role {
        Role::Caller => inputs.callee_public,
        Role::Callee => inputs.caller_public,
    };
    let shared = ours.agree(theirs).map_err(MediaError::KeyDerivation)?;
    let mut secrets = Zeroizing::new(Vec::with_capacity(64));
    secrets.extend_from_slice(shared.expose());
    secrets.extend_from_slice(kem.expose());
    let kem_transcript = blake2b(
        32,
        None,
        &[
            KEM_TRANSCRIPT,
            inputs.caller_kem_public,
            inputs.callee_kem_ciphertext,
        ],
    )
    .map_err(MediaError::KeyDerivation)?;
    let mut salt = Vec::with_capacity(LABEL.len() + inputs.call_id.len());
    salt.extend_from_slice(LABEL);
    salt.extend_from_slice(inputs.call_id);
    let direction_key = |label: &[u8]| -> Result<AeadKey, MediaError> {
        let mut info = Vec::with_capacity(
            label.len() + inputs.caller_identity.len() + inputs.callee_identity.len() + 104,
        );
        info.extend_from_slice(label);
        for identity in [inputs.caller_identity, inputs.callee_identity] {
            // Length-prefixed: the two identities cannot trade bytes.
            info.extend_from_slice(
                &u32::try_from(identity.len())
                    .unwrap_or(u32::MAX)
                    .to_be_bytes(),
            );
            info.extend_from_slice(identity);
        }
        info.extend_from_slice(inputs.caller_public.as_bytes());
        info.extend_from_slice(inputs.callee_public.as_bytes());
        info.extend_from_slice(&kem_transcript);
        let okm = hkdf_sha256(&salt, &secrets, &info, 32).map_err(MediaError::KeyDerivation)?;
        AeadKey::from_bytes(&okm).map_err(MediaError::KeyDerivation)
    };
    let to_callee = direction_key(CALLER_TO_CALLEE)?;
    let to_caller = direction_key(CALLEE_TO_CALLER)?;
    Ok(match role {
        Role::Caller => MediaKeys {
            send: to_callee,
            recv: to_caller,
        },
        Role::Callee => MediaKeys {
            send: to_caller,
            recv: to_callee,
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use smvs_crypto::{XWingCiphertext, XWingKeyPair};

    use super::*;

    /// One call's key exchange: both X25519 keys, the caller's X-Wing key and the callee's
    /// encapsulation to it.
    struct Call {
        caller: AgreementKeyPair,
        callee: AgreementKeyPair,
        caller_kem: XWingKeyPair,
        ciphertext: XWingCiphertext,
        callee_kem_secret: KemSharedSecret,
    }

    fn call() -> Call {
        let caller_kem = XWingKeyPair::generate().unwrap();
        let (ciphertext, callee_kem_secret) = caller_kem.public().encapsulate().unwrap();
        Call {
            caller: AgreementKeyPair::generate().unwrap(),
            callee: AgreementKeyPair::generate().unwrap(),
            caller_kem,
            ciphertext,
            callee_kem_secret,
        }
    }

    fn keys(
        c: &Call,
        call_id: &[u8],
        caller_id: &[u8],
        callee_id: &[u8],
    ) -> (MediaKeys, MediaKeys) {
        let (a, b) = (c.caller.public(), c.callee.public());
        let inputs = KeyInputs {
            call_id,
            caller_identity: caller_id,
            callee_identity: callee_id,
            caller_public: &a,
            callee_public: &b,
            caller_kem_public: c.caller_kem.public().as_bytes(),
            callee_kem_ciphertext: c.ciphertext.as_bytes(),
        };
        let caller_kem_secret = c.caller_kem.decapsulate(&c.ciphertext).unwrap();
        (
            derive_media_keys(&c.caller, &caller_kem_secret, Role::Caller, &inputs).unwrap(),
            derive_media_keys(&c.callee, &c.callee_kem_secret, Role::Callee, &inputs).unwrap(),
        )
    }

    #[test]
    fn both_sides_derive_matching_opposite_keys() {
        let c = call();
        let (caller, callee) = keys(&c, b"call-1", b"alice", b"bob");
        assert_eq!(caller.send.expose(), callee.recv.expose());
        assert_eq!(caller.recv.expose(), callee.send.expose());
        assert_ne!(caller.send.expose(), caller.recv.expose());
    }

    #[test]
    fn call_id_and_identities_change_the_keys() {
        let c = call();
        let (base, _) = keys(&c, b"call-1", b"alice", b"bob");
        for (id, a, b) in [
            (&b"call-2"[..], &b"alice"[..], &b"bob"[..]),
            (b"call-1", b"alicf", b"bob"),
            (b"call-1", b"alice", b"bob2"),
            (b"call-1", b"bob", b"alice"),
            (b"call-1", b"alic", b"ebob"),
        ] {
            let (other, _) = keys(&c, id, a, b);
            assert_ne!(base.send.expose(), other.send.expose());
            assert_ne!(base.recv.expose(), other.recv.expose());
        }
        // A different ephemeral key on one side changes everything too.
        let c2 = Call {
            caller: AgreementKeyPair::generate().unwrap(),
            ..c
        };
        let (other, _) = keys(&c2, b"call-1", b"alice", b"bob");
        assert_ne!(base.send.expose(), other.send.expose());
    }

    /// The keys depend on the X-Wing secret: the same X25519 keys (so the same X25519 shared
    /// secret) with another encapsulation give other keys, on both sides. Someone who breaks
    /// X25519 alone still lacks an input.
    #[test]
    fn the_same_x25519_keys_with_another_kem_ciphertext_give_other_keys() {
        let c = call();
        let (base_caller, base_callee) = keys(&c, b"call-1", b"alice", b"bob");
        let (ciphertext, callee_kem_secret) = c.caller_kem.public().encapsulate().unwrap();
        assert_ne!(ciphertext, c.ciphertext);
        let c2 = Call {
            ciphertext,
            callee_kem_secret,
            ..c
        };
        let (caller, callee) = keys(&c2, b"call-1", b"alice", b"bob");
        assert_eq!(caller.send.expose(), callee.recv.expose());
        for (new, old) in [
            (&caller.send, &base_caller.send),
            (&caller.recv, &base_caller.recv),
            (&callee.send, &base_callee.send),
        ] {
            assert_ne!(new.expose(), old.expose());
        }
        // The transcript alone counts too: the right secret under another ciphertext's bytes
        // (as an attacker who swapped the answer's ciphertext would make the caller compute)
        // gives keys the callee does not have.
        let (a, b) = (c2.caller.public(), c2.callee.public());
        let other_kem = XWingKeyPair::generate().unwrap();
        let inputs = KeyInputs {
            call_id: b"call-1",
            caller_identity: b"alice",
            callee_identity: b"bob",
            caller_public: &a,
            callee_public: &b,
            caller_kem_public: other_kem.public().as_bytes(),
            callee_kem_ciphertext: c2.ciphertext.as_bytes(),
        };
        let swapped =
            derive_media_keys(&c2.callee, &c2.callee_kem_secret, Role::Callee, &inputs).unwrap();
        assert_ne!(swapped.send.expose(), callee.send.expose());
    }

    #[test]
    fn low_order_peer_key_is_refused() {
        let c = call();
        let zero = AgreementPublicKey::from_bytes(&[0u8; 32]).unwrap();
        let mine = c.caller.public();
        let inputs = KeyInputs {
            call_id: b"c",
            caller_identity: b"a",
            callee_identity: b"b",
            caller_public: &mine,
            callee_public: &zero,
            caller_kem_public: c.caller_kem.public().as_bytes(),
            callee_kem_ciphertext: c.ciphertext.as_bytes(),
        };
        let kem = c.caller_kem.decapsulate(&c.ciphertext).unwrap();
        assert!(matches!(
            derive_media_keys(&c.caller, &kem, Role::Caller, &inputs),
            Err(MediaError::KeyDerivation(_))
        ));
    }

    #[test]
    fn debug_is_redacted() {
        let c = call();
        let (k, _) = keys(&c, b"x", b"a", b"b");
        let hex: String = k.send.expose().iter().map(|b| format!("{b:02x}")).collect();
        let printed = format!("{k:?}");
        assert!(printed.contains("REDACTED"));
        assert!(!printed.contains(&hex[..8]));
    }
}
