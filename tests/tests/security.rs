//! What a hostile peer, another local user or someone who reads the disk cannot do: forged,
//! tampered, replayed and oversized envelopes change nothing (the test plays alice's host and
//! talks raw `HostLink` to bob's); garbage on the local socket and the peer port never crashes
//! the host; idle links are closed and one address cannot take every slot; the local socket
//! refuses a uid that is not allowed; message text never reaches the disk in clear; no process
//! that holds a key can leave a core file; the host's database files are the user's alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smvs_crypto::{AeadKey, AgreementKeyPair};
use smvs_schema::Username;
use smvs_tests::conversation::body;
use smvs_tests::daemon::check_no_core_dumps;
use smvs_tests::impersonate::{self, deliver, link, play_host, text_message, RawEnvelope, Receipt};
use smvs_tests::other_uid::{Access, OtherUid};
use smvs_tests::runtime::{runtime, runtime_and_directory};
use smvs_tests::{DirectoryProcess, HostProcess, TestUser};
use smvsd::model::MessageId;
use smvsd::session::SessionKeys;

/// A text message from `from` to `to`, sealed with `keys` (whether or not they are the keys
/// `from` and `to` share).
fn seal(keys: &SessionKeys, id: MessageId, from: &str, to: &str, text: &str) -> Vec<u8> {
    impersonate::seal(keys, &text_message(id, from, to, 1, &[], text).unwrap()).unwrap()
}

