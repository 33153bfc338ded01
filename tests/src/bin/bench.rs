//! `make bench`: throughput of real `smvs-directory` processes, for SQLite and PostgreSQL.
//!
//! Measured per backend, each against a fresh directory with its rate limits raised out of the
//! way:
//! - registrations/s over 64 connections (signed requests built before the clock starts);
//! - look-ups/s, by the load generator `smvs-bench-lookups` run as a child process (so that
//!   its CPU is counted apart and it can be pinned), closed-loop and open-loop, with the
//!   directory's CPU and the client's beside every figure; on SQLite with the answer cache on
//!   and off, and once with the directory in a network namespace of its own; on PostgreSQL
//!   with 1, 2 and 4 directory processes sharing the database, then (when `make bench`'s
//!   `scripts/with-postgres.sh --replica` started a streaming read replica) 1, 2 and 4
//!   processes reading look-ups from the replica (`--db-replica`), the primary taking writes;
//!   `pg%` then counts the replica's PostgreSQL processes too;
//! - the time of a `challenge` for a registered and for an unknown username of the same length.
//!
//! "Pinned" runs split the two cores: the client on CPU 0 (`taskset -c 0`), every directory
//! process on CPU 1 (`taskset -a -p -c 1`); PostgreSQL is not pinned. Prints the machine it
//! ran on, tables, and one JSON line per measurement (prefixed `json `).
//!
//! `SMVS_BENCH_BACKENDS=postgres` measures PostgreSQL alone (default: `sqlite,postgres`).

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use smvs_crypto::SigningPublicKey;
use smvs_directory::{DirectoryClient, Registration};
use smvs_schema::Username;
use smvs_tests::measure::{mix, process_ticks};
use smvs_tests::{Backend, DirectoryProcess, TestUser};

/// Concurrent connections of the "many" measurements.
const CONNECTIONS: usize = 64;
const REGISTRATIONS: usize = 2_000;
/// Seconds each look-up run is measured (after a second of warm-up).
const LOAD_SECONDS: &str = "5";
/// One answer in this many is checked in full by the load generator (signatures, proof).
const CHECK_EVERY: &str = "100";
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

/// Everything measured on one backend.
async fn bench_backend(
    backend: Backend,
    label: &'static str,
) -> anyhow::Result<(Vec<Measurement>, Vec<LoadRun>)> {
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

    let seed = u64::from_le_bytes(smvs_crypto::random_array::<8>());
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

    // Look-ups, by the load generator (see `lookup_runs`).
    let users = REGISTRATIONS + WARMUP;
    let runs = match backend {
        Backend::Sqlite => sqlite_lookups(directory, users).await?,
        Backend::Postgres => postgres_lookups(directory, users).await?,
    };
    Ok((results, runs))
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
        "client and server share this machine: registrations and challenges come from this \
         process (one thread), look-ups from the load generator smvs-bench-lookups; the \
         directory runs {cores} worker threads (one per core) plus its storage thread"
    );
    println!("json {}", serde_json::json!({ "machine": machine }));

    let backends =
        std::env::var("SMVS_BENCH_BACKENDS").unwrap_or_else(|_| "sqlite,postgres".into());
    let wanted = |b: &str| backends.split(',').any(|w| w.trim() == b);
    let (mut all, mut runs) = if wanted("sqlite") {
        bench_backend(Backend::Sqlite, "sqlite").await?
    } else {
        (Vec::new(), Vec::new())
    };
    match std::env::var(smvs_tests::postgres::URL_VAR) {
        Ok(_) if !wanted("postgres") => {}
        Ok(url) => {
            match postgres_settings(&url).await {
                Ok(s) => println!("\npostgresql: {s}"),
                Err(e) => println!("\npostgresql: settings unknown ({e:#})"),
            }
            let (more, more_runs) = bench_backend(Backend::Postgres, "postgres").await?;
            all.extend(more);
            runs.extend(more_runs);
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
    print_load_runs(&runs);
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
    for r in &runs {
        println!("json {}", r.json());
    }
    Ok(())
}

/// One run of the load generator, with both sides' CPU over its measured window.
struct LoadRun {
    backend: &'static str,
    /// What differs between runs of one backend (cache, pinning, namespace).
    setup: String,
    processes: usize,
    /// "closed" (one in flight per connection) or "open N/s".
    mode: String,
    connections: usize,
    client_threads: usize,
    answers: u64,
    failures: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// Mean bytes of an answer's record and proof.
    answer_bytes: u64,
    /// In % of one core.
    client_pct: f64,
    directory_pct: f64,
    postgres_pct: Option<f64>,
    /// The whole machine, 100% = every core.
    machine_pct: f64,
}

impl LoadRun {
    fn per_second(&self) -> f64 {
        self.answers as f64 / self.seconds.max(f64::MIN_POSITIVE)
    }

    /// Directory CPU per answer, in µs: what decides a box's capacity, whoever the client is.
    fn directory_us(&self) -> f64 {
        self.directory_pct / 100.0 * self.seconds / (self.answers.max(1) as f64) * 1e6
    }

    fn client_us(&self) -> f64 {
        self.client_pct / 100.0 * self.seconds / (self.answers.max(1) as f64) * 1e6
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "bench": "smvs-directory-lookups",
            "backend": self.backend,
            "setup": self.setup,
            "processes": self.processes,
            "mode": self.mode,
            "connections": self.connections,
            "client_threads": self.client_threads,
            "answers": self.answers,
            "failures": self.failures,
            "seconds": round3(self.seconds),
            "ops_per_sec": round3(self.per_second()),
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "p999_ms": self.p999_ms,
            "mean_answer_bytes": self.answer_bytes,
            "client_cpu_pct": round3(self.client_pct),
            "directory_cpu_pct": round3(self.directory_pct),
            "postgres_cpu_pct": self.postgres_pct.map(round3),
            "machine_busy_pct": round3(self.machine_pct),
            "directory_us_per_lookup": round3(self.directory_us()),
            "client_us_per_lookup": round3(self.client_us()),
        })
    }
}

