//! `make bench`: throughput of a real `smvs-directory` process, for SQLite and PostgreSQL.
//!
//! Measured per backend, each against a fresh directory with its rate limits raised out of the
//! way:
//! - registrations/s over 64 connections (signed requests built before the clock starts);
//! - lookups/s over 1 connection (one request in flight) and over 64 connections (one in
//!   flight on each), with latency percentiles;
//! - the time of a `challenge` for a registered and for an unknown username of the same length.
//!
//! Prints the machine it ran on, a table, and one JSON line per measurement (prefixed `json `).
//! Client and server share this machine: the client is this one thread; the directory runs one
//! worker thread per core.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use smvs_directory::{DirectoryClient, Registration};
use smvs_schema::Username;
use smvs_tests::{Backend, DirectoryProcess, TestUser};

/// Concurrent connections of the "many" measurements.
const CONNECTIONS: usize = 64;
const REGISTRATIONS: usize = 2_000;
const LOOKUPS_ONE: usize = 5_000;
const LOOKUPS_MANY: usize = 40_000;
/// Challenges per kind (registered, unknown), interleaved.
const CHALLENGES: usize = 500;
/// Untimed requests before each timed run (connections, caches, page cache).
const WARMUP: usize = 200;

/// Limits far above anything this machine can reach, so they never refuse a request.
const DIRECTORY_FLAGS: &[&str] = &[
    "--rate-per-ip",
    "10000000",
    "--registrations-per-hour",
    "100000000",
    "--auth-per-minute",
    "10000000",
    "--max-connections",
    "10000",
];

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, bench())
}

/// One timed run.
struct Measurement {
    backend: &'static str,
    op: &'static str,
    connections: usize,
    ops: usize,
    elapsed: Duration,
    /// Per-request latency, sorted.
    latencies: Vec<Duration>,
    /// Where the CPU time went during the run (not for interleaved runs).
    cpu: Option<CpuUse>,
}

impl Measurement {
    fn per_second(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        percentile(&self.latencies, q).as_secs_f64() * 1e3
    }

    fn mean_ms(&self) -> f64 {
        mean(&self.latencies).as_secs_f64() * 1e3
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "bench": "smvs-directory",
            "backend": self.backend,
            "op": self.op,
            "connections": self.connections,
            "ops": self.ops,
            "seconds": round3(self.elapsed.as_secs_f64()),
            "ops_per_sec": round3(self.per_second()),
            "mean_ms": round3(self.mean_ms()),
            "p50_ms": round3(self.percentile_ms(0.50)),
            "p99_ms": round3(self.percentile_ms(0.99)),
            "client_cpu_pct": self.cpu.map(|c| round3(c.client_pct)),
            "directory_cpu_pct": self.cpu.map(|c| round3(c.server_pct)),
            "machine_busy_pct": self.cpu.map(|c| round3(c.machine_pct)),
        })
    }
}

/// CPU time over a run, in percent of one core (client, directory) and of the whole machine.
#[derive(Debug, Clone, Copy)]
struct CpuUse {
    client_pct: f64,
    server_pct: f64,
    machine_pct: f64,
}

/// Cumulative CPU counters: this process, the directory process (all its threads), and the
/// machine (busy, total), in clock ticks.
struct CpuSnapshot {
    at: Instant,
    client: Option<u64>,
    server: Option<u64>,
    machine: Option<(u64, u64)>,
}

fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4)?;
    let steal = v.get(7)?;
    Some((total - idle - steal, total))
}

impl CpuSnapshot {
    fn take(server_pid: Option<u32>) -> CpuSnapshot {
        CpuSnapshot {
            at: Instant::now(),
            client: process_ticks("self"),
            server: server_pid.and_then(|p| process_ticks(&p.to_string())),
            machine: machine_ticks(),
        }
    }

    fn since(&self, start: &CpuSnapshot, ticks_per_second: f64) -> Option<CpuUse> {
        let wall = (self.at - start.at).as_secs_f64().max(f64::MIN_POSITIVE);
        let pct = |a: u64, b: u64| (a.saturating_sub(b)) as f64 / ticks_per_second / wall * 100.0;
        let (busy, total) = self.machine?;
        let (busy0, total0) = start.machine?;
        Some(CpuUse {
            client_pct: pct(self.client?, start.client?),
            server_pct: pct(self.server?, start.server?),
            machine_pct: busy.saturating_sub(busy0) as f64
                / (total.saturating_sub(total0)).max(1) as f64
                * 100.0,
        })
    }
}

