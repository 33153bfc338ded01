//! The session layer: how an envelope's content is sealed between two identities.
//!
//! Version 1 is a static construction, the same idea as libsodium's `crypto_box`:
//! both hosts ask their keyguard once per contact for
//! `K = HKDF-SHA256(salt = the two identity X25519 keys in sorted order,
//!                  X25519(own identity secret, peer identity public), "smvs-session-v1")`,
//! then split K with HKDF into an AEAD key and a receipt key. Each envelope is XChaCha20-Poly1305
//! under a random nonce, with the envelope header (format, id, sender, recipient, session
//! version) as associated data, so only the two identities can read it and a box cannot be
//! replayed under another header. Because only alice and bob can derive K, a box that opens
//! for bob came from alice (or bob himself, which the header's sender field rules out for
//! routing). Keyguard stays off the per-message path. This version is not forward-secret: a
//! later version (a ratchet) replaces this module behind the `session_version` field without
//! touching routing, storage or transport.
//!
//! This module is pure: no I/O, no state, nothing above `model` in the crate. [`codec`] writes
//! and reads the inner message (texts, deletions, expiry settings and call signals).
//!
//! Before sealing, content is padded (ISO/IEC 7816-4: 0x80 then zeros) to the next of a few
//! size buckets, so the wire shows only the bucket, not the length of what was written.

mod codec;
pub mod fresh;
pub mod handshake;
pub mod ratchet;
mod v2;
#[cfg(test)]
mod v2_tests;

pub use v2::{PrekeyOffer, SessionV2, V2Receipts, SESSION_V2, V2_BUCKETS};

use smvs_crypto::{AeadKey, CryptoError, IdentityBundle, Zeroizing};
use smvs_schema::Username;

pub use codec::{decode_inner, encode_inner, Content, Inner, MAX_SHARED_HEADS};

use crate::model::MessageId;
#[cfg(test)]
use crate::model::Payload;

pub const ENVELOPE_FORMAT: u16 = 1;
pub const SESSION_V1: u16 = 1;
pub use smvs_schema::MAX_TEXT_BYTES;
/// Sealed sizes on the wire (before the AEAD's nonce and tag).
const BUCKETS: [usize; 5] = [512, 2048, 8192, 32768, 131072];
/// The info string of the keyguard agreement for session version 1.
pub const AGREEMENT_INFO: &[u8] = b"smvs-session-v1";

/// The per-contact keys of session version 1.
pub struct SessionKeys {
    seal: AeadKey,
    receipt: Zeroizing<Vec<u8>>,
}

impl SessionKeys {
    /// Splits the keyguard-derived contact key.
    pub fn from_shared(shared: &AeadKey) -> Result<SessionKeys, CryptoError> {
        let seal = smvs_crypto::hkdf_sha256(b"smvs-session-v1", shared.expose(), b"envelope", 32)?;
        let receipt =
            smvs_crypto::hkdf_sha256(b"smvs-session-v1", shared.expose(), b"receipt", 32)?;
        Ok(SessionKeys {
            seal: AeadKey::from_bytes(&seal)?,
            receipt,
        })
    }
}

/// The salt both sides pass to keyguard: the two identity X25519 keys, lower first.
pub fn agreement_salt(a: &IdentityBundle, b: &IdentityBundle) -> Vec<u8> {
    let (x, y) = (a.agreement_key.as_bytes(), b.agreement_key.as_bytes());
    if x <= y {
        [&x[..], &y[..]].concat()
    } else {
        [&y[..], &x[..]].concat()
    }
}

/// The clear part of an envelope, bound into the AEAD as associated data.
pub struct Header<'a> {
    pub id: &'a MessageId,
    pub sender: &'a Username,
    pub recipient: &'a Username,
}

impl Header<'_> {
    fn associated_data(&self) -> Vec<u8> {
        self.associated_data_for(SESSION_V1)
    }

    /// The header as associated data, for session `version`.
    fn associated_data_for(&self, version: u16) -> Vec<u8> {
        let mut ad = Vec::with_capacity(96);
        ad.extend_from_slice(&ENVELOPE_FORMAT.to_be_bytes());
        ad.extend_from_slice(&version.to_be_bytes());
        ad.extend_from_slice(&self.id.0);
        // As the directories name them (never this host's scope, `alice@work`, which the
        // other side does not know).
        for name in [self.sender.wire_str(), self.recipient.wire_str()] {
            // A wire name is at most 56 + 5 bytes, so its length always fits.
            ad.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
            ad.extend_from_slice(name.as_bytes());
        }
        ad
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SessionError {
    #[error("content of {0} bytes is larger than the largest envelope")]
    TooLarge(usize),
    #[error("envelope does not open: wrong key, altered or replayed under another header")]
    Open,
    #[error("envelope padding is malformed")]
    Padding,
    #[error("envelope content is malformed: {0}")]
    Content(String),
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    #[error("session v2: {0}")]
    Ratchet(ratchet::RatchetError),
}

fn pad(content: &[u8]) -> Result<Zeroizing<Vec<u8>>, SessionError> {
    let bucket = BUCKETS
        .iter()
        .copied()
        .find(|b| *b > content.len())
        .ok_or(SessionError::TooLarge(content.len()))?;
    Ok(pad_to(content, bucket))
}

/// ISO/IEC 7816-4 padding of `content` to `len` bytes (`len` > `content.len()`).
fn pad_to(content: &[u8], len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(len));
    out.extend_from_slice(content);
    out.push(0x80);
    out.resize(len, 0);
    out
}

