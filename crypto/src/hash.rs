//! BLAKE2b (generic hashing, fingerprints, token digests; libsodium) and HKDF-SHA256 (RFC
//! 5869, key derivation for storage, session and media keys; RustCrypto's, see
//! [`hkdf_sha256_extract`]).

use std::fmt;

use libsodium_sys as ffi;
use zeroize::{Zeroize, Zeroizing};

use crate::sodium::{check, init};
use crate::CryptoError;

/// BLAKE2b of the concatenation of `parts`, `out_len` bytes long (16..=64), optionally keyed.
pub fn blake2b(
    out_len: usize,
    key: Option<&[u8]>,
    parts: &[&[u8]],
) -> Result<Vec<u8>, CryptoError> {
    init()?;
    if !(16..=64).contains(&out_len) || key.is_some_and(|k| k.len() < 16 || k.len() > 64) {
        return Err(CryptoError::Kdf(
            "BLAKE2b output or key length out of range",
        ));
    }
    let mut state = std::mem::MaybeUninit::<ffi::crypto_generichash_state>::uninit();
    let (key_ptr, key_len) = match key {
        Some(k) => (k.as_ptr(), k.len()),
        None => (std::ptr::null(), 0),
    };
    let mut out = vec![0u8; out_len];
    // SAFETY: the state is initialised by crypto_generichash_init before any other use; every
    // pointer/length pair describes a live slice; lengths were range-checked above.
    unsafe {
        check(
            ffi::crypto_generichash_init(state.as_mut_ptr(), key_ptr, key_len, out_len),
            CryptoError::Kdf("BLAKE2b init"),
        )?;
        for part in parts {
            check(
                ffi::crypto_generichash_update(
                    state.as_mut_ptr(),
                    part.as_ptr(),
                    part.len() as u64,
                ),
                CryptoError::Kdf("BLAKE2b update"),
            )?;
        }
        check(
            ffi::crypto_generichash_final(state.as_mut_ptr(), out.as_mut_ptr(), out_len),
            CryptoError::Kdf("BLAKE2b final"),
        )?;
    }
    Ok(out)
}

/// Unkeyed 256-bit BLAKE2b of one byte string.
///
/// It fails when libsodium does (its initialisation, above all). A placeholder value instead
/// would be the same for every input: two token digests would match, two messages would chain
/// alike. So there is no digest without the hash.
pub fn blake2b_256(data: &[u8]) -> Result<[u8; 32], CryptoError> {
    let v = blake2b(32, None, &[data])?;
    <[u8; 32]>::try_from(v.as_slice()).map_err(|_| CryptoError::Kdf("BLAKE2b output length"))
}

/// An HKDF-SHA256 pseudorandom key (the output of extract).
pub struct Prk(Zeroizing<[u8; 32]>);

impl fmt::Debug for Prk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Prk([REDACTED])")
    }
}

/// HKDF-Extract(salt, ikm).
///
/// HKDF is RustCrypto's (`hkdf` over `sha2`), not libsodium's: the same RFC 5869 function
/// (the vectors below, and a comparison with libsodium's), but SHA-256 on the CPU's SHA
/// extensions where it has them. libsodium's SHA-256 is portable C, and the ratchet derives
/// every message's key with HKDF: it took 6% of both hosts' CPU under load.
pub fn hkdf_sha256_extract(salt: &[u8], ikm: &[u8]) -> Result<Prk, CryptoError> {
    let (mut derived, _) = hkdf::Hkdf::<sha2::Sha256>::extract(Some(salt), ikm);
    let mut prk = Zeroizing::new([0u8; 32]);
    prk.copy_from_slice(&derived);
    derived.as_mut_slice().zeroize();
    Ok(Prk(prk))
}

/// HKDF-Expand(prk, info) into `out` (at most 255 × 32 bytes).
pub fn hkdf_sha256_expand(prk: &Prk, info: &[u8], out: &mut [u8]) -> Result<(), CryptoError> {
    if out.is_empty() || out.len() > 255 * 32 {
        return Err(CryptoError::Kdf("HKDF output length out of range"));
    }
    hkdf::Hkdf::<sha2::Sha256>::from_prk(&prk.0[..])
        .map_err(|_| CryptoError::Kdf("HKDF key length"))?
        .expand(info, out)
        .map_err(|_| CryptoError::Kdf("HKDF output length out of range"))
}

