//! `make bench`, part two: messages between two hosts on loopback, durable on both sides.
//!
//! A directory and two hosts (keyguard + smvsd each) run as real release processes. The bench
//! is a device of alice's host on its Unix socket, like smvsctl, and measures:
//! - throughput: N messages sent with many requests in flight, from the first send until
//!   alice's host holds a receipt for every one (bob's host stored each, alice's host recorded
//!   the receipt);
//! - latency: one message in flight, p50 and p99, two ways in the same loop: from the send
//!   until a device of bob's host (the bench again, on bob's socket) sees it arrive, the path
//!   the XMPP peer's figure measures (sender's client → server → recipient's client); and
//!   until alice's host announces its `delivered` status, the round trip back to the sender.
//!
//! Then it runs the XMPP peer (`shared/peers/prosody-bench.sh`, prosody with its SQLite
//! archive) in the same session and prints the ratio.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use smvs_schema::Username;
use smvs_tests::conversation::{send_many, until_delivered};
use smvs_tests::{count_from_env, Backend, DirectoryProcess, HostProcess};
use smvsctl::client::HostClient;

const THROUGHPUT_MESSAGES: usize = 20_000;
const IN_FLIGHT: usize = 2048;
const LATENCY_MESSAGES: usize = 2_000;
const WARMUP: usize = 200;

fn throughput_messages() -> usize {
    count_from_env("SMVS_BENCH_MESSAGES", THROUGHPUT_MESSAGES)
}

fn latency_messages() -> usize {
    count_from_env("SMVS_BENCH_LATENCY_MESSAGES", LATENCY_MESSAGES)
}

