//! A callee whose keys were derived for another call decodes nothing and counts every
//! packet as failing authentication.
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
    assert!(b.auth_failed > 50, "{}", b.auth_failed);
    // And the other way round.
    assert_eq!(a.video_frames_decoded, 0);
    assert!(a.auth_failed > 50);
}
