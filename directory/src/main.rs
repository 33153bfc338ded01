//! `smvs-directory`: run a directory, or print its public key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use smvs_directory::{DirectoryConfig, DirectoryServer, LimitConfig};

#[derive(Parser)]
#[command(
    name = "smvs-directory",
    version,
    about = "The SMVS directory: usernames to signed public records"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7420")]
    listen: SocketAddr,
    /// Database: sqlite:PATH or postgres://USER@HOST:PORT/DB
    #[arg(long, default_value = "sqlite:/var/lib/smvs-directory/directory.db")]
    db: String,
    /// The directory's signing key (created 0600 when absent).
    #[arg(long, default_value = "/var/lib/smvs-directory/directory.key")]
    key_file: PathBuf,
    /// Requests per second allowed from one source address.
    #[arg(long, default_value_t = LimitConfig::default().requests_per_second)]
    rate_per_ip: u32,
    /// Registrations per hour allowed from one source address.
    #[arg(long, default_value_t = LimitConfig::default().registrations_per_hour)]
    registrations_per_hour: u32,
    /// Authentication attempts per minute allowed for one account.
    #[arg(long, default_value_t = LimitConfig::default().auth_per_minute)]
    auth_per_minute: u32,
    /// Seconds a client may take to finish the encrypted handshake.
    #[arg(long, default_value_t = 10)]
    handshake_timeout: u64,
    /// Connections served at once.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    workers: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Print the directory's public key (hosts pin it), creating the key file if absent.
    Pubkey {
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

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
    let config = DirectoryConfig {
        listen: cli.listen,
        db: cli.db,
        key_file: cli.key_file,
        limits: LimitConfig {
            requests_per_second: cli.rate_per_ip,
            registrations_per_hour: cli.registrations_per_hour,
            auth_per_minute: cli.auth_per_minute,
        },
        handshake_timeout: Duration::from_secs(cli.handshake_timeout),
        max_connections: cli.max_connections,
        workers: cli.workers,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        // Listen for stop signals before saying READY, so an early SIGTERM is not missed.
        let stop = smvs_service::signals::stop_signal()?;
        let server = DirectoryServer::bind(config).await?;
        smvs_service::notify::ready_with_status(&format!("listening on {}", server.local_addr()));
        let signal = stop.await;
        tracing::info!(signal, "stopping");
        smvs_service::notify::stopping();
        server.shutdown();
        server.join().await;
        Ok(())
    })
}
