//! Loss repair for the video session: retransmission on NACK (RFC 4588 RTX through rtpbin's
//! aux sender and receiver), the jitter buffer settings that ask for it, and the [`Adapter`]
//! that gives the jitter buffer more time while the path loses packets.
//!
//! The retransmitted packets take the same path as the rest: out of `send_rtp_src_0` into the
//! sealing appsink, in through the receive thread's replay check. rtpbin asks for the aux
//! elements when it creates session 0, so the handlers are connected first and the session's
//! pads are linked afterwards, here, rather than in the pipeline description.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;

use crate::pipeline::{AUDIO_CLOCK_RATE, AUDIO_PT, MAX_STREAMS, VIDEO_CLOCK_RATE, VIDEO_PT};
use crate::stats::{internal_session, session_sources, RepairStats, JITTER_BUFFER_MS};
use crate::{MediaError, MediaOptions};

/// The payload type of video retransmissions (RFC 4588 "rtx", apt=96).
pub(crate) const VIDEO_RTX_PT: u32 = 97;
/// How long the sender keeps packets it may be asked to resend: well past the jitter buffer's
/// latency plus a round trip on any path a call survives.
const RTX_KEEP_MS: u32 = 1000;

fn pt_map() -> gst::Structure {
    gst::Structure::builder("application/x-rtp-pt-map")
        .field(VIDEO_PT.to_string(), VIDEO_RTX_PT)
        .build()
}

/// A bin with `element` between ghost pads `sink_0` and `src_0`, as rtpbin's aux contract asks.
fn aux_bin(name: &str, element: &gst::Element) -> Option<gst::Element> {
    let bin = gst::Bin::with_name(name);
    bin.add(element).ok()?;
    let sink = gst::GhostPad::builder_with_target(&element.static_pad("sink")?)
        .ok()?
        .name("sink_0")
        .build();
    let src = gst::GhostPad::builder_with_target(&element.static_pad("src")?)
        .ok()?
        .name("src_0")
        .build();
    bin.add_pad(&sink).ok()?;
    bin.add_pad(&src).ok()?;
    Some(bin.upcast())
}

/// The caps rtpbin asks for when a payload type first shows up (`request-pt-map`).
fn pt_caps(session: u32, pt: u32) -> Option<gst::Caps> {
    let caps = match (session, pt) {
        (0, VIDEO_PT) => gst::Caps::builder("application/x-rtp")
            .field("media", "video")
            .field("clock-rate", VIDEO_CLOCK_RATE)
            .field("encoding-name", "VP8")
            .field("rtcp-fb-nack", true)
            .field("rtcp-fb-nack-pli", true)
            .build(),
        (0, VIDEO_RTX_PT) => gst::Caps::builder("application/x-rtp")
            .field("media", "video")
            .field("clock-rate", VIDEO_CLOCK_RATE)
            .field("encoding-name", "RTX")
            .field("apt", VIDEO_PT as i32)
            .build(),
        (1, AUDIO_PT) => gst::Caps::builder("application/x-rtp")
            .field("media", "audio")
            .field("clock-rate", AUDIO_CLOCK_RATE)
            .field("encoding-name", "OPUS")
            .build(),
        _ => return None,
    };
    Some(caps)
}

const RTX_SENDER: &str = "vrtx_sender";
const RTX_RECEIVER: &str = "vrtx_receiver";

/// How long a packet once resent is not resent again: a repeated request within it is the
/// same loss asked for twice in one burst (or a peer naming one packet over and over). Short,
/// so a retry after a lost resend (a round trip later) still goes.
const RESEND_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_millis(10);

