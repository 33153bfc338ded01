#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

//! The host's conversation features end to end: delete everywhere, disappearing messages and
//! the per-sender hash chain (gaps, late messages, transcript hashes). Real smvs-directory,
//! smvs-keyguard, smvsd and smvsctl processes on 127.0.0.x; where a test must send what a
//! correct host never would (a chain with holes, a message arriving late), it plays alice's host
//! itself with her transport key and her keyguard, as `host_link.rs` does.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;
use smvs_schema::host_capnp::host_link;
use smvs_schema::Username;
use smvs_tests::impersonate::{self, link, play_host, text_message, RawEnvelope};
use smvs_tests::runtime::runtime_and_directory;
use smvs_tests::{DirectoryProcess, HostProcess};
use smvsd::model::{message_hash, MessageId, Payload};
use smvsd::session::SessionKeys;

const LIMIT: Duration = Duration::from_secs(30);

/// alice on 127.0.0.1 and bob on 127.0.0.2 (with `bob_extra` flags), both registered.
fn alice_and_bob(dir: &DirectoryProcess, bob_extra: &[&str]) -> (HostProcess, HostProcess) {
    let alice = HostProcess::start("alice", dir, "127.0.0.1", &[]).unwrap();
    let bob = HostProcess::start("bob", dir, "127.0.0.2", bob_extra).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    (alice, bob)
}

fn ids(history: &[Value]) -> Vec<&str> {
    history.iter().map(|m| m["id"].as_str().unwrap()).collect()
}

/// alice → bob, bob → alice, alice → bob; returns the three ids once both histories hold all
/// three and every message is delivered.
fn exchange_three(alice: &HostProcess, bob: &HostProcess) -> [String; 3] {
    let a1 = alice.send("bob", "one, from alice").unwrap();
    bob.wait_history("alice", LIMIT, |h| h.len() == 1).unwrap();
    let b1 = bob.send("alice", "two, from bob").unwrap();
    alice.wait_history("bob", LIMIT, |h| h.len() == 2).unwrap();
    let a2 = alice.send("bob", "three, from alice").unwrap();
    let all = [a1, b1, a2];
    let done = |h: &[Value]| {
        ids(h) == all.iter().map(String::as_str).collect::<Vec<_>>()
            && h.iter()
                .all(|m| m["status"] == "delivered" || m["status"] == "received")
    };
    alice.wait_history("bob", LIMIT, done).unwrap();
    bob.wait_history("alice", LIMIT, done).unwrap();
    all
}

/// Deleting the (never existing) conversation with this user changes nothing but publishes a
/// `deleted` event: a marker in the event stream.
const MARKER_PEER: &str = "zz-marker";

/// A running `smvsctl --json watch`: every event it printed, read by a thread, so a test can
/// wait for one with a deadline.
struct Watch {
    host: String,
    child: Option<Child>,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Watch {
    /// Starts watching and returns once the subscription is live (a marker event came through).
    fn start(host: &HostProcess) -> Watch {
        let mut child = host
            .ctl_command(&["--json", "watch"])
            .unwrap()
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let event = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("watch printed {line:?}, not JSON: {e}"));
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        let mut watch = Watch {
            host: host.name.clone(),
            child: Some(child),
            lines,
            seen: Vec::new(),
        };
        // Publish markers until one arrives: from then on every event reaches this watcher.
        let deadline = Instant::now() + LIMIT;
        loop {
            host.ctl_ok(&["delete", MARKER_PEER]).unwrap();
            if watch
                .next_within(Duration::from_millis(300), is_marker)
                .is_some()
            {
                break;
            }
            assert!(Instant::now() < deadline, "the watcher never subscribed");
        }
        watch
    }

    /// The first event (already seen or still to come within `limit`) that `matches`.
    fn next_within(&mut self, limit: Duration, matches: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(e) = self.seen.iter().find(|e| matches(e)) {
            return Some(e.clone());
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(event) => {
                    self.seen.push(event.clone());
                    if matches(&event) {
                        return Some(event);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => return None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("{}'s watcher ended; it saw {:?}", self.host, self.seen)
                }
            }
        }
    }

