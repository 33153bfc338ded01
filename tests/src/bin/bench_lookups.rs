//! `smvs-bench-lookups`: the directory load generator that `smvs-bench` (`make bench`) runs as a
//! child process, so that it can be pinned to a core of its own (`taskset`) or started in
//! another network namespace, and so that its CPU is counted apart from the directory's.
//!
//! ```text
//! smvs-bench-lookups register ADDR KEY COUNT
//! smvs-bench-lookups warm ADDR KEY COUNT
//! smvs-bench-lookups load ADDR[,ADDR…] KEY COUNT THREADS CONNECTIONS SECONDS RATE CHECK_EVERY
//! ```
//!
//! - `register` registers users `u000000` … (COUNT of them) over 32 connections; `warm` looks
//!   each of them up once (checked in full), so that the directory has made every answer.
//! - `load` looks up random registered users for SECONDS after one second of warm-up, from
//!   THREADS threads (each its own single-threaded runtime) over CONNECTIONS connections in
//!   all, spread over the addresses given (several directory processes). RATE 0 is closed-loop:
//!   each connection has one request in flight and sends the next when the answer comes. A
//!   positive RATE is open-loop: requests are sent on a fixed schedule whatever the answers do, pipelined
//!   on the connections, and each one's latency counts from when it was due (so a stall is not
//!   hidden by sending less). Every CHECK_EVERY-th answer is checked in full (signatures, the
//!   key-log proof) as a host checks it; the rest are only read.
//!
//! Prints `measuring` when the measured window begins, `measured` when it ends, then one JSON
//! line: answers due in the window, failures, seconds, latency percentiles, the mean size of
//! an answer's record and proof, and this process's CPU over the window.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use smvs_crypto::{AgreementKeyPair, SigningPublicKey};
use smvs_directory::DirectoryClient;
use smvs_schema::Username;
use smvs_tests::measure::{mix, process_ticks};
use smvs_tests::TestUser;

const WARMUP: Duration = Duration::from_secs(1);

fn main() -> anyhow::Result<()> {
    smvs_crypto::init()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["register", addr, key, count] => each_user(addr, &parse_key(key)?, count.parse()?, true),
        ["warm", addr, key, count] => each_user(addr, &parse_key(key)?, count.parse()?, false),
        ["load", addrs, key, count, threads, connections, seconds, rate, check_every] => {
            load(Load {
                addrs: addrs.split(',').map(str::to_owned).collect(),
                key: parse_key(key)?,
                count: count.parse()?,
                threads: threads.parse::<usize>()?.max(1),
                connections: connections.parse::<usize>()?.max(1),
                seconds: seconds.parse()?,
                rate: rate.parse()?,
                check_every: check_every.parse::<u64>()?.max(1),
            })
        }
        _ => bail!("usage: see the top of tests/src/bin/bench_lookups.rs"),
    }
}

fn parse_key(hex: &str) -> anyhow::Result<SigningPublicKey> {
    SigningPublicKey::from_hex(hex).map_err(|e| anyhow!("directory key: {e}"))
}

pub fn name(i: usize) -> anyhow::Result<Username> {
    Ok(Username::parse(&format!("u{i:06}"))?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn connect(addr: &str, key: SigningPublicKey) -> anyhow::Result<DirectoryClient> {
    let transport = AgreementKeyPair::generate()?;
    DirectoryClient::connect(addr, key, &transport)
        .await
        .with_context(|| format!("connecting to {addr}"))
}

/// Registers each user (`register`), or looks each one up (`warm`).
fn each_user(
    addr: &str,
    key: &SigningPublicKey,
    count: usize,
    register: bool,
) -> anyhow::Result<()> {
    let key = *key;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime()?, async move {
        let next = Rc::new(RefCell::new(0usize));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let client = connect(addr, key).await?;
            let next = next.clone();
            tasks.push(tokio::task::spawn_local(async move {
                loop {
                    let i = {
                        let mut n = next.borrow_mut();
                        *n += 1;
                        *n - 1
                    };
                    if i >= count {
                        return Ok::<(), anyhow::Error>(());
                    }
                    if register {
                        let user = TestUser::new(name(i)?.as_str(), "127.0.0.1:7421")?;
                        client
                            .register(&user.registration(&key))
                            .await
                            .with_context(|| format!("registering user {i}"))?;
                    } else {
                        client
                            .lookup(&name(i)?)
                            .await
                            .with_context(|| format!("looking up user {i}"))?;
                    }
                }
            }));
        }
        for task in tasks {
            task.await??;
        }
        println!("{}", serde_json::json!({ "users": count }));
        Ok(())
    })
}

