//! Ed25519 signing keys and X25519 key-agreement keys.
//!
//! Signatures are domain-separated: what is signed is
//! `"SMVS-v1" 0x00 context-label 0x00 message`, so a signature made for one purpose (say a
//! directory record) can never be replayed as another (say a key-rotation request).

use std::fmt;

use libsodium_sys as ffi;
use secrecy::{ExposeSecret, SecretBox};
use zeroize::Zeroizing;

use crate::error::check_len;
use crate::sodium::{check, init};
use crate::CryptoError;

pub const SIGNING_KEY_LEN: usize = 32;
pub const SIGNATURE_LEN: usize = 64;
pub const AGREEMENT_KEY_LEN: usize = 32;
const ED25519_SECRET_LEN: usize = 64;

/// What a signature is for. Each variant has a fixed label that is part of the signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignContext {
    /// An identity's Ed25519 key vouching for its own X25519 key.
    IdentityAgreementKey,
    /// An identity vouching for its host's transport key.
    TransportCertificate,
    /// A registration request sent to a directory.
    DirectoryRegistration,
    /// A directory's answer to a look-up.
    DirectoryRecord,
    /// An old identity authorising its replacement.
    KeyRotation,
    /// An identity asking its directory to delete its record. Made only by the operator's
    /// `smvs-keyguard deregister`, never over keyguard's socket.
    Deregistration,
    /// An identity's Ed25519 key vouching for its X-Wing key (session v2), as published in
    /// the directory.
    IdentityKemKey,
    /// An identity's Ed25519 key vouching for a medium-term session prekey (session v2: an
    /// X25519 key and an X-Wing key, with an id and an expiry).
    SessionPrekey,
    /// An identity stating where its host is now (pushed to contacts' hosts when it moves).
    HostAddress,
    /// An identity leaving one directory for another (the "moved" statement the old one
    /// serves from then on).
    DirectoryMove,
    /// A directory's head of its key log: an epoch's root hash and the log's VRF key.
    LogHead,
}

impl SignContext {
    pub fn label(self) -> &'static str {
        match self {
            SignContext::IdentityAgreementKey => "identity-agreement-key",
            SignContext::TransportCertificate => "transport-certificate",
            SignContext::DirectoryRegistration => "directory-registration",
            SignContext::DirectoryRecord => "directory-record",
            SignContext::KeyRotation => "key-rotation",
            SignContext::Deregistration => "deregistration",
            SignContext::IdentityKemKey => "identity-kem-key",
            SignContext::SessionPrekey => "session-prekey",
            SignContext::HostAddress => "host-address",
            SignContext::DirectoryMove => "directory-move",
            SignContext::LogHead => "log-head",
        }
    }

    fn framed(self, message: &[u8]) -> Vec<u8> {
        let label = self.label().as_bytes();
        let mut out = Vec::with_capacity(9 + label.len() + message.len());
        out.extend_from_slice(b"SMVS-v1\0");
        out.extend_from_slice(label);
        out.push(0);
        out.extend_from_slice(message);
        out
    }
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SigningPublicKey([u8; SIGNING_KEY_LEN]);

impl SigningPublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        check_len("Ed25519 public key", bytes, SIGNING_KEY_LEN)?;
        let mut key = [0u8; SIGNING_KEY_LEN];
        key.copy_from_slice(bytes);
        Ok(SigningPublicKey(key))
    }

    pub fn as_bytes(&self) -> &[u8; SIGNING_KEY_LEN] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(text.trim()).map_err(|_| CryptoError::InvalidKey {
            what: "Ed25519 public key (hex)",
        })?;
        Self::from_bytes(&bytes)
    }

    /// Verifies `signature` over `message` made for `context`.
    pub fn verify(
        &self,
        context: SignContext,
        message: &[u8],
        signature: &Signature,
    ) -> Result<(), CryptoError> {
        verify_raw(self, &context.framed(message), signature).map_err(|_| {
            CryptoError::BadSignature {
                context: context.label(),
            }
        })
    }

    /// The X25519 public key that corresponds to this Ed25519 key (libsodium's documented
    /// birational map). Used so that one pinned key can authenticate a Noise handshake.
    pub fn to_agreement_public(&self) -> Result<AgreementPublicKey, CryptoError> {
        init()?;
        let mut out = [0u8; AGREEMENT_KEY_LEN];
        // SAFETY: output and input buffers are exactly 32 bytes.
        let rc =
            unsafe { ffi::crypto_sign_ed25519_pk_to_curve25519(out.as_mut_ptr(), self.0.as_ptr()) };
        check(
            rc,
            CryptoError::InvalidKey {
                what: "Ed25519 public key",
            },
        )?;
        Ok(AgreementPublicKey(out))
    }
}

