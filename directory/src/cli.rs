//! The command line of `smvs-directory`, in the library so that man pages and shell completions
//! can be generated from it (`smvs-dist-gen`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::LimitConfig;

#[derive(Parser)]
#[command(
    name = "smvs-directory",
    version,
    about = "The SMVS directory: usernames to signed public records"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7420")]
    pub listen: SocketAddr,
    /// Database: sqlite:PATH or postgres://USER@HOST:PORT/DB
    #[arg(long, default_value = "sqlite:/var/lib/smvs-directory/directory.db")]
    pub db: String,
    /// A streaming read replica of --db (PostgreSQL only: postgres://USER@HOST:PORT/DB, a
    /// standby whose pg_is_in_recovery() is true, checked at start). Look-ups read it: the
    /// record, the key log's latest epoch and count of changes, and the proof, all from the
    /// replica, so a lagging replica answers with an older state that holds together.
    /// Registrations, changes and everything that must read them back stay on --db. A user
    /// who just registered or changed a record may be answered the state from before for as
    /// long as the replica lags. Not yet for production: nothing bounds the lag, and a dropped
    /// replica connection is not made again.
    #[arg(long, value_name = "URL")]
    pub db_replica: Option<String>,
    /// The directory's signing key (created 0600 when absent).
    #[arg(long, default_value = "/var/lib/smvs-directory/directory.key")]
    pub key_file: PathBuf,
    /// Requests per second allowed from one source address.
    #[arg(long, default_value_t = LimitConfig::default().requests_per_second)]
    pub rate_per_ip: u32,
    /// Registrations per hour allowed from one source address.
    #[arg(long, default_value_t = LimitConfig::default().registrations_per_hour)]
    pub registrations_per_hour: u32,
    /// Authentication attempts per minute allowed for one account from one source address.
    #[arg(long, default_value_t = LimitConfig::default().auth_per_minute)]
    pub auth_per_minute: u32,
    /// Seconds a client may take to finish the encrypted handshake.
    #[arg(long, default_value_t = 10)]
    pub handshake_timeout: u64,
    /// Connections served at once.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Worker threads (0: one per core).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// Accept host addresses on loopback, link-local, private (RFC 1918, fc00::/7) or shared
    /// (100.64/10) networks: for a directory that serves one LAN, or a test. Without it they
    /// are refused, so that nobody can point other users' hosts at services on their own
    /// machines or networks.
    #[arg(long)]
    pub allow_private_host_addresses: bool,
    /// MiB of look-up answers kept in memory (records, signed log heads and proofs of the
    /// latest epoch), so that a name asked for often costs no database read; 0 keeps none.
    #[arg(long, default_value_t = 256)]
    pub answer_cache_mib: usize,
}

#[derive(Subcommand)]
pub enum Command {
    /// Print the directory's public key (hosts pin it), creating the key file if absent.
    Pubkey {
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}
