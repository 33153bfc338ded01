//! The GStreamer pipeline description of a call, built from [`MediaOptions`].
//!
//! ```text
//! send:  videotestsrc|v4l2src -> I420 WxH@fps (latency stamp) -> vp8enc -> rtpvp8pay pt=96
//!            -> rtpbin.send_rtp_sink_0 ; send_rtp_src_0 -> appsink "vrtp_out"
//!        audiotestsrc|autoaudiosrc -> 48 kHz mono -> opusenc CBR 20 ms -> rtpopuspay pt=111
//!            -> rtpbin.send_rtp_sink_1 ; send_rtp_src_1 -> appsink "artp_out"
//!        rtpbin.send_rtcp_src_{0,1} -> appsink "vrtcp_out" / "artcp_out"
//! recv:  appsrc "vrtp_in"/"vrtcp_in"/"artp_in"/"artcp_in" -> rtpbin.recv_rtp(c)p_sink_{0,1}
//!        rtpbin recv_rtp_src_0_* -> rtpvp8depay -> vp8dec -> I420 [-> queue] -> videoconvert -> "vsink"
//!        rtpbin recv_rtp_src_1_* -> rtpopusdepay -> opusdec -> audioconvert -> audioresample -> sink
//! ```
//! Session 0 is video, session 1 audio. The appsinks and appsrcs are where the session module
//! seals and opens packets.

use crate::options::{AudioSource, MediaOptions, Sink, VideoSource};
use crate::stats::JITTER_BUFFER_MS;

pub(crate) const VIDEO_PT: u32 = 96;
/// rtpbin makes at most this many streams (each a jitter buffer and its threads) per session:
/// the peer's media SSRC and its retransmission SSRC. RTCP is not SSRC-pinned, and without a
/// bound a peer sending reports from ever new SSRCs would make ever more.
pub(crate) const MAX_STREAMS: u32 = 2;
/// The receive video branch's sink and the converter in front of it.
pub(crate) const VIDEO_SINK: &str = "vsink";
pub(crate) const VIDEO_CONVERT: &str = "vconvert";
pub(crate) const AUDIO_PT: u32 = 111;
/// The `volume` element right after the audio source: muting the microphone.
pub(crate) const AUDIO_MUTE: &str = "amute";
/// The least loss Opus plans its in-band FEC for once the peer reports audio loss, percent
/// (FEC is off in a clean call, as WebRTC leaves it: it costs CPU; see `repair::Adapter`).
/// Told of less than 8%, libopus 1.3 codes a 440 Hz tone at 32 kbit/s as CELT, which carries
/// no FEC at all (measured: 5% → 0 of 101 packets with FEC, 8% → 100 of 101; see
/// `opus::tests`).
pub(crate) const AUDIO_FEC_MIN_PERCENT: i32 = 10;
pub(crate) const VIDEO_CLOCK_RATE: i32 = 90_000;
pub(crate) const AUDIO_CLOCK_RATE: i32 = 48_000;
/// RTP packet size limit: sealed datagrams stay well under a 1280-byte IPv6 minimum MTU path
/// once the 26 bytes of framing and tag and the IP/UDP headers are added.
pub(crate) const RTP_MTU: u32 = 1200;

/// The largest keyframe, in percent of an average frame: libwebrtc's rule (half the optimal
/// buffer, 600 ms, times the frame rate / 10, i.e. 900% at 30 fps). An unbounded keyframe is
/// a burst that overflows a slow link's queue, and its loss asks for another keyframe.
const MAX_INTRA_PERCENT: u32 = 900;
/// Keyframe requests closer than this to the last one are served by that one: a peer (or a
/// bad link) asking for one on every frame would otherwise get nothing but keyframes.
const KEYFRAME_REQUEST_GAP_NS: u64 = 250_000_000;

/// Encoder threads as libwebrtc's VP8 wrapper picks them from picture size and core count.
pub(crate) fn vp8_threads(width: u32, height: u32, cores: usize) -> usize {
    let pixels = u64::from(width) * u64::from(height);
    if pixels >= 1920 * 1080 && cores > 8 {
        8
    } else if pixels > 1280 * 960 && cores >= 6 {
        3
    } else if pixels > 640 * 480 && cores >= 3 {
        2
    } else {
        1
    }
}

