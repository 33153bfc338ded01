//! SQLite backend. The connection lives on its own thread ("directory-sqlite", see
//! `smvs-sqlite`): requests queue there, run in batches of one transaction each, and are
//! answered only after their batch commits.

use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use smvs_schema::{HostAddress, Username};
use smvs_sqlite::SqliteWorker;

use super::{next_serial, row_to_record, LogValueRow, NameKey, NewKeys, StoreError, WhichVersion};
use crate::record::{PublishedSessionKeys, UserRecord};
use smvs_crypto::SigningPublicKey;

const QUEUE_DEPTH: usize = 4096;

#[derive(Clone)]
pub struct SqliteStore {
    worker: SqliteWorker,
    names: Arc<NameKey>,
}

const MIGRATIONS: &[&str] = &[
    // 1: users and pending authentication tokens.
    "CREATE TABLE users (
        username TEXT PRIMARY KEY NOT NULL,
        signing_key BLOB NOT NULL,
        agreement_key BLOB NOT NULL,
        agreement_signature BLOB NOT NULL,
        transport_key BLOB NOT NULL,
        transport_certificate BLOB NOT NULL,
        host_address TEXT NOT NULL,
        serial INTEGER NOT NULL
    ) STRICT;
    CREATE TABLE auth_tokens (
        digest BLOB PRIMARY KEY NOT NULL,
        username TEXT NOT NULL,
        expires_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX auth_tokens_expiry ON auth_tokens (expires_at);
    CREATE TABLE serial_floor (username TEXT PRIMARY KEY NOT NULL, serial INTEGER NOT NULL) STRICT;",
    // 2: transport certificates expire. Rows from before carry 0, which no host accepts: their
    // hosts renew at their next start.
    "ALTER TABLE users ADD COLUMN transport_not_after INTEGER NOT NULL DEFAULT 0;",
    // 3: a deregistered name is kept only as its keyed hash (NameKey), with its last serial;
    // the plain names of version 1 are hashed by the function `open` registers.
    "CREATE TABLE deregistered (name_hash BLOB PRIMARY KEY NOT NULL, serial INTEGER NOT NULL) STRICT;
    INSERT INTO deregistered SELECT smvs_name_hash(username), serial FROM serial_floor;
    DROP TABLE serial_floor;",
    // 4: session v2's published keys (PublishedSessionKeys::to_bytes); NULL: none published.
    "ALTER TABLE users ADD COLUMN session_keys BLOB;",
    // 5: users who moved to another directory: their signed statement (MovedStatement, as a
    // flat Cap'n Proto message), served until the name is registered again.
    "CREATE TABLE moved (username TEXT PRIMARY KEY NOT NULL, statement BLOB NOT NULL) STRICT;",
    // 6: the key log (keylog): akd's nodes by id, and each name's versions by the name's keyed
    // hash and epoch.
    "CREATE TABLE log_nodes (id BLOB PRIMARY KEY NOT NULL, record BLOB NOT NULL) STRICT, WITHOUT ROWID;
    CREATE TABLE log_values (
        label BLOB NOT NULL,
        epoch INTEGER NOT NULL,
        version INTEGER NOT NULL,
        record BLOB NOT NULL,
        PRIMARY KEY (label, epoch)
    ) STRICT, WITHOUT ROWID;
    CREATE INDEX log_values_version ON log_values (label, version);",
    // 7: the key log's latest epoch, which each epoch's write moves on by one (compare and
    // swap): two publishers can never both write an epoch N+1.
    "CREATE TABLE log_epoch (one INTEGER PRIMARY KEY CHECK (one = 0), epoch INTEGER NOT NULL) STRICT;",
    // 8: each epoch's root hash, written with the epoch: what a consistency proof between two
    // heads runs through (akd keeps only the latest root).
    "CREATE TABLE log_roots (epoch INTEGER PRIMARY KEY NOT NULL, root BLOB NOT NULL) STRICT;",
];

