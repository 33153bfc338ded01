//! This machine as a linked device of a host on another machine: its device key, the host it
//! is paired with, and pairing itself.
//!
//! ```text
//!  $XDG_CONFIG_HOME/smvs/device.key   32 bytes, 0600 (refused if looser): the device's Noise key
//!  $XDG_CONFIG_HOME/smvs/host.toml    the paired host: device-port address, key (pinned), name
//! ```
//!
//! The device keeps nothing else: no history, no contacts. Everything is asked of the host, so
//! revoking the device takes the history away from it.

use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use smvs_crypto::{AgreementKeyPair, AgreementPublicKey, Pairing, PairingRole};
use smvs_schema::device_capnp::device_gate;

use crate::error::CtlError;

/// The paired host, as remembered in `host.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PairedHost {
    /// The host's device port, HOST:PORT.
    pub address: String,
    /// The host's key, hex: every later connection must present exactly this key.
    pub host_key: String,
    /// This device's name at the host.
    pub name: String,
    /// The SOCKS5 proxy it was paired through, used again unless another is given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socks5_proxy: Option<String>,
}

/// Where this device keeps its key and pairing: `$XDG_CONFIG_HOME/smvs`, else `~/.config/smvs`.
pub fn config_dir() -> Result<PathBuf, CtlError> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("smvs"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config").join("smvs")),
        None => Err(CtlError::Local(
            "neither $XDG_CONFIG_HOME nor $HOME is set: nowhere to keep this device's key".into(),
        )),
    }
}

fn local(what: impl std::fmt::Display) -> CtlError {
    CtlError::Local(what.to_string())
}

/// The device's key, made (0600, in a 0700 directory) the first time.
fn device_key(dir: &Path) -> Result<AgreementKeyPair, CtlError> {
    if !dir.exists() {
        std::fs::create_dir_all(dir)
            .map_err(|e| local(format!("creating {}: {e}", dir.display())))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| local(format!("{}: {e}", dir.display())))?;
    }
    let (secret, _) = smvs_service::keyfile::load_or_create(&dir.join("device.key"), 32, || {
        smvs_crypto::Zeroizing::new(smvs_crypto::random_array::<32>().to_vec())
    })
    .map_err(local)?;
    AgreementKeyPair::from_secret_bytes(&secret).map_err(local)
}

