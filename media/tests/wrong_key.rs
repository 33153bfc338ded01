//! A callee whose keys were derived for another call decodes nothing and counts every
//! packet as failing authentication. No hello authenticates either, so neither side ever
//! gets consent: each holds its media back and sends only hellos.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

#[test]
fn a_wrong_key_decodes_nothing() {
    let (a, b) = common::call(common::small(), common::small(), b"another-call", 3.0);
    eprintln!("callee: {}", serde_json::to_string_pretty(&b).unwrap());
    assert!(a.video_frames_sent > 50);
    assert_eq!(b.video_frames_decoded, 0);
    assert_eq!(b.video_frames_received, 0);
    assert_eq!(b.audio_packets_decoded, 0);
    assert_eq!(b.packets_received, 0);
    // Everything that arrived failed: A's hellos, about ten in the first second then one a
    // second.
    assert!(b.auth_failed >= 5, "{}", b.auth_failed);
    assert!(b.auth_failed <= a.packets_sent);
    // And the other way round.
    assert_eq!(a.video_frames_decoded, 0);
    assert!(a.auth_failed >= 5);
    for s in [&a, &b] {
        assert_eq!(s.consent_ms, None);
        assert_eq!(s.packets_sent, s.hellos_sent);
        assert!(s.packets_sent < 20, "{}", s.packets_sent);
        assert!(s.held_packets > 50 && s.held_dropped > 0, "{s:?}");
    }
}
