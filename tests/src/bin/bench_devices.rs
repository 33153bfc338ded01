//! `make bench`, part three: one host fanning out to 10 linked devices.
//!
//! A directory and two hosts run as real release processes. Ten linked devices are paired with
//! alice's host through its device port (each with its own key, as `smvsctl pair` makes them)
//! and subscribe over their Noise links; one more subscriber sits on alice's Unix socket. bob's
//! host sends N messages to alice. Measured:
//! - fan-out rate: messages per second that reached all 10 devices, from bob's first send to
//!   the last device seeing the last message;
//! - fan-out latency: for each message, from the moment alice's host published it (its own
//!   socket's subscriber sees it; the host publishes after storing) to the last of the 10
//!   devices seeing it, p50 and p99.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use smvs_schema::Username;
use smvs_tests::device::DeviceProcess;
use smvs_tests::{Backend, DirectoryProcess, HostProcess};
use smvsctl::client::{EventView, MessageId};

const DEVICES: usize = 10;
const MESSAGES: usize = 2_000;
const IN_FLIGHT: usize = 256;

fn messages() -> usize {
    smvs_tests::count_from_env("SMVS_BENCH_DEVICE_MESSAGES", MESSAGES)
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let directory = runtime.block_on(DirectoryProcess::start(Backend::Sqlite, &[]))?;
    let alice = HostProcess::start("alice", &directory, "127.0.0.1", &[])?;
    let bob = HostProcess::start("bob", &directory, "127.0.0.2", &[])?;
    alice.register()?;
    bob.register()?;
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let name = format!("device{i}");
        let link = alice.ctl_json(&["devices", "link", "--name", &name])?;
        let code = link["code"].as_str().context("no code")?.to_owned();
        let address = link["device_address"]
            .as_str()
            .context("no address")?
            .to_owned();
        let device = DeviceProcess::new(&name, &address)?;
        let out = device.pair(&code)?;
        if !out.status.success() {
            bail!("pairing {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        devices.push(device);
    }
    println!(
        "SMVS fan-out: bob's host -> alice's host -> {DEVICES} linked devices over the device port, release build"
    );
    println!(
        "machine: {} cores",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    let local = tokio::task::LocalSet::new();
    let (rate, p50, p99) = local.block_on(&runtime, measure(&alice, &bob, &devices))?;
    println!(
        "fan-out: {} messages to all {DEVICES} devices: {rate:.0} messages/s (bob's first send -> last device sees the last)",
        messages()
    );
    println!(
        "host publishes -> last of {DEVICES} devices sees it: p50 {p50:.3} ms, p99 {p99:.3} ms"
    );
    println!(
        "json {}",
        serde_json::json!({"system": "smvs", "devices": DEVICES, "messages": messages(),
            "messages_per_s": rate, "p50_ms": p50, "p99_ms": p99})
    );
    Ok(())
}

/// Each event stream's `message_received` arrivals: message id → when it arrived.
type Arrivals = Rc<std::cell::RefCell<HashMap<MessageId, Instant>>>;

async fn watch(client: Rc<smvsctl::client::HostClient>, seen: Arrivals) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(4096);
    let subscription = client.subscribe(tx).await?;
    tokio::task::spawn_local(async move {
        let _keep = subscription;
        while let Some(Ok(event)) = rx.recv().await {
            if let EventView::MessageReceived { id, .. } = event {
                seen.borrow_mut().insert(id, Instant::now());
            }
        }
    });
    Ok(())
}

async fn measure(
    alice: &HostProcess,
    bob: &HostProcess,
    devices: &[DeviceProcess],
) -> anyhow::Result<(f64, f64, f64)> {
    let host_side: Arrivals = Rc::default();
    let local = Rc::new(smvsctl::client::connect(&alice.socket).await?);
    watch(local.clone(), host_side.clone()).await?;
    let mut device_sides = Vec::new();
    let mut links = Vec::new();
    for device in devices {
        let client = Rc::new(
            smvsctl::client::connect_device_from(&device.config_dir(), Some(&device.host), None)
                .await?,
        );
        let seen: Arrivals = Rc::default();
        watch(client.clone(), seen.clone()).await?;
        device_sides.push(seen);
        links.push(client);
    }
    let sender = Rc::new(smvsctl::client::connect(&bob.socket).await?);
    let to = Username::parse("alice")?;
    let n = messages();
    let started = Instant::now();
    let mut ids = Vec::with_capacity(n);
    let mut pending = std::collections::VecDeque::new();
    for i in 0..n {
        let (sender, to) = (sender.clone(), to.clone());
        pending.push_back(tokio::task::spawn_local(async move {
            sender.send(&to, &format!("fan-out {i}")).await
        }));
        if pending.len() >= IN_FLIGHT {
            if let Some(first) = pending.pop_front() {
                ids.push(first.await??);
            }
        }
    }
    for p in pending {
        ids.push(p.await??);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = device_sides
            .iter()
            .all(|seen| ids.iter().all(|id| seen.borrow().contains_key(id)));
        if done && ids.iter().all(|id| host_side.borrow().contains_key(id)) {
            break;
        }
        if Instant::now() > deadline {
            bail!("not every device saw every message within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = device_sides
        .iter()
        .flat_map(|seen| {
            ids.iter()
                .filter_map(|id| seen.borrow().get(id).copied())
                .collect::<Vec<_>>()
        })
        .max()
        .context("no arrivals")?;
    let rate = n as f64 / last.duration_since(started).as_secs_f64();
    let mut latencies: Vec<f64> = ids
        .iter()
        .filter_map(|id| {
            let published = *host_side.borrow().get(id)?;
            let last = device_sides
                .iter()
                .filter_map(|seen| seen.borrow().get(id).copied())
                .max()?;
            Some(last.saturating_duration_since(published).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    Ok((rate, pick(0.5), pick(0.99)))
}
