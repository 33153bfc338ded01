//! An identity address (`smvs:…`) and the signature of a host's record in the DHT.
//!
//! An identity address is the identity's Ed25519 key with a 3-byte checksum, in lowercase
//! base32 (RFC 4648's alphabet, no padding): 35 bytes, 56 characters, after `smvs:`. It says
//! who the user is, not where: a look-up in the DHT finds the record the identity signed.
//! The checksum (BLAKE2b of a label and the key) catches a mistyped or truncated address
//! before anything is looked up; it is no security boundary (the key is).
//!
//! The DHT (BitTorrent's Mainline DHT, BEP 44 mutable items) stores a value under
//! SHA-1(key || salt) and keeps it only with the key's Ed25519 signature over the bencoded
//! `4:salt<n>:<salt>3:seqi<seq>e1:v<n>:<value>`. That is the one thing an identity signs
//! outside [`crate::SignContext`]'s framing; it cannot be mistaken for one of ours (those begin
//! `SMVS-v1\0`, these `4:salt`), and the salt names what is signed.

use crate::error::CryptoError;
use crate::hash::blake2b;
use crate::keys::{verify_raw, Signature, SigningKeyPair, SigningPublicKey};

/// What every identity address begins with.
pub const IDENTITY_ADDRESS_PREFIX: &str = "smvs:";
/// The length of an identity address, prefix included.
pub const IDENTITY_ADDRESS_LEN: usize = IDENTITY_ADDRESS_PREFIX.len() + 56;
/// The BEP 44 salt of a host record: what the identity's signature is for.
pub const DHT_RECORD_SALT: &[u8] = b"smvs-host-record-v1";

const CHECKSUM_LEN: usize = 3;
const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

fn checksum(key: &[u8; 32]) -> Result<[u8; CHECKSUM_LEN], CryptoError> {
    // BLAKE2b's shortest output is 16 bytes; the first three are the checksum.
    let digest = blake2b(16, None, &[b"smvs identity address", key])?;
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&digest[..CHECKSUM_LEN]);
    Ok(out)
}

/// `identity`'s address, `smvs:` and 56 base32 characters.
pub fn identity_address(identity: &SigningPublicKey) -> String {
    let key = identity.as_bytes();
    // BLAKE2b cannot fail once libsodium is up, which a key's existence implies.
    let check = checksum(key).unwrap_or_default();
    let mut bytes = key.to_vec();
    bytes.extend_from_slice(&check);
    let mut out = String::with_capacity(IDENTITY_ADDRESS_LEN);
    out.push_str(IDENTITY_ADDRESS_PREFIX);
    // 35 bytes are 280 bits: exactly 56 groups of 5.
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    out
}

/// The identity key an address names; a wrong length, character or checksum is an error.
pub fn parse_identity_address(text: &str) -> Result<SigningPublicKey, CryptoError> {
    let bad = || CryptoError::InvalidKey {
        what: "identity address (smvs: and 56 characters a-z, 2-7)",
    };
    let body = text
        .strip_prefix(IDENTITY_ADDRESS_PREFIX)
        .filter(|b| b.len() == IDENTITY_ADDRESS_LEN - IDENTITY_ADDRESS_PREFIX.len())
        .ok_or_else(bad)?;
    let mut bytes = Vec::with_capacity(35);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in body.bytes() {
        let value = ALPHABET.iter().position(|&a| a == c).ok_or_else(bad)? as u32;
        acc = (acc << 5) | value;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
        }
    }
    let (key, check) = bytes.split_at(32);
    let mut key_bytes = [0u8; 32];
    key_bytes.copy_from_slice(key);
    if checksum(&key_bytes)? != check {
        return Err(CryptoError::InvalidKey {
            what: "identity address (its checksum does not match: a character is wrong)",
        });
    }
    SigningPublicKey::from_bytes(&key_bytes)
}

/// The bytes a DHT record's signature covers (BEP 44, with [`DHT_RECORD_SALT`]).
pub fn dht_signable(seq: i64, value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + value.len());
    out.extend_from_slice(format!("4:salt{}:", DHT_RECORD_SALT.len()).as_bytes());
    out.extend_from_slice(DHT_RECORD_SALT);
    out.extend_from_slice(format!("3:seqi{seq}e1:v{}:", value.len()).as_bytes());
    out.extend_from_slice(value);
    out
}

impl SigningKeyPair {
    /// The identity's BEP 44 signature over its host record `value` at sequence `seq`.
    pub fn sign_dht_record(&self, seq: i64, value: &[u8]) -> Signature {
        self.sign_raw(&dht_signable(seq, value))
    }
}

impl SigningPublicKey {
    /// Checks a host record's BEP 44 signature.
    pub fn verify_dht_record(
        &self,
        seq: i64,
        value: &[u8],
        signature: &Signature,
    ) -> Result<(), CryptoError> {
        verify_raw(self, &dht_signable(seq, value), signature).map_err(|_| {
            CryptoError::BadSignature {
                context: "dht-record",
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_names_its_key_and_a_typo_is_caught() {
        let key = SigningKeyPair::generate().unwrap();
        let address = identity_address(&key.public());
        assert_eq!(address.len(), IDENTITY_ADDRESS_LEN);
        assert!(address.starts_with("smvs:"));
        assert_eq!(parse_identity_address(&address).unwrap(), key.public());
        // Every single-character change is caught by the checksum or the alphabet.
        let body: Vec<char> = address.chars().collect();
        for at in [5, 20, 40, IDENTITY_ADDRESS_LEN - 1] {
            let mut typo = body.clone();
            typo[at] = if typo[at] == 'a' { 'b' } else { 'a' };
            let typo: String = typo.into_iter().collect();
            assert!(parse_identity_address(&typo).is_err(), "{typo}");
        }
        assert!(parse_identity_address(&address[..IDENTITY_ADDRESS_LEN - 1]).is_err());
        assert!(parse_identity_address(&address.to_uppercase()).is_err());
        assert!(parse_identity_address("alice").is_err());
    }

    #[test]
    fn a_dht_record_signature_binds_seq_and_value() {
        let key = SigningKeyPair::generate().unwrap();
        let sig = key.sign_dht_record(7, b"record");
        assert!(key.public().verify_dht_record(7, b"record", &sig).is_ok());
        assert!(key.public().verify_dht_record(8, b"record", &sig).is_err());
        assert!(key.public().verify_dht_record(7, b"recorD", &sig).is_err());
        assert_eq!(
            dht_signable(7, b"ab"),
            b"4:salt19:smvs-host-record-v13:seqi7e1:v2:ab".to_vec()
        );
    }
}
