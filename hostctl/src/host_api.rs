//! A hosted host's local socket: the few requests `smvs-hostctl` makes of it (register the
//! user, a pairing code for the first device, its status). Plain Cap'n Proto over the Unix
//! socket, as smvsctl speaks it; smvsd lets root in (SO_PEERCRED).

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context};
use serde::Serialize;
use smvs_schema::local_capnp::host;

/// What a host says of itself.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub username: Option<String>,
    pub registered: bool,
    pub fingerprint: Option<String>,
    pub queued: u32,
}

/// A pairing code for a device.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceLink {
    pub code: String,
    pub address: String,
    pub host_fingerprint: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Runs `f` with a connection to the host at `socket`, on a one-thread runtime, within
/// `limit` (a host that does not answer must not hang `list`). The process that answers must
/// run as `uid`: the socket's directory is the host's own, and a host could put a link to a
/// neighbour's socket there, which root's connect would follow.
pub fn with_host<T, F, Fut>(socket: &Path, uid: u32, limit: Duration, f: F) -> anyhow::Result<T>
where
    F: FnOnce(host::Client) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .with_context(|| format!("cannot reach smvsd at {}", socket.display()))?;
        let peer = stream.peer_cred()?.uid();
        if peer != uid {
            anyhow::bail!(
                "{} is answered by uid {peer}, not the host's uid {uid}",
                socket.display()
            );
        }
        let (system, client) = smvs_transport::rpc::local_client::<host::Client>(stream);
        let rpc = tokio::task::spawn_local(system);
        let answer = tokio::time::timeout(limit, f(client))
            .await
            .map_err(|_| anyhow!("smvsd at {} did not answer in {limit:?}", socket.display()))?;
        rpc.abort();
        answer
    })
}

fn text(t: capnp::Result<capnp::text::Reader<'_>>) -> anyhow::Result<String> {
    Ok(t?.to_string()?)
}

fn optional(t: capnp::Result<capnp::text::Reader<'_>>) -> anyhow::Result<Option<String>> {
    let s = text(t)?;
    Ok((!s.is_empty()).then_some(s))
}

/// capnp-rpc wraps smvsd's refusals ("remote exception: CODE: text"); keep smvsd's words.
fn refusal(e: capnp::Error) -> anyhow::Error {
    let text = e.to_string();
    let text = text
        .strip_prefix("remote exception: ")
        .unwrap_or(&text)
        .to_owned();
    anyhow!(text)
}

pub async fn status(host: &host::Client) -> anyhow::Result<Status> {
    let answer = host
        .status_request()
        .send()
        .promise
        .await
        .map_err(refusal)?;
    let s = answer.get()?.get_status()?;
    // Printed to root's terminal: only a valid username, never a host's control characters.
    let username = optional(s.get_username())?;
    if let Some(name) = &username {
        smvs_schema::Username::parse(name)
            .map_err(|_| anyhow!("smvsd answered an invalid username"))?;
    }
    let fingerprint = optional(s.get_fingerprint())?;
    if fingerprint
        .as_deref()
        .is_some_and(|f| !f.chars().all(|c| c.is_ascii_graphic() || c == ' '))
    {
        anyhow::bail!("smvsd answered an invalid fingerprint");
    }
    Ok(Status {
        username,
        registered: s.get_registered(),
        fingerprint,
        queued: s.get_queued(),
    })
}

/// Makes the identity in the key guard and registers `username` at the directory.
pub async fn register(host: &host::Client, username: &str) -> anyhow::Result<Status> {
    let mut request = host.register_request();
    request.get().set_username(username);
    request.send().promise.await.map_err(refusal)?;
    status(host).await
}

pub async fn link_device(host: &host::Client, name: &str) -> anyhow::Result<DeviceLink> {
    let mut request = host.link_device_request();
    request.get().set_name(name);
    let answer = request.send().promise.await.map_err(refusal)?;
    let link = answer.get()?.get_link()?;
    Ok(DeviceLink {
        code: text(link.get_code())?,
        address: text(link.get_device_address())?,
        host_fingerprint: text(link.get_host_fingerprint())?,
        expires_at: link.get_expires_at(),
    })
}
