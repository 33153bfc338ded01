//! Files sealed under a passphrase: Argon2id (`crypto_pwhash`, libsodium's default algorithm)
//! turns the passphrase and a random salt into a key, and `crypto_secretstream_xchacha20poly1305`
//! seals the file as a stream of chunks. The stream construction is libsodium's own: each chunk
//! is authenticated in order, and the last one carries the FINAL tag, so a file that was cut
//! short, reordered or spliced does not open. Used for a hosted host's backup
//! (`smvs-hostctl backup`), which may be large: nothing here holds more than a chunk.

use std::fmt;

use libsodium_sys as ffi;
use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroizing;

use crate::sodium::{check, init};
use crate::CryptoError;

pub const PASSPHRASE_SALT_LEN: usize = ffi::crypto_pwhash_SALTBYTES as usize;
pub const STREAM_HEADER_LEN: usize =
    ffi::crypto_secretstream_xchacha20poly1305_HEADERBYTES as usize;
/// What sealing adds to each chunk (its tag byte and MAC).
pub const STREAM_CHUNK_OVERHEAD: usize = ffi::crypto_secretstream_xchacha20poly1305_ABYTES as usize;
const STREAM_KEY_LEN: usize = ffi::crypto_secretstream_xchacha20poly1305_KEYBYTES as usize;
const TAG_FINAL: u8 = ffi::crypto_secretstream_xchacha20poly1305_TAG_FINAL as u8;
const TAG_MESSAGE: u8 = ffi::crypto_secretstream_xchacha20poly1305_TAG_MESSAGE as u8;

/// How hard the passphrase is stretched: libsodium's MODERATE limits (about 0.5 s and 256 MiB
/// on a small machine), which its documentation advises for keys of data at rest, or INTERACTIVE
/// (64 MiB), for tests. Stored beside the salt, so that a file says how to open it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassphraseCost {
    pub ops: u64,
    pub mem: u64,
}

impl PassphraseCost {
    pub const MODERATE: PassphraseCost = PassphraseCost {
        ops: ffi::crypto_pwhash_OPSLIMIT_MODERATE as u64,
        mem: ffi::crypto_pwhash_MEMLIMIT_MODERATE as u64,
    };
    pub const INTERACTIVE: PassphraseCost = PassphraseCost {
        ops: ffi::crypto_pwhash_OPSLIMIT_INTERACTIVE as u64,
        mem: ffi::crypto_pwhash_MEMLIMIT_INTERACTIVE as u64,
    };

    /// Refuses what libsodium would, and anything above its SENSITIVE limits (1 GiB, 4 passes):
    /// the cost is read from a file's unauthenticated header, which must not make the reader
    /// spend hours or whatever memory it names.
    fn check(&self) -> Result<(), CryptoError> {
        let ops_ok = self.ops >= ffi::crypto_pwhash_OPSLIMIT_MIN as u64
            && self.ops <= ffi::crypto_pwhash_OPSLIMIT_SENSITIVE as u64;
        let mem_ok = self.mem >= ffi::crypto_pwhash_MEMLIMIT_MIN as u64
            && self.mem <= ffi::crypto_pwhash_MEMLIMIT_SENSITIVE as u64;
        if ops_ok && mem_ok {
            Ok(())
        } else {
            Err(CryptoError::Kdf("passphrase cost out of range"))
        }
    }
}

/// The key a passphrase and salt stretch to, zeroed on drop.
pub struct PassphraseKey(SecretBox<[u8; STREAM_KEY_LEN]>);

impl fmt::Debug for PassphraseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PassphraseKey([REDACTED])")
    }
}

