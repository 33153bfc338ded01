//! Session v2 between real hosts: conversations move from v1 to v2 at the next message with
//! their history kept, never go back to v1 (messages wait instead); a first message to a
//! host that is away is sealed under a session made from its published prekey, and a replay
//! of that handshake is refused; and a host restored from an older copy of its database makes
//! new sessions and loses no message sent after it is back.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::time::Duration;

use smvs_tests::conversation::alice_and_bob;
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

/// Copies `host`'s database files (stop it first) into a new folder; returns where.
fn copy_database(host: &HostProcess, name: &str) -> std::path::PathBuf {
    let backup = host.root.path().join(name);
    std::fs::create_dir(&backup).unwrap();
    for file in database_files(host) {
        std::fs::copy(&file, backup.join(file.file_name().unwrap())).unwrap();
    }
    backup
}

/// Puts the copy made by [`copy_database`] back in place of `host`'s database (stopped).
fn restore_database(host: &HostProcess, backup: &std::path::Path) {
    for file in database_files(host) {
        std::fs::remove_file(file).unwrap();
    }
    for file in std::fs::read_dir(backup).unwrap() {
        let file = file.unwrap().path();
        std::fs::copy(&file, host.state_dir.join(file.file_name().unwrap())).unwrap();
    }
}

fn database_files(host: &HostProcess) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(&host.state_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("host.db"))
        })
        .collect()
}