fn unpad(padded: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>, SessionError> {
    if !BUCKETS.contains(&padded.len()) {
        return Err(SessionError::Padding);
    }
    strip_padding(padded)
}

/// Removes ISO/IEC 7816-4 padding.
fn strip_padding(mut padded: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>, SessionError> {
    let end = padded
        .iter()
        .rposition(|b| *b != 0)
        .ok_or(SessionError::Padding)?;
    if padded[end] != 0x80 {
        return Err(SessionError::Padding);
    }
    padded.truncate(end);
    Ok(padded)
}

/// Seals `content` for the envelope described by `header`.
pub fn seal(
    keys: &SessionKeys,
    header: &Header<'_>,
    content: &[u8],
) -> Result<Vec<u8>, SessionError> {
    let padded = pad(content)?;
    Ok(keys.seal.seal(&header.associated_data(), &padded)?)
}

/// Opens what [`seal`] made, for the same header.
pub fn open(
    keys: &SessionKeys,
    header: &Header<'_>,
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SessionError> {
    let padded = keys
        .seal
        .open(&header.associated_data(), sealed)
        .map_err(|_| SessionError::Open)?;
    unpad(padded)
}

/// The receipt authenticator: BLAKE2b keyed with the receipt key over (id, recipient, time).
pub fn receipt_tag(
    keys: &SessionKeys,
    id: &MessageId,
    recipient: &Username,
    stored_at: i64,
) -> Result<Vec<u8>, SessionError> {
    receipt_mac(&keys.receipt, id, recipient, stored_at)
}

/// [`receipt_tag`] under any receipt key (v1's per contact, v2's per session).
fn receipt_mac(
    key: &[u8],
    id: &MessageId,
    recipient: &Username,
    stored_at: i64,
) -> Result<Vec<u8>, SessionError> {
    Ok(smvs_crypto::blake2b(
        32,
        Some(key),
        &[
            b"smvs-receipt-v1",
            &id.0,
            recipient.wire_str().as_bytes(),
            &stored_at.to_be_bytes(),
        ],
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SessionKeys {
        SessionKeys::from_shared(&AeadKey::generate()).unwrap()
    }

    #[test]
    fn round_trip_and_header_binding() {
        let k = keys();
        let id = MessageId::random();
        let (a, b) = (
            Username::parse("alice").unwrap(),
            Username::parse("bob").unwrap(),
        );
        let h = Header {
            id: &id,
            sender: &a,
            recipient: &b,
        };
        let inner = Inner {
            id,
            from: a.clone(),
            to: b.clone(),
            time: 5,
            prev_hash: vec![1; 32],
            content: Content::Message(Payload::Text("hi".into())),
            log_heads: vec![smvs_directory::transparency::LogHead::sign(
                &smvs_crypto::SigningKeyPair::generate().unwrap(),
                3,
                [1; 32],
                [2; 32],
            )],
        };
        let sealed = seal(&k, &h, &encode_inner(&inner)).unwrap();
        assert_eq!(
            decode_inner(&open(&k, &h, &sealed).unwrap()).unwrap(),
            inner
        );
        // Reflected (sender and recipient swapped) or re-labelled: does not open.
        let reflected = Header {
            id: &id,
            sender: &b,
            recipient: &a,
        };
        assert_eq!(
            open(&k, &reflected, &sealed).unwrap_err(),
            SessionError::Open
        );
        let other_id = MessageId::random();
        assert_eq!(
            open(
                &k,
                &Header {
                    id: &other_id,
                    sender: &a,
                    recipient: &b
                },
                &sealed
            )
            .unwrap_err(),
            SessionError::Open
        );
        assert_eq!(open(&keys(), &h, &sealed).unwrap_err(), SessionError::Open);
    }

    #[test]
    fn sizes_only_show_the_bucket() {
        let k = keys();
        let id = MessageId::random();
        let (a, b) = (
            Username::parse("alice").unwrap(),
            Username::parse("bob").unwrap(),
        );
        let h = Header {
            id: &id,
            sender: &a,
            recipient: &b,
        };
        let short = seal(&k, &h, b"x").unwrap();
        let longer = seal(&k, &h, &[7u8; 400]).unwrap();
        assert_eq!(short.len(), longer.len());
        assert!(seal(&k, &h, &vec![0u8; 131072]).is_err());
        let mut bad = pad(b"abc").unwrap();
        bad[3] = 0x81;
        assert_eq!(unpad(bad).unwrap_err(), SessionError::Padding);
    }
}
