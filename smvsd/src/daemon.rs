//! The wiring: [`Host::bind`] opens everything and starts the owners and the edges,
//! [`Host::shutdown`] stops accepting, [`Host::join`] drains in order. [`run`] is the whole
//! lifecycle (bind, READY, wait for a stop signal, shut down, join) for `main.rs`.
//!
//! ```text
//!  keyguard ──storage key──► Storage (thread)
//!  Trust, Sessions ──► Outbox (delivery tasks) ──► other hosts
//!  api::peer ◄── other hosts ──► Inbox ──► CallManager (actor)
//!  api::local, api::dbus ──► Commands (actor, the façade) ──► the owners above
//!  DeviceHub (actor) ◄── events from the owners ──► subscribed devices
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

use crate::api::device::DeviceApi;
use crate::api::local::LocalApi;
use crate::calls::{CallContext, CallManager};
use crate::commands::{Commands, Owners};
use crate::config::Config;
use crate::devices::Devices;
use crate::events::{DeviceHub, Events};
use crate::inbox::{Inbox, InboxSettings};
use crate::outbox::{Outbox, OutboxSettings};
use crate::relay::{CallPort, RelayLimits};
use crate::sessions::Sessions;
use crate::storage::Storage;
use crate::trust::{DhtNode, DirectoryConfig, Me, Trust};

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
    #[error("cannot listen for stop signals: {0}")]
    Signals(std::io::Error),
}

/// A running host: its listeners, owners and tasks, all on the current (actix) thread.
pub struct Host {
    peer_addr: std::net::SocketAddr,
    /// The device port's address, when it has one.
    device_addr: Option<std::net::SocketAddr>,
    /// The call port (STUN and the media relay), when it has one; closed by
    /// [`Host::shutdown`].
    call_port: Option<CallPort>,
    /// The DHT node's UDP address, when the host is in the DHT.
    dht_addr: Option<std::net::SocketAddrV4>,
    socket_path: std::path::PathBuf,
    storage: Storage,
    /// Drained before the last checkpoint, so that no event of a change made before the stop
    /// is missing from the event log.
    hub: actix::Addr<DeviceHub>,
    /// The accept loops and timers; aborted by [`Host::shutdown`].
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Kept for as long as the host runs: dropping the connection leaves the bus.
    bus: std::cell::RefCell<Option<zbus::Connection>>,
}

