//! Configuration: a TOML file (`--config`), every key overridable by a flag.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use smvs_crypto::SigningPublicKey;
use smvs_schema::HostAddress;

/// The relay's default cap per relayed call leg, both directions together, in kbit/s.
pub const DEFAULT_RELAY_KBPS: u32 = 4000;
/// The smallest relay cap allowed: below it not even an audio call with a little video fits,
/// and a call would only fail in a way that looks like a broken network.
pub const MIN_RELAY_KBPS: u32 = 256;

/// The `smvsd.toml` file. Every field is optional; flags win over the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub state_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub device_listen: Option<String>,
    pub call_listen: Option<String>,
    pub relay_kbps: Option<u32>,
    pub pairing_code_seconds: Option<u64>,
    pub public_address: Option<String>,
    pub directory: Option<String>,
    pub directory_key: Option<String>,
    /// Further directories, each `{ name, address, key }`; the one above is `default`.
    pub directories: Option<Vec<FileDirectory>>,
    /// How many directories must agree on a user's identity before it is used.
    pub quorum: Option<usize>,
    pub dht: Option<bool>,
    pub dht_listen: Option<std::net::SocketAddrV4>,
    pub dht_bootstrap: Option<Vec<String>>,
    pub dht_republish_seconds: Option<u64>,
    pub keyguard_socket: Option<PathBuf>,
    pub dbus: Option<String>,
    pub allowed_uids: Option<Vec<u32>>,
    pub retry_max_seconds: Option<u64>,
    pub ring_seconds: Option<u64>,
    pub peer_idle_seconds: Option<u64>,
    pub honour_remote_delete: Option<bool>,
    pub socks5_proxy: Option<String>,
    pub contacts_only: Option<bool>,
    pub relay_calls: Option<bool>,
    pub notifications: Option<String>,
    pub max_session_version: Option<u16>,
}

/// One entry of `directories` in the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDirectory {
    pub name: String,
    pub address: String,
    pub key: String,
    /// Its users are written `NAME@name` and it is asked only for them: this host is not
    /// registered there, and it does not vote on plain names.
    pub scoped: Option<bool>,
}

impl FileConfig {
    pub fn load(path: &Path) -> Result<FileConfig, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The settled configuration of a running host.
#[derive(Debug, Clone)]
pub struct Config {
    pub state_dir: PathBuf,
    pub socket: PathBuf,
    pub listen: SocketAddr,
    /// The device port (None: no device on another machine can connect).
    pub device_listen: Option<SocketAddr>,
    /// The call port (UDP: STUN for devices and the relay of call media; None: off).
    pub call_listen: Option<SocketAddr>,
    /// The relay's cap per allocation, both directions together, in kbit/s.
    pub relay_kbps: u32,
    /// How long a pairing code from `devices link` is good for.
    pub pairing_code_lifetime: Duration,
    /// The address published in the directory (default: the listen address).
    pub public_address: Option<HostAddress>,
    /// The directories this host is registered with and asks, the default one first.
    pub directories: Vec<DirectoryAnchor>,
    /// Directories whose users are written `alice@NAME`: asked only for such names.
    pub scoped_directories: Vec<DirectoryAnchor>,
    /// How many of them must agree on a user's identity ([`default_quorum`] unless set).
    pub quorum: usize,
    /// The hosts' DHT, when this host is in it.
    pub dht: Option<DhtConfig>,
    pub keyguard_socket: PathBuf,
    /// Local uids allowed on the socket (root and the daemon's own uid always are).
    pub allowed_uids: Vec<u32>,
    /// The longest wait between two delivery attempts to an unreachable host.
    pub retry_max: Duration,
    /// How long an outgoing call rings before it ends unanswered.
    pub ring_timeout: Duration,
    /// A peer host's connection with nothing to deliver for this long is closed.
    pub peer_idle: Duration,
    /// Whether a peer's "delete everywhere" request deletes here too.
    pub honour_remote_delete: bool,
    /// Connect to other hosts through this SOCKS5 proxy (e.g. Tor's 127.0.0.1:9050); the
    /// proxy resolves host names, so onion addresses work.
    pub socks5_proxy: Option<String>,
    /// Hold messages from users who are not contacts yet as requests.
    pub contacts_only: bool,
    /// Relay every call; this user's devices' addresses never leave the host.
    pub relay_calls: bool,
    /// The highest session version spoken: 2 (forward-secret, post-quantum) unless set to 1,
    /// which makes the host speak as a v1-only host would (for a staged upgrade, and tests).
    pub max_session_version: u16,
    /// Serve `org.smvs.Daemon1` on this bus (None: no D-Bus).
    pub dbus: Option<BusKind>,
    /// Desktop notifications raised by the daemon itself (session bus only).
    pub notifications: NotifyMode,
}

/// A directory this host trusts: its name (`default` for the one of `directory`), where it
/// is, and the key it signs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryAnchor {
    pub name: String,
    pub address: String,
    pub key: SigningPublicKey,
}

/// The name the hosts' DHT goes by where the source of a record is shown (as directories go
/// by theirs): no directory may take it.
pub const DHT_SOURCE: &str = "dht";

impl DirectoryAnchor {
    /// A directory of the list, checked: a name of lowercase letters, digits and `-` (it is
    /// written after a user's name, `alice@NAME`), not [`DHT_SOURCE`], an address, a key (hex).
    pub fn parse(name: &str, address: &str, key: &str) -> Result<DirectoryAnchor, String> {
        let name_ok = !name.is_empty()
            && name.len() <= 32
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !name_ok {
            return Err(format!(
                "directory name {name:?}: use 1 to 32 lowercase letters, digits and -"
            ));
        }
        if name == DHT_SOURCE {
            return Err(format!(
            "directory name {name:?} is taken by the hosts' DHT (where it is shown as a source)"
        ));
        }
        if address.is_empty() {
            return Err(format!("directory {name}: no address"));
        }
        Ok(DirectoryAnchor {
            name: name.into(),
            address: address.into(),
            key: SigningPublicKey::from_hex(key)
                .map_err(|e| format!("directory {name}'s key: {e}"))?,
        })
    }
}

/// This host's node in the hosts' DHT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtConfig {
    /// The UDP address it listens on (None: the peer port's, once bound).
    pub listen: Option<std::net::SocketAddrV4>,
    /// Nodes to join through (HOST:PORT).
    pub bootstrap: Vec<String>,
    /// How often this host's record is put again.
    pub republish: Duration,
}

/// How many scoped directories a host may have: a sender it has not pinned is looked up at
/// each (and under the plain name), within a link's look-up budget (`api::peer`).
pub const MAX_SCOPED_DIRECTORIES: usize = 3;

/// The name of the directory given as `directory` / `--directory`.
pub const DEFAULT_DIRECTORY: &str = "default";

/// The quorum when none is set: a majority of the directories (1 of 1, 2 of 2 or 3, 3 of 4),
/// so one lying directory is outvoted and one that is down stops nothing once there are three.
pub fn default_quorum(directories: usize) -> usize {
    directories / 2 + 1
}

/// Which bus to serve `org.smvs.Daemon1` on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusKind {
    System,
    Session,
}

/// What a desktop notification for an incoming message shows (session mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyMode {
    Off,
    /// "New message from alice".
    Sender,
    /// The sender and the start of the text.
    Preview,
}
