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
    /// Operator: replace the identity with a new one, at the directory and in the key
    /// directory. Run as root or the key directory's owner, with keyguard and smvsd stopped;
    /// start both again afterwards. Contacts see a changed key.
    Rotate(OperatorArgs),
    /// Operator: delete the user's record at the directory, signed by the identity. Run as
    /// root or the key directory's owner; keyguard may keep running.
    Deregister(OperatorArgs),
}

/// What the operator commands are told: the keys, the name, and the directory.
#[derive(clap::Args)]
pub struct OperatorArgs {
    /// The key directory keyguard serves (read directly, not through its socket).
    #[arg(long)]
    pub key_dir: PathBuf,
    /// The username the identity is registered as.
    #[arg(long)]
    pub username: String,
    /// The directory, HOST:PORT.
    #[arg(long)]
    pub directory: String,
    /// The directory's public key (hex), as pinned in smvsd's config.
    #[arg(long)]
    pub directory_key: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}
