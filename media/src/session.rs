//! A running call's media: the GStreamer pipeline, the send callbacks that seal each RTP/RTCP
//! packet and send it from the streaming thread, and the receive thread that opens datagrams,
//! drops replays and feeds the pipeline.
//!
//! Nothing but hellos goes to any of the peer's addresses until the peer has echoed a challenge
//! sent there ([`crate::consent`]): until then the send callbacks hold RTP back and drop RTCP,
//! and the receive thread, which also runs the checks of every path, flushes the held RTP when
//! a path is chosen. Media then goes on the chosen path: straight to an address, or framed for
//! our host's relay ([`crate::reach`]).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use gstreamer as gst;
use gstreamer::glib;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;
use smvs_crypto::AeadKey;

use crate::consent::{Change, Held, Path, Paths};
use crate::options::{MediaOptions, Sink};
use crate::pipeline::{describe, AUDIO_CLOCK_RATE, VIDEO_CLOCK_RATE, VIDEO_CONVERT, VIDEO_SINK};
use crate::probe::{self, Histogram};
use crate::reach::{relay_frame, FromRelay, Reach, RelayLink};
use crate::repair::Repair;
use crate::stats::{
    add, bump, frames_rendered, rtp_session_stats, CallStats, Counters, FreezeMeter, PathChange,
    PipelineFigures,
};
use crate::wire::{self, Hello, Replay, ReplayWindow, Stream, WireError};
use crate::{MediaError, MediaKeys};

/// How long the receive thread blocks in `recv_from`, i.e. the longest `stop` waits for it.
const RECV_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_DATAGRAM: usize = 65_536;
/// The largest RTCP compound packet accepted from the peer.
const MAX_RTCP: usize = 1500;

/// State shared with the streaming threads and the receive thread.
#[derive(Debug, Default)]
struct Shared {
    counters: Counters,
    error: Mutex<Option<String>>,
    latency_changed: AtomicBool,
    stop: AtomicBool,
    /// When the peer first gave consent.
    consent_at: Mutex<Option<Instant>>,
}

/// The sending half: what every appsink callback needs, and the receive thread for hellos and
/// consent.
struct Sender {
    socket: Arc<UdpSocket>,
    /// The path media goes on (meaningful while `consented`).
    route: Mutex<Path>,
    /// Our relay: its address and the allocation media through it is framed for.
    relay: Option<(SocketAddr, smvs_transport::callport::AllocId)>,
    key: Option<AeadKey>,
    seq: AtomicU64,
    shared: Arc<Shared>,
    /// The peer consents to receive media. Set and cleared with `held` locked.
    consented: AtomicBool,
    /// RTP waiting for consent. Packets are sealed when they are sent, so sequence numbers
    /// stay in sending order.
    held: Mutex<Held>,
}

impl Sender {
    /// An RTP or RTCP packet from the pipeline: sent if the peer consents, else RTP is held and
    /// RTCP dropped.
    fn send_media(&self, stream: Stream, packet: &[u8]) {
        if self.consented.load(Ordering::Acquire) {
            return self.send(stream, packet);
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if self.consented.load(Ordering::Acquire) {
            // Consent came while we waited for the lock; what was held has been sent.
            drop(held);
            return self.send(stream, packet);
        }
        let c = &self.shared.counters;
        if stream.is_rtp() {
            bump(&c.held_packets);
            add(
                &c.held_dropped,
                held.push(Instant::now(), stream, packet.to_vec()),
            );
        } else {
            bump(&c.rtcp_withheld);
        }
    }

    /// The peer consents on `path`: send what was held, in order, then everything as it
    /// comes (on a change of path, only the route changes).
    fn grant(&self, path: Path) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        *self.route.lock().unwrap_or_else(PoisonError::into_inner) = path;
        if self.consented.load(Ordering::Acquire) {
            return;
        }
        let now = Instant::now();
        if let Ok(mut at) = self.shared.consent_at.lock() {
            at.get_or_insert(now);
        }
        let (fresh, stale) = held.drain(now);
        add(&self.shared.counters.held_dropped, stale);
        for (stream, packet) in fresh {
            self.send(stream, &packet);
        }
        self.consented.store(true, Ordering::Release);
    }

    /// Consent lapsed: hold media again.
    fn revoke(&self) {
        let _held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        self.consented.store(false, Ordering::Release);
    }

    fn hello(&self, path: Path, hello: &Hello) {
        bump(&self.shared.counters.hellos_sent);
        self.send_on(path, Stream::Hello, &hello.encode());
    }

    fn send(&self, stream: Stream, packet: &[u8]) {
        let route = *self.route.lock().unwrap_or_else(PoisonError::into_inner);
        self.send_on(route, stream, packet);
    }

    fn send_on(&self, path: Path, stream: Stream, packet: &[u8]) {
        let c = &self.shared.counters;
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let sealed = wire::seal(self.key.as_ref(), seq, stream, packet);
        add(&c.seal_ns, started.elapsed().as_nanos() as u64);
        let Ok(datagram) = sealed else {
            bump(&c.send_errors);
            return;
        };
        let sent = match (path, self.relay) {
            (Path::Direct(to), _) => self.socket.send_to(&datagram, to),
            (Path::Relayed, Some((relay, alloc))) => self
                .socket
                .send_to(&relay_frame(alloc, &datagram), relay)
                .map(|_| datagram.len()),
            (Path::Relayed, None) => return bump(&c.send_errors),
        };
        match sent {
            Ok(n) => {
                bump(&c.packets_sent);
                add(&c.bytes_sent, n as u64);
                if stream == Stream::VideoRtp {
                    bump(&c.video_rtp_sent);
                    add(&c.video_rtp_bytes_sent, n as u64);
                }
            }
            // The peer may not be listening yet or any more (ICMP unreachable): count and go on.
            Err(_) => bump(&c.send_errors),
        }
    }
}

/// One endpoint's media for one call.
pub struct MediaSession {
    pipeline: gst::Pipeline,
    rtpbin: gst::Element,
    repair: Repair,
    shared: Arc<Shared>,
    receiver: Option<JoinHandle<()>>,
    started: Instant,
    options: MediaOptions,
    stopped: bool,
}

