//! Network namespaces a test makes for itself: two sites joined by a veth pair, and the faults a
//! real network has, made with iptables inside those namespaces only.
//!
//! ```text
//!   netns <name>-a              netns <name>-b
//!   10.99.0.1/24 ── veth pair ── 10.99.0.2/24
//! ```
//!
//! The two namespaces see nothing but each other (and their own loopback), so the private
//! addresses above never leave them. A black hole drops every packet on the veth in both
//! directions, so TCP hangs instead of failing fast, as on a real partition; loss drops a
//! random share. Dropping `TwoSites` deletes both namespaces (and with them the veth pair).
//! Needs root (the test suite runs as root), `ip` and `iptables` (`make deps` installs both).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context};

/// Every namespace made by these tests starts with this, followed by the test process's pid.
const PREFIX: &str = "smvs-t";

/// One side of the pair: a namespace and its address on the veth.
pub struct Site {
    pub netns: String,
    pub ip: &'static str,
    veth: String,
}

pub struct TwoSites {
    pub a: Site,
    pub b: Site,
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (is it installed? `make deps`)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Deletes namespaces left behind by test processes that no longer run (a killed test run).
fn remove_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = run("ip", &["netns", "del", name]);
        }
    }
}

impl Site {
    /// `ip netns exec` and its arguments, to put in front of a command run on this site.
    pub fn exec_prefix(&self) -> Vec<String> {
        vec!["netns".into(), "exec".into(), self.netns.clone()]
    }

    fn iptables(&self, args: &[&str]) -> anyhow::Result<()> {
        let mut all = vec!["netns", "exec", &self.netns, "iptables", "-w"];
        all.extend_from_slice(args);
        run("ip", &all)
    }
}

impl TwoSites {
    pub fn new() -> anyhow::Result<TwoSites> {
        if !nix::unistd::geteuid().is_root() {
            bail!("this test builds network namespaces and needs root (the suite runs as root)");
        }
        remove_stale();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("{PREFIX}{pid}-{n}");
        // Interface names are at most 15 bytes; they live inside the namespaces, so only need
        // to be unique while being created in ours.
        let veth = format!("sv{}x{n}", pid % 1_000_000);
        let a = Site {
            netns: format!("{name}-a"),
            ip: "10.99.0.1",
            veth: format!("{veth}a"),
        };
        let b = Site {
            netns: format!("{name}-b"),
            ip: "10.99.0.2",
            veth: format!("{veth}b"),
        };
        let sites = TwoSites { a, b };
        for site in [&sites.a, &sites.b] {
            run("ip", &["netns", "add", &site.netns])?;
        }
        run(
            "ip",
            &[
                "link",
                "add",
                &sites.a.veth,
                "netns",
                &sites.a.netns,
                "type",
                "veth",
                "peer",
                "name",
                &sites.b.veth,
                "netns",
                &sites.b.netns,
            ],
        )?;
        for site in [&sites.a, &sites.b] {
            let ns = site.netns.as_str();
            run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{}/24", site.ip),
                    "dev",
                    &site.veth,
                ],
            )?;
            run("ip", &["-n", ns, "link", "set", &site.veth, "up"])?;
        }
        Ok(sites)
    }

    /// Drops every packet between the sites (both ways), or lets them through again.
    pub fn black_hole(&self, on: bool) -> anyhow::Result<()> {
        let action = if on { "-I" } else { "-D" };
        for site in [&self.a, &self.b] {
            site.iptables(&[action, "INPUT", "-i", &site.veth, "-j", "DROP"])?;
            site.iptables(&[action, "OUTPUT", "-o", &site.veth, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Drops each packet arriving at either site with probability `share` (so both directions
    /// lose about that share), or stops doing so.
    pub fn lossy(&self, share: f64, on: bool) -> anyhow::Result<()> {
        let action = if on { "-I" } else { "-D" };
        let share = format!("{share}");
        for site in [&self.a, &self.b] {
            site.iptables(&[
                action,
                "INPUT",
                "-i",
                &site.veth,
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &share,
                "-j",
                "DROP",
            ])?;
        }
        Ok(())
    }
}

impl TwoSites {
    /// Caps what site a sends to site b at `kbit` kbit/s (a token bucket filter on a's end of
    /// the veth, with 50 ms of queue: beyond that packets drop, as at a real bottleneck), or
    /// takes the cap off (`None`).
    pub fn cap_a_to_b(&self, kbit: Option<u32>) -> anyhow::Result<()> {
        let a = &self.a;
        match kbit {
            Some(kbit) => run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &a.netns,
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    &a.veth,
                    "root",
                    "tbf",
                    "rate",
                    &format!("{kbit}kbit"),
                    "burst",
                    "16kb",
                    "latency",
                    "50ms",
                ],
            ),
            None => run(
                "ip",
                &[
                    "netns", "exec", &a.netns, "tc", "qdisc", "del", "dev", &a.veth, "root",
                ],
            ),
        }
    }

    /// From site b, only TCP to `port` reaches site a; everything else b sends is dropped.
    pub fn only_port_from_b_to_a(&self, port: &str) -> anyhow::Result<()> {
        let b = &self.b;
        b.iptables(&[
            "-A", "OUTPUT", "-o", &b.veth, "-p", "tcp", "--dport", port, "-j", "ACCEPT",
        ])?;
        b.iptables(&["-A", "OUTPUT", "-o", &b.veth, "-j", "DROP"])
    }
}

impl Drop for TwoSites {
    fn drop(&mut self) {
        for site in [&self.a, &self.b] {
            let _ = run("ip", &["netns", "del", &site.netns]);
        }
    }
}