impl fmt::Debug for SigningPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningPublicKey({})", self.to_hex())
    }
}

pub(crate) fn verify_raw(
    key: &SigningPublicKey,
    message: &[u8],
    signature: &Signature,
) -> Result<(), CryptoError> {
    init()?;
    // SAFETY: signature is 64 bytes, key 32 bytes, message pointer/length describe `message`.
    let rc = unsafe {
        ffi::crypto_sign_verify_detached(
            signature.0.as_ptr(),
            message.as_ptr(),
            message.len() as u64,
            key.0.as_ptr(),
        )
    };
    check(rc, CryptoError::BadSignature { context: "raw" })
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; SIGNATURE_LEN]);

impl Signature {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        check_len("Ed25519 signature", bytes, SIGNATURE_LEN)?;
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(bytes);
        Ok(Signature(sig))
    }

    pub fn as_bytes(&self) -> &[u8; SIGNATURE_LEN] {
        &self.0
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..8]))
    }
}

/// The 32-byte seed an Ed25519 key pair is made from: the whole secret.
pub struct SigningSeed(SecretBox<[u8; 32]>);

impl SigningSeed {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        check_len("Ed25519 seed", bytes, 32)?;
        let mut seed = Box::new([0u8; 32]);
        seed.copy_from_slice(bytes);
        Ok(SigningSeed(SecretBox::new(seed)))
    }

    pub fn generate() -> Self {
        let mut seed = Box::new([0u8; 32]);
        crate::random_bytes(&mut seed[..]);
        SigningSeed(SecretBox::new(seed))
    }

    /// The raw seed, for the one component that stores it (a key file written 0600).
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
}

impl fmt::Debug for SigningSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSeed([REDACTED])")
    }
}

/// An Ed25519 key pair. The secret half is zeroed on drop and never printed.
pub struct SigningKeyPair {
    public: SigningPublicKey,
    secret: SecretBox<[u8; ED25519_SECRET_LEN]>,
}

impl SigningKeyPair {
    pub fn generate() -> Result<Self, CryptoError> {
        Self::from_seed(&SigningSeed::generate())
    }

    pub fn from_seed(seed: &SigningSeed) -> Result<Self, CryptoError> {
        init()?;
        let mut public = [0u8; SIGNING_KEY_LEN];
        let mut secret = Box::new([0u8; ED25519_SECRET_LEN]);
        // SAFETY: buffers have libsodium's documented sizes (32, 64, 32).
        let rc = unsafe {
            ffi::crypto_sign_seed_keypair(
                public.as_mut_ptr(),
                secret.as_mut_ptr(),
                seed.expose().as_ptr(),
            )
        };
        let secret = SecretBox::new(secret);
        check(
            rc,
            CryptoError::InvalidKey {
                what: "Ed25519 seed",
            },
        )?;
        Ok(SigningKeyPair {
            public: SigningPublicKey(public),
            secret,
        })
    }

    pub fn public(&self) -> SigningPublicKey {
        self.public
    }

    /// The seed this key pair was made from (the first half of libsodium's secret key).
    pub fn seed(&self) -> SigningSeed {
        let mut seed = Box::new([0u8; 32]);
        seed.copy_from_slice(&self.secret.expose_secret()[..32]);
        SigningSeed(SecretBox::new(seed))
    }

    /// Signs `message` for `context` (see the module comment for the exact bytes).
    pub fn sign(&self, context: SignContext, message: &[u8]) -> Signature {
        self.sign_raw(&context.framed(message))
    }

    pub(crate) fn sign_raw(&self, message: &[u8]) -> Signature {
        let mut sig = [0u8; SIGNATURE_LEN];
        // SAFETY: sig is 64 bytes, the secret key 64 bytes, message pointer/length match.
        // crypto_sign_detached cannot fail for a well-formed secret key, which the type
        // guarantees; its return value is therefore ignored on purpose.
        unsafe {
            ffi::crypto_sign_detached(
                sig.as_mut_ptr(),
                std::ptr::null_mut(),
                message.as_ptr(),
                message.len() as u64,
                self.secret.expose_secret().as_ptr(),
            );
        }
        Signature(sig)
    }

