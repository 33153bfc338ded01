//! The call port's wire format: what a device, its host's call port and the peer host's call
//! port say to each other over UDP. A pure codec, no I/O.
//!
//! A call's media is sealed end to end by the two devices (`smvs_media::wire`); the hosts only
//! ever see opaque datagrams. A device behind a NAT asks its own host for its server-reflexive
//! address (a STUN Binding request), and when no direct path works the media goes through both
//! users' hosts, each of which relays only for its own user's call:
//!
//! ```text
//!  device A ──Data{a}──► host A's call port ──Forward{b}──► host B's call port ──Data{b}──► device B
//!  device A ◄─Data{a}─── host A's call port ◄─Forward{a}─── host B's call port ◄─Data{b}─── device B
//!
//!  device ──BindRequest{alloc}──────────► its host
//!  device ◄─Challenge{alloc, nonce}─────── its host   (the nonce names the address it went to)
//!  device ──Bind{alloc, nonce, proof}────► its host   (the host records the device's address)
//!  device ◄─Bound{alloc}─────────────────── its host
//!  anyone ──STUN Binding request──► a call port ──Binding response (XOR-MAPPED-ADDRESS)──► anyone
//! ```
//!
//! | frame            | first byte | layout                                   | direction     |
//! |------------------|------------|------------------------------------------|---------------|
//! | Binding request  | `0x00`     | STUN header (RFC 8489), type `0x0001`    | device → host |
//! | Binding response | `0x01`     | STUN type `0x0101` + XOR-MAPPED-ADDRESS  | host → device |
//! | `BindRequest`    | `0xC1`     | `[0xC1][alloc 8][16 zero bytes]`         | device → host |
//! | `Bound`          | `0xC2`     | `[0xC2][alloc 8]`                        | host → device |
//! | `Challenge`      | `0xC3`     | `[0xC3][alloc 8][nonce 16]`              | host → device |
//! | `Data`           | `0xC4`     | `[0xC4][alloc 8][sealed media datagram]` | device ↔ host |
//! | `Forward`        | `0xC5`     | `[0xC5][alloc 8][sealed media datagram]` | host → host   |
//! | `Bind`           | `0xC6`     | `[0xC6][alloc 8][nonce 16][proof 16]`    | device → host |
//!
//! An allocation (`alloc`) is the host's name for one relayed call leg; its token is the secret
//! the host gave its own user's device (through the call signalling) to claim it. The token
//! never goes on the wire: the device proves it knows it with [`bind_proof`], a keyed BLAKE2b
//! of the allocation and the nonce of a `Challenge` the host sent to the address the device
//! asked from (return routability: a `Bind` only takes from the address its nonce was sent to,
//! so a `Bind` sniffed on the way and replayed from elsewhere moves nothing). A `BindRequest`
//! is padded to the length of the `Challenge` it asks for, so that the port answers no more
//! bytes than it is sent; decoding requires the padding to be zeros (one encoding per frame).
//! `Forward` names the *receiving* host's allocation.
//!
//! Telling them apart: a STUN message starts with two zero bits (first byte `0x00`–`0x3F`) and
//! carries the magic cookie `0x2112A442` at bytes 4–8; the relay tags all have the top bits
//! `11` (`0xC1`–`0xC6`), so they can never be read as STUN or the other way round, nor taken
//! for RTP or RTCP in clear (top bits `10`, RFC 9443) by whoever watches the wire. A sealed
//! media datagram starts with `0x01` (like a STUN response's first byte), but then its STUN
//! "type" would be `0x01` followed by the top byte of a 64-bit sequence number, never `0x0101`
//! in practice, and its bytes 4–8 (sequence bytes) would have to equal the magic cookie;
//! besides, devices demultiplex by source address first: only datagrams from their host's call
//! port are decoded here, everything else is media.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

/// Length of an allocation id.
pub const ALLOC_ID_LEN: usize = 8;
/// Length of the secret that claims an allocation.
pub const RELAY_TOKEN_LEN: usize = 16;
/// A host's name for one relayed call leg.
pub type AllocId = [u8; ALLOC_ID_LEN];
/// The secret a device proves it knows to claim its allocation (see [`bind_proof`]); it never
/// goes on the wire.
pub type RelayToken = [u8; RELAY_TOKEN_LEN];
/// Length of a [`Frame::Challenge`]'s nonce.
pub const BIND_NONCE_LEN: usize = 16;
/// Length of a [`Frame::Bind`]'s proof.
pub const BIND_PROOF_LEN: usize = 16;
/// Length of a STUN transaction id.
pub const TRANSACTION_LEN: usize = 12;

