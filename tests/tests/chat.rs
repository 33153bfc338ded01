//! `smvsctl chat`, the full-screen client, driven in real terminals (tmux: keys typed with
//! `send-keys`, screens read with `capture-pane`) against a real directory and real hosts; and
//! its plain mode through pipes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use smvs_tests::child::finish;
use smvs_tests::conversation::alice_and_bob;
use smvs_tests::device::DeviceProcess;
use smvs_tests::tmux::Tmux;
use smvs_tests::watch::LIMIT;
use smvs_tests::{DirectoryProcess, HostProcess};
use unicode_width::UnicodeWidthStr;

/// Saves a screen where the README's captures are taken from
/// (`$CARGO_TARGET_TMPDIR/chat-screens/`, i.e. `target/tmp/chat-screens/`).
fn keep_screen(name: &str, screen: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("chat-screens");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{name}.txt")), screen);
}

/// The chat of `host`'s user in a `width`×`height` terminal, once its first screen is drawn
/// (and so its subscription to the host's events is live).
fn chat(host: &HostProcess, args: &[&str], width: u16, height: u16) -> Tmux {
    let mut all = vec!["chat"];
    all.extend_from_slice(args);
    let cmd = host.ctl_command(&all).unwrap();
    let tmux = Tmux::start(&host.name, &cmd, width, height).unwrap();
    tmux.wait_text("┌ chats").unwrap();
    tmux
}

/// Leaves the compose box. Escape is sent alone, and the screen waited for: a terminal reads
/// Escape and a letter arriving together as Alt and the letter.
fn stop_writing(t: &Tmux) {
    t.keys(&["Escape"]).unwrap();
    t.wait_text("i write").unwrap();
}

/// Rows of the screen.
fn rows(screen: &str) -> Vec<&str> {
    screen.lines().collect()
}

#[test]
fn two_people_chat_live_and_see_their_messages_delivered() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    let mut bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    alice.register().unwrap();
    bob.register().unwrap();

    // bob's host is down: alice's first message waits in her outbox, marked queued.
    bob.stop().unwrap();
    let a = chat(&alice, &["bob"], 80, 24);
    a.type_text("hello bob, are you there?").unwrap();
    a.keys(&["Enter"]).unwrap();
    let screen = a.wait_text("◷ queued").unwrap();
    assert!(screen.contains("me: hello bob, are you there?"), "{screen}");

    // bob comes back: the mark moves to delivered, live.
    bob.start_again().unwrap();
    let b = chat(&bob, &[], 200, 60);
    a.wait_text("✓✓ delivered").unwrap();
    // bob's list shows the new conversation, unread; he opens it and replies.
    b.wait_text("alice").unwrap();
    b.wait_text("1 new").unwrap();
    b.keys(&["Enter"]).unwrap();
    b.wait_text("alice: hello bob, are you there?").unwrap();
    b.type_text("yes, here!").unwrap();
    b.keys(&["Enter"]).unwrap();
    let screen = a.wait_text("bob: yes, here!").unwrap();
    keep_screen("alice-80x24", &screen);
    let screen = b.wait_text("✓✓ delivered").unwrap();
    keep_screen("bob-200x60", &screen);
    assert!(!screen.contains("1 new"), "opening it read it:\n{screen}");

    // Both sizes draw the whole frame: the borders reach the last column, the help line is
    // on the last row.
    for (t, width, height) in [(&a, 80usize, 24usize), (&b, 200, 60)] {
        let screen = t.screen().unwrap();
        let rows = rows(&screen);
        assert_eq!(rows.len(), height, "{screen}");
        assert!(
            rows[0].starts_with('┌') && rows[0].ends_with('┐'),
            "{screen}"
        );
        assert_eq!(rows[0].chars().count(), width, "{screen}");
        assert!(rows[height - 1].contains("Enter"), "{screen}");
    }

    // A resize redraws at the new size.
    a.resize(120, 40).unwrap();
    let screen = a
        .wait_for("a 120-column frame", |s| {
            s.lines().next().is_some_and(|r| r.chars().count() == 120)
        })
        .unwrap();
    assert!(screen.contains("bob: yes, here!"), "{screen}");
    a.keys(&["C-c"]).unwrap();
    a.wait_for("the chat to exit", |_| a.exit_status().unwrap().is_some())
        .unwrap();
    assert_eq!(a.exit_status().unwrap(), Some(0));
}

