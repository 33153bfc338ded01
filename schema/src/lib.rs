//! The SMVS wire contract.
//!
//! - The Cap'n Proto schemas in this folder and the Rust generated from them (`*_capnp`).
//! - [`types`]: names that are parsed once at the edge (`Username`, `HostAddress`), and the
//!   rule about which kinds of address a peer may point us at (`AddressKind`).
//! - [`vocab`]: what the host, the command line and D-Bus share: ids, statuses, error codes.
//! - [`canonical`]: the exact byte strings that identities and directories sign, so that a
//!   signature never depends on how a Cap'n Proto message happened to be laid out.
//! - [`reader_options`]: the tightened limits every peer-facing reader uses.

pub mod canonical;
pub mod types;
pub mod vocab;

/// Includes the code `capnpc` generated for one schema. Generated code is not ours to lint.
macro_rules! generated {
    ($name:ident, $file:literal) => {
        #[allow(
            clippy::all,
            clippy::pedantic,
            clippy::unwrap_used,
            clippy::expect_used,
            clippy::panic
        )]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}

generated!(common_capnp, "common_capnp.rs");
generated!(device_capnp, "device_capnp.rs");
generated!(directory_capnp, "directory_capnp.rs");
generated!(host_capnp, "host_capnp.rs");
generated!(keyguard_capnp, "keyguard_capnp.rs");
generated!(local_capnp, "local_capnp.rs");

pub use types::{AddressKind, HostAddress, NameError, Username};
pub use vocab::{CallId, CallState, ErrorCode, IdError, Integrity, MessageId, Status};

/// The largest text one message may carry (bytes of UTF-8): smvsd refuses more, and clients
/// show the limit before sending.
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// The most a single incoming Cap'n Proto message may make a reader walk: 4 MiB.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// The deepest nesting of structs and lists a reader accepts.
pub const MAX_NESTING: i32 = 64;

/// Reader limits for everything that comes from a peer or a client. Cap'n Proto's defaults allow
/// 64 MiB per message; no SMVS message comes near 4 MiB.
pub fn reader_options() -> capnp::message::ReaderOptions {
    let mut options = capnp::message::ReaderOptions::new();
    options
        .traversal_limit_in_words(Some(MAX_MESSAGE_BYTES / 8))
        .nesting_limit(MAX_NESTING);
    options
}
