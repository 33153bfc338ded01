//! A user's identity: an Ed25519 signing key and an X25519 agreement key, the second vouched
//! for by the first. The secret halves live only in smvs-keyguard; everyone else handles the
//! public [`IdentityBundle`].

use crate::kem::XWingPublicKey;
use crate::keys::{
    AgreementKeyPair, AgreementPublicKey, SignContext, Signature, SigningKeyPair, SigningPublicKey,
    AGREEMENT_KEY_LEN, SIGNATURE_LEN, SIGNING_KEY_LEN,
};
use crate::CryptoError;

/// Both identity key pairs of one user.
#[derive(Debug)]
pub struct IdentityKeys {
    pub signing: SigningKeyPair,
    pub agreement: AgreementKeyPair,
}

impl IdentityKeys {
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(IdentityKeys {
            signing: SigningKeyPair::generate()?,
            agreement: AgreementKeyPair::generate()?,
        })
    }

    /// The public bundle: both public keys and the signature binding the X25519 key to the
    /// Ed25519 key.
    pub fn bundle(&self) -> IdentityBundle {
        let agreement_key = self.agreement.public();
        IdentityBundle {
            signing_key: self.signing.public(),
            agreement_key,
            agreement_signature: self
                .signing
                .sign(SignContext::IdentityAgreementKey, agreement_key.as_bytes()),
        }
    }
}

/// The public half of an identity, as published in the directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityBundle {
    pub signing_key: SigningPublicKey,
    pub agreement_key: AgreementPublicKey,
    pub agreement_signature: Signature,
}

impl IdentityBundle {
    pub const ENCODED_LEN: usize = SIGNING_KEY_LEN + AGREEMENT_KEY_LEN + SIGNATURE_LEN;

    /// Builds a bundle from its three parts and checks that the signature binds them.
    pub fn from_parts(
        signing_key: &[u8],
        agreement_key: &[u8],
        agreement_signature: &[u8],
    ) -> Result<Self, CryptoError> {
        let bundle = IdentityBundle {
            signing_key: SigningPublicKey::from_bytes(signing_key)?,
            agreement_key: AgreementPublicKey::from_bytes(agreement_key)?,
            agreement_signature: Signature::from_bytes(agreement_signature)?,
        };
        bundle.verify()?;
        Ok(bundle)
    }

    /// Rebuilds a bundle from [`IdentityBundle::to_bytes`] without checking its signature.
    /// Only for bytes that were verified before and come back from authenticated storage
    /// (an AEAD-sealed row): a verification costs an Ed25519 check on every message otherwise.
    pub fn from_verified_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        crate::error::check_len("identity bundle", bytes, Self::ENCODED_LEN)?;
        Ok(IdentityBundle {
            signing_key: SigningPublicKey::from_bytes(&bytes[..32])?,
            agreement_key: AgreementPublicKey::from_bytes(&bytes[32..64])?,
            agreement_signature: Signature::from_bytes(&bytes[64..])?,
        })
    }

    /// Checks that the signing key vouches for the agreement key.
    pub fn verify(&self) -> Result<(), CryptoError> {
        self.signing_key.verify(
            SignContext::IdentityAgreementKey,
            self.agreement_key.as_bytes(),
            &self.agreement_signature,
        )
    }

    /// A fixed-layout encoding (signing key, agreement key, signature), used wherever a bundle
    /// is signed or hashed as part of something larger.
    pub fn to_bytes(&self) -> [u8; Self::ENCODED_LEN] {
        let mut out = [0u8; Self::ENCODED_LEN];
        out[..32].copy_from_slice(self.signing_key.as_bytes());
        out[32..64].copy_from_slice(self.agreement_key.as_bytes());
        out[64..].copy_from_slice(self.agreement_signature.as_bytes());
        out
    }
}

/// A signed medium-term prekey of session v2: an X25519 key and an X-Wing key with an id and
/// an expiry, signed by the identity (context `SessionPrekey`). Made and rotated by keyguard,
/// published in the directory record, used by an initiator whose peer's host is away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedPrekey {
    /// Never 0.
    pub id: u32,
    /// Unix seconds after which an initiator no longer uses it.
    pub expires: i64,
    pub dh: AgreementPublicKey,
    pub kem: XWingPublicKey,
    pub signature: Signature,
}

impl SignedPrekey {
    /// What the identity signs: id, expiry (both big-endian), both public keys.
    pub fn signed_bytes(
        id: u32,
        expires: i64,
        dh: &AgreementPublicKey,
        kem: &XWingPublicKey,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + AGREEMENT_KEY_LEN + crate::XWING_PUBLIC_KEY_LEN);
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&expires.to_be_bytes());
        out.extend_from_slice(dh.as_bytes());
        out.extend_from_slice(kem.as_bytes());
        out
    }

    /// Signs a prekey with the identity (keyguard only).
    pub fn sign(
        identity: &IdentityKeys,
        id: u32,
        expires: i64,
        dh: AgreementPublicKey,
        kem: XWingPublicKey,
    ) -> SignedPrekey {
        let signature = identity.signing.sign(
            SignContext::SessionPrekey,
            &SignedPrekey::signed_bytes(id, expires, &dh, &kem),
        );
        SignedPrekey {
            id,
            expires,
            dh,
            kem,
            signature,
        }
    }

    /// Checks that `identity` signed this prekey (not its expiry: that needs a clock).
    pub fn verify(&self, identity: &IdentityBundle) -> Result<(), CryptoError> {
        identity.signing_key.verify(
            SignContext::SessionPrekey,
            &SignedPrekey::signed_bytes(self.id, self.expires, &self.dh, &self.kem),
            &self.signature,
        )
    }
}

/// The identity's signature binding its X-Wing key (context `IdentityKemKey`).
pub fn sign_identity_kem(identity: &IdentityKeys, kem: &XWingPublicKey) -> Signature {
    identity
        .signing
        .sign(SignContext::IdentityKemKey, kem.as_bytes())
}

/// Checks that `identity` vouches for the X-Wing key `kem`.
pub fn verify_identity_kem(
    identity: &IdentityBundle,
    kem: &XWingPublicKey,
    signature: &Signature,
) -> Result<(), CryptoError> {
    identity
        .signing_key
        .verify(SignContext::IdentityKemKey, kem.as_bytes(), signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundle_verifies_and_rejects_swapped_keys() {
        let a = IdentityKeys::generate().unwrap();
        let b = IdentityKeys::generate().unwrap();
        let bundle = a.bundle();
        bundle.verify().unwrap();
        let mut forged = bundle;
        forged.agreement_key = b.agreement.public();
        assert!(forged.verify().is_err());
        let again = IdentityBundle::from_parts(
            bundle.signing_key.as_bytes(),
            bundle.agreement_key.as_bytes(),
            bundle.agreement_signature.as_bytes(),
        )
        .unwrap();
        assert_eq!(again, bundle);
        assert_eq!(
            IdentityBundle::from_verified_bytes(&bundle.to_bytes()).unwrap(),
            bundle
        );
        assert_eq!(bundle.to_bytes().len(), IdentityBundle::ENCODED_LEN);
    }
}
