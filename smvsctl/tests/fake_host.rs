//! smvsctl against an in-process fake smvsd: a minimal `Host` served over a real Unix socket in a
//! temporary directory, exactly as smvsd serves it (plain two-party Cap'n Proto RPC). The first
//! tests call the library's client and commands in-process; the last ones run the real
//! `smvsctl` binary against the same fake, to check exit statuses and what reaches the terminal.
//! (Tests with the real smvsd live with smvsd.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failed step is a failed test

use std::cell::RefCell;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command as Process, Stdio};
use std::rc::Rc;

use capnp::capability::Rc as CapRc;
use smvs_schema::local_capnp::{event, event_sink, host, message, subscription};
use smvs_schema::Username;
use smvsctl::client::{KeyChoice, Start};
use smvsctl::{commands, CtlError, ErrorCode, Format, MessageId};
use tokio::sync::Notify;

const SENT_ID: [u8; 16] = [0xab; 16];
const INCOMING_ID: [u8; 16] = [0x01; 16];

struct Stored {
    id: [u8; 16],
    from: String,
    to: String,
    time: i64,
    body: String,
    status: message::Status,
}

/// A host with one user, alice, who has one message from bob.
struct FakeHost {
    messages: RefCell<Vec<Stored>>,
    /// Sinks stay subscribed for as long as the host runs, as smvsd keeps them.
    subscribers: RefCell<Vec<event_sink::Client>>,
    /// Notified to close every connection, as a stopping smvsd would.
    hangup: Rc<Notify>,
    /// Hang up right after a subscriber got its events.
    hang_up_after_events: bool,
}

impl FakeHost {
    fn new(hang_up_after_events: bool) -> Self {
        FakeHost {
            hangup: Rc::new(Notify::new()),
            subscribers: RefCell::new(Vec::new()),
            hang_up_after_events,
            messages: RefCell::new(vec![Stored {
                id: INCOMING_ID,
                from: "bob".into(),
                to: "alice".into(),
                time: 1_700_000_000_123,
                body: "hi alice".into(),
                status: message::Status::Received,
            }]),
        }
    }
}

struct FakeSubscription;
impl subscription::Server for FakeSubscription {}

impl host::Server for FakeHost {
    async fn status(
        self: CapRc<Self>,
        _: host::StatusParams,
        mut results: host::StatusResults,
    ) -> Result<(), capnp::Error> {
        let mut s = results.get().init_status();
        s.set_username("alice");
        s.set_registered(true);
        s.set_fingerprint("05ab 77cd");
        s.set_host_address("127.0.0.1:7421");
        s.set_directory("127.0.0.1:7420");
        s.set_queued(1);
        s.set_version("fake");
        Ok(())
    }

    async fn send(
        self: CapRc<Self>,
        params: host::SendParams,
        mut results: host::SendResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let to = params.get_to()?.to_string()?;
        if to == "carol" {
            return Err(capnp::Error::failed(
                "key-changed: carol's identity key changed; compare safety numbers with \
                 `smvsctl verify carol`"
                    .into(),
            ));
        }
        let body = params.get_body()?.to_string()?;
        self.messages.borrow_mut().push(Stored {
            id: SENT_ID,
            from: "alice".into(),
            to,
            time: 1_700_000_001_000,
            body,
            status: message::Status::Queued,
        });
        results.get().set_id(&SENT_ID);
        Ok(())
    }

    async fn history(
        self: CapRc<Self>,
        params: host::HistoryParams,
        mut results: host::HistoryResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let peer = params.get_peer()?.to_string()?;
        let limit = params.get_limit() as usize;
        let all = self.messages.borrow();
        let mine: Vec<&Stored> = all
            .iter()
            .filter(|m| m.from == peer || m.to == peer)
            .collect();
        let skip = if limit == 0 {
            0
        } else {
            mine.len().saturating_sub(limit)
        };
        let mine = &mine[skip..];
        let mut list = results.get().init_messages(mine.len() as u32);
        for (i, m) in mine.iter().enumerate() {
            let mut b = list.reborrow().get(i as u32);
            b.set_id(&m.id);
            b.set_from(m.from.as_str());
            b.set_to(m.to.as_str());
            b.set_time(m.time);
            b.set_body(m.body.as_str());
            b.set_status(m.status);
            b.set_integrity(if m.status == message::Status::Received {
                message::Integrity::Ok
            } else {
                message::Integrity::Unchecked
            });
        }
        Ok(())
    }

