//! Calls as plain data: what a call signal says, one endpoint's media set-up, and what devices
//! are told about a call. The wire codec is in `session::codec`; the state machine is in
//! `calls`.

use std::net::SocketAddr;

use smvs_schema::Username;

pub use smvs_schema::{CallId, CallState};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalKind {
    Offer,
    Answer,
    Decline,
    Busy,
    Hangup,
    NoAnswer,
}

/// One step of a call's set-up or end, from one host to the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSignal {
    pub call_id: CallId,
    pub kind: SignalKind,
    /// Set on offer and answer.
    pub media: Option<Media>,
}

/// One endpoint's half of the media set-up: its fresh call key, and where it can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub public_key: [u8; 32],
    /// The device's own address; None when its side relays only and hides it.
    pub address: Option<SocketAddr>,
    /// The address the device's NAT shows the world (its host answered by STUN); None when
    /// there is none or it is hidden.
    pub reflexive: Option<SocketAddr>,
    /// The sending host's relay for this call (between hosts only: devices are never told the
    /// other side's).
    pub relay: Option<RelayPoint>,
    /// The sender's side relays only and hides its addresses.
    pub relay_only: bool,
    pub video: bool,
    pub audio: bool,
    /// The post-quantum half of the call's key exchange (X-Wing): in an offer the caller's
    /// fresh public key, in an answer the callee's encapsulation to it. The hosts only carry
    /// it; the devices derive the media keys.
    pub kem: Vec<u8>,
}

/// A host's relay for one call: its call port and the allocation to name there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayPoint {
    pub address: SocketAddr,
    pub alloc: [u8; 8],
}

/// Checks a media address a device or a peer sent: a literal IP:port (no names to resolve, no
/// port 0) that can receive datagrams.
fn media_address(what: &str, address: &str) -> Result<SocketAddr, String> {
    let parsed: SocketAddr = address
        .parse()
        .map_err(|_| format!("{what} {address:?} is not IP:port"))?;
    // An IPv4 address written as IPv6 (::ffff:a.b.c.d) is judged as the IPv4 it is.
    let parsed = SocketAddr::new(parsed.ip().to_canonical(), parsed.port());
    let broadcast = matches!(parsed.ip(), std::net::IpAddr::V4(v4) if v4.is_broadcast());
    if parsed.port() == 0 || parsed.ip().is_unspecified() || parsed.ip().is_multicast() || broadcast
    {
        return Err(format!("{what} {parsed} cannot receive media"));
    }
    Ok(parsed)
}

/// An optional address: empty is none.
fn optional_address(what: &str, address: &str) -> Result<Option<SocketAddr>, String> {
    if address.is_empty() {
        return Ok(None);
    }
    media_address(what, address).map(Some)
}

impl Media {
    /// Checks what a device or a peer sent: a 32-byte key, and an address (empty: hidden).
    /// The optional parts follow with [`Media::with_reflexive`] and [`Media::with_relay`].
    pub fn parse(
        public_key: &[u8],
        address: &str,
        video: bool,
        audio: bool,
    ) -> Result<Media, String> {
        let public_key: [u8; 32] = public_key
            .try_into()
            .map_err(|_| "a call key is 32 bytes".to_string())?;
        Ok(Media {
            public_key,
            address: optional_address("media address", address)?,
            reflexive: None,
            relay: None,
            relay_only: false,
            video,
            audio,
            kem: Vec::new(),
        })
    }

    /// The X-Wing half, as sent: a public key in an offer, a ciphertext in an answer.
    pub fn with_kem(mut self, kind: SignalKind, kem: &[u8]) -> Result<Media, String> {
        let expected = match kind {
            SignalKind::Offer => smvs_crypto::XWING_PUBLIC_KEY_LEN,
            SignalKind::Answer => smvs_crypto::XWING_CIPHERTEXT_LEN,
            _ => return Err("only an offer or an answer carries media".into()),
        };
        if kem.len() != expected {
            return Err(format!(
                "the call's X-Wing {} is {expected} bytes, not {}",
                if kind == SignalKind::Offer {
                    "key"
                } else {
                    "encapsulation"
                },
                kem.len()
            ));
        }
        self.kem = kem.to_vec();
        Ok(self)
    }

    /// The NAT's address, as sent (empty: none).
    pub fn with_reflexive(mut self, reflexive: &str) -> Result<Media, String> {
        self.reflexive = optional_address("reflexive media address", reflexive)?;
        Ok(self)
    }

    /// The sending host's relay point, as sent (empty address: none).
    pub fn with_relay(mut self, address: &str, alloc: &[u8]) -> Result<Media, String> {
        let Some(address) = optional_address("relay address", address)? else {
            return Ok(self);
        };
        let alloc = alloc
            .try_into()
            .map_err(|_| "a relay allocation is 8 bytes".to_string())?;
        self.relay = Some(RelayPoint { address, alloc });
        Ok(self)
    }

