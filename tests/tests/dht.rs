//! No directory at all: hosts form a DHT of their own (BitTorrent's Mainline DHT, BEP 44
//! signed records), publish the record their identity signs there, and find each other by
//! identity address (`smvs:…`). Twenty real hosts on 127.0.78.x, each a keyguard and an
//! smvsd started with `--dht` and no directory flag; then 30% of them killed; then a hostile
//! node that answers every look-up of bob with a forged record; last, an introduction of a
//! DHT user, which carries the record her identity signed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use smvs_tests::dht_forger::DhtForger;
use smvs_tests::watch::LIMIT;
use smvs_tests::HostProcess;

/// How many hosts form the DHT.
const HOSTS: usize = 20;
/// How many of them are killed (30%).
const KILLED: usize = 6;

fn ip(i: usize) -> String {
    format!("127.0.78.{}", 10 + i)
}

/// `register --dht`: the identity address the host's user is known by.
fn register_in_dht(host: &HostProcess) -> String {
    let status = host.ctl_json(&["register", "--dht"]).unwrap();
    let name = status["username"].as_str().unwrap().to_owned();
    assert!(name.starts_with("smvs:") && name.len() == 61, "{status}");
    name
}

/// Waits until `host` holds a message from `peer` with `text`.
fn wait_message(host: &HostProcess, peer: &str, text: &str) {
    host.wait_history(peer, LIMIT * 2, |h| {
        h.iter().any(|m| m["body"].as_str() == Some(text))
    })
    .unwrap();
}

