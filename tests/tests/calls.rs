#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

//! Calls end to end: real smvs-directory, smvs-keyguard and smvsd processes on 127.0.0.x, and
//! `smvsctl call` / `smvsctl answer` as the two devices, running real GStreamer pipelines with
//! test sources (VP8 + Opus over rtpbin, sealed per packet, UDP between the two smvsctl
//! processes). The wire is captured with an AF_PACKET socket on the loopback interface.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use smvs_tests::agent::AgentProcess;
use smvs_tests::child::{finish, json_stdout};
use smvs_tests::dbus::{ensure_daemon_user, host_on_bus, Shown, TestBus, ROOT_OWNS};
use smvs_tests::device::DeviceProcess;
use smvs_tests::runtime::runtime_and_directory;
use smvs_tests::watch::Watch;
use smvs_tests::{DirectoryProcess, HostProcess};

const LIMIT: Duration = Duration::from_secs(30);
/// Media flags for a device with test sources and no window.
const TEST_MEDIA: [&str; 6] = ["--video", "test", "--audio", "test", "--sink", "null"];

/// Registered hosts, one per (name, ip), that have exchanged a message with the first one (so
/// each knows the other).
fn hosts(dir: &DirectoryProcess, who: &[(&str, &str, &[&str])]) -> Vec<HostProcess> {
    let hosts: Vec<HostProcess> = who
        .iter()
        .map(|(name, ip, flags)| {
            let h = HostProcess::start(name, dir, ip, flags).unwrap();
            h.register().unwrap();
            h
        })
        .collect();
    for other in &hosts[1..] {
        hosts[0].send(&other.name, "hello").unwrap();
        other
            .wait_history(&hosts[0].name, LIMIT, |h| h.len() == 1)
            .unwrap();
    }
    hosts
}

