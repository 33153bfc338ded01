//! Sealed boxes: anonymous public-key encryption (X25519 + XSalsa20-Poly1305), as the proposal
//! uses for the directory's authentication token. Only the holder of the X25519 secret opens one.

use libsodium_sys as ffi;
use zeroize::Zeroizing;

use crate::keys::{AgreementKeyPair, AgreementPublicKey};
use crate::sodium::{check, init};
use crate::CryptoError;

/// Bytes a sealed box adds to its plaintext (an ephemeral public key and a MAC).
pub const SEAL_OVERHEAD: usize = 48;

/// Seals `plaintext` so that only the owner of `to` can open it.
pub fn seal(to: &AgreementPublicKey, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    init()?;
    let mut out = vec![0u8; plaintext.len() + SEAL_OVERHEAD];
    // SAFETY: `out` is plaintext + crypto_box_SEALBYTES long; the key is 32 bytes.
    let rc = unsafe {
        ffi::crypto_box_seal(
            out.as_mut_ptr(),
            plaintext.as_ptr(),
            plaintext.len() as u64,
            to.as_bytes().as_ptr(),
        )
    };
    check(
        rc,
        CryptoError::InvalidKey {
            what: "sealed-box recipient key",
        },
    )?;
    Ok(out)
}

impl AgreementKeyPair {
    /// Opens a sealed box addressed to this key pair.
    pub fn open_sealed(&self, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        init()?;
        if sealed.len() < SEAL_OVERHEAD {
            return Err(CryptoError::Decrypt);
        }
        let mut out = Zeroizing::new(vec![0u8; sealed.len() - SEAL_OVERHEAD]);
        // SAFETY: `out` is sealed - SEALBYTES long; public and secret keys are 32 bytes each.
        let rc = unsafe {
            ffi::crypto_box_seal_open(
                out.as_mut_ptr(),
                sealed.as_ptr(),
                sealed.len() as u64,
                self.public().as_bytes().as_ptr(),
                self.secret_ptr(),
            )
        };
        check(rc, CryptoError::Decrypt)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_recipient_opens() {
        let bob = AgreementKeyPair::generate().unwrap();
        let eve = AgreementKeyPair::generate().unwrap();
        let sealed = seal(&bob.public(), b"token").unwrap();
        assert_eq!(sealed.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(&bob.open_sealed(&sealed).unwrap()[..], b"token");
        assert_eq!(eve.open_sealed(&sealed).unwrap_err(), CryptoError::Decrypt);
        assert_eq!(
            bob.open_sealed(&sealed[..20]).unwrap_err(),
            CryptoError::Decrypt
        );
    }
}
