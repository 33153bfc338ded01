//! Call statistics: counters updated by the pipeline's pad probes, the send callbacks and the
//! receive thread, plus RTCP-derived figures read from `rtpbin`'s sessions.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;

use crate::consent::PathKind;
use crate::probe::{GlassToGlass, Histogram};

/// The jitter buffer latency configured on `rtpbin`, in milliseconds.
pub const JITTER_BUFFER_MS: u32 = 50;

/// Lock-free counters shared by the streaming threads and the receive thread.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub video_frames_sent: AtomicU64,
    pub video_frames_received: AtomicU64,
    pub video_frames_decoded: AtomicU64,
    pub audio_packets_sent: AtomicU64,
    pub audio_packets_decoded: AtomicU64,
    pub packets_sent: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub send_errors: AtomicU64,
    pub packets_received: AtomicU64,
    pub bytes_received: AtomicU64,
    pub auth_failed: AtomicU64,
    pub replayed: AtomicU64,
    pub malformed: AtomicU64,
    pub seal_ns: AtomicU64,
    pub open_ns: AtomicU64,
    pub hellos_sent: AtomicU64,
    pub hellos_received: AtomicU64,
    pub held_packets: AtomicU64,
    pub held_dropped: AtomicU64,
    pub rtcp_withheld: AtomicU64,
    pub consent_lost: AtomicU64,
    pub ssrc_rejected: AtomicU64,
    pub receive_queue_dropped: AtomicU64,
    /// Video RTP datagrams sent and their bytes (retransmissions included): what the peer's
    /// reports of packets received are turned into a bitrate with.
    pub video_rtp_sent: AtomicU64,
    pub video_rtp_bytes_sent: AtomicU64,
    /// Capture to presentation (the video sink's clock deadline): `glass_to_glass_ms`.
    pub presented_latency: Mutex<Histogram>,
    /// Capture to decoded picture (out of `vp8dec`): `decode_latency_ms`.
    pub decoded_latency: Mutex<Histogram>,
    /// Gaps between decoded video frames.
    pub freezes: Mutex<FreezeMeter>,
    /// The peer's audio packets: arrived, lost, rebuilt.
    pub audio: Mutex<AudioLossMeter>,
    /// Our host's relay answered our bind.
    pub relay_bound: std::sync::atomic::AtomicBool,
    /// The path our media goes on, and its changes.
    pub paths: Mutex<PathLog>,
}

/// One change of the path our media goes on.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct PathChange {
    /// Seconds since the media started, to a tenth.
    pub at_s: f64,
    /// The new path; None when consent was lost and media is held.
    pub path: Option<PathKind>,
}

/// The path now and how it changed: at most [`PATH_CHANGES_KEPT`] changes, the first ones and
/// the latest.
#[derive(Debug, Default)]
pub(crate) struct PathLog {
    pub current: Option<PathKind>,
    pub changes: Vec<PathChange>,
}

/// Changes of path kept in the statistics.
pub const PATH_CHANGES_KEPT: usize = 32;

impl PathLog {
    pub(crate) fn record(&mut self, change: PathChange) {
        self.current = change.path;
        if self.changes.len() >= PATH_CHANGES_KEPT {
            self.changes.remove(PATH_CHANGES_KEPT / 2);
        }
        self.changes.push(change);
    }
}

/// Video freezes as WebRTC counts them (`freezeCount`, `totalFreezesDuration`): a gap between
/// two decoded frames longer than three frame intervals and longer than a frame interval plus
/// 150 ms, measured against the nominal frame rate.
#[derive(Debug, Default)]
pub(crate) struct FreezeMeter {
    threshold: Duration,
    last: Option<std::time::Instant>,
    figures: Freezes,
}

/// Video freezes seen by the receiver (see [`FreezeMeter`]). The wait for the first frame is
/// not a freeze; the time after the last one is not counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Freezes {
    pub count: u64,
    pub total_ms: f64,
    pub longest_ms: f64,
}

impl FreezeMeter {
    pub(crate) fn new(fps: u32) -> FreezeMeter {
        let interval = Duration::from_secs(1) / fps.max(1);
        FreezeMeter {
            threshold: (interval * 3).max(interval + Duration::from_millis(150)),
            ..FreezeMeter::default()
        }
    }

