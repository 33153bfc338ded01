//! Calls over a lossy link: alice's host and device in one network namespace, bob's in another,
//! joined by a veth pair that drops a random share of packets (iptables `statistic`) in both
//! directions. Repair (NACK and retransmission, keyframe requests) must keep the video going.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use smvs_tests::child::json_stdout;
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

/// What one side of a call received of the other's media.
#[derive(Debug)]
struct Leg {
    frames_decoded: u64,
    frames_sent: u64,
    longest_freeze_ms: f64,
    audio_kept: u64,
    audio_sent: u64,
    audio_lost: u64,
    /// Lost audio packets in-band FEC rebuilt.
    audio_recovered: u64,
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
            audio_recovered: receiver["stats"]["audio_packets_recovered"]
                .as_u64()
                .unwrap(),
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
    let (caller, callee) = call_stats(sites, alice, bob, secs, meanwhile);
    [Leg::from(&caller, &callee), Leg::from(&callee, &caller)]
}

/// As [`call`], the whole `--stats` output of (alice, bob).
fn call_stats(
    sites: &TwoSites,
    alice: &HostProcess,
    bob: &HostProcess,
    secs: u32,
    meanwhile: impl FnOnce(),
) -> (Value, Value) {
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
    let caller = json_stdout(&caller.wait_with_output().unwrap(), "alice").unwrap();
    let callee = json_stdout(&callee.wait_with_output().unwrap(), "bob").unwrap();
    for (who, v) in [("alice", &caller), ("bob", &callee)] {
        eprintln!(
            "{who}: repair {} freezes {}",
            v["stats"]["repair"], v["stats"]["freezes"],
        );
    }
    (caller, callee)
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
            // rebuilt; the rest is concealed. FEC is off until the first loss report (a second
            // or two in, later on a busy machine), and rebuilds a packet only when the next one
            // arrives: at 10% loss that leaves 3-6% unrepaired, so 92% there, 95% below.
            let audio_floor = if loss >= 0.10 { 0.92 } else { 0.95 };
            assert!(
                leg.audio_share() >= audio_floor,
                "{:.0}% loss, {way}: {} of {} audio packets kept",
                loss * 100.0,
                leg.audio_kept,
                leg.audio_sent
            );
            if loss >= 0.10 {
                // The figures above come from repair, not from a link that lost little.
                assert!(
                    leg.retransmissions_recovered > 0
                        && leg.audio_lost > 0
                        && leg.audio_recovered > 0,
                    "{way}: nothing was lost, resent or rebuilt at {:.0}% loss: {leg:?}",
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

#[test]
fn the_video_fits_a_500_kbit_link_and_comes_back_up_when_it_is_lifted() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let sites = TwoSites::new().unwrap();
    let (_dir, alice, bob) = alice_and_bob(&sites);
    const CAP_KBIT: u32 = 500;
    let spawned = std::time::Instant::now();
    let mut capped_at = Duration::ZERO;
    let mut lifted_at = Duration::ZERO;
    let (caller, callee) = call_stats(&sites, &alice, &bob, 30, || {
        std::thread::sleep(Duration::from_secs(3));
        sites.cap_a_to_b(Some(CAP_KBIT)).unwrap();
        capped_at = spawned.elapsed();
        std::thread::sleep(Duration::from_secs(10));
        sites.cap_a_to_b(None).unwrap();
        lifted_at = spawned.elapsed();
    });
    let leg = Leg::from(&caller, &callee);
    let changes: Vec<(f64, u64)> = caller["stats"]["repair"]["video_target_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["at_s"].as_f64().unwrap(), c["kbps"].as_u64().unwrap()))
        .collect();
    eprintln!("cap at {capped_at:?}, lifted at {lifted_at:?}: {changes:?}\n{leg:?}\nalice sent {} kbit/s, bob video {}", caller["stats"]["bitrate_sent_kbps"], callee["stats"]["video"]);
    eprintln!(
        "alice's path {} (consent lost {}), bob's freezes {}",
        caller["stats"]["path_changes"],
        caller["stats"]["consent_lost"],
        callee["stats"]["freezes"]
    );
    // Times in the statistics count from the start of alice's media, a little after the spawn
    // the cap times count from: a change at_s into the call happened at most at_s after it.
    let fits = u64::from(CAP_KBIT) - 100; // room for audio, RTCP and packet overhead
    let fitted = changes
        .iter()
        .find(|(at, kbps)| *at >= capped_at.as_secs_f64() - 1.0 && *kbps <= fits)
        .unwrap_or_else(|| panic!("the target never went under {fits} kbit/s: {changes:?}"));
    assert!(
        fitted.0 <= capped_at.as_secs_f64() + 5.0,
        "the video took {:.1} s to fit the link",
        fitted.0 - capped_at.as_secs_f64()
    );
    let top_after = changes
        .iter()
        .filter(|(at, _)| *at >= lifted_at.as_secs_f64() - 1.0)
        .map(|(_, kbps)| *kbps)
        .max()
        .unwrap_or(0);
    assert!(
        top_after >= 900,
        "the bitrate did not come back up after the cap was lifted: {changes:?}"
    );
    // Measured 86–94% on this 2-core machine, lower when it is busy (the encoder and both
    // hosts share the cores): the bar is for "the video kept going through the cap", not a
    // speed figure. What would raise it is a pacer and delay-based detection (see issue 12).
    assert!(
        leg.video_share() >= 0.80,
        "{} of {} frames decoded through the capped link",
        leg.frames_decoded,
        leg.frames_sent
    );
}
