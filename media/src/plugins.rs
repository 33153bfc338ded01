//! Which GStreamer elements a call needs, and which Debian package brings each one.

use crate::options::{AudioSource, MediaOptions, Sink, VideoSource};
use crate::MediaError;

const BASE: &str = "gstreamer1.0-plugins-base";
const GOOD: &str = "gstreamer1.0-plugins-good";
const CORE: &str = "libgstreamer1.0-0";

/// Window video sinks, in the order `autovideosink` ranks them. `autovideosink` itself is not
/// used: on a machine without a display it goes on to try `dfbvideosink`, which crashes the
/// process (seen with Debian 12's gstreamer1.0-plugins-bad), instead of failing.
pub(crate) const WINDOW_VIDEO_SINKS: [&str; 4] =
    ["xvimagesink", "glimagesink", "waylandsink", "ximagesink"];

/// The Debian 12 package that installs `element` (checked with `gst-inspect-1.0` and `dpkg -S`
/// on its plugin's `.so`).
pub fn debian_package(element: &str) -> &'static str {
    match element {
        "vp8enc" | "vp8dec" | "rtpbin" | "rtpvp8pay" | "rtpvp8depay" | "rtpopuspay"
        | "rtpopusdepay" | "v4l2src" | "autovideosrc" | "autoaudiosrc" | "autovideosink"
        | "autoaudiosink" => GOOD,
        "xvimagesink" | "ximagesink" => "gstreamer1.0-x",
        "glimagesink" => "gstreamer1.0-gl",
        "waylandsink" => "gstreamer1.0-plugins-bad",
        "fakesink" | "capsfilter" | "queue" | "identity" => CORE,
        // videotestsrc audiotestsrc opusenc opusdec appsrc appsink videoconvert videoscale
        // videorate audioconvert audioresample
        _ => BASE,
    }
}

/// Every element the pipeline for `options` instantiates.
pub(crate) fn needed_elements(options: &MediaOptions) -> Vec<&'static str> {
    let mut e = vec![
        "rtpbin",
        "appsrc",
        "appsink",
        "capsfilter",
        // receive video
        "rtpvp8depay",
        "vp8dec",
        "videoconvert",
        // receive audio
        "rtpopusdepay",
        "opusdec",
        "audioconvert",
        "audioresample",
    ];
    match options.sink {
        // The video window: one of WINDOW_VIDEO_SINKS, checked separately.
        Sink::Window => e.push("autoaudiosink"),
        Sink::Null => e.push("fakesink"),
    }
    if options.sink == Sink::Window || options.latency_probe {
        e.push("queue"); // in front of the video sink that syncs
    }
    match options.video {
        VideoSource::Test => e.push("videotestsrc"),
        VideoSource::Camera => e.extend(["v4l2src", "videoscale", "videorate"]),
        VideoSource::None => {}
    }
    if options.video != VideoSource::None {
        e.extend(["vp8enc", "rtpvp8pay"]);
    }
    match options.audio {
        AudioSource::Test => e.push("audiotestsrc"),
        AudioSource::Mic => e.push("autoaudiosrc"),
        AudioSource::None => {}
    }
    if options.audio != AudioSource::None {
        e.extend(["opusenc", "rtpopuspay"]);
    }
    e
}

pub(crate) fn init() -> Result<(), MediaError> {
    gstreamer::init().map_err(|e| MediaError::GstInit(e.to_string()))
}

/// Checks that every element these options need is installed. Initialises GStreamer.
pub fn check_plugins(options: &MediaOptions) -> Result<(), MediaError> {
    init()?;
    check_with(options, |name| {
        gstreamer::ElementFactory::find(name).is_some()
    })
}

fn check_with(options: &MediaOptions, present: impl Fn(&str) -> bool) -> Result<(), MediaError> {
    for element in needed_elements(options) {
        if !present(element) {
            return Err(MediaError::MissingPlugin {
                element,
                package: debian_package(element),
            });
        }
    }
    if options.sink == Sink::Window && !WINDOW_VIDEO_SINKS.iter().any(|e| present(e)) {
        return Err(MediaError::MissingPlugin {
            element: "xvimagesink",
            package: debian_package("xvimagesink"),
        });
    }
    Ok(())
}

