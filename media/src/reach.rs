//! Where a call's media may go: the peer's candidate addresses, our own host's relay, and the
//! device's side of the relay protocol (`smvs_transport::callport`).
//!
//! ```text
//!   device ──Data{alloc}──► own host's call port ──Forward──► peer host's call port ──Data──► peer device
//!          ◄──────────────── (the same, the other way) ◄─────────────────────────────────────
//! ```
//!
//! The device claims its allocation with a `Bind` carrying the allocation's secret token (the
//! host gave both over the authenticated device link), again every [`BIND_KEEPALIVE`] so the
//! host follows a NAT that changes the device's mapping; the host forwards only between the
//! device so bound and the one relay allocation the peer's host named in the call signalling.
//! The relay sees sealed datagrams only.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smvs_transport::callport::{AllocId, Frame, RelayToken};

use crate::consent::{Path, PathKind};

/// A bind is repeated this often until the host answers it...
const BIND_RETRY: Duration = Duration::from_millis(250);
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
        }
    }

    /// The paths to check from the start.
    pub(crate) fn paths(&self) -> Vec<(Path, PathKind)> {
        let mut paths: Vec<(Path, PathKind)> = self
            .peer
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
    /// Anything else (a late STUN answer, a frame for another allocation): dropped.
    Other,
}

/// The device's side of its relay allocation.
#[derive(Debug)]
pub(crate) struct RelayLink {
    grant: RelayGrant,
    bound: bool,
    next_bind: Instant,
}

impl RelayLink {
    pub(crate) fn new(grant: RelayGrant, now: Instant) -> RelayLink {
        RelayLink {
            grant,
            bound: false,
            next_bind: now,
        }
    }

    pub(crate) fn address(&self) -> SocketAddr {
        self.grant.address
    }

    #[cfg(test)]
    pub(crate) fn bound(&self) -> bool {
        self.bound
    }

    pub(crate) fn next_bind(&self) -> Instant {
        self.next_bind
    }

    /// The bind to send now, if one is due.
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
        let mut out = Vec::with_capacity(32);
        Frame::Bind {
            alloc: self.grant.alloc,
            token: self.grant.token,
        }
        .encode(&mut out);
        Some(out)
    }

    /// A datagram from the relay's address.
    pub(crate) fn open<'a>(&mut self, datagram: &'a [u8]) -> FromRelay<'a> {
        match Frame::decode(datagram) {
            Ok(Frame::Data { alloc, payload }) if alloc == self.grant.alloc => {
                FromRelay::Data(payload)
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

    #[test]
    fn binds_are_retried_until_answered_then_kept_alive() {
        let t0 = Instant::now();
        let mut link = RelayLink::new(grant(), t0);
        let bind = link.bind_to_send(t0).unwrap();
        assert_eq!(
            Frame::decode(&bind).unwrap(),
            Frame::Bind {
                alloc: [1; 8],
                token: [2; 16]
            }
        );
        assert!(link.bind_to_send(t0 + BIND_RETRY / 2).is_none());
        assert!(link.bind_to_send(t0 + BIND_RETRY).is_some());
        let mut bound = Vec::new();
        Frame::Bound { alloc: [1; 8] }.encode(&mut bound);
        assert_eq!(link.open(&bound), FromRelay::Bound);
        assert!(link.bound());
        assert!(link.next_bind() > Instant::now() + BIND_KEEPALIVE - Duration::from_secs(1));

        let data = relay_frame([1; 8], b"sealed");
        assert_eq!(link.open(&data), FromRelay::Data(b"sealed"));
        // Another allocation's frames, garbage: nothing.
        assert_eq!(link.open(&relay_frame([3; 8], b"x")), FromRelay::Other);
        assert_eq!(link.open(&[0xc4, 1]), FromRelay::Other);
        assert_eq!(link.open(&[]), FromRelay::Other);
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let shown = format!("{:?}", grant());
        assert!(!shown.contains("2, 2"), "{shown}");
    }
}