impl Host {
    /// Opens the state directory, keyguard and storage, starts the owners, binds the peer port
    /// and the local socket, and joins D-Bus. Call inside an actix `System`. The host serves
    /// from here on; say READY after this returns.
    pub async fn bind(config: Config) -> Result<Host, DaemonError> {
        smvs_crypto::init().map_err(|e| DaemonError::TransportKey(e.to_string()))?;
        let state = config.state_dir.clone();
        open_state_dir(&state)?;
        let (secret, _) =
            smvs_service::keyfile::load_or_create(&state.join("transport.key"), 32, || {
                zeroize::Zeroizing::new(smvs_crypto::random_array::<32>().to_vec())
            })
            .map_err(|e| DaemonError::TransportKey(e.to_string()))?;
        let transport = Rc::new(
            AgreementKeyPair::from_secret_bytes(&secret)
                .map_err(|e| DaemonError::TransportKey(e.to_string()))?,
        );

        let kg_path = config.keyguard_socket.display().to_string();
        let kg_err = |e: smvs_keyguard::client::KeyguardError| DaemonError::Keyguard {
            path: kg_path.clone(),
            message: e.to_string(),
        };
        let keyguard = KeyguardClient::connect(&config.keyguard_socket)
            .await
            .map_err(kg_err)?;
        // The storage keys exist only in memory here; keyguard hands them out at every start.
        let storage_keys = keyguard.storage_keys().await.map_err(kg_err)?;
        let (storage, epoch_work) = Storage::open_with_epochs(
            &state.join("host.db"),
            crate::epochs::epoch_keys(storage_keys),
        )?;
        let me = registered_user(&storage, &keyguard, &config).await?;
        let keyguard = Rc::new(crate::guard::Guard::new(keyguard));
        let epochs = crate::epochs::StorageEpochs::new(keyguard.clone(), storage.clone());
        // A move to a new epoch that a crash cut short is finished before anything else.
        if let Err(e) = epochs.finish(epoch_work).await {
            tracing::warn!(error = %e, "cannot finish the move to the current storage epoch now; trying again at the next one");
        }

        let listen_error = |what: String| move |source| DaemonError::Listen { what, source };
        let peer_listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(listen_error(config.listen.to_string()))?;
        let peer_addr = peer_listener
            .local_addr()
            .map_err(listen_error(config.listen.to_string()))?;
        let device_listener = match config.device_listen {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(listen_error(format!("{addr} (the device port)")))?,
            ),
            None => None,
        };
        let device_addr = device_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()
            .map_err(listen_error("the device port".into()))?;
        let call_port = match config.call_listen {
            Some(addr) => Some(
                CallPort::bind(
                    addr,
                    RelayLimits {
                        kbps: config.relay_kbps,
                        ..RelayLimits::default()
                    },
                )
                .await
                .map_err(listen_error(format!("{addr} (the call port, udp)")))?,
            ),
            None => None,
        };
        let local_listener = crate::api::local::bind(&config.socket)
            .map_err(listen_error(config.socket.display().to_string()))?;
        // An OS-chosen port is only known now.
        let host_address = match &config.public_address {
            Some(a) => a.clone(),
            None => smvs_schema::HostAddress::parse(&peer_addr.to_string())
                .map_err(|e| DaemonError::Inconsistent(e.to_string()))?,
        };
        let mut allowed = config.allowed_uids.clone();
        allowed.push(0);
        allowed.push(nix::unistd::geteuid().as_raw());

