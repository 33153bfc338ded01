//! Test harness shared by the integration tests, the demo and the benchmarks: real binaries
//! started as processes on loopback ports the OS picks, readiness learned from the same
//! `NOTIFY_SOCKET` protocol systemd uses (never a sleep), logs kept and shown on failure.

pub mod agent;
pub mod child;
pub mod conversation;
pub mod daemon;
pub mod dbus;
pub mod device;
pub mod dht_forger;
pub mod directory;
pub mod host;
pub mod impersonate;
pub mod keyguard;
pub mod layering;
pub mod measure;
pub mod netns;
pub mod other_uid;
pub mod postgres;
pub mod runtime;
pub mod socks;
pub mod tmux;
pub mod watch;

pub use daemon::Daemon;

/// A count from the environment (a benchmark's size, for quick local runs), or `default`.
pub fn count_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
pub use directory::{Backend, DirectoryProcess, TestUser};
pub use host::HostProcess;
pub use keyguard::KeyguardProcess;
