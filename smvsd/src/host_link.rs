//! The peer port: other hosts connect here (Noise, then Cap'n Proto `HostLink`) to deliver
//! envelopes. Each connection's Noise key is handed to the router with every envelope, which
//! checks it against the sender's directory record.

use std::rc::Rc;
use std::time::Duration;

use actix::Addr;
use smvs_schema::host_capnp::host_link;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::host::HostCore;
use crate::router::{EnvelopeData, Incoming, Router};

/// Peer connections served at once.
pub const MAX_PEER_CONNECTIONS: usize = 1024;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, core: Rc<HostCore>, router: Addr<Router>) {
    let budget = std::sync::Arc::new(Semaphore::new(MAX_PEER_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = budget.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "peer connection limit reached; closing a new connection");
            continue;
        };
        let (core, router) = (core.clone(), router.clone());
        tokio::task::spawn_local(async move {
            match smvs_transport::accept(
                tcp,
                &core.transport,
                smvs_transport::HOST_PROLOGUE,
                HANDSHAKE_TIMEOUT,
            )
            .await
            {
                Ok(channel) => {
                    let remote_key = channel.remote_key;
                    let link: host_link::Client =
                        capnp_rpc::new_client(HostLinkRpc { router, remote_key });
                    if let Err(e) = smvs_transport::rpc::serve(channel, link.client).await {
                        tracing::debug!(%peer, error = %e, "peer connection ended");
                    }
                }
                Err(e) => tracing::debug!(%peer, error = %e, "peer handshake failed"),
            }
            drop(permit);
        });
    }
}

struct HostLinkRpc {
    router: Addr<Router>,
    remote_key: smvs_crypto::AgreementPublicKey,
}

impl host_link::Server for HostLinkRpc {
    async fn deliver(
        self: Rc<Self>,
        params: host_link::DeliverParams,
        mut results: host_link::DeliverResults,
    ) -> Result<(), capnp::Error> {
        let envelope = {
            let e = params.get()?.get_envelope()?;
            let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, capnp::Error> {
                t?.to_string()
                    .map_err(|_| capnp::Error::failed("refused: a name is not UTF-8".into()))
            };
            EnvelopeData {
                format: e.get_format_version(),
                id: e.get_id()?.to_vec(),
                sender: text(e.get_sender())?,
                recipient: text(e.get_recipient())?,
                session_version: e.get_session_version(),
                sealed: e.get_sealed()?.to_vec(),
            }
        };
        let receipt = self
            .router
            .send(Incoming {
                remote_key: self.remote_key,
                envelope,
            })
            .await
            .map_err(|_| capnp::Error::failed("later: the host is shutting down".into()))??;
        let mut r = results.get().init_receipt();
        r.set_id(&receipt.id.0);
        r.set_recipient(receipt.recipient.as_str());
        r.set_stored_at(receipt.stored_at);
        r.set_signature(&receipt.tag);
        Ok(())
    }
}
