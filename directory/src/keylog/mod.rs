//! The directory's key log (key transparency): every version of every name's record goes into
//! an Auditable Key Directory (`akd`), and every look-up answer carries a proof against a
//! signed head. What the log holds and how a host checks it: [`crate::transparency`].
//!
//! The log is kept in step with the users table by [`KeyLog::sync`]: under the log's lock, it
//! reads what the table says of a name now and publishes that as the name's next version if
//! the log says otherwise. Every request that changes a record calls it before answering, and
//! a look-up whose proof shows something else than the table (a change another process has not
//! published yet, or one whose publication a crash cut off) calls it and proves again. So the
//! log never needs a queue of its own, and heals by itself.
//!
//! One publisher at a time: in this process a mutex, across the processes that share a
//! PostgreSQL database an advisory lock ([`Store::with_log_lock`]). A publication runs as a
//! task of its own, so a request dropped half-way (its client went away) never leaves the lock
//! held or the epoch half-written; an epoch is written in one transaction.
//!
//! With a streaming read replica (`--db-replica`), look-ups read the replica: the latest epoch
//! and count of record changes ([`KeyLog::latest`]) and the proof ([`KeyLog::prove`]) both come
//! from it, as the record does (`state`), so a replica that lags gives an older answer that
//! holds together, never a new generation over old rows. Everything that writes, or must see
//! what was just written (publishing, the owner's history, consistency proofs), stays on the
//! primary; so does a proof whose record the replica's log does not show yet (see `prove`).

mod storage;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::collections::HashMap;

use akd::directory::Directory;
use akd::ecvrf::{
    Proof, VRFExpandedPrivateKey, VRFKeyStorage, VRFPrivateKey, VRFPublicKey, VrfError,
};
use akd::storage::StorageManager;
use akd::{
    AkdLabel, AkdValue, AzksParallelismConfig, Configuration, EpochHash, HistoryParams,
    HistoryProof, LookupProof, NodeLabel, VersionFreshness,
};
use smvs_crypto::{CryptoError, Zeroizing};
use smvs_schema::Username;

use crate::record::MovedStatement;
use crate::store::{Store, StoreError};
use crate::transparency::{LogConfiguration, LoggedValue, MAX_CONSISTENCY_EPOCHS};

pub use storage::LogStorage;

/// The VRF key that hides names in the log: HKDF-SHA256 of the directory's key seed (salt
/// `smvs-directory-v1`, info `key log vrf`), so it lives wherever the signing key lives and
/// every process that shares a database and a key file has the same one.
///
/// akd's default methods derive the expanded key and the public key again for every label,
/// and every look-up proof needs three VRF proofs (the version, its marker, the next version
/// as stale): most of a proof's CPU. So the keys are derived once, and proofs are kept by the
/// hashed VRF input. A VRF is deterministic, so a kept proof is the one that would be made; and
/// a name's proofs do not change with the epoch, so they outlive the look-up answers kept in
/// memory, which every new epoch retires.
#[derive(Clone)]
pub struct LogVrf(Arc<VrfInner>);

struct VrfInner {
    seed: Zeroizing<Vec<u8>>,
    private: VRFPrivateKey,
    expanded: VRFExpandedPrivateKey,
    public: VRFPublicKey,
    /// Proofs (with the node label each gives) by hashed VRF input, at most [`VRF_PROOFS_KEPT`].
    proofs: std::sync::Mutex<HashMap<Vec<u8>, (Proof, NodeLabel)>>,
}

/// VRF proofs kept (each about 200 bytes with its key): the three of each of this many
/// names' latest versions.
const VRF_PROOFS_KEPT: usize = 3 * 100_000;

