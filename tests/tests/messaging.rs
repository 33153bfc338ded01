//! Messaging between two users on two hosts, as the product runs it: real directory,
//! keyguards, smvsd and smvsctl processes on 127.0.0.x with ports the OS picks. Sending both
//! ways, delivery to a host that was down, a sender killed mid-stream, and delivery through a
//! SOCKS5 proxy to an onion-style address.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use smvs_tests::conversation::body;
use smvs_tests::runtime::runtime_and_directory;
use smvs_tests::{DirectoryProcess, HostProcess};
use tokio::net::TcpListener;

#[test]
fn alice_and_bob_exchange_messages_both_ways() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    let whoami = alice.ctl_json(&["whoami"]).unwrap();
    assert_eq!(whoami["username"], "alice");

    let id1 = alice.send("bob", "hello bob").unwrap();
    let got = bob
        .wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
    assert_eq!(got[0]["id"], id1.as_str());
    assert_eq!(got[0]["from"], "alice");
    assert_eq!(got[0]["to"], "bob");
    assert_eq!(body(&got[0]), "hello bob");
    assert_eq!(got[0]["status"], "received");

    let id2 = bob.send("alice", "hi alice").unwrap();
    let id3 = alice.send("bob", "how are you?").unwrap();
    let a = alice
        .wait_history("bob", Duration::from_secs(30), |h| {
            h.len() == 3
                && h.iter()
                    .filter(|m| m["from"] == "alice")
                    .all(|m| m["status"] == "delivered")
        })
        .unwrap();
    let ids: Vec<&str> = a.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert!(
        ids.contains(&id1.as_str()) && ids.contains(&id2.as_str()) && ids.contains(&id3.as_str())
    );
    let from_bob = a.iter().find(|m| m["id"] == id2.as_str()).unwrap();
    assert_eq!(from_bob["status"], "received");
    assert_eq!(body(from_bob), "hi alice");
    let b = bob
        .wait_history("alice", Duration::from_secs(30), |h| {
            h.len() == 3
                && h.iter()
                    .any(|m| m["id"] == id2.as_str() && m["status"] == "delivered")
        })
        .unwrap();
    assert_eq!(body(&b[2]), "how are you?");

    // Both sides saw the same conversation: the same transcript hash and safety number.
    let va = alice.ctl_json(&["verify", "bob"]).unwrap();
    let vb = bob.ctl_json(&["verify", "alice"]).unwrap();
    assert_eq!(va["transcript_hash"], vb["transcript_hash"]);
    assert_eq!(va["safety_number"], vb["safety_number"]);
    let convs = alice.ctl_json(&["conversations"]).unwrap();
    assert_eq!(convs[0]["peer"], "bob");
    assert_eq!(convs[0]["messages"], 3);
}

#[test]
fn a_host_that_was_down_gets_all_100_messages_once_in_order() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let mut bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    assert!(bob.stop().unwrap().success());

    let mut sent = Vec::new();
    for i in 0..100 {
        sent.push(alice.send("bob", &format!("message {i:03}")).unwrap());
    }
    let status = alice.ctl_json(&["status"]).unwrap();
    assert_eq!(
        status["queued"], 100,
        "all 100 wait in the outbox: {status}"
    );

    bob.start_again().unwrap();
    let got = bob
        .wait_history("alice", Duration::from_secs(60), |h| h.len() >= 100)
        .unwrap();
    assert_eq!(got.len(), 100, "never shown twice");
    for (i, (m, id)) in got.iter().zip(&sent).enumerate() {
        assert_eq!(m["id"], id.as_str(), "in order");
        assert_eq!(body(m), format!("message {i:03}"));
        assert_ne!(m["integrity"], "gap");
    }
    alice
        .wait_history("bob", Duration::from_secs(30), |h| {
            h.iter().all(|m| m["status"] == "delivered")
        })
        .unwrap();
    assert_eq!(alice.ctl_json(&["status"]).unwrap()["queued"], 0);
}

