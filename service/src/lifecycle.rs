//! The one lifecycle every SMVS daemon runs, written once:
//!
//! ```text
//!  stop future armed ─► bind ─► READY=1 + STATUS ─► wait for the stop ─► STOPPING=1 ─► shutdown ─► join
//!  (SIGTERM/SIGINT      │ fails: the error is returned,                  (logs which signal)
//!   handlers installed) │ nothing is announced
//! ```
//!
//! A daemon is a library whose server has `bind`, `shutdown` and `join` (the iroh style), plus a
//! short `main.rs` that parses the command line, builds a runtime and hands `bind` to
//! [`run_until_stopped`]. The stop handlers are installed *before* `bind` starts, so a SIGTERM
//! that arrives while the daemon is still opening its database is not lost: it is seen as soon
//! as the server is up, and the daemon stops cleanly instead of being killed later.
//!
//! Nothing here requires `Send`: the server, its `join` future and the `bind` future may hold
//! `Rc`s and Cap'n Proto capabilities. Run it wherever the server lives:
//!
//! - a current-thread Tokio runtime: `runtime.block_on(run_until_stopped(Server::bind(cfg)))`;
//! - a `LocalSet` on one (needed when `bind` calls `spawn_local`):
//!   `LocalSet::new().block_on(&runtime, run_until_stopped(…))`;
//! - an actix `System` (it is a current-thread Tokio runtime with a `LocalSet`):
//!   `actix::System::new().block_on(run_until_stopped(…))`.
//!
//! Adopting it for a server:
//!
//! ```ignore
//! impl smvs_service::lifecycle::Server for MyServer {
//!     fn status(&self) -> String {
//!         format!("listening on {}", self.local_addr())   // tests read the port from here
//!     }
//!     fn shutdown(&self) {
//!         MyServer::shutdown(self)                       // stop accepting; return at once
//!     }
//!     async fn join(self) {
//!         MyServer::join(self).await                     // drain; return when all is closed
//!     }
//! }
//!
//! let signal = smvs_service::lifecycle::run_until_stopped(MyServer::bind(config)).await?;
//! ```
//!
//! A daemon that can also be stopped another way (a D-Bus `Stop` call, a test) merges that
//! into the stop future and calls [`run_until`] instead; every way of stopping then takes the
//! same path. Work a daemon does while it runs (a watchdog ping, a timer) is the server's own:
//! `bind` starts it and `shutdown`/`join` end it.

use std::future::Future;

use thiserror::Error;

/// A bound server, as the lifecycle drives it.
pub trait Server {
    /// One line for `systemctl status`, sent with `READY=1`: what the server is listening on.
    /// Tests read OS-chosen addresses from it, so it must name every bound address.
    fn status(&self) -> String;

    /// Starts a graceful stop: stop accepting, ask everything to close. Returns at once.
    fn shutdown(&self);

    /// Waits until everything the server started has finished. Called once, after
    /// [`shutdown`](Server::shutdown). The future need not be `Send`.
    fn join(self) -> impl Future<Output = ()>;
}

