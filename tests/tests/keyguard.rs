//! smvs-keyguard as a real process: identities, signatures, login tokens, transport
//! certificates, registrations and derived keys through its real client; what a holder of the
//! socket can no longer get (rotations, deregistrations, arbitrary sealed boxes); the
//! operator's commands; refusals of other uids, loose permissions and malformed input;
//! hardening.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use smvs_crypto::{
    hkdf_sha256, seal, AgreementKeyPair, AgreementPublicKey, SignContext, SigningKeyPair,
};
use smvs_keyguard::keydir::{
    AGREEMENT_FILE, SIGNING_FILE, STORAGE_DERIVED_FILE, STORAGE_EPOCHS_FILE,
};
use smvs_keyguard::KeyguardError;
use smvs_schema::keyguard_capnp::SignPurpose;
use smvs_schema::{canonical, HostAddress, Username};
use smvs_tests::daemon::binary;
use smvs_tests::keyguard::{server_args, temp_dir};
use smvs_tests::other_uid::{is_root, OtherUid};
use smvs_tests::runtime::run_local;
use smvs_tests::{Backend, DirectoryProcess, HostProcess, KeyguardProcess};

/// The uid and gid of `nobody` on Debian.
const NOBODY: u32 = 65534;

/// Every purpose the retired `sign` method ever had.
const ALL_PURPOSES: [SignPurpose; 5] = [
    SignPurpose::RetiredTransportCertificate,
    SignPurpose::RetiredDirectoryRegistration,
    SignPurpose::RetiredKeyRotation,
    SignPurpose::RetiredEnvelope,
    SignPurpose::RetiredReceipt,
];

/// Asks the retired `sign` method, raw: keyguard answers "unimplemented" whatever the purpose.
async fn sign_is_retired(client: &smvs_keyguard::KeyguardClient) {
    for purpose in ALL_PURPOSES {
        let mut request = client.capability().retired_sign_request();
        request.get().set_purpose(purpose);
        request.get().set_message(b"sign this");
        let err = request.send().promise.await.err().unwrap();
        assert_eq!(
            err.kind,
            capnp::ErrorKind::Unimplemented,
            "{purpose:?}: {err}"
        );
    }
}

fn refused<T: std::fmt::Debug>(result: Result<T, KeyguardError>, wanted: &str) {
    match result {
        Err(e @ KeyguardError::Refused { .. }) => {
            assert!(e.to_string().contains(wanted), "{e} (wanted {wanted:?})")
        }
        other => panic!("expected a refusal containing {wanted:?}, got {other:?}"),
    }
}