struct Load {
    addrs: Vec<String>,
    key: SigningPublicKey,
    count: usize,
    threads: usize,
    connections: usize,
    seconds: f64,
    rate: f64,
    check_every: u64,
}

/// What one thread measured.
#[derive(Default)]
struct Tally {
    /// Latencies in µs of the answers received in the window.
    latencies: Vec<u32>,
    failures: u64,
    first_failure: Option<String>,
    checked: u64,
    /// Bytes of the record and proof of the unchecked answers, and how many there were.
    answer_bytes: u64,
    sized: u64,
}

/// The measured window, the same for every thread.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    end: Instant,
}

fn load(load: Load) -> anyhow::Result<()> {
    let load = Arc::new(load);
    // Everyone connects first; the window starts once all have.
    let ready = Arc::new(Barrier::new(load.threads + 1));
    let window: Arc<std::sync::OnceLock<Window>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..load.threads {
        let (load, ready, window, stop) =
            (load.clone(), ready.clone(), window.clone(), stop.clone());
        threads.push(std::thread::spawn(move || -> anyhow::Result<Tally> {
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime()?, run_thread(t, load, ready, window, stop))
        }));
    }
    ready.wait();
    let now = Instant::now();
    let w = Window {
        start: now + WARMUP,
        end: now + WARMUP + Duration::from_secs_f64(load.seconds),
    };
    let _ = window.set(w);
    std::thread::sleep(WARMUP);
    let cpu_start = cpu_seconds();
    println!("measuring");
    std::thread::sleep(w.end.saturating_duration_since(Instant::now()));
    let cpu = cpu_seconds() - cpu_start;
    let elapsed = Instant::now().duration_since(w.start);
    println!("measured");
    stop.store(true, Ordering::Release);
    let mut all = Tally::default();
    for thread in threads {
        let tally = thread
            .join()
            .map_err(|_| anyhow!("a load thread panicked"))??;
        all.latencies.extend(tally.latencies);
        all.failures += tally.failures;
        all.checked += tally.checked;
        all.answer_bytes += tally.answer_bytes;
        all.sized += tally.sized;
        if all.first_failure.is_none() {
            all.first_failure = tally.first_failure;
        }
    }
    all.latencies.sort_unstable();
    let pct = |q: f64| -> f64 {
        if all.latencies.is_empty() {
            return 0.0;
        }
        let i = ((all.latencies.len() - 1) as f64 * q).round() as usize;
        f64::from(all.latencies[i]) / 1e3
    };
    println!(
        "{}",
        serde_json::json!({
            "answers": all.latencies.len(),
            "failures": all.failures,
            "first_failure": all.first_failure,
            "checked": all.checked,
            "mean_answer_bytes": all.answer_bytes / all.sized.max(1),
            "seconds": elapsed.as_secs_f64(),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "p999_ms": pct(0.999),
            "max_ms": pct(1.0),
            "cpu_seconds": cpu,
        })
    );
    Ok(())
}

/// This process's user and system CPU so far, every thread.
fn cpu_seconds() -> f64 {
    // Linux's USER_HZ is 100 on every architecture this runs on.
    process_ticks("self").unwrap_or(0) as f64 / 100.0
}

