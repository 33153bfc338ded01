//! A private `dbus-daemon` for tests, configured like Debian's system bus (default deny) plus
//! the policy SMVS ships in `dist/dbus/`; and a fake desktop notification daemon.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tempfile::TempDir;

use crate::other_uid::{Access, OtherUid};

pub struct TestBus {
    child: Child,
    pub dir: TempDir,
    /// `unix:path=…`, for `busctl --address=` and `DBUS_SYSTEM_BUS_ADDRESS`.
    pub address: String,
    /// The bus's socket (the path in `address`).
    pub socket: PathBuf,
}

/// The repository's root (for `dist/`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

impl TestBus {
    /// A system-like bus: everything not allowed is denied, then `dist/dbus/org.smvs.Daemon1.conf`,
    /// then `extra_policy` (e.g. letting root own the name, since tests run smvsd as root).
    pub fn system_like(extra_policy: &str) -> anyhow::Result<TestBus> {
        let dir = tempfile::Builder::new().prefix("smvs-bus-").tempdir()?;
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o711),
        )?;
        let socket = dir.path().join("bus");
        let shipped = repo_root()
            .join("dist/dbus/org.smvs.Daemon1.conf")
            .canonicalize()?;
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
  </policy>
  <include>{shipped}</include>
  {extra_policy}
</busconfig>
"#,
            socket = socket.display(),
            shipped = shipped.display(),
        );
        Self::start(dir, &config, &socket)
    }

    /// A session-like bus that allows everything (for a fake notification server).
    pub fn session_like() -> anyhow::Result<TestBus> {
        let dir = tempfile::Builder::new().prefix("smvs-sbus-").tempdir()?;
        let socket = dir.path().join("bus");
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow send_destination="*"/>
    <allow own="*"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"#,
            socket = socket.display()
        );
        Self::start(dir, &config, &socket)
    }

    fn start(dir: TempDir, config: &str, socket: &Path) -> anyhow::Result<TestBus> {
        let config_path = dir.path().join("bus.conf");
        std::fs::write(&config_path, config)?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config_path.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(dir.path().join("bus.log"))?)
            .spawn()
            .context("starting dbus-daemon (Debian package dbus-daemon)")?;
        // The daemon prints its address once it listens: that is the readiness signal.
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim().is_empty() {
            let _ = child.kill();
            anyhow::bail!("dbus-daemon did not start");
        }
        // Every user may connect; the bus's policy decides what each may do.
        std::fs::set_permissions(socket, std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .with_context(|| format!("opening {} to every user", socket.display()))?;
        Ok(TestBus {
            child,
            dir,
            address: format!("unix:path={}", socket.display()),
            socket: socket.to_path_buf(),
        })
    }

    /// `busctl --address=… ARGS` run as the system user `user` (with its groups, through
    /// `runuser`). Fails, saying so, when `user` cannot reach the bus socket or `busctl` could
    /// not be started as `user`: either would otherwise look like a refusal by the policy.
    pub fn busctl_as(&self, user: &str, args: &[&str]) -> anyhow::Result<Output> {
        let who = OtherUid::user(user)?;
        who.check_can(&self.socket, Access::ReadWrite)
            .context("the test means this user to reach the bus")?;
        let out = Command::new("runuser")
            .args(["-u", user, "--", "busctl"])
            .arg(format!("--address={}", self.address))
            .args(args)
            .output()
            .context("starting runuser (Debian package util-linux)")?;
        // runuser's own failures: 126 (could not execute), 127 (not found), 1 with its name.
        let stderr = String::from_utf8_lossy(&out.stderr);
        if matches!(out.status.code(), Some(126 | 127)) || stderr.starts_with("runuser:") {
            bail!(
                "busctl did not run as {user} ({}): {stderr}; the test did not run",
                out.status
            );
        }
        Ok(out)
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every notification the fake server was asked to show: (summary, body).
type Shown = Arc<Mutex<Vec<(String, String)>>>;

/// A stand-in for the desktop's notification daemon: records every Notify.
struct FakeNotifications {
    shown: Shown,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl FakeNotifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        _app_name: String,
        _replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        _actions: Vec<String>,
        _hints: std::collections::HashMap<String, zbus::OwnedVariant>,
        _expire_timeout: i32,
    ) -> u32 {
        let mut shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        shown.push((summary, body));
        u32::try_from(shown.len()).unwrap_or(u32::MAX)
    }
}

/// `org.freedesktop.Notifications` served on a (session-like) test bus, for as long as this
/// lives. The connection runs on the runtime it was built on, which must keep running (see
/// [`crate::runtime::runtime`]) while the test waits.
pub struct NotificationServer {
    _connection: zbus::Connection,
    shown: Shown,
}

impl NotificationServer {
    pub async fn start(bus: &TestBus) -> anyhow::Result<NotificationServer> {
        let shown = Shown::default();
        let connection = zbus::connection::Builder::address(bus.address.as_str())
            .name("org.freedesktop.Notifications")
            .serve_at(
                "/org/freedesktop/Notifications",
                FakeNotifications {
                    shown: shown.clone(),
                },
            )
            .build()
            .await
            .context("serving the fake notification daemon")?;
        Ok(NotificationServer {
            _connection: connection,
            shown,
        })
    }

    /// Waits (up to `limit`) for the first notification; `still_going` is asked in between and
    /// ends the wait with its error (the process that should notify has died, say).
    pub fn wait_first(
        &self,
        limit: Duration,
        mut still_going: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<(String, String)> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(first) = self
                .shown
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .first()
                .cloned()
            {
                return Ok(first);
            }
            if Instant::now() > deadline {
                bail!("no notification within {limit:?}");
            }
            still_going()?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