impl SqliteStore {
    pub fn open(path: &Path, names: Arc<NameKey>) -> Result<Self, StoreError> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let key = names.clone();
        conn.create_scalar_function(
            "smvs_name_hash",
            1,
            rusqlite::functions::FunctionFlags::SQLITE_UTF8
                | rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
            move |ctx| {
                key.hash(&ctx.get::<String>(0)?)
                    .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
            },
        )?;
        smvs_sqlite::migrate(&mut conn, MIGRATIONS).map_err(|e| match e {
            smvs_sqlite::MigrationError::Sqlite(e) => StoreError::Sqlite(e),
            smvs_sqlite::MigrationError::TooNew { found, known } => {
                StoreError::TooNew { found, known }
            }
        })?;
        // Migration 2 dropped plain names whose old pages may sit in the WAL.
        checkpoint(&conn)?;
        let worker = SqliteWorker::start(conn, "directory-sqlite", QUEUE_DEPTH)
            .map_err(|e| StoreError::Corrupt(format!("cannot start the storage thread: {e}")))?;
        Ok(SqliteStore { worker, names })
    }

    async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.worker.call(f).await
    }

    pub async fn insert_user(&self, user: UserRecord) -> Result<UserRecord, StoreError> {
        let name_hash = self.names.hash(user.username.as_str())?;
        self.call(move |c| {
            let floor: Option<i64> = c
                .query_row(
                    "SELECT serial FROM deregistered WHERE name_hash = ?1",
                    [&name_hash],
                    |r| r.get(0),
                )
                .optional()?;
            let serial = next_serial(floor.map(|s| s as u64), now_ms());
            let inserted = c.execute(
                "INSERT INTO users (username, signing_key, agreement_key, agreement_signature,
                    transport_key, transport_certificate, host_address, serial, transport_not_after)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) ON CONFLICT (username) DO NOTHING",
                params![
                    user.username.as_str(),
                    &user.identity.signing_key.as_bytes()[..],
                    &user.identity.agreement_key.as_bytes()[..],
                    &user.identity.agreement_signature.as_bytes()[..],
                    &user.transport_key.as_bytes()[..],
                    &user.transport_certificate.as_bytes()[..],
                    user.host_address.as_str(),
                    serial as i64,
                    user.transport_not_after,
                ],
            )?;
            if inserted == 0 {
                return Err(StoreError::Taken);
            }
            // A new registration of the name ends the forwarding of whoever moved away.
            c.execute(
                "DELETE FROM moved WHERE username = ?1",
                [user.username.as_str()],
            )?;
            Ok(UserRecord { serial, ..user })
        })
        .await
    }

    pub async fn get_user(&self, name: &Username) -> Result<Option<UserRecord>, StoreError> {
        let name = name.clone();
        self.call(move |c| get(c, &name)).await
    }

    /// The statement of a user who moved away, if the name is one.
    pub async fn get_moved(&self, name: &Username) -> Result<Option<Vec<u8>>, StoreError> {
        let name = name.clone();
        self.call(move |c| {
            Ok(c.query_row(
                "SELECT statement FROM moved WHERE username = ?1",
                [name.as_str()],
                |r| r.get(0),
            )
            .optional()?)
        })
        .await
    }

    /// Deletes `name`'s record as deregistration does, and keeps `statement` to answer for it.
    /// False when there was no record.
    pub async fn move_user(&self, name: &Username, statement: Vec<u8>) -> Result<bool, StoreError> {
        let name = name.clone();
        let name_hash = self.names.hash(name.as_str())?;
        let moved = self
            .call(move |c| {
                if !drop_record(c, &name, &name_hash)? {
                    return Ok(false);
                }
                c.execute(
                    "INSERT INTO moved VALUES (?1, ?2) ON CONFLICT (username) DO UPDATE SET statement = excluded.statement",
                    params![name.as_str(), statement],
                )?;
                Ok(true)
            })
            .await?;
        if moved {
            self.worker.call_alone(checkpoint).await?;
        }
        Ok(moved)
    }

    pub async fn update_host(
        &self,
        name: &Username,
        host: &HostAddress,
    ) -> Result<Option<UserRecord>, StoreError> {
        let (name, host) = (name.clone(), host.clone());
        self.call(move |c| {
            let Some(old) = get(c, &name)? else {
                return Ok(None);
            };
            let serial = next_serial(Some(old.serial), now_ms());
            c.execute(
                "UPDATE users SET host_address = ?2, serial = ?3 WHERE username = ?1",
                params![name.as_str(), host.as_str(), serial as i64],
            )?;
            Ok(Some(UserRecord {
                host_address: host,
                serial,
                ..old
            }))
        })
        .await
    }

    pub async fn replace_keys(
        &self,
        name: &Username,
        keys: NewKeys,
    ) -> Result<Option<UserRecord>, StoreError> {
        let name = name.clone();
        self.call(move |c| {
            let Some(old) = get(c, &name)? else {
                return Ok(None);
            };
            if old.identity.signing_key != keys.current {
                return Ok(None);
            }
            let serial = next_serial(Some(old.serial), now_ms());
            c.execute(
                "UPDATE users SET signing_key = ?2, agreement_key = ?3, agreement_signature = ?4,
                    transport_key = ?5, transport_certificate = ?6, serial = ?7,
                    transport_not_after = ?8,
                    session_keys = CASE WHEN signing_key = ?2 THEN session_keys ELSE NULL END
                 WHERE username = ?1",
                params![
                    name.as_str(),
                    &keys.identity.signing_key.as_bytes()[..],
                    &keys.identity.agreement_key.as_bytes()[..],
                    &keys.identity.agreement_signature.as_bytes()[..],
                    &keys.transport_key.as_bytes()[..],
                    &keys.transport_certificate.as_bytes()[..],
                    serial as i64,
                    keys.transport_not_after,
                ],
            )?;
            // The published session keys were signed by the old identity.
            let session_keys = if old.identity.signing_key == keys.identity.signing_key {
                old.session_keys.clone()
            } else {
                None
            };
            Ok(Some(UserRecord {
                session_keys,
                identity: keys.identity,
                transport_key: keys.transport_key,
                transport_certificate: keys.transport_certificate,
                transport_not_after: keys.transport_not_after,
                serial,
                ..old
            }))
        })
        .await
    }

    pub async fn set_session_keys(
        &self,
        name: &Username,
        current: SigningPublicKey,
        keys: PublishedSessionKeys,
    ) -> Result<Option<UserRecord>, StoreError> {
        let name = name.clone();
        self.call(move |c| {
            let Some(old) = get(c, &name)? else {
                return Ok(None);
            };
            if old.identity.signing_key != current {
                return Ok(None);
            }
            let serial = next_serial(Some(old.serial), now_ms());
            c.execute(
                "UPDATE users SET session_keys = ?2, serial = ?3 WHERE username = ?1",
                params![name.as_str(), keys.to_bytes(), serial as i64],
            )?;
            Ok(Some(UserRecord {
                session_keys: Some(keys),
                serial,
                ..old
            }))
        })
        .await
    }

    pub async fn delete_user(&self, name: &Username) -> Result<bool, StoreError> {
        let name = name.clone();
        let name_hash = self.names.hash(name.as_str())?;
        let deleted = self
            .call(move |c| drop_record(c, &name, &name_hash))
            .await?;
        if deleted {
            // `secure_delete` zeroes the row in the database file; the WAL still holds the
            // pages the registration wrote, until a checkpoint copies and truncates it.
            self.worker.call_alone(checkpoint).await?;
        }
        Ok(deleted)
    }

    pub async fn put_token(
        &self,
        digest: [u8; 32],
        name: &Username,
        expires_at: i64,
        now: i64,
    ) -> Result<(), StoreError> {
        let name = name.clone();
        self.call(move |c| {
            c.execute("DELETE FROM auth_tokens WHERE expires_at < ?1", [now])?;
            c.execute(
                "INSERT INTO auth_tokens VALUES (?1, ?2, ?3)",
                params![&digest[..], name.as_str(), expires_at],
            )?;
            Ok(())
        })
        .await
    }

    pub async fn take_token(
        &self,
        digest: [u8; 32],
        name: &Username,
        now: i64,
    ) -> Result<bool, StoreError> {
        let name = name.clone();
        self.call(move |c| {
            let expires: Option<i64> = c
                .query_row(
                    "DELETE FROM auth_tokens WHERE digest = ?1 AND username = ?2 RETURNING expires_at",
                    params![&digest[..], name.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(expires.is_some_and(|e| e >= now))
        })
        .await
    }

    pub async fn counts(&self) -> Result<(u64, u64), StoreError> {
        self.call(|c| {
            let users: i64 = c.query_row("SELECT count(*) FROM users", [], |r| r.get(0))?;
            let tokens: i64 = c.query_row("SELECT count(*) FROM auth_tokens", [], |r| r.get(0))?;
            Ok((users as u64, tokens as u64))
        })
        .await
    }
}

impl SqliteStore {
    pub async fn log_put(
        &self,
        nodes: Vec<(Vec<u8>, Vec<u8>)>,
        values: Vec<LogValueRow>,
        epoch: Option<(u64, Option<[u8; 32]>)>,
    ) -> Result<(), StoreError> {
        let values = values
            .into_iter()
            .map(|v| Ok((self.names.hash_bytes(&v.label)?, v)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        // One job, one savepoint: an epoch is written whole or not at all.
        self.call(move |c| {
            if let Some((epoch, root)) = epoch {
                let moved = match epoch {
                    0 => c.execute(
                        "INSERT INTO log_epoch VALUES (0, 0) ON CONFLICT (one) DO NOTHING",
                        [],
                    )?,
                    _ => c.execute(
                        "UPDATE log_epoch SET epoch = ?1 WHERE epoch = ?2",
                        params![epoch as i64, (epoch - 1) as i64],
                    )?,
                };
                if moved != 1 {
                    return Err(StoreError::LogConflict(epoch));
                }
                if let Some(root) = root {
                    c.execute(
                        "INSERT INTO log_roots (epoch, root) VALUES (?1, ?2)",
                        params![epoch as i64, &root[..]],
                    )?;
                }
            }
            let mut node = c.prepare_cached(
                "INSERT INTO log_nodes (id, record) VALUES (?1, ?2)
                     ON CONFLICT (id) DO UPDATE SET record = excluded.record",
            )?;
            for (id, record) in &nodes {
                node.execute(params![id, record])?;
            }
            let mut value = c.prepare_cached(
                "INSERT INTO log_values (label, epoch, version, record) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (label, v) in &values {
                value.execute(params![label, v.epoch as i64, v.version as i64, v.record])?;
            }
            Ok(())
        })
        .await
    }

    pub async fn log_roots(&self, from: u64, to: u64) -> Result<Vec<[u8; 32]>, StoreError> {
        self.call(move |c| {
            let mut get = c.prepare_cached(
                "SELECT root FROM log_roots WHERE epoch BETWEEN ?1 AND ?2 ORDER BY epoch",
            )?;
            let roots = get
                .query_map(params![from as i64, to as i64], |r| r.get::<_, Vec<u8>>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            roots
                .into_iter()
                .map(|r| {
                    <[u8; 32]>::try_from(r.as_slice())
                        .map_err(|_| StoreError::Corrupt("a key log root".into()))
                })
                .collect()
        })
        .await
    }

    pub async fn log_nodes(&self, ids: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>, StoreError> {
        self.call(move |c| {
            let mut get = c.prepare_cached("SELECT record FROM log_nodes WHERE id = ?1")?;
            let mut out = Vec::with_capacity(ids.len());
            for id in &ids {
                if let Some(record) = get.query_row([id], |r| r.get(0)).optional()? {
                    out.push(record);
                }
            }
            Ok(out)
        })
        .await
    }

    pub async fn log_values(
        &self,
        label: Vec<u8>,
        which: WhichVersion,
    ) -> Result<Vec<Vec<u8>>, StoreError> {
        let label = self.names.hash_bytes(&label)?;
        self.call(move |c| {
            let (sql, arg) = match which {
                WhichVersion::All => (
                    "SELECT record FROM log_values WHERE label = ?1 AND ?2 = 0 ORDER BY epoch",
                    0,
                ),
                WhichVersion::Version(v) => (
                    "SELECT record FROM log_values WHERE label = ?1 AND version = ?2",
                    v as i64,
                ),
                WhichVersion::Epoch(e) => (
                    "SELECT record FROM log_values WHERE label = ?1 AND epoch = ?2",
                    e as i64,
                ),
                WhichVersion::AtOrBefore(e) => (
                    "SELECT record FROM log_values WHERE label = ?1 AND epoch <= ?2
                     ORDER BY epoch DESC LIMIT 1",
                    e as i64,
                ),
                WhichVersion::Latest => (
                    "SELECT record FROM log_values WHERE label = ?1 AND ?2 = 0
                     ORDER BY epoch DESC LIMIT 1",
                    0,
                ),
                WhichVersion::First => (
                    "SELECT record FROM log_values WHERE label = ?1 AND ?2 = 0
                     ORDER BY epoch LIMIT 1",
                    0,
                ),
            };
            let mut query = c.prepare_cached(sql)?;
            let rows = query
                .query_map(params![label, arg], |r| r.get(0))?
                .collect::<Result<Vec<Vec<u8>>, _>>()?;
            Ok(rows)
        })
        .await
    }
}

fn drop_record(c: &Connection, name: &Username, name_hash: &[u8]) -> Result<bool, StoreError> {
    let Some(old) = get(c, name)? else {
        return Ok(false);
    };
    c.execute(
        "INSERT INTO deregistered VALUES (?1, ?2) ON CONFLICT (name_hash) DO UPDATE SET serial = excluded.serial",
        params![name_hash, old.serial as i64],
    )?;
    c.execute("DELETE FROM users WHERE username = ?1", [name.as_str()])?;
    c.execute(
        "DELETE FROM auth_tokens WHERE username = ?1",
        [name.as_str()],
    )?;
    Ok(true)
}

fn get(c: &Connection, name: &Username) -> Result<Option<UserRecord>, StoreError> {
    let mut stmt = c.prepare_cached(
        "SELECT username, signing_key, agreement_key, agreement_signature, transport_key,
                transport_certificate, transport_not_after, host_address, serial, session_keys
         FROM users WHERE username = ?1",
    )?;
    let row = stmt
        .query_row([name.as_str()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Vec<u8>>(3)?,
                r.get::<_, Vec<u8>>(4)?,
                r.get::<_, Vec<u8>>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, String>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, Option<Vec<u8>>>(9)?,
            ))
        })
        .optional()?;
    row.map(|(u, sk, ak, asig, tk, tc, na, h, s, keys)| {
        row_to_record(&u, &sk, &ak, &asig, &tk, &tc, na, &h, s, keys.as_deref())
    })
    .transpose()
}

/// Copies the WAL into the database and truncates it, so no old page (a deleted name, say)
/// survives there. Another reader holding it back is logged: the rows are gone all the same,
/// and their pages go at the next checkpoint.
fn checkpoint(c: &Connection) -> Result<(), StoreError> {
    let busy: i64 = c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
    if busy != 0 {
        tracing::warn!("another reader holds the directory database: deleted rows are gone, but their old pages stay in the WAL until the next checkpoint");
    }
    Ok(())
}

fn now_ms() -> i64 {
    crate::clock::now_ms()
}
