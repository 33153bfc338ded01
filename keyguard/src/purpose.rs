//! Which signatures keyguard makes. The wire names a `SignPurpose`; each maps to exactly one
//! smvs-crypto `SignContext`, so the label inside the signed bytes is chosen here, never by the
//! caller.
//!
//! Two contexts are deliberately absent: `IdentityAgreementKey` (a caller that could have the
//! identity vouch for an arbitrary X25519 key could impersonate the user to anyone who seals to
//! that key) and `DirectoryRecord` (only a directory signs records).

use smvs_crypto::SignContext;
use smvs_schema::keyguard_capnp::SignPurpose;

/// The context a signature for `purpose` is made under.
pub fn context_for(purpose: SignPurpose) -> SignContext {
    match purpose {
        SignPurpose::TransportCertificate => SignContext::TransportCertificate,
        SignPurpose::DirectoryRegistration => SignContext::DirectoryRegistration,
        SignPurpose::KeyRotation => SignContext::KeyRotation,
        SignPurpose::Envelope => SignContext::Envelope,
        SignPurpose::Receipt => SignContext::Receipt,
    }
}

/// The purpose to ask keyguard for, or `None` for a context keyguard does not sign.
pub fn purpose_for(context: SignContext) -> Option<SignPurpose> {
    match context {
        SignContext::TransportCertificate => Some(SignPurpose::TransportCertificate),
        SignContext::DirectoryRegistration => Some(SignPurpose::DirectoryRegistration),
        SignContext::KeyRotation => Some(SignPurpose::KeyRotation),
        SignContext::Envelope => Some(SignPurpose::Envelope),
        SignContext::Receipt => Some(SignPurpose::Receipt),
        SignContext::IdentityAgreementKey | SignContext::DirectoryRecord => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_round_trip_and_identity_contexts_are_refused() {
        for purpose in [
            SignPurpose::TransportCertificate,
            SignPurpose::DirectoryRegistration,
            SignPurpose::KeyRotation,
            SignPurpose::Envelope,
            SignPurpose::Receipt,
        ] {
            assert_eq!(purpose_for(context_for(purpose)), Some(purpose));
        }
        assert_eq!(purpose_for(SignContext::IdentityAgreementKey), None);
        assert_eq!(purpose_for(SignContext::DirectoryRecord), None);
    }
}
