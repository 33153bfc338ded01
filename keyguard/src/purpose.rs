//! The names keyguard's wire gives the session v2 handshake's operations and roles, mapped to
//! smvs-crypto's (where the labels, and which operation serves which role, are defined).
//!
//! Keyguard signs nothing on request: every `SignPurpose` is retired (see `keyguard.capnp`).

use smvs_crypto::{GuardOperation, HandshakeComponent};
use smvs_schema::keyguard_capnp as wire;

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
}
