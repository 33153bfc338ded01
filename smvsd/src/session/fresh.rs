//! Where session v2 takes its randomness: fresh X25519 secrets, ML-KEM and X-Wing seeds, KEM
//! encapsulation randomness and AEAD nonces all come from one [`Fresh`] source.
//!
//! In the host that source is [`OsFresh`] (libsodium's CSPRNG, getrandom on Linux). Tests pass
//! a seeded source instead, so that the handshake's and the ratchet's outputs can be frozen as
//! vectors and any change to the construction shows up.

use smvs_crypto::{
    AgreementKeyPair, CryptoError, MlKemKeyPair, XWingKeyPair, Zeroizing, AEAD_NONCE_LEN,
    MLKEM_SEED_LEN, XWING_SEED_LEN,
};

/// A source of fresh secret bytes.
pub trait Fresh {
    fn fill(&mut self, out: &mut [u8]);
}

/// libsodium's CSPRNG: what the host uses.
pub struct OsFresh;

impl Fresh for OsFresh {
    fn fill(&mut self, out: &mut [u8]) {
        smvs_crypto::random_bytes(out);
    }
}

/// A fresh X25519 secret scalar (kept as bytes so that state can be cloned and stored).
pub fn x25519_secret(fresh: &mut dyn Fresh) -> Zeroizing<[u8; 32]> {
    let mut secret = Zeroizing::new([0u8; 32]);
    fresh.fill(&mut secret[..]);
    secret
}

pub fn x25519(fresh: &mut dyn Fresh) -> Result<AgreementKeyPair, CryptoError> {
    AgreementKeyPair::from_secret_bytes(&x25519_secret(fresh)[..])
}

/// A fresh ML-KEM-768 seed (d || z).
pub fn mlkem_seed(fresh: &mut dyn Fresh) -> Zeroizing<[u8; MLKEM_SEED_LEN]> {
    let mut seed = Zeroizing::new([0u8; MLKEM_SEED_LEN]);
    fresh.fill(&mut seed[..]);
    seed
}

pub fn mlkem(fresh: &mut dyn Fresh) -> Result<MlKemKeyPair, CryptoError> {
    MlKemKeyPair::from_seed(&mlkem_seed(fresh)[..])
}

pub fn xwing(fresh: &mut dyn Fresh) -> Result<XWingKeyPair, CryptoError> {
    let mut seed = Zeroizing::new([0u8; XWING_SEED_LEN]);
    fresh.fill(&mut seed[..]);
    XWingKeyPair::from_seed(&seed[..])
}

/// `N` fresh bytes: encapsulation randomness.
pub fn bytes<const N: usize>(fresh: &mut dyn Fresh) -> Zeroizing<[u8; N]> {
    let mut out = Zeroizing::new([0u8; N]);
    fresh.fill(&mut out[..]);
    out
}

pub fn nonce(fresh: &mut dyn Fresh) -> [u8; AEAD_NONCE_LEN] {
    let mut out = [0u8; AEAD_NONCE_LEN];
    fresh.fill(&mut out);
    out
}

/// A deterministic source for tests and frozen vectors: block `i` is
/// BLAKE2b-512(key = seed, "smvs-test-fresh" || i). Never used by the host.
#[cfg(test)]
pub struct SeededFresh {
    seed: [u8; 32],
    counter: u64,
    buffer: Vec<u8>,
}

#[cfg(test)]
impl SeededFresh {
    pub fn new(label: &str) -> SeededFresh {
        SeededFresh {
            seed: smvs_crypto::blake2b_256(label.as_bytes()).unwrap_or([0; 32]),
            counter: 0,
            buffer: Vec::new(),
        }
    }
}

#[cfg(test)]
impl Fresh for SeededFresh {
    fn fill(&mut self, out: &mut [u8]) {
        for byte in out.iter_mut() {
            if self.buffer.is_empty() {
                self.buffer = smvs_crypto::blake2b(
                    64,
                    Some(&self.seed),
                    &[b"smvs-test-fresh", &self.counter.to_be_bytes()],
                )
                .unwrap_or_default();
                self.counter += 1;
            }
            *byte = self.buffer.remove(0);
        }
    }
}