        // The owners, bottom up.
        let log = storage.event_log_state().await?;
        let hub = DeviceHub::new(storage.clone(), log).start();
        let events = Events::new(&hub);
        // A host that stopped hard may have stored messages whose events it never logged (or
        // logged lazily, and lost to a power cut): devices hear of them now, in the order they
        // were stored.
        for (peer, id, time, direction) in storage.unannounced_messages().await? {
            tracing::info!("announcing a message stored just before the host stopped");
            events.publish(match direction {
                crate::model::Direction::In => {
                    crate::model::HostEvent::MessageReceived { id, peer, time }
                }
                crate::model::Direction::Out => {
                    crate::model::HostEvent::MessageSent { id, peer, time }
                }
            });
        }
        let dht = match &config.dht {
            Some(dht) => Some(Rc::new(
                start_dht(dht, peer_addr, &host_address, &storage).await?,
            )),
            None => None,
        };
        let dht_addr = dht.as_ref().map(|node| node.local_addr());
        let trust = Rc::new(
            Trust::new(
                DirectoryConfig {
                    directories: config.directories.clone(),
                    scoped_directories: config.scoped_directories.clone(),
                    quorum: config.quorum,
                    socks5_proxy: config.socks5_proxy.clone(),
                    host_address: host_address.clone(),
                    session_keys: config.max_session_version >= crate::session::SESSION_V2,
                },
                transport.clone(),
                host_address.clone(),
                keyguard.clone(),
                storage.clone(),
                events.clone(),
                me,
            )
            .with_dht(dht),
        );
        trust
            .load_directory_changes()
            .await
            .map_err(|e| DaemonError::Inconsistent(e.to_string()))?;
        trust
            .load_petnames()
            .await
            .map_err(|e| DaemonError::Inconsistent(e.to_string()))?;
        // Renewal at start, before READY: a host that was off past its certificate's expiry
        // is reachable again as soon as it says it serves. Bounded (the directory may be down),
        // and never fatal: the loop below tries again.
        renew_once(&trust).await;
        check_log_heads_soon(&trust);
        let sessions = Rc::new(Sessions::new(
            keyguard.clone(),
            storage.clone(),
            config.max_session_version,
        ));
        // A database restored from an older copy is caught here, before any ratchet is used.
        sessions.check_rollback().await.map_err(|e| {
            DaemonError::Inconsistent(format!(
                "checking the database against the key guard's counter: {e}"
            ))
        })?;
        let outbox = Outbox::new(
            trust.clone(),
            sessions.clone(),
            storage.clone(),
            events.clone(),
            transport.clone(),
            OutboxSettings {
                retry_max: config.retry_max,
                socks5_proxy: config.socks5_proxy.clone(),
            },
        );
        let announcer = announce_moves(
            trust.clone(),
            outbox.clone(),
            storage.clone(),
            host_address.clone(),
        );
        let call_address = call_port
            .as_ref()
            .and_then(|port| relay_address(port.local_addr(), &host_address));
        let calls = CallManager::new(CallContext {
            trust: trust.clone(),
            outbox: outbox.clone(),
            events: events.clone(),
            ring_timeout: config.ring_timeout,
            relays: call_port.clone().zip(call_address),
            relay_calls: config.relay_calls,
        })
        .start();
        let inbox = Rc::new(Inbox::new(
            crate::inbox::InboxOwners {
                trust: trust.clone(),
                sessions: sessions.clone(),
                storage: storage.clone(),
                events: events.clone(),
                calls: calls.clone(),
                outbox: outbox.clone(),
                epochs: epochs.clone(),
            },
            InboxSettings {
                contacts_only: config.contacts_only,
                honour_remote_delete: config.honour_remote_delete,
            },
        ));
        let renewals = trust.clone();
        let republishing = trust.clone();
        let devices = Rc::new(
            Devices::load(
                storage.clone(),
                events.clone(),
                transport.public(),
                config.pairing_code_lifetime,
            )
            .await
            .map_err(|e| DaemonError::Inconsistent(format!("the device list: {e}")))?,
        );
        if let Some(addr) = device_addr {
            devices.set_address(addr.to_string());
        }
        let commands = Commands::new(Owners {
            devices: devices.clone(),
            trust,
            sessions: sessions.clone(),
            outbox: outbox.clone(),
            storage: storage.clone(),
            epochs: epochs.clone(),
            calls,
            events: events.clone(),
            host_address,
            call_address,
        })
        .start();