#[test]
fn identity_is_made_once_and_its_keys_work() {
    run_local(async {
        let kg = KeyguardProcess::start(&[]).unwrap();
        let client = kg.client().await.unwrap();
        assert_eq!(client.public_keys().await.unwrap(), None);

        // Nothing that needs the identity works before it exists; the storage key does.
        let dir_key = SigningKeyPair::generate().unwrap().public();
        let alice = Username::parse("alice").unwrap();
        refused(
            client.open_login_token(&dir_key, &alice, &[0u8; 64]).await,
            "no identity: register first",
        );
        let stranger = AgreementKeyPair::generate().unwrap();
        refused(
            client
                .derive_shared_key(&stranger.public(), b"", b"info")
                .await,
            "no identity: register first",
        );
        let storage_keys = client.storage_keys().await.unwrap();
        assert_eq!(storage_keys.current.id, 1);
        assert!(storage_keys.previous.is_none());
        let storage_key = storage_keys.current.key;
        assert!(!kg.key_dir.join(SIGNING_FILE).exists());
        assert!(!kg.key_dir.join(AGREEMENT_FILE).exists());

        // Two connections asking at once get one identity.
        let other = kg.client().await.unwrap();
        let (a, b) = tokio::join!(client.create_identity(), other.create_identity());
        let bundle = a.unwrap();
        assert_eq!(b.unwrap(), bundle);
        bundle.verify().unwrap();
        assert_eq!(client.create_identity().await.unwrap(), bundle);
        assert_eq!(other.public_keys().await.unwrap(), Some(bundle));

        // Keyguard signs nothing on request, for any purpose, with the identity made.
        sign_is_retired(&client).await;

        // A login token of this directory for this user opens to its token and nothing else;
        // a token for another user or directory, an expired one, a box to another key and any
        // other sealed box are refused (and nothing of their content comes back).
        let now = smvs_directory::clock::now_ms();
        let token = [42u8; 32];
        let plaintext = canonical::auth_token_plaintext(&dir_key, &alice, now + 60_000, &token);
        let sealed = seal(&bundle.agreement_key, &plaintext).unwrap();
        assert_eq!(
            client
                .open_login_token(&dir_key, &alice, &sealed)
                .await
                .unwrap(),
            token
        );
        let bob = Username::parse("bob").unwrap();
        refused(
            client.open_login_token(&dir_key, &bob, &sealed).await,
            "is not a login token of directory",
        );
        let other_dir = SigningKeyPair::generate().unwrap().public();
        refused(
            client.open_login_token(&other_dir, &alice, &sealed).await,
            "is not a login token of directory",
        );
        let expired = canonical::auth_token_plaintext(&dir_key, &alice, now - 1, &token);
        let expired = seal(&bundle.agreement_key, &expired).unwrap();
        refused(
            client.open_login_token(&dir_key, &alice, &expired).await,
            "expired",
        );
        let secret = seal(&bundle.agreement_key, b"a secret that is no token").unwrap();
        refused(
            client.open_login_token(&dir_key, &alice, &secret).await,
            "is not a login token",
        );
        let elsewhere = seal(&stranger.public(), &plaintext).unwrap();
        refused(
            client.open_login_token(&dir_key, &alice, &elsewhere).await,
            "not a login token sealed to this identity",
        );
        // The method that opened any sealed box is gone.
        let mut request = client.capability().retired_open_sealed_request();
        request.get().set_sealed(&secret);
        let err = request.send().promise.await.err().unwrap();
        assert_eq!(err.kind, capnp::ErrorKind::Unimplemented, "{err}");

        // A transport certificate is keyguard's, with keyguard's expiry.
        let transport = AgreementKeyPair::generate().unwrap().public();
        let before = smvs_directory::clock::now_ms();
        let cert = client.certify_transport(&alice, &transport).await.unwrap();
        let after = smvs_directory::clock::now_ms();
        let lifetime = canonical::TRANSPORT_CERTIFICATE_LIFETIME_MS;
        assert!((before + lifetime..=after + lifetime).contains(&cert.not_after));
        smvs_directory::record::verify_transport_certificate(
            &alice,
            &bundle,
            &transport,
            &cert.certificate,
            cert.not_after,
            after,
        )
        .unwrap();
        // And so is a registration: of its own identity, signed for the directory named.
        let host = HostAddress::parse("127.0.0.1:7421").unwrap();
        let registration = client
            .sign_registration(&dir_key, &alice, &transport, &host)
            .await
            .unwrap();
        assert_eq!(registration.identity, bundle);
        bundle
            .signing_key
            .verify(
                SignContext::DirectoryRegistration,
                &registration.signed_bytes(&dir_key),
                &registration.signature,
            )
            .unwrap();
        // Wrong lengths and bad names are refused, raw.
        let mut request = client.capability().certify_transport_request();
        request.get().set_username("alice");
        request.get().set_transport_key(&[9u8; 31]);
        let err = request.send().promise.await.err().unwrap();
        assert!(err.to_string().contains("transport key"), "{err}");
        let mut request = client.capability().sign_registration_request();
        request.get().set_directory_key(dir_key.as_bytes());
        request.get().set_username("not a name!");
        request.get().set_transport_key(transport.as_bytes());
        request.get().set_host_address("127.0.0.1:7421");
        let err = request.send().promise.await.err().unwrap();
        assert!(err.to_string().contains("username"), "{err}");

        // The shared key is what the peer computes on its side.
        let peer = AgreementKeyPair::generate().unwrap();
        let salt = b"conversation salt";
        let info = b"smvs session v1";
        let ours = client
            .derive_shared_key(&peer.public(), salt, info)
            .await
            .unwrap();
        let theirs = hkdf_sha256(
            salt,
            peer.agree(&bundle.agreement_key).unwrap().expose(),
            info,
            32,
        )
        .unwrap();
        assert_eq!(ours.expose()[..], theirs[..]);
        let other_info = client
            .derive_shared_key(&peer.public(), salt, b"another purpose")
            .await
            .unwrap();
        assert_ne!(other_info.expose(), ours.expose());

        // What deriveSharedKey refuses.
        refused(
            client.derive_shared_key(&peer.public(), salt, b"").await,
            "info must not be empty",
        );
        refused(
            client
                .derive_shared_key(&peer.public(), &[7u8; 1025], info)
                .await,
            "salt is 1025 bytes",
        );
        let low_order = AgreementPublicKey::from_bytes(&[0u8; 32]).unwrap();
        refused(
            client.derive_shared_key(&low_order, salt, info).await,
            "weak shared secret",
        );
        // A key of the wrong length cannot be built with the typed client; send it raw.
        let mut request = client.capability().derive_shared_key_request();
        request.get().set_peer_agreement_key(&[9u8; 31]);
        request.get().set_info(info);
        let err = request.send().promise.await.err().unwrap();
        assert!(
            err.to_string().contains("must be 32 bytes, got 31"),
            "{err}"
        );

        // A restart keeps the identity and the storage key.
        drop((client, other));
        let kg = kg.restart(&[]).unwrap();
        let client = kg.client().await.unwrap();
        assert_eq!(client.public_keys().await.unwrap(), Some(bundle));
        let again = client.storage_keys().await.unwrap();
        assert_eq!(again.current.key.expose(), storage_key.expose());
        assert_eq!(again.derived, storage_keys.derived);
        sign_is_retired(&client).await;

        // No secret answer is in a key file (the derived storage keys are kept as they are
        // handed out: they only name rows); every key file is private.
        let mut files = 0;
        for entry in std::fs::read_dir(&kg.key_dir).unwrap() {
            let entry = entry.unwrap();
            let content = std::fs::read(entry.path()).unwrap();
            let contains = |needle: &[u8]| content.windows(needle.len()).any(|w| w == needle);
            assert!(
                !contains(storage_key.expose()),
                "{}",
                entry.path().display()
            );
            assert!(!contains(ours.expose()), "{}", entry.path().display());
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", entry.path().display());
            files += 1;
        }
        assert_eq!(
            files, 4,
            "identity.sign, identity.agree, storage.derived, storage.epochs"
        );
        let dir_mode = std::fs::metadata(&kg.key_dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);

        let status = kg.daemon.stop().unwrap();
        assert_eq!(status.code(), Some(0), "SIGTERM must stop cleanly");
        assert!(!kg.socket.exists(), "the socket file is removed on stop");
    })
    .unwrap();
}

