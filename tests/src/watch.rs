//! A running `smvsctl --json watch` on a host: every event it printed, read by a thread, so a
//! test can wait for one with a deadline, or take everything published up to now.
//!
//! Markers make both possible without a sleep: deleting the (never existing) conversation with
//! [`MARKER_PEER`] changes nothing but publishes a `deleted` event, and events reach a device
//! in the order they were published.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use serde_json::Value;

use crate::host::HostProcess;

/// How long a watcher waits for an event before the test fails.
pub const LIMIT: Duration = Duration::from_secs(30);

/// The peer whose (never existing) conversation is deleted to publish a marker.
pub const MARKER_PEER: &str = "zz-marker";

/// A running `smvsctl --json watch`.
pub struct Watch {
    host: String,
    child: Option<Child>,
    lines: mpsc::Receiver<Result<Value, String>>,
    seen: Vec<Value>,
}

impl Watch {
    /// Starts watching and returns once the subscription is live (a marker event came through).
    pub fn start(host: &HostProcess) -> anyhow::Result<Watch> {
        Self::start_with(host.ctl_command(&["--json", "watch"])?, host)
    }

    /// Starts `watch`, a `smvsctl --json watch` of some device of `host`'s user (a linked device
    /// over the device port, say), and returns once its subscription is live.
    pub fn start_with(
        mut watch: std::process::Command,
        host: &HostProcess,
    ) -> anyhow::Result<Watch> {
        let mut child = watch
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from smvsctl watch"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let event = serde_json::from_str(&line)
                    .map_err(|e| format!("watch printed {line:?}, not JSON: {e}"));
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        let mut watch = Watch {
            host: host.name.clone(),
            child: Some(child),
            lines,
            seen: Vec::new(),
        };
        // Publish markers until one arrives: from then on every event reaches this watcher.
        let deadline = Instant::now() + LIMIT;
        loop {
            host.ctl_ok(&["delete", MARKER_PEER])?;
            if watch
                .next_within(Duration::from_millis(300), is_marker)?
                .is_some()
            {
                break;
            }
            if Instant::now() >= deadline {
                bail!("{}'s watcher never subscribed", watch.host);
            }
        }
        Ok(watch)
    }

    fn receive(&mut self, left: Duration) -> anyhow::Result<Option<Value>> {
        match self.lines.recv_timeout(left) {
            Ok(Ok(event)) => {
                self.seen.push(event.clone());
                Ok(Some(event))
            }
            Ok(Err(e)) => bail!("{}'s watcher: {e}", self.host),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("{}'s watcher ended; it saw {:?}", self.host, self.seen)
            }
        }
    }

    /// The first event (already seen or still to come within `limit`) that `matches`.
    pub fn next_within(
        &mut self,
        limit: Duration,
        matches: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Option<Value>> {
        if let Some(e) = self.seen.iter().find(|e| matches(e)) {
            return Ok(Some(e.clone()));
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.receive(left)? {
                Some(event) if matches(&event) => return Ok(Some(event)),
                Some(_) => {}
                None => return Ok(None),
            }
        }
    }

    /// As [`Watch::next_within`], failing when no such event comes within [`LIMIT`].
    pub fn wait_for(
        &mut self,
        what: &str,
        matches: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        match self.next_within(LIMIT, matches)? {
            Some(event) => Ok(event),
            None => bail!(
                "{}'s watcher did not see {what} within {LIMIT:?}; it saw {:?}",
                self.host,
                self.seen
            ),
        }
    }

    /// Every event published on `host` up to now: publishes a marker and reads up to it.
    pub fn everything_so_far(&mut self, host: &HostProcess) -> anyhow::Result<Vec<Value>> {
        let markers = |seen: &[Value]| seen.iter().filter(|e| is_marker(e)).count();
        let before = markers(&self.seen);
        host.ctl_ok(&["delete", MARKER_PEER])?;
        let deadline = Instant::now() + LIMIT;
        while markers(&self.seen) <= before {
            let left = deadline.saturating_duration_since(Instant::now());
            if self.receive(left)?.is_none() {
                bail!(
                    "{}'s watcher: no marker within {LIMIT:?}; saw {:?}",
                    self.host,
                    self.seen
                );
            }
        }
        Ok(self.seen.clone())
    }
}

impl Watch {
    /// Ends the watcher as a person or a supervisor would (SIGTERM) and waits for it: the
    /// watch exits 0 after what it printed. Returns every event it printed.
    pub fn terminate(mut self) -> anyhow::Result<Vec<Value>> {
        let Some(mut child) = self.child.take() else {
            bail!("{}'s watcher was already reaped", self.host);
        };
        let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id())?);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
        let status = child.wait()?;
        if !status.success() {
            bail!("{}'s watcher ended with {status} on SIGTERM", self.host);
        }
        while let Ok(Ok(event)) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(event);
        }
        Ok(std::mem::take(&mut self.seen))
    }

    /// Kills the watcher with SIGKILL (a crash, a power cut) and waits for it. Returns every
    /// event it printed.
    pub fn kill(mut self) -> anyhow::Result<Vec<Value>> {
        let Some(mut child) = self.child.take() else {
            bail!("{}'s watcher was already reaped", self.host);
        };
        child.kill()?;
        child.wait()?;
        while let Ok(Ok(event)) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(event);
        }
        Ok(std::mem::take(&mut self.seen))
    }

    /// Waits up to `limit` for the watcher to end on its own; its exit status, or `None`.
    pub fn ended_within(
        &mut self,
        limit: Duration,
    ) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + limit;
        let Some(child) = self.child.as_mut() else {
            bail!("{}'s watcher was already reaped", self.host);
        };
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether `e` is a marker (see the module's introduction).
pub fn is_marker(e: &Value) -> bool {
    e["event"] == "deleted" && e["peer"] == MARKER_PEER
}