    /// Refuses a media set-up that gives the other side no way to reach it.
    pub fn reachable(self) -> Result<Media, String> {
        if self.address.is_none() && self.reflexive.is_none() && self.relay.is_none() {
            return Err("the media names no address and no relay".into());
        }
        Ok(self)
    }

    /// Without the device's addresses: its side relays only.
    pub fn hidden(mut self) -> Media {
        self.address = None;
        self.reflexive = None;
        self.relay_only = true;
        self
    }

    /// What one of our devices is told of the peer's media: never the peer host's relay point
    /// (the device sends through its own host), and no addresses when our side relays only.
    pub fn for_our_device(&self, relay_only: bool) -> Media {
        let mut m = self.clone();
        m.relay = None;
        if relay_only {
            m.address = None;
            m.reflexive = None;
        }
        m
    }
}

/// A device's side of its own host's relay for one call: where to send, the allocation to
/// name, and the secret that claims it.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayGrant {
    pub address: SocketAddr,
    pub alloc: [u8; 8],
    pub token: [u8; 16],
}

impl std::fmt::Debug for RelayGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayGrant")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// What the device that places or answers a call gets back: the call, the device's token for
/// it, and its relay (None when the host has none to give).
#[derive(Debug, Clone)]
pub struct DeviceCall {
    pub info: CallInfo,
    pub token: u64,
    pub relay: Option<RelayGrant>,
    /// The call is relayed only: the device takes no other path.
    pub relay_only: bool,
}

/// What devices and D-Bus are told about a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    pub id: CallId,
    pub peer: Username,
    pub outgoing: bool,
    pub state: CallState,
    /// Why it ended (empty while it lasts).
    pub reason: String,
    /// Both identity bundles (caller's, callee's), which the devices bind into the media keys.
    pub caller_identity: Vec<u8>,
    pub callee_identity: Vec<u8>,
    /// The other endpoint's offer or answer, once known.
    pub peer_media: Option<Media>,
    /// What the caller offered.
    pub video: bool,
    pub audio: bool,
    /// Unix ms the call entered its state.
    pub since: i64,
    /// Which of the user's clients picked up an incoming call (None: not picked up here).
    pub answered_by: Option<Answerer>,
}

/// One of the user's clients that can pick up a call: a connection to the socket or a linked
/// device's link. Every device may ring; the first to pick up takes the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answerer {
    /// Unique per connection for the life of this smvsd (from 1); [`Answerer::EARLIER`] for
    /// one read back from the event log, which no connection now is.
    pub client: u64,
    /// A linked device (another machine), not the host's own socket.
    pub linked_device: bool,
}

impl Answerer {
    pub const EARLIER: u64 = 0;
}

/// Who is told about a call: one client connection, or the host machine's desktop (D-Bus).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    Client(u64),
    HostDesktop,
}

/// The reason a ringing device that did not pick up is told.
pub const ANSWERED_ELSEWHERE: &str = "answered-elsewhere";

impl CallInfo {
    /// The call as `viewer` sees it: an incoming call another client picked up is
    /// "answered-elsewhere" (for the host's desktop, only one a linked device picked up), so the
    /// devices that rang with it stop ringing and say so.
    pub fn seen_by(mut self, viewer: Viewer) -> CallInfo {
        let elsewhere = match (self.answered_by, viewer) {
            (Some(by), Viewer::Client(client)) => by.client != client,
            (Some(by), Viewer::HostDesktop) => by.linked_device,
            (None, _) => false,
        };
        if elsewhere && self.state == CallState::Active {
            self.reason = ANSWERED_ELSEWHERE.to_string();
        }
        self
    }
}

impl super::HostEvent {
    /// The event as `viewer` sees it (see [`CallInfo::seen_by`]); others are the same for all.
    pub fn seen_by(&self, viewer: Viewer) -> std::borrow::Cow<'_, super::HostEvent> {
        match self {
            super::HostEvent::CallState(info) if info.answered_by.is_some() => {
                std::borrow::Cow::Owned(super::HostEvent::CallState(info.clone().seen_by(viewer)))
            }
            other => std::borrow::Cow::Borrowed(other),
        }
    }
}

