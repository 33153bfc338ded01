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

use smvs_crypto::SignContext;
use smvs_schema::keyguard_capnp::SignPurpose;

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

#[cfg(test)]
mod tests {
    use super::*;

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
