//! Registration and the directory: smvs-directory as a real process on 127.0.0.1, through its
//! real client, on both backends (SQLite and PostgreSQL); its command line; the storage suite
//! both backends pass; and a host finishing a registration it never saved.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use smvs_crypto::{AgreementKeyPair, IdentityKeys, SignContext, Signature};
use smvs_directory::store::{NameKey, NewKeys, Store, StoreError};
use smvs_directory::{
    Deregistration, ErrorCode, Registration, Rotation, TransportCertificate, UserRecord,
};
use smvs_schema::{canonical, HostAddress, Username};
use smvs_tests::daemon::binary;
use smvs_tests::directory::pubkey;
use smvs_tests::runtime::{run_local, runtime_and_directory};
use smvs_tests::{Backend, DirectoryProcess, HostProcess, TestUser};

/// Each scenario runs once per backend.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $( #[test] fn $name() { super::run_local(super::$name(super::Backend::Sqlite)).unwrap(); } )* }
        mod postgres { $( #[test] fn $name() { super::run_local(super::$name(super::Backend::Postgres)).unwrap(); } )* }
    };
}

both_backends!(
    register_and_lookup,
    login_update_rotate_deregister,
    tokens_are_single_use_and_bound_to_the_user,
    bad_registrations_change_nothing,
    garbage_on_the_wire_does_not_disturb_others,
    rate_limits_say_when_to_retry,
    a_session_dies_with_the_identity_that_opened_it,
    deregistration_leaves_no_trace_of_the_name,
    serial_floors_of_an_older_directory_are_hashed_on_open,
    published_session_keys_are_checked_kept_and_dropped_at_rotation,
    a_user_who_leaves_is_answered_with_their_signed_statement,
);

fn code<T>(r: Result<T, smvs_directory::ClientError>) -> ErrorCode {
    match r {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => e.code().unwrap_or_else(|| panic!("not a refusal: {e}")),
    }
}

async fn register_and_lookup(backend: Backend) {
    let dir = DirectoryProcess::start(backend, &[]).await.unwrap();
    let client = dir.client().await.unwrap();
    let (key, _) = client.info().await.unwrap();
    assert_eq!(key, dir.key);
    let alice = TestUser::new("alice", "127.0.0.1:7421").unwrap();
    let bob = TestUser::new("bob.b-2_x", "[::1]:7421").unwrap();
    let a = client
        .register(&alice.registration(&dir.key))
        .await
        .unwrap();
    client.register(&bob.registration(&dir.key)).await.unwrap();
    assert_eq!(a.user.identity, alice.identity.bundle());

    // Another client (another connection) sees the same, signed by the pinned key.
    let other = dir.client().await.unwrap();
    let found = other.lookup(&alice.username).await.unwrap();
    assert_eq!(found.user.identity, alice.identity.bundle());
    assert_eq!(found.user.transport_key, alice.transport.public());
    assert_eq!(found.user.host_address, alice.host);
    assert_eq!(found.user.serial, a.user.serial);
    assert_eq!(found.directory_key, dir.key);
    assert_eq!(
        other.lookup(&bob.username).await.unwrap().user.host_address,
        bob.host
    );

    // Duplicate registration, even with other keys: refused, the first record unchanged.
    let imposter = TestUser::new("alice", "127.0.0.9:7421").unwrap();
    assert_eq!(
        code(client.register(&imposter.registration(&dir.key)).await),
        ErrorCode::Taken
    );
    assert_eq!(
        other.lookup(&alice.username).await.unwrap().user.identity,
        alice.identity.bundle()
    );

    let nobody = Username::parse("nobody").unwrap();
    assert_eq!(code(other.lookup(&nobody).await), ErrorCode::NotFound);

    // A client that pins another key refuses to talk to this directory at all.
    let wrong = smvs_crypto::SigningKeyPair::generate().unwrap().public();
    let err = smvs_directory::DirectoryClient::connect(
        &dir.addr.to_string(),
        wrong,
        &AgreementKeyPair::generate().unwrap(),
    )
    .await
    .err()
    .unwrap();
    assert!(err.to_string().contains("not the pinned key"), "{err}");

    let (users, _) = dir.store().await.unwrap().counts().await.unwrap();
    assert_eq!(users, 2);
    let status = dir.daemon.stop().unwrap();
    assert!(status.success(), "{status}");
}

