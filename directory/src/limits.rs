//! Rate limits (governor's GCRA): per source address for every request, a tighter one per source
//! address for registrations, and one per account and source address for authentication
//! attempts (per account alone, anyone could use up a user's attempts and lock them out; a
//! challenge is sealed to the account's key, so there is nothing to guess). A refused request
//! is told how long to wait. Limits are per process: several directory processes behind one
//! address each count on their own.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::LimitConfig;
use crate::error::{ErrorCode, Refusal};

/// The live rate limiters of one directory process (shared by its workers).
pub struct Limits {
    requests: DefaultKeyedRateLimiter<IpAddr>,
    registrations: DefaultKeyedRateLimiter<IpAddr>,
    auth: DefaultKeyedRateLimiter<(IpAddr, String)>,
    clock: DefaultClock,
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Limits {
    pub fn new(config: LimitConfig) -> Self {
        let requests = Quota::per_second(nz(config.requests_per_second))
            .allow_burst(nz(config.requests_per_second.saturating_mul(3)));
        let registrations = Quota::per_hour(nz(config.registrations_per_hour))
            .allow_burst(nz(config.registrations_per_hour.min(10)));
        let auth =
            Quota::per_minute(nz(config.auth_per_minute)).allow_burst(nz(config.auth_per_minute));
        Limits {
            requests: RateLimiter::keyed(requests),
            registrations: RateLimiter::keyed(registrations),
            auth: RateLimiter::keyed(auth),
            clock: DefaultClock::default(),
        }
    }

    fn refuse(&self, wait: Duration) -> Refusal {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Refusal::new(
            ErrorCode::RateLimited,
            format!("rate limited, retry after {} s", secs.max(1)),
        )
    }

    pub fn request(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.requests
            .check_key(&ip)
            .map_err(|n| self.refuse(n.wait_time_from(self.clock.now())))
    }

    pub fn registration(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.registrations
            .check_key(&ip)
            .map_err(|n| self.refuse(n.wait_time_from(self.clock.now())))
    }

    pub fn auth(&self, ip: IpAddr, account: &str) -> Result<(), Refusal> {
        self.auth
            .check_key(&(ip, account.to_owned()))
            .map_err(|n| self.refuse(n.wait_time_from(self.clock.now())))
    }

    /// Forgets keys whose limits have fully recovered, so memory does not grow with every
    /// address ever seen.
    pub fn forget_idle(&self) {
        self.requests.retain_recent();
        self.registrations.retain_recent();
        self.auth.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_the_burst_with_a_retry_time() {
        let limits = Limits::new(LimitConfig {
            requests_per_second: 1,
            registrations_per_hour: 1,
            auth_per_minute: 1,
        });
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        for _ in 0..3 {
            limits.request(ip).unwrap();
        }
        let refusal = limits.request(ip).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::RateLimited);
        assert!(
            refusal
                .to_string()
                .starts_with("rate-limited: rate limited, retry after "),
            "{refusal}"
        );
        // Another address is not affected.
        limits.request("127.0.0.10".parse().unwrap()).unwrap();
        limits.auth(ip, "alice").unwrap();
        assert!(limits.auth(ip, "alice").is_err());
        limits.auth(ip, "bob").unwrap();
        // Someone else using up alice's attempts from their address does not lock her out.
        limits.auth("127.0.0.10".parse().unwrap(), "alice").unwrap();
    }
}