impl LogVrf {
    pub fn derive(seed: &[u8]) -> Result<LogVrf, CryptoError> {
        let seed = smvs_crypto::hkdf_sha256(b"smvs-directory-v1", seed, b"key log vrf", 32)?;
        let private = VRFPrivateKey::try_from(&seed[..]).map_err(|_| CryptoError::InvalidKey {
            what: "the key log's VRF key",
        })?;
        Ok(LogVrf(Arc::new(VrfInner {
            expanded: VRFExpandedPrivateKey::from(&private),
            public: VRFPublicKey::from(&private),
            private,
            seed,
            proofs: std::sync::Mutex::default(),
        })))
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, (Proof, NodeLabel)>> {
        // Poisoned only by a panic elsewhere; the map itself is whole.
        self.0.proofs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The proof for `label`'s `version` (fresh or stale), and its node label: kept, or made.
    async fn proof<TC: Configuration>(
        &self,
        label: &AkdLabel,
        freshness: VersionFreshness,
        version: u64,
    ) -> (Proof, NodeLabel) {
        let input = TC::get_hash_from_label_input(label, freshness, version);
        let found = self.kept().get(&input).copied();
        if let Some(found) = found {
            return found;
        }
        let proof = self.0.expanded.prove(&self.0.public, &input);
        let node = self.get_node_label_from_vrf_proof(proof).await;
        let mut proofs = self.kept();
        if proofs.len() >= VRF_PROOFS_KEPT {
            // Full: start again (once per so many proofs made, so cheap on the whole; the
            // names asked for since fill it again).
            proofs.clear();
        }
        proofs.insert(input, (proof, node));
        (proof, node)
    }
}

impl std::fmt::Debug for LogVrf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogVrf(…)")
    }
}

#[async_trait::async_trait]
impl VRFKeyStorage for LogVrf {
    async fn retrieve(&self) -> Result<Vec<u8>, VrfError> {
        Ok(self.0.seed.to_vec())
    }

    async fn get_vrf_private_key(&self) -> Result<VRFPrivateKey, VrfError> {
        Ok(self.0.private.clone())
    }

    async fn get_vrf_public_key(&self) -> Result<VRFPublicKey, VrfError> {
        Ok(self.0.public.clone())
    }

    async fn get_node_label<TC: Configuration>(
        &self,
        label: &AkdLabel,
        freshness: VersionFreshness,
        version: u64,
    ) -> Result<NodeLabel, VrfError> {
        Ok(self.proof::<TC>(label, freshness, version).await.1)
    }

    async fn get_label_proof<TC: Configuration>(
        &self,
        label: &AkdLabel,
        freshness: VersionFreshness,
        version: u64,
    ) -> Result<Proof, VrfError> {
        Ok(self.proof::<TC>(label, freshness, version).await.0)
    }
}

type LogDirectory = Directory<LogConfiguration, LogStorage, LogVrf>;
type ReadDirectory = akd::directory::ReadOnlyDirectory<LogConfiguration, LogStorage, LogVrf>;

/// How long [`KeyLog::open`] waits for a read replica to have replayed the log's tree.
const REPLICA_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// How long akd keeps a tree node it read, and how much it keeps (SQLite only, see
/// [`KeyLog::open`]): nodes change only by this process's own publications, which write
/// through the cache.
const NODE_CACHE_LIFETIME: std::time::Duration = std::time::Duration::from_secs(3600);
const NODE_CACHE_BYTES: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("key log: {0}")]
    Akd(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("key log: a publication task failed: {0}")]
    Task(String),
    #[error("key log: the record is older than its last logged version")]
    Behind,
    #[error("key log: epoch {asked} asked for, and the latest is {latest}")]
    NoEpoch { asked: u64, latest: u64 },
}

impl From<akd::errors::AkdError> for LogError {
    /// akd's messages may hold the label (the username, in clear), and these errors are
    /// logged: only the kind is kept, and our store's own message (which names no one).
    fn from(e: akd::errors::AkdError) -> Self {
        use akd::errors::{AkdError, StorageError};
        LogError::Akd(match e {
            AkdError::Storage(StorageError::Connection(store)) => format!("the store: {store}"),
            AkdError::Storage(StorageError::NotFound(_)) => "a name or node not in the log".into(),
            AkdError::Storage(_) => "a storage error".into(),
            AkdError::TreeNode(_) => "a tree node error".into(),
            AkdError::Directory(_) => "a directory error".into(),
            AkdError::AzksErr(_) => "a tree error".into(),
            AkdError::Vrf(_) => "a VRF error".into(),
            AkdError::AuditErr(_) => "an audit error".into(),
            AkdError::Parallelism(_) => "a parallelism error".into(),
            AkdError::TestErr(_) => "a test error".into(),
        })
    }
}

