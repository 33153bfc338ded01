//! `make demo`: start a directory, register alice and bob, look them up, print their signed
//! records, stop everything.

use smvs_tests::{Backend, DirectoryProcess, TestUser};

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, demo())
}

async fn demo() -> anyhow::Result<()> {
    let directory = DirectoryProcess::start(Backend::Sqlite, &[]).await?;
    println!(
        "directory: listening on {} with key {}",
        directory.addr,
        directory.key.to_hex()
    );
    let client = directory.client().await?;
    let alice = TestUser::new("alice", "127.0.0.1:7421")?;
    let bob = TestUser::new("bob", "127.0.0.2:7421")?;
    for user in [&alice, &bob] {
        let record = client.register(&user.registration(&directory.key)).await?;
        println!(
            "registered {} (serial {})",
            record.user.username, record.user.serial
        );
    }
    // Log in as alice with the sealed token and move her host, as a host does when its
    // address changes.
    let session = alice.login(&client).await?;
    session
        .update_host_address(&smvs_schema::HostAddress::parse("127.0.0.1:17421")?)
        .await?;
    println!("alice logged in with her sealed token and updated her host address");

    for user in [&alice, &bob] {
        let record = client.lookup(&user.username).await?;
        println!(
            "\nsigned record of {} (verified against the pinned directory key):\n{}",
            user.username,
            serde_json::to_string_pretty(&record.to_json())?
        );
        let safety = smvs_crypto::fingerprint(user.username.as_str(), &record.user.identity)?;
        println!("fingerprint of {}: {safety}", user.username);
    }
    let status = directory.daemon.stop()?;
    println!("\ndirectory stopped ({status})");
    Ok(())
}
