//! The media wire format: every RTP and RTCP packet of the call, audio and video, travels as one
//! UDP datagram
//!
//! ```text
//! [0x01][seq: u64 big-endian] || XChaCha20-Poly1305(key, nonce = 0^16 || seq, ad = first 9 bytes,
//!                                                    plaintext = [stream] || RTP/RTCP packet)
//! ```
//!
//! `stream` is 0 video RTP, 1 video RTCP, 2 audio RTP, 3 audio RTCP, 4 hello (the consent
//! handshake, see [`Hello`]), so which stream a packet belongs to is hidden along with its
//! contents. The key is unique per call and direction and
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

/// Which of the call's packet streams a packet belongs to: the four RTP/RTCP streams, and the
/// endpoints' [`Hello`]s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    VideoRtp = 0,
    VideoRtcp = 1,
    AudioRtp = 2,
    AudioRtcp = 3,
    /// A [`Hello`]: consent to receive media, never handed to the pipeline.
    Hello = 4,
}

impl Stream {
    pub const ALL: [Stream; 5] = [
        Stream::VideoRtp,
        Stream::VideoRtcp,
        Stream::AudioRtp,
        Stream::AudioRtcp,
        Stream::Hello,
    ];

    fn from_byte(byte: u8) -> Option<Stream> {
        Stream::ALL.get(usize::from(byte)).copied()
    }

    /// Video or audio RTP (media, as opposed to RTCP reports and hellos).
    pub fn is_rtp(self) -> bool {
        matches!(self, Stream::VideoRtp | Stream::AudioRtp)
    }
}

/// Length of a [`Hello`]'s challenge.
pub const CHALLENGE_LEN: usize = 16;
/// Length of an encoded [`Hello`]: flags, challenge, echo.
pub const HELLO_LEN: usize = 1 + 2 * CHALLENGE_LEN;
const HELLO_SEEKING: u8 = 0x01;
const HELLO_ECHO: u8 = 0x02;

/// The consent handshake's message (stream 4), sealed like every other packet. An endpoint
/// sends no media to the peer's address until a hello from the peer echoes the random
/// challenge it sent there, which proves that the address is the peer's and that the peer
/// wants the media: only whoever receives our datagrams at that address learns the challenge,
/// and only the peer can seal a reply. The crate's `consent` module says when hellos are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender has no consent yet and asks for a hello echoing `challenge`.
    pub seeking: bool,
    /// The sender's random challenge, fixed for the session.
    pub challenge: [u8; CHALLENGE_LEN],
    /// The latest challenge the sender received from us, if any.
    pub echo: Option<[u8; CHALLENGE_LEN]>,
}

impl Hello {
    /// `[flags][challenge][echo or zeros]`, flags bit 0 seeking, bit 1 echo present.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        let mut flags = 0;
        if self.seeking {
            flags |= HELLO_SEEKING;
        }
        if let Some(echo) = &self.echo {
            flags |= HELLO_ECHO;
            out[1 + CHALLENGE_LEN..].copy_from_slice(echo);
        }
        out[0] = flags;
        out[1..1 + CHALLENGE_LEN].copy_from_slice(&self.challenge);
        out
    }

    pub fn decode(packet: &[u8]) -> Result<Hello, WireError> {
        let Some((&flags, rest)) = packet.split_first() else {
            return Err(WireError::Malformed("empty hello"));
        };
        if packet.len() != HELLO_LEN {
            return Err(WireError::Malformed("hello of the wrong length"));
        }
        if flags & !(HELLO_SEEKING | HELLO_ECHO) != 0 {
            return Err(WireError::Malformed("unknown hello flags"));
        }
        let (challenge, echo) = rest.split_at(CHALLENGE_LEN);
        let mut c = [0u8; CHALLENGE_LEN];
        c.copy_from_slice(challenge);
        let echo = (flags & HELLO_ECHO != 0).then(|| {
            let mut e = [0u8; CHALLENGE_LEN];
            e.copy_from_slice(echo);
            e
        });
        Ok(Hello {
            seeking: flags & HELLO_SEEKING != 0,
            challenge: c,
            echo,
        })
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
        // A stream byte past the hello is not ours.
        let mut head = vec![WIRE_VERSION];
        head.extend_from_slice(&3u64.to_be_bytes());
        let sealed = aead_encrypt(&k, &nonce(3), &head, &[5, 1, 2, 3]).unwrap();
        head.extend_from_slice(&sealed);
        assert_eq!(
            open(Some(&k), &head).unwrap_err(),
            WireError::Malformed("unknown stream")
        );
    }

    #[test]
    fn hello_round_trip() {
        let k = key();
        for hello in [
            Hello {
                seeking: true,
                challenge: [1; CHALLENGE_LEN],
                echo: None,
            },
            Hello {
                seeking: false,
                challenge: [2; CHALLENGE_LEN],
                echo: Some([3; CHALLENGE_LEN]),
            },
        ] {
            let d = seal(Some(&k), 1, Stream::Hello, &hello.encode()).unwrap();
            assert_eq!(d.len(), HELLO_LEN + SEALED_OVERHEAD);
            let o = open(Some(&k), &d).unwrap();
            assert_eq!(o.stream, Stream::Hello);
            assert_eq!(Hello::decode(&o.packet).unwrap(), hello);
        }
        let good = Hello {
            seeking: true,
            challenge: [9; CHALLENGE_LEN],
            echo: Some([8; CHALLENGE_LEN]),
        }
        .encode();
        assert!(Hello::decode(&good[..HELLO_LEN - 1]).is_err());
        assert!(Hello::decode(&[]).is_err());
        let mut long = good.to_vec();
        long.push(0);
        assert!(Hello::decode(&long).is_err());
        let mut flags = good;
        flags[0] |= 0x80;
        assert!(Hello::decode(&flags).is_err());
    }
}
