//! What every SMVS daemon does the same way: tell systemd (or a test) when it is ready, stop on
//! SIGTERM/SIGINT, log for operators, and keep its key files private. [`lifecycle`] puts the
//! first two together: bind, READY, wait for a stop, STOPPING, shutdown, join. [`harden`] keeps
//! a daemon's secrets out of core files (and, where it can, out of swap).

pub mod harden;
pub mod keyfile;
pub mod lifecycle;
pub mod logging;
pub mod notify;
pub mod signals;
