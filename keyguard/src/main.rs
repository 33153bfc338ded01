//! `smvs-keyguard`: hold a user's identity keys for smvsd, or check access to a running one.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use smvs_keyguard::cli::{Cli, Command, OperatorArgs};
use smvs_keyguard::operator::{self, Target};
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
    match cli.command {
        Some(Command::Check { socket, json }) => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            return local.block_on(&runtime, check(&socket, json));
        }
        Some(Command::Rotate(args)) => return operator(OperatorCommand::Rotate, args),
        Some(Command::Deregister(args)) => return operator(OperatorCommand::Deregister, args),
        None => {}
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

enum OperatorCommand {
    Rotate,
    Deregister,
}

/// `smvs-keyguard rotate | deregister`: reads the key files itself, so it hardens itself as
/// keyguard does before reading them.
fn operator(command: OperatorCommand, args: OperatorArgs) -> anyhow::Result<()> {
    smvs_keyguard::harden::harden_process()?;
    operator::become_owner_of(&args.key_dir)?;
    smvs_crypto::init()?;
    let target = Target {
        key_dir: args.key_dir,
        username: smvs_schema::Username::parse(&args.username)
            .map_err(|e| anyhow::anyhow!("--username: {e}"))?,
        directory: args.directory,
        directory_key: smvs_crypto::SigningPublicKey::from_hex(&args.directory_key)
            .map_err(|e| anyhow::anyhow!("--directory-key: {e}"))?,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    match command {
        OperatorCommand::Rotate => {
            let rotated = local.block_on(&runtime, operator::rotate(&target))?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "username": target.username.as_str(),
                        "old_signing_key": rotated.old.signing_key.to_hex(),
                        "signing_key": rotated.new.signing_key.to_hex(),
                        "agreement_key": rotated.new.agreement_key.to_hex(),
                        "serial": rotated.record.user.serial,
                    })
                );
            } else {
                println!(
                    "rotated {}: signing key {} (was {}); start smvs-keyguard and smvsd again",
                    target.username,
                    rotated.new.signing_key.to_hex(),
                    rotated.old.signing_key.to_hex()
                );
            }
        }
        OperatorCommand::Deregister => {
            let serial = local.block_on(&runtime, operator::deregister(&target))?;
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "username": target.username.as_str(),
                        "deregistered": true,
                        "serial": serial,
                    })
                );
            } else {
                println!("deregistered {} at {}", target.username, target.directory);
            }
        }
    }
    Ok(())
}
