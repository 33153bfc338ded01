//! The tokio runtimes a test drives its in-process clients on, and the set-up most tests start
//! with: a runtime and a directory.

use std::future::Future;

use tokio::runtime::Runtime;

use crate::directory::{Backend, DirectoryProcess};

/// A runtime with one worker thread: what a test spawns on it (a fake proxy, a bus server, a
/// signal recorder) keeps running while the test thread waits on a process. Cap'n Proto
/// clients, which are `!Send`, run in a `LocalSet` on it (`LocalSet::new().block_on(&rt, …)`).
pub fn runtime() -> anyhow::Result<Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?)
}

/// Runs `f` to the end on a fresh single-threaded runtime, inside a `LocalSet`.
pub fn run_local<F: Future>(f: F) -> anyhow::Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    Ok(tokio::task::LocalSet::new().block_on(&rt, f))
}

/// A [`runtime`] and a directory on SQLite with a fresh database.
pub fn runtime_and_directory() -> anyhow::Result<(Runtime, DirectoryProcess)> {
    let rt = runtime()?;
    let dir = rt.block_on(DirectoryProcess::start(Backend::Sqlite, &[]))?;
    Ok((rt, dir))
}
