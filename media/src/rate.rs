//! Bandwidth adaptation of the video we send: a loss- and delay-based controller on the peer's
//! RTCP receiver reports, after Google Congestion Control's loss-based half (GCC, as in
//! draft-ietf-rmcat-gcc section 6). GStreamer 1.22 has no transport-wide congestion control
//! estimator, so the receiver reports are the signal:
//!
//! * under 2% loss the target grows by 15% a second (not in the second after a decrease), on 10%
//!   or more it falls by half the loss rate (at most every 500 ms), in between it holds;
//! * a round trip that grows 100 ms or more over the least seen means a queue is building on
//!   the path: the target falls by 15% before the queue overflows into loss; with 10% loss or
//!   more on top, the path is a bottleneck and the target goes at once to a little under what
//!   got through, (1 - loss) x 0.9;
//! * 20% loss or more is a bottleneck too, queue or not: a link capped by a short buffer (a
//!   token bucket with 50 ms of queue, a busy Wi-Fi) drops before the round trip can grow 100
//!   ms, and halving by half the loss rate, report after report, leaves the video undecodable
//!   for seconds while it overshoots;
//! * what got through at a bottleneck is remembered for [`CEILING_HOLD`]: near it the target
//!   grows by 3% a second, not 15% (GCC's additive increase near the link's capacity), so it
//!   does not overshoot again and again; past it by a tenth, or after the hold, the path has
//!   room again and growth is fast.
//!
//! Audio keeps its constant bitrate: the video gets what is left, so audio is protected first.
//! Where the picture cannot be coded that small, the encoder lowers the frame rate itself
//! (frame dropping, see [`apply_target`]).

use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::prelude::*;

use crate::stats::session_sources;

/// The least video bitrate the controller goes down to.
pub(crate) const MIN_KBPS: u32 = 80;
/// A queue building on the path: the round trip this far over the least one seen.
const QUEUE_DELAY_MS: f64 = 100.0;
/// Loss this heavy is a bottleneck, not a noisy link.
const HEAVY_LOSS: f64 = 0.20;
/// How long a bottleneck's rate is remembered.
const CEILING_HOLD: Duration = Duration::from_secs(8);
/// Growth near a remembered bottleneck: 3% a second.
const GROWTH_NEAR_CEILING_PER_S: f64 = 1.03;

/// What a receiver report says about our video.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Report {
    /// RTCP "fraction lost" since the previous report, 0-1.
    pub loss: f64,
    pub rtt_ms: Option<f64>,
    /// The extended highest sequence number the report covers: a new report has a new one.
    pub highest_seq: u32,
    /// What reached the peer since the previous report, in kbit/s, when known.
    pub delivered_kbps: Option<f64>,
}

/// The controller's state.
#[derive(Debug, Clone)]
pub(crate) struct RateControl {
    target_kbps: f64,
    max_kbps: f64,
    min_rtt_ms: Option<f64>,
    last_report: Option<u32>,
    /// When the target last went down, and when growth was last reckoned.
    last_down: Option<Instant>,
    grown_at: Option<Instant>,
    /// What got through at the last bottleneck, kbit/s, and when.
    ceiling: Option<(f64, Instant)>,
}

/// After a decrease, the queue it answered takes a while to drain, and the reports still show
/// it: no second decrease for this long, and no growth for [`HOLD_AFTER_DOWN`].
const DECREASE_GAP: Duration = Duration::from_millis(500);
const HOLD_AFTER_DOWN: Duration = Duration::from_secs(1);
/// Growth on a clean path: 15% a second. GCC grows by 8%, but it also probes the path; without
/// probes, 8% would take 20 s to climb back from a fifth of the configured rate.
const GROWTH_PER_S: f64 = 1.15;

impl RateControl {
    /// Starts at the configured bitrate, which is also the most it will ask for.
    pub(crate) fn new(max_kbps: u32) -> RateControl {
        RateControl {
            target_kbps: f64::from(max_kbps),
            max_kbps: f64::from(max_kbps),
            min_rtt_ms: None,
            last_report: None,
            last_down: None,
            grown_at: None,
            ceiling: None,
        }
    }