#[test]
fn forged_tampered_replayed_and_oversized_envelopes_change_nothing() {
    let (rt, dir) = runtime_and_directory().unwrap();
    // Session v1 envelopes, as this test seals them itself: both hosts speak v1 here (a host
    // with a v2 session refuses v1 from that contact; session_v2.rs shows that, and the
    // ratchet's own tests show what a forged or replayed v2 message does).
    let v1 = ["--max-session-version", "1"];
    let mut alice = HostProcess::start("alice", &dir, "127.0.0.1", &v1).unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &v1).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    alice.send("bob", "hello").unwrap();
    bob.wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
    alice.stop().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, async {
        let played = play_host(&dir, &alice, &bob).await.unwrap();
        let (keys, alice_transport) = (&played.keys, &played.transport);
        let bob_transport = played.peer_transport;
        let link = link(&bob, alice_transport, &bob_transport).await.unwrap();

        // A well-formed envelope is accepted, and its receipt checks out.
        let id = MessageId::random();
        let good = RawEnvelope {
            id,
            sender: "alice".into(),
            recipient: "bob".into(),
            sealed: seal(keys, id, "alice", "bob", "raw hello"),
        };
        let receipt = deliver(&link, &good).await.unwrap();
        assert_eq!(receipt.signature.len(), 32);
        // Replayed: acknowledged again (the sender may not have seen the first receipt) but
        // stored once.
        deliver(&link, &good).await.unwrap();
        assert_eq!(bob.history("alice").unwrap().len(), 2);
        // Deleted, then resent: acknowledged, and it does not come back.
        bob.ctl_ok(&["delete", "alice", "--id", &id.to_hex()])
            .unwrap();
        deliver(&link, &good).await.unwrap();

        let refused = |r: Result<Receipt, capnp::Error>| {
            let e = r.expect_err("must be refused").to_string();
            assert!(e.contains("refused:"), "{e}");
        };
        // Tampered ciphertext.
        let mut tampered = RawEnvelope {
            id: MessageId::random(),
            ..RawEnvelope {
                id,
                sender: "alice".into(),
                recipient: "bob".into(),
                sealed: Vec::new(),
            }
        };
        tampered.sealed = seal(keys, tampered.id, "alice", "bob", "tampered");
        let last = tampered.sealed.len() - 1;
        tampered.sealed[last] ^= 0x40;
        refused(deliver(&link, &tampered).await);
        // Re-labelled: sealed for one id, sent under another.
        let other = MessageId::random();
        refused(
            deliver(
                &link,
                &RawEnvelope {
                    id: other,
                    sender: "alice".into(),
                    recipient: "bob".into(),
                    sealed: seal(keys, MessageId::random(), "alice", "bob", "moved"),
                },
            )
            .await,
        );
        // Sealed with a key alice's identity does not have ("wrongly signed").
        let forged_keys = SessionKeys::from_shared(&AeadKey::generate()).unwrap();
        let fid = MessageId::random();
        refused(
            deliver(
                &link,
                &RawEnvelope {
                    id: fid,
                    sender: "alice".into(),
                    recipient: "bob".into(),
                    sealed: seal(&forged_keys, fid, "alice", "bob", "forged"),
                },
            )
            .await,
        );
        // Addressed to someone else.
        let cid = MessageId::random();
        refused(
            deliver(
                &link,
                &RawEnvelope {
                    id: cid,
                    sender: "alice".into(),
                    recipient: "carol".into(),
                    sealed: seal(keys, cid, "alice", "carol", "misrouted"),
                },
            )
            .await,
        );
        // Oversized (past the largest bucket).
        let oid = MessageId::random();
        refused(
            deliver(
                &link,
                &RawEnvelope {
                    id: oid,
                    sender: "alice".into(),
                    recipient: "bob".into(),
                    sealed: vec![0u8; 300_000],
                },
            )
            .await,
        );
        // An unknown sender.
        let uid = MessageId::random();
        refused(
            deliver(
                &link,
                &RawEnvelope {
                    id: uid,
                    sender: "nobody".into(),
                    recipient: "bob".into(),
                    sealed: seal(keys, uid, "nobody", "bob", "who?"),
                },
            )
            .await,
        );
        // The same made-up name again at once: "later", without asking the directory again
        // (the name might be registered since; a real host would retry).
        let again = MessageId::random();
        let e = deliver(
            &link,
            &RawEnvelope {
                id: again,
                sender: "nobody".into(),
                recipient: "bob".into(),
                sealed: seal(keys, again, "nobody", "bob", "who?"),
            },
        )
        .await
        .expect_err("not accepted")
        .to_string();
        assert!(e.contains("later:"), "{e}");
        // In one deliverBatch call, each envelope is answered in its place as it would be
        // alone: two stored, the tampered one between them refused.
        let envelope = |text: &str| {
            let id = MessageId::random();
            RawEnvelope {
                id,
                sender: "alice".into(),
                recipient: "bob".into(),
                sealed: seal(keys, id, "alice", "bob", text),
            }
        };
        let mut bad = envelope("tampered in a batch");
        let last = bad.sealed.len() - 1;
        bad.sealed[last] ^= 0x40;
        let batch = [
            envelope("first of a batch"),
            bad,
            envelope("last of a batch"),
        ];
        let answers = impersonate::deliver_batch(&link, &batch).await.unwrap();
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0].as_ref().unwrap().id, batch[0].id.0);
        let e = answers[1].as_ref().expect_err("tampered").to_string();
        assert!(e.contains("refused:"), "{e}");
        assert_eq!(answers[2].as_ref().unwrap().id, batch[2].id.0);
        let history = bob.history("alice").unwrap();
        let texts: Vec<&str> = history.iter().map(body).collect();
        assert!(
            texts.ends_with(&["first of a batch", "last of a batch"]),
            "{texts:?}"
        );
        // More than 256 in one call: refused as a whole, none of them stored.
        let too_many: Vec<RawEnvelope> = (0..257).map(|_| envelope("one too many")).collect();
        let e = impersonate::deliver_batch(&link, &too_many)
            .await
            .expect_err("too long a batch")
            .to_string();
        assert!(e.contains("more than 256"), "{e}");
        assert_eq!(bob.history("alice").unwrap().len(), history.len());

        // Far past Cap'n Proto's 4 MiB reader limit: the link is dropped, nothing else.
        let huge = RawEnvelope {
            id: MessageId::random(),
            sender: "alice".into(),
            recipient: "bob".into(),
            sealed: vec![0u8; 5 * 1024 * 1024],
        };
        assert!(deliver(&link, &huge).await.is_err());

        // A host that is not alice's (another Noise key) cannot speak for alice, even with a
        // correctly sealed envelope.
        let mallory = AgreementKeyPair::generate().unwrap();
        let mlink = smvs_tests::impersonate::link(&bob, &mallory, &bob_transport)
            .await
            .unwrap();
        let mid = MessageId::random();
        let e = deliver(
            &mlink,
            &RawEnvelope {
                id: mid,
                sender: "alice".into(),
                recipient: "bob".into(),
                sealed: seal(keys, mid, "alice", "bob", "impostor"),
            },
        )
        .await
        .expect_err("an impostor's envelope is not taken")
        .to_string();
        // Refused once bob's host has asked the directory again; until then (it asks at most
        // every few seconds per sender, so impostors cannot make it ask on every envelope),
        // "later". Either way nothing is stored (checked below).
        assert!(e.contains("refused:") || e.contains("later:"), "{e}");
    });

    let history = bob.history("alice").unwrap();
    let bodies: Vec<&str> = history
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert_eq!(
        bodies,
        vec!["hello", "first of a batch", "last of a batch"],
        "only the good envelopes, once, and the raw one gone once deleted"
    );
}

