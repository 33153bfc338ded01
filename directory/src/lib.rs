//! smvs-directory: the trust anchor of SMVS.
//!
//! It maps a username to the user's public identity keys, host transport key and host address,
//! and nothing else (the proposal's anonymity principle: no phone, no e-mail). Every answer is
//! signed with the directory's Ed25519 key, which hosts pin. Users prove who they are with the
//! proposal's sealed token: the directory seals a random single-use token to the user's X25519
//! key, and whoever hands it back within 60 s gets a session capability.
//!
//! Modules: [`server`] (lifecycle and workers), `rpc` (the protocol's handlers), [`store`]
//! (SQLite or PostgreSQL), [`limits`] (rate limits), [`record`] (signing and checking records),
//! [`client`] (what hosts use), [`error`], [`cli`] (the binary's command line).

pub mod cli;
pub mod client;
pub mod clock;
pub mod error;
pub mod limits;
pub mod record;
mod rpc;
pub mod server;
pub mod store;

pub use client::{DirectoryClient, DirectorySession, Registration, Rotation};
pub use error::{ClientError, ErrorCode, Refusal};
pub use limits::LimitConfig;
pub use record::{UserRecord, VerifiedRecord};
pub use rpc::{MAX_CLOCK_SKEW_MS, SESSION_LIFETIME, TOKEN_LIFETIME_MS};
pub use server::{load_key, DirectoryConfig, DirectoryServer, ServerError};
