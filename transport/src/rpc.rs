//! Cap'n Proto RPC over a [`SecureChannel`]. RPC objects are `!Send`: call these inside a
//! `tokio::task::LocalSet`, and keep every capability on that thread.

use capnp_rpc::rpc_twoparty_capnp::Side;
use capnp_rpc::{twoparty, RpcSystem};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::SecureChannel;

/// Cap'n Proto writes a message as its segment table and then each segment, and flushes after
/// every message: behind a buffer, a message is one write to the socket or the secure
/// channel's pipe instead of two or more (the local API's answers were a write system call
/// each, and the channel's writer pump woke twice per message).
fn network(
    channel: SecureChannel,
    side: Side,
    options: capnp::message::ReaderOptions,
) -> Box<twoparty::VatNetwork<impl futures::AsyncRead + Unpin>> {
    let (read, write) = tokio::io::split(channel.stream);
    Box::new(twoparty::VatNetwork::new(
        futures::io::BufReader::new(read.compat()),
        futures::io::BufWriter::new(write.compat_write()),
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

/// Two-party RPC on a local Unix socket, in clear: there, the socket's file modes and the
/// server's SO_PEERCRED check decide who may talk (smvsd's local API, keyguard).
fn local_network(
    stream: tokio::net::UnixStream,
    side: Side,
) -> Box<twoparty::VatNetwork<impl futures::AsyncRead + Unpin>> {
    let (read, write) = stream.into_split();
    // Buffered as in `network`: one write per message.
    Box::new(twoparty::VatNetwork::new(
        futures::io::BufReader::new(read.compat()),
        futures::io::BufWriter::new(write.compat_write()),
        side,
        smvs_schema::reader_options(),
    ))
}

/// The serving side of a local socket connection: `bootstrap` is what the client gets.
pub fn local_server(
    stream: tokio::net::UnixStream,
    bootstrap: capnp::capability::Client,
) -> RpcSystem<Side> {
    RpcSystem::new(local_network(stream, Side::Server), Some(bootstrap))
}

/// The calling side of a local socket connection: the RPC system to drive and the server's
/// bootstrap capability.
pub fn local_client<C: capnp::capability::FromClientHook>(
    stream: tokio::net::UnixStream,
) -> (RpcSystem<Side>, C) {
    let mut system = RpcSystem::new(local_network(stream, Side::Client), None);
    let bootstrap = system.bootstrap(Side::Server);
    (system, bootstrap)
}

/// How long closing a [`Link`] waits for capnp-rpc's orderly shutdown.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A calling connection whose RPC system runs on the current `LocalSet`, and ends when the
/// link is dropped. Ending it takes capnp-rpc's disconnect: a connection whose RPC system is
/// merely dropped stays open, held by references the connection state keeps to itself.
pub struct Link<C> {
    client: C,
    /// Dropped with the link; its receiver then disconnects and ends the system's task.
    _close: tokio::sync::oneshot::Sender<()>,
}

impl<C: capnp::capability::FromClientHook + Clone> Link<C> {
    /// Starts the RPC system over `channel` (call inside a `LocalSet`).
    pub fn open(channel: SecureChannel) -> Link<C> {
        let (system, client) = self::client::<C>(channel);
        let (close, closed) = tokio::sync::oneshot::channel::<()>();
        let disconnect = system.get_disconnector();
        tokio::task::spawn_local(async move {
            tokio::pin!(system);
            tokio::select! {
                ended = &mut system => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "link ended");
                    }
                }
                _ = closed => {
                    // The system must keep running while it shuts down.
                    let shutdown = futures::future::join(disconnect, &mut system);
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, shutdown).await;
                }
            }
        });
        Link {
            client,
            _close: close,
        }
    }

    /// The peer's bootstrap capability.
    pub fn client(&self) -> &C {
        &self.client
    }
}
