//! A user's host as the product runs it: a real `smvs-keyguard` and a real `smvsd`, with its
//! own temporary state, driven through the real `smvsctl`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tempfile::TempDir;

use crate::daemon::{binary, Daemon};
use crate::directory::DirectoryProcess;
use crate::keyguard::KeyguardProcess;
use crate::other_uid::{CommandAs, OtherUid};

pub struct HostProcess {
    pub name: String,
    daemon: Option<Daemon>,
    pub keyguard: KeyguardProcess,
    pub root: TempDir,
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    /// Fixed after the first start, so the address in the directory stays right across restarts.
    pub listen: SocketAddr,
    /// The device port; fixed after the first start too, so paired devices find it again.
    pub device_listen: SocketAddr,
    /// The call port (UDP: STUN and the media relay); port 0 at the first start, so that
    /// tests on one IP never collide on the default port, then fixed like the others.
    pub call_listen: SocketAddr,
    /// The default directory's address and key (hex); none for a host in the DHT alone.
    directory: Option<(String, String)>,
    /// The DHT node's address (UDP), when smvsd runs with `--dht`.
    pub dht_node: Option<SocketAddr>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    /// `ip netns exec NAME` when smvsd runs in a network namespace of the test's.
    netns_exec: Vec<String>,
    starts: u32,
}

