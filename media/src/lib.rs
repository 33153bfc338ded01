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
mod pipeline;
mod plugins;
pub mod probe;
mod session;
mod stats;
pub mod wire;

pub use error::MediaError;
pub use keys::{derive_media_keys, KeyInputs, MediaKeys, Role};
pub use options::{AudioSource, MediaOptions, Sink, VideoSource};
pub use plugins::{check_devices, check_plugins, debian_package, gstreamer_version};
pub use probe::GlassToGlass;
pub use session::MediaSession;
pub use stats::{CallStats, RtpStreamStats, JITTER_BUFFER_MS};
