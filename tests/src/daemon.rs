//! Starting and stopping a daemon binary of this workspace.

use std::fs::File;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where the workspace's binaries are: beside this program (target/<profile>/), or one level
/// up when this is a test executable in target/<profile>/deps/.
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .ok_or_else(|| anyhow!("no parent of {}", exe.display()))?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is not built; run `cargo build --workspace --bins` first (`make test` does)",
            path.display()
        );
    }
    Ok(path)
}

/// A running daemon. Dropping it kills the process; its log is printed if the thread is
/// panicking (a failed test).
pub struct Daemon {
    pub name: String,
    child: Option<Child>,
    log: PathBuf,
    /// The STATUS= line the daemon sent with READY=1.
    pub status: String,
}

impl Daemon {
    /// Starts `binary` with `args`, logging to `log`, and waits (up to 60 s) for READY=1.
    pub fn start(
        name: &str,
        binary: &Path,
        args: &[String],
        log: &Path,
        env: &[(&str, String)],
    ) -> anyhow::Result<Daemon> {
        let socket_path = log.with_extension("notify");
        let _ = std::fs::remove_file(&socket_path);
        let socket = UnixDatagram::bind(&socket_path).context("binding the notify socket")?;
        socket.set_read_timeout(Some(Duration::from_millis(200)))?;
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .env("NOTIFY_SOCKET", &socket_path)
            .env(
                "RUST_LOG",
                std::env::var("SMVS_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let mut daemon = Daemon {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
            status: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut buf = [0u8; 4096];
        loop {
            match socket.recv(&mut buf) {
                Ok(n) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    if text.lines().any(|l| l == "READY=1") {
                        daemon.status = text
                            .lines()
                            .find_map(|l| l.strip_prefix("STATUS="))
                            .unwrap_or("")
                            .to_owned();
                        let _ = std::fs::remove_file(&socket_path);
                        return Ok(daemon);
                    }
                }
                // A signal for the test process (a child of another test ending, say) interrupts
                // the wait; that is no reason to give up on the daemon.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(child) = daemon.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "{name} exited ({status}) before it was ready:\n{}",
                        daemon.log_text()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("{name} was not ready within 60 s:\n{}", daemon.log_text());
            }
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        kill(Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
    }

    /// SIGKILL, as a crash or the OOM killer would, and waits for the process to be gone.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.crash()
    }

    /// As [`Daemon::kill`], keeping the `Daemon` (its log stays readable).
    pub fn crash(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGTERM, then waits (up to 30 s) for the exit status.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.stop_in_place()
    }

    /// As [`Daemon::stop`], keeping the `Daemon` (its log stays readable).
    pub fn stop_in_place(&mut self) -> anyhow::Result<ExitStatus> {
        self.signal(Signal::SIGTERM)?;
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!(
                    "{} did not stop within 30 s of SIGTERM:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "----- log of {} -----\n{}\n----- end of {} -----",
                self.name,
                self.log_text(),
                self.name
            );
        }
    }
}

/// Checks that process `pid` cannot leave a core file: its core file size limit is 0 (soft and
/// hard), and it is non-dumpable. The kernel has no `/proc` line for "dumpable"; what it shows
/// is that a non-dumpable process's `/proc/PID` belongs to root. That is only visible when the
/// process runs as another uid, so for a process running as root only the limit is checked.
pub fn check_no_core_dumps(pid: u32) -> anyhow::Result<()> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .ok_or_else(|| anyhow!("no core limit in /proc/{pid}/limits:\n{limits}"))?;
    // "Max core file size  <soft>  <hard>  bytes"
    let fields: Vec<&str> = core.split_whitespace().collect();
    if fields.get(4..6) != Some(&["0", "0"][..]) {
        bail!("process {pid} may dump core: {core}");
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next())
        .ok_or_else(|| anyhow!("no Uid line in /proc/{pid}/status"))?
        .parse()?;
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(format!("/proc/{pid}"))?);
    if uid != 0 && owner != 0 {
        bail!("process {pid} (uid {uid}) is dumpable: /proc/{pid} belongs to uid {owner}");
    }
    Ok(())
}