/// alice and bob, registered, with one message from alice to bob (so each knows the other).
fn pair(dir: &DirectoryProcess) -> (HostProcess, HostProcess) {
    let (alice, bob) = alice_and_bob(dir, &[]).unwrap();
    alice.send("bob", "hello").unwrap();
    bob.wait_history("alice", LIMIT, |h| h.len() == 1).unwrap();
    (alice, bob)
}

#[test]
fn opening_a_chat_on_one_device_clears_its_unread_count_on_another() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (alice, bob) = pair(&dir);
    let laptop = DeviceProcess::linked(&alice, "laptop").unwrap();

    bob.send("alice", "are you free tonight?").unwrap();
    bob.send("alice", "say when").unwrap();
    alice.wait_history("bob", LIMIT, |h| h.len() == 3).unwrap();

    // alice's laptop, over the device link, lists the conversation with 2 unread.
    let on_laptop = Tmux::start("laptop", &laptop.command(&["chat"]).unwrap(), 80, 24).unwrap();
    let screen = on_laptop.wait_text("2 new").unwrap();
    assert!(screen.contains("bob"), "{screen}");
    keep_screen("laptop-unread-80x24", &screen);

    // She opens it beside the host: the laptop's count clears, live.
    let on_host = chat(&alice, &[], 80, 24);
    on_host.wait_text("2 new").unwrap();
    on_host.keys(&["Enter"]).unwrap();
    on_host.wait_text("bob: say when").unwrap();
    let screen = on_laptop
        .wait_for("the unread count to clear", |s| !s.contains("2 new"))
        .unwrap();
    assert!(screen.contains("> bob"), "{screen}");
    // A message bob sends now shows in the open chat, and so is read on every device: the
    // host's count stays at 0 and the laptop shows nothing unread once it settles.
    bob.send("alice", "eight?").unwrap();
    on_host.wait_text("bob: eight?").unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while alice.ctl_json(&["conversations"]).unwrap()[0]["unread"] != 0 {
        assert!(std::time::Instant::now() < deadline, "never marked read");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Events reach a device in the order they were published: once the laptop shows a device
    // linked after the read, it has applied the read.
    DeviceProcess::linked(&alice, "desk").unwrap();
    let screen = on_laptop.wait_text("a device was linked: desk").unwrap();
    assert!(!screen.contains("1 new"), "{screen}");
}

#[test]
fn disappearing_messages_are_set_from_the_chat_and_leave_it_when_they_expire() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (alice, bob) = pair(&dir);
    let b = chat(&bob, &["alice"], 80, 24);
    b.wait_text("alice: hello").unwrap();
    stop_writing(&b);
    b.keys(&["t"]).unwrap();
    b.wait_text("Messages disappear after").unwrap();
    b.type_text("2s").unwrap();
    b.keys(&["Enter"]).unwrap();
    let screen = b
        .wait_text("messages now disappear 2s after they are sent")
        .unwrap();
    assert!(screen.contains("disappearing 2s"), "{screen}");
    // The setting reached alice's host; what she sends now shows, then leaves bob's screen
    // when his host deletes it (its deletion event), with no key pressed.
    let deadline = std::time::Instant::now() + LIMIT;
    while alice.ctl_json(&["conversations"]).unwrap()[0]["expire_seconds"] != 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the setting never reached alice"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    alice.send("bob", "gone soon").unwrap();
    b.wait_text("alice: gone soon").unwrap();
    b.wait_for("the message to expire", |s| !s.contains("gone soon"))
        .unwrap();
    assert!(bob
        .history("alice")
        .unwrap()
        .iter()
        .all(|m| m["body"] != "gone soon"));
}

#[test]
fn the_chat_connects_again_when_its_host_restarts() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (mut alice, bob) = pair(&dir);
    let a = chat(&alice, &["bob"], 80, 24);
    a.wait_text("me: hello").unwrap();
    alice.stop().unwrap();
    a.wait_text("the host is unreachable").unwrap();
    alice.start_again().unwrap();
    a.wait_text("connected to the host again").unwrap();
    // Live again: bob's next message shows, and the chat still sends.
    bob.send("alice", "still there?").unwrap();
    a.wait_text("bob: still there?").unwrap();
    a.type_text("yes").unwrap();
    a.keys(&["Enter"]).unwrap();
    bob.wait_history("alice", LIMIT, |h| h.iter().any(|m| m["body"] == "yes"))
        .unwrap();
    assert_eq!(a.exit_status().unwrap(), None, "the chat is still running");
    // Stopped while it waits for the host, it ends cleanly (and gives the terminal back).
    alice.stop().unwrap();
    a.wait_text("the host is unreachable").unwrap();
    let pid = a.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    a.wait_for("the chat to exit", |_| a.exit_status().unwrap().is_some())
        .unwrap();
    assert_eq!(a.exit_status().unwrap(), Some(0));
}