#[test]
fn check_prints_the_public_keys_to_an_allowed_uid() {
    run_local(async {
        let kg = KeyguardProcess::start(&[]).unwrap();
        let out = kg.check_command().unwrap().arg("--json").output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["exists"], false);

        let bundle = kg.client().await.unwrap().create_identity().await.unwrap();
        let out = kg.check_command().unwrap().arg("--json").output().unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["exists"], true);
        assert_eq!(v["signing_key"], bundle.signing_key.to_hex());
        assert_eq!(v["agreement_key"], bundle.agreement_key.to_hex());
        let out = kg.check_command().unwrap().output().unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(&bundle.signing_key.to_hex()), "{text}");
    })
    .unwrap();
}

#[test]
fn another_uid_is_refused_and_logged() {
    if !is_root() {
        eprintln!("skipped: running a client as uid {NOBODY} needs root");
        return;
    }
    let kg = KeyguardProcess::start(&[]).unwrap();
    let out = kg
        .check_command_as(&OtherUid::nobody())
        .unwrap()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("closed the connection"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(out.stdout.is_empty());
    // The log line is written before the connection is closed, so it is there now.
    let log = kg.daemon.log_text();
    let refusal = log
        .lines()
        .find(|l| l.contains("refused a connection"))
        .unwrap_or_else(|| panic!("no refusal in the log:\n{log}"));
    assert!(refusal.contains("WARN"), "{refusal}");
    assert!(refusal.contains(&format!("uid={NOBODY}")), "{refusal}");
    assert!(refusal.contains("pid="), "{refusal}");
    // Tagged as a security event, with the journal MESSAGE_ID operators filter on (spelled out:
    // it must never change).
    assert!(
        refusal.contains("security_event=\"keyguard-refusal\""),
        "{refusal}"
    );
    assert!(
        refusal.contains("message_id=\"f9e6df5480374246a49fe1dd7171def4\""),
        "{refusal}"
    );

    // The allowed uid is still served.
    let out = kg.check_command().unwrap().output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    kg.daemon.stop().unwrap();
}

#[test]
fn loose_permissions_stop_start_up_with_the_fix() {
    // A key directory others can read.
    let dir = temp_dir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&keys)
        .unwrap();
    std::fs::set_permissions(&keys, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = KeyguardProcess::start_in(dir, &[])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("exit status: 1"), "{err}");
    assert!(err.contains("chmod 700"), "{err}");
    assert!(err.contains("keys"), "{err}");

    // A key file others can read, whichever it is.
    for name in [
        STORAGE_DERIVED_FILE,
        STORAGE_EPOCHS_FILE,
        SIGNING_FILE,
        AGREEMENT_FILE,
    ] {
        let kg = KeyguardProcess::start(&[]).unwrap();
        run_local(async {
            kg.client().await.unwrap().create_identity().await.unwrap();
        })
        .unwrap();
        let KeyguardProcess {
            daemon,
            dir,
            key_dir,
            socket,
        } = kg;
        assert!(daemon.stop().unwrap().success());
        let file = key_dir.join(name);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = KeyguardProcess::start_in(dir, &[])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("exit status: 1"), "{name}: {err}");
        assert!(
            err.contains(&format!("run `chmod 600 {}`", file.display())),
            "{name}: {err}"
        );
        assert!(!socket.exists(), "nothing is served when start-up fails");
    }
}