async fn login_update_rotate_deregister(backend: Backend) {
    let dir = DirectoryProcess::start(backend, &[]).await.unwrap();
    let client = dir.client().await.unwrap();
    let alice = TestUser::new("alice", "127.0.0.1:7421").unwrap();
    let first = client
        .register(&alice.registration(&dir.key))
        .await
        .unwrap();

    // Answers the directory keeps in memory never outlive a change: alice's answer and a
    // not-found for bob are asked for (and kept) before each changes.
    let kept = client.lookup(&alice.username).await.unwrap();
    assert_eq!(kept.logged_at.unwrap().version, 1);
    let bob = TestUser::new("bob", "127.0.0.1:7421").unwrap();
    assert_eq!(
        code(client.lookup(&bob.username).await),
        ErrorCode::NotFound
    );
    client.register(&bob.registration(&dir.key)).await.unwrap();
    assert_eq!(
        client.lookup(&bob.username).await.unwrap().user.identity,
        bob.identity.bundle()
    );

    let session = alice.login(&client).await.unwrap();
    let new_host = HostAddress::parse("127.0.0.1:17421").unwrap();
    let moved = session.update_host_address(&new_host).await.unwrap();
    assert_eq!(moved.user.host_address, new_host);
    assert!(moved.user.serial > first.user.serial, "serial must grow");

    // Each change is a version of the name in the key log, at a later epoch; a look-up's proof
    // holds against the newest head, and the owner's history shows every version.
    let seen = client.lookup(&alice.username).await.unwrap();
    let at = seen.logged_at.expect("a look-up carries its log position");
    assert_eq!(at.version, 2);
    let (head, versions) = session.key_history().await.unwrap();
    assert_eq!(head.epoch, at.head.epoch);
    let logged: Vec<_> = versions.iter().map(|v| v.value.clone()).collect();
    assert_eq!(logged, vec![first.logged(), moved.logged()]);
    assert!(versions[0].epoch < versions[1].epoch && versions[1].epoch <= head.epoch);
    // The log grew by adding only from the first version's epoch to now: every epoch's root
    // is kept, and the heads seen are on it. An epoch not yet reached is refused.
    let chain = client.log_consistency(versions[0].epoch).await.unwrap();
    assert_eq!(chain.end(), head.epoch);
    assert_eq!(chain.root_at(head.epoch), Some(&head.root_hash));
    assert_eq!(chain.root_at(at.head.epoch), Some(&at.head.root_hash));
    assert_eq!(
        code(client.log_consistency(head.epoch + 5).await),
        ErrorCode::BadRequest
    );

    // A rotation signed by the wrong (new) key is refused; one signed by the old key is taken.
    let new_identity = IdentityKeys::generate().unwrap();
    let new_transport = AgreementKeyPair::generate().unwrap();
    let now = smvs_directory::clock::now_ms();
    let forged = Rotation::sign_locally(
        &dir.key,
        &alice.username,
        &new_identity,
        &new_identity,
        new_transport.public(),
        now,
    );
    assert_eq!(
        code(session.rotate_keys(&forged).await),
        ErrorCode::BadSignature
    );
    let rotation = Rotation::sign_locally(
        &dir.key,
        &alice.username,
        &alice.identity,
        &new_identity,
        new_transport.public(),
        now,
    );
    let rotated = session.rotate_keys(&rotation).await.unwrap();
    assert_eq!(rotated.user.identity, new_identity.bundle());
    assert!(rotated.user.serial > moved.user.serial);
    let seen = client.lookup(&alice.username).await.unwrap();
    assert_eq!(seen.user.identity, new_identity.bundle());
    assert_eq!(seen.user.transport_key, new_transport.public());
    assert_eq!(seen.user.host_address, new_host);

    // The old identity can no longer log in: the token is sealed to the new key.
    let err = alice.login(&client).await.err().unwrap();
    assert!(
        format!("{err:#}").contains("not sealed to this identity"),
        "{err:#}"
    );

    // Deregistration needs the current identity's signature over this directory, the name,
    // the current serial and a fresh time; a session alone is not enough.
    let now = smvs_directory::clock::now_ms();
    let serial = rotated.user.serial;
    let by_old =
        Deregistration::sign_locally(&dir.key, &alice.username, &alice.identity, serial, now);
    assert_eq!(
        code(session.deregister(&by_old).await),
        ErrorCode::BadSignature
    );
    let old_serial =
        Deregistration::sign_locally(&dir.key, &alice.username, &new_identity, serial - 1, now);
    assert_eq!(
        code(session.deregister(&old_serial).await),
        ErrorCode::Stale
    );
    let stale = Deregistration::sign_locally(
        &dir.key,
        &alice.username,
        &new_identity,
        serial,
        now - 3_600_000,
    );
    assert_eq!(code(session.deregister(&stale).await), ErrorCode::Stale);
    let other_dir = smvs_crypto::SigningKeyPair::generate().unwrap().public();
    let elsewhere =
        Deregistration::sign_locally(&other_dir, &alice.username, &new_identity, serial, now);
    assert_eq!(
        code(session.deregister(&elsewhere).await),
        ErrorCode::BadSignature
    );
    assert_eq!(
        client.lookup(&alice.username).await.unwrap().user.serial,
        serial
    );
    let signed =
        Deregistration::sign_locally(&dir.key, &alice.username, &new_identity, serial, now);
    session.deregister(&signed).await.unwrap();
    assert_eq!(
        code(client.lookup(&alice.username).await),
        ErrorCode::NotFound
    );
    assert_eq!(
        code(session.update_host_address(&new_host).await),
        ErrorCode::AuthFailed
    );
    // Deleted, not flagged: no row and no token remain (bob's row is the one left).
    assert_eq!(dir.store().await.unwrap().counts().await.unwrap(), (1, 0));

    // The name can be registered again, and its serial still grows (stale answers stay
    // detectable).
    let again = TestUser::new("alice", "127.0.0.1:7421").unwrap();
    let fresh = client
        .register(&again.registration(&dir.key))
        .await
        .unwrap();
    assert!(fresh.user.serial > rotated.user.serial);
    dir.daemon.stop().unwrap();
}

async fn tokens_are_single_use_and_bound_to_the_user(backend: Backend) {
    let dir = DirectoryProcess::start(backend, &[]).await.unwrap();
    let client = dir.client().await.unwrap();
    let alice = TestUser::new("alice", "127.0.0.1:7421").unwrap();
    let bob = TestUser::new("bob", "127.0.0.2:7421").unwrap();
    client
        .register(&alice.registration(&dir.key))
        .await
        .unwrap();
    client.register(&bob.registration(&dir.key)).await.unwrap();

    let sealed = client.challenge("alice").await.unwrap();
    let plaintext = alice.identity.agreement.open_sealed(&sealed).unwrap();
    let (expires, token) =
        smvs_schema::canonical::parse_auth_token(&plaintext, &dir.key, &alice.username).unwrap();
    let now = smvs_directory::clock::now_ms();
    assert!(
        expires > now && expires <= now + 61_000,
        "token must expire within 60 s"
    );
    // Bob cannot open it; presenting it as bob fails and also spends nothing of alice's.
    assert!(bob.identity.agreement.open_sealed(&sealed).is_err());
    assert_eq!(
        code(client.authenticate("bob", &token).await),
        ErrorCode::AuthFailed
    );
    // Alice's own use works once; the replay fails.
    client.authenticate("alice", &token).await.unwrap();
    assert_eq!(
        code(client.authenticate("alice", &token).await),
        ErrorCode::AuthFailed
    );

    // Unknown users: the same shape of answer (a sealed box of the same length) and the same
    // error as a wrong token.
    let unknown = client.challenge("zelda").await.unwrap();
    let known = client.challenge("bobby").await;
    assert_eq!(
        unknown.len(),
        client.challenge("alice").await.unwrap().len()
    );
    assert!(known.is_ok());
    assert_eq!(
        code(client.authenticate("zelda", &[0u8; 32]).await),
        ErrorCode::AuthFailed
    );
    assert_eq!(
        code(client.authenticate("alice", &[0u8; 32]).await),
        ErrorCode::AuthFailed
    );
    assert_eq!(
        code(client.authenticate("alice", b"short").await),
        ErrorCode::AuthFailed
    );

    // Expired tokens are refused at the store (the 60 s clock is not waited for here).
    let store = dir.store().await.unwrap();
    let name = Username::parse("alice").unwrap();
    let digest = smvs_crypto::blake2b_256(b"an old token").unwrap();
    store
        .put_token(digest, &name, now - 1, now - 60_000)
        .await
        .unwrap();
    assert!(!store.take_token(digest, &name, now).await.unwrap());
    dir.daemon.stop().unwrap();
}