/// The log's growth from one epoch: the root hash of each epoch from `from` on, and the proof
/// that each came from the one before by adding only (none when there is one root).
pub struct Consistency {
    pub from: u64,
    pub roots: Vec<[u8; 32]>,
    pub proof: Option<akd::AppendOnlyProof>,
}

/// The log, shared by every worker of one directory process.
#[derive(Clone)]
pub struct KeyLog {
    inner: Arc<Inner>,
}

struct Inner {
    directory: LogDirectory,
    /// akd's storage manager (the same one `directory` holds), to flush its node cache.
    nodes: StorageManager<LogStorage>,
    /// The same storage akd's directory writes through, for reading versions directly.
    storage: LogStorage,
    store: Store,
    vrf_key: [u8; 32],
    /// Publishing writes (one at a time in this process; the store's lock covers other
    /// processes); proofs read. akd serves reads from a publication's transaction before it
    /// commits, so without this a proof could sign a head of an epoch not yet (or never)
    /// stored.
    publishing: tokio::sync::RwLock<()>,
    /// The latest epoch this process knows of: read at open, raised by every publication here
    /// and (with a shared database) by every reading of the stored one.
    known_epoch: AtomicU64,
    /// The store's count of record changes last read (a shared database only; the replica's,
    /// with one).
    known_changes: AtomicU64,
    /// The read replica look-ups are served from, if there is one.
    replica: Option<Replica>,
    /// Readings of the stored epoch (a shared database only): tickets handed out to askers and
    /// readers in one sequence, and under the lock the ticket of the last reading made. See
    /// [`KeyLog::latest`].
    tickets: AtomicU64,
    last_reading: tokio::sync::Mutex<u64>,
}

/// The log as a streaming read replica of the primary's database shows it.
struct Replica {
    /// akd over the replica: read only (akd's node cache off, as behind any shared database).
    directory: ReadDirectory,
    store: Store,
    /// The latest epoch the replica was seen at: what [`KeyLog::latest`] gives with a replica
    /// (never the primary's `known_epoch`, which may be ahead of the rows look-ups read).
    epoch: AtomicU64,
}

impl KeyLog {
    /// Opens the log kept in `store`, creating its empty tree the first time.
    pub async fn open(store: Store, vrf: LogVrf) -> Result<KeyLog, LogError> {
        Self::open_with_replica(store, None, vrf).await
    }

    /// [`KeyLog::open`], with look-ups' reads served by `replica` (a streaming read replica of
    /// `store`'s PostgreSQL database, see [`Store::open_replica`]) when there is one. Waits (up
    /// to a minute) for the replica to have replayed the log's tree, which a first start on an
    /// empty database has only just written to the primary.
    pub async fn open_with_replica(
        store: Store,
        replica: Option<Store>,
        vrf: LogVrf,
    ) -> Result<KeyLog, LogError> {
        let reads_vrf = vrf.clone();
        let vrf_key = vrf
            .get_vrf_public_key()
            .await
            .map_err(|e| LogError::Akd(e.to_string()))?
            .to_bytes();
        // akd's node cache is written through by this process's publications only, so it is
        // used only where no other process publishes (SQLite); behind a shared PostgreSQL
        // every proof reads the tree from the database. A failed publication flushes it (akd
        // fills it before the database write).
        let manager = if store.is_shared() {
            StorageManager::new_no_cache(LogStorage::new(store.clone()))
        } else {
            StorageManager::new(
                LogStorage::new(store.clone()),
                Some(NODE_CACHE_LIFETIME),
                Some(NODE_CACHE_BYTES),
                None,
            )
        };
        let nodes = manager.clone();
        // Under the lock: two processes starting on an empty database must not both create a
        // tree.
        let directory = store
            .with_log_lock(async {
                LogDirectory::new(manager, vrf, AzksParallelismConfig::disabled()).await
            })
            .await??;
        let EpochHash(epoch, _) = directory.get_epoch_hash().await?;
        let replica = match replica {
            None => None,
            Some(replica_store) => {
                let deadline = tokio::time::Instant::now() + REPLICA_WAIT;
                let directory = loop {
                    let manager =
                        StorageManager::new_no_cache(LogStorage::new(replica_store.clone()));
                    match ReadDirectory::new(
                        manager,
                        reads_vrf.clone(),
                        AzksParallelismConfig::disabled(),
                    )
                    .await
                    {
                        Ok(directory) => break directory,
                        Err(e) if tokio::time::Instant::now() >= deadline => {
                            return Err(LogError::Akd(format!(
                                "the read replica has not replayed the key log's tree within {}s: {}",
                                REPLICA_WAIT.as_secs(),
                                LogError::from(e)
                            )));
                        }
                        Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                    }
                };
                let EpochHash(replica_epoch, _) = directory.get_epoch_hash().await?;
                Some(Replica {
                    directory,
                    store: replica_store,
                    epoch: AtomicU64::new(replica_epoch),
                })
            }
        };
        Ok(KeyLog {
            inner: Arc::new(Inner {
                directory,
                nodes,
                storage: LogStorage::new(store.clone()),
                store,
                vrf_key,
                publishing: tokio::sync::RwLock::new(()),
                known_epoch: AtomicU64::new(epoch),
                known_changes: AtomicU64::new(0),
                replica,
                tickets: AtomicU64::new(0),
                last_reading: tokio::sync::Mutex::new(0),
            }),
        })
    }

