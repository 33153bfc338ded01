//! A fresh database per test on the PostgreSQL server that `scripts/with-postgres.sh` (run by
//! `make test` and `make bench`) starts.

use anyhow::{anyhow, Context};

/// The variable `scripts/with-postgres.sh` sets.
pub const URL_VAR: &str = "SMVS_TEST_POSTGRES_URL";

/// Creates an empty database and returns its URL. Fails (it does not skip) when no server is
/// configured: the PostgreSQL suite must really run.
pub async fn fresh_database() -> anyhow::Result<String> {
    let admin = std::env::var(URL_VAR).map_err(|_| {
        anyhow!("{URL_VAR} is not set: run the tests through `make test` (or scripts/with-postgres.sh), which starts a PostgreSQL server")
    })?;
    let (client, connection) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {admin}"))?;
    let driver = tokio::spawn(connection);
    let name = format!("smvs_t_{}", hex::encode(smvs_crypto::random_array::<6>()));
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    drop(client);
    let _ = driver.await;
    let base = admin
        .rsplit_once('/')
        .map(|(base, _)| base.to_owned())
        .ok_or_else(|| anyhow!("{URL_VAR} has no database name"))?;
    Ok(format!("{base}/{name}"))
}

/// The variable `scripts/with-postgres.sh --replica` sets: the same databases, on a streaming
/// read replica of the server [`URL_VAR`] names.
pub const REPLICA_URL_VAR: &str = "SMVS_TEST_POSTGRES_REPLICA_URL";

/// [`fresh_database`], and its URL on the streaming read replica, once the replica has replayed
/// its creation (waited for, up to two minutes). Fails (it does not skip) when no replica is
/// configured.
pub async fn fresh_database_with_replica() -> anyhow::Result<(String, String)> {
    let replica_admin = std::env::var(REPLICA_URL_VAR).map_err(|_| {
        anyhow!("{REPLICA_URL_VAR} is not set: run the tests through `make test` (or scripts/with-postgres.sh --replica), which starts a PostgreSQL primary with a streaming read replica")
    })?;
    let primary = fresh_database().await?;
    let name = primary
        .rsplit_once('/')
        .map(|(_, name)| name.to_owned())
        .ok_or_else(|| anyhow!("no database name in {primary}"))?;
    let base = replica_admin
        .rsplit_once('/')
        .map(|(base, _)| base.to_owned())
        .ok_or_else(|| anyhow!("{REPLICA_URL_VAR} has no database name"))?;
    let replica = format!("{base}/{name}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        match tokio_postgres::connect(&replica, tokio_postgres::NoTls).await {
            Ok(_) => return Ok((primary, replica)),
            Err(e) if std::time::Instant::now() >= deadline => {
                return Err(anyhow!(
                    "the replica has not replayed the creation of {name} within two minutes: {e}"
                ))
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
}

/// `primary`'s database (a URL [`fresh_database`] made) on the streaming read replica, when
/// `scripts/with-postgres.sh --replica` started one.
pub fn replica_of(primary: &str) -> Option<String> {
    let replica_admin = std::env::var(REPLICA_URL_VAR).ok()?;
    let (_, name) = primary.rsplit_once('/')?;
    let (base, _) = replica_admin.rsplit_once('/')?;
    Some(format!("{base}/{name}"))
}

/// Waits (up to `within`) until the replica at `replica` has replayed everything the primary
/// at `primary` had written when this was called.
pub async fn wait_replayed(
    primary: &str,
    replica: &str,
    within: std::time::Duration,
) -> anyhow::Result<()> {
    let connect = |url: String| async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .with_context(|| format!("connecting to {url}"))?;
        let driver = tokio::spawn(connection);
        anyhow::Ok((client, driver))
    };
    let (p, p_driver) = connect(primary.to_owned()).await?;
    let target: String = p
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    drop(p);
    let _ = p_driver.await;
    let (r, r_driver) = connect(replica.to_owned()).await?;
    let deadline = std::time::Instant::now() + within;
    loop {
        let done: bool = r
            .query_one(
                "SELECT pg_is_in_recovery() AND pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&target],
            )
            .await?
            .get(0);
        if done {
            break;
        }
        if std::time::Instant::now() >= deadline {
            return Err(anyhow!(
                "the replica has not replayed up to {target} within {within:?}"
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    drop(r);
    let _ = r_driver.await;
    Ok(())
}
