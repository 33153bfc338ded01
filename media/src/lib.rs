//! The media of an SMVS call: VP8 video and Opus audio over RTP with GStreamer's `rtpbin`,
//! every RTP and RTCP packet sealed with XChaCha20-Poly1305 under keys derived from the call's
//! X25519 exchange and X-Wing encapsulation, all four streams multiplexed on one UDP socket per
//! endpoint.
//!
//! * [`derive_media_keys`] turns the call's ephemeral keys into one key per direction;
//! * [`check_plugins`] says which Debian package to install when an element is missing;
//! * [`MediaSession::start`] runs the pipeline on a bound socket, [`MediaSession::stats`] reads
//!   live statistics and [`MediaSession::stop`] tears everything down.
//!
//! The wire format and replay protection are in [`wire`]; the glass-to-glass latency probe in
//! [`probe`]. No media goes to the peer's address before the peer has shown that it receives
//! there (a challenge echoed in a sealed hello, see [`wire::Hello`]).

mod consent;
mod error;
mod keys;
mod options;
mod opus;
mod pipeline;
mod plugins;
pub mod probe;
mod rate;
mod reach;
mod repair;
mod session;
mod stats;
pub mod wire;

pub use consent::PathKind;
pub use error::MediaError;
pub use keys::{derive_media_keys, KeyInputs, MediaKeys, Role};
pub use options::{AudioSource, MediaOptions, Sink, VideoSource};
pub use plugins::{check_devices, check_plugins, debian_package, gstreamer_version};
pub use probe::GlassToGlass;
pub use reach::{PeerCandidate, Reach, RelayGrant};
pub use session::MediaSession;
pub use stats::{
    CallStats, Freezes, PathChange, RateChange, RepairStats, RtpStreamStats, JITTER_BUFFER_MS,
    PATH_CHANGES_KEPT,
};

/// What the fuzz targets in `fuzz/` drive beyond [`wire`]: the path checks fed hellos as the
/// receive thread feeds them. Public (and hidden) only so that the fuzzers run the crate's own
/// code rather than a copy of it.
#[doc(hidden)]
pub mod fuzzing {
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    use crate::consent::{Change, Path, PathKind, Paths};
    use crate::wire::Hello;

    /// Decodes each packet as a hello and hands the ones that decode to one [`Paths`] (which
    /// knows one direct path and the relay), the clock moving by each packet's `step`; the
    /// path each arrives on is picked by the step's milliseconds. Returns how many times a
    /// path was chosen.
    pub fn hellos<'a>(packets: impl IntoIterator<Item = (Duration, &'a [u8])>) -> usize {
        let mut now = Instant::now();
        let known = SocketAddr::from(([192, 0, 2, 1], 7000));
        let mut paths = Paths::new(
            &[
                (Path::Direct(known), PathKind::Direct),
                (Path::Relayed, PathKind::Relayed),
            ],
            false,
            false,
            now,
        );
        let mut chosen = 0;
        for (step, packet) in packets {
            now = now.checked_add(step).unwrap_or(now);
            let path = match step.as_millis() % 3 {
                0 => Path::Direct(known),
                1 => Path::Relayed,
                n => Path::Direct(SocketAddr::from(([192, 0, 2, 2], n as u16))),
            };
            if let Ok(hello) = Hello::decode(packet) {
                if let Some(Change::Chosen(..)) = paths.hello(path, &hello, now) {
                    chosen += 1;
                }
            }
            let _ = paths.tick(now);
            let _ = paths.next_hello(now);
            while paths.hello_to_send(now).is_some() {}
        }
        chosen
    }
}