fn spawn(host: &HostProcess, args: &[&str]) -> Child {
    host.ctl_spawn(args).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Waits until `host`'s `calls` has a call in `state`; returns it.
fn wait_call(host: &HostProcess, state: &str) -> Value {
    let deadline = Instant::now() + LIMIT;
    loop {
        let calls = host.ctl_json(&["calls"]).unwrap();
        if let Some(c) = calls
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["state"] == state)
        {
            return c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{}: no {state} call: {calls}",
            host.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn no_calls(host: &HostProcess) -> bool {
    host.ctl_json(&["calls"])
        .unwrap()
        .as_array()
        .unwrap()
        .is_empty()
}

fn count(dir: String) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

/// (open file descriptors, threads) of a process.
fn resources(pid: u32) -> (usize, usize) {
    (
        count(format!("/proc/{pid}/fd")),
        count(format!("/proc/{pid}/task")),
    )
}

/// bob waits with `answer`, alice calls for 5 s; both with test sources and `--stats`.
/// Returns (caller, callee).
fn five_second_call(alice: &HostProcess, bob: &HostProcess) -> (Child, Child) {
    let mut answer_args = vec!["answer", "--wait", "30", "--stats"];
    answer_args.extend(TEST_MEDIA);
    let callee = spawn(bob, &answer_args);
    let mut call_args = vec!["call", "bob", "--duration", "5", "--stats"];
    call_args.extend(TEST_MEDIA);
    (spawn(alice, &call_args), callee)
}

/// Each side decoded at least 90% of the frames the other sent, and heard the other.
fn check_media_both_ways(caller: &Value, callee: &Value) {
    for (from, to, name) in [
        (caller, callee, "caller→callee"),
        (callee, caller, "callee→caller"),
    ] {
        let sent = from["stats"]["video_frames_sent"].as_u64().unwrap();
        let decoded = to["stats"]["video_frames_decoded"].as_u64().unwrap();
        eprintln!(
            "{name}: {decoded} of {sent} frames decoded; sender's path {}, {}; held {} dropped {}; receiver's freezes {}",
            from["stats"]["path_changes"],
            from["stats"]["consent_ms"],
            from["stats"]["held_packets"],
            from["stats"]["held_dropped"],
            to["stats"]["freezes"]
        );
        assert!(sent >= 100, "{name}: only {sent} frames sent in a 5 s call");
        assert!(
            decoded as f64 >= 0.9 * sent as f64,
            "{name}: {decoded} of {sent} frames decoded"
        );
        let audio_sent = from["stats"]["audio_packets_sent"].as_u64().unwrap();
        let audio_decoded = to["stats"]["audio_packets_decoded"].as_u64().unwrap();
        assert!(
            audio_sent > 100 && audio_decoded as f64 >= 0.9 * audio_sent as f64,
            "{name}: audio {audio_decoded} of {audio_sent} packets decoded"
        );
    }
}

#[test]
fn a_five_second_call_both_ways_while_messages_flow() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let hs = hosts(
        &dir,
        &[("alice", "127.0.0.1", &[]), ("bob", "127.0.0.2", &[])],
    );
    let (alice, bob) = (&hs[0], &hs[1]);
    // Both delivery links up (each host keeps its link to the other between messages), so
    // what the call leaves behind, if anything, shows.
    bob.send("alice", "hi").unwrap();
    alice.wait_history("bob", LIMIT, |h| h.len() == 2).unwrap();
    let before = [
        resources(alice.pid().unwrap()),
        resources(bob.pid().unwrap()),
    ];

    let (caller, callee) = five_second_call(alice, bob);

    // Messages both ways while the call runs.
    wait_call(alice, "active");
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(alice.send("bob", &format!("during the call {i}")).unwrap());
        sent.push(bob.send("alice", &format!("and back {i}")).unwrap());
        std::thread::sleep(Duration::from_millis(200));
    }
    let caller = json_stdout(&finish(caller, LIMIT).unwrap(), "caller").unwrap();
    let callee = json_stdout(&finish(callee, LIMIT).unwrap(), "callee").unwrap();

    assert_eq!(caller["peer"], "bob");
    assert_eq!(caller["ended"], "hangup", "{caller}");
    assert_eq!(callee["peer"], "alice");
    assert_eq!(callee["ended"], "remote-hangup", "{callee}");
    check_media_both_ways(&caller, &callee);
    for side in [&caller, &callee] {
        assert_eq!(side["stats"]["encrypted"], true);
        assert_eq!(side["stats"]["auth_failed"], 0, "{side}");
    }

    let all: HashSet<String> = sent.into_iter().collect();
    let done = |h: &[Value]| {
        let delivered: HashSet<String> = h
            .iter()
            .filter(|m| m["status"] == "delivered" || m["status"] == "received")
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect();
        all.is_subset(&delivered)
    };
    alice.wait_history("bob", LIMIT, done).unwrap();
    bob.wait_history("alice", LIMIT, done).unwrap();

    // The call is over everywhere, and the hosts hold no more than before it.
    assert!(no_calls(alice) && no_calls(bob));
    for (host, before) in [alice, bob].into_iter().zip(before) {
        let deadline = Instant::now() + LIMIT;
        loop {
            let now = resources(host.pid().unwrap());
            if now.0 <= before.0 && now.1 <= before.1 {
                break;
            }

            assert!(
                Instant::now() < deadline,
                "{}: fds/threads {now:?} after the call, {before:?} before: {:?}",
                host.name,
                std::fs::read_dir(format!("/proc/{}/fd", host.pid().unwrap()))
                    .unwrap()
                    .map(|e| std::fs::read_link(e.unwrap().path()).unwrap_or_default())
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A UDP datagram: (source, destination, payload).
type Datagram = (SocketAddrV4, SocketAddrV4, Vec<u8>);

/// UDP datagrams seen on the loopback interface between two addresses.
struct Capture {
    packets: Arc<Mutex<Vec<Datagram>>>,
    running: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Capture {
    fn start(a: Ipv4Addr, b: Ipv4Addr) -> Capture {
        use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockProtocol, SockType};
        let fd = socket::socket(
            AddressFamily::Packet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::EthAll,
        )
        .expect("an AF_PACKET socket (tests run as root)");
        socket::setsockopt(
            &fd,
            sockopt::ReceiveTimeout,
            &nix::sys::time::TimeVal::new(0, 100_000),
        )
        .unwrap();
        let packets = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(AtomicBool::new(true));
        let (p, r) = (packets.clone(), running.clone());
        let thread = std::thread::spawn(move || {
            let mut frame = vec![0u8; 65536];
            while r.load(Ordering::Relaxed) {
                let Ok(n) = socket::recv(fd.as_raw_fd(), &mut frame, socket::MsgFlags::empty())
                else {
                    continue;
                };
                if let Some(udp) = parse_udp(&frame[..n]) {
                    let ends = [*udp.0.ip(), *udp.1.ip()];
                    if ends.contains(&a) && ends.contains(&b) {
                        p.lock().unwrap().push(udp);
                    }
                }
            }
        });
        Capture {
            packets,
            running,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<Datagram> {
        self.running.store(false, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        std::mem::take(&mut *self.packets.lock().unwrap())
    }
}

/// (source, destination, payload) of an Ethernet/IPv4/UDP frame (loopback frames carry an
/// all-zero Ethernet header).
fn parse_udp(frame: &[u8]) -> Option<Datagram> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || ip.first()? >> 4 != 4 || *ip.get(9)? != 17 {
        return None;
    }
    let header = usize::from(ip[0] & 0x0f) * 4;
    let udp = ip.get(header..)?;
    let addr = |ip: &[u8], port: &[u8]| {
        SocketAddrV4::new(
            Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]),
            u16::from_be_bytes([port[0], port[1]]),
        )
    };
    let src = addr(ip.get(12..16)?, udp.get(0..2)?);
    let dst = addr(ip.get(16..20)?, udp.get(2..4)?);
    let len = usize::from(u16::from_be_bytes([*udp.get(4)?, *udp.get(5)?]));
    Some((src, dst, udp.get(8..len)?.to_vec()))
}

/// Pearson's chi-square of the byte histogram against uniform (255 degrees of freedom: about
/// 255 ± 23 for random bytes; thousands for video or RTP headers in clear).
fn chi_square(bytes: &[u8]) -> f64 {
    let mut histogram = [0u64; 256];
    for b in bytes {
        histogram[usize::from(*b)] += 1;
    }
    let expected = bytes.len() as f64 / 256.0;
    histogram
        .iter()
        .map(|&n| (n as f64 - expected).powi(2) / expected)
        .sum()
}

#[test]
fn media_on_the_wire_is_sealed_and_altered_or_replayed_packets_are_dropped() {
    // Addresses of their own, so the capture sees only this call.
    let (a_ip, b_ip) = (Ipv4Addr::new(127, 0, 0, 41), Ipv4Addr::new(127, 0, 0, 42));
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let hs = hosts(
        &dir,
        &[("alice", "127.0.0.41", &[]), ("bob", "127.0.0.42", &[])],
    );
    let (alice, bob) = (&hs[0], &hs[1]);
    let capture = Capture::start(a_ip, b_ip);

    let (caller, callee) = five_second_call(alice, bob);
    wait_call(alice, "active");
    std::thread::sleep(Duration::from_secs(2));

    // An attacker on the path: one of alice's packets to bob, altered in one byte and sent
    // again; and one sent again as it was.
    let (to_bob, original) = {
        let seen = capture.packets.lock().unwrap();
        let (_, dst, payload) = seen
            .iter()
            .rev()
            .find(|(src, dst, p)| src.ip() == &a_ip && dst.ip() == &b_ip && p.len() > 100)
            .expect("alice's media to bob on the wire")
            .clone();
        (dst, payload)
    };
    let attacker = UdpSocket::bind((a_ip, 0)).unwrap();
    // Altered: one byte of the content flipped, under a sequence number the receiver has not
    // seen yet (so only the authentication can catch it).
    let mut altered = original.clone();
    let seq = u64::from_be_bytes(altered[1..9].try_into().unwrap()) + 100_000;
    altered[1..9].copy_from_slice(&seq.to_be_bytes());
    let middle = altered.len() / 2;
    altered[middle] ^= 0x01;
    attacker.send_to(&altered, to_bob).unwrap();
    attacker.send_to(&original, to_bob).unwrap();

    let caller = json_stdout(&finish(caller, LIMIT).unwrap(), "caller").unwrap();
    let callee = json_stdout(&finish(callee, LIMIT).unwrap(), "callee").unwrap();
    let packets = capture.stop();

    // Nothing decodable on the wire: no RTP header (version 2) opens any datagram, and the
    // bytes after our 9-byte framing look random.
    let media: Vec<&Vec<u8>> = packets
        .iter()
        .filter(|(src, dst, _)| src.port() != 0 && dst.port() != 0)
        .map(|(_, _, p)| p)
        .collect();
    assert!(media.len() > 300, "only {} datagrams captured", media.len());
    for p in &media {
        assert!(
            p[0] >> 6 != 2,
            "a datagram starts like RTP/RTCP in clear: {:02x?}",
            &p[..p.len().min(16)]
        );
    }
    // (The loopback interface shows each datagram twice, going out and coming in.)
    let unique: HashSet<&Vec<u8>> = media.iter().copied().collect();
    let body: Vec<u8> = unique.iter().flat_map(|p| p[9..].iter().copied()).collect();
    let chi = chi_square(&body);
    assert!(
        chi < 400.0,
        "captured payload bytes are not uniform (chi-square {chi:.0} over {} bytes)",
        body.len()
    );

    // The altered copy failed authentication; the replayed one was dropped; neither reached
    // the decoder, and the call went on.
    let stats = &callee["stats"];
    assert!(stats["auth_failed"].as_u64().unwrap() >= 1, "{stats}");
    assert!(stats["replayed"].as_u64().unwrap() >= 1, "{stats}");
    check_media_both_ways(&caller, &callee);
}

#[test]
fn calls_end_with_clear_reasons() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let mut hs = hosts(
        &dir,
        &[
            ("alice", "127.0.0.1", &["--ring-seconds", "3"]),
            ("bob", "127.0.0.2", &[]),
            ("carol", "127.0.0.3", &[]),
        ],
    );
    let (alice, bob, carol) = (&hs[0], &hs[1], &hs[2]);
    let audio_only = ["--video", "none", "--audio", "test", "--sink", "null"];
    let call = |from: &HostProcess, to: &str, extra: &[&str]| {
        let mut args = vec!["call", to];
        args.extend(audio_only);
        args.extend(extra);
        spawn(from, &args)
    };

    // Declined: bob hangs up while it rings.
    let ringing = call(alice, "bob", &[]);
    let incoming = wait_call(bob, "ringing");
    assert_eq!(incoming["peer"], "alice");
    assert_eq!(incoming["outgoing"], false);
    bob.ctl_ok(&["hangup"]).unwrap();
    let out = finish(ringing, LIMIT).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bob declined the call"),
        "{}",
        stderr(&out)
    );

    // No answer: alice's host gives up after its 3 s; bob's ringing ends as missed.
    let started = Instant::now();
    let out = finish(call(alice, "bob", &[]), LIMIT).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bob did not answer"),
        "{}",
        stderr(&out)
    );
    assert!(started.elapsed() >= Duration::from_secs(3));
    let deadline = Instant::now() + LIMIT;
    while !no_calls(bob) {
        assert!(Instant::now() < deadline, "bob's missed call still rings");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Busy: bob is in a call with alice; carol's call is answered "busy".
    let mut answer_args = vec!["answer", "--wait", "30", "--duration", "20"];
    answer_args.extend(audio_only);
    let bob_device = spawn(bob, &answer_args);
    let alice_device = call(alice, "bob", &["--duration", "20"]);
    wait_call(bob, "active");
    let out = finish(call(carol, "bob", &[]), LIMIT).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bob is busy"), "{}", stderr(&out));
    // A second call from a busy host is refused before it rings.
    let out = finish(call(alice, "carol", &[]), LIMIT).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("already in a call"),
        "{}",
        stderr(&out)
    );
    // Hanging up from another smvsctl ends the call on both devices.
    alice.ctl_ok(&["hangup"]).unwrap();
    let a = finish(alice_device, LIMIT).unwrap();
    let b = finish(bob_device, LIMIT).unwrap();
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(b.status.success(), "{}", stderr(&b));
    assert!(String::from_utf8_lossy(&b.stdout).contains("alice hung up"));

    // A caller that dies while it rings: its host ends the call, and bob's ringing stops.
    let mut dying = call(alice, "bob", &[]);
    wait_call(bob, "ringing");
    dying.kill().unwrap();
    let _ = dying.wait();
    let deadline = Instant::now() + LIMIT;
    while !no_calls(bob) || !no_calls(alice) {
        assert!(Instant::now() < deadline, "the call outlived its device");
        std::thread::sleep(Duration::from_millis(50));
    }

    // Blocking someone during a call ends it on both sides.
    let mut answer_args = vec!["answer", "--wait", "30"];
    answer_args.extend(audio_only);
    let bob_device = spawn(bob, &answer_args);
    let alice_device = call(alice, "bob", &[]);
    wait_call(bob, "active");
    bob.ctl_ok(&["block", "alice"]).unwrap();
    let a = finish(alice_device, LIMIT).unwrap();
    let b = finish(bob_device, LIMIT).unwrap();
    assert!(
        String::from_utf8_lossy(&a.stdout).contains("bob hung up"),
        "{a:?}"
    );
    assert!(
        String::from_utf8_lossy(&b.stdout).contains("(blocked)"),
        "{b:?}"
    );
    bob.ctl_ok(&["unblock", "alice"]).unwrap();

    // Blocked: bob blocked carol, so her call never rings at bob.
    bob.ctl_ok(&["block", "carol"]).unwrap();
    let out = finish(call(carol, "bob", &[]), LIMIT).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("refused the call"),
        "{}",
        stderr(&out)
    );
    assert!(no_calls(bob));
    // And a contact carol blocked herself cannot be called until unblocked.
    carol.ctl_ok(&["block", "alice"]).unwrap();
    let out = finish(call(carol, "alice", &[]), LIMIT).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("unblock"), "{}", stderr(&out));

    // A missing GStreamer plugin is named with its Debian package, before anything rings.
    let mut args = vec!["call", "bob"];
    args.extend(audio_only);
    let registry = alice.root.path().join("empty-registry.bin");
    let out = alice
        .ctl_command(&args)
        .unwrap()
        .env("GST_PLUGIN_SYSTEM_PATH_1_0", "/nonexistent")
        .env("GST_PLUGIN_PATH_1_0", "/nonexistent")
        .env("GST_REGISTRY_1_0", &registry)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("gstreamer1.0-plugins-"),
        "{}",
        stderr(&out)
    );
    assert!(no_calls(bob));

    // No display for a window, no camera: said before anything rings.
    for (flags, expected) in [
        (
            ["--video", "none", "--audio", "test", "--sink", "window"],
            "no video window could be opened",
        ),
        (
            ["--video", "camera", "--audio", "test", "--sink", "null"],
            "no camera could be opened",
        ),
    ] {
        let mut args = vec!["call", "bob"];
        args.extend(flags);
        let out = alice
            .ctl_command(&args)
            .unwrap()
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains(expected), "{}", stderr(&out));
        assert!(no_calls(bob));
    }

    // Offline: bob's host is down.
    hs[1].stop().unwrap();
    let out = finish(call(&hs[0], "bob", &[]), LIMIT).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("bob cannot be reached"),
        "{}",
        stderr(&out)
    );
}

