//! `smvs-keyguard`: hold a user's identity keys for smvsd, or check access to a running one.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use smvs_keyguard::cli::{Cli, Command};
use smvs_keyguard::{KeyguardClient, KeyguardConfig, KeyguardServer};

fn main() -> ExitCode {
    let cli = Cli::parse();
    smvs_service::logging::init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smvs-keyguard: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let local = tokio::task::LocalSet::new();
    if let Some(Command::Check { socket, json }) = cli.command {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        return local.block_on(&runtime, check(&socket, json));
    }
    // Before anything else, and above all before any key is read.
    smvs_keyguard::harden::harden_process()?;
    let (Some(key_dir), Some(socket)) = (cli.key_dir, cli.socket) else {
        anyhow::bail!("--key-dir and --socket are required");
    };
    let mut allowed_uids = cli.allow_uids;
    for name in &cli.allow_users {
        match nix::unistd::User::from_name(name)? {
            Some(user) => allowed_uids.push(user.uid.as_raw()),
            None => anyhow::bail!("--allow-user {name}: no such user"),
        }
    }
    let config = KeyguardConfig {
        key_dir,
        socket,
        allowed_uids,
        max_connections: cli.max_connections,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // `bind` spawns the accept loop with `spawn_local`, hence the LocalSet.
    local.block_on(
        &runtime,
        smvs_service::lifecycle::run_until_stopped(KeyguardServer::bind(config)),
    )?;
    Ok(())
}

async fn check(socket: &Path, json: bool) -> anyhow::Result<()> {
    let client = KeyguardClient::connect(socket).await?;
    let identity = client.public_keys().await?;
    match (identity, json) {
        (Some(id), false) => println!(
            "identity: present\nsigning key: {}\nagreement key: {}",
            id.signing_key.to_hex(),
            id.agreement_key.to_hex()
        ),
        (None, false) => println!("identity: none yet (smvsctl register creates it)"),
        (Some(id), true) => println!(
            "{}",
            serde_json::json!({
                "exists": true,
                "signing_key": id.signing_key.to_hex(),
                "agreement_key": id.agreement_key.to_hex(),
            })
        ),
        (None, true) => println!("{}", serde_json::json!({ "exists": false })),
    }
    Ok(())
}
