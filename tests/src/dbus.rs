//! A private `dbus-daemon` for tests, configured like Debian's system bus (default deny) plus
//! the policy SMVS ships in `dist/dbus/`; and a fake desktop notification daemon.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tempfile::TempDir;

use crate::directory::DirectoryProcess;
use crate::host::HostProcess;
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

/// One notification the fake server was asked to show (or to update: `id` is then the one it
/// replaced).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub id: u32,
    pub summary: String,
    pub body: String,
    /// The buttons' action keys (without their labels).
    pub actions: Vec<String>,
}

/// Every notification the fake server was asked to show, in order.
type ShownLog = Arc<Mutex<Vec<Shown>>>;

/// A stand-in for the desktop's notification daemon: records every Notify.
struct FakeNotifications {
    shown: ShownLog,
    next_id: u32,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl FakeNotifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &mut self,
        _app_name: String,
        replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        _hints: std::collections::HashMap<String, zbus::OwnedVariant>,
        _expire_timeout: i32,
    ) -> u32 {
        let id = if replaces_id != 0 {
            replaces_id
        } else {
            self.next_id += 1;
            self.next_id
        };
        // The list alternates action keys and their labels.
        let actions = actions.iter().step_by(2).cloned().collect();
        self.shown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Shown {
                id,
                summary,
                body,
                actions,
            });
        id
    }
}

/// `org.freedesktop.Notifications` served on a (session-like) test bus, for as long as this
/// lives. The connection runs on the runtime it was built on, which must keep running (see
/// [`crate::runtime::runtime`]) while the test waits.
pub struct NotificationServer {
    connection: zbus::Connection,
    shown: ShownLog,
}

impl NotificationServer {
    pub async fn start(bus: &TestBus) -> anyhow::Result<NotificationServer> {
        let shown = ShownLog::default();
        let connection = zbus::connection::Builder::address(bus.address.as_str())
            .name("org.freedesktop.Notifications")
            .serve_at(
                "/org/freedesktop/Notifications",
                FakeNotifications {
                    shown: shown.clone(),
                    next_id: 0,
                },
            )
            .build()
            .await
            .context("serving the fake notification daemon")?;
        Ok(NotificationServer { connection, shown })
    }

    /// Waits (up to `limit`) for the first notification; `still_going` is asked in between and
    /// ends the wait with its error (the process that should notify has died, say).
    pub fn wait_first(
        &self,
        limit: Duration,
        still_going: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<(String, String)> {
        let first = self.wait_for(limit, |_| true, still_going)?;
        Ok((first.summary, first.body))
    }

    /// Waits (up to `limit`) for a notification that `what` accepts, as
    /// [`NotificationServer::wait_first`] does.
    pub fn wait_for(
        &self,
        limit: Duration,
        what: impl Fn(&Shown) -> bool,
        mut still_going: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<Shown> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = self.all().into_iter().find(|s| what(s)) {
                return Ok(found);
            }
            if Instant::now() > deadline {
                bail!(
                    "no such notification within {limit:?}; shown: {:?}",
                    self.all()
                );
            }
            still_going()?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every notification shown so far, in order.
    pub fn all(&self) -> Vec<Shown> {
        self.shown
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The user presses the button `action` on notification `id` (the ActionInvoked signal
    /// the desktop sends).
    pub async fn press(&self, id: u32, action: &str) -> anyhow::Result<()> {
        self.connection
            .emit_signal(
                None::<&str>,
                "/org/freedesktop/Notifications",
                "org.freedesktop.Notifications",
                "ActionInvoked",
                &(id, action),
            )
            .await
            .context("emitting ActionInvoked")
    }
}

/// Tests run smvsd as root, so root may own the name on the test buses (in production the
/// policy lets only the user smvsd own it).
pub const ROOT_OWNS: &str = r#"<policy user="root"><allow own="org.smvs.Daemon1"/></policy>"#;

/// Creates the system user `name` (in `groups`, if any) unless it exists. The daemon's user
/// must exist for the shipped policy to mean anything (make install's sysusers.d creates it on
/// a real system); the policy tests also need a member of group `smvs`.
pub fn ensure_system_user(name: &str, groups: Option<&str>) {
    let exists = Command::new("id")
        .arg(name)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !exists {
        let mut useradd = Command::new("useradd");
        useradd.args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ]);
        if let Some(groups) = groups {
            useradd.args(["-G", groups]);
        }
        let _ = useradd.arg(name).status();
    }
}

pub fn ensure_daemon_user() {
    ensure_system_user("smvsd", None);
}

/// `name`'s host (smvsd and keyguard) on `ip`, serving `org.smvs.Daemon1` on `bus`.
pub fn host_on_bus(
    name: &str,
    dir: &DirectoryProcess,
    ip: &str,
    bus: &TestBus,
) -> anyhow::Result<HostProcess> {
    host_on_bus_allowing(name, dir, ip, bus, &[])
}

/// As [`host_on_bus`], with these users allowed besides root (smvsd holds D-Bus callers to
/// the same allowed uids as its socket).
pub fn host_on_bus_allowing(
    name: &str,
    dir: &DirectoryProcess,
    ip: &str,
    bus: &TestBus,
    users: &[&str],
) -> anyhow::Result<HostProcess> {
    let mut host = HostProcess::start(name, dir, ip, &[])?;
    host.stop()?;
    for user in users {
        let uid = nix::unistd::User::from_name(user)?
            .ok_or_else(|| anyhow!("no user {user}"))?
            .uid;
        host.add_flags(&["--allow-uid", &uid.to_string()]);
    }
    host.add_flags(&["--dbus", "system"]);
    host.add_env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address);
    host.start_again()?;
    Ok(host)
}