/// STUN's magic cookie (RFC 8489 §5).
pub const STUN_MAGIC_COOKIE: u32 = 0x2112_A442;
/// Length of a STUN message header.
pub const STUN_HEADER_LEN: usize = 20;
const STUN_BINDING_REQUEST: u16 = 0x0001;
const STUN_BINDING_RESPONSE: u16 = 0x0101;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const FAMILY_IPV4: u8 = 0x01;
const FAMILY_IPV6: u8 = 0x02;

/// First byte of [`Frame::BindRequest`].
pub const TAG_BIND_REQUEST: u8 = 0xC1;
/// First byte of [`Frame::Bound`].
pub const TAG_BOUND: u8 = 0xC2;
/// First byte of [`Frame::Challenge`].
pub const TAG_CHALLENGE: u8 = 0xC3;
/// First byte of [`Frame::Data`].
pub const TAG_DATA: u8 = 0xC4;
/// First byte of [`Frame::Forward`].
pub const TAG_FORWARD: u8 = 0xC5;
/// First byte of [`Frame::Bind`].
pub const TAG_BIND: u8 = 0xC6;

/// The largest UDP payload over IPv4 (65,535 − 8 − 20).
pub const MAX_DATAGRAM: usize = 65_507;
/// Length of a `Data`/`Forward` frame's header: tag and allocation id.
pub const RELAY_HEADER_LEN: usize = 1 + ALLOC_ID_LEN;
/// Largest payload a `Data`/`Forward` frame carries, so that the frame stays within
/// [`MAX_DATAGRAM`]. Decoding refuses more, and empty payloads.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - RELAY_HEADER_LEN;

/// Length of a [`Frame::Challenge`], and of the [`Frame::BindRequest`] that asks for one.
pub const CHALLENGE_LEN: usize = 1 + ALLOC_ID_LEN + BIND_NONCE_LEN;
/// Length of a [`Frame::Bind`].
pub const BIND_LEN: usize = 1 + ALLOC_ID_LEN + BIND_NONCE_LEN + BIND_PROOF_LEN;
const BOUND_LEN: usize = 1 + ALLOC_ID_LEN;

/// What [`bind_proof`]'s BLAKE2b starts with, so that the proof can be taken for nothing else
/// keyed with the token.
const BIND_PROOF_LABEL: &[u8] = b"smvs call-port bind v1";

/// What a device sends in a [`Frame::Bind`] to show that it knows its allocation's `token`,
/// for the `nonce` its host's [`Frame::Challenge`] carried: BLAKE2b-128 keyed with the token,
/// of a fixed label, the allocation id and the nonce. `None` only when libsodium fails.
pub fn bind_proof(
    token: &RelayToken,
    alloc: &AllocId,
    nonce: &[u8; BIND_NONCE_LEN],
) -> Option<[u8; BIND_PROOF_LEN]> {
    let mac = smvs_crypto::blake2b(
        BIND_PROOF_LEN,
        Some(token),
        &[BIND_PROOF_LABEL, alloc, nonce],
    )
    .ok()?;
    <[u8; BIND_PROOF_LEN]>::try_from(mac.as_slice()).ok()
}

