//! Short-lived child processes a test starts itself (an `smvsctl` device, an agent): waiting
//! for them with a deadline, and killing them however the test ends.

use std::process::{Child, Output};
use std::time::{Duration, Instant};

use anyhow::bail;

/// The JSON a finished `smvsctl ... --json`/`--stats` run by `who` printed, or an error with
/// its stderr when it exited non-zero (or its stdout when that is not JSON).
pub fn json_stdout(out: &Output, who: &str) -> anyhow::Result<serde_json::Value> {
    if !out.status.success() {
        bail!(
            "{who}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| anyhow::anyhow!("{who}: {e} in {:?}", String::from_utf8_lossy(&out.stdout)))
}

/// The stdout of a finished `smvsctl ARGS` run by `who`, or an error with its stderr when it
/// exited non-zero.
pub fn ctl_stdout(out: Output, args: &[&str], who: &str) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "smvsctl {} on {who} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Waits for `child` and returns its output; kills it and fails (with what it wrote to stderr,
/// if that was piped) when it has not finished within `limit`, so a missing event fails the
/// test instead of hanging it.
pub fn finish(mut child: Child, limit: Duration) -> anyhow::Result<Output> {
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let pid = child.id();
            let _ = child.kill();
            let out = child.wait_with_output()?;
            bail!(
                "process {pid} did not finish within {limit:?}; its stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

/// Kills a child process when the test ends, however it ends.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