/// A text from alice to bob, sealed under `session` (which moves on), as the test plays
/// alice's host.
fn alice_to_bob(
    session: &mut smvsd::session::SessionV2,
    text: &str,
) -> smvs_tests::impersonate::RawEnvelope {
    let id = smvsd::model::MessageId::random();
    let inner = smvs_tests::impersonate::text_message(id, "alice", "bob", 1, &[], text).unwrap();
    smvs_tests::impersonate::RawEnvelope {
        id,
        sender: "alice".into(),
        recipient: "bob".into(),
        sealed: smvs_tests::impersonate::seal_v2(session, &inner).unwrap(),
    }
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
    let (mut alice, bob) = alice_and_bob(&dir, &[]).unwrap();
    exchange(&alice, &bob, "before the copy");
    exchange(&bob, &alice, "reply before the copy");

    // A copy of alice's database, taken while her host is stopped.
    alice.stop().unwrap();
    let backup = copy_database(&alice, "backup");
    alice.start_again().unwrap();
    // The ratchets move on, on both sides.
    for i in 0..3 {
        exchange(&alice, &bob, &format!("after the copy {i}"));
        exchange(&bob, &alice, &format!("reply after the copy {i}"));
    }

    // Alice's host comes back on the old copy: its ratchets are behind bob's.
    alice.stop().unwrap();
    restore_database(&alice, &backup);
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

/// The test plays alice's host (her transport key, her keyguard) and talks raw `HostLink` to
/// bob's, in session v2: a good envelope is taken once however often it comes; a tampered one,
/// one of another session, and a v1 one (a downgrade) are not taken, and bob's host says so
/// without storing anything; handshakes past the limit are answered "later". Afterwards the
/// real hosts talk again as if nothing happened.
#[test]
fn forged_replayed_and_downgraded_v2_envelopes_change_nothing() {
    use smvs_tests::impersonate::{
        self, deliver, deliver_v2, link, play_host, text_message, RawEnvelope,
    };
    use smvsd::model::MessageId;

    let (rt, dir) = smvs_tests::runtime::runtime_and_directory().unwrap();
    let (mut alice, bob) = alice_and_bob(&dir, &[]).unwrap();
    exchange(&alice, &bob, "hello");
    alice.stop().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, async {
        let played = play_host(&dir, &alice, &bob).await.unwrap();
        let link = link(&bob, &played.transport, &played.peer_transport)
            .await
            .unwrap();
        let mut session = impersonate::v2_handshake(&alice, "bob", &played, &link)
            .await
            .unwrap();
        let session_id = session.id();
        let envelope = alice_to_bob;
        let said = |r: Result<impersonate::Receipt, capnp::Error>, wanted: &str| {
            let e = r.expect_err("must not be taken").to_string();
            assert!(e.contains(wanted), "{e} (wanted {wanted:?})");
        };

        // Taken, once, however often it comes.
        let good = envelope(&mut session, "raw v2 hello");
        deliver_v2(&link, &good, &session_id).await.unwrap();
        deliver_v2(&link, &good, &session_id).await.unwrap();
        let count = |text: &str| {
            texts(&bob.history("alice").unwrap())
                .iter()
                .filter(|t| *t == text)
                .count()
        };
        assert_eq!(count("raw v2 hello"), 1);

        // Tampered: not taken, and the sender is asked for a new session.
        let mut tampered = envelope(&mut session, "tampered");
        let last = tampered.sealed.len() - 1;
        tampered.sealed[last] ^= 0x40;
        said(
            deliver_v2(&link, &tampered, &session_id).await,
            "later: session-reset",
        );
        // Named for another session.
        let other = envelope(&mut session, "other session");
        said(
            deliver_v2(&link, &other, &[9; 16]).await,
            "later: session-reset",
        );
        // The session still works for what follows in it (nothing above moved bob's ratchet).
        let after = envelope(&mut session, "still in step");
        deliver_v2(&link, &after, &session_id).await.unwrap();
        // A v1 envelope now is a downgrade: kept at the sender, not taken.
        let id = MessageId::random();
        let inner = text_message(id, "alice", "bob", 1, &[], "v1 again").unwrap();
        said(
            deliver(
                &link,
                &RawEnvelope {
                    id,
                    sender: "alice".into(),
                    recipient: "bob".into(),
                    sealed: impersonate::seal(&played.keys, &inner).unwrap(),
                },
            )
            .await,
            "downgrade",
        );
        // Oversized: refused before anything else.
        said(
            deliver_v2(
                &link,
                &RawEnvelope {
                    id: MessageId::random(),
                    sender: "alice".into(),
                    recipient: "bob".into(),
                    sealed: vec![0; 200_000],
                },
                &session_id,
            )
            .await,
            "refused",
        );
        for text in ["tampered", "other session", "v1 again"] {
            assert_eq!(count(text), 0, "{text}");
        }
        assert_eq!(count("still in step"), 1);

        // Handshakes past the limit (8 in 10 s, the first one above included) are answered
        // "later", without keyguard being asked.
        let mut limited = None;
        for _ in 0..10 {
            if let Err(e) = impersonate::v2_handshake(&alice, "bob", &played, &link).await {
                limited = Some(e.to_string());
                break;
            }
        }
        let limited = limited.expect("the handshakes were never limited");
        assert!(limited.contains("too many session handshakes"), "{limited}");
    });
    // The real hosts carry on: bob's session is the test's last one, which alice's host does
    // not have; the first envelope is answered "session-reset" and a new session is made.
    alice.start_again().unwrap();
    exchange(&alice, &bob, "after the impostor");
    exchange(&bob, &alice, "and back");
    assert!(
        bob.logs().contains("did not take a session v1 envelope"),
        "{}",
        bob.logs()
    );
}

