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

/// How a home router's NAT maps a device's UDP port to its public one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// The same public port whatever the destination (Linux MASQUERADE keeps the port): what
    /// the host's STUN answer shows is what the peer can send to.
    EndpointIndependent,
    /// A fresh random public port for each destination (`MASQUERADE --random`): what the host's
    /// STUN answer shows is good for the host only.
    EndpointDependent,
}

/// Two homes behind NAT routers, and "the internet" between them, where the directory and both
/// users' hosts run.
///
/// ```text
///  home-a 192.168.1.2 ── nat-a 192.168.1.1 | 10.77.1.2 ──┐
///                                                        inet 10.77.1.1, 10.77.2.1, and on lo
///  home-b 192.168.2.2 ── nat-b 192.168.2.1 | 10.77.2.2 ──┘ 10.77.0.1 (alice's host, the
///                                                          directory), 10.77.0.2 (bob's host)
/// ```
///
/// The routers masquerade what leaves their WAN side and, like a home router, drop anything
/// unsolicited arriving there. The homes' private networks are not routed anywhere: the only
/// ways between the two devices are through both NATs (reflexive addresses, when the mapping
/// allows) or through the hosts.
pub struct NatSites {
    /// The devices' sites (their namespaces and addresses).
    pub home_a: Site,
    pub home_b: Site,
    /// Where alice's host (and the directory) and bob's host run: one namespace, two addresses.
    pub host_a: Site,
    pub host_b: Site,
    namespaces: Vec<String>,
}

impl NatSites {
    pub fn new(mapping: Mapping) -> anyhow::Result<NatSites> {
        if !nix::unistd::geteuid().is_root() {
            bail!("this test builds network namespaces and needs root (the suite runs as root)");
        }
        remove_stale();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let name = format!("{PREFIX}{pid}-n{n}");
        let short = format!("{}x{n}", pid % 1_000_000);
        let ns = |part: &str| format!("{name}-{part}");
        let sites = NatSites {
            home_a: Site {
                netns: ns("home-a"),
                ip: "192.168.1.2",
                veth: format!("h{short}a"),
            },
            home_b: Site {
                netns: ns("home-b"),
                ip: "192.168.2.2",
                veth: format!("h{short}b"),
            },
            host_a: Site {
                netns: ns("inet"),
                ip: "10.77.0.1",
                veth: "lo".into(),
            },
            host_b: Site {
                netns: ns("inet"),
                ip: "10.77.0.2",
                veth: "lo".into(),
            },
            namespaces: ["home-a", "home-b", "nat-a", "nat-b", "inet"]
                .iter()
                .map(|p| ns(p))
                .collect(),
        };
        for netns in &sites.namespaces {
            run("ip", &["netns", "add", netns])?;
            run("ip", &["-n", netns, "link", "set", "lo", "up"])?;
        }
        let inet = ns("inet");
        for ip in ["10.77.0.1/32", "10.77.0.2/32"] {
            run("ip", &["-n", &inet, "addr", "add", ip, "dev", "lo"])?;
        }
        sysctl_forward(&inet)?;
        for (side, home, lan) in [("a", &sites.home_a, "1"), ("b", &sites.home_b, "2")] {
            let nat = ns(&format!("nat-{side}"));
            let (nat_lan, nat_wan, inet_end) = (
                format!("l{short}{side}"),
                format!("w{short}{side}"),
                format!("i{short}{side}"),
            );
            link(&home.netns, &home.veth, &nat, &nat_lan)?;
            link(&nat, &nat_wan, &inet, &inet_end)?;
            address(&home.netns, &home.veth, &format!("192.168.{lan}.2/24"))?;
            address(&nat, &nat_lan, &format!("192.168.{lan}.1/24"))?;
            address(&nat, &nat_wan, &format!("10.77.{lan}.2/24"))?;
            address(&inet, &inet_end, &format!("10.77.{lan}.1/24"))?;
            run(
                "ip",
                &[
                    "-n",
                    &home.netns,
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("192.168.{lan}.1"),
                ],
            )?;
            run(
                "ip",
                &[
                    "-n",
                    &nat,
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("10.77.{lan}.1"),
                ],
            )?;
            sysctl_forward(&nat)?;
            let mut masquerade = vec![
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                nat_wan.as_str(),
                "-j",
                "MASQUERADE",
            ];
            if mapping == Mapping::EndpointDependent {
                masquerade.push("--random");
            }
            iptables(&nat, &masquerade)?;
            // A home router answers nothing unsolicited on its WAN side (and so makes no
            // connection-tracking entry for it, which would take the port a device's mapping
            // needs).
            iptables(
                &nat,
                &[
                    "-A",
                    "INPUT",
                    "-i",
                    &nat_wan,
                    "-m",
                    "conntrack",
                    "--ctstate",
                    "ESTABLISHED,RELATED",
                    "-j",
                    "ACCEPT",
                ],
            )?;
            iptables(&nat, &["-A", "INPUT", "-i", &nat_wan, "-j", "DROP"])?;
        }
        Ok(sites)
    }
}