/// One call-port datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// STUN Binding request (RFC 8489): 20-byte header, type `0x0001`, the magic cookie.
    /// Attributes, if any, are skipped (they must still be well formed).
    BindingRequest { transaction: [u8; TRANSACTION_LEN] },
    /// STUN Binding success response (type `0x0101`) carrying XOR-MAPPED-ADDRESS (`0x0020`),
    /// IPv4 or IPv6 (RFC 8489 §14.2). Decoding takes the first XOR-MAPPED-ADDRESS among any
    /// other attributes, which are skipped.
    BindingResponse {
        transaction: [u8; TRANSACTION_LEN],
        mapped: SocketAddr,
    },
    /// device → host: the device asks for a [`Frame::Challenge`] to claim allocation `alloc`
    /// from the address it sends from. Padded with zeros to the challenge's length.
    BindRequest { alloc: AllocId },
    /// host → whoever sent a `BindRequest` for an allocation it has: the nonce to prove the
    /// token with, good only from the address it was sent to, for a few seconds.
    Challenge {
        alloc: AllocId,
        nonce: [u8; BIND_NONCE_LEN],
    },
    /// device → host: the device claims allocation `alloc` with the challenge's `nonce` and
    /// `proof` = [`bind_proof`]`(token, alloc, nonce)`; the host records its address.
    Bind {
        alloc: AllocId,
        nonce: [u8; BIND_NONCE_LEN],
        proof: [u8; BIND_PROOF_LEN],
    },
    /// host → device: the bind took.
    Bound { alloc: AllocId },
    /// device ↔ host: one sealed media datagram through the allocation.
    Data { alloc: AllocId, payload: &'a [u8] },
    /// host → host: one sealed media datagram for the *receiving* host's allocation `alloc`.
    Forward { alloc: AllocId, payload: &'a [u8] },
}

/// Why a datagram is not a call-port frame.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CallPortError {
    #[error("empty datagram")]
    Empty,
    #[error("unknown call-port frame tag 0x{0:02x}")]
    UnknownTag(u8),
    #[error("{what} frame of {len} bytes; it must be {expected} bytes")]
    FrameLength {
        what: &'static str,
        len: usize,
        expected: usize,
    },
    #[error("{what} frame's padding is not all zeros")]
    NonZeroPadding { what: &'static str },
    #[error("{what} frame carries no payload")]
    EmptyPayload { what: &'static str },
    #[error("{what} payload of {len} bytes is over the limit of {MAX_PAYLOAD}")]
    PayloadTooLarge { what: &'static str, len: usize },
    #[error("STUN message of {0} bytes is shorter than its 20-byte header")]
    StunTruncated(usize),
    #[error("not a STUN message: no magic cookie")]
    NoMagicCookie,
    #[error("STUN message length {0} is not a multiple of 4")]
    StunUnaligned(usize),
    #[error("STUN message says {declared} bytes of attributes but carries {actual}")]
    StunLength { declared: usize, actual: usize },
    #[error(
        "STUN message type 0x{0:04x} is neither a Binding request nor a Binding success response"
    )]
    UnsupportedStun(u16),
    #[error("STUN attribute 0x{attr:04x} at offset {offset}: {reason}")]
    MalformedAttribute {
        attr: u16,
        offset: usize,
        reason: &'static str,
    },
    #[error("STUN Binding response without an XOR-MAPPED-ADDRESS")]
    MissingMappedAddress,
}

impl<'a> Frame<'a> {
    /// Reads one datagram. Never panics; everything not exactly one of the frames is an error.
    pub fn decode(datagram: &'a [u8]) -> Result<Frame<'a>, CallPortError> {
        let (&tag, rest) = datagram.split_first().ok_or(CallPortError::Empty)?;
        if tag & 0xC0 == 0 {
            return decode_stun(datagram);
        }
        match tag {
            TAG_BIND_REQUEST => {
                let d = exact::<CHALLENGE_LEN>(datagram, "BindRequest")?;
                let (alloc, padding) = d[1..].split_at(ALLOC_ID_LEN);
                if padding.iter().any(|&b| b != 0) {
                    return Err(CallPortError::NonZeroPadding {
                        what: "BindRequest",
                    });
                }
                Ok(Frame::BindRequest { alloc: take(alloc) })
            }
            TAG_CHALLENGE => {
                let d = exact::<CHALLENGE_LEN>(datagram, "Challenge")?;
                Ok(Frame::Challenge {
                    alloc: take(&d[1..]),
                    nonce: take(&d[1 + ALLOC_ID_LEN..]),
                })
            }
            TAG_BIND => {
                let d = exact::<BIND_LEN>(datagram, "Bind")?;
                Ok(Frame::Bind {
                    alloc: take(&d[1..]),
                    nonce: take(&d[1 + ALLOC_ID_LEN..]),
                    proof: take(&d[1 + ALLOC_ID_LEN + BIND_NONCE_LEN..]),
                })
            }
            TAG_BOUND => {
                let alloc = exact::<BOUND_LEN>(datagram, "Bound").map(|d| take(&d[1..]))?;
                Ok(Frame::Bound { alloc })
            }
            TAG_DATA | TAG_FORWARD => {
                let what = if tag == TAG_DATA { "Data" } else { "Forward" };
                if rest.len() < ALLOC_ID_LEN {
                    return Err(CallPortError::FrameLength {
                        what,
                        len: datagram.len(),
                        expected: RELAY_HEADER_LEN + 1,
                    });
                }
                let (alloc, payload) = rest.split_at(ALLOC_ID_LEN);
                check_payload(what, payload)?;
                let alloc = take(alloc);
                Ok(if tag == TAG_DATA {
                    Frame::Data { alloc, payload }
                } else {
                    Frame::Forward { alloc, payload }
                })
            }
            other => Err(CallPortError::UnknownTag(other)),
        }
    }

    /// Appends the frame to `out`. A `Data`/`Forward` frame whose payload is empty or over
    /// [`MAX_PAYLOAD`] cannot be sent: nothing is appended (see [`Frame::try_encode`], which
    /// says so).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let _ = self.try_encode(out);
    }

    /// Appends the frame to `out`, or refuses a `Data`/`Forward` payload that is empty or over
    /// [`MAX_PAYLOAD`] (appending nothing).
    pub fn try_encode(&self, out: &mut Vec<u8>) -> Result<(), CallPortError> {
        match self {
            Frame::BindingRequest { transaction } => {
                stun_header(out, STUN_BINDING_REQUEST, 0, transaction);
            }
            Frame::BindingResponse {
                transaction,
                mapped,
            } => {
                let value_len: u16 = match mapped {
                    SocketAddr::V4(_) => 8,
                    SocketAddr::V6(_) => 20,
                };
                stun_header(out, STUN_BINDING_RESPONSE, 4 + value_len, transaction);
                out.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
                out.extend_from_slice(&value_len.to_be_bytes());
                let port = mapped.port() ^ (STUN_MAGIC_COOKIE >> 16) as u16;
                let family = match mapped {
                    SocketAddr::V4(_) => FAMILY_IPV4,
                    SocketAddr::V6(_) => FAMILY_IPV6,
                };
                out.extend_from_slice(&[0, family]);
                out.extend_from_slice(&port.to_be_bytes());
                let pad = xor_pad(transaction);
                match mapped.ip() {
                    IpAddr::V4(ip) => {
                        out.extend(ip.octets().iter().zip(&pad).map(|(a, k)| a ^ k));
                    }
                    IpAddr::V6(ip) => {
                        out.extend(ip.octets().iter().zip(&pad).map(|(a, k)| a ^ k));
                    }
                }
            }
            Frame::BindRequest { alloc } => {
                out.push(TAG_BIND_REQUEST);
                out.extend_from_slice(alloc);
                out.extend_from_slice(&[0; BIND_NONCE_LEN]);
            }
            Frame::Challenge { alloc, nonce } => {
                out.push(TAG_CHALLENGE);
                out.extend_from_slice(alloc);
                out.extend_from_slice(nonce);
            }
            Frame::Bind {
                alloc,
                nonce,
                proof,
            } => {
                out.push(TAG_BIND);
                out.extend_from_slice(alloc);
                out.extend_from_slice(nonce);
                out.extend_from_slice(proof);
            }
            Frame::Bound { alloc } => {
                out.push(TAG_BOUND);
                out.extend_from_slice(alloc);
            }
            Frame::Data { alloc, payload } => {
                check_payload("Data", payload)?;
                out.push(TAG_DATA);
                out.extend_from_slice(alloc);
                out.extend_from_slice(payload);
            }
            Frame::Forward { alloc, payload } => {
                check_payload("Forward", payload)?;
                out.push(TAG_FORWARD);
                out.extend_from_slice(alloc);
                out.extend_from_slice(payload);
            }
        }
        Ok(())
    }
}

fn check_payload(what: &'static str, payload: &[u8]) -> Result<(), CallPortError> {
    if payload.is_empty() {
        Err(CallPortError::EmptyPayload { what })
    } else if payload.len() > MAX_PAYLOAD {
        Err(CallPortError::PayloadTooLarge {
            what,
            len: payload.len(),
        })
    } else {
        Ok(())
    }
}

/// `datagram` when it is exactly `N` bytes long.
fn exact<'d, const N: usize>(
    datagram: &'d [u8],
    what: &'static str,
) -> Result<&'d [u8], CallPortError> {
    if datagram.len() == N {
        Ok(datagram)
    } else {
        Err(CallPortError::FrameLength {
            what,
            len: datagram.len(),
            expected: N,
        })
    }
}

