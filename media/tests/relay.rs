//! Through a UDP relay that records what crosses the wire: the payloads are sealed (no RTP,
//! no VP8 in clear), a flipped byte fails authentication without breaking the call, a
//! re-sent packet is dropped as a replay, and garbage is dropped as malformed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use smvs_media::wire::{Hello, Stream, WIRE_VERSION};
use smvs_media::{MediaSession, Role};

struct Relay {
    socket: UdpSocket,
    addr: SocketAddr,
    /// Datagrams from A to B, as A sent them.
    recorded: Arc<Mutex<Vec<Vec<u8>>>>,
    flip_next: Arc<AtomicBool>,
    flipped: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    fn start(a: SocketAddr, b: SocketAddr) -> Relay {
        let (socket, addr) = common::socket();
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let recorded = Arc::new(Mutex::new(Vec::new()));
        let flip_next = Arc::new(AtomicBool::new(false));
        let flipped = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let socket = socket.try_clone().unwrap();
            let (recorded, flip_next, flipped, stop) = (
                recorded.clone(),
                flip_next.clone(),
                flipped.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let mut d = buf[..n].to_vec();
                    if from == a {
                        recorded.lock().unwrap().push(d.clone());
                        // A small datagram (audio or RTCP, by its size): losing a video
                        // packet would stall decoding until the next keyframe, which is not
                        // what this test is about.
                        if d.len() < 300 && flip_next.swap(false, Ordering::Relaxed) {
                            let last = d.len() - 1;
                            d[last / 2] ^= 0x40;
                            flipped.store(true, Ordering::Relaxed);
                        }
                        let _ = socket.send_to(&d, b);
                    } else if from == b {
                        let _ = socket.send_to(&d, a);
                    }
                }
            })
        };
        Relay {
            socket,
            addr,
            recorded,
            flip_next,
            flipped,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn is_rtp(p: &[u8], pts: &[u8]) -> bool {
    p.len() >= 12 && p[0] >> 6 == 2 && pts.contains(&(p[1] & 0x7f))
}

#[test]
fn the_wire_carries_only_sealed_packets_and_tampering_and_replays_are_dropped() {
    let keys = common::CallKeys::new();
    let (sa, aa) = common::socket();
    let (sb, ab) = common::socket();
    let relay = Relay::start(aa, ab);
    let opts = common::small();
    let a = MediaSession::start(
        sa,
        relay.addr,
        keys.derive(Role::Caller, b"call-1"),
        opts.clone(),
    )
    .unwrap();
    let b =
        MediaSession::start(sb, relay.addr, keys.derive(Role::Callee, b"call-1"), opts).unwrap();

    std::thread::sleep(Duration::from_millis(1500));
    relay.flip_next.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        relay.flipped.load(Ordering::Relaxed),
        "the relay flipped nothing"
    );
    let at_flip = b.stats();
    assert!(
        at_flip.auth_failed >= 1,
        "tampered packet accepted: {at_flip:?}"
    );

    // Replay: the latest packet A sent, and one from the very start of the call.
    let (latest, first) = {
        let r = relay.recorded.lock().unwrap();
        (r.last().unwrap().clone(), r.first().unwrap().clone())
    };
    relay.socket.send_to(&latest, ab).unwrap();
    relay.socket.send_to(&first, ab).unwrap();
    // Garbage: empty-ish, wrong version, right version but random body.
    relay.socket.send_to(&[0u8; 3], ab).unwrap();
    relay
        .socket
        .send_to(&[0x80, 96, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], ab)
        .unwrap();
    let mut forged = vec![WIRE_VERSION];
    forged.extend_from_slice(&u64::MAX.to_be_bytes());
    forged.extend_from_slice(&[0x5a; 200]);
    relay.socket.send_to(&forged, ab).unwrap();
    std::thread::sleep(Duration::from_millis(1500));

    assert_eq!(a.error(), None);
    assert_eq!(b.error(), None);
    let sa = a.stop();
    let sb = b.stop();
    eprintln!("caller: {}", serde_json::to_string_pretty(&sa).unwrap());
    eprintln!("callee: {}", serde_json::to_string_pretty(&sb).unwrap());

    assert!(sb.auth_failed >= 2, "flipped + forged: {}", sb.auth_failed);
    assert!(
        sb.replayed >= 2,
        "both re-sent packets must be dropped: {}",
        sb.replayed
    );
    assert!(sb.malformed >= 2, "garbage: {}", sb.malformed);
    // A forged u64::MAX sequence number did not move the window (only authenticated
    // packets do), so A's packets kept flowing, and the call kept decoding after the flip.
    assert!(
        sb.video_frames_decoded > at_flip.video_frames_decoded + 30,
        "{sb:?}"
    );
    assert!(sb.video_frames_decoded as f64 >= 0.85 * sa.video_frames_sent as f64);
    assert!(sa.video_frames_decoded as f64 >= 0.85 * sb.video_frames_sent as f64);
    assert!(sb.audio_packets_decoded > 0);

    // What crossed the wire.
    let recorded = relay.recorded.lock().unwrap().clone();
    assert!(recorded.len() > 100);
    let opener = keys.derive(Role::Callee, b"call-1");
    let mut seqs = std::collections::HashSet::new();
    let mut rtp_seen = 0;
    let mut hellos = 0;
    for d in &recorded {
        assert_eq!(d[0], WIRE_VERSION, "not our framing");
        assert!(
            !is_rtp(d, &[96, 97, 111]),
            "an RTP header in clear at offset 0"
        );
        let opened = opener
            .open_received(d)
            .expect("every recorded datagram opens");
        assert!(
            seqs.insert(opened.seq),
            "sequence number {} reused",
            opened.seq
        );
        assert_eq!(&d[1..9], &opened.seq.to_be_bytes());
        let p = &opened.packet;
        match opened.stream {
            // 97: a retransmission (RFC 4588 rtx) of a VP8 packet a NACK asked for again,
            // which a loaded machine's loopback can make happen.
            Stream::VideoRtp => assert!(is_rtp(p, &[96, 97]), "video stream is not VP8 RTP"),
            Stream::AudioRtp => assert!(is_rtp(p, &[111]), "audio stream is not Opus RTP"),
            Stream::VideoRtcp | Stream::AudioRtcp => {
                assert!(p[0] >> 6 == 2 && (200..=207).contains(&p[1]))
            }
            Stream::Hello => {
                Hello::decode(p).expect("a well-formed hello");
                hellos += 1;
            }
        }
        if matches!(opened.stream, Stream::VideoRtp | Stream::AudioRtp) {
            rtp_seen += 1;
            // Neither the RTP header nor any 16 bytes of the payload appear on the wire.
            assert!(
                !d.windows(12).any(|w| w == &p[..12]),
                "RTP header visible on the wire"
            );
            for chunk in p[12..].chunks_exact(16).take(8) {
                assert!(
                    !d.windows(16).any(|w| w == chunk),
                    "payload bytes visible on the wire"
                );
            }
        }
    }
    assert!(rtp_seen > 100);
    // The consent handshake: A's first datagram is a hello; once B had answered, A said hello
    // about twice a second in the 3.3-s call: a consent check of its own each second, and an
    // answer to each of B's.
    assert_eq!(
        opener.open_received(&recorded[0]).unwrap().stream,
        Stream::Hello
    );
    assert!((2..=14).contains(&hellos), "{hellos} hellos");
    assert!(sa.consent_ms.is_some() && sb.consent_ms.is_some());
}
