//! The SMVS wire contract.
//!
//! - The Cap'n Proto schemas in this folder and the Rust generated from them (`*_capnp`).
//! - [`types`]: names that are parsed once at the edge (`Username`, `HostAddress`).
//! - [`canonical`]: the exact byte strings that identities and directories sign, so that a
//!   signature never depends on how a Cap'n Proto message happened to be laid out.
//! - [`reader_options`]: the tightened limits every peer-facing reader uses.

pub mod canonical;
pub mod types;

capnp::generated_code!(pub mod common_capnp);
capnp::generated_code!(pub mod directory_capnp);
capnp::generated_code!(pub mod host_capnp);
capnp::generated_code!(pub mod keyguard_capnp);
capnp::generated_code!(pub mod local_capnp);

pub use types::{HostAddress, NameError, Username};

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