#[test]
fn a_changed_key_is_a_warning_and_blocks_sending_until_accepted_on_the_verification_screen() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (mut alice, bob) = pair(&dir);
    let b = chat(&bob, &["alice"], 80, 24);
    b.wait_text("alice: hello").unwrap();

    // alice starts over with a new identity under the same name, and writes.
    alice.stop().unwrap();
    alice.deregister_at(&dir).unwrap();
    let alice2 = HostProcess::start("alice", &dir, "127.0.0.3", &[]).unwrap();
    alice2.register().unwrap();
    alice2.send("bob", "it is me, new phone").unwrap();
    let screen = b.wait_text("WARNING").unwrap();
    assert!(screen.contains("KEY CHANGED"), "{screen}");
    assert!(screen.contains("identity key changed"), "{screen}");
    keep_screen("bob-key-changed-80x24", &screen);
    // The list marks it too.
    assert!(screen.contains("│>!alice"), "{screen}");

    // Sending is refused, and says where to go.
    b.type_text("are you you?").unwrap();
    b.keys(&["Enter"]).unwrap();
    let screen = b.wait_text("error:").unwrap();
    assert!(screen.contains("key changed"), "{screen}");
    assert!(!screen.contains("me: are you you?"), "{screen}");
    assert!(bob.history("alice").unwrap().len() == 1);

    // The verification screen shows the numbers, and only there can the key be accepted.
    stop_writing(&b);
    b.keys(&["v"]).unwrap();
    let screen = b.wait_text("Safety number").unwrap();
    keep_screen("bob-verify-80x24", &screen);
    let v = bob.ctl_json(&["verify", "alice"]).unwrap();
    let digits = v["safety_number"].as_str().unwrap().replace(' ', "");
    assert_eq!(digits.len(), 60);
    // Three rows of four groups of five.
    for row in 0..3 {
        let groups: Vec<&str> = (0..4)
            .map(|g| &digits[(row * 4 + g) * 5..(row * 4 + g + 1) * 5])
            .collect();
        assert!(screen.contains(&groups.join(" ")), "{screen}");
    }
    assert!(
        !screen.contains(&format!("{} {}", &digits[15..20], &digits[20..25])),
        "{screen}"
    );
    assert!(screen.contains("press A to accept"), "{screen}");
    b.keys(&["A"]).unwrap();
    b.wait_text("the new key is accepted").unwrap();
    b.keys(&["Escape"]).unwrap();
    let screen = b
        .wait_for("the warning to go", |s| !s.contains("WARNING"))
        .unwrap();
    assert!(!screen.contains("KEY CHANGED"), "{screen}");
    // The held message comes through, and bob can write again.
    b.wait_text("alice: it is me, new phone").unwrap();
    // What was refused is still in the compose box, not lost; bob writes something else.
    b.keys(&["i"]).unwrap();
    let screen = b.wait_text("Enter sends").unwrap();
    assert!(screen.contains("│are you you?"), "{screen}");
    b.keys(&["C-u"]).unwrap();
    b.type_text("welcome back").unwrap();
    b.keys(&["Enter"]).unwrap();
    b.wait_text("me: welcome back").unwrap();
    alice2
        .wait_history("bob", LIMIT, |h| {
            h.iter().any(|m| m["body"] == "welcome back")
        })
        .unwrap();
}

