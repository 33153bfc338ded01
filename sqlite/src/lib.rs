//! The storage actor of SMVS daemons: one SQLite connection owned by one thread.
//!
//! ```text
//!  async callers ──job + reply channel──► [bounded queue] ──► storage thread:
//!                                              BEGIN IMMEDIATE; SAVEPOINT; job; RELEASE; … COMMIT
//!  async callers ◄────────────── replies, sent only after COMMIT ◄──┘
//! ```
//!
//! Every queued job that arrives while a batch is being written joins the next batch, so one
//! fsync covers many requests (group commit) and nobody is told "done" before the data is on
//! disk. A job that fails is rolled back to its own savepoint; the rest of the batch commits.
//! The thread ends when every handle is dropped.
//!
//! A job sent with [`SqliteWorker::call_lazy`] (a write a restart can redo, or a read) does not
//! need that fsync: a batch of only such jobs commits without one, and reaches the disk with the
//! next durable commit (the write-ahead log keeps commits in order).
//!
//! A job may also [`defer_write`]: a write of a value that many jobs of a batch would each
//! rewrite (a per-peer state, say) runs once, just before the batch commits, with the last
//! job's value.

use std::cell::RefCell;
use std::collections::HashMap;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

/// A write [`defer_write`] keeps until the transaction is about to commit.
pub type DeferredWrite = Box<dyn FnOnce(&Connection) -> rusqlite::Result<()>>;

thread_local! {
    /// The storage thread's deferred writes for the transaction under way, by key.
    static DEFERRED: RefCell<HashMap<Vec<u8>, DeferredWrite>> = RefCell::new(HashMap::new());
}

/// From inside a job: runs `write` just before the job's transaction commits, in place of any
/// write deferred under the same `key` earlier in that transaction. The write is part of the
/// transaction: if the transaction does not commit, neither does the write (and every job of
/// the batch hears "gone"). Call it last in a job, once the job can no longer fail.
pub fn defer_write(key: Vec<u8>, write: DeferredWrite) {
    DEFERRED.with(|d| {
        d.borrow_mut().insert(key, write);
    });
}

/// Runs the deferred writes (in no particular order: each key is a value of its own).
fn run_deferred(conn: &Connection) -> rusqlite::Result<()> {
    let writes: Vec<DeferredWrite> =
        DEFERRED.with(|d| d.borrow_mut().drain().map(|(_, w)| w).collect());
    for write in writes {
        write(conn)?;
    }
    Ok(())
}

fn drop_deferred() {
    DEFERRED.with(|d| d.borrow_mut().clear());
}

/// The most jobs one transaction takes.
pub const MAX_BATCH: usize = 2048;

type Reply = Box<dyn FnOnce() + Send>;
type Work = Box<dyn FnOnce(&Connection) -> (bool, Reply) + Send>;

struct Job {
    work: Work,
    /// Must be on disk before its reply (the default). A batch of only lazy jobs commits
    /// without an fsync: it reaches the disk with the next durable commit.
    durable: bool,
    /// Runs alone, outside any transaction (e.g. `PRAGMA wal_checkpoint`), after the batch
    /// before it has committed.
    alone: bool,
}

/// The storage thread stopped, or could not commit (the caller must treat the request as not
/// done). `disk_full` says the commit failed because the disk (or the database's quota) is
/// full, which the caller may tell its user in plain words.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WorkerGone {
    pub disk_full: bool,
}

impl std::fmt::Display for WorkerGone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.disk_full {
            f.write_str("the database could not commit: the disk is full")
        } else {
            f.write_str("the storage thread stopped or could not commit")
        }
    }
}

/// Whether `e` is SQLite saying the disk (or its quota) is full.
fn is_disk_full(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull)
}

impl std::error::Error for WorkerGone {}

