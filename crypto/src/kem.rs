//! Key encapsulation: X-Wing (X25519 + ML-KEM-768, draft-connolly-cfrg-xwing-kem) and plain
//! ML-KEM-768 (FIPS 203), both libsodium's own (`crypto_kem_xwing_*`, `crypto_kem_mlkem768_*`,
//! libsodium 1.0.22).
//!
//! X-Wing is the hybrid the handshake and calls use: its shared secret stays secret as long as
//! either X25519 or ML-KEM-768 holds. Plain ML-KEM-768 is the post-quantum step of the ratchet,
//! which already has X25519 of its own.
//!
//! Both KEMs have the same shape, so one macro writes both wrappers: a public key, a key pair
//! whose secret is zeroed on drop, a ciphertext, and a 32-byte shared secret that is only ever
//! fed to HKDF.

use std::fmt;

use libsodium_sys as ffi;
use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroizing;

use crate::error::check_len;
use crate::sodium::{check, init};
use crate::CryptoError;

/// Every KEM here gives a 32-byte shared secret.
pub const KEM_SHARED_SECRET_LEN: usize = 32;

/// The output of an encapsulation or decapsulation. Feed it to HKDF; never use it as a key.
pub struct KemSharedSecret(Zeroizing<[u8; KEM_SHARED_SECRET_LEN]>);

impl KemSharedSecret {
    pub fn expose(&self) -> &[u8; KEM_SHARED_SECRET_LEN] {
        &self.0
    }
}

impl fmt::Debug for KemSharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KemSharedSecret([REDACTED])")
    }
}