impl std::fmt::Debug for MediaSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaSession")
            .field("options", &self.options)
            .field("started", &self.started)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

fn element(bin: &gst::Pipeline, name: &str) -> Result<gst::Element, MediaError> {
    bin.by_name(name).ok_or_else(|| {
        MediaError::Pipeline(format!("element `{name}` is missing from the pipeline"))
    })
}

fn app_src(bin: &gst::Pipeline, name: &str) -> Result<gst_app::AppSrc, MediaError> {
    element(bin, name)?
        .downcast::<gst_app::AppSrc>()
        .map_err(|_| MediaError::Pipeline(format!("`{name}` is not an appsrc")))
}

fn pad(element: &gst::Element, name: &str) -> Result<gst::Pad, MediaError> {
    element
        .static_pad(name)
        .ok_or_else(|| MediaError::Pipeline(format!("`{}` has no pad `{name}`", element.name())))
}

/// Counts every buffer (or every buffer of a list) crossing `pad`.
fn count_buffers(pad: &gst::Pad, shared: &Arc<Shared>, counter: fn(&Counters) -> &AtomicU64) {
    let shared = Arc::clone(shared);
    pad.add_probe(
        gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
        move |_, info| {
            let n = match &info.data {
                Some(gst::PadProbeData::Buffer(_)) => 1,
                Some(gst::PadProbeData::BufferList(list)) => list.len() as u64,
                _ => 0,
            };
            add(counter(&shared.counters), n);
            gst::PadProbeReturn::Ok
        },
    );
}

fn frame_size(pad: &gst::Pad) -> Option<(u32, u32)> {
    let caps = pad.current_caps()?;
    let s = caps.structure(0)?;
    if s.get::<&str>("format").ok()? != "I420" {
        return None;
    }
    let w = u32::try_from(s.get::<i32>("width").ok()?).ok()?;
    let h = u32::try_from(s.get::<i32>("height").ok()?).ok()?;
    Some((w, h))
}

/// Sender side of the latency probe: stamp raw frames before the encoder.
fn stamp_frames(pad: &gst::Pad) {
    pad.add_probe(gst::PadProbeType::BUFFER, |pad, info| {
        let Some((w, h)) = frame_size(pad) else {
            return gst::PadProbeReturn::Ok;
        };
        if let Some(gst::PadProbeData::Buffer(buffer)) = &mut info.data {
            let buffer = buffer.make_mut();
            if let Ok(mut map) = buffer.map_writable() {
                probe::stamp_i420(map.as_mut_slice(), w, h, probe::now_ms32());
            }
        }
        gst::PadProbeReturn::Ok
    });
}

/// Records into `hist` the latency of the stamped frame in `buffer` (caps from `pad`), as seen
/// at wall-clock time `seen_ms` (see [`probe::now_ms32`]).
fn record_stamp(pad: &gst::Pad, buffer: &gst::BufferRef, seen_ms: u32, hist: &Mutex<Histogram>) {
    let Some((w, h)) = frame_size(pad) else {
        return;
    };
    let Ok(map) = buffer.map_readable() else {
        return;
    };
    if let Some(ms) =
        probe::read_i420(map.as_slice(), w, h).and_then(|s| probe::latency_ms(s, seen_ms))
    {
        if let Ok(mut hist) = hist.lock() {
            hist.record(ms);
        }
    }
}

/// Receiver side of the latency probe, decode time: read the stamps after the decoder.
fn read_stamps_decoded(pad: &gst::Pad, shared: &Arc<Shared>) {
    let shared = Arc::clone(shared);
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
            let now = probe::now_ms32();
            record_stamp(pad, buffer, now, &shared.counters.decoded_latency);
        }
        gst::PadProbeReturn::Ok
    });
}

/// Receiver side of the latency probe, presentation time, null sink: the `fakesink` (sync=true,
/// signal-handoffs=true) emits `handoff` when it renders a frame, i.e. after waiting on the
/// clock for the frame's presentation time; read the stamp then.
fn read_stamps_rendered(sink: &gst::Element, shared: &Arc<Shared>) -> Result<(), MediaError> {
    if glib::subclass::signal::SignalId::lookup("handoff", sink.type_()).is_none() {
        return Err(MediaError::Pipeline(format!(
            "`{}` has no handoff signal",
            sink.name()
        )));
    }
    let shared = Arc::clone(shared);
    sink.connect("handoff", false, move |args| {
        let now = probe::now_ms32();
        let buffer = args.get(1).and_then(|v| v.get::<gst::Buffer>().ok());
        let pad = args.get(2).and_then(|v| v.get::<gst::Pad>().ok());
        if let (Some(buffer), Some(pad)) = (buffer, pad) {
            record_stamp(&pad, &buffer, now, &shared.counters.presented_latency);
        }
        None
    });
    Ok(())
}

fn int_property<T: for<'a> glib::value::FromValue<'a> + 'static>(
    element: &gst::Element,
    name: &str,
) -> Option<T> {
    element.find_property(name)?;
    element.property_value(name).get::<T>().ok()
}

/// How long from now `sink` (a `GstBaseSink` with sync=true) will hold `buffer`, which is on
/// its way to it through `pad`, before rendering it: as `GstBaseSink` computes its clock
/// deadline, the buffer's running time + the pipeline latency + `ts-offset` - `render-delay`,
/// less the clock's running time now; zero when the buffer is already late. None when any of
/// those is unknown (no clock yet, no segment, no timestamp).
fn presentation_wait(
    sink: &gst::Element,
    pad: &gst::Pad,
    buffer: &gst::BufferRef,
    latency: gst::ClockTime,
) -> Option<Duration> {
    let segment = pad.sticky_event::<gst::event::Segment>(0)?;
    let segment = segment.segment().downcast_ref::<gst::ClockTime>()?;
    let running = segment.to_running_time(buffer.pts()?)?;
    let clock = sink.clock()?;
    let now = clock.time().checked_sub(sink.base_time()?)?;
    let ts_offset = int_property::<i64>(sink, "ts-offset").unwrap_or(0);
    let render_delay = int_property::<u64>(sink, "render-delay").unwrap_or(0);
    let mut deadline = running.nseconds().saturating_add(latency.nseconds());
    deadline = if ts_offset < 0 {
        deadline.saturating_sub(ts_offset.unsigned_abs())
    } else {
        deadline.saturating_add(ts_offset.unsigned_abs())
    };
    deadline = deadline.saturating_sub(render_delay);
    Some(Duration::from_nanos(
        deadline.saturating_sub(now.nseconds()),
    ))
}

