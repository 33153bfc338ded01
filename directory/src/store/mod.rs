//! The directory's storage: one set of operations, two backends.
//!
//! - SQLite (`sqlite:PATH`), the embedded default: one connection owned by its own thread; each
//!   batch of queued requests runs in one transaction (group commit), and replies go out only
//!   after the commit.
//! - PostgreSQL (`postgres://…`), for directories that outgrow one machine: several stateless
//!   `smvs-directory` processes share one database. Tokens live in the database too, so a
//!   challenge from one process can be answered at another.
//!
//! Both keep exactly what `UserRecord` holds, plus pending authentication tokens (as BLAKE2b
//! digests, never the tokens themselves). Deregistration deletes the row and the user's
//! tokens, and keeps only a keyed hash of the name with its last serial (`deregistered`), so
//! that a new registration of the name gets a higher serial (a stale record stays detectable)
//! while the name itself leaves the store: see [`NameKey`].

mod postgres;
mod sqlite;

use smvs_crypto::{
    AgreementPublicKey, CryptoError, IdentityBundle, Signature, SigningPublicKey, Zeroizing,
};
use smvs_schema::{HostAddress, Username};
use thiserror::Error;

use crate::record::{PublishedSessionKeys, UserRecord};

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("username is already registered")]
    Taken,
    #[error("database URL must be sqlite:PATH or postgres://…, got {0:?}")]
    BadUrl(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("stored row is corrupt: {0}")]
    Corrupt(String),
    #[error("storage thread has stopped")]
    Stopped,
    #[error("database schema version {found} is newer than this program knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("hashing a name: {0}")]
    Crypto(#[from] CryptoError),
    #[error("the key log's epoch {0} was written by another publisher first")]
    LogConflict(u64),
    #[error("cannot be served: {0}")]
    Locked(String),
    #[error("a read replica must be a PostgreSQL server in recovery (a streaming standby), and pg_is_in_recovery() is false there: is this the primary?")]
    NotReplica,
    #[error("a read replica is for a PostgreSQL database; a SQLite database has no replica")]
    ReplicaOfSqlite,
}

/// The key deregistered names are kept under: a keyed BLAKE2b-256 (libsodium's
/// `crypto_generichash`) of the name, so the store can still answer "was this name registered
/// before, and at which serial?" for whoever asks with the name, but holds nothing that gives
/// the name back, not even to a dictionary attack, without the key.
///
/// The key is derived from the directory's signing-key seed (HKDF-SHA256, salt
/// `smvs-directory-v1`, info `deregistered names`): it lives wherever the signing key lives,
/// every process that shares a database and a key file computes the same one, and a new
/// signing key (a new directory, to hosts) starts a new set of floors.
#[derive(Clone)]
pub struct NameKey(Zeroizing<Vec<u8>>);

impl NameKey {
    /// The key for the directory whose signing-key seed is `seed`.
    pub fn derive(seed: &[u8]) -> Result<NameKey, CryptoError> {
        Ok(NameKey(smvs_crypto::hkdf_sha256(
            b"smvs-directory-v1",
            seed,
            b"deregistered names",
            32,
        )?))
    }

    /// The keyed hash a deregistered `name` is kept as.
    pub fn hash(&self, name: &str) -> Result<Vec<u8>, CryptoError> {
        self.hash_bytes(name.as_bytes())
    }

    /// The keyed hash of a name given as bytes (the key log's labels).
    pub fn hash_bytes(&self, name: &[u8]) -> Result<Vec<u8>, CryptoError> {
        smvs_crypto::blake2b(32, Some(&self.0), &[name])
    }
}

impl std::fmt::Debug for NameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NameKey(…)")
    }
}

/// A storage backend, chosen by URL.
#[derive(Clone)]
pub enum Store {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// Which database a URL names.
pub fn parse_url(url: &str) -> Result<DbUrl, StoreError> {
    if let Some(path) = url.strip_prefix("sqlite:") {
        if path.is_empty() {
            return Err(StoreError::BadUrl(url.into()));
        }
        Ok(DbUrl::Sqlite(path.into()))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(DbUrl::Postgres(url.into()))
    } else {
        Err(StoreError::BadUrl(url.into()))
    }
}

#[derive(Debug, Clone)]
pub enum DbUrl {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

impl Store {
    /// Opens (creating and migrating as needed) the database at `url`; deregistered names
    /// are kept under `names`.
    pub async fn open(url: &str, names: NameKey) -> Result<Store, StoreError> {
        let names = std::sync::Arc::new(names);
        match parse_url(url)? {
            DbUrl::Sqlite(path) => Ok(Store::Sqlite(sqlite::SqliteStore::open(&path, names)?)),
            DbUrl::Postgres(url) => {
                Ok(Store::Postgres(postgres::PgStore::open(&url, names).await?))
            }
        }
    }