macro_rules! kem {
    (
        $doc:literal,
        $public:ident, $pair:ident, $ciphertext:ident,
        $pk_len:ident = $pk_bytes:expr, $sk_len:ident = $sk_bytes:expr,
        $ct_len:ident = $ct_bytes:expr, $seed_len:ident = $seed_bytes:expr,
        $enc_rand_len:ident = $enc_rand_bytes:expr,
        seed_keypair = $seed_keypair:path,
        enc_deterministic = $enc_det:path, dec = $dec:path
    ) => {
        pub const $pk_len: usize = $pk_bytes;
        pub const $sk_len: usize = $sk_bytes;
        pub const $ct_len: usize = $ct_bytes;
        pub const $seed_len: usize = $seed_bytes;
        pub const $enc_rand_len: usize = $enc_rand_bytes;

        #[doc = concat!("A ", $doc, " public (encapsulation) key.")]
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct $public(Box<[u8; $pk_bytes]>);

        impl $public {
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
                check_len(concat!($doc, " public key"), bytes, $pk_bytes)?;
                let mut key = Box::new([0u8; $pk_bytes]);
                key.copy_from_slice(bytes);
                Ok($public(key))
            }

            pub fn as_bytes(&self) -> &[u8; $pk_bytes] {
                &self.0
            }

            /// Encapsulates a fresh shared secret to this key (randomness from libsodium's
            /// CSPRNG, as the library's own `enc` draws it).
            pub fn encapsulate(&self) -> Result<($ciphertext, KemSharedSecret), CryptoError> {
                let mut randomness = Zeroizing::new([0u8; $enc_rand_bytes]);
                crate::random_bytes(&mut randomness[..]);
                self.encapsulate_deterministic(&randomness[..])
            }

            /// Encapsulation with caller-supplied randomness, which must be fresh from a CSPRNG
            /// for every call (reusing it reuses the shared secret). The session protocol draws
            /// all its randomness from one source so that its vectors can be frozen; the
            /// known-answer tests use it too.
            pub fn encapsulate_deterministic(
                &self,
                randomness: &[u8],
            ) -> Result<($ciphertext, KemSharedSecret), CryptoError> {
                init()?;
                check_len(
                    concat!($doc, " encapsulation randomness"),
                    randomness,
                    $enc_rand_bytes,
                )?;
                let mut ct = Box::new([0u8; $ct_bytes]);
                let mut ss = Zeroizing::new([0u8; KEM_SHARED_SECRET_LEN]);
                // SAFETY: every buffer has the exact length libsodium's header names.
                let rc = unsafe {
                    $enc_det(
                        ct.as_mut_ptr(),
                        ss.as_mut_ptr(),
                        self.0.as_ptr(),
                        randomness.as_ptr(),
                    )
                };
                check(
                    rc,
                    CryptoError::InvalidKey {
                        what: concat!($doc, " public key"),
                    },
                )?;
                Ok(($ciphertext(ct), KemSharedSecret(ss)))
            }
        }

        impl fmt::Debug for $public {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    concat!(stringify!($public), "({}…)"),
                    hex::encode(&self.0[..8])
                )
            }
        }

        #[doc = concat!("A ", $doc, " ciphertext (an encapsulation).")]
        #[derive(Clone, PartialEq, Eq)]
        pub struct $ciphertext(Box<[u8; $ct_bytes]>);

        impl $ciphertext {
            pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
                check_len(concat!($doc, " ciphertext"), bytes, $ct_bytes)?;
                let mut ct = Box::new([0u8; $ct_bytes]);
                ct.copy_from_slice(bytes);
                Ok($ciphertext(ct))
            }

            pub fn as_bytes(&self) -> &[u8; $ct_bytes] {
                &self.0
            }
        }

        impl fmt::Debug for $ciphertext {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    concat!(stringify!($ciphertext), "({}…)"),
                    hex::encode(&self.0[..8])
                )
            }
        }

        #[doc = concat!("A ", $doc, " key pair. The secret is zeroed on drop and never printed.")]
        pub struct $pair {
            public: $public,
            secret: SecretBox<[u8; $sk_bytes]>,
            seed: SecretBox<[u8; $seed_bytes]>,
        }

        impl $pair {
            pub fn generate() -> Result<Self, CryptoError> {
                let mut seed = Zeroizing::new([0u8; $seed_bytes]);
                crate::random_bytes(&mut seed[..]);
                Self::from_seed(&seed[..])
            }

            /// The key pair a seed determines (how keys are stored, and the KATs' input).
            pub fn from_seed(seed: &[u8]) -> Result<Self, CryptoError> {
                init()?;
                check_len(concat!($doc, " seed"), seed, $seed_bytes)?;
                let mut public = Box::new([0u8; $pk_bytes]);
                let mut secret = Box::new([0u8; $sk_bytes]);
                // SAFETY: every buffer has the exact length libsodium's header names.
                let rc = unsafe {
                    $seed_keypair(public.as_mut_ptr(), secret.as_mut_ptr(), seed.as_ptr())
                };
                check(
                    rc,
                    CryptoError::InvalidKey {
                        what: concat!($doc, " seed"),
                    },
                )?;
                let mut kept = Box::new([0u8; $seed_bytes]);
                kept.copy_from_slice(seed);
                Ok($pair {
                    public: $public(public),
                    secret: SecretBox::new(secret),
                    seed: SecretBox::new(kept),
                })
            }

            /// The seed the key pair is made from: what a store keeps (sealed) to make it again.
            pub fn expose_seed(&self) -> &[u8; $seed_bytes] {
                self.seed.expose_secret()
            }

            pub fn public(&self) -> &$public {
                &self.public
            }

            /// Recovers the shared secret of `ciphertext`. ML-KEM rejects implicitly: a forged
            /// or altered ciphertext gives an unrelated secret, not an error, so whatever key it
            /// feeds must be confirmed (by an AEAD tag) before anything is trusted.
            pub fn decapsulate(
                &self,
                ciphertext: &$ciphertext,
            ) -> Result<KemSharedSecret, CryptoError> {
                init()?;
                let mut ss = Zeroizing::new([0u8; KEM_SHARED_SECRET_LEN]);
                // SAFETY: every buffer has the exact length libsodium's header names.
                let rc = unsafe {
                    $dec(
                        ss.as_mut_ptr(),
                        ciphertext.0.as_ptr(),
                        self.secret.expose_secret().as_ptr(),
                    )
                };
                check(rc, CryptoError::Decrypt)?;
                Ok(KemSharedSecret(ss))
            }
        }

        impl fmt::Debug for $pair {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($pair))
                    .field("public", &self.public)
                    .field("secret", &"[REDACTED]")
                    .finish()
            }
        }
    };
}

