//! `smvsctl`: see the library for how it works.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Bad usage ends here with clap's message and exit status 2.
    let cli = smvsctl::Cli::parse();
    match smvsctl::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output went away (`| head`): it has what it wanted.
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("smvsctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
