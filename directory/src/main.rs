//! `smvs-directory`: run a directory, or print its public key.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use smvs_directory::cli::{Cli, Command};
use smvs_directory::{DirectoryConfig, DirectoryServer, LimitConfig};

fn main() -> ExitCode {
    let cli = Cli::parse();
    smvs_service::logging::init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Our errors carry their causes in their own message: one line, no repeated chain.
            eprintln!("smvs-directory: {e}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(Command::Pubkey { key_file, json }) = cli.command {
        let key = smvs_directory::load_key(&key_file.unwrap_or(cli.key_file))?;
        if json {
            println!(
                "{}",
                serde_json::json!({ "directory_key": key.public().to_hex() })
            );
        } else {
            println!("{}", key.public().to_hex());
        }
        return Ok(());
    }
    // Before the signing key is read.
    smvs_service::harden::no_core_dumps()?;
    let config = DirectoryConfig {
        listen: cli.listen,
        db: cli.db,
        db_replica: cli.db_replica,
        key_file: cli.key_file,
        limits: LimitConfig {
            requests_per_second: cli.rate_per_ip,
            registrations_per_hour: cli.registrations_per_hour,
            auth_per_minute: cli.auth_per_minute,
        },
        handshake_timeout: Duration::from_secs(cli.handshake_timeout),
        max_connections: cli.max_connections,
        workers: cli.workers,
        allow_private_host_addresses: cli.allow_private_host_addresses,
        answer_cache_bytes: cli.answer_cache_mib.saturating_mul(1 << 20),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // One thread is enough here: the server runs its own worker threads.
    runtime.block_on(smvs_service::lifecycle::run_until_stopped(
        DirectoryServer::bind(config),
    ))?;
    Ok(())
}