/// The first `N` bytes of `bytes`, which the caller has checked has that many (zeros beyond
/// the end otherwise, never a panic).
fn take<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    for (o, b) in out.iter_mut().zip(bytes) {
        *o = *b;
    }
    out
}

fn stun_header(out: &mut Vec<u8>, kind: u16, len: u16, transaction: &[u8; TRANSACTION_LEN]) {
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(transaction);
}

/// What an address is XORed with: the magic cookie, then the transaction id (RFC 8489 §14.2).
fn xor_pad(transaction: &[u8; TRANSACTION_LEN]) -> [u8; 16] {
    let mut pad = [0u8; 16];
    pad[..4].copy_from_slice(&STUN_MAGIC_COOKIE.to_be_bytes());
    pad[4..].copy_from_slice(transaction);
    pad
}

fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([
        bytes.get(at).copied().unwrap_or(0),
        bytes.get(at + 1).copied().unwrap_or(0),
    ])
}

fn decode_stun(datagram: &[u8]) -> Result<Frame<'_>, CallPortError> {
    if datagram.len() < STUN_HEADER_LEN {
        return Err(CallPortError::StunTruncated(datagram.len()));
    }
    let (header, body) = datagram.split_at(STUN_HEADER_LEN);
    if header[4..8] != STUN_MAGIC_COOKIE.to_be_bytes() {
        return Err(CallPortError::NoMagicCookie);
    }
    let kind = be16(header, 0);
    let declared = usize::from(be16(header, 2));
    if declared % 4 != 0 {
        return Err(CallPortError::StunUnaligned(declared));
    }
    if declared != body.len() {
        return Err(CallPortError::StunLength {
            declared,
            actual: body.len(),
        });
    }
    let transaction: [u8; TRANSACTION_LEN] = take(&header[8..]);
    // Walk the attributes: each must fit, padded to 4 bytes, inside the message.
    let mut mapped = None;
    let mut at = 0;
    while at < body.len() {
        let offset = STUN_HEADER_LEN + at;
        if body.len() - at < 4 {
            return Err(CallPortError::MalformedAttribute {
                attr: 0,
                offset,
                reason: "truncated attribute header",
            });
        }
        let attr = be16(body, at);
        let len = usize::from(be16(body, at + 2));
        let padded = len.div_ceil(4) * 4;
        let value_at = at + 4;
        if body.len() - value_at < padded {
            return Err(CallPortError::MalformedAttribute {
                attr,
                offset,
                reason: "value runs past the end of the message",
            });
        }
        let value = &body[value_at..value_at + len];
        if attr == ATTR_XOR_MAPPED_ADDRESS && mapped.is_none() {
            mapped = Some(xor_mapped_address(value, &transaction).map_err(|reason| {
                CallPortError::MalformedAttribute {
                    attr,
                    offset,
                    reason,
                }
            })?);
        }
        at = value_at + padded;
    }
    match kind {
        STUN_BINDING_REQUEST => Ok(Frame::BindingRequest { transaction }),
        STUN_BINDING_RESPONSE => Ok(Frame::BindingResponse {
            transaction,
            mapped: mapped.ok_or(CallPortError::MissingMappedAddress)?,
        }),
        other => Err(CallPortError::UnsupportedStun(other)),
    }
}