    /// Sends three events, one after the other, to the new subscriber.
    async fn subscribe(
        self: CapRc<Self>,
        params: host::SubscribeParams,
        mut results: host::SubscribeResults,
    ) -> Result<(), capnp::Error> {
        let sink = params.get()?.get_sink()?;
        let hangup = self.hang_up_after_events.then(|| self.hangup.clone());
        let this = self.clone();
        tokio::task::spawn_local(async move {
            for n in 0..3u8 {
                let mut request = sink.event_request();
                {
                    let e = request.get().init_event();
                    match n {
                        0 => {
                            let mut m = e.init_message_received();
                            m.set_id(&INCOMING_ID);
                            m.set_peer("bob");
                            m.set_time(1_700_000_000_123);
                        }
                        1 => {
                            let mut s = e.init_message_status();
                            s.set_id(&SENT_ID);
                            s.set_peer("bob");
                            s.set_status(message::Status::Delivered);
                        }
                        _ => {
                            let mut e: event::Builder<'_> = e;
                            e.set_key_changed("carol");
                        }
                    }
                }
                if request.send().promise.await.is_err() {
                    return;
                }
            }
            if let Some(hangup) = hangup {
                hangup.notify_waiters();
            } else {
                this.subscribers.borrow_mut().push(sink);
            }
        });
        results
            .get()
            .set_subscription(capnp_rpc::new_client(FakeSubscription));
        Ok(())
    }

    async fn verify(
        self: CapRc<Self>,
        params: host::VerifyParams,
        mut results: host::VerifyResults,
    ) -> Result<(), capnp::Error> {
        let params = params.get()?;
        let user = params.get_user()?.to_string()?;
        let accept = params.get_accept_new_key();
        let mut v = results.get().init_verification();
        v.set_safety_number("123456789012345678901234567890123456789012345678901234567890");
        v.set_transcript_hash("c0ffee");
        v.set_key_changed(user == "carol");
        v.set_accepted(user == "carol" && accept);
        v.set_session_version(2);
        Ok(())
    }
    // Everything else is left unimplemented: smvsctl must say the daemon does not support it.
}

/// Serves `host` on `listener` until the task is dropped: one RPC system per connection, each
/// ended early when `hangup` is notified.
async fn serve(listener: tokio::net::UnixListener, host: host::Client, hangup: Rc<Notify>) {
    while let Ok((stream, _)) = listener.accept().await {
        let system = smvs_transport::rpc::local_server(stream, host.clone().client);
        let hangup = hangup.clone();
        tokio::task::spawn_local(async move {
            tokio::select! {
                _ = system => {}
                () = hangup.notified() => {}
            }
        });
    }
}

fn socket_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("smvsd.sock")
}

/// Binds the socket now (so it exists before anyone connects) and serves it on the current
/// LocalSet.
fn start_in_process(path: &Path, hang_up_after_events: bool) {
    let listener = tokio::net::UnixListener::bind(path).unwrap();
    let fake = FakeHost::new(hang_up_after_events);
    let hangup = fake.hangup.clone();
    let host: host::Client = capnp_rpc::new_client(fake);
    tokio::task::spawn_local(serve(listener, host, hangup));
}

/// Binds the socket now and serves it from a thread of its own, for tests that run the binary.
fn start_on_thread(path: &Path) {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, async move {
            let listener = tokio::net::UnixListener::from_std(listener).unwrap();
            let fake = FakeHost::new(false);
            let hangup = fake.hangup.clone();
            let host: host::Client = capnp_rpc::new_client(fake);
            serve(listener, host, hangup).await;
        });
    });
}

fn name(s: &str) -> Username {
    Username::parse(s).unwrap()
}

/// Runs `body` inside a LocalSet with a fake host listening on a fresh socket.
async fn with_fake_host<F, Fut>(body: F)
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    with_fake_host_hanging_up(false, body).await;
}

async fn with_fake_host_hanging_up<F, Fut>(hang_up_after_events: bool, body: F)
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            start_in_process(&path, hang_up_after_events);
            body(path.clone()).await;
        })
        .await;
}

fn text(buf: Vec<u8>) -> String {
    String::from_utf8(buf).unwrap()
}

