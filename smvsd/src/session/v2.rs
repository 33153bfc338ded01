//! Session version 2 for envelopes: one contact's session (what the handshake fixed, and the
//! ratchet), and how an envelope's content is sealed under it.
//!
//! ```text
//! sealed = ratchet header || nonce || XChaCha20-Poly1305(message key,
//!              ad = envelope header (version 2) || transcript hash, padded content)
//! ```
//! The content is padded so that the whole sealed field is exactly one of [`V2_BUCKETS`]: the
//! wire shows the bucket, not the length, and a header with a KEM step (2314 bytes) keeps a
//! short message in the 4096 bucket rather than pushing it to 8192.

use smvs_crypto::Zeroizing;

use super::fresh::Fresh;
use super::handshake::Established;
use super::ratchet::{Ratchet, RatchetError};
use super::{pad_to, receipt_mac, strip_padding, Header, SessionError};
use crate::model::MessageId;
use smvs_schema::Username;

pub const SESSION_V2: u16 = 2;
/// Sizes of a v2 envelope's sealed field.
pub const V2_BUCKETS: [usize; 5] = [2048, 4096, 8192, 32768, 135_168];
/// The nonce and tag around the padded content.
const AEAD_OVERHEAD: usize = 24 + 16;
const STATE_VERSION: u8 = 2;

/// One contact's session v2.
#[derive(Clone)]
pub struct SessionV2 {
    /// The handshake's transcript hash: the session's name.
    pub transcript: [u8; 32],
    receipt_key: Zeroizing<[u8; 32]>,
    ratchet: Ratchet,
}

impl From<Established> for SessionV2 {
    fn from(e: Established) -> SessionV2 {
        SessionV2 {
            transcript: e.transcript,
            receipt_key: e.receipt_key,
            ratchet: e.ratchet,
        }
    }
}

impl SessionV2 {
    /// What envelopes name the session by (in clear, beside the sealed field): the first 16
    /// bytes of the transcript hash.
    pub fn id(&self) -> [u8; 16] {
        let mut id = [0u8; 16];
        id.copy_from_slice(&self.transcript[..16]);
        id
    }

    fn associated_data(&self, header: &Header<'_>) -> Vec<u8> {
        let mut ad = header.associated_data_for(SESSION_V2);
        ad.extend_from_slice(&self.transcript);
        ad
    }

    /// Seals `content` for the envelope `header`; advances the ratchet.
    pub fn seal(
        &mut self,
        header: &Header<'_>,
        content: &[u8],
        fresh: &mut dyn Fresh,
    ) -> Result<Vec<u8>, SessionError> {
        let overhead = self.ratchet.next_header_len() + AEAD_OVERHEAD;
        let bucket = V2_BUCKETS
            .iter()
            .copied()
            .find(|b| *b > overhead + content.len())
            .ok_or(SessionError::TooLarge(content.len()))?;
        let padded = pad_to(content, bucket - overhead);
        self.ratchet
            .seal(&self.associated_data(header), &padded, fresh)
            .map_err(ratchet_error)
    }

    /// Opens what [`SessionV2::seal`] made on the other side. Changes nothing unless it opens.
    pub fn open(
        &mut self,
        header: &Header<'_>,
        sealed: &[u8],
        fresh: &mut dyn Fresh,
    ) -> Result<Zeroizing<Vec<u8>>, SessionError> {
        if !V2_BUCKETS.contains(&sealed.len()) {
            return Err(SessionError::Padding);
        }
        let mut next = self.ratchet.clone();
        let padded = next
            .open(&self.associated_data(header), sealed, fresh)
            .map_err(ratchet_error)?;
        let content = strip_padding(padded)?;
        self.ratchet = next;
        Ok(content)
    }

