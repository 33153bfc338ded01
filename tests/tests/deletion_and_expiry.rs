//! Deleting messages and conversations on one host or on both, a host that refuses remote
//! deletes, and disappearing messages (which never disappear from the outbox). Real
//! smvs-directory, smvs-keyguard, smvsd and smvsctl processes on 127.0.0.x; events are read
//! from `smvsctl watch` (`smvs_tests::watch`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::Value;
use smvs_tests::conversation::{alice_and_bob, exchange_three, ids};
use smvs_tests::watch::{Watch, LIMIT};
use smvs_tests::{DirectoryProcess, HostProcess};

/// A `message_status` event saying an id outside `known` (a control message: delete requests
/// and expiry settings are not part of history) was delivered.
fn control_delivered(known: &HashSet<String>) -> impl Fn(&Value) -> bool + '_ {
    move |e| {
        e["event"] == "message_status"
            && e["status"] == "delivered"
            && e["peer"] == "bob"
            && !known.contains(e["id"].as_str().unwrap_or_default())
    }
}

#[test]
fn delete_everywhere_removes_the_message_and_then_the_conversation_on_both_hosts() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (alice, bob) = alice_and_bob(&dir, &[]).unwrap();
    let [a1, b1, a2] = exchange_three(&alice, &bob).unwrap();
    let mut known: HashSet<String> = [&a1, &b1, &a2].into_iter().cloned().collect();
    let mut alice_watch = Watch::start(&alice).unwrap();
    let mut bob_watch = Watch::start(&bob).unwrap();

    // One message, by id.
    let out = alice
        .ctl_json(&["delete", "bob", "--id", &a1, "--everywhere"])
        .unwrap();
    assert_eq!(out["deleted"], 1, "{out}");
    assert_eq!(ids(&alice.history("bob").unwrap()), [b1.as_str(), &a2]);
    // The request's receipt is the confirmation: once it is delivered, bob's host has deleted.
    let request = alice_watch
        .wait_for("the delete request delivered", control_delivered(&known))
        .unwrap();
    known.insert(request["id"].as_str().unwrap().to_owned());
    assert_eq!(
        ids(&bob.history("alice").unwrap()),
        [b1.as_str(), &a2],
        "gone at bob's as soon as the request is delivered; the others stay"
    );
    bob_watch
        .wait_for("deleted (one message)", |e| {
            e["event"] == "deleted" && e["peer"] == "alice" && e["id"] == a1.as_str()
        })
        .unwrap();

    // The whole conversation.
    let out = alice.ctl_json(&["delete", "bob", "--everywhere"]).unwrap();
    assert_eq!(out["deleted"], 2, "{out}");
    assert!(alice.history("bob").unwrap().is_empty());
    let request = alice_watch
        .wait_for(
            "the delete-conversation request delivered",
            control_delivered(&known),
        )
        .unwrap();
    known.insert(request["id"].as_str().unwrap().to_owned());
    assert_eq!(bob.history("alice").unwrap(), Vec::<Value>::new());
    bob_watch
        .wait_for("deleted (the whole conversation)", |e| {
            e["event"] == "deleted" && e["peer"] == "alice" && e["id"].is_null()
        })
        .unwrap();
    for host in [&alice, &bob] {
        let convs = host.ctl_json(&["conversations"]).unwrap();
        assert_eq!(convs, serde_json::json!([]), "{}", host.name);
    }

    // The conversation can start again, and nothing about the deletion looks like tampering:
    // the next message is not a "gap" and raises no integrity problem on either side.
    let a3 = alice.send("bob", "starting over").unwrap();
    bob_watch
        .wait_for("the new message", |e| {
            e["event"] == "message_received" && e["id"] == a3.as_str()
        })
        .unwrap();
    let events = bob_watch.everything_so_far(&bob).unwrap();
    let problems: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "integrity_problem")
        .collect();
    let h = bob.history("alice").unwrap();
    assert_eq!(ids(&h), [a3.as_str()]);
    assert!(
        problems.is_empty() && h[0]["integrity"] == "ok",
        "a deleted conversation looks like a broken chain at bob's: {h:?}, events {problems:?}"
    );
    let b2 = bob.send("alice", "welcome back").unwrap();
    let h = alice
        .wait_history("bob", LIMIT, |h| h.iter().any(|m| m["id"] == b2.as_str()))
        .unwrap();
    assert_eq!(ids(&h), [a3.as_str(), &b2]);
    assert_eq!(h[1]["integrity"], "ok", "{h:?}");
}

