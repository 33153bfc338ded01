//! The smvs-directory command line: key file handling, usage errors, clean stop.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use smvs_tests::daemon::binary;
use smvs_tests::directory::pubkey;
use smvs_tests::runtime::runtime_and_directory;

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