async fn bad_registrations_change_nothing(backend: Backend) {
    let dir = DirectoryProcess::start(backend, &[]).await.unwrap();
    let client = dir.client().await.unwrap();
    let alice = TestUser::new("alice", "127.0.0.1:7421").unwrap();
    let good = alice.registration(&dir.key);

    // Bad usernames: refused before anything else is looked at.
    for bad in [
        "ab",
        "Alice",
        "al ice",
        "x".repeat(33).as_str(),
        "ali\u{e7}e",
        "",
    ] {
        let refused = client
            .register_unchecked(&good, bad, good.host_address.as_str())
            .await;
        assert_eq!(code(refused), ErrorCode::InvalidUsername, "{bad:?}");
    }
    // A tampered request (the host address changed after signing).
    let mut tampered = good.clone();
    tampered.host_address = HostAddress::parse("127.0.0.66:7421").unwrap();
    assert_eq!(
        code(client.register(&tampered).await),
        ErrorCode::BadSignature
    );
    // Signed for another directory.
    let other_dir = smvs_crypto::SigningKeyPair::generate().unwrap().public();
    assert_eq!(
        code(client.register(&alice.registration(&other_dir)).await),
        ErrorCode::BadSignature
    );
    // A transport certificate made by someone else.
    let mut stolen = good.clone();
    stolen.transport_certificate = Signature::from_bytes(&[7u8; 64]).unwrap();
    assert_eq!(
        code(client.register(&stolen).await),
        ErrorCode::BadSignature
    );
    // An identity bundle whose X25519 key is not vouched for.
    let mut swapped = good.clone();
    swapped.identity.agreement_key = AgreementKeyPair::generate().unwrap().public();
    assert_eq!(
        code(client.register(&swapped).await),
        ErrorCode::BadSignature
    );
    // A replay from long ago.
    let old = Registration::sign_locally(
        &dir.key,
        alice.username.clone(),
        &alice.identity,
        alice.transport.public(),
        alice.host.clone(),
        smvs_directory::clock::now_ms() - 3_600_000,
    );
    assert_eq!(code(client.register(&old).await), ErrorCode::Stale);
    // A bad host address.
    let refused = client
        .register_unchecked(&good, "alice", "no-port-here")
        .await;
    assert_eq!(code(refused), ErrorCode::BadRequest);

    // Nothing was written by any of them; the good one still works afterwards.
    let store = dir.store().await.unwrap();
    assert_eq!(store.counts().await.unwrap().0, 0);
    client.register(&good).await.unwrap();
    assert_eq!(store.counts().await.unwrap().0, 1);
    dir.daemon.stop().unwrap();
}

async fn garbage_on_the_wire_does_not_disturb_others(backend: Backend) {
    let dir = DirectoryProcess::start(backend, &["--handshake-timeout", "1"])
        .await
        .unwrap();
    let client = dir.client().await.unwrap();
    let alice = TestUser::new("alice", "127.0.0.1:7421").unwrap();
    client
        .register(&alice.registration(&dir.key))
        .await
        .unwrap();
    let addr = dir.addr;

    let rogue = tokio::task::spawn_blocking(move || {
        // Plain garbage instead of a handshake.
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(b"\x00\x20GET / HTTP/1.1\r\nHost: x\r\n\r\n....");
        let mut buf = [0u8; 16];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(
            matches!(s.read(&mut buf), Ok(0) | Err(_)),
            "server must hang up"
        );
        // A frame that announces 64 KiB and never sends it, and a peer that never speaks:
        // both are dropped after the handshake timeout.
        let mut slow = TcpStream::connect(addr).unwrap();
        let _ = slow.write_all(&[0xff, 0xff, 1, 2, 3]);
        let silent = TcpStream::connect(addr).unwrap();
        for mut s in [slow, silent] {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            assert!(
                matches!(s.read(&mut buf), Ok(0) | Err(_)),
                "server must hang up"
            );
        }
    });

    // A completed handshake followed by bytes that are not Cap'n Proto.
    let channel = smvs_transport::connect(
        addr,
        &AgreementKeyPair::generate().unwrap(),
        smvs_transport::DIRECTORY_PROLOGUE,
        Some(&dir.key.to_agreement_public().unwrap()),
    )
    .await
    .unwrap();
    let mut stream = channel.stream;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A segment table that claims 2^31 words: far past the 4 MiB reader limit.
    stream
        .write_all(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0x7f])
        .await
        .unwrap();
    stream.write_all(&[0u8; 64]).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .unwrap();

    // An oversized but well-formed request: a 5 MiB username.
    let big = "a".repeat(5 * 1024 * 1024);
    let other = dir.client().await.unwrap();
    assert!(other.challenge(&big).await.is_err());

    rogue.await.unwrap();
    // Everyone else is still served, on the old connection and on new ones.
    assert_eq!(
        client.lookup(&alice.username).await.unwrap().user.username,
        alice.username
    );
    let fresh = dir.client().await.unwrap();
    assert_eq!(
        fresh.lookup(&alice.username).await.unwrap().user.username,
        alice.username
    );
    assert_eq!(dir.store().await.unwrap().counts().await.unwrap().0, 1);
    assert!(dir.daemon.stop().unwrap().success());
}

async fn rate_limits_say_when_to_retry(backend: Backend) {
    let dir = DirectoryProcess::start(backend, &["--rate-per-ip", "2", "--auth-per-minute", "2"])
        .await
        .unwrap();
    let client = dir.client().await.unwrap();
    let name = Username::parse("nobody").unwrap();
    // The burst is three seconds' worth (6); the 7th request within the second is refused.
    let mut refusal = None;
    for _ in 0..20 {
        if let Err(e) = client.lookup(&name).await {
            if e.code() == Some(ErrorCode::RateLimited) {
                refusal = Some(e.to_string());
                break;
            }
        }
    }
    let refusal = refusal.expect("requests past the limit must be refused");
    assert!(refusal.contains("rate limited, retry after "), "{refusal}");
    assert!(refusal.trim_end().ends_with(" s"), "{refusal}");
    dir.daemon.stop().unwrap();
}

/// One SQLite database, one process: what a directory keeps in memory holds only if nobody else
/// writes the file, so a second process on it refuses to start, and says why.
#[test]
fn a_second_directory_process_on_one_sqlite_database_refuses_to_start() {
    let first = DirectoryProcess::start_sqlite_blocking().unwrap();
    let dir2 = tempfile::Builder::new()
        .prefix("smvs-dir-")
        .tempdir()
        .unwrap();
    std::fs::copy(&first.key_file, dir2.path().join("directory.key")).unwrap();
    let second = DirectoryProcess::start_with(dir2, first.db.clone(), &[]);
    let err = format!(
        "{:#}",
        second.err().expect("a second process on one SQLite file")
    );
    assert!(err.contains("another smvs-directory process"), "{err}");
    // The first one still answers.
    run_local(async {
        let client = first.client().await.unwrap();
        let alice = TestUser::new("alice", "127.0.0.1:7421").unwrap();
        client
            .register(&alice.registration(&first.key))
            .await
            .unwrap();
    })
    .unwrap();
    first.daemon.stop().unwrap();
}