impl NatSites {
    /// Drops everything "the internet" would forward between the two homes' NATs (both ways),
    /// or lets it through again: only the hosts stay reachable.
    pub fn cut_between_homes(&self, on: bool) -> anyhow::Result<()> {
        let action = if on { "-I" } else { "-D" };
        for (from, to) in [
            ("10.77.1.0/24", "10.77.2.0/24"),
            ("10.77.2.0/24", "10.77.1.0/24"),
        ] {
            iptables(
                &self.host_a.netns,
                &[action, "FORWARD", "-s", from, "-d", to, "-j", "DROP"],
            )?;
        }
        Ok(())
    }
}

impl Drop for NatSites {
    fn drop(&mut self) {
        for netns in &self.namespaces {
            let _ = run("ip", &["netns", "del", netns]);
        }
    }
}

fn sysctl_forward(netns: &str) -> anyhow::Result<()> {
    run(
        "ip",
        &[
            "netns",
            "exec",
            netns,
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
        ],
    )
}

fn iptables(netns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut all = vec!["netns", "exec", netns, "iptables", "-w"];
    all.extend_from_slice(args);
    run("ip", &all)
}

/// A veth pair from `a` (named `a_if`) to `b` (named `b_if`), both ends up.
fn link(a: &str, a_if: &str, b: &str, b_if: &str) -> anyhow::Result<()> {
    run(
        "ip",
        &[
            "link", "add", a_if, "netns", a, "type", "veth", "peer", "name", b_if, "netns", b,
        ],
    )?;
    run("ip", &["-n", a, "link", "set", a_if, "up"])?;
    run("ip", &["-n", b, "link", "set", b_if, "up"])
}

fn address(netns: &str, interface: &str, cidr: &str) -> anyhow::Result<()> {
    run("ip", &["-n", netns, "addr", "add", cidr, "dev", interface])
}

/// One IPv4 packet a capture saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub from: std::net::Ipv4Addr,
    pub to: std::net::Ipv4Addr,
    pub udp: bool,
    pub len: usize,
}

/// tcpdump on a site's link (its veth): every IPv4 packet in or out, until stopped.
pub struct Capture {
    child: std::process::Child,
}

impl Capture {
    pub fn start(site: &Site) -> anyhow::Result<Capture> {
        let child = Command::new("ip")
            .args(["netns", "exec", &site.netns, "tcpdump", "-i", &site.veth])
            .args(["-nn", "-l", "-q", "-t", "ip"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running tcpdump (is it installed? `make deps`)")?;
        let mut capture = Capture { child };
        // tcpdump says "listening on ..." on stderr once it captures.
        let stderr = capture.child.stderr.take().context("tcpdump's stderr")?;
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
        let mut said = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("listening on") => break,
                Some(Ok(line)) if said.len() < 5 => said.push(line),
                other => bail!("tcpdump did not start: {said:?} {other:?}"),
            }
        }
        // Keep reading its stderr (the counts it prints when stopped), so it never writes
        // into a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(capture)
    }

    /// Stops the capture; the packets it saw, in order.
    pub fn stop(self) -> anyhow::Result<Vec<Packet>> {
        // tcpdump flushes what it has on SIGINT.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let out = self.child.wait_with_output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(parse_tcpdump)
            .collect())
    }
}

/// `IP 192.168.1.2.40000 > 10.77.0.1.7423: UDP, length 120` (tcpdump -nn -q -t).
fn parse_tcpdump(line: &str) -> Option<Packet> {
    let rest = line.strip_prefix("IP ")?;
    let (from, rest) = rest.split_once(" > ")?;
    let (to, rest) = rest.split_once(": ")?;
    let ip = |endpoint: &str| -> Option<std::net::Ipv4Addr> {
        // a.b.c.d.port, or a.b.c.d for protocols without ports
        let parts: Vec<&str> = endpoint.split('.').collect();
        parts.get(..4)?.join(".").parse().ok()
    };
    let len = rest
        .rsplit_once("length ")
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or(0);
    Some(Packet {
        from: ip(from)?,
        to: ip(to)?,
        udp: rest.starts_with("UDP"),
        len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcpdump_lines_are_read() {
        let p = parse_tcpdump("IP 192.168.1.2.40000 > 10.77.0.1.7423: UDP, length 120").unwrap();
        assert_eq!(p.from.to_string(), "192.168.1.2");
        assert_eq!(p.to.to_string(), "10.77.0.1");
        assert!(p.udp);
        assert_eq!(p.len, 120);
        let t = parse_tcpdump("IP 192.168.1.2.5 > 10.77.0.1.7422: tcp 0").unwrap();
        assert!(!t.udp);
        assert!(parse_tcpdump("ARP, Request who-has").is_none());
    }
}