/// Bounds what the peer can make us resend. rtpsession turns every NACK entry into resend
/// requests without limit, and GStreamer 1.22's rtprtxsend queues a copy for each: an
/// authenticated peer repeating one packet in a NACK could make us queue hundreds of megabytes.
/// A packet is resent at most once per [`RESEND_AGAIN_AFTER`], and resends are held to a
/// token bucket of [`RESEND_SHARE`] of the video's current target bitrate (one second of burst,
/// at least [`RESEND_FLOOR`] a second): on a congested path resends must not crowd out the
/// video they repair.
#[derive(Debug)]
struct RtxBudget {
    target_kbps: Arc<AtomicU32>,
    tokens: f64,
    at: std::time::Instant,
    recent: std::collections::VecDeque<(u32, std::time::Instant)>,
}

/// The share of the video target bitrate resends may take.
const RESEND_SHARE: f64 = 0.3;
/// Resends a second allowed whatever the target.
const RESEND_FLOOR: f64 = 5.0;

impl RtxBudget {
    fn new(target_kbps: Arc<AtomicU32>, now: std::time::Instant) -> RtxBudget {
        let mut budget = RtxBudget {
            target_kbps,
            tokens: 0.0,
            at: now,
            recent: std::collections::VecDeque::new(),
        };
        budget.tokens = budget.per_second();
        budget
    }

    fn per_second(&self) -> f64 {
        let kbps = f64::from(self.target_kbps.load(Ordering::Relaxed));
        (kbps * 1000.0 / 8.0 * RESEND_SHARE / f64::from(crate::pipeline::RTP_MTU)).max(RESEND_FLOOR)
    }

    fn allow(&mut self, seqnum: u32, now: std::time::Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|(_, at)| now.saturating_duration_since(*at) >= RESEND_AGAIN_AFTER)
        {
            self.recent.pop_front();
        }
        if self.recent.iter().any(|(seq, _)| *seq == seqnum) {
            return false;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let per_second = self.per_second();
        self.tokens = (self.tokens + elapsed * per_second).min(per_second);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        self.recent.push_back((seqnum, now));
        true
    }
}

/// The repair side of a running pipeline: where to read its statistics.
#[derive(Debug, Default, Clone)]
pub(crate) struct Repair {
    /// Session 0's jitter buffers: the peer's video SSRC has one, and rtpbin makes another for
    /// its retransmission SSRC when that SSRC's RTCP reports arrive (it never gets RTP).
    video_jitterbuffers: Arc<Mutex<Vec<glib::WeakRef<gst::Element>>>>,
    /// Resend requests from the peer refused by the [`RtxBudget`].
    retransmissions_refused: Arc<std::sync::atomic::AtomicU64>,
    /// The video bitrate targets the [`Adapter`] set.
    rate_log: Arc<Mutex<RateLog>>,
    /// The video's target bitrate now, kbit/s, for the [`RtxBudget`].
    target_kbps: Arc<AtomicU32>,
}

/// The video send bitrate over the call: the target now and its changes.
#[derive(Debug, Default)]
struct RateLog {
    now_kbps: Option<u32>,
    audio_fec_percent: u32,
    changes: Vec<crate::stats::RateChange>,
}

/// The changes a call's statistics keep: the first ones and then the latest (a call of hours on
/// a varying path changes its rate thousands of times).
const RATE_CHANGES_KEPT: usize = 256;

impl RateLog {
    fn push(&mut self, at: std::time::Duration, kbps: u32) {
        self.now_kbps = Some(kbps);
        if self.changes.len() >= RATE_CHANGES_KEPT {
            self.changes.remove(RATE_CHANGES_KEPT / 2);
        }
        self.changes.push(crate::stats::RateChange {
            at_s: (at.as_secs_f64() * 10.0).round() / 10.0,
            kbps,
        });
    }
}

fn uint_property(element: &gst::Element, name: &str) -> u64 {
    if element.find_property(name).is_none() {
        return 0;
    }
    let value = element.property_value(name);
    value
        .get::<u32>()
        .map(u64::from)
        .or_else(|_| value.get::<u64>())
        .unwrap_or(0)
}

impl Repair {
    fn video_jitterbuffers(&self) -> Vec<gst::Element> {
        self.video_jitterbuffers
            .lock()
            .map(|all| all.iter().filter_map(|w| w.upgrade()).collect())
            .unwrap_or_default()
    }

