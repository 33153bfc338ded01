//! The directory server's lifecycle: `bind`, then `shutdown` and `join`.
//!
//! ```text
//!             ┌── worker 0: runtime + LocalSet ── accept ─► Noise handshake ─► RPC objects ─┐
//! listener ───┤── worker 1: …                                                               ├─► Store
//!             └── (one worker per core; the kernel spreads accepts between them)            ┘
//! ```
//!
//! Cap'n Proto RPC objects are `!Send`, so each connection lives entirely on the worker that
//! accepted it. What workers share ([`Shared`](crate::state::Shared), one module down) is
//! `Send + Sync`: the store handle, the keys, the rate limiters and the connection budget.
//! This module is the top of the crate: it names `rpc`, `state`, `store` and `limits`, and
//! none of them names it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use smvs_crypto::{SigningKeyPair, SigningPublicKey, SigningSeed};
use thiserror::Error;
use tokio::sync::{watch, Semaphore};

use crate::answers::AnswerCache;
use crate::config::DirectoryConfig;
pub use crate::keylog::LogVrf;
use crate::keylog::{KeyLog, LogError};
use crate::limits::Limits;
use crate::rpc::DirectoryRpc;
use crate::state::Shared;
use crate::store::{NameKey, Store, StoreError};

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("directory key: {0}")]
    Key(#[from] smvs_service::keyfile::KeyFileError),
    #[error("directory key: {0}")]
    Crypto(#[from] smvs_crypto::CryptoError),
    #[error("database {db}: {source}")]
    Store {
        db: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a worker thread: {0}")]
    Thread(std::io::Error),
    #[error("{0}")]
    KeyLog(LogError),
}

/// Loads the directory's signing key from `path`, creating it (0600) when absent.
pub fn load_key(path: &std::path::Path) -> Result<SigningKeyPair, ServerError> {
    Ok(load_keys(path)?.signing)
}

/// Everything a directory's key file holds: the signing key and what is derived from its seed.
pub struct DirectoryKeys {
    pub signing: SigningKeyPair,
    /// The key deregistered names (and the key log's names) are kept under.
    pub names: NameKey,
    /// The key log's VRF key.
    pub log_vrf: LogVrf,
}

/// [`load_key`], and the keys derived from the same seed (see [`NameKey`], [`LogVrf`]):
/// whoever has the key file has them all, and nothing else needs keeping.
pub fn load_keys(path: &std::path::Path) -> Result<DirectoryKeys, ServerError> {
    let (seed, created) = smvs_service::keyfile::load_or_create(path, 32, || {
        zeroize::Zeroizing::new(SigningSeed::generate().expose().to_vec())
    })?;
    if created {
        tracing::info!(path = %path.display(), "created a new directory key");
    }
    Ok(DirectoryKeys {
        signing: SigningKeyPair::from_seed(&SigningSeed::from_bytes(&seed)?)?,
        names: NameKey::derive(&seed)?,
        log_vrf: LogVrf::derive(&seed)?,
    })
}

/// A running directory.
pub struct DirectoryServer {
    local_addr: SocketAddr,
    public_key: SigningPublicKey,
    stop: watch::Sender<bool>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Held while serving a SQLite database (see [`lock_sqlite`]).
    _db_lock: Option<nix::fcntl::Flock<std::fs::File>>,
}

impl DirectoryServer {
    /// Opens the key and the database and starts listening. When this returns, the socket is
    /// bound and accepting: announce readiness then.
    pub async fn bind(config: DirectoryConfig) -> Result<DirectoryServer, ServerError> {
        smvs_crypto::init()?;
        // Check the cheap things first, so a typo creates no key file.
        let db = crate::store::parse_url(&config.db).map_err(|source| ServerError::Store {
            db: redact_db_url(&config.db),
            source,
        })?;
        if let Some(replica) = &config.db_replica {
            let refused = |source| ServerError::Store {
                db: redact_db_url(replica),
                source,
            };
            if let crate::store::DbUrl::Sqlite(_) = db {
                return Err(refused(StoreError::ReplicaOfSqlite));
            }
            crate::store::parse_url(replica).map_err(refused)?;
        }
        let DirectoryKeys {
            signing: key,
            names,
            log_vrf,
        } = load_keys(&config.key_file)?;
        let noise_key = key.to_agreement_keypair()?;
        let replica = match &config.db_replica {
            None => None,
            Some(url) => Some(
                Store::open_replica(&config.db, url, names.clone())
                    .await
                    .map_err(|source| ServerError::Store {
                        db: redact_db_url(url),
                        source,
                    })?,
            ),
        };
        let store = Store::open(&config.db, names)
            .await
            .map_err(|source| ServerError::Store {
                db: redact_db_url(&config.db),
                source,
            })?;
        let db_lock = lock_sqlite(&config.db)?;
        let log = KeyLog::open_with_replica(store.clone(), replica.clone(), log_vrf)
            .await
            .map_err(ServerError::KeyLog)?;
        let listener =
            std::net::TcpListener::bind(config.listen).map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: config.listen,
                source,
            })?;
        let public_key = key.public();
        let shared = Arc::new(Shared {
            reads: replica.clone().unwrap_or_else(|| store.clone()),
            replica: replica.is_some(),
            store,
            log,
            key,
            noise_key,
            limits: Limits::new(config.limits),
            connections: Arc::new(Semaphore::new(config.max_connections.max(1))),
            handshake_timeout: config.handshake_timeout,
            allow_private_host_addresses: config.allow_private_host_addresses,
            answers: AnswerCache::new(config.answer_cache_bytes),
            head: std::sync::Mutex::new(None),
            changes: std::sync::atomic::AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let count = if config.workers == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        } else {
            config.workers
        };
        let mut workers = Vec::with_capacity(count);
        for index in 0..count {
            let listener = listener.try_clone().map_err(ServerError::Thread)?;
            let shared = shared.clone();
            let stopped = stopped.clone();
            let handle = std::thread::Builder::new()
                .name(format!("directory-worker-{index}"))
                .spawn(move || worker(index, listener, shared, stopped))
                .map_err(ServerError::Thread)?;
            workers.push(handle);
        }
        tracing::info!(listen = %local_addr, key = %public_key.to_hex(), workers = count, "directory serving");
        Ok(DirectoryServer {
            local_addr,
            public_key,
            stop,
            workers,
            _db_lock: db_lock,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn public_key(&self) -> SigningPublicKey {
        self.public_key
    }

    /// Stops accepting and closes every connection. Requests already handed to the store
    /// complete (the store replies only after committing), so nothing acknowledged is lost.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits for every worker to finish.
    pub async fn join(self) {
        let workers = self.workers;
        let _ = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        })
        .await;
    }
}

/// How [`smvs_service::lifecycle`] runs a directory (`smvs-directory`'s main).
impl smvs_service::lifecycle::Server for DirectoryServer {
    /// Tests read the OS-chosen port from this line.
    fn status(&self) -> String {
        format!("listening on {}", self.local_addr)
    }

    fn shutdown(&self) {
        DirectoryServer::shutdown(self)
    }

    async fn join(self) {
        DirectoryServer::join(self).await
    }
}

/// A SQLite database is served by one process: what it keeps in memory (the key log's latest
/// epoch, its tree nodes, look-up answers) is right only if nobody else writes the file. An
/// exclusive `flock` on the database file, held while serving, makes a second process fail
/// at start rather than fork the log (SQLite's own locks are `fcntl` locks, which this does not
/// touch, so tools can still read the file).
fn lock_sqlite(url: &str) -> Result<Option<nix::fcntl::Flock<std::fs::File>>, ServerError> {
    let Ok(crate::store::DbUrl::Sqlite(path)) = crate::store::parse_url(url) else {
        return Ok(None);
    };
    let refuse = |why: String| ServerError::Store {
        db: redact_db_url(url),
        source: StoreError::Locked(why),
    };
    let file = std::fs::File::open(&path).map_err(|e| refuse(e.to_string()))?;
    match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(locked) => Ok(Some(locked)),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(refuse(
            "another smvs-directory process is serving it (one SQLite database, one process; \
             several processes share a PostgreSQL database)"
                .into(),
        )),
        Err((_, e)) => Err(refuse(e.to_string())),
    }
}

/// Shows a database URL without its password.
pub fn redact_db_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

fn worker(
    index: usize,
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, worker = index, "cannot start a worker runtime");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = match tokio::net::TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, worker = index, "cannot use the listening socket");
                return;
            }
        };
        if index == 0 {
            let shared = shared.clone();
            tokio::task::spawn_local(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(60));
                loop {
                    tick.tick().await;
                    shared.limits.forget_idle();
                }
            });
        }
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                accepted = listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
                            tracing::warn!(%peer, "connection limit reached; closing a new connection");
                            continue;
                        };
                        let shared = shared.clone();
                        let stopped = stopped.clone();
                        tokio::task::spawn_local(async move {
                            serve_connection(tcp, peer, shared, stopped).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        // EMFILE and friends: back off briefly rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    });
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    mut stopped: watch::Receiver<bool>,
) {
    let channel = match smvs_transport::accept(
        tcp,
        &shared.noise_key,
        smvs_transport::DIRECTORY_PROLOGUE,
        shared.handshake_timeout,
    )
    .await
    {
        Ok(channel) => channel,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "handshake failed");
            return;
        }
    };
    let service: smvs_schema::directory_capnp::directory::Client =
        capnp_rpc::new_client(DirectoryRpc::new(shared, peer.ip()));
    let system = smvs_transport::rpc::serve(channel, service.client);
    tokio::select! {
        result = system => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = stopped.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::redact_db_url;

    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(
            redact_db_url("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact_db_url("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact_db_url("sqlite:/x"), "sqlite:/x");
    }
}
