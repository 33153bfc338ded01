//! PostgreSQL backend, for several stateless directory processes sharing one database.
//!
//! A small set of connections, driven by one background thread of their own ("directory-pg"),
//! is shared round-robin by every worker. Each operation is one statement or one short
//! transaction, so nothing holds a connection across an await of anything else.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use smvs_schema::{HostAddress, Username};
use tokio_postgres::{Client, NoTls};

use super::{next_serial, row_to_record, LogValueRow, NameKey, NewKeys, StoreError, WhichVersion};
use crate::record::{PublishedSessionKeys, UserRecord};
use smvs_crypto::SigningPublicKey;

const CONNECTIONS: usize = 4;

#[derive(Clone)]
pub struct PgStore {
    clients: Arc<Vec<Client>>,
    /// A connection of its own for the key log's advisory lock, which belongs to the session
    /// that took it: taken and released on this one, by one publisher at a time.
    log_lock: Arc<tokio::sync::Mutex<Client>>,
    next: Arc<AtomicUsize>,
    names: Arc<NameKey>,
}

const MIGRATIONS: &[&str] = &[
    // 1: users and pending authentication tokens.
    "CREATE TABLE users (
        username TEXT PRIMARY KEY,
        signing_key BYTEA NOT NULL,
        agreement_key BYTEA NOT NULL,
        agreement_signature BYTEA NOT NULL,
        transport_key BYTEA NOT NULL,
        transport_certificate BYTEA NOT NULL,
        host_address TEXT NOT NULL,
        serial BIGINT NOT NULL
    );
    CREATE TABLE auth_tokens (
        digest BYTEA PRIMARY KEY,
        username TEXT NOT NULL,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX auth_tokens_expiry ON auth_tokens (expires_at);
    CREATE TABLE serial_floor (username TEXT PRIMARY KEY, serial BIGINT NOT NULL);",
    // 2: transport certificates expire. Rows from before carry 0, which no host accepts: their
    // hosts renew at their next start.
    "ALTER TABLE users ADD COLUMN transport_not_after BIGINT NOT NULL DEFAULT 0;",
    // 3: a deregistered name is kept only as its keyed hash (NameKey), with its last serial.
    // The plain names of version 1 are hashed and moved in the same transaction
    // (`PgStore::hash_old_floors`), then their table is dropped.
    "CREATE TABLE deregistered (name_hash BYTEA PRIMARY KEY, serial BIGINT NOT NULL);",
    // 4: session v2's published keys (PublishedSessionKeys::to_bytes); NULL: none published.
    "ALTER TABLE users ADD COLUMN session_keys BYTEA;",
    // 5: users who moved to another directory (MovedStatement as a flat Cap'n Proto message).
    "CREATE TABLE moved (username TEXT PRIMARY KEY, statement BYTEA NOT NULL);",
    // 6: the key log (keylog): akd's nodes by id, and each name's versions by the name's keyed
    // hash and epoch.
    "CREATE TABLE log_nodes (id BYTEA PRIMARY KEY, record BYTEA NOT NULL);
    CREATE TABLE log_values (
        label BYTEA NOT NULL,
        epoch BIGINT NOT NULL,
        version BIGINT NOT NULL,
        record BYTEA NOT NULL,
        PRIMARY KEY (label, epoch)
    );
    CREATE INDEX log_values_version ON log_values (label, version);",
    // 7: the key log's latest epoch, which each epoch's write moves on by one (compare and
    // swap): two publishers can never both write an epoch N+1.
    "CREATE TABLE log_epoch (one SMALLINT PRIMARY KEY CHECK (one = 0), epoch BIGINT NOT NULL);",
    // 8: each epoch's root hash, written with the epoch: what a consistency proof between two
    // heads runs through (akd keeps only the latest root).
    "CREATE TABLE log_roots (epoch BIGINT PRIMARY KEY, root BYTEA NOT NULL);",
    // 9: a count of the statements that changed a record (users, moved), kept by triggers in
    // the changing transaction itself: a process that keeps answers in memory serves one only
    // while neither this nor the log's epoch moved (see `Store::freshness`), even when a
    // change's publication to the log failed, or was never made because its process died.
    "CREATE TABLE record_changes (one SMALLINT PRIMARY KEY CHECK (one = 0), count BIGINT NOT NULL);
    INSERT INTO record_changes VALUES (0, 0);
    CREATE FUNCTION smvs_count_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE record_changes SET count = count + 1; RETURN NULL; END $$;
    CREATE TRIGGER users_changed AFTER INSERT OR UPDATE OR DELETE ON users
        FOR EACH STATEMENT EXECUTE FUNCTION smvs_count_record_change();
    CREATE TRIGGER moved_changed AFTER INSERT OR UPDATE OR DELETE ON moved
        FOR EACH STATEMENT EXECUTE FUNCTION smvs_count_record_change();",
];