    /// The `stats` of each video jitter buffer.
    fn video_jitterbuffer_stats(&self) -> Vec<gst::Structure> {
        self.video_jitterbuffers()
            .iter()
            .filter(|jb| jb.find_property("stats").is_some())
            .filter_map(|jb| jb.property_value("stats").get::<gst::Structure>().ok())
            .collect()
    }

    pub(crate) fn stats(&self, pipeline: &gst::Pipeline, rtpbin: &gst::Element) -> RepairStats {
        let mut out = RepairStats::default();
        if let Some(tx) = pipeline.by_name(RTX_SENDER) {
            out.retransmissions_sent = uint_property(&tx, "num-rtx-packets");
        }
        if let Ok(log) = self.rate_log.lock() {
            out.video_target_kbps = log.now_kbps;
            out.video_target_changes = log.changes.clone();
            out.audio_fec_percent = log.audio_fec_percent;
        }
        out.retransmission_requests_refused = self.retransmissions_refused.load(Ordering::Relaxed);
        for s in self.video_jitterbuffer_stats() {
            let get = |f: &str| s.get::<u64>(f).unwrap_or(0);
            out.retransmissions_requested += get("rtx-count");
            out.retransmissions_recovered += get("rtx-success-count");
            out.video_packets_lost += get("num-lost") + get("num-late");
        }
        for source in session_sources(rtpbin, 0) {
            let get = |f: &str| u64::from(source.get::<u32>(f).unwrap_or(0));
            out.nacks_sent += get("sent-nack-count");
            out.nacks_received += get("recv-nack-count");
            out.keyframe_requests_sent += get("sent-pli-count") + get("sent-fir-count");
            out.keyframe_requests_received += get("recv-pli-count") + get("recv-fir-count");
        }
        out
    }
}

