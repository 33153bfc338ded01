//! Fingerprints and safety numbers, in the spirit of Signal's: each user's identity hashes to 30
//! decimal digits; the safety number of a conversation is both fingerprints, the lower first, so
//! that both sides compute the same 60 digits and can compare them out of band.

use crate::hash::blake2b;
use crate::identity::IdentityBundle;
use crate::CryptoError;

const FINGERPRINT_DOMAIN: &[u8] = b"SMVS-fingerprint-v1";

/// The 30-digit fingerprint of `username`'s identity keys.
pub fn fingerprint(username: &str, identity: &IdentityBundle) -> Result<String, CryptoError> {
    let name_len =
        [u8::try_from(username.len()).map_err(|_| CryptoError::Kdf("username too long"))?];
    let digest = blake2b(
        64,
        None,
        &[
            FINGERPRINT_DOMAIN,
            &name_len,
            username.as_bytes(),
            identity.signing_key.as_bytes(),
            identity.agreement_key.as_bytes(),
        ],
    )?;
    // Six 5-byte chunks, each reduced to 5 digits (bias below 1e-6, as in Signal's scheme).
    let mut out = String::with_capacity(30);
    for chunk in digest.chunks(5).take(6) {
        let mut value: u64 = 0;
        for byte in chunk {
            value = (value << 8) | u64::from(*byte);
        }
        out.push_str(&format!("{:05}", value % 100_000));
    }
    Ok(out)
}

/// What a person compares for a Noise key of a linked device's link (the device's, or its
/// host's device-port key): BLAKE2b-128 in eight groups of four hex digits. The host and the
/// device must show the same, so it is made here once.
pub fn link_key_fingerprint(key: &crate::AgreementPublicKey) -> Result<String, CryptoError> {
    let digest = blake2b(16, None, &[b"smvs device key", key.as_bytes()])?;
    Ok(hex::encode(digest)
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" "))
}

/// The 60-digit safety number of a conversation between two users, in 12 groups of five.
/// The same for both sides: the two fingerprints are put in a fixed order.
pub fn safety_number(
    user_a: &str,
    identity_a: &IdentityBundle,
    user_b: &str,
    identity_b: &IdentityBundle,
) -> Result<String, CryptoError> {
    let a = fingerprint(user_a, identity_a)?;
    let b = fingerprint(user_b, identity_b)?;
    let (first, second) = if a <= b { (a, b) } else { (b, a) };
    let digits = first + &second;
    let groups: Vec<&str> = (0..12).map(|i| &digits[i * 5..i * 5 + 5]).collect();
    Ok(groups.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::IdentityKeys;

    #[test]
    fn safety_number_is_symmetric_and_key_dependent() {
        let alice = IdentityKeys::generate().unwrap().bundle();
        let bob = IdentityKeys::generate().unwrap().bundle();
        let mallory = IdentityKeys::generate().unwrap().bundle();
        let ab = safety_number("alice", &alice, "bob", &bob).unwrap();
        assert_eq!(ab, safety_number("bob", &bob, "alice", &alice).unwrap());
        assert_eq!(ab.len(), 60 + 11);
        assert!(ab.chars().all(|c| c.is_ascii_digit() || c == ' '));
        assert_ne!(ab, safety_number("alice", &alice, "bob", &mallory).unwrap());
        assert_eq!(fingerprint("alice", &alice).unwrap().len(), 30);
        assert_ne!(
            fingerprint("alice", &alice).unwrap(),
            fingerprint("alicf", &alice).unwrap()
        );
    }
}