#[test]
fn two_directory_processes_share_one_postgres() {
    run_local(async {
        let first = DirectoryProcess::start(Backend::Postgres, &[])
            .await
            .unwrap();
        // A second, stateless process on the same database and key.
        let dir2 = tempfile::Builder::new()
            .prefix("smvs-dir-")
            .tempdir()
            .unwrap();
        std::fs::copy(&first.key_file, dir2.path().join("directory.key")).unwrap();
        let second = DirectoryProcess::start_with(dir2, first.db.clone(), &[]).unwrap();
        assert_eq!(first.key, second.key);
        let a = first.client().await.unwrap();
        let b = second.client().await.unwrap();
        let alice = TestUser::new("alice", "127.0.0.1:7421").unwrap();
        a.register(&alice.registration(&first.key)).await.unwrap();
        assert_eq!(
            b.lookup(&alice.username).await.unwrap().user.identity,
            alice.identity.bundle()
        );
        // Both processes publish to one key log at once: every epoch is written by one of
        // them, and every record is proven by either.
        let users: Vec<TestUser> = (0..6)
            .map(|i| TestUser::new(&format!("user{i}"), "127.0.0.1:7421").unwrap())
            .collect();
        let registered = futures::future::join_all(users.iter().enumerate().map(|(i, u)| {
            let (client, key) = if i % 2 == 0 {
                (&a, &first.key)
            } else {
                (&b, &second.key)
            };
            let request = u.registration(key);
            async move { client.register(&request).await }
        }))
        .await;
        for (user, record) in users.iter().zip(registered) {
            let record = record.unwrap();
            for client in [&a, &b] {
                let seen = client.lookup(&user.username).await.unwrap();
                assert_eq!(seen.logged(), record.logged());
                assert_eq!(seen.logged_at.unwrap().version, 1);
            }
        }
        // A challenge issued by one process is answered at the other.
        let sealed = a.challenge("alice").await.unwrap();
        let plaintext = alice.identity.agreement.open_sealed(&sealed).unwrap();
        let (_, token) =
            smvs_schema::canonical::parse_auth_token(&plaintext, &first.key, &alice.username)
                .unwrap();
        let session = b.authenticate("alice", &token).await.unwrap();

        // What one process keeps in memory is never served after a change made at the other:
        // b keeps alice's answer and a not-found for carol, then a changes both.
        let before = b.lookup(&alice.username).await.unwrap();
        let carol = TestUser::new("carol", "127.0.0.1:7421").unwrap();
        assert_eq!(code(b.lookup(&carol.username).await), ErrorCode::NotFound);
        let at_a = alice.login(&a).await.unwrap();
        let new_host = HostAddress::parse("127.0.0.1:17421").unwrap();
        let moved = at_a.update_host_address(&new_host).await.unwrap();
        let after = b.lookup(&alice.username).await.unwrap();
        assert_eq!(after.user.host_address, new_host);
        assert_eq!(after.user.serial, moved.user.serial);
        assert!(after.logged_at.unwrap().head.epoch > before.logged_at.unwrap().head.epoch);
        a.register(&carol.registration(&first.key)).await.unwrap();
        assert_eq!(
            b.lookup(&carol.username).await.unwrap().user.identity,
            carol.identity.bundle()
        );

        let serial = b.lookup(&alice.username).await.unwrap().user.serial;
        let deregistration = Deregistration::sign_locally(
            &first.key,
            &alice.username,
            &alice.identity,
            serial,
            smvs_directory::clock::now_ms(),
        );
        session.deregister(&deregistration).await.unwrap();
        assert_eq!(code(a.lookup(&alice.username).await), ErrorCode::NotFound);
        second.daemon.stop().unwrap();
        first.daemon.stop().unwrap();
    })
    .unwrap();
}

async fn a_session_dies_with_the_identity_that_opened_it(backend: Backend) {
    let dir = DirectoryProcess::start(backend, &[]).await.unwrap();
    let client = dir.client().await.unwrap();
    let old = TestUser::new("alice", "127.0.0.1:7421").unwrap();
    client.register(&old.registration(&dir.key)).await.unwrap();
    let stale = old.login(&client).await.unwrap();
    let other = old.login(&client).await.unwrap();
    let serial = client.lookup(&old.username).await.unwrap().user.serial;
    let now = smvs_directory::clock::now_ms();
    let deregistration =
        Deregistration::sign_locally(&dir.key, &old.username, &old.identity, serial, now);
    other.deregister(&deregistration).await.unwrap();
    // Someone else registers the freed name; the old owner's remaining session cannot touch it.
    let new = TestUser::new("alice", "127.0.0.5:7421").unwrap();
    client.register(&new.registration(&dir.key)).await.unwrap();
    let moved = HostAddress::parse("127.0.0.66:7421").unwrap();
    assert_eq!(
        code(stale.update_host_address(&moved).await),
        ErrorCode::AuthFailed
    );
    assert_eq!(
        code(stale.deregister(&deregistration).await),
        ErrorCode::AuthFailed
    );
    assert_eq!(
        client
            .lookup(&new.username)
            .await
            .unwrap()
            .user
            .host_address,
        new.host
    );
    // A rotation inside a session keeps that session usable for the new identity.
    let session = new.login(&client).await.unwrap();
    let next = IdentityKeys::generate().unwrap();
    let rotation = Rotation::sign_locally(
        &dir.key,
        &new.username,
        &new.identity,
        &next,
        AgreementKeyPair::generate().unwrap().public(),
        smvs_directory::clock::now_ms(),
    );
    session.rotate_keys(&rotation).await.unwrap();
    session.update_host_address(&moved).await.unwrap();
    dir.daemon.stop().unwrap();
}

#[test]
fn key_file_is_made_private_and_pubkey_matches_the_server() {
    let (rt, dir) = runtime_and_directory().unwrap();
    let mode = std::fs::metadata(&dir.key_file)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // The key the server proves in its handshake is the one `pubkey` prints (the harness
    // pinned it and connected).
    rt.block_on(async {
        tokio::task::LocalSet::new()
            .run_until(async { dir.client().await.unwrap().info().await.unwrap() })
            .await
    });
    assert_eq!(pubkey(&dir.key_file).unwrap(), dir.key);
    let json = Command::new(binary("smvs-directory").unwrap())
        .args(["pubkey", "--json", "--key-file"])
        .arg(&dir.key_file)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["directory_key"], dir.key.to_hex());
    let status = dir.daemon.stop().unwrap();
    assert_eq!(status.code(), Some(0), "SIGTERM must stop cleanly");
}

#[test]
fn a_key_file_others_can_read_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("k.key");
    pubkey(&key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = Command::new(binary("smvs-directory").unwrap())
        .args(["--listen", "127.0.0.1:0", "--db"])
        .arg(format!("sqlite:{}", tmp.path().join("d.db").display()))
        .arg("--key-file")
        .arg(&key)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chmod 600"), "{err}");
    assert!(
        !tmp.path().join("d.db").exists(),
        "nothing is created when start-up fails"
    );
}

