//! The keyguard server's lifecycle: `bind`, then `shutdown` and `join`.
//!
//! ```text
//!  UnixListener ── accept ─► SO_PEERCRED uid in the allowed list? ── no ──► close, warn (uid, pid)
//!                                   │ yes, and fewer than max_connections open
//!                                   ▼
//!                  connection task: twoparty RPC ─► KeyguardRpc ─► Vault (Rc, one per process)
//! ```
//!
//! Everything lives on the caller's thread: Cap'n Proto RPC objects are `!Send`, and one thread
//! is all a key guard needs. `bind` must therefore be called inside a `tokio::task::LocalSet`.
//! The socket is mode 0666 on purpose: who may talk is decided by the peer's uid on every
//! accept, not by file permissions, so that a refusal is logged with who tried.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use smvs_schema::keyguard_capnp::keyguard;
use thiserror::Error;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::keydir::{KeyDir, KeyDirError};
use crate::rpc::{KeyguardRpc, Peer, Vault};

/// Connections served at once unless configured otherwise. smvsd needs one or two.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// Everything `smvs-keyguard` can be told.
#[derive(Debug, Clone)]
pub struct KeyguardConfig {
    pub key_dir: PathBuf,
    pub socket: PathBuf,
    /// The uids whose connections are served (smvsd's). Every other uid is refused.
    pub allowed_uids: Vec<u32>,
    /// Connections served at once; further ones are closed at once.
    pub max_connections: usize,
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("no uid may connect: give at least one --allow-uid")]
    NoAllowedUid,
    #[error("cannot initialise libsodium: {0}")]
    Crypto(#[from] smvs_crypto::CryptoError),
    #[error(transparent)]
    KeyDir(#[from] KeyDirError),
    #[error("{path} exists and is not a socket; remove it or choose another --socket")]
    NotASocket { path: PathBuf },
    #[error("socket {path} is in use by a running process (another smvs-keyguard?)")]
    SocketInUse { path: PathBuf },
    #[error("{action} socket {path}: {source}")]
    Socket {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A running key guard.
pub struct KeyguardServer {
    socket: PathBuf,
    /// The socket file's (device, inode), so that `join` removes only the file it created.
    socket_id: (u64, u64),
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl KeyguardServer {
    /// Opens the key directory, loads (or, for the storage secret, creates) the keys, and starts
    /// serving on `config.socket`. When this returns the socket is bound and accepting:
    /// announce readiness then. Must be called inside a `tokio::task::LocalSet`.
    pub async fn bind(config: KeyguardConfig) -> Result<KeyguardServer, ServerError> {
        if config.allowed_uids.is_empty() {
            return Err(ServerError::NoAllowedUid);
        }
        smvs_crypto::init()?;
        let socket = config.socket;
        // The socket first: a wrong --socket should not leave a new key directory behind.
        remove_stale_socket(&socket)?;
        let dir = KeyDir::open(&config.key_dir)?;
        let vault = Rc::new(Vault::open(dir)?);
        let io = |action, source| ServerError::Socket {
            path: socket.clone(),
            action,
            source,
        };
        let listener = UnixListener::bind(&socket).map_err(|e| io("binding", e))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| io("setting the mode of", e))?;
        let meta = std::fs::metadata(&socket).map_err(|e| io("inspecting", e))?;
        let socket_id = (meta.dev(), meta.ino());
        tracing::info!(
            socket = %socket.display(),
            key_dir = %config.key_dir.display(),
            allowed_uids = ?config.allowed_uids,
            identity = vault.bundle().is_some(),
            "keyguard serving"
        );
        let (stop, stopped) = watch::channel(false);
        let accept = AcceptLoop {
            listener,
            vault,
            allowed_uids: config.allowed_uids,
            connections: Arc::new(Semaphore::new(config.max_connections.max(1))),
        };
        let task = tokio::task::spawn_local(accept.run(stopped));
        Ok(KeyguardServer {
            socket,
            socket_id,
            stop,
            task,
        })
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Stops accepting and closes every connection. Each request is answered synchronously, so
    /// there is nothing half-done to drain.
    pub fn shutdown(&self) {
        let _ = self.stop.send(true);
    }

    /// Waits until every connection is closed, then removes the socket file.
    pub async fn join(self) {
        let _ = self.task.await;
        if let Ok(meta) = std::fs::symlink_metadata(&self.socket) {
            if (meta.dev(), meta.ino()) == self.socket_id {
                if let Err(e) = std::fs::remove_file(&self.socket) {
                    tracing::warn!(socket = %self.socket.display(), error = %e, "cannot remove the socket file");
                }
            }
        }
    }
}

/// How [`smvs_service::lifecycle`] runs a key guard (`smvs-keyguard`'s main).
impl smvs_service::lifecycle::Server for KeyguardServer {
    fn status(&self) -> String {
        format!("listening on {}", self.socket.display())
    }

    fn shutdown(&self) {
        KeyguardServer::shutdown(self)
    }

    async fn join(self) {
        KeyguardServer::join(self).await
    }
}

/// Removes a socket file left behind by a keyguard that did not stop cleanly. Refuses a file
/// that is not a socket, and a socket some process still answers on.
fn remove_stale_socket(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ServerError::Socket {
                path: path.to_owned(),
                action: "inspecting",
                source,
            })
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket {
            path: path.to_owned(),
        });
    }
    // Only "connection refused" proves that nothing listens any more.
    match std::os::unix::net::UnixStream::connect(path) {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        Ok(_) => {
            return Err(ServerError::SocketInUse {
                path: path.to_owned(),
            })
        }
        Err(source) => {
            return Err(ServerError::Socket {
                path: path.to_owned(),
                action: "probing the existing",
                source,
            })
        }
    }
    std::fs::remove_file(path).map_err(|source| ServerError::Socket {
        path: path.to_owned(),
        action: "removing the stale",
        source,
    })
}

struct AcceptLoop {
    listener: UnixListener,
    vault: Rc<Vault>,
    allowed_uids: Vec<u32>,
    connections: Arc<Semaphore>,
}

impl AcceptLoop {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        loop {
            tokio::select! {
                _ = stopped.changed() => break,
                // Reap finished connections so the set does not grow for ever.
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        if let Some((peer, permit)) = self.admit(&stream) {
                            let rpc = KeyguardRpc::new(self.vault.clone(), peer);
                            tasks.spawn_local(serve(stream, rpc, peer, permit, stopped.clone()));
                        }
                        // Otherwise `stream` is dropped here: the connection is closed at once.
                    }
                    Err(e) => {
                        // EMFILE and friends: back off briefly rather than spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
        tasks.shutdown().await;
    }

    /// The SO_PEERCRED check and the connection budget.
    fn admit(&self, stream: &UnixStream) -> Option<(Peer, OwnedSemaphorePermit)> {
        let cred = match stream.peer_cred() {
            Ok(cred) => cred,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a connection's peer credentials; closing it");
                return None;
            }
        };
        let peer = Peer {
            uid: cred.uid(),
            pid: cred.pid().unwrap_or(0),
        };
        if !self.allowed_uids.contains(&peer.uid) {
            smvs_service::security_event!(
                warn,
                smvs_service::logging::KEYGUARD_REFUSAL,
                uid = peer.uid,
                pid = peer.pid,
                "refused a connection from a uid that is not allowed (see --allow-uid)"
            );
            return None;
        }
        let Ok(permit) = self.connections.clone().try_acquire_owned() else {
            tracing::warn!(
                uid = peer.uid,
                pid = peer.pid,
                "connection limit reached; closing a new connection"
            );
            return None;
        };
        tracing::debug!(%peer, "connection accepted");
        Some((peer, permit))
    }
}

async fn serve(
    stream: UnixStream,
    rpc: KeyguardRpc,
    peer: Peer,
    _permit: OwnedSemaphorePermit,
    mut stopped: watch::Receiver<bool>,
) {
    let bootstrap: keyguard::Client = capnp_rpc::new_client(rpc);
    let system = smvs_transport::rpc::local_server(stream, bootstrap.client);
    tokio::select! {
        result = system => match result {
            Ok(()) => tracing::debug!(%peer, "connection closed"),
            // Only an allowed uid gets this far, so a malformed message is worth a line.
            Err(e) => tracing::info!(%peer, error = %e, "connection ended with an error"),
        },
        _ = stopped.changed() => {}
    }
}
