//! All of SMVS's cryptography, and the only crate that may use `unsafe`.
//!
//! Every primitive comes from libsodium (through `libsodium-sys-stable`, which builds its own
//! bundled copy) except the Noise transport state machine, which is `snow`. Nothing here invents a
//! primitive: each function is a thin, checked wrapper around one documented libsodium call, and
//! the few compositions (domain-separated signatures, identity bundles, fingerprints) are
//! spelled out where they are defined.
//!
//! Data flow: callers hand in bytes and typed keys; secrets stay inside zeroizing types whose
//! `Debug` prints `[REDACTED]`; every non-zero libsodium return becomes a [`CryptoError`].

mod address;
mod aead;
mod bound;
mod error;
mod fingerprint;
mod hash;
mod identity;
mod kem;
mod keys;
pub mod noise;
mod pake;
mod sealed;
mod sodium;
mod stream;

pub use address::{
    dht_signable, identity_address, parse_identity_address, DHT_RECORD_SALT, IDENTITY_ADDRESS_LEN,
    IDENTITY_ADDRESS_PREFIX,
};
pub use aead::{aead_decrypt, aead_encrypt, AeadKey, AEAD_NONCE_LEN, AEAD_TAG_LEN};
pub use bound::{transcript_bound, GuardOperation, HandshakeComponent};
pub use error::CryptoError;
pub use fingerprint::{fingerprint, link_key_fingerprint, safety_number};
pub use hash::{blake2b, blake2b_256, hkdf_sha256, hkdf_sha256_expand, hkdf_sha256_extract, Prk};
pub use identity::{
    sign_identity_kem, verify_identity_kem, IdentityBundle, IdentityKeys, SignedPrekey,
};
pub use kem::{
    KemSharedSecret, MlKemCiphertext, MlKemKeyPair, MlKemPublicKey, XWingCiphertext, XWingKeyPair,
    XWingPublicKey, KEM_SHARED_SECRET_LEN, MLKEM_CIPHERTEXT_LEN, MLKEM_ENC_RANDOMNESS_LEN,
    MLKEM_PUBLIC_KEY_LEN, MLKEM_SECRET_KEY_LEN, MLKEM_SEED_LEN, XWING_CIPHERTEXT_LEN,
    XWING_ENC_RANDOMNESS_LEN, XWING_PUBLIC_KEY_LEN, XWING_SECRET_KEY_LEN, XWING_SEED_LEN,
};
pub use keys::{
    AgreementKeyPair, AgreementPublicKey, SharedSecret, SignContext, Signature, SigningKeyPair,
    SigningPublicKey, SigningSeed, AGREEMENT_KEY_LEN, SIGNATURE_LEN, SIGNING_KEY_LEN,
};
pub use pake::{Pairing, PairingKey, PairingRole};
pub use sealed::{seal, SEAL_OVERHEAD};
pub use sodium::{constant_time_eq, init, random_array, random_bytes};
pub use stream::{
    PassphraseCost, PassphraseKey, StreamOpener, StreamSealer, PASSPHRASE_SALT_LEN,
    STREAM_CHUNK_OVERHEAD, STREAM_HEADER_LEN,
};

/// Re-exported so that callers can name the wrapper types without depending on the crates.
pub use secrecy::{ExposeSecret, SecretBox};
pub use zeroize::Zeroizing;
