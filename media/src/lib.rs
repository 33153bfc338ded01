//! The media of an SMVS call: VP8 video and Opus audio over RTP with GStreamer's `rtpbin`,
//! every RTP and RTCP packet sealed with XChaCha20-Poly1305 under keys derived from the call's
//! X25519 exchange, all four streams multiplexed on one UDP socket per endpoint.
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
mod repair;
mod session;
mod stats;
pub mod wire;

pub use error::MediaError;
pub use keys::{derive_media_keys, KeyInputs, MediaKeys, Role};
pub use options::{AudioSource, MediaOptions, Sink, VideoSource};
pub use plugins::{check_devices, check_plugins, debian_package, gstreamer_version};
pub use probe::GlassToGlass;
pub use session::MediaSession;
pub use stats::{CallStats, Freezes, RateChange, RepairStats, RtpStreamStats, JITTER_BUFFER_MS};

/// What the fuzz targets in `fuzz/` drive beyond [`wire`]: the consent state machine fed hellos
/// as the receive thread feeds it. Public (and hidden) only so that the fuzzers run the crate's
/// own code rather than a copy of it.
#[doc(hidden)]
pub mod fuzzing {
    use std::time::{Duration, Instant};

    use crate::consent::Consent;
    use crate::wire::Hello;

    /// Decodes each packet as a hello and hands the ones that decode to one [`Consent`], the
    /// clock moving by each packet's `step`; returns how many gave consent.
    pub fn hellos<'a>(packets: impl IntoIterator<Item = (Duration, &'a [u8])>) -> usize {
        let mut now = Instant::now();
        let mut consent = Consent::new(now);
        let mut granted = 0;
        for (step, packet) in packets {
            now = now.checked_add(step).unwrap_or(now);
            if let Ok(hello) = Hello::decode(packet) {
                consent.heard(now);
                if consent.hello(&hello) {
                    granted += 1;
                }
            }
            consent.expire(now);
            let _ = consent.next_hello();
            let _ = consent.hello_to_send(now);
        }
        granted
    }
}