    /// As [`Watch::next_within`], failing the test when no such event comes in time.
    fn wait_for(&mut self, what: &str, matches: impl Fn(&Value) -> bool) -> Value {
        self.next_within(LIMIT, matches).unwrap_or_else(|| {
            panic!(
                "{}'s watcher did not see {what} within {LIMIT:?}; it saw {:?}",
                self.host, self.seen
            )
        })
    }

    /// Every event published on `host` up to now: publishes a marker and reads up to it (events
    /// reach a device in the order they were published).
    fn everything_so_far(&mut self, host: &HostProcess) -> Vec<Value> {
        let before = self.seen.iter().filter(|e| is_marker(e)).count();
        host.ctl_ok(&["delete", MARKER_PEER]).unwrap();
        let deadline = Instant::now() + LIMIT;
        while self.seen.iter().filter(|e| is_marker(e)).count() <= before {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(event) => self.seen.push(event),
                Err(e) => panic!(
                    "{}'s watcher: no marker ({e}); saw {:?}",
                    self.host, self.seen
                ),
            }
        }
        self.seen.clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn is_marker(e: &Value) -> bool {
    e["event"] == "deleted" && e["peer"] == MARKER_PEER
}

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

// ---------------------------------------------------------------------------------------------
// 1. Delete everywhere

#[test]
fn delete_everywhere_removes_the_message_and_then_the_conversation_on_both_hosts() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (alice, bob) = alice_and_bob(&dir, &[]);
    let [a1, b1, a2] = exchange_three(&alice, &bob);
    let mut known: HashSet<String> = [&a1, &b1, &a2].into_iter().cloned().collect();
    let mut alice_watch = Watch::start(&alice);
    let mut bob_watch = Watch::start(&bob);

    // One message, by id.
    let out = alice
        .ctl_json(&["delete", "bob", "--id", &a1, "--everywhere"])
        .unwrap();
    assert_eq!(out["deleted"], 1, "{out}");
    assert_eq!(ids(&alice.history("bob").unwrap()), [b1.as_str(), &a2]);
    // The request's receipt is the confirmation: once it is delivered, bob's host has deleted.
    let request = alice_watch.wait_for("the delete request delivered", control_delivered(&known));
    known.insert(request["id"].as_str().unwrap().to_owned());
    assert_eq!(
        ids(&bob.history("alice").unwrap()),
        [b1.as_str(), &a2],
        "gone at bob's as soon as the request is delivered; the others stay"
    );
    bob_watch.wait_for("deleted (one message)", |e| {
        e["event"] == "deleted" && e["peer"] == "alice" && e["id"] == a1.as_str()
    });

    // The whole conversation.
    let out = alice.ctl_json(&["delete", "bob", "--everywhere"]).unwrap();
    assert_eq!(out["deleted"], 2, "{out}");
    assert!(alice.history("bob").unwrap().is_empty());
    let request = alice_watch.wait_for(
        "the delete-conversation request delivered",
        control_delivered(&known),
    );
    known.insert(request["id"].as_str().unwrap().to_owned());
    assert_eq!(bob.history("alice").unwrap(), Vec::<Value>::new());
    bob_watch.wait_for("deleted (the whole conversation)", |e| {
        e["event"] == "deleted" && e["peer"] == "alice" && e["id"].is_null()
    });
    for host in [&alice, &bob] {
        let convs = host.ctl_json(&["conversations"]).unwrap();
        assert_eq!(convs, serde_json::json!([]), "{}", host.name);
    }

    // The conversation can start again, and nothing about the deletion looks like tampering:
    // the next message is not a "gap" and raises no integrity problem on either side.
    let a3 = alice.send("bob", "starting over").unwrap();
    bob_watch.wait_for("the new message", |e| {
        e["event"] == "message_received" && e["id"] == a3.as_str()
    });
    let events = bob_watch.everything_so_far(&bob);
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
    let (alice, bob) = alice_and_bob(&dir, &["--refuse-remote-delete"]);
    let [a1, b1, a2] = exchange_three(&alice, &bob);
    let mut known: HashSet<String> = [&a1, &b1, &a2].into_iter().cloned().collect();
    let mut alice_watch = Watch::start(&alice);
    let mut bob_watch = Watch::start(&bob);

