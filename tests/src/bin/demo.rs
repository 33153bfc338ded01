//! `make demo`: the main job on loopback. A directory, and two users each with their own host
//! (smvs-keyguard + smvsd); alice and bob register, write to each other both ways, their
//! histories are printed as `smvsctl` shows them, and they make a 3-second video call with test
//! sources (the media runs in the two smvsctl processes). Everything is stopped at the end.

use std::time::Duration;

use smvs_tests::{Backend, DirectoryProcess, HostProcess};

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let directory = runtime.block_on(DirectoryProcess::start(Backend::Sqlite, &[]))?;
    println!(
        "directory  listening on {}, key {}",
        directory.addr,
        directory.key.to_hex()
    );

    let alice = HostProcess::start("alice", &directory, "127.0.0.1", &[])?;
    let bob = HostProcess::start("bob", &directory, "127.0.0.2", &[])?;
    println!(
        "alice's host listening on {} (keyguard and smvsd)",
        alice.listen
    );
    println!(
        "bob's host   listening on {} (keyguard and smvsd)",
        bob.listen
    );

    println!("\n$ smvsctl register alice   (on alice's host)");
    print!("{}", alice.ctl_ok(&["register", "alice"])?);
    println!("$ smvsctl register bob     (on bob's host)");
    print!("{}", bob.ctl_ok(&["register", "bob"])?);

    let lines = [
        (
            &alice,
            "bob",
            "Hi Bob! This message is end-to-end encrypted.",
        ),
        (
            &bob,
            "alice",
            "Hi Alice, got it. Only our two hosts can read it.",
        ),
        (&alice, "bob", "And it was stored encrypted on both sides."),
    ];
    for (from, to, text) in lines {
        println!("\n$ smvsctl send {to} {text:?}   (on {}'s host)", from.name);
        print!("{}", from.ctl_ok(&["send", to, text])?);
    }
    // Wait until every message is delivered (the receipt came back) before showing history.
    alice.wait_history("bob", Duration::from_secs(30), |h| {
        h.len() == 3
            && h.iter()
                .all(|m| m["status"] == "delivered" || m["status"] == "received")
    })?;
    bob.wait_history("alice", Duration::from_secs(30), |h| {
        h.len() == 3
            && h.iter()
                .all(|m| m["status"] == "delivered" || m["status"] == "received")
    })?;

    println!("\n$ smvsctl history bob      (on alice's host)");
    print!("{}", alice.ctl_ok(&["history", "bob"])?);
    println!("\n$ smvsctl history alice    (on bob's host)");
    print!("{}", bob.ctl_ok(&["history", "alice"])?);
    println!("\n$ smvsctl verify bob       (on alice's host: compare with bob's, out of band)");
    print!("{}", alice.ctl_ok(&["verify", "bob"])?);
    println!("\n$ smvsctl verify alice     (on bob's host)");
    print!("{}", bob.ctl_ok(&["verify", "alice"])?);

    let media = ["--video", "test", "--audio", "test", "--sink", "null"];
    println!("\n$ smvsctl answer --wait 30 --video test --audio test --sink null --stats   (on bob's host, waits)");
    let mut answer = vec!["answer", "--wait", "30", "--stats"];
    answer.extend(media);
    let answering = bob
        .ctl_command(&answer)?
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    println!("$ smvsctl call bob --video test --audio test --sink null --duration 3 --stats   (on alice's host)");
    let mut call = vec!["call", "bob", "--duration", "3", "--stats"];
    call.extend(media);
    let called = alice.ctl_ok(&call)?;
    let answered = answering.wait_with_output()?;
    for (who, text) in [
        ("alice", called),
        ("bob", String::from_utf8(answered.stdout)?),
    ] {
        let v: serde_json::Value = serde_json::from_str(&text)?;
        let s = &v["stats"];
        println!(
            "{who}: call with {} ended ({}) after {:.1} s: sent {} frames, decoded {} of the other's, {} audio packets decoded, {:.0} kbit/s in, rtt {} ms, {} packets refused",
            v["peer"].as_str().unwrap_or("?"),
            v["ended"].as_str().unwrap_or("?"),
            v["duration_s"].as_f64().unwrap_or(0.0),
            s["video_frames_sent"],
            s["video_frames_decoded"],
            s["audio_packets_decoded"],
            s["bitrate_received_kbps"].as_f64().unwrap_or(0.0),
            s["rtt_ms"].as_f64().map(|r| format!("{r:.1}")).unwrap_or_else(|| "?".into()),
            s["auth_failed"].as_u64().unwrap_or(0) + s["replayed"].as_u64().unwrap_or(0),
        );
    }

    let (mut alice, mut bob) = (alice, bob);
    println!(
        "\nstopping: alice's smvsd {}, bob's smvsd {}",
        alice.stop()?,
        bob.stop()?
    );
    println!("stopping: directory {}", directory.daemon.stop()?);
    Ok(())
}
