//! libsodium initialisation and the few helpers with no key type of their own.

use std::sync::OnceLock;

use libsodium_sys as ffi;

use crate::CryptoError;

static INIT: OnceLock<bool> = OnceLock::new();

/// Initialises libsodium once per process. Safe to call any number of times, from any thread.
///
/// Every public entry point that needs libsodium calls this first, so callers only need it to
/// learn early (at start-up) whether the library works on this machine.
pub fn init() -> Result<(), CryptoError> {
    // SAFETY: sodium_init is thread-safe and idempotent; it returns 0 on success, 1 when already
    // initialised and -1 on failure.
    let ok = *INIT.get_or_init(|| unsafe { ffi::sodium_init() } >= 0);
    if ok {
        Ok(())
    } else {
        Err(CryptoError::Init)
    }
}

/// Fills `buf` with bytes from libsodium's CSPRNG (getrandom on Linux).
pub fn random_bytes(buf: &mut [u8]) {
    // randombytes_buf works without sodium_init on Linux, but initialising first makes the
    // generator choice explicit. A failed init is reported by every other call.
    let _ = init();
    // SAFETY: the pointer and length describe `buf` exactly.
    unsafe { ffi::randombytes_buf(buf.as_mut_ptr().cast(), buf.len()) }
}

/// Returns `N` random bytes.
pub fn random_array<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    random_bytes(&mut out);
    out
}

/// Compares two byte strings in time that depends only on their length.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    if a.is_empty() {
        return true;
    }
    // SAFETY: both pointers are valid for `a.len()` bytes (checked equal above).
    unsafe { ffi::sodium_memcmp(a.as_ptr().cast(), b.as_ptr().cast(), a.len()) == 0 }
}

/// Maps a libsodium return code to a result.
pub(crate) fn check(rc: CInt, err: CryptoError) -> Result<(), CryptoError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(err)
    }
}

pub(crate) type CInt = std::os::raw::c_int;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_differ() {
        let a: [u8; 32] = random_array();
        let b: [u8; 32] = random_array();
        assert_ne!(a, b);
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }
}
