//! smvsd: a user's always-on host.
//!
//! It keeps the user's messages (encrypted at rest), delivers them to other users' hosts over
//! Noise + Cap'n Proto, keeps them while those hosts are away, and serves the user's devices on
//! a Unix socket. The identity's secret keys stay in smvs-keyguard.
//!
//! Modules: [`daemon`] (lifecycle and wiring), [`router`], [`peers`], [`devices`], [`calls`] (the actors),
//! [`storage`] (the storage thread), [`host`] (state shared by the actors), [`session`] (how
//! envelopes are sealed), [`host_link`] (the peer port), [`local_api`] (the Unix socket),
//! [`config`], [`model`], [`error`].

pub mod calls;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dbus;
pub mod devices;
pub mod error;
pub mod host;
pub mod host_link;
pub mod local_api;
pub mod local_calls;
pub mod model;
pub mod peers;
pub mod router;
pub mod session;
pub mod storage;

pub use config::{Config, FileConfig};