fn ticks_per_second() -> f64 {
    command_line("getconf", &["CLK_TCK"])
        .parse()
        .unwrap_or(100.0)
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |x| format!("{x:.0}"))
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn mean(values: &[Duration]) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    values.iter().sum::<Duration>() / u32::try_from(values.len()).unwrap_or(u32::MAX)
}

/// A cheap, well-mixed hash (splitmix64): which registered user the i-th lookup asks for.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn random_index(seed: u64, i: usize, n: usize) -> usize {
    (mix(seed ^ i as u64) % n.max(1) as u64) as usize
}

/// Runs `total` operations over `clients`, each client with one request in flight, and
/// returns the wall time and every request's latency. `op(client, i)` is the i-th operation.
async fn run<F, Fut>(
    clients: &[Rc<DirectoryClient>],
    total: usize,
    op: F,
) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn(Rc<DirectoryClient>, usize) -> Fut + Clone + 'static,
    Fut: Future<Output = anyhow::Result<()>> + 'static,
{
    let next = Rc::new(Cell::new(0usize));
    let failed = Rc::new(Cell::new(false));
    let latencies = Rc::new(RefCell::new(Vec::with_capacity(total)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(clients.len());
    for client in clients {
        let (client, next, failed, latencies, op) = (
            client.clone(),
            next.clone(),
            failed.clone(),
            latencies.clone(),
            op.clone(),
        );
        tasks.push(tokio::task::spawn_local(async move {
            loop {
                let i = next.get();
                if i >= total || failed.get() {
                    return Ok::<(), anyhow::Error>(());
                }
                next.set(i + 1);
                let t = Instant::now();
                if let Err(e) = op(client.clone(), i).await {
                    failed.set(true);
                    return Err(e.context(format!("operation {i}")));
                }
                latencies.borrow_mut().push(t.elapsed());
            }
        }));
    }
    let mut first_error = None;
    for task in tasks {
        if let Err(e) = task.await.map_err(anyhow::Error::from).and_then(|r| r) {
            first_error.get_or_insert(e);
        }
    }
    let elapsed = start.elapsed();
    if let Some(e) = first_error {
        return Err(e);
    }
    let mut latencies = latencies.take();
    if latencies.len() != total {
        bail!("{} of {total} operations completed", latencies.len());
    }
    latencies.sort_unstable();
    Ok((elapsed, latencies))
}

fn name(prefix: char, i: usize) -> anyhow::Result<Username> {
    Ok(Username::parse(&format!("{prefix}{i:06}"))?)
}

async fn lookups(
    clients: &[Rc<DirectoryClient>],
    names: &Rc<Vec<Username>>,
    total: usize,
    seed: u64,
) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let names = names.clone();
    run(clients, total, move |client, i| {
        let names = names.clone();
        async move {
            let name = names
                .get(random_index(seed, i, names.len()))
                .ok_or_else(|| anyhow!("no registered users"))?;
            let record = client.lookup(name).await?;
            if &record.user.username != name {
                bail!("asked for {name}, got {}", record.user.username);
            }
            Ok(())
        }
    })
    .await
}

/// Everything measured on one backend.
async fn bench_backend(backend: Backend, label: &'static str) -> anyhow::Result<Vec<Measurement>> {
    let directory = DirectoryProcess::start(backend, DIRECTORY_FLAGS)
        .await
        .with_context(|| format!("starting the {label} directory"))?;
    println!(
        "\n[{label}] directory pid {:?} on {}",
        directory.daemon.pid(),
        directory.addr
    );

    let mut clients = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        clients.push(Rc::new(directory.client().await?));
    }
    let one = clients
        .first()
        .cloned()
        .map(|c| vec![c])
        .ok_or_else(|| anyhow!("no client"))?;
    let mut results = Vec::new();
    let pid = directory.daemon.pid();
    let tps = ticks_per_second();

    // Registrations: keys generated and requests signed before the clock starts. A few extra
    // users warm up the connections and the database first.
    let t = Instant::now();
    let mut registrations = Vec::with_capacity(REGISTRATIONS + WARMUP);
    for i in 0..REGISTRATIONS + WARMUP {
        let user = TestUser::new(&format!("u{i:06}"), "127.0.0.1:7421")?;
        registrations.push(user.registration(&directory.key));
    }
    println!(
        "[{label}] {} registrations signed in {:.2} s (not timed)",
        registrations.len(),
        t.elapsed().as_secs_f64()
    );
    let warm: Rc<Vec<Registration>> = Rc::new(registrations.split_off(REGISTRATIONS));
    let registrations: Rc<Vec<Registration>> = Rc::new(registrations);
    let register = |regs: Rc<Vec<Registration>>| {
        move |client: Rc<DirectoryClient>, i: usize| {
            let regs = regs.clone();
            async move {
                let reg = regs.get(i).ok_or_else(|| anyhow!("no registration {i}"))?;
                let record = client.register(reg).await?;
                if record.user.username != reg.username {
                    bail!("registered {}, got {}", reg.username, record.user.username);
                }
                Ok(())
            }
        }
    };
    run(&clients, warm.len(), register(warm.clone())).await?;
    let before = CpuSnapshot::take(pid);
    let (elapsed, latencies) = run(&clients, REGISTRATIONS, register(registrations)).await?;
    let cpu = CpuSnapshot::take(pid).since(&before, tps);
    results.push(Measurement {
        backend: label,
        op: "register",
        connections: CONNECTIONS,
        ops: REGISTRATIONS,
        elapsed,
        latencies,
        cpu,
    });

    // Lookups of random registered users.
    let names: Rc<Vec<Username>> = Rc::new(
        (0..REGISTRATIONS + WARMUP)
            .map(|i| name('u', i))
            .collect::<anyhow::Result<_>>()?,
    );
    let seed = u64::from_le_bytes(smvs_crypto::random_array::<8>());
    lookups(&one, &names, WARMUP, seed ^ 1).await?;
    let before = CpuSnapshot::take(pid);
    let (elapsed, latencies) = lookups(&one, &names, LOOKUPS_ONE, seed ^ 2).await?;
    let cpu = CpuSnapshot::take(pid).since(&before, tps);
    results.push(Measurement {
        backend: label,
        op: "lookup",
        connections: 1,
        ops: LOOKUPS_ONE,
        elapsed,
        latencies,
        cpu,
    });
    lookups(&clients, &names, WARMUP * 4, seed ^ 3).await?;
    let before = CpuSnapshot::take(pid);
    let (elapsed, latencies) = lookups(&clients, &names, LOOKUPS_MANY, seed ^ 4).await?;
    let cpu = CpuSnapshot::take(pid).since(&before, tps);
    results.push(Measurement {
        backend: label,
        op: "lookup",
        connections: CONNECTIONS,
        ops: LOOKUPS_MANY,
        elapsed,
        latencies,
        cpu,
    });

    // Challenges over one connection, registered and unknown names alternating so that drift
    // affects both alike. Same length: "u000123" (registered) and "x000123" (never registered).
    let client = one.first().ok_or_else(|| anyhow!("no client"))?;
    let mut known = Vec::with_capacity(CHALLENGES);
    let mut unknown = Vec::with_capacity(CHALLENGES);
    let mut sizes = (0usize, 0usize);
    for i in 0..CHALLENGES + WARMUP / 4 {
        let k = name('u', random_index(seed ^ 5, i, REGISTRATIONS))?;
        let u = name('x', random_index(seed ^ 6, i, REGISTRATIONS))?;
        let t = Instant::now();
        let sealed_k = client.challenge(k.as_str()).await?;
        let time_k = t.elapsed();
        let t = Instant::now();
        let sealed_u = client.challenge(u.as_str()).await?;
        let time_u = t.elapsed();
        if i >= WARMUP / 4 {
            known.push(time_k);
            unknown.push(time_u);
            sizes = (sealed_k.len(), sealed_u.len());
        }
    }
    if sizes.0 != sizes.1 {
        println!(
            "[{label}] NOTE: sealed tokens differ in length: {} bytes (registered) vs {} (unknown)",
            sizes.0, sizes.1
        );
    }
    for (op, mut latencies) in [
        ("challenge_registered", known),
        ("challenge_unknown", unknown),
    ] {
        latencies.sort_unstable();
        results.push(Measurement {
            backend: label,
            op,
            connections: 1,
            ops: CHALLENGES,
            elapsed: latencies.iter().sum(),
            latencies,
            cpu: None,
        });
    }

    drop(one);
    drop(clients);
    let status = directory.daemon.stop()?;
    if !status.success() {
        bail!("[{label}] directory did not exit cleanly ({status})");
    }
    println!("[{label}] directory stopped ({status})");
    Ok(results)
}

