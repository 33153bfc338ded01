//! Recovery from real network faults, with real processes: two hosts in network namespaces the
//! test makes itself, joined by a veth pair, with the faults made by iptables inside those
//! namespaces (a black hole that makes TCP hang, random loss); and a peer host stopped with
//! SIGSTOP, which still accepts TCP but answers nothing.
//!
//! What must hold: sends are accepted and queued while the path is bad, nothing hangs or
//! leaks, and once the path is back every message arrives exactly once, soon.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use smvs_tests::conversation::body;
use smvs_tests::netns::TwoSites;
use smvs_tests::{DirectoryProcess, HostProcess};

/// Texts `from` sent that `at` holds, each with how many times it is there.
fn received_from(at: &HostProcess, from: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for m in at.history(from).unwrap() {
        if m["from"] == from {
            *seen.entry(body(&m).to_owned()).or_insert(0) += 1;
        }
    }
    seen
}

/// Waits until `to` holds each of `texts` from `from` exactly once and `from` shows each as
/// delivered; fails with both sides' logs after `limit`.
fn wait_all_delivered_once(
    from: &HostProcess,
    to: &HostProcess,
    texts: &[String],
    limit: Duration,
) {
    to.wait_history(&from.name, limit, |h| {
        texts.iter().all(|t| {
            h.iter()
                .filter(|m| m["from"] == from.name.as_str() && body(m) == *t)
                .count()
                == 1
        })
    })
    .unwrap();
    from.wait_history(&to.name, limit, |h| {
        texts.iter().all(|t| {
            h.iter().any(|m| {
                m["from"] == from.name.as_str() && body(m) == *t && m["status"] == "delivered"
            })
        })
    })
    .unwrap();
    // Exactly once, also after the outboxes have settled: no copy arrives late.
    let seen = received_from(to, &from.name);
    for t in texts {
        assert_eq!(seen.get(t), Some(&1), "{t:?} at {}: {seen:?}", to.name);
    }
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn after_a_black_hole_partition_the_backlog_arrives_exactly_once_and_soon() {
    let sites = TwoSites::new().unwrap();
    let dir = DirectoryProcess::start_in(&sites.a, &[]).unwrap();
    let alice = HostProcess::start_in(&sites.a, "alice", &dir, &[]).unwrap();
    let bob = HostProcess::start_in(&sites.b, "bob", &dir, &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    // Links up both ways and contacts pinned, as between two people who talk.
    let before = ["hello bob".to_string()];
    alice.send("bob", &before[0]).unwrap();
    bob.send("alice", "hello alice").unwrap();
    wait_all_delivered_once(&alice, &bob, &before, Duration::from_secs(60));
    wait_all_delivered_once(
        &bob,
        &alice,
        &["hello alice".to_string()],
        Duration::from_secs(60),
    );

    // Every packet between the sites is dropped: the open links go silent rather than fail.
    sites.black_hole(true).unwrap();
    let cut = Instant::now();
    let mut from_alice = Vec::new();
    let mut from_bob = Vec::new();
    for round in 0..2 {
        for i in 0..3 {
            let (a, b) = (format!("a{round}.{i}"), format!("b{round}.{i}"));
            alice.send("bob", &a).unwrap();
            bob.send("alice", &b).unwrap();
            from_alice.push(a);
            from_bob.push(b);
        }
        // The first round goes onto the links that were open; the second is sent well after
        // they went silent, when the hosts are retrying.
        std::thread::sleep(Duration::from_secs(25));
    }
    std::thread::sleep(Duration::from_secs(60).saturating_sub(cut.elapsed()));
    assert_eq!(
        received_from(&bob, "alice").len(),
        1,
        "the black hole let something through"
    );
    assert_eq!(
        received_from(&alice, "bob").len(),
        1,
        "the black hole let something through"
    );
    // Both sides still answer their own users.
    alice.ctl_ok(&["status"]).unwrap();
    bob.ctl_ok(&["status"]).unwrap();

    sites.black_hole(false).unwrap();
    let healed = Instant::now();
    // The aim is that a healed path is used within about 30 s, however long the outage. (On a
    // link left hanging, TCP alone would retransmit at roughly 51 s and 102 s into a 60-s
    // outage, so the backlog would wait about 40 s more.)
    wait_all_delivered_once(&alice, &bob, &from_alice, Duration::from_secs(30));
    wait_all_delivered_once(&bob, &alice, &from_bob, Duration::from_secs(30));
    eprintln!(
        "backlog of {} messages delivered both ways {:.1} s after a 60-s black hole healed",
        from_alice.len() + from_bob.len(),
        healed.elapsed().as_secs_f64()
    );
}

#[test]
fn over_a_lossy_link_messages_both_ways_arrive_exactly_once() {
    let sites = TwoSites::new().unwrap();
    let dir = DirectoryProcess::start_in(&sites.a, &[]).unwrap();
    let alice = HostProcess::start_in(&sites.a, "alice", &dir, &[]).unwrap();
    let bob = HostProcess::start_in(&sites.b, "bob", &dir, &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();

    // About one packet in seven is lost, each way.
    sites.lossy(0.15, true).unwrap();
    let mut from_alice = Vec::new();
    let mut from_bob = Vec::new();
    for i in 0..25 {
        let (a, b) = (format!("from alice {i}"), format!("from bob {i}"));
        alice.send("bob", &a).unwrap();
        bob.send("alice", &b).unwrap();
        from_alice.push(a);
        from_bob.push(b);
    }
    wait_all_delivered_once(&alice, &bob, &from_alice, Duration::from_secs(240));
    wait_all_delivered_once(&bob, &alice, &from_bob, Duration::from_secs(240));
    // In the order they were sent.
    let order: Vec<String> = bob
        .history("alice")
        .unwrap()
        .iter()
        .filter(|m| m["from"] == "alice")
        .map(|m| body(m).to_owned())
        .collect();
    assert_eq!(order, from_alice);
    sites.lossy(0.15, false).unwrap();
}

#[test]
fn a_stopped_peer_host_holds_nothing_up_and_gets_everything_once_it_runs_again() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    let first = ["before the stop".to_string()];
    alice.send("bob", &first[0]).unwrap();
    wait_all_delivered_once(&alice, &bob, &first, Duration::from_secs(60));

    // Stopped, bob's host still completes TCP handshakes (the kernel does that) and takes
    // bytes into its buffers, but answers nothing: neither Noise nor envelopes.
    let bob_pid = Pid::from_raw(i32::try_from(bob.pid().unwrap()).unwrap());
    kill(bob_pid, Signal::SIGSTOP).unwrap();
    let texts: Vec<String> = (0..5).map(|i| format!("while stopped {i}")).collect();
    for t in &texts {
        alice.send("bob", t).unwrap();
    }
    // What was handed to a link that never answers goes back to "queued": it is not with
    // bob's host, and alice's history must not say it is.
    alice
        .wait_history("bob", Duration::from_secs(90), |h| {
            texts
                .iter()
                .all(|t| h.iter().any(|m| body(m) == *t && m["status"] == "queued"))
        })
        .unwrap();
    // Retries go on (each connect gives up after a while); they must not pile up connections.
    let alice_pid = alice.pid().unwrap();
    let files_then = open_files(alice_pid);
    std::thread::sleep(Duration::from_secs(30));
    let files_now = open_files(alice_pid);
    assert!(
        files_now <= files_then + 4,
        "alice's open files grew from {files_then} to {files_now} while retrying a stopped host"
    );
    alice.ctl_ok(&["status"]).unwrap();

    kill(bob_pid, Signal::SIGCONT).unwrap();
    wait_all_delivered_once(&alice, &bob, &texts, Duration::from_secs(60));
}
