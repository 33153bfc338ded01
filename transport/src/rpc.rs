//! Cap'n Proto RPC over a [`SecureChannel`]. RPC objects are `!Send`: call these inside a
//! `tokio::task::LocalSet`, and keep every capability on that thread.

use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{twoparty, RpcSystem};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::SecureChannel;

fn network(
    channel: SecureChannel,
    side: Side,
    options: capnp::message::ReaderOptions,
) -> Box<twoparty::VatNetwork<impl futures::AsyncRead + Unpin>> {
    let (read, write) = tokio::io::split(channel.stream);
    Box::new(twoparty::VatNetwork::new(
        futures::io::BufReader::new(read.compat()),
        write.compat_write(),
        side,
        options,
    ))
}

/// The serving side: `bootstrap` is the capability the peer gets. Drive the returned system
/// (spawn it on the LocalSet); it resolves when the connection ends.
pub fn serve(channel: SecureChannel, bootstrap: capnp::capability::Client) -> RpcSystem<Side> {
    serve_limited(channel, bootstrap, smvs_schema::MAX_MESSAGE_BYTES)
}

/// As [`serve`], with a smaller cap on one incoming message (a host link's envelopes are far
/// below the general 4 MiB).
pub fn serve_limited(
    channel: SecureChannel,
    bootstrap: capnp::capability::Client,
    max_bytes: usize,
) -> RpcSystem<Side> {
    let mut options = smvs_schema::reader_options();
    options.traversal_limit_in_words(Some(max_bytes.min(smvs_schema::MAX_MESSAGE_BYTES) / 8));
    RpcSystem::new(network(channel, Side::Server, options), Some(bootstrap))
}

/// The calling side: returns the RPC system to drive and the peer's bootstrap capability.
pub fn client<C: capnp::capability::FromClientHook>(
    channel: SecureChannel,
) -> (RpcSystem<Side>, C) {
    let mut system = RpcSystem::new(
        network(channel, Side::Client, smvs_schema::reader_options()),
        None,
    );
    let bootstrap = system.bootstrap(Side::Server);
    (system, bootstrap)
}
