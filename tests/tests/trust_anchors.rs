//! Trust anchors that can be checked: a host registered with several directories, look-ups
//! that ask them all and need a quorum to agree, and an alarm when they disagree. The lying
//! directory here is a real one whose database was tampered with, as an attacker who owns the
//! box would: bob's row carries another identity, with a transport certificate that identity
//! really signed for the name bob (so every signature checks out, and only the other
//! directories can tell).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use smvs_crypto::{AgreementKeyPair, IdentityKeys};
use smvs_directory::record::TransportCertificate;
use smvs_schema::Username;
use smvs_tests::dbus::TestBus;
use smvs_tests::impersonate;
use smvs_tests::runtime::{run_local, runtime};
use smvs_tests::watch::{Watch, LIMIT};
use smvs_tests::{Backend, DirectoryProcess, HostProcess};

/// `--also-directory NAME=ADDR=KEY` for `dir`.
fn also(name: &str, dir: &DirectoryProcess) -> [String; 2] {
    [
        "--also-directory".into(),
        format!("{name}={}={}", dir.addr, dir.key.to_hex()),
    ]
}

/// Flags of a directory whose database a test tampers with while it runs (playing a directory
/// that lies): it keeps no look-up answers in memory, or it would go on answering what it
/// held before until its next epoch.
const TAMPERED: &[&str] = &["--answer-cache-mib", "0"];

/// Rewrites `user`'s row in `dir`'s database to a new identity (with a transport certificate
/// it signed for that name, and no session keys), as a directory that lies would serve it.
/// Returns the forged identity's signing key (hex).
fn forge_identity(dir: &DirectoryProcess, user: &str) -> String {
    let forged = IdentityKeys::generate().unwrap();
    let bundle = forged.bundle();
    let transport = AgreementKeyPair::generate().unwrap().public();
    let not_after = smvs_directory::clock::now_ms() + 24 * 3600 * 1000;
    let certificate = TransportCertificate::sign_locally(
        &forged,
        &Username::parse(user).unwrap(),
        transport,
        not_after,
    );
    let db = rusqlite::Connection::open(dir.db.strip_prefix("sqlite:").unwrap()).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
    let changed = db
        .execute(
            "UPDATE users SET signing_key = ?1, agreement_key = ?2, agreement_signature = ?3,
                 transport_key = ?4, transport_certificate = ?5, transport_not_after = ?6,
                 session_keys = NULL, host_address = '127.0.0.66:7421'
             WHERE username = ?7",
            rusqlite::params![
                bundle.signing_key.as_bytes().to_vec(),
                bundle.agreement_key.as_bytes().to_vec(),
                bundle.agreement_signature.as_bytes().to_vec(),
                transport.as_bytes().to_vec(),
                certificate.certificate.as_bytes().to_vec(),
                not_after,
                user
            ],
        )
        .unwrap();
    assert_eq!(changed, 1, "{user} has a row to tamper with");
    bundle.signing_key.to_hex()
}

/// Whether `dir` holds a record of `user` with the identity `signing_key` (hex).
fn holds(dir: &DirectoryProcess, user: &str, signing_key: &str) -> bool {
    run_local(async {
        let client = dir.client().await.unwrap();
        match client.lookup(&Username::parse(user).unwrap()).await {
            Ok(record) => record.user.identity.signing_key.to_hex() == signing_key,
            Err(_) => false,
        }
    })
    .unwrap()
}