    pub(crate) fn target_kbps(&self) -> u32 {
        self.target_kbps.round() as u32
    }

    /// The most the target goes to: the configured bitrate.
    pub(crate) fn max_kbps(&self) -> u32 {
        self.max_kbps.round() as u32
    }

    /// Takes a report; returns the new target when it changed. A report seen before (same
    /// highest sequence number) changes nothing.
    pub(crate) fn report(&mut self, report: Report, now: Instant) -> Option<u32> {
        if self.last_report == Some(report.highest_seq) {
            return None;
        }
        self.last_report = Some(report.highest_seq);
        let before = self.target_kbps();
        let queued = match report.rtt_ms.filter(|r| r.is_finite() && *r >= 0.0) {
            Some(rtt) => {
                let least = self.min_rtt_ms.map_or(rtt, |m: f64| m.min(rtt));
                self.min_rtt_ms = Some(least);
                rtt - least >= QUEUE_DELAY_MS
            }
            None => false,
        };
        let loss = report.loss.clamp(0.0, 1.0);
        let since_down = self.last_down.map(|at| now.saturating_duration_since(at));
        // A queue (with or without loss) is a bottleneck: what got through is about what the
        // path carries, so go to a little under that (GCC's 0.85 of the received rate). Loss
        // without a queue is a noisy link: down by half the loss rate.
        let down = if queued || loss >= HEAVY_LOSS {
            let through = report
                .delivered_kbps
                .filter(|d| d.is_finite() && *d > 0.0)
                .unwrap_or(self.target_kbps * (1.0 - loss));
            self.ceiling = Some((through, now));
            // At most halved at once (a report window is short and its count noisy), unless the
            // loss is heavy: then the count is no noise, and every report spent over the
            // bottleneck is a second of video the peer cannot decode.
            let floor = if loss >= HEAVY_LOSS { 0.25 } else { 0.5 };
            Some((0.85 * through).clamp(self.target_kbps * floor, self.target_kbps * 0.85))
        } else if loss >= 0.10 {
            Some(self.target_kbps * (1.0 - 0.5 * loss))
        } else {
            None
        };
        if let Some(lower) = down {
            if since_down.is_none_or(|d| d >= DECREASE_GAP) {
                self.target_kbps = lower;
                self.last_down = Some(now);
            }
            self.grown_at = None;
        } else if loss < 0.02 && since_down.is_none_or(|d| d >= HOLD_AFTER_DOWN) {
            if let Some((ceiling, set)) = self.ceiling {
                if now.saturating_duration_since(set) >= CEILING_HOLD
                    || self.target_kbps >= 1.1 * ceiling
                {
                    self.ceiling = None;
                }
            }
            let growth = match self.ceiling {
                Some((ceiling, _)) if self.target_kbps >= 0.85 * ceiling => {
                    GROWTH_NEAR_CEILING_PER_S
                }
                _ => GROWTH_PER_S,
            };
            if let Some(at) = self.grown_at {
                let secs = now.saturating_duration_since(at).as_secs_f64().min(1.0);
                self.target_kbps *= growth.powf(secs);
            }
            self.grown_at = Some(now);
        } else {
            self.grown_at = None;
        }
        self.target_kbps = self
            .target_kbps
            .clamp(f64::from(MIN_KBPS), self.max_kbps.max(f64::from(MIN_KBPS)));
        let after = self.target_kbps();
        (after != before).then_some(after)
    }
}

/// A report block about one of our SSRCs (RFC 3550 section 6.4.1).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Block {
    /// Fraction lost since the previous report, 0-1.
    pub loss: f64,
    pub cumulative_lost: i32,
    pub highest_seq: u32,
}