/// First contact while the recipient's host is away: alice's host makes the session from the
/// prekey bob's record publishes, without bob's host, and her messages go in one flight when
/// it is back (no interactive handshake either way). Bob's host makes the same session from
/// its own prekey; once he has answered, the conversation carries on in it.
#[test]
fn a_first_message_to_a_host_that_is_away_goes_by_its_published_prekey() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (alice, mut bob) = alice_and_bob(&dir, &[]).unwrap();
    assert!(
        bob.logs().contains("published session v2 keys"),
        "{}",
        bob.logs()
    );
    bob.stop().unwrap();

    let first = alice.send("bob", "first, while you are away").unwrap();
    let second = alice.send("bob", "second, still away").unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while !alice
        .logs()
        .contains("made a session v2 from the peer's prekey")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no prekey session: {}",
            alice.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The session exists before bob's host was ever reached.
    assert_eq!(session_version(&alice, "bob"), 2);

    bob.start_again().unwrap();
    for id in [&first, &second] {
        bob.wait_history("alice", WAIT, |h| h.iter().any(|m| m["id"] == id.as_str()))
            .unwrap();
        alice
            .wait_history("bob", WAIT, |h| {
                h.iter()
                    .any(|m| m["id"] == id.as_str() && m["status"] == "delivered")
            })
            .unwrap();
    }
    assert!(
        bob.logs().contains("made a session v2 from our prekey"),
        "{}",
        bob.logs()
    );
    exchange(&bob, &alice, "welcome back to me");
    exchange(&alice, &bob, "third, in the same session");
    // Neither host needed the interactive handshake.
    for host in [&alice, &bob] {
        let logs = host.logs();
        assert!(!logs.contains("we initiated"), "{logs}");
        assert!(!logs.contains("the peer initiated)"), "{logs}");
    }
    assert_eq!(session_version(&bob, "alice"), 2);
    assert_eq!(
        texts(&bob.history("alice").unwrap()),
        [
            "first, while you are away",
            "second, still away",
            "welcome back to me",
            "third, in the same session"
        ]
    );
}

/// A prekey handshake can be replayed (there are no one-time prekeys), so bob's host keeps
/// what it accepted. The test plays alice's host and sends bob's first messages by his
/// published prekey. Then bob's host comes back on a copy of its database (so it forgets its
/// sessions, as after any restore) and the first envelope comes again: it is not taken. An
/// offer never replaces a live session (the sender is answered "session-reset" and makes a new
/// one); one naming a prekey bob's keyguard no longer holds is answered the same way; a forged
/// X-Wing key is refused.
#[test]
fn a_replayed_prekey_handshake_is_refused() {
    use smvs_tests::impersonate::{self, deliver_v2, deliver_v2_offered, link, play_host};

    let (rt, dir) = smvs_tests::runtime::runtime_and_directory().unwrap();
    let (mut alice, mut bob) = alice_and_bob(&dir, &[]).unwrap();
    alice.stop().unwrap();
    let envelope = alice_to_bob;
    let count = |bob: &HostProcess, text: &str| {
        texts(&bob.history("alice").unwrap())
            .iter()
            .filter(|t| *t == text)
            .count()
    };
    let said = |r: Result<impersonate::Receipt, capnp::Error>, wanted: &[&str]| {
        let e = r.expect_err("must not be taken").to_string();
        for w in wanted {
            assert!(e.contains(w), "{e} (wanted {w:?})");
        }
    };
    let (first, offer, prekey_id) = tokio::task::LocalSet::new().block_on(&rt, async {
        let played = play_host(&dir, &alice, &bob).await.unwrap();
        let link = link(&bob, &played.transport, &played.peer_transport)
            .await
            .unwrap();
        let mut by_prekey = impersonate::v2_prekey_session(&dir, &alice, "bob", &played)
            .await
            .unwrap();
        let offer = by_prekey.offer().unwrap().clone();
        let prekey_id = by_prekey.id();

        // A forged X-Wing key beside the handshake: refused, nothing stored.
        let mut forged = offer.clone();
        forged.kem[0] ^= 1;
        let probe = envelope(&mut by_prekey.clone(), "forged key");
        said(
            deliver_v2_offered(&link, &probe, &prekey_id, &forged).await,
            &["refused"],
        );
        // A prekey bob's keyguard never held (or no longer holds): the sender starts over.
        let mut gone = offer.clone();
        gone.init[4] ^= 0x55;
        said(
            deliver_v2_offered(&link, &probe, &prekey_id, &gone).await,
            &["later: session-reset", "no longer held"],
        );

        let first = envelope(&mut by_prekey, "by prekey");
        deliver_v2_offered(&link, &first, &prekey_id, &offer)
            .await
            .unwrap();
        let again = envelope(&mut by_prekey, "by prekey, again in it");
        deliver_v2_offered(&link, &again, &prekey_id, &offer)
            .await
            .unwrap();
        assert_eq!(count(&bob, "by prekey"), 1);
        assert_eq!(count(&bob, "by prekey, again in it"), 1);
        assert_eq!(count(&bob, "forged key"), 0);
        (first, offer, prekey_id)
    });

    // Bob's host is restored from a copy taken after the handshake: it forgets its sessions,
    // and keeps what it accepted.
    bob.stop().unwrap();
    let backup = copy_database(&bob, "backup");
    bob.start_again().unwrap();
    bob.stop().unwrap();
    restore_database(&bob, &backup);
    bob.start_again().unwrap();
    assert!(
        bob.logs().contains("older than the key guard's counter"),
        "{}",
        bob.logs()
    );
    tokio::task::LocalSet::new().block_on(&rt, async {
        let played = play_host(&dir, &alice, &bob).await.unwrap();
        let link = link(&bob, &played.transport, &played.peer_transport)
            .await
            .unwrap();
        said(
            deliver_v2_offered(&link, &first, &prekey_id, &offer).await,
            &["later: session-reset", "used before"],
        );
        assert_eq!(count(&bob, "by prekey"), 1);

        // A live session is not replaced by an offer.
        let mut interactive = impersonate::v2_handshake(&alice, "bob", &played, &link)
            .await
            .unwrap();
        let mut late = impersonate::v2_prekey_session(&dir, &alice, "bob", &played)
            .await
            .unwrap();
        let late_offer = late.offer().unwrap().clone();
        let late_envelope = envelope(&mut late, "a late offer");
        said(
            deliver_v2_offered(&link, &late_envelope, &late.id(), &late_offer).await,
            &["later: session-reset", "not the session we have"],
        );
        let next = envelope(&mut interactive, "in the live session");
        deliver_v2(&link, &next, &interactive.id()).await.unwrap();
        assert_eq!(count(&bob, "in the live session"), 1);
        assert_eq!(count(&bob, "a late offer"), 0);
    });
    alice.start_again().unwrap();
    exchange(&alice, &bob, "after the replay");
    exchange(&bob, &alice, "and back");
}