    /// The X25519 secret that corresponds to this Ed25519 key; see
    /// [`SigningPublicKey::to_agreement_public`].
    pub fn to_agreement_keypair(&self) -> Result<AgreementKeyPair, CryptoError> {
        init()?;
        let mut secret = Box::new([0u8; AGREEMENT_KEY_LEN]);
        // SAFETY: output 32 bytes, input is libsodium's 64-byte Ed25519 secret key.
        let rc = unsafe {
            ffi::crypto_sign_ed25519_sk_to_curve25519(
                secret.as_mut_ptr(),
                self.secret.expose_secret().as_ptr(),
            )
        };
        let secret = SecretBox::new(secret);
        check(
            rc,
            CryptoError::InvalidKey {
                what: "Ed25519 secret key",
            },
        )?;
        AgreementKeyPair::from_secret(secret)
    }
}

impl fmt::Debug for SigningKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeyPair")
            .field("public", &self.public)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AgreementPublicKey(pub(crate) [u8; AGREEMENT_KEY_LEN]);

impl AgreementPublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        check_len("X25519 public key", bytes, AGREEMENT_KEY_LEN)?;
        let mut key = [0u8; AGREEMENT_KEY_LEN];
        key.copy_from_slice(bytes);
        Ok(AgreementPublicKey(key))
    }

    pub fn as_bytes(&self) -> &[u8; AGREEMENT_KEY_LEN] {
        &self.0
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for AgreementPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AgreementPublicKey({})", self.to_hex())
    }
}

/// An X25519 key pair. The secret half is zeroed on drop and never printed.
pub struct AgreementKeyPair {
    public: AgreementPublicKey,
    secret: SecretBox<[u8; AGREEMENT_KEY_LEN]>,
}

impl AgreementKeyPair {
    pub fn generate() -> Result<Self, CryptoError> {
        let mut secret = Box::new([0u8; AGREEMENT_KEY_LEN]);
        crate::random_bytes(&mut secret[..]);
        Self::from_secret(SecretBox::new(secret))
    }

    /// Rebuilds a key pair from its 32-byte secret scalar (as stored in a key file).
    pub fn from_secret_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        check_len("X25519 secret key", bytes, AGREEMENT_KEY_LEN)?;
        let mut secret = Box::new([0u8; AGREEMENT_KEY_LEN]);
        secret.copy_from_slice(bytes);
        Self::from_secret(SecretBox::new(secret))
    }

    fn from_secret(secret: SecretBox<[u8; AGREEMENT_KEY_LEN]>) -> Result<Self, CryptoError> {
        init()?;
        let mut public = [0u8; AGREEMENT_KEY_LEN];
        // SAFETY: both buffers are 32 bytes.
        let rc = unsafe {
            ffi::crypto_scalarmult_base(public.as_mut_ptr(), secret.expose_secret().as_ptr())
        };
        check(
            rc,
            CryptoError::InvalidKey {
                what: "X25519 secret key",
            },
        )?;
        Ok(AgreementKeyPair {
            public: AgreementPublicKey(public),
            secret,
        })
    }

    pub fn public(&self) -> AgreementPublicKey {
        self.public
    }

    /// The raw secret scalar, for the one component that stores it (a key file written 0600)
    /// and for the Noise handshake inside this crate.
    pub fn expose_secret(&self) -> &[u8; AGREEMENT_KEY_LEN] {
        self.secret.expose_secret()
    }

    /// X25519(our secret, their public). Fails on a low-order peer key (all-zero output).
    pub fn agree(&self, theirs: &AgreementPublicKey) -> Result<SharedSecret, CryptoError> {
        scalarmult(self.secret.expose_secret(), &theirs.0)
    }

    pub(crate) fn secret_ptr(&self) -> *const u8 {
        self.secret.expose_secret().as_ptr()
    }
}

impl fmt::Debug for AgreementKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgreementKeyPair")
            .field("public", &self.public)
            .field("secret", &"[REDACTED]")
            .finish()
    }
}

pub(crate) fn scalarmult(
    secret: &[u8; AGREEMENT_KEY_LEN],
    public: &[u8; AGREEMENT_KEY_LEN],
) -> Result<SharedSecret, CryptoError> {
    init()?;
    let mut out = Zeroizing::new([0u8; AGREEMENT_KEY_LEN]);
    // SAFETY: all three buffers are 32 bytes. libsodium returns -1 when the result is the
    // all-zero point (a low-order input), which we report as an error.
    let rc = unsafe { ffi::crypto_scalarmult(out.as_mut_ptr(), secret.as_ptr(), public.as_ptr()) };
    check(rc, CryptoError::WeakKeyAgreement)?;
    Ok(SharedSecret(out))
}