/// The host this device is paired with, if any.
pub fn paired_host(dir: &Path) -> Result<Option<PairedHost>, CtlError> {
    let path = dir.join("host.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map(Some)
            .map_err(|e| local(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(local(format!("{}: {e}", path.display()))),
    }
}

/// Writes `host.toml` whole or not at all (a temporary file renamed over it).
fn save_paired_host(dir: &Path, host: &PairedHost) -> Result<(), CtlError> {
    use std::io::Write;
    let path = dir.join("host.toml");
    let tmp = dir.join(".host.toml.tmp");
    let text = toml::to_string(host).map_err(local)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| local(format!("{}: {e}", tmp.display())))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| local(format!("{}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, &path).map_err(|e| local(format!("{}: {e}", path.display())))
}

/// The device-port address with the default port when none is given.
pub fn with_default_port(address: &str) -> String {
    let has_port = match address.rsplit_once(':') {
        // An IPv6 literal without brackets has colons but no port.
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    if has_port {
        address.to_owned()
    } else if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:7422")
    } else {
        format!("{address}:7422")
    }
}

/// Opens the Noise link to a host's device port at `address` (HOST:PORT), directly or through
/// a SOCKS5 proxy, which then resolves the name (an onion name, say).
/// Also returns the IP this end of a direct link has (the address the host sees it from);
/// none through a proxy, where the host sees the proxy's.
async fn open(
    address: &str,
    key: &AgreementKeyPair,
    expected: Option<&AgreementPublicKey>,
    proxy: Option<&str>,
) -> Result<(smvs_transport::SecureChannel, Option<IpAddr>), CtlError> {
    // Through a proxy the device has no address of its own to offer for media.
    let (tcp, local_ip) = match proxy {
        None => {
            let tcp = tokio::net::TcpStream::connect(address).await.map_err(|e| {
                local(format!(
                    "cannot reach the host's device port at {address}: {e}"
                ))
            })?;
            let local_ip = tcp.local_addr().ok().map(|a| a.ip());
            (tcp, local_ip)
        }
        Some(proxy) => {
            let tcp = smvs_transport::socks5_tcp(proxy, address)
                .await
                .map_err(|e| {
                    local(format!(
                        "the SOCKS5 proxy {proxy} cannot reach {address}: {e}"
                    ))
                })?;
            (tcp, None)
        }
    };
    let opened =
        smvs_transport::connect_over(tcp, address, key, smvs_transport::DEVICE_PROLOGUE, expected)
            .await;
    let channel = opened.map_err(|e| {
        local(format!(
            "cannot reach the host's device port at {address}: {e}"
        ))
    })?;
    Ok((channel, local_ip))
}

/// What pairing gave.
#[derive(Debug, Serialize)]
pub struct Paired {
    pub name: String,
    pub admin: bool,
    pub address: String,
    /// Of the host's key, as `devices link` printed it on the other device.
    pub host_fingerprint: String,
    /// Of this device's key, as `devices` lists it on the host.
    pub device_fingerprint: String,
}

/// A short fingerprint of a Noise key, the same as smvsd shows (BLAKE2b-128, in groups).
pub fn key_fingerprint(key: &AgreementPublicKey) -> String {
    smvs_crypto::link_key_fingerprint(key).unwrap_or_default()
}

/// `smvsctl pair HOST[:PORT] CODE [--name NAME]`: pairs this machine with the host.
pub async fn pair(
    address: &str,
    code: &str,
    name: Option<&str>,
    proxy: Option<&str>,
) -> Result<Paired, CtlError> {
    let (nameplate, secret) = code
        .trim()
        .split_once('-')
        .filter(|(n, s)| !n.is_empty() && !s.is_empty())
        .ok_or_else(|| local("a pairing code looks like 427-1234-5678 (from `smvsctl devices link` on a device of yours)"))?;
    let dir = config_dir()?;
    let key = device_key(&dir)?;
    let address = with_default_port(address);
    let (channel, _) = open(&address, &key, None, proxy).await?;
    let host_key = channel.remote_key;
    let (system, gate) = smvs_transport::rpc::client::<device_gate::Client>(channel);
    tokio::task::spawn_local(async move {
        let _ = system.await;
    });

    // The host runs one pairing at a time (a busy host has spent nothing of the code): wait
    // and ask again, for a few seconds.
    let mut waits = 0;
    let (run, answer) = loop {
        let (run, ours) =
            Pairing::start(PairingRole::Device, nameplate.as_bytes(), secret.as_bytes());
        let mut request = gate.pair_request();
        {
            let mut p = request.get();
            p.set_nameplate(nameplate);
            p.set_name(name.unwrap_or(""));
            p.set_message(&ours);
        }
        match request.send().promise.await.map_err(CtlError::from) {
            Err(e) if e.code() == Some(crate::error::ErrorCode::Busy) && waits < 20 => {
                waits += 1;
                tokio::time::sleep(std::time::Duration::from_millis(600)).await;
            }
            other => break (run, other?),
        }
    };
    let answer = answer.get()?;
    let pairing_key = run.finish(answer.get_message()?).map_err(local)?;
    pairing_key
        .check(PairingRole::Host, &host_key, &key.public(), answer.get_host_tag()?)
        .map_err(|_| {
            local("pairing failed: the code is wrong, or something between you and the host is not the host")
        })?;
    let tag = pairing_key
        .tag(PairingRole::Device, &host_key, &key.public())
        .map_err(local)?;
    let mut confirm = gate.confirm_request();
    confirm.get().set_device_tag(&tag);
    let confirmed = confirm.send().promise.await?;
    let confirmed = confirmed.get()?;
    let name = confirmed
        .get_name()?
        .to_string()
        .map_err(|_| local("the host named this device in something other than UTF-8"))?;
    save_paired_host(
        &dir,
        &PairedHost {
            address: address.clone(),
            host_key: host_key.to_hex(),
            name: name.clone(),
            socks5_proxy: proxy.map(str::to_owned),
        },
    )?;
    Ok(Paired {
        name,
        admin: confirmed.get_admin(),
        address,
        host_fingerprint: key_fingerprint(&host_key),
        device_fingerprint: key_fingerprint(&key.public()),
    })
}

/// Opens the link to the paired host (at `address` if given, else where it was paired) and
/// returns the RPC system to drive and the host's API. The host must present the pinned key.
pub async fn connect(address: Option<&str>, proxy: Option<&str>) -> Result<Connected, CtlError> {
    connect_from(&config_dir()?, address, proxy).await
}

/// An open link to the paired host.
pub struct Connected {
    /// The RPC system, to drive.
    pub system: capnp_rpc::RpcSystem<capnp_rpc::rpc_twoparty_capnp::Side>,
    pub host: smvs_schema::local_capnp::host::Client,
    /// The pairing file.
    pub pairing: PathBuf,
    /// This end's IP on a direct link (see [`open`]).
    pub local_ip: Option<IpAddr>,
}

/// [`connect`] with the device's files in `dir` (a program acting as several devices).
pub async fn connect_from(
    dir: &Path,
    address: Option<&str>,
    proxy: Option<&str>,
) -> Result<Connected, CtlError> {
    let dir = dir.to_owned();
    let paired = paired_host(&dir)?.ok_or_else(|| {
        local(format!(
            "this machine is not paired with a host ({} has no host.toml): run `smvsctl pair HOST CODE` first",
            dir.display()
        ))
    })?;
    let host_key = hex::decode(&paired.host_key)
        .ok()
        .and_then(|k| AgreementPublicKey::from_bytes(&k).ok())
        .ok_or_else(|| local("host.toml: host_key is not a 32-byte key in hex"))?;
    let key = device_key(&dir)?;
    let address = with_default_port(address.unwrap_or(&paired.address));
    let proxy = proxy.or(paired.socks5_proxy.as_deref());
    let (channel, local_ip) = open(&address, &key, Some(&host_key), proxy).await?;
    let (system, gate) = smvs_transport::rpc::client::<device_gate::Client>(channel);
    // Pipelined: the API is asked for and used in the same round trip.
    let host = gate.host_request().send().pipeline.get_host();
    Ok(Connected {
        system,
        host,
        pairing: dir.join("host.toml"),
        local_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_device_port_is_added_only_when_missing() {
        assert_eq!(with_default_port("10.0.0.1"), "10.0.0.1:7422");
        assert_eq!(with_default_port("10.0.0.1:9000"), "10.0.0.1:9000");
        assert_eq!(with_default_port("host.example"), "host.example:7422");
        assert_eq!(with_default_port("[::1]:9000"), "[::1]:9000");
        assert_eq!(with_default_port("::1"), "[::1]:7422");
        assert_eq!(with_default_port("[::1]"), "[::1]:7422");
    }
}
