//! The host's lifecycle: open everything, start the actors, listen, say READY, stop.
//!
//! ```text
//!  keyguard ──storage key──► Storage (thread) ◄──┬── Router (actor) ◄── local API (Unix socket)
//!                                                 ├── PeerLinks (actor) ──► other hosts
//!                                                 └── host link server ◄── other hosts
//!  DeviceHub (actor) ◄── events from all of them ──► subscribed devices
//! ```
//!
//! Everything but the storage thread runs on one actix arbiter (the main thread), because the
//! Cap'n Proto objects are `!Send`; actors talk with plain owned messages.

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::rc::Rc;
use std::time::Duration;

use actix::Actor;
use smvs_crypto::AgreementKeyPair;
use smvs_keyguard::client::KeyguardClient;
use smvs_schema::Username;
use thiserror::Error;

use crate::config::Config;
use crate::devices::DeviceHub;
use crate::host::{HostCore, Me};
use crate::local_api::LocalApi;
use crate::peers::{Kick, PeerLinks};
use crate::router::Router;
use crate::storage::Storage;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("state directory {path}: {source}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state directory {0} is open to other users; run `chmod 700 {0}`")]
    StateDirOpen(String),
    #[error("transport key: {0}")]
    TransportKey(String),
    #[error("keyguard at {path}: {message}")]
    Keyguard { path: String, message: String },
    #[error("storage: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("cannot listen on {what}: {source}")]
    Listen {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Inconsistent(String),
    #[error("D-Bus: {0}")]
    Dbus(String),
}

/// Runs the host until `stop` resolves. Call inside an actix `System`.
pub async fn run(
    config: Config,
    stop: impl Future<Output = &'static str>,
) -> Result<(), DaemonError> {
    smvs_crypto::init().map_err(|e| DaemonError::TransportKey(e.to_string()))?;
    let state = config.state_dir.clone();
    let shown = state.display().to_string();
    if !state.exists() {
        std::fs::create_dir_all(&state).map_err(|source| DaemonError::StateDir {
            path: shown.clone(),
            source,
        })?;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| DaemonError::StateDir {
                path: shown.clone(),
                source,
            },
        )?;
    }
    let mode = std::fs::metadata(&state)
        .map_err(|source| DaemonError::StateDir {
            path: shown.clone(),
            source,
        })?
        .permissions()
        .mode();
    if mode & 0o007 != 0 {
        return Err(DaemonError::StateDirOpen(shown));
    }

    let (secret, _) =
        smvs_service::keyfile::load_or_create(&state.join("transport.key"), 32, || {
            zeroize::Zeroizing::new(smvs_crypto::random_array::<32>().to_vec())
        })
        .map_err(|e| DaemonError::TransportKey(e.to_string()))?;
    let transport = AgreementKeyPair::from_secret_bytes(&secret)
        .map_err(|e| DaemonError::TransportKey(e.to_string()))?;

    let kg_path = config.keyguard_socket.display().to_string();
    let kg_err = |e: smvs_keyguard::client::KeyguardError| DaemonError::Keyguard {
        path: kg_path.clone(),
        message: e.to_string(),
    };
    let keyguard = KeyguardClient::connect(&config.keyguard_socket)
        .await
        .map_err(kg_err)?;
    // The storage key exists only in memory here; keyguard derives it anew at every start.
    let storage_key = keyguard.derive_storage_key().await.map_err(kg_err)?;
    let storage = Storage::open(&state.join("host.db"), storage_key)?;

    let me = match storage.setting("me").await? {
        None => None,
        Some(name) => {
            let username = std::str::from_utf8(&name)
                .ok()
                .and_then(|n| Username::parse(n).ok())
                .ok_or_else(|| {
                    DaemonError::Inconsistent("the stored user name is corrupt".into())
                })?;
            let identity = keyguard
                .public_keys()
                .await
                .map_err(kg_err)?
                .ok_or_else(|| {
                    DaemonError::Inconsistent(format!(
                        "this host is registered as {username} but keyguard at {} has no identity",
                        config.keyguard_socket.display()
                    ))
                })?;
            Some(Me { username, identity })
        }
    };

    let peer_listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            what: config.listen.to_string(),
            source,
        })?;
    let peer_addr = peer_listener
        .local_addr()
        .map_err(|source| DaemonError::Listen {
            what: config.listen.to_string(),
            source,
        })?;
    let local_listener =
        crate::local_api::bind(&config.socket).map_err(|source| DaemonError::Listen {
            what: config.socket.display().to_string(),
            source,
        })?;

    let mut config = config;
    if config.public_address.is_none() {
        // An OS-chosen port is only known now.
        config.public_address = smvs_schema::HostAddress::parse(&peer_addr.to_string()).ok();
    }
    let socket_path = config.socket.clone();
    let mut allowed = config.allowed_uids.clone();
    allowed.push(0);
    allowed.push(nix::unistd::geteuid().as_raw());

    let (dbus, notifications) = (config.dbus, config.notifications);
    let core = Rc::new(HostCore::new(
        config,
        storage.clone(),
        keyguard,
        transport,
        me,
    ));
    let hub = DeviceHub::default().start();
    core.set_event_sink(hub.clone().recipient());
    let hub_for_dbus = hub.clone();
    let peers = PeerLinks::new(core.clone()).start();
    let calls = crate::calls::CallManager::new(core.clone()).start();
    let router = Router::new(core.clone(), peers.clone(), calls.clone()).start();

    tokio::task::spawn_local(crate::host_link::serve(
        peer_listener,
        core.clone(),
        router.clone(),
    ));
    tokio::task::spawn_local(
        LocalApi {
            core: core.clone(),
            router: router.clone(),
            calls: calls.clone(),
            hub,
            allowed_uids: allowed,
        }
        .serve(local_listener),
    );
    for peer in storage.peers_with_outbox().await? {
        peers.do_send(Kick(peer));
    }
    tokio::task::spawn_local(expire_loop(storage.clone()));
    // Kept for as long as the daemon runs: dropping the connection leaves the bus.
    let _bus = match dbus {
        Some(kind) => Some(
            crate::dbus::start(
                kind,
                notifications,
                router.clone(),
                calls.clone(),
                hub_for_dbus,
            )
            .await
            .map_err(DaemonError::Dbus)?,
        ),
        None => None,
    };

    smvs_service::notify::ready_with_status(&format!(
        "listening on {peer_addr}; socket {}",
        socket_path.display()
    ));
    tracing::info!(listen = %peer_addr, socket = %socket_path.display(), "host serving");
    if let Some(every) = smvs_service::notify::watchdog_interval() {
        // systemd's watchdog (WatchdogSec=): the ping goes through the storage thread, so a
        // wedged database stops it and systemd restarts the host.
        let storage = storage.clone();
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if storage.queued_count().await.is_ok() {
                    smvs_service::notify::watchdog_ping();
                }
            }
        });
    }
    let signal = stop.await;
    tracing::info!(signal, "stopping");
    smvs_service::notify::stopping();
    // Everything acknowledged is already committed; in-flight deliveries are retried by their
    // senders. Leave no stale socket behind.
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}

/// Disappearing messages: removes what has outlived its conversation's expiry.
async fn expire_loop(storage: Storage) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if let Err(e) = storage.expire(crate::model::now_ms()).await {
            tracing::error!(error = %e, "expiring messages failed");
        }
    }
}