    /// Opens a streaming read replica of the PostgreSQL database `primary` names, for look-ups
    /// only (`--db-replica`): nothing is created, migrated or written there. Refused with a
    /// SQLite primary, a URL that is not PostgreSQL's, or a server not in recovery.
    pub async fn open_replica(
        primary: &str,
        url: &str,
        names: NameKey,
    ) -> Result<Store, StoreError> {
        if let DbUrl::Sqlite(_) = parse_url(primary)? {
            return Err(StoreError::ReplicaOfSqlite);
        }
        match parse_url(url)? {
            DbUrl::Sqlite(_) => Err(StoreError::ReplicaOfSqlite),
            DbUrl::Postgres(url) => Ok(Store::Postgres(
                postgres::PgStore::open_replica(&url, std::sync::Arc::new(names)).await?,
            )),
        }
    }

    pub async fn insert_user(&self, user: UserRecord) -> Result<UserRecord, StoreError> {
        match self {
            Store::Sqlite(s) => s.insert_user(user).await,
            Store::Postgres(s) => s.insert_user(user).await,
        }
    }

    pub async fn get_user(&self, name: &Username) -> Result<Option<UserRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get_user(name).await,
            Store::Postgres(s) => s.get_user(name).await,
        }
    }

    pub async fn update_host(
        &self,
        name: &Username,
        host: &HostAddress,
    ) -> Result<Option<UserRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.update_host(name, host).await,
            Store::Postgres(s) => s.update_host(name, host).await,
        }
    }

    pub async fn replace_keys(
        &self,
        name: &Username,
        keys: NewKeys,
    ) -> Result<Option<UserRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.replace_keys(name, keys).await,
            Store::Postgres(s) => s.replace_keys(name, keys).await,
        }
    }

    /// Publishes `name`'s session v2 keys (checked by the caller), if the record still holds
    /// the identity `current` that signed them. A new serial.
    pub async fn set_session_keys(
        &self,
        name: &Username,
        current: SigningPublicKey,
        keys: PublishedSessionKeys,
    ) -> Result<Option<UserRecord>, StoreError> {
        match self {
            Store::Sqlite(s) => s.set_session_keys(name, current, keys).await,
            Store::Postgres(s) => s.set_session_keys(name, current, keys).await,
        }
    }

    /// Deletes the user's record and pending tokens, keeping only the keyed hash of the name
    /// with its last serial. Returns whether there was one.
    pub async fn delete_user(&self, name: &Username) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.delete_user(name).await,
            Store::Postgres(s) => s.delete_user(name).await,
        }
    }

    /// The statement of a user who moved to another directory, if `name` is one.
    pub async fn get_moved(&self, name: &Username) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Sqlite(s) => s.get_moved(name).await,
            Store::Postgres(s) => s.get_moved(name).await,
        }
    }

    /// Deletes the user's record as [`Store::delete_user`] does, and keeps `statement` (a
    /// `MovedStatement`'s bytes) to answer look-ups of the name with. False: no such user.
    pub async fn move_user(&self, name: &Username, statement: Vec<u8>) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.move_user(name, statement).await,
            Store::Postgres(s) => s.move_user(name, statement).await,
        }
    }

    /// Remembers a token digest for `name` until `expires_at` (Unix ms); drops expired ones.
    pub async fn put_token(
        &self,
        digest: [u8; 32],
        name: &Username,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.put_token(digest, name, expires_at, now).await,
            Store::Postgres(s) => s.put_token(digest, name, expires_at, now).await,
        }
    }

    /// Spends a token: true when it existed for `name` and had not expired. Either way it is
    /// gone afterwards (single use).
    pub async fn take_token(
        &self,
        digest: [u8; 32],
        name: &Username,
        now: i64,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sqlite(s) => s.take_token(digest, name, now).await,
            Store::Postgres(s) => s.take_token(digest, name, now).await,
        }
    }

    /// Writes one batch of the key log's records at once (one transaction): nodes by id, and
    /// names' versions (see `keylog::storage`). A batch that completes an epoch carries it and
    /// its root hash (`epoch`; none for the empty tree): it is written only if the stored
    /// epoch is the one before, and the root is kept with it.
    pub async fn log_put(
        &self,
        nodes: Vec<(Vec<u8>, Vec<u8>)>,
        values: Vec<LogValueRow>,
        epoch: Option<(u64, Option<[u8; 32]>)>,
    ) -> Result<(), StoreError> {
        match self {
            Store::Sqlite(s) => s.log_put(nodes, values, epoch).await,
            Store::Postgres(s) => s.log_put(nodes, values, epoch).await,
        }
    }

    /// The key log's nodes with these ids, those that exist.
    pub async fn log_nodes(&self, ids: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, StoreError> {
        match self {
            Store::Sqlite(s) => s.log_nodes(ids).await,
            Store::Postgres(s) => s.log_nodes(ids).await,
        }
    }

    /// With a shared database (PostgreSQL), the key log's latest epoch as stored (none if not
    /// kept yet) and a count of record changes that only grows: what other processes did. A
    /// SQLite database has one process, which knows both without asking: `None`.
    pub async fn freshness(&self) -> Result<Option<(Option<u64>, u64)>, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(None),
            Store::Postgres(s) => Ok(Some(s.freshness().await?)),
        }
    }

    /// The key log's root hashes of epochs `from..=to`, in order; fewer when some are not
    /// kept (epochs written before roots were).
    pub async fn log_roots(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        match self {
            Store::Sqlite(s) => s.log_roots(from, to).await,
            Store::Postgres(s) => s.log_roots(from, to).await,
        }
    }

    /// The stored versions of the key log's `label` that `which` asks for, oldest first.
    pub async fn log_values(
        &self,
        label: Vec<u8>,
        which: WhichVersion,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        match self {
            Store::Sqlite(s) => s.log_values(label, which).await,
            Store::Postgres(s) => s.log_values(label, which).await,
        }
    }

    /// Runs `work` as the only publisher of the key log among the processes that share this
    /// database: PostgreSQL's advisory lock on a connection kept for it. SQLite's database is
    /// one process's, whose own mutex (in `KeyLog`) is enough.
    pub async fn with_log_lock<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, StoreError> {
        match self {
            Store::Sqlite(_) => Ok(work.await),
            Store::Postgres(s) => s.with_log_lock(work).await,
        }
    }

    /// Whether other processes may write the same database (PostgreSQL): what this process
    /// last wrote is then not necessarily the latest. A SQLite database has one process.
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// Counts rows, for tests and the demo: (users, pending tokens).
    pub async fn counts(&self) -> Result<(u64, u64), StoreError> {
        match self {
            Store::Sqlite(s) => s.counts().await,
            Store::Postgres(s) => s.counts().await,
        }
    }
}