/// How one load run is set up.
struct LoadPlan<'a> {
    backend: &'static str,
    setup: String,
    /// Directory processes: their addresses (connections are spread over them) and pids.
    addrs: Vec<String>,
    pids: Vec<u32>,
    key: SigningPublicKey,
    users: usize,
    threads: usize,
    connections: usize,
    /// 0: closed loop.
    rate: u64,
    /// Run the client on CPU 0 (the directories were put on CPU 1).
    pinned: bool,
    /// Run the client in this network namespace.
    netns: Option<&'a str>,
}

/// The pids of PostgreSQL's processes (the throw-away server and its backends).
fn postgres_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .collect()
}

/// CPU ticks of these processes (all their threads), summed.
fn ticks_of(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| process_ticks(&p.to_string()))
        .sum()
}

/// Lets every thread of each process run only on `cpus` (a taskset list, `1` or `0-1`).
fn pin(pids: &[u32], cpus: &str) -> anyhow::Result<()> {
    for pid in pids {
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", cpus, &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .context("running taskset (util-linux)")?;
        if !status.success() {
            bail!("taskset could not put process {pid} on CPUs {cpus}");
        }
    }
    Ok(())
}

/// Puts every thread of each process on CPU 1.
fn pin_to_cpu1(pids: &[u32]) -> anyhow::Result<()> {
    pin(pids, "1")
}

/// Lets each process run on every CPU again.
fn unpin(pids: &[u32]) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    pin(pids, &format!("0-{}", cores - 1))
}

/// The load generator's command line, behind `ip netns exec` and `taskset` as planned.
fn load_command(plan: &LoadPlan<'_>, args: &[String]) -> anyhow::Result<Command> {
    let generator = smvs_tests::daemon::binary("smvs-bench-lookups")?;
    let mut line: Vec<String> = Vec::new();
    if let Some(ns) = plan.netns {
        line.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    if plan.pinned {
        line.extend(["taskset", "-c", "0"].map(String::from));
    }
    line.push(generator.display().to_string());
    line.extend(args.iter().cloned());
    let mut command = Command::new(&line[0]);
    command.args(&line[1..]);
    Ok(command)
}

/// Runs `register` or `warm` of the load generator against `addr` and returns how long it
/// took.
fn each_user(plan: &LoadPlan<'_>, what: &str, addr: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let status = load_command(
        plan,
        &[
            what.into(),
            addr.into(),
            plan.key.to_hex(),
            plan.users.to_string(),
        ],
    )?
    .stdout(std::process::Stdio::null())
    .status()?;
    if !status.success() {
        bail!("smvs-bench-lookups {what} failed ({status})");
    }
    Ok(t.elapsed())
}