#[test]
fn bad_usage_exits_2_and_bad_config_exits_1() {
    let bin = binary("smvs-directory").unwrap();
    let out = Command::new(&bin)
        .args(["--listen", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(&bin)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--db",
            "mysql://nope",
            "--key-file",
        ])
        .arg(tmp.path().join("k"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sqlite:PATH or postgres://"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
}

fn user(name: &str) -> UserRecord {
    let username = Username::parse(name).unwrap();
    let identity = IdentityKeys::generate().unwrap();
    let transport = AgreementKeyPair::generate().unwrap().public();
    let not_after = smvs_directory::clock::now_ms() + canonical::TRANSPORT_CERTIFICATE_LIFETIME_MS;
    UserRecord {
        transport_certificate: identity.signing.sign(
            SignContext::TransportCertificate,
            &canonical::transport_certificate(&username, &transport, not_after),
        ),
        transport_not_after: not_after,
        username,
        identity: identity.bundle(),
        transport_key: transport,
        host_address: HostAddress::parse("127.0.0.1:7421").unwrap(),
        serial: 0,
        session_keys: None,
    }
}

/// A name key for a store opened without a directory.
fn names() -> NameKey {
    NameKey::derive(&[7; 32]).unwrap()
}

async fn suite(store: Store) {
    let alice = user("alice");
    let name = alice.username.clone();
    let stored = store.insert_user(alice.clone()).await.unwrap();
    assert!(stored.serial > 0);
    assert!(matches!(
        store.insert_user(user("alice")).await,
        Err(StoreError::Taken)
    ));
    let got = store.get_user(&name).await.unwrap().unwrap();
    assert_eq!(got, stored);
    assert!(store
        .get_user(&Username::parse("nobody").unwrap())
        .await
        .unwrap()
        .is_none());

    let host = HostAddress::parse("[::1]:9").unwrap();
    let moved = store.update_host(&name, &host).await.unwrap().unwrap();
    assert_eq!(moved.host_address, host);
    assert!(moved.serial > stored.serial);

    let fresh = user("alice");
    let keys = NewKeys {
        current: stored.identity.signing_key,
        identity: fresh.identity,
        transport_key: fresh.transport_key,
        transport_certificate: fresh.transport_certificate,
        transport_not_after: fresh.transport_not_after,
    };
    // A change that raced with another (the identity it replaces is gone) changes nothing.
    let raced = NewKeys {
        current: fresh.identity.signing_key,
        ..keys.clone()
    };
    assert!(store.replace_keys(&name, raced).await.unwrap().is_none());
    assert_eq!(store.get_user(&name).await.unwrap().unwrap(), moved);
    let rotated = store.replace_keys(&name, keys).await.unwrap().unwrap();
    assert_eq!(rotated.identity, fresh.identity);
    assert_eq!(rotated.transport_not_after, fresh.transport_not_after);
    assert_eq!(store.get_user(&name).await.unwrap().unwrap(), rotated);
    assert_eq!(rotated.host_address, host);
    assert!(rotated.serial > moved.serial);

    // Tokens: single use, bound to the user, expiry honoured.
    let now = smvs_directory::clock::now_ms();
    let t = smvs_crypto::blake2b_256(b"token").unwrap();
    store.put_token(t, &name, now + 60_000, now).await.unwrap();
    assert!(!store
        .take_token(t, &Username::parse("bob").unwrap(), now)
        .await
        .unwrap());
    // Presented for the wrong user it is refused and stays for its owner.
    assert!(store.take_token(t, &name, now).await.unwrap());
    assert!(!store.take_token(t, &name, now).await.unwrap());
    let old = smvs_crypto::blake2b_256(b"old").unwrap();
    store
        .put_token(old, &name, now - 1, now - 61_000)
        .await
        .unwrap();
    assert!(!store.take_token(old, &name, now).await.unwrap());
    store
        .put_token(
            smvs_crypto::blake2b_256(b"pending").unwrap(),
            &name,
            now + 60_000,
            now,
        )
        .await
        .unwrap();

    assert!(store.delete_user(&name).await.unwrap());
    assert!(!store.delete_user(&name).await.unwrap());
    assert_eq!(store.counts().await.unwrap(), (0, 0));
    assert!(store.update_host(&name, &host).await.unwrap().is_none());
    let again = store.insert_user(user("alice")).await.unwrap();
    assert!(
        again.serial > rotated.serial,
        "serials never go back, even after deletion"
    );

    // The key log's epochs move on by one, each written whole with its root, or not at all.
    let node = |id: u8| (vec![id], vec![id; 4]);
    store
        .log_put(vec![node(0)], Vec::new(), Some((0, None)))
        .await
        .unwrap();
    store
        .log_put(vec![node(1)], Vec::new(), Some((1, Some([1; 32]))))
        .await
        .unwrap();
    for stale in [0, 1, 3] {
        let root = (stale > 0).then_some([9; 32]);
        assert!(
            matches!(
                store.log_put(vec![node(9)], Vec::new(), Some((stale, root))).await,
                Err(StoreError::LogConflict(e)) if e == stale
            ),
            "epoch {stale} after 1"
        );
    }
    assert!(store.log_nodes(vec![vec![9]]).await.unwrap().is_empty());
    store
        .log_put(vec![node(2)], Vec::new(), Some((2, Some([2; 32]))))
        .await
        .unwrap();
    assert_eq!(
        store.log_roots(0, 5).await.unwrap(),
        vec![[1; 32], [2; 32]],
        "the empty tree's epoch has no root; a refused epoch left none"
    );
}

#[tokio::test]
async fn sqlite_store() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}", dir.path().join("d.db").display());
    suite(Store::open(&url, names()).await.unwrap()).await;
    // Reopening runs no migration twice and keeps the data.
    let reopened = Store::open(&url, names()).await.unwrap();
    assert_eq!(reopened.counts().await.unwrap().0, 1);
}

#[tokio::test]
async fn postgres_store() {
    let url = smvs_tests::postgres::fresh_database().await.unwrap();
    suite(Store::open(&url, names()).await.unwrap()).await;
    let reopened = Store::open(&url, names()).await.unwrap();
    assert_eq!(reopened.counts().await.unwrap().0, 1);
}

