//! Every SMVS TCP link: a Noise XX handshake, then length-prefixed encrypted frames, carrying a
//! plaintext byte stream that Cap'n Proto RPC runs over.
//!
//! ```text
//!   TCP ──► reader pump ──(decrypt)──► in-memory pipe ──► Cap'n Proto RpcSystem
//!   TCP ◄── writer pump ◄─(encrypt)─── in-memory pipe ◄── Cap'n Proto RpcSystem
//! ```
//!
//! Each frame is a big-endian u16 length and one Noise message, so no frame can exceed 64 KiB;
//! Cap'n Proto's own message size is capped separately by `smvs_schema::reader_options`. The
//! layer above decides which remote static keys it accepts: `connect` can pin one; `accept`
//! reports the one it saw.
//!
//! [`callport`] is the other wire a host speaks: the UDP datagrams of its call port (STUN
//! Binding for devices, and the relay of sealed call media), as a pure codec.

pub mod callport;
mod channel;
mod error;
pub mod rpc;
mod socks;

#[doc(hidden)]
pub use channel::fuzzing;
pub use channel::{
    accept, connect, connect_over, connect_within, SecureChannel, HANDSHAKE_TIMEOUT,
};
pub use error::TransportError;
pub use socks::socks5_tcp;

/// Prologue of directory links: both sides must agree on it or the handshake fails.
pub const DIRECTORY_PROLOGUE: &[u8] = b"smvs-directory-v1";
/// Prologue of host-to-host links.
pub const HOST_PROLOGUE: &[u8] = b"smvs-host-v1";
/// The prologue of a device's link to its own host (the device port).
pub const DEVICE_PROLOGUE: &[u8] = b"smvs-device-v1";