/// Looks every user up once at each directory process, so that each has made (and kept)
/// every answer before the timed runs, and says how long the first answers took (the
/// first process's: the others may find the key log's nodes in the database's cache).
fn warm(plan: &LoadPlan<'_>) -> anyhow::Result<()> {
    let took = each_user(plan, "warm", &plan.addrs[0])?;
    for addr in &plan.addrs[1..] {
        each_user(plan, "warm", addr)?;
    }
    println!(
        "[{}] {}: first look-up of each of {} users, answers made: {:.1} s, {:.0}/s (32 \
         connections, not pinned)",
        plan.backend,
        plan.setup,
        plan.users,
        took.as_secs_f64(),
        plan.users as f64 / took.as_secs_f64().max(f64::MIN_POSITIVE)
    );
    Ok(())
}

/// Runs the load generator once and reads both sides' CPU over its measured window.
fn load_run(plan: &LoadPlan<'_>) -> anyhow::Result<LoadRun> {
    use std::io::BufRead;
    let args: Vec<String> = vec![
        "load".into(),
        plan.addrs.join(","),
        plan.key.to_hex(),
        plan.users.to_string(),
        plan.threads.to_string(),
        plan.connections.to_string(),
        LOAD_SECONDS.into(),
        plan.rate.to_string(),
        CHECK_EVERY.into(),
    ];
    let mut child = load_command(plan, &args)?
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting smvs-bench-lookups")?;
    let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let tps = ticks_per_second();
    let postgres = if plan.backend == "postgres" {
        postgres_pids()
    } else {
        Vec::new()
    };
    let snapshot = || {
        (
            Instant::now(),
            ticks_of(&plan.pids),
            ticks_of(&postgres),
            machine_ticks(),
        )
    };
    let mut window = (None, None);
    let mut result = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        match line.as_str() {
            "measuring" => window.0 = Some(snapshot()),
            "measured" => window.1 = Some(snapshot()),
            json => result = Some(serde_json::from_str::<serde_json::Value>(json)?),
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("smvs-bench-lookups failed ({status})");
    }
    let (Some(start), Some(end), Some(r)) = (window.0, window.1, result) else {
        bail!("smvs-bench-lookups said too little");
    };
    let wall = (end.0 - start.0).as_secs_f64().max(f64::MIN_POSITIVE);
    let pct = |a: u64, b: u64| a.saturating_sub(b) as f64 / tps / wall * 100.0;
    let machine_pct = match (start.3, end.3) {
        (Some((b0, t0)), Some((b1, t1))) => {
            b1.saturating_sub(b0) as f64 / t1.saturating_sub(t0).max(1) as f64 * 100.0
        }
        _ => 0.0,
    };
    let number = |k: &str| r[k].as_f64().unwrap_or(0.0);
    let seconds = number("seconds");
    let run = LoadRun {
        backend: plan.backend,
        setup: plan.setup.clone(),
        processes: plan.pids.len(),
        mode: if plan.rate == 0 {
            "closed".into()
        } else {
            format!("open {}/s", plan.rate)
        },
        connections: plan.connections,
        client_threads: plan.threads,
        answers: r["answers"].as_u64().unwrap_or(0),
        failures: r["failures"].as_u64().unwrap_or(0),
        seconds,
        p50_ms: number("p50_ms"),
        p99_ms: number("p99_ms"),
        p999_ms: number("p999_ms"),
        answer_bytes: r["mean_answer_bytes"].as_u64().unwrap_or(0),
        client_pct: number("cpu_seconds") / seconds.max(f64::MIN_POSITIVE) * 100.0,
        directory_pct: pct(end.1, start.1),
        postgres_pct: (!postgres.is_empty()).then(|| pct(end.2, start.2)),
        machine_pct,
    };
    if run.failures > 0 {
        bail!(
            "[{}] {} look-ups failed, the first: {}",
            plan.setup,
            run.failures,
            r["first_failure"].as_str().unwrap_or("?")
        );
    }
    println!(
        "[{}] {} {}: {:.0} look-ups/s, p50 {:.3} ms, p99 {:.3} ms, client {:.0}%, directory {:.0}%",
        run.backend,
        run.setup,
        run.mode,
        run.per_second(),
        run.p50_ms,
        run.p99_ms,
        run.client_pct,
        run.directory_pct
    );
    Ok(run)
}