/// The first line of a command's output, or "unknown".
fn command_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn proc_field(path: &str, key: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// What PostgreSQL was told about durability (with-postgres.sh runs a throw-away server).
async fn postgres_settings(url: &str) -> anyhow::Result<String> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    let driver = tokio::task::spawn_local(connection);
    let mut parts = Vec::new();
    for setting in ["server_version", "fsync", "synchronous_commit"] {
        let row = client.query_one(&format!("SHOW {setting}"), &[]).await?;
        parts.push(format!("{setting}={}", row.try_get::<_, String>(0)?));
    }
    drop(client);
    let _ = driver.await;
    Ok(parts.join(" "))
}

async fn bench() -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let machine = serde_json::json!({
        "nproc": cores,
        "cpu": proc_field("/proc/cpuinfo", "model name"),
        "memory": proc_field("/proc/meminfo", "MemTotal"),
        "kernel": command_line("uname", &["-r"]),
        "date": command_line("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "commit": command_line("git", &["describe", "--always", "--dirty"]),
        "loadavg_at_start": std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "unknown".into()),
    });
    println!("smvs-bench: directory throughput");
    println!(
        "machine: {cores} cores ({}), {} RAM, kernel {}, {}, commit {}, load average {}",
        machine["cpu"].as_str().unwrap_or_default(),
        machine["memory"].as_str().unwrap_or_default(),
        machine["kernel"].as_str().unwrap_or_default(),
        machine["date"].as_str().unwrap_or_default(),
        machine["commit"].as_str().unwrap_or_default(),
        machine["loadavg_at_start"].as_str().unwrap_or_default(),
    );
    println!(
        "client and server share this machine: the bench client is one thread, the directory \
         runs {cores} worker threads (one per core) plus its storage thread"
    );
    println!("json {}", serde_json::json!({ "machine": machine }));

    let mut all = bench_backend(Backend::Sqlite, "sqlite").await?;
    match std::env::var(smvs_tests::postgres::URL_VAR) {
        Ok(url) => {
            match postgres_settings(&url).await {
                Ok(s) => println!("\npostgresql: {s}"),
                Err(e) => println!("\npostgresql: settings unknown ({e:#})"),
            }
            all.extend(bench_backend(Backend::Postgres, "postgres").await?);
        }
        Err(_) => println!(
            "\npostgres: SKIPPED because {} is not set (`make bench` sets it by starting a \
             throw-away server with scripts/with-postgres.sh)",
            smvs_tests::postgres::URL_VAR
        ),
    }

    println!(
        "\n{:<9} {:<22} {:>5} {:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "backend",
        "operation",
        "conns",
        "ops",
        "seconds",
        "ops/s",
        "mean ms",
        "p50 ms",
        "p99 ms",
        "client%",
        "dir%",
        "busy%"
    );
    for m in &all {
        println!(
            "{:<9} {:<22} {:>5} {:>6} {:>8.2} {:>8.0} {:>8.3} {:>8.3} {:>8.3} {:>8} {:>8} {:>8}",
            m.backend,
            m.op,
            m.connections,
            m.ops,
            m.elapsed.as_secs_f64(),
            m.per_second(),
            m.mean_ms(),
            m.percentile_ms(0.50),
            m.percentile_ms(0.99),
            pct(m.cpu.map(|c| c.client_pct)),
            pct(m.cpu.map(|c| c.server_pct)),
            pct(m.cpu.map(|c| c.machine_pct)),
        );
    }
    println!(
        "client%/dir%: CPU of the bench client / of the directory process, in % of one core; \
         busy%: the whole machine ({cores} cores = 100%)"
    );
    println!("\nchallenge timing, registered vs unknown username (same length, 1 connection):");
    for backend in ["sqlite", "postgres"] {
        let find = |op: &str| all.iter().find(|m| m.backend == backend && m.op == op);
        if let (Some(k), Some(u)) = (find("challenge_registered"), find("challenge_unknown")) {
            let ratio = k.mean_ms() / u.mean_ms().max(f64::MIN_POSITIVE);
            println!(
                "  {backend:<9} registered mean {:.3} ms (p50 {:.3}), unknown mean {:.3} ms \
                 (p50 {:.3}), ratio registered/unknown {ratio:.2}",
                k.mean_ms(),
                k.percentile_ms(0.50),
                u.mean_ms(),
                u.percentile_ms(0.50),
            );
            println!(
                "json {}",
                serde_json::json!({
                    "bench": "smvs-directory",
                    "backend": backend,
                    "op": "challenge_ratio",
                    "registered_mean_ms": round3(k.mean_ms()),
                    "unknown_mean_ms": round3(u.mean_ms()),
                    "ratio": round3(ratio),
                })
            );
        }
    }
    println!();
    for m in &all {
        println!("json {}", m.json());
    }
    Ok(())
}
