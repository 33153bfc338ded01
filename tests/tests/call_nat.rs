//! Calls between two linked devices, each in its own home behind a NAT router, with both users'
//! hosts and the directory "on the internet" between them (`netns::NatSites`):
//!
//! - through NATs that keep a device's port whatever the destination, the devices reach each
//!   other straight, through the reflexive addresses their hosts told them by STUN;
//! - through NATs that map each destination to a new port, that cannot work, and the call goes
//!   through the two hosts' relays; a capture on each device's link shows its media going to
//!   its own host only;
//! - with `--relay`, the call goes through the relays even though a straight path exists, and
//!   each device's link carries nothing but traffic with its own host.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::Value;
use smvs_tests::child::json_stdout;
use smvs_tests::device::DeviceProcess;
use smvs_tests::netns::{Capture, Mapping, NatSites, Packet, Site};
use smvs_tests::{DirectoryProcess, HostProcess};

const TEST_MEDIA: [&str; 6] = ["--video", "test", "--audio", "test", "--sink", "null"];
/// Seconds each side runs its media.
const CALL_SECS: &str = "6";
/// Seconds of the call in which the straight path dies.
const FAILOVER_CALL_SECS: &str = "10";

/// Calls here run one at a time: two at once on a small machine measure the CPU.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct World {
    sites: NatSites,
    _dir: DirectoryProcess,
    _alice: HostProcess,
    _bob: HostProcess,
    laptop: DeviceProcess,
    desktop: DeviceProcess,
}

/// A device of `host`'s user in `home`, paired over the device port (through the NAT).
fn paired(host: &HostProcess, home: &Site, name: &str) -> DeviceProcess {
    let link = host.ctl_json(&["devices", "link", "--name", name]).unwrap();
    let code = link["code"].as_str().unwrap();
    let address = link["device_address"].as_str().unwrap();
    let device = DeviceProcess::new_in(home, name, address).unwrap();
    let out = device.pair(code).unwrap();
    assert!(out.status.success(), "{name} did not pair: {out:?}");
    device
}

