//! Per-call media keys: one XChaCha20-Poly1305 key per direction, derived from the call's fresh
//! X25519 exchange and bound to the call id, both identities and both ephemeral public keys.
//!
//! ```text
//! shared = X25519(ours, theirs)                       (agree() refuses low-order points)
//! salt   = "smvs-call-v1" || call_id
//! info_d = "smvs-call-v1 caller->callee" (or "... callee->caller")
//!          || caller_identity || callee_identity || caller_public || callee_public
//! key_d  = HKDF-SHA256(salt, shared, info_d, 32)
//! ```
//! The caller sends with `caller->callee` and receives with `callee->caller`; the callee the
//! reverse. Each key is unique per call and direction, so a packet sequence number is a unique
//! nonce under it. The identities are concatenated without length prefixes, as specified; they
//! are fixed-length public keys in SMVS, so the concatenation is unambiguous.

use std::fmt;

use smvs_crypto::{hkdf_sha256, AeadKey, AgreementKeyPair, AgreementPublicKey};

use crate::MediaError;

const LABEL: &[u8] = b"smvs-call-v1";
const CALLER_TO_CALLEE: &[u8] = b"smvs-call-v1 caller->callee";
const CALLEE_TO_CALLER: &[u8] = b"smvs-call-v1 callee->caller";

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
/// in `inputs` (the callee's for the caller, the caller's for the callee).
pub fn derive_media_keys(
    ours: &AgreementKeyPair,
    role: Role,
    inputs: &KeyInputs<'_>,
) -> Result<MediaKeys, MediaError> {
    let theirs = match role {
        Role::Caller => inputs.callee_public,
        Role::Callee => inputs.caller_public,
    };
    let shared = ours.agree(theirs).map_err(MediaError::KeyDerivation)?;
    let mut salt = Vec::with_capacity(LABEL.len() + inputs.call_id.len());
    salt.extend_from_slice(LABEL);
    salt.extend_from_slice(inputs.call_id);
    let direction_key = |label: &[u8]| -> Result<AeadKey, MediaError> {
        let mut info = Vec::with_capacity(
            label.len() + inputs.caller_identity.len() + inputs.callee_identity.len() + 64,
        );
        info.extend_from_slice(label);
        info.extend_from_slice(inputs.caller_identity);
        info.extend_from_slice(inputs.callee_identity);
        info.extend_from_slice(inputs.caller_public.as_bytes());
        info.extend_from_slice(inputs.callee_public.as_bytes());
        let okm =
            hkdf_sha256(&salt, shared.expose(), &info, 32).map_err(MediaError::KeyDerivation)?;
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
    use super::*;

    struct Call {
        caller: AgreementKeyPair,
        callee: AgreementKeyPair,
    }

    fn call() -> Call {
        Call {
            caller: AgreementKeyPair::generate().unwrap(),
            callee: AgreementKeyPair::generate().unwrap(),
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
        };
        (
            derive_media_keys(&c.caller, Role::Caller, &inputs).unwrap(),
            derive_media_keys(&c.callee, Role::Callee, &inputs).unwrap(),
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
        ] {
            let (other, _) = keys(&c, id, a, b);
            assert_ne!(base.send.expose(), other.send.expose());
            assert_ne!(base.recv.expose(), other.recv.expose());
        }
        // A different ephemeral key on one side changes everything too.
        let c2 = Call {
            caller: AgreementKeyPair::generate().unwrap(),
            callee: c.callee,
        };
        let (other, _) = keys(&c2, b"call-1", b"alice", b"bob");
        assert_ne!(base.send.expose(), other.send.expose());
    }

    #[test]
    fn low_order_peer_key_is_refused() {
        let ours = AgreementKeyPair::generate().unwrap();
        let zero = AgreementPublicKey::from_bytes(&[0u8; 32]).unwrap();
        let mine = ours.public();
        let inputs = KeyInputs {
            call_id: b"c",
            caller_identity: b"a",
            callee_identity: b"b",
            caller_public: &mine,
            callee_public: &zero,
        };
        assert!(matches!(
            derive_media_keys(&ours, Role::Caller, &inputs),
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
