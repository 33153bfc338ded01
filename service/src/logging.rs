//! Logging for operators: structured `tracing` events on stderr. `RUST_LOG` overrides the level
//! (default `info`). Rules: error = someone must act, warn = actionable, info = rare; never a
//! key, a token or a message body.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
