//! One stop path: SIGTERM, SIGINT and an explicit stop request all resolve the same future.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};

/// Installs the SIGTERM and SIGINT handlers now and returns a future that resolves with the
/// name of the first one received. Call it before announcing readiness, so a stop sent right
/// after `READY=1` is not lost. Must be called inside a Tokio runtime.
pub fn stop_signal() -> std::io::Result<impl Future<Output = &'static str>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    })
}