/// Connects the retransmission handlers to `rtpbin`. Must run before session 0 exists.
pub(crate) fn connect(rtpbin: &gst::Element, video_kbps: u32) -> Result<Repair, MediaError> {
    let repair = Repair::default();
    repair.target_kbps.store(video_kbps, Ordering::Relaxed);
    let target_kbps = Arc::clone(&repair.target_kbps);
    let refused = Arc::clone(&repair.retransmissions_refused);
    let missing = |what: &str| MediaError::Pipeline(format!("rtpbin has no `{what}` signal"));
    for signal in [
        "request-aux-sender",
        "request-aux-receiver",
        "new-jitterbuffer",
        "request-pt-map",
    ] {
        if glib::subclass::signal::SignalId::lookup(signal, rtpbin.type_()).is_none() {
            return Err(missing(signal));
        }
    }
    // Signals with a return value must always get one (glib panics on none): an element or
    // caps, or a typed None.
    let session_of = |args: &[glib::Value]| args.get(1).and_then(|v| v.get::<u32>().ok());
    rtpbin.connect("request-aux-sender", false, move |args| {
        let aux = (session_of(args) == Some(0))
            .then(|| {
                let rtx = gst::ElementFactory::make("rtprtxsend")
                    .name(RTX_SENDER)
                    .property("payload-type-map", pt_map())
                    .property("max-size-time", RTX_KEEP_MS)
                    .property("max-size-packets", 0u32)
                    .build()
                    .ok()?;
                let budget = Mutex::new(RtxBudget::new(
                    Arc::clone(&target_kbps),
                    std::time::Instant::now(),
                ));
                let refused = Arc::clone(&refused);
                rtx.static_pad("src")?.add_probe(
                    gst::PadProbeType::EVENT_UPSTREAM,
                    move |_, info| {
                        let Some(gst::PadProbeData::Event(event)) = &info.data else {
                            return gst::PadProbeReturn::Ok;
                        };
                        let Some(seqnum) = event
                            .structure()
                            .filter(|s| s.name() == "GstRTPRetransmissionRequest")
                            .and_then(|s| s.get::<u32>("seqnum").ok())
                        else {
                            return gst::PadProbeReturn::Ok;
                        };
                        let allowed = budget
                            .lock()
                            .map(|mut b| b.allow(seqnum, std::time::Instant::now()))
                            .unwrap_or(false);
                        if allowed {
                            gst::PadProbeReturn::Ok
                        } else {
                            refused.fetch_add(1, Ordering::Relaxed);
                            gst::PadProbeReturn::Drop
                        }
                    },
                );
                aux_bin("vrtx_send", &rtx)
            })
            .flatten();
        Some(aux.to_value())
    });
    rtpbin.connect("request-aux-receiver", false, move |args| {
        let aux = (session_of(args) == Some(0))
            .then(|| {
                // rtprtxreceive's map goes the same way as rtprtxsend's: original -> rtx.
                let rtx = gst::ElementFactory::make("rtprtxreceive")
                    .name(RTX_RECEIVER)
                    .property("payload-type-map", pt_map())
                    .build()
                    .ok()?;
                aux_bin("vrtx_receive", &rtx)
            })
            .flatten();
        Some(aux.to_value())
    });
    let video_jitterbuffers = Arc::clone(&repair.video_jitterbuffers);
    rtpbin.connect("new-jitterbuffer", false, move |args| {
        let jitterbuffer = args.get(1)?.get::<gst::Element>().ok()?;
        let session = args.get(2)?.get::<u32>().ok()?;
        // Only video asks for retransmissions: Opus conceals a lost 20 ms packet better than
        // it could wait for one.
        // Lost-packet events: the depayloader learns of a loss as soon as the jitter buffer
        // gives up, and the Opus decoder conceals or recovers (in-band FEC) the gap.
        jitterbuffer.set_property("do-lost", true);
        if session == 0 {
            jitterbuffer.set_property("do-retransmission", true);
            if let Ok(mut all) = video_jitterbuffers.lock() {
                all.retain(|w| w.upgrade().is_some());
                if all.len() < MAX_STREAMS as usize {
                    all.push(jitterbuffer.downgrade());
                }
            }
        }
        None
    });
    rtpbin.connect("request-pt-map", false, move |args| {
        let pt = args.get(2).and_then(|v| v.get::<u32>().ok());
        let caps = session_of(args)
            .zip(pt)
            .and_then(|(session, pt)| pt_caps(session, pt));
        Some(caps.to_value())
    });
    Ok(repair)
}

fn link(pipeline: &gst::Pipeline, from: (&str, &str), to: (&str, &str)) -> Result<(), MediaError> {
    let element = |name: &str| {
        pipeline.by_name(name).ok_or_else(|| {
            MediaError::Pipeline(format!("element `{name}` is missing from the pipeline"))
        })
    };
    element(from.0)?
        .link_pads(Some(from.1), &element(to.0)?, Some(to.1))
        .map_err(|e| {
            MediaError::Pipeline(format!(
                "linking {}.{} to {}.{}: {e}",
                from.0, from.1, to.0, to.1
            ))
        })
}

/// Links session 0's pads: the receive inputs and RTCP output always, the send side when the
/// pipeline has a video send branch (`vpay`).
pub(crate) fn link_video_session(pipeline: &gst::Pipeline) -> Result<(), MediaError> {
    link(pipeline, ("vrtp_in", "src"), ("rtpbin", "recv_rtp_sink_0"))?;
    link(
        pipeline,
        ("vrtcp_in", "src"),
        ("rtpbin", "recv_rtcp_sink_0"),
    )?;
    link(
        pipeline,
        ("rtpbin", "send_rtcp_src_0"),
        ("vrtcp_out", "sink"),
    )?;
    if pipeline.by_name("vpay").is_some() {
        link(pipeline, ("vpay", "src"), ("rtpbin", "send_rtp_sink_0"))?;
        link(pipeline, ("rtpbin", "send_rtp_src_0"), ("vrtp_out", "sink"))?;
    }
    Ok(())
}

