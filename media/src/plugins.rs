//! Which GStreamer elements a call needs, and which Debian package brings each one.

use crate::options::{AudioSource, MediaOptions, Sink, VideoSource};
use crate::MediaError;

const BASE: &str = "gstreamer1.0-plugins-base";
const GOOD: &str = "gstreamer1.0-plugins-good";
const CORE: &str = "libgstreamer1.0-0";

/// Every window video sink SMVS may use (see [`Displays::window_sinks`] for which are tried). `autovideosink` itself is not used: on a machine
/// without a display it goes on to try `dfbvideosink`, which crashes the process (seen with
/// Debian 12's gstreamer1.0-plugins-bad), instead of failing.
#[cfg(test)]
pub(crate) const WINDOW_VIDEO_SINKS: [&str; 4] =
    ["xvimagesink", "ximagesink", "waylandsink", "glimagesink"];

/// Which displays this process can reach, from its environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Displays {
    pub x11: bool,
    pub wayland: bool,
}

impl Displays {
    pub(crate) fn from_env() -> Displays {
        let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
        Displays {
            x11: set("DISPLAY"),
            wayland: set("WAYLAND_DISPLAY"),
        }
    }

    /// The window sinks worth trying, best first. Only sinks for a display that is there are
    /// tried (a Wayland sink with no Wayland session, or GL probing for one, prints errors on
    /// stderr); the X sinks come before GL, because they name their window after the call.
    pub(crate) fn window_sinks(self) -> Vec<&'static str> {
        let mut sinks = Vec::new();
        if self.wayland {
            sinks.push("waylandsink");
        }
        if self.x11 {
            sinks.extend(["xvimagesink", "ximagesink"]);
        }
        if self.x11 || self.wayland {
            sinks.push("glimagesink");
        }
        sinks
    }

    /// The element (and so the package) to name when no window sink for these displays is
    /// installed.
    fn missing_sink(self) -> &'static str {
        if self.x11 || !self.wayland {
            "ximagesink"
        } else {
            "waylandsink"
        }
    }
}

/// The Debian 12 package that installs `element` (checked with `gst-inspect-1.0` and `dpkg -S`
/// on its plugin's `.so`).
pub fn debian_package(element: &str) -> &'static str {
    match element {
        "vp8enc" | "vp8dec" | "rtpbin" | "rtpvp8pay" | "rtpvp8depay" | "rtpopuspay"
        | "rtpopusdepay" | "v4l2src" | "autovideosrc" | "autoaudiosrc" | "autovideosink"
        | "autoaudiosink" | "taginject" => GOOD,
        "xvimagesink" | "ximagesink" => "gstreamer1.0-x",
        "glimagesink" => "gstreamer1.0-gl",
        "waylandsink" => "gstreamer1.0-plugins-bad",
        "fakesink" | "capsfilter" | "queue" | "identity" => CORE,
        // videotestsrc audiotestsrc opusenc opusdec appsrc appsink videoconvert videoscale
        // videorate audioconvert audioresample volume
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
        // The video window: one of WINDOW_VIDEO_SINKS, checked separately; its title.
        Sink::Window => e.extend(["autoaudiosink", "taginject"]),
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
        e.extend(["volume", "opusenc", "rtpopuspay"]);
    }
    e
}

pub(crate) fn init() -> Result<(), MediaError> {
    gstreamer::init().map_err(|e| MediaError::GstInit(e.to_string()))
}

/// Checks that every element these options need is installed. Initialises GStreamer.
pub fn check_plugins(options: &MediaOptions) -> Result<(), MediaError> {
    init()?;
    check_with(options, Displays::from_env(), |name| {
        gstreamer::ElementFactory::find(name).is_some()
    })
}