fn xor_mapped_address(
    value: &[u8],
    transaction: &[u8; TRANSACTION_LEN],
) -> Result<SocketAddr, &'static str> {
    if value.len() < 4 {
        return Err("XOR-MAPPED-ADDRESS shorter than 4 bytes");
    }
    // value[0] is reserved: ignored, as RFC 8489 says.
    let family = value[1];
    let port = be16(value, 2) ^ (STUN_MAGIC_COOKIE >> 16) as u16;
    let pad = xor_pad(transaction);
    let address = &value[4..];
    let ip = match family {
        FAMILY_IPV4 => {
            if address.len() != 4 {
                return Err("IPv4 XOR-MAPPED-ADDRESS is not 8 bytes");
            }
            let mut octets = [0u8; 4];
            for ((o, a), k) in octets.iter_mut().zip(address).zip(&pad) {
                *o = a ^ k;
            }
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        FAMILY_IPV6 => {
            if address.len() != 16 {
                return Err("IPv6 XOR-MAPPED-ADDRESS is not 20 bytes");
            }
            let mut octets = [0u8; 16];
            for ((o, a), k) in octets.iter_mut().zip(address).zip(&pad) {
                *o = a ^ k;
            }
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        _ => return Err("unknown address family"),
    };
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s
            .bytes()
            .filter(u8::is_ascii_hexdigit)
            .map(|c| match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => c - b'A' + 10,
            })
            .collect();
        digits.chunks(2).map(|p| (p[0] << 4) | p[1]).collect()
    }

    const TRANSACTION: &str = "b7e7a701 bc34d686 fa87dfae";

    /// RFC 5769 §2.1: a Binding request with SOFTWARE, PRIORITY, ICE-CONTROLLED, USERNAME,
    /// MESSAGE-INTEGRITY and FINGERPRINT.
    const RFC5769_REQUEST: &str = "
        00010058 2112a442 b7e7a701 bc34d686 fa87dfae
        80220010 5354554e 20746573 7420636c 69656e74
        00240004 6e0001ff
        80290008 932ff9b1 51263b36
        00060009 6576746a 3a683676 59202020
        00080014 9aeaa70c bfd8cb56 781ef2b5 b2d3f249 c1b571a2
        80280004 e57a3bcf";

    /// RFC 5769 §2.2: the IPv4 response, 192.0.2.1:32853.
    const RFC5769_IPV4: &str = "
        0101003c 2112a442 b7e7a701 bc34d686 fa87dfae
        8022000b 74657374 20766563 746f7220
        00200008 0001a147 e112a643
        00080014 2b91f599 fd9e90c3 8c7489f9 2af9ba53 f06be7d7
        80280004 c07d4c96";

    /// RFC 5769 §2.3: the IPv6 response, [2001:db8:1234:5678:11:2233:4455:6677]:32853.
    const RFC5769_IPV6: &str = "
        01010048 2112a442 b7e7a701 bc34d686 fa87dfae
        8022000b 74657374 20766563 746f7220
        00200014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9
        00080014 a382954e 4be67bf1 1784c97c 8292c275 bfe3ed41
        80280004 c8fb0b4c";

    fn transaction() -> [u8; TRANSACTION_LEN] {
        take(&hex(TRANSACTION))
    }

    fn round_trip(frame: Frame<'_>) -> Vec<u8> {
        let mut out = vec![0xEE];
        frame.try_encode(&mut out).unwrap();
        assert_eq!(out[0], 0xEE, "encode appends");
        assert_eq!(Frame::decode(&out[1..]).unwrap(), frame);
        out.split_off(1)
    }

    fn every_frame() -> Vec<Vec<u8>> {
        let payload = [0x01, 0, 0, 0, 0, 0, 0, 0, 7, 0xAA, 0xBB];
        vec![
            round_trip(Frame::BindingRequest {
                transaction: transaction(),
            }),
            round_trip(Frame::BindingResponse {
                transaction: transaction(),
                mapped: "192.0.2.1:32853".parse().unwrap(),
            }),
            round_trip(Frame::BindingResponse {
                transaction: transaction(),
                mapped: "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                    .parse()
                    .unwrap(),
            }),
            round_trip(Frame::BindRequest {
                alloc: [1; ALLOC_ID_LEN],
            }),
            round_trip(Frame::Challenge {
                alloc: [1; ALLOC_ID_LEN],
                nonce: [6; BIND_NONCE_LEN],
            }),
            round_trip(Frame::Bind {
                alloc: [1; ALLOC_ID_LEN],
                nonce: [6; BIND_NONCE_LEN],
                proof: [2; BIND_PROOF_LEN],
            }),
            round_trip(Frame::Bound {
                alloc: [3; ALLOC_ID_LEN],
            }),
            round_trip(Frame::Data {
                alloc: [4; ALLOC_ID_LEN],
                payload: &payload,
            }),
            round_trip(Frame::Forward {
                alloc: [5; ALLOC_ID_LEN],
                payload: &payload,
            }),
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        let frames = every_frame();
        assert_eq!(frames[0].len(), STUN_HEADER_LEN);
        assert_eq!(frames[1].len(), STUN_HEADER_LEN + 12);
        assert_eq!(frames[2].len(), STUN_HEADER_LEN + 24);
        assert_eq!(
            frames[3],
            [&[TAG_BIND_REQUEST][..], &[1; 8], &[0; 16]].concat()
        );
        assert_eq!(
            frames[4],
            [&[TAG_CHALLENGE][..], &[1; 8], &[6; 16]].concat()
        );
        assert_eq!(
            frames[5],
            [&[TAG_BIND][..], &[1; 8], &[6; 16], &[2; 16]].concat()
        );
        assert_eq!(frames[3].len(), CHALLENGE_LEN);
        assert_eq!(frames[4].len(), 25);
        assert_eq!(frames[5].len(), BIND_LEN);
        assert_eq!(BIND_LEN, 41);
        assert_eq!(frames[6].len(), 9);
        assert_eq!(frames[7][0], TAG_DATA);
        assert_eq!(frames[8][0], TAG_FORWARD);
        // Every relay tag has the top bits 11: never STUN, never RTP/RTCP in clear.
        for frame in &frames[3..] {
            assert_eq!(frame[0] & 0xC0, 0xC0, "{frame:02x?}");
        }
    }

    #[test]
    fn a_bind_request_is_as_long_as_the_challenge_and_padded_with_zeros() {
        let mut request = Vec::new();
        Frame::BindRequest { alloc: [7; 8] }.encode(&mut request);
        let mut challenge = Vec::new();
        Frame::Challenge {
            alloc: [7; 8],
            nonce: [0xFF; 16],
        }
        .encode(&mut challenge);
        assert_eq!(request.len(), challenge.len(), "the port is no amplifier");
        for at in 1 + ALLOC_ID_LEN..CHALLENGE_LEN {
            let mut bad = request.clone();
            bad[at] = 1;
            assert_eq!(
                Frame::decode(&bad),
                Err(CallPortError::NonZeroPadding {
                    what: "BindRequest"
                })
            );
        }
    }

    #[test]
    fn the_bind_proof_is_keyed_blake2b_of_the_label_allocation_and_nonce() {
        // Python: hashlib.blake2b(b"smvs call-port bind v1" + bytes([1] * 8) + bytes([3] * 16),
        //                         key=bytes([2] * 16), digest_size=16)
        let proof = bind_proof(&[2; 16], &[1; 8], &[3; 16]).unwrap();
        assert_eq!(proof[..], hex("09706eaa35094e414c541020afb65f9c")[..]);
        // Every input counts.
        assert_ne!(bind_proof(&[4; 16], &[1; 8], &[3; 16]).unwrap(), proof);
        assert_ne!(bind_proof(&[2; 16], &[5; 8], &[3; 16]).unwrap(), proof);
        assert_ne!(bind_proof(&[2; 16], &[1; 8], &[6; 16]).unwrap(), proof);
    }

    #[test]
    fn rfc5769_ipv4_response() {
        let bytes = hex(RFC5769_IPV4);
        assert_eq!(
            Frame::decode(&bytes).unwrap(),
            Frame::BindingResponse {
                transaction: transaction(),
                mapped: "192.0.2.1:32853".parse().unwrap(),
            }
        );
        // Our own encoding carries the same XOR-MAPPED-ADDRESS bytes.
        let mut ours = Vec::new();
        Frame::decode(&bytes).unwrap().encode(&mut ours);
        assert_eq!(ours[20..], hex("00200008 0001a147 e112a643")[..]);
    }

    #[test]
    fn rfc5769_ipv6_response() {
        let bytes = hex(RFC5769_IPV6);
        assert_eq!(
            Frame::decode(&bytes).unwrap(),
            Frame::BindingResponse {
                transaction: transaction(),
                mapped: "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
                    .parse()
                    .unwrap(),
            }
        );
        let mut ours = Vec::new();
        Frame::decode(&bytes).unwrap().encode(&mut ours);
        assert_eq!(
            ours[20..],
            hex("00200014 0002a147 0113a9fa a5d3f179 bc25f4b5 bed2b9d9")[..]
        );
    }

    #[test]
    fn rfc5769_request_attributes_are_skipped() {
        assert_eq!(
            Frame::decode(&hex(RFC5769_REQUEST)).unwrap(),
            Frame::BindingRequest {
                transaction: transaction()
            }
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let mut all = every_frame();
        all.extend([RFC5769_REQUEST, RFC5769_IPV4, RFC5769_IPV6].map(hex));
        for bytes in &all {
            for cut in 0..bytes.len() {
                let prefix = &bytes[..cut];
                match Frame::decode(prefix) {
                    Err(_) => {}
                    // A relay frame cut after its first payload byte is a shorter relay frame.
                    Ok(Frame::Data { payload, .. } | Frame::Forward { payload, .. })
                        if cut > RELAY_HEADER_LEN =>
                    {
                        assert_eq!(payload, &bytes[RELAY_HEADER_LEN..cut]);
                    }
                    Ok(other) => panic!("{cut}-byte prefix of {bytes:02x?} decoded as {other:?}"),
                }
            }
        }
    }

    #[test]
    fn extra_bytes_and_bad_stun_are_errors() {
        // Every frame but Data and Forward (whose payload may be longer) has one length.
        for bytes in every_frame().iter().take(7) {
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(Frame::decode(&longer).is_err(), "{longer:02x?}");
            longer.extend([0, 0, 0]);
            if longer[0] & 0xC0 == 0 {
                // Four more bytes than the STUN length says.
                assert!(matches!(
                    Frame::decode(&longer),
                    Err(CallPortError::StunLength { .. })
                ));
            }
        }
        let response = hex(RFC5769_IPV4);
        // No magic cookie.
        let mut bad = response.clone();
        bad[4] ^= 1;
        assert_eq!(Frame::decode(&bad), Err(CallPortError::NoMagicCookie));
        // An attribute whose length runs past the message.
        let mut bad = response.clone();
        bad[22..24].copy_from_slice(&0x0040u16.to_be_bytes());
        assert!(matches!(
            Frame::decode(&bad),
            Err(CallPortError::MalformedAttribute { .. })
        ));
        // XOR-MAPPED-ADDRESS with an unknown family, or the wrong length for its family.
        let at = 20 + 16; // after SOFTWARE
        let mut bad = response.clone();
        bad[at + 5] = 3;
        assert!(matches!(
            Frame::decode(&bad),
            Err(CallPortError::MalformedAttribute { attr: 0x0020, .. })
        ));
        let mut bad = response.clone();
        bad[at + 5] = FAMILY_IPV6;
        assert!(matches!(
            Frame::decode(&bad),
            Err(CallPortError::MalformedAttribute { attr: 0x0020, .. })
        ));
        // A response without XOR-MAPPED-ADDRESS: rename the attribute.
        let mut bad = response.clone();
        bad[at..at + 2].copy_from_slice(&0x8888u16.to_be_bytes());
        assert_eq!(
            Frame::decode(&bad),
            Err(CallPortError::MissingMappedAddress)
        );
        // Other STUN methods and classes.
        let mut bad = hex(RFC5769_REQUEST);
        bad[1] = 0x11; // a Binding indication
        assert_eq!(
            Frame::decode(&bad),
            Err(CallPortError::UnsupportedStun(0x0011))
        );
        // An unaligned STUN length.
        let mut bad = every_frame()[0].clone();
        bad[3] = 2;
        bad.extend([0, 0]);
        assert_eq!(Frame::decode(&bad), Err(CallPortError::StunUnaligned(2)));
        assert_eq!(Frame::decode(&[]), Err(CallPortError::Empty));
        for tag in [0x40, 0x80, 0xC0, 0xC7, 0xFF] {
            assert_eq!(
                Frame::decode(&[tag, 0, 0]),
                Err(CallPortError::UnknownTag(tag))
            );
        }
    }

    #[test]
    fn payload_limits() {
        let alloc = [9; ALLOC_ID_LEN];
        let big = vec![0x01; MAX_PAYLOAD + 1];
        let mut out = Vec::new();
        for frame in [
            Frame::Data {
                alloc,
                payload: &[],
            },
            Frame::Forward {
                alloc,
                payload: &big,
            },
        ] {
            assert!(frame.try_encode(&mut out).is_err());
            frame.encode(&mut out);
            assert!(out.is_empty(), "nothing appended for {frame:?}");
        }
        let largest = Frame::Forward {
            alloc,
            payload: &big[..MAX_PAYLOAD],
        };
        largest.encode(&mut out);
        assert_eq!(out.len(), MAX_DATAGRAM);
        assert_eq!(Frame::decode(&out).unwrap(), largest);
        out.push(1);
        assert_eq!(
            Frame::decode(&out),
            Err(CallPortError::PayloadTooLarge {
                what: "Forward",
                len: MAX_PAYLOAD + 1
            })
        );
        assert_eq!(
            Frame::decode(&[TAG_DATA; RELAY_HEADER_LEN]),
            Err(CallPortError::EmptyPayload { what: "Data" })
        );
    }

    #[test]
    fn a_sealed_media_datagram_is_not_a_frame() {
        // [0x01][seq u64 BE][ciphertext]: STUN-looking first byte, but no magic cookie.
        for seq in [0u64, 1, 0x2112_A442, 0x2112_A442 << 8, u64::MAX] {
            let mut datagram = vec![0x01];
            datagram.extend_from_slice(&seq.to_be_bytes());
            datagram.extend_from_slice(&[0x5A; 40]);
            assert!(Frame::decode(&datagram).is_err(), "seq {seq:#x}");
        }
    }
}