    pub(crate) fn frame(&mut self, at: std::time::Instant) {
        if let Some(last) = self.last.replace(at) {
            let gap = at.saturating_duration_since(last);
            if gap > self.threshold {
                let ms = gap.as_secs_f64() * 1000.0;
                self.figures.count += 1;
                self.figures.total_ms += ms;
                self.figures.longest_ms = self.figures.longest_ms.max(ms);
            }
        }
    }
}

/// The peer's audio as the depayloader sees it, from the RTP sequence numbers the jitter buffer
/// lets through in order: every gap was lost (the jitter buffer gave up on it), and the last
/// packet of each gap is rebuilt from the in-band FEC of the packet after it when that packet
/// carries an LBRR frame (see [`crate::opus`]).
#[derive(Debug, Default)]
pub(crate) struct AudioLossMeter {
    last_seq: Option<u16>,
    pub received: u64,
    pub lost: u64,
    pub recovered: u64,
}

/// A forward jump longer than this (2 s of 20-ms packets) is the stream starting over, not loss.
const AUDIO_RESYNC: u16 = 100;

impl AudioLossMeter {
    /// A packet `seq`; `fec` when it carries FEC for the one before it.
    pub(crate) fn packet(&mut self, seq: u16, fec: bool) {
        self.received += 1;
        if let Some(last) = self.last_seq {
            let step = seq.wrapping_sub(last);
            // Late or repeated (the jitter buffer should let neither through): counted as
            // received, and the sequence stays where it was.
            if step == 0 || step >= 0x8000 {
                return;
            }
            let gap = step - 1;
            if gap > 0 && gap <= AUDIO_RESYNC {
                self.lost += u64::from(gap);
                self.recovered += u64::from(fec);
            }
        }
        self.last_seq = Some(seq);
    }
}

/// What a snapshot reads from the pipeline itself rather than from the counters.
#[derive(Debug, Default)]
pub(crate) struct PipelineFigures {
    pub video: RtpStreamStats,
    pub audio: RtpStreamStats,
    pub video_frames_presented: u64,
    pub consent_ms: Option<f64>,
    pub repair: RepairStats,
}

pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// RTCP view of what the peer sends us on one RTP session (video or audio).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RtpStreamStats {
    /// RTP packets received from the peer's source(s) on this session.
    pub packets_received: u64,
    /// Packets the jitter buffer expected but never got (RFC 3550 cumulative loss; the negative
    /// values RFC 3550 allows for duplicates read as 0).
    pub packets_lost: i64,
    /// Interarrival jitter of the peer's stream, in milliseconds.
    pub jitter_ms: Option<f64>,
    /// Round-trip time from the peer's receiver reports about our stream; None until one
    /// arrived (the first RTCP reports go out about a second into the call).
    pub rtt_ms: Option<f64>,
}