    /// The log's latest epoch and the store's count of record changes (0 with SQLite), as of
    /// some moment after this call began: what look-up answers kept in memory must still hold
    /// against to be served.
    ///
    /// With SQLite the log is this process's alone, so what it published last is the answer,
    /// without a query (its own record changes it counts itself). With PostgreSQL other
    /// processes change records and publish too, so both are read from the database
    /// ([`Store::freshness`]); one reading serves every caller that came before it began, so
    /// under load there is about one query per round trip to the database, not one per look-up.
    /// With a read replica both are the replica's, as the rows look-ups read there.
    pub async fn latest(&self) -> Result<(u64, u64), LogError> {
        let inner = &self.inner;
        let known = || {
            let epoch = match &inner.replica {
                Some(replica) => replica.epoch.load(Ordering::Acquire),
                None => inner.known_epoch.load(Ordering::Acquire),
            };
            (epoch, inner.known_changes.load(Ordering::Acquire))
        };
        if !inner.store.is_shared() {
            return Ok(known());
        }
        let ticket = inner.tickets.fetch_add(1, Ordering::AcqRel) + 1;
        let mut last_reading = inner.last_reading.lock().await;
        if *last_reading > ticket {
            // A reading that began after this call did is done.
            return Ok(known());
        }
        let started = inner.tickets.fetch_add(1, Ordering::AcqRel) + 1;
        let reads = inner.replica.as_ref().map_or(&inner.store, |r| &r.store);
        let (epoch, changes) = match reads.freshness().await? {
            Some((Some(epoch), changes)) => (epoch, changes),
            // A log from before its epoch was stored apart: akd's own record of it.
            Some((None, changes)) => match &inner.replica {
                Some(replica) => (replica.directory.get_epoch_hash().await?.0, changes),
                None => {
                    let _reading = inner.publishing.read().await;
                    (inner.directory.get_epoch_hash().await?.0, changes)
                }
            },
            None => return Ok(known()),
        };
        match &inner.replica {
            Some(replica) => replica.epoch.fetch_max(epoch, Ordering::AcqRel),
            None => inner.known_epoch.fetch_max(epoch, Ordering::AcqRel),
        };
        inner.known_changes.fetch_max(changes, Ordering::AcqRel);
        *last_reading = started;
        Ok(known())
    }

    /// Makes the log's latest version of `name` say what the users table says now, publishing
    /// a new epoch if it does not.
    pub async fn sync(&self, name: &Username) -> Result<(), LogError> {
        let inner = self.inner.clone();
        let name = name.clone();
        // A task of its own: see the module's comment.
        tokio::spawn(async move { inner.sync(&name).await })
            .await
            .map_err(|e| LogError::Task(e.to_string()))?
    }