/// The latency the pipeline configures on its sinks: the largest minimum latency of its sinks
/// (what `GstBin` distributes), or the latency set on the pipeline when that is larger.
fn pipeline_latency(pipeline: &gst::Pipeline) -> Option<gst::ClockTime> {
    let mut query = gst::query::Latency::new();
    if !pipeline.query(&mut query) {
        return None;
    }
    let (_live, min, _max) = query.result();
    Some(pipeline.latency().map_or(min, |set| set.max(min)))
}

/// How often the window probe asks the pipeline for its latency.
const LATENCY_REFRESH: Duration = Duration::from_secs(1);

/// Receiver side of the latency probe, presentation time, window sink. A window sink renders
/// in its own code, with no signal after its clock wait, so the stamp is read on `pad` (in
/// front of the converter before the sink, where frames are still I420) and the latency
/// recorded is to the moment the sink is scheduled to show the frame: its clock deadline (see
/// [`presentation_wait`]), or now when the frame is already late. Not included: the
/// converter's time for a frame that reaches the window after its deadline, and the window's
/// own display delay (compositor, vertical sync, panel).
fn read_stamps_scheduled(
    pad: &gst::Pad,
    sink: &gst::Element,
    pipeline: &gst::Pipeline,
    shared: &Arc<Shared>,
) {
    let shared = Arc::clone(shared);
    let sink = sink.downgrade();
    let pipeline = pipeline.downgrade();
    let cached: Mutex<Option<(Instant, gst::ClockTime)>> = Mutex::new(None);
    pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
        let Some(gst::PadProbeData::Buffer(buffer)) = &info.data else {
            return gst::PadProbeReturn::Ok;
        };
        let now = probe::now_ms32();
        let latency = cached.lock().ok().and_then(|mut cached| {
            if cached.is_none_or(|(at, _)| at.elapsed() >= LATENCY_REFRESH) {
                if let Some(l) = pipeline.upgrade().and_then(|p| pipeline_latency(&p)) {
                    *cached = Some((Instant::now(), l));
                }
            }
            *cached
        });
        let wait = match (sink.upgrade(), latency) {
            (Some(sink), Some((_, l))) => presentation_wait(&sink, pad, buffer, l),
            _ => None,
        };
        if let Some(wait) = wait {
            let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
            record_stamp(
                pad,
                buffer,
                now.wrapping_add(wait_ms),
                &shared.counters.presented_latency,
            );
        }
        gst::PadProbeReturn::Ok
    });
}

fn message_text(msg: &gst::MessageRef) -> Option<String> {
    let src = msg
        .src()
        .map(|s| s.path_string().to_string())
        .unwrap_or_else(|| "pipeline".to_string());
    match msg.view() {
        gst::MessageView::Error(e) => Some(format!("{src}: {}", e.error())),
        _ => None,
    }
}

impl MediaSession {
    /// Starts the call's media, straight to `peer` and nowhere else: [`MediaSession::start_on`]
    /// with [`Reach::direct`].
    pub fn start(
        socket: UdpSocket,
        peer: SocketAddr,
        keys: MediaKeys,
        options: MediaOptions,
    ) -> Result<MediaSession, MediaError> {
        MediaSession::start_on(socket, Reach::direct(peer), keys, options)
    }