        // The edges.
        let mut tasks = vec![
            tokio::task::spawn_local(crate::api::peer::serve(
                peer_listener,
                transport.clone(),
                inbox,
                config.peer_idle,
            )),
            tokio::task::spawn_local(
                LocalApi {
                    commands: commands.clone(),
                    hub: hub.clone(),
                    allowed_uids: allowed.clone(),
                }
                .serve(local_listener),
            ),
            tokio::task::spawn_local(expire_loop(storage.clone(), events.clone())),
            tokio::task::spawn_local(renew_loop(renewals)),
            tokio::task::spawn_local(restamp_loop(sessions.clone())),
            tokio::task::spawn_local(announcer),
            tokio::task::spawn_local(crate::epochs::rotate_loop(epochs)),
        ];
        if let Some(dht) = &config.dht {
            tasks.push(tokio::task::spawn_local(republish_loop(
                republishing,
                dht.republish,
            )));
        }
        if let Some(listener) = device_listener {
            tasks.push(tokio::task::spawn_local(
                DeviceApi {
                    commands: commands.clone(),
                    hub: hub.clone(),
                    devices,
                    transport,
                }
                .serve(listener),
            ));
        }
        for peer in storage.peers_with_outbox().await? {
            outbox.kick(&peer);
        }
        let bus = match config.dbus {
            Some(kind) => Some(
                crate::api::dbus::start(kind, config.notifications, commands, hub.clone(), allowed)
                    .await
                    .map_err(DaemonError::Dbus)?,
            ),
            None => None,
        };
        if let Some(every) = smvs_service::notify::watchdog_interval() {
            // systemd's watchdog (WatchdogSec=): the ping goes through the storage thread, so
            // a wedged database stops it and systemd restarts the host.
            let storage = storage.clone();
            tasks.push(tokio::task::spawn_local(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tick.tick().await;
                    if storage.queued_count().await.is_ok() {
                        smvs_service::notify::watchdog_ping();
                    }
                }
            }));
        }
        if let Some(port) = &call_port {
            tracing::info!(addr = %port.local_addr(), "call port serving (STUN and the media relay, udp)");
        }
        tracing::info!(listen = %peer_addr, socket = %config.socket.display(), "host serving");
        Ok(Host {
            peer_addr,
            device_addr,
            call_port,
            dht_addr,
            socket_path: config.socket,
            storage,
            hub,
            tasks,
            bus: std::cell::RefCell::new(bus),
        })
    }

    /// The peer port's address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.peer_addr
    }

    /// The call port (STUN and the media relay), when the host has one: a handle that stays
    /// usable until the host shuts down.
    pub fn call_port(&self) -> Option<CallPort> {
        self.call_port.clone()
    }

    /// What systemd's status line says while the host serves.
    pub fn status(&self) -> String {
        let devices = match self.device_addr {
            Some(addr) => format!("devices on {addr}"),
            None => "no device port".into(),
        };
        let calls = match &self.call_port {
            Some(port) => format!("calls on {}", port.local_addr()),
            None => "no call port".into(),
        };
        let dht = match self.dht_addr {
            Some(addr) => format!("; dht on {addr}"),
            None => String::new(),
        };
        format!(
            "listening on {}; socket {}; {devices}; {calls}{dht}",
            self.peer_addr,
            self.socket_path.display()
        )
    }

    /// Stage 1 of the drain: stop accepting (peer port, local socket, D-Bus), close the call
    /// port and stop the timers. Connections already open finish what they are doing while
    /// [`Host::join`] runs.
    pub fn shutdown(&self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(port) = &self.call_port {
            port.close();
        }
        self.bus.borrow_mut().take();
        let _ = std::fs::remove_file(&self.socket_path);
    }

    /// Stages 2 and 3 of the drain. Stage 2 waits for the storage jobs already queued
    /// (envelopes being stored, messages being queued, statuses being written): a checkpoint
    /// runs after all of them, in order. Stage 3 is that checkpoint itself, which leaves the
    /// database whole in its main file. Deliveries still waiting for a receipt are not waited
    /// for: their messages are still queued on disk and go out again after the restart, and the
    /// peer's host recognises what it already has. Nothing that was acknowledged is lost.
    pub async fn join(self) {
        for task in self.tasks {
            let _ = task.await;
        }
        // Links still open finish what they were doing (an envelope being stored publishes
        // its event after the store): the hub appends everything published until it has been
        // quiet a moment, within a bound.
        crate::events::drain(&self.hub).await;
        if let Err(e) = self.storage.checkpoint().await {
            tracing::warn!(error = %e, "the last checkpoint failed; the WAL is replayed at the next start");
        }
    }
}

/// How long start-up waits for the renewal of the transport certificate: a directory that does
/// not answer must not keep the host from serving what needs no directory.
const START_RENEWAL_TIMEOUT: Duration = Duration::from_secs(5);

/// One renewal check (and, when due, renewal) of the transport certificate, bounded in time;
/// a failure is logged and left for the next check.
async fn renew_once(trust: &Trust) {
    match tokio::time::timeout(START_RENEWAL_TIMEOUT, trust.renew_if_due()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot renew the transport certificate now; trying again later")
        }
        Err(_) => tracing::warn!(
            "the directory did not answer the renewal of the transport certificate within {} s; trying again later",
            START_RENEWAL_TIMEOUT.as_secs()
        ),
    }
}

