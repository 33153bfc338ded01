//! Two users on two hosts: real directory, keyguards, smvsd and smvsctl processes on
//! 127.0.0.x with ports the OS picks.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::time::Duration;

use smvs_tests::child::finish;
use smvs_tests::runtime::run_local;
use smvs_tests::{DirectoryProcess, HostProcess};

fn body(m: &serde_json::Value) -> &str {
    m["body"].as_str().unwrap()
}

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

/// Logs `host`'s user in at the directory with its keyguard and deletes the record, as if the
/// user had lost the device and started over.
fn deregister_at_directory(dir: &DirectoryProcess, host: &HostProcess) {
    run_local(async {
        let client = dir.client().await.unwrap();
        let keyguard = host.keyguard.client().await.unwrap();
        let name = smvs_schema::Username::parse(&host.name).unwrap();
        let sealed = client.challenge(name.as_str()).await.unwrap();
        let plain = keyguard.open_sealed(&sealed).await.unwrap();
        let (_, token) = smvs_schema::canonical::parse_auth_token(&plain, &dir.key, &name).unwrap();
        let session = client.authenticate(name.as_str(), &token).await.unwrap();
        session.deregister().await.unwrap();
    })
    .unwrap();
}

#[test]
fn blocked_senders_and_changed_keys_are_refused() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let mut alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    alice.send("bob", "first").unwrap();
    bob.wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();

    // Blocked: refused before decryption, never stored; the sender sees it fail.
    bob.ctl_ok(&["block", "alice"]).unwrap();
    let contacts = bob.ctl_json(&["contacts"]).unwrap();
    assert_eq!(contacts[0]["username"], "alice");
    assert_eq!(contacts[0]["blocked"], true);
    let refused = alice.send("bob", "while blocked").unwrap();
    alice
        .wait_history("bob", Duration::from_secs(30), |h| {
            h.iter()
                .any(|m| m["id"] == refused.as_str() && m["status"] == "failed")
        })
        .unwrap();
    assert_eq!(bob.history("alice").unwrap().len(), 1);
    let to_blocked = bob.ctl(&["send", "alice", "hi"]).unwrap();
    assert_eq!(to_blocked.status.code(), Some(1));
    bob.ctl_ok(&["unblock", "alice"]).unwrap();

    // Alice starts over with a new identity under the same name.
    alice.stop().unwrap();
    deregister_at_directory(&dir, &alice);
    let alice2 = HostProcess::start("alice", &dir, "127.0.0.3", &[]).unwrap();
    alice2.register().unwrap();
    let watch = bob
        .ctl_command(&["--json", "watch", "--count", "1"])
        .unwrap()
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300)); // let the watcher subscribe
    let held = alice2.send("bob", "from my new key").unwrap();
    let event = finish(watch, Duration::from_secs(30)).unwrap();
    let event: serde_json::Value = serde_json::from_slice(&event.stdout).unwrap();
    assert!(
        event.to_string().contains("key_changed") && event.to_string().contains("alice"),
        "{event}"
    );
    // Not shown, and bob cannot send to the new key, until he accepts it.
    assert_eq!(bob.history("alice").unwrap().len(), 1);
    let out = bob.ctl(&["send", "alice", "are you you?"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key changed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Accepting a key whose safety number was never shown is refused.
    let out = bob.ctl(&["verify", "alice", "--accept-new-key"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has not been shown to you"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = bob.ctl_json(&["verify", "alice"]).unwrap();
    assert_eq!(v["key_changed"], true);
    let v = bob
        .ctl_json(&["verify", "alice", "--accept-new-key"])
        .unwrap();
    assert_eq!(v["accepted"], true);
    // The held message comes through once accepted (the sender retries), and bob can reply.
    let h = bob
        .wait_history("alice", Duration::from_secs(30), |h| {
            h.iter().any(|m| m["id"] == held.as_str())
        })
        .unwrap();
    assert_eq!(h.len(), 2);
    bob.send("alice", "welcome back").unwrap();
    alice2
        .wait_history("bob", Duration::from_secs(30), |h| {
            h.iter().any(|m| m["from"] == "bob")
        })
        .unwrap();
    assert_eq!(
        alice2.ctl_json(&["verify", "bob"]).unwrap()["safety_number"],
        bob.ctl_json(&["verify", "alice"]).unwrap()["safety_number"]
    );
}

/// Every file under `dirs` that contains `needle`.
fn files_containing(dirs: &[&std::path::Path], needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack: Vec<std::path::PathBuf> = dirs.iter().map(|d| d.to_path_buf()).collect();
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        } else if meta.is_file() {
            let data = std::fs::read(&path).unwrap();
            if data.windows(needle.len()).any(|w| w == needle) {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[test]
fn message_text_never_reaches_the_disk_in_clear() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    let marker = format!("MARKER-{}", hex_of(&smvs_crypto::random_array::<8>()));
    alice
        .send("bob", &format!("the secret is {marker}"))
        .unwrap();
    bob.wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
    bob.send("alice", &format!("{marker} received")).unwrap();
    alice
        .wait_history("bob", Duration::from_secs(30), |h| {
            h.len() == 2
                && h.iter()
                    .all(|m| m["status"] != "sent" && m["status"] != "queued")
        })
        .unwrap();
    // The text is really there (the search works), just not on disk.
    assert!(body(&bob.history("alice").unwrap()[0]).contains(&marker));
    let dirs = [
        alice.root.path(),
        bob.root.path(),
        alice.keyguard.dir.path(),
        bob.keyguard.dir.path(),
    ];
    assert_eq!(
        files_containing(&dirs, marker.as_bytes()),
        Vec::<String>::new()
    );
    // Nor the names of the contacts, in the databases.
    let db_dirs = [alice.state_dir.as_path(), bob.state_dir.as_path()];
    assert_eq!(files_containing(&db_dirs, b"alice"), Vec::<String>::new());

    alice.ctl_ok(&["delete", "bob"]).unwrap();
    bob.ctl_ok(&["delete", "alice"]).unwrap();
    assert!(alice.history("bob").unwrap().is_empty());
    assert_eq!(
        files_containing(&dirs, marker.as_bytes()),
        Vec::<String>::new()
    );
    // The WAL was checkpointed and truncated.
    for state in db_dirs {
        let wal = state.join("host.db-wal");
        assert_eq!(
            std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0),
            0,
            "{}",
            wal.display()
        );
    }
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn a_registration_the_directory_took_but_the_host_never_saved_is_finished_on_retry() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let mut alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    alice.register().unwrap();
    // The host loses what it saved (as if it had stopped between the directory's answer and
    // its own write); keyguard keeps the identity.
    alice.stop().unwrap();
    for file in ["host.db", "host.db-wal", "host.db-shm"] {
        let _ = std::fs::remove_file(alice.state_dir.join(file));
    }
    alice.start_again().unwrap();
    assert_eq!(alice.ctl_json(&["status"]).unwrap()["registered"], false);
    alice.register().unwrap();
    assert_eq!(alice.ctl_json(&["whoami"]).unwrap()["username"], "alice");
    // Someone else still cannot take the name.
    let mallory = HostProcess::start("mallory", &dir, "127.0.0.2", &[]).unwrap();
    let out = mallory.ctl(&["register", "alice"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("taken"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