/// Regular RTCP report interval floor (RFC 3550 allows a reduced minimum; 5 s would leave a
/// short call without a round-trip time). Under AVPF no early feedback (NACK, PLI) may go
/// before the first regular report, which comes at 0.5-1.5 times this interval into the call.
const RTCP_MIN_INTERVAL_NS: u64 = 200_000_000;
/// The share of a session's bandwidth RTCP may use. Early feedback may go once per
/// bandwidth-derived report interval (RFC 4585 T_rr): with the RFC 3550 default of 5% of
/// rtpsession's starting estimate (64 kbit/s) and the four sources of a video session (each
/// side's media and retransmission SSRCs), that interval is about a second, and a lost packet's
/// NACK or a keyframe request waits for it. 30% of the video's bitrate gives a few tens of
/// milliseconds, so a NACK and its retry fit in the jitter buffer's wait. The bytes stay few:
/// regular reports keep the 200 ms floor, and early packets go only when there is loss.
const VIDEO_RTCP_FRACTION: f64 = 0.30;

/// RTCP settings of both sessions: report interval floor, and each session's bandwidth (from
/// the configured bitrates, rather than rtpsession's estimate, which starts at 64 kbit/s).
pub(crate) fn tune_sessions(rtpbin: &gst::Element, options: &MediaOptions) {
    if !options.repaired() {
        // The benchmark's baseline: the report floor the pipeline had before repair (1 s).
        for id in 0u32..2 {
            if let Some(session) = internal_session(rtpbin, id) {
                session.set_property("rtcp-min-interval", 1_000_000_000u64);
            }
        }
        return;
    }
    for (id, bits_per_s, fraction) in [
        (
            0u32,
            f64::from(options.video_kbps) * 1000.0,
            VIDEO_RTCP_FRACTION,
        ),
        (1u32, f64::from(options.audio_kbps) * 1000.0, 0.05),
    ] {
        let Some(session) = internal_session(rtpbin, id) else {
            continue;
        };
        if session.find_property("rtcp-min-interval").is_some() {
            session.set_property("rtcp-min-interval", RTCP_MIN_INTERVAL_NS);
        }
        set_session_bandwidth(rtpbin, id, bits_per_s);
        if session.find_property("rtcp-fraction").is_some() {
            session.set_property("rtcp-fraction", fraction);
        }
    }
}

/// How often the [`Adapter`] looks at the peer's reports.
const ADAPT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// How often the [`Adapter`] looks for a new receiver report about our video: each one is
/// acted on as it comes (the RTCP interval is a few hundred milliseconds).
const RATE_EVERY: std::time::Duration = std::time::Duration::from_millis(50);
/// The jitter buffer latency while the peer's video arrives with loss: room for a NACK, its
/// retransmission and a retry or two, on top of the round trip.
const LOSSY_LATENCY_MS: u32 = 120;
/// The most the adapter lets the jitter buffer wait.
const MAX_LATENCY_MS: u32 = 400;
/// Loss (of the peer's video, as we receive it) above which the jitter buffer waits longer.
const LOSSY: f64 = 0.01;
/// Audio loss the peer reports at or above which Opus adds in-band FEC.
const AUDIO_FEC_LOSS: f64 = 0.01;
/// How long audio must arrive without loss before Opus drops its FEC again.
const AUDIO_FEC_HOLD: std::time::Duration = std::time::Duration::from_secs(10);
/// How long the path must stay clean before the jitter buffer goes back to its low latency.
const LATENCY_HOLD: std::time::Duration = std::time::Duration::from_secs(10);