/// A handle to the storage thread. Cheap to clone.
#[derive(Clone)]
pub struct SqliteWorker {
    jobs: mpsc::Sender<Job>,
    /// Set by the storage thread when its last failed commit failed for a full disk, before it
    /// drops that batch's replies; cleared by the next commit that succeeds.
    disk_full: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl SqliteWorker {
    /// Moves `conn` to a new thread named `name`, with room for `queue` waiting jobs.
    pub fn start(conn: Connection, name: &str, queue: usize) -> std::io::Result<SqliteWorker> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let disk_full = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = disk_full.clone();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(conn, rx, &flag))?;
        Ok(SqliteWorker {
            jobs: tx,
            disk_full,
        })
    }

    /// Runs `f` on the storage thread inside the current batch's transaction and returns its
    /// result once that transaction has committed. Waits for room when the queue is full.
    pub async fn call<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<WorkerGone> + Send + 'static,
    {
        self.submit(f, false, true, || ()).await
    }

    /// Like [`SqliteWorker::call`] for a write that may be lost to a power cut (not to a crash
    /// of the process): its batch commits without an fsync when no job in it needs one, and
    /// reaches the disk with the next durable commit. For writes a restart can redo, such as
    /// a status that a retried exchange would set again, and for reads (which have nothing to
    /// make durable, and would otherwise make their batch wait for an fsync).
    pub async fn call_lazy<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<WorkerGone> + Send + 'static,
    {
        self.submit(f, false, false, || ()).await
    }

    /// Like [`SqliteWorker::call`], and calls `queued` as soon as the job has its place in the
    /// queue (before it runs). Callers use it to release an ordering lock early: jobs run in
    /// queue order, so whatever is queued under the lock keeps its order without holding the
    /// lock across the commit.
    pub async fn call_then<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        queued: impl FnOnce(),
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<WorkerGone> + Send + 'static,
    {
        self.submit(f, false, true, queued).await
    }

    /// Runs `f` on its own, outside any transaction: for statements SQLite refuses inside one,
    /// such as `PRAGMA wal_checkpoint(TRUNCATE)` or `VACUUM`.
    pub async fn call_alone<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<WorkerGone> + Send + 'static,
    {
        self.submit(f, true, true, || ()).await
    }

    async fn submit<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        alone: bool,
        durable: bool,
        queued: impl FnOnce(),
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<WorkerGone> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let work: Work = Box::new(move |conn| {
            let result = f(conn);
            let ok = result.is_ok();
            let send: Reply = Box::new(move || {
                let _ = reply.send(result);
            });
            (ok, send)
        });
        self.jobs
            .send(Job {
                work,
                alone,
                durable,
            })
            .await
            .map_err(|_| E::from(WorkerGone::default()))?;
        queued();
        answer.await.map_err(|_| {
            E::from(WorkerGone {
                disk_full: self.disk_full.load(std::sync::atomic::Ordering::SeqCst),
            })
        })?
    }
}

/// Runs one statement from the connection's statement cache: the savepoints around every job
/// would otherwise be parsed again for each one.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// `PRAGMA synchronous` for batches of lazy jobs: NORMAL, which in WAL mode skips the fsync
/// at commit but still syncs the log's header when it starts over and around checkpoints (OFF
/// would not, and a power cut could then replay an old log over newer pages). A commit that
/// skips its fsync is still appended after every earlier one, and the next fsynced commit
/// carries it to the disk.
const LAZY_SYNCHRONOUS: i64 = 1;

/// Sets `PRAGMA synchronous` (outside a transaction: SQLite refuses it inside one).
fn set_synchronous(conn: &Connection, level: i64) -> bool {
    conn.pragma_update(None, "synchronous", level)
        .inspect_err(|e| tracing::error!(error = %e, "database: cannot switch the commit mode"))
        .is_ok()
}

fn run(conn: Connection, mut jobs: mpsc::Receiver<Job>, disk_full: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    // The connection's own level. Unknown, or no stricter than the lazy one: every batch
    // commits with it, lazy ones too.
    let own = conn
        .query_row("PRAGMA synchronous", [], |r| r.get::<_, i64>(0))
        .inspect_err(|e| tracing::error!(error = %e, "database: cannot read the commit mode"))
        .ok()
        .filter(|&level| level > LAZY_SYNCHRONOUS);
    // A lazy batch whose level could not be put back: no durable batch runs until it is.
    let mut restore_owed = false;
    let mut waiting: Option<Job> = None;
    loop {
        let first = match waiting.take() {
            Some(job) => job,
            None => match jobs.blocking_recv() {
                Some(job) => job,
                None => break,
            },
        };
        if let (true, Some(level)) = (restore_owed, own) {
            if !set_synchronous(&conn, level) {
                // Dropping the job tells its caller WorkerGone: nothing claims durability.
                continue;
            }
            restore_owed = false;
        }
        if first.alone {
            let (_, reply) = (first.work)(&conn);
            if let Err(e) = run_deferred(&conn) {
                tracing::error!(error = %e, "database: a deferred write failed");
                continue;
            }
            reply();
            continue;
        }
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) if job.alone => {
                    waiting = Some(job);
                    break;
                }
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        // Whether the commit may skip its fsync, decided before the transaction begins (SQLite
        // will not change it inside one): no job asked for it, and the level was switched.
        let lazy = own.is_some()
            && !batch.iter().any(|job| job.durable)
            && set_synchronous(&conn, LAZY_SYNCHRONOUS);
        let restore = |conn: &Connection| match own {
            Some(level) if lazy => !set_synchronous(conn, level),
            _ => false,
        };
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "database: cannot begin a transaction; dropping a batch");
            restore_owed |= restore(&conn);
            continue;
        }
        let mut replies = Vec::with_capacity(batch.len());
        for job in batch {
            let _ = run_cached(&conn, "SAVEPOINT job");
            let (ok, reply) = (job.work)(&conn);
            if !ok {
                let _ = run_cached(&conn, "ROLLBACK TO job");
            }
            let _ = run_cached(&conn, "RELEASE job");
            replies.push(reply);
            if conn.is_autocommit() {
                // SQLite rolled the whole transaction back (disk full, I/O error): nothing of
                // this batch so far is stored, so none of it may be reported as done. Dropping
                // the replies tells those callers "gone"; the rest of the batch starts afresh.
                tracing::error!(
                    "database: a transaction was rolled back by SQLite; failing its requests"
                );
                replies.clear();
                drop_deferred();
                let _ = conn.execute_batch("BEGIN IMMEDIATE");
            }
        }
        let committed = match run_deferred(&conn) {
            Err(e) => {
                tracing::error!(error = %e, "database: a deferred write failed; the batch is not stored");
                let _ = conn.execute_batch("ROLLBACK");
                false
            }
            Ok(()) => match conn.execute_batch("COMMIT") {
                Err(e) => {
                    tracing::error!(error = %e, "database: commit failed; the batch is not stored");
                    let _ = conn.execute_batch("ROLLBACK");
                    disk_full.store(is_disk_full(&e), Ordering::SeqCst);
                    false
                }
                Ok(()) => true,
            },
        };
        restore_owed |= restore(&conn);
        if !committed {
            // Dropping the replies tells every caller WorkerGone: nothing claims success.
            continue;
        }
        disk_full.store(false, Ordering::SeqCst);
        for reply in replies {
            reply();
        }
    }
}

