//! Session v2 between real hosts: conversations move from v1 to v2 at the next message with
//! their history kept, never go back to v1 (messages wait instead), and a host restored from
//! an older copy of its database makes new sessions and loses no message sent after it is
//! back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::time::Duration;

use smvs_tests::{DirectoryProcess, HostProcess};

const WAIT: Duration = Duration::from_secs(60);

/// The session version `host` says it uses with `peer` (`verify`).
fn session_version(host: &HostProcess, peer: &str) -> u64 {
    host.ctl_json(&["verify", peer]).unwrap()["session_version"]
        .as_u64()
        .unwrap()
}

/// Sends `text` from `from` to `to` and waits until `to` has it and `from` has its receipt.
fn exchange(from: &HostProcess, to: &HostProcess, text: &str) {
    let id = from.send(&to.name, text).unwrap();
    to.wait_history(&from.name, WAIT, |h| {
        h.iter().any(|m| m["id"] == id.as_str())
    })
    .unwrap();
    from.wait_history(&to.name, WAIT, |h| {
        h.iter()
            .any(|m| m["id"] == id.as_str() && m["status"] == "delivered")
    })
    .unwrap();
}

fn texts(history: &[serde_json::Value]) -> Vec<String> {
    history
        .iter()
        .map(|m| m["body"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_v1_conversation_moves_to_v2_keeps_its_history_and_never_goes_back() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let old = ["--max-session-version", "1"];
    let mut alice = HostProcess::start("alice", &dir, "127.0.0.1", &old).unwrap();
    let mut bob = HostProcess::start("bob", &dir, "127.0.0.2", &old).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    exchange(&alice, &bob, "v1 one");
    exchange(&bob, &alice, "v1 two");
    assert_eq!(session_version(&alice, "bob"), 1);
    assert_eq!(session_version(&bob, "alice"), 1);

    // Both hosts upgraded: the next message makes a v2 session; history is kept.
    for host in [&mut alice, &mut bob] {
        host.stop().unwrap();
        host.remove_flag("--max-session-version");
        host.remove_flag("1");
        host.start_again().unwrap();
    }
    exchange(&alice, &bob, "v2 three");
    exchange(&bob, &alice, "v2 four");
    assert_eq!(session_version(&alice, "bob"), 2);
    assert_eq!(session_version(&bob, "alice"), 2);
    let expected = ["v1 one", "v1 two", "v2 three", "v2 four"];
    assert_eq!(texts(&alice.history("bob").unwrap()), expected);
    assert_eq!(texts(&bob.history("alice").unwrap()), expected);
    assert!(
        alice.logs().contains("made a session v2"),
        "{}",
        alice.logs()
    );

    // Bob's host is forced back to v1: alice's host does not take his v1 envelope, and does
    // not send him v1 either. Nothing crosses, and nothing is lost: both messages wait in
    // their outboxes ...
    bob.stop().unwrap();
    bob.add_flags(&old);
    bob.start_again().unwrap();
    let from_bob = bob.send("alice", "while downgraded").unwrap();
    let from_alice = alice.send("bob", "not in v1").unwrap();
    let waiting = |host: &HostProcess, peer: &str, id: &str| {
        let h = host.history(peer).unwrap();
        let m = h.iter().find(|m| m["id"] == id).unwrap().clone();
        assert_ne!(m["status"], "delivered", "{m}");
        assert_ne!(m["status"], "failed", "{m}");
    };
    // (Several delivery rounds: the retry cap is 1 s in tests.)
    std::thread::sleep(Duration::from_secs(3));
    waiting(&bob, "alice", &from_bob);
    waiting(&alice, "bob", &from_alice);
    assert!(!texts(&alice.history("bob").unwrap()).contains(&"while downgraded".to_string()));
    assert!(!texts(&bob.history("alice").unwrap()).contains(&"not in v1".to_string()));
    assert!(
        alice.logs().contains("a downgrade"),
        "alice's host says why: {}",
        alice.logs()
    );
    // ... until bob's host speaks v2 again: then both arrive, in v2.
    bob.stop().unwrap();
    bob.remove_flag("--max-session-version");
    bob.remove_flag("1");
    bob.start_again().unwrap();
    for (host, peer, id) in [(&bob, "alice", &from_bob), (&alice, "bob", &from_alice)] {
        host.wait_history(peer, WAIT, |h| {
            h.iter()
                .any(|m| m["id"] == id.as_str() && m["status"] == "delivered")
        })
        .unwrap();
    }
    assert!(texts(&alice.history("bob").unwrap()).contains(&"while downgraded".to_string()));
    assert!(texts(&bob.history("alice").unwrap()).contains(&"not in v1".to_string()));
    assert_eq!(session_version(&bob, "alice"), 2);
}

#[test]
fn a_host_restored_from_an_older_copy_of_its_database_makes_new_sessions_and_loses_nothing() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let mut alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    exchange(&alice, &bob, "before the copy");
    exchange(&bob, &alice, "reply before the copy");

    // A copy of alice's database, taken while her host is stopped.
    alice.stop().unwrap();
    let backup = alice.root.path().join("backup");
    std::fs::create_dir(&backup).unwrap();
    let database_files: Vec<_> = std::fs::read_dir(&alice.state_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("host.db"))
        })
        .collect();
    for file in &database_files {
        std::fs::copy(file, backup.join(file.file_name().unwrap())).unwrap();
    }
    alice.start_again().unwrap();
    // The ratchets move on, on both sides.
    for i in 0..3 {
        exchange(&alice, &bob, &format!("after the copy {i}"));
        exchange(&bob, &alice, &format!("reply after the copy {i}"));
    }

    // Alice's host comes back on the old copy: its ratchets are behind bob's.
    alice.stop().unwrap();
    for file in std::fs::read_dir(&alice.state_dir).unwrap() {
        let path = file.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("host.db"))
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    for file in &database_files {
        std::fs::copy(backup.join(file.file_name().unwrap()), file).unwrap();
    }
    alice.start_again().unwrap();
    assert!(
        alice.logs().contains("older than the key guard's counter"),
        "{}",
        alice.logs()
    );
    // Everything sent from now on arrives, both ways, over new sessions.
    for i in 0..3 {
        exchange(&alice, &bob, &format!("after the restore {i}"));
        exchange(&bob, &alice, &format!("reply after the restore {i}"));
    }
    assert_eq!(session_version(&alice, "bob"), 2);
    assert_eq!(session_version(&bob, "alice"), 2);
    let bob_has = texts(&bob.history("alice").unwrap());
    for i in 0..3 {
        assert!(bob_has.contains(&format!("after the restore {i}")));
        assert!(bob_has.contains(&format!("after the copy {i}")));
    }
}