/// Both sides write at once when bob's host comes back: alice's messages wait under a session
/// made from bob's prekey, and bob writes to her as soon as his host is up, before her host's
/// next round. Whichever session wins (her prekey session, or his interactive one, which
/// replaces hers), every message arrives, once, and the conversation goes on in one session.
#[test]
fn when_both_sides_write_as_the_host_comes_back_nothing_is_lost() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (alice, mut bob) = alice_and_bob(&dir, &[]).unwrap();
    bob.stop().unwrap();
    let from_alice: Vec<String> = (0..3)
        .map(|i| alice.send("bob", &format!("alice {i}")).unwrap())
        .collect();
    let deadline = std::time::Instant::now() + WAIT;
    while !alice
        .logs()
        .contains("made a session v2 from the peer's prekey")
    {
        assert!(std::time::Instant::now() < deadline, "{}", alice.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    bob.start_again().unwrap();
    let from_bob: Vec<String> = (0..3)
        .map(|i| bob.send("alice", &format!("bob {i}")).unwrap())
        .collect();
    for (host, peer, ids) in [(&alice, "bob", &from_alice), (&bob, "alice", &from_bob)] {
        host.wait_history(peer, WAIT, |h| {
            ids.iter().all(|id| {
                h.iter()
                    .any(|m| m["id"] == id.as_str() && m["status"] == "delivered")
            })
        })
        .unwrap();
    }
    exchange(&alice, &bob, "and then, one session");
    exchange(&bob, &alice, "and back");
    for (host, peer) in [(&alice, "bob"), (&bob, "alice")] {
        let got = texts(&host.history(peer).unwrap());
        assert_eq!(got.len(), 8, "{got:?}");
        for i in 0..3 {
            let n = got.iter().filter(|t| **t == format!("alice {i}")).count();
            assert_eq!(n, 1, "{got:?}");
            let n = got.iter().filter(|t| **t == format!("bob {i}")).count();
            assert_eq!(n, 1, "{got:?}");
        }
    }
}