#[test]
fn a_host_that_refuses_remote_deletes_keeps_its_messages() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (alice, bob) = alice_and_bob(&dir, &["--refuse-remote-delete"]).unwrap();
    let [a1, b1, a2] = exchange_three(&alice, &bob).unwrap();
    let mut known: HashSet<String> = [&a1, &b1, &a2].into_iter().cloned().collect();
    let mut alice_watch = Watch::start(&alice).unwrap();
    let mut bob_watch = Watch::start(&bob).unwrap();

    alice
        .ctl_ok(&["delete", "bob", "--id", &a1, "--everywhere"])
        .unwrap();
    let request = alice_watch
        .wait_for("the delete request delivered", control_delivered(&known))
        .unwrap();
    known.insert(request["id"].as_str().unwrap().to_owned());
    alice.ctl_ok(&["delete", "bob", "--everywhere"]).unwrap();
    alice_watch
        .wait_for(
            "the delete-conversation request delivered",
            control_delivered(&known),
        )
        .unwrap();
    assert!(alice.history("bob").unwrap().is_empty());

    // Both requests reached bob's host (their receipts say so) and changed nothing there.
    let h = bob.history("alice").unwrap();
    assert_eq!(ids(&h), [a1.as_str(), &b1, &a2]);
    let deleted: Vec<Value> = bob_watch
        .everything_so_far(&bob)
        .unwrap()
        .into_iter()
        .filter(|e| e["event"] == "deleted" && e["peer"] == "alice")
        .collect();
    assert!(deleted.is_empty(), "{deleted:?}");
}

#[test]
fn a_peer_cannot_delete_what_the_other_side_wrote() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (alice, bob) = alice_and_bob(&dir, &[]).unwrap();
    alice.send("bob", "mine").unwrap();
    bob.wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
    let bobs = bob.send("alice", "bob's words").unwrap();
    alice
        .wait_history("bob", Duration::from_secs(30), |h| h.len() == 2)
        .unwrap();
    // Alice asks both hosts to delete bob's message: it goes from her host only.
    alice
        .ctl_ok(&["delete", "bob", "--id", &bobs, "--everywhere"])
        .unwrap();
    assert_eq!(alice.history("bob").unwrap().len(), 1);
    // Envelopes arrive in order: once "after" is there, the request was handled before it.
    alice.send("bob", "after").unwrap();
    let h = bob
        .wait_history("alice", Duration::from_secs(30), |h| {
            h.iter().any(|m| m["body"] == "after")
        })
        .unwrap();
    assert!(
        h.iter().any(|m| m["id"] == bobs.as_str()),
        "bob keeps what he wrote: {h:?}"
    );
}

fn expire_seconds(host: &HostProcess, peer: &str) -> Option<u64> {
    let convs = host.ctl_json(&["conversations"]).unwrap();
    convs
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["peer"] == peer)
        .map(|c| c["expire_seconds"].as_u64().unwrap())
}

/// Polls `history PEER` until `gone` is no longer in it; returns when that was seen.
fn wait_gone(host: &HostProcess, peer: &str, gone: &str, limit: Duration) -> Instant {
    host.wait_history(peer, limit, |h| h.iter().all(|m| m["id"] != gone))
        .unwrap();
    Instant::now()
}