/// The jitter buffer latency for what we see of the path: the low default on a clean path; on
/// a lossy one, enough to ask for a lost packet again once or twice, and at least two round
/// trips.
fn latency_for(loss: f64, rtt_ms: Option<f64>) -> u32 {
    if loss < LOSSY {
        return JITTER_BUFFER_MS;
    }
    let rtt = rtt_ms.unwrap_or(0.0).clamp(0.0, f64::from(MAX_LATENCY_MS)) as u32;
    // In steps of 20 ms, so a round trip that creeps does not re-time the pipeline each tick.
    (LOSSY_LATENCY_MS + (2 * rtt).div_ceil(LATENCY_STEP_MS) * LATENCY_STEP_MS).min(MAX_LATENCY_MS)
}

const LATENCY_STEP_MS: u32 = 20;

/// Adapts repair to the path, from the receive thread: our video jitter buffer's latency from
/// the loss we see in the peer's video. Audio keeps its latency: Opus conceals, it does not
/// wait for resends.
#[derive(Debug)]
pub(crate) struct Adapter {
    enabled: bool,
    repair: Repair,
    started: std::time::Instant,
    /// The video send rate, when this end sends video.
    rate: Option<crate::rate::RateControl>,
    /// Our video's SSRC, and the peer's latest report block about it.
    media_ssrc: Option<u32>,
    last_block: Option<crate::rate::Block>,
    /// The block the last rate decision used, with when it was made and our video datagrams
    /// and bytes sent by then.
    used_block: Option<(crate::rate::Block, std::time::Instant, u64, u64)>,
    next: std::time::Instant,
    next_rate: std::time::Instant,
    latency_ms: u32,
    latency_since: std::time::Instant,
    /// The loss Opus's in-band FEC is planned for now, percent (0: off), and since when loss
    /// last called for it.
    audio_fec: i32,
    audio_fec_since: std::time::Instant,
    /// The peer's video as last counted: (received, lost), and packets too late.
    counted: (u64, i64),
    late: u64,
}

impl Adapter {
    /// `video_kbps` is the configured video bitrate when this end sends video.
    /// `enabled` false (the benchmark's baseline) leaves everything as configured.
    pub(crate) fn new(
        now: std::time::Instant,
        repair: Repair,
        video_kbps: Option<u32>,
        enabled: bool,
    ) -> Adapter {
        Adapter {
            enabled,
            repair,
            started: now,
            rate: video_kbps.map(crate::rate::RateControl::new),
            media_ssrc: None,
            last_block: None,
            used_block: None,
            next: now + ADAPT_EVERY,
            next_rate: now + RATE_EVERY,
            latency_ms: JITTER_BUFFER_MS,
            latency_since: now,
            audio_fec: 0,
            audio_fec_since: now,
            counted: (0, 0),
            late: 0,
        }
    }

    pub(crate) fn tick(
        &mut self,
        now: std::time::Instant,
        pipeline: &gst::Pipeline,
        counters: &crate::stats::Counters,
    ) {
        if !self.enabled {
            return;
        }
        if now >= self.next_rate {
            self.next_rate = now + RATE_EVERY;
            if let Some(rtpbin) = pipeline.by_name("rtpbin") {
                self.adapt_rate(now, pipeline, &rtpbin, counters);
            }
        }
        if now < self.next {
            return;
        }
        self.next = now + ADAPT_EVERY;
        if let Some(rtpbin) = pipeline.by_name("rtpbin") {
            self.adapt_latency(now, pipeline, &rtpbin);
            self.adapt_audio_fec(now, pipeline, &rtpbin);
        }
    }

