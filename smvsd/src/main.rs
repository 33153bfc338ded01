//! `smvsd`: the SMVS host daemon.

use std::process::ExitCode;

use clap::Parser;
use smvsd::cli::{settle, Cli};

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