#[tokio::test]
async fn send_returns_the_id_and_history_renders_it() {
    with_fake_host(|path| async move {
        let host = smvsctl::connect(&path).await.unwrap();
        assert_eq!(host.path(), path.as_path());

        let id = host.send(&name("bob"), "see you at eight").await.unwrap();
        assert_eq!(id, MessageId::from_slice(&SENT_ID).unwrap());

        let mut out = Vec::new();
        commands::send(&host, Format::Text, &mut out, &name("bob"), "again")
            .await
            .unwrap();
        assert_eq!(text(out), format!("{}\n", "ab".repeat(16)));

        let mut out = Vec::new();
        commands::send(&host, Format::Json, &mut out, &name("bob"), "json")
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "ab".repeat(16), "to": "bob"})
        );

        let mut out = Vec::new();
        commands::history(&host, Format::Text, &mut out, &name("bob"), 2, None)
            .await
            .unwrap();
        let out = text(out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            vec![
                format!(
                    "2023-11-14T22:13:21.000Z  alice -> bob  [queued, integrity unchecked]  id {}",
                    "ab".repeat(16)
                )
                .as_str(),
                "    again",
                format!(
                    "2023-11-14T22:13:21.000Z  alice -> bob  [queued, integrity unchecked]  id {}",
                    "ab".repeat(16)
                )
                .as_str(),
                "    json",
            ]
        );

        let mut out = Vec::new();
        commands::history(&host, Format::Json, &mut out, &name("bob"), 0, None)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let list = json.as_array().unwrap();
        assert_eq!(list.len(), 4);
        assert_eq!(
            list[0],
            serde_json::json!({
                "id": "01".repeat(16), "from": "bob", "to": "alice", "time": 1_700_000_000_123_i64,
                "status": "received", "reason": "", "integrity": "ok", "body": "hi alice"
            })
        );
    })
    .await;
}

#[tokio::test]
async fn refusals_come_back_as_their_human_text() {
    with_fake_host(|path| async move {
        let host = smvsctl::connect(&path).await.unwrap();
        let mut out = Vec::new();
        let e = commands::send(&host, Format::Text, &mut out, &name("carol"), "hi")
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::KeyChanged));
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            e.to_string(),
            "carol's identity key changed; compare safety numbers with `smvsctl verify carol`"
        );
        assert!(out.is_empty(), "nothing printed on failure");

        // A method this smvsd does not implement.
        let e = host.expire(&name("bob"), 60).await.unwrap_err();
        assert!(matches!(e, CtlError::Unsupported(_)), "{e:?}");
    })
    .await;
}

#[tokio::test]
async fn status_whoami_and_verify() {
    with_fake_host(|path| async move {
        let host = smvsctl::connect(&path).await.unwrap();
        let status = host.status().await.unwrap();
        assert_eq!(status.username.as_deref(), Some("alice"));
        assert_eq!(status.queued, 1);

        let mut out = Vec::new();
        commands::whoami(&host, Format::Text, &mut out, false)
            .await
            .unwrap();
        assert_eq!(text(out), "alice\nfingerprint: 05ab 77cd\n");

        let mut out = Vec::new();
        commands::verify(
            &host,
            Format::Text,
            &mut out,
            &name("carol"),
            KeyChoice::Accept,
        )
        .await
        .unwrap();
        let out = text(out);
        assert!(out.starts_with("carol's identity key changed, and the new key is now accepted."));
        assert!(out.contains("    12345 67890 12345 67890\n"));
        assert!(out.contains("Transcript hash: c0ffee\n"));
        assert!(out.ends_with("Session: v2 (forward-secret ratchet, post-quantum keys)\n"));
    })
    .await;
}

