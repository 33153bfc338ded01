//! The media wire format: every RTP and RTCP packet of the call, audio and video, travels as one
//! UDP datagram
//!
//! ```text
//! [0x01][seq: u64 big-endian] || XChaCha20-Poly1305(key, nonce = 0^16 || seq, ad = first 9 bytes,
//!                                                    plaintext = [stream] || RTP/RTCP packet)
//! ```
//!
//! `stream` is 0 video RTP, 1 video RTCP, 2 audio RTP, 3 audio RTCP, so which stream a packet
//! belongs to is hidden along with its contents. The key is unique per call and direction and
//! `seq` never repeats under it, so the nonce never repeats. With `encrypt: false` (the
//! benchmark's baseline only) the same framing carries the plaintext in clear and no tag.
//!
//! [`ReplayWindow`] drops packets that were already accepted or are older than its 1024 packets.

use smvs_crypto::{aead_decrypt, aead_encrypt, AeadKey, AEAD_NONCE_LEN, AEAD_TAG_LEN};
use thiserror::Error;

/// The framing version byte.
pub const WIRE_VERSION: u8 = 0x01;
/// Version byte and sequence number, sent in clear and authenticated as associated data.
pub const HEADER_LEN: usize = 9;
/// Bytes a sealed datagram adds to the RTP/RTCP packet it carries.
pub const SEALED_OVERHEAD: usize = HEADER_LEN + 1 + AEAD_TAG_LEN;

/// Which of the call's four packet streams a packet belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    VideoRtp = 0,
    VideoRtcp = 1,
    AudioRtp = 2,
    AudioRtcp = 3,
}

impl Stream {
    pub const ALL: [Stream; 4] = [
        Stream::VideoRtp,
        Stream::VideoRtcp,
        Stream::AudioRtp,
        Stream::AudioRtcp,
    ];

    fn from_byte(byte: u8) -> Option<Stream> {
        Stream::ALL.get(usize::from(byte)).copied()
    }
}

/// Why a datagram was not accepted.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum WireError {
    #[error("malformed media datagram: {0}")]
    Malformed(&'static str),
    #[error("media datagram failed authentication (wrong key or tampered)")]
    AuthFailed,
}

/// An authenticated (or, for the unencrypted baseline, merely parsed) datagram.
#[derive(Debug)]
pub struct Opened {
    pub seq: u64,
    pub stream: Stream,
    /// The RTP or RTCP packet.
    pub packet: Vec<u8>,
}

fn nonce(seq: u64) -> [u8; AEAD_NONCE_LEN] {
    let mut n = [0u8; AEAD_NONCE_LEN];
    n[AEAD_NONCE_LEN - 8..].copy_from_slice(&seq.to_be_bytes());
    n
}

fn header(seq: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0] = WIRE_VERSION;
    h[1..].copy_from_slice(&seq.to_be_bytes());
    h
}

/// Frames `packet` as datagram number `seq`; sealed under `key`, or in clear when `key` is None.
pub fn seal(
    key: Option<&AeadKey>,
    seq: u64,
    stream: Stream,
    packet: &[u8],
) -> Result<Vec<u8>, WireError> {
    let head = header(seq);
    let mut plaintext = Vec::with_capacity(HEADER_LEN + 1 + packet.len() + AEAD_TAG_LEN);
    match key {
        None => {
            plaintext.extend_from_slice(&head);
            plaintext.push(stream as u8);
            plaintext.extend_from_slice(packet);
            Ok(plaintext)
        }
        Some(key) => {
            plaintext.push(stream as u8);
            plaintext.extend_from_slice(packet);
            let sealed = aead_encrypt(key, &nonce(seq), &head, &plaintext)
                .map_err(|_| WireError::Malformed("packet refused by the AEAD"))?;
            // Reuse the plaintext buffer for the datagram.
            plaintext.clear();
            plaintext.extend_from_slice(&head);
            plaintext.extend_from_slice(&sealed);
            Ok(plaintext)
        }
    }
}

