//! D-Bus: smvsd serves org.smvs.Daemon1 on private dbus-daemons configured like a system bus
//! (default deny + the shipped policy in dist/dbus/).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use smvs_tests::child::KillOnDrop;
use smvs_tests::dbus::{
    ensure_daemon_user, ensure_system_user, host_on_bus, host_on_bus_allowing, repo_root,
    NotificationServer, TestBus, ROOT_OWNS,
};
use smvs_tests::runtime::runtime_and_directory;
use smvs_tests::{DirectoryProcess, HostProcess};

fn busctl(address: &str, args: &[&str]) -> std::process::Output {
    Command::new("busctl")
        .arg(format!("--address={address}"))
        .args(args)
        .output()
        .unwrap()
}

fn call(address: &str, method: &str, signature: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec![
        "call",
        "org.smvs.Daemon1",
        "/org/smvs/Daemon1",
        "org.smvs.Daemon1",
        method,
    ];
    if !signature.is_empty() {
        all.push(signature);
    }
    all.extend_from_slice(args);
    busctl(address, &all)
}

/// A user in group `smvs`, and one outside it, for the policy checks.
fn ensure_users() -> (&'static str, &'static str) {
    let _ = Command::new("groupadd").args(["-f", "smvs"]).status();
    ensure_system_user("smvs-dbustest", Some("smvs"));
    ("smvs-dbustest", "nobody")
}

fn as_user(user: &str, bus: &TestBus, args: &[&str]) -> std::process::Output {
    bus.busctl_as(user, args).unwrap()
}

