//! `smvsctl`: the command-line client of smvsd, and the reference device.
//!
//! ```text
//!   argv ─► cli (clap: usernames and ids parsed, bad usage exits 2)
//!         ─► run: read a `-` body from stdin, start a current-thread runtime and a LocalSet
//!         ─► client::connect (Unix socket, Cap'n Proto two-party RPC, bootstrap Host)
//!         ─► commands::execute (one function per command) ─► output (text or JSON) ─► stdout
//! ```
//!
//! Errors come back as [`CtlError`]: smvsd's refusals carry the stable code of
//! `schema/local.capnp` and a human message; `main` prints `smvsctl: MESSAGE` and exits 1.

pub mod agent;
pub mod call;
pub mod chat;
pub mod cli;
pub mod client;
pub mod commands;
pub mod error;
pub mod output;
pub mod remote;

use std::future::Future;

pub use cli::{Cli, Command};
pub use client::{
    connect, ContactView, ConversationView, EventView, HostClient, HostStatus, Integrity,
    MessageId, MessageStatus, MessageView, VerificationView,
};
pub use error::{CtlError, ErrorCode};
pub use output::Format;

/// Runs a parsed command line to completion, printing to stdout.
pub fn run(mut cli: Cli) -> Result<(), CtlError> {
    let format = if cli.json { Format::Json } else { Format::Text };
    let socket = cli.socket_path();
    // Read a piped body before connecting, so smvsd never waits on our stdin.
    if let Command::Send { text, .. } = &mut cli.command {
        *text = commands::read_body(text, std::io::stdin().lock())?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| CtlError::Io {
            what: "cannot start the async runtime",
            source,
        })?;
    let local = tokio::task::LocalSet::new();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    local.block_on(&runtime, async {
        let stop = stop_signal(&cli.command)?;
        if let Command::Agent {
            preview,
            bus,
            media,
        } = &cli.command
        {
            let reach = match cli.remote_host() {
                Some(address) => agent::Reach::Remote {
                    address: (address != "paired").then_some(address),
                    proxy: cli.socks5_proxy.clone(),
                },
                None => agent::Reach::Local {
                    socket: &socket,
                    session: bus == "session",
                },
            };
            return agent::run(reach, *preview, media, stop).await;
        }
        if let Command::Pair { host, code, name } = &cli.command {
            let code = if code == "-" {
                commands::read_body("-", std::io::stdin().lock())?
            } else {
                code.clone()
            };
            let paired =
                remote::pair(host, &code, name.as_deref(), cli.socks5_proxy.as_deref()).await?;
            let text = output::render(format, &paired, output::paired_text)?;
            return commands::emit(&mut out, &text);
        }
        let remote_host = cli.remote_host();
        let host = match remote_host.clone() {
            Some(address) => {
                client::connect_device(
                    (address != "paired").then_some(address.as_str()),
                    cli.socks5_proxy.as_deref(),
                )
                .await?
            }
            None => client::connect(&socket).await?,
        };
        if let Command::Chat { user, plain, media } = &cli.command {
            let reach = match remote_host {
                Some(address) => chat::Reach::Device {
                    address: (address != "paired").then_some(address),
                    proxy: cli.socks5_proxy.clone(),
                },
                None => chat::Reach::Socket(socket.clone()),
            };
            return chat::run(host, &reach, user.as_ref(), *plain, media, stop).await;
        }
        commands::execute(&host, &cli.command, format, &mut out, stop).await
    })
}

/// For `watch`, `agent`, `call` and `answer`, SIGINT and SIGTERM end the command cleanly (a
/// call is hung up); they are caught from before the
/// subscription starts, so none is lost. Other commands keep the default (the signal kills).
fn stop_signal(command: &Command) -> Result<impl Future<Output = ()>, CtlError> {
    let signal =
        match command {
            Command::Watch { .. }
            | Command::Agent { .. }
            | Command::Call { .. }
            | Command::Answer { .. }
            | Command::Chat { .. } => Some(smvs_service::signals::stop_signal().map_err(
                |source| CtlError::Io {
                    what: "cannot listen for SIGINT/SIGTERM",
                    source,
                },
            )?),
            _ => None,
        };
    Ok(async move {
        match signal {
            Some(signal) => {
                signal.await;
            }
            None => std::future::pending::<()>().await,
        }
    })
}
