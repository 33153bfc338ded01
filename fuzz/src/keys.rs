//! The fixed keys the fuzz targets open, verify and answer with, and the seed test
//! (`tests/tests/fuzz_corpus.rs`, which includes this file) makes its inputs with. Fixed, not
//! random per run, so that a crash found on one machine reproduces on another.

use smvs_crypto::{AeadKey, AgreementKeyPair, IdentityKeys, SigningKeyPair, SigningSeed};

/// The secret bytes of every fixed key (each key type takes them in its own way).
pub const DIRECTORY_SEED: [u8; 32] = [0x11; 32];
pub const HOST_TRANSPORT_SECRET: [u8; 32] = [0x22; 32];
pub const PEER_TRANSPORT_SECRET: [u8; 32] = [0x23; 32];
pub const SESSION_KEY: [u8; 32] = [0x33; 32];
pub const MEDIA_KEY: [u8; 32] = [0x44; 32];
pub const IDENTITY_SEED: [u8; 32] = [0x55; 32];
pub const IDENTITY_AGREEMENT_SECRET: [u8; 32] = [0x56; 32];

/// Panics are what the fuzzer looks for, but key set-up failing is not a finding: say so.
fn fixed<T, E: std::fmt::Debug>(what: &str, r: Result<T, E>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => unreachable!("fixed {what} key: {e:?}"),
    }
}

pub fn directory_key() -> SigningKeyPair {
    let seed = fixed("directory", SigningSeed::from_bytes(&DIRECTORY_SEED));
    fixed("directory", SigningKeyPair::from_seed(&seed))
}

pub fn host_transport_key() -> AgreementKeyPair {
    fixed(
        "transport",
        AgreementKeyPair::from_secret_bytes(&HOST_TRANSPORT_SECRET),
    )
}

pub fn peer_transport_key() -> AgreementKeyPair {
    fixed(
        "transport",
        AgreementKeyPair::from_secret_bytes(&PEER_TRANSPORT_SECRET),
    )
}

pub fn session_key() -> AeadKey {
    fixed("session", AeadKey::from_bytes(&SESSION_KEY))
}

pub fn media_key() -> AeadKey {
    fixed("media", AeadKey::from_bytes(&MEDIA_KEY))
}

pub fn identity() -> IdentityKeys {
    let seed = fixed("identity", SigningSeed::from_bytes(&IDENTITY_SEED));
    IdentityKeys {
        signing: fixed("identity", SigningKeyPair::from_seed(&seed)),
        agreement: fixed(
            "identity",
            AgreementKeyPair::from_secret_bytes(&IDENTITY_AGREEMENT_SECRET),
        ),
    }
}
