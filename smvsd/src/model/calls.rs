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

/// One endpoint's half of the media set-up: where it listens and its fresh call key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub public_key: [u8; 32],
    pub address: SocketAddr,
    pub video: bool,
    pub audio: bool,
}

impl Media {
    /// Checks what a device or a peer sent: a 32-byte key and a literal IP:port (no names to
    /// resolve, no port 0).
    pub fn parse(
        public_key: &[u8],
        address: &str,
        video: bool,
        audio: bool,
    ) -> Result<Media, String> {
        let public_key: [u8; 32] = public_key
            .try_into()
            .map_err(|_| "a call key is 32 bytes".to_string())?;
        let address: SocketAddr = address
            .parse()
            .map_err(|_| format!("media address {address:?} is not IP:port"))?;
        // An IPv4 address written as IPv6 (::ffff:a.b.c.d) is judged as the IPv4 it is.
        let address = SocketAddr::new(address.ip().to_canonical(), address.port());
        let broadcast = matches!(address.ip(), std::net::IpAddr::V4(v4) if v4.is_broadcast());
        if address.port() == 0
            || address.ip().is_unspecified()
            || address.ip().is_multicast()
            || broadcast
        {
            return Err(format!("media address {address} cannot receive media"));
        }
        Ok(Media {
            public_key,
            address,
            video,
            audio,
        })
    }
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
        let mapped = Media::parse(&key, "[::ffff:192.0.2.1]:5000", true, true).unwrap();
        assert_eq!(mapped.address.to_string(), "192.0.2.1:5000");
        assert!(Media::parse(&key, "127.0.0.2:5000", false, true).is_ok());
        assert!(Media::parse(&[7u8; 31], "127.0.0.2:5000", false, true).is_err());
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
