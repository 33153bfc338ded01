//! Where a call's media may go: the peer's candidate addresses, our own host's relay, and the
//! device's side of the relay protocol (`smvs_transport::callport`).
//!
//! ```text
//!   device ──Data{alloc}──► own host's call port ──Forward──► peer host's call port ──Data──► peer device
//!          ◄──────────────── (the same, the other way) ◄─────────────────────────────────────
//!
//!   device ──BindRequest{alloc}──────► own host's call port
//!   device ◄─Challenge{alloc, nonce}── (the nonce is good only for the address it went to)
//!   device ──Bind{alloc, nonce, proof}─►
//!   device ◄─Bound{alloc}──────────────
//! ```
//!
//! The device claims its allocation by return routability: it asks with a `BindRequest`, and
//! answers the host's `Challenge` with a `Bind` carrying `bind_proof(token, alloc, nonce)`, a
//! keyed BLAKE2b that shows it knows the allocation's secret token (the host gave both over
//! the authenticated device link) without sending it: the token stays in [`RelayGrant`] and
//! never goes on the wire, and a `Bind` replayed from another address is refused by the host.
//! The device asks every [`BIND_RETRY`] until bound, then every [`BIND_KEEPALIVE`], so the host
//! follows a NAT that changes the device's mapping; it answers at most one `Challenge` per
//! `BindRequest` it sent (so forged challenges cannot make it send binds, nor sign a nonce of
//! someone else's more than once per request). The host forwards only between the device so
//! bound and the one relay allocation the peer's host named in the call signalling. The relay
//! sees sealed datagrams only.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smvs_transport::callport::{bind_proof, AllocId, Frame, RelayToken};

use crate::consent::{Path, PathKind};

/// A `BindRequest` is repeated this often until the host takes our bind...
pub(crate) const BIND_RETRY: Duration = Duration::from_millis(250);
/// ... and then this often, to keep the device's NAT mapping and the host's record of it fresh.
pub(crate) const BIND_KEEPALIVE: Duration = Duration::from_secs(10);

/// One address the peer named in its call signalling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerCandidate {
    pub address: SocketAddr,
    /// The address the peer's NAT shows the world (its host told it by STUN), as opposed to
    /// the peer's own.
    pub reflexive: bool,
}

/// Our own host's relay allocation for this call.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayGrant {
    /// The host's call port.
    pub address: SocketAddr,
    pub alloc: AllocId,
    /// The secret that claims the allocation.
    pub token: RelayToken,
}

impl std::fmt::Debug for RelayGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayGrant")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Where the media may go. Each endpoint checks every path and sends on the most direct one
/// that works (see the crate's `consent` module).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reach {
    /// The peer's addresses to try straight. Empty when the call is relayed only.
    pub peer: Vec<PeerCandidate>,
    /// Our host's relay, when it gave one.
    pub relay: Option<RelayGrant>,
    /// Our socket's address is not what the world sees (our host's STUN answer differed), so
    /// no straight path of ours is NAT-free.
    pub behind_nat: bool,
    /// This call goes through the relay only (`--relay`, or the host's `relay_calls`): no
    /// straight path is ever taken, not even one the peer's datagrams open, and nothing but
    /// the relay is listened to.
    pub relay_only: bool,
}

impl Reach {
    /// Straight to one address, nothing else (two endpoints that know where the other is).
    pub fn direct(peer: SocketAddr) -> Reach {
        Reach {
            peer: vec![PeerCandidate {
                address: peer,
                reflexive: false,
            }],
            relay: None,
            behind_nat: false,
            relay_only: false,
        }
    }

    /// The paths to check from the start.
    pub(crate) fn paths(&self) -> Vec<(Path, PathKind)> {
        let peer = if self.relay_only {
            &[][..]
        } else {
            &self.peer[..]
        };
        let mut paths: Vec<(Path, PathKind)> = peer
            .iter()
            .map(|c| {
                let kind = if c.reflexive {
                    PathKind::Reflexive
                } else {
                    PathKind::Direct
                };
                (Path::Direct(c.address), kind)
            })
            .collect();
        if self.relay.is_some() {
            paths.push((Path::Relayed, PathKind::Relayed));
        }
        paths
    }
}

/// What came from the relay.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FromRelay<'a> {
    /// A datagram from the peer, through the two hosts.
    Data(&'a [u8]),
    /// The host took our bind.
    Bound,
    /// The host challenged our `BindRequest`: send this (our `Bind`) back to the relay's
    /// address ([`RelayLink::address`]) at once.
    Reply(Vec<u8>),
    /// Anything else (a late STUN answer, a frame for another allocation, a challenge we did
    /// not ask for): dropped.
    Other,
}

/// The device's side of its relay allocation.
#[derive(Debug)]
pub(crate) struct RelayLink {
    grant: RelayGrant,
    bound: bool,
    next_bind: Instant,
    /// A `BindRequest` went out whose `Challenge` has not been answered yet.
    asked: bool,
}

impl RelayLink {
    pub(crate) fn new(grant: RelayGrant, now: Instant) -> RelayLink {
        RelayLink {
            grant,
            bound: false,
            next_bind: now,
            asked: false,
        }
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.grant.address
    }

    #[cfg(test)]
    pub(crate) fn bound(&self) -> bool {
        self.bound
    }

    /// When the next `BindRequest` is due.
    pub(crate) fn next_bind(&self) -> Instant {
        self.next_bind
    }