    /// Starts the call's media.
    ///
    /// `socket` is already bound (its address, and what its NAT makes of it, were advertised
    /// to the peer); `reach` says where the peer may be. Every packet is sealed with `keys`
    /// (unless the benchmark's baseline turned `encrypt` off). Only small hellos go anywhere
    /// until the peer answers one on some path (see [`crate::wire::Hello`]); the media
    /// produced meanwhile is held, up to about two seconds of it, and sent then.
    pub fn start_on(
        socket: UdpSocket,
        reach: Reach,
        keys: MediaKeys,
        options: MediaOptions,
    ) -> Result<MediaSession, MediaError> {
        options.validate()?;
        crate::plugins::check_plugins(&options)?;
        socket
            .set_read_timeout(Some(RECV_TIMEOUT))
            .map_err(|source| MediaError::Socket {
                what: "given a read timeout",
                source,
            })?;
        socket
            .set_nonblocking(false)
            .map_err(|source| MediaError::Socket {
                what: "made blocking",
                source,
            })?;
        let socket = Arc::new(socket);
        let MediaKeys { send, recv } = keys;
        let (send_key, recv_key) = if options.encrypted() {
            (Some(send), Some(recv))
        } else {
            (None, None)
        };

        let window_sink = match options.sink {
            Sink::Window => crate::plugins::pick_video_sink()?,
            Sink::Null => "fakesink",
        };
        let pipeline = gst::parse::launch(&describe(&options, window_sink))
            .map_err(|e| MediaError::Pipeline(e.to_string()))?
            .downcast::<gst::Pipeline>()
            .map_err(|_| MediaError::Pipeline("the description did not give a pipeline".into()))?;
        let shared = Arc::new(Shared::default());
        let rtpbin = element(&pipeline, "rtpbin")?;
        let repair = if options.repaired() {
            crate::repair::connect(&rtpbin, options.video_kbps)?
        } else {
            Repair::default()
        };
        crate::repair::link_video_session(&pipeline)?;
        if let Ok(mut freezes) = shared.counters.freezes.lock() {
            *freezes = FreezeMeter::new(options.fps);
        }

        let session = MediaSession {
            pipeline: pipeline.clone(),
            rtpbin: rtpbin.clone(),
            repair,
            shared: Arc::clone(&shared),
            receiver: None,
            started: Instant::now(),
            options: options.clone(),
            stopped: false,
        };
        // From here on, dropping `session` on an error tears the pipeline down.
        let relay = reach.relay.as_ref().map(|g| (g.address, g.alloc));
        let sender = session.wire_up(&socket, relay, send_key)?;
        let mut session = session;

        let bus = pipeline
            .bus()
            .ok_or_else(|| MediaError::Pipeline("the pipeline has no bus".into()))?;
        {
            let shared = Arc::clone(&shared);
            bus.set_sync_handler(move |_, msg| {
                match msg.view() {
                    gst::MessageView::Error(_) => {
                        if let (Some(text), Ok(mut slot)) = (message_text(msg), shared.error.lock())
                        {
                            slot.get_or_insert(text);
                        }
                    }
                    gst::MessageView::Latency(_) => {
                        shared.latency_changed.store(true, Ordering::Relaxed)
                    }
                    _ => {}
                }
                // Nobody pops this bus: drop every message so none accumulate.
                gst::BusSyncReply::Drop
            });
        }

        let inputs = Inputs {
            vrtp: app_src(&pipeline, "vrtp_in")?,
            vrtcp: app_src(&pipeline, "vrtcp_in")?,
            artp: app_src(&pipeline, "artp_in")?,
            artcp: app_src(&pipeline, "artcp_in")?,
        };
        if pipeline.set_state(gst::State::Playing).is_err() {
            let why = session
                .error()
                .unwrap_or_else(|| "an element refused to start (no further detail)".into());
            return Err(MediaError::Start(why));
        }
        session.started = Instant::now();
        // The receive thread starts once the appsrcs run: it sends the first hello, and the
        // peer's answer may bring its held media (first keyframe included) right away, which
        // appsrcs still stopped would refuse. Datagrams that came earlier wait in the socket.
        let receiver = Receiver {
            socket,
            key: recv_key,
            window: ReplayWindow::new(),
            inputs,
            shared: Arc::clone(&shared),
            pipeline: pipeline.downgrade(),
            paths: Paths::new(
                &reach.paths(),
                reach.behind_nat,
                reach.relay_only,
                session.started,
            ),
            relay_only: reach.relay_only,
            relay: reach
                .relay
                .clone()
                .map(|grant| RelayLink::new(grant, session.started)),
            started: session.started,
            sender,
            ssrc: [None; 3],
            read_timeout: RECV_TIMEOUT,
            adapter: crate::repair::Adapter::new(
                session.started,
                session.repair.clone(),
                (options.video != crate::options::VideoSource::None).then_some(options.video_kbps),
                options.repaired(),
            ),
        };
        session.receiver = Some(
            std::thread::Builder::new()
                .name("smvs-media-rx".into())
                .spawn(move || receiver.run())
                .map_err(MediaError::Thread)?,
        );
        Ok(session)
    }

