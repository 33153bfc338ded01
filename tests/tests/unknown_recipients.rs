//! Messages to users the directory does not know: refused at once when the name was never
//! registered, and failed (with the reason) when a contact deregisters while messages to them
//! wait in the outbox. Nothing is retried for ever.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::time::Duration;

use smvs_tests::{DirectoryProcess, HostProcess};

/// Logs `host`'s user in at the directory with its keyguard and deletes the record.
fn deregister_at_directory(dir: &DirectoryProcess, host: &HostProcess) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    tokio::task::LocalSet::new().block_on(&rt, async {
        let client = dir.client().await.unwrap();
        let keyguard = host.keyguard.client().await.unwrap();
        let name = smvs_schema::Username::parse(&host.name).unwrap();
        let sealed = client.challenge(name.as_str()).await.unwrap();
        let plain = keyguard.open_sealed(&sealed).await.unwrap();
        let (_, token) = smvs_schema::canonical::parse_auth_token(&plain, &dir.key, &name).unwrap();
        let session = client.authenticate(name.as_str(), &token).await.unwrap();
        session.deregister().await.unwrap();
    });
}

#[test]
fn a_name_nobody_registered_is_refused_at_once_and_nothing_is_queued() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    alice.register().unwrap();
    let out = alice.ctl(&["send", "nosuchuser", "hello?"]).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no user nosuchuser"), "{stderr}");
    assert!(out.stdout.is_empty(), "no id is printed");
    let status = alice.ctl_json(&["status"]).unwrap();
    assert_eq!(status["queued"], 0, "{status}");
    assert!(alice.history("nosuchuser").unwrap().is_empty());
}

#[test]
fn messages_queued_for_a_contact_who_deregisters_fail_with_the_reason() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let mut bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    alice.send("bob", "before").unwrap();
    bob.wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
    // Bob's host goes away; alice keeps writing; then bob deregisters.
    bob.stop().unwrap();
    let queued: Vec<String> = (0..3)
        .map(|i| alice.send("bob", &format!("while away {i}")).unwrap())
        .collect();
    deregister_at_directory(&dir, &bob);
    // Alice's host notices on a later round (its record cache is short-lived), fails them all,
    // and stops retrying: the outbox is empty and each message says why.
    let history = alice
        .wait_history("bob", Duration::from_secs(90), |h| {
            h.iter()
                .filter(|m| queued.iter().any(|id| m["id"] == id.as_str()))
                .all(|m| m["status"] == "failed")
        })
        .unwrap();
    for m in history
        .iter()
        .filter(|m| queued.iter().any(|id| m["id"] == id.as_str()))
    {
        assert_eq!(m["reason"], "unknown-user", "{m}");
    }
    assert_eq!(
        history[0]["status"], "delivered",
        "the first one was delivered"
    );
    let status = alice.ctl_json(&["status"]).unwrap();
    assert_eq!(status["queued"], 0, "nothing is retried: {status}");
    let text = alice.ctl_ok(&["history", "bob"]).unwrap();
    assert!(
        text.contains("not delivered: the directory does not know bob"),
        "{text}"
    );
    // A new message to the contact is queued (a contact is not looked up on every send) and
    // fails on its first round, since the directory no longer knows the name.
    let late = alice.send("bob", "still there?").unwrap();
    let history = alice
        .wait_history("bob", Duration::from_secs(30), |h| {
            h.iter()
                .any(|m| m["id"] == late.as_str() && m["status"] == "failed")
        })
        .unwrap();
    let late = history.iter().find(|m| m["id"] == late.as_str()).unwrap();
    assert_eq!(late["reason"], "unknown-user", "{late}");
}