/// Why [`run_until_stopped`] or [`run_until`] gave up before the server ran.
#[derive(Debug, Error)]
pub enum RunError<E> {
    /// The SIGTERM/SIGINT handlers could not be installed (not inside a Tokio runtime, or the
    /// signal driver is disabled).
    #[error("cannot listen for stop signals: {0}")]
    Signals(#[source] std::io::Error),
    /// The server's `bind` failed; nothing was announced.
    #[error(transparent)]
    Bind(E),
}

/// Runs a server from `bind` until SIGTERM or SIGINT, and returns the signal's name
/// (`"SIGTERM"`, `"SIGINT"`) after a clean stop.
///
/// The signal handlers are installed before `bind` is first polled. Must be called inside a
/// Tokio runtime (with the signal and time drivers, as `enable_all` gives).
pub async fn run_until_stopped<S, E>(
    bind: impl Future<Output = Result<S, E>>,
) -> Result<&'static str, RunError<E>>
where
    S: Server,
{
    let stop = crate::signals::stop_signal().map_err(RunError::Signals)?;
    run_until(bind, stop).await
}

/// Like [`run_until_stopped`], with the stop given by the caller: the server stops when `stop`
/// resolves, and its output (a name for the log, such as `"SIGTERM"` or `"stop request"`) is
/// returned. Create `stop` before calling, so that nothing sent during `bind` is missed.
pub async fn run_until<S, E>(
    bind: impl Future<Output = Result<S, E>>,
    stop: impl Future<Output = &'static str>,
) -> Result<&'static str, RunError<E>>
where
    S: Server,
{
    drive(bind, stop, |announcement| match announcement {
        Announcement::Ready(status) => crate::notify::ready_with_status(status),
        Announcement::Stopping => crate::notify::stopping(),
    })
    .await
}

/// What the lifecycle tells the service manager.
enum Announcement<'a> {
    Ready(&'a str),
    Stopping,
}

/// The lifecycle itself, with the announcements going to `announce`: `$NOTIFY_SOCKET` in a
/// daemon, a log in the tests (which must not touch the process-wide environment).
async fn drive<S, E>(
    bind: impl Future<Output = Result<S, E>>,
    stop: impl Future<Output = &'static str>,
    announce: impl Fn(Announcement<'_>) -> bool,
) -> Result<&'static str, RunError<E>>
where
    S: Server,
{
    let server = bind.await.map_err(RunError::Bind)?;
    announce(Announcement::Ready(&server.status()));
    let signal = stop.await;
    tracing::info!(signal, "stopping");
    announce(Announcement::Stopping);
    server.shutdown();
    server.join().await;
    tracing::info!(signal, "stopped");
    Ok(signal)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::rc::Rc;

    use super::*;

    type Log = Rc<RefCell<Vec<String>>>;

    /// A `!Send` server that records what was done to it, in order.
    struct Recorder {
        log: Log,
    }

    impl Server for Recorder {
        fn status(&self) -> String {
            "listening on nowhere".into()
        }
        fn shutdown(&self) {
            self.log.borrow_mut().push("shutdown".into());
        }
        async fn join(self) {
            // A real await, so a join that is not awaited would leave "join" out.
            tokio::task::yield_now().await;
            self.log.borrow_mut().push("join".into());
        }
    }

    fn announcer(log: &Log) -> impl Fn(Announcement<'_>) -> bool {
        let log = log.clone();
        move |a| {
            log.borrow_mut().push(match a {
                Announcement::Ready(status) => format!("READY {status}"),
                Announcement::Stopping => "STOPPING".into(),
            });
            true
        }
    }

    fn binder(log: &Log) -> impl Future<Output = Result<Recorder, std::io::Error>> {
        let log = log.clone();
        async move {
            log.borrow_mut().push("bind".into());
            Ok(Recorder { log })
        }
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    #[test]
    fn binds_announces_waits_for_the_stop_then_shuts_down_and_joins() {
        let log = Log::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let stop_log = log.clone();
        let stop = async move {
            let _ = rx.await;
            stop_log.borrow_mut().push("stop".into());
            "test stop"
        };
        let run_log = log.clone();
        let signal = block_on(async move {
            let run = tokio::task::spawn_local(drive(binder(&run_log), stop, announcer(&run_log)));
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            // Bound and announced, but still running until the stop resolves.
            assert_eq!(*run_log.borrow(), ["bind", "READY listening on nowhere"]);
            tx.send(()).unwrap();
            run.await.unwrap()
        })
        .unwrap();
        assert_eq!(signal, "test stop");
        assert_eq!(
            *log.borrow(),
            [
                "bind",
                "READY listening on nowhere",
                "stop",
                "STOPPING",
                "shutdown",
                "join"
            ]
        );
    }

    #[test]
    fn a_failed_bind_is_returned_and_nothing_is_announced() {
        let log = Log::default();
        let bind = async { Err::<Recorder, _>("no such socket") };
        let stop = std::future::pending::<&'static str>();
        match block_on(drive(bind, stop, announcer(&log))) {
            Err(RunError::Bind(e)) => assert_eq!(e, "no such socket"),
            other => panic!("expected the bind error, got {other:?}"),
        }
        assert!(log.borrow().is_empty(), "{:?}", log.borrow());
    }

    #[test]
    fn a_sigterm_during_bind_is_not_lost() {
        let log = Log::default();
        let bind_log = log.clone();
        let signal = block_on(async move {
            // As `run_until_stopped` does: the handlers first, then bind.
            let stop = crate::signals::stop_signal().unwrap();
            let bind = async move {
                // SIGTERM arrives while the server is still starting. With the handler
                // installed it is queued for `stop`; without it the test process would die.
                nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
                tokio::task::yield_now().await;
                Ok::<_, std::io::Error>(Recorder { log: bind_log })
            };
            drive(bind, stop, announcer(&log)).await.map(|s| (s, log))
        })
        .unwrap();
        assert_eq!(signal.0, "SIGTERM");
        assert_eq!(
            *signal.1.borrow(),
            ["READY listening on nowhere", "STOPPING", "shutdown", "join"]
        );
    }
}