#[tokio::test]
async fn bad_database_urls_are_refused() {
    for bad in ["", "mysql://x", "sqlite:", "/tmp/x.db"] {
        assert!(
            matches!(Store::open(bad, names()).await, Err(StoreError::BadUrl(_))),
            "{bad}"
        );
    }
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

// ----- transport certificates expire (finding 7 of the review) -----

/// The identity keys in a keyguard key directory, read as the operator would.
fn identity_in(key_dir: &std::path::Path) -> IdentityKeys {
    let seed = std::fs::read(key_dir.join("identity.sign")).unwrap();
    let agreement = std::fs::read(key_dir.join("identity.agree")).unwrap();
    IdentityKeys {
        signing: smvs_crypto::SigningKeyPair::from_seed(
            &smvs_crypto::SigningSeed::from_bytes(&seed).unwrap(),
        )
        .unwrap(),
        agreement: AgreementKeyPair::from_secret_bytes(&agreement).unwrap(),
    }
}

async fn expired_and_overlong_certificates_are_refused(backend: Backend) {
    let dir = DirectoryProcess::start(backend, &[]).await.unwrap();
    let client = dir.client().await.unwrap();
    let alice = TestUser::new("alice", "127.0.0.1:7421").unwrap();
    let now = smvs_directory::clock::now_ms();
    let lifetime = canonical::TRANSPORT_CERTIFICATE_LIFETIME_MS;
    let with_expiry = |not_after: i64| {
        Registration::sign_with_certificate(
            &dir.key,
            alice.username.clone(),
            &alice.identity,
            TransportCertificate::sign_locally(
                &alice.identity,
                &alice.username,
                alice.transport.public(),
                not_after,
            ),
            alice.host.clone(),
            now,
        )
    };
    // Expired: refused, as stale.
    let refused = client.register(&with_expiry(now - 1)).await;
    assert_eq!(code(refused), ErrorCode::Stale);
    // Valid for longer than keyguard ever makes one: refused.
    let refused = client
        .register(&with_expiry(now + lifetime + 3_600_000))
        .await;
    assert_eq!(code(refused), ErrorCode::BadRequest);
    // An expiry that is not the one signed: refused.
    let mut moved = with_expiry(now + lifetime);
    moved.transport_not_after += 1;
    assert_eq!(code(client.register(&moved).await), ErrorCode::BadSignature);
    assert_eq!(
        Store::open(&dir.db, names())
            .await
            .unwrap()
            .counts()
            .await
            .unwrap()
            .0,
        0
    );
    // A good one is taken, and a renewal in a session moves the expiry.
    let first = client.register(&with_expiry(now + lifetime)).await.unwrap();
    assert_eq!(first.user.transport_not_after, now + lifetime);
    let session = alice.login(&client).await.unwrap();
    let expired = TransportCertificate::sign_locally(
        &alice.identity,
        &alice.username,
        alice.transport.public(),
        now - 1,
    );
    assert_eq!(
        code(session.renew_transport(&expired).await),
        ErrorCode::Stale
    );
    let stranger = IdentityKeys::generate().unwrap();
    let not_ours = TransportCertificate::sign_locally(
        &stranger,
        &alice.username,
        alice.transport.public(),
        now + lifetime,
    );
    assert_eq!(
        code(session.renew_transport(&not_ours).await),
        ErrorCode::BadSignature
    );
    let renewed_at = smvs_directory::clock::now_ms() + lifetime;
    let renewal = TransportCertificate::sign_locally(
        &alice.identity,
        &alice.username,
        alice.transport.public(),
        renewed_at,
    );
    let renewed = session.renew_transport(&renewal).await.unwrap();
    assert_eq!(renewed.user.transport_not_after, renewed_at);
    assert!(renewed.user.serial > first.user.serial);
    assert_eq!(renewed.user.identity, alice.identity.bundle());
    dir.daemon.stop().unwrap();
}

#[test]
fn expired_and_overlong_certificates_are_refused_sqlite() {
    run_local(expired_and_overlong_certificates_are_refused(
        Backend::Sqlite,
    ))
    .unwrap();
}

#[test]
fn expired_and_overlong_certificates_are_refused_postgres() {
    run_local(expired_and_overlong_certificates_are_refused(
        Backend::Postgres,
    ))
    .unwrap();
}

/// A host that was off past its certificate's expiry: others refuse its record (with a clear
/// reason), and it renews the certificate through keyguard when it starts again.
#[test]
fn hosts_refuse_an_expired_certificate_and_its_owner_renews_it_at_start() {
    // The test changes the directory's database behind its back (below), so the directory
    // keeps no answers in memory: with them, it would answer what it had before until the
    // next epoch, as if the change had not been made (which in life it never is: an expiry
    // comes with time, and the record in a kept answer expires as well).
    let dir = DirectoryProcess::start_sqlite_blocking_with(&["--answer-cache-mib", "0"]).unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let mut bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    let bob_name = Username::parse("bob").unwrap();
    let lookup = |owner: bool| {
        run_local(async {
            let client = dir.client().await.unwrap();
            if owner {
                client.lookup_for_owner(&bob_name).await
            } else {
                client.lookup(&bob_name).await
            }
        })
        .unwrap()
    };
    let registered = lookup(false).unwrap();
    let lifetime = canonical::TRANSPORT_CERTIFICATE_LIFETIME_MS;
    assert!(registered.user.transport_not_after > smvs_directory::clock::now_ms() + lifetime / 2);

    // Bob's host goes away, and its certificate's time runs out (written into the directory's
    // database as the passing of 30 days would leave it: certified by bob's identity, expired).
    bob.stop().unwrap();
    let identity = identity_in(&bob.keyguard.key_dir);
    let expired = TransportCertificate::sign_locally(
        &identity,
        &bob_name,
        registered.user.transport_key,
        smvs_directory::clock::now_ms() - 1,
    );
    let db = dir.db.strip_prefix("sqlite:").unwrap();
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(5)).unwrap();
    let changed = conn
        .execute(
            "UPDATE users SET transport_certificate = ?1, transport_not_after = ?2 WHERE username = 'bob'",
            rusqlite::params![&expired.certificate.as_bytes()[..], expired.not_after],
        )
        .unwrap();
    assert_eq!(changed, 1);
    drop(conn);

    // The directory still serves it (signed), but no host takes it.
    let err = lookup(false).unwrap_err().to_string();
    assert!(err.contains("expired"), "{err}");
    assert_eq!(
        lookup(true).unwrap().user.transport_not_after,
        expired.not_after
    );
    let out = alice.ctl(&["verify", "bob"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("expired"), "{stderr}");
    let queued = alice.send("bob", "while expired").unwrap();

    // Bob's host starts again: before it says it serves, it has renewed its certificate.
    bob.start_again().unwrap();
    let renewed = lookup(false).unwrap();
    assert!(renewed.user.transport_not_after > smvs_directory::clock::now_ms() + lifetime / 2);
    assert!(renewed.user.serial > registered.user.serial);
    assert_eq!(renewed.user.identity, registered.user.identity);
    assert_eq!(renewed.user.transport_key, registered.user.transport_key);
    // And what waited is delivered.
    bob.wait_history("alice", Duration::from_secs(60), |h| {
        h.iter().any(|m| m["id"] == queued.as_str())
    })
    .unwrap();
    // A restart with plenty of time left renews nothing.
    bob.stop().unwrap();
    bob.start_again().unwrap();
    assert_eq!(lookup(false).unwrap().user.serial, renewed.user.serial);
}

/// A name no other test uses, to look for in the raw store.
const TRACED: &str = "zelda.was-here";

/// Whether the store at `db` holds `needle` anywhere: for SQLite, the raw bytes of the
/// database file and its WAL; for PostgreSQL, every row of every table, as text (deleted
/// tuples stay in PostgreSQL's heap files until vacuum reclaims them, which the README says).
async fn store_holds(db: &str, needle: &str) -> bool {
    if let Some(path) = db.strip_prefix("sqlite:") {
        let mut bytes = std::fs::read(path).unwrap();
        if let Ok(wal) = std::fs::read(format!("{path}-wal")) {
            bytes.extend_from_slice(&wal);
        }
        return bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    }
    let (client, connection) = tokio_postgres::connect(db, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::task::spawn_local(connection);
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut found = false;
    for table in tables {
        for row in client
            .query(&format!("SELECT t::text FROM {table} t"), &[])
            .await
            .unwrap()
        {
            found |= row.get::<_, String>(0).contains(needle);
        }
    }
    drop(client);
    let _ = driver.await;
    found
}

/// Runs one statement on the store at `db` behind the directory's back (`$1`, `$2`, … in
/// PostgreSQL's style; SQLite reads them too).
async fn raw_execute(db: &str, sql: &str, serial: i64, name: &str) {
    if let Some(path) = db.strip_prefix("sqlite:") {
        let c = rusqlite::Connection::open(path).unwrap();
        c.busy_timeout(Duration::from_secs(5)).unwrap();
        c.execute(sql, rusqlite::params![serial, name]).unwrap();
        return;
    }
    let (client, connection) = tokio_postgres::connect(db, tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::task::spawn_local(connection);
    client.execute(sql, &[&serial, &name]).await.unwrap();
    drop(client);
    let _ = driver.await;
}

/// Review finding 7 (deregistered names): after deregistration the store holds no trace of
/// the name (only a keyed hash of it, with its serial), and a new registration of the name
/// still gets a higher serial, even when the old serial ran far ahead of the clock (a
/// directory whose clock was set back), so that only the kept floor can keep it above.
async fn deregistration_leaves_no_trace_of_the_name(backend: Backend) {
    let dir = DirectoryProcess::start(backend, &[]).await.unwrap();
    let client = dir.client().await.unwrap();
    let zelda = TestUser::new(TRACED, "127.0.0.1:7421").unwrap();
    let first = client
        .register(&zelda.registration(&dir.key))
        .await
        .unwrap();
    let ahead = i64::try_from(first.user.serial).unwrap() + 10_000_000_000;
    raw_execute(
        &dir.db,
        "UPDATE users SET serial = $1 WHERE username = $2",
        ahead,
        TRACED,
    )
    .await;
    assert!(store_holds(&dir.db, TRACED).await, "the check can see it");
    let session = zelda.login(&client).await.unwrap();
    let deregistration = Deregistration::sign_locally(
        &dir.key,
        &zelda.username,
        &zelda.identity,
        u64::try_from(ahead).unwrap(),
        smvs_directory::clock::now_ms(),
    );
    session.deregister(&deregistration).await.unwrap();
    assert_eq!(
        code(client.lookup(&zelda.username).await),
        ErrorCode::NotFound
    );
    assert!(
        !store_holds(&dir.db, TRACED).await,
        "the deregistered name is still in the store"
    );

    let again = TestUser::new(TRACED, "127.0.0.1:7421").unwrap();
    let fresh = client
        .register(&again.registration(&dir.key))
        .await
        .unwrap();
    assert!(
        fresh.user.serial > u64::try_from(ahead).unwrap(),
        "{} is not above the old serial {ahead}",
        fresh.user.serial
    );
    dir.daemon.stop().unwrap();
}

/// A database a version-1 directory wrote (deregistered names in clear in `serial_floor`) is
/// migrated when opened: the names become keyed hashes, the old table goes, and the floor
/// still holds for a new registration of the name.
async fn serial_floors_of_an_older_directory_are_hashed_on_open(backend: Backend) {
    let (db, _dir) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let db = format!("sqlite:{}", dir.path().join("d.db").display());
            (db, Some(dir))
        }
        Backend::Postgres => (smvs_tests::postgres::fresh_database().await.unwrap(), None),
    };
    // Version 1's tables, as that version made them, and one deregistered name.
    const V1: &str = "CREATE TABLE users (username TEXT PRIMARY KEY, signing_key BYTEA NOT NULL,
            agreement_key BYTEA NOT NULL, agreement_signature BYTEA NOT NULL,
            transport_key BYTEA NOT NULL, transport_certificate BYTEA NOT NULL,
            host_address TEXT NOT NULL, serial BIGINT NOT NULL);
        CREATE TABLE auth_tokens (digest BYTEA PRIMARY KEY, username TEXT NOT NULL,
            expires_at BIGINT NOT NULL);
        CREATE INDEX auth_tokens_expiry ON auth_tokens (expires_at);
        CREATE TABLE serial_floor (username TEXT PRIMARY KEY, serial BIGINT NOT NULL);";
    let ahead = smvs_directory::clock::now_ms() + 10_000_000_000;
    match db.strip_prefix("sqlite:") {
        Some(path) => {
            let c = rusqlite::Connection::open(path).unwrap();
            c.pragma_update(None, "journal_mode", "WAL").unwrap();
            c.execute_batch(&V1.replace("BYTEA", "BLOB")).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
        }
        None => {
            let (client, connection) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
                .await
                .unwrap();
            let driver = tokio::task::spawn_local(connection);
            client
                .batch_execute(&format!(
                    "{V1} CREATE TABLE schema_version (version BIGINT NOT NULL);
                     INSERT INTO schema_version VALUES (1);"
                ))
                .await
                .unwrap();
            drop(client);
            let _ = driver.await;
        }
    }
    raw_execute(
        &db,
        "INSERT INTO serial_floor (serial, username) VALUES ($1, $2)",
        ahead,
        TRACED,
    )
    .await;
    assert!(store_holds(&db, TRACED).await);

    let store = Store::open(&db, names()).await.unwrap();
    assert!(
        !store_holds(&db, TRACED).await,
        "the old floor's name is still in the store"
    );
    let again = store.insert_user(user(TRACED)).await.unwrap();
    assert!(again.serial > u64::try_from(ahead).unwrap());
}