/// A snapshot of one endpoint's call. `serde_json::to_string_pretty` gives a readable object.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CallStats {
    /// Seconds since the media started.
    pub duration_s: f64,
    /// Whether packets were sealed (false only in the benchmark's baseline).
    pub encrypted: bool,
    /// VP8 frames out of our encoder.
    pub video_frames_sent: u64,
    /// VP8 frames reassembled from the peer's packets (out of the depayloader).
    pub video_frames_received: u64,
    /// Frames out of our VP8 decoder.
    pub video_frames_decoded: u64,
    pub video_fps_decoded: f64,
    /// Frames our video sink rendered (its `stats` "rendered" count). A null sink drops none
    /// (it has no QoS), so this trails `video_frames_decoded` only by the frames still waiting
    /// for their presentation time when the call ended; a window sink may also drop frames
    /// that reach it too late to be shown.
    pub video_frames_presented: u64,
    /// Opus packets out of our encoder.
    pub audio_packets_sent: u64,
    /// Audio buffers out of our Opus decoder, concealed losses included.
    pub audio_packets_decoded: u64,
    /// The peer's Opus packets that reached our decoder (in time, retransmitted or not).
    pub audio_packets_received: u64,
    /// The peer's Opus packets lost for good, and those of them rebuilt from the next packet's
    /// in-band FEC; the rest were concealed (PLC).
    pub audio_packets_lost: u64,
    pub audio_packets_recovered: u64,
    /// Datagrams and their bytes (framing and tag included) sent to the peer.
    pub packets_sent: u64,
    pub bytes_sent: u64,
    /// Datagrams that could not be sent (socket errors).
    pub send_errors: u64,
    /// Datagrams accepted from the peer, and their bytes.
    pub packets_received: u64,
    pub bytes_received: u64,
    pub bitrate_sent_kbps: f64,
    pub bitrate_received_kbps: f64,
    /// Datagrams dropped: failed authentication (wrong key, tampered, not ours).
    pub auth_failed: u64,
    /// Datagrams dropped: already accepted, or older than the replay window.
    pub replayed: u64,
    /// Datagrams dropped: not our framing at all, or, in a call relayed only, not from our
    /// relay.
    pub malformed: u64,
    /// Milliseconds from the start of the media (as `duration_s`) until the peer first echoed
    /// our hello's challenge, i.e. until we could send it media; None while it never has.
    pub consent_ms: Option<f64>,
    /// Consent hellos sent and authenticated hellos received (counted in `packets_sent` and
    /// `packets_received` too).
    pub hellos_sent: u64,
    pub hellos_received: u64,
    /// RTP packets held back for lack of consent (sent once it came, unless dropped), and
    /// those dropped: the oldest beyond 512 packets or older than 2 s.
    pub held_packets: u64,
    pub held_dropped: u64,
    /// RTCP packets not sent for lack of consent.
    pub rtcp_withheld: u64,
    /// Times consent lapsed (10 s without an echo of our checks on any path).
    pub consent_lost: u64,
    /// The path our media goes on now: `direct` (between the two devices' own addresses),
    /// `reflexive` (straight, through a NAT), `relayed` (through both users' hosts); None while
    /// no path is confirmed.
    pub path: Option<PathKind>,
    /// Each change of path, first ones and latest (see [`PATH_CHANGES_KEPT`]).
    pub path_changes: Vec<PathChange>,
    /// Our host's relay answered our claim on the call's allocation.
    pub relay_bound: bool,
    /// Authenticated RTP packets dropped for an SSRC other than the first one seen on their
    /// stream (video or audio).
    pub ssrc_rejected: u64,
    /// Authenticated packets dropped because the pipeline's input queue for their stream was
    /// full (the pipeline is not keeping up).
    pub receive_queue_dropped: u64,
    /// RTCP figures of the video (session 0) and audio (session 1) streams.
    pub video: RtpStreamStats,
    pub audio: RtpStreamStats,
    /// Round-trip time (video session's, else audio's), ms.
    pub rtt_ms: Option<f64>,
    /// An estimate, not a measurement: `rtt_ms / 2 + jitter buffer latency` (50 ms). It leaves
    /// out capture, encoding, decoding and display time; see `glass_to_glass_ms` for those.
    pub one_way_latency_estimate_ms: Option<f64>,
    /// Measured glass-to-glass latency of the peer's frames, from capture (the stamp written
    /// before our peer's encoder) to the moment our video sink presents the frame, when the
    /// latency probe is on at both ends. Valid only if both endpoints share a clock (same
    /// machine); see [`crate::probe`].
    ///
    /// With [`crate::Sink::Null`] the probe's sink syncs to the pipeline clock as a display
    /// does, each frame waiting for its running time plus the pipeline latency (the 50 ms
    /// jitter buffer and the decoder's latency), and the stamp is read when the sink renders
    /// the frame. With [`crate::Sink::Window`] it is the time the window sink is scheduled to
    /// show the frame (its clock deadline, or the frame's arrival when later); the window's
    /// own display delay (compositor, vertical sync, panel) is not included.
    pub glass_to_glass_ms: Option<GlassToGlass>,
    /// Capture to decoded picture (out of our VP8 decoder), same probe and same caveats: what
    /// `glass_to_glass_ms` measured before it waited for the presentation time. The difference
    /// between the two is the time a frame waits for its display deadline.
    pub decode_latency_ms: Option<GlassToGlass>,
    /// Time spent sealing and opening datagrams, in nanoseconds (framing copies included).
    pub seal_ns: u64,
    pub open_ns: u64,
    /// Loss repair: NACKs, retransmissions, keyframe requests.
    pub repair: RepairStats,
    /// Gaps in the decoded video longer than a glitch.
    pub freezes: Freezes,
}

fn kbps(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 * 8.0 / secs / 1000.0
    } else {
        0.0
    }
}

