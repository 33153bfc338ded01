//! XChaCha20-Poly1305 (IETF construction): the symmetric AEAD for stored rows, envelopes and
//! media packets. The 24-byte nonce is large enough to pick at random for every message.

use std::fmt;

use libsodium_sys as ffi;
use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroizing;

use crate::error::check_len;
use crate::sodium::{check, init};
use crate::CryptoError;

pub const AEAD_KEY_LEN: usize = 32;
pub const AEAD_NONCE_LEN: usize = 24;
pub const AEAD_TAG_LEN: usize = 16;

/// A 256-bit AEAD key, zeroed on drop.
pub struct AeadKey(SecretBox<[u8; AEAD_KEY_LEN]>);

impl AeadKey {
    pub fn generate() -> Self {
        let mut key = Box::new([0u8; AEAD_KEY_LEN]);
        crate::random_bytes(&mut key[..]);
        AeadKey(SecretBox::new(key))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        check_len("AEAD key", bytes, AEAD_KEY_LEN)?;
        let mut key = Box::new([0u8; AEAD_KEY_LEN]);
        key.copy_from_slice(bytes);
        Ok(AeadKey(SecretBox::new(key)))
    }

    /// The raw key, for wrapping it under another key.
    pub fn expose(&self) -> &[u8; AEAD_KEY_LEN] {
        self.0.expose_secret()
    }

    /// Encrypts with a fresh random nonce and returns `nonce || ciphertext || tag`.
    pub fn seal(&self, ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce: [u8; AEAD_NONCE_LEN] = crate::random_array();
        let mut out = nonce.to_vec();
        out.extend_from_slice(&aead_encrypt(self, &nonce, ad, plaintext)?);
        Ok(out)
    }

    /// Opens the output of [`AeadKey::seal`].
    pub fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if sealed.len() < AEAD_NONCE_LEN + AEAD_TAG_LEN {
            return Err(CryptoError::Decrypt);
        }
        let (nonce, ciphertext) = sealed.split_at(AEAD_NONCE_LEN);
        let mut n = [0u8; AEAD_NONCE_LEN];
        n.copy_from_slice(nonce);
        aead_decrypt(self, &n, ad, ciphertext)
    }
}

impl fmt::Debug for AeadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AeadKey([REDACTED])")
    }
}

/// XChaCha20-Poly1305 encryption; returns `ciphertext || tag`.
pub fn aead_encrypt(
    key: &AeadKey,
    nonce: &[u8; AEAD_NONCE_LEN],
    ad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    init()?;
    let mut out = vec![0u8; plaintext.len() + AEAD_TAG_LEN];
    let mut out_len: u64 = 0;
    // SAFETY: `out` has room for plaintext + tag as documented; every pointer/length pair
    // describes its slice; nsec is unused by this construction and must be null.
    let rc = unsafe {
        ffi::crypto_aead_xchacha20poly1305_ietf_encrypt(
            out.as_mut_ptr(),
            &mut out_len,
            plaintext.as_ptr(),
            plaintext.len() as u64,
            ad.as_ptr(),
            ad.len() as u64,
            std::ptr::null(),
            nonce.as_ptr(),
            key.expose().as_ptr(),
        )
    };
    check(rc, CryptoError::Kdf("aead encryption refused its input"))?;
    out.truncate(out_len as usize);
    Ok(out)
}

/// XChaCha20-Poly1305 decryption of `ciphertext || tag`. Any change to key, nonce, associated
/// data or ciphertext gives [`CryptoError::Decrypt`].
pub fn aead_decrypt(
    key: &AeadKey,
    nonce: &[u8; AEAD_NONCE_LEN],
    ad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    init()?;
    if ciphertext.len() < AEAD_TAG_LEN {
        return Err(CryptoError::Decrypt);
    }
    let mut out = Zeroizing::new(vec![0u8; ciphertext.len() - AEAD_TAG_LEN]);
    let mut out_len: u64 = 0;
    // SAFETY: `out` has room for ciphertext - tag bytes; pointer/length pairs match their slices.
    let rc = unsafe {
        ffi::crypto_aead_xchacha20poly1305_ietf_decrypt(
            out.as_mut_ptr(),
            &mut out_len,
            std::ptr::null_mut(),
            ciphertext.as_ptr(),
            ciphertext.len() as u64,
            ad.as_ptr(),
            ad.len() as u64,
            nonce.as_ptr(),
            key.expose().as_ptr(),
        )
    };
    check(rc, CryptoError::Decrypt)?;
    out.truncate(out_len as usize);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// draft-irtf-cfrg-xchacha-03, Appendix A.3.1.
    #[test]
    fn xchacha20poly1305_draft_vector() {
        let plaintext = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let ad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
        let key = AeadKey::from_bytes(
            &hex::decode("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
                .unwrap(),
        )
        .unwrap();
        let nonce: [u8; 24] = hex::decode("404142434445464748494a4b4c4d4e4f5051525354555657")
            .unwrap()
            .try_into()
            .unwrap();
        let expected = "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff921f9664c97637da9768812f615c68b13b52ec0875924c1c7987947deafd8780acf49";
        let ct = aead_encrypt(&key, &nonce, &ad, plaintext).unwrap();
        assert_eq!(hex::encode(&ct), expected);
        assert_eq!(
            &aead_decrypt(&key, &nonce, &ad, &ct).unwrap()[..],
            &plaintext[..]
        );
    }

    #[test]
    fn tampering_is_detected() {
        let key = AeadKey::generate();
        let sealed = key.seal(b"ad", b"hello").unwrap();
        assert_eq!(&key.open(b"ad", &sealed).unwrap()[..], b"hello");
        assert_eq!(
            key.open(b"other", &sealed).unwrap_err(),
            CryptoError::Decrypt
        );
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(key.open(b"ad", &bad).unwrap_err(), CryptoError::Decrypt);
        assert_eq!(
            key.open(b"ad", &sealed[..10]).unwrap_err(),
            CryptoError::Decrypt
        );
        assert!(AeadKey::generate().open(b"ad", &sealed).is_err());
    }
}