/// The IP of a media address in a call report.
fn media_ip(report: &Value, field: &str) -> std::net::IpAddr {
    report[field]
        .as_str()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .ip()
}

/// The call report (`--stats` JSON) an agent printed.
fn agent_report(agent: &mut AgentProcess) -> Value {
    let line = agent
        .wait_line(LIMIT, |l| l.starts_with('{') && l.contains("\"stats\""))
        .unwrap();
    serde_json::from_str(&line).unwrap()
}

/// Calls ring on all of alice's devices: her agent beside the host (D-Bus, the socket) and
/// the agent on her laptop, a linked device (the device port). The laptop answers on its
/// notification; the desktop stops ringing and says the call was answered elsewhere, and the
/// host refuses a second answer. The media runs between bob's device and the laptop's own
/// address, not its host's. Then the laptop places a call itself.
#[test]
fn a_call_rings_on_every_device_and_the_first_to_answer_takes_it() {
    ensure_daemon_user();
    let (rt, dir) = runtime_and_directory().unwrap();
    let system = TestBus::system_like(ROOT_OWNS).unwrap();
    // alice's host on 127.0.0.3; her laptop reaches it from 127.0.0.1 (the source address
    // loopback picks), an address of its own, as a machine of its own would have.
    let alice = host_on_bus("alice", &dir, "127.0.0.3", &system).unwrap();
    alice.register().unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    bob.register().unwrap();
    alice.send("bob", "hello").unwrap();
    bob.wait_history("alice", LIMIT, |h| h.len() == 1).unwrap();

    let laptop = DeviceProcess::linked(&alice, "laptop").unwrap();

    let mut agent_args = vec!["agent"];
    agent_args.extend(TEST_MEDIA);
    agent_args.push("--stats");
    let mut desktop_agent = {
        let mut cmd = alice.ctl_command(&agent_args).unwrap();
        cmd.env("DBUS_SYSTEM_BUS_ADDRESS", &system.address);
        AgentProcess::start(&rt, cmd, "relaying").unwrap()
    };
    let mut laptop_agent =
        AgentProcess::start(&rt, laptop.command(&agent_args).unwrap(), "connected").unwrap();

    // A watch on the host's socket: the Cap'n Proto events every device gets.
    let mut watch = Watch::start(&alice).unwrap();

    // bob calls alice: both agents ring, with Answer and Decline.
    let mut call_args = vec!["call", "alice", "--stats"];
    call_args.extend(TEST_MEDIA);
    let caller = spawn(&bob, &call_args);
    let ringing = |n: &Shown| n.summary == "SMVS call" && n.body.starts_with("bob is calling");
    let on_desktop = desktop_agent.wait_notification(ringing).unwrap();
    let on_laptop = laptop_agent.wait_notification(ringing).unwrap();
    for ring in [&on_desktop, &on_laptop] {
        assert_eq!(ring.actions, ["answer", "decline"], "{ring:?}");
    }
    let call_id = on_laptop
        .body
        .rsplit(' ')
        .next()
        .unwrap()
        .trim_end_matches(')')
        .to_owned();

    // The laptop answers; the desktop stops ringing and says why.
    rt.block_on(laptop_agent.desktop.press(on_laptop.id, "answer"))
        .unwrap();
    let stopped = desktop_agent
        .wait_notification(|n| n.id == on_desktop.id && n != &on_desktop)
        .unwrap();
    assert!(stopped.body.contains("answered elsewhere"), "{stopped:?}");
    assert!(stopped.actions.is_empty(), "{stopped:?}");
    laptop_agent
        .wait_notification(|n| n.id == on_laptop.id && n.body == "In a call with bob")
        .unwrap();
    watch
        .wait_for("the call answered elsewhere", |e| {
            e["event"] == "call_state" && e["state"] == "active"
        })
        .map(|e| assert_eq!(e["reason"], "answered-elsewhere", "{e}"))
        .unwrap();
    // A second answer, from the host's own socket, is refused: it does not steal the call.
    let mut again = vec!["answer", call_id.as_str()];
    again.extend(TEST_MEDIA);
    let out = alice.ctl(&again).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("answered on another device"),
        "{}",
        stderr(&out)
    );
    let active = wait_call(&alice, "active");
    assert_eq!(active["id"], call_id.as_str());

    // Five seconds of conversation; then alice hangs up from the host's own socket, a
    // device that does not run the call.
    std::thread::sleep(Duration::from_secs(5));
    alice.ctl_ok(&["hangup"]).unwrap();
    let caller = json_stdout(&finish(caller, LIMIT).unwrap(), "bob").unwrap();
    let callee = agent_report(&mut laptop_agent);
    assert_eq!(caller["ended"], "remote-hangup", "{caller}");
    assert_eq!(callee["ended"], "hangup", "{callee}");
    check_media_both_ways(&caller, &callee);
    eprintln!(
        "bob → laptop: {} of {} frames decoded; laptop → bob: {} of {}",
        callee["stats"]["video_frames_decoded"],
        caller["stats"]["video_frames_sent"],
        caller["stats"]["video_frames_decoded"],
        callee["stats"]["video_frames_sent"]
    );

    // The media went to the laptop's own address — where the host sees the laptop — not to
    // the host's published one.
    let devices = alice.ctl_json(&["devices"]).unwrap();
    let seen_at: std::net::SocketAddr = devices[0]["last_address"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let laptop_ip = media_ip(&callee, "media_address");
    assert_eq!(laptop_ip, seen_at.ip(), "{callee} {devices}");
    assert_ne!(laptop_ip, alice.listen.ip(), "{callee}");
    assert_eq!(caller["peer_media_address"], callee["media_address"]);
    assert_eq!(media_ip(&caller, "media_address").to_string(), "127.0.0.2");

    // Declined on one device: it stops ringing on the others.
    let mut call_args = vec!["call", "alice"];
    call_args.extend(TEST_MEDIA);
    let caller = spawn(&bob, &call_args);
    // A new ring is a new notification.
    let (first_desktop, first_laptop) = (on_desktop.id, on_laptop.id);
    let on_desktop = desktop_agent
        .wait_notification(|n| ringing(n) && n.id != first_desktop)
        .unwrap();
    let on_laptop = laptop_agent
        .wait_notification(|n| ringing(n) && n.id != first_laptop)
        .unwrap();
    rt.block_on(desktop_agent.desktop.press(on_desktop.id, "decline"))
        .unwrap();
    let out = finish(caller, LIMIT).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("alice declined the call"),
        "{}",
        stderr(&out)
    );
    laptop_agent
        .wait_notification(|n| n.id == on_laptop.id && n.body == "The call from bob was declined")
        .unwrap();

    // A call placed from the laptop works the same way, from its own address.
    let mut answer_args = vec!["answer", "--wait", "30", "--stats"];
    answer_args.extend(TEST_MEDIA);
    let callee = spawn(&bob, &answer_args);
    let mut call_args = vec!["call", "bob", "--duration", "5", "--stats"];
    call_args.extend(TEST_MEDIA);
    let out = finish(laptop.spawn(&call_args).unwrap(), LIMIT).unwrap();
    let caller = json_stdout(&out, "laptop").unwrap();
    let callee = json_stdout(&finish(callee, LIMIT).unwrap(), "bob").unwrap();
    check_media_both_ways(&caller, &callee);
    assert_eq!(media_ip(&caller, "media_address"), laptop_ip, "{caller}");
    assert_eq!(callee["peer_media_address"], caller["media_address"]);
    eprintln!(
        "laptop → bob: {} of {} frames decoded; bob → laptop: {} of {}",
        callee["stats"]["video_frames_decoded"],
        caller["stats"]["video_frames_sent"],
        caller["stats"]["video_frames_decoded"],
        callee["stats"]["video_frames_sent"]
    );
}