/// Checks the key log heads the renewal's own look-ups brought, and any seen since the last
/// check, in a task of its own: a slow directory holds neither start-up nor the renewals.
fn check_log_heads_soon(trust: &Rc<Trust>) {
    let trust = trust.clone();
    tokio::task::spawn_local(async move { trust.check_log_heads().await });
}

/// How long a host that moved keeps trying to tell a contact's host that is away.
const ANNOUNCE_FOR: Duration = Duration::from_secs(24 * 3600);
/// How many contacts' hosts are told at once.
const ANNOUNCE_AT_ONCE: usize = 16;

/// After this host's published address changed (a new IP or port, an onion name), tells
/// every contact's host where it is now, signed by the identity: they follow without asking a
/// directory (which learns it too, at renewal). Contacts that are away are tried again, with
/// a backoff, for a day; the address counts as announced once every contact has it, and is
/// announced again at the next start otherwise.
async fn announce_moves(
    trust: Rc<Trust>,
    outbox: crate::outbox::Outbox,
    storage: Storage,
    address: smvs_schema::HostAddress,
) {
    use futures::StreamExt;
    if trust.registered().is_none() {
        return;
    }
    let last = match storage.setting(crate::storage::ANNOUNCED_ADDRESS).await {
        Ok(last) => last,
        Err(e) => return tracing::warn!(error = %e, "cannot read the announced address"),
    };
    let record = || async {
        if let Err(e) = storage
            .set_setting(
                crate::storage::ANNOUNCED_ADDRESS,
                address.as_str().as_bytes().to_vec(),
            )
            .await
        {
            tracing::warn!(error = %e, "cannot record the announced address");
        }
    };
    match last.as_deref().map(Vec::as_slice) {
        Some(last) if last == address.as_str().as_bytes() => return,
        // A host from before announcements: nothing is known to have moved.
        None => return record().await,
        Some(_) => {}
    }
    // Whom to tell: every contact still eligible (not blocked, not a request, no change
    // pending), read anew before each round, among those not told yet.
    let eligible = |all: Vec<crate::model::Contact>| -> Vec<crate::model::Contact> {
        all.into_iter()
            .filter(|c| !c.blocked && !c.request && c.pending.is_none())
            .collect()
    };
    let mut left: Vec<crate::model::Contact> = match trust.contacts().await {
        Ok(all) => eligible(all),
        Err(e) => {
            return tracing::warn!(error = %e, "cannot list the contacts to announce our address to")
        }
    };
    if !left.is_empty() {
        let statement = match trust.sign_own_address().await {
            Ok(statement) => statement,
            Err(e) => {
                return tracing::warn!(error = %e, "cannot have our new address signed; contacts will find it at the directory")
            }
        };
        tracing::info!(%address, contacts = left.len(), "announcing this host's new address to its contacts' hosts");
        let started = std::time::Instant::now();
        let mut wait = Duration::from_secs(1);
        loop {
            // A few links at a time, however many contacts there are.
            let tries: Vec<_> = futures::stream::iter(left.iter())
                .map(|c| async {
                    (
                        c.username.clone(),
                        outbox.announce_address(c, &statement).await,
                    )
                })
                .buffer_unordered(ANNOUNCE_AT_ONCE)
                .collect()
                .await;
            let failed: std::collections::HashSet<_> = tries
                .into_iter()
                .filter_map(|(peer, result)| match result {
                    Ok(_) => None,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "could not announce our address yet");
                        Some(peer)
                    }
                })
                .collect();
            left.retain(|c| failed.contains(&c.username));
            if left.is_empty() || started.elapsed() > ANNOUNCE_FOR {
                break;
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(600));
            if let Ok(all) = trust.contacts().await {
                left = eligible(all)
                    .into_iter()
                    .filter(|c| failed.contains(&c.username))
                    .collect();
            }
            if left.is_empty() {
                break;
            }
        }
    }
    if left.is_empty() {
        record().await;
    } else {
        tracing::info!(
            left = left.len(),
            "some contacts' hosts did not take our new address; they will find it at the directory"
        );
    }
}

