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
/// A state that still carries its prekey offer (we initiated from the peer's prekey, and have
/// not yet opened anything of theirs): `3 || transcript || receipt key || offer || ratchet`.
const STATE_WITH_OFFER: u8 = 3;

/// What a prekey-mode initiator sends beside each envelope until the responder has answered:
/// the handshake Init and the initiator's identity X-Wing key with its signature
/// (`Envelope.prekeyInit` on the wire).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrekeyOffer {
    pub init: Vec<u8>,
    pub kem: Vec<u8>,
    pub kem_signature: Vec<u8>,
}

const OFFER_LEN: usize = super::handshake::PREKEY_INIT_LEN + 1216 + 64;

impl PrekeyOffer {
    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), SessionError> {
        if self.init.len() + self.kem.len() + self.kem_signature.len() != OFFER_LEN
            || self.kem.len() != 1216
        {
            return Err(SessionError::Content(
                "a prekey offer of the wrong size".into(),
            ));
        }
        out.extend_from_slice(&self.init);
        out.extend_from_slice(&self.kem);
        out.extend_from_slice(&self.kem_signature);
        Ok(())
    }

    fn decode(bytes: &[u8]) -> PrekeyOffer {
        let (init, rest) = bytes.split_at(super::handshake::PREKEY_INIT_LEN);
        let (kem, kem_signature) = rest.split_at(1216);
        PrekeyOffer {
            init: init.to_vec(),
            kem: kem.to_vec(),
            kem_signature: kem_signature.to_vec(),
        }
    }
}

/// One contact's session v2.
#[derive(Clone)]
pub struct SessionV2 {
    /// The handshake's transcript hash: the session's name.
    pub transcript: [u8; 32],
    receipt_key: Zeroizing<[u8; 32]>,
    ratchet: Ratchet,
    /// Prekey mode, our side: the offer that goes with every envelope until the peer has
    /// shown (by a message of theirs that opens) that it made the session too.
    offer: Option<PrekeyOffer>,
}

impl From<Established> for SessionV2 {
    fn from(e: Established) -> SessionV2 {
        SessionV2 {
            transcript: e.transcript,
            receipt_key: e.receipt_key,
            ratchet: e.ratchet,
            offer: None,
        }
    }
}

impl SessionV2 {
    /// A session we made from the peer's prekey: `offer` goes with its envelopes.
    pub fn with_offer(mut self, offer: PrekeyOffer) -> SessionV2 {
        self.offer = Some(offer);
        self
    }

    /// The prekey offer to send with each envelope, while the peer has not answered.
    pub fn offer(&self) -> Option<&PrekeyOffer> {
        self.offer.as_ref()
    }

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
        // The peer sealed this under the session: it has it, the offer is done.
        self.offer = None;
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
        let mut out = Zeroizing::new(Vec::with_capacity(65 + OFFER_LEN + ratchet.len()));
        out.push(if self.offer.is_some() {
            STATE_WITH_OFFER
        } else {
            STATE_VERSION
        });
        out.extend_from_slice(&self.transcript);
        out.extend_from_slice(&self.receipt_key[..]);
        if let Some(offer) = &self.offer {
            offer.encode_into(&mut out)?;
        }
        out.extend_from_slice(&ratchet);
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<SessionV2, SessionError> {
        let bad = || SessionError::Content("stored session state is malformed".into());
        let with_offer = match bytes.first() {
            Some(&STATE_VERSION) => false,
            Some(&STATE_WITH_OFFER) => true,
            _ => return Err(bad()),
        };
        let ratchet_at = 65 + if with_offer { OFFER_LEN } else { 0 };
        if bytes.len() < ratchet_at {
            return Err(bad());
        }
        let mut transcript = [0u8; 32];
        transcript.copy_from_slice(&bytes[1..33]);
        let mut receipt_key = Zeroizing::new([0u8; 32]);
        receipt_key.copy_from_slice(&bytes[33..65]);
        Ok(SessionV2 {
            transcript,
            receipt_key,
            ratchet: Ratchet::from_bytes(&bytes[ratchet_at..]).map_err(|_| bad())?,
            offer: with_offer.then(|| PrekeyOffer::decode(&bytes[65..ratchet_at])),
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
            offer: None,
        };
        (
            session(Ratchet::initiator(&sk, dh, kem).unwrap()),
            session(Ratchet::responder(&sk, dh_public, &kem_public, &mut OsFresh).unwrap()),
        )
    }

    fn names() -> (Username, Username, MessageId) {
        (
            Username::parse("alice").unwrap(),
            Username::parse("bob").unwrap(),
            MessageId::random(),
        )
    }

    /// The headers of one message id from `a` to `b`, and back.
    fn headers<'a>(
        a: &'a Username,
        b: &'a Username,
        id: &'a MessageId,
    ) -> (Header<'a>, Header<'a>) {
        (
            Header {
                id,
                sender: a,
                recipient: b,
            },
            Header {
                id,
                sender: b,
                recipient: a,
            },
        )
    }

    #[test]
    fn a_prekey_offer_is_kept_in_the_state_until_a_message_of_the_peer_opens() {
        let (alice, mut bob) = pair();
        let offer = PrekeyOffer {
            init: vec![2; super::super::handshake::PREKEY_INIT_LEN],
            kem: vec![3; 1216],
            kem_signature: vec![4; 64],
        };
        let mut alice = alice.with_offer(offer.clone());
        let stored = SessionV2::from_bytes(&alice.to_bytes().unwrap()).unwrap();
        assert_eq!(stored.offer(), Some(&offer));
        assert_eq!(stored.id(), alice.id());
        let (a, b, id) = names();
        let (to_bob, to_alice) = headers(&a, &b, &id);
        // Sealing does not end the offer; a message of the peer's that does not open neither.
        let sealed = alice.seal(&to_bob, b"hi", &mut OsFresh).unwrap();
        bob.open(&to_bob, &sealed, &mut OsFresh).unwrap();
        assert!(alice.offer().is_some());
        let answer = bob.seal(&to_alice, b"hello", &mut OsFresh).unwrap();
        let mut damaged = answer.clone();
        damaged[100] ^= 1;
        assert!(alice.open(&to_alice, &damaged, &mut OsFresh).is_err());
        assert!(alice.offer().is_some());
        alice.open(&to_alice, &answer, &mut OsFresh).unwrap();
        assert!(alice.offer().is_none());
        // Stored without it, in the version-2 layout the frozen vectors use.
        let bytes = alice.to_bytes().unwrap();
        assert_eq!(bytes[0], STATE_VERSION);
        assert!(SessionV2::from_bytes(&bytes).unwrap().offer().is_none());
        // A state whose offer is cut short does not read.
        let with = stored.to_bytes().unwrap();
        assert!(SessionV2::from_bytes(&with[..65 + OFFER_LEN - 1]).is_err());
    }

    #[test]
    fn the_whole_sealed_field_is_a_bucket_and_a_kem_step_stays_under_8192() {
        let (mut alice, mut bob) = pair();
        let (a, b, id) = names();
        let (to_bob, to_alice) = headers(&a, &b, &id);
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