impl PassphraseKey {
    /// Argon2id13 over `passphrase` and `salt` at `cost`.
    pub fn derive(
        passphrase: &[u8],
        salt: &[u8; PASSPHRASE_SALT_LEN],
        cost: PassphraseCost,
    ) -> Result<Self, CryptoError> {
        init()?;
        cost.check()?;
        let mem = usize::try_from(cost.mem)
            .map_err(|_| CryptoError::Kdf("passphrase cost out of range"))?;
        let mut key = Box::new([0u8; STREAM_KEY_LEN]);
        // SAFETY: `key` is STREAM_KEY_LEN writable bytes, `passphrase` and `salt` are valid for
        // their lengths (the salt is crypto_pwhash_SALTBYTES long by its type); the limits
        // were range-checked above.
        let rc = unsafe {
            ffi::crypto_pwhash(
                key.as_mut_ptr(),
                STREAM_KEY_LEN as u64,
                passphrase.as_ptr().cast(),
                passphrase.len() as u64,
                salt.as_ptr(),
                cost.ops,
                mem,
                ffi::crypto_pwhash_ALG_ARGON2ID13 as i32,
            )
        };
        check(rc, CryptoError::Kdf("argon2id (out of memory?)"))?;
        Ok(PassphraseKey(SecretBox::new(key)))
    }
}

/// Seals a stream chunk by chunk; the last chunk must be pushed with `last = true`.
pub struct StreamSealer {
    state: Box<ffi::crypto_secretstream_xchacha20poly1305_state>,
}

impl StreamSealer {
    /// A new stream under `key`, and the header to write before its first chunk.
    pub fn new(key: &PassphraseKey) -> Result<(Self, [u8; STREAM_HEADER_LEN]), CryptoError> {
        init()?;
        // SAFETY: the state is plain bytes that init_push fills in.
        let mut state: Box<ffi::crypto_secretstream_xchacha20poly1305_state> =
            Box::new(unsafe { std::mem::zeroed() });
        let mut header = [0u8; STREAM_HEADER_LEN];
        // SAFETY: header is HEADERBYTES long, the key KEYBYTES, the state a valid struct.
        let rc = unsafe {
            ffi::crypto_secretstream_xchacha20poly1305_init_push(
                &mut *state,
                header.as_mut_ptr(),
                key.0.expose_secret().as_ptr(),
            )
        };
        check(rc, CryptoError::Kdf("secretstream init"))?;
        Ok((StreamSealer { state }, header))
    }

    /// One chunk, sealed: `chunk.len() + STREAM_CHUNK_OVERHEAD` bytes.
    pub fn push(&mut self, chunk: &[u8], last: bool) -> Result<Vec<u8>, CryptoError> {
        let mut out = vec![0u8; chunk.len() + STREAM_CHUNK_OVERHEAD];
        let mut written: u64 = 0;
        let tag = if last { TAG_FINAL } else { TAG_MESSAGE };
        // SAFETY: `out` has room for the chunk plus ABYTES; no additional data.
        let rc = unsafe {
            ffi::crypto_secretstream_xchacha20poly1305_push(
                &mut *self.state,
                out.as_mut_ptr(),
                &mut written,
                chunk.as_ptr(),
                chunk.len() as u64,
                std::ptr::null(),
                0,
                tag,
            )
        };
        check(rc, CryptoError::Kdf("secretstream push"))?;
        out.truncate(written as usize);
        Ok(out)
    }
}

impl Drop for StreamSealer {
    fn drop(&mut self) {
        wipe(&mut self.state);
    }
}

/// Wipes a stream state's key material.
fn wipe(state: &mut ffi::crypto_secretstream_xchacha20poly1305_state) {
    // SAFETY: the state is a plain struct we hold exclusively; we zero exactly its bytes.
    unsafe {
        ffi::sodium_memzero(
            (state as *mut ffi::crypto_secretstream_xchacha20poly1305_state).cast(),
            std::mem::size_of::<ffi::crypto_secretstream_xchacha20poly1305_state>(),
        )
    }
}

/// Opens a stream sealed by [`StreamSealer`], chunk by chunk, in order.
pub struct StreamOpener {
    state: Box<ffi::crypto_secretstream_xchacha20poly1305_state>,
    finished: bool,
}