/// The receive thread must never block on a full input queue, and without a leaky type an
/// appsrc that does not block keeps queuing past max-bytes: the receive thread drops what
/// would not fit (see `session.rs`), and leaky-type drops the oldest should anything else
/// overfill it.
fn appsrc(name: &str, caps: &str) -> String {
    format!(
        "appsrc name={name} is-live=true format=time do-timestamp=true block=false \
         max-bytes=2000000 leaky-type=downstream caps=\"{caps}\""
    )
}

fn appsink(name: &str) -> String {
    format!("appsink name={name} sync=false async=false emit-signals=false")
}

/// A window title as the pipeline description can carry it: letters, digits, spaces and
/// `.-_—` (a username is `[a-z0-9._-]`), nothing that could end the quoting.
pub(crate) fn window_title(title: &str) -> String {
    title
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '.' | '-' | '_' | '—'))
        .take(120)
        .collect()
}

/// The caps of the peer's video RTP. `rtcp-fb-nack-pli` is what makes rtpsession turn a
/// keyframe request from the depayloader into an RTCP PLI to the sender; without it the request
/// is silently dropped. (With `rtcp-fb-ccm-fir` too it would send FIR, which the depayloader's
/// all-headers requests select; PLI is the repair request.)
pub(crate) fn video_receive_caps(repaired: bool) -> String {
    let feedback = if repaired {
        ",rtcp-fb-nack=(boolean)true,rtcp-fb-nack-pli=(boolean)true"
    } else {
        ""
    };
    format!(
        "application/x-rtp,media=(string)video,clock-rate=(int){VIDEO_CLOCK_RATE},\
         encoding-name=(string)VP8,payload=(int){VIDEO_PT}{feedback}"
    )
}

/// The VP8 encoder, named `venc`, set up as libwebrtc sets up libvpx for real-time calls:
/// constant bitrate with a one-second buffer, no look-ahead, error resilience. Frame dropping
/// is off at the configured bitrate (every frame is sent, as before bandwidth adaptation) and
/// turned on by [`crate::rate::apply_target`] while the target is below it.
pub(crate) fn video_encoder(options: &MediaOptions, cores: usize) -> String {
    let threads = vp8_threads(options.width, options.height, cores);
    let partitions = match threads {
        1 => 0,
        2 => 1,
        _ => 2,
    };
    format!(
        "vp8enc name=venc deadline=1 cpu-used=-6 end-usage=cbr target-bitrate={vbps} \
         error-resilient=default keyframe-max-dist={kf} lag-in-frames=0 threads={threads} \
         token-partitions={partitions} buffer-size=1000 buffer-initial-size=500 \
         buffer-optimal-size=600 undershoot=100 overshoot=15 min-quantizer=2 max-quantizer=56{adaptive}",
        vbps = u64::from(options.video_kbps) * 1000,
        kf = 2 * options.fps,
        adaptive = if options.repaired() {
            format!(
                " max-intra-bitrate={MAX_INTRA_PERCENT} \
                 min-force-key-unit-interval={KEYFRAME_REQUEST_GAP_NS}"
            )
        } else {
            String::new()
        },
    )
}

