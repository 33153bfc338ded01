//! smvs-directory: the trust anchor of SMVS.
//!
//! It maps a username to the user's public identity keys, host transport key and host address,
//! and nothing else (the proposal's anonymity principle: no phone, no e-mail). Every answer is
//! signed with the directory's Ed25519 key, which hosts pin. Users prove who they are with the
//! proposal's sealed token: the directory seals a random single-use token to the user's X25519
//! key, and whoever hands it back within 60 s gets a session capability.
//!
//! The crate is two things: the client a host uses, and the server. Only the client is built
//! without the `server` feature (on by default), so a host (`smvsd`) links no database driver
//! and no rate limiter.
//!
//! Modules, bottom to top; a module names only modules above it in this list:
//!
//! - vocabulary, always built: [`clock`] (wall-clock milliseconds), [`error`] (the error codes
//!   both sides share), [`record`] (signing and checking records), [`config`] (what a directory
//!   can be told);
//! - the client side, always built: [`client`] (what hosts use), [`cli`] (the binary's command
//!   line, here so man pages can be generated without the server);
//! - the server side, with `server`: [`limits`] (rate limits) and [`store`] (SQLite or
//!   PostgreSQL), [`keylog`] (key transparency) and `answers` (look-up answers kept in
//!   memory), then `state` (what the workers share: store, keys, limits), then `rpc` (the
//!   protocol's handlers), and on top [`server`] (lifecycle and workers).

pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod record;
pub mod transparency;

#[cfg(feature = "server")]
mod answers;
#[cfg(feature = "server")]
pub mod keylog;
#[cfg(feature = "server")]
pub mod limits;
#[cfg(feature = "server")]
mod rpc;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
mod state;
#[cfg(feature = "server")]
pub mod store;

/// What the fuzz targets in `fuzz/` drive: the server's reading of requests. Public (and
/// hidden) only so that the fuzzers run the handlers' own code rather than a copy of it.
#[cfg(feature = "server")]
#[doc(hidden)]
pub mod fuzzing {
    use smvs_schema::directory_capnp::rotate_request;
    use smvs_schema::Username;

    pub use crate::rpc::check_registration;

    /// The keys of a rotation request, read and checked as `rotateKeys` does before it asks the
    /// store for the current identity.
    pub fn check_rotation_keys(
        username: &Username,
        req: rotate_request::Reader<'_>,
    ) -> Result<(), crate::Refusal> {
        crate::rpc::read_keys(username, req.get_identity(), req.get_transport()).map(|_| ())
    }
}

pub use client::{
    Deregistration, DirectoryClient, DirectorySession, LookupAnswer, Registration, Rotation,
};
pub use config::{DirectoryConfig, LimitConfig};
pub use error::{ClientError, ErrorCode, Refusal};
pub use record::{
    CertificateProblem, MovedStatement, PublishedSessionKeys, TransportCertificate, UserRecord,
    VerifiedRecord,
};
#[cfg(feature = "server")]
pub use rpc::{MAX_CLOCK_SKEW_MS, SESSION_LIFETIME, TOKEN_LIFETIME_MS};
#[cfg(feature = "server")]
pub use server::{load_key, load_keys, DirectoryKeys, DirectoryServer, ServerError};
