//! A real `smvs-keyguard` process with its own temporary key directory and socket, serving the
//! uid the tests run as.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use smvs_keyguard::KeyguardClient;
use tempfile::TempDir;

use crate::daemon::{binary, Daemon};
use crate::other_uid::{Access, CommandAs, OtherUid};

/// A keyguard process. Its temporary directory holds the key directory (`keys/`, made 0700 by
/// keyguard), the socket and the log.
pub struct KeyguardProcess {
    pub daemon: Daemon,
    pub dir: TempDir,
    pub key_dir: PathBuf,
    pub socket: PathBuf,
}

impl KeyguardProcess {
    /// Starts keyguard in a fresh temporary directory.
    pub fn start(extra: &[&str]) -> anyhow::Result<KeyguardProcess> {
        Self::start_in(temp_dir()?, extra)
    }

    /// Starts keyguard on the key directory and socket in `dir` (a restart, or a directory a
    /// test prepared).
    pub fn start_in(dir: TempDir, extra: &[&str]) -> anyhow::Result<KeyguardProcess> {
        let key_dir = dir.path().join("keys");
        let socket = dir.path().join("keyguard.sock");
        let mut args = server_args(&key_dir, &socket);
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = dir.path().join(format!(
            "keyguard-{}.log",
            smvs_crypto::random_array::<3>()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ));
        let daemon = Daemon::start("smvs-keyguard", &binary("smvs-keyguard")?, &args, &log, &[])?;
        let expected = format!("listening on {}", socket.display());
        if daemon.status != expected {
            bail!("unexpected status {:?}, wanted {expected:?}", daemon.status);
        }
        Ok(KeyguardProcess {
            daemon,
            dir,
            key_dir,
            socket,
        })
    }

    /// Stops keyguard with SIGTERM (which must succeed and remove the socket) and starts it
    /// again on the same key directory.
    pub fn restart(self, extra: &[&str]) -> anyhow::Result<KeyguardProcess> {
        let KeyguardProcess {
            daemon,
            dir,
            socket,
            ..
        } = self;
        let status = daemon.stop()?;
        if !status.success() {
            bail!("keyguard did not stop cleanly: {status}");
        }
        if socket.exists() {
            bail!("keyguard left its socket {} behind", socket.display());
        }
        Self::start_in(dir, extra)
    }

    /// Kills keyguard with SIGKILL, as a crash would (its socket file stays behind).
    pub fn crash(&mut self) -> anyhow::Result<()> {
        self.daemon.crash()
    }

    /// Starts keyguard again on the same key directory and socket, after [`Self::crash`].
    pub fn start_again(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        let mut args = server_args(&self.key_dir, &self.socket);
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = self.dir.path().join("keyguard-again.log");
        self.daemon = Daemon::start("smvs-keyguard", &binary("smvs-keyguard")?, &args, &log, &[])?;
        Ok(())
    }

    /// Stops keyguard with SIGTERM (cleanly) and keeps its key directory, for
    /// [`Self::start_again`].
    pub fn stop(&mut self) -> anyhow::Result<()> {
        let status = self.daemon.stop_in_place()?;
        if !status.success() {
            bail!("keyguard did not stop cleanly: {status}");
        }
        Ok(())
    }

    /// `smvs-keyguard SUBCOMMAND --key-dir … --username USER --directory ADDR
    /// --directory-key KEY`: an operator command (`rotate`, `deregister`) on this key
    /// directory.
    pub fn operator_command(
        &self,
        subcommand: &str,
        username: &str,
        directory: &str,
        directory_key: &str,
    ) -> anyhow::Result<Command> {
        let mut cmd = Command::new(binary("smvs-keyguard")?);
        cmd.arg(subcommand)
            .arg("--key-dir")
            .arg(&self.key_dir)
            .args(["--username", username, "--directory", directory])
            .args(["--directory-key", directory_key])
            .env_remove("RUST_LOG");
        Ok(cmd)
    }

    /// A client connected as the test's own uid. Call inside a `LocalSet`.
    pub async fn client(&self) -> anyhow::Result<KeyguardClient> {
        KeyguardClient::connect(&self.socket)
            .await
            .context("connecting to keyguard")
    }

    /// `smvs-keyguard check --socket …`, ready to be given a uid or more arguments.
    pub fn check_command(&self) -> anyhow::Result<Command> {
        let mut cmd = Command::new(binary("smvs-keyguard")?);
        cmd.arg("check")
            .arg("--socket")
            .arg(&self.socket)
            .env_remove("RUST_LOG");
        Ok(cmd)
    }

    /// `smvs-keyguard check --socket …` run as `who`, from a copy `who` can execute. Fails
    /// unless `who` can reach the socket through its directories and connect to it, so that
    /// only keyguard's own peer check decides whether `who` is served.
    pub fn check_command_as(&self, who: &OtherUid) -> anyhow::Result<CommandAs> {
        who.check_can(&self.socket, Access::ReadWrite)
            .context("the test means this uid to reach keyguard's socket")?;
        let mut cmd = CommandAs::new("smvs-keyguard", who)?;
        cmd.arg("check")
            .arg("--socket")
            .arg(&self.socket)
            .env_remove("RUST_LOG");
        Ok(cmd)
    }
}

/// A temporary directory another uid can pass through (0711) but not list, so that only the
/// socket's own checks decide who gets in; the key directory inside stays 0700.
pub fn temp_dir() -> anyhow::Result<TempDir> {
    let dir = tempfile::Builder::new().prefix("smvs-kg-").tempdir()?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))?;
    Ok(dir)
}

/// The arguments that serve `socket` from `key_dir` to the current uid.
pub fn server_args(key_dir: &Path, socket: &Path) -> Vec<String> {
    vec![
        "--key-dir".into(),
        key_dir.display().to_string(),
        "--socket".into(),
        socket.display().to_string(),
        "--allow-uid".into(),
        nix::unistd::geteuid().as_raw().to_string(),
    ]
}

/// Asks `client` every question of a pending session v2 handshake, as smvsd does.
pub async fn answer_handshake(
    client: &smvs_keyguard::KeyguardClient,
    pending: &smvsd::session::handshake::Pending,
) -> Result<Vec<smvs_crypto::Zeroizing<[u8; 32]>>, smvs_keyguard::KeyguardError> {
    let mut answers = Vec::new();
    for ask in pending.asks() {
        answers.push(
            client
                .handshake_secret(&smvsd::sessions::question(pending, ask))
                .await?,
        );
    }
    Ok(answers)
}
