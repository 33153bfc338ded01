//! `smvs-keyguard`: the privileged helper that holds a user's identity secret keys.
//!
//! ```text
//!  smvsd (allowed uid) ──unix socket──► accept: SO_PEERCRED uid allowed? ──no──► closed, warn
//!                                             │ yes (at most N at once)
//!                                             ▼
//!                                  KeyguardRpc (one per connection) ──► Vault ──► key directory
//!                                     sign / open / derive                 (identity.sign,
//!                                                                            identity.agree,
//!                                                                            storage.secret)
//! ```
//!
//! - [`harden`]: what the process does before it reads any key (no core dumps, not
//!   ptrace-able, memory locked).
//! - [`keydir`]: the key directory on disk, its permission checks and atomic writes.
//! - [`KeyguardServer`]: binds the socket and serves the `Keyguard` interface of
//!   `schema/keyguard.capnp` on the caller's `LocalSet` (`bind`, `shutdown`, `join`).
//! - [`client::KeyguardClient`]: what smvsd (and `smvs-keyguard check`) uses to talk to it.
//! - [`cli`]: the command line of the `smvs-keyguard` binary.
//!
//! No operation returns a secret key: callers get public keys, signatures, opened plaintexts and
//! keys derived through HKDF. The secrets stay in smvs-crypto's zeroizing types in this process.

pub mod cli;
pub mod client;
pub mod harden;
pub mod keydir;
mod purpose;
mod rpc;
mod server;

pub use client::{KeyguardClient, KeyguardError};
pub use keydir::KeyDirError;
pub use purpose::{context_for, purpose_for};
#[doc(hidden)]
pub use rpc::fuzzing;
pub use server::{KeyguardConfig, KeyguardServer, ServerError, DEFAULT_MAX_CONNECTIONS};