#[test]
fn allowed_users_are_named_or_refused_at_start() {
    let bin = binary("smvs-keyguard").unwrap();
    let dir = temp_dir().unwrap();
    let mut args = server_args(&dir.path().join("keys"), &dir.path().join("kg.sock"));
    args.extend(["--allow-user".into(), "no-such-smvs-user".into()]);
    let out = Command::new(&bin).args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--allow-user no-such-smvs-user: no such user"),
        "{stderr}"
    );

    if !is_root() {
        eprintln!("skipped: running a client as uid {NOBODY} needs root");
        return;
    }
    // `--allow-user nobody` serves uid 65534, as the system unit's `--allow-user smvsd` does.
    let kg = KeyguardProcess::start(&["--allow-user", "nobody"]).unwrap();
    let out = kg
        .check_command_as(&OtherUid::nobody())
        .unwrap()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    kg.daemon.stop().unwrap();
}

#[test]
fn bad_sockets_and_bad_usage() {
    let bin = binary("smvs-keyguard").unwrap();
    // Usage errors exit 2.
    for args in [
        vec![],
        vec!["--key-dir", "/nonexistent", "--socket", "/nonexistent.sock"],
        vec![
            "--key-dir",
            "/x",
            "--socket",
            "/y",
            "--allow-uid",
            "not-a-uid",
        ],
        vec!["check"],
    ] {
        let out = Command::new(&bin).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }

    // Something that is not a socket in the socket's place is left alone.
    let dir = temp_dir().unwrap();
    let not_a_socket = dir.path().join("keyguard.sock");
    std::fs::write(&not_a_socket, b"precious").unwrap();
    let err = KeyguardProcess::start_in(dir, &[])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("exit status: 1"), "{err}");
    assert!(err.contains("is not a socket"), "{err}");

    // A live keyguard's socket is not taken over; a dead one's is.
    let kg = KeyguardProcess::start(&[]).unwrap();
    let second = temp_dir().unwrap();
    let out = Command::new(&bin)
        .args(server_args(&second.path().join("keys"), &kg.socket))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use"), "{stderr}");
    kg.daemon.signal(Signal::SIGKILL).unwrap();
    let KeyguardProcess {
        daemon,
        dir,
        socket,
        ..
    } = kg;
    let _ = daemon.stop();
    assert!(socket.exists(), "a killed keyguard leaves its socket");
    let kg = KeyguardProcess::start_in(dir, &[]).unwrap();
    assert_eq!(
        kg.check_command().unwrap().output().unwrap().status.code(),
        Some(0)
    );

    // A second keyguard on the same key directory is refused (it could make a second identity).
    let other_socket = temp_dir().unwrap();
    let out = Command::new(&bin)
        .args(server_args(
            &kg.key_dir,
            &other_socket.path().join("other.sock"),
        ))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("in use by another smvs-keyguard"),
        "{stderr}"
    );
    kg.daemon.stop().unwrap();
}

