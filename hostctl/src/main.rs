//! `smvs-hostctl`: provision, list, remove and back up hosted users' hosts.

use std::process::ExitCode;

use clap::Parser;
use smvs_hostctl::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match smvs_hostctl::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smvs-hostctl: {e:#}");
            ExitCode::from(1)
        }
    }
}