#[test]
fn sigkill_of_the_sender_loses_nothing_and_duplicates_nothing() {
    use std::sync::{Arc, Mutex};

    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let mut alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();

    // A device sends 1000 messages; a send that fails (the host is down) is tried again until
    // it succeeds. Only sends that returned an id count as accepted.
    let accepted: Arc<Mutex<Vec<(usize, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let socket = alice.socket.clone();
    let sender = {
        let accepted = accepted.clone();
        std::thread::spawn(move || {
            let bin = smvs_tests::daemon::binary("smvsctl").unwrap();
            for i in 0..1000 {
                loop {
                    let out = std::process::Command::new(&bin)
                        .arg("--socket")
                        .arg(&socket)
                        .args(["--json", "send", "bob", &format!("kill-test {i:04}")])
                        .output()
                        .unwrap();
                    if out.status.success() {
                        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                        accepted
                            .lock()
                            .unwrap()
                            .push((i, v["id"].as_str().unwrap().to_owned()));
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        })
    };
    // Kill alice's host at pseudo-random moments while the sends and deliveries run.
    let mut seed = 0x9e37_79b9_u32;
    for _ in 0..4 {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        std::thread::sleep(Duration::from_millis(150 + u64::from(seed % 400)));
        alice.kill().unwrap();
        alice.start_again().unwrap();
    }
    sender.join().unwrap();
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), 1000);

    // Every accepted message arrives; a send that was cut off by the kill after its commit
    // (the device saw an error and sent again) may also arrive, under its own id.
    let accepted_ids: std::collections::HashSet<&str> =
        accepted.iter().map(|(_, id)| id.as_str()).collect();
    let got = bob
        .wait_history("alice", Duration::from_secs(120), |h| {
            h.iter()
                .filter(|m| accepted_ids.contains(m["id"].as_str().unwrap()))
                .count()
                >= 1000
        })
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for m in &got {
        assert!(
            seen.insert(m["id"].as_str().unwrap()),
            "message {} shown twice",
            m["id"]
        );
        if !accepted_ids.contains(m["id"].as_str().unwrap()) {
            eprintln!(
                "also delivered (its send was cut off by a kill): {}",
                body(m)
            );
        }
    }
    assert!(
        got.len() - 1000 <= 4,
        "at most one cut-off send per kill: {}",
        got.len()
    );
    for (i, id) in &accepted {
        let m = got.iter().find(|m| m["id"] == id.as_str()).unwrap();
        assert_eq!(body(m), format!("kill-test {i:04}"));
    }
}

#[test]
fn messages_reach_an_onion_style_address_through_a_socks5_proxy() {
    let (rt, dir) = runtime_and_directory().unwrap();
    // Bob's host publishes a name that only the proxy resolves.
    let mut bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    let onion = format!("bobhiddenservice.onion:{}", bob.listen.port());
    bob.stop().unwrap();
    bob.add_flags(&["--public-address", &onion]);
    bob.start_again().unwrap();
    bob.register().unwrap();
    assert_eq!(
        bob.ctl_json(&["status"]).unwrap()["host_address"],
        onion.as_str()
    );

    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let proxy_addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    rt.spawn(smvs_tests::socks::socks5_proxy(
        listener,
        bob.listen,
        seen.clone(),
    ));

    let alice = HostProcess::start(
        "alice",
        &dir,
        "127.0.0.1",
        &["--socks5-proxy", &proxy_addr.to_string()],
    )
    .unwrap();
    alice.register().unwrap();
    let id = alice.send("bob", "through the proxy").unwrap();
    let got = bob
        .wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
    assert_eq!(got[0]["id"], id.as_str());
    alice
        .wait_history("bob", Duration::from_secs(30), |h| {
            h[0]["status"] == "delivered"
        })
        .unwrap();
    // The proxy was asked for the name, not an address: resolution happened at the proxy.
    // The directory is reached through the proxy too (and comes first: alice looks bob up).
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.last(), Some(&onion), "{seen:?}");
    assert!(
        seen[..seen.len() - 1]
            .iter()
            .all(|a| *a == dir.addr.to_string()),
        "only the directory and bob's host: {seen:?}"
    );
}

// ----- recipients the directory does not know: refused at once when the name was never
// registered, failed (with the reason) when a contact deregisters while messages to them wait
// in the outbox. Nothing is retried for ever.

#[test]
fn a_name_nobody_registered_is_refused_at_once_and_nothing_is_queued() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    alice.register().unwrap();
    let out = alice.ctl(&["send", "nosuchuser", "hello?"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no user nosuchuser"), "{stderr}");
    assert!(out.stdout.is_empty(), "no id is printed");
    let status = alice.ctl_json(&["status"]).unwrap();
    assert_eq!(status["queued"], 0, "{status}");
    assert!(alice.history("nosuchuser").unwrap().is_empty());
}

#[test]
fn messages_queued_for_a_contact_who_deregisters_fail_with_the_reason() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let mut bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    alice.send("bob", "before").unwrap();
    bob.wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
    // Bob's host goes away; alice keeps writing; then bob deregisters.
    bob.stop().unwrap();
    let queued: Vec<String> = (0..3)
        .map(|i| alice.send("bob", &format!("while away {i}")).unwrap())
        .collect();
    bob.deregister_at(&dir).unwrap();
    // Alice's host notices on a later round (its record cache is short-lived), fails them all,
    // and stops retrying: the outbox is empty and each message says why.
    let history = alice
        .wait_history("bob", Duration::from_secs(90), |h| {
            h.iter()
                .filter(|m| queued.iter().any(|id| m["id"] == id.as_str()))
                .all(|m| m["status"] == "failed")
        })
        .unwrap();
    for m in history
        .iter()
        .filter(|m| queued.iter().any(|id| m["id"] == id.as_str()))
    {
        assert_eq!(m["reason"], "unknown-user", "{m}");
    }
    assert_eq!(
        history[0]["status"], "delivered",
        "the first one was delivered"
    );
    let status = alice.ctl_json(&["status"]).unwrap();
    assert_eq!(status["queued"], 0, "nothing is retried: {status}");
    let text = alice.ctl_ok(&["history", "bob"]).unwrap();
    assert!(
        text.contains("not delivered: the directory does not know bob"),
        "{text}"
    );
    // A new message to the contact is queued (a contact is not looked up on every send) and
    // fails on its first round, since the directory no longer knows the name.
    let late = alice.send("bob", "still there?").unwrap();
    let history = alice
        .wait_history("bob", Duration::from_secs(30), |h| {
            h.iter()
                .any(|m| m["id"] == late.as_str() && m["status"] == "failed")
        })
        .unwrap();
    let late = history.iter().find(|m| m["id"] == late.as_str()).unwrap();
    assert_eq!(late["reason"], "unknown-user", "{late}");
}

/// Hardening: the key guard dies while smvsd runs (a crash; its socket stays behind). The host
/// says so clearly, keeps serving what does not need the key guard, keeps the message it
/// accepted, and carries on once the key guard is back — without a restart of smvsd.
#[test]
fn a_key_guard_that_dies_and_comes_back_is_used_again_without_a_restart() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let mut alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    let smvsd_pid = alice.pid();

    alice.keyguard.crash().unwrap();
    // Writing to bob for the first time needs the key guard (the session keys come from the
    // identity); the message is taken all the same, and waits.
    let id = alice.send("bob", "while the key guard is down").unwrap();
    let status = alice.ctl_json(&["status"]).unwrap();
    assert_eq!(status["queued"], 1, "{status}");
    assert!(alice
        .history("bob")
        .unwrap()
        .iter()
        .all(|m| m["status"] == "queued"));
    // Something that needs the key guard now fails, naming it.
    let out = alice.ctl(&["register", "alice2"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    let logs = alice.logs();
    assert!(
        logs.contains("key guard connection was lost") || logs.contains("keyguard at"),
        "the log says what is wrong:\n{logs}"
    );

    alice.keyguard.start_again(&[]).unwrap();
    let history = alice
        .wait_history("bob", Duration::from_secs(30), |h| {
            h.iter()
                .any(|m| m["id"] == id.as_str() && m["status"] == "delivered")
        })
        .unwrap();
    assert_eq!(history.len(), 1);
    bob.wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
    assert_eq!(alice.pid(), smvsd_pid, "smvsd was not restarted");
    assert!(alice.logs().contains("connected to the key guard again"));
}

/// A tmpfs of `size` mounted on a fresh private directory, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::Builder::new()
            .prefix("smvs-disk-")
            .tempdir()
            .unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs (this test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    /// Fills the disk with one file, up to the last byte it takes.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while file.write_all(&chunk).is_ok() {}
        let small = vec![0u8; 512];
        while file.write_all(&small).is_ok() {}
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Hardening: the host's state on a disk that fills up. `send` fails with a clear error once
/// the disk is full and nothing half-written stays; everything accepted before is kept and
/// delivered; reads keep working; once space is freed, sends work again. No restart.
#[test]
fn a_full_disk_refuses_sends_clearly_keeps_what_was_accepted_and_recovers() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let mut alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let mut bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    alice.send("bob", "before").unwrap();
    bob.wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
    // Alice's state moves to a 4 MiB disk; bob goes away, so what she sends stays queued.
    alice.stop().unwrap();
    bob.stop().unwrap();
    let disk = SmallDisk::mount("4m");
    for entry in std::fs::read_dir(&alice.state_dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), disk.dir.path().join(entry.file_name())).unwrap();
    }
    alice.state_dir = disk.dir.path().to_path_buf();
    alice.start_again().unwrap();
    let queued_before = alice.send("bob", "queued before the disk filled").unwrap();

    let filler = disk.fill();
    let mut refused = None;
    for i in 0..50 {
        let out = alice
            .ctl(&["send", "bob", &format!("{i} {}", "x".repeat(4000))])
            .unwrap();
        if !out.status.success() {
            refused = Some(out);
            break;
        }
    }
    let refused = refused.expect("a send fails once the disk is full");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("disk is full"), "{stderr}");
    // Reads are served, and what was accepted is there.
    let history = alice.history("bob").unwrap();
    assert!(history.iter().any(|m| m["id"] == queued_before.as_str()));
    let accepted: Vec<String> = history
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();

    // Space comes back: sends work again, and everything accepted reaches bob once.
    std::fs::remove_file(filler).unwrap();
    let after = alice.send("bob", "after the disk was freed").unwrap();
    bob.start_again().unwrap();
    let got = bob
        .wait_history("alice", Duration::from_secs(60), |h| {
            h.iter().any(|m| m["id"] == after.as_str())
        })
        .unwrap();
    for id in &accepted {
        assert_eq!(
            got.iter().filter(|m| m["id"] == id.as_str()).count(),
            1,
            "{id} reached bob once"
        );
    }
    assert!(alice.is_running(), "smvsd kept running");
    alice.stop().unwrap();
}