#[test]
fn a_ringing_call_is_a_banner_and_is_answered_from_the_keyboard() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (alice, bob) = pair(&dir);
    let b = chat(
        &bob,
        &["--video", "test", "--audio", "test", "--sink", "null"],
        80,
        24,
    );
    let caller = alice
        .ctl_spawn(&[
            "call",
            "bob",
            "--video",
            "test",
            "--audio",
            "test",
            "--sink",
            "null",
            "--duration",
            "120",
            "--stats",
        ])
        .unwrap();
    // The banner shows whatever is open (here: nothing).
    let screen = b.wait_text("RINGING").unwrap();
    assert!(screen.contains("alice is calling (video)"), "{screen}");
    keep_screen("bob-ringing-80x24", &screen);
    b.keys(&["a"]).unwrap();
    let screen = b.wait_text("IN CALL with alice").unwrap();
    assert!(!screen.contains("RINGING"), "{screen}");
    // The status line fills in from the call's statistics.
    let screen = b.wait_text("rtt ").unwrap();
    keep_screen("bob-in-call-80x24", &screen);
    assert!(
        screen.contains("fps") && screen.contains("kbit/s") && screen.contains("loss"),
        "{screen}"
    );
    // Muted is what the call's own state says (the volume element), not the key pressed.
    b.keys(&["m"]).unwrap();
    b.wait_text("MIC MUTED").unwrap();
    b.keys(&["m"]).unwrap();
    b.wait_text("mic on").unwrap();
    // bob hangs up from the keyboard; alice's call ends with the remote hang-up.
    b.keys(&["e"]).unwrap();
    b.wait_for("the call to end", |s| !s.contains("IN CALL"))
        .unwrap();
    let report = call_report(caller);
    assert!(
        report["stats"]["video_frames_decoded"].as_u64().unwrap() > 0,
        "{report}"
    );
    assert_ne!(report["ended"], "hangup", "{report}");

    // A second call rings; d declines it, and alice hears so.
    let caller = alice
        .ctl_spawn(&[
            "call", "bob", "--video", "none", "--audio", "test", "--sink", "null",
        ])
        .unwrap();
    let screen = b.wait_text("RINGING").unwrap();
    assert!(screen.contains("alice is calling (audio)"), "{screen}");
    b.keys(&["d"]).unwrap();
    b.wait_text("declined the call from alice").unwrap();
    let out = finish(caller, LIMIT).unwrap();
    assert!(!out.status.success(), "a declined call is not a success");
    assert!(!b.screen().unwrap().contains("RINGING"));

    // bob calls from the chat with alice: C places an audio call, alice answers elsewhere.
    b.keys(&["Enter"]).unwrap();
    b.wait_text("to alice: Enter sends").unwrap();
    stop_writing(&b);
    let answer = alice
        .ctl_spawn(&[
            "answer",
            "--wait",
            "30",
            "--video",
            "none",
            "--audio",
            "test",
            "--sink",
            "null",
            "--duration",
            "60",
            "--stats",
        ])
        .unwrap();
    b.keys(&["C"]).unwrap();
    let screen = b.wait_text("IN CALL with alice").unwrap();
    assert!(
        !screen.contains("fps"),
        "an audio call shows no video figures:\n{screen}"
    );
    b.wait_text("rtt ").unwrap();
    b.keys(&["e"]).unwrap();
    b.wait_text("the call with alice ended").unwrap();
    let report = call_report(answer);
    assert!(
        report["stats"]["audio_packets_decoded"].as_u64().unwrap() > 0,
        "{report}"
    );
}