/// Applies `migrations` in order, recording progress in `PRAGMA user_version`. Each migration
/// runs in its own transaction. Fails when the file is newer than this program.
pub fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), MigrationError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let known = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
    if version > known {
        return Err(MigrationError::TooNew {
            found: version,
            known,
        });
    }
    for (i, sql) in migrations
        .iter()
        .enumerate()
        .skip(usize::try_from(version).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(i + 1).unwrap_or(i64::MAX),
        )?;
        tx.commit()?;
    }
    Ok(())
}

#[derive(Debug)]
pub enum MigrationError {
    Sqlite(rusqlite::Error),
    TooNew { found: i64, known: i64 },
}

impl std::fmt::Display for MigrationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MigrationError::Sqlite(e) => write!(f, "{e}"),
            MigrationError::TooNew { found, known } => {
                write!(
                    f,
                    "database schema version {found} is newer than this program knows ({known})"
                )
            }
        }
    }
}

impl std::error::Error for MigrationError {}

impl From<rusqlite::Error> for MigrationError {
    fn from(e: rusqlite::Error) -> Self {
        MigrationError::Sqlite(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    enum E {
        Gone,
        Sql(#[allow(dead_code)] rusqlite::Error),
    }
    impl From<WorkerGone> for E {
        fn from(_: WorkerGone) -> Self {
            E::Gone
        }
    }
    impl From<rusqlite::Error> for E {
        fn from(e: rusqlite::Error) -> Self {
            E::Sql(e)
        }
    }

    #[tokio::test]
    async fn failed_jobs_roll_back_alone() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, &["CREATE TABLE t (x INTEGER PRIMARY KEY)"]).unwrap();
        let w = SqliteWorker::start(conn, "test-sqlite", 16).unwrap();
        let mut calls = Vec::new();
        for i in 0..20i64 {
            let w = w.clone();
            calls.push(tokio::spawn(async move {
                w.call(move |c| -> Result<(), E> {
                    c.execute("INSERT INTO t VALUES (?1)", [i])?;
                    if i % 2 == 1 {
                        // Changed something, then failed: must be undone.
                        c.execute("INSERT INTO t VALUES (?1)", [i])?;
                    }
                    Ok(())
                })
                .await
            }));
        }
        let mut failed = 0;
        for c in calls {
            if c.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 10);
        let n: i64 = w
            .call(|c| -> Result<i64, E> {
                Ok(c.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?)
            })
            .await
            .unwrap();
        assert_eq!(n, 10);
        assert!(matches!(
            w.call(|c| -> Result<(), E> { Ok(c.execute_batch("SELECT * FROM nope")?) })
                .await,
            Err(E::Sql(_))
        ));
    }

    fn sync_settings(c: &Connection) -> rusqlite::Result<(i64, i64)> {
        Ok((
            c.query_row("PRAGMA synchronous", [], |r| r.get(0))?,
            c.query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))?,
        ))
    }

    /// A batch of lazy jobs commits with synchronous=NORMAL (automatic checkpoints as they
    /// were), and the connection's own level comes back after it; a batch with one durable job
    /// in it is durable, lazy jobs and all.
    #[tokio::test]
    async fn lazy_batches_skip_the_fsync_and_durable_jobs_keep_it() {
        let conn = Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "synchronous", "FULL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 8192)
            .unwrap();
        let w = SqliteWorker::start(conn, "test-sqlite", 16).unwrap();
        let lazy = w
            .call_lazy(|c| -> Result<_, E> { Ok(sync_settings(c)?) })
            .await
            .unwrap();
        assert_eq!(
            lazy,
            (1, 8192),
            "alone, a lazy job commits without an fsync"
        );
        let durable = w
            .call(|c| -> Result<_, E> { Ok(sync_settings(c)?) })
            .await
            .unwrap();
        assert_eq!(durable, (2, 8192), "the connection's own settings are back");

        // Hold the thread, queue a lazy and a durable job behind it: they share a batch.
        let (hold, held) = std::sync::mpsc::channel::<()>();
        let holding = {
            let w = w.clone();
            tokio::spawn(async move {
                w.call(move |_| -> Result<(), E> {
                    let _ = held.recv();
                    Ok(())
                })
                .await
            })
        };
        let (queued_tx, queued_rx) = oneshot::channel();
        let mixed_lazy = {
            let w = w.clone();
            tokio::spawn(async move {
                w.call_lazy(|c| -> Result<_, E> { Ok(sync_settings(c)?) })
                    .await
            })
        };
        let mixed_durable = {
            let w = w.clone();
            tokio::spawn(async move {
                w.call_then(
                    |c| -> Result<_, E> { Ok(sync_settings(c)?) },
                    move || {
                        let _ = queued_tx.send(());
                    },
                )
                .await
            })
        };
        queued_rx.await.unwrap();
        // Both queued (in either order) while the thread is held: they make one batch.
        while w.jobs.capacity() > 16 - 2 {
            tokio::task::yield_now().await;
        }
        hold.send(()).unwrap();
        holding.await.unwrap().unwrap();
        assert_eq!(mixed_durable.await.unwrap().unwrap(), (2, 8192));
        assert_eq!(
            mixed_lazy.await.unwrap().unwrap(),
            (2, 8192),
            "in a batch with a durable job, a lazy one waits for the fsync too"
        );
    }

    /// Deferred writes of one key run once per transaction, with the last job's value, and
    /// are part of it: a deferred write that fails takes the whole batch with it.
    #[tokio::test]
    async fn deferred_writes_run_once_per_transaction_with_the_last_value() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(
            &mut conn,
            &["CREATE TABLE state (k TEXT PRIMARY KEY, v INTEGER, writes INTEGER)"],
        )
        .unwrap();
        let w = SqliteWorker::start(conn, "test-sqlite", 64).unwrap();
        let mut calls = Vec::new();
        for i in 0..50i64 {
            let w = w.clone();
            calls.push(tokio::spawn(async move {
                w.call(move |_| -> Result<(), E> {
                    defer_write(
                        b"peer".to_vec(),
                        Box::new(move |c| {
                            c.execute(
                                "INSERT INTO state VALUES ('peer', ?1, 1)
                                 ON CONFLICT (k) DO UPDATE SET v = ?1, writes = writes + 1",
                                [i],
                            )
                            .map(|_| ())
                        }),
                    );
                    Ok(())
                })
                .await
            }));
        }
        for c in calls {
            c.await.unwrap().unwrap();
        }
        let (v, writes): (i64, i64) = w
            .call(|c| -> Result<(i64, i64), E> {
                Ok(c.query_row("SELECT v, writes FROM state", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?)
            })
            .await
            .unwrap();
        // The jobs ran in order, so the last value is the last job's; fewer writes than jobs
        // whenever jobs shared a batch (at least one write per batch).
        assert_eq!(v, 49);
        assert!((1..=50).contains(&writes), "{writes}");
        // A failing deferred write: the job's caller hears "gone", and nothing of it stays.
        let failed = w
            .call(|c| -> Result<(), E> {
                c.execute("INSERT INTO state VALUES ('other', 1, 1)", [])?;
                defer_write(
                    b"bad".to_vec(),
                    Box::new(|c| c.execute_batch("INSERT INTO nope VALUES (1)")),
                );
                Ok(())
            })
            .await;
        assert!(matches!(failed, Err(E::Gone)), "{failed:?}");
        let others: i64 = w
            .call(|c| -> Result<i64, E> {
                Ok(
                    c.query_row("SELECT count(*) FROM state WHERE k = 'other'", [], |r| {
                        r.get(0)
                    })?,
                )
            })
            .await
            .unwrap();
        assert_eq!(others, 0);
    }
}