#[test]
fn disappearing_messages_vanish_on_both_hosts_but_never_from_the_outbox() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (alice, mut bob) = alice_and_bob(&dir, &[]).unwrap();
    let expiry = Duration::from_secs(2);
    let limit = Duration::from_secs(15);
    let mut alice_watch = Watch::start(&alice).unwrap();

    let out = alice.ctl_json(&["expire", "bob", "2"]).unwrap();
    assert_eq!(out["expire_seconds"], 2, "{out}");
    assert_eq!(expire_seconds(&alice, "bob"), Some(2));
    let convs = alice.ctl_json(&["conversations"]).unwrap();
    assert_eq!(
        convs[0]["messages"], 0,
        "a setting is not a message: {convs}"
    );
    // The setting travels to bob's host.
    let deadline = Instant::now() + limit;
    while expire_seconds(&bob, "alice") != Some(2) {
        assert!(
            Instant::now() < deadline,
            "bob's host never took the setting: {}",
            bob.ctl_json(&["conversations"]).unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Messages both ways arrive, then vanish from both histories, no sooner than the expiry.
    let mut bob_watch = Watch::start(&bob).unwrap();
    let start = Instant::now();
    let a1 = alice.send("bob", "this will self-destruct").unwrap();
    let b1 = bob.send("alice", "so will this").unwrap();
    bob_watch
        .wait_for("alice's message", |e| {
            e["event"] == "message_received" && e["id"] == a1.as_str()
        })
        .unwrap();
    alice_watch
        .wait_for("bob's message", |e| {
            e["event"] == "message_received" && e["id"] == b1.as_str()
        })
        .unwrap();
    alice_watch
        .wait_for("alice's message delivered", |e| {
            e["event"] == "message_status" && e["id"] == a1.as_str() && e["status"] == "delivered"
        })
        .unwrap();
    for (host, peer) in [(&alice, "bob"), (&bob, "alice")] {
        for id in [&a1, &b1] {
            let at = wait_gone(host, peer, id, limit);
            assert!(
                at - start >= expiry,
                "{id} left {}'s history after {:?}, before it expired",
                host.name,
                at - start
            );
        }
    }
    assert_eq!(alice.history("bob").unwrap(), Vec::<Value>::new());
    assert_eq!(bob.history("alice").unwrap(), Vec::<Value>::new());
    // Each device heard of each message that expired, as a deletion.
    for (watch, peer) in [(&mut alice_watch, "bob"), (&mut bob_watch, "alice")] {
        for id in [&a1, &b1] {
            watch
                .wait_for("the expired message's deletion", |e| {
                    e["event"] == "deleted" && e["id"] == id.as_str() && e["peer"] == peer
                })
                .unwrap();
        }
    }

    // A message waiting in the outbox does not expire: bob's host is down for longer than the
    // expiry, and the message still arrives when it is back.
    drop(bob_watch);
    assert!(bob.stop().unwrap().success());
    let queued_at = Instant::now();
    let waiting = alice.send("bob", "sent while you were away").unwrap();
    while queued_at.elapsed() < expiry * 2 {
        let h = alice.history("bob").unwrap();
        assert!(
            h.iter()
                .any(|m| m["id"] == waiting.as_str() && m["status"] != "delivered"),
            "a message in the outbox expired: {h:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(alice.ctl_json(&["status"]).unwrap()["queued"], 1);
    bob.start_again().unwrap();
    alice_watch
        .wait_for("the waiting message delivered", |e| {
            e["event"] == "message_status"
                && e["id"] == waiting.as_str()
                && e["status"] == "delivered"
        })
        .unwrap();
    let h = bob
        .wait_history("alice", limit, |h| {
            h.iter().any(|m| m["id"] == waiting.as_str())
        })
        .unwrap();
    assert_eq!(h.len(), 1, "{h:?}");
    // Delivered, it now expires like any other message, on both sides.
    wait_gone(&bob, "alice", &waiting, limit);
    wait_gone(&alice, "bob", &waiting, limit);
}

/// Copies `host`'s database files (stopped) into a new folder under its root; returns the
/// database's path there.
fn copy_database(host: &HostProcess, name: &str) -> std::path::PathBuf {
    let copy = host.root.path().join(name);
    std::fs::create_dir(&copy).unwrap();
    for entry in std::fs::read_dir(&host.state_dir).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("host.db"))
        {
            std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
        }
    }
    copy.join("host.db")
}

/// Storage epochs: a copy of alice's database taken before she deleted her conversation with
/// bob, and every storage key her key guard holds after that, do not open what was deleted in
/// between, nor anything else in the copy. Before the deletion the same copy opened with the
/// keys of then (so the test can fail). Her host goes on as before.
#[test]
fn a_copy_of_the_database_from_before_a_deleted_conversation_does_not_open_with_the_keys_of_after()
{
    use smvsd::storage::{AtRest, Epoch, EpochKeys, Storage, StorageError};

    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (mut alice, bob) = alice_and_bob(&dir, &[]).unwrap();
    exchange_three(&alice, &bob).unwrap();
    let bob_name = smvs_schema::Username::parse("bob").unwrap();
    let storage_keys = |host: &HostProcess| {
        smvs_tests::runtime::run_local(async {
            let keys = host.keyguard.client().await?.storage_keys().await?;
            Ok::<_, anyhow::Error>(EpochKeys {
                derived: keys.derived,
                current: Epoch {
                    id: keys.current.id,
                    key: keys.current.key,
                },
                previous: keys.previous.map(|p| Epoch {
                    id: p.id,
                    key: p.key,
                }),
            })
        })
        .unwrap()
        .unwrap()
    };

    // The copy made today, and what it opens with today.
    alice.stop().unwrap();
    let copy = copy_database(&alice, "copy-today");
    let probe = copy_database(&alice, "copy-probe");
    alice.start_again().unwrap();
    let before = storage_keys(&alice);
    assert_eq!(before.current.id, 1);
    let (opened, _) = Storage::open_with_epochs(&probe, before).unwrap();
    let held = smvs_tests::runtime::run_local(async {
        Ok::<_, anyhow::Error>(opened.history(&bob_name, 0).await?.len())
    })
    .unwrap()
    .unwrap();
    assert!(held >= 3, "the copy opens with the keys of today ({held})");
    drop(opened);

    // Alice deletes the whole conversation: the storage epoch moves on and the old one goes.
    alice.ctl_json(&["delete", "bob"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !alice.logs().contains("moved to a new storage epoch") {
        assert!(Instant::now() < deadline, "no new epoch: {}", alice.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = storage_keys(&alice);
    assert_eq!(after.current.id, 2);
    assert!(after.previous.is_none(), "the old epoch is destroyed");

    // The thief: the copy of today, every key there is next month.
    let raw = rusqlite::Connection::open(&copy).unwrap();
    let wrapped: Vec<(Vec<u8>, Vec<u8>)> = raw
        .prepare("SELECT tag, wrapped_key FROM conversations")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(!wrapped.is_empty());
    let thief = AtRest::with_epoch(
        &after.derived,
        1,
        smvs_crypto::AeadKey::from_bytes(after.current.key.expose()).unwrap(),
    )
    .unwrap();
    assert_eq!(thief.tag(&bob_name).unwrap(), wrapped[0].0, "the same tags");
    for (tag, key) in &wrapped {
        assert!(
            thief.unwrap_conversation_key(tag, key).is_err(),
            "a conversation key of the copy opened with a key of after"
        );
    }
    drop(raw);
    let e = Storage::open_with_epochs(&copy, after).err().unwrap();
    assert!(matches!(e, StorageError::EpochGone { found: 1, .. }), "{e}");
    assert!(e.to_string().contains("key is destroyed"), "{e}");

    // Alice's own database moved with her: it opens, and the conversation starts anew.
    alice.stop().unwrap();
    alice.start_again().unwrap();
    assert!(alice.history("bob").unwrap().is_empty());
    let id = alice.send("bob", "after the new epoch").unwrap();
    alice
        .wait_history("bob", Duration::from_secs(60), |h| {
            h.iter()
                .any(|m| m["id"] == id.as_str() && m["status"] == "delivered")
        })
        .unwrap();
}
