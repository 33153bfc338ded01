//! The command line of `smvs-keyguard`, in the library so that man pages and shell completions
//! can be generated from it (`smvs-dist-gen`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::DEFAULT_MAX_CONNECTIONS;

#[derive(Parser)]
#[command(
    name = "smvs-keyguard",
    version,
    about = "The SMVS key guard: holds identity secret keys, serves only smvsd's uid",
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Directory of the secret key files (created 0700 when absent).
    #[arg(long, required = true)]
    pub key_dir: Option<PathBuf>,
    /// Unix socket to serve on.
    #[arg(long, required = true)]
    pub socket: Option<PathBuf>,
    /// A uid allowed to connect (smvsd's); repeat for more.
    #[arg(
        long = "allow-uid",
        value_name = "UID",
        required_unless_present = "allow_users"
    )]
    pub allow_uids: Vec<u32>,
    /// A user allowed to connect, by name (looked up at start); repeat for more.
    // For systemd units: they know smvsd's user name, not its uid.
    #[arg(long = "allow-user", value_name = "USER")]
    pub allow_users: Vec<String>,
    /// Connections served at once.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
}

#[derive(Subcommand)]
pub enum Command {
    /// Connect to a running keyguard as this uid and print whether an identity exists.
    Check {
        #[arg(long)]
        socket: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}
