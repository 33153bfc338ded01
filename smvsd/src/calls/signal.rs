//! Call signals on the wire: what a [`CallSignal`] is, how it is written into an envelope, and
//! how one is sent to the peer's host right away (never through the outbox: a ring that arrives
//! an hour late is worse than none).

use std::net::SocketAddr;
use std::time::Duration;

use smvs_schema::host_capnp::call_signal;
use smvs_schema::Username;

use crate::error::HostError;
use crate::host::HostCore;
use crate::model::MessageId;
use crate::peers::{self, DeliveryError};
use crate::session::{self, Content};

/// How long reaching the peer's host and handing it a signal may take.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);

/// A call's id: 16 random bytes chosen by the caller.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CallId(pub [u8; 16]);

impl CallId {
    pub fn random() -> Self {
        CallId(smvs_crypto::random_array())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(CallId)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallId({})", self.to_hex())
    }
}

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalKind {
    Offer,
    Answer,
    Decline,
    Busy,
    Hangup,
    NoAnswer,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSignal {
    pub call_id: CallId,
    pub kind: SignalKind,
    pub media: Option<Media>,
}

impl CallSignal {
    pub fn write(&self, mut b: call_signal::Builder<'_>) {
        b.set_call_id(&self.call_id.0);
        b.set_kind(match self.kind {
            SignalKind::Offer => call_signal::Kind::Offer,
            SignalKind::Answer => call_signal::Kind::Answer,
            SignalKind::Decline => call_signal::Kind::Decline,
            SignalKind::Busy => call_signal::Kind::Busy,
            SignalKind::Hangup => call_signal::Kind::Hangup,
            SignalKind::NoAnswer => call_signal::Kind::NoAnswer,
        });
        if let Some(media) = &self.media {
            let mut m = b.init_media();
            m.set_public_key(&media.public_key);
            m.set_address(media.address.to_string());
            m.set_video(media.video);
            m.set_audio(media.audio);
        }
    }

    pub fn read(r: call_signal::Reader<'_>) -> Result<CallSignal, String> {
        let bad = |e: capnp::Error| e.to_string();
        let call_id = CallId::from_slice(r.get_call_id().map_err(bad)?)
            .ok_or_else(|| "a call id is 16 bytes".to_string())?;
        let kind = match r
            .get_kind()
            .map_err(|_| "unknown call signal".to_string())?
        {
            call_signal::Kind::Offer => SignalKind::Offer,
            call_signal::Kind::Answer => SignalKind::Answer,
            call_signal::Kind::Decline => SignalKind::Decline,
            call_signal::Kind::Busy => SignalKind::Busy,
            call_signal::Kind::Hangup => SignalKind::Hangup,
            call_signal::Kind::NoAnswer => SignalKind::NoAnswer,
        };
        let media = if matches!(kind, SignalKind::Offer | SignalKind::Answer) {
            let m = r.get_media().map_err(bad)?;
            let address = m
                .get_address()
                .map_err(bad)?
                .to_str()
                .map_err(|_| "media address is not UTF-8".to_string())?;
            Some(Media::parse(
                m.get_public_key().map_err(bad)?,
                address,
                m.get_video(),
                m.get_audio(),
            )?)
        } else {
            None
        };
        Ok(CallSignal {
            call_id,
            kind,
            media,
        })
    }
}

/// Why a signal did not reach the peer's host.
#[derive(Debug)]
pub enum SendFailure {
    /// The peer's host cannot be reached (or did not answer in time).
    Offline(String),
    /// The peer's host will not take it (blocked, not a contact, stale).
    Refused(String),
    /// Our side cannot send it (not registered, key changed, directory).
    Local(HostError),
}

impl std::fmt::Display for SendFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendFailure::Offline(why) => write!(f, "offline: {why}"),
            SendFailure::Refused(why) => write!(f, "refused: {why}"),
            SendFailure::Local(e) => write!(f, "{e}"),
        }
    }
}

/// Seals `signal` for `peer` and hands it to the peer's host on a fresh link; returns once the
/// peer's host has accepted it (its receipt checks out).
pub async fn send(core: &HostCore, peer: &Username, signal: CallSignal) -> Result<(), SendFailure> {
    match tokio::time::timeout(SIGNAL_TIMEOUT, send_now(core, peer, signal)).await {
        Ok(result) => result,
        Err(_) => Err(SendFailure::Offline(format!(
            "{peer}'s host did not answer within {} s",
            SIGNAL_TIMEOUT.as_secs()
        ))),
    }
}

async fn send_now(core: &HostCore, peer: &Username, signal: CallSignal) -> Result<(), SendFailure> {
    let me = core.me().map_err(SendFailure::Local)?;
    let (contact, _) = core
        .trusted_contact(peer)
        .await
        .map_err(SendFailure::Local)?;
    let identity = contact
        .identity()
        .map_err(|e| SendFailure::Local(HostError::internal(e)))?;
    let keys = core
        .session_keys(peer, &identity)
        .await
        .map_err(SendFailure::Local)?;
    let id = MessageId::random();
    let inner = session::Inner {
        id,
        from: me.username.clone(),
        to: peer.clone(),
        time: crate::model::now_ms(),
        prev_hash: Vec::new(),
        content: Content::Call(signal),
    };
    // One connection per signal, closed (the link dropped) once the signal is answered or
    // timed out: calls are rare, and a link kept open would outlive the call for nothing.
    let link = peers::connect(core, peer).await.map_err(|e| match e {
        DeliveryError::Host(e) if e.code != "proxy" => SendFailure::Local(e),
        other => SendFailure::Offline(format!("cannot reach {peer}'s host: {other}")),
    })?;
    let sent = peers::deliver(link.client(), &keys, &inner).map_err(SendFailure::Local)?;
    match sent.await {
        Ok(response) => peers::check_receipt(&keys, &id, peer, response)
            .map_err(|e| SendFailure::Offline(format!("{peer}'s host answered badly: {e}"))),
        Err(e) => Err(match e.extra.split("refused: ").nth(1) {
            Some(why) => SendFailure::Refused(why.to_string()),
            None => {
                SendFailure::Offline(format!("{peer}'s host did not take the call: {}", e.extra))
            }
        }),
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
}