/// The sequence number of a datagram, read before anything is authenticated (to drop replays
/// cheaply). Checks only the framing.
pub fn sequence(datagram: &[u8]) -> Result<u64, WireError> {
    if datagram.len() < HEADER_LEN + 2 {
        return Err(WireError::Malformed("shorter than the framing"));
    }
    if datagram[0] != WIRE_VERSION {
        return Err(WireError::Malformed("unknown framing version"));
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&datagram[1..HEADER_LEN]);
    Ok(u64::from_be_bytes(seq))
}

/// Authenticates and decrypts a datagram (or, with `key` None, parses a clear one).
pub fn open(key: Option<&AeadKey>, datagram: &[u8]) -> Result<Opened, WireError> {
    let seq = sequence(datagram)?;
    let (head, body) = datagram.split_at(HEADER_LEN);
    let mut packet = match key {
        None => body.to_vec(),
        Some(key) => {
            if body.len() < AEAD_TAG_LEN + 2 {
                return Err(WireError::Malformed("shorter than a sealed packet"));
            }
            let plain =
                aead_decrypt(key, &nonce(seq), head, body).map_err(|_| WireError::AuthFailed)?;
            plain.to_vec()
        }
    };
    let stream = packet
        .first()
        .copied()
        .and_then(Stream::from_byte)
        .ok_or(WireError::Malformed("unknown stream"))?;
    packet.remove(0);
    if packet.is_empty() {
        return Err(WireError::Malformed("empty packet"));
    }
    Ok(Opened {
        seq,
        stream,
        packet,
    })
}

/// Size of the replay window, in packets.
pub const REPLAY_WINDOW: u64 = 1024;
const WORDS: usize = (REPLAY_WINDOW / 64) as usize;

/// Why the replay window refused a sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replay {
    /// Already accepted once.
    Duplicate,
    /// Older than the window: it can no longer be told apart from a replay.
    TooOld,
}

/// A sliding window over the last [`REPLAY_WINDOW`] sequence numbers. Only authenticated
/// packets may [`accept`](ReplayWindow::accept) (move the window); anything may be
/// [`check`](ReplayWindow::check)ed.
#[derive(Clone, Debug, Default)]
pub struct ReplayWindow {
    highest: Option<u64>,
    /// Bit `seq % REPLAY_WINDOW` is set when `seq` (within the window) was accepted.
    seen: [u64; WORDS],
}

impl ReplayWindow {
    pub fn new() -> Self {
        Self::default()
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % REPLAY_WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    /// Whether `seq` would be accepted now.
    pub fn check(&self, seq: u64) -> Result<(), Replay> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if seq > highest {
            return Ok(());
        }
        if highest - seq >= REPLAY_WINDOW {
            return Err(Replay::TooOld);
        }
        let (w, m) = Self::bit(seq);
        if self.seen.get(w).is_some_and(|word| word & m != 0) {
            Err(Replay::Duplicate)
        } else {
            Ok(())
        }
    }

    /// Records `seq` as accepted (call only after [`check`](ReplayWindow::check) passed and the
    /// packet authenticated).
    pub fn accept(&mut self, seq: u64) {
        match self.highest {
            Some(highest) if seq <= highest => {}
            Some(highest) => {
                if seq - highest >= REPLAY_WINDOW {
                    self.seen = [0; WORDS];
                } else {
                    for s in highest + 1..=seq {
                        let (w, m) = Self::bit(s);
                        if let Some(word) = self.seen.get_mut(w) {
                            *word &= !m;
                        }
                    }
                }
                self.highest = Some(seq);
            }
            None => self.highest = Some(seq),
        }
        let (w, m) = Self::bit(seq);
        if let Some(word) = self.seen.get_mut(w) {
            *word |= m;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn key() -> AeadKey {
        AeadKey::from_bytes(&[7u8; 32]).unwrap()
    }

    fn rtp() -> Vec<u8> {
        let mut p = vec![0x80, 96, 0, 1, 0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef];
        p.extend_from_slice(b"some vp8 payload bytes");
        p
    }

    fn accept(w: &mut ReplayWindow, seq: u64) -> Result<(), Replay> {
        w.check(seq)?;
        w.accept(seq);
        Ok(())
    }

    #[test]
    fn replay_window_in_order() {
        let mut w = ReplayWindow::new();
        for s in 0..5000 {
            assert_eq!(accept(&mut w, s), Ok(()));
        }
        assert_eq!(w.check(4999), Err(Replay::Duplicate));
    }

    #[test]
    fn replay_window_reorder_within_window() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 100).unwrap();
        accept(&mut w, 98).unwrap();
        accept(&mut w, 99).unwrap();
        accept(&mut w, 101).unwrap();
        assert_eq!(accept(&mut w, 98), Err(Replay::Duplicate));
        accept(&mut w, 2000).unwrap();
        // 2000 - 1000 = 1000 < 1024: still inside, and never seen.
        accept(&mut w, 1000).unwrap();
        assert_eq!(accept(&mut w, 1000), Err(Replay::Duplicate));
    }