    /// What authenticates this session's receipts (kept while envelopes are in flight: the
    /// session's id and receipt key, nothing of the ratchet).
    pub fn receipts(&self) -> V2Receipts {
        V2Receipts {
            session: self.id(),
            key: self.receipt_key.clone(),
        }
    }

    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, SessionError> {
        let ratchet = self.ratchet.to_bytes().map_err(ratchet_error)?;
        let mut out = Zeroizing::new(Vec::with_capacity(65 + ratchet.len()));
        out.push(STATE_VERSION);
        out.extend_from_slice(&self.transcript);
        out.extend_from_slice(&self.receipt_key[..]);
        out.extend_from_slice(&ratchet);
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<SessionV2, SessionError> {
        let bad = || SessionError::Content("stored session state is malformed".into());
        if bytes.len() < 65 || bytes[0] != STATE_VERSION {
            return Err(bad());
        }
        let mut transcript = [0u8; 32];
        transcript.copy_from_slice(&bytes[1..33]);
        let mut receipt_key = Zeroizing::new([0u8; 32]);
        receipt_key.copy_from_slice(&bytes[33..65]);
        Ok(SessionV2 {
            transcript,
            receipt_key,
            ratchet: Ratchet::from_bytes(&bytes[65..]).map_err(|_| bad())?,
        })
    }
}

/// A v2 session's receipt key, and the session's id.
#[derive(Clone)]
pub struct V2Receipts {
    pub session: [u8; 16],
    key: Zeroizing<[u8; 32]>,
}

impl V2Receipts {
    /// The receipt authenticator: BLAKE2b keyed with the receipt key over (id, recipient, time).
    pub fn tag(
        &self,
        id: &MessageId,
        recipient: &Username,
        stored_at: i64,
    ) -> Result<Vec<u8>, SessionError> {
        receipt_mac(&self.key[..], id, recipient, stored_at)
    }
}

fn ratchet_error(e: RatchetError) -> SessionError {
    match e {
        RatchetError::Open => SessionError::Open,
        other => SessionError::Ratchet(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fresh::{self, OsFresh};
    use crate::session::ratchet::Ratchet;

    fn pair() -> (SessionV2, SessionV2) {
        let sk: [u8; 32] = smvs_crypto::random_array();
        let (dh, kem) = (
            fresh::x25519_secret(&mut OsFresh),
            fresh::mlkem_seed(&mut OsFresh),
        );
        let dh_public = smvs_crypto::AgreementKeyPair::from_secret_bytes(&dh[..])
            .unwrap()
            .public();
        let kem_public = smvs_crypto::MlKemKeyPair::from_seed(&kem[..])
            .unwrap()
            .public()
            .clone();
        let session = |ratchet| SessionV2 {
            transcript: [4; 32],
            receipt_key: Zeroizing::new([5; 32]),
            ratchet,
        };
        (
            session(Ratchet::initiator(&sk, dh, kem).unwrap()),
            session(Ratchet::responder(&sk, dh_public, &kem_public, &mut OsFresh).unwrap()),
        )
    }

    #[test]
    fn the_whole_sealed_field_is_a_bucket_and_a_kem_step_stays_under_8192() {
        let (mut alice, mut bob) = pair();
        let (a, b) = (
            Username::parse("alice").unwrap(),
            Username::parse("bob").unwrap(),
        );
        let id = MessageId::random();
        let to_bob = Header {
            id: &id,
            sender: &a,
            recipient: &b,
        };
        let to_alice = Header {
            id: &id,
            sender: &b,
            recipient: &a,
        };
        // The initiator's first chain has no KEM ciphertext: 2048. The responder's does: 4096.
        let short = alice.seal(&to_bob, b"hi", &mut OsFresh).unwrap();
        assert_eq!(short.len(), 2048);
        assert_eq!(&bob.open(&to_bob, &short, &mut OsFresh).unwrap()[..], b"hi");
        let with_kem = bob.seal(&to_alice, b"hello", &mut OsFresh).unwrap();
        assert_eq!(with_kem.len(), 4096);
        assert_eq!(
            &alice.open(&to_alice, &with_kem, &mut OsFresh).unwrap()[..],
            b"hello"
        );
        let long = alice.seal(&to_bob, &[7u8; 10_000], &mut OsFresh).unwrap();
        assert_eq!(long.len(), 32768);
        // Another header does not open (and changes nothing); a length that is no bucket is
        // refused before anything is tried; too large is a clear error.
        let other = MessageId::random();
        let wrong = Header {
            id: &other,
            sender: &a,
            recipient: &b,
        };
        assert_eq!(
            bob.open(&wrong, &long, &mut OsFresh).unwrap_err(),
            SessionError::Open
        );
        assert_eq!(
            bob.open(&to_bob, &long, &mut OsFresh).unwrap().len(),
            10_000
        );
        assert_eq!(
            bob.open(&to_bob, &long[..4000], &mut OsFresh).unwrap_err(),
            SessionError::Padding
        );
        assert!(matches!(
            alice.seal(&to_bob, &vec![0u8; 135_168], &mut OsFresh),
            Err(SessionError::TooLarge(_))
        ));
        // The state survives storage.
        let again = SessionV2::from_bytes(&bob.to_bytes().unwrap()).unwrap();
        assert_eq!(again.id(), bob.id());
        assert_eq!(again.to_bytes().unwrap(), bob.to_bytes().unwrap());
    }
}