impl HostProcess {
    /// Deletes this host's user's record at `dir` with the operator's command
    /// (`smvs-keyguard deregister`, reading the key files as their owner), as if the user had
    /// lost the device and started over (or left). Keyguard's socket cannot do this.
    pub fn deregister_at(&self, dir: &DirectoryProcess) -> anyhow::Result<()> {
        let out = self
            .keyguard
            .operator_command(
                "deregister",
                &self.name,
                &dir.addr.to_string(),
                &dir.key.to_hex(),
            )?
            .output()?;
        if !out.status.success() {
            bail!(
                "smvs-keyguard deregister {} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Rotates this host's identity with the operator's command, as the README says: stop
    /// smvsd and keyguard, `smvs-keyguard rotate`, start both again. Returns the command's JSON.
    pub fn rotate_at(&mut self, dir: &DirectoryProcess) -> anyhow::Result<serde_json::Value> {
        if self.is_running() {
            self.stop()?;
        }
        self.keyguard.stop()?;
        let out = self
            .keyguard
            .operator_command(
                "rotate",
                &self.name,
                &dir.addr.to_string(),
                &dir.key.to_hex(),
            )?
            .arg("--json")
            .output()?;
        if !out.status.success() {
            bail!(
                "smvs-keyguard rotate {} failed ({}): {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.keyguard.start_again(&[])?;
        self.start_again()?;
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Starts keyguard and smvsd for `name`, listening on `ip` (a 127.0.0.0/8 address) with a
    /// port the OS picks.
    pub fn start(
        name: &str,
        directory: &DirectoryProcess,
        ip: &str,
        extra: &[&str],
    ) -> anyhow::Result<HostProcess> {
        Self::start_with(name, directory, ip, Vec::new(), extra)
    }

    /// [`HostProcess::start`] with smvsd inside `site`'s network namespace, on its address.
    /// (keyguard and the local socket are Unix sockets, so they work across namespaces.)
    pub fn start_in(
        site: &crate::netns::Site,
        name: &str,
        directory: &DirectoryProcess,
        extra: &[&str],
    ) -> anyhow::Result<HostProcess> {
        Self::start_with(name, directory, site.ip, site.exec_prefix(), extra)
    }

    /// Starts keyguard and smvsd for `name` in the hosts' DHT with no directory at all
    /// (`--dht`), on `ip`, joining through `bootstrap` (DHT nodes, IP:PORT).
    pub fn start_in_dht(
        name: &str,
        ip: &str,
        bootstrap: &[SocketAddr],
        extra: &[&str],
    ) -> anyhow::Result<HostProcess> {
        let mut flags: Vec<String> = vec!["--dht".into()];
        for node in bootstrap {
            flags.push("--dht-bootstrap".into());
            flags.push(node.to_string());
        }
        flags.extend(extra.iter().map(|s| s.to_string()));
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Self::start_inner(name, None, ip, Vec::new(), &flags)
    }

    fn start_with(
        name: &str,
        directory: &DirectoryProcess,
        ip: &str,
        netns_exec: Vec<String>,
        extra: &[&str],
    ) -> anyhow::Result<HostProcess> {
        Self::start_inner(name, Some(directory), ip, netns_exec, extra)
    }

    fn start_inner(
        name: &str,
        directory: Option<&DirectoryProcess>,
        ip: &str,
        netns_exec: Vec<String>,
        extra: &[&str],
    ) -> anyhow::Result<HostProcess> {
        let keyguard = KeyguardProcess::start(&[])?;
        let root = tempfile::Builder::new()
            .prefix(&format!("smvs-host-{name}-"))
            .tempdir()?;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o711))?;
        let mut host = HostProcess {
            name: name.to_owned(),
            daemon: None,
            keyguard,
            state_dir: root.path().join("state"),
            socket: root.path().join("run").join("smvsd.sock"),
            root,
            listen: format!("{ip}:0").parse()?,
            device_listen: format!("{ip}:0").parse()?,
            call_listen: format!("{ip}:0").parse()?,
            directory: directory.map(|d| (d.addr.to_string(), d.key.to_hex())),
            dht_node: None,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            netns_exec,
            starts: 0,
        };
        host.start_again()?;
        Ok(host)
    }

    /// Sets an environment variable for the next `start_again`.
    pub fn add_env(&mut self, key: &str, value: &str) {
        self.env.push((key.to_owned(), value.to_owned()));
    }

    /// Points the next `start_again` at a directory at `addr` (a relay in front of the real
    /// one, say); the pinned directory key stays.
    pub fn use_directory_at(&mut self, addr: SocketAddr) {
        if let Some((address, _)) = &mut self.directory {
            *address = addr.to_string();
        }
    }

    /// Removes `flag` (and nothing else) from the flags of the next `start_again`.
    pub fn remove_flag(&mut self, flag: &str) {
        self.extra.retain(|f| f != flag);
    }

    /// Adds flags for the next `start_again`.
    pub fn add_flags(&mut self, flags: &[&str]) {
        self.extra.extend(flags.iter().map(|s| s.to_string()));
    }

    /// Starts smvsd again on the same state (after `stop` or `kill`).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.daemon.is_some() {
            bail!("{} is already running", self.name);
        }
        let mut args: Vec<String> = vec![
            "--state-dir".into(),
            self.state_dir.display().to_string(),
            "--socket".into(),
            self.socket.display().to_string(),
            "--listen".into(),
            self.listen.to_string(),
            "--device-listen".into(),
            self.device_listen.to_string(),
            "--call-listen".into(),
            self.call_listen.to_string(),
            "--keyguard-socket".into(),
            self.keyguard.socket.display().to_string(),
            "--retry-max-seconds".into(),
            "1".into(),
        ];
        if let Some((address, key)) = &self.directory {
            args.extend([
                "--directory".into(),
                address.clone(),
                "--directory-key".into(),
                key.clone(),
            ]);
        }
        args.extend(self.extra.iter().cloned());
        self.starts += 1;
        let log = self.root.path().join(format!("smvsd-{}.log", self.starts));
        let env: Vec<(&str, String)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .collect();
        let mut program = binary("smvsd")?;
        if !self.netns_exec.is_empty() {
            // `ip netns exec` execs smvsd in place: the pid is smvsd's.
            args.insert(0, program.display().to_string());
            for (i, word) in self.netns_exec.iter().enumerate() {
                args.insert(i, word.clone());
            }
            program = PathBuf::from("ip");
        }
        let daemon = Daemon::start(
            &format!("smvsd ({})", self.name),
            &program,
            &args,
            &log,
            &env,
        )?;
        let addr = daemon
            .status
            .strip_prefix("listening on ")
            .and_then(|s| s.split(';').next())
            .ok_or_else(|| anyhow!("unexpected status {:?}", daemon.status))?;
        self.listen = addr.parse()?;
        let devices = daemon
            .status
            .split("; ")
            .find_map(|part| part.strip_prefix("devices on "))
            .ok_or_else(|| anyhow!("no device port in status {:?}", daemon.status))?;
        self.device_listen = devices.parse()?;
        let calls = daemon
            .status
            .split("; ")
            .find_map(|part| part.strip_prefix("calls on "))
            .ok_or_else(|| anyhow!("no call port in status {:?}", daemon.status))?;
        self.call_listen = calls.parse()?;
        self.dht_node = daemon
            .status
            .split("; ")
            .find_map(|part| part.strip_prefix("dht on "))
            .map(str::parse)
            .transpose()?;
        self.daemon = Some(daemon);
        Ok(())
    }

    pub fn is_running(&self) -> bool {
        self.daemon.is_some()
    }

    /// SIGTERM; returns the exit status.
    pub fn stop(&mut self) -> anyhow::Result<ExitStatus> {
        let daemon = self
            .daemon
            .take()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        daemon.stop()
    }

    /// SIGKILL.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let daemon = self
            .daemon
            .take()
            .ok_or_else(|| anyhow!("{} is not running", self.name))?;
        daemon.kill()
    }

    pub fn pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(|d| d.pid())
    }