#[cfg(test)]
impl CallInfo {
    /// An incoming video call from bob, active since 0, picked up by connection `client` on a
    /// linked device: the fixture the tests of several modules start from.
    pub(crate) fn answered_on_a_linked_device(id: CallId, client: u64) -> CallInfo {
        CallInfo {
            id,
            peer: Username::parse("bob").expect("a valid name"),
            outgoing: false,
            state: CallState::Active,
            reason: String::new(),
            caller_identity: Vec::new(),
            callee_identity: Vec::new(),
            peer_media: None,
            video: true,
            audio: true,
            since: 0,
            answered_by: Some(Answerer {
                client,
                linked_device: true,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn media_addresses_that_cannot_be_a_device_are_refused() {
        let key = [7u8; 32];
        for bad in [
            "0.0.0.0:5000",
            "224.0.0.1:5000",
            "[::ffff:224.0.0.1]:5000",
            "255.255.255.255:5000",
            "[::]:5000",
            "127.0.0.1:0",
            "example.org:5000",
        ] {
            assert!(Media::parse(&key, bad, true, true).is_err(), "{bad}");
        }
        for bad in ["0.0.0.0:5000", "127.0.0.1:0", "example.org:5000"] {
            let m = Media::parse(&key, "", true, true).unwrap();
            assert!(m.clone().with_reflexive(bad).is_err(), "{bad}");
            assert!(m.with_relay(bad, &[1; 8]).is_err(), "{bad}");
        }
        let mapped = Media::parse(&key, "[::ffff:192.0.2.1]:5000", true, true).unwrap();
        assert_eq!(mapped.address.unwrap().to_string(), "192.0.2.1:5000");
        assert!(Media::parse(&key, "127.0.0.2:5000", false, true).is_ok());
        assert!(Media::parse(&[7u8; 31], "127.0.0.2:5000", false, true).is_err());
        // Hidden: no address at all is fine when there is a relay, not otherwise.
        let hidden = Media::parse(&key, "", true, true).unwrap();
        assert!(hidden.clone().reachable().is_err());
        assert!(hidden
            .clone()
            .with_relay("192.0.2.9:7423", &[1; 7])
            .is_err());
        let relayed = hidden.with_relay("192.0.2.9:7423", &[1; 8]).unwrap();
        assert!(relayed.clone().reachable().is_ok());
        // Our devices never see the peer's relay point, nor its addresses when we relay only.
        let full = Media::parse(&key, "192.0.2.1:5000", true, true)
            .unwrap()
            .with_reflexive("198.51.100.1:6000")
            .unwrap()
            .with_relay("192.0.2.9:7423", &[1; 8])
            .unwrap();
        let seen = full.for_our_device(false);
        assert!(seen.relay.is_none() && seen.address.is_some() && seen.reflexive.is_some());
        let seen = full.for_our_device(true);
        assert!(seen.address.is_none() && seen.reflexive.is_none());
        let hidden = full.hidden();
        assert!(hidden.relay_only && hidden.address.is_none() && hidden.relay.is_some());
    }

    #[test]
    fn an_offer_carries_an_x_wing_key_and_an_answer_an_encapsulation() {
        let m = Media::parse(&[7u8; 32], "192.0.2.1:5000", true, true).unwrap();
        let key = [1u8; smvs_crypto::XWING_PUBLIC_KEY_LEN];
        let ciphertext = [2u8; smvs_crypto::XWING_CIPHERTEXT_LEN];
        assert!(m.clone().with_kem(SignalKind::Offer, &key).is_ok());
        assert!(m.clone().with_kem(SignalKind::Answer, &ciphertext).is_ok());
        // Missing (an old device) or swapped: refused, never a call without the KEM half.
        for (kind, bad) in [
            (SignalKind::Offer, &[][..]),
            (SignalKind::Offer, &ciphertext[..]),
            (SignalKind::Answer, &key[..]),
            (SignalKind::Hangup, &key[..]),
        ] {
            assert!(
                m.clone().with_kem(kind, bad).is_err(),
                "{kind:?} {}",
                bad.len()
            );
        }
    }

    #[test]
    fn a_call_picked_up_on_one_device_is_answered_elsewhere_for_the_others() {
        let info = CallInfo::answered_on_a_linked_device(CallId([1; 16]), 7);
        assert_eq!(info.clone().seen_by(Viewer::Client(7)).reason, "");
        assert_eq!(
            info.clone().seen_by(Viewer::Client(8)).reason,
            ANSWERED_ELSEWHERE
        );
        assert_eq!(
            info.clone().seen_by(Viewer::HostDesktop).reason,
            ANSWERED_ELSEWHERE
        );
        // Picked up on the host's own machine: not "elsewhere" for its desktop.
        let local = CallInfo {
            answered_by: Some(Answerer {
                client: 7,
                linked_device: false,
            }),
            ..info.clone()
        };
        assert_eq!(local.seen_by(Viewer::HostDesktop).reason, "");
        // Once it ends, every device hears the same reason.
        let ended = CallInfo {
            state: CallState::Ended,
            reason: "remote-hangup".into(),
            ..info
        };
        assert_eq!(ended.seen_by(Viewer::Client(8)).reason, "remote-hangup");
    }
}
