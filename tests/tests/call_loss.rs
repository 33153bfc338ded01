//! Calls over a lossy link: alice's host and device in one network namespace, bob's in another,
//! joined by a veth pair that drops a random share of packets (iptables `statistic`) in both
//! directions. Repair (NACK and retransmission, keyframe requests) must keep the video going.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use smvs_tests::netns::{Site, TwoSites};
use smvs_tests::{DirectoryProcess, HostProcess};

const TEST_MEDIA: [&str; 6] = ["--video", "test", "--audio", "test", "--sink", "null"];

/// `smvsctl` of `host`, run inside `site`'s namespace (where the device's media socket lives).
fn device(site: &Site, host: &HostProcess, args: &[&str]) -> Command {
    let ctl = host.ctl_command(args).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(site.exec_prefix())
        .arg(ctl.get_program())
        .args(ctl.get_args())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn json(out: &Output, who: &str) -> Value {
    assert!(
        out.status.success(),
        "{who}: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What one side of a call received of the other's media.
#[derive(Debug)]
struct Leg {
    frames_decoded: u64,
    frames_sent: u64,
    longest_freeze_ms: f64,
    audio_kept: u64,
    audio_sent: u64,
    audio_lost: u64,
    /// Lost video packets the receiver got back by asking for them.
    retransmissions_recovered: u64,
    /// Keyframe requests the sender got from the receiver.
    keyframe_requests_received: u64,
}

impl Leg {
    fn from(sender: &Value, receiver: &Value) -> Leg {
        Leg {
            frames_decoded: receiver["stats"]["video_frames_decoded"].as_u64().unwrap(),
            frames_sent: sender["stats"]["video_frames_sent"].as_u64().unwrap(),
            longest_freeze_ms: receiver["stats"]["freezes"]["longest_ms"].as_f64().unwrap(),
            audio_kept: receiver["stats"]["audio_packets_received"]
                .as_u64()
                .unwrap()
                + receiver["stats"]["audio_packets_recovered"]
                    .as_u64()
                    .unwrap(),
            audio_sent: sender["stats"]["audio_packets_sent"].as_u64().unwrap(),
            audio_lost: receiver["stats"]["audio_packets_lost"].as_u64().unwrap(),
            retransmissions_recovered: receiver["stats"]["repair"]["retransmissions_recovered"]
                .as_u64()
                .unwrap(),
            keyframe_requests_received: sender["stats"]["repair"]["keyframe_requests_received"]
                .as_u64()
                .unwrap(),
        }
    }

    fn video_share(&self) -> f64 {
        self.frames_decoded as f64 / self.frames_sent.max(1) as f64
    }

    fn audio_share(&self) -> f64 {
        self.audio_kept as f64 / self.audio_sent.max(1) as f64
    }
}

/// One call of `secs` seconds with test sources: (alice→bob, bob→alice). `meanwhile` runs
/// once both sides are started.
fn call(
    sites: &TwoSites,
    alice: &HostProcess,
    bob: &HostProcess,
    secs: u32,
    meanwhile: impl FnOnce(),
) -> [Leg; 2] {
    // Both sides stop sending after `secs` of their own: a hang-up crossing the lossy link may
    // take a while, and what one side sends after the other stopped is not a lost frame.
    let secs = secs.to_string();
    let mut answer = vec!["answer", "--wait", "30", "--duration", &secs, "--stats"];
    answer.extend(TEST_MEDIA);
    let callee = device(&sites.b, bob, &answer).spawn().unwrap();
    let mut place = vec!["call", "bob", "--duration", &secs, "--stats"];
    place.extend(TEST_MEDIA);
    let caller = device(&sites.a, alice, &place).spawn().unwrap();
    meanwhile();
    let caller = json(&caller.wait_with_output().unwrap(), "alice");
    let callee = json(&callee.wait_with_output().unwrap(), "bob");
    for (who, v) in [("alice", &caller), ("bob", &callee)] {
        eprintln!(
            "{who}: repair {} freezes {}",
            v["stats"]["repair"], v["stats"]["freezes"],
        );
    }
    [Leg::from(&caller, &callee), Leg::from(&callee, &caller)]
}

/// The thresholds: the share of frames decoded at each random loss rate.
const VIDEO_KEPT: [(f64, f64); 3] = [(0.01, 0.95), (0.03, 0.90), (0.10, 0.70)];

/// The tests here run one at a time: two calls at once on a small machine would measure the
/// CPU, not the repair.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// alice and bob, each with a host on their own site, who have written to each other.
fn alice_and_bob(sites: &TwoSites) -> (DirectoryProcess, HostProcess, HostProcess) {
    let dir = DirectoryProcess::start_in(&sites.a, &[]).unwrap();
    let alice = HostProcess::start_in(&sites.a, "alice", &dir, &[]).unwrap();
    let bob = HostProcess::start_in(&sites.b, "bob", &dir, &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();
    alice.send("bob", "hello").unwrap();
    bob.wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
    (dir, alice, bob)
}

#[test]
fn video_comes_back_within_a_second_of_a_two_second_outage() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sites = TwoSites::new().unwrap();
    let (_dir, alice, bob) = alice_and_bob(&sites);
    const OUTAGE: Duration = Duration::from_secs(2);
    let legs = call(&sites, &alice, &bob, 10, || {
        // Mid-call: the ring and answer take well under a second on this link.
        std::thread::sleep(Duration::from_secs(4));
        sites.black_hole(true).unwrap();
        std::thread::sleep(OUTAGE);
        sites.black_hole(false).unwrap();
    });
    for (leg, way) in legs.iter().zip(["alice→bob", "bob→alice"]) {
        eprintln!("outage: {way} {leg:?}");
        // The outage is the longest freeze: from the last frame before it to the first after
        // it, i.e. the outage itself plus the time to recover.
        assert!(
            leg.longest_freeze_ms >= OUTAGE.as_millis() as f64 - 100.0,
            "{way}: the outage did not show as a freeze ({leg:?})"
        );
        // Not the periodic keyframe (every 2 s) by luck: the receiver asked for one.
        assert!(
            leg.keyframe_requests_received > 0,
            "{way}: no keyframe request reached the sender"
        );
        assert!(
            leg.longest_freeze_ms < (OUTAGE.as_millis() + 1000) as f64,
            "{way}: video came back {:.0} ms after the link did",
            leg.longest_freeze_ms - OUTAGE.as_millis() as f64
        );
    }
}

#[test]
fn calls_survive_random_loss() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sites = TwoSites::new().unwrap();
    let (_dir, alice, bob) = alice_and_bob(&sites);
    for (loss, kept) in VIDEO_KEPT {
        sites.lossy(loss, true).unwrap();
        let legs = call(&sites, &alice, &bob, 8, || {});
        sites.lossy(loss, false).unwrap();
        for (leg, way) in legs.iter().zip(["alice→bob", "bob→alice"]) {
            eprintln!("loss {loss}: {way} {leg:?}");
            assert!(
                leg.video_share() >= kept,
                "{:.0}% loss, {way}: {} of {} frames decoded, under {:.0}%",
                loss * 100.0,
                leg.frames_decoded,
                leg.frames_sent,
                kept * 100.0
            );
            // Audio: what arrived (retransmissions are for video only) and what in-band FEC
            // rebuilt; the rest is concealed.
            assert!(
                leg.audio_share() >= 0.95,
                "{:.0}% loss, {way}: {} of {} audio packets kept",
                loss * 100.0,
                leg.audio_kept,
                leg.audio_sent
            );
            if loss >= 0.10 {
                // The figures above come from repair, not from a link that lost little.
                assert!(
                    leg.retransmissions_recovered > 0 && leg.audio_lost > 0,
                    "{way}: nothing was lost or resent at {:.0}% loss: {leg:?}",
                    loss * 100.0
                );
            }
            if loss <= 0.03 {
                assert!(
                    leg.longest_freeze_ms < 1000.0,
                    "{:.0}% loss, {way}: a {:.0} ms freeze",
                    loss * 100.0,
                    leg.longest_freeze_ms
                );
            }
        }
    }
}
