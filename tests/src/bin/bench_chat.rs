//! `make bench`, part five: `smvsctl chat` on a conversation of 100,000 messages.
//!
//! A directory and two hosts run as real release processes; alice sends bob N messages (and
//! carol, for comparison, 100). bob's `smvsctl chat` then runs in a real terminal (tmux,
//! 80x24) and is measured:
//! - time to first screen: from starting the client to the newest message on the screen;
//! - memory: the client's peak resident set (VmHWM) after the first screen, and after paging
//!   back 1,000 messages, against the same client on the 100-message conversation;
//! - paging: time for 1,000 messages back (ten pages of 100 read from the host).

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use smvs_schema::Username;
use smvs_tests::conversation::send_many;
use smvs_tests::tmux::Tmux;
use smvs_tests::{Backend, DirectoryProcess, HostProcess};

const MESSAGES: usize = 100_000;
const SMALL: usize = 100;
const IN_FLIGHT: usize = 2048;
const PAGED_BACK: usize = 1_000;

fn messages() -> usize {
    smvs_tests::count_from_env("SMVS_BENCH_CHAT_MESSAGES", MESSAGES)
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let directory = runtime.block_on(DirectoryProcess::start(Backend::Sqlite, &[]))?;
    let alice = HostProcess::start("alice", &directory, "127.0.0.1", &[])?;
    let bob = HostProcess::start("bob", &directory, "127.0.0.2", &[])?;
    let carol = HostProcess::start("carol", &directory, "127.0.0.3", &[])?;
    for host in [&alice, &bob, &carol] {
        host.register()?;
    }
    let n = messages();
    println!("SMVS chat: `smvsctl chat` (release) in tmux at 80x24 on bob's host, a conversation of {n} messages");
    let local = tokio::task::LocalSet::new();
    let started = Instant::now();
    local.block_on(&runtime, fill(&alice, "bob", n))?;
    local.block_on(&runtime, fill(&carol, "bob", SMALL))?;
    wait_for_messages(&bob, "alice", n)?;
    wait_for_messages(&bob, "carol", SMALL)?;
    println!("filled in {:.1} s", started.elapsed().as_secs_f64());

    // What the client waits on, each read alone through smvsctl (a process start included).
    for (what, args) in [
        ("conversations", vec!["conversations"]),
        (
            "newest 100 with carol",
            vec!["history", "carol", "--limit", "100"],
        ),
        (
            "newest 100 with alice",
            vec!["history", "alice", "--limit", "100"],
        ),
    ] {
        let t0 = Instant::now();
        bob.ctl_ok(&args)?;
        println!("smvsctl {what}: {:.0} ms", ms(t0.elapsed()));
    }
    let small = open(&bob, "carol")?;
    let (big, paging) = {
        let opened = open(&bob, "alice")?;
        // Page back: k moves one message up; a page of 100 is read as the top is passed.
        let t0 = Instant::now();
        // The title says where the chosen message is: `#N of TOTAL`.
        let target = format!("#{} of {n}", n.saturating_sub(PAGED_BACK).max(1));
        for _ in 0..PAGED_BACK / 10 {
            opened.tmux.keys(&["PageUp"])?;
        }
        opened.tmux.wait_text(&target)?;
        let paging = t0.elapsed();
        let after_paging = peak_rss_kib(opened.pid)?;
        (
            Opened {
                after_paging,
                ..opened
            },
            paging,
        )
    };
    println!(
        "{SMALL} messages:     first screen {:.0} ms, peak RSS {} KiB",
        ms(small.first_screen),
        small.rss_kib
    );
    println!(
        "{n} messages: first screen {:.0} ms, peak RSS {} KiB; after paging back {PAGED_BACK} messages ({:.0} ms): {} KiB",
        ms(big.first_screen),
        big.rss_kib,
        ms(paging),
        big.after_paging
    );
    println!(
        "ratio of peak RSS, {n} against {SMALL} messages (first screen): {:.2}",
        big.rss_kib as f64 / small.rss_kib as f64
    );
    println!(
        "json {}",
        serde_json::json!({"messages": n, "first_screen_ms": ms(big.first_screen),
            "rss_kib": big.rss_kib, "rss_kib_after_paging": big.after_paging,
            "paging_ms": ms(paging), "paged_back": PAGED_BACK,
            "small_first_screen_ms": ms(small.first_screen), "small_rss_kib": small.rss_kib})
    );
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Opened {
    tmux: Tmux,
    pid: u32,
    first_screen: Duration,
    rss_kib: u64,
    after_paging: u64,
}

/// Starts bob's chat with `peer` and waits for its first screen of messages: the
/// conversation's last row holds one. (They were sent many at a time, so the newest stored is
/// not always the last sent.)
fn open(bob: &HostProcess, peer: &str) -> anyhow::Result<Opened> {
    let cmd = bob.ctl_command(&["chat", peer])?;
    let t0 = Instant::now();
    let tmux = Tmux::start(peer, &cmd, 80, 24)?;
    let row = format!("{peer}: bench message");
    tmux.wait_for("the first screen", |s| {
        s.lines().nth(17).is_some_and(|r| r.contains(&row))
    })?;
    let first_screen = t0.elapsed();
    let pid = tmux.pid()?;
    let rss_kib = peak_rss_kib(pid)?;
    Ok(Opened {
        tmux,
        pid,
        first_screen,
        rss_kib,
        after_paging: 0,
    })
}

fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")
}

/// `from` sends `to` n messages, many in flight, and waits until its outbox is empty.
async fn fill(from: &HostProcess, to: &str, n: usize) -> anyhow::Result<()> {
    let client = std::rc::Rc::new(smvsctl::client::connect(&from.socket).await?);
    let to = Username::parse(to)?;
    send_many(&client, &to, n, IN_FLIGHT, |i| format!("bench message {i}")).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while client.status().await?.queued > 0 {
        if Instant::now() > deadline {
            bail!("the outbox did not drain within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

fn wait_for_messages(host: &HostProcess, peer: &str, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let conversations = host.ctl_json(&["conversations"])?;
        let got = conversations
            .as_array()
            .and_then(|a| a.iter().find(|c| c["peer"] == peer))
            .and_then(|c| c["messages"].as_u64())
            .unwrap_or(0) as usize;
        if got >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{peer}: {got} of {n} messages arrived");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