/// Three directories, one of which lies about bob's identity key. alice's host asks all three
/// with a quorum of two: it refuses the lie, raises the alarm (a journal entry with its
/// MESSAGE_ID, a `directory_alarm` event, the contact marked in `contacts`), sends nothing to
/// bob and takes nothing from him until alice decides. She compares the pinned key's safety
/// number with bob's and keeps it; then messages flow both ways, the liar's key is not heard
/// again. With a second directory gone, a host that never pinned bob pins nothing. bob's host, which looks
/// its own name up at every directory, sees the key it never made.
#[test]
fn a_quorum_of_directories_outvotes_one_that_lies_and_raises_the_alarm() {
    let rt = runtime().unwrap();
    let (a, b, c) = rt.block_on(async {
        (
            DirectoryProcess::start(Backend::Sqlite, &[]).await.unwrap(),
            DirectoryProcess::start(Backend::Sqlite, &[]).await.unwrap(),
            DirectoryProcess::start(Backend::Sqlite, TAMPERED)
                .await
                .unwrap(),
        )
    });
    let [b1, b2] = also("b", &b);
    let [c1, c2] = also("c", &c);
    let all_three = [b1.as_str(), b2.as_str(), c1.as_str(), c2.as_str()];

    // alice registers with all three at once.
    let mut alice_flags = all_three.to_vec();
    alice_flags.extend(["--quorum", "2"]);
    let mut alice = HostProcess::start("alice", &a, "127.0.0.1", &alice_flags).unwrap();
    alice.register().unwrap();
    // alice's host also serves D-Bus (a session bus of the test's), for the same questions.
    let session = TestBus::session_like().unwrap();
    alice.stop().unwrap();
    alice.add_flags(&["--dbus", "session", "--notifications", "off"]);
    alice.add_env("DBUS_SESSION_BUS_ADDRESS", &session.address);
    alice.start_again().unwrap();

    // bob registers with the default directory only, then adds the other two: his host
    // registers there by itself when it starts again.
    let mut bob = HostProcess::start("bob", &a, "127.0.0.2", &[]).unwrap();
    bob.register().unwrap();
    let signing_key_at_a = |user: &str| {
        run_local(async {
            let client = a.client().await.unwrap();
            let record = client.lookup(&Username::parse(user).unwrap()).await;
            record.unwrap().user.identity.signing_key.to_hex()
        })
        .unwrap()
    };
    let bob_key = signing_key_at_a("bob");
    let alice_key = signing_key_at_a("alice");
    assert!(!holds(&b, "bob", &bob_key) && !holds(&c, "bob", &bob_key));
    bob.stop().unwrap();
    bob.add_flags(&all_three);
    bob.start_again().unwrap();
    for (name, dir) in [("a", &a), ("b", &b), ("c", &c)] {
        assert!(holds(dir, "bob", &bob_key), "bob is registered at {name}");
        assert!(
            holds(dir, "alice", &alice_key),
            "alice is registered at {name}"
        );
    }

    // Directory c now lies about bob.
    let forged = forge_identity(&c, "bob");
    assert!(holds(&c, "bob", &forged));
    // bob's host looks its own name up at every renewal check (and at start): it sees the
    // key it never made, and says so.
    bob.stop().unwrap();
    bob.start_again().unwrap();
    let logs = bob.logs();
    let forged_alarm = logs
        .lines()
        .find(|l| l.contains("3e9b0d6f4c21478a8e5f1a7c2b9d6e40"))
        .unwrap_or_else(|| panic!("no own-key-forged alarm in {logs}"));
    assert!(
        forged_alarm.contains("directory=c") && forged_alarm.contains(&forged[..16]),
        "{forged_alarm}"
    );

    let mut watch = Watch::start(&alice).unwrap();
    let refused = alice.ctl(&["send", "bob", "are you there?"]).unwrap();
    assert_eq!(
        refused.status.code(),
        Some(1),
        "nothing is sent while they disagree"
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("the directories disagree about bob's identity key"),
        "{said}"
    );
    assert!(
        said.contains("default, b show key") && said.contains("c shows key"),
        "{said}"
    );
    let alarm = watch
        .wait_for("a directory alarm", |e| e["event"] == "directory_alarm")
        .unwrap();
    assert_eq!(alarm["peer"], "bob", "{alarm}");
    let logs = alice.logs();
    assert!(
        logs.contains("7a3d95c2e0b84f1f9c6e2b5d8a41f307")
            && logs.contains("directory-equivocation"),
        "{logs}"
    );
    let contacts = alice.ctl_json(&["contacts"]).unwrap();
    let bob_contact = &contacts[0];
    assert_eq!(bob_contact["username"], "bob");
    let how = bob_contact["alarm"].as_str().unwrap();
    assert!(
        how.contains(&forged[..16]) && how.contains(&bob_key[..16]),
        "{how}"
    );
    let text = alice.ctl_ok(&["contacts"]).unwrap();
    assert!(text.contains("DIRECTORIES DISAGREE"), "{text}");

    // bob writes meanwhile: alice's host holds it back (it cannot tell who bob is).
    bob.send("alice", "from bob, while they disagree").unwrap();

    // alice compares: the pinned key is the one bob's host knows as its own.
    let shown = alice.ctl_json(&["verify", "bob"]).unwrap();
    assert_eq!(shown["key_changed"], true, "{shown}");
    let bob_side = bob.ctl_json(&["verify", "alice"]).unwrap();
    assert_eq!(
        shown["pinned_safety_number"], bob_side["safety_number"],
        "the pinned key is bob's own"
    );
    assert_ne!(shown["safety_number"], bob_side["safety_number"]);
    let text = alice.ctl_ok(&["verify", "bob"]).unwrap();
    assert!(
        text.starts_with("ALARM: the directories disagree"),
        "{text}"
    );
    // The same over D-Bus: KeyQuestion gives both numbers and why.
    let asked = std::process::Command::new("busctl")
        .arg(format!("--address={}", session.address))
        .args([
            "--json=short",
            "call",
            "org.smvs.Daemon1",
            "/org/smvs/Daemon1",
        ])
        .args(["org.smvs.Daemon1", "KeyQuestion", "s", "bob"])
        .output()
        .unwrap();
    assert!(
        asked.status.success(),
        "{}",
        String::from_utf8_lossy(&asked.stderr)
    );
    let asked: serde_json::Value = serde_json::from_slice(&asked.stdout).unwrap();
    let data = &asked["data"];
    assert_eq!(data[0], shown["safety_number"], "{asked}");
    assert_eq!(data[1], bob_side["safety_number"], "{asked}");
    assert!(data[2].as_str().unwrap().contains("c shows key"), "{asked}");

    // She keeps it: bob's held message arrives, hers goes out, and the lie is not heard.
    let kept = alice.ctl_json(&["verify", "bob", "--keep-key"]).unwrap();
    assert_eq!(kept["key_changed"], false, "{kept}");
    assert_eq!(kept["safety_number"], bob_side["safety_number"]);
    alice.send("bob", "hello bob").unwrap();
    bob.wait_history("alice", LIMIT, |h| {
        h.iter().any(|m| m["body"] == "hello bob")
    })
    .unwrap();
    alice
        .wait_history("bob", LIMIT, |h| {
            h.iter()
                .any(|m| m["body"] == "from bob, while they disagree")
        })
        .unwrap();
    let contacts = alice.ctl_json(&["contacts"]).unwrap();
    assert!(contacts[0].get("alarm").is_none(), "{contacts}");
    assert_eq!(contacts[0]["key_changed"], false);

    // carol, on the same three with a quorum of two, has never written to bob. With b gone
    // too, only a vouches for bob's key (c shows another): short of the quorum, her host
    // gives no answer rather than one directory's, and pins nothing.
    let carol = HostProcess::start("carol", &a, "127.0.0.3", &alice_flags).unwrap();
    carol.register().unwrap();
    drop(b);
    let short = carol.ctl(&["verify", "bob"]).unwrap();
    assert_eq!(short.status.code(), Some(1));
    let said = String::from_utf8_lossy(&short.stderr);
    assert!(
        said.contains("the directories disagree about bob's identity key"),
        "{said}"
    );
    assert!(
        said.contains("no key is shown by the 2 directories it takes to pin one"),
        "{said}"
    );
    assert_eq!(
        carol.ctl_json(&["contacts"]).unwrap(),
        serde_json::json!([])
    );
    // alice, who pinned bob, still sees what she pinned.
    let kept_again = alice.ctl_json(&["verify", "bob"]).unwrap();
    assert_eq!(kept_again["safety_number"], bob_side["safety_number"]);
    alice.stop().unwrap();
}