kem!(
    "X-Wing",
    XWingPublicKey,
    XWingKeyPair,
    XWingCiphertext,
    XWING_PUBLIC_KEY_LEN = 1216,
    XWING_SECRET_KEY_LEN = 32,
    XWING_CIPHERTEXT_LEN = 1120,
    XWING_SEED_LEN = 32,
    XWING_ENC_RANDOMNESS_LEN = 64,
    seed_keypair = ffi::crypto_kem_xwing_seed_keypair,
    enc_deterministic = ffi::crypto_kem_xwing_enc_deterministic,
    dec = ffi::crypto_kem_xwing_dec
);

kem!(
    "ML-KEM-768",
    MlKemPublicKey,
    MlKemKeyPair,
    MlKemCiphertext,
    MLKEM_PUBLIC_KEY_LEN = 1184,
    MLKEM_SECRET_KEY_LEN = 2400,
    MLKEM_CIPHERTEXT_LEN = 1088,
    MLKEM_SEED_LEN = 64,
    MLKEM_ENC_RANDOMNESS_LEN = 32,
    seed_keypair = ffi::crypto_kem_mlkem768_seed_keypair,
    enc_deterministic = ffi::crypto_kem_mlkem768_enc_deterministic,
    dec = ffi::crypto_kem_mlkem768_dec
);

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// The lengths here are the ones libsodium was built with.
    #[test]
    fn lengths_match_libsodium() {
        assert_eq!(
            XWING_PUBLIC_KEY_LEN,
            ffi::crypto_kem_xwing_PUBLICKEYBYTES as usize
        );
        assert_eq!(
            XWING_SECRET_KEY_LEN,
            ffi::crypto_kem_xwing_SECRETKEYBYTES as usize
        );
        assert_eq!(
            XWING_CIPHERTEXT_LEN,
            ffi::crypto_kem_xwing_CIPHERTEXTBYTES as usize
        );
        assert_eq!(XWING_SEED_LEN, ffi::crypto_kem_xwing_SEEDBYTES as usize);
        assert_eq!(
            MLKEM_PUBLIC_KEY_LEN,
            ffi::crypto_kem_mlkem768_PUBLICKEYBYTES as usize
        );
        assert_eq!(
            MLKEM_SECRET_KEY_LEN,
            ffi::crypto_kem_mlkem768_SECRETKEYBYTES as usize
        );
        assert_eq!(
            MLKEM_CIPHERTEXT_LEN,
            ffi::crypto_kem_mlkem768_CIPHERTEXTBYTES as usize
        );
        assert_eq!(MLKEM_SEED_LEN, ffi::crypto_kem_mlkem768_SEEDBYTES as usize);
        for len in [
            ffi::crypto_kem_xwing_SHAREDSECRETBYTES,
            ffi::crypto_kem_mlkem768_SHAREDSECRETBYTES,
        ] {
            assert_eq!(len as usize, KEM_SHARED_SECRET_LEN);
        }
    }

    /// X-Wing known answers: the draft's test vectors (seed, encapsulation randomness, a prefix
    /// of the encapsulation key and of the ciphertext, the shared secret), as libsodium's own
    /// test suite (`test/default/kem_xwing.c`) carries them.
    #[test]
    fn xwing_known_answers() {
        let vectors = [
            (
                "00",
                "64",
                "3d209f716752f6408e7f89bceef97ac388530045377927644ef046c0a7cae978",
                "d81018a94f8078e02105beaa814e003390befa4589bb614f7739",
                "e5ba94031ea6efd69c09c254f6d9783136ba6037e2d4c43bcccf19d6f3f4343a",
            ),
            (
                "01",
                "65",
                "ec7b50cddc8360f98b189bac73d395ef947b37d8453886a253269f7b18b9eb78",
                "600ecf4026683898d0e339eeea9ebd437a4a802952bf32bfa326",
                "750300db25bff9620e893c2c6fcab9bf04d7f2e543b5b39420485626fa274908",
            ),
            (
                "02",
                "66",
                "08118d8819772292c976ec971ee3039195800c823544484595cc63450b9db941",
                "413c55d5710bae6376761dada807daffd4dc45f9f70d825e0d46",
                "87292f18b2e7af74bb8839ddee15e832d2f4bfac14dc84f824906d951436aafa",
            ),
        ];
        for (seed, randomness, ek_prefix, ct_prefix, ss) in vectors {
            let pair = XWingKeyPair::from_seed(&unhex(&seed.repeat(32))).unwrap();
            assert_eq!(pair.public().as_bytes()[..32], unhex(ek_prefix)[..]);
            let (ct, sent) = pair
                .public()
                .encapsulate_deterministic(&unhex(&randomness.repeat(64)))
                .unwrap();
            assert_eq!(ct.as_bytes()[..26], unhex(ct_prefix)[..]);
            assert_eq!(sent.expose()[..], unhex(ss)[..]);
            assert_eq!(pair.decapsulate(&ct).unwrap().expose()[..], unhex(ss)[..]);
        }
    }

    /// ML-KEM-768 known answers: NIST's vectors (d, z, m; prefixes of ek and ct; the shared
    /// secret), as libsodium's own test suite (`test/default/kem_mlkem768.c`) carries them.
    #[test]
    fn mlkem768_known_answers() {
        let vectors = [
            (
                "7c9935a0b07694aa0c6d10e4db6b1add2fd81a25ccb148032dcd739936737f2d",
                "b505d7cfad1b497499323c8686325e4792f267aafa3f87ca60d01cb54f29202a",
                "a8e651a1e685f22478a8954f007bc7711b930772c78f092e82878e3e937f3679",
                "eb4a7c66ef4eba2ddb38c88d8bc706b1d639002198172a7b1942eca8f6c001ba",
                "3b835a5fa145387a0819c4daa1e65fbe2ba5400afcd640bbddbbe3585f24bedd",
                "ac865f839fef1bf3d528dd7504bed2f64b5502b0fa81d1c32763658e4aac5037",
            ),
            (
                "d60b93492a1d8c1c7ba6fc0b733137f3406cee8110a93f170e7a78658af326d9",
                "588522d326e7f105f11c4e8d97e119e193af42dc28409f4f7572ada538b52c1f",
                "93c140f6c47b7e53b96f72bb18447d277cc021c144a0f7a35e30b57386a78ac9",
                "46401015603c5e2174cb94ac742e836b516e2d570f15de0b9d0204d79ac64ba3",
                "4ddf4e2919943817ab3b4cb085daefe5fec774d83d96c2cee74149e25addd15f",
                "950492e940bfa86ac28183de02efc04017d1755106a854fbb2ac68174f705b41",
            ),
        ];
        for (d, z, ek_prefix, m, ct_prefix, ss) in vectors {
            let pair = MlKemKeyPair::from_seed(&[unhex(d), unhex(z)].concat()).unwrap();
            assert_eq!(pair.public().as_bytes()[..32], unhex(ek_prefix)[..]);
            let (ct, sent) = pair.public().encapsulate_deterministic(&unhex(m)).unwrap();
            assert_eq!(ct.as_bytes()[..32], unhex(ct_prefix)[..]);
            assert_eq!(sent.expose()[..], unhex(ss)[..]);
            assert_eq!(pair.decapsulate(&ct).unwrap().expose()[..], unhex(ss)[..]);
        }
    }

    #[test]
    fn random_keys_agree_and_a_changed_ciphertext_does_not() {
        let bob = XWingKeyPair::generate().unwrap();
        let (ct, ss) = bob.public().encapsulate().unwrap();
        assert_eq!(bob.decapsulate(&ct).unwrap().expose(), ss.expose());
        let mut altered = ct.as_bytes().to_vec();
        altered[100] ^= 1;
        let altered = XWingCiphertext::from_bytes(&altered).unwrap();
        assert_ne!(bob.decapsulate(&altered).unwrap().expose(), ss.expose());
        let other = XWingKeyPair::generate().unwrap();
        assert_ne!(other.decapsulate(&ct).unwrap().expose(), ss.expose());

        let carol = MlKemKeyPair::generate().unwrap();
        let (ct, ss) = carol.public().encapsulate().unwrap();
        assert_eq!(carol.decapsulate(&ct).unwrap().expose(), ss.expose());
        assert!(MlKemCiphertext::from_bytes(&ct.as_bytes()[1..]).is_err());
        assert!(XWingPublicKey::from_bytes(&[0u8; 32]).is_err());
        assert!(!format!("{carol:?}").contains(&hex::encode(&ss.expose()[..8])));
    }
}