fn check_with(
    options: &MediaOptions,
    displays: Displays,
    present: impl Fn(&str) -> bool,
) -> Result<(), MediaError> {
    for element in needed_elements(options) {
        if !present(element) {
            return Err(MediaError::MissingPlugin {
                element,
                package: debian_package(element),
            });
        }
    }
    // With no display at all, opening the window says so (pick_video_sink).
    let sinks = displays.window_sinks();
    if options.sink == Sink::Window && !sinks.is_empty() && !sinks.iter().any(|e| present(e)) {
        let element = displays.missing_sink();
        return Err(MediaError::MissingPlugin {
            element,
            package: debian_package(element),
        });
    }
    Ok(())
}

/// The first window video sink that opens (connects to the display), among those for the
/// displays this process has (see [`Displays::window_sinks`]).
pub(crate) fn pick_video_sink() -> Result<&'static str, MediaError> {
    use gstreamer::prelude::*;
    let displays = Displays::from_env();
    let sinks = displays.window_sinks();
    if sinks.is_empty() {
        return Err(MediaError::Start(
            "no video window could be opened: there is no display (neither DISPLAY nor WAYLAND_DISPLAY is set)"
                .into(),
        ));
    }
    let mut installed = 0;
    for name in &sinks {
        let Ok(sink) = gstreamer::ElementFactory::make(name).build() else {
            continue;
        };
        installed += 1;
        let opened = sink.set_state(gstreamer::State::Ready).is_ok();
        let _ = sink.set_state(gstreamer::State::Null);
        if opened {
            return Ok(name);
        }
    }
    if installed == 0 {
        let element = displays.missing_sink();
        return Err(MediaError::MissingPlugin {
            element,
            package: debian_package(element),
        });
    }
    Err(MediaError::Start(format!(
        "no video window could be opened on this display ({} all failed)",
        sinks.join(", ")
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
        let x11 = Displays {
            x11: true,
            wayland: false,
        };
        let err = check_with(&options, x11, |name| name != "vp8enc").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("vp8enc"), "{text}");
        assert!(text.contains("gstreamer1.0-plugins-good"), "{text}");
        let err = check_with(&options, x11, |name| name != "opusdec").unwrap_err();
        assert!(matches!(
            err,
            MediaError::MissingPlugin {
                element: "opusdec",
                package: "gstreamer1.0-plugins-base"
            }
        ));
        let err = check_with(&options, x11, |name| name != "fakesink").unwrap_err();
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
        let x11 = Displays {
            x11: true,
            wayland: false,
        };
        let wayland = Displays {
            x11: false,
            wayland: true,
        };
        let err = check_with(&cam, x11, |name| !WINDOW_VIDEO_SINKS.contains(&name)).unwrap_err();
        assert!(err.to_string().contains("gstreamer1.0-x"), "{err}");
        check_with(&cam, x11, |name| name != "xvimagesink").unwrap();
        // On X with only the Wayland sink installed (the case of a fresh Debian desktop
        // without gstreamer1.0-x), the error names gstreamer1.0-x, not the display.
        let err = check_with(&cam, x11, |name| {
            !WINDOW_VIDEO_SINKS.contains(&name) || name == "waylandsink"
        })
        .unwrap_err();
        assert!(err.to_string().contains("gstreamer1.0-x"), "{err}");
        let err =
            check_with(&cam, wayland, |name| !WINDOW_VIDEO_SINKS.contains(&name)).unwrap_err();
        assert!(
            err.to_string().contains("gstreamer1.0-plugins-bad"),
            "{err}"
        );
        // Which sinks are tried, for which display: none for a display that is not there.
        assert_eq!(
            x11.window_sinks(),
            ["xvimagesink", "ximagesink", "glimagesink"]
        );
        assert_eq!(wayland.window_sinks(), ["waylandsink", "glimagesink"]);
        let none = Displays {
            x11: false,
            wayland: false,
        };
        assert!(none.window_sinks().is_empty());
        check_with(&cam, none, |name| !WINDOW_VIDEO_SINKS.contains(&name)).unwrap();
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