/// The raw output of an X25519 agreement. Feed it to HKDF; never use it as a key directly.
pub struct SharedSecret(Zeroizing<[u8; AGREEMENT_KEY_LEN]>);

impl SharedSecret {
    pub fn expose(&self) -> &[u8; AGREEMENT_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SharedSecret([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    /// RFC 8032 §7.1, TEST 1 (empty message) and TEST 2 (one byte).
    #[test]
    fn ed25519_rfc8032_vectors() {
        let cases = [
            (
                "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
                "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
                "",
                "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
            ),
            (
                "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
                "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
                "72",
                "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
            ),
        ];
        for (seed, public, msg, sig) in cases {
            let kp =
                SigningKeyPair::from_seed(&SigningSeed::from_bytes(&h(seed)).unwrap()).unwrap();
            assert_eq!(kp.public().as_bytes().to_vec(), h(public));
            let made = kp.sign_raw(&h(msg));
            assert_eq!(made.as_bytes().to_vec(), h(sig));
            verify_raw(&kp.public(), &h(msg), &made).unwrap();
        }
    }

    /// RFC 7748 §5.2 (first vector) and §6.1 (Alice and Bob).
    #[test]
    fn x25519_rfc7748_vectors() {
        let scalar: [u8; 32] =
            h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4")
                .try_into()
                .unwrap();
        let u: [u8; 32] = h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c")
            .try_into()
            .unwrap();
        let out = scalarmult(&scalar, &u).unwrap();
        assert_eq!(
            out.expose().to_vec(),
            h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
        );

        let alice = AgreementKeyPair::from_secret_bytes(&h(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ))
        .unwrap();
        let bob = AgreementKeyPair::from_secret_bytes(&h(
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        ))
        .unwrap();
        assert_eq!(
            alice.public().as_bytes().to_vec(),
            h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
        assert_eq!(
            bob.public().as_bytes().to_vec(),
            h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
        );
        let shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(
            alice.agree(&bob.public()).unwrap().expose().to_vec(),
            shared
        );
        assert_eq!(
            bob.agree(&alice.public()).unwrap().expose().to_vec(),
            shared
        );
    }

    #[test]
    fn low_order_point_is_refused() {
        let kp = AgreementKeyPair::generate().unwrap();
        let zero = AgreementPublicKey([0u8; 32]);
        assert_eq!(kp.agree(&zero).unwrap_err(), CryptoError::WeakKeyAgreement);
    }

    #[test]
    fn signatures_are_bound_to_their_context() {
        let kp = SigningKeyPair::generate().unwrap();
        let sig = kp.sign(SignContext::DirectoryRecord, b"record");
        kp.public()
            .verify(SignContext::DirectoryRecord, b"record", &sig)
            .unwrap();
        assert!(kp
            .public()
            .verify(SignContext::KeyRotation, b"record", &sig)
            .is_err());
        assert!(kp
            .public()
            .verify(SignContext::DirectoryRecord, b"recorD", &sig)
            .is_err());
    }

    #[test]
    fn ed25519_to_x25519_halves_match() {
        let kp = SigningKeyPair::generate().unwrap();
        let x = kp.to_agreement_keypair().unwrap();
        assert_eq!(x.public(), kp.public().to_agreement_public().unwrap());
    }

    #[test]
    fn seed_round_trips() {
        let kp = SigningKeyPair::generate().unwrap();
        let again = SigningKeyPair::from_seed(&kp.seed()).unwrap();
        assert_eq!(kp.public(), again.public());
    }

    #[test]
    fn no_debug_output_shows_a_secret() {
        let kp = SigningKeyPair::generate().unwrap();
        let seed = kp.seed();
        let seed_hex = hex::encode(seed.expose());
        let x = AgreementKeyPair::generate().unwrap();
        let x_hex = hex::encode(x.expose_secret());
        let shared = x
            .agree(&AgreementKeyPair::generate().unwrap().public())
            .unwrap();
        let shared_hex = hex::encode(shared.expose());
        let printed = format!("{kp:?} {seed:?} {x:?} {x:#?} {shared:?}");
        assert!(printed.contains("REDACTED"));
        for secret in [&seed_hex, &x_hex, &shared_hex] {
            assert!(
                !printed.contains(secret.as_str()),
                "secret leaked in {printed}"
            );
            assert!(
                !printed.contains(&secret[..16]),
                "secret prefix leaked in {printed}"
            );
        }
    }
}
