//! `make bench`, hosting density: how many users' hosts one machine holds.
//!
//! For each N (default 50, 200 and 500; `SMVS_BENCH_DENSITY=50,200`), N hosts run as real
//! release processes (smvs-keyguard + smvsd each, their peer, device and call ports on an
//! address of their own in 127.81.0.0/16), registered at one SQLite directory. After they
//! settle, an idle window measures, per host (smvsd and its key guard together):
//! - resident memory: RSS, and PSS (shared pages split among the processes that share them,
//!   the figure that adds up to what the machine spends);
//! - wake-ups: context switches per second over all threads (each is a thread that ran after
//!   sleeping or was preempted: what keeps a core out of idle);
//! - CPU: user + system time over the window, as a share of one core.
//!
//! Then messages across random pairs of hosted users, through each sender's local socket:
//! throughput with many in flight until every sender's outbox is empty, and latency with one
//! message in flight until its `delivered` event (p50, p99). Twice over the same pairs: first
//! contact (a directory look-up with its key-log proof and a session handshake for nearly
//! every pair, as N grows), then the same pairs again (sessions made, records cached).

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use smvs_schema::Username;
use smvs_tests::conversation::until_delivered;
use smvs_tests::{Backend, DirectoryProcess, HostProcess};
use smvsctl::client::HostClient;

/// The idle window measured.
const IDLE_WINDOW: Duration = Duration::from_secs(30);
/// Left to settle after the last host registered (first look-ups, renewal checks at start).
const SETTLE: Duration = Duration::from_secs(10);
const MESSAGES: usize = 2_000;
const IN_FLIGHT: usize = 128;
const LATENCY_MESSAGES: usize = 300;

fn sizes() -> Vec<usize> {
    std::env::var("SMVS_BENCH_DENSITY")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| vec![50, 200, 500])
}

/// A small deterministic generator (xorshift64*): the same pairs on every run.
struct Pairs(u64);

impl Pairs {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }

    /// Two different hosts.
    fn pair(&mut self, n: usize) -> (usize, usize) {
        let a = self.next(n);
        let b = (a + 1 + self.next(n - 1)) % n;
        (a, b)
    }
}

/// What /proc says of one process now.
#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    rss_kib: u64,
    pss_kib: u64,
    /// utime + stime, in clock ticks.
    cpu_ticks: u64,
    /// Voluntary and involuntary context switches, summed over the threads.
    switches: u64,
    threads: u64,
}

fn field_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

fn sample(pid: u32) -> anyhow::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("process {pid} is gone"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) begin after the last ')'.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat; `after` starts at field 3.
    let ticks = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let mut switches = 0;
    let mut threads = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(text) = std::fs::read_to_string(task?.path().join("status")) else {
            continue;
        };
        threads += 1;
        switches += field_kib(&text, "voluntary_ctxt_switches:")
            + field_kib(&text, "nonvoluntary_ctxt_switches:");
    }
    Ok(Sample {
        rss_kib: field_kib(&status, "VmRSS:"),
        pss_kib: field_kib(&rollup, "Pss:"),
        cpu_ticks: ticks(14) + ticks(15),
        switches,
        threads,
    })
}

fn pids(host: &HostProcess) -> anyhow::Result<[u32; 2]> {
    Ok([
        host.pid().context("smvsd is not running")?,
        host.keyguard
            .daemon
            .pid()
            .context("the key guard is not running")?,
    ])
}

fn ip(i: usize) -> String {
    format!("127.81.{}.{}", i / 200, 10 + i % 200)
}

fn mem_available_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .map(|m| field_kib(&m, "MemAvailable:") / 1024)
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: usize) -> f64 {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    println!(
        "SMVS hosting density: N idle hosts (smvs-keyguard + smvsd each, release build) on {} cores, {} MiB available before",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        mem_available_mib()
    );
    println!("| N | start s | RSS MiB/host | PSS MiB/host | threads/host | wake-ups/s/host | idle CPU % of a core (all N) | first contact msgs/s | p50 ms | p99 ms | same pairs again msgs/s | p50 ms | p99 ms | MiB available |");
    println!("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (round, n) in sizes().into_iter().enumerate() {
        if n < 2 {
            bail!("N must be at least 2");
        }
        local.block_on(&runtime, run(round, n))?;
    }
    Ok(())
}

