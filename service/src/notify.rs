//! The systemd readiness protocol: a datagram to `$NOTIFY_SOCKET`. Tests use the same socket to
//! learn that a daemon is up, so no test ever sleeps waiting for one.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_the_socket() {
        let dir = std::env::temp_dir().join(format!("smvs-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        let listener = UnixDatagram::bind(&dir).unwrap();
        std::env::set_var("NOTIFY_SOCKET", &dir);
        assert!(ready());
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let _ = std::fs::remove_file(&dir);
    }
}
