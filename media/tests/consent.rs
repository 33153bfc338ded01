//! Consent: a session sends media only to an address where the peer has shown that it
//! receives (it echoed our hello's challenge). An address nobody answers from, or one a
//! malicious peer names while talking to us from elsewhere, gets nothing but a few hellos.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smvs_media::wire::{Hello, Stream, HELLO_LEN, SEALED_OVERHEAD};
use smvs_media::{MediaKeys, MediaSession, Role};

/// Datagrams and when they arrived.
type Received = Vec<(Instant, Vec<u8>)>;

/// A socket that records what reaches it and never answers.
struct Victim {
    addr: std::net::SocketAddr,
    got: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Victim {
    fn start() -> Victim {
        let (socket, addr): (UdpSocket, _) = common::socket();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (got, stop) = (got.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = socket.recv_from(&mut buf) {
                        got.lock()
                            .unwrap()
                            .push((Instant::now(), buf[..n].to_vec()));
                    }
                }
            })
        };
        Victim {
            addr,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Received {
        // Whatever was sent before the session stopped is read by now.
        std::thread::sleep(Duration::from_millis(200));
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.got.lock().unwrap().clone()
    }
}

/// Every datagram is a sealed hello from A (opened with the keys of A's intended peer).
fn all_hellos(got: &[(Instant, Vec<u8>)], opener: &MediaKeys) -> Vec<Hello> {
    got.iter()
        .map(|(_, d)| {
            assert_eq!(d.len(), SEALED_OVERHEAD + HELLO_LEN, "not a hello's size");
            let o = opener.open_received(d).expect("a datagram sealed by A");
            assert_eq!(o.stream, Stream::Hello);
            Hello::decode(&o.packet).unwrap()
        })
        .collect()
}

const RUN: Duration = Duration::from_secs(4);

/// The tests run one at a time: the machine may have two cores for four encoders.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn an_address_that_never_answers_gets_only_a_few_hellos() {
    let _serial = serial();
    let keys = common::CallKeys::new();
    let victim = Victim::start();
    let (sa, _) = common::socket();
    let t0 = Instant::now();
    let a = MediaSession::start(
        sa,
        victim.addr,
        keys.derive(Role::Caller, b"c"),
        common::small(),
    )
    .unwrap();
    std::thread::sleep(RUN);
    assert_eq!(a.error(), None);
    let sa = a.stop();
    let got = victim.finish();
    eprintln!("caller: {}", serde_json::to_string_pretty(&sa).unwrap());
    eprintln!("{} datagrams at the unanswering address", got.len());

    let hellos = all_hellos(&got, &keys.derive(Role::Callee, b"c"));
    assert!(hellos.iter().all(|h| h.seeking && h.echo.is_none()));
    let secs = RUN.as_secs_f64();
    assert!(!got.is_empty(), "no hello at all");
    assert!(
        (got.len() as f64) < 5.0 * secs,
        "{} hellos in {secs} s",
        got.len()
    );
    // After the first second or so, about one a second.
    let late = got
        .iter()
        .filter(|(t, _)| *t > t0 + Duration::from_millis(1500))
        .count();
    assert!(late <= 4, "{late} hellos in the last 2.5 s");

    assert_eq!(sa.consent_ms, None);
    assert_eq!(sa.packets_sent, got.len() as u64);
    assert_eq!(sa.hellos_sent, sa.packets_sent);
    assert!(sa.video_frames_sent > 50 && sa.audio_packets_sent > 50);
    // The media was held, the oldest dropped, nothing sent.
    assert!(sa.held_packets > 100, "{sa:?}");
    assert!(sa.held_dropped > 0, "{sa:?}");
    assert!(sa.rtcp_withheld > 0, "{sa:?}");
}

/// The peer holds the keys: it can send us authenticated datagrams from its own address while
/// naming a victim's as where we should send. That gives the victim nothing but hellos: media
/// goes only where a check's challenge came back from, which here is the peer's own address
/// (peer-reflexive, as a NAT would make it), never the one it named.
#[test]
fn a_peer_naming_someone_elses_address_gets_nothing_sent_there() {
    let _serial = serial();
    let keys = common::CallKeys::new();
    let victim = Victim::start();
    let (sa, aa) = common::socket();
    let (sb, _) = common::socket();
    let a = MediaSession::start(
        sa,
        victim.addr,
        keys.derive(Role::Caller, b"c"),
        common::small(),
    )
    .unwrap();
    // The malicious peer: a real session with the right keys, sending to A.
    let b = MediaSession::start(sb, aa, keys.derive(Role::Callee, b"c"), common::small()).unwrap();
    std::thread::sleep(RUN);
    let sa = a.stop();
    let sb = b.stop();
    let got = victim.finish();
    eprintln!("caller: {}", serde_json::to_string_pretty(&sa).unwrap());
    eprintln!("{} datagrams at the victim's address", got.len());

    // Only hellos at the victim, and few of them.
    let hellos = all_hellos(&got, &keys.derive(Role::Callee, b"c"));
    assert!(hellos.iter().all(|h| h.echo.is_none()));
    assert!(
        (got.len() as f64) <= 10.0 + RUN.as_secs_f64() + 2.0,
        "{} hellos",
        got.len()
    );
    // A heard the peer (its hellos authenticated), checked where they came from, and sends
    // there: to the peer's own address.
    assert!(sa.hellos_received > 0 && sa.packets_received > 0, "{sa:?}");
    assert_eq!(sa.auth_failed, 0);
    assert_eq!(sa.path, Some(smvs_media::PathKind::Reflexive));
    assert!(sa.packets_sent > got.len() as u64 + 100);
    assert!(sb.video_frames_received > 0);
}

fn late_opts() -> smvs_media::MediaOptions {
    smvs_media::MediaOptions {
        latency_probe: true,
        ..common::small()
    }
}

/// A peer that starts a second late still gets the start of the call: what was held meanwhile
/// (first keyframe included) is sent once it answers.
#[test]
fn a_late_peer_gets_the_held_start_of_the_call() {
    let _serial = serial();
    let keys = common::CallKeys::new();
    let (sa, aa) = common::socket();
    let (sb, ab) = common::socket();
    let a = MediaSession::start(sa, ab, keys.derive(Role::Caller, b"c"), late_opts()).unwrap();
    std::thread::sleep(Duration::from_millis(1000));
    let b = MediaSession::start(sb, aa, keys.derive(Role::Callee, b"c"), late_opts()).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let sa = a.stop();
    let sb = b.stop();
    eprintln!("caller: {}", serde_json::to_string_pretty(&sa).unwrap());
    eprintln!("callee: {}", serde_json::to_string_pretty(&sb).unwrap());
    let consent = sa.consent_ms.expect("consent");
    assert!((900.0..1500.0).contains(&consent), "{consent} ms");
    assert!(sa.held_packets > 50, "{sa:?}");
    assert_eq!(sa.held_dropped, 0);
    // All of A's frames, the held second included, reach B's decoder.
    assert!(
        sb.video_frames_decoded as f64 >= 0.9 * sa.video_frames_sent as f64,
        "decoded {} of {}",
        sb.video_frames_decoded,
        sa.video_frames_sent
    );
    // The held frames arrive a second late, but the burst does not delay the rest of the
    // call: most frames are presented at the usual latency.
    let g = sb.glass_to_glass_ms.expect("latency probe samples");
    assert!(g.p50 < 300, "{g:?}");
}
