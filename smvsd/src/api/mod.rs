//! The edges: each translates one way of reaching the host into the command façade's typed
//! requests (or, for the peer port, into the inbox) and writes the answers back. None of them
//! holds or changes state of its own beyond its connections.
//!
//! - [`local`]: the Unix socket (Cap'n Proto `Host`, `schema/local.capnp`), with its call part in
//!   `local_calls`;
//! - [`dbus`]: `org.smvs.Daemon1` on the system or session bus;
//! - [`peer`]: the peer port, where other hosts deliver envelopes (`schema/host.capnp`);
//! - [`device`]: the device port, where the user's devices on other machines pair and then use
//!   the same API as the socket (`schema/device.capnp`).

pub mod dbus;
pub mod device;
pub mod local;
mod local_calls;
pub mod peer;

/// The length of a Cap'n Proto list of `n` items. No answer comes near 2^32 items (answers are
/// bounded well below the 4 MiB reader limit), but if one ever did, it is an error, not a list
/// silently cut to nothing.
pub(crate) fn list_len(n: usize) -> Result<u32, capnp::Error> {
    u32::try_from(n).map_err(|_| {
        capnp::Error::failed(format!(
            "internal: a list of {n} items is too long for one answer"
        ))
    })
}