fn world(mapping: Mapping) -> World {
    let sites = NatSites::new(mapping).unwrap();
    let dir = DirectoryProcess::start_in(&sites.host_a, &[]).unwrap();
    let alice = HostProcess::start_in(&sites.host_a, "alice", &dir, &[]).unwrap();
    let bob = HostProcess::start_in(&sites.host_b, "bob", &dir, &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    alice.send("bob", "hello").unwrap();
    bob.wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
    let laptop = paired(&alice, &sites.home_a, "laptop");
    let desktop = paired(&bob, &sites.home_b, "desktop");
    World {
        sites,
        _dir: dir,
        _alice: alice,
        _bob: bob,
        laptop,
        desktop,
    }
}

/// alice's laptop calls bob's desktop (with `caller_flags`), while both links are captured:
/// (alice's report, bob's report, alice's packets, bob's packets).
fn call(w: &World, caller_flags: &[&str]) -> (Value, Value, Vec<Packet>, Vec<Packet>) {
    call_and(w, caller_flags, || {})
}

/// As [`call`]; `meanwhile` runs once both sides are started.
fn call_and(
    w: &World,
    caller_flags: &[&str],
    meanwhile: impl FnOnce(),
) -> (Value, Value, Vec<Packet>, Vec<Packet>) {
    let capture_a = Capture::start(&w.sites.home_a).unwrap();
    let capture_b = Capture::start(&w.sites.home_b).unwrap();
    let mut answer = vec!["answer", "--wait", "30", "--duration", CALL_SECS, "--stats"];
    answer.extend(TEST_MEDIA);
    let callee = w.desktop.spawn(&answer).unwrap();
    let mut place = vec!["call", "bob", "--duration", CALL_SECS, "--stats"];
    place.extend(TEST_MEDIA);
    place.extend(caller_flags);
    let caller = w.laptop.spawn(&place).unwrap();
    meanwhile();
    let caller = json_stdout(&caller.wait_with_output().unwrap(), "alice").unwrap();
    let callee = json_stdout(&callee.wait_with_output().unwrap(), "bob").unwrap();
    let (a, b) = (capture_a.stop().unwrap(), capture_b.stop().unwrap());
    for (who, v) in [("alice", &caller), ("bob", &callee)] {
        eprintln!(
            "{who}: path {} changes {} relay bound {} reflexive {} frames decoded {}",
            v["stats"]["path"],
            v["stats"]["path_changes"],
            v["stats"]["relay_bound"],
            v["reflexive_address"],
            v["stats"]["video_frames_decoded"]
        );
    }
    (caller, callee, a, b)
}

/// The share of the other side's frames decoded.
fn decoded_share(receiver: &Value, sender: &Value) -> f64 {
    receiver["stats"]["video_frames_decoded"].as_f64().unwrap()
        / sender["stats"]["video_frames_sent"]
            .as_f64()
            .unwrap()
            .max(1.0)
}

/// The addresses a device's link carried UDP datagrams bigger than `min` bytes to or from,
/// besides the device itself.
fn udp_peers(packets: &[Packet], device: Ipv4Addr, min: usize) -> Vec<Ipv4Addr> {
    let mut peers: Vec<Ipv4Addr> = packets
        .iter()
        .filter(|p| p.udp && p.len > min)
        .map(|p| if p.from == device { p.to } else { p.from })
        .collect();
    peers.sort();
    peers.dedup();
    peers
}

/// The share of a device's media bytes (UDP datagrams over 300 bytes) exchanged with `with`.
fn media_share(packets: &[Packet], device: Ipv4Addr, with: Ipv4Addr) -> f64 {
    let media = packets.iter().filter(|p| p.udp && p.len > 300);
    let (mut all, mut ours) = (0usize, 0usize);
    for p in media {
        all += p.len;
        if (p.from == device && p.to == with) || (p.to == device && p.from == with) {
            ours += p.len;
        }
    }
    ours as f64 / all.max(1) as f64
}

fn ip(site: &Site) -> Ipv4Addr {
    site.ip.parse().unwrap()
}

#[test]
fn behind_nats_that_keep_ports_the_call_goes_straight_through_the_reflexive_addresses() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let w = world(Mapping::EndpointIndependent);
    let (alice, bob, a_packets, b_packets) = call(&w, &[]);
    for (who, report) in [("alice", &alice), ("bob", &bob)] {
        assert_eq!(report["stats"]["path"], "reflexive", "{who}: {report}");
        // The host's STUN answer: the NAT's WAN address, not the device's own.
        let reflexive = report["reflexive_address"].as_str().unwrap_or_default();
        assert!(reflexive.starts_with("10.77."), "{who}: {reflexive}");
        assert_eq!(
            report["stats"]["relay_bound"], true,
            "{who}: a relay stood by"
        );
    }
    assert!(decoded_share(&bob, &alice) >= 0.9, "alice→bob");
    assert!(decoded_share(&alice, &bob) >= 0.9, "bob→alice");
    // The media went straight to the other NAT's WAN address, not through the hosts (whose
    // relay may carry the first tenths of a second, until the straight path is confirmed).
    let (nat_a, nat_b): (Ipv4Addr, Ipv4Addr) =
        ("10.77.1.2".parse().unwrap(), "10.77.2.2".parse().unwrap());
    for (packets, device, other_nat) in [
        (&a_packets, ip(&w.sites.home_a), nat_b),
        (&b_packets, ip(&w.sites.home_b), nat_a),
    ] {
        let share = media_share(packets, device, other_nat);
        assert!(
            share >= 0.95,
            "{device}: {share:.3} of the media with {other_nat}"
        );
    }
}

#[test]
fn behind_nats_that_map_each_destination_anew_the_call_goes_through_both_hosts() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let w = world(Mapping::EndpointDependent);
    let (alice, bob, a_packets, b_packets) = call(&w, &[]);
    for (who, report) in [("alice", &alice), ("bob", &bob)] {
        assert_eq!(report["stats"]["path"], "relayed", "{who}: {report}");
        assert_eq!(report["stats"]["relay_bound"], true, "{who}");
    }
    assert!(decoded_share(&bob, &alice) >= 0.9, "alice→bob");
    assert!(decoded_share(&alice, &bob) >= 0.9, "bob→alice");
    // Each device's media went to and came from its own host only. (Its checks of the other
    // side's addresses, small hellos that found no way through, went out too before the relay
    // was chosen.)
    assert_eq!(
        udp_peers(&a_packets, ip(&w.sites.home_a), 300),
        vec![ip(&w.sites.host_a)]
    );
    assert_eq!(
        udp_peers(&b_packets, ip(&w.sites.home_b), 300),
        vec![ip(&w.sites.host_b)]
    );
}