    /// Appsink callbacks, pad probes, rtpbin's dynamic pads and session settings. Returns the
    /// sender the callbacks share, for the receive thread.
    fn wire_up(
        &self,
        socket: &Arc<UdpSocket>,
        relay: Option<(SocketAddr, smvs_transport::callport::AllocId)>,
        key: Option<AeadKey>,
    ) -> Result<Arc<Sender>, MediaError> {
        let pipeline = &self.pipeline;
        let shared = &self.shared;
        let sender = Arc::new(Sender {
            socket: Arc::clone(socket),
            route: Mutex::new(Path::Relayed),
            relay,
            key,
            seq: AtomicU64::new(0),
            shared: Arc::clone(shared),
            consented: AtomicBool::new(false),
            held: Mutex::new(Held::default()),
        });
        for (name, stream) in [
            ("vrtp_out", Stream::VideoRtp),
            ("vrtcp_out", Stream::VideoRtcp),
            ("artp_out", Stream::AudioRtp),
            ("artcp_out", Stream::AudioRtcp),
        ] {
            let Some(found) = pipeline.by_name(name) else {
                continue; // that direction's send branch is left out
            };
            let sink = found
                .downcast::<gst_app::AppSink>()
                .map_err(|_| MediaError::Pipeline(format!("`{name}` is not an appsink")))?;
            let sender = Arc::clone(&sender);
            sink.set_callbacks(
                gst_app::AppSinkCallbacks::builder()
                    .new_sample(move |sink| {
                        let sample = sink.pull_sample().map_err(|_| gst::FlowError::Flushing)?;
                        if let Some(list) = sample.buffer_list() {
                            for buffer in list.iter() {
                                if let Ok(map) = buffer.map_readable() {
                                    sender.send_media(stream, map.as_slice());
                                }
                            }
                        }
                        if let Some(buffer) = sample.buffer() {
                            if let Ok(map) = buffer.map_readable() {
                                sender.send_media(stream, map.as_slice());
                            }
                        }
                        Ok(gst::FlowSuccess::Ok)
                    })
                    .build(),
            );
        }

        // Counters.
        if let Some(venc) = pipeline.by_name("venc") {
            count_buffers(&pad(&venc, "src")?, shared, |c| &c.video_frames_sent);
        }
        if let Some(aenc) = pipeline.by_name("aenc") {
            count_buffers(&pad(&aenc, "src")?, shared, |c| &c.audio_packets_sent);
        }
        count_buffers(&pad(&element(pipeline, "vdepay")?, "src")?, shared, |c| {
            &c.video_frames_received
        });
        let vdec = element(pipeline, "vdec")?;
        count_buffers(&pad(&vdec, "src")?, shared, |c| &c.video_frames_decoded);
        {
            let shared = Arc::clone(shared);
            pad(&vdec, "src")?.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
                if let Ok(mut freezes) = shared.counters.freezes.lock() {
                    freezes.frame(Instant::now());
                }
                gst::PadProbeReturn::Ok
            });
        }
        count_buffers(&pad(&element(pipeline, "adec")?, "src")?, shared, |c| {
            &c.audio_packets_decoded
        });
        {
            let shared = Arc::clone(shared);
            pad(&element(pipeline, "adepay")?, "sink")?.add_probe(
                gst::PadProbeType::BUFFER,
                move |_, info| {
                    if let Some(gst::PadProbeData::Buffer(buffer)) = &info.data {
                        if let Some((seq, fec)) = opus_packet(buffer) {
                            if let Ok(mut audio) = shared.counters.audio.lock() {
                                audio.packet(seq, fec);
                            }
                        }
                    }
                    gst::PadProbeReturn::Ok
                },
            );
        }

        // Latency probe.
        if self.options.latency_probe {
            if let Some(vcaps) = pipeline.by_name("vcaps") {
                stamp_frames(&pad(&vcaps, "src")?);
            }
            read_stamps_decoded(&pad(&vdec, "src")?, shared);
            match self.options.sink {
                Sink::Null => read_stamps_rendered(&element(pipeline, VIDEO_SINK)?, shared)?,
                Sink::Window => read_stamps_scheduled(
                    &pad(&element(pipeline, VIDEO_CONVERT)?, "sink")?,
                    &element(pipeline, VIDEO_SINK)?,
                    pipeline,
                    shared,
                ),
            }
        }

        // The peer's streams appear as rtpbin pads once their first packets arrive.
        let vdepay = element(pipeline, "vdepay")?.downgrade();
        let adepay = element(pipeline, "adepay")?.downgrade();
        self.rtpbin.connect_pad_added(move |_, new_pad| {
            let name = new_pad.name();
            let target = if name.starts_with("recv_rtp_src_0_") {
                vdepay.upgrade()
            } else if name.starts_with("recv_rtp_src_1_") {
                adepay.upgrade()
            } else {
                None
            };
            let Some(sink) = target.and_then(|e| e.static_pad("sink")) else {
                return;
            };
            if !sink.is_linked() {
                // A failure leaves that stream undecoded; the counters show it.
                let _ = new_pad.link(&sink);
            }
        });

        crate::repair::tune_sessions(&self.rtpbin, &self.options);
        Ok(sender)
    }

    /// Mutes or unmutes what we send of our audio (silence keeps flowing). Returns false when
    /// the call sends no audio.
    pub fn set_audio_muted(&self, muted: bool) -> bool {
        match self.pipeline.by_name(crate::pipeline::AUDIO_MUTE) {
            Some(volume) => {
                volume.set_property("mute", muted);
                true
            }
            None => false,
        }
    }

    /// Whether our audio is muted.
    pub fn audio_muted(&self) -> bool {
        self.pipeline
            .by_name(crate::pipeline::AUDIO_MUTE)
            .is_some_and(|volume| volume.property::<bool>("mute"))
    }

    /// A live snapshot of the call's statistics.
    pub fn stats(&self) -> CallStats {
        self.shared.counters.snapshot(
            self.started.elapsed(),
            self.options.encrypted(),
            self.pipeline_figures(),
        )
    }

    fn pipeline_figures(&self) -> PipelineFigures {
        PipelineFigures {
            video: rtp_session_stats(&self.rtpbin, 0, VIDEO_CLOCK_RATE),
            audio: rtp_session_stats(&self.rtpbin, 1, AUDIO_CLOCK_RATE),
            video_frames_presented: self.frames_presented(),
            consent_ms: self.consent_ms(),
            repair: self.repair.stats(&self.pipeline, &self.rtpbin),
        }
    }

    fn consent_ms(&self) -> Option<f64> {
        let at = (*self.shared.consent_at.lock().ok()?)?;
        Some(at.saturating_duration_since(self.started).as_secs_f64() * 1000.0)
    }

    fn frames_presented(&self) -> u64 {
        self.pipeline
            .by_name(VIDEO_SINK)
            .map_or(0, |sink| frames_rendered(&sink))
    }

    /// The first error any pipeline element reported (e.g. no display for the video window),
    /// for the caller to report and end the call.
    pub fn error(&self) -> Option<String> {
        self.shared.error.lock().ok().and_then(|e| e.clone())
    }

    /// Stops the media: pipeline to NULL, receive thread joined, socket and pipeline released.
    /// Returns the final statistics.
    pub fn stop(mut self) -> CallStats {
        let mut figures = self.pipeline_figures();
        let elapsed = self.started.elapsed();
        self.shutdown();
        // Consent may have come while the figures were read.
        figures.consent_ms = self.consent_ms();
        self.shared
            .counters
            .snapshot(elapsed, self.options.encrypted(), figures)
    }

    fn shutdown(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let _ = self.pipeline.set_state(gst::State::Null);
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(handle) = self.receiver.take() {
            let _ = handle.join();
        }
        if let Some(bus) = self.pipeline.bus() {
            bus.unset_sync_handler();
        }
        for name in ["vrtp_out", "vrtcp_out", "artp_out", "artcp_out"] {
            if let Some(sink) = self
                .pipeline
                .by_name(name)
                .and_then(|e| e.downcast::<gst_app::AppSink>().ok())
            {
                // Drops the callbacks and with them the last reference to the socket.
                sink.set_callbacks(gst_app::AppSinkCallbacks::builder().build());
            }
        }
    }
}

// smvsctl moves sessions between threads.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<MediaSession>();
    send_sync::<CallStats>();
};