async fn run_thread(
    index: usize,
    load: Arc<Load>,
    ready: Arc<Barrier>,
    window: Arc<std::sync::OnceLock<Window>>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Tally> {
    // This thread's share of the connections, spread over the addresses.
    let mine: Vec<usize> = (0..load.connections)
        .filter(|c| c % load.threads == index)
        .collect();
    let mut clients = Vec::with_capacity(mine.len());
    for c in &mine {
        let addr = &load.addrs[c % load.addrs.len()];
        clients.push(Rc::new(connect(addr, load.key).await?));
    }
    let names: Rc<Vec<Username>> = Rc::new((0..load.count).map(name).collect::<Result<_, _>>()?);
    // `Barrier::wait` blocks this thread, and nothing else runs on it yet.
    ready.wait();
    let window = loop {
        if let Some(w) = window.get() {
            break *w;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let tally = Rc::new(RefCell::new(Tally::default()));
    let seed = mix(index as u64 ^ u64::from_le_bytes(smvs_crypto::random_array::<8>()));
    let counter = Rc::new(std::cell::Cell::new(0u64));
    // One request: which name, checked or not, and its latency counted from `due`.
    let ask = {
        let (tally, names, counter) = (tally.clone(), names.clone(), counter.clone());
        let check_every = load.check_every;
        move |client: Rc<DirectoryClient>, due: Instant| {
            let (tally, names, counter) = (tally.clone(), names.clone(), counter.clone());
            async move {
                let n = counter.get();
                counter.set(n + 1);
                let name = &names[(mix(seed ^ n) % names.len() as u64) as usize];
                let result = if n % check_every == 0 {
                    match client.lookup(name).await {
                        Ok(record) if &record.user.username == name => Ok(None),
                        Ok(record) => {
                            Err(format!("asked for {name}, got {}", record.user.username))
                        }
                        Err(e) => Err(e.to_string()),
                    }
                } else {
                    match client.lookup_unchecked(name).await {
                        Ok(size) if size > 0 => Ok(Some(size)),
                        Ok(_) => Err(format!("no record for {name}")),
                        Err(e) => Err(e.to_string()),
                    }
                };
                let done = Instant::now();
                // Counted by when it was due: at overload a late answer is the point.
                if due < window.start || due >= window.end {
                    return;
                }
                let mut t = tally.borrow_mut();
                match result {
                    Ok(size) => {
                        match size {
                            None => t.checked += 1,
                            Some(size) => {
                                t.answer_bytes += size as u64;
                                t.sized += 1;
                            }
                        }
                        let us = done.duration_since(due).as_micros();
                        t.latencies.push(u32::try_from(us).unwrap_or(u32::MAX));
                    }
                    Err(e) => {
                        t.failures += 1;
                        t.first_failure.get_or_insert(e);
                    }
                }
            }
        }
    };
    let stopped = move || stop.load(Ordering::Acquire) || Instant::now() > window.end;
    if load.rate > 0.0 {
        // Open loop: this thread's share of the rate, round-robin over its connections.
        let interval = Duration::from_secs_f64(load.threads as f64 / load.rate);
        let begin = Instant::now();
        let mut sent = 0u64;
        let mut inflight = Vec::new();
        while !stopped() {
            let due = begin + interval.mul_f64(sent as f64);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            } else if sent % 16 == 0 {
                // Behind schedule: the requests already spawned must get to run (and be
                // sent) too, or a client that falls behind stops sending altogether.
                tokio::task::yield_now().await;
            }
            let client = clients[(sent as usize) % clients.len()].clone();
            inflight.push(tokio::task::spawn_local(ask(client, due)));
            sent += 1;
            if inflight.len() > 4096 {
                inflight.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
            }
        }
        // What is still owed, for a while: its latency is the point when the directory lags.
        let owed = async {
            for task in inflight.iter_mut() {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(10), owed)
            .await
            .is_err()
        {
            inflight.iter().for_each(|t| t.abort());
            tally.borrow_mut().failures += 1;
            tally
                .borrow_mut()
                .first_failure
                .get_or_insert_with(|| "answers still owed 10 s after the end".into());
        }
    } else {
        // Closed loop: one request in flight on each connection.
        let mut tasks = Vec::new();
        for client in clients {
            let ask = ask.clone();
            let stopped = stopped.clone();
            tasks.push(tokio::task::spawn_local(async move {
                while !stopped() {
                    ask(client.clone(), Instant::now()).await;
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }
    drop(ask);
    Ok(Rc::try_unwrap(tally)
        .map_err(|_| anyhow!("a request outlived its thread"))?
        .into_inner())
}
