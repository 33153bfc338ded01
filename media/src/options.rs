//! What a call's media consists of: sources, sinks, format and bitrates.

use crate::MediaError;

/// Where outgoing video comes from. `None` sends no video (what the peer sends is still shown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoSource {
    /// `videotestsrc`, a moving test pattern.
    Test,
    /// The default V4L2 camera (`v4l2src`).
    Camera,
    None,
}

/// Where outgoing audio comes from. `None` sends no audio (what the peer sends is still played).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudioSource {
    /// `audiotestsrc`, a sine tone.
    Test,
    /// The default microphone (`autoaudiosrc`).
    Mic,
    None,
}

/// Where received media goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    /// A video window (the first of `xvimagesink`, `glimagesink`, `waylandsink`, `ximagesink`
    /// that opens) and the speakers (`autoaudiosink`).
    Window,
    /// Decoded and discarded (`fakesink`): tests and benchmarks.
    Null,
}

/// The media of one call.
#[derive(Clone, Debug)]
pub struct MediaOptions {
    pub video: VideoSource,
    pub audio: AudioSource,
    pub sink: Sink,
    /// Outgoing video size and frame rate.
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// VP8 target bitrate (constant bitrate).
    pub video_kbps: u32,
    /// Opus bitrate (constant bitrate, 20 ms frames, so packet sizes do not follow speech).
    pub audio_kbps: u32,
    /// Stamp outgoing frames with the wall clock and read the peer's stamps to measure
    /// glass-to-glass latency (meaningful only when both ends share a clock, i.e. run on the
    /// same machine; see [`crate::probe`]). Overwrites the top 16 rows of outgoing video. With
    /// [`Sink::Null`] it also makes the video sink wait for each frame's presentation time, as
    /// a display does (without the probe a null sink discards frames on arrival).
    pub latency_probe: bool,
    /// The video window's title ([`Sink::Window`]), e.g. "SMVS — call with bob". Letters,
    /// digits, spaces and `.-_—` are kept; anything else is left out.
    pub window_title: Option<String>,
    /// Seal every packet. Only the benchmark's baseline (the cargo feature `bench-baseline`,
    /// which only `smvs-bench-calls` turns on) can set it to false, to measure the same pipeline
    /// without the AEAD: packets then travel in clear, unauthenticated. Without the feature the
    /// field does not exist, so no caller (smvsctl, a device) can turn encryption off.
    #[cfg(feature = "bench-baseline")]
    pub encrypt: bool,
    /// Loss repair and bandwidth adaptation (retransmission, keyframe requests, Opus in-band
    /// FEC, the adaptive jitter buffer, the rate controller and the encoder settings they rely
    /// on). Only the benchmark's baseline turns it off, to measure the call pipeline as it was
    /// before them side by side; as with `encrypt`, no other caller can.
    #[cfg(feature = "bench-baseline")]
    pub repair: bool,
}

impl Default for MediaOptions {
    /// Test video and audio into null sinks, 640x480 at 30 fps, VP8 at 1000 kbit/s, Opus at
    /// 32 kbit/s CBR, no latency probe, encrypted.
    fn default() -> Self {
        MediaOptions {
            video: VideoSource::Test,
            audio: AudioSource::Test,
            sink: Sink::Null,
            width: 640,
            height: 480,
            fps: 30,
            video_kbps: 1000,
            audio_kbps: 32,
            latency_probe: false,
            window_title: None,
            #[cfg(feature = "bench-baseline")]
            encrypt: true,
            #[cfg(feature = "bench-baseline")]
            repair: true,
        }
    }
}

impl MediaOptions {
    /// Whether packets are sealed: always, unless the benchmark's baseline asked otherwise.
    /// Outside that build, encryption cannot be turned off:
    ///
    /// ```compile_fail
    /// let clear = smvs_media::MediaOptions { encrypt: false, ..Default::default() };
    /// ```
    pub fn encrypted(&self) -> bool {
        #[cfg(feature = "bench-baseline")]
        return self.encrypt;
        #[cfg(not(feature = "bench-baseline"))]
        true
    }

    /// Whether loss repair and bandwidth adaptation run: always, unless the benchmark's
    /// baseline asked otherwise.
    pub(crate) fn repaired(&self) -> bool {
        #[cfg(feature = "bench-baseline")]
        return self.repair;
        #[cfg(not(feature = "bench-baseline"))]
        true
    }

    pub(crate) fn validate(&self) -> Result<(), MediaError> {
        let bad = |what: String| Err(MediaError::Options(what));
        if self.video != VideoSource::None {
            if !(16..=7680).contains(&self.width) || !(16..=4320).contains(&self.height) {
                return bad(format!(
                    "video size {}x{} is out of range",
                    self.width, self.height
                ));
            }
            if self.width % 2 != 0 || self.height % 2 != 0 {
                return bad(format!(
                    "video size {}x{} must be even",
                    self.width, self.height
                ));
            }
            if !(1..=120).contains(&self.fps) {
                return bad(format!("frame rate {} is out of range 1..=120", self.fps));
            }
            if !(50..=50_000).contains(&self.video_kbps) {
                return bad(format!(
                    "video bitrate {} kbit/s is out of range 50..=50000",
                    self.video_kbps
                ));
            }
        }
        if self.audio != AudioSource::None && !(6..=510).contains(&self.audio_kbps) {
            return bad(format!(
                "audio bitrate {} kbit/s is out of range 6..=510",
                self.audio_kbps
            ));
        }
        Ok(())
    }
}
