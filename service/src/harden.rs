//! Process hardening for daemons that hold secrets, done once at start-up before any key is
//! read.
//!
//! - [`no_core_dumps`]: `PR_SET_DUMPABLE 0` (no core dump, and processes of the same uid cannot
//!   ptrace us or read `/proc/PID/mem`) and `RLIMIT_CORE 0`, soft and hard (no core file even if
//!   something re-enables dumping). These cannot fail on Linux short of a broken kernel, and a
//!   daemon whose keys could end up in a core file has lost the point of its other defences, so
//!   the caller stops start-up on an error.
//! - [`lock_memory`]: `mlockall`, so keys are not written to swap. It depends on privileges
//!   (`CAP_IPC_LOCK`) and `RLIMIT_MEMLOCK`, so it never fails: it locks what the limit allows
//!   and logs a warning saying what is missing.

use nix::sys::mman::{mlockall, MlockAllFlags};
use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum HardenError {
    #[error("cannot make the process non-dumpable (prctl PR_SET_DUMPABLE): {0}")]
    Dumpable(#[source] nix::Error),
    #[error("cannot set the core file size limit to 0: {0}")]
    CoreLimit(#[source] nix::Error),
}

/// What [`lock_memory`] achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemoryLock {
    /// Current and future memory is locked.
    All,
    /// Only the memory mapped at start-up is locked (a finite lock limit and no `CAP_IPC_LOCK`).
    CurrentOnly,
    /// Nothing is locked; a warning was logged.
    None,
}

/// CAP_IPC_LOCK's bit in the capability sets (linux/capability.h).
const CAP_IPC_LOCK: u32 = 14;

/// Makes this process non-dumpable and sets its core file size limit to 0. Call it first thing
/// in `main`, before reading any key.
pub fn no_core_dumps() -> Result<(), HardenError> {
    nix::sys::prctl::set_dumpable(false).map_err(HardenError::Dumpable)?;
    // Under systemd the units set LimitCORE=0 and some filter out @resources (setrlimit), so
    // a limit that is already 0 is left alone rather than set again.
    if getrlimit(Resource::RLIMIT_CORE).map_err(HardenError::CoreLimit)? == (0, 0) {
        return Ok(());
    }
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(HardenError::CoreLimit)
}

/// Locks this process's memory as far as its privileges and `RLIMIT_MEMLOCK` allow, warning
/// when it cannot lock everything.
pub fn lock_memory() -> MemoryLock {
    // An unprivileged process may raise its soft limit up to the hard one.
    let (soft, hard) = getrlimit(Resource::RLIMIT_MEMLOCK).unwrap_or((0, 0));
    if soft < hard {
        let _ = setrlimit(Resource::RLIMIT_MEMLOCK, hard, hard);
    }
    // With a finite limit and no CAP_IPC_LOCK, MCL_FUTURE would make every mapping beyond the
    // limit fail later: a large request would then abort the process on allocation. Lock what
    // is mapped now and say how to get the rest.
    let unlimited = hard == RLIM_INFINITY || has_capability(CAP_IPC_LOCK);
    let (flags, outcome) = if unlimited {
        (
            MlockAllFlags::MCL_CURRENT | MlockAllFlags::MCL_FUTURE,
            MemoryLock::All,
        )
    } else {
        (MlockAllFlags::MCL_CURRENT, MemoryLock::CurrentOnly)
    };
    match mlockall(flags) {
        Ok(()) if outcome == MemoryLock::All => outcome,
        Ok(()) => {
            tracing::warn!(
                memlock_limit_bytes = hard,
                "locked the memory mapped at start-up only: keys made or loaded later may be \
                 swapped out; give the service CAP_IPC_LOCK or LimitMEMLOCK=infinity"
            );
            outcome
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                memlock_limit_bytes = hard,
                "cannot lock memory: keys may be swapped out; give the service CAP_IPC_LOCK or \
                 raise LimitMEMLOCK"
            );
            MemoryLock::None
        }
    }
}

/// Whether `cap` is in this process's effective capability set, read from `/proc/self/status`
/// (no libc call needed). Unknown counts as absent.
fn has_capability(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|set| set & (1u64 << cap) != 0)
}