    alice
        .ctl_ok(&["delete", "bob", "--id", &a1, "--everywhere"])
        .unwrap();
    let request = alice_watch.wait_for("the delete request delivered", control_delivered(&known));
    known.insert(request["id"].as_str().unwrap().to_owned());
    alice.ctl_ok(&["delete", "bob", "--everywhere"]).unwrap();
    alice_watch.wait_for(
        "the delete-conversation request delivered",
        control_delivered(&known),
    );
    assert!(alice.history("bob").unwrap().is_empty());

    // Both requests reached bob's host (their receipts say so) and changed nothing there.
    let h = bob.history("alice").unwrap();
    assert_eq!(ids(&h), [a1.as_str(), &b1, &a2]);
    let deleted: Vec<Value> = bob_watch
        .everything_so_far(&bob)
        .into_iter()
        .filter(|e| e["event"] == "deleted" && e["peer"] == "alice")
        .collect();
    assert!(deleted.is_empty(), "{deleted:?}");
}

// ---------------------------------------------------------------------------------------------
// 2. Disappearing messages

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
    let (alice, mut bob) = alice_and_bob(&dir, &[]);
    let expiry = Duration::from_secs(2);
    let limit = Duration::from_secs(15);
    let mut alice_watch = Watch::start(&alice);

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
    let mut bob_watch = Watch::start(&bob);
    let start = Instant::now();
    let a1 = alice.send("bob", "this will self-destruct").unwrap();
    let b1 = bob.send("alice", "so will this").unwrap();
    bob_watch.wait_for("alice's message", |e| {
        e["event"] == "message_received" && e["id"] == a1.as_str()
    });
    alice_watch.wait_for("bob's message", |e| {
        e["event"] == "message_received" && e["id"] == b1.as_str()
    });
    alice_watch.wait_for("alice's message delivered", |e| {
        e["event"] == "message_status" && e["id"] == a1.as_str() && e["status"] == "delivered"
    });
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
    alice_watch.wait_for("the waiting message delivered", |e| {
        e["event"] == "message_status" && e["id"] == waiting.as_str() && e["status"] == "delivered"
    });
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

// ---------------------------------------------------------------------------------------------
// 3. Conversation integrity

/// One message of alice's chain as the test writes it.
struct Link {
    id: MessageId,
    time: i64,
    prev: Vec<u8>,
    text: String,
}

impl Link {
    fn new(text: &str, prev: &[u8], time: i64) -> Link {
        Link {
            id: MessageId::random(),
            time,
            prev: prev.to_vec(),
            text: text.to_owned(),
        }
    }

    /// The hash the hosts chain with (what the next message names as `prev_hash`).
    fn hash(&self) -> Vec<u8> {
        message_hash(
            &self.id,
            &name("alice"),
            &name("bob"),
            self.time,
            &self.prev,
            &Payload::Text(self.text.clone()),
        )
        .to_vec()
    }

    fn sealed(&self, keys: &SessionKeys) -> Vec<u8> {
        let inner =
            text_message(self.id, "alice", "bob", self.time, &self.prev, &self.text).unwrap();
        impersonate::seal(keys, &inner).unwrap()
    }
}

fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

/// Delivers `link` as alice's host would; panics unless bob's host returns a receipt.
async fn deliver(client: &host_link::Client, keys: &SessionKeys, link: &Link) {
    let envelope = RawEnvelope {
        id: link.id,
        sender: "alice".into(),
        recipient: "bob".into(),
        sealed: link.sealed(keys),
    };
    let receipt = impersonate::deliver(client, &envelope).await.unwrap();
    assert_eq!(receipt.id, link.id.0);
}