#[test]
fn garbage_on_the_socket_and_the_peer_port_never_crashes_the_host() {
    let (rt, dir) = runtime_and_directory().unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    bob.register().unwrap();

    let mut buf = [0u8; 64];
    // Local socket: text, a segment table claiming 2^31 words, a message cut short.
    for junk in [
        &b"hello smvsd\n"[..],
        &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f, 1, 2, 3][..],
        &[0, 0, 0, 0, 4, 0, 0, 0][..],
    ] {
        let mut s = std::os::unix::net::UnixStream::connect(&bob.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.write_all(junk);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = s.read(&mut buf);
    }
    // Peer port: garbage instead of a handshake, and a silent peer.
    let mut s = std::net::TcpStream::connect(bob.listen).unwrap();
    let _ = s.write_all(b"\x00\x10GET / HTTP/1.0\r\n\r\n");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
    // After a completed handshake: bytes that are not Cap'n Proto.
    tokio::task::LocalSet::new().block_on(&rt, async {
        let record = dir
            .client()
            .await
            .unwrap()
            .lookup(&Username::parse("bob").unwrap())
            .await
            .unwrap();
        let channel = smvs_transport::connect(
            bob.listen,
            &AgreementKeyPair::generate().unwrap(),
            smvs_transport::HOST_PROLOGUE,
            Some(&record.user.transport_key),
        )
        .await
        .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = channel.stream;
        stream
            .write_all(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f])
            .await
            .unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut sink))
            .await
            .unwrap();
    });
    // Still serving.
    assert_eq!(bob.ctl_json(&["status"]).unwrap()["username"], "bob");
}

#[test]
fn idle_links_are_closed_and_one_address_cannot_take_every_slot() {
    use tokio::io::AsyncReadExt;
    let (rt, dir) = runtime_and_directory().unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &["--peer-idle-seconds", "1"]).unwrap();
    // Default idle time (minutes): its links stay while the test counts them.
    let carol = HostProcess::start("carol", &dir, "127.0.0.3", &[]).unwrap();
    let key = AgreementKeyPair::generate().unwrap();
    let handshake_from = |ip: &'static str, bob: &HostProcess| {
        let key = &key;
        let listen = bob.listen;
        async move {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            let tcp = socket.connect(listen).await.unwrap();
            smvs_transport::connect_over(
                tcp,
                &listen.to_string(),
                key,
                smvs_transport::HOST_PROLOGUE,
                None,
            )
            .await
        }
    };
    tokio::task::LocalSet::new().block_on(&rt, async {
        // A link that says nothing after its handshake is closed once it has been idle.
        let started = std::time::Instant::now();
        let mut silent = handshake_from("127.0.0.8", &bob).await.unwrap().stream;
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), silent.read_to_end(&mut rest))
            .await
            .expect("the idle link is closed")
            .unwrap();
        assert!(started.elapsed() >= Duration::from_secs(1));

        // One address gets at most MAX_CONNECTIONS_PER_ADDRESS connections at once; the next is turned away before
        // its handshake, while another address still gets in.
        let mut held = Vec::new();
        for _ in 0..smvsd::api::peer::MAX_CONNECTIONS_PER_ADDRESS {
            held.push(handshake_from("127.0.0.9", &carol).await.unwrap());
        }
        assert!(handshake_from("127.0.0.9", &carol).await.is_err());
        let other = handshake_from("127.0.0.10", &carol).await;
        assert!(other.is_ok());
        // Once they are gone, that address gets in again.
        drop(held);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while handshake_from("127.0.0.9", &carol).await.is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the address stays locked out"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    assert!(bob.ctl_json(&["status"]).is_ok());
    assert!(carol.ctl_json(&["status"]).is_ok());
}

#[test]
fn the_local_socket_refuses_a_uid_that_is_not_allowed() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    // Open the file modes wide, so only the SO_PEERCRED check stands in the way.
    std::fs::set_permissions(
        bob.socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o711),
    )
    .unwrap();
    std::fs::set_permissions(&bob.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let nobody = OtherUid::nobody();
    nobody.check_can(&bob.socket, Access::ReadWrite).unwrap();
    let out = bob
        .ctl_command_as(&nobody, &["status"])
        .unwrap()
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        bob.logs().contains("refused a local client"),
        "{}",
        bob.logs()
    );
    assert!(bob.logs().contains("uid=65534"));
    // The allowed uid is still served.
    assert!(bob.ctl_json(&["status"]).is_ok());
}