impl Block {
    /// Packets that reached the peer between `earlier` and this block.
    pub(crate) fn delivered_since(&self, earlier: &Block) -> u64 {
        // Extended sequence numbers: a difference of more than 2^31 is an older block.
        let expected = i64::from(self.highest_seq.wrapping_sub(earlier.highest_seq) as i32);
        let lost = i64::from(self.cumulative_lost) - i64::from(earlier.cumulative_lost);
        u64::try_from(expected - lost).unwrap_or(0)
    }
}

/// The report block about `ssrc` in an RTCP compound packet (RFC 3550 sections 6.4.1 and
/// 6.4.2: sender and receiver reports), as (fraction lost 0-1, extended highest sequence
/// number). rtpbin keeps only the last report block each peer source sent, which is often the
/// one about our retransmission SSRC, so the receive thread reads them from the packets.
pub(crate) fn report_block(compound: &[u8], ssrc: u32) -> Option<Block> {
    let mut rest = compound;
    while rest.len() >= 4 {
        let count = usize::from(rest[0] & 0x1f);
        let pt = rest[1];
        let words = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let packet = rest.get(..(words + 1) * 4)?;
        rest = &rest[packet.len()..];
        let blocks_at = match pt {
            200 => 28,
            201 => 8,
            _ => continue,
        };
        for i in 0..count {
            let Some(block) = packet.get(blocks_at + 24 * i..blocks_at + 24 * (i + 1)) else {
                break;
            };
            if u32::from_be_bytes(block.get(0..4)?.try_into().ok()?) == ssrc {
                let lost = block.get(5..8)?;
                // 24-bit signed.
                let cumulative_lost = (i32::from_be_bytes([lost[0], lost[1], lost[2], 0])) >> 8;
                return Some(Block {
                    loss: f64::from(*block.get(4)?) / 256.0,
                    cumulative_lost,
                    highest_seq: u32::from_be_bytes(block.get(8..12)?.try_into().ok()?),
                });
            }
        }
    }
    None
}

/// The round trip from the peer's latest report blocks on session `id` (about any of our
/// SSRCs: they share the path), in ms.
pub(crate) fn round_trip_ms(rtpbin: &gst::Element, id: u32) -> Option<f64> {
    session_sources(rtpbin, id)
        .iter()
        .filter(|s| s.get::<bool>("have-rb").unwrap_or(false))
        .filter_map(|s| s.get::<u32>("rb-round-trip").ok())
        .filter(|r| *r > 0)
        .map(|r| f64::from(r) * 1000.0 / 65536.0)
        .reduce(f64::max)
}

/// libvpx's frame-dropping threshold while the target is below the configured bitrate
/// (libwebrtc's 30): at its quantizer ceiling a picture may need more than the target, and the
/// encoder then skips frames rather than overshoot. libvpx (realtime, cpu-used=-6) did not go
/// under ~700 kbit/s on the scrolling test pattern at 640x480 without it, whatever the target.
const DROP_FRAMES: i32 = 30;

/// Gives `encoder` (vp8enc) a new target, `kbps`, of at most `max_kbps`: the bitrate, and frame
/// dropping on below the configured bitrate, off at it (so a clean path sends every frame).
pub(crate) fn apply_target(encoder: &gst::Element, kbps: u32, max_kbps: u32) {
    encoder.set_property(
        "dropframe-threshold",
        if kbps < max_kbps { DROP_FRAMES } else { 0 },
    );
    encoder.set_property(
        "target-bitrate",
        i32::try_from(kbps * 1000).unwrap_or(i32::MAX),
    );
}