#[tokio::test]
async fn watch_prints_one_line_per_event_and_stops_after_count() {
    with_fake_host(|path| async move {
        let host = smvsctl::connect(&path).await.unwrap();
        let mut out = Vec::new();
        commands::watch(
            &host,
            Format::Json,
            &mut out,
            Some(3),
            &Start::Live,
            std::future::pending(),
        )
        .await
        .unwrap();
        let out = text(out);
        let events: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(
            events,
            vec![
                serde_json::json!({"event": "message_received", "id": "01".repeat(16),
                                   "peer": "bob", "time": 1_700_000_000_123_i64,
                                   "seq": 0, "replayed": false}),
                serde_json::json!({"event": "message_status", "id": "ab".repeat(16),
                                   "peer": "bob", "status": "delivered",
                                   "seq": 0, "replayed": false}),
                serde_json::json!({"event": "key_changed", "peer": "carol",
                                   "seq": 0, "replayed": false}),
            ]
        );

        // A stop (SIGINT/SIGTERM in the binary) ends the watch successfully.
        let mut out = Vec::new();
        commands::watch(&host, Format::Text, &mut out, None, &Start::Live, async {})
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn watch_fails_when_smvsd_closes_the_connection() {
    with_fake_host_hanging_up(true, |path| async move {
        let host = smvsctl::connect(&path).await.unwrap();
        let mut out = Vec::new();
        let e = commands::watch(
            &host,
            Format::Text,
            &mut out,
            None,
            &Start::Live,
            std::future::pending(),
        )
        .await
        .unwrap_err();
        // Every event that arrived was printed before the close was reported.
        assert_eq!(text(out).lines().count(), 3);
        assert!(matches!(e, CtlError::Disconnected(_)), "{e:?}");
        assert_eq!(e.exit_code(), 1);
        assert!(
            e.to_string()
                .starts_with("lost the connection to smvsd: smvsd "),
            "{e}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_missing_socket_says_smvsd_must_run() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    let local = tokio::task::LocalSet::new();
    let e = local
        .run_until(smvsctl::connect(&path))
        .await
        .err()
        .unwrap();
    assert_eq!(e.exit_code(), 1);
    let message = e.to_string();
    assert!(
        message.starts_with(&format!("cannot reach smvsd at {}: ", path.display())),
        "{message}"
    );
    assert!(message.contains("smvsd must be running"), "{message}");
}

#[tokio::test]
async fn a_daemon_that_hangs_up_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let local = tokio::task::LocalSet::new();
    local
        .run_until(async {
            // Accepts and hangs up at once, like smvsd refusing a user by SO_PEERCRED.
            tokio::task::spawn_local(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    drop(stream);
                }
            });
            let host = smvsctl::connect(&path).await.unwrap();
            let e = host.status().await.unwrap_err();
            assert!(matches!(e, CtlError::Disconnected(_)), "{e:?}");
            assert_eq!(e.exit_code(), 1);

            let host = smvsctl::connect(&path).await.unwrap();
            let mut out = Vec::new();
            let e = commands::watch(
                &host,
                Format::Text,
                &mut out,
                None,
                &Start::Live,
                std::future::pending(),
            )
            .await
            .unwrap_err();
            assert!(matches!(e, CtlError::Disconnected(_)), "{e:?}");
        })
        .await;
}

// --- The real binary -------------------------------------------------------------------------

fn smvsctl(socket: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Process::new(env!("CARGO_BIN_EXE_smvsctl"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("SMVS_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn the_binary_reports_success_failure_and_bad_usage() {
    let dir = tempfile::tempdir().unwrap();
    let path = socket_in(&dir);

    // No daemon yet.
    let (code, out, err) = smvsctl(&path, &["status"], "");
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(
        err.starts_with(&format!(
            "smvsctl: cannot reach smvsd at {}: ",
            path.display()
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    start_on_thread(&path);

    let (code, out, err) = smvsctl(&path, &["send", "bob", "-"], "from stdin\n");
    assert_eq!((code, err.as_str()), (0, ""));
    assert_eq!(out, format!("{}\n", "ab".repeat(16)));

    let (code, out, _) = smvsctl(&path, &["--json", "history", "bob", "--limit", "1"], "");
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json[0]["body"], "from stdin");

    let (code, out, err) = smvsctl(&path, &["send", "carol", "hi"], "");
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert_eq!(
        err,
        "smvsctl: carol's identity key changed; compare safety numbers with `smvsctl verify carol`\n"
    );

    let (code, out, _) = smvsctl(&path, &["watch", "--count", "2"], "");
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");

    // Without --count, watch runs until SIGTERM, printing (and flushing) each line as it comes.
    let mut watcher = Process::new(env!("CARGO_BIN_EXE_smvsctl"))
        .arg("--socket")
        .arg(&path)
        .arg("watch")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    for _ in 0..3 {
        lines.next().unwrap().unwrap();
    }
    let killed = Process::new("kill")
        .args(["-TERM", &watcher.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let watched = watcher.wait_with_output().unwrap();
    assert_eq!(
        watched.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&watched.stderr)
    );

    // Bad usage: caught before smvsd is asked.
    let (code, _, err) = smvsctl(&path, &["send", "Not A Name", "hi"], "");
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = smvsctl(&path, &["delete", "bob", "--id", "nothex"], "");
    assert_eq!(code, 2, "{err}");
}
