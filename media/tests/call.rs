//! Two endpoints in one process, 5 s of test video and audio both ways over 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use smvs_media::{check_plugins, MediaOptions, JITTER_BUFFER_MS};

#[test]
fn two_sessions_exchange_video_and_audio_both_ways() {
    let opts = MediaOptions {
        latency_probe: true,
        ..MediaOptions::default()
    };
    check_plugins(&opts).unwrap();
    let (a, b) = common::call(opts.clone(), opts, b"call-1", 5.0);
    eprintln!("caller: {}", serde_json::to_string_pretty(&a).unwrap());
    eprintln!("callee: {}", serde_json::to_string_pretty(&b).unwrap());
    for (name, rx, tx) in [("callee", &b, &a), ("caller", &a, &b)] {
        assert!(
            tx.video_frames_sent > 100,
            "{name}'s peer sent only {} frames",
            tx.video_frames_sent
        );
        assert!(
            rx.video_frames_decoded as f64 >= 0.9 * tx.video_frames_sent as f64,
            "{name} decoded {} of {} frames sent",
            rx.video_frames_decoded,
            tx.video_frames_sent
        );
        assert!(rx.audio_packets_decoded > 0, "{name} decoded no audio");
        assert!(tx.audio_packets_sent > 100);
        assert_eq!(
            (rx.auth_failed, rx.replayed, rx.malformed),
            (0, 0, 0),
            "{name}"
        );
        assert!(rx.encrypted);
        // Each side gave the other consent within moments of the start, and what was held
        // until then was sent, not dropped.
        let consent = rx.consent_ms.expect("consent");
        assert!(consent < 500.0, "{name}: consent after {consent} ms");
        assert_eq!(rx.held_dropped, 0, "{name}");
        assert_eq!(
            (rx.ssrc_rejected, rx.receive_queue_dropped, rx.consent_lost),
            (0, 0, 0),
            "{name}"
        );
        assert!(rx.seal_ns > 0 && rx.open_ns > 0);
        // The probe's null video sink syncs like a display but drops nothing (no QoS): all but
        // the frames still waiting for their presentation time at the end are presented.
        assert!(
            rx.video_frames_presented as f64 >= 0.9 * tx.video_frames_sent as f64,
            "{name} presented {} of {} frames sent",
            rx.video_frames_presented,
            tx.video_frames_sent
        );
        assert!(rx.video_frames_presented <= rx.video_frames_decoded);
        // Same machine: the probe's stamps give a real glass-to-glass figure, to presentation,
        // which waits out at least the jitter buffer's latency, and a decode-time one.
        let g = rx.glass_to_glass_ms.expect("latency probe samples");
        let d = rx
            .decode_latency_ms
            .expect("latency probe samples, decoded");
        assert!(g.samples > 50 && d.samples > 50, "{name}: {g:?} {d:?}");
        assert!(g.p50 < 1000, "{name}: {g:?}");
        assert!(g.p50 >= JITTER_BUFFER_MS, "{name}: {g:?}");
        assert!(g.p50 > d.p50, "{name}: presented {g:?}, decoded {d:?}");
    }
}
