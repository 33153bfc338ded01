//! `smvsctl chat`: the interactive client, full-screen ([`tui`]) or as lines ([`plain`]).
//!
//! ```text
//!  host events ──► App::apply ──┐           keys ──► keys::action ──► App / host requests
//!  (live, same stream as every  ├─► view::draw (ratatui: only changed cells are written)
//!   device; Resync reloads)     │
//!  our call's stats (200 ms) ───┘
//! ```
//!
//! It runs against the host's socket or, on a linked device, over the device link, with the
//! same requests `smvsctl`'s other commands use.

pub mod app;
pub mod calls;
pub mod keys;
pub mod plain;
pub mod text;
pub mod tui;
pub mod view;

use std::future::Future;
use std::rc::Rc;

use smvs_schema::Username;

use crate::cli::MediaArgs;
use crate::client::HostClient;
use crate::error::CtlError;

/// How the chat reaches its host again when the connection breaks.
pub enum Reach {
    /// The host's Unix socket.
    Socket(std::path::PathBuf),
    /// Over the device port, as a linked device (`None`: where it was paired).
    Device {
        address: Option<String>,
        proxy: Option<String>,
    },
}

impl Reach {
    pub async fn connect(&self) -> Result<HostClient, CtlError> {
        match self {
            Reach::Socket(path) => crate::client::connect(path).await,
            Reach::Device { address, proxy } => {
                crate::client::connect_device(address.as_deref(), proxy.as_deref()).await
            }
        }
    }
}

/// `smvsctl chat [USER] [--plain]`.
pub async fn run(
    host: HostClient,
    reach: &Reach,
    user: Option<&Username>,
    plain: bool,
    media: &MediaArgs,
    stop: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    // A petname opens the conversation with the address it stands for: events name the
    // address, and the chat follows them by it.
    let resolved = match user {
        Some(name) if !name.is_identity_address() => host
            .petnames()
            .await?
            .into_iter()
            .find(|p| p.name == name.as_str())
            .map(|p| Username::parse(&p.address))
            .transpose()
            .map_err(|e| CtlError::Local(format!("the host named a bad address: {e}")))?,
        _ => None,
    };
    let user = resolved.as_ref().or(user);
    let host = Rc::new(host);
    // A chat's calls last until hung up, and report on its screen.
    let mut media = media.clone();
    media.duration = None;
    media.stats = false;
    if plain {
        plain::run(&host, user, stop).await
    } else {
        tui::run(host, reach, user, &media, stop).await
    }
}

/// The user registered on the host (the chat's "me").
async fn registered_user(host: &HostClient) -> Result<String, CtlError> {
    host.status().await?.username.ok_or_else(|| {
        CtlError::Local("no user is registered on this host yet: smvsctl register NAME".into())
    })
}

/// Whether colours may be used: not when `NO_COLOR` is set to anything (no-color.org).
pub fn colour_allowed() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
