//! Which generic signatures keyguard makes. The wire names a `SignPurpose`; each one keyguard
//! serves maps to exactly one smvs-crypto `SignContext`, so the label inside the signed bytes is
//! chosen here, never by the caller.
//!
//! Only the host-to-host statements are generic: envelopes and receipts. Everything the
//! directory acts on is built by keyguard itself (`certifyTransport`, `signRegistration`) or
//! made only by the operator (`KeyRotation`, `Deregistration`: `smvs-keyguard rotate` and
//! `deregister`, which read the key files themselves). `IdentityAgreementKey` (a caller that
//! could have the identity vouch for an arbitrary X25519 key could impersonate the user to
//! anyone who seals to that key) and `DirectoryRecord` (only a directory signs records) are
//! never signed at all.

use smvs_crypto::{GuardOperation, HandshakeComponent, SignContext};
use smvs_schema::keyguard_capnp::{self as wire, SignPurpose};

/// The context a signature for `purpose` is made under, or `None` for a retired purpose that
/// keyguard refuses.
pub fn context_for(purpose: SignPurpose) -> Option<SignContext> {
    match purpose {
        SignPurpose::Envelope => Some(SignContext::Envelope),
        SignPurpose::Receipt => Some(SignContext::Receipt),
        SignPurpose::RetiredTransportCertificate
        | SignPurpose::RetiredDirectoryRegistration
        | SignPurpose::RetiredKeyRotation => None,
    }
}

/// The purpose to ask keyguard for, or `None` for a context keyguard does not sign over its
/// socket.
pub fn purpose_for(context: SignContext) -> Option<SignPurpose> {
    match context {
        SignContext::Envelope => Some(SignPurpose::Envelope),
        SignContext::Receipt => Some(SignPurpose::Receipt),
        SignContext::TransportCertificate
        | SignContext::DirectoryRegistration
        | SignContext::KeyRotation
        | SignContext::Deregistration
        | SignContext::IdentityAgreementKey
        | SignContext::IdentityKemKey
        | SignContext::SessionPrekey
        | SignContext::DirectoryRecord => None,
    }
}

/// The crypto crate's name for a handshake operation on the wire.
pub fn operation(op: wire::GuardOperation) -> GuardOperation {
    match op {
        wire::GuardOperation::IdentityDh => GuardOperation::IdentityDh,
        wire::GuardOperation::IdentityDecapsulate => GuardOperation::IdentityDecapsulate,
        wire::GuardOperation::PrekeyDh => GuardOperation::PrekeyDh,
        wire::GuardOperation::PrekeyDecapsulate => GuardOperation::PrekeyDecapsulate,
    }
}

/// The wire's name for a handshake operation.
pub fn wire_operation(op: GuardOperation) -> wire::GuardOperation {
    match op {
        GuardOperation::IdentityDh => wire::GuardOperation::IdentityDh,
        GuardOperation::IdentityDecapsulate => wire::GuardOperation::IdentityDecapsulate,
        GuardOperation::PrekeyDh => wire::GuardOperation::PrekeyDh,
        GuardOperation::PrekeyDecapsulate => wire::GuardOperation::PrekeyDecapsulate,
    }
}

/// The crypto crate's name for a handshake role on the wire.
pub fn component(c: wire::HandshakeComponent) -> HandshakeComponent {
    use wire::HandshakeComponent as W;
    use HandshakeComponent as C;
    match c {
        W::InitiatorIdentityDh => C::InitiatorIdentityDh,
        W::ResponderIdentityDh => C::ResponderIdentityDh,
        W::EphemeralDh => C::EphemeralDh,
        W::ResponderIdentityKem => C::ResponderIdentityKem,
        W::InitiatorEphemeralKem => C::InitiatorEphemeralKem,
        W::InitiatorIdentityKem => C::InitiatorIdentityKem,
        W::InitiatorIdentityPrekeyDh => C::InitiatorIdentityPrekeyDh,
        W::EphemeralPrekeyDh => C::EphemeralPrekeyDh,
        W::ResponderPrekeyKem => C::ResponderPrekeyKem,
    }
}

/// The wire's name for a handshake role.
pub fn wire_component(c: HandshakeComponent) -> wire::HandshakeComponent {
    use wire::HandshakeComponent as W;
    use HandshakeComponent as C;
    match c {
        C::InitiatorIdentityDh => W::InitiatorIdentityDh,
        C::ResponderIdentityDh => W::ResponderIdentityDh,
        C::EphemeralDh => W::EphemeralDh,
        C::ResponderIdentityKem => W::ResponderIdentityKem,
        C::InitiatorEphemeralKem => W::InitiatorEphemeralKem,
        C::InitiatorIdentityKem => W::InitiatorIdentityKem,
        C::InitiatorIdentityPrekeyDh => W::InitiatorIdentityPrekeyDh,
        C::EphemeralPrekeyDh => W::EphemeralPrekeyDh,
        C::ResponderPrekeyKem => W::ResponderPrekeyKem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_names_map_both_ways() {
        for c in HandshakeComponent::ALL {
            assert_eq!(component(wire_component(c)), c);
        }
        for op in [
            GuardOperation::IdentityDh,
            GuardOperation::IdentityDecapsulate,
            GuardOperation::PrekeyDh,
            GuardOperation::PrekeyDecapsulate,
        ] {
            assert_eq!(operation(wire_operation(op)), op);
        }
    }

    #[test]
    fn only_envelopes_and_receipts_are_signed() {
        for purpose in [SignPurpose::Envelope, SignPurpose::Receipt] {
            let context = context_for(purpose).unwrap();
            assert_eq!(purpose_for(context), Some(purpose));
        }
        for retired in [
            SignPurpose::RetiredTransportCertificate,
            SignPurpose::RetiredDirectoryRegistration,
            SignPurpose::RetiredKeyRotation,
        ] {
            assert_eq!(context_for(retired), None);
        }
        for refused in [
            SignContext::TransportCertificate,
            SignContext::DirectoryRegistration,
            SignContext::KeyRotation,
            SignContext::Deregistration,
            SignContext::IdentityAgreementKey,
            SignContext::DirectoryRecord,
        ] {
            assert_eq!(purpose_for(refused), None);
        }
    }
}
