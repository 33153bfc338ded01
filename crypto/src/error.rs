use thiserror::Error;

/// Every way a cryptographic operation can fail. None of them carries secret material.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    #[error("libsodium could not be initialised")]
    Init,
    #[error("{what} must be {expected} bytes, got {got}")]
    Length {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("{what} is not a valid key")]
    InvalidKey { what: &'static str },
    #[error("signature does not verify ({context})")]
    BadSignature { context: &'static str },
    #[error("decryption failed: wrong key or tampered data")]
    Decrypt,
    #[error("key agreement produced a weak shared secret")]
    WeakKeyAgreement,
    #[error("key derivation failed: {0}")]
    Kdf(&'static str),
    #[error("noise transport: {0}")]
    Noise(String),
    #[error("pairing: {0}")]
    Pairing(&'static str),
}

pub(crate) fn check_len(
    what: &'static str,
    bytes: &[u8],
    expected: usize,
) -> Result<(), CryptoError> {
    if bytes.len() == expected {
        Ok(())
    } else {
        Err(CryptoError::Length {
            what,
            expected,
            got: bytes.len(),
        })
    }
}
