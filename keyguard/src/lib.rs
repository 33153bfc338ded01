//! `smvs-keyguard`: the privileged helper that holds a user's identity secret keys.
//!
//! ```text
//!  smvsd (allowed uid) ──unix socket──► accept: SO_PEERCRED uid allowed? ──no──► closed, warn
//!                                             │ yes (at most N at once)
//!                                             ▼
//!                                  KeyguardRpc (one per connection) ──► Vault ──► key directory
//!                       certify transport / sign registration /              (identity.sign,
//!                       open login token / derive / session v2 keys and      identity.agree,
//!                       handshake answers / rollback counter / storage       storage.epochs,
//!                                                                             identity.kem, …)
//!
//!  operator (root or key owner) ── smvs-keyguard rotate | deregister ──► key directory (direct)
//!                                                                   └──► directory (login, signed)
//! ```
//!
//! - [`harden`]: what the process does before it reads any key (no core dumps, not
//!   ptrace-able, memory locked).
//! - [`keydir`]: the key directory on disk, its permission checks and atomic writes.
//! - [`KeyguardServer`]: binds the socket and serves the `Keyguard` interface of
//!   `schema/keyguard.capnp` on the caller's `LocalSet` (`bind`, `shutdown`, `join`).
//! - [`client::KeyguardClient`]: what smvsd (and `smvs-keyguard check`) uses to talk to it.
//! - [`operator`]: `smvs-keyguard rotate` and `deregister`, which read the key files
//!   themselves and talk to the directory; never reachable through the socket.
//! - [`cli`]: the command line of the `smvs-keyguard` binary.
//!
//! No operation returns a secret key, and every one is bound to a purpose: callers get public
//! keys, a transport certificate and a registration that keyguard builds itself, the token
//! inside a directory login challenge (and nothing else it could open), keys derived through
//! HKDF, and session v2's handshake answers, each bound to one transcript and one role
//! ([`session_keys`]). Keyguard signs nothing on request. The secrets stay in smvs-crypto's
//! zeroizing types in this process.

pub mod cli;
pub mod client;
pub mod harden;
pub mod keydir;
pub mod operator;
mod purpose;
mod rpc;
mod server;
pub mod session_keys;
mod storage_epochs;

pub use client::{
    HandshakeQuestion, KeyguardClient, KeyguardError, SessionPublicKeys, StorageEpoch, StorageKeys,
};
pub use keydir::KeyDirError;
#[doc(hidden)]
pub use rpc::fuzzing;
pub use server::{KeyguardConfig, KeyguardServer, ServerError, DEFAULT_MAX_CONNECTIONS};