    /// All logs of this host's smvsd runs.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for i in 1..=self.starts {
            out.push_str(
                &std::fs::read_to_string(self.root.path().join(format!("smvsd-{i}.log")))
                    .unwrap_or_default(),
            );
        }
        out
    }

    /// `smvsctl --socket … ARGS`.
    pub fn ctl_command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let mut cmd = Command::new(binary("smvsctl")?);
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("RUST_LOG");
        Ok(cmd)
    }

    /// `smvsctl --socket … ARGS` run as `who`, from a copy of smvsctl `who` can execute. The
    /// socket's own mode and directories are left as they are: check them with
    /// [`OtherUid::check_can`] when the test means `who` to reach the socket.
    pub fn ctl_command_as(&self, who: &OtherUid, args: &[&str]) -> anyhow::Result<CommandAs> {
        let mut cmd = CommandAs::new("smvsctl", who)?;
        cmd.arg("--socket")
            .arg(&self.socket)
            .args(args)
            .env_remove("RUST_LOG");
        Ok(cmd)
    }

    /// `smvsctl --socket … ARGS` started with its stdout and stderr piped: a device that runs
    /// while the test goes on (see [`crate::child::finish`]).
    pub fn ctl_spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        Ok(self
            .ctl_command(args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.ctl_command(args)?.output()?)
    }

    /// Runs smvsctl and returns stdout, failing with stderr when it exits non-zero.
    pub fn ctl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        crate::child::ctl_stdout(self.ctl(args)?, args, &self.name)
    }

    /// Runs `smvsctl --json ARGS` and parses its output.
    pub fn ctl_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let text = self.ctl_ok(&all)?;
        serde_json::from_str(&text).with_context(|| format!("parsing {text:?}"))
    }

    /// `register NAME`.
    pub fn register(&self) -> anyhow::Result<()> {
        self.ctl_ok(&["register", &self.name]).map(|_| ())
    }

    /// `send TO TEXT`, returning the message id.
    pub fn send(&self, to: &str, text: &str) -> anyhow::Result<String> {
        let v = self.ctl_json(&["send", to, text])?;
        v["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("no id in {v}"))
    }

    /// `history PEER` as JSON messages.
    pub fn history(&self, peer: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let v = self.ctl_json(&["history", peer])?;
        v.as_array()
            .cloned()
            .ok_or_else(|| anyhow!("history is not a list: {v}"))
    }

    /// Waits (up to `limit`) until `check` holds for `history PEER`.
    pub fn wait_history(
        &self,
        peer: &str,
        limit: Duration,
        check: impl Fn(&[serde_json::Value]) -> bool,
    ) -> anyhow::Result<Vec<serde_json::Value>> {
        let deadline = Instant::now() + limit;
        loop {
            let history = self.history(peer)?;
            if check(&history) {
                return Ok(history);
            }
            if Instant::now() > deadline {
                bail!("{}: history with {peer} did not reach the expected state within {limit:?}: {history:?}\n{}", self.name, self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- smvsd logs of {} -----\n{}\n-----",
                self.name,
                self.logs()
            );
        }
    }
}
