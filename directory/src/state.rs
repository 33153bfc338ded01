//! What every worker of one directory process shares, built once by `server::bind` and handed to
//! each connection's RPC objects as an `Arc`.
//!
//! It sits below both `rpc` (which reads it to answer requests) and `server` (which builds it
//! and runs the workers), so neither has to name the other to reach it. Everything here is
//! `Send + Sync`: workers are threads, each with its own single-threaded runtime.

use std::sync::Arc;
use std::time::Duration;

use smvs_crypto::{AgreementKeyPair, SigningKeyPair};
use tokio::sync::Semaphore;

use crate::limits::Limits;
use crate::store::Store;

pub(crate) struct Shared {
    pub store: Store,
    /// Signs every record the directory answers with.
    pub key: SigningKeyPair,
    /// The X25519 form of `key`, for the Noise handshake: one pinned key covers both.
    pub noise_key: AgreementKeyPair,
    pub limits: Limits,
    /// One permit per open connection; a connection that finds none is closed at once.
    pub connections: Arc<Semaphore>,
    pub handshake_timeout: Duration,
}
