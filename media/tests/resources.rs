//! Stopping a call releases its threads, file descriptors and socket: a second call leaves no
//! more threads or fds behind than the first (GStreamer may keep a warm thread pool).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::UdpSocket;
use std::time::Duration;

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

fn settle() -> (usize, usize) {
    std::thread::sleep(Duration::from_millis(300));
    (count("/proc/self/task"), count("/proc/self/fd"))
}

fn one_call() -> (usize, usize) {
    let keys = common::CallKeys::new();
    let (sa, aa) = common::socket();
    let (sb, ab) = common::socket();
    let a = smvs_media::MediaSession::start(
        sa,
        ab,
        keys.derive(smvs_media::Role::Caller, b"c"),
        common::small(),
    )
    .unwrap();
    let b = smvs_media::MediaSession::start(
        sb,
        aa,
        keys.derive(smvs_media::Role::Callee, b"c"),
        common::small(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let during = (count("/proc/self/task"), count("/proc/self/fd"));
    let (x, y) = (a.stop(), b.stop());
    assert!(x.video_frames_decoded > 10 && y.video_frames_decoded > 10);
    // The sockets are closed: their addresses can be bound again.
    UdpSocket::bind(aa).expect("caller's socket still open after stop");
    UdpSocket::bind(ab).expect("callee's socket still open after stop");
    let after = settle();
    eprintln!("during the call: {during:?} (threads, fds); after stop: {after:?}");
    assert!(during.0 > after.0, "the call's threads did not go away");
    after
}

#[test]
fn stop_releases_threads_and_fds() {
    smvs_media::check_plugins(&common::small()).unwrap();
    let before = settle();
    let first = one_call();
    let second = one_call();
    let names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|e| {
            std::fs::read_to_string(e.unwrap().path().join("comm"))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    eprintln!("threads left: {names:?}");
    eprintln!("before: {before:?}, after first: {first:?}, after second: {second:?}");
    assert!(
        second.0 <= first.0,
        "threads: {} after the second call, {} after the first",
        second.0,
        first.0
    );
    assert!(
        second.1 <= first.1,
        "fds: {} after the second call, {} after the first",
        second.1,
        first.1
    );
}