/// The SSRC our video payloader stamps on its packets, once it has sent some.
pub(crate) fn media_ssrc(payloader: &gst::Element) -> Option<u32> {
    payloader.find_property("stats")?;
    let stats = payloader
        .property_value("stats")
        .get::<gst::Structure>()
        .ok()?;
    stats.get::<u32>("ssrc").ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(seq: u32, loss: f64, rtt: f64) -> Report {
        Report {
            loss,
            rtt_ms: Some(rtt),
            highest_seq: seq,
            delivered_kbps: None,
        }
    }

    /// Reports `ms` apart, as the controller sees them.
    struct Clock(Instant, u32);

    impl Clock {
        fn next(&mut self, ms: u64, loss: f64, rtt: f64) -> (Report, Instant) {
            self.0 += Duration::from_millis(ms);
            self.1 += 1;
            (report(self.1, loss, rtt), self.0)
        }
    }

    #[test]
    fn loss_lowers_the_target_and_a_clean_path_raises_it_back() {
        let mut c = RateControl::new(1000);
        let mut t = Clock(Instant::now(), 0);
        let mut feed = |c: &mut RateControl, ms, loss| {
            let (r, at) = t.next(ms, loss, 20.0);
            c.report(r, at)
        };
        // Clean at the top: stays at the most it may use.
        assert_eq!(feed(&mut c, 250, 0.0), None);
        // 15% loss on a noisy link: down by half that, at most once per 500 ms.
        assert_eq!(feed(&mut c, 250, 0.15), Some(925));
        assert_eq!(feed(&mut c, 250, 0.15), None);
        assert_eq!(feed(&mut c, 250, 0.15), Some(856));
        // 40% is a bottleneck: a little under what got through (0.6 of the target, here).
        assert_eq!(feed(&mut c, 500, 0.4), Some(436));
        // Moderate loss holds.
        assert_eq!(feed(&mut c, 250, 0.05), None);
        // Clean again: held for a second after the last decrease, then 15% a second.
        assert_eq!(feed(&mut c, 500, 0.0), None);
        assert_eq!(feed(&mut c, 250, 0.0), None);
        let mut secs = 0.0;
        while c.target_kbps() < 1000 {
            feed(&mut c, 500, 0.0);
            secs += 0.5;
        }
        // Slowly near what got through at the bottleneck, for the 8 s it is remembered, then
        // fast again.
        assert!((10.5..=12.5).contains(&secs), "436 -> 1000 took {secs} s");
    }

    #[test]
    fn a_growing_round_trip_lowers_the_target_before_loss_does() {
        let mut c = RateControl::new(1000);
        let mut t = Clock(Instant::now(), 0);
        let (r, at) = t.next(0, 0.0, 20.0);
        c.report(r, at);
        let (r, at) = t.next(250, 0.0, 90.0);
        assert_eq!(c.report(r, at), None, "under 100 ms of queue");
        let (r, at) = t.next(250, 0.0, 130.0);
        assert_eq!(c.report(r, at), Some(850));
        // Loss behind a queue: 0.85 of what got through, but no lower than half at once.
        let (mut r, at) = t.next(500, 0.15, 400.0);
        r.delivered_kbps = Some(400.0);
        assert_eq!(c.report(r, at), Some(425));
        let (mut r, at) = t.next(500, 0.15, 400.0);
        r.delivered_kbps = Some(400.0);
        assert_eq!(c.report(r, at), Some(340));
        // Heavy loss is no noise: down to a quarter at once.
        let (mut r, at) = t.next(500, 0.5, 400.0);
        r.delivered_kbps = Some(50.0);
        assert_eq!(c.report(r, at), Some(85));
        let (r, at) = t.next(0, 0.5, 400.0);
        let again = Report {
            highest_seq: r.highest_seq - 1,
            ..r
        };
        assert_eq!(c.report(again, at), None, "the same report twice");
    }

    #[test]
    fn delivered_packets_are_the_expected_less_the_lost() {
        let a = Block {
            loss: 0.0,
            cumulative_lost: 10,
            highest_seq: 65530,
        };
        let b = Block {
            loss: 0.2,
            cumulative_lost: 30,
            highest_seq: 65630,
        };
        assert_eq!(b.delivered_since(&a), 80);
        assert_eq!(a.delivered_since(&b), 0, "never negative");
    }

    #[test]
    fn report_blocks_are_found_in_sender_and_receiver_reports() {
        let block = |ssrc: u32, fraction: u8, highest: u32| {
            let mut b = ssrc.to_be_bytes().to_vec();
            b.push(fraction);
            b.extend_from_slice(&[0, 0, 3]);
            b.extend_from_slice(&highest.to_be_bytes());
            b.extend_from_slice(&[0; 12]);
            b
        };
        // An SR with two blocks, then an RR with one, then an SDES.
        let mut sr = vec![0x82, 200, 0, 18];
        sr.extend_from_slice(&[0; 24]);
        sr.extend(block(7, 64, 1000));
        sr.extend(block(8, 128, 2000));
        let mut rr = vec![0x81, 201, 0, 7];
        rr.extend_from_slice(&[0; 4]);
        rr.extend(block(9, 26, 3000));
        let sdes = [0x81, 202, 0, 1, 0, 0, 0, 9];
        let compound = [sr, rr, sdes.to_vec()].concat();
        let found = |ssrc| report_block(&compound, ssrc).map(|b| (b.loss, b.highest_seq));
        assert_eq!(found(8), Some((0.5, 2000)));
        assert_eq!(found(9), Some((26.0 / 256.0, 3000)));
        assert_eq!(report_block(&compound, 9).unwrap().cumulative_lost, 3);
        assert_eq!(report_block(&compound, 10), None);
        // Cut short: nothing read past the end.
        assert_eq!(report_block(&compound[..40], 8), None);
    }

    #[test]
    fn the_target_stays_between_the_floor_and_the_configured_bitrate() {
        let mut c = RateControl::new(1000);
        let mut t = Clock(Instant::now(), 0);
        for _ in 0..100 {
            let (r, at) = t.next(600, 1.0, 20.0);
            c.report(r, at);
        }
        assert_eq!(c.target_kbps(), MIN_KBPS);
        let mut c = RateControl::new(50);
        let (r, at) = t.next(600, 0.0, 20.0);
        c.report(r, at);
        assert_eq!(c.target_kbps(), MIN_KBPS.max(50));
    }
}