#[test]
fn no_process_that_holds_a_key_can_dump_core() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let processes = [
        ("smvs-directory", dir.daemon.pid().unwrap()),
        ("smvsd", alice.pid().unwrap()),
        ("smvs-keyguard", alice.keyguard.daemon.pid().unwrap()),
    ];
    for (name, pid) in processes {
        if let Err(e) = check_no_core_dumps(pid) {
            panic!("{name}: {e}");
        }
    }
}

#[test]
fn the_host_database_files_are_private() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    alice.register().unwrap();
    let mut loose = Vec::new();
    for entry in std::fs::read_dir(&alice.state_dir).unwrap() {
        let path = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        let mode = meta.permissions().mode() & 0o777;
        if meta.is_file() && mode != 0o600 {
            loose.push(format!("{} {mode:o}", path.display()));
        }
    }
    assert_eq!(loose, Vec::<String>::new());
    // The files the check is about were there to be checked.
    for name in ["host.db", "host.db-wal", "host.db-shm"] {
        assert!(alice.state_dir.join(name).is_file(), "{name}");
    }
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

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

    // What is on disk of the messages: their sealed rows (read past smvsd, read-only).
    let sealed_rows = |state: &std::path::Path| -> Vec<Vec<u8>> {
        let db = rusqlite::Connection::open_with_flags(
            state.join("host.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        // The messages, and what the event log says of them: events of a message name its
        // row (`msg`), other events of a conversation its tag (here there is one conversation).
        let mut rows = db
            .prepare(
                "SELECT sealed FROM messages
                 UNION ALL SELECT sealed FROM events WHERE tag IS NOT NULL OR msg IS NOT NULL",
            )
            .unwrap();
        let sealed = rows
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        sealed
    };
    let before: Vec<Vec<u8>> = db_dirs.iter().flat_map(|d| sealed_rows(d)).collect();
    assert!(
        before.len() >= 8,
        "both messages on both hosts, and their events"
    );

    alice.ctl_ok(&["delete", "bob"]).unwrap();
    bob.ctl_ok(&["delete", "alice"]).unwrap();
    assert!(alice.history("bob").unwrap().is_empty());
    assert_eq!(
        files_containing(&dirs, marker.as_bytes()),
        Vec::<String>::new()
    );
    // Nothing of the deleted rows is left, in the database or its WAL (which was checkpointed
    // and truncated; what is written after the deletion, such as the `deleted` event, is new).
    for sealed in &before {
        assert_eq!(
            files_containing(&db_dirs, &sealed[sealed.len() - 32..]),
            Vec::<String>::new(),
            "a deleted message's sealed row, or an event of it, is still on disk"
        );
    }
}

/// Review finding 4: every sender a link names that the host has not pinned with the link's
/// key costs a directory look-up, so one link may make only a few; then it hears "later",
/// and the host's directory budget is not spent on made-up names.
#[test]
fn one_link_cannot_make_the_host_look_up_many_senders() {
    let (rt, dir) = runtime_and_directory().unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    bob.register().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, async {
        let directory = dir.client().await.unwrap();
        let bob_transport = directory
            .lookup(&Username::parse("bob").unwrap())
            .await
            .unwrap()
            .user
            .transport_key;
        let claims = |link_no: usize, i: usize| RawEnvelope {
            id: MessageId::random(),
            sender: format!("ghost{link_no}-{i}"),
            recipient: "bob".into(),
            sealed: vec![0; 600],
        };
        let key = AgreementKeyPair::generate().unwrap();
        let first = link(&bob, &key, &bob_transport).await.unwrap();
        let budget = smvsd::api::peer::MAX_LOOKUPS_PER_LINK;
        for i in 0..budget {
            let e = deliver(&first, &claims(1, i))
                .await
                .unwrap_err()
                .to_string();
            assert!(e.contains("refused: unknown sender"), "{i}: {e}");
        }
        let e = deliver(&first, &claims(1, budget))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("later:") && e.contains("too many senders"),
            "{e}"
        );
        // Another link has its own budget.
        let second = link(&bob, &key, &bob_transport).await.unwrap();
        let e = deliver(&second, &claims(2, 0))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("refused: unknown sender"), "{e}");
    });
}

