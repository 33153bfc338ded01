//! A running `smvsctl agent` with a desktop of its own: a private session bus and a fake
//! notification daemon on it, and every line the agent printed, read by a thread so a test can
//! wait for one with a deadline.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use crate::child::KillOnDrop;
use crate::dbus::{NotificationServer, TestBus};

pub struct AgentProcess {
    pub child: KillOnDrop,
    /// The agent's desktop: what it was asked to show, and its buttons.
    pub desktop: NotificationServer,
    lines: mpsc::Receiver<String>,
    /// Every stdout line read so far.
    pub seen: Vec<String>,
    _session: TestBus,
}

impl AgentProcess {
    /// Starts `agent` (an `smvsctl … agent …` command) on a fresh session bus whose fake
    /// notification daemon runs on `rt`; returns once it printed `ready` in a line.
    pub fn start(
        rt: &tokio::runtime::Runtime,
        mut agent: Command,
        ready: &str,
    ) -> anyhow::Result<AgentProcess> {
        let session = TestBus::session_like()?;
        let desktop = rt.block_on(NotificationServer::start(&session))?;
        let mut child = agent
            .env("DBUS_SESSION_BUS_ADDRESS", &session.address)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting smvsctl agent")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from smvsctl agent"))?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut me = AgentProcess {
            child: KillOnDrop(child),
            desktop,
            lines,
            seen: Vec::new(),
            _session: session,
        };
        me.wait_line(Duration::from_secs(60), |l| l.contains(ready))?;
        Ok(me)
    }

    /// Waits for a stdout line `what` accepts (one not yet returned by an earlier wait).
    pub fn wait_line(
        &mut self,
        limit: Duration,
        what: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .lines
                .recv_timeout(left.min(Duration::from_millis(200)))
            {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if what(&line) {
                        return Ok(line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("smvsctl agent ended; it printed {:?}", self.seen)
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "no such line within {limit:?}; the agent printed {:?}",
                    self.seen
                );
            }
        }
    }

    /// Waits for a notification `what` accepts, failing early if the agent dies.
    pub fn wait_notification(
        &mut self,
        what: impl Fn(&crate::dbus::Shown) -> bool,
    ) -> anyhow::Result<crate::dbus::Shown> {
        let child = &mut self.child.0;
        self.desktop.wait_for(Duration::from_secs(60), what, || {
            match child.try_wait()? {
                Some(status) => bail!("smvsctl agent exited early: {status}"),
                None => Ok(()),
            }
        })
    }
}