#[cfg(test)]
mod encoder_tests {
    use gstreamer as gst;
    use gstreamer::prelude::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// vp8enc follows a target bitrate set while it runs (what the adapter does).
    #[test]
    fn the_encoder_follows_a_new_target_while_it_runs() {
        crate::plugins::init().unwrap();
        let options = crate::MediaOptions::default();
        let pipeline = gst::parse::launch(&format!(
            "videotestsrc is-live=true pattern=smpte horizontal-speed=2 \
             ! video/x-raw,format=I420,width={},height={},framerate={}/1 \
             ! {} ! fakesink name=out signal-handoffs=true sync=false",
            options.width,
            options.height,
            options.fps,
            crate::pipeline::video_encoder(&options, 1)
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let bytes = Arc::new(AtomicU64::new(0));
        {
            let bytes = Arc::clone(&bytes);
            pipeline
                .by_name("out")
                .unwrap()
                .connect("handoff", false, move |args| {
                    let b = args[1].get::<gst::Buffer>().unwrap();
                    bytes.fetch_add(b.size() as u64, Ordering::Relaxed);
                    None
                });
        }
        pipeline.set_state(gst::State::Playing).unwrap();
        let rate = |secs: u64| {
            let before = bytes.load(Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_secs(secs));
            (bytes.load(Ordering::Relaxed) - before) * 8 / 1000 / secs
        };
        std::thread::sleep(std::time::Duration::from_secs(1));
        let high = rate(2);
        super::apply_target(&pipeline.by_name("venc").unwrap(), 200, options.video_kbps);
        std::thread::sleep(std::time::Duration::from_secs(1));
        let low = rate(2);
        let _ = pipeline.set_state(gst::State::Null);
        eprintln!("before {high} kbit/s, after {low} kbit/s");
        // 1000 kbit/s, then 200: a frame rate the encoder lowers by dropping frames.
        assert!(
            high > 700 && low < 350,
            "before {high} kbit/s, after {low} kbit/s"
        );
    }
}