/// Bob's integrity verdict on each of `links`, in history order.
fn verdicts(bob: &HostProcess, links: &[&Link]) -> Vec<String> {
    let h = bob.history("alice").unwrap();
    links
        .iter()
        .map(|l| {
            let m = h
                .iter()
                .find(|m| m["id"] == l.id.to_hex().as_str())
                .unwrap_or_else(|| panic!("{} ({}) is not in {h:?}", l.text, l.id));
            m["integrity"].as_str().unwrap().to_owned()
        })
        .collect()
}

fn problem_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "integrity_problem")
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_hash_chain_marks_gaps_and_late_messages() {
    let (rt, dir) = runtime_and_directory().unwrap();
    let (mut alice, bob) = alice_and_bob(&dir, &[]);
    // The test is alice's host from here on.
    alice.stop().unwrap();
    let mut bob_watch = Watch::start(&bob);

    let t = smvsd::model::now_ms();
    let m1 = Link::new("m1", &[], t);
    let m2 = Link::new("m2", &m1.hash(), t + 1);
    let m3 = Link::new("m3 (late)", &m2.hash(), t + 2);
    let m4 = Link::new("m4", &m3.hash(), t + 3);
    let m5 = Link::new("m5", &m4.hash(), t + 4);
    // A second hole, two messages wide, whose later half arrives late: m6 never comes, m7
    // comes after m8.
    let m6 = Link::new("m6 (never sent)", &m5.hash(), t + 5);
    let m7 = Link::new("m7 (late)", &m6.hash(), t + 6);
    let m8 = Link::new("m8", &m7.hash(), t + 7);
    let m9 = Link::new("m9", &m8.hash(), t + 8);

    tokio::task::LocalSet::new().block_on(&rt, async {
        let played = play_host(&dir, &alice, &bob).await.unwrap();
        let keys = &played.keys;
        let client = link(&bob, &played.transport, &played.peer_transport)
            .await
            .unwrap();

        // m1 → m2 → m4: m3 is missing.
        for link in [&m1, &m2, &m4] {
            deliver(&client, keys, link).await;
        }
        assert_eq!(
            verdicts(&bob, &[&m1, &m2, &m4]),
            ["unchecked", "ok", "gap"],
            "first message, its successor, a message after a hole"
        );
        let problem = bob_watch.wait_for("an integrity problem for m4", |e| {
            e["event"] == "integrity_problem" && e["id"] == m4.id.to_hex().as_str()
        });
        assert_eq!(problem["peer"], "alice");
        assert_eq!(
            problem_ids(&bob_watch.everything_so_far(&bob)),
            [m4.id.to_hex()],
            "m1 and m2 are fine"
        );

        // m3 arrives after m4, which named it as its predecessor: out of order. The chain goes
        // on from m4: m5 is in order.
        deliver(&client, keys, &m3).await;
        deliver(&client, keys, &m5).await;
        assert_eq!(
            verdicts(&bob, &[&m1, &m2, &m4, &m3, &m5]),
            ["unchecked", "ok", "gap", "out_of_order", "ok"]
        );
        assert_eq!(
            problem_ids(&bob_watch.everything_so_far(&bob)),
            [m4.id.to_hex(), m3.id.to_hex()]
        );

        // m8 (a hole: m6 and m7 missing), then m7 late, whose own predecessor m6 never comes.
        // m8 names m7, so m7 is out of order; and m9, which follows m8, must still be in order.
        deliver(&client, keys, &m8).await;
        deliver(&client, keys, &m7).await;
        deliver(&client, keys, &m9).await;
        assert_eq!(
            verdicts(&bob, &[&m8, &m7, &m9]),
            ["gap", "out_of_order", "ok"],
            "a late message must not pull the chain back"
        );
        assert_eq!(
            problem_ids(&bob_watch.everything_so_far(&bob)),
            [
                m4.id.to_hex(),
                m3.id.to_hex(),
                m8.id.to_hex(),
                m7.id.to_hex()
            ]
        );
    });
    let texts: Vec<String> = bob
        .history("alice")
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        texts,
        ["m1", "m2", "m4", "m3 (late)", "m5", "m8", "m7 (late)", "m9"],
        "history shows arrival order"
    );
    // The chain hashes cover the text, so none is stored as it is (a guessed text could be
    // confirmed against it): the database holds keyed hashes and sealed chain heads only.
    for link in [&m1, &m2, &m3, &m4, &m5, &m7, &m8, &m9] {
        let hash = link.hash();
        for entry in std::fs::read_dir(&bob.state_dir).unwrap() {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            assert!(
                !data.windows(hash.len()).any(|w| w == hash.as_slice()),
                "a plain chain hash is in {}",
                path.display()
            );
        }
    }
}

