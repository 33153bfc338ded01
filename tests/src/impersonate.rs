//! Playing a user's host from a test: with the host's transport key (read from its state
//! directory) and its keyguard, a test can speak raw `HostLink` to another host, as that user's
//! host would, and send envelopes the real smvsd never would.

use anyhow::Context;
use smvs_crypto::{AgreementKeyPair, AgreementPublicKey};
use smvs_schema::host_capnp::host_link;
use smvs_schema::Username;
use smvsd::session::{self, SessionKeys};

use crate::directory::DirectoryProcess;
use crate::host::HostProcess;

/// What a test needs to act as `me`'s host towards `peer`'s host.
pub struct PlayedHost {
    /// `me`'s host transport key (its Noise static key).
    pub transport: AgreementKeyPair,
    /// The session keys `me` and `peer` share.
    pub keys: SessionKeys,
    /// `peer`'s host transport key, as its directory record states it.
    pub peer_transport: AgreementPublicKey,
}

/// Reads `me`'s transport key and derives the session keys with `peer` through `me`'s
/// keyguard. Stop `me`'s smvsd first if its own deliveries would get in the way. Call inside a
/// `LocalSet`.
pub async fn play_host(
    dir: &DirectoryProcess,
    me: &HostProcess,
    peer: &HostProcess,
) -> anyhow::Result<PlayedHost> {
    let secret =
        std::fs::read(me.state_dir.join("transport.key")).context("reading the transport key")?;
    let transport = AgreementKeyPair::from_secret_bytes(&secret)?;
    let directory = dir.client().await?;
    let my_record = directory.lookup(&Username::parse(&me.name)?).await?;
    let peer_record = directory.lookup(&Username::parse(&peer.name)?).await?;
    let keyguard = me.keyguard.client().await?;
    let salt = session::agreement_salt(&my_record.user.identity, &peer_record.user.identity);
    let shared = keyguard
        .derive_shared_key(
            &peer_record.user.identity.agreement_key,
            &salt,
            session::AGREEMENT_INFO,
        )
        .await?;
    Ok(PlayedHost {
        transport,
        keys: SessionKeys::from_shared(&shared)?,
        peer_transport: peer_record.user.transport_key,
    })
}

/// A raw `HostLink` to `peer`'s host, authenticated with `key` (whoever's it is), pinning
/// `expected` as the peer's key. Call inside a `LocalSet`.
pub async fn link(
    peer: &HostProcess,
    key: &AgreementKeyPair,
    expected: &AgreementPublicKey,
) -> anyhow::Result<host_link::Client> {
    let channel = smvs_transport::connect(
        peer.listen,
        key,
        smvs_transport::HOST_PROLOGUE,
        Some(expected),
    )
    .await?;
    let (system, client) = smvs_transport::rpc::client::<host_link::Client>(channel);
    tokio::task::spawn_local(async move {
        let _ = system.await;
    });
    Ok(client)
}