#[test]
fn busctl_send_on_alices_bus_raises_message_received_on_bobs_bus() {
    let (rt, dir) = runtime_and_directory().unwrap();
    ensure_daemon_user();
    let alice_bus = TestBus::system_like(ROOT_OWNS).unwrap();
    let bob_bus = TestBus::system_like(ROOT_OWNS).unwrap();
    let alice = host_on_bus("alice", &dir, "127.0.0.1", &alice_bus).unwrap();
    let bob = host_on_bus("bob", &dir, "127.0.0.2", &bob_bus).unwrap();
    let out = call(&alice_bus.address, "Register", "s", &["alice"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    bob.register().unwrap();

    rt.block_on(async {
        let (_connection, proxy) = daemon_proxy(&bob_bus.address).await;
        let mut received = proxy.receive_signal("MessageReceived").await.unwrap();

        let out = call(
            &alice_bus.address,
            "Send",
            "ss",
            &["bob", "hello over D-Bus"],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sent_id = String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("s ")
            .trim_matches('"')
            .to_owned();
        assert_eq!(sent_id.len(), 32, "{sent_id}");

        let signal = tokio::time::timeout(Duration::from_secs(30), received.next())
            .await
            .unwrap()
            .unwrap();
        let (id, sender, _time): (String, String, i64) = signal.body().deserialize().unwrap();
        assert_eq!(id, sent_id);
        assert_eq!(sender, "alice");
        // The signal carries no text; the text comes from a method call the policy guards.
        let (_, from, to, _, body, status, _): (
            String,
            String,
            String,
            i64,
            String,
            String,
            String,
        ) = proxy
            .call("GetMessage", &("alice", id.as_str()))
            .await
            .unwrap();
        assert_eq!(
            (from.as_str(), to.as_str(), body.as_str(), status.as_str()),
            ("alice", "bob", "hello over D-Bus", "received")
        );
        // Errors have D-Bus names.
        let err = proxy
            .call::<_, _, String>("Send", &("no such user!", "x"))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("org.smvs.Daemon1.Error.BadRequest"),
            "{err}"
        );
    });
    // Properties are there for busctl too.
    let out = busctl(
        &bob_bus.address,
        &[
            "get-property",
            "org.smvs.Daemon1",
            "/org/smvs/Daemon1",
            "org.smvs.Daemon1",
            "Username",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "s \"bob\"");
    drop(alice);
}

#[test]
fn the_policy_lets_group_smvs_in_and_keeps_everyone_else_out() {
    let (member, outsider) = ensure_users();
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    ensure_daemon_user();
    let bus = TestBus::system_like(ROOT_OWNS).unwrap();
    let bob = host_on_bus_allowing("bob", &dir, "127.0.0.2", &bus, &[member]).unwrap();
    bob.register().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    alice.register().unwrap();

    let denied = ["Status", "Conversations", "Contacts"];
    for method in denied {
        let out = as_user(
            outsider,
            &bus,
            &[
                "call",
                "org.smvs.Daemon1",
                "/org/smvs/Daemon1",
                "org.smvs.Daemon1",
                method,
            ],
        );
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("Access denied") || err.contains("AccessDenied"),
            "{method}: {err}"
        );
    }
    let out = as_user(
        outsider,
        &bus,
        &[
            "call",
            "org.smvs.Daemon1",
            "/org/smvs/Daemon1",
            "org.smvs.Daemon1",
            "Send",
            "ss",
            "alice",
            "x",
        ],
    );
    assert!(!out.status.success());
    // A member of group smvs can send.
    let out = as_user(
        member,
        &bus,
        &[
            "call",
            "org.smvs.Daemon1",
            "/org/smvs/Daemon1",
            "org.smvs.Daemon1",
            "Send",
            "ss",
            "alice",
            "from a member",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    alice
        .wait_history("bob", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
}

#[test]
fn the_live_interface_matches_the_shipped_introspection_xml() {
    let dir = DirectoryProcess::start_sqlite_blocking().unwrap();
    ensure_daemon_user();
    let bus = TestBus::system_like(ROOT_OWNS).unwrap();
    let _bob = host_on_bus("bob", &dir, "127.0.0.2", &bus).unwrap();
    let out = busctl(
        &bus.address,
        &[
            "introspect",
            "--xml-interface",
            "org.smvs.Daemon1",
            "/org/smvs/Daemon1",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let live_xml = String::from_utf8_lossy(&out.stdout).into_owned();
    let live = interface_element(&live_xml);
    let contract_path = repo_root().join("dist/dbus/org.smvs.Daemon1.xml");
    if std::env::var_os("SMVS_WRITE_DBUS_CONTRACT").is_some() {
        // A deliberate interface change: splice the live interface element into the contract.
        let text = std::fs::read_to_string(&contract_path).unwrap();
        let element = |xml: &str| {
            let start = xml.find(r#"<interface name="org.smvs.Daemon1">"#).unwrap();
            let end = start + xml[start..].find("</interface>").unwrap() + "</interface>".len();
            (start, end)
        };
        let (ls, le) = element(&live_xml);
        let (cs, ce) = element(&text);
        let updated = format!("{}{}{}", &text[..cs], &live_xml[ls..le], &text[ce..]);
        std::fs::write(&contract_path, updated).unwrap();
    }
    let contract = interface_element(&std::fs::read_to_string(&contract_path).unwrap());
    assert_eq!(
        live,
        contract,
        "the live org.smvs.Daemon1 differs from {}",
        contract_path.display()
    );
}

/// The `<interface name="org.smvs.Daemon1">` element, with whitespace between tags removed.
fn interface_element(xml: &str) -> String {
    let start = xml
        .find(r#"<interface name="org.smvs.Daemon1">"#)
        .expect("interface element");
    let end =
        start + xml[start..].find("</interface>").expect("end of interface") + "</interface>".len();
    xml[start..end]
        .split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("<!--"))
        .collect::<Vec<_>>()
        .join("")
}

#[test]
fn smvsctl_agent_turns_message_received_into_a_desktop_notification() {
    use std::io::BufRead;
    ensure_daemon_user();
    let (rt, dir) = runtime_and_directory().unwrap();
    let system = TestBus::system_like(ROOT_OWNS).unwrap();
    let session = TestBus::session_like().unwrap();
    let bob = host_on_bus("bob", &dir, "127.0.0.2", &system).unwrap();
    bob.register().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    alice.register().unwrap();

    let notifications = rt.block_on(NotificationServer::start(&session)).unwrap();

    let agent = Command::new(smvs_tests::daemon::binary("smvsctl").unwrap())
        .args(["agent", "--preview"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &system.address)
        .env("DBUS_SESSION_BUS_ADDRESS", &session.address)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = KillOnDrop(agent);
    // The agent says when it has subscribed; only then does alice write.
    let mut ready = String::new();
    std::io::BufReader::new(agent.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.contains("relaying"), "{ready:?}");

    alice.send("bob", "see you at eight").unwrap();
    let found = notifications
        .wait_first(Duration::from_secs(30), || match agent.0.try_wait()? {
            Some(status) => anyhow::bail!("smvsctl agent exited early: {status}"),
            None => Ok(()),
        })
        .unwrap();
    assert_eq!(found.0, "SMVS");
    assert_eq!(found.1, "alice: see you at eight");
}

/// A connection to the bus at `address` and a proxy for smvsd's object on it.
async fn daemon_proxy(address: &str) -> (zbus::Connection, zbus::Proxy<'static>) {
    let connection = zbus::connection::Builder::address(address)
        .build()
        .await
        .unwrap();
    let proxy = zbus::Proxy::new(
        &connection,
        "org.smvs.Daemon1",
        "/org/smvs/Daemon1",
        "org.smvs.Daemon1",
    )
    .await
    .unwrap();
    (connection, proxy)
}

#[test]
fn a_per_user_smvsd_raises_notifications_itself_on_the_session_bus() {
    let (rt, dir) = runtime_and_directory().unwrap();
    let session = TestBus::session_like().unwrap();
    let notifications = rt.block_on(NotificationServer::start(&session)).unwrap();
    let mut bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    bob.stop().unwrap();
    // Sender only: the notification must not show the text.
    bob.add_flags(&["--dbus", "session", "--notifications", "sender"]);
    bob.add_env("DBUS_SESSION_BUS_ADDRESS", &session.address);
    bob.start_again().unwrap();
    bob.register().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    alice.register().unwrap();
    alice.send("bob", "a secret plan").unwrap();
    let found = notifications
        .wait_first(Duration::from_secs(30), || Ok(()))
        .unwrap();
    assert_eq!(found.1, "New message from alice");
    assert!(!found.1.contains("secret"));
}

/// A signal seen on the bus: its name and its arguments as text.
type Signal = (String, Vec<String>);

/// The calls of `org.smvs.Daemon1` with the agent as the device that runs them: PlaceCall,
/// AnswerCall and HangupCall over busctl, CallIncoming and CallStateChanged on the bus, and
/// the agent's descriptors and threads after several calls.
#[test]
fn calls_over_dbus_run_in_the_agent() {
    use std::io::BufRead;
    ensure_daemon_user();
    let (rt, dir) = runtime_and_directory().unwrap();
    let system = TestBus::system_like(ROOT_OWNS).unwrap();
    let session = TestBus::session_like().unwrap();
    let alice = host_on_bus("alice", &dir, "127.0.0.1", &system).unwrap();
    alice.register().unwrap();
    let bob = HostProcess::start("bob", &dir, "127.0.0.2", &[]).unwrap();
    bob.register().unwrap();
    alice.send("bob", "hello").unwrap();
    bob.wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();

    // Without an agent there is no device to run a call.
    let out = call(
        &system.address,
        "PlaceCall",
        "sbb",
        &["bob", "true", "true"],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("smvsctl agent"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every call signal on alice's bus, in order.
    let signals = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Signal>::new()));
    let recorded = signals.clone();
    let address = system.address.clone();
    // The block subscribes, then hands back the task that goes on recording.
    #[allow(clippy::async_yields_async)]
    let listening = rt.block_on(async move {
        let (connection, proxy) = daemon_proxy(&address).await;
        let mut states = proxy.receive_signal("CallStateChanged").await.unwrap();
        let mut rings = proxy.receive_signal("CallIncoming").await.unwrap();
        // Subscribed once this returns; the recording runs on.
        let recorder = async move {
            let _keep = connection;
            loop {
                let entry = tokio::select! {
                    Some(s) = states.next() => {
                        let (id, peer, state, reason): (String, String, String, String) =
                            s.body().deserialize().unwrap();
                        ("CallStateChanged".to_string(), vec![id, peer, state, reason])
                    }
                    Some(s) = rings.next() => {
                        let (id, peer, _video, _audio): (String, String, bool, bool) =
                            s.body().deserialize().unwrap();
                        ("CallIncoming".to_string(), vec![id, peer])
                    }
                    else => return,
                };
                recorded.lock().unwrap().push(entry);
            }
        };
        tokio::spawn(recorder)
    });

    let agent = Command::new(smvs_tests::daemon::binary("smvsctl").unwrap())
        .arg("--socket")
        .arg(&alice.socket)
        .args([
            "agent", "--video", "test", "--audio", "test", "--sink", "null",
        ])
        .env("DBUS_SYSTEM_BUS_ADDRESS", &system.address)
        .env("DBUS_SESSION_BUS_ADDRESS", &session.address)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut agent = KillOnDrop(agent);
    let mut ready = String::new();
    std::io::BufReader::new(agent.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.contains("relaying"), "{ready:?}");
    let agent_pid = agent.0.id();
    let resources = || {
        let count = |what: &str| {
            std::fs::read_dir(format!("/proc/{agent_pid}/{what}"))
                .unwrap()
                .count()
        };
        (count("fd"), count("task"))
    };
    let media = ["--video", "test", "--audio", "test", "--sink", "null"];
    let spawn_bob = |args: &[&str]| bob.ctl_spawn(args).unwrap();
    let bob_json = |child: std::process::Child| {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "bob: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let wait_for = |what: &dyn Fn(&[Signal]) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !what(&signals.lock().unwrap()) {
            assert!(
                std::time::Instant::now() < deadline,
                "signals: {:?}",
                signals.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let ended_calls = |s: &[Signal]| {
        s.iter()
            .filter(|(name, args)| name == "CallStateChanged" && args[2] == "ended")
            .count()
    };

    // 1. PlaceCall: the agent rings bob, bob picks up and hangs up after 3 s.
    let mut args = vec!["answer", "--wait", "30", "--duration", "3", "--stats"];
    args.extend(media);
    let answering = spawn_bob(&args);
    let out = call(
        &system.address,
        "PlaceCall",
        "sbb",
        &["bob", "true", "true"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("s ")
        .trim_matches('"')
        .to_string();
    assert_eq!(id.len(), 32, "{id}");
    let answered = bob_json(answering);
    assert!(
        answered["stats"]["video_frames_decoded"].as_u64().unwrap() >= 60,
        "{answered}"
    );
    assert!(
        answered["stats"]["audio_packets_decoded"].as_u64().unwrap() > 100,
        "{answered}"
    );
    wait_for(&|s| ended_calls(s) == 1);
    {
        let s = signals.lock().unwrap();
        let states: Vec<(&str, &str)> = s
            .iter()
            .filter(|(name, args)| name == "CallStateChanged" && args[0] == id)
            .map(|(_, a)| (a[2].as_str(), a[3].as_str()))
            .collect();
        assert_eq!(
            states,
            [("ringing", ""), ("active", ""), ("ended", "remote-hangup")]
        );
    }
    // The agent's media is gone: give it a moment, then take its measure.
    std::thread::sleep(Duration::from_millis(500));
    let after_first = resources();

    // 2. bob calls alice: CallIncoming on alice's bus; AnswerCall runs it in the agent.
    let mut args = vec!["call", "alice", "--duration", "3", "--stats"];
    args.extend(media);
    let calling = spawn_bob(&args);
    wait_for(&|s| s.iter().any(|(name, _)| name == "CallIncoming"));
    let out = call(&system.address, "AnswerCall", "s", &[""]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let called = bob_json(calling);
    assert_eq!(called["ended"], "hangup");
    assert!(
        called["stats"]["video_frames_decoded"].as_u64().unwrap() >= 60,
        "{called}"
    );
    wait_for(&|s| ended_calls(s) == 2);

    // 3. HangupCall ends a call the agent runs, on both sides.
    let mut args = vec!["answer", "--wait", "30", "--stats"];
    args.extend(media);
    let answering = spawn_bob(&args);
    let out = call(
        &system.address,
        "PlaceCall",
        "sbb",
        &["bob", "false", "true"],
    );
    assert!(out.status.success());
    wait_for(&|s| {
        s.iter()
            .filter(|(name, a)| name == "CallStateChanged" && a[2] == "active")
            .count()
            == 3
    });
    std::thread::sleep(Duration::from_secs(1));
    let out = call(&system.address, "HangupCall", "s", &[""]);
    assert!(out.status.success());
    let answered = bob_json(answering);
    assert_eq!(answered["ended"], "remote-hangup");
    assert!(answered["stats"]["audio_packets_decoded"].as_u64().unwrap() > 0);
    // PlaceCall asked for audio only: the agent sent no video.
    assert_eq!(answered["stats"]["video_frames_received"], 0, "{answered}");
    wait_for(&|s| ended_calls(s) == 3);

    // Two more calls left the agent holding no more descriptors or threads than one did.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = resources();
        if now.0 <= after_first.0 && now.1 <= after_first.1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "agent fds/threads {now:?} after three calls, {after_first:?} after one"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.0.try_wait().unwrap().is_none(), "the agent exited");
    listening.abort();
}

/// The command façade answers the Unix socket and D-Bus alike: the same refused request gives
/// the same error code on both (the socket's `code:` prefix, D-Bus's error name).
#[test]
fn the_socket_and_dbus_refuse_the_same_request_with_the_same_code() {
    let (rt, dir) = runtime_and_directory().unwrap();
    ensure_daemon_user();
    let bus = TestBus::system_like(ROOT_OWNS).unwrap();
    let alice = host_on_bus("alice", &dir, "127.0.0.1", &bus).unwrap();
    alice.register().unwrap();
    let name = |n: &str| smvs_schema::Username::parse(n).unwrap();
    let unknown_id = smvs_schema::MessageId::random();
    let too_large = "x".repeat(64 * 1024 + 1);
    tokio::task::LocalSet::new().block_on(&rt, async {
        let socket = smvsctl::client::connect(&alice.socket).await.unwrap();
        let (_connection, proxy) = daemon_proxy(&bus.address).await;
        // (what, the socket's refusal, D-Bus's refusal)
        let cases = [
            (
                "send to a name nobody registered",
                socket.send(&name("nosuchuser"), "hello?").await.map(drop),
                proxy
                    .call::<_, _, String>("Send", &("nosuchuser", "hello?"))
                    .await
                    .map(drop),
            ),
            (
                "send to ourselves",
                socket.send(&name("alice"), "me").await.map(drop),
                proxy
                    .call::<_, _, String>("Send", &("alice", "me"))
                    .await
                    .map(drop),
            ),
            (
                "send more than 64 KiB",
                socket.send(&name("bob"), &too_large).await.map(drop),
                proxy
                    .call::<_, _, String>("Send", &("bob", too_large.as_str()))
                    .await
                    .map(drop),
            ),
            (
                "a message that is not there",
                socket.message(&name("bob"), &unknown_id).await.map(drop),
                proxy
                    .call::<_, _, (String, String, String, i64, String, String, String)>(
                        "GetMessage",
                        &("bob", unknown_id.to_hex().as_str()),
                    )
                    .await
                    .map(drop),
            ),
            (
                "verify a name nobody registered",
                socket
                    .verify(&name("nosuchuser"), smvsctl::client::KeyChoice::Look)
                    .await
                    .map(drop),
                proxy
                    .call::<_, _, (String, String, bool, bool)>("Verify", &("nosuchuser", false))
                    .await
                    .map(drop),
            ),
        ];
        let mut codes = Vec::new();
        for (what, on_socket, on_dbus) in cases {
            let code = on_socket
                .expect_err(what)
                .code()
                .unwrap_or_else(|| panic!("{what}: the socket's refusal has no code"));
            let dbus = on_dbus.expect_err(what).to_string();
            let name = format!("org.smvs.Daemon1.Error.{}", code.dbus_name());
            assert!(
                dbus.contains(&name),
                "{what}: socket said {code}, D-Bus said {dbus}"
            );
            codes.push(code.as_str());
        }
        assert_eq!(
            codes,
            [
                "unknown-user",
                "bad-request",
                "too-large",
                "not-found",
                "unknown-user"
            ]
        );
    });
    // Nothing was queued by any of it.
    let status = alice.ctl_json(&["status"]).unwrap();
    assert_eq!(status["queued"], 0, "{status}");
}

/// Runs `smvs-bus-listen` as `user` (a copy in a directory every user can enter, so a clone
/// in a private folder works too); returns the child once it has subscribed.
fn listen_as(user: &str, address: &str, seconds: u64) -> (tempfile::TempDir, std::process::Child) {
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("smvs-bin-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.path().join("smvs-bus-listen");
    std::fs::copy(
        smvs_tests::daemon::binary("smvs-bus-listen").unwrap(),
        &copy,
    )
    .unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut child = Command::new("runuser")
        .args(["-u", user, "--"])
        .arg(&copy)
        .args([address, &seconds.to_string()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut first).unwrap();
    assert_eq!(
        first.trim(),
        "ready",
        "the listener as {user} did not subscribe"
    );
    child.stdout = Some(out.into_inner());
    (dir, child)
}

/// What a listener heard, once it has run out its time.
fn heard(child: std::process::Child) -> Vec<String> {
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Review finding 1: smvsd's signals (who wrote, when, key changes, calls, property changes)
/// reach root and group `smvs` only; a local user outside the group who subscribes to every
/// signal on the system bus hears none of them. Review finding 2: D-Bus callers are held to
/// smvsd's allowed_uids, as the socket's callers are, even when the bus policy lets them in.
#[test]
fn signals_reach_only_the_group_and_callers_are_held_to_allowed_uids() {
    let (member, outsider) = ensure_users();
    let (_rt, dir) = runtime_and_directory().unwrap();
    ensure_daemon_user();
    let bus = TestBus::system_like(ROOT_OWNS).unwrap();
    let bob = host_on_bus("bob", &dir, "127.0.0.2", &bus).unwrap();
    bob.register().unwrap();
    let alice = HostProcess::start("alice", &dir, "127.0.0.1", &[]).unwrap();
    alice.register().unwrap();

    let (_d1, outsider_ears) = listen_as(outsider, &bus.address, 6);
    let (_d2, member_ears) = listen_as(member, &bus.address, 6);
    alice.send("bob", "who is listening?").unwrap();
    bob.wait_history("alice", Duration::from_secs(30), |h| h.len() == 1)
        .unwrap();
    bob.ctl_ok(&["send", "alice", "hello back"]).unwrap();
    let member_heard = heard(member_ears);
    let outsider_heard = heard(outsider_ears);
    assert!(
        member_heard.iter().any(|s| s == "MessageReceived"),
        "a member of group smvs hears smvsd: {member_heard:?}"
    );
    assert!(
        outsider_heard.is_empty(),
        "a user outside group smvs heard: {outsider_heard:?}"
    );

    // The member may reach the name (bus policy) but is not in bob's allowed_uids: refused by
    // smvsd itself, for methods and properties alike.
    let out = as_user(
        member,
        &bus,
        &[
            "call",
            "org.smvs.Daemon1",
            "/org/smvs/Daemon1",
            "org.smvs.Daemon1",
            "Conversations",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "Conversations was answered");
    assert!(err.contains("may not use this host"), "{err}");
    let out = as_user(
        member,
        &bus,
        &[
            "get-property",
            "org.smvs.Daemon1",
            "/org/smvs/Daemon1",
            "org.smvs.Daemon1",
            "Username",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the Username property was answered");
    assert!(err.contains("Access denied"), "{err}");
    assert!(bob.logs().contains("refused a D-Bus caller"));
}

/// Linked devices over D-Bus: `LinkDevice` gives a code a device pairs with, `Devices` lists
/// it, `RevokeDevice` cuts it off, and `DeviceLinked` / `DeviceRevoked` tell the desktop (the
/// code itself is never in a signal).
#[test]
fn devices_are_linked_listed_and_revoked_over_dbus_with_signals() {
    let (rt, dir) = runtime_and_directory().unwrap();
    ensure_daemon_user();
    let bus = TestBus::system_like(ROOT_OWNS).unwrap();
    let alice = host_on_bus("alice", &dir, "127.0.0.1", &bus).unwrap();
    alice.register().unwrap();
    rt.block_on(async {
        let (_connection, proxy) = daemon_proxy(&bus.address).await;
        let mut linked = proxy.receive_signal("DeviceLinked").await.unwrap();
        let mut revoked = proxy.receive_signal("DeviceRevoked").await.unwrap();
        let (code, address, fingerprint, expires): (String, String, String, i64) =
            proxy.call("LinkDevice", &("laptop",)).await.unwrap();
        assert_eq!(address, alice.device_listen.to_string());
        assert!(!fingerprint.is_empty() && expires > 0);
        let laptop = smvs_tests::device::DeviceProcess::new("laptop", &address).unwrap();
        let paired = laptop.pair(&code).unwrap();
        assert!(paired.status.success(), "{paired:?}");
        let signal = tokio::time::timeout(Duration::from_secs(30), linked.next())
            .await
            .unwrap()
            .unwrap();
        let (name,): (String,) = signal.body().deserialize().unwrap();
        assert_eq!(name, "laptop");
        let devices: Vec<(String, String, bool, i64, i64, String, bool)> =
            proxy.call("Devices", &()).await.unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].0, "laptop");
        assert!(devices[0].2, "the first device is an admin");
        let () = proxy.call("RevokeDevice", &("laptop",)).await.unwrap();
        let signal = tokio::time::timeout(Duration::from_secs(30), revoked.next())
            .await
            .unwrap()
            .unwrap();
        let (name,): (String,) = signal.body().deserialize().unwrap();
        assert_eq!(name, "laptop");
        let err = proxy
            .call::<_, _, ()>("RevokeDevice", &("laptop",))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("org.smvs.Daemon1.Error.NotFound"),
            "{err}"
        );
        assert!(!laptop.ctl(&["status"]).unwrap().status.success());
    });
}
