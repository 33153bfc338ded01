//! `smvsd`: the SMVS host daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use smvs_crypto::SigningPublicKey;
use smvsd::{Config, FileConfig};

#[derive(Parser)]
#[command(
    name = "smvsd",
    version,
    about = "The SMVS host: encrypts, stores and delivers your messages"
)]
struct Cli {
    /// TOML configuration file; flags override its keys.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Where the host keeps its database and transport key (0700).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// The local API socket for devices (smvsctl).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Address other hosts connect to.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address published in the directory, if not the listen address (a proxy or onion name).
    #[arg(long)]
    public_address: Option<String>,
    /// The directory's address, HOST:PORT.
    #[arg(long)]
    directory: Option<String>,
    /// The directory's public key (hex), as `smvs-directory pubkey` prints it.
    #[arg(long)]
    directory_key: Option<String>,
    /// smvs-keyguard's socket.
    #[arg(long)]
    keyguard_socket: Option<PathBuf>,
    /// A local uid allowed on the socket besides root and the daemon's own (repeatable).
    #[arg(long = "allow-uid")]
    allow_uid: Vec<u32>,
    /// The longest wait between delivery attempts to an unreachable host, in seconds.
    #[arg(long)]
    retry_max_seconds: Option<u64>,
    /// Do not honour peers' "delete everywhere" requests.
    #[arg(long)]
    refuse_remote_delete: bool,
    /// Reach other hosts through this SOCKS5 proxy, HOST:PORT (e.g. Tor at 127.0.0.1:9050).
    #[arg(long)]
    socks5_proxy: Option<String>,
    /// Hold messages from users who are not contacts yet, as requests.
    #[arg(long)]
    contacts_only: bool,
}

fn settle(cli: Cli) -> Result<Config, String> {
    let file = match &cli.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let need = |what: &str| {
        format!(
            "--{what} is required (or `{}` in the config file)",
            what.replace('-', "_")
        )
    };
    let directory_key = cli
        .directory_key
        .or(file.directory_key)
        .ok_or_else(|| need("directory-key"))?;
    let public_address = cli
        .public_address
        .or(file.public_address)
        .map(|a| smvs_schema::HostAddress::parse(&a).map_err(|e| e.to_string()))
        .transpose()?;
    let mut allowed = file.allowed_uids.unwrap_or_default();
    allowed.extend(cli.allow_uid);
    Ok(Config {
        state_dir: cli
            .state_dir
            .or(file.state_dir)
            .ok_or_else(|| need("state-dir"))?,
        socket: cli.socket.or(file.socket).ok_or_else(|| need("socket"))?,
        listen: cli
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7421))),
        public_address,
        directory: cli
            .directory
            .or(file.directory)
            .ok_or_else(|| need("directory"))?,
        directory_key: SigningPublicKey::from_hex(&directory_key)
            .map_err(|e| format!("--directory-key: {e}"))?,
        keyguard_socket: cli
            .keyguard_socket
            .or(file.keyguard_socket)
            .ok_or_else(|| need("keyguard-socket"))?,
        allowed_uids: allowed,
        retry_max: Duration::from_secs(
            cli.retry_max_seconds
                .or(file.retry_max_seconds)
                .unwrap_or(60)
                .max(1),
        ),
        honour_remote_delete: !cli.refuse_remote_delete
            && file.honour_remote_delete.unwrap_or(true),
        socks5_proxy: cli.socks5_proxy.or(file.socks5_proxy),
        contacts_only: cli.contacts_only || file.contacts_only.unwrap_or(false),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    smvs_service::logging::init();
    let config = match settle(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smvsd: {e}");
            return ExitCode::from(2);
        }
    };
    let result = actix::System::new().block_on(async move {
        let stop = smvs_service::signals::stop_signal().map_err(|e| e.to_string())?;
        smvsd::daemon::run(config, stop)
            .await
            .map_err(|e| e.to_string())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smvsd: {e}");
            ExitCode::from(1)
        }
    }
}