/// Review finding: a process that held keyguard's socket can log in as the user and point the
/// record at another host address. The host notices at its next renewal check (start, then
/// hourly), logs a security event and publishes its own address again.
#[test]
fn a_host_puts_back_its_own_address_when_the_record_was_pointed_elsewhere() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let mut alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    alice.register().unwrap();
    let name = Username::parse("alice").unwrap();
    let ours = alice.listen.to_string();
    let elsewhere = HostAddress::parse("127.0.0.9:7421").unwrap();
    run_local(async {
        let client = dir.client().await.unwrap();
        let keyguard = alice.keyguard.client().await.unwrap();
        let sealed = client.challenge(name.as_str()).await.unwrap();
        let token = keyguard
            .open_login_token(&dir.key, &name, &sealed)
            .await
            .unwrap();
        let session = client.authenticate(name.as_str(), &token).await.unwrap();
        session.update_host_address(&elsewhere).await.unwrap();
    })
    .unwrap();
    let published = || {
        run_local(async {
            let client = dir.client().await.unwrap();
            client
                .lookup(&name)
                .await
                .unwrap()
                .user
                .host_address
                .to_string()
        })
        .unwrap()
    };
    assert_eq!(published(), elsewhere.to_string());
    alice.stop().unwrap();
    alice.start_again().unwrap();
    assert_eq!(published(), ours);
    assert!(
        alice
            .logs()
            .contains(smvs_service::logging::OWN_RECORD_CHANGED.message_id),
        "no security event for the moved record"
    );
}

/// Session v2's keys as keyguard would make them, signed by `identity`.
fn session_keys(
    identity: &IdentityKeys,
    prekey_id: u32,
    expires: i64,
) -> smvs_directory::PublishedSessionKeys {
    let kem = smvs_crypto::XWingKeyPair::generate()
        .unwrap()
        .public()
        .clone();
    smvs_directory::PublishedSessionKeys {
        kem_signature: smvs_crypto::sign_identity_kem(identity, &kem),
        kem,
        prekey: smvs_crypto::SignedPrekey::sign(
            identity,
            prekey_id,
            expires,
            AgreementKeyPair::generate().unwrap().public(),
            smvs_crypto::XWingKeyPair::generate()
                .unwrap()
                .public()
                .clone(),
        ),
    }
}

