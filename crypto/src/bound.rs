//! Handshake secrets bound to their transcript and role (session v2).
//!
//! The v2 handshake turns each of its X25519 and X-Wing secrets into
//! `transcript_bound(label, TH, secret)`. The ones that need an identity or prekey secret are
//! computed inside keyguard, which hands out only that bound value: useless outside the one
//! handshake (its transcript hash `TH`) and the one role (its label) it was asked for. Both
//! sides of that boundary (the session code in smvsd, keyguard) take the roles, their labels
//! and which keyguard operation may serve which role from here.

use zeroize::Zeroizing;

use crate::hash::{hkdf_sha256_expand, hkdf_sha256_extract};
use crate::CryptoError;

/// The role of one secret in the handshake. `I` is the initiator, `R` the responder; `IK` an
/// identity key, `E` a fresh ephemeral, `SPK` the responder's signed prekey.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HandshakeComponent {
    /// DH(IK_I, E_R)
    InitiatorIdentityDh,
    /// DH(E_I, IK_R)
    ResponderIdentityDh,
    /// DH(E_I, E_R)
    EphemeralDh,
    /// X-Wing to the responder's identity KEM key.
    ResponderIdentityKem,
    /// X-Wing to the initiator's fresh KEM key.
    InitiatorEphemeralKem,
    /// X-Wing to the initiator's identity KEM key.
    InitiatorIdentityKem,
    /// DH(IK_I, SPK_R)
    InitiatorIdentityPrekeyDh,
    /// DH(E_I, SPK_R)
    EphemeralPrekeyDh,
    /// X-Wing to the responder's prekey.
    ResponderPrekeyKem,
}

/// What keyguard does with one of its secrets for a handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GuardOperation {
    /// X25519(identity secret, peer key).
    IdentityDh,
    /// X-Wing decapsulation under the identity KEM key.
    IdentityDecapsulate,
    /// X25519(prekey secret, peer key).
    PrekeyDh,
    /// X-Wing decapsulation under the prekey's KEM key.
    PrekeyDecapsulate,
}

impl HandshakeComponent {
    pub const ALL: [HandshakeComponent; 9] = [
        HandshakeComponent::InitiatorIdentityDh,
        HandshakeComponent::ResponderIdentityDh,
        HandshakeComponent::EphemeralDh,
        HandshakeComponent::ResponderIdentityKem,
        HandshakeComponent::InitiatorEphemeralKem,
        HandshakeComponent::InitiatorIdentityKem,
        HandshakeComponent::InitiatorIdentityPrekeyDh,
        HandshakeComponent::EphemeralPrekeyDh,
        HandshakeComponent::ResponderPrekeyKem,
    ];

    pub fn label(self) -> &'static [u8] {
        match self {
            HandshakeComponent::InitiatorIdentityDh => b"dh initiator-identity responder-ephemeral",
            HandshakeComponent::ResponderIdentityDh => b"dh initiator-ephemeral responder-identity",
            HandshakeComponent::EphemeralDh => b"dh initiator-ephemeral responder-ephemeral",
            HandshakeComponent::ResponderIdentityKem => b"kem responder-identity",
            HandshakeComponent::InitiatorEphemeralKem => b"kem initiator-ephemeral",
            HandshakeComponent::InitiatorIdentityKem => b"kem initiator-identity",
            HandshakeComponent::InitiatorIdentityPrekeyDh => {
                b"dh initiator-identity responder-prekey"
            }
            HandshakeComponent::EphemeralPrekeyDh => b"dh initiator-ephemeral responder-prekey",
            HandshakeComponent::ResponderPrekeyKem => b"kem responder-prekey",
        }
    }

    /// Whether keyguard may serve this role with `operation`: exactly the pairs the handshake
    /// needs, so no answer can be asked for under a role whose secret it is not. The
    /// ephemeral-only roles never involve keyguard.
    pub fn served_by(self, operation: GuardOperation) -> bool {
        use GuardOperation as Op;
        use HandshakeComponent as C;
        matches!(
            (operation, self),
            (
                Op::IdentityDh,
                C::InitiatorIdentityDh | C::ResponderIdentityDh | C::InitiatorIdentityPrekeyDh
            ) | (
                Op::IdentityDecapsulate,
                C::ResponderIdentityKem | C::InitiatorIdentityKem
            ) | (
                Op::PrekeyDh,
                C::InitiatorIdentityPrekeyDh | C::EphemeralPrekeyDh
            ) | (Op::PrekeyDecapsulate, C::ResponderPrekeyKem)
        )
    }
}

const BOUND_TAG: &[u8] = b"SMVS-v2 bound\0";

/// A 32-byte key made from a raw agreement or KEM secret, bound to a handshake's transcript
/// hash and to the purpose `label`: `HKDF-SHA256(salt = transcript_hash,
/// ikm = "SMVS-v2 bound" 0x00 || secret, info = "SMVS-v2 bound " || label)`.
///
/// This is the only thing keyguard hands out for an identity or prekey secret: never the raw
/// X25519 output or KEM shared secret.
pub fn transcript_bound(
    label: &[u8],
    transcript_hash: &[u8; 32],
    secret: &[u8],
) -> Result<Zeroizing<[u8; 32]>, CryptoError> {
    let mut info = Vec::with_capacity(14 + label.len());
    info.extend_from_slice(b"SMVS-v2 bound ");
    info.extend_from_slice(label);
    // The input starts with a tag no other derivation uses, so that no other keyguard
    // operation (v1's deriveSharedKey takes any salt and info) can be made to produce this.
    let mut ikm = Zeroizing::new(Vec::with_capacity(BOUND_TAG.len() + secret.len()));
    ikm.extend_from_slice(BOUND_TAG);
    ikm.extend_from_slice(secret);
    let prk = hkdf_sha256_extract(transcript_hash, &ikm)?;
    let mut out = Zeroizing::new([0u8; 32]);
    hkdf_sha256_expand(&prk, &info, &mut out[..])?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_and_every_role_but_the_ephemeral_ones_needs_keyguard() {
        let labels: std::collections::HashSet<_> =
            HandshakeComponent::ALL.iter().map(|c| c.label()).collect();
        assert_eq!(labels.len(), HandshakeComponent::ALL.len());
        let ops = [
            GuardOperation::IdentityDh,
            GuardOperation::IdentityDecapsulate,
            GuardOperation::PrekeyDh,
            GuardOperation::PrekeyDecapsulate,
        ];
        for c in HandshakeComponent::ALL {
            let served = ops.iter().filter(|op| c.served_by(**op)).count();
            let ephemeral = matches!(
                c,
                HandshakeComponent::EphemeralDh | HandshakeComponent::InitiatorEphemeralKem
            );
            assert_eq!(served == 0, ephemeral, "{c:?}");
        }
    }

    #[test]
    fn the_bound_value_depends_on_label_transcript_and_secret() {
        let base = transcript_bound(b"a", &[1; 32], b"secret").unwrap();
        assert_ne!(*base, *transcript_bound(b"b", &[1; 32], b"secret").unwrap());
        assert_ne!(*base, *transcript_bound(b"a", &[2; 32], b"secret").unwrap());
        assert_ne!(*base, *transcript_bound(b"a", &[1; 32], b"secreT").unwrap());
        assert_eq!(*base, *transcript_bound(b"a", &[1; 32], b"secret").unwrap());
    }
}