impl Counters {
    pub(crate) fn snapshot(
        &self,
        elapsed: Duration,
        encrypted: bool,
        figures: PipelineFigures,
    ) -> CallStats {
        let PipelineFigures {
            video,
            audio,
            video_frames_presented,
            consent_ms,
            repair,
        } = figures;
        let secs = elapsed.as_secs_f64();
        let decoded = get(&self.video_frames_decoded);
        let rtt_ms = video.rtt_ms.or(audio.rtt_ms);
        let summary = |h: &Mutex<Histogram>| h.lock().ok().and_then(|h| h.summary());
        CallStats {
            duration_s: secs,
            encrypted,
            video_frames_sent: get(&self.video_frames_sent),
            video_frames_received: get(&self.video_frames_received),
            video_frames_decoded: decoded,
            video_fps_decoded: if secs > 0.0 {
                decoded as f64 / secs
            } else {
                0.0
            },
            video_frames_presented,
            audio_packets_sent: get(&self.audio_packets_sent),
            audio_packets_decoded: get(&self.audio_packets_decoded),
            audio_packets_received: self.audio.lock().map_or(0, |a| a.received),
            audio_packets_lost: self.audio.lock().map_or(0, |a| a.lost),
            audio_packets_recovered: self.audio.lock().map_or(0, |a| a.recovered),
            packets_sent: get(&self.packets_sent),
            bytes_sent: get(&self.bytes_sent),
            send_errors: get(&self.send_errors),
            packets_received: get(&self.packets_received),
            bytes_received: get(&self.bytes_received),
            bitrate_sent_kbps: kbps(get(&self.bytes_sent), secs),
            bitrate_received_kbps: kbps(get(&self.bytes_received), secs),
            auth_failed: get(&self.auth_failed),
            replayed: get(&self.replayed),
            malformed: get(&self.malformed),
            consent_ms,
            hellos_sent: get(&self.hellos_sent),
            hellos_received: get(&self.hellos_received),
            held_packets: get(&self.held_packets),
            held_dropped: get(&self.held_dropped),
            rtcp_withheld: get(&self.rtcp_withheld),
            consent_lost: get(&self.consent_lost),
            path: self.paths.lock().ok().and_then(|p| p.current),
            path_changes: self
                .paths
                .lock()
                .map(|p| p.changes.clone())
                .unwrap_or_default(),
            relay_bound: self.relay_bound.load(Ordering::Relaxed),
            ssrc_rejected: get(&self.ssrc_rejected),
            receive_queue_dropped: get(&self.receive_queue_dropped),
            video,
            audio,
            rtt_ms,
            one_way_latency_estimate_ms: rtt_ms.map(|rtt| rtt / 2.0 + f64::from(JITTER_BUFFER_MS)),
            glass_to_glass_ms: summary(&self.presented_latency),
            decode_latency_ms: summary(&self.decoded_latency),
            seal_ns: get(&self.seal_ns),
            open_ns: get(&self.open_ns),
            repair,
            freezes: self.freezes.lock().map(|f| f.figures).unwrap_or_default(),
        }
    }
}

/// Frames `sink` rendered so far, from the `stats` property every `GstBaseSink` has; 0 when
/// it has none.
pub(crate) fn frames_rendered(sink: &gst::Element) -> u64 {
    if sink.find_property("stats").is_none() {
        return 0;
    }
    sink.property_value("stats")
        .get::<gst::Structure>()
        .ok()
        .and_then(|s| s.get::<u64>("rendered").ok())
        .unwrap_or(0)
}

/// What loss repair did in a call, one endpoint's view. "Sent" and "received" are about
/// requests and repairs this endpoint sent or got.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct RepairStats {
    /// RTCP NACK packets (each may name several lost packets) sent to the peer and received.
    pub nacks_sent: u64,
    pub nacks_received: u64,
    /// Keyframe requests (RTCP PLI and FIR) sent to the peer and received from it.
    pub keyframe_requests_sent: u64,
    pub keyframe_requests_received: u64,
    /// Video packets our jitter buffer asked to have resent, and how many of those came back in
    /// time.
    pub retransmissions_requested: u64,
    pub retransmissions_recovered: u64,
    /// Packets we resent at the peer's request.
    pub retransmissions_sent: u64,
    /// Video packets the jitter buffer gave up on (lost for good, or too late).
    pub video_packets_lost: u64,
    /// The video bitrate we send at now (bandwidth adaptation), kbit/s; None until the first
    /// change from the configured bitrate.
    pub video_target_kbps: Option<u32>,
    /// Each change of that target: seconds into the call and the new kbit/s.
    pub video_target_changes: Vec<RateChange>,
    /// The loss our Opus in-band FEC is planned for now, percent; 0 while it is off (it is on
    /// only while the peer reports audio loss).
    pub audio_fec_percent: u32,
    /// Resend requests from the peer we refused: the same packet again within 100 ms, or over
    /// the resend budget (half the video bitrate).
    pub retransmission_requests_refused: u64,
}