/// The `--stats` report of a `call` or `answer` that ended well.
fn call_report(child: std::process::Child) -> serde_json::Value {
    let out = finish(child, LIMIT).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What a hostile peer might send to break a terminal.
fn hostile_messages() -> Vec<String> {
    vec![
        // Colour, clear screen, cursor home, a window title, an OSC 8 link.
        "red\u{1b}[31mALERT\u{1b}[2J\u{1b}[H\u{1b}]0;pwned\u{7}\u{1b}]8;;http://x\u{1b}\\link"
            .into(),
        // A right-to-left override that would reverse what follows.
        "abc\u{202E}txt.exe".into(),
        // A lone combining mark, zero-width space, wide characters.
        "\u{301} zero\u{200B}width 日本語テキスト".into(),
        // 64 KiB without a newline.
        "w".repeat(64 * 1024),
        "after the flood".into(),
    ]
}

#[test]
fn hostile_text_cannot_move_the_cursor_recolour_or_break_the_layout() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (alice, bob) = pair(&dir);
    // No colours at all under NO_COLOR: any colour on the screen would be the peer's.
    let mut cmd = bob.ctl_command(&["chat", "alice"]).unwrap();
    cmd.env("NO_COLOR", "1");
    let b = Tmux::start("bob", &cmd, 80, 24).unwrap();
    b.wait_text("alice: hello").unwrap();
    let clean = b.screen().unwrap();
    for text in hostile_messages() {
        alice.send("bob", &text).unwrap();
    }
    let screen = b.wait_text("alice: after the flood").unwrap();
    keep_screen("bob-hostile-80x24", &screen);
    let rows = rows(&screen);
    // The frame is where it was: same rows, same borders, the title and compose box intact.
    assert_eq!(rows.len(), 24, "{screen}");
    let before = rows_of(&clean);
    for i in [0, 18, 19, 20, 21, 23] {
        assert_eq!(rows[i], before[i], "row {i} moved:\n{screen}");
    }
    for row in &rows[1..18] {
        assert_eq!(row.width(), 80, "{screen}");
        assert!(row.starts_with('│') && row.ends_with('│'), "{screen}");
        assert_eq!(row.chars().nth(19), Some('│'), "{screen}");
        assert_eq!(row.chars().nth(20), Some('│'), "{screen}");
    }
    // The 64 KiB line is cut to a few lines with a note, the rest shows.
    assert!(screen.contains("more lines"), "{screen}");
    // Scrolling up shows the others, drawn as what they are.
    stop_writing(&b);
    b.keys(&["k", "k"]).unwrap();
    let screen = wait_chosen(&b, "zero");
    assert!(
        screen.contains("\u{25CC}\u{301}"),
        "a lone mark sits on a dotted circle:\n{screen}"
    );
    assert!(screen.contains("zero\u{FFFD}width"), "{screen}");
    assert!(screen.contains("日本語テキスト"), "{screen}");
    b.keys(&["k"]).unwrap();
    let screen = wait_chosen(&b, "txt.exe");
    assert!(screen.contains("abc\u{FFFD}txt.exe"), "{screen}");
    b.keys(&["k"]).unwrap();
    let screen = wait_chosen(&b, "ALERT");
    keep_screen("bob-hostile-escapes-80x24", &screen);
    assert!(
        screen.contains("red\u{241B}[31mALERT\u{241B}[2J\u{241B}[H\u{241B}]0;pwned"),
        "{screen}"
    );
    for row in &rows_of(&screen)[..22] {
        assert_eq!(row.width(), 80, "{screen}");
    }
    // No colour anywhere (NO_COLOR, and none leaked), no title set, and the cursor is ours.
    let attributes = b.screen_with_attributes().unwrap();
    for colour in ["[31m", "[38;", "[48;", "[4", "]0;", "]8;"] {
        assert!(
            !attributes
                .replace("[49m", "")
                .replace("[39m", "")
                .contains(&format!("\u{1b}{colour}")),
            "{colour:?} on the screen:\n{attributes:?}"
        );
    }
    // No title was set.
    assert!(
        !b.title().unwrap().contains("pwned"),
        "{}",
        b.title().unwrap()
    );
    // Writing again puts the cursor in the compose box, where it belongs.
    b.keys(&["i"]).unwrap();
    b.wait_text("Enter sends").unwrap();
    let (x, y) = b.cursor().unwrap();
    assert_eq!((x, y), (1, 20), "{}", b.screen().unwrap());
}

/// Waits until the chosen message (marked `›`) is the one holding `text`.
fn wait_chosen(t: &Tmux, text: &str) -> String {
    t.wait_for(&format!("the message with {text:?} chosen"), |s| {
        s.lines().any(|l| l.contains('›') && l.contains(text))
    })
    .unwrap()
}

fn rows_of(screen: &str) -> Vec<&str> {
    screen.lines().collect()
}

#[test]
fn plain_mode_sends_and_reads_through_pipes() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    let (alice, bob) = pair(&dir);
    let mut plain = alice
        .ctl_command(&["chat", "--plain", "bob"])
        .unwrap()
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = plain.stdin.take().unwrap();
    let (tx, lines) = std::sync::mpsc::channel();
    let stdout = plain.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let mut wait_line = |what: &dyn Fn(&str) -> bool| -> String {
        let deadline = std::time::Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    seen.push(line.clone());
                    if what(&line) {
                        return line;
                    }
                }
                Err(_) => panic!("no such line; saw {seen:#?}"),
            }
        }
    };
    wait_line(&|l| l.starts_with("* chat with bob"));
    wait_line(&|l| l.contains("me: hello ("));
    writeln!(stdin, "hello over a pipe").unwrap();
    wait_line(&|l| l.contains("me: hello over a pipe"));
    bob.wait_history("alice", LIMIT, |h| {
        h.iter().any(|m| m["body"] == "hello over a pipe")
    })
    .unwrap();
    wait_line(&|l| l.contains("to bob: delivered"));
    // bob's answer arrives as a line; hostile bytes in it do not reach the pipe as escapes.
    bob.send("alice", "got it \u{1b}[2J\u{202E}ok").unwrap();
    let line = wait_line(&|l| l.contains("bob: got it"));
    assert!(line.contains("got it \u{241B}[2J\u{FFFD}ok"), "{line:?}");
    writeln!(stdin, "/verify").unwrap();
    wait_line(&|l| l.starts_with("* safety number with bob:"));
    writeln!(stdin, "/quit").unwrap();
    let out = finish(plain, LIMIT).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Under a pipe, the full screen refuses and says to use --plain.
    let out = alice
        .ctl_command(&["chat"])
        .unwrap()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--plain"));
}