/// A host that moves tells its contacts' hosts itself, signed by its identity: alice's host
/// comes back on another port while the directory is gone altogether (so no look-up can have
/// told anyone), and bob's next message reaches her there. A statement for alice that her
/// identity did not sign, or that comes from another host, is refused.
#[test]
fn an_address_change_reaches_contacts_without_any_directory() {
    let rt = runtime().unwrap();
    let dir = rt
        .block_on(DirectoryProcess::start(Backend::Sqlite, &[]))
        .unwrap();
    let (mut alice, bob) = talking(&dir);
    let old_port = alice.listen.port();

    // Statements that do not check out are refused: one alice's identity did not sign (on a
    // link with her host's key), and one from a host that is not hers.
    let secret = std::fs::read(alice.state_dir.join("transport.key")).unwrap();
    let alice_transport = AgreementKeyPair::from_secret_bytes(&secret).unwrap();
    run_local(async {
        let bob_key = dir
            .client()
            .await
            .unwrap()
            .lookup(&Username::parse("bob").unwrap())
            .await
            .unwrap()
            .user
            .transport_key;
        let stranger = IdentityKeys::generate().unwrap();
        let alice_name = Username::parse("alice").unwrap();
        let elsewhere = smvs_schema::HostAddress::parse("127.0.0.66:7421").unwrap();
        let now = smvs_directory::clock::now_ms();
        let forged = stranger.signing.sign(
            smvs_crypto::SignContext::HostAddress,
            &smvs_schema::canonical::host_address_statement(&alice_name, &elsewhere, now),
        );
        let other_host = AgreementKeyPair::generate().unwrap();
        // Both read the same ("refused"): the call tells nobody whom bob's host knows.
        for key in [&alice_transport, &other_host] {
            let link = impersonate::link(&bob, key, &bob_key).await.unwrap();
            let mut request = link.announce_address_request();
            let mut p = request.get();
            p.set_username("alice");
            p.set_host_address(elsewhere.as_str());
            p.set_issued_at(now);
            p.set_signature(forged.as_bytes());
            let refused = request.send().promise.await.map(drop).unwrap_err();
            assert!(refused.to_string().ends_with("refused"), "{refused}");
            // One statement per link: a second on the same link is refused unread.
            let again = link.announce_address_request().send().promise.await;
            assert!(again
                .map(drop)
                .unwrap_err()
                .to_string()
                .ends_with("refused"));
        }
    })
    .unwrap();

    assert!(
        !bob.logs()
            .contains("a contact's host announced its address"),
        "a refused statement moves nothing"
    );

    // The directory goes away for good; alice's host comes back on another port.
    drop(dir);
    alice.stop().unwrap();
    alice.listen = "127.0.0.1:0".parse().unwrap();
    alice.start_again().unwrap();
    assert_ne!(alice.listen.port(), old_port);
    let moved_to = alice.listen.to_string();

    // bob's host hears it from alice's host, and its next message goes there.
    let logs_say = |host: &HostProcess, what: &str| {
        let deadline = std::time::Instant::now() + LIMIT;
        while std::time::Instant::now() < deadline {
            if host.logs().contains(what) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    };
    assert!(
        logs_say(&bob, "a contact's host announced its address"),
        "{}",
        bob.logs()
    );
    bob.send("alice", "found you").unwrap();
    alice
        .wait_history("bob", LIMIT, |h| h.iter().any(|m| m["body"] == "found you"))
        .unwrap();
    assert_eq!(
        bob.logs()
            .matches("a contact's host announced its address")
            .count(),
        1,
        "only alice's own statement was taken"
    );
    assert!(
        bob.logs().contains("moved=true"),
        "bob's host moved alice to {moved_to}: {}",
        bob.logs()
    );
}

/// Waits until `host`'s contacts satisfy `ok`, and returns them.
fn wait_contacts(host: &HostProcess, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let contacts = host.ctl_json(&["contacts"]).unwrap();
        if ok(&contacts) {
            return contacts;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}'s contacts did not get there: {contacts}",
            host.name
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Introductions: bob and carol use different directories, neither of which knows the other,
/// and alice knows both. alice introduces them to each other with the signed records she
/// pinned; they then write to each other with no directory of theirs knowing the other. When
/// carol's directory later shows another key for the name bob, her host raises the
/// equivocation alarm instead of taking it.
#[test]
fn an_introduction_lets_users_of_different_directories_meet_and_a_contradiction_alarms() {
    let rt = runtime().unwrap();
    let (a, b) = rt.block_on(async {
        (
            DirectoryProcess::start(Backend::Sqlite, &[]).await.unwrap(),
            DirectoryProcess::start(Backend::Sqlite, &[]).await.unwrap(),
        )
    });
    let [b1, b2] = also("b", &b);
    let alice = HostProcess::start("alice", &a, "127.0.0.1", &[&b1, &b2, "--quorum", "1"]).unwrap();
    let bob = HostProcess::start("bob", &a, "127.0.0.2", &[]).unwrap();
    let carol = HostProcess::start("carol", &b, "127.0.0.3", &[]).unwrap();
    for host in [&alice, &bob, &carol] {
        host.register().unwrap();
    }
    alice.send("bob", "hi bob").unwrap();
    alice.send("carol", "hi carol").unwrap();
    bob.wait_history("alice", LIMIT, |h| h.len() == 1).unwrap();
    carol
        .wait_history("alice", LIMIT, |h| h.len() == 1)
        .unwrap();
    // Neither directory knows the other user.
    let unknown = carol.ctl(&["send", "bob", "anyone?"]).unwrap();
    assert_eq!(unknown.status.code(), Some(1));

    alice.ctl_ok(&["introduce", "bob", "carol"]).unwrap();
    alice.ctl_ok(&["introduce", "carol", "bob"]).unwrap();
    let contacts = wait_contacts(&carol, |c| {
        c.as_array().unwrap().iter().any(|c| c["username"] == "bob")
    });
    let pinned_bob = contacts
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["username"] == "bob")
        .unwrap()
        .clone();
    assert_eq!(pinned_bob["introduced_by"], "alice", "{pinned_bob}");
    assert_eq!(
        pinned_bob["fingerprint"],
        alice
            .ctl_json(&["contacts"])
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["username"] == "bob")
            .unwrap()["fingerprint"],
        "carol pinned the key alice pinned"
    );
    wait_contacts(&bob, |c| {
        c.as_array()
            .unwrap()
            .iter()
            .any(|c| c["username"] == "carol")
    });
    assert!(carol
        .ctl_ok(&["contacts"])
        .unwrap()
        .contains("introduced by alice"));

    carol.send("bob", "alice sent me").unwrap();
    bob.wait_history("carol", LIMIT, |h| {
        h.iter().any(|m| m["body"] == "alice sent me")
    })
    .unwrap();
    bob.send("carol", "welcome").unwrap();
    carol
        .wait_history("bob", LIMIT, |h| h.iter().any(|m| m["body"] == "welcome"))
        .unwrap();

    // Someone else takes the name bob at carol's directory: her host does not follow it.
    let impostor = HostProcess::start("bob", &b, "127.0.0.4", &[]).unwrap();
    impostor.register().unwrap();
    let shown = carol.ctl_json(&["verify", "bob"]).unwrap();
    assert_eq!(shown["key_changed"], true, "{shown}");
    let how = shown["alarm"].as_str().unwrap();
    assert!(how.starts_with("alice introduced bob with key"), "{how}");
    let refused = carol.ctl(&["send", "bob", "still you?"]).unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(carol.logs().contains("7a3d95c2e0b84f1f9c6e2b5d8a41f307"));
}