    /// Opus in-band FEC: on while the peer reports audio loss (from its first report of it,
    /// about a second into a lossy call), off after [`AUDIO_FEC_HOLD`] without. Each packet
    /// then carries a low-rate copy of the one before (SILK LBRR), so a lost packet is rebuilt
    /// from the next; it costs an endpoint about a third more CPU on this pipeline (measured:
    /// 20% -> 28% of a core at 640x480), which a clean call does not pay.
    fn adapt_audio_fec(
        &mut self,
        now: std::time::Instant,
        pipeline: &gst::Pipeline,
        rtpbin: &gst::Element,
    ) {
        let Some(encoder) = pipeline.by_name("aenc") else {
            return;
        };
        let loss = session_sources(rtpbin, 1)
            .iter()
            .filter(|s| s.get::<bool>("have-rb").unwrap_or(false))
            .filter_map(|s| s.get::<u32>("rb-fractionlost").ok())
            .max()
            .map_or(0.0, |f| f64::from(f) / 256.0);
        let expected = if loss >= AUDIO_FEC_LOSS {
            self.audio_fec_since = now;
            // What Opus plans its FEC for: the loss seen, at most 50%, and never so little
            // that the encoder leaves SILK for CELT and sends no FEC.
            ((loss * 100.0).ceil() as i32).clamp(crate::pipeline::AUDIO_FEC_MIN_PERCENT, 50)
        } else if self.audio_fec > 0
            && now.saturating_duration_since(self.audio_fec_since) < AUDIO_FEC_HOLD
        {
            self.audio_fec
        } else {
            0
        };
        if expected != self.audio_fec {
            encoder.set_property("packet-loss-percentage", expected);
            encoder.set_property("inband-fec", expected > 0);
            self.audio_fec = expected;
            if let Ok(mut log) = self.repair.rate_log.lock() {
                log.audio_fec_percent = u32::try_from(expected).unwrap_or(0);
            }
        }
    }

    /// A video RTCP packet from the peer (the receive thread hands each one over).
    pub(crate) fn video_rtcp(&mut self, packet: &[u8]) {
        if let Some(block) = self
            .media_ssrc
            .and_then(|ssrc| crate::rate::report_block(packet, ssrc))
        {
            self.last_block = Some(block);
        }
    }

    /// Our video bitrate, from the peer's receiver reports (see [`crate::rate`]).
    fn adapt_rate(
        &mut self,
        now: std::time::Instant,
        pipeline: &gst::Pipeline,
        rtpbin: &gst::Element,
        counters: &crate::stats::Counters,
    ) {
        let Some(rate) = self.rate.as_mut() else {
            return;
        };
        // Read each time: the payloader may pick its SSRC only once its caps are settled.
        self.media_ssrc = pipeline
            .by_name("vpay")
            .and_then(|p| crate::rate::media_ssrc(&p));
        let Some(block) = self.last_block else {
            return;
        };
        let sent = (
            counters.video_rtp_sent.load(Ordering::Relaxed),
            counters.video_rtp_bytes_sent.load(Ordering::Relaxed),
        );
        // What reached the peer between the block used last time and this one: its packets
        // at the size of what we sent meanwhile.
        let delivered_kbps = self.used_block.and_then(|(before, at, packets, bytes)| {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            let sent_packets = sent.0.saturating_sub(packets);
            (secs > 0.0 && sent_packets > 0 && block.highest_seq != before.highest_seq).then(|| {
                let size = sent.1.saturating_sub(bytes) as f64 / sent_packets as f64;
                block.delivered_since(&before) as f64 * size * 8.0 / secs / 1000.0
            })
        });
        if self
            .used_block
            .is_none_or(|(b, ..)| b.highest_seq != block.highest_seq)
        {
            self.used_block = Some((block, now, sent.0, sent.1));
        }
        let report = crate::rate::Report {
            loss: block.loss,
            rtt_ms: crate::rate::round_trip_ms(rtpbin, 0),
            highest_seq: block.highest_seq,
            delivered_kbps,
        };
        let Some(kbps) = rate.report(report, now) else {
            return;
        };
        if let Some(encoder) = pipeline.by_name("venc") {
            crate::rate::apply_target(&encoder, kbps, rate.max_kbps());
        }
        set_session_bandwidth(rtpbin, 0, f64::from(kbps) * 1000.0);
        self.repair.target_kbps.store(kbps, Ordering::Relaxed);
        if let Ok(mut log) = self.repair.rate_log.lock() {
            log.push(now.saturating_duration_since(self.started), kbps);
        }
    }