#[test]
fn relay_hides_each_devices_address_even_when_a_straight_path_exists() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let w = world(Mapping::EndpointIndependent);
    let (alice, bob, a_packets, b_packets) = call(&w, &["--relay"]);
    for (who, report) in [("alice", &alice), ("bob", &bob)] {
        assert_eq!(report["stats"]["path"], "relayed", "{who}: {report}");
        // Neither was told where the other is.
        assert_eq!(report["peer_media_address"], Value::Null, "{who}");
    }
    assert!(decoded_share(&bob, &alice) >= 0.9, "alice→bob");
    assert!(decoded_share(&alice, &bob) >= 0.9, "bob→alice");
    // Every packet on each device's link, of any size and protocol, was with its own host.
    for (packets, home, host) in [
        (&a_packets, &w.sites.home_a, &w.sites.host_a),
        (&b_packets, &w.sites.home_b, &w.sites.host_b),
    ] {
        assert!(packets.len() > 200, "the capture saw the call");
        let others: Vec<&Packet> = packets
            .iter()
            .filter(|p| {
                let other = if p.from == ip(home) { p.to } else { p.from };
                other != ip(host)
            })
            .collect();
        assert!(others.is_empty(), "{} saw {others:?}", home.netns);
    }
    // And neither report names the other home's addresses or its NAT's.
    let (a_text, b_text) = (alice.to_string(), bob.to_string());
    for hidden in ["192.168.2.", "10.77.2."] {
        assert!(!a_text.contains(hidden), "alice's report names {hidden}");
    }
    for hidden in ["192.168.1.", "10.77.1."] {
        assert!(!b_text.contains(hidden), "bob's report names {hidden}");
    }
}

#[test]
fn when_the_straight_path_dies_mid_call_the_relay_takes_over() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let w = world(Mapping::EndpointIndependent);
    let mut answer = vec![
        "answer",
        "--wait",
        "30",
        "--duration",
        FAILOVER_CALL_SECS,
        "--stats",
    ];
    answer.extend(TEST_MEDIA);
    let callee = w.desktop.spawn(&answer).unwrap();
    let mut place = vec!["call", "bob", "--duration", FAILOVER_CALL_SECS, "--stats"];
    place.extend(TEST_MEDIA);
    let caller = w.laptop.spawn(&place).unwrap();
    // Well into the call, the two homes can no longer reach each other; the hosts still can.
    std::thread::sleep(Duration::from_secs(4));
    w.sites.cut_between_homes(true).unwrap();
    let alice = json_stdout(&caller.wait_with_output().unwrap(), "alice").unwrap();
    let bob = json_stdout(&callee.wait_with_output().unwrap(), "bob").unwrap();
    for (who, report) in [("alice", &alice), ("bob", &bob)] {
        eprintln!(
            "{who}: {} frames decoded {}",
            report["stats"]["path_changes"], report["stats"]["video_frames_decoded"]
        );
        let changes = report["stats"]["path_changes"].as_array().unwrap();
        let kinds: Vec<&str> = changes.iter().filter_map(|c| c["path"].as_str()).collect();
        assert_eq!(kinds.first(), Some(&"reflexive"), "{who}: {changes:?}");
        assert_eq!(kinds.last(), Some(&"relayed"), "{who}: {changes:?}");
        assert_eq!(
            report["stats"]["consent_lost"], 0,
            "{who}: media was never held"
        );
    }
    // Three missed checks in a row (about 3 s) cost some video, no more: most frames of the
    // 10-s call were decoded.
    assert!(decoded_share(&bob, &alice) >= 0.6, "alice→bob");
    assert!(decoded_share(&alice, &bob) >= 0.6, "bob→alice");
}