/// Moving to another directory: alice leaves directory a for b. a then answers "moved", with
/// the statement her identity signed; bob, who uses only a and pinned alice, follows it to b
/// and goes on writing to her with no key-change alarm. alice's host never registers at a
/// again, even after a restart.
#[test]
fn a_user_moves_to_another_directory_and_contacts_follow_without_an_alarm() {
    let rt = runtime().unwrap();
    let (a, b) = rt.block_on(async {
        (
            DirectoryProcess::start(Backend::Sqlite, &[]).await.unwrap(),
            DirectoryProcess::start(Backend::Sqlite, &[]).await.unwrap(),
        )
    });
    let [b1, b2] = also("second", &b);
    let mut alice =
        HostProcess::start("alice", &a, "127.0.0.1", &[&b1, &b2, "--quorum", "1"]).unwrap();
    let bob = HostProcess::start("bob", &a, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    alice.send("bob", "hi").unwrap();
    bob.wait_history("alice", LIMIT, |h| h.len() == 1).unwrap();
    let mut watch = Watch::start(&bob).unwrap();

    let moved = alice.ctl_ok(&["directory", "move", "second"]).unwrap();
    assert!(moved.contains("moved to second"), "{moved}");
    let list = alice.ctl_json(&["directory", "list"]).unwrap();
    assert_eq!(list[0]["name"], "default");
    assert_eq!(list[0]["left"], true, "{list}");
    assert_eq!(list[1]["left"], false, "{list}");

    // a answers "moved", signed by alice's identity (as b's record of her shows it).
    let check_moved = || {
        run_local(async {
            let alice_name = Username::parse("alice").unwrap();
            let at_b = b.client().await.unwrap().lookup(&alice_name).await.unwrap();
            let answer = a
                .client()
                .await
                .unwrap()
                .lookup_answer(&alice_name)
                .await
                .unwrap();
            let smvs_directory::LookupAnswer::Moved(statement) = answer else {
                panic!("a still serves a record of alice")
            };
            assert_eq!(statement.to, b.key);
            assert_eq!(statement.to_address, b.addr.to_string());
            statement.verify(&at_b.user.identity).unwrap();
        })
        .unwrap()
    };
    check_moved();

    // bob looks alice up afresh: a sends him to b, and the key is the one he pinned.
    let seen = bob.ctl_json(&["verify", "alice"]).unwrap();
    assert_eq!(seen["key_changed"], false, "{seen}");
    assert_eq!(
        seen["record"]["directory_key"],
        b.key.to_hex(),
        "the record bob now holds is b's: {seen}"
    );
    bob.send("alice", "still reaching you").unwrap();
    alice
        .wait_history("bob", LIMIT, |h| {
            h.iter().any(|m| m["body"] == "still reaching you")
        })
        .unwrap();
    let events = watch.everything_so_far(&bob).unwrap();
    assert!(
        events
            .iter()
            .all(|e| e["event"] != "key_changed" && e["event"] != "directory_alarm"),
        "{events:?}"
    );

    // A restart (and its renewal check) does not register alice at a again.
    alice.stop().unwrap();
    alice.start_again().unwrap();
    check_moved();
    alice.send("bob", "after the restart").unwrap();
    bob.wait_history("alice", LIMIT, |h| {
        h.iter().any(|m| m["body"] == "after the restart")
    })
    .unwrap();
}

/// `smvsctl directory add|remove` change the directories a running host uses, for good: the
/// added one answers and alice is registered there at once; a wrong address, a name in use, a
/// bad name are refused and change nothing; the configured default can be removed while
/// another holds her, the last one cannot; after a restart the host still uses exactly the
/// list she left it with, and bob, who knows only the added directory, reaches her (and she
/// him) through it.
#[test]
fn directories_are_added_and_removed_at_run_time_and_stay_so_after_a_restart() {
    let a = DirectoryProcess::start_sqlite_blocking().unwrap();
    let b = DirectoryProcess::start_sqlite_blocking().unwrap();
    let mut alice = HostProcess::start("alice", &a, "127.0.0.1", &[]).unwrap();
    let bob = HostProcess::start("bob", &b, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    let b_key = b.key.to_hex();
    let b_addr = b.addr.to_string();
    let at = |dir: &DirectoryProcess, user: &str| {
        run_local(async {
            dir.client()
                .await
                .unwrap()
                .lookup(&Username::parse(user).unwrap())
                .await
                .is_ok()
        })
        .unwrap()
    };
    assert!(!at(&b, "alice"));
    let names = |host: &HostProcess| -> Vec<String> {
        let list = host.ctl_json(&["directory", "list"]).unwrap();
        list.as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap().to_owned())
            .collect()
    };

    let added = alice
        .ctl_json(&["directory", "add", "second", &b_addr, &b_key])
        .unwrap();
    assert_eq!(added["name"], "second", "{added}");
    assert_eq!(added["key"], b_key.as_str(), "{added}");
    assert!(
        at(&b, "alice"),
        "alice is registered at the added directory"
    );
    assert_eq!(names(&alice), ["default", "second"]);

    // Refused, each with a reason, and the list is unchanged.
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nowhere = unused.local_addr().unwrap().to_string();
    drop(unused);
    for (args, why) in [
        (
            vec![
                "directory",
                "add",
                "third",
                nowhere.as_str(),
                b_key.as_str(),
            ],
            "in use",
        ),
        (
            vec![
                "directory",
                "add",
                "second",
                nowhere.as_str(),
                &"00".repeat(32),
            ],
            "in use",
        ),
        (
            vec![
                "directory",
                "add",
                "Third!",
                nowhere.as_str(),
                &"00".repeat(32),
            ],
            "lowercase",
        ),
        (
            vec!["directory", "add", "third", nowhere.as_str(), "beef"],
            "key",
        ),
        (
            vec!["directory", "remove", "nosuch"],
            "no directory named nosuch",
        ),
    ] {
        let out = alice.ctl(&args).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{args:?}: {err}"
        );
    }
    let a_key_other = smvs_crypto::SigningKeyPair::generate()
        .unwrap()
        .public()
        .to_hex();
    let out = alice
        .ctl(&["directory", "add", "third", &nowhere, &a_key_other])
        .unwrap();
    assert!(
        !out.status.success(),
        "a directory that does not answer is not added"
    );
    assert_eq!(names(&alice), ["default", "second"]);

    // The configured default goes (second holds her too); the last one cannot.
    let removed = alice.ctl_ok(&["directory", "remove", "default"]).unwrap();
    assert!(removed.contains("removed default"), "{removed}");
    assert_eq!(names(&alice), ["second"]);
    let out = alice.ctl(&["directory", "remove", "second"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("must agree"), "{err}");
    assert_eq!(names(&alice), ["second"]);

    // A restart keeps the list as she left it, whatever the configuration says.
    alice.stop().unwrap();
    alice.start_again().unwrap();
    assert_eq!(names(&alice), ["second"]);
    // bob knows only b; alice now asks only b: they find each other there.
    bob.send("alice", "found you at second").unwrap();
    alice
        .wait_history("bob", LIMIT, |h| {
            h.iter().any(|m| m["body"] == "found you at second")
        })
        .unwrap();
    alice.send("bob", "and I you").unwrap();
    bob.wait_history("alice", LIMIT, |h| {
        h.iter().any(|m| m["body"] == "and I you")
    })
    .unwrap();

    // The default comes back when she adds it again, and stays after a restart.
    let a_key = a.key.to_hex();
    let a_addr = a.addr.to_string();
    alice
        .ctl_ok(&["directory", "add", "default", &a_addr, &a_key])
        .unwrap();
    alice.stop().unwrap();
    alice.start_again().unwrap();
    assert_eq!(names(&alice), ["default", "second"]);

    // Once she moved from default to second, second is the one directory that holds her:
    // removing it is refused (the quorum would allow it).
    alice.ctl_ok(&["directory", "move", "second"]).unwrap();
    let out = alice.ctl(&["directory", "remove", "second"]).unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no other directory in use holds"),
        "{err}"
    );
    assert_eq!(names(&alice), ["default", "second"]);

    // A directory where her name is someone else's is not added, and that is no alarm
    // about her own key.
    let c = DirectoryProcess::start_sqlite_blocking().unwrap();
    let impostor = HostProcess::start("alice", &c, "127.0.0.3", &[]).unwrap();
    impostor.register().unwrap();
    let mut watch = Watch::start(&alice).unwrap();
    let out = alice
        .ctl(&[
            "directory",
            "add",
            "third",
            &c.addr.to_string(),
            &c.key.to_hex(),
        ])
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("taken"), "{err}");
    assert_eq!(names(&alice), ["default", "second"]);
    let events = watch.everything_so_far(&alice).unwrap();
    assert!(
        events.iter().all(|e| e["event"] != "directory_alarm"),
        "{events:?}"
    );
}