/// Reads until the server hangs up and returns what it said first (an abort message naming
/// the problem, for malformed input); fails if it does not hang up within 10 s.
fn assert_hung_up(mut stream: UnixStream, what: &str) -> Vec<u8> {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut said = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return said,
            Ok(n) => said.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return said,
            Err(e) => panic!("{what}: server did not hang up: {e}"),
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn garbage_and_oversized_frames_do_not_crash_it() {
    run_local(async {
        let kg = KeyguardProcess::start(&["--max-connections", "3"]).unwrap();
        let socket = kg.socket.clone();
        tokio::task::spawn_blocking(move || {
            let mut garbage = UnixStream::connect(&socket).unwrap();
            let _ = garbage.write_all(b"GET / HTTP/1.1\r\nHost: keyguard\r\n\r\n");
            assert_hung_up(garbage, "garbage");

            // One segment that claims 2^31 words (16 GiB): far past the 4 MiB reader limit.
            let mut huge = UnixStream::connect(&socket).unwrap();
            let _ = huge.write_all(&[0, 0, 0, 0, 0, 0, 0, 0x80]);
            let said = assert_hung_up(huge, "oversized segment");
            assert!(
                contains(&said, "which is too large"),
                "{}",
                String::from_utf8_lossy(&said)
            );

            // A segment table that claims 2^29 segments.
            let mut many = UnixStream::connect(&socket).unwrap();
            let _ = many.write_all(&[0xff, 0xff, 0xff, 0x1f, 1, 0, 0, 0]);
            let said = assert_hung_up(many, "oversized segment table");
            assert!(
                contains(&said, "Too many segments"),
                "{}",
                String::from_utf8_lossy(&said)
            );
        })
        .await
        .unwrap();

        // Still up, and still answering a proper client.
        let client = kg.client().await.unwrap();
        let bundle = client.create_identity().await.unwrap();
        bundle.verify().unwrap();

        // The connection budget: the client above and two silent connections fill it; a fourth
        // connection is closed at once while the others keep working.
        let socket = kg.socket.clone();
        let silent = tokio::task::spawn_blocking(move || {
            let silent: Vec<UnixStream> = (0..2)
                .map(|_| UnixStream::connect(&socket).unwrap())
                .collect();
            // The server accepts in order, so the fourth is the one over the limit.
            let said = assert_hung_up(UnixStream::connect(&socket).unwrap(), "over the limit");
            assert!(said.is_empty(), "closed without a word");
            silent
        })
        .await
        .unwrap();
        assert_eq!(client.public_keys().await.unwrap(), Some(bundle));
        assert!(kg.daemon.log_text().contains("connection limit reached"));
        drop(silent);

        let log = kg.daemon.log_text();
        assert!(!log.contains("panicked"), "{log}");
        assert_eq!(kg.daemon.stop().unwrap().code(), Some(0));
    })
    .unwrap();
}

#[test]
fn the_process_is_hardened() {
    let kg = KeyguardProcess::start(&[]).unwrap();
    let pid = kg.daemon.pid().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    let fields: Vec<&str> = core.split_whitespace().collect();
    // "Max core file size  <soft>  <hard>  bytes"
    assert_eq!(fields[4..6], ["0", "0"], "{core}");

    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let locked_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    if is_root() {
        // Root has CAP_IPC_LOCK here, so current and future memory is locked.
        assert!(locked_kb > 0, "nothing locked:\n{status}");
        assert!(!kg.daemon.log_text().contains("cannot lock memory"));
    }
    kg.daemon.stop().unwrap();
}

// ----- finding 3 of the review: whoever holds keyguard's socket (smvsd, or in per-user mode
// any process of the user) cannot take the username over. Rotation and deregistration are the
// operator's, with the key files.

fn code<T>(r: Result<T, smvs_directory::ClientError>) -> smvs_directory::ErrorCode {
    match r {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => e.code().unwrap_or_else(|| panic!("not a refusal: {e}")),
    }
}

#[test]
fn a_process_holding_the_socket_cannot_rotate_deregister_or_open_other_boxes() {
    use smvs_directory::{Deregistration, ErrorCode, Rotation};
    run_local(async {
        let dir = DirectoryProcess::start(Backend::Sqlite, &[]).await.unwrap();
        let kg = KeyguardProcess::start(&[]).unwrap();
        // What smvsd holds: a connection to the socket, as an allowed uid.
        let client = kg.client().await.unwrap();
        let alice = Username::parse("alice").unwrap();
        let bundle = client.create_identity().await.unwrap();
        let transport = AgreementKeyPair::generate().unwrap().public();
        let host = HostAddress::parse("127.0.0.1:7421").unwrap();
        let registration = client
            .sign_registration(&dir.key, &alice, &transport, &host)
            .await
            .unwrap();
        let directory = dir.client().await.unwrap();
        let registered = directory.register(&registration).await.unwrap();
        assert_eq!(registered.user.identity, bundle);

        // No signature at all: no key rotation, no deregistration, nothing else.
        sign_is_retired(&client).await;

        // The directory's challenge cannot be opened as a plain sealed box any more ...
        let sealed = directory.challenge("alice").await.unwrap();
        let mut request = client.capability().retired_open_sealed_request();
        request.get().set_sealed(&sealed);
        let err = request.send().promise.await.err().unwrap();
        assert_eq!(err.kind, capnp::ErrorKind::Unimplemented, "{err}");
        // ... nor can any other box sealed to the identity.
        let other = seal(&bundle.agreement_key, b"sealed to alice, not a token").unwrap();
        refused(
            client.open_login_token(&dir.key, &alice, &other).await,
            "is not a login token",
        );

        // Logging in still works (smvsd renews its certificate that way) ...
        let session = directory
            .login_with(&alice, |sealed| {
                let client = &client;
                let (key, alice) = (dir.key, alice.clone());
                async move { client.open_login_token(&key, &alice, &sealed).await }
            })
            .await
            .unwrap();
        // ... but the session cannot deregister or rotate: that takes the identity's signature,
        // which the socket never gives (above), and a made-up one is refused.
        let serial = registered.user.serial;
        let now = smvs_directory::clock::now_ms();
        let forged = Deregistration {
            serial,
            timestamp: now,
            signature: smvs_crypto::Signature::from_bytes(&[7; 64]).unwrap(),
        };
        assert_eq!(
            code(session.deregister(&forged).await),
            ErrorCode::BadSignature
        );
        let theirs = smvs_crypto::IdentityKeys::generate().unwrap();
        let rotation = Rotation::sign_locally(&dir.key, &alice, &theirs, &theirs, transport, now);
        assert_eq!(
            code(session.rotate_keys(&rotation).await),
            ErrorCode::BadSignature
        );
        // The record is as it was.
        let now_seen = directory.lookup(&alice).await.unwrap();
        assert_eq!(now_seen.user.identity, bundle);
        assert_eq!(now_seen.user.serial, serial);
        dir.daemon.stop().unwrap();
    })
    .unwrap();
}

#[test]
fn the_operator_rotates_and_deregisters_and_contacts_see_the_new_key() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let mut alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    alice.send("bob", "before").unwrap();
    bob.wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
    let before = alice.ctl_json(&["whoami"]).unwrap()["fingerprint"].clone();
    let (addr, key) = (dir.addr.to_string(), dir.key.to_hex());

    // With keyguard running, rotating is refused and nothing changes.
    let out = alice
        .keyguard
        .operator_command("rotate", "alice", &addr, &key)
        .unwrap()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("running smvs-keyguard"), "{stderr}");
    assert!(!alice.keyguard.key_dir.join("identity.rotating").exists());
    // A name this identity does not hold is refused too.
    let out = alice
        .keyguard
        .operator_command("deregister", "bob", &addr, &key)
        .unwrap()
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("not this key directory's"), "{stderr}");

    // Stop smvsd and keyguard, rotate, start both: the host runs on the new identity.
    let rotated = alice.rotate_at(&dir).unwrap();
    assert_ne!(rotated["signing_key"], rotated["old_signing_key"]);
    assert!(!alice.keyguard.key_dir.join("identity.rotating").exists());
    let after = alice.ctl_json(&["whoami"]).unwrap()["fingerprint"].clone();
    assert_ne!(before, after);
    let record = run_local(async {
        let client = dir.client().await.unwrap();
        client
            .lookup(&Username::parse("alice").unwrap())
            .await
            .unwrap()
    })
    .unwrap();
    assert_eq!(
        record.user.identity.signing_key.to_hex(),
        rotated["signing_key"].as_str().unwrap()
    );

    // Bob sees a changed key, by the existing rules: refused until he accepts it.
    let verify = bob.ctl_json(&["verify", "alice"]).unwrap();
    assert_eq!(verify["key_changed"], true, "{verify}");
    let out = bob.ctl(&["send", "alice", "to the new key?"]).unwrap();
    assert_eq!(out.status.code(), Some(1));
    bob.ctl_ok(&["verify", "alice", "--accept-new-key"])
        .unwrap();
    bob.send("alice", "to the new key").unwrap();
    alice
        .wait_history("bob", Duration::from_secs(30), |h| {
            h.iter().any(|m| m["body"] == "to the new key")
        })
        .unwrap();

    // Deregistering is the operator's too, with keyguard running.
    alice.deregister_at(&dir).unwrap();
    run_local(async {
        let client = dir.client().await.unwrap();
        let gone = client.lookup(&Username::parse("alice").unwrap()).await;
        assert_eq!(code(gone), smvs_directory::ErrorCode::NotFound);
    })
    .unwrap();
    let again = alice.deregister_at(&dir).unwrap_err().to_string();
    assert!(again.contains("no user named alice"), "{again}");
}

