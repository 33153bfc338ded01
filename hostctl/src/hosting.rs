//! The operator's hosting config (`/etc/smvs/hosting.toml`), each hosted host's smvsd config
//! made from it, and the ports a new host gets.
//!
//! Each host takes three consecutive ports from `first_port`: its peer port (TCP), its device
//! port (TCP) and its call port (UDP). A slot is free when no hosted host's config names it and
//! the three ports can be bound now.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::path::Path;

use anyhow::{bail, Context};
use serde::Deserialize;

use crate::layout::{HostName, CONFIG_DIR};

/// `/etc/smvs/hosting.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostingConfig {
    /// The directory every hosted user registers with, and its public key.
    pub directory: String,
    pub directory_key: String,
    /// The address the hosts listen on (default: every address).
    #[serde(default = "any_ip")]
    pub listen_ip: IpAddr,
    /// The name or address other hosts and the users' devices reach this machine at.
    pub public_host: String,
    /// The first port of the hosts' range; each host takes three.
    #[serde(default = "default_first_port")]
    pub first_port: u16,
    /// The last port the range may use.
    #[serde(default = "default_last_port")]
    pub last_port: u16,
}

fn any_ip() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}

fn default_first_port() -> u16 {
    17421
}

fn default_last_port() -> u16 {
    29999
}

impl HostingConfig {
    pub fn load(path: &Path) -> anyhow::Result<HostingConfig> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read the hosting config {} (see smvs-hostctl(1) for what it holds)",
                path.display()
            )
        })?;
        let config: HostingConfig =
            toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
        if config.first_port == 0 || config.last_port < config.first_port.saturating_add(2) {
            bail!(
                "{}: first_port..last_port must hold at least one host's three ports",
                path.display()
            );
        }
        let host = &config.public_host;
        let bare_v6 = host.contains(':') && !host.starts_with('[');
        if host.is_empty() || bare_v6 || host.contains(|c: char| c == '/' || c.is_whitespace()) {
            bail!(
                "{}: public_host must be a name or an address, without a port",
                path.display()
            );
        }
        Ok(config)
    }

    /// How many slots of three ports the range holds.
    fn slots(&self) -> u16 {
        (self.last_port - self.first_port + 1) / 3
    }

    fn slot_port(&self, slot: u16) -> u16 {
        self.first_port + slot * 3
    }
}

/// A hosted host's three ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub peer: u16,
    pub device: u16,
    pub call: u16,
}

impl Ports {
    /// The three ports from `peer` on; None past 65535.
    fn from_peer(peer: u16) -> Option<Ports> {
        Some(Ports {
            peer,
            device: peer.checked_add(1)?,
            call: peer.checked_add(2)?,
        })
    }
}

/// A hosted host's smvsd config: what `add` writes.
pub fn host_config(hosting: &HostingConfig, name: &HostName, ports: Ports) -> String {
    let ip = hosting.listen_ip;
    let listen = |port| SocketAddr::new(ip, port).to_string();
    let public = |port| format!("{}:{port}", hosting.public_host);
    format!(
        "# smvsd@{name}: written by `smvs-hostctl add {name}` from the hosting config.\n\
         # Its paths (state, sockets) are set by the unit, smvsd@.service.\n\
         directory = {directory}\n\
         directory_key = {key}\n\
         listen = {peer}\n\
         public_address = {public}\n\
         device_listen = {device}\n\
         call_listen = {call}\n\
         # Nobody but root uses the local socket; the user's devices come over the device port.\n\
         allowed_uids = []\n\
         dbus = \"none\"\n",
        directory = toml_string(&hosting.directory),
        key = toml_string(&hosting.directory_key),
        peer = toml_string(&listen(ports.peer)),
        public = toml_string(&public(ports.peer)),
        device = toml_string(&listen(ports.device)),
        call = toml_string(&listen(ports.call)),
    )
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The ports a host's config file says it uses (its `listen` port and the two after it).
pub fn ports_of(config_text: &str) -> Option<Ports> {
    #[derive(Deserialize)]
    struct Listen {
        listen: Option<SocketAddr>,
    }
    // Only `listen` matters here (other keys are ignored); the rest is smvsd's to check.
    let listen: Listen = toml::from_str(config_text).ok()?;
    listen.listen.and_then(|a| Ports::from_peer(a.port()))
}

/// Every hosted host's name, from the configs in `/etc/smvs/hosts`.
pub fn hosted_names() -> anyhow::Result<Vec<HostName>> {
    let mut names = Vec::new();
    let entries = match std::fs::read_dir(CONFIG_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(names),
        Err(e) => return Err(e).with_context(|| format!("cannot read {CONFIG_DIR}")),
    };
    for entry in entries {
        let file = entry?.file_name();
        let Some(stem) = file.to_str().and_then(|f| f.strip_suffix(".toml")) else {
            continue;
        };
        if let Ok(name) = HostName::parse(stem) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The first free slot's ports, preferring `wanted` (a restored host's old ports) when free.
pub fn free_ports(hosting: &HostingConfig, wanted: Option<Ports>) -> anyhow::Result<Ports> {
    let mut taken = Vec::new();
    for name in hosted_names()? {
        if let Ok(text) = std::fs::read_to_string(name.config_file()) {
            taken.extend(ports_of(&text));
        }
    }
    let clashes = |p: Ports| taken.iter().any(|t| t.peer.abs_diff(p.peer) < 3);
    let usable = |p: Ports| !clashes(p) && bindable(hosting.listen_ip, p);
    if let Some(p) = wanted {
        if p.peer >= hosting.first_port && p.call <= hosting.last_port && usable(p) {
            return Ok(p);
        }
    }
    for slot in 0..hosting.slots() {
        match Ports::from_peer(hosting.slot_port(slot)) {
            Some(p) if usable(p) => return Ok(p),
            _ => {}
        }
    }
    bail!(
        "no free ports left in {}..{} (three per host): widen first_port..last_port in the hosting config",
        hosting.first_port,
        hosting.last_port
    )
}

/// Whether the ports can be bound now (something else on the machine may hold them).
fn bindable(ip: IpAddr, p: Ports) -> bool {
    TcpListener::bind((ip, p.peer)).is_ok()
        && TcpListener::bind((ip, p.device)).is_ok()
        && UdpSocket::bind((ip, p.call)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosting() -> HostingConfig {
        HostingConfig {
            directory: "dir.example:7420".into(),
            directory_key: "ab".repeat(32),
            listen_ip: IpAddr::from([127, 0, 0, 1]),
            public_host: "hosting.example".into(),
            first_port: 17421,
            last_port: 17429,
        }
    }

    #[test]
    fn a_host_config_names_its_ports_and_reads_back() {
        let name = HostName::parse("alice").expect("name");
        let ports = Ports::from_peer(17424).expect("ports");
        let text = host_config(&hosting(), &name, ports);
        assert!(text.contains("listen = \"127.0.0.1:17424\""), "{text}");
        assert!(text.contains("public_address = \"hosting.example:17424\""));
        assert!(text.contains("device_listen = \"127.0.0.1:17425\""));
        assert!(text.contains("call_listen = \"127.0.0.1:17426\""));
        assert_eq!(ports_of(&text), Some(ports));
        assert_eq!(hosting().slots(), 3);
    }

    #[test]
    fn strings_are_quoted_for_toml() {
        let text = format!("v = {}", toml_string("a\"b'c\\"));
        let table: toml::Table = toml::from_str(&text).expect("toml");
        assert_eq!(table["v"].as_str(), Some("a\"b'c\\"));
    }
}