/// The key log's head and version for `user` at `dir`, and the identity served (hex).
fn logged_at(dir: &DirectoryProcess, user: &str) -> (u64, u64, String) {
    run_local(async {
        let client = dir.client().await.unwrap();
        let record = client
            .lookup(&Username::parse(user).unwrap())
            .await
            .unwrap();
        let at = record
            .logged_at
            .expect("a look-up answer carries its log position");
        (
            at.head.epoch,
            at.version,
            record.user.identity.signing_key.to_hex(),
        )
    })
    .unwrap()
}

/// Waits until `host`'s logs hold `count` lines with `needle`; returns those lines.
fn wait_log_lines(host: &HostProcess, needle: &str, count: usize) -> Vec<String> {
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let lines: Vec<String> = host
            .logs()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect();
        if lines.len() >= count || std::time::Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// A directory whose database is tampered with shows alice a key bob never made, for as long
/// as one look-up, and then serves bob's own record again: the look-up proof makes it log that
/// key as a version of bob's name (each answer's head is a later epoch), and bob's host, which
/// reads its name's history at its next check, finds it there and raises the alarm, once.
#[test]
fn a_key_shown_for_one_lookup_stays_in_the_log_and_its_owner_finds_it() {
    let rt = runtime().unwrap();
    let a = rt
        .block_on(DirectoryProcess::start(Backend::Sqlite, TAMPERED))
        .unwrap();
    let mut bob = HostProcess::start("bob", &a, "127.0.0.2", &[]).unwrap();
    bob.register().unwrap();
    let (first_epoch, first_version, bob_key) = logged_at(&a, "bob");

    // The attacker keeps bob's row aside, forges it, lets one look-up happen, and puts it back.
    let db_path = a.db.strip_prefix("sqlite:").unwrap().to_owned();
    let db = rusqlite::Connection::open(&db_path).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(30)).unwrap();
    db.execute_batch("CREATE TABLE kept AS SELECT * FROM users WHERE username = 'bob'")
        .unwrap();
    let forged = forge_identity(&a, "bob");
    let (forged_epoch, forged_version, shown) = logged_at(&a, "bob");
    assert_eq!(shown, forged, "the tampered row is what a look-up serves");
    assert!(forged_epoch > first_epoch && forged_version == first_version + 1);
    db.execute_batch(
        "BEGIN IMMEDIATE;
         DELETE FROM users WHERE username = 'bob';
         INSERT INTO users SELECT * FROM kept;
         DROP TABLE kept;
         COMMIT;",
    )
    .unwrap();
    let (restored_epoch, restored_version, shown) = logged_at(&a, "bob");
    assert_eq!(shown, bob_key, "bob's own record is served again");
    assert!(restored_epoch > forged_epoch && restored_version == forged_version + 1);

    // bob's host checks its name at start: the look-up shows its own key, the history does not.
    bob.stop().unwrap();
    bob.start_again().unwrap();
    let alarms = wait_log_lines(&bob, "3e9b0d6f4c21478a8e5f1a7c2b9d6e40", 2);
    let forged_line = alarms
        .iter()
        .find(|l| l.contains(&forged[..16]))
        .unwrap_or_else(|| panic!("no alarm naming the forged key in {alarms:?}"));
    assert!(
        forged_line.contains(&format!("version={forged_version}"))
            && forged_line.contains("key log"),
        "{forged_line}"
    );
    // The record put back keeps the serial of the one before the forgery: an old record
    // logged again as newer, which is an alarm too.
    assert!(
        alarms
            .iter()
            .any(|l| l.contains(&format!("version={restored_version}"))),
        "{alarms:?}"
    );
    let raised = alarms.len();

    // Checked up to its own latest version: a restart (whose start-up check is done when
    // it is up) does not raise it again, and nothing was logged under the name meanwhile.
    bob.stop().unwrap();
    bob.start_again().unwrap();
    let (_, version_now, _) = logged_at(&a, "bob");
    assert_eq!(version_now, restored_version);
    let logs = bob.logs();
    assert_eq!(
        logs.matches("3e9b0d6f4c21478a8e5f1a7c2b9d6e40").count(),
        raised,
        "{logs}"
    );
    // One log throughout, however it lied: no split-view alarm.
    assert!(!logs.contains("369a2ba63a004178f06e5802bcde61f1"), "{logs}");
}