fn skip_peer() -> bool {
    std::env::var_os("SMVS_BENCH_NO_PEER").is_some()
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let directory = runtime.block_on(DirectoryProcess::start(Backend::Sqlite, &[]))?;
    // SMVS_BENCH_SESSION_VERSION=1 measures session v1 (static keys) for comparison.
    let version = std::env::var("SMVS_BENCH_SESSION_VERSION").unwrap_or_else(|_| "2".into());
    let flags = ["--max-session-version", version.as_str()];
    let alice = HostProcess::start("alice", &directory, "127.0.0.1", &flags)?;
    let bob = HostProcess::start("bob", &directory, "127.0.0.2", &flags)?;
    alice.register()?;
    bob.register()?;
    println!("SMVS messages: alice's host -> bob's host on loopback, release build, SQLite WAL synchronous=FULL on both hosts");
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        cpu_model()
    );

    let local = tokio::task::LocalSet::new();
    let m = local.block_on(&runtime, measure(&alice, &bob))?;
    let rate = m.rate;
    let (p50, p99) = (m.arrived.0, m.arrived.1);
    println!("throughput: {} messages, {IN_FLIGHT} in flight: {rate:.0} messages/s (send -> receipt, durable on both hosts)", throughput_messages());
    println!(
        "latency, one in flight ({} messages): send -> bob's device sees it: p50 {p50:.3} ms, p99 {p99:.3} ms",
        latency_messages()
    );
    println!(
        "latency, one in flight, round trip: send -> alice's device sees it delivered: p50 {:.3} ms, p99 {:.3} ms",
        m.delivered.0, m.delivered.1
    );
    println!(
        "json {}",
        serde_json::json!({"system": "smvs", "messages_per_s": rate,
            "p50_ms": m.delivered.0, "p99_ms": m.delivered.1,
            "arrived_p50_ms": p50, "arrived_p99_ms": p99,
            "messages": throughput_messages(), "in_flight": IN_FLIGHT})
    );
    let got = bob.ctl_json(&["conversations"])?[0]["messages"]
        .as_u64()
        .unwrap_or(0) as usize;
    if got != throughput_messages() + latency_messages() + WARMUP {
        bail!(
            "bob has {got} messages, expected {}",
            throughput_messages() + latency_messages() + WARMUP
        );
    }
    drop((alice, bob, directory));

    match peer_script().filter(|_| !skip_peer()) {
        Some(script) => {
            println!("\nXMPP peer in the same session: {}", script.display());
            let out = std::process::Command::new("bash")
                .arg(&script)
                .env("VARIANTS", "mam-sqlite-wal")
                .env("MODES", "window:1,blast")
                .env("N", "10000")
                .output()
                .context("running the prosody peer")?;
            let text = String::from_utf8_lossy(&out.stdout);
            let result = text
                .lines()
                .find(|l| l.starts_with("RESULT"))
                .map(str::to_owned);
            match result.as_deref().and_then(|l| field(l, "msgs_per_s")) {
                Some(peer_rate) => {
                    println!("{}", result.as_deref().unwrap_or(""));
                    println!(
                        "ratio: SMVS {rate:.0} / prosody {peer_rate:.0} messages/s = {:.1}x",
                        rate / peer_rate
                    );
                    if let Some(peer_p50) = result.as_deref().and_then(|l| field(l, "p50_ms")) {
                        println!(
                            "one in flight, sender's client to recipient's client: SMVS p50 {p50:.3} ms vs prosody p50 {peer_p50:.3} ms (SMVS round trip to the sender's delivered: p50 {:.3} ms)",
                            m.delivered.0
                        );
                    }
                }
                None => println!(
                    "the peer printed no RESULT line:\n{text}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            }
        }
        None => println!(
            "\nXMPP peer not found (shared/peers/prosody-bench.sh beside the repository); no ratio"
        ),
    }
    Ok(())
}

fn field(line: &str, key: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
}

fn peer_script() -> Option<PathBuf> {
    let here = std::env::current_dir().ok()?;
    [
        here.join("../shared/peers/prosody-bench.sh"),
        here.join("shared/peers/prosody-bench.sh"),
    ]
    .into_iter()
    .find(|p| p.exists())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default()
}

/// What [`measure`] found: messages/s, and (p50, p99) in ms of the two latencies.
struct Measured {
    rate: f64,
    arrived: (f64, f64),
    delivered: (f64, f64),
}

async fn measure(alice: &HostProcess, bob_host: &HostProcess) -> anyhow::Result<Measured> {
    let client = Rc::new(smvsctl::client::connect(&alice.socket).await?);
    let bob = Username::parse("bob")?;
    for i in 0..WARMUP {
        client.send(&bob, &format!("warm-up {i}")).await?;
    }
    wait_drained(&client).await?;

    // Throughput: keep IN_FLIGHT sends outstanding on one connection.
    let started = Instant::now();
    send_many(&client, &bob, throughput_messages(), IN_FLIGHT, |i| {
        format!("bench message {i}")
    })
    .await?;
    wait_drained(&client).await?;
    let rate = throughput_messages() as f64 / started.elapsed().as_secs_f64();

    // Latency: one message in flight, until bob's device sees it and until alice's sees its
    // `delivered` event. Bob's events are stamped as they come, by a task of their own.
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let _subscription = client.subscribe(tx).await?;
    let bob_device = smvsctl::client::connect(&bob_host.socket).await?;
    let (bob_tx, mut bob_rx) = tokio::sync::mpsc::channel(4096);
    let _bob_subscription = bob_device.subscribe(bob_tx).await?;
    // The subscription is answered before bob's hub has taken the feed in: a moment for that.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (arrived_tx, mut arrived_rx) = tokio::sync::mpsc::unbounded_channel();
    let stamper = tokio::task::spawn_local(async move {
        while let Some(event) = bob_rx.recv().await {
            if let Ok(smvsctl::client::EventView::MessageReceived { id, .. }) = event {
                if arrived_tx.send((id, Instant::now())).is_err() {
                    break;
                }
            }
        }
    });
    let mut arrived = Vec::with_capacity(latency_messages());
    let mut delivered = Vec::with_capacity(latency_messages());
    for i in 0..latency_messages() {
        let t0 = Instant::now();
        let id = client.send(&bob, &format!("latency {i}")).await?;
        until_delivered(&mut rx, &id).await?;
        delivered.push(t0.elapsed());
        loop {
            let (got, at) = tokio::time::timeout(Duration::from_secs(30), arrived_rx.recv())
                .await
                .context("bob's device did not see a message within 30 s")?
                .context("bob's event stream ended")?;
            if got == id {
                arrived.push(at.duration_since(t0));
                break;
            }
        }
    }
    stamper.abort();
    Ok(Measured {
        rate,
        arrived: percentiles(&mut arrived),
        delivered: percentiles(&mut delivered),
    })
}

/// p50 and p99 of `samples`, in ms.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    samples.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (
        ms(samples[samples.len() / 2]),
        ms(samples[(samples.len() * 99) / 100]),
    )
}

/// Waits until alice's outbox is empty: every message has its receipt.
///
/// Each poll of `status` counts the queued rows (a walk of the outbox's index, tens of
/// thousands of rows right after a burst of sends), and that walk runs on the storage thread
/// the bench measures: polled every 2 ms, as it once was, it took a sixth of alice's storage
/// thread, and every 20 ms still about a fifteenth. So the wait sleeps for about a third of the
/// time the rest should take at the rate seen so far (at most half the time waited so far), and
/// polls every 20 ms only near the end: a rate within 20 ms of the truth while the rate holds,
/// for a dozen polls a run. Waiting too long can only make the rate look lower.
async fn wait_drained(client: &HostClient) -> anyhow::Result<()> {
    const FINE: Duration = Duration::from_millis(20);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(300);
    let first = client.status().await?.queued;
    let mut queued = first;
    while queued != 0 {
        if Instant::now() > deadline {
            bail!("the outbox did not drain within 300 s");
        }
        let done = first.saturating_sub(queued);
        let elapsed = started.elapsed();
        let wait = if done == 0 {
            FINE
        } else {
            // A third of the estimated rest, and no more than half the time waited so far: a
            // rate that rises (receipts came in bursts at first) is not slept through for
            // long. Never less than the fine step.
            (elapsed.mul_f64(f64::from(queued) / f64::from(done)) / 3)
                .min(elapsed / 2)
                .max(FINE)
        };
        tokio::time::sleep(wait).await;
        queued = client.status().await?.queued;
    }
    Ok(())
}
