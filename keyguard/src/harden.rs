//! Process hardening, done once at start-up before any key is read: the keyguard holds the
//! identity secret keys, so it takes everything [`smvs_service::harden`] offers.
//!
//! - no core dumps and not ptrace-able by the same uid ([`no_core_dumps`]); its failure stops
//!   start-up;
//! - memory locked so keys are never written to swap ([`lock_memory`]); it depends on
//!   privileges and `RLIMIT_MEMLOCK`, so what it cannot do is a warning.

pub use smvs_service::harden::{lock_memory, no_core_dumps, HardenError, MemoryLock};

/// Hardens this process. Call it first thing in `main`, before reading any key.
pub fn harden_process() -> Result<MemoryLock, HardenError> {
    no_core_dumps()?;
    Ok(lock_memory())
}