impl StreamOpener {
    pub fn new(key: &PassphraseKey, header: &[u8; STREAM_HEADER_LEN]) -> Result<Self, CryptoError> {
        init()?;
        // SAFETY: as in StreamSealer::new.
        let mut state: Box<ffi::crypto_secretstream_xchacha20poly1305_state> =
            Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: header HEADERBYTES long, key KEYBYTES.
        let rc = unsafe {
            ffi::crypto_secretstream_xchacha20poly1305_init_pull(
                &mut *state,
                header.as_ptr(),
                key.0.expose_secret().as_ptr(),
            )
        };
        check(rc, CryptoError::Decrypt)?;
        Ok(StreamOpener {
            state,
            finished: false,
        })
    }

    /// Opens the next sealed chunk; returns its plaintext and whether it was the last one.
    /// A chunk after the last one, a forged, reordered or truncated chunk all fail.
    pub fn pull(&mut self, sealed: &[u8]) -> Result<(Zeroizing<Vec<u8>>, bool), CryptoError> {
        if self.finished || sealed.len() < STREAM_CHUNK_OVERHEAD {
            return Err(CryptoError::Decrypt);
        }
        let mut out = Zeroizing::new(vec![0u8; sealed.len() - STREAM_CHUNK_OVERHEAD]);
        let mut written: u64 = 0;
        let mut tag: u8 = 0;
        // SAFETY: `out` has room for sealed.len() - ABYTES bytes; no additional data.
        let rc = unsafe {
            ffi::crypto_secretstream_xchacha20poly1305_pull(
                &mut *self.state,
                out.as_mut_ptr(),
                &mut written,
                &mut tag,
                sealed.as_ptr(),
                sealed.len() as u64,
                std::ptr::null(),
                0,
            )
        };
        check(rc, CryptoError::Decrypt)?;
        out.truncate(written as usize);
        self.finished = tag == TAG_FINAL;
        Ok((out, self.finished))
    }

    /// Whether the last chunk has been opened: a stream that ends before it was cut short.
    pub fn is_finished(&self) -> bool {
        self.finished
    }
}

impl Drop for StreamOpener {
    fn drop(&mut self) {
        wipe(&mut self.state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(pass: &[u8]) -> PassphraseKey {
        PassphraseKey::derive(
            pass,
            &[7u8; PASSPHRASE_SALT_LEN],
            PassphraseCost::INTERACTIVE,
        )
        .expect("derive")
    }

    #[test]
    fn stream_round_trips_and_detects_tampering() {
        let k = key(b"correct horse");
        let (mut sealer, header) = StreamSealer::new(&k).expect("sealer");
        let a = sealer.push(b"first", false).expect("push");
        let b = sealer.push(b"second", true).expect("push");

        let mut opener = StreamOpener::new(&k, &header).expect("opener");
        assert_eq!(opener.pull(&a).expect("a").0.as_slice(), b"first");
        let (text, last) = opener.pull(&b).expect("b");
        assert_eq!((text.as_slice(), last), (&b"second"[..], true));
        assert!(opener.pull(&b).is_err(), "nothing after the last chunk");

        // Reordered: the second chunk first.
        let mut opener = StreamOpener::new(&k, &header).expect("opener");
        assert!(opener.pull(&b).is_err());
        // Flipped bit.
        let mut bad = a.clone();
        bad[3] ^= 1;
        assert!(StreamOpener::new(&k, &header)
            .expect("opener")
            .pull(&bad)
            .is_err());
        // Wrong passphrase.
        let wrong = key(b"correct horsf");
        assert!(StreamOpener::new(&wrong, &header)
            .expect("opener")
            .pull(&a)
            .is_err());
        // Cut short: the first chunk opens but the stream is not finished.
        let mut opener = StreamOpener::new(&k, &header).expect("opener");
        opener.pull(&a).expect("a");
        assert!(!opener.is_finished());
    }

    #[test]
    fn absurd_costs_are_refused() {
        for (ops, mem) in [
            (3, 1 << 40),
            (3, (1 << 30) + 1),
            (1 << 20, 1 << 26),
            (0, 1 << 26),
        ] {
            let cost = PassphraseCost { ops, mem };
            assert!(PassphraseKey::derive(b"x", &[0; PASSPHRASE_SALT_LEN], cost).is_err());
        }
    }
}