/// Renews the transport certificate when it is due (see [`Trust::renew_if_due`]).
async fn renew_loop(trust: Rc<Trust>) {
    let mut tick = tokio::time::interval(crate::trust::RENEW_CHECK);
    // The first tick is immediate, and start-up has just checked.
    tick.tick().await;
    loop {
        tick.tick().await;
        renew_once(&trust).await;
        check_log_heads_soon(&trust);
    }
}

/// How many contacts' hosts a DHT node joins through, besides the configured nodes. Few: the
/// engine asks every bootstrap node on each look-up while its table is small, and each one
/// learns what is looked up.
const MAX_CONTACT_BOOTSTRAP: usize = 8;

/// Starts this host's DHT node: on the peer port's address (UDP) unless configured, joining
/// through the configured nodes and a few contacts' hosts: accepted, unblocked contacts at
/// an IPv4 address this host would connect to ([`crate::trust::may_connect`]), so that a
/// stranger's record cannot point this host's DHT traffic anywhere.
async fn start_dht(
    config: &crate::config::DhtConfig,
    peer_addr: std::net::SocketAddr,
    host_address: &smvs_schema::HostAddress,
    storage: &Storage,
) -> Result<DhtNode, DaemonError> {
    let listen = match (config.listen, peer_addr) {
        (Some(addr), _) => addr,
        (None, std::net::SocketAddr::V4(v4)) => v4,
        (None, std::net::SocketAddr::V6(_)) => {
            return Err(DaemonError::Inconsistent(
                "the DHT is IPv4: set --dht-listen".into(),
            ))
        }
    };
    let contacts: Vec<String> = storage
        .contacts()
        .await?
        .iter()
        .filter(|c| !c.blocked && !c.request && c.pending.is_none() && c.alarm.is_none())
        .filter(|c| crate::trust::may_connect(host_address, &c.username, &c.host_address).is_ok())
        .map(|c| c.host_address.to_string())
        .filter(|a| a.parse::<std::net::SocketAddrV4>().is_ok())
        .take(MAX_CONTACT_BOOTSTRAP)
        .collect();
    DhtNode::start(config, listen, &contacts)
        .await
        .map_err(DaemonError::Inconsistent)
}

/// Puts this host's record in the DHT again every `every` (nodes forget records), when its
/// user lives there.
async fn republish_loop(trust: Rc<Trust>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    // The first tick is immediate, and start-up has just published.
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(me) = trust.registered() else {
            continue;
        };
        if me.username.is_identity_address() {
            if let Err(e) = trust.publish_in_dht(&me, true).await {
                tracing::warn!(error = %e, "cannot publish this host's record in the DHT now");
            }
        }
    }
}

/// Moves the rollback counter on now and then (see [`Sessions::restamp`]), so that a copy of
/// the database taken while the host runs is caught when it is restored.
async fn restamp_loop(sessions: Rc<Sessions>) {
    let mut tick = tokio::time::interval(crate::sessions::RESTAMP_EVERY);
    // The first tick is immediate, and start-up has just stamped.
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = sessions.restamp().await {
            tracing::warn!(error = %e, "cannot move the rollback counter on; trying again later");
        }
    }
}

/// Creates the state directory (0700) or checks that nobody else can reach into it.
fn open_state_dir(state: &std::path::Path) -> Result<(), DaemonError> {
    let shown = state.display().to_string();
    let err = |source| DaemonError::StateDir {
        path: shown.clone(),
        source,
    };
    if !state.exists() {
        std::fs::create_dir_all(state).map_err(err)?;
        std::fs::set_permissions(state, std::fs::Permissions::from_mode(0o700)).map_err(err)?;
    }
    let mode = std::fs::metadata(state).map_err(err)?.permissions().mode();
    if mode & 0o007 != 0 {
        return Err(DaemonError::StateDirOpen(shown));
    }
    Ok(())
}