/// rtpbin's internal session `id` (the RTPSession object, with its RTCP settings and stats).
pub(crate) fn internal_session(rtpbin: &gst::Element, id: u32) -> Option<glib::Object> {
    glib::subclass::signal::SignalId::lookup("get-internal-session", rtpbin.type_())?;
    rtpbin.emit_by_name::<Option<glib::Object>>("get-internal-session", &[&id])
}

/// The per-source statistics of rtpbin's session `id`.
pub(crate) fn session_sources(rtpbin: &gst::Element, id: u32) -> Vec<gst::Structure> {
    let Some(session) = internal_session(rtpbin, id) else {
        return Vec::new();
    };
    if session.find_property("stats").is_none() {
        return Vec::new();
    }
    let Ok(stats) = session.property_value("stats").get::<gst::Structure>() else {
        return Vec::new();
    };
    let Ok(sources) = stats.get::<glib::ValueArray>("source-stats") else {
        return Vec::new();
    };
    sources
        .iter()
        .filter_map(|v| v.get::<gst::Structure>().ok())
        .collect()
}

/// A change of the video send bitrate.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RateChange {
    pub at_s: f64,
    pub kbps: u32,
}

/// Reads session `id`'s source statistics from `rtpbin`.
pub(crate) fn rtp_session_stats(
    rtpbin: &gst::Element,
    id: u32,
    default_clock_rate: i32,
) -> RtpStreamStats {
    let mut out = RtpStreamStats::default();
    let mut jitter_max: Option<f64> = None;
    for s in session_sources(rtpbin, id) {
        // Receiver-report blocks about our own stream show up on the peer's source (GStreamer
        // 1.22) or on our internal one (older releases): take the round trip from either.
        if s.get::<bool>("have-rb").unwrap_or(false) {
            if let Ok(rt) = s.get::<u32>("rb-round-trip") {
                if rt > 0 {
                    out.rtt_ms = Some(f64::from(rt) * 1000.0 / 65536.0);
                }
            }
        }
        if s.get::<bool>("internal").unwrap_or(false) {
            continue;
        }
        let received = s.get::<u64>("packets-received").unwrap_or(0);
        if received == 0 {
            continue;
        }
        out.packets_received += received;
        out.packets_lost += i64::from(s.get::<i32>("packets-lost").unwrap_or(0).max(0));
        let rate = s
            .get::<i32>("clock-rate")
            .ok()
            .filter(|r| *r > 0)
            .unwrap_or(default_clock_rate);
        if let (Ok(j), true) = (s.get::<u32>("jitter"), rate > 0) {
            let ms = f64::from(j) * 1000.0 / f64::from(rate);
            jitter_max = Some(jitter_max.map_or(ms, |m: f64| m.max(ms)));
        }
    }
    out.jitter_ms = jitter_max;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_gaps_count_as_lost_and_their_last_packet_as_recovered() {
        let mut m = AudioLossMeter::default();
        for seq in [65533u16, 65534, 0, 1, 4, 5, 6, 8] {
            m.packet(seq, true);
        }
        // Gaps: 65535 (one lost), 2-3 (two lost), 7 (one lost).
        assert_eq!((m.received, m.lost, m.recovered), (8, 4, 3));
        // A packet from the past is not a gap, and the next one is counted once.
        m.packet(3, true);
        m.packet(10, true);
        assert_eq!((m.lost, m.recovered), (5, 4));
        // A packet without FEC rebuilds nothing; a jump of more than 100 is a restart.
        m.packet(12, false);
        m.packet(500, true);
        assert_eq!((m.received, m.lost, m.recovered), (12, 6, 4));
    }

    #[test]
    fn a_freeze_is_a_gap_over_three_frames_and_150_ms() {
        let mut f = FreezeMeter::new(30);
        let t0 = std::time::Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        for at in [0, 33, 66, 200, 233, 500, 533] {
            f.frame(ms(at));
        }
        // 66 -> 200 is 134 ms: under 183 ms; 233 -> 500 is a freeze.
        assert_eq!(f.figures.count, 1);
        assert_eq!(f.figures.longest_ms, 267.0);
    }
}