/// One version of a name in the key log, as stored. `label` is the name as akd knows it; the
/// store keeps only its keyed hash ([`NameKey`]).
#[derive(Debug, Clone)]
pub struct LogValueRow {
    pub label: Vec<u8>,
    pub epoch: u64,
    pub version: u64,
    /// The version's record, its name blanked.
    pub record: Vec<u8>,
}

/// Which of a name's versions in the key log.
#[derive(Debug, Clone, Copy)]
pub enum WhichVersion {
    All,
    Version(u64),
    Epoch(u64),
    /// The latest at or before this epoch.
    AtOrBefore(u64),
    Latest,
    First,
}

/// Replacement keys for a rotation or a renewal of the transport certificate.
#[derive(Debug, Clone)]
pub struct NewKeys {
    /// The identity the row must still hold: the one that signed the rotation, or the one
    /// that certified the renewed transport key. A change that raced with another finds none.
    pub current: SigningPublicKey,
    pub identity: IdentityBundle,
    pub transport_key: AgreementPublicKey,
    pub transport_certificate: Signature,
    pub transport_not_after: i64,
}

/// The next serial: strictly above the old one and never below the clock, so serials keep
/// growing even across a deregistration and a new registration of the same name.
pub(crate) fn next_serial(old: Option<u64>, now_ms: i64) -> u64 {
    let clock = u64::try_from(now_ms).unwrap_or(0);
    match old {
        Some(old) => clock.max(old.saturating_add(1)),
        None => clock,
    }
}

/// Rebuilds a record from stored columns, re-checking what the types guarantee.
#[allow(clippy::too_many_arguments)]
pub(crate) fn row_to_record(
    username: &str,
    signing_key: &[u8],
    agreement_key: &[u8],
    agreement_signature: &[u8],
    transport_key: &[u8],
    transport_certificate: &[u8],
    transport_not_after: i64,
    host_address: &str,
    serial: i64,
    session_keys: Option<&[u8]>,
) -> Result<UserRecord, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("{username}: {e}"));
    Ok(UserRecord {
        username: Username::parse(username).map_err(|e| corrupt(&e))?,
        identity: IdentityBundle::from_parts(signing_key, agreement_key, agreement_signature)
            .map_err(|e| corrupt(&e))?,
        transport_key: AgreementPublicKey::from_bytes(transport_key).map_err(|e| corrupt(&e))?,
        transport_certificate: Signature::from_bytes(transport_certificate)
            .map_err(|e| corrupt(&e))?,
        transport_not_after,
        host_address: HostAddress::parse(host_address).map_err(|e| corrupt(&e))?,
        serial: u64::try_from(serial).map_err(|e| corrupt(&e))?,
        session_keys: session_keys
            .map(PublishedSessionKeys::from_bytes)
            .transpose()
            .map_err(|e| corrupt(&e))?,
    })
}

impl From<smvs_sqlite::WorkerGone> for StoreError {
    fn from(_: smvs_sqlite::WorkerGone) -> Self {
        StoreError::Stopped
    }
}