/// Publishing session v2's keys: only keys the record's identity signed, with a prekey that
/// has not expired and does not run too far ahead; a look-up shows them (checked again by the
/// client); a renewal of the transport certificate keeps them; a key rotation drops them
/// (they were the old identity's).
async fn published_session_keys_are_checked_kept_and_dropped_at_rotation(backend: Backend) {
    let dir = DirectoryProcess::start(backend, &[]).await.unwrap();
    let client = dir.client().await.unwrap();
    let alice = TestUser::new("alice", "127.0.0.1:7421").unwrap();
    let first = client
        .register(&alice.registration(&dir.key))
        .await
        .unwrap();
    assert_eq!(first.user.session_keys, None);
    let session = alice.login(&client).await.unwrap();
    let now_s = smvs_directory::clock::now_ms() / 1000;
    let week = 7 * 24 * 3600;

    // Signed by someone else, or forged after signing: refused.
    let stranger = IdentityKeys::generate().unwrap();
    assert_eq!(
        code(
            session
                .publish_session_keys(&session_keys(&stranger, 1, now_s + week))
                .await
        ),
        ErrorCode::BadSignature
    );
    let mut moved = session_keys(&alice.identity, 1, now_s + week);
    moved.prekey.expires += 1;
    assert_eq!(
        code(session.publish_session_keys(&moved).await),
        ErrorCode::BadSignature
    );
    let mut other_kem = session_keys(&alice.identity, 1, now_s + week);
    other_kem.kem = smvs_crypto::XWingKeyPair::generate()
        .unwrap()
        .public()
        .clone();
    assert_eq!(
        code(session.publish_session_keys(&other_kem).await),
        ErrorCode::BadSignature
    );
    // Expired, too far ahead, or id 0: refused as stale.
    for (id, expires) in [
        (1, now_s - 1),
        (1, now_s + 40 * 24 * 3600),
        (0, now_s + week),
    ] {
        assert_eq!(
            code(
                session
                    .publish_session_keys(&session_keys(&alice.identity, id, expires))
                    .await
            ),
            ErrorCode::Stale
        );
    }
    assert_eq!(
        client
            .lookup(&alice.username)
            .await
            .unwrap()
            .user
            .session_keys,
        None
    );

    // Good ones are published, with a new serial; a look-up shows them.
    let keys = session_keys(&alice.identity, 1, now_s + week);
    let published = session.publish_session_keys(&keys).await.unwrap();
    assert_eq!(published.user.session_keys.as_ref(), Some(&keys));
    assert!(published.user.serial > first.user.serial);
    let seen = client.lookup(&alice.username).await.unwrap();
    assert_eq!(seen.user.session_keys.as_ref(), Some(&keys));
    // A new prekey replaces the old one.
    let rotated_prekey = session_keys(&alice.identity, 2, now_s + 2 * week);
    session.publish_session_keys(&rotated_prekey).await.unwrap();
    assert_eq!(
        client
            .lookup(&alice.username)
            .await
            .unwrap()
            .user
            .session_keys,
        Some(rotated_prekey.clone())
    );
    // A renewal keeps them.
    let renewal = TransportCertificate::sign_locally(
        &alice.identity,
        &alice.username,
        alice.transport.public(),
        smvs_directory::clock::now_ms() + canonical::TRANSPORT_CERTIFICATE_LIFETIME_MS,
    );
    let renewed = session.renew_transport(&renewal).await.unwrap();
    assert_eq!(renewed.user.session_keys, Some(rotated_prekey));

    // A key rotation drops them.
    let new_identity = IdentityKeys::generate().unwrap();
    let rotation = Rotation::sign_locally(
        &dir.key,
        &alice.username,
        &alice.identity,
        &new_identity,
        AgreementKeyPair::generate().unwrap().public(),
        smvs_directory::clock::now_ms(),
    );
    let rotated = session.rotate_keys(&rotation).await.unwrap();
    assert_eq!(rotated.user.session_keys, None);
    assert_eq!(
        client
            .lookup(&alice.username)
            .await
            .unwrap()
            .user
            .session_keys,
        None
    );
    dir.daemon.stop().unwrap();
}

/// `leave`: only a statement this user's identity signed, naming this directory as the one
/// left and another as the new one, dated now, is taken; the record is then gone and look-ups
/// answer with the statement (a plain look-up says where to), until the name is registered
/// again.
async fn a_user_who_leaves_is_answered_with_their_signed_statement(backend: Backend) {
    let dir = DirectoryProcess::start(backend, &[]).await.unwrap();
    let client = dir.client().await.unwrap();
    let alice = TestUser::new("alice", "127.0.0.1:7421").unwrap();
    client
        .register(&alice.registration(&dir.key))
        .await
        .unwrap();
    let elsewhere = smvs_crypto::SigningKeyPair::generate().unwrap().public();
    let statement = |by: &IdentityKeys, from, to, issued_at| {
        let mut s = smvs_directory::MovedStatement {
            username: alice.username.clone(),
            from,
            to,
            to_address: "127.0.0.9:7420".into(),
            issued_at,
            signature: Signature::from_bytes(&[0; 64]).unwrap(),
        };
        s.signature = by
            .signing
            .sign(SignContext::DirectoryMove, &s.signed_bytes());
        s
    };
    let now = smvs_directory::clock::now_ms();
    let session = alice.login(&client).await.unwrap();
    let stranger = IdentityKeys::generate().unwrap();
    for (bad, expected) in [
        (
            statement(&stranger, dir.key, elsewhere, now),
            ErrorCode::BadSignature,
        ),
        (
            statement(&alice.identity, elsewhere, dir.key, now),
            ErrorCode::BadRequest,
        ),
        (
            statement(&alice.identity, dir.key, dir.key, now),
            ErrorCode::BadRequest,
        ),
        (
            statement(&alice.identity, dir.key, elsewhere, now - 3_600_000),
            ErrorCode::Stale,
        ),
    ] {
        assert_eq!(code(session.leave(&bad).await), expected);
    }
    assert!(
        client.lookup(&alice.username).await.is_ok(),
        "nothing changed"
    );

    let good = statement(&alice.identity, dir.key, elsewhere, now);
    session.leave(&good).await.unwrap();
    match client.lookup_answer(&alice.username).await.unwrap() {
        smvs_directory::LookupAnswer::Moved(served) => assert_eq!(served, good),
        other => panic!("expected the statement, got {other:?}"),
    }
    let plain = client.lookup(&alice.username).await.unwrap_err();
    assert_eq!(plain.code(), Some(ErrorCode::NotFound));
    assert!(
        plain
            .to_string()
            .contains("moved to the directory at 127.0.0.9:7420"),
        "{plain}"
    );

    // The name registered again (by anyone): the forwarding ends.
    let again = TestUser::new("alice", "127.0.0.2:7421").unwrap();
    client
        .register(&again.registration(&dir.key))
        .await
        .unwrap();
    assert!(matches!(
        client.lookup_answer(&alice.username).await.unwrap(),
        smvs_directory::LookupAnswer::Record(_)
    ));
}