    /// Our jitter buffer: longer at once when the peer's video arrives with loss, back to the
    /// default once the path has been clean for a while.
    fn adapt_latency(
        &mut self,
        now: std::time::Instant,
        pipeline: &gst::Pipeline,
        rtpbin: &gst::Element,
    ) {
        let video = crate::stats::rtp_session_stats(rtpbin, 0, crate::pipeline::VIDEO_CLOCK_RATE);
        // Packets that came too late for the jitter buffer are as lost to the picture as those
        // that never came: a queue building on the path shows first as these.
        let late: u64 = self
            .repair
            .video_jitterbuffer_stats()
            .iter()
            .map(|s| s.get::<u64>("num-late").unwrap_or(0))
            .sum();
        let received = video.packets_received.saturating_sub(self.counted.0);
        let lost = u64::try_from(video.packets_lost.saturating_sub(self.counted.1)).unwrap_or(0)
            + late.saturating_sub(self.late);
        self.counted = (video.packets_received, video.packets_lost);
        self.late = late;
        let expected = received + lost;
        if expected == 0 {
            return;
        }
        let wanted = latency_for(lost as f64 / expected as f64, video.rtt_ms);
        let next = if wanted >= self.latency_ms {
            if wanted > JITTER_BUFFER_MS {
                self.latency_since = now;
            }
            wanted
        } else if now.saturating_duration_since(self.latency_since) >= LATENCY_HOLD {
            wanted
        } else {
            self.latency_ms
        };
        if next != self.latency_ms {
            for jb in self.repair.video_jitterbuffers() {
                jb.set_property("latency", next);
            }
            let _ = pipeline.recalculate_latency();
            self.latency_ms = next;
        }
    }
}

/// Sets session `id`'s bandwidth (bits/s), from which RTCP's share is reckoned.
fn set_session_bandwidth(rtpbin: &gst::Element, id: u32, bits_per_s: f64) {
    let Some(session) = internal_session(rtpbin, id) else {
        return;
    };
    if session.find_property("bandwidth").is_some() {
        session.set_property("bandwidth", bits_per_s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resends_are_once_per_packet_and_within_budget() {
        let t0 = std::time::Instant::now();
        let ms = |n| t0 + std::time::Duration::from_millis(n);
        // 1000 kbit/s: 31 resends a second.
        let target = Arc::new(AtomicU32::new(1000));
        let mut b = RtxBudget::new(Arc::clone(&target), t0);
        assert!(b.allow(7, ms(0)));
        assert!(!b.allow(7, ms(5)), "the same packet again at once");
        assert!(
            b.allow(7, ms(150)),
            "again once the first resend had time to arrive"
        );
        let allowed = (100..400).filter(|&seq| b.allow(seq, ms(200))).count();
        assert_eq!(
            allowed, 31,
            "the bucket's second of burst (it refilled meanwhile)"
        );
        assert!(!b.allow(1000, ms(200)));
        assert!(b.allow(1000, ms(240)), "it refills");
        // The target falls to 100 kbit/s: the floor of 5 a second.
        target.store(100, Ordering::Relaxed);
        assert!(!b.allow(1001, ms(300)));
        assert!(b.allow(1001, ms(500)));
    }

    #[test]
    fn the_jitter_buffer_waits_longer_only_on_a_lossy_path() {
        assert_eq!(latency_for(0.0, None), JITTER_BUFFER_MS);
        assert_eq!(latency_for(0.009, Some(80.0)), JITTER_BUFFER_MS);
        assert_eq!(latency_for(0.05, None), LOSSY_LATENCY_MS);
        assert_eq!(latency_for(0.05, Some(30.0)), LOSSY_LATENCY_MS + 60);
        assert_eq!(latency_for(0.05, Some(31.0)), LOSSY_LATENCY_MS + 80);
        assert_eq!(latency_for(0.2, Some(900.0)), MAX_LATENCY_MS);
    }
}
