//! `smvsd`: the SMVS host daemon.

use std::process::ExitCode;

use clap::Parser;
use smvsd::cli::{settle, Cli};

// See the workspace's Cargo.toml for why smvsd does not use the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    smvs_service::logging::init();
    // Before the storage key, session keys or any plaintext can be in memory.
    if let Err(e) = smvs_service::harden::no_core_dumps() {
        eprintln!("smvsd: {e}");
        return ExitCode::from(1);
    }
    let config = match settle(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("smvsd: {e}");
            return ExitCode::from(2);
        }
    };
    // The host's objects are !Send: they live on the actix System's one thread.
    let result = actix::System::new().block_on(async move {
        smvs_service::lifecycle::run_until_stopped(smvsd::daemon::Host::bind(config))
            .await
            .map(drop)
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
