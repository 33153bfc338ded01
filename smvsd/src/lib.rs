//! smvsd: a user's always-on host.
//!
//! It keeps the user's messages (encrypted at rest), delivers them to other users' hosts over
//! Noise + Cap'n Proto, keeps them while those hosts are away, and serves the user's devices on
//! a Unix socket and D-Bus. The identity's secret keys stay in smvs-keyguard.
//!
//! Layers (bottom to top): model, error | config, cli, session, storage | guard, events, epochs, trust, sessions, outbox, relay, calls, inbox, devices, commands, api, daemon
//!
//! Each module names only modules below it (a test in `smvs-tests` checks this line against the
//! imports, and fails on an import that points up or sideways):
//! - [`model`]: the vocabulary — ids, statuses, contacts, calls, events. Plain data.
//! - [`error`], [`config`]: errors as devices and peers see them; settings. [`cli`] above them.
//! - [`session`]: pure sealing and opening of envelopes (v1, and v2: handshake and ratchet), and
//!   the inner message's wire codec.
//! - [`storage`]: the encrypted database, on its own thread; [`guard`]: the key guard link,
//!   made again when the key guard comes back.
//! - [`events`]: the device hub, and the handle owners publish through.
//! - [`epochs`]: the storage-epoch owner (the at-rest key moves on daily and after a whole
//!   conversation is deleted; keyguard destroys the old one).
//! - The owners, each the only one to change its state: [`trust`] (our user, the directory,
//!   pinned contacts), [`sessions`] (session keys, v2 ratchets and handshakes), [`outbox`]
//!   (delivery and "sent"), [`relay`] (the call port: STUN for devices and the relay of sealed call media; a task of
//!   its own owns the UDP socket), [`calls`] (the call table; an actor), [`inbox`] (arrival
//!   order of incoming envelopes), [`devices`] (paired devices, pairing codes, open device links).
//!   Owners other than the actors and the relay are single-threaded objects on the main arbiter: a method
//!   call is the message, and their state is private to them.
//! - [`commands`]: the one façade every device request goes through.
//! - [`api`]: the edges (Unix socket, D-Bus, peer port, device port), which only translate.
//! - [`daemon`]: the wiring and the lifecycle (`Host::bind / shutdown / join`).

pub mod model;

pub mod cli;
pub mod config;
pub mod error;

pub mod session;

pub mod storage;

pub mod guard;

pub mod events;

pub mod epochs;

pub mod trust;

pub mod sessions;

pub mod outbox;

pub mod relay;

pub mod calls;

pub mod devices;
pub mod inbox;

pub mod commands;

pub mod api;

pub mod daemon;

pub use config::{Config, FileConfig};
