//! Plugin checks, and what a window sink does without a display.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use smvs_media::{
    check_plugins, debian_package, AudioSource, MediaError, MediaOptions, MediaSession, Role, Sink,
    VideoSource,
};

#[test]
fn default_options_have_every_plugin() {
    check_plugins(&MediaOptions::default()).unwrap();
    check_plugins(&MediaOptions {
        video: VideoSource::None,
        audio: AudioSource::None,
        ..MediaOptions::default()
    })
    .unwrap();
    assert!(smvs_media::gstreamer_version().starts_with("GStreamer 1."));
}

#[test]
fn missing_plugin_error_names_element_and_package() {
    for (element, package) in [
        ("vp8enc", "gstreamer1.0-plugins-good"),
        ("rtpbin", "gstreamer1.0-plugins-good"),
        ("rtpopuspay", "gstreamer1.0-plugins-good"),
        ("v4l2src", "gstreamer1.0-plugins-good"),
        ("opusenc", "gstreamer1.0-plugins-base"),
        ("appsrc", "gstreamer1.0-plugins-base"),
        ("videotestsrc", "gstreamer1.0-plugins-base"),
        ("xvimagesink", "gstreamer1.0-x"),
    ] {
        assert_eq!(debian_package(element), package, "{element}");
    }
    let text = MediaError::MissingPlugin {
        element: "vp8enc",
        package: debian_package("vp8enc"),
    }
    .to_string();
    assert!(
        text.contains("`vp8enc`") && text.contains("gstreamer1.0-plugins-good"),
        "{text}"
    );
}

#[test]
fn a_window_without_a_display_is_a_clear_start_error() {
    if std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some() {
        eprintln!("skipped: this machine has a display");
        return;
    }
    let keys = common::CallKeys::new();
    let (s, _) = common::socket();
    let (_, peer) = common::socket();
    let options = MediaOptions {
        sink: Sink::Window,
        ..common::small()
    };
    let err = MediaSession::start(s, peer, keys.derive(Role::Caller, b"c"), options).unwrap_err();
    assert!(matches!(err, MediaError::Start(_)), "{err:?}");
    assert!(err.to_string().contains("display"), "{err}");
}