    /// The `BindRequest` to send to the relay now, if one is due: every [`BIND_RETRY`] until
    /// bound, then every [`BIND_KEEPALIVE`].
    pub(crate) fn bind_to_send(&mut self, now: Instant) -> Option<Vec<u8>> {
        if now < self.next_bind {
            return None;
        }
        self.next_bind = now
            + if self.bound {
                BIND_KEEPALIVE
            } else {
                BIND_RETRY
            };
        self.asked = true;
        let mut out = Vec::with_capacity(32);
        Frame::BindRequest {
            alloc: self.grant.alloc,
        }
        .encode(&mut out);
        Some(out)
    }

    /// A datagram from the relay's address. A [`FromRelay::Reply`] is to be sent back to it.
    pub(crate) fn open<'a>(&mut self, datagram: &'a [u8]) -> FromRelay<'a> {
        match Frame::decode(datagram) {
            Ok(Frame::Data { alloc, payload }) if alloc == self.grant.alloc => {
                FromRelay::Data(payload)
            }
            Ok(Frame::Challenge { alloc, nonce }) if alloc == self.grant.alloc && self.asked => {
                let Some(proof) = bind_proof(&self.grant.token, &alloc, &nonce) else {
                    return FromRelay::Other;
                };
                self.asked = false;
                let mut out = Vec::with_capacity(48);
                Frame::Bind {
                    alloc,
                    nonce,
                    proof,
                }
                .encode(&mut out);
                FromRelay::Reply(out)
            }
            Ok(Frame::Bound { alloc }) if alloc == self.grant.alloc => {
                if !self.bound {
                    self.bound = true;
                    self.next_bind = Instant::now() + BIND_KEEPALIVE;
                }
                FromRelay::Bound
            }
            _ => FromRelay::Other,
        }
    }
}

/// `sealed` framed for our relay allocation.
pub(crate) fn relay_frame(alloc: AllocId, sealed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sealed.len() + 16);
    Frame::Data {
        alloc,
        payload: sealed,
    }
    .encode(&mut out);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn grant() -> RelayGrant {
        RelayGrant {
            address: "192.0.2.7:7423".parse().unwrap(),
            alloc: [1; 8],
            token: [2; 16],
        }
    }

    fn challenge(alloc: AllocId, nonce: [u8; 16]) -> Vec<u8> {
        let mut out = Vec::new();
        Frame::Challenge { alloc, nonce }.encode(&mut out);
        out
    }

    #[test]
    fn bind_requests_are_retried_until_bound_then_kept_alive() {
        let t0 = Instant::now();
        let mut link = RelayLink::new(grant(), t0);
        let request = link.bind_to_send(t0).unwrap();
        assert_eq!(
            Frame::decode(&request).unwrap(),
            Frame::BindRequest { alloc: [1; 8] }
        );
        assert!(link.bind_to_send(t0 + BIND_RETRY / 2).is_none());
        assert!(link.bind_to_send(t0 + BIND_RETRY).is_some());
        assert!(!link.bound());
        let mut bound = Vec::new();
        Frame::Bound { alloc: [1; 8] }.encode(&mut bound);
        assert_eq!(link.open(&bound), FromRelay::Bound);
        assert!(link.bound());
        assert!(link.next_bind() > Instant::now() + BIND_KEEPALIVE - Duration::from_secs(1));
        // Bound: the next request a keep-alive later.
        let next = link.next_bind();
        assert!(link.bind_to_send(next - Duration::from_millis(1)).is_none());
        assert!(link.bind_to_send(next).is_some());
        assert_eq!(link.next_bind(), next + BIND_KEEPALIVE);

        let data = relay_frame([1; 8], b"sealed");
        assert_eq!(link.open(&data), FromRelay::Data(b"sealed"));
        // Another allocation's frames, garbage: nothing.
        assert_eq!(link.open(&relay_frame([3; 8], b"x")), FromRelay::Other);
        assert_eq!(link.open(&[0xc4, 1]), FromRelay::Other);
        assert_eq!(link.open(&[]), FromRelay::Other);
    }

    #[test]
    fn a_challenge_is_answered_once_with_a_proof_and_never_the_token() {
        let t0 = Instant::now();
        let g = grant();
        let mut link = RelayLink::new(g.clone(), t0);
        let nonce = [9; 16];
        // Not asked yet: a challenge is dropped.
        assert_eq!(link.open(&challenge([1; 8], nonce)), FromRelay::Other);
        link.bind_to_send(t0).unwrap();
        // Another allocation's challenge: dropped, and ours is still answered.
        assert_eq!(link.open(&challenge([3; 8], nonce)), FromRelay::Other);
        let FromRelay::Reply(bind) = link.open(&challenge([1; 8], nonce)) else {
            panic!("no answer to our challenge")
        };
        assert_eq!(
            Frame::decode(&bind).unwrap(),
            Frame::Bind {
                alloc: [1; 8],
                nonce,
                proof: bind_proof(&g.token, &g.alloc, &nonce).unwrap(),
            }
        );
        assert!(
            !bind.windows(g.token.len()).any(|w| w == g.token),
            "the token went on the wire"
        );
        // One answer per request: a second challenge (forged, or late) gets none...
        assert_eq!(link.open(&challenge([1; 8], [8; 16])), FromRelay::Other);
        assert!(!link.bound(), "a challenge is not a bind");
        // ... until the next request.
        link.bind_to_send(t0 + BIND_RETRY).unwrap();
        assert!(matches!(
            link.open(&challenge([1; 8], [8; 16])),
            FromRelay::Reply(_)
        ));
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let shown = format!("{:?}", grant());
        assert!(!shown.contains("2, 2"), "{shown}");
    }
}