    /// A proof that `name`'s latest version is `expected`, and the epoch and root hash it
    /// holds against. When the log says otherwise, it is brought in step with the users table first
    /// ([`KeyLog::sync`]); if it still says otherwise, the table changed meanwhile and the
    /// caller's `expected` is stale: an error, which the host asks again after.
    ///
    /// With a read replica the proof is made there first; when the replica's log does not show
    /// `expected` (a change it has not replayed the publication of, or one nobody published
    /// yet), the log is brought in step on the primary and the proof made there, as without one.
    pub async fn prove(
        &self,
        name: &Username,
        expected: &LoggedValue,
    ) -> Result<(LookupProof, EpochHash), LogError> {
        let label = label(name);
        let expected = expected.to_bytes();
        if let Some(replica) = &self.inner.replica {
            if let Ok((proof, head)) = replica.directory.lookup(label.clone()).await {
                if proof.value.0 == expected {
                    return Ok((proof, head));
                }
            }
        }
        let first = {
            let _reading = self.inner.publishing.read().await;
            self.inner.directory.lookup(label.clone()).await
        };
        if let Ok((proof, head)) = first {
            if proof.value.0 == expected {
                return Ok((proof, head));
            }
        }
        self.sync(name).await?;
        let _reading = self.inner.publishing.read().await;
        let (proof, head) = self.inner.directory.lookup(label).await?;
        if proof.value.0 != expected {
            return Err(LogError::Akd(
                "the record changed while its proof was made".into(),
            ));
        }
        Ok((proof, head))
    }

    /// A proof of every version of `name` in the log (for its owner's host to check), and the
    /// epoch and root hash it holds against. The log is brought in step with the users table
    /// first, so the history ends at the record the owner would be answered.
    pub async fn history(&self, name: &Username) -> Result<(HistoryProof, EpochHash), LogError> {
        self.sync(name).await?;
        let _reading = self.inner.publishing.read().await;
        Ok(self
            .inner
            .directory
            .key_history(&label(name), HistoryParams::Complete)
            .await?)
    }

    /// That the log grew from epoch `from` without changing anything it held then: akd's
    /// append-only proof from `from` to at most [`MAX_CONSISTENCY_EPOCHS`] epochs later (the
    /// latest when nearer; none when `from` is the latest), and the root hash of each epoch
    /// from `from` to there. A host checks the heads it was shown against these roots.
    pub async fn consistency(&self, from: u64) -> Result<Consistency, LogError> {
        let _reading = self.inner.publishing.read().await;
        let EpochHash(latest, latest_root) = self.inner.directory.get_epoch_hash().await?;
        if from > latest {
            return Err(LogError::NoEpoch {
                asked: from,
                latest,
            });
        }
        let end = latest.min(from.saturating_add(MAX_CONSISTENCY_EPOCHS));
        let roots = self.inner.store.log_roots(from, end).await?;
        if roots.len() as u64 != end - from + 1
            || (end == latest && roots.last() != Some(&latest_root))
        {
            return Err(LogError::Akd(format!(
                "the root hashes of epochs {from} to {end} are not all kept"
            )));
        }
        let proof = if from < end {
            Some(self.inner.directory.audit(from, end).await?)
        } else {
            None
        };
        Ok(Consistency { from, roots, proof })
    }

    /// The VRF key that hides names in the log (its public half).
    pub fn vrf_key(&self) -> [u8; 32] {
        self.inner.vrf_key
    }
}