/// The closed-loop runs every setup gets: one connection (latency without load), then 64
/// connections with the cores split (client CPU 0, directory CPU 1) and unsplit (the client
/// with two threads). Pins and unpins `pids`.
fn closed_runs(
    backend: &'static str,
    setup: &str,
    addrs: Vec<String>,
    pids: Vec<u32>,
    key: SigningPublicKey,
    users: usize,
) -> anyhow::Result<Vec<LoadRun>> {
    let plan = |setup: String, threads, connections, pinned| LoadPlan {
        backend,
        setup,
        addrs: addrs.clone(),
        pids: pids.clone(),
        key,
        users,
        threads,
        connections,
        rate: 0,
        pinned,
        netns: None,
    };
    let mut runs = Vec::new();
    warm(&plan(setup.to_owned(), 1, 1, false))?;
    pin_to_cpu1(&pids)?;
    runs.push(load_run(&plan(format!("{setup}, pinned"), 1, 1, true))?);
    runs.push(load_run(&plan(
        format!("{setup}, pinned"),
        1,
        CONNECTIONS,
        true,
    ))?);
    unpin(&pids)?;
    runs.push(load_run(&plan(
        format!("{setup}, unpinned"),
        2,
        CONNECTIONS,
        false,
    ))?);
    Ok(runs)
}

/// SQLite: the answer cache on (closed, then open-loop at half and four fifths of the closed
/// rate), the cache off, and the directory in a network namespace of its own.
async fn sqlite_lookups(directory: DirectoryProcess, users: usize) -> anyhow::Result<Vec<LoadRun>> {
    let pid = directory
        .daemon
        .pid()
        .ok_or_else(|| anyhow!("no directory pid"))?;
    let addrs = vec![directory.addr.to_string()];
    let key = directory.key;
    let mut runs = closed_runs(
        "sqlite",
        "answer cache",
        addrs.clone(),
        vec![pid],
        key,
        users,
    )?;
    let saturated = runs[1].per_second();
    pin_to_cpu1(&[pid])?;
    for share in [0.5, 0.8] {
        runs.push(load_run(&LoadPlan {
            backend: "sqlite",
            setup: "answer cache, pinned".into(),
            addrs: addrs.clone(),
            pids: vec![pid],
            key,
            users,
            threads: 1,
            connections: CONNECTIONS,
            rate: (saturated * share) as u64,
            pinned: true,
            netns: None,
        })?);
    }
    // The same database without the cache: every look-up reads the store and makes its proof.
    let DirectoryProcess {
        daemon, dir, db, ..
    } = directory;
    let status = daemon.stop()?;
    if !status.success() {
        bail!("[sqlite] directory did not exit cleanly ({status})");
    }
    let mut flags = DIRECTORY_FLAGS.to_vec();
    flags.extend(["--answer-cache-mib", "0"]);
    let uncached = DirectoryProcess::start_with(dir, db, &flags)?;
    let pid = uncached
        .daemon
        .pid()
        .ok_or_else(|| anyhow!("no directory pid"))?;
    runs.extend(closed_runs(
        "sqlite",
        "no answer cache",
        vec![uncached.addr.to_string()],
        vec![pid],
        key,
        users,
    )?);
    uncached.daemon.stop()?;

    // A directory in a namespace of its own, the client in another, joined by a veth pair: the
    // same path as between machines, without loopback's shortcuts.
    let sites = smvs_tests::netns::TwoSites::new()?;
    let remote = DirectoryProcess::start_in(&sites.a, DIRECTORY_FLAGS)?;
    let pid = remote
        .daemon
        .pid()
        .ok_or_else(|| anyhow!("no directory pid"))?;
    let plan = LoadPlan {
        backend: "sqlite",
        setup: "answer cache, pinned, network namespace".into(),
        addrs: vec![remote.addr.to_string()],
        pids: vec![pid],
        key: remote.key,
        users,
        threads: 1,
        connections: CONNECTIONS,
        rate: 0,
        pinned: true,
        netns: Some(&sites.b.netns),
    };
    each_user(&plan, "register", &plan.addrs[0])?;
    warm(&plan)?;
    pin_to_cpu1(&[pid])?;
    runs.push(load_run(&plan)?);
    remote.daemon.stop()?;
    Ok(runs)
}