/// The code a directory refusal carries (panics on success or on a broken link).
fn refusal<T>(r: Result<T, smvs_directory::ClientError>) -> smvs_directory::ErrorCode {
    match r {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => e.code().unwrap_or_else(|| panic!("not a refusal: {e}")),
    }
}

/// Review finding 7 (host addresses): a directory started as an operator would start it
/// refuses host addresses of a local kind (loopback, private, link-local, shared, unusable),
/// at registration and when a host moves, with `address-refused` and a sentence that says
/// how to allow them; public ones it takes. (Every other test's directory is started with
/// `--allow-private-host-addresses`: their hosts live on 127.x.)
#[test]
fn a_directory_refuses_local_host_addresses_unless_started_for_a_lan() {
    let rt = runtime().unwrap();
    let strict = rt
        .block_on(DirectoryProcess::start_public_only(&[]))
        .unwrap();
    let alice = HostProcess::start("alice", &strict, "127.0.0.1", &[]).unwrap();
    let out = alice.ctl(&["register", "alice"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("address-refused:")
            && stderr.contains("loopback")
            && stderr.contains("--allow-private-host-addresses"),
        "{stderr}"
    );
    assert!(
        alice.ctl(&["whoami"]).unwrap().status.code() == Some(1),
        "a refused registration leaves the host unregistered"
    );

    tokio::task::LocalSet::new().block_on(&rt, async {
        use smvs_directory::ErrorCode;
        let client = strict.client().await.unwrap();
        for (i, host) in [
            "10.0.0.5:7421",
            "192.168.1.20:7421",
            "[fd00::1]:7421",
            "169.254.3.3:7421",
            "[fe80::1]:7421",
            "100.64.0.1:7421",
            "[::ffff:172.16.0.9]:7421",
            "localhost:7421",
            "0.0.0.0:7421",
            "[::1]:7421",
        ]
        .into_iter()
        .enumerate()
        {
            let user = TestUser::new(&format!("local{i}"), host).unwrap();
            assert_eq!(
                refusal(client.register(&user.registration(&strict.key)).await),
                ErrorCode::AddressRefused,
                "{host}"
            );
        }
        // Public addresses (documentation ranges: registered as data, never connected to).
        let carol = TestUser::new("carol", "203.0.113.7:7421").unwrap();
        client
            .register(&carol.registration(&strict.key))
            .await
            .unwrap();
        let session = carol.login(&client).await.unwrap();
        let private = smvs_schema::HostAddress::parse("192.168.1.2:7421").unwrap();
        assert_eq!(
            refusal(session.update_host_address(&private).await),
            ErrorCode::AddressRefused
        );
        let public = smvs_schema::HostAddress::parse("[2001:db8::7]:7421").unwrap();
        session.update_host_address(&public).await.unwrap();
        let record = client.lookup(&carol.username).await.unwrap();
        assert_eq!(record.user.host_address, public);
    });
}

/// Review finding 7 (host addresses): a host whose own address is public does not connect to
/// a contact whose record names a loopback or private address (else a stranger could make it
/// connect to services on its own machine or network, with a message or a missed call): the
/// send is refused at once with `address-refused`, and nothing is queued. The contact is still
/// pinned and can be verified: only connecting is refused.
#[test]
fn a_host_on_a_public_address_does_not_connect_to_a_local_one() {
    let (rt, dir) = runtime_and_directory().unwrap();
    // alice publishes a documentation address; nobody connects to it (nobody writes to her).
    let alice = HostProcess::start(
        "alice",
        &dir,
        "127.0.0.1",
        &["--public-address", "203.0.113.5:7421"],
    )
    .unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    // dave's record names a private address: data only, registered by the test.
    tokio::task::LocalSet::new().block_on(&rt, async {
        let client = dir.client().await.unwrap();
        let dave = TestUser::new("dave", "10.1.2.3:7421").unwrap();
        client.register(&dave.registration(&dir.key)).await.unwrap();
    });
    for (peer, kind) in [("bob", "loopback"), ("dave", "private")] {
        let out = alice.ctl(&["send", peer, "hello"]).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{peer}: {stderr}");
        assert!(
            stderr.contains(kind) && stderr.contains("refusing to connect"),
            "{peer}: {stderr}"
        );
        // The code scripts branch on, as the local API carries it.
        let code = tokio::task::LocalSet::new().block_on(&rt, async {
            let host = smvsctl::client::connect(&alice.socket).await.unwrap();
            let to = Username::parse(peer).unwrap();
            host.send(&to, "hello").await.unwrap_err().code()
        });
        assert_eq!(code, Some(smvs_schema::ErrorCode::AddressRefused), "{peer}");
        assert!(alice.history(peer).unwrap().is_empty(), "{peer}: queued");
        // Pinned all the same, and verifiable (verify connects nowhere).
        alice.ctl_ok(&["verify", peer]).unwrap();
    }
    assert!(bob.history("alice").unwrap().is_empty());
}

/// A directory in front of the real one, for watching what hosts show it: a Noise responder
/// with the real directory's key (the test holds its key file), which records the static key
/// every initiator presents, then relays the decrypted stream to the real directory over a
/// link of its own. Sending on `cut` closes every relayed link (the host sees its directory
/// connection drop, as when a directory restarts).
async fn recording_directory(
    listener: tokio::net::TcpListener,
    real: std::net::SocketAddr,
    noise: Arc<AgreementKeyPair>,
    seen: Arc<Mutex<Vec<smvs_crypto::AgreementPublicKey>>>,
    cut: tokio::sync::watch::Receiver<u32>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            return;
        };
        let (noise, seen, mut cut) = (noise.clone(), seen.clone(), cut.clone());
        tokio::spawn(async move {
            cut.mark_unchanged();
            let mut down = smvs_transport::accept(
                tcp,
                &noise,
                smvs_transport::DIRECTORY_PROLOGUE,
                smvs_transport::HANDSHAKE_TIMEOUT,
            )
            .await
            .ok()?;
            seen.lock().unwrap().push(down.remote_key);
            let mut up = smvs_transport::connect(
                real,
                &AgreementKeyPair::generate().ok()?,
                smvs_transport::DIRECTORY_PROLOGUE,
                Some(&noise.public()),
            )
            .await
            .ok()?;
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut down.stream, &mut up.stream) => {}
                _ = cut.changed() => {}
            }
            Some(())
        });
    }
}

