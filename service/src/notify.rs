//! The systemd readiness protocol: a datagram to `$NOTIFY_SOCKET`. Tests use the same socket to
//! learn that a daemon is up, so no test ever sleeps waiting for one.
//!
//! The same socket carries the watchdog: under `WatchdogSec=` systemd sets `$WATCHDOG_USEC`
//! (and `$WATCHDOG_PID`), and kills the service unless it hears `WATCHDOG=1` within that time.
//! A daemon pings from the loop that proves it is alive, at half the interval
//! ([`watchdog_interval`] already returns that half), so one late tick is not fatal.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Sends `state` (e.g. `"READY=1"`) to `$NOTIFY_SOCKET`, if set. Returns whether it was sent.
/// Failing to notify is not fatal: the daemon works without a supervisor.
pub fn notify(state: &str) -> bool {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let path = path.to_string_lossy().into_owned();
    let addr = if let Some(name) = path.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        SocketAddr::from_pathname(&path)
    };
    let sent = addr
        .and_then(|addr| UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr))
        .is_ok();
    if !sent {
        tracing::warn!(socket = %path, "could not notify the service manager");
    }
    sent
}

/// Says the daemon is ready: every listener is bound.
pub fn ready() -> bool {
    notify("READY=1")
}

/// Says the daemon is ready, with a one-line status (shown by `systemctl status`). Daemons put
/// their bound addresses here, which is how tests learn an OS-chosen port.
pub fn ready_with_status(status: &str) -> bool {
    notify(&format!("READY=1\nSTATUS={status}"))
}

/// Says the daemon is stopping.
pub fn stopping() -> bool {
    notify("STOPPING=1")
}

/// How often to send [`watchdog_ping`]: half of `$WATCHDOG_USEC`, or `None` when systemd asks
/// for no watchdog (unset, zero, unparsable, or `$WATCHDOG_PID` naming another process, as
/// `sd_watchdog_enabled(3)` does).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// [`watchdog_interval`] on explicit values, so it can be tested without touching the
/// environment.
fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        // Meant for another process (a parent that did not unset it before exec'ing us).
        if pid.trim().parse::<u32>().ok()? != our_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec) / 2)
}

/// Tells systemd the daemon is alive (`WATCHDOG=1`). Returns whether it was sent.
pub fn watchdog_ping() -> bool {
    notify("WATCHDOG=1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watchdog_interval_is_half_of_watchdog_usec() {
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, 42),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("42"), 42),
            Some(Duration::from_secs(15))
        );
    }

    #[test]
    fn no_watchdog_when_unset_zero_garbled_or_for_another_pid() {
        assert_eq!(watchdog_interval_from(None, None, 42), None);
        assert_eq!(watchdog_interval_from(None, Some("42"), 42), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, 42), None);
        assert_eq!(watchdog_interval_from(Some("soon"), None, 42), None);
        assert_eq!(watchdog_interval_from(Some("-5"), None, 42), None);
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("43"), 42),
            None
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("x"), 42),
            None
        );
    }

    #[test]
    // The only test that sets NOTIFY_SOCKET: tests share the process environment.
    fn ready_and_watchdog_reach_the_socket() {
        let dir = std::env::temp_dir().join(format!("smvs-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixDatagram::bind(&dir).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &dir);
        assert!(ready());
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        assert!(watchdog_ping());
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let _ = std::fs::remove_file(&dir);
    }
}