/// Root running an operator command for a key directory it does not own acts as that owner
/// (review finding: a per-user key directory sits in its owner's home, where the owner could
/// swap it for a symlink mid-command and have root write a file of theirs anywhere). Shown
/// here: a directory owned by `nobody` under a root-only parent, which root could read but
/// `nobody` cannot reach, fails with "Permission denied"; and a symlinked key directory is
/// refused outright.
#[test]
fn root_acts_as_the_key_directorys_owner_and_refuses_a_symlink() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::Builder::new()
        .prefix("smvs-kg-root-only-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let key_dir = parent.path().join("keys");
    std::fs::create_dir(&key_dir).unwrap();
    std::fs::set_permissions(&key_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
    nix::unistd::chown(&key_dir, Some(nobody.uid), Some(nobody.gid)).unwrap();
    let run = |dir: &std::path::Path| {
        Command::new(binary("smvs-keyguard").unwrap())
            .args(["deregister", "--key-dir"])
            .arg(dir)
            .args(["--username", "alice", "--directory", "127.0.0.1:9"])
            .args(["--directory-key", &"00".repeat(32)])
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let out = run(&key_dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");

    let link = parent.path().join("link");
    std::os::unix::fs::symlink(&key_dir, &link).unwrap();
    let out = run(&link);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
}

/// Session v2 through two real keyguards: each publishes an X-Wing key and a prekey its
/// identity signed, answers exactly the handshake questions (bound to the transcript, never the
/// raw secret), keeps both across a restart, and keeps a counter that only goes up.
#[test]
fn two_keyguards_serve_session_v2_handshakes_and_nothing_else() {
    use smvsd::session::fresh::OsFresh;
    use smvsd::session::handshake::{self, Initiator, Party};
    run_local(async {
        let kg_a = KeyguardProcess::start(&[]).unwrap();
        let mut kg_b = KeyguardProcess::start(&[]).unwrap();
        let (a, b) = (kg_a.client().await.unwrap(), kg_b.client().await.unwrap());
        let stranger = smvs_crypto::IdentityKeys::generate().unwrap().bundle();
        refused(
            a.session_keys(&stranger).await,
            "no identity: register first",
        );
        let (bundle_a, bundle_b) = (
            a.create_identity().await.unwrap(),
            b.create_identity().await.unwrap(),
        );
        let (keys_a, keys_b) = (
            a.session_keys(&bundle_a).await.unwrap(),
            b.session_keys(&bundle_b).await.unwrap(),
        );
        let party = |name: &str, identity, kem: &smvs_crypto::XWingPublicKey| Party {
            username: Username::parse(name).unwrap(),
            identity,
            kem: kem.clone(),
        };
        let (alice, bob) = (
            party("alice", bundle_a, &keys_a.kem),
            party("bob", bundle_b, &keys_b.kem),
        );

        // Interactive: two questions on each side.
        let initiator = Initiator::start(alice.clone(), bob.clone(), &mut OsFresh).unwrap();
        let (response, b_pending) =
            handshake::respond(&bob, &alice, initiator.message(), &mut OsFresh).unwrap();
        let a_pending = initiator.on_response(&response).unwrap();
        let answers = smvs_tests::keyguard::answer_handshake(&a, &a_pending)
            .await
            .unwrap();
        let mut sa = a_pending.finish(answers, &mut OsFresh).unwrap();
        let answers = smvs_tests::keyguard::answer_handshake(&b, &b_pending)
            .await
            .unwrap();
        let mut sb = b_pending.finish(answers, &mut OsFresh).unwrap();
        let m = sa
            .ratchet
            .seal(b"ad", b"over two keyguards", &mut OsFresh)
            .unwrap();
        assert_eq!(
            &sb.ratchet.open(b"ad", &m, &mut OsFresh).unwrap()[..],
            b"over two keyguards"
        );

        // Prekey: bob's keyguard answers five questions, two with its prekey.
        let now = smvs_directory::clock::now_ms() / 1000;
        let verified = handshake::verify_prekey(&keys_b.prekey, &bob.identity, now).unwrap();
        let (init, a_pending) =
            handshake::initiate_with_prekey(&alice, &bob, verified, &mut OsFresh).unwrap();
        let answers = smvs_tests::keyguard::answer_handshake(&a, &a_pending)
            .await
            .unwrap();
        let mut sa = a_pending.finish(answers, &mut OsFresh).unwrap();
        let first = sa.ratchet.seal(b"ad", b"while away", &mut OsFresh).unwrap();
        let b_pending = handshake::accept_prekey(&bob, &alice, &keys_b.prekey, &init).unwrap();
        let answers = smvs_tests::keyguard::answer_handshake(&b, &b_pending)
            .await
            .unwrap();
        let mut sb = b_pending.finish(answers, &mut OsFresh).unwrap();
        assert_eq!(
            &sb.ratchet.open(b"ad", &first, &mut OsFresh).unwrap()[..],
            b"while away"
        );

        // The answer is the transcript-bound value, not the raw X25519 output.
        let ephemeral = AgreementKeyPair::generate().unwrap();
        let ephemeral_public = ephemeral.public();
        let transcript = [5u8; 32];
        let question = smvs_keyguard::HandshakeQuestion {
            operation: smvs_crypto::GuardOperation::IdentityDh,
            component: smvs_crypto::HandshakeComponent::ResponderIdentityDh,
            transcript: &transcript,
            prekey: 0,
            peer: ephemeral_public.as_bytes(),
            ciphertext: &[],
        };
        let answer = b.handshake_secret(&question).await.unwrap();
        let raw = ephemeral.agree(&bundle_b.agreement_key).unwrap();
        assert_ne!(&answer[..], &raw.expose()[..]);
        assert_eq!(
            answer,
            smvs_crypto::transcript_bound(question.component.label(), &transcript, raw.expose())
                .unwrap()
        );
        // Refused: a role the operation does not serve, an ephemeral role, a prekey that was
        // never made, a short transcript.
        for (operation, component, prekey, why) in [
            (
                smvs_crypto::GuardOperation::IdentityDh,
                smvs_crypto::HandshakeComponent::ResponderIdentityKem,
                0,
                "does not serve",
            ),
            (
                smvs_crypto::GuardOperation::IdentityDh,
                smvs_crypto::HandshakeComponent::EphemeralDh,
                0,
                "does not serve",
            ),
            (
                smvs_crypto::GuardOperation::PrekeyDh,
                smvs_crypto::HandshakeComponent::EphemeralPrekeyDh,
                999,
                "no prekey 999",
            ),
        ] {
            refused(
                b.handshake_secret(&smvs_keyguard::HandshakeQuestion {
                    operation,
                    component,
                    prekey,
                    ..question
                })
                .await,
                why,
            );
        }
        refused(
            b.handshake_secret(&smvs_keyguard::HandshakeQuestion {
                transcript: &[5u8; 32],
                peer: &[1u8; 31],
                ..question
            })
            .await,
            "a peer key is 32 bytes",
        );

        // The counter only goes up, and it and the keys outlive a restart.
        assert_eq!(b.rollback_counter(false).await.unwrap(), 0);
        assert_eq!(b.rollback_counter(true).await.unwrap(), 1);
        assert_eq!(b.rollback_counter(true).await.unwrap(), 2);
        drop(b);
        kg_b.stop().unwrap();
        kg_b.start_again(&[]).unwrap();
        let b = kg_b.client().await.unwrap();
        assert_eq!(b.rollback_counter(false).await.unwrap(), 2);
        assert_eq!(b.session_keys(&bundle_b).await.unwrap(), keys_b);
        let mode = |name: &str| {
            std::fs::metadata(kg_b.key_dir.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        for file in ["identity.kem", "session.prekeys", "rollback.counter"] {
            assert_eq!(mode(file), 0o600, "{file}");
        }
    })
    .unwrap();
}