async fn run(round: usize, n: usize) -> anyhow::Result<()> {
    // Every host reaches the directory from 127.0.0.1, as a hosting box's hosts come from its
    // one address: the per-address limits are raised, as such a directory's must be.
    let directory = DirectoryProcess::start(
        Backend::Sqlite,
        &[
            "--registrations-per-hour",
            "1000000",
            "--rate-per-ip",
            "1000000",
        ],
    )
    .await?;
    let started = Instant::now();
    let mut hosts = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("d{round}u{i:04}");
        let host = HostProcess::start(&name, &directory, &ip(i), &[])
            .with_context(|| format!("starting host {i} of {n}"))?;
        host.register()
            .with_context(|| format!("registering host {i} of {n}"))?;
        hosts.push(host);
    }
    let start_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;

    // The idle window.
    let all: Vec<u32> = hosts
        .iter()
        .map(pids)
        .collect::<anyhow::Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    let before: Vec<Sample> = all.iter().map(|&p| sample(p)).collect::<Result<_, _>>()?;
    let t0 = Instant::now();
    tokio::time::sleep(IDLE_WINDOW).await;
    let after: Vec<Sample> = all.iter().map(|&p| sample(p)).collect::<Result<_, _>>()?;
    let window = t0.elapsed().as_secs_f64();
    // USER_HZ, the unit of /proc's times: 100 on every Linux architecture built here.
    let ticks_per_second = 100.0;
    let per_host =
        |f: &dyn Fn(&Sample) -> u64, s: &[Sample]| s.iter().map(f).sum::<u64>() as f64 / n as f64;
    let rss = per_host(&|s| s.rss_kib, &after) / 1024.0;
    let pss = per_host(&|s| s.pss_kib, &after) / 1024.0;
    let threads = per_host(&|s| s.threads, &after);
    let switches: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.switches.saturating_sub(b.switches))
        .sum();
    let ticks: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.cpu_ticks.saturating_sub(b.cpu_ticks))
        .sum();
    let wakeups = switches as f64 / window / n as f64;
    let cpu_percent = ticks as f64 / ticks_per_second / window * 100.0;

    // Messages across random pairs.
    let mut clients: Vec<Rc<HostClient>> = Vec::with_capacity(n);
    for host in &hosts {
        clients.push(Rc::new(smvsctl::client::connect(&host.socket).await?));
    }
    let names: Vec<Username> = hosts
        .iter()
        .map(|h| Username::parse(&h.name))
        .collect::<Result<_, _>>()?;
    let seed = 0x5eed_0000 + n as u64;
    let (first_rate, first) = traffic(&clients, &names, seed).await?;
    let (again_rate, again) = traffic(&clients, &names, seed).await?;
    println!(
        "| {n} | {start_secs:.0} | {rss:.1} | {pss:.1} | {threads:.1} | {wakeups:.2} | {cpu_percent:.2} | {first_rate:.0} | {:.1} | {:.1} | {again_rate:.0} | {:.1} | {:.1} | {} |",
        percentile(&first, 50),
        percentile(&first, 99),
        percentile(&again, 50),
        percentile(&again, 99),
        mem_available_mib()
    );
    drop(clients);
    drop(hosts);
    drop(directory);
    Ok(())
}

/// Messages between random pairs (the same pairs for the same seed): [`MESSAGES`] with many in
/// flight until every sender's outbox is empty (messages/s), then [`LATENCY_MESSAGES`] one at a
/// time until each one's `delivered` event (sorted latencies).
async fn traffic(
    clients: &[Rc<HostClient>],
    names: &[Username],
    seed: u64,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let n = clients.len();
    let mut pairs = Pairs(seed);
    let t = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    let mut senders = std::collections::BTreeSet::new();
    for i in 0..MESSAGES {
        let (a, b) = pairs.pair(n);
        senders.insert(a);
        let (client, to) = (clients[a].clone(), names[b].clone());
        pending.push_back(tokio::task::spawn_local(async move {
            client.send(&to, &format!("density {i}")).await
        }));
        if pending.len() >= IN_FLIGHT {
            if let Some(first) = pending.pop_front() {
                first.await??;
            }
        }
    }
    for p in pending {
        p.await??;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    for &a in &senders {
        while clients[a].status().await?.queued != 0 {
            if Instant::now() > deadline {
                bail!("the outboxes did not drain within 300 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let rate = MESSAGES as f64 / t.elapsed().as_secs_f64();

    let mut samples = Vec::with_capacity(LATENCY_MESSAGES);
    for i in 0..LATENCY_MESSAGES {
        let (a, b) = pairs.pair(n);
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let _subscription = clients[a].subscribe(tx).await?;
        let t0 = Instant::now();
        let id = clients[a].send(&names[b], &format!("latency {i}")).await?;
        until_delivered(&mut rx, &id).await?;
        samples.push(t0.elapsed());
    }
    samples.sort_unstable();
    Ok((rate, samples))
}
