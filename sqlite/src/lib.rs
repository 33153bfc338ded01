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
        self.submit(f, false, || ()).await
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
        self.submit(f, false, queued).await
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
        self.submit(f, true, || ()).await
    }

    async fn submit<T, E>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, E> + Send + 'static,
        alone: bool,
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
            .send(Job { work, alone })
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

fn run(conn: Connection, mut jobs: mpsc::Receiver<Job>, disk_full: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let mut waiting: Option<Job> = None;
    loop {
        let first = match waiting.take() {
            Some(job) => job,
            None => match jobs.blocking_recv() {
                Some(job) => job,
                None => break,
            },
        };
        if first.alone {
            let (_, reply) = (first.work)(&conn);
            if let Err(e) = run_deferred(&conn) {
                tracing::error!(error = %e, "database: a deferred write failed");
                continue;
            }
            reply();
            continue;
        }
        let mut batch = vec![first.work];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) if job.alone => {
                    waiting = Some(job);
                    break;
                }
                Ok(job) => batch.push(job.work),
                Err(_) => break,
            }
        }
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            tracing::error!(error = %e, "database: cannot begin a transaction; dropping a batch");
            continue;
        }
        let mut replies = Vec::with_capacity(batch.len());
        for job in batch {
            let _ = run_cached(&conn, "SAVEPOINT job");
            let (ok, reply) = job(&conn);
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
        if let Err(e) = run_deferred(&conn) {
            tracing::error!(error = %e, "database: a deferred write failed; the batch is not stored");
            let _ = conn.execute_batch("ROLLBACK");
            continue;
        }
        if let Err(e) = conn.execute_batch("COMMIT") {
            tracing::error!(error = %e, "database: commit failed; the batch is not stored");
            let _ = conn.execute_batch("ROLLBACK");
            disk_full.store(is_disk_full(&e), Ordering::SeqCst);
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