/// alice (127.0.0.1) and bob (127.0.0.2), registered at `dir`, who have written to each
/// other once each (so each is the other's accepted contact).
fn talking(dir: &DirectoryProcess) -> (HostProcess, HostProcess) {
    let (alice, bob) = smvs_tests::conversation::alice_and_bob(dir, &[]).unwrap();
    alice.send("bob", "hi bob").unwrap();
    bob.wait_history("alice", LIMIT, |h| h.len() == 1).unwrap();
    bob.send("alice", "hi alice").unwrap();
    alice.wait_history("bob", LIMIT, |h| h.len() == 2).unwrap();
    (alice, bob)
}

/// Registers `name` at `dir` straight from the test (no host: a user others look up).
fn register_plain(dir: &DirectoryProcess, name: &str) {
    run_local(async {
        let user = smvs_tests::TestUser::new(name, "127.0.0.3:7421").unwrap();
        let client = dir.client().await.unwrap();
        client.register(&user.registration(&dir.key)).await.unwrap();
    })
    .unwrap();
}

/// A directory that shows alice a log of its own (a split view: an attacker runs a copy of
/// the directory, with its key, on a copy of its database, and points alice's host at it)
/// serves her a key carol never made, with a proof that holds: alice's view alone cannot tell.
/// bob's host, on the real log, passes the head it saw on inside its next message; alice's
/// host asks its directory to prove that head is on the log it was shown, which it cannot,
/// and raises the alarm (once), naming bob's host as where the head came from. Before the
/// split, the heads the two hosts pass each other agree, and nothing is raised.
#[test]
fn a_directory_that_shows_one_user_a_log_of_its_own_is_caught_by_a_contacts_head() {
    const SPLIT: &str = "369a2ba63a004178f06e5802bcde61f1";
    let rt = runtime().unwrap();
    let a = rt
        .block_on(DirectoryProcess::start(Backend::Sqlite, &[]))
        .unwrap();
    let (mut alice, bob) = talking(&a);
    register_plain(&a, "carol");
    let agreed = wait_log_lines(&alice, "heads seen agree", 1);
    assert!(
        !agreed.is_empty(),
        "alice's host checked bob's head: {}",
        alice.logs()
    );
    assert!(!alice.logs().contains(SPLIT), "{}", alice.logs());

    // The copy: the same key, the database as it is now, carol's row forged in it.
    let fork_dir = tempfile::Builder::new()
        .prefix("smvs-fork-")
        .tempdir()
        .unwrap();
    std::fs::copy(&a.key_file, fork_dir.path().join("directory.key")).unwrap();
    let fork_db = fork_dir.path().join("directory.db");
    rusqlite::Connection::open(a.db.strip_prefix("sqlite:").unwrap())
        .unwrap()
        .execute("VACUUM INTO ?1", [fork_db.display().to_string()])
        .unwrap();
    let fork =
        DirectoryProcess::start_with(fork_dir, format!("sqlite:{}", fork_db.display()), TAMPERED)
            .unwrap();
    assert_eq!(fork.key, a.key);
    let forged = forge_identity(&fork, "carol");
    // The real log moves on (dave registers), and bob's host sees it (a look-up of dave).
    register_plain(&a, "dave");
    bob.send("dave", "hi dave").unwrap();

    // alice's host now asks the copy: carol's forged record comes with a proof that holds.
    alice.stop().unwrap();
    alice.use_directory_at(fork.addr);
    alice.start_again().unwrap();
    alice.send("carol", "hi carol").unwrap();
    let (_, _, shown) = logged_at(&fork, "carol");
    assert_eq!(shown, forged);
    assert!(!alice.logs().contains(SPLIT), "{}", alice.logs());

    // bob writes; his host passes on the real log's head, and alice's host finds it is not
    // on the log it was shown.
    bob.send("alice", "still there?").unwrap();
    alice.wait_history("bob", LIMIT, |h| h.len() == 3).unwrap();
    let alarms = wait_log_lines(&alice, SPLIT, 1);
    assert_eq!(alarms.len(), 1, "{}", alice.logs());
    assert!(alarms[0].contains("bob's host"), "{}", alarms[0]);

    // Raised once: the same head again is not news.
    bob.send("alice", "and again").unwrap();
    alice.wait_history("bob", LIMIT, |h| h.len() == 4).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(alice.logs().matches(SPLIT).count(), 1, "{}", alice.logs());
}

/// A check across more epochs than one consistency answer spans (256): alice's host proves
/// the log from its last checkpoint in rounds, each answer going on from the root the one
/// before ended on, and finds bob's head, 300 epochs on, on it: no alarm.
#[test]
fn heads_far_apart_are_checked_in_rounds_without_an_alarm() {
    const SPLIT: &str = "369a2ba63a004178f06e5802bcde61f1";
    let rt = runtime().unwrap();
    let a = rt
        .block_on(DirectoryProcess::start(
            Backend::Sqlite,
            &[
                "--registrations-per-hour",
                "100000000",
                "--rate-per-ip",
                "10000000",
            ],
        ))
        .unwrap();
    let (alice, bob) = talking(&a);
    assert_eq!(wait_log_lines(&alice, "heads seen agree", 1).len(), 1);

    // 300 new epochs (a registration each), eight at a time.
    run_local(async {
        let client = a.client().await.unwrap();
        let users: Vec<smvs_tests::TestUser> = (0..300)
            .map(|i| smvs_tests::TestUser::new(&format!("user{i}"), "127.0.0.3:7421").unwrap())
            .collect();
        for chunk in users.chunks(8) {
            futures::future::join_all(chunk.iter().map(|u| {
                let request = u.registration(&a.key);
                let client = &client;
                async move { client.register(&request).await.unwrap() }
            }))
            .await;
        }
    })
    .unwrap();
    let (latest, _, _) = logged_at(&a, "user299");

    // bob's host sees the latest head (a look-up), and passes it on.
    bob.send("user299", "hi").unwrap();
    bob.send("alice", "far ahead").unwrap();
    alice.wait_history("bob", LIMIT, |h| h.len() == 3).unwrap();
    let agreed = wait_log_lines(&alice, "heads seen agree", 2);
    assert_eq!(agreed.len(), 2, "{}", alice.logs());
    assert!(
        agreed[1].contains(&format!("epoch={latest}")),
        "proven up to the latest epoch {latest}: {}",
        agreed[1]
    );
    assert!(!alice.logs().contains(SPLIT), "{}", alice.logs());
}