impl Inner {
    async fn sync(&self, name: &Username) -> Result<(), LogError> {
        let _one = self.publishing.write().await;
        self.store
            .with_log_lock(async {
                let now = self.current_value(name).await?;
                let history = self
                    .storage
                    .values(&label(name).0)
                    .await?
                    .iter()
                    .map(|value| LoggedValue::from_bytes(&value.0))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(LogError::Akd)?;
                // The highest serial any version ever had: a name's serials only grow.
                let floor = history
                    .iter()
                    .filter_map(|v| match v {
                        LoggedValue::Record { serial, .. } => Some(*serial),
                        _ => None,
                    })
                    .max();
                let logged = history.last();
                let publish = match (&now, logged) {
                    // Never logged and not there: nothing to say.
                    (LoggedValue::Gone, None) => false,
                    // A table behind its own log was restored from an older copy (or
                    // tampered with). Publishing it would serve an older record as the
                    // newest (after a later version, or after the name was deregistered or
                    // moved away); every look-up of the name fails instead, and the operator
                    // is told.
                    (LoggedValue::Record { serial: now, .. }, _)
                        if floor.is_some_and(|was| *now < was) =>
                    {
                        tracing::error!(
                            table_serial = now,
                            logged_serial = floor,
                            "a record is older than a version in the key log; not publishing \
                             it (was the database restored from an older copy?)"
                        );
                        return Err(LogError::Behind);
                    }
                    (now, logged) => logged != Some(now),
                };
                if publish {
                    let published = self
                        .directory
                        .publish(vec![(label(name), AkdValue(now.to_bytes()))])
                        .await;
                    match published {
                        Ok(EpochHash(epoch, _)) => {
                            self.known_epoch.fetch_max(epoch, Ordering::AcqRel);
                        }
                        Err(e) => {
                            // The cache may hold what the database refused; and akd fails
                            // some publications after their commit (reading the new root), so
                            // the epoch may have moved all the same.
                            self.nodes.flush_cache().await;
                            if let Ok(EpochHash(epoch, _)) = self.directory.get_epoch_hash().await {
                                self.known_epoch.fetch_max(epoch, Ordering::AcqRel);
                            }
                            return Err(e.into());
                        }
                    }
                }
                Ok::<(), LogError>(())
            })
            .await?
    }

    /// What the users table says of `name` now, as the log holds it.
    async fn current_value(&self, name: &Username) -> Result<LoggedValue, LogError> {
        if let Some(user) = self.store.get_user(name).await? {
            return Ok(LoggedValue::Record {
                identity: user.identity.signing_key,
                serial: user.serial,
            });
        }
        match self.store.get_moved(name).await? {
            Some(bytes) => {
                let statement = MovedStatement::from_bytes(&bytes)
                    .map_err(|e| LogError::Akd(format!("a stored statement: {e}")))?;
                statement.logged().map_err(LogError::Akd)
            }
            None => Ok(LoggedValue::Gone),
        }
    }
}