/// Review finding 5: the directory cannot keep an attributable log of who looks up whom,
/// because a host's directory links never show its transport key (the key its record
/// publishes, which the directory could tie to the user): each connection shows a throwaway
/// Noise key of its own. Seen from a directory that records the initiator key of every link.
#[test]
fn directory_lookups_show_a_throwaway_key_never_the_hosts_transport_key() {
    let (rt, dir) = runtime_and_directory().unwrap();
    let mut alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    let alice_transport = tokio::task::LocalSet::new().block_on(&rt, async {
        let client = dir.client().await.unwrap();
        let alice = Username::parse("alice").unwrap();
        client.lookup(&alice).await.unwrap().user.transport_key
    });

    let noise = Arc::new(
        smvs_directory::load_key(&dir.key_file)
            .unwrap()
            .to_agreement_keypair()
            .unwrap(),
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (cut, cut_rx) = tokio::sync::watch::channel(0u32);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let relay = listener.local_addr().unwrap();
    rt.spawn(recording_directory(
        listener,
        dir.addr,
        noise,
        seen.clone(),
        cut_rx,
    ));
    alice.stop().unwrap();
    alice.use_directory_at(relay);
    alice.start_again().unwrap();

    // `verify` looks the contact up afresh: one look-up on alice's directory link.
    alice.ctl_ok(&["verify", "bob"]).unwrap();
    let first: Vec<_> = seen.lock().unwrap().clone();
    assert!(!first.is_empty(), "the look-up went through the relay");

    // The directory link drops; the next look-up makes a new one. (The first try after the
    // drop may still meet the dead link and fail; the host then reconnects.)
    cut.send_modify(|n| *n += 1);
    let again = (0..3).any(|_| alice.ctl(&["verify", "bob"]).unwrap().status.success());
    assert!(again, "{}", alice.logs());
    let all: Vec<_> = seen.lock().unwrap().clone();
    assert!(
        all.len() > first.len(),
        "the second look-up came on a new link"
    );

    let (before, after) = (first.last().unwrap(), all.last().unwrap());
    assert_ne!(before, after, "two links showed the same key");
    for key in &all {
        assert_ne!(
            *key, alice_transport,
            "a directory link showed the transport key"
        );
    }
    let distinct: std::collections::HashSet<_> = all.iter().map(|k| k.to_hex()).collect();
    assert_eq!(distinct.len(), all.len(), "every link has a key of its own");
}
