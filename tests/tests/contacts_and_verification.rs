//! Who may write to whom, and whether both sides see the same conversation: blocking, key
//! changes and their safety numbers, contacts-only mode with message requests, transcript
//! hashes, and the per-sender hash chain that marks gaps and late messages. Where a test must
//! send what a correct host never would (a chain with holes, a message arriving late), it plays
//! alice's host itself with her transport key and her keyguard (`smvs_tests::impersonate`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::time::Duration;

use serde_json::Value;
use smvs_schema::host_capnp::host_link;
use smvs_schema::Username;
use smvs_tests::child::finish;
use smvs_tests::conversation::{alice_and_bob, exchange_three};
use smvs_tests::impersonate::{self, link, play_host, text_message, RawEnvelope};
use smvs_tests::runtime::runtime_and_directory;
use smvs_tests::watch::{Watch, LIMIT};
use smvs_tests::{DirectoryProcess, HostProcess};
use smvsd::model::{message_hash, MessageId, Payload};
use smvsd::session::SessionKeys;

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

    // A petname may not hide a contact: "alice" already means alice here.
    let someone = smvs_crypto::SigningKeyPair::generate().unwrap().public();
    let address = smvs_crypto::identity_address(&someone);
    let out = bob.ctl(&["petname", "add", "alice", &address]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("already a contact's name"),
        "{stderr}"
    );
    let out = bob.ctl(&["petname", "add", "bob", &address]).unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("your own name"),
        "{out:?}"
    );

    // A petname that a directory user takes later means neither of them: bob names an
    // address "carol", then the directory's carol writes to him.
    bob.ctl_ok(&["petname", "add", "carol", &address]).unwrap();
    let carol = HostProcess::start("carol", &dir, "127.0.0.4", &[]).unwrap();
    carol.register().unwrap();
    carol
        .send("bob", "hello, I am the directory's carol")
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !bob
        .ctl_json(&["contacts"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["username"] == "carol")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "carol's message never came"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = bob.ctl(&["send", "carol", "which carol?"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("both your petname"),
        "{stderr}"
    );
    bob.ctl_ok(&["petname", "remove", "carol"]).unwrap();
    bob.send("carol", "hello carol").unwrap();
    carol
        .wait_history("bob", Duration::from_secs(30), |h| {
            h.iter().any(|m| m["body"] == "hello carol")
        })
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
    alice.deregister_at(&dir).unwrap();
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
fn transcript_hashes_agree_until_one_side_holds_a_message_the_other_does_not() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (alice, bob) = alice_and_bob(&dir, &[]).unwrap();
    let [a1, _, _] = exchange_three(&alice, &bob).unwrap();
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
        .unwrap()
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
    let (mut alice, bob) = alice_and_bob(&dir, &[]).unwrap();
    // The test is alice's host from here on.
    alice.stop().unwrap();
    let mut bob_watch = Watch::start(&bob).unwrap();

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
        let problem = bob_watch
            .wait_for("an integrity problem for m4", |e| {
                e["event"] == "integrity_problem" && e["id"] == m4.id.to_hex().as_str()
            })
            .unwrap();
        assert_eq!(problem["peer"], "alice");
        assert_eq!(
            problem_ids(&bob_watch.everything_so_far(&bob).unwrap()),
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
            problem_ids(&bob_watch.everything_so_far(&bob).unwrap()),
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
            problem_ids(&bob_watch.everything_so_far(&bob).unwrap()),
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

/// Review finding 8: a host keeps the signed directory record it pinned a contact from, and
/// `verify --json` exports it, so a user can prove what the directory said: the signature
/// checks out under the directory's key and the record names the contact, while an altered
/// record does not.
#[test]
fn verify_exports_the_signed_record_the_contact_was_pinned_from() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    alice.send("bob", "hello").unwrap();
    let v = alice.ctl_json(&["verify", "bob"]).unwrap();
    let record = &v["record"];
    assert_eq!(record["directory_key"], dir.key.to_hex().as_str(), "{v}");
    let bytes = hex::decode(record["record"].as_str().unwrap()).unwrap();
    let signature = hex::decode(record["signature"].as_str().unwrap()).unwrap();
    let check = |bytes: &[u8]| {
        let mut message = capnp::message::Builder::new_default();
        let mut signed =
            message.init_root::<smvs_schema::common_capnp::signed_record::Builder<'_>>();
        signed.set_record(bytes);
        signed.set_signature(&signature);
        smvs_directory::record::verify_record(
            signed.into_reader(),
            &dir.key,
            Some(&Username::parse("bob").unwrap()),
        )
    };
    let verified = check(&bytes).unwrap();
    // It is bob's identity, the one whose safety number verify shows.
    let fingerprint = smvs_crypto::fingerprint("bob", &verified.user.identity).unwrap();
    let contacts = alice.ctl_json(&["contacts"]).unwrap();
    assert_eq!(contacts[0]["fingerprint"], fingerprint.as_str());
    assert!(record["issued_at"].as_i64().unwrap() > 0);
    let mut altered = bytes.clone();
    let last = altered.len() - 1;
    altered[last] ^= 1;
    assert!(
        check(&altered).is_err(),
        "an altered record does not verify"
    );
}

/// The serial of the signed record `verify USER --json` exports (the one the contact is
/// pinned from), checked under the directory's key.
fn pinned_serial(host: &HostProcess, peer: &str, dir: &DirectoryProcess) -> u64 {
    let v = host.ctl_json(&["verify", peer]).unwrap();
    let record = &v["record"];
    let bytes = hex::decode(record["record"].as_str().unwrap()).unwrap();
    let signature = hex::decode(record["signature"].as_str().unwrap()).unwrap();
    let mut message = capnp::message::Builder::new_default();
    let mut signed = message.init_root::<smvs_schema::common_capnp::signed_record::Builder<'_>>();
    signed.set_record(&bytes);
    signed.set_signature(&signature);
    smvs_directory::record::verify_record(
        signed.into_reader(),
        &dir.key,
        Some(&Username::parse(peer).unwrap()),
    )
    .unwrap()
    .user
    .serial
}

/// Review finding 8: a directory that serves a contact's record at a lower serial than the
/// host acted on before (a directory restored from an old backup, or one that lies) changes
/// nothing (the newer record stays pinned and exported) and raises the alarm: a
/// `directory_alarm` event on every device and a journal entry with its MESSAGE_ID. The old
/// directory here is real: the same key file over a snapshot of the database taken before
/// bob's record moved on.
#[test]
fn a_directory_that_serves_an_older_record_raises_the_alarm_and_changes_nothing() {
    let (rt, dir) = runtime_and_directory().unwrap();
    let mut alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();

    // The directory as it is now, kept for later: its key file and a snapshot of its database.
    let snapshot = tempfile::Builder::new()
        .prefix("smvs-dir-old-")
        .tempdir()
        .unwrap();
    std::fs::copy(&dir.key_file, snapshot.path().join("directory.key")).unwrap();
    let old_db = snapshot.path().join("directory.db");
    let live = rusqlite::Connection::open(dir.db.strip_prefix("sqlite:").unwrap()).unwrap();
    live.execute("VACUUM INTO ?1", [old_db.to_str().unwrap()])
        .unwrap();
    drop(live);

    // bob's record moves on (same address, a new serial), and alice acts on the new one.
    tokio::task::LocalSet::new().block_on(&rt, async {
        let client = dir.client().await.unwrap();
        let keyguard = bob.keyguard.client().await.unwrap();
        let name = Username::parse("bob").unwrap();
        let sealed = client.challenge(name.as_str()).await.unwrap();
        let token = keyguard
            .open_login_token(&dir.key, &name, &sealed)
            .await
            .unwrap();
        let session = client.authenticate(name.as_str(), &token).await.unwrap();
        let current = client.lookup(&name).await.unwrap().user.host_address;
        session.update_host_address(&current).await.unwrap();
    });
    let newer = pinned_serial(&alice, "bob", &dir);

    // The old directory answers alice from now on.
    let old = DirectoryProcess::start_with(snapshot, format!("sqlite:{}", old_db.display()), &[])
        .unwrap();
    assert_eq!(
        old.key, dir.key,
        "the same directory, as far as hosts can tell"
    );
    alice.stop().unwrap();
    alice.use_directory_at(old.addr);
    alice.start_again().unwrap();
    let mut watch = Watch::start(&alice).unwrap();

    // `verify` looks bob up afresh: the older record is refused as news, and the alarm rings.
    assert_eq!(
        pinned_serial(&alice, "bob", &dir),
        newer,
        "the newer record stays"
    );
    let alarm = watch
        .wait_for("a directory alarm", |e| e["event"] == "directory_alarm")
        .unwrap();
    assert_eq!(alarm["peer"], "bob", "{alarm}");
    let logs = alice.logs();
    assert!(
        logs.contains("5b0f3c9e8d2a4e61a7c4f0b2d9e8a613") && logs.contains("directory-rollback"),
        "{logs}"
    );
    // Writing to bob still works, on the kept record.
    alice.send("bob", "still here").unwrap();
    bob.wait_history("alice", LIMIT, |h| h.len() == 1).unwrap();
}