/// `window_sink` is the video sink element used when `options.sink` is [`Sink::Window`].
pub(crate) fn describe(options: &MediaOptions, window_sink: &str) -> String {
    let (w, h, fps) = (options.width, options.height, options.fps);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // AVPF: receivers ask for a keyframe (RTCP PLI) when packets are lost, instead of waiting
    // up to two seconds for the next one.
    let mut d = vec![format!(
        "rtpbin name=rtpbin latency={JITTER_BUFFER_MS} rtp-profile=avpf max-streams={MAX_STREAMS}"
    )];

    // Receive: four appsrcs into rtpbin, depayload+decode chains linked on pad-added.
    // Session 0 (video) is linked to rtpbin in code, after the retransmission handlers are
    // connected (see `repair::link_video_session`): rtpbin asks for them when it makes the
    // session, which a link here would do during parsing.
    d.push(appsrc("vrtp_in", &video_receive_caps(options.repaired())));
    d.push(appsrc("vrtcp_in", "application/x-rtcp"));
    d.push(format!(
        "{} ! rtpbin.recv_rtp_sink_1",
        appsrc(
            "artp_in",
            &format!(
                "application/x-rtp,media=(string)audio,clock-rate=(int){AUDIO_CLOCK_RATE},\
                 encoding-name=(string)OPUS,payload=(int){AUDIO_PT}"
            )
        )
    ));
    d.push(format!(
        "{} ! rtpbin.recv_rtcp_sink_1",
        appsrc("artcp_in", "application/x-rtcp")
    ));
    d.push(appsink("vrtcp_out"));
    d.push(format!("rtpbin.send_rtcp_src_1 ! {}", appsink("artcp_out")));

    let (vsink, asink) = match options.sink {
        // The window sinks (ximagesink, xvimagesink) name their window after the stream's
        // title tag, which taginject sets.
        Sink::Window => (
            match options.window_title.as_deref().map(window_title) {
                Some(title) if !title.is_empty() => format!(
                    "taginject tags=\"title=\\\"{title}\\\"\" ! {window_sink} name={VIDEO_SINK}"
                ),
                _ => format!("{window_sink} name={VIDEO_SINK}"),
            },
            "autoaudiosink",
        ),
        // With the latency probe the video sink behaves as a display: it holds each frame until
        // its running time plus the pipeline latency (sync=true) and renders it then, where the
        // probe reads the stamp (handoff). It has no QoS, so late frames are rendered late, not
        // dropped: they count in the latency and nothing feeds back to the decoder. Without the
        // probe it renders on arrival, as before.
        Sink::Null => (
            format!(
                "fakesink name={VIDEO_SINK} sync={probe} async=false signal-handoffs={probe}",
                probe = options.latency_probe
            ),
            "fakesink sync=false async=false",
        ),
    };
    // A sink that syncs blocks its streaming thread until each frame's presentation time; a
    // queue in front of it keeps the decoder on its own thread, decoding frames as they arrive
    // rather than one presentation interval late. Bounded by time only (250 ms, well above the
    // ~70 ms a frame waits), so frame size does not matter; when a sink falls that far behind
    // the decoder waits for it, as without the queue.
    let vqueue = if options.sink == Sink::Window || options.latency_probe {
        "! queue name=vqueue max-size-buffers=0 max-size-bytes=0 max-size-time=250000000 "
    } else {
        ""
    };
    // The decoder's output is forced to I420 so the latency probe can read it.
    d.push(format!(
        "rtpvp8depay name=vdepay request-keyframe=true wait-for-keyframe=true ! vp8dec name=vdec ! capsfilter caps=video/x-raw,format=I420 \
         {vqueue}! videoconvert name={VIDEO_CONVERT} ! {vsink}"
    ));
    let opus_repair = if options.repaired() {
        "plc=true use-inband-fec=true "
    } else {
        ""
    };
    d.push(format!(
        "rtpopusdepay name=adepay ! opusdec name=adec {opus_repair}! audioconvert ! audioresample ! {asink}"
    ));

    // Send video.
    let vsrc = match options.video {
        VideoSource::Test => Some(
            // A scrolling pattern so the encoder has motion to code, as with a real camera.
            "videotestsrc is-live=true pattern=smpte horizontal-speed=2".to_string(),
        ),
        VideoSource::Camera => Some("v4l2src ! videoconvert ! videoscale ! videorate".to_string()),
        VideoSource::None => None,
    };
    if let Some(vsrc) = vsrc {
        d.push(format!(
            "{vsrc} ! capsfilter name=vcaps caps=\"video/x-raw,format=I420,width={w},height={h},\
             framerate={fps}/1\" \
             ! {} \
             ! rtpvp8pay name=vpay pt={VIDEO_PT} mtu={RTP_MTU} picture-id-mode=15-bit \
             {sink}",
            video_encoder(options, cores),
            sink = appsink("vrtp_out"),
        ));
    }

    // Send audio. The volume element is the microphone's mute: silence keeps flowing, so the
    // peer's jitter buffer and our bitrate adaptation see no gap.
    let asrc = match options.audio {
        AudioSource::Test => {
            Some("audiotestsrc is-live=true wave=sine freq=440 samplesperbuffer=960")
        }
        AudioSource::Mic => Some("autoaudiosrc"),
        AudioSource::None => None,
    };
    // Off until the peer reports loss (the adapter turns it on); the baseline never has it.
    let opus_fec = "inband-fec=false packet-loss-percentage=0";
    if let Some(asrc) = asrc {
        d.push(format!(
            "{asrc} ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=1 \
             ! volume name={AUDIO_MUTE} \
             ! opusenc name=aenc bitrate={abps} bitrate-type=cbr frame-size=20 audio-type=voice dtx=false \
               {opus_fec} \
             ! rtpopuspay name=apay pt={AUDIO_PT} mtu={RTP_MTU} \
             ! rtpbin.send_rtp_sink_1 \
             rtpbin.send_rtp_src_1 ! {sink}",
            abps = u64::from(options.audio_kbps) * 1000,
            sink = appsink("artp_out"),
        ));
    }
    d.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_follow_libwebrtc() {
        assert_eq!(vp8_threads(640, 480, 2), 1);
        assert_eq!(vp8_threads(1280, 720, 4), 2);
        assert_eq!(vp8_threads(1280, 720, 2), 1);
        assert_eq!(vp8_threads(1920, 1080, 16), 8);
    }

    #[test]
    fn none_sources_leave_out_their_send_branch() {
        let d = describe(
            &MediaOptions {
                video: VideoSource::None,
                audio: AudioSource::None,
                ..MediaOptions::default()
            },
            "ximagesink",
        );
        assert!(!d.contains("vp8enc") && !d.contains("opusenc"));
        assert!(d.contains("vp8dec") && d.contains("opusdec"));
        let d = describe(&MediaOptions::default(), "ximagesink");
        assert!(!d.contains("ximagesink"));
        assert!(d.contains("vp8enc") && d.contains("bitrate-type=cbr"));
        // The four receive queues drop rather than grow past max-bytes.
        assert_eq!(d.matches("leaky-type=downstream").count(), 4);
    }

    #[test]
    fn probe_makes_the_null_video_sink_wait_for_presentation() {
        let d = describe(&MediaOptions::default(), "ximagesink");
        assert!(d.contains("fakesink name=vsink sync=false async=false signal-handoffs=false"));
        assert!(!d.contains("queue"));
        let d = describe(
            &MediaOptions {
                latency_probe: true,
                ..MediaOptions::default()
            },
            "ximagesink",
        );
        assert!(d.contains("fakesink name=vsink sync=true async=false signal-handoffs=true"));
        assert!(d.contains("I420 ! queue name=vqueue"));
        // The audio sink is untouched.
        assert!(d.contains("audioresample ! fakesink sync=false async=false"));
        let d = describe(
            &MediaOptions {
                sink: Sink::Window,
                latency_probe: true,
                ..MediaOptions::default()
            },
            "ximagesink",
        );
        assert!(d.contains("videoconvert name=vconvert ! ximagesink name=vsink"));
        let d = describe(
            &MediaOptions {
                sink: Sink::Window,
                window_title: Some("SMVS — call with bob\" ! filesink location=/x".into()),
                ..MediaOptions::default()
            },
            "ximagesink",
        );
        assert!(
            d.contains(r#"taginject tags="title=\"SMVS — call with bob  filesink locationx\"" ! ximagesink name=vsink"#),
            "{d}"
        );
    }

    #[test]
    fn a_titled_window_pipeline_parses() {
        gstreamer::init().unwrap();
        if gstreamer::ElementFactory::find("taginject").is_none() {
            panic!("taginject (gstreamer1.0-plugins-good) is missing: run make deps");
        }
        let d = describe(
            &MediaOptions {
                sink: Sink::Window,
                window_title: Some("SMVS — call with bob".into()),
                ..MediaOptions::default()
            },
            "fakesink",
        );
        let pipeline = gstreamer::parse::launch(&d).unwrap();
        let bin = pipeline.downcast::<gstreamer::Bin>().unwrap();
        use gstreamer::prelude::*;
        let inject = bin
            .iterate_recurse()
            .into_iter()
            .flatten()
            .find(|e| e.factory().is_some_and(|f| f.name() == "taginject"))
            .expect("a taginject element");
        drop(inject);
    }
}