/// `--scoped-directory NAME=ADDR=KEY` for `dir`.
fn scoped(name: &str, dir: &DirectoryProcess) -> [String; 2] {
    [
        "--scoped-directory".into(),
        format!("{name}={}={}", dir.addr, dir.key.to_hex()),
    ]
}

/// Directories a and b (SQLite).
fn two_directories() -> (DirectoryProcess, DirectoryProcess) {
    (
        DirectoryProcess::start_sqlite_blocking().unwrap(),
        DirectoryProcess::start_sqlite_blocking().unwrap(),
    )
}

/// The safety number `host` shows for `peer`.
fn safety_number(host: &HostProcess, peer: &str) -> String {
    let shown = host.ctl_json(&["verify", peer]).unwrap();
    shown["safety_number"].as_str().unwrap().to_owned()
}

/// Scoped names: two people called alice, one at directory a and one at b. bob (at a, with b
/// as the scoped directory he calls `work`) writes to both, as `alice` and `alice@work`, and
/// each gets only what was meant for her. b's alice knows a as `a`: bob is `bob@a` to her,
/// next to a bob of her own directory, and each of her replies reaches the bob it names.
/// Both ends of a scoped conversation show the same safety number (what is signed and hashed
/// names users as their directories do), and the names survive a restart.
#[test]
fn scoped_names_tell_apart_users_of_the_same_name_at_different_directories() {
    let (a, b) = two_directories();
    let [w1, w2] = scoped("work", &b);
    let [a1, a2] = scoped("a", &a);
    let alice_a = HostProcess::start("alice", &a, "127.0.0.1", &[]).unwrap();
    let mut alice_b = HostProcess::start("alice", &b, "127.0.0.2", &[&a1, &a2]).unwrap();
    let bob_a = HostProcess::start("bob", &a, "127.0.0.3", &[&w1, &w2]).unwrap();
    let bob_b = HostProcess::start("bob", &b, "127.0.0.4", &[]).unwrap();
    for host in [&alice_a, &alice_b, &bob_a, &bob_b] {
        host.register().unwrap();
    }
    let listed = bob_a.ctl_json(&["directory", "list"]).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(
        (listed[0]["name"].as_str(), listed[0]["scoped"].as_bool()),
        (Some("default"), Some(false))
    );
    assert_eq!(
        (listed[1]["name"].as_str(), listed[1]["scoped"].as_bool()),
        (Some("work"), Some(true))
    );
    assert!(bob_a
        .ctl_ok(&["directory", "list"])
        .unwrap()
        .contains("(scoped: its users are NAME@work)"));

    bob_a.send("alice", "for alice at a").unwrap();
    bob_a.send("alice@work", "for alice at work").unwrap();
    alice_a
        .wait_history("bob", LIMIT, |h| h.len() == 1)
        .unwrap();
    let at_b = alice_b
        .wait_history("bob@a", LIMIT, |h| h.len() == 1)
        .unwrap();
    assert_eq!(at_b[0]["body"], "for alice at work");
    assert_eq!(alice_a.history("bob").unwrap()[0]["body"], "for alice at a");
    // b's own bob is plain bob to her, and a conversation apart.
    bob_b.send("alice", "bob of b here").unwrap();
    let plain = alice_b
        .wait_history("bob", LIMIT, |h| h.len() == 1)
        .unwrap();
    assert_eq!(plain[0]["body"], "bob of b here");

    // Replies go to the bob each name means (the host key of the link tells the two apart
    // when a message comes back).
    alice_b.send("bob@a", "hello bob of a").unwrap();
    alice_b.send("bob", "hello bob of b").unwrap();
    bob_a
        .wait_history("alice@work", LIMIT, |h| h.len() == 2)
        .unwrap();
    bob_b
        .wait_history("alice", LIMIT, |h| h.len() == 2)
        .unwrap();
    let bodies = |h: Vec<serde_json::Value>| -> Vec<String> {
        h.iter()
            .map(|m| m["body"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(bodies(bob_a.history("alice@work").unwrap()).contains(&"hello bob of a".into()));
    assert_eq!(bodies(bob_a.history("alice").unwrap()), ["for alice at a"]);
    assert!(bodies(bob_b.history("alice").unwrap()).contains(&"hello bob of b".into()));
    bob_a.send("alice@work", "again").unwrap();
    alice_b
        .wait_history("bob@a", LIMIT, |h| h.len() == 3)
        .unwrap();
    assert_eq!(
        alice_b.history("bob").unwrap().len(),
        2,
        "nothing of bob@a's in bob's"
    );

    // Each contact is its own pin, and the two ends agree on what they would compare.
    let contacts = bob_a.ctl_json(&["contacts"]).unwrap();
    let fingerprint = |name: &str| {
        contacts
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["username"] == name)
            .unwrap_or_else(|| panic!("no {name} in {contacts}"))["fingerprint"]
            .clone()
    };
    assert_ne!(fingerprint("alice"), fingerprint("alice@work"));
    assert_eq!(
        safety_number(&bob_a, "alice@work"),
        safety_number(&alice_b, "bob@a")
    );
    assert_eq!(
        safety_number(&bob_b, "alice"),
        safety_number(&alice_b, "bob")
    );

    // What cannot be: a scope this host does not have, one of its plain directories written
    // as a scope, a scope on an identity address, registering under a scope.
    let nowhere = bob_a.ctl(&["send", "alice@nowhere", "?"]).unwrap();
    assert_eq!(nowhere.status.code(), Some(1));
    let says = String::from_utf8_lossy(&nowhere.stderr);
    assert!(says.contains("no scoped directory named nowhere"), "{says}");
    let default = bob_a.ctl(&["send", "alice@default", "?"]).unwrap();
    assert!(String::from_utf8_lossy(&default.stderr).contains("write alice without @default"));
    let address = bob_a
        .ctl(&["send", &format!("smvs:{}@work", "a".repeat(56)), "?"])
        .unwrap();
    assert_eq!(address.status.code(), Some(2), "refused as it is parsed");
    let fresh = HostProcess::start("carol", &a, "127.0.0.5", &[&w1, &w2]).unwrap();
    let scoped_register = fresh.ctl(&["register", "carol@work"]).unwrap();
    assert!(String::from_utf8_lossy(&scoped_register.stderr).contains("never at a scoped one"));
    // A host is not registered at its scoped directories.
    fresh.register().unwrap();
    let known = |dir: &DirectoryProcess| {
        run_local(async {
            dir.client()
                .await
                .unwrap()
                .lookup(&Username::parse("carol").unwrap())
                .await
                .is_ok()
        })
        .unwrap()
    };
    assert!(known(&a) && !known(&b));

    // After a restart the conversations are where they were.
    alice_b.stop().unwrap();
    alice_b.start_again().unwrap();
    assert_eq!(alice_b.history("bob@a").unwrap().len(), 3);
    assert_eq!(alice_b.history("bob").unwrap().len(), 2);
}

/// A host key proves nothing by being in a record: anyone may register a name with someone
/// else's. Here plain `alice` at a is registered with the host key of `alice@work` (b's
/// alice). When b's alice writes to bob, both names claim the key of her link: bob's host
/// pins neither and answers "later" (so nothing is lost), until bob writes to `alice@work`
/// himself; then her message arrives there, and plain `alice` is still nobody bob knows.
#[test]
fn a_host_key_claimed_under_two_names_is_taken_from_neither_until_one_is_pinned() {
    let (a, b) = two_directories();
    let [w1, w2] = scoped("work", &b);
    let [a1, a2] = scoped("a", &a);
    let bob = HostProcess::start("bob", &a, "127.0.0.1", &[&w1, &w2]).unwrap();
    let alice = HostProcess::start("alice", &b, "127.0.0.2", &[&a1, &a2]).unwrap();
    bob.register().unwrap();
    alice.register().unwrap();
    run_local(async {
        let theirs = b
            .client()
            .await
            .unwrap()
            .lookup(&Username::parse("alice").unwrap())
            .await
            .unwrap();
        let squatter = smvs_directory::Registration::sign_locally(
            &a.key,
            Username::parse("alice").unwrap(),
            &IdentityKeys::generate().unwrap(),
            theirs.user.transport_key,
            smvs_schema::HostAddress::parse("127.0.0.66:7421").unwrap(),
            smvs_directory::clock::now_ms(),
        );
        a.client().await.unwrap().register(&squatter).await.unwrap();
    })
    .unwrap();

    alice.send("bob@a", "from alice at work").unwrap();
    let lines = wait_log_lines(&bob, "a host key is claimed by two users of this name", 1);
    assert!(lines[0].contains("alice"), "{lines:?}");
    assert!(
        bob.ctl_json(&["contacts"])
            .unwrap()
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing pinned from an ambiguous key"
    );
    let queued = alice.history("bob@a").unwrap();
    assert_eq!(
        queued[0]["status"], "queued",
        "kept, to try again: {queued:?}"
    );

    bob.send("alice@work", "hi alice at work").unwrap();
    bob.wait_history("alice@work", LIMIT, |h| {
        h.iter().any(|m| m["body"] == "from alice at work")
    })
    .unwrap();
    let contacts = bob.ctl_json(&["contacts"]).unwrap();
    let names: Vec<&str> = contacts
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["username"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alice@work"]);
    // Nor is the copy pinned when bob writes to it: its key is alice@work's.
    let copy = bob.ctl(&["send", "alice", "who are you?"]).unwrap();
    let says = String::from_utf8_lossy(&copy.stderr);
    assert!(
        says.contains("names the host key of your contact alice@work"),
        "{says}"
    );
    assert_eq!(
        bob.ctl_json(&["contacts"])
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

/// A scoped directory added at run time (`directory add --scoped`) is asked for its names at
/// once, is not registered with, stays after a restart, and is gone after `directory remove`
/// (also after a restart): no new name there is taken, and what is written to a contact
/// pinned there waits rather than reaching them.
#[test]
fn a_scoped_directory_is_added_and_removed_at_run_time() {
    let (a, b) = two_directories();
    let [a1, a2] = scoped("a", &a);
    let mut alice = HostProcess::start("alice", &a, "127.0.0.1", &[]).unwrap();
    let carol = HostProcess::start("carol", &b, "127.0.0.2", &[&a1, &a2]).unwrap();
    alice.register().unwrap();
    carol.register().unwrap();
    let (addr, key) = (b.addr.to_string(), b.key.to_hex());
    let added = alice
        .ctl_json(&["directory", "add", "work", &addr, &key, "--scoped"])
        .unwrap();
    assert_eq!(added["scoped"], true, "{added}");
    alice.send("carol@work", "one").unwrap();
    carol
        .wait_history("alice@a", LIMIT, |h| h.len() == 1)
        .unwrap();
    let at_b = run_local(async {
        b.client()
            .await
            .unwrap()
            .lookup(&Username::parse("alice").unwrap())
            .await
            .is_ok()
    })
    .unwrap();
    assert!(!at_b, "not registered at a scoped directory");

    alice.stop().unwrap();
    alice.start_again().unwrap();
    let listed = alice.ctl_json(&["directory", "list"]).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(listed[1]["name"], "work");
    assert_eq!(listed[1]["scoped"], true);
    alice.send("carol@work", "two").unwrap();
    carol
        .wait_history("alice@a", LIMIT, |h| h.len() == 2)
        .unwrap();

    alice.ctl_ok(&["directory", "remove", "work"]).unwrap();
    for restart in [false, true] {
        if restart {
            alice.stop().unwrap();
            alice.start_again().unwrap();
        }
        assert_eq!(
            alice
                .ctl_json(&["directory", "list"])
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let gone = alice.ctl(&["send", "dave@work", "anyone?"]).unwrap();
        let says = String::from_utf8_lossy(&gone.stderr);
        assert!(says.contains("no scoped directory named work"), "{says}");
    }
    alice.send("carol@work", "three").unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let waiting = alice.history("carol@work").unwrap();
    assert_eq!(waiting.last().unwrap()["status"], "queued", "{waiting:?}");
    assert_eq!(carol.history("alice@a").unwrap().len(), 2);
}