/// The user this host was registered as, with its identity from keyguard.
async fn registered_user(
    storage: &Storage,
    keyguard: &KeyguardClient,
    config: &Config,
) -> Result<Option<Me>, DaemonError> {
    let Some(name) = storage.setting("me").await? else {
        return Ok(None);
    };
    let username = std::str::from_utf8(&name)
        .ok()
        .and_then(|n| Username::parse(n).ok())
        .ok_or_else(|| DaemonError::Inconsistent("the stored user name is corrupt".into()))?;
    let identity = keyguard
        .public_keys()
        .await
        .map_err(|e| DaemonError::Keyguard {
            path: config.keyguard_socket.display().to_string(),
            message: e.to_string(),
        })?
        .ok_or_else(|| {
            DaemonError::Inconsistent(format!(
                "this host is registered as {username} but keyguard at {} has no identity",
                config.keyguard_socket.display()
            ))
        })?;
    Ok(Some(Me { username, identity }))
}

impl smvs_service::lifecycle::Server for Host {
    fn status(&self) -> String {
        Host::status(self)
    }

    fn shutdown(&self) {
        Host::shutdown(self)
    }

    async fn join(self) {
        Host::join(self).await
    }
}

/// Runs the host until `stop` resolves, through the lifecycle every SMVS daemon shares (bind,
/// READY=1, wait, STOPPING=1, shutdown, join). Call inside an actix `System`.
pub async fn run(
    config: Config,
    stop: impl Future<Output = &'static str>,
) -> Result<(), DaemonError> {
    match smvs_service::lifecycle::run_until(Host::bind(config), stop).await {
        Ok(_) => Ok(()),
        Err(smvs_service::lifecycle::RunError::Bind(e)) => Err(e),
        Err(smvs_service::lifecycle::RunError::Signals(e)) => Err(DaemonError::Signals(e)),
    }
}

/// Disappearing messages: removes what has outlived its conversation's expiry, and tells the
/// user's devices of each message that went, as a deletion. It looks every second while some
/// conversation has a timer (asking again each minute whether one still has), and sleeps until a
/// timer is set while none has: an idle host with no timers wakes for nothing (a hosting box
/// runs hundreds of them).
async fn expire_loop(storage: Storage, events: Events) {
    const EVERY: Duration = Duration::from_secs(1);
    const RECHECK: Duration = Duration::from_secs(60);
    loop {
        match storage.any_expiring().await {
            Ok(false) => {
                storage.expiry_set().await;
                continue;
            }
            Ok(true) => {}
            Err(e) => tracing::error!(error = %e, "expiring messages failed"),
        }
        let until = tokio::time::Instant::now() + RECHECK;
        let mut tick = tokio::time::interval(EVERY);
        while tokio::time::Instant::now() < until {
            tick.tick().await;
            match storage.expire(crate::model::now_ms()).await {
                Ok(gone) => {
                    for (peer, id) in gone {
                        events.publish(crate::model::HostEvent::Deleted { id: Some(id), peer });
                    }
                }
                Err(e) => tracing::error!(error = %e, "expiring messages failed"),
            }
        }
    }
}

/// Where peers' hosts and our devices reach the call port: its own address, or, when it
/// listens on every address, the published host address's IP with its port. None when that is
/// a name: calls then go without a relay (and devices learn no NAT address), and the log says
/// how to fix it.
fn relay_address(
    bound: std::net::SocketAddr,
    published: &smvs_schema::HostAddress,
) -> Option<std::net::SocketAddr> {
    if !bound.ip().is_unspecified() {
        return Some(bound);
    }
    let host = published.as_str().rsplit_once(':').map(|(h, _)| h)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Some(std::net::SocketAddr::new(ip, bound.port())),
        Err(_) => {
            tracing::warn!(
                published = %published.as_str(),
                "the call port listens on every address and the published address is a name: \
                 calls go without a relay; set call_listen to the public IP and port"
            );
            None
        }
    }
}