    #[test]
    fn replay_window_duplicate_and_too_old() {
        let mut w = ReplayWindow::new();
        accept(&mut w, 5).unwrap();
        assert_eq!(accept(&mut w, 5), Err(Replay::Duplicate));
        accept(&mut w, 5 + REPLAY_WINDOW).unwrap();
        assert_eq!(w.check(5), Err(Replay::TooOld));
        assert_eq!(w.check(6), Ok(()));
    }

    #[test]
    fn replay_window_big_jump_clears_old_bits() {
        let mut w = ReplayWindow::new();
        for s in 0..10 {
            accept(&mut w, s).unwrap();
        }
        // Same slots modulo the window, far ahead: must be accepted, not seen as duplicates.
        let far = 10 * REPLAY_WINDOW;
        for s in far..far + 10 {
            assert_eq!(accept(&mut w, s), Ok(()));
        }
        assert_eq!(w.check(far - 1), Ok(()));
        assert_eq!(w.check(3), Err(Replay::TooOld));
        // A jump smaller than the window clears exactly the skipped slots.
        accept(&mut w, far + 10 + 500).unwrap();
        assert_eq!(w.check(far + 10 + 499), Ok(()));
        assert_eq!(w.check(far + 9), Err(Replay::Duplicate));
    }

    #[test]
    fn seal_open_round_trip() {
        let k = key();
        for stream in Stream::ALL {
            let d = seal(Some(&k), 42, stream, &rtp()).unwrap();
            assert_eq!(d.len(), rtp().len() + SEALED_OVERHEAD);
            assert_eq!(d[0], WIRE_VERSION);
            assert_eq!(&d[1..9], &42u64.to_be_bytes());
            let o = open(Some(&k), &d).unwrap();
            assert_eq!((o.seq, o.stream), (42, stream));
            assert_eq!(o.packet, rtp());
            // The plaintext is nowhere in the datagram.
            assert!(!d.windows(12).any(|w| w == &rtp()[..12]));
        }
        // The clear baseline: same framing, no tag.
        let d = seal(None, 7, Stream::AudioRtp, &rtp()).unwrap();
        assert_eq!(d.len(), HEADER_LEN + 1 + rtp().len());
        let o = open(None, &d).unwrap();
        assert_eq!((o.seq, o.stream, o.packet), (7, Stream::AudioRtp, rtp()));
    }

    #[test]
    fn tampering_is_rejected() {
        let k = key();
        let d = seal(Some(&k), 9, Stream::VideoRtp, &rtp()).unwrap();
        for i in 0..d.len() {
            let mut t = d.clone();
            t[i] ^= 0x01;
            let r = open(Some(&k), &t);
            assert!(r.is_err(), "flipping byte {i} went unnoticed");
            if i >= 1 {
                // Header (AD) or body changed: authentication, not framing, catches it.
                assert_eq!(r.unwrap_err(), WireError::AuthFailed, "byte {i}");
            }
        }
        for len in 0..d.len() {
            assert!(open(Some(&k), &d[..len]).is_err(), "truncated to {len}");
        }
        let other = AeadKey::from_bytes(&[8u8; 32]).unwrap();
        assert_eq!(open(Some(&other), &d).unwrap_err(), WireError::AuthFailed);
        assert!(matches!(open(Some(&k), &[]), Err(WireError::Malformed(_))));
        assert!(matches!(
            open(Some(&k), &[0x02; 64]),
            Err(WireError::Malformed(_))
        ));
    }
}