/// PostgreSQL: 1, 2 and 4 directory processes sharing the database (and the key file).
async fn postgres_lookups(first: DirectoryProcess, users: usize) -> anyhow::Result<Vec<LoadRun>> {
    let db = first.db.clone();
    let key = first.key;
    // The key file outlives the first process's directory, which goes with it.
    let kept = tempfile::Builder::new().prefix("smvs-dir-key-").tempdir()?;
    let key_file = kept.path().join("directory.key");
    std::fs::copy(&first.key_file, &key_file)?;
    let group = ProcessGroup {
        db: &db,
        key_file: &key_file,
        key,
        users,
    };
    let mut runs = group.runs(vec![first], DIRECTORY_FLAGS, "")?;
    let Some(replica) = smvs_tests::postgres::replica_of(&db) else {
        println!(
            "\n[postgres] replica runs SKIPPED because {} is not set (`make bench` starts a \
             streaming read replica with scripts/with-postgres.sh --replica)",
            smvs_tests::postgres::REPLICA_URL_VAR
        );
        return Ok(runs);
    };
    // The same database and users, the look-ups read from the replica once it has replayed
    // every registration.
    smvs_tests::postgres::wait_replayed(&db, &replica, Duration::from_secs(300)).await?;
    let mut flags = DIRECTORY_FLAGS.to_vec();
    flags.extend(["--db-replica", replica.as_str()]);
    runs.extend(group.runs(Vec::new(), &flags, ", read replica")?);
    Ok(runs)
}

/// Directory processes sharing one PostgreSQL database and key, run with 1, 2 and 4 of them.
struct ProcessGroup<'a> {
    db: &'a str,
    key_file: &'a std::path::Path,
    key: SigningPublicKey,
    users: usize,
}

impl ProcessGroup<'_> {
    /// Starts processes with `flags` beside `processes` up to 1, 2 and 4, measures each count
    /// (rows named "N processes" and `label`), then stops them all.
    fn runs(
        &self,
        mut processes: Vec<DirectoryProcess>,
        flags: &[&str],
        label: &str,
    ) -> anyhow::Result<Vec<LoadRun>> {
        let mut runs = Vec::new();
        for count in [1usize, 2, 4] {
            while processes.len() < count {
                let dir = tempfile::Builder::new().prefix("smvs-dir-").tempdir()?;
                std::fs::copy(self.key_file, dir.path().join("directory.key"))?;
                processes.push(DirectoryProcess::start_with(
                    dir,
                    self.db.to_owned(),
                    flags,
                )?);
            }
            let addrs = processes.iter().map(|p| p.addr.to_string()).collect();
            let pids = processes
                .iter()
                .map(|p| p.daemon.pid().ok_or_else(|| anyhow!("no directory pid")))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let plural = if count == 1 { "" } else { "es" };
            let mut more = closed_runs(
                "postgres",
                &format!("{count} process{plural}{label}"),
                addrs,
                pids,
                self.key,
                self.users,
            )?;
            if count > 1 {
                // The one-connection run is the same whatever the count.
                more.remove(0);
            }
            runs.extend(more);
        }
        for p in processes {
            p.daemon.stop()?;
        }
        Ok(runs)
    }
}

fn print_load_runs(runs: &[LoadRun]) {
    println!(
        "\nlook-ups (smvs-bench-lookups, {LOAD_SECONDS} s each after 1 s of warm-up; 1 answer in \
         {CHECK_EVERY} checked in full by the client)"
    );
    println!(
        "{:<9} {:<40} {:>3} {:>11} {:>5} {:>3} {:>8} {:>8} {:>8} {:>8} {:>7} {:>6} {:>5} {:>6} {:>8}",
        "backend",
        "setup",
        "dir",
        "mode",
        "conns",
        "thr",
        "ops/s",
        "p50 ms",
        "p99 ms",
        "p999 ms",
        "client%",
        "dir%",
        "pg%",
        "busy%",
        "dir µs/op"
    );
    for r in runs {
        println!(
            "{:<9} {:<40} {:>3} {:>11} {:>5} {:>3} {:>8.0} {:>8.3} {:>8.3} {:>8.3} {:>7.0} {:>6.0} {:>5} {:>6.0} {:>8.1}",
            r.backend,
            r.setup,
            r.processes,
            r.mode,
            r.connections,
            r.client_threads,
            r.per_second(),
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.client_pct,
            r.directory_pct,
            pct(r.postgres_pct),
            r.machine_pct,
            r.directory_us(),
        );
    }
    println!(
        "client%/dir%/pg%: CPU of the load generator / of the directory processes / of \
         PostgreSQL, in % of one core; busy%: the whole machine; dir µs/op: directory CPU per \
         answer"
    );
}