#[test]
fn twenty_hosts_find_each_other_by_identity_address_with_no_directory_and_refuse_a_forgery() {
    // The first host is the DHT's first node; every other joins through it and the second.
    let mut hosts: Vec<HostProcess> = Vec::new();
    for i in 0..HOSTS {
        let bootstrap: Vec<SocketAddr> = hosts
            .iter()
            .take(2)
            .map(|h| {
                h.dht_node
                    .expect("a host in the DHT says where its node is")
            })
            .collect();
        // alice (host 1) republishes every 3 s: each time she first looks for a record of
        // herself that she did not make, and must find none.
        let extra: &[&str] = if i == 1 {
            &["--dht-republish-seconds", "3"]
        } else {
            &[]
        };
        hosts.push(
            HostProcess::start_in_dht(&format!("node{i}"), &ip(i), &bootstrap, extra).unwrap(),
        );
    }
    let (alice, bob, carol) = (&hosts[1], &hosts[2], &hosts[3]);
    let alice_address = register_in_dht(alice);
    let bob_address = register_in_dht(bob);
    let carol_address = register_in_dht(carol);

    // whoami shows the address and, asked, a QR code of it.
    let whoami = bob.ctl_ok(&["whoami", "--qr"]).unwrap();
    assert!(whoami.starts_with(&bob_address), "{whoami}");
    assert!(whoami.contains('█'), "a QR code follows: {whoami}");
    let json = bob.ctl_json(&["whoami"]).unwrap();
    assert_eq!(json["identity_address"], true, "{json}");

    // alice finds bob by his address alone; bob's host finds alice's the same way to check
    // the sender, and answers.
    alice
        .send(&bob_address, "hello bob, found you in the DHT")
        .unwrap();
    wait_message(bob, &alice_address, "hello bob, found you in the DHT");
    bob.send(&alice_address, "hello alice").unwrap();
    wait_message(alice, &bob_address, "hello alice");
    for host in [alice, bob] {
        assert!(
            !host.logs().contains("directory"),
            "no directory is asked by {}:\n{}",
            host.name,
            host.logs()
        );
    }

    // 30% of the nodes die, among them the first, which everyone joined through. carol, who
    // never looked bob up, still finds him, and bob finds her.
    let victims: Vec<usize> = std::iter::once(0).chain(5..5 + KILLED - 1).collect();
    assert_eq!(victims.len(), KILLED);
    for &i in &victims {
        hosts[i].kill().unwrap();
    }
    let (alice, bob, carol) = (&hosts[1], &hosts[2], &hosts[3]);
    carol
        .send(&bob_address, "hello bob, after the churn")
        .unwrap();
    wait_message(bob, &carol_address, "hello bob, after the churn");
    bob.send(&carol_address, "hello carol").unwrap();
    wait_message(carol, &bob_address, "hello carol");

    // A hostile node answers every look-up of bob with his record pointing elsewhere (an
    // address of the same length, where the test listens), a higher sequence number and a
    // signature bob's identity never made. dave joins the DHT through it alone.
    let bob_key = smvs_crypto::parse_identity_address(&bob_address).unwrap();
    let real = bob.listen.to_string();
    let forged = real.replacen("127.0.78.12", "127.0.78.99", 1);
    assert_ne!(real, forged);
    let trap = TcpListener::bind(&forged).unwrap();
    trap.set_nonblocking(true).unwrap();
    let live: Vec<SocketAddr> = hosts
        .iter()
        .filter(|h| h.is_running())
        .map(|h| h.dht_node.unwrap())
        .collect();
    let forger =
        DhtForger::start("127.0.78.98", &live, bob_key.as_bytes(), &real, &forged).unwrap();
    let dave_bootstrap = [SocketAddr::V4(forger.addr)];
    let mut dave = HostProcess::start_in_dht("dave", "127.0.78.40", &dave_bootstrap, &[]).unwrap();
    let dave_address = register_in_dht(&dave);
    dave.send(&bob_address, "hello bob, from dave").unwrap();
    wait_message(bob, &dave_address, "hello bob, from dave");
    assert!(
        forger.forged_answers() > 0,
        "the hostile node was asked for bob's record (else this proves nothing)"
    );
    assert!(
        trap.accept().is_err(),
        "nobody connected to the forged address"
    );
    // And the real record still stands for everyone: alice writes to bob again.
    alice.send(&bob_address, "still you?").unwrap();
    wait_message(bob, &alice_address, "still you?");
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        trap.accept().is_err(),
        "nobody connected to the forged address"
    );

    // bob introduces carol to dave (who wrote to bob, so bob is his contact): the record bob
    // hands on is the one carol's identity signed for the DHT, and dave's host pins her from
    // it, checked against the key her address names.
    bob.ctl_ok(&["introduce", &carol_address, &dave_address])
        .unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    let pinned = loop {
        let contacts = dave.ctl_json(&["contacts"]).unwrap();
        if let Some(c) = contacts
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["username"] == carol_address.as_str())
        {
            break c.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dave never pinned carol: {contacts}\n{}",
            dave.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(pinned["introduced_by"], bob_address.as_str(), "{pinned}");

    // dave gives bob's address a petname and writes to "bobby": bob gets it from dave's
    // address, and dave's contacts show the name beside it.
    dave.ctl_ok(&["petname", "add", "bobby", &bob_address])
        .unwrap();
    dave.send("bobby", "hello bob, by your petname").unwrap();
    wait_message(bob, &dave_address, "hello bob, by your petname");
    let history = dave.history("bobby").unwrap();
    assert!(
        history.iter().all(|m| m["to"] == bob_address.as_str())
            && history
                .iter()
                .any(|m| m["body"] == "hello bob, by your petname"),
        "`history bobby` is the conversation with bob's address: {history:?}"
    );
    let contacts = dave.ctl_json(&["contacts"]).unwrap();
    let named = contacts
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["username"] == bob_address.as_str())
        .unwrap();
    assert_eq!(named["petname"], "bobby", "{contacts}");
    // Bad petnames are refused, each with a reason, and change nothing.
    let refusals: [(&[&str], &str); 5] = [
        (
            &["petname", "add", "bobby", &carol_address],
            "already the petname of",
        ),
        (
            &["petname", "add", &carol_address, &bob_address],
            "not an address",
        ),
        (
            &["petname", "add", "carol", "bob"],
            "not an identity address",
        ),
        (&["petname", "add", "x", &carol_address], "3 to 32"),
        (&["petname", "remove", "nobody"], "not a petname"),
    ];
    for (args, why) in refusals {
        let out = dave.ctl(args).unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(why),
            "{args:?} is refused ({why}): {stderr}"
        );
    }
    // One petname per address: naming bob again replaces "bobby".
    dave.ctl_ok(&["petname", "add", "bob", &bob_address])
        .unwrap();
    // The petnames outlive a restart.
    dave.stop().unwrap();
    dave.start_again().unwrap();
    let petnames = dave.ctl_json(&["petname", "list"]).unwrap();
    assert_eq!(
        petnames,
        serde_json::json!([{"name": "bob", "address": bob_address}]),
        "{petnames}"
    );
    assert!(dave
        .history("bob")
        .unwrap()
        .iter()
        .any(|m| m["body"] == "hello bob, by your petname"));
    dave.ctl_ok(&["petname", "remove", "bob"]).unwrap();
    assert_eq!(
        dave.ctl_json(&["petname", "list"]).unwrap(),
        serde_json::json!([])
    );

    // alice republished all along, looking for records of herself first: her own are not
    // taken for someone else's.
    let logs = alice.logs();
    assert!(
        logs.matches("put this host's record in the DHT").count() >= 2,
        "alice republished: {logs}"
    );
    assert!(!logs.contains("did not make"), "{logs}");
}
