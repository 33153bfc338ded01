//! A real terminal for the full-screen client: a private tmux server (its socket in a temporary
//! directory of its own), one window of a given size running a command; keys typed with
//! `send-keys`, the screen read with `capture-pane`, waits with a deadline and the screen shown
//! when they fail.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use tempfile::TempDir;

/// How long a wait for the screen lasts before the test fails.
pub const LIMIT: Duration = Duration::from_secs(30);

pub struct Tmux {
    dir: TempDir,
    name: String,
}

impl Tmux {
    /// Starts `command` (program, arguments and environment as set on it) in a `width`×`height`
    /// terminal. The pane stays after the command exits, so its last screen can be read.
    pub fn start(name: &str, command: &Command, width: u16, height: u16) -> anyhow::Result<Tmux> {
        let dir = tempfile::Builder::new().prefix("smvs-tmux-").tempdir()?;
        let tmux = Tmux {
            dir,
            name: name.to_owned(),
        };
        // A shell notes the exit status in a file (tmux's own `pane_dead_status` is sometimes
        // never filled in when the terminal closes before the process is reaped); `env`
        // carries the command's environment (tmux starts panes with its server's).
        let status_file = tmux.dir.path().join("exit-status");
        let script = format!("\"$@\"; echo $? > '{}'", status_file.display());
        let mut argv: Vec<&OsStr> = vec![
            OsStr::new("sh"),
            OsStr::new("-c"),
            OsStr::new(&script),
            OsStr::new("sh"),
            OsStr::new("env"),
        ];
        let mut sets = Vec::new();
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => {
                    let mut pair = key.to_os_string();
                    pair.push("=");
                    pair.push(value);
                    sets.push(pair);
                }
                None => {
                    argv.push(OsStr::new("-u"));
                    argv.push(key);
                }
            }
        }
        argv.extend(sets.iter().map(|s| s.as_os_str()));
        argv.push(command.get_program());
        argv.extend(command.get_args());
        let (w, h) = (width.to_string(), height.to_string());
        let head = [
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            w.as_str(),
            "-y",
            h.as_str(),
        ];
        let mut new_session: Vec<&OsStr> = head.iter().map(OsStr::new).collect();
        new_session.extend(argv);
        // A server of our own: no user configuration, and the same terminal type everywhere.
        // The pane stays after its command exits: set before the window exists, so that it
        // holds from its first moment.
        let mut cmd = tmux.command();
        cmd.env("TERM", "xterm-256color").arg("start-server");
        cmd.arg(";")
            .args(["set-option", "-g", "remain-on-exit", "on"]);
        cmd.arg(";").args(&new_session);
        run(cmd, "start tmux")?;
        // The window keeps its size whatever attaches (a resize is the test's to make).
        let mut cmd = tmux.command();
        cmd.args(["set-option", "-g", "window-size", "manual"]);
        run(cmd, "set the window size manual")?;
        Ok(tmux)
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("tmux.sock")
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.arg("-S")
            .arg(self.socket())
            .arg("-f")
            .arg("/dev/null")
            .env_remove("TMUX");
        cmd
    }

    /// `send-keys` with tmux key names: `Enter`, `Escape`, `Up`, `M-Enter`, `C-c`, or letters.
    pub fn keys(&self, keys: &[&str]) -> anyhow::Result<()> {
        let mut cmd = self.command();
        cmd.args(["send-keys", "-t", &self.name]).args(keys);
        run(cmd, "send keys").map(|_| ())
    }

    /// Types `text` literally (no key names).
    pub fn type_text(&self, text: &str) -> anyhow::Result<()> {
        let mut cmd = self.command();
        cmd.args(["send-keys", "-l", "-t", &self.name, "--", text]);
        run(cmd, "type text").map(|_| ())
    }

    /// The screen as text, one line per row (trailing blanks trimmed by tmux).
    pub fn screen(&self) -> anyhow::Result<String> {
        let mut cmd = self.command();
        cmd.args(["capture-pane", "-p", "-t", &self.name]);
        let out = run(cmd, "capture the pane")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The screen with its attributes as escape sequences (`capture-pane -e`).
    pub fn screen_with_attributes(&self) -> anyhow::Result<String> {
        let mut cmd = self.command();
        cmd.args(["capture-pane", "-p", "-e", "-t", &self.name]);
        let out = run(cmd, "capture the pane")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Where the cursor is: (column, row).
    pub fn cursor(&self) -> anyhow::Result<(u16, u16)> {
        let text = self.format("#{cursor_x},#{cursor_y}")?;
        let (x, y) = text
            .split_once(',')
            .ok_or_else(|| anyhow!("cursor {text:?}"))?;
        Ok((x.parse()?, y.parse()?))
    }

    /// The pane's size: (columns, rows).
    pub fn size(&self) -> anyhow::Result<(u16, u16)> {
        let text = self.format("#{pane_width},#{pane_height}")?;
        let (w, h) = text
            .split_once(',')
            .ok_or_else(|| anyhow!("size {text:?}"))?;
        Ok((w.parse()?, h.parse()?))
    }

    /// The command's exit status, once it has exited (128 + N when killed by signal N).
    pub fn exit_status(&self) -> anyhow::Result<Option<i32>> {
        match std::fs::read_to_string(self.dir.path().join("exit-status")) {
            Ok(text) if text.ends_with('\n') => Ok(Some(text.trim().parse()?)),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The command's process (the child of the pane's shell), while it runs.
    pub fn pid(&self) -> anyhow::Result<u32> {
        let shell: u32 = self.format("#{pane_pid}")?.parse()?;
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))?;
        let first = children
            .split_whitespace()
            .next()
            .ok_or_else(|| anyhow!("the pane's shell {shell} runs nothing"))?;
        Ok(first.parse()?)
    }

    fn format(&self, format: &str) -> anyhow::Result<String> {
        let mut cmd = self.command();
        cmd.args(["display-message", "-p", "-t", &self.name, format]);
        let out = run(cmd, "read the pane's state")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The pane's title (what an escape sequence such as OSC 0 would set).
    pub fn title(&self) -> anyhow::Result<String> {
        self.format("#{pane_title}")
    }

    /// Resizes the terminal.
    pub fn resize(&self, width: u16, height: u16) -> anyhow::Result<()> {
        let mut cmd = self.command();
        cmd.args(["resize-window", "-t", &self.name]).args([
            "-x",
            &width.to_string(),
            "-y",
            &height.to_string(),
        ]);
        run(cmd, "resize").map(|_| ())
    }

    /// Waits until `ready` holds for the screen; returns that screen. Fails with the last screen.
    pub fn wait_for(&self, what: &str, ready: impl Fn(&str) -> bool) -> anyhow::Result<String> {
        let deadline = Instant::now() + LIMIT;
        let mut pause = Duration::from_millis(20);
        loop {
            let screen = self.screen()?;
            if ready(&screen) {
                return Ok(screen);
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: waited {LIMIT:?} for {what}; the screen was:\n{screen}",
                    self.name
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Waits until the screen shows `text`.
    pub fn wait_text(&self, text: &str) -> anyhow::Result<String> {
        self.wait_for(&format!("{text:?}"), |s| s.contains(text))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let mut cmd = self.command();
        cmd.arg("kill-server");
        let _ = cmd.output();
    }
}

fn run(mut cmd: Command, what: &str) -> anyhow::Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("{what}: cannot run tmux (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{what}: tmux failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}
