//! Cap'n Proto RPC over a [`SecureChannel`]. RPC objects are `!Send`: call these inside a
//! `tokio::task::LocalSet`, and keep every capability on that thread.

use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{twoparty, RpcSystem};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::SecureChannel;

fn network(
    channel: SecureChannel,
    side: Side,
) -> Box<twoparty::VatNetwork<impl futures::AsyncRead + Unpin>> {
    let (read, write) = tokio::io::split(channel.stream);
    Box::new(twoparty::VatNetwork::new(
        futures::io::BufReader::new(read.compat()),
        write.compat_write(),
        side,
        smvs_schema::reader_options(),
    ))
}

/// The serving side: `bootstrap` is the capability the peer gets. Drive the returned system
/// (spawn it on the LocalSet); it resolves when the connection ends.
pub fn serve(channel: SecureChannel, bootstrap: capnp::capability::Client) -> RpcSystem<Side> {
    RpcSystem::new(network(channel, Side::Server), Some(bootstrap))
}

/// The calling side: returns the RPC system to drive and the peer's bootstrap capability.
pub fn client<C: capnp::capability::FromClientHook>(
    channel: SecureChannel,
) -> (RpcSystem<Side>, C) {
    let mut system = RpcSystem::new(network(channel, Side::Client), None);
    let bootstrap = system.bootstrap(Side::Server);
    (system, bootstrap)
}