#[test]
fn transcript_hashes_agree_until_one_side_holds_a_message_the_other_does_not() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (alice, bob) = alice_and_bob(&dir, &[]);
    let [a1, _, _] = exchange_three(&alice, &bob);
    let transcript = |host: &HostProcess, peer: &str| -> String {
        host.ctl_json(&["verify", peer]).unwrap()["transcript_hash"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (ta, tb) = (transcript(&alice, "bob"), transcript(&bob, "alice"));
    assert_eq!(ta.len(), 64, "{ta}");
    assert_eq!(ta, tb, "the same three messages on both sides");

    // alice deletes one message on her host only: bob holds a message she does not.
    alice.ctl_ok(&["delete", "bob", "--id", &a1]).unwrap();
    assert_eq!(bob.history("alice").unwrap().len(), 3);
    let (ta2, tb2) = (transcript(&alice, "bob"), transcript(&bob, "alice"));
    assert_eq!(tb2, tb, "bob's transcript did not change");
    assert_ne!(ta2, tb2, "the transcripts now differ");

    // bob deletes it too: the two transcripts agree again.
    bob.ctl_ok(&["delete", "alice", "--id", &a1]).unwrap();
    assert_eq!(transcript(&bob, "alice"), ta2);

    // alice deletes the whole conversation on her host only. Her chain goes on: her next
    // message follows her last one at bob's, no gap.
    let out = alice.ctl_json(&["delete", "bob"]).unwrap();
    assert_eq!(out["deleted"], 2, "{out}");
    let a3 = alice.send("bob", "after a local delete").unwrap();
    let h = bob
        .wait_history("alice", LIMIT, |h| h.iter().any(|m| m["id"] == a3.as_str()))
        .unwrap();
    assert_eq!(h.len(), 3, "{h:?}");
    assert_eq!(h[2]["integrity"], "ok", "{h:?}");
    assert_ne!(transcript(&alice, "bob"), transcript(&bob, "alice"));
}

#[test]
fn contacts_only_mode_holds_strangers_as_requests_until_answered() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &["--contacts-only"]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();

    let first = alice.send("bob", "hi, we have not met").unwrap();
    let held = bob
        .wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
    assert_eq!(held[0]["id"], first.as_str());
    assert_eq!(
        held[0]["status"], "held",
        "a stranger's message is a request"
    );
    let contacts = bob.ctl_json(&["contacts"]).unwrap();
    assert_eq!(contacts[0]["username"], "alice");
    assert_eq!(contacts[0]["request"], true);
    // The sender still gets its receipt: the message is stored, just not accepted yet.
    alice
        .wait_history("bob", Duration::from_secs(30), |h| {
            h[0]["status"] == "delivered"
        })
        .unwrap();

    // Answering accepts the request: what was held becomes an ordinary received message.
    bob.send("alice", "hello, stranger").unwrap();
    let h = bob.history("alice").unwrap();
    assert_eq!(h[0]["status"], "received");
    assert_eq!(bob.ctl_json(&["contacts"]).unwrap()[0]["request"], false);
    alice.send("bob", "thanks").unwrap();
    let h = bob
        .wait_history("alice", Duration::from_secs(30), |h| h.len() == 3)
        .unwrap();
    assert_eq!(h[2]["status"], "received");
}

#[test]
fn a_peer_cannot_delete_what_the_other_side_wrote() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (alice, bob) = alice_and_bob(&dir, &[]);
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