/// The first window video sink that opens (connects to the display), tried as
/// `autovideosink` would but without the sinks that crash when there is none.
pub(crate) fn pick_video_sink() -> Result<&'static str, MediaError> {
    use gstreamer::prelude::*;
    for name in WINDOW_VIDEO_SINKS {
        let Ok(sink) = gstreamer::ElementFactory::make(name).build() else {
            continue;
        };
        let opened = sink.set_state(gstreamer::State::Ready).is_ok();
        let _ = sink.set_state(gstreamer::State::Null);
        if opened {
            return Ok(name);
        }
    }
    Err(MediaError::Start(format!(
        "no video window could be opened ({} all failed): is there a display (DISPLAY or \
         WAYLAND_DISPLAY)?",
        WINDOW_VIDEO_SINKS.join(", ")
    )))
}

/// Opens the devices these options need and closes them again — the camera, the microphone,
/// a window — so a call that cannot have them fails before anyone's phone rings.
pub fn check_devices(options: &MediaOptions) -> Result<(), MediaError> {
    init()?;
    if options.sink == Sink::Window {
        pick_video_sink().map_err(|e| match e {
            MediaError::Start(why) => MediaError::Device(why),
            other => other,
        })?;
    }
    if options.video == VideoSource::Camera {
        open_source(
            "v4l2src",
            "no camera could be opened (v4l2src, /dev/video0)",
        )?;
    }
    if options.audio == AudioSource::Mic {
        open_source(
            "autoaudiosrc",
            "no microphone could be opened (autoaudiosrc)",
        )?;
    }
    Ok(())
}

/// Takes a source element to READY (where it opens its device) and back.
fn open_source(name: &'static str, what: &str) -> Result<(), MediaError> {
    use gstreamer::prelude::*;
    let source =
        gstreamer::ElementFactory::make(name)
            .build()
            .map_err(|_| MediaError::MissingPlugin {
                element: name,
                package: debian_package(name),
            })?;
    let opened = source.set_state(gstreamer::State::Ready);
    let _ = source.set_state(gstreamer::State::Null);
    opened
        .map(drop)
        .map_err(|_| MediaError::Device(what.to_string()))
}

/// The version of the GStreamer library in use, e.g. "GStreamer 1.22.0".
pub fn gstreamer_version() -> String {
    gstreamer::version_string().to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn missing_element_names_element_and_package() {
        let options = MediaOptions::default();
        let err = check_with(&options, |name| name != "vp8enc").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("vp8enc"), "{text}");
        assert!(text.contains("gstreamer1.0-plugins-good"), "{text}");
        let err = check_with(&options, |name| name != "opusdec").unwrap_err();
        assert!(matches!(
            err,
            MediaError::MissingPlugin {
                element: "opusdec",
                package: "gstreamer1.0-plugins-base"
            }
        ));
        let err = check_with(&options, |name| name != "fakesink").unwrap_err();
        assert!(err.to_string().contains("libgstreamer1.0-0"));
    }

    #[test]
    fn options_decide_what_is_needed() {
        let none = MediaOptions {
            video: VideoSource::None,
            audio: AudioSource::None,
            ..MediaOptions::default()
        };
        let e = needed_elements(&none);
        assert!(!e.contains(&"vp8enc") && !e.contains(&"opusenc"));
        assert!(e.contains(&"vp8dec") && e.contains(&"opusdec"));
        let cam = MediaOptions {
            video: VideoSource::Camera,
            audio: AudioSource::Mic,
            sink: Sink::Window,
            ..MediaOptions::default()
        };
        let e = needed_elements(&cam);
        for x in ["v4l2src", "autoaudiosrc", "autoaudiosink"] {
            assert!(e.contains(&x), "{x}");
        }
        let err = check_with(&cam, |name| !WINDOW_VIDEO_SINKS.contains(&name)).unwrap_err();
        assert!(err.to_string().contains("gstreamer1.0-x"), "{err}");
        check_with(&cam, |name| name != "xvimagesink").unwrap();
        assert_eq!(debian_package("v4l2src"), GOOD);
        assert_eq!(debian_package("glimagesink"), "gstreamer1.0-gl");
        assert_eq!(debian_package("appsrc"), BASE);
        assert_eq!(debian_package("opusenc"), BASE);
    }

    #[test]
    fn default_options_have_their_plugins() {
        check_plugins(&MediaOptions::default()).unwrap();
    }
}
