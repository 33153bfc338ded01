//! The one error type of the crate. Every variant says which part of the call's media failed;
//! none carries key material.

use smvs_crypto::CryptoError;
use thiserror::Error;

/// Everything that can stop a call's media from starting.
#[derive(Debug, Error)]
pub enum MediaError {
    /// `gst::init()` failed (no GStreamer libraries, unreadable plugin registry, ...).
    #[error("GStreamer could not be initialised: {0}")]
    GstInit(String),
    /// A GStreamer element these options need is not installed.
    #[error("GStreamer element `{element}` is missing: install the Debian package `{package}`")]
    MissingPlugin {
        element: &'static str,
        package: &'static str,
    },
    /// The per-call key agreement or key derivation was refused (e.g. a low-order peer key).
    #[error("call media key derivation failed: {0}")]
    KeyDerivation(#[source] CryptoError),
    /// The options cannot describe a working call (zero size, zero frame rate, ...).
    #[error("invalid media options: {0}")]
    Options(String),
    /// GStreamer refused the pipeline description or one of its elements is not what we built.
    #[error("the media pipeline could not be built: {0}")]
    Pipeline(String),
    /// A device the call needs (camera, microphone, display) cannot be opened.
    #[error("{0}")]
    Device(String),
    /// The pipeline did not go to PLAYING.
    #[error("the media pipeline could not start: {0}")]
    Start(String),
    /// The call's UDP socket could not be prepared.
    #[error("the media socket could not be {what}: {source}")]
    Socket {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The receive thread could not be spawned.
    #[error("the media receive thread could not be started: {0}")]
    Thread(#[source] std::io::Error),
}
