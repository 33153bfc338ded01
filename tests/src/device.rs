//! A linked device: `smvsctl` on "another machine" — its own config directory (device key and
//! pinned host), talking to the host over the device port with `--host`, never the socket.
//! Optionally inside a network namespace of the test's, where only the device port reaches it.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use tempfile::TempDir;

use crate::daemon::binary;

pub struct DeviceProcess {
    pub name: String,
    pub config: TempDir,
    /// The host's device port as this device reaches it.
    pub host: String,
    /// `ip netns exec NAME` when the device runs in a namespace.
    netns_exec: Vec<String>,
}

impl DeviceProcess {
    /// A fresh device reaching the host's device port at `host`.
    pub fn new(name: &str, host: &str) -> anyhow::Result<DeviceProcess> {
        let config = tempfile::Builder::new()
            .prefix(&format!("smvs-device-{name}-"))
            .tempdir()?;
        Ok(DeviceProcess {
            name: name.to_owned(),
            config,
            host: host.to_owned(),
            netns_exec: Vec::new(),
        })
    }

    /// A fresh device inside `site`'s network namespace.
    pub fn new_in(
        site: &crate::netns::Site,
        name: &str,
        host: &str,
    ) -> anyhow::Result<DeviceProcess> {
        let mut device = Self::new(name, host)?;
        device.netns_exec = site.exec_prefix();
        Ok(device)
    }

    /// Where the device keeps its key and pinned host.
    pub fn config_dir(&self) -> PathBuf {
        self.config.path().join("smvs")
    }

    /// `smvsctl ARGS` as this device: its own config, no socket, `--host` unless pairing.
    pub fn command(&self, args: &[&str]) -> anyhow::Result<Command> {
        let smvsctl = binary("smvsctl")?;
        let mut cmd = if self.netns_exec.is_empty() {
            Command::new(smvsctl)
        } else {
            let mut cmd = Command::new("ip");
            cmd.args(&self.netns_exec).arg(smvsctl);
            cmd
        };
        if !args.contains(&"pair") {
            cmd.arg("--host").arg(&self.host);
        }
        cmd.args(args)
            .env("XDG_CONFIG_HOME", self.config.path())
            .env_remove("SMVS_SOCKET")
            .env_remove("SMVS_HOST")
            .env_remove("RUST_LOG");
        Ok(cmd)
    }

    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<Output> {
        Ok(self.command(args)?.output()?)
    }

    /// Runs smvsctl and returns stdout, failing with stderr when it exits non-zero.
    pub fn ctl_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        crate::child::ctl_stdout(self.ctl(args)?, args, &format!("device {}", self.name))
    }

    pub fn ctl_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        Ok(serde_json::from_str(&self.ctl_ok(&all)?)?)
    }

    /// `smvsctl ARGS` running on, with stdout and stderr piped (a watch stream).
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        Ok(self
            .command(args)?
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// A new device `name`, linked on `host` (`devices link` on its socket) and paired.
    pub fn linked(host: &crate::host::HostProcess, name: &str) -> anyhow::Result<DeviceProcess> {
        let link = host.ctl_json(&["devices", "link", "--name", name])?;
        let field = |key: &str| {
            link[key]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| anyhow::anyhow!("no {key} in {link}"))
        };
        let device = DeviceProcess::new(name, &field("device_address")?)?;
        let paired = device.pair(&field("code")?)?;
        if !paired.status.success() {
            anyhow::bail!("pairing {name}: {paired:?}");
        }
        Ok(device)
    }

    /// Pairs with `code`.
    pub fn pair(&self, code: &str) -> anyhow::Result<Output> {
        self.ctl(&["--json", "pair", &self.host, code, "--name", &self.name])
    }
}
