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
