//! The command line of `smvs-hostctl` (also read by smvs-dist-gen for its man pages).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "smvs-hostctl",
    version,
    about = "Run many users' SMVS hosts on one machine, each under its own uids",
    long_about = "Run many users' SMVS hosts on one machine. Each hosted user NAME gets its own \
                  key guard and smvsd (smvs-keyguard@NAME and smvsd@NAME), its own system users \
                  (smvskg-NAME, smvsd-NAME), state under /var/lib/smvs-hosts/NAME and ports of \
                  its own. The directory, the public name and the port range come from \
                  /etc/smvs/hosting.toml. Needs root."
)]
pub struct Cli {
    /// The hosting config: directory, public name, listen address, port range.
    #[arg(
        long,
        global = true,
        default_value = "/etc/smvs/hosting.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Provision NAME's host, register the user at the directory and print the pairing code
    /// for the user's first device.
    Add {
        /// The hosted host's name: 3 to 20 of a-z, 0-9 and '-', starting with a letter.
        name: String,
        /// The username to register at the directory (default: NAME).
        #[arg(long)]
        username: Option<String>,
        /// The name the first device gets on the host.
        #[arg(long, default_value = "first")]
        device: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Every hosted host: ports, state, memory and queued messages.
    List {
        /// One JSON object per host, one per line.
        #[arg(long)]
        json: bool,
    },
    /// Stop NAME's host and destroy its keys, state, config and users.
    Remove {
        name: String,
        /// Keep the state (keys and database), owned by root, under /var/lib/smvs-hosts/NAME.
        #[arg(long)]
        keep_data: bool,
    },
    /// Write an encrypted, consistent copy of NAME's host (its keys, database and config):
    /// stops the host for the copy and starts it again.
    Backup {
        name: String,
        /// Where to write it (must not exist).
        file: PathBuf,
        /// A file whose first line is the passphrase ("-": standard input).
        #[arg(long, value_name = "FILE")]
        passphrase_file: PathBuf,
    },
    /// Bring a backup back as hosted host NAME (which must not exist) and start it.
    Restore {
        name: String,
        file: PathBuf,
        /// A file whose first line is the passphrase ("-": standard input).
        #[arg(long, value_name = "FILE")]
        passphrase_file: PathBuf,
    },
}