/// The migration after whose SQL [`PgStore::hash_old_floors`] runs.
const HASHED_NAMES: usize = 3;

/// Arbitrary constant naming the advisory lock that serialises migrations between processes.
const MIGRATION_LOCK: i64 = 0x534d_5653_4449_5201;
/// The advisory lock held by the one process publishing to the key log.
const LOG_LOCK: i64 = 0x534d_5653_4449_5202;

impl PgStore {
    pub async fn open(url: &str, names: Arc<NameKey>) -> Result<Self, StoreError> {
        let store = Self::connect(url, names).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// A streaming read replica of the database another `PgStore` opened (`--db-replica`):
    /// connected only, never migrated or written. Refused unless the server is in recovery
    /// (`pg_is_in_recovery()`), so that a primary given by mistake is not taken for one.
    pub async fn open_replica(url: &str, names: Arc<NameKey>) -> Result<Self, StoreError> {
        let store = Self::connect(url, names).await?;
        let in_recovery: bool = store
            .client()
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await?
            .get(0);
        if !in_recovery {
            return Err(StoreError::NotReplica);
        }
        Ok(store)
    }

    async fn connect(url: &str, names: Arc<NameKey>) -> Result<Self, StoreError> {
        let url = url.to_owned();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // The connections' I/O futures run on this thread's runtime, so the store works from
        // any worker thread and outlives none of them by surprise.
        std::thread::Builder::new()
            .name("directory-pg".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(StoreError::Corrupt(format!(
                            "cannot start the postgres runtime: {e}"
                        ))));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut clients = Vec::with_capacity(CONNECTIONS + 1);
                    let mut drivers = Vec::with_capacity(CONNECTIONS + 1);
                    for _ in 0..=CONNECTIONS {
                        match tokio_postgres::connect(&url, NoTls).await {
                            Ok((client, connection)) => {
                                clients.push(client);
                                drivers.push(tokio::spawn(connection));
                            }
                            Err(e) => {
                                let _ = tx.send(Err(e.into()));
                                return;
                            }
                        }
                    }
                    let _ = tx.send(Ok(clients));
                    for driver in drivers {
                        if let Ok(Err(e)) = driver.await {
                            tracing::error!(error = %e, "postgres connection lost");
                        }
                    }
                });
            })
            .map_err(|e| StoreError::Corrupt(format!("cannot start the postgres thread: {e}")))?;
        let mut clients = rx.await.map_err(|_| StoreError::Stopped)??;
        let log_lock = clients.pop().ok_or(StoreError::Stopped)?;
        Ok(PgStore {
            clients: Arc::new(clients),
            log_lock: Arc::new(tokio::sync::Mutex::new(log_lock)),
            next: Arc::new(AtomicUsize::new(0)),
            names,
        })
    }

    fn client(&self) -> &Client {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.clients.len();
        &self.clients[i]
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let c = self.client();
        c.execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let result = async {
            c.batch_execute("CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL)")
                .await?;
            let version: i64 = match c
                .query_opt("SELECT version FROM schema_version", &[])
                .await?
            {
                Some(row) => row.get(0),
                None => {
                    c.execute("INSERT INTO schema_version VALUES (0)", &[])
                        .await?;
                    0
                }
            };
            let known = MIGRATIONS.len() as i64;
            if version > known {
                return Err(StoreError::TooNew {
                    found: version,
                    known,
                });
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
                c.batch_execute("BEGIN").await?;
                let step = async {
                    c.batch_execute(sql).await?;
                    if i + 1 == HASHED_NAMES {
                        self.hash_old_floors(c).await?;
                    }
                    c.execute("UPDATE schema_version SET version = $1", &[&(i as i64 + 1)])
                        .await?;
                    Ok::<(), StoreError>(())
                }
                .await;
                match step {
                    Ok(()) => c.batch_execute("COMMIT").await?,
                    Err(e) => {
                        let _ = c.batch_execute("ROLLBACK").await;
                        return Err(e);
                    }
                }
            }
            Ok(())
        }
        .await;
        let _ = c
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        result
    }

    /// Migration 3's data step: the plain names of `serial_floor` become keyed hashes in
    /// `deregistered` (the higher serial wins), and the old table goes.
    async fn hash_old_floors(&self, c: &Client) -> Result<(), StoreError> {
        for row in c
            .query("SELECT username, serial FROM serial_floor", &[])
            .await?
        {
            let (name, serial): (String, i64) = (row.get(0), row.get(1));
            c.execute(
                "INSERT INTO deregistered VALUES ($1, $2)
                 ON CONFLICT (name_hash) DO UPDATE SET serial = GREATEST(deregistered.serial, excluded.serial)",
                &[&self.names.hash(&name)?, &serial],
            )
            .await?;
        }
        c.batch_execute("DROP TABLE serial_floor").await?;
        Ok(())
    }

    pub async fn insert_user(&self, user: UserRecord) -> Result<UserRecord, StoreError> {
        let c = self.client();
        let floor: Option<i64> = c
            .query_opt(
                "SELECT serial FROM deregistered WHERE name_hash = $1",
                &[&self.names.hash(user.username.as_str())?],
            )
            .await?
            .map(|r| r.get(0));
        let serial = next_serial(floor.map(|s| s as u64), crate::clock::now_ms());
        // One statement: the row goes in and, only then, the forwarding of whoever moved away
        // under this name ends (a crash cannot leave one without the other).
        let inserted: i64 = c
            .query_one(
                "WITH ins AS (
                    INSERT INTO users (username, signing_key, agreement_key, agreement_signature,
                        transport_key, transport_certificate, host_address, serial, transport_not_after)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (username) DO NOTHING
                    RETURNING 1),
                  gone AS (DELETE FROM moved WHERE username = $1 AND EXISTS (SELECT 1 FROM ins))
                 SELECT count(*) FROM ins",
                &[
                    &user.username.as_str(),
                    &&user.identity.signing_key.as_bytes()[..],
                    &&user.identity.agreement_key.as_bytes()[..],
                    &&user.identity.agreement_signature.as_bytes()[..],
                    &&user.transport_key.as_bytes()[..],
                    &&user.transport_certificate.as_bytes()[..],
                    &user.host_address.as_str(),
                    &(serial as i64),
                    &user.transport_not_after,
                ],
            )
            .await?
            .get(0);
        if inserted == 0 {
            return Err(StoreError::Taken);
        }
        Ok(UserRecord { serial, ..user })
    }

    /// The statement of a user who moved away, if the name is one.
    pub async fn get_moved(&self, name: &Username) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .client()
            .query_opt(
                "SELECT statement FROM moved WHERE username = $1",
                &[&name.as_str()],
            )
            .await?
            .map(|r| r.get(0)))
    }

    /// Deletes `name`'s record as deregistration does, and keeps `statement` to answer for it.
    pub async fn move_user(&self, name: &Username, statement: Vec<u8>) -> Result<bool, StoreError> {
        let row = self
            .client()
            .query_opt(
                "WITH gone AS (DELETE FROM users WHERE username = $1 RETURNING serial),
                      floor AS (INSERT INTO deregistered SELECT $2, serial FROM gone
                                ON CONFLICT (name_hash) DO UPDATE SET serial = excluded.serial),
                      tokens AS (DELETE FROM auth_tokens WHERE username = $1),
                      kept AS (INSERT INTO moved SELECT $1, $3 FROM gone
                               ON CONFLICT (username) DO UPDATE SET statement = excluded.statement)
                 SELECT count(*) FROM gone",
                &[&name.as_str(), &self.names.hash(name.as_str())?, &statement],
            )
            .await?;
        Ok(row.is_some_and(|r| r.get::<_, i64>(0) > 0))
    }

    pub async fn get_user(&self, name: &Username) -> Result<Option<UserRecord>, StoreError> {
        let row = self
            .client()
            .query_opt(
                "SELECT username, signing_key, agreement_key, agreement_signature, transport_key,
                        transport_certificate, transport_not_after, host_address, serial,
                        session_keys
                 FROM users WHERE username = $1",
                &[&name.as_str()],
            )
            .await?;
        row.map(|r| {
            row_to_record(
                r.get(0),
                r.get(1),
                r.get(2),
                r.get(3),
                r.get(4),
                r.get(5),
                r.get(6),
                r.get(7),
                r.get(8),
                r.get::<_, Option<&[u8]>>(9),
            )
        })
        .transpose()
    }

    pub async fn update_host(
        &self,
        name: &Username,
        host: &HostAddress,
    ) -> Result<Option<UserRecord>, StoreError> {
        let now = crate::clock::now_ms();
        // The serial rule of next_serial, done in one statement so concurrent updates from
        // several processes cannot hand out the same serial.
        let row = self
            .client()
            .query_opt(
                "UPDATE users SET host_address = $2, serial = GREATEST(serial + 1, $3) WHERE username = $1 RETURNING serial",
                &[&name.as_str(), &host.as_str(), &now],
            )
            .await?;
        match row {
            None => Ok(None),
            Some(_) => self.get_user(name).await,
        }
    }

    pub async fn replace_keys(
        &self,
        name: &Username,
        keys: NewKeys,
    ) -> Result<Option<UserRecord>, StoreError> {
        let now = crate::clock::now_ms();
        let row = self
            .client()
            .query_opt(
                "UPDATE users SET signing_key = $2, agreement_key = $3, agreement_signature = $4,
                    transport_key = $5, transport_certificate = $6, serial = GREATEST(serial + 1, $7),
                    transport_not_after = $8,
                    session_keys = CASE WHEN signing_key = $2 THEN session_keys ELSE NULL END
                 WHERE username = $1 AND signing_key = $9 RETURNING serial",
                &[
                    &name.as_str(),
                    &&keys.identity.signing_key.as_bytes()[..],
                    &&keys.identity.agreement_key.as_bytes()[..],
                    &&keys.identity.agreement_signature.as_bytes()[..],
                    &&keys.transport_key.as_bytes()[..],
                    &&keys.transport_certificate.as_bytes()[..],
                    &now,
                    &keys.transport_not_after,
                    &&keys.current.as_bytes()[..],
                ],
            )
            .await?;
        match row {
            None => Ok(None),
            Some(_) => self.get_user(name).await,
        }
    }

    pub async fn set_session_keys(
        &self,
        name: &Username,
        current: SigningPublicKey,
        keys: PublishedSessionKeys,
    ) -> Result<Option<UserRecord>, StoreError> {
        let now = crate::clock::now_ms();
        let row = self
            .client()
            .query_opt(
                "UPDATE users SET session_keys = $2, serial = GREATEST(serial + 1, $3)
                 WHERE username = $1 AND signing_key = $4 RETURNING serial",
                &[
                    &name.as_str(),
                    &keys.to_bytes(),
                    &now,
                    &&current.as_bytes()[..],
                ],
            )
            .await?;
        match row {
            None => Ok(None),
            Some(_) => self.get_user(name).await,
        }
    }

    pub async fn delete_user(&self, name: &Username) -> Result<bool, StoreError> {
        let c = self.client();
        // One statement: delete the row, keep only the keyed hash of the name with its serial
        // as the floor, drop its tokens.
        let row = c
            .query_opt(
                "WITH gone AS (DELETE FROM users WHERE username = $1 RETURNING serial),
                      floor AS (INSERT INTO deregistered SELECT $2, serial FROM gone
                                ON CONFLICT (name_hash) DO UPDATE SET serial = excluded.serial),
                      tokens AS (DELETE FROM auth_tokens WHERE username = $1)
                 SELECT count(*) FROM gone",
                &[&name.as_str(), &self.names.hash(name.as_str())?],
            )
            .await?;
        Ok(row.is_some_and(|r| r.get::<_, i64>(0) > 0))
    }

    pub async fn put_token(
        &self,
        digest: [u8; 32],
        name: &Username,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let c = self.client();
        c.execute("DELETE FROM auth_tokens WHERE expires_at < $1", &[&now])
            .await?;
        c.execute(
            "INSERT INTO auth_tokens VALUES ($1, $2, $3)",
            &[&&digest[..], &name.as_str(), &expires_at],
        )
        .await?;
        Ok(())
    }

    pub async fn take_token(
        &self,
        digest: [u8; 32],
        name: &Username,
        now: i64,
    ) -> Result<bool, StoreError> {
        let row = self
            .client()
            .query_opt(
                "DELETE FROM auth_tokens WHERE digest = $1 AND username = $2 RETURNING expires_at",
                &[&&digest[..], &name.as_str()],
            )
            .await?;
        Ok(row.is_some_and(|r| r.get::<_, i64>(0) >= now))
    }

    pub async fn with_log_lock<T>(
        &self,
        work: impl std::future::Future<Output = T>,
    ) -> Result<T, StoreError> {
        use futures::FutureExt;
        let c = self.log_lock.lock().await;
        c.execute("SELECT pg_advisory_lock($1)", &[&LOG_LOCK])
            .await?;
        // A panic in `work` must not leave the lock held by this session for good (it is
        // the server's, not this guard's): caught, unlocked, then carried on. A connection
        // lost half-way frees the lock early; log_put's compare and swap then refuses the
        // loser's epoch.
        let result = std::panic::AssertUnwindSafe(work).catch_unwind().await;
        let unlocked = c
            .execute("SELECT pg_advisory_unlock($1)", &[&LOG_LOCK])
            .await;
        let result = result.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        unlocked?;
        Ok(result)
    }

    /// One statement, so one transaction: an epoch is written whole or not at all, and only
    /// if the stored epoch is the one before it (`epoch`, when the write carries the tree's
    /// root record).
    pub async fn log_put(
        &self,
        nodes: Vec<(Vec<u8>, Vec<u8>)>,
        values: Vec<LogValueRow>,
        epoch: Option<(u64, Option<[u8; 32]>)>,
    ) -> Result<(), StoreError> {
        let (ids, records): (Vec<Vec<u8>>, Vec<Vec<u8>>) = nodes.into_iter().unzip();
        let mut labels = Vec::with_capacity(values.len());
        let mut epochs = Vec::with_capacity(values.len());
        let mut versions = Vec::with_capacity(values.len());
        let mut value_records = Vec::with_capacity(values.len());
        for v in values {
            labels.push(self.names.hash_bytes(&v.label)?);
            epochs.push(v.epoch as i64);
            versions.push(v.version as i64);
            value_records.push(v.record);
        }
        // `created` (epoch 0, the empty tree) and `moved` (epoch N from N-1) yield a row only
        // if they swapped; the nodes and values are written only then. A write without the
        // root record has nothing to swap ($7 is NULL) and goes through.
        let root = epoch.and_then(|(_, root)| root).map(|root| root.to_vec());
        let epoch = epoch.map(|(e, _)| e as i64);
        let row = self
            .client()
            .query_one(
                "WITH created AS (
                    INSERT INTO log_epoch (one, epoch) SELECT 0, 0 WHERE $7::int8 = 0
                    ON CONFLICT (one) DO NOTHING RETURNING 1),
                 moved AS (
                    UPDATE log_epoch SET epoch = $7::int8
                    WHERE $7::int8 > 0 AND epoch = $7::int8 - 1 RETURNING 1),
                 go AS (SELECT 1 WHERE $7::int8 IS NULL
                        OR EXISTS (SELECT 1 FROM created) OR EXISTS (SELECT 1 FROM moved)),
                 nodes AS (
                    INSERT INTO log_nodes (id, record)
                    SELECT * FROM UNNEST($1::bytea[], $2::bytea[]) WHERE EXISTS (SELECT 1 FROM go)
                    ON CONFLICT (id) DO UPDATE SET record = excluded.record),
                 vals AS (
                    INSERT INTO log_values (label, epoch, version, record)
                    SELECT * FROM UNNEST($3::bytea[], $4::int8[], $5::int8[], $6::bytea[])
                    WHERE EXISTS (SELECT 1 FROM go)),
                 roots AS (
                    INSERT INTO log_roots (epoch, root)
                    SELECT $7::int8, $8::bytea WHERE $8::bytea IS NOT NULL
                        AND EXISTS (SELECT 1 FROM go))
                 SELECT EXISTS (SELECT 1 FROM go)",
                &[
                    &ids,
                    &records,
                    &labels,
                    &epochs,
                    &versions,
                    &value_records,
                    &epoch,
                    &root,
                ],
            )
            .await?;
        if !row.get::<_, bool>(0) {
            return Err(StoreError::LogConflict(epoch.unwrap_or_default() as u64));
        }
        Ok(())
    }

    pub async fn log_roots(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        let rows = self
            .client()
            .query(
                "SELECT root FROM log_roots WHERE epoch BETWEEN $1 AND $2 ORDER BY epoch",
                &[&(from as i64), &(to as i64)],
            )
            .await?;
        rows.into_iter()
            .map(|r| {
                <[u8; 32]>::try_from(r.get::<_, Vec<u8>>(0).as_slice())
                    .map_err(|_| StoreError::Corrupt("a key log root".into()))
            })
            .collect()
    }

    pub async fn log_nodes(&self, ids: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, StoreError> {
        let rows = self
            .client()
            .query(
                "SELECT record FROM log_nodes WHERE id = ANY($1::bytea[])",
                &[&ids],
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    pub async fn log_values(
        &self,
        label: Vec<u8>,
        which: WhichVersion,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let label = self.names.hash_bytes(&label)?;
        let (sql, arg): (&str, i64) = match which {
            WhichVersion::All => (
                "SELECT record FROM log_values WHERE label = $1 AND $2::int8 = 0 ORDER BY epoch",
                0,
            ),
            WhichVersion::Version(v) => (
                "SELECT record FROM log_values WHERE label = $1 AND version = $2",
                v as i64,
            ),
            WhichVersion::Epoch(e) => (
                "SELECT record FROM log_values WHERE label = $1 AND epoch = $2",
                e as i64,
            ),
            WhichVersion::AtOrBefore(e) => (
                "SELECT record FROM log_values WHERE label = $1 AND epoch <= $2
                 ORDER BY epoch DESC LIMIT 1",
                e as i64,
            ),
            WhichVersion::Latest => (
                "SELECT record FROM log_values WHERE label = $1 AND $2::int8 = 0
                 ORDER BY epoch DESC LIMIT 1",
                0,
            ),
            WhichVersion::First => (
                "SELECT record FROM log_values WHERE label = $1 AND $2::int8 = 0
                 ORDER BY epoch LIMIT 1",
                0,
            ),
        };
        let rows = self.client().query(sql, &[&label, &arg]).await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// The key log's latest epoch as stored (none before the first epoch written since
    /// migration 7), and the count of record changes.
    pub async fn freshness(&self) -> Result<(Option<u64>, u64), StoreError> {
        let row = self
            .client()
            .query_one(
                "SELECT (SELECT epoch FROM log_epoch), (SELECT count FROM record_changes)",
                &[],
            )
            .await?;
        Ok((
            row.get::<_, Option<i64>>(0).map(|e| e as u64),
            row.get::<_, Option<i64>>(1).unwrap_or(0) as u64,
        ))
    }

    pub async fn counts(&self) -> Result<(u64, u64), StoreError> {
        let row = self
            .client()
            .query_one(
                "SELECT (SELECT count(*) FROM users), (SELECT count(*) FROM auth_tokens)",
                &[],
            )
            .await?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }
}