impl Drop for MediaSession {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct Inputs {
    vrtp: gst_app::AppSrc,
    vrtcp: gst_app::AppSrc,
    artp: gst_app::AppSrc,
    artcp: gst_app::AppSrc,
}

/// The receive thread's state.
struct Receiver {
    socket: Arc<UdpSocket>,
    key: Option<AeadKey>,
    window: ReplayWindow,
    inputs: Inputs,
    shared: Arc<Shared>,
    pipeline: glib::WeakRef<gst::Pipeline>,
    paths: Paths,
    relay: Option<RelayLink>,
    /// Only the relay is listened to.
    relay_only: bool,
    started: Instant,
    sender: Arc<Sender>,
    adapter: crate::repair::Adapter,
    /// The SSRC of the peer's video, audio and video retransmission RTP: the first one seen
    /// on each.
    ssrc: [Option<u32>; 3],
    read_timeout: Duration,
}

/// The sequence number of the Opus RTP packet in `buffer`, and whether its Opus frame carries
/// in-band FEC for the packet before it (see [`crate::opus`]).
fn opus_packet(buffer: &gst::BufferRef) -> Option<(u16, bool)> {
    let map = buffer.map_readable().ok()?;
    let first = *map.first()?;
    if first >> 6 != 2 {
        return None;
    }
    let seq = u16::from_be_bytes(map.get(2..4)?.try_into().ok()?);
    let mut payload = 12 + 4 * usize::from(first & 0x0f);
    if first & 0x10 != 0 {
        let words = u16::from_be_bytes(map.get(payload + 2..payload + 4)?.try_into().ok()?);
        payload += 4 + 4 * usize::from(words);
    }
    Some((seq, crate::opus::carries_fec(map.get(payload..)?)))
}

/// The payload type and SSRC of an RTP packet (version 2, at least a fixed header).
fn rtp_pt_ssrc(packet: &[u8]) -> Option<(u32, u32)> {
    if packet.first()? >> 6 != 2 {
        return None;
    }
    let pt = u32::from(packet.get(1)? & 0x7f);
    let bytes: [u8; 4] = packet.get(8..12)?.try_into().ok()?;
    Some((pt, u32::from_be_bytes(bytes)))
}

impl Receiver {
    fn run(mut self) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        while !self.shared.stop.load(Ordering::Relaxed) {
            if let Some(p) = self.pipeline.upgrade() {
                if self.shared.latency_changed.swap(false, Ordering::Relaxed) {
                    let _ = p.recalculate_latency();
                }
                self.adapter.tick(Instant::now(), &p, &self.shared.counters);
            }
            self.consent_tick();
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let Some(datagram) = buf.get(..n) else {
                        continue;
                    };
                    match self.relay.as_mut() {
                        Some(relay) if relay.address() == from => match relay.open(datagram) {
                            FromRelay::Data(payload) => {
                                let payload = payload.to_vec();
                                self.handle(&payload, Path::Relayed);
                            }
                            FromRelay::Bound => self
                                .shared
                                .counters
                                .relay_bound
                                .store(true, Ordering::Relaxed),
                            FromRelay::Reply(answer) => {
                                let _ = self.socket.send_to(&answer, from);
                            }
                            FromRelay::Other => bump(&self.shared.counters.malformed),
                        },
                        // Relayed only, nothing straight is taken in: what comes from elsewhere
                        // is dropped unopened (and never answered).
                        _ if self.relay_only => bump(&self.shared.counters.malformed),
                        _ => self.handle(datagram, Path::Direct(from)),
                    }
                }
                // Timeouts (to notice `stop`, send hellos), ICMP errors from a peer not yet
                // listening.
                Err(_) => continue,
            }
        }
    }

    /// Path upkeep: moves media off a path that stopped answering or withdraws consent, sends
    /// the checks and relay binds due, and wakes the thread in time for the next one.
    fn consent_tick(&mut self) {
        let now = Instant::now();
        if let Some(change) = self.paths.tick(now) {
            self.apply(change, now);
        }
        while let Some((path, hello)) = self.paths.hello_to_send(now) {
            self.sender.hello(path, &hello);
        }
        if let Some(relay) = self.relay.as_mut() {
            if let Some(bind) = relay.bind_to_send(now) {
                let _ = self.socket.send_to(&bind, relay.address());
            }
        }
        let mut due = self.paths.next_hello(now);
        if let Some(relay) = &self.relay {
            due = Some(due.map_or(relay.next_bind(), |d| d.min(relay.next_bind())));
        }
        let timeout = due.map_or(RECV_TIMEOUT, |due| {
            due.saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), RECV_TIMEOUT)
        });
        if timeout != self.read_timeout && self.socket.set_read_timeout(Some(timeout)).is_ok() {
            self.read_timeout = timeout;
        }
    }

    /// A new sending path, or none.
    fn apply(&mut self, change: Change, now: Instant) {
        let kind = match change {
            Change::Chosen(path, kind) => {
                self.sender.grant(path);
                Some(kind)
            }
            Change::Lost => {
                self.sender.revoke();
                bump(&self.shared.counters.consent_lost);
                None
            }
        };
        if let Ok(mut log) = self.shared.counters.paths.lock() {
            log.record(PathChange {
                at_s: (now.saturating_duration_since(self.started).as_secs_f64() * 10.0).round()
                    / 10.0,
                path: kind,
            });
        }
    }

    fn handle(&mut self, datagram: &[u8], path: Path) {
        let c = &self.shared.counters;
        let seq = match wire::sequence(datagram) {
            Ok(seq) => seq,
            Err(_) => return bump(&c.malformed),
        };
        if let Err(Replay::Duplicate | Replay::TooOld) = self.window.check(seq) {
            return bump(&c.replayed);
        }
        let started = Instant::now();
        let opened = wire::open(self.key.as_ref(), datagram);
        add(&c.open_ns, started.elapsed().as_nanos() as u64);
        let opened = match opened {
            Ok(o) => o,
            Err(WireError::AuthFailed) => return bump(&c.auth_failed),
            Err(WireError::Malformed(_)) => return bump(&c.malformed),
        };
        self.window.accept(seq);
        bump(&c.packets_received);
        add(&c.bytes_received, datagram.len() as u64);
        // Our RTCP is a few hundred bytes; a bigger compound is nothing we send, and a peer's
        // outsized NACK list would only make rtpsession queue resends for every entry.
        if matches!(opened.stream, Stream::VideoRtcp | Stream::AudioRtcp)
            && opened.packet.len() > MAX_RTCP
        {
            return bump(&c.malformed);
        }
        if opened.stream == Stream::VideoRtcp {
            self.adapter.video_rtcp(&opened.packet);
        }
        let (input, pin) = match opened.stream {
            Stream::VideoRtp => (&self.inputs.vrtp, Some(0)),
            Stream::VideoRtcp => (&self.inputs.vrtcp, None),
            Stream::AudioRtp => (&self.inputs.artp, Some(1)),
            Stream::AudioRtcp => (&self.inputs.artcp, None),
            Stream::Hello => {
                bump(&c.hellos_received);
                match Hello::decode(&opened.packet) {
                    Ok(hello) => {
                        let now = Instant::now();
                        if let Some(change) = self.paths.hello(path, &hello, now) {
                            self.apply(change, now);
                        }
                    }
                    Err(_) => bump(&c.malformed),
                }
                return;
            }
        };
        // rtpbin would build a receive chain (jitter buffer, depayloader pad) for every new
        // SSRC: keep to the first one seen on each stream.
        if let Some(i) = pin {
            let Some((pt, ssrc)) = rtp_pt_ssrc(&opened.packet) else {
                return bump(&c.malformed);
            };
            // Retransmissions come from their own SSRC (RFC 4588): pinned apart.
            let i = if i == 0 && pt == crate::repair::VIDEO_RTX_PT {
                2
            } else {
                i
            };
            match self.ssrc.get_mut(i) {
                Some(slot @ None) => *slot = Some(ssrc),
                Some(Some(pinned)) if *pinned == ssrc => {}
                _ => return bump(&c.ssrc_rejected),
            }
        }
        // The appsrcs do not block (this thread must keep reading) and would queue past
        // max-bytes: a packet that does not fit is dropped here and counted, as the network
        // would lose it. (leaky-type=downstream bounds the queue as well, should anything else
        // push.) A push fails only while the pipeline stops.
        let len = opened.packet.len() as u64;
        let max = input.max_bytes();
        if max > 0 && input.current_level_bytes().saturating_add(len) > max {
            return bump(&c.receive_queue_dropped);
        }
        let _ = input.push_buffer(gst::Buffer::from_mut_slice(opened.packet));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::HashMap;

    fn load(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    fn rtp(ssrc: u32, seq: u16, len: usize) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 1]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.resize(len, 0xab);
        p
    }

    /// The receive thread's handling of one datagram, on appsrcs that are started but not
    /// drained (a live source in PAUSED queues what it is given): consent and the flush of
    /// held RTP, SSRC pinning, the input queue bound.
    #[test]
    fn receiver_gives_consent_pins_ssrcs_and_bounds_its_queues() {
        crate::plugins::init().unwrap();
        let pipeline = gst::parse::launch(
            "appsrc name=vrtp_in is-live=true format=time block=false max-bytes=100 ! fakesink \
             appsrc name=vrtcp_in is-live=true format=time block=false ! fakesink \
             appsrc name=artp_in is-live=true format=time block=false ! fakesink \
             appsrc name=artcp_in is-live=true format=time block=false ! fakesink",
        )
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let _ = pipeline.set_state(gst::State::Paused);
        let inputs = Inputs {
            vrtp: app_src(&pipeline, "vrtp_in").unwrap(),
            vrtcp: app_src(&pipeline, "vrtcp_in").unwrap(),
            artp: app_src(&pipeline, "artp_in").unwrap(),
            artcp: app_src(&pipeline, "artcp_in").unwrap(),
        };
        let ours = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer_addr = peer.local_addr().unwrap();
        peer.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let send_key = AeadKey::from_bytes(&[1; 32]).unwrap();
        let recv_key = AeadKey::from_bytes(&[2; 32]).unwrap();
        let shared = Arc::new(Shared::default());
        let sender = Arc::new(Sender {
            socket: Arc::clone(&ours),
            route: Mutex::new(Path::Relayed),
            relay: None,
            key: Some(AeadKey::from_bytes(&[1; 32]).unwrap()),
            seq: AtomicU64::new(0),
            shared: Arc::clone(&shared),
            consented: AtomicBool::new(false),
            held: Mutex::new(Held::default()),
        });
        let mut rx = Receiver {
            socket: ours,
            key: Some(AeadKey::from_bytes(&[2; 32]).unwrap()),
            window: ReplayWindow::new(),
            inputs,
            shared: Arc::clone(&shared),
            pipeline: pipeline.downgrade(),
            paths: Paths::new(
                &[(Path::Direct(peer_addr), crate::consent::PathKind::Direct)],
                false,
                false,
                Instant::now(),
            ),
            relay: None,
            relay_only: false,
            started: Instant::now(),
            sender: Arc::clone(&sender),
            ssrc: [None; 3],
            read_timeout: RECV_TIMEOUT,
            adapter: crate::repair::Adapter::new(Instant::now(), Repair::default(), None, true),
        };
        let c = &shared.counters;
        let mut seq = 0;
        let mut deliver = |rx: &mut Receiver, stream: Stream, packet: &[u8]| {
            seq += 1;
            rx.handle(
                &wire::seal(Some(&recv_key), seq, stream, packet).unwrap(),
                Path::Direct(peer_addr),
            );
        };

        // Before consent: RTP held, RTCP dropped, nothing on the wire.
        sender.send_media(Stream::VideoRtp, &rtp(7, 1, 40));
        sender.send_media(Stream::VideoRtcp, &[0x80, 200, 0, 1, 0, 0, 0, 7]);
        sender.send_media(Stream::AudioRtp, &rtp(8, 1, 30));
        assert_eq!(load(&c.held_packets), 2);
        assert_eq!(load(&c.rtcp_withheld), 1);
        assert_eq!(load(&c.packets_sent), 0);
        // Authenticated media from the peer gives no consent.
        deliver(&mut rx, Stream::AudioRtp, &rtp(99, 1, 30));
        assert!(!sender.consented.load(Ordering::Relaxed));
        // A hello echoing the wrong challenge neither.
        let mut hello = Hello {
            seeking: true,
            challenge: [5; wire::CHALLENGE_LEN],
            echo: Some([6; wire::CHALLENGE_LEN]),
        };
        deliver(&mut rx, Stream::Hello, &hello.encode());
        assert!(!sender.consented.load(Ordering::Relaxed));
        // The echo of a check sent there does: what was held goes out, in order, then the rest
        // as it comes.
        let (path, check) = rx.paths.hello_to_send(Instant::now()).unwrap();
        assert_eq!(path, Path::Direct(peer_addr));
        hello.echo = Some(check.challenge);
        deliver(&mut rx, Stream::Hello, &hello.encode());
        assert!(sender.consented.load(Ordering::Relaxed));
        sender.send_media(Stream::VideoRtcp, &[0x80, 200, 0, 1, 0, 0, 0, 7]);
        let opener = |d: &[u8]| wire::open(Some(&send_key), d).unwrap();
        let mut buf = [0u8; 2048];
        let mut got = Vec::new();
        for _ in 0..3 {
            let (n, _) = peer.recv_from(&mut buf).unwrap();
            let o = opener(&buf[..n]);
            got.push((o.seq, o.stream, o.packet));
        }
        assert_eq!(
            got,
            vec![
                (0, Stream::VideoRtp, rtp(7, 1, 40)),
                (1, Stream::AudioRtp, rtp(8, 1, 30)),
                (2, Stream::VideoRtcp, vec![0x80, 200, 0, 1, 0, 0, 0, 7]),
            ]
        );
        assert!(shared.consent_at.lock().unwrap().is_some());
        assert_eq!(load(&c.hellos_received), 2);

        // SSRC pinning: audio pinned to 99 above; video to the first one seen.
        let before = rx.inputs.artp.current_level_bytes();
        deliver(&mut rx, Stream::AudioRtp, &rtp(100, 2, 30));
        assert_eq!(load(&c.ssrc_rejected), 1);
        assert_eq!(rx.inputs.artp.current_level_bytes(), before);
        deliver(&mut rx, Stream::VideoRtp, &rtp(42, 1, 60));
        assert_eq!(rx.inputs.vrtp.current_level_bytes(), 60);
        deliver(&mut rx, Stream::VideoRtp, &rtp(43, 2, 20));
        assert_eq!(load(&c.ssrc_rejected), 2);
        // The video input holds 100 bytes at most: a second 60-byte packet is dropped.
        deliver(&mut rx, Stream::VideoRtp, &rtp(42, 2, 60));
        assert_eq!(load(&c.receive_queue_dropped), 1);
        assert_eq!(rx.inputs.vrtp.current_level_bytes(), 60);
        deliver(&mut rx, Stream::VideoRtp, &rtp(42, 3, 40));
        assert_eq!(rx.inputs.vrtp.current_level_bytes(), 100);
        // Not RTP at all on an RTP stream.
        deliver(&mut rx, Stream::VideoRtp, &[0u8; 20]);
        assert_eq!(load(&c.malformed), 1);
        let _ = pipeline.set_state(gst::State::Null);
    }

    /// The window probe's predicted presentation time agrees with the moment a synced sink
    /// actually renders the frame (a `fakesink`'s handoff).
    #[test]
    fn predicted_presentation_matches_a_synced_sink() {
        crate::plugins::init().unwrap();
        let pipeline = gst::parse::launch(
            "videotestsrc is-live=true num-buffers=45 \
             ! video/x-raw,format=I420,width=160,height=120,framerate=30/1 \
             ! videoconvert name=vconvert ! fakesink name=vsink sync=true signal-handoffs=true",
        )
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let sink = pipeline.by_name("vsink").unwrap();
        let pad = pipeline
            .by_name("vconvert")
            .unwrap()
            .static_pad("sink")
            .unwrap();
        type Times = Arc<Mutex<HashMap<u64, (Instant, Duration)>>>;
        let predicted: Times = Arc::default();
        let rendered: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
        {
            let predicted = Arc::clone(&predicted);
            let (sink, pipeline) = (sink.downgrade(), pipeline.downgrade());
            pad.add_probe(gst::PadProbeType::BUFFER, move |pad, info| {
                if let (Some(gst::PadProbeData::Buffer(b)), Some(sink), Some(p)) =
                    (&info.data, sink.upgrade(), pipeline.upgrade())
                {
                    let latency = pipeline_latency(&p).unwrap();
                    if let Some(wait) = presentation_wait(&sink, pad, b, latency) {
                        let pts = b.pts().unwrap().nseconds();
                        let now = Instant::now();
                        predicted.lock().unwrap().insert(pts, (now + wait, wait));
                    }
                }
                gst::PadProbeReturn::Ok
            });
        }
        {
            let rendered = Arc::clone(&rendered);
            sink.connect("handoff", false, move |args| {
                let b = args[1].get::<gst::Buffer>().unwrap();
                let pts = b.pts().unwrap().nseconds();
                rendered.lock().unwrap().insert(pts, Instant::now());
                None
            });
        }
        pipeline.set_state(gst::State::Playing).unwrap();
        let bus = pipeline.bus().unwrap();
        let msg = bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(10),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        assert!(matches!(
            msg.map(|m| m.type_()),
            Some(gst::MessageType::Eos)
        ));
        assert_eq!(frames_rendered(&sink), 45);
        let _ = pipeline.set_state(gst::State::Null);

        let predicted = predicted.lock().unwrap();
        let rendered = rendered.lock().unwrap();
        let mut errors: Vec<f64> = Vec::new();
        let mut waits: Vec<Duration> = Vec::new();
        for (pts, (at, wait)) in predicted.iter() {
            let actual = rendered
                .get(pts)
                .expect("every predicted frame was rendered");
            let err = if *actual > *at {
                (*actual - *at).as_secs_f64()
            } else {
                -(*at - *actual).as_secs_f64()
            };
            errors.push(err * 1000.0);
            waits.push(*wait);
        }
        assert!(errors.len() >= 40, "{} frames", errors.len());
        errors.sort_by(f64::total_cmp);
        waits.sort();
        let median = errors[errors.len() / 2];
        // The live source's one-frame latency (33 ms) is what the sink waits for.
        let wait = waits[waits.len() / 2];
        eprintln!("prediction error median {median:.2} ms, waits median {wait:?}");
        assert!(median.abs() < 3.0, "prediction errors (ms): {errors:?}");
        assert!(wait > Duration::from_millis(15), "{waits:?}");
    }
}