fn label(name: &Username) -> AkdLabel {
    AkdLabel(name.as_str().as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use akd::storage::memory::AsyncInMemoryDatabase;

    use super::*;
    use crate::transparency::{
        encode_history_proof, encode_lookup_proof, verify_history, verify_lookup, LogHead,
    };

    type MemoryLog = Directory<LogConfiguration, AsyncInMemoryDatabase, LogVrf>;

    /// An empty log in memory, and its VRF key.
    async fn memory_log() -> (MemoryLog, [u8; 32]) {
        smvs_crypto::init().unwrap();
        let vrf = LogVrf::derive(&[7; 32]).unwrap();
        let vrf_key = vrf.get_vrf_public_key().await.unwrap().to_bytes();
        let log = MemoryLog::new(
            StorageManager::new_no_cache(AsyncInMemoryDatabase::new()),
            vrf,
            AzksParallelismConfig::disabled(),
        )
        .await
        .unwrap();
        (log, vrf_key)
    }

    fn record(serial: u64) -> LoggedValue {
        LoggedValue::Record {
            identity: smvs_crypto::SigningKeyPair::generate().unwrap().public(),
            serial,
        }
    }

    /// akd's own VRF over the same key: what `LogVrf` keeps must be what this makes.
    #[derive(Clone)]
    struct PlainVrf(Vec<u8>);

    #[async_trait::async_trait]
    impl VRFKeyStorage for PlainVrf {
        async fn retrieve(&self) -> Result<Vec<u8>, VrfError> {
            Ok(self.0.clone())
        }
    }

    #[tokio::test]
    async fn kept_vrf_proofs_are_the_ones_akd_makes() {
        let vrf = LogVrf::derive(&[7; 32]).unwrap();
        let plain = PlainVrf(vrf.retrieve().await.unwrap());
        assert_eq!(
            vrf.get_vrf_public_key().await.unwrap(),
            plain.get_vrf_public_key().await.unwrap()
        );
        for round in 0..2 {
            for (name, freshness, version) in [
                ("bob", VersionFreshness::Fresh, 1),
                ("bob", VersionFreshness::Stale, 1),
                ("bob", VersionFreshness::Fresh, 2),
                ("carol", VersionFreshness::Fresh, 1),
            ] {
                let label = AkdLabel(name.as_bytes().to_vec());
                let kept = vrf
                    .get_label_proof::<LogConfiguration>(&label, freshness, version)
                    .await
                    .unwrap();
                let made = plain
                    .get_label_proof::<LogConfiguration>(&label, freshness, version)
                    .await
                    .unwrap();
                assert_eq!(kept.to_bytes(), made.to_bytes(), "round {round}");
                assert_eq!(
                    vrf.get_node_label::<LogConfiguration>(&label, freshness, version)
                        .await
                        .unwrap(),
                    plain
                        .get_node_label::<LogConfiguration>(&label, freshness, version)
                        .await
                        .unwrap(),
                    "round {round}"
                );
            }
        }
        assert_eq!(vrf.kept().len(), 4);
    }

    /// What a host checks, against what the directory's akd makes: the latest version is
    /// proven, an older one or another name's is not, and a head for another epoch or root
    /// fails.
    #[tokio::test]
    async fn a_lookup_proof_shows_the_latest_version_and_nothing_else() {
        let (log, vrf_key) = memory_log().await;
        let signer = smvs_crypto::SigningKeyPair::generate().unwrap();
        let bob = Username::parse("bob").unwrap();
        let carol = Username::parse("carol").unwrap();
        let (first, second) = (record(10), record(11));
        log.publish(vec![
            (label(&bob), AkdValue(first.to_bytes())),
            (label(&carol), AkdValue(record(3).to_bytes())),
        ])
        .await
        .unwrap();
        log.publish(vec![(label(&bob), AkdValue(second.to_bytes()))])
            .await
            .unwrap();

        let (proof, at) = log.lookup(label(&bob)).await.unwrap();
        let head = LogHead::sign(&signer, at.0, at.1, vrf_key);
        head.verify(&signer.public()).unwrap();
        let wire = encode_lookup_proof(&proof);
        let (shown, version) = verify_lookup(&head, &bob, &wire).unwrap();
        assert_eq!((shown, version), (second.clone(), 2));

        // The same proof is no proof for another name, another root or a later epoch's head.
        assert!(verify_lookup(&head, &carol, &wire).is_err());
        let mut rerooted = head.clone();
        rerooted.root_hash[5] ^= 1;
        assert!(verify_lookup(&rerooted, &bob, &wire).is_err());
        let mut other_vrf = head.clone();
        other_vrf.vrf_key = LogVrf::derive(&[8; 32])
            .unwrap()
            .get_vrf_public_key()
            .await
            .unwrap()
            .to_bytes();
        assert!(verify_lookup(&other_vrf, &bob, &wire).is_err());
        // A proof cut short, or junk, is an error, not a panic.
        assert!(verify_lookup(&head, &bob, &wire[..wire.len() / 2]).is_err());
        assert!(verify_lookup(&head, &bob, &[0xff; 100]).is_err());
        // Version 0 (which akd_core asserts against) is refused, not a panic.
        let mut zero = proof.clone();
        zero.version = 0;
        assert!(verify_lookup(&head, &bob, &encode_lookup_proof(&zero)).is_err());
    }

    /// An auditor's (and a host's) view between two heads: the roots of every epoch between
    /// them and the append-only proof hold together; a root changed anywhere in the chain, or
    /// the chain shifted to other epochs, does not.
    #[tokio::test]
    async fn a_consistency_proof_holds_only_for_the_log_it_was_made_from() {
        let (log, vrf_key) = memory_log().await;
        let signer = smvs_crypto::SigningKeyPair::generate().unwrap();
        let mut roots = vec![log.get_epoch_hash().await.unwrap().1];
        for (i, name) in ["bob", "carol", "bob", "dave"].iter().enumerate() {
            let name = Username::parse(name).unwrap();
            let at = log
                .publish(vec![(
                    label(&name),
                    AkdValue(record(i as u64 + 1).to_bytes()),
                )])
                .await
                .unwrap();
            roots.push(at.1);
        }
        let wire = crate::transparency::encode_append_only_proof(&log.audit(1, 4).await.unwrap());
        let head = |epoch: u64, root: [u8; 32]| LogHead::sign(&signer, epoch, root, vrf_key);
        let chain = crate::transparency::verify_consistency(
            1,
            roots[1..].to_vec(),
            head(4, roots[4]),
            &wire,
        )
        .await
        .unwrap();
        assert_eq!((chain.end(), chain.root_at(2)), (4, Some(&roots[2])));
        // Another root in the middle, a head that is not the last root, the same chain said to
        // start elsewhere, or a cut proof: each is refused.
        let mut forked = roots[1..].to_vec();
        forked[1][0] ^= 1;
        let check = |from: u64, roots: Vec<[u8; 32]>, head: LogHead, proof: Vec<u8>| async move {
            crate::transparency::verify_consistency(from, roots, head, &proof).await
        };
        assert!(check(1, forked, head(4, roots[4]), wire.clone())
            .await
            .is_err());
        assert!(
            check(1, roots[1..].to_vec(), head(4, roots[3]), wire.clone())
                .await
                .is_err()
        );
        assert!(
            check(0, roots[1..].to_vec(), head(3, roots[4]), wire.clone())
                .await
                .is_err()
        );
        assert!(check(
            1,
            roots[1..].to_vec(),
            head(4, roots[4]),
            wire[..wire.len() / 2].to_vec()
        )
        .await
        .is_err());
        // One root and no proof: the head alone.
        let one = check(4, vec![roots[4]], head(4, roots[4]), Vec::new())
            .await
            .unwrap();
        assert_eq!(one.end(), 4);
    }

    /// The owner's view: every version, oldest first, with the epoch it was published in; a
    /// proof that leaves a version out, or one shown against another name or root, fails.
    #[tokio::test]
    async fn a_history_proof_shows_every_version_in_order() {
        let (log, vrf_key) = memory_log().await;
        let signer = smvs_crypto::SigningKeyPair::generate().unwrap();
        let bob = Username::parse("bob").unwrap();
        let carol = Username::parse("carol").unwrap();
        let values = [record(1), record(2), LoggedValue::Gone, record(1)];
        for value in &values {
            log.publish(vec![(label(&bob), AkdValue(value.to_bytes()))])
                .await
                .unwrap();
            log.publish(vec![(label(&carol), AkdValue(record(7).to_bytes()))])
                .await
                .unwrap();
        }
        let (proof, at) = log
            .key_history(&label(&bob), HistoryParams::Complete)
            .await
            .unwrap();
        let head = LogHead::sign(&signer, at.0, at.1, vrf_key);
        let wire = encode_history_proof(&proof);
        let shown = verify_history(&head, &bob, &wire).unwrap();
        assert_eq!(
            shown.iter().map(|v| v.value.clone()).collect::<Vec<_>>(),
            values.to_vec()
        );
        assert_eq!(
            shown
                .iter()
                .map(|v| (v.version, v.epoch))
                .collect::<Vec<_>>(),
            vec![(1, 1), (2, 3), (3, 5), (4, 7)]
        );

        assert!(verify_history(&head, &carol, &wire).is_err());
        let mut rerooted = head.clone();
        rerooted.root_hash[0] ^= 1;
        assert!(verify_history(&rerooted, &bob, &wire).is_err());
        let mut short = proof.clone();
        short.update_proofs.remove(1);
        assert!(verify_history(&head, &bob, &encode_history_proof(&short)).is_err());
        let mut recent = proof;
        recent.update_proofs.truncate(2);
        assert!(verify_history(&head, &bob, &encode_history_proof(&recent)).is_err());
        assert!(verify_history(&head, &bob, &wire[..wire.len() / 2]).is_err());
    }
}
