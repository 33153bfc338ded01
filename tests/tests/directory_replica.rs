//! Directory processes reading look-ups from a PostgreSQL streaming read replica
//! (`--db-replica`), against the real primary and replica that `scripts/with-postgres.sh
//! --replica` (run by `make test`) starts: look-ups are answered from the replica once it has
//! replayed, and only from it (with its replay paused, a user just registered is not found
//! there though the primary has it); every write, from a process with a replica, goes to the
//! primary; and a replica URL that is no replica is refused at start.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

use smvs_directory::{ClientError, DirectoryClient, ErrorCode, VerifiedRecord};
use smvs_schema::{HostAddress, Username};
use smvs_tests::daemon::binary;
use smvs_tests::runtime::run_local;
use smvs_tests::{DirectoryProcess, TestUser};
use tokio_postgres::{Client, NoTls};

/// Generous: the replica replays in milliseconds when idle, but the suite runs on loaded,
/// small machines.
const DEADLINE: Duration = Duration::from_secs(120);

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::task::spawn_local(connection);
    client
}

/// Asks `ask` until it gives something, or fails the test at the deadline with what it said
/// last.
async fn until<T, F, Fut>(what: &str, mut ask: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, String>>,
{
    let deadline = Instant::now() + DEADLINE;
    loop {
        let last = match ask().await {
            Ok(Some(found)) => return found,
            Ok(None) => "not yet".to_owned(),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {DEADLINE:?} ({last})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A look-up that finds `name`, with `check` true of it.
async fn found(
    client: &DirectoryClient,
    name: &Username,
    check: impl Fn(&VerifiedRecord) -> bool,
) -> Result<Option<VerifiedRecord>, String> {
    match client.lookup(name).await {
        Ok(record) if check(&record) => Ok(Some(record)),
        Ok(_) => Ok(None),
        Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

fn not_found(r: Result<VerifiedRecord, ClientError>) -> bool {
    matches!(r, Err(e) if e.code() == Some(ErrorCode::NotFound))
}

/// Waits until the replica has replayed everything the primary has written so far.
async fn caught_up(primary: &Client, standby: &Client) {
    let target: String = primary
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    until("the replica caught up with the primary", || async {
        let done: bool = standby
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&target],
            )
            .await
            .map_err(|e| e.to_string())?
            .get(0);
        Ok(done.then_some(()))
    })
    .await;
}

async fn host_of(db: &Client, name: &str) -> Option<String> {
    db.query_opt(
        "SELECT host_address FROM users WHERE username = $1",
        &[&name],
    )
    .await
    .unwrap()
    .map(|r| r.get(0))
}

/// Resumes the replica's replay when dropped (with psql: a drop cannot wait on the async
/// client); resuming a replay that is not paused does nothing.
struct ResumeReplay(String);

impl Drop for ResumeReplay {
    fn drop(&mut self) {
        let _ = std::process::Command::new("psql")
            .args(["-q", "-X", &self.0, "-c", "SELECT pg_wal_replay_resume()"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[test]
fn lookups_are_read_from_the_replica_and_writes_go_to_the_primary() {
    run_local(async {
        let (db, replica) = smvs_tests::postgres::fresh_database_with_replica()
            .await
            .unwrap();
        // Two stateless processes, one key, one primary, one replica.
        let first = DirectoryProcess::start_with(
            tempfile::Builder::new()
                .prefix("smvs-dir-")
                .tempdir()
                .unwrap(),
            db.clone(),
            &["--db-replica", &replica],
        )
        .unwrap();
        let dir2 = tempfile::Builder::new()
            .prefix("smvs-dir-")
            .tempdir()
            .unwrap();
        std::fs::copy(&first.key_file, dir2.path().join("directory.key")).unwrap();
        let second =
            DirectoryProcess::start_with(dir2, db.clone(), &["--db-replica", &replica]).unwrap();
        let a = first.client().await.unwrap();
        let b = second.client().await.unwrap();
        let primary = connect(&db).await;
        let standby = connect(&replica).await;

        // Registered through one process: on the primary at once, and found through the other
        // (a look-up read from the replica) once the replica has replayed it.
        let alice = TestUser::new("alice", "127.0.0.1:7421").unwrap();
        let registered = a.register(&alice.registration(&first.key)).await.unwrap();
        assert_eq!(
            host_of(&primary, "alice").await.as_deref(),
            Some("127.0.0.1:7421")
        );
        let seen = until("alice found through the other process", || {
            found(&b, &alice.username, |_| true)
        })
        .await;
        assert_eq!(seen.user.identity, alice.identity.bundle());
        assert_eq!(seen.logged(), registered.logged());
        let epoch_before = seen.logged_at.unwrap().head.epoch;

        // With the replica's replay paused (once it holds alice's publication too), a registration through a process that has a
        // replica still succeeds (it is written to the primary, the replica being read only),
        // and is not found by look-ups at either process: they read the replica.
        caught_up(&primary, &standby).await;
        // Should an assertion fail while replay is paused, it is resumed all the same: the
        // other test of this file shares the replica.
        let _resume = ResumeReplay(replica.clone());
        standby
            .execute("SELECT pg_wal_replay_pause()", &[])
            .await
            .unwrap();
        until("the replica's replay paused", || async {
            let state: String = standby
                .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
                .await
                .map_err(|e| e.to_string())?
                .get(0);
            Ok((state == "paused").then_some(()))
        })
        .await;
        let bob = TestUser::new("bob", "127.0.0.1:7422").unwrap();
        let bobs = b.register(&bob.registration(&second.key)).await.unwrap();
        assert_eq!(
            host_of(&primary, "bob").await.as_deref(),
            Some("127.0.0.1:7422")
        );
        assert_eq!(host_of(&standby, "bob").await, None);
        assert!(not_found(b.lookup(&bob.username).await));
        assert!(not_found(a.lookup(&bob.username).await));
        // And what is found there is the replica's state: alice at the epoch from before bob.
        let paused = a.lookup(&alice.username).await.unwrap();
        assert_eq!(paused.logged_at.unwrap().head.epoch, epoch_before);

        // Replay resumed: bob is found through both, as registered.
        standby
            .execute("SELECT pg_wal_replay_resume()", &[])
            .await
            .unwrap();
        for client in [&a, &b] {
            let seen = until("bob found once the replica replays", || {
                found(client, &bob.username, |_| true)
            })
            .await;
            assert_eq!(seen.logged(), bobs.logged());
            assert!(seen.logged_at.unwrap().head.epoch > epoch_before);
        }

        // A change through a process with a replica (log in, new host address) is written to
        // the primary, and shows in look-ups once replayed.
        let session = alice.login(&b).await.unwrap();
        let new_host = HostAddress::parse("127.0.0.1:17421").unwrap();
        let moved = session.update_host_address(&new_host).await.unwrap();
        assert_eq!(
            host_of(&primary, "alice").await.as_deref(),
            Some("127.0.0.1:17421")
        );
        let seen = until("alice's new host address through the other process", || {
            found(&a, &alice.username, |r| r.user.host_address == new_host)
        })
        .await;
        assert_eq!(seen.user.serial, moved.user.serial);
    })
    .unwrap();
}

/// The process's refusal at start: its exit status and what it says.
fn refused(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("directory.key");
    let out = Command::new(binary("smvs-directory").unwrap())
        .args(["--listen", "127.0.0.1:0", "--key-file"])
        .arg(&key)
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_replica_url_that_is_no_replica_is_refused() {
    let (db, replica) = run_local(smvs_tests::postgres::fresh_database_with_replica())
        .unwrap()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite:{}", dir.path().join("d.db").display());
    // A SQLite database has no replica.
    let said = refused(&["--db", &sqlite, "--db-replica", &replica]);
    assert!(said.contains("SQLite database has no replica"), "{said}");
    // The primary given as its own replica: not in recovery.
    let said = refused(&["--db", &db, "--db-replica", &db]);
    assert!(said.contains("pg_is_in_recovery() is false"), "{said}");
    // Not a database URL at all.
    let said = refused(&["--db", &db, "--db-replica", "replica.example"]);
    assert!(
        said.contains("must be sqlite:PATH or postgres://"),
        "{said}"
    );
    // The real replica is taken.
    let ok = DirectoryProcess::start_with(dir, db, &["--db-replica", &replica]);
    assert!(ok.is_ok(), "{:?}", ok.err());
}