/// A virtual X display (Xvfb) for the duration of a test.
struct VirtualDisplay {
    child: Child,
    name: String,
}

impl VirtualDisplay {
    fn start() -> VirtualDisplay {
        // A display number no other X server holds.
        let n = (200 + std::process::id() % 600..1000)
            .find(|n| {
                !std::path::Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                    && !std::path::Path::new(&format!("/tmp/.X{n}-lock")).exists()
            })
            .unwrap();
        let name = format!(":{n}");
        let log = tempfile::tempfile().unwrap();
        let child = std::process::Command::new("Xvfb")
            .args([
                name.as_str(),
                "-screen",
                "0",
                "800x600x24",
                "-nolisten",
                "tcp",
                // An X server resets when its last client leaves, refusing connections for a
                // moment; a desktop's never does (its window manager stays), nor may this one.
                "-noreset",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("Xvfb (make deps installs xvfb)");
        let deadline = Instant::now() + LIMIT;
        let display = VirtualDisplay { child, name };
        // Up once a client gets an answer (the socket appears before the server accepts).
        loop {
            let probe = std::process::Command::new("xwininfo")
                .args(["-root", "-display", &display.name])
                .output()
                .expect("xwininfo (make deps installs x11-utils)");
            if probe.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Xvfb {} never came up",
                display.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        display
    }

    /// The names of the windows on the display.
    fn window_names(&self) -> String {
        let out = std::process::Command::new("xwininfo")
            .args(["-root", "-tree", "-display", &self.name])
            .output()
            .expect("xwininfo (make deps installs x11-utils)");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    }
}

impl Drop for VirtualDisplay {
    fn drop(&mut self) {
        // SIGTERM: Xvfb removes its socket and lock file.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = self.child.wait();
    }
}

/// A GStreamer plugin directory with every system plugin but the ones named: symlinks, so a
/// process pointed at it (GST_PLUGIN_SYSTEM_PATH_1_0, and a registry of its own) sees the
/// machine as if those packages were not installed.
fn plugins_without(leave_out: &[&str]) -> tempfile::TempDir {
    let system = std::fs::read_dir("/usr/lib")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("gstreamer-1.0"))
        .find(|p| p.join("libgstcoreelements.so").exists())
        .expect("the system's GStreamer plugin directory");
    let dir = tempfile::tempdir().unwrap();
    for plugin in std::fs::read_dir(&system).unwrap().flatten() {
        let name = plugin.file_name();
        if !leave_out.iter().any(|l| name.to_string_lossy() == *l) {
            std::os::unix::fs::symlink(plugin.path(), dir.path().join(&name)).unwrap();
        }
    }
    dir
}

#[test]
fn a_call_window_is_named_after_the_call_and_a_missing_window_sink_names_its_package() {
    let display = VirtualDisplay::start();
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let hs = hosts(
        &dir,
        &[("alice", "127.0.0.1", &[]), ("bob", "127.0.0.2", &[])],
    );
    let (alice, bob) = (&hs[0], &hs[1]);

    // The first GStreamer process after plugins change rebuilds the registry, loading every
    // plugin (GL's prints on stderr as it loads): done here, so that what bob's answer prints
    // is its own.
    let _ = std::process::Command::new("gst-inspect-1.0")
        .arg("ximagesink")
        .env("DISPLAY", &display.name)
        .output();
    // bob answers into a window on the display; alice calls with test sources.
    let mut callee = bob
        .ctl_command(&[
            "answer", "--wait", "30", "--video", "test", "--audio", "test", "--sink", "window",
        ])
        .unwrap()
        .env("DISPLAY", &display.name)
        .env_remove("WAYLAND_DISPLAY")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut call_args = vec!["call", "bob", "--duration", "5"];
    call_args.extend(TEST_MEDIA);
    let caller = spawn(alice, &call_args);
    let deadline = Instant::now() + LIMIT;
    let titled = loop {
        let names = display.window_names();
        if names.contains("\"SMVS — call with alice") {
            break names;
        }
        if Instant::now() >= deadline {
            let _ = callee.kill();
            let out = callee.wait_with_output().unwrap();
            panic!(
                "no window named after the call: {names}\nbob's answer: {}",
                stderr(&out)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!(
        "{}",
        titled
            .lines()
            .find(|l| l.contains("SMVS"))
            .unwrap_or_default()
    );
    let caller = caller.wait_with_output().unwrap();
    assert!(caller.status.success(), "{}", stderr(&caller));
    let callee = callee.wait_with_output().unwrap();
    assert!(callee.status.success(), "{}", stderr(&callee));
    // Choosing the window printed nothing (no GL or Wayland probing on an X display, which
    // says "XDG_RUNTIME_DIR is invalid"). (The sound output, autoaudiosink, may complain on a
    // machine with no sound device; that is not the window's doing.)
    let noise = stderr(&callee);
    assert!(!noise.contains("XDG_RUNTIME_DIR"), "{noise}");

    // Without gstreamer1.0-x and gstreamer1.0-gl (only plugins-bad's waylandsink, as on a
    // fresh Debian desktop), a call with a window fails at once, naming the package.
    let plugins = plugins_without(&[
        "libgstximagesink.so",
        "libgstxvimagesink.so",
        "libgstopengl.so",
    ]);
    let registry = tempfile::tempdir().unwrap();
    let out = alice
        .ctl_command(&[
            "call", "bob", "--video", "test", "--audio", "test", "--sink", "window",
        ])
        .unwrap()
        .env("DISPLAY", &display.name)
        .env_remove("WAYLAND_DISPLAY")
        .env("GST_PLUGIN_SYSTEM_PATH_1_0", plugins.path())
        .env("GST_REGISTRY_1_0", registry.path().join("registry.bin"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("gstreamer1.0-x"), "{e}");
    assert!(no_calls(alice), "nothing rang");
}