/// HKDF-SHA256(salt, ikm, info) of `len` bytes.
pub fn hkdf_sha256(
    salt: &[u8],
    ikm: &[u8],
    info: &[u8],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let prk = hkdf_sha256_extract(salt, ikm)?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    hkdf_sha256_expand(&prk, info, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5869 Appendix A.1 (test case 1).
    #[test]
    fn hkdf_rfc5869_case1() {
        let ikm = [0x0bu8; 22];
        let salt = hex::decode("000102030405060708090a0b0c").unwrap();
        let info = hex::decode("f0f1f2f3f4f5f6f7f8f9").unwrap();
        let prk = hkdf_sha256_extract(&salt, &ikm).unwrap();
        assert_eq!(
            hex::encode(&prk.0[..]),
            "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
        );
        let okm = hkdf_sha256(&salt, &ikm, &info, 42).unwrap();
        assert_eq!(
            hex::encode(&okm[..]),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
        );
    }

    /// RFC 5869 Appendix A.3 (test case 3: empty salt and info).
    #[test]
    fn hkdf_rfc5869_case3() {
        let okm = hkdf_sha256(&[], &[0x0bu8; 22], &[], 42).unwrap();
        assert_eq!(
            hex::encode(&okm[..]),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"
        );
    }

    /// libsodium's HKDF-SHA256, which this module used before: the same output for every
    /// salt, key, info and length tried (the ratchet's frozen vectors depend on it).
    #[test]
    fn hkdf_gives_what_libsodium_gives() {
        fn sodium(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
            let mut prk = [0u8; 32];
            let mut out = vec![0u8; len];
            // SAFETY: every pointer/length pair describes a live slice; prk is 32 bytes.
            unsafe {
                assert_eq!(
                    ffi::crypto_kdf_hkdf_sha256_extract(
                        prk.as_mut_ptr(),
                        salt.as_ptr(),
                        salt.len(),
                        ikm.as_ptr(),
                        ikm.len(),
                    ),
                    0
                );
                assert_eq!(
                    ffi::crypto_kdf_hkdf_sha256_expand(
                        out.as_mut_ptr(),
                        out.len(),
                        info.as_ptr().cast(),
                        info.len(),
                        prk.as_ptr(),
                    ),
                    0
                );
            }
            out
        }
        crate::sodium::init().unwrap();
        for (n, len) in [
            (0usize, 1usize),
            (13, 32),
            (32, 42),
            (64, 64),
            (65, 100),
            (200, 8160),
        ] {
            let random = |len: usize| {
                let mut v = vec![0u8; len];
                crate::sodium::random_bytes(&mut v);
                v
            };
            let (salt, ikm, info) = (random(n % 70), random(n), random(n / 2));
            assert_eq!(
                hkdf_sha256(&salt, &ikm, &info, len).unwrap()[..],
                sodium(&salt, &ikm, &info, len)[..],
                "salt {} bytes, ikm {n}, info {}, {len} out",
                salt.len(),
                info.len()
            );
        }
        assert!(hkdf_sha256(b"", b"k", b"", 0).is_err());
        assert!(hkdf_sha256(b"", b"k", b"", 255 * 32 + 1).is_err());
    }

    /// RFC 7693 Appendix A: BLAKE2b-512("abc").
    #[test]
    fn blake2b_rfc7693_abc() {
        let out = blake2b(64, None, &[b"a", b"bc"]).unwrap();
        assert_eq!(
            hex::encode(out),
            "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d17d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923"
        );
    }

    /// BLAKE2b-256("abc") (the RFC 7693 reference code with a 32-byte output), as a `Result`:
    /// a failure is an error the caller must handle, never a digest.
    #[test]
    fn blake2b_256_is_a_result_and_the_right_digest() {
        let digest: Result<[u8; 32], CryptoError> = blake2b_256(b"abc");
        assert_eq!(
            hex::encode(digest.unwrap()),
            "bddd813c634239723171ef3fee98579b94964e3bb1cb3e427262c8c068d52319"
        );
        assert_ne!(blake2b_256(b"").unwrap(), [0u8; 32]);
    }

    #[test]
    fn blake2b_rejects_bad_lengths() {
        assert!(blake2b(8, None, &[b"x"]).is_err());
        assert!(blake2b(32, Some(b"short"), &[b"x"]).is_err());
    }
}
