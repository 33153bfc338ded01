//! The command line of `smvsd`, in the library so that man pages and shell completions can be
//! generated from it.

use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use smvs_crypto::SigningPublicKey;

use crate::config::{
    default_quorum, Config, DhtConfig, DirectoryAnchor, FileConfig, DEFAULT_DIRECTORY,
    DEFAULT_RELAY_KBPS, MAX_SCOPED_DIRECTORIES, MIN_RELAY_KBPS,
};

/// The default cap on the wait between delivery attempts: one probe per half minute per
/// unreachable peer is cheap, and a healed path is used again within it.
const DEFAULT_RETRY_MAX_SECONDS: u64 = 30;
/// The device port's default port (the peer port's is 7421).
pub const DEFAULT_DEVICE_PORT: u16 = 7422;
/// The call port's default port (UDP: STUN and the relay of call media).
pub const DEFAULT_CALL_PORT: u16 = 7423;

#[derive(Parser)]
#[command(
    name = "smvsd",
    version,
    about = "The SMVS host: encrypts, stores and delivers your messages"
)]
pub struct Cli {
    /// TOML configuration file; flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where the host keeps its database and transport key (0700).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The local API socket for devices (smvsctl).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Address other hosts connect to.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Where the user's devices on other machines connect (the device port), or `none`
    /// [default: the peer port's address, port 7422].
    #[arg(long, value_name = "ADDR|none")]
    pub device_listen: Option<String>,
    /// The call port (UDP): STUN for the user's devices and the relay of their calls' sealed
    /// media, or `none` [default: the peer port's IP, port 7423].
    #[arg(long, value_name = "ADDR|none")]
    pub call_listen: Option<String>,
    /// The relay's cap per relayed call, both directions together, in kbit/s, at least 256
    /// [default: 4000].
    #[arg(long, value_parser = clap::value_parser!(u32).range(i64::from(MIN_RELAY_KBPS)..))]
    pub relay_kbps: Option<u32>,
    /// How long a pairing code from `smvsctl devices link` is good for, in seconds
    /// [default: 600].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub pairing_code_seconds: Option<u64>,
    /// Address published in the directory, if not the listen address (a proxy or onion name).
    #[arg(long)]
    pub public_address: Option<String>,
    /// The directory's address, HOST:PORT.
    #[arg(long)]
    pub directory: Option<String>,
    /// The directory's public key (hex), as `smvs-directory pubkey` prints it.
    #[arg(long)]
    pub directory_key: Option<String>,
    /// Another directory to register with and ask, as NAME=HOST:PORT=KEY (repeatable; the
    /// config file's `directories` are added to these).
    #[arg(long = "also-directory", value_name = "NAME=ADDR=KEY")]
    pub also_directory: Vec<String>,
    /// A directory whose users are written NAME@DIRECTORY (`alice@work`), as NAME=HOST:PORT=KEY
    /// (repeatable): asked only for such names, not registered with, not in the quorum.
    #[arg(long = "scoped-directory", value_name = "NAME=ADDR=KEY")]
    pub scoped_directory: Vec<String>,
    /// How many directories must agree on a user's identity key before it is used
    /// [default: a majority of them].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub quorum: Option<u64>,
    /// Join the hosts' DHT: publish this host's record there (a user registered with
    /// `smvsctl register --dht`) and find identity addresses (`smvs:…`) in it. With it, no
    /// directory is needed.
    #[arg(long)]
    pub dht: bool,
    /// The DHT's UDP address [default: the peer port's IP and port, so a contact's host
    /// address is also its DHT node's].
    #[arg(long, value_name = "IPV4:PORT")]
    pub dht_listen: Option<SocketAddrV4>,
    /// A DHT node to join through, HOST:PORT (repeatable; contacts' hosts are tried too).
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT")]
    pub dht_bootstrap: Vec<String>,
    /// How often this host's record is published to the DHT again, in seconds [default: 1200;
    /// nodes forget a record after two hours].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=7200))]
    pub dht_republish_seconds: Option<u64>,
    /// smvs-keyguard's socket.
    #[arg(long)]
    pub keyguard_socket: Option<PathBuf>,
    /// A local uid allowed on the socket besides root and the daemon's own (repeatable).
    #[arg(long = "allow-uid")]
    pub allow_uid: Vec<u32>,
    /// The longest wait between delivery attempts to an unreachable host, in seconds; once the
    /// path is back, queued messages move within about this long [default: 30].
    #[arg(long)]
    pub retry_max_seconds: Option<u64>,
    /// How long an outgoing call rings before it ends unanswered, in seconds [default: 30].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub ring_seconds: Option<u64>,
    /// Close a peer host's connection after this many seconds with nothing to deliver
    /// [default: 300].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub peer_idle_seconds: Option<u64>,
    /// Do not honour peers' "delete everywhere" requests.
    #[arg(long)]
    pub refuse_remote_delete: bool,
    /// Reach other hosts through this SOCKS5 proxy, HOST:PORT (e.g. Tor at 127.0.0.1:9050).
    #[arg(long)]
    socks5_proxy: Option<String>,
    /// Hold messages from users who are not contacts yet, as requests.
    #[arg(long)]
    pub contacts_only: bool,
    /// Relay every call through the call port, and never tell the other side the addresses of
    /// this user's devices (nor them the other side's).
    #[arg(long)]
    pub relay_calls: bool,
    /// The highest session version to speak with other hosts: 2 (the default) or 1 (as a host
    /// from before session v2; a contact that has spoken v2 refuses it).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=2))]
    pub max_session_version: Option<u16>,
    /// Serve org.smvs.Daemon1 on the system bus, the session bus, or not at all.
    #[arg(long, value_parser = ["system", "session", "none"])]
    pub dbus: Option<String>,
    /// Desktop notifications for incoming messages (session bus only): off, sender or preview.
    #[arg(long, value_parser = ["off", "sender", "preview"])]
    pub notifications: Option<String>,
}

/// Merges the flags with the config file they name.
pub fn settle(cli: Cli) -> Result<Config, String> {
    let file = match &cli.config {
        Some(path) => FileConfig::load(path)?,
        None => FileConfig::default(),
    };
    let need = |what: &str| {
        format!(
            "--{what} is required (or `{}` in the config file)",
            what.replace('-', "_")
        )
    };
    let dht_on = cli.dht || file.dht.unwrap_or(false);
    let directory = cli.directory.or(file.directory);
    let directory_key = cli.directory_key.or(file.directory_key);
    let mut directories = Vec::new();
    match (directory, directory_key) {
        (Some(address), Some(key)) => directories.push(DirectoryAnchor {
            name: DEFAULT_DIRECTORY.into(),
            address,
            key: SigningPublicKey::from_hex(&key).map_err(|e| format!("--directory-key: {e}"))?,
        }),
        // A host in the DHT needs no directory.
        (None, None) if dht_on => {}
        (None, _) => return Err(need("directory")),
        (_, None) => return Err(need("directory-key")),
    }
    let spec_anchor = |flag: &str, spec: &str| {
        let mut parts = spec.splitn(3, '=');
        let (Some(name), Some(address), Some(key)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("--{flag} {spec:?}: expected NAME=HOST:PORT=KEY"));
        };
        anchor(name, address, key)
    };
    for spec in &cli.also_directory {
        directories.push(spec_anchor("also-directory", spec)?);
    }
    let mut scoped_directories = Vec::new();
    for spec in &cli.scoped_directory {
        scoped_directories.push(spec_anchor("scoped-directory", spec)?);
    }
    for d in file.directories.unwrap_or_default() {
        let anchor = anchor(&d.name, &d.address, &d.key)?;
        match d.scoped {
            Some(true) => scoped_directories.push(anchor),
            _ => directories.push(anchor),
        }
    }
    if scoped_directories.len() > MAX_SCOPED_DIRECTORIES {
        return Err(format!(
            "at most {MAX_SCOPED_DIRECTORIES} scoped directories: a sender not pinned yet is \
             looked up at each of them"
        ));
    }
    if directories.is_empty() && !cli.also_directory.is_empty() {
        return Err(need("directory"));
    }
    check_directories(&[&directories[..], &scoped_directories[..]].concat())?;
    let quorum = match cli.quorum.map(|q| q as usize).or(file.quorum) {
        None => default_quorum(directories.len()).min(directories.len()),
        Some(q) if (1..=directories.len()).contains(&q) => q,
        Some(q) => {
            return Err(format!(
                "quorum must be between 1 and the number of directories ({}), not {q}",
                directories.len()
            ))
        }
    };
    let public_address = cli
        .public_address
        .or(file.public_address)
        .map(|a| smvs_schema::HostAddress::parse(&a).map_err(|e| e.to_string()))
        .transpose()?;
    let listen = cli
        .listen
        .or(file.listen)
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7421)));
    let device_listen = match cli.device_listen.or(file.device_listen).as_deref() {
        Some("none") => None,
        Some(addr) => Some(
            addr.parse::<SocketAddr>()
                .map_err(|e| format!("--device-listen {addr:?}: {e} (an IP:PORT, or none)"))?,
        ),
        None => Some(SocketAddr::new(listen.ip(), DEFAULT_DEVICE_PORT)),
    };
    let call_listen = match cli.call_listen.or(file.call_listen).as_deref() {
        Some("none") => None,
        Some(addr) => Some(
            addr.parse::<SocketAddr>()
                .map_err(|e| format!("--call-listen {addr:?}: {e} (an IP:PORT, or none)"))?,
        ),
        None => Some(SocketAddr::new(listen.ip(), DEFAULT_CALL_PORT)),
    };
    let relay_kbps = match cli.relay_kbps.or(file.relay_kbps) {
        Some(kbps) if kbps < MIN_RELAY_KBPS => {
            return Err(format!(
                "relay_kbps must be at least {MIN_RELAY_KBPS} (kbit/s), not {kbps}"
            ))
        }
        kbps => kbps.unwrap_or(DEFAULT_RELAY_KBPS),
    };
    let dht = if dht_on {
        let dht_listen = cli.dht_listen.or(file.dht_listen);
        if dht_listen.is_none() && listen.is_ipv6() {
            return Err("the DHT is IPv4: set --dht-listen (the peer port listens on IPv6)".into());
        }
        let mut bootstrap = file.dht_bootstrap.unwrap_or_default();
        bootstrap.extend(cli.dht_bootstrap);
        Some(DhtConfig {
            listen: dht_listen,
            bootstrap,
            republish: Duration::from_secs(
                cli.dht_republish_seconds
                    .or(file.dht_republish_seconds)
                    .unwrap_or(1200)
                    .clamp(1, 7200),
            ),
        })
    } else {
        None
    };
    let mut allowed = file.allowed_uids.unwrap_or_default();
    allowed.extend(cli.allow_uid);
    Ok(Config {
        state_dir: cli
            .state_dir
            .or(file.state_dir)
            .ok_or_else(|| need("state-dir"))?,
        socket: cli.socket.or(file.socket).ok_or_else(|| need("socket"))?,
        listen,
        device_listen,
        call_listen,
        relay_kbps,
        pairing_code_lifetime: Duration::from_secs(
            cli.pairing_code_seconds
                .or(file.pairing_code_seconds)
                .unwrap_or(600)
                .clamp(1, 3600),
        ),
        public_address,
        directories,
        scoped_directories,
        quorum,
        dht,
        keyguard_socket: cli
            .keyguard_socket
            .or(file.keyguard_socket)
            .ok_or_else(|| need("keyguard-socket"))?,
        allowed_uids: allowed,
        retry_max: Duration::from_secs(
            cli.retry_max_seconds
                .or(file.retry_max_seconds)
                .unwrap_or(DEFAULT_RETRY_MAX_SECONDS)
                .max(1),
        ),
        ring_timeout: Duration::from_secs(
            cli.ring_seconds
                .or(file.ring_seconds)
                .unwrap_or(30)
                .clamp(1, 600),
        ),
        peer_idle: Duration::from_secs(
            cli.peer_idle_seconds
                .or(file.peer_idle_seconds)
                .unwrap_or(300)
                .max(1),
        ),
        honour_remote_delete: !cli.refuse_remote_delete
            && file.honour_remote_delete.unwrap_or(true),
        socks5_proxy: cli.socks5_proxy.or(file.socks5_proxy),
        contacts_only: cli.contacts_only || file.contacts_only.unwrap_or(false),
        relay_calls: cli.relay_calls || file.relay_calls.unwrap_or(false),
        max_session_version: match cli.max_session_version.or(file.max_session_version) {
            // Session v2 (the `session` module is above this one).
            None => 2,
            Some(v @ 1..=2) => v,
            Some(other) => return Err(format!("max_session_version must be 1 or 2, not {other}")),
        },
        dbus: match cli.dbus.or(file.dbus).as_deref() {
            None | Some("none") => None,
            Some("system") => Some(crate::config::BusKind::System),
            Some("session") => Some(crate::config::BusKind::Session),
            Some(other) => {
                return Err(format!(
                    "dbus must be system, session or none, not {other:?}"
                ))
            }
        },
        notifications: match cli.notifications.or(file.notifications).as_deref() {
            None | Some("sender") => crate::config::NotifyMode::Sender,
            Some("off") => crate::config::NotifyMode::Off,
            Some("preview") => crate::config::NotifyMode::Preview,
            Some(other) => {
                return Err(format!(
                    "notifications must be off, sender or preview, not {other:?}"
                ))
            }
        },
    })
}

/// A directory of the list, checked ([`DirectoryAnchor::parse`]).
fn anchor(name: &str, address: &str, key: &str) -> Result<DirectoryAnchor, String> {
    DirectoryAnchor::parse(name, address, key)
}

/// No two directories share a name or a key (the same directory twice would be two votes).
fn check_directories(directories: &[DirectoryAnchor]) -> Result<(), String> {
    for (i, a) in directories.iter().enumerate() {
        for b in &directories[..i] {
            if a.name == b.name {
                return Err(format!("two directories are named {:?}", a.name));
            }
            if a.key == b.key {
                return Err(format!(
                    "directories {} and {} have the same key: one directory counts once",
                    b.name, a.name
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0000000000000000000000000000000000000000000000000000000000000000";

    fn settle_args(extra: &[&str]) -> Result<Config, String> {
        let mut args = vec![
            "smvsd",
            "--state-dir",
            "/tmp/s",
            "--socket",
            "/tmp/s.sock",
            "--directory",
            "127.0.0.1:7420",
            "--directory-key",
            KEY,
            "--keyguard-socket",
            "/tmp/k.sock",
        ];
        args.extend_from_slice(extra);
        settle(Cli::try_parse_from(args).map_err(|e| e.to_string())?)
    }

    #[test]
    fn the_call_port_defaults_to_the_peer_ip_on_7423() {
        let config = settle_args(&["--listen", "10.1.2.3:7421"]).unwrap();
        assert_eq!(config.call_listen, Some("10.1.2.3:7423".parse().unwrap()));
        assert_eq!(config.device_listen, Some("10.1.2.3:7422".parse().unwrap()));
        assert_eq!(config.relay_kbps, DEFAULT_RELAY_KBPS);
    }

    #[test]
    fn the_call_port_can_be_moved_or_turned_off() {
        let config = settle_args(&["--call-listen", "127.0.0.1:0", "--relay-kbps", "500"]).unwrap();
        assert_eq!(config.call_listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(config.relay_kbps, 500);
        let config = settle_args(&["--call-listen", "none"]).unwrap();
        assert_eq!(config.call_listen, None);
        let error = settle_args(&["--call-listen", "nowhere"]).unwrap_err();
        assert!(error.contains("--call-listen"), "{error}");
        assert!(settle_args(&["--relay-kbps", "0"]).is_err());
        assert!(settle_args(&["--relay-kbps", "255"]).is_err());
        assert_eq!(
            settle_args(&["--relay-kbps", "256"]).unwrap().relay_kbps,
            MIN_RELAY_KBPS
        );
    }

    #[test]
    fn a_relay_cap_under_256_in_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smvsd.toml");
        let path_arg = path.to_str().unwrap();
        std::fs::write(&path, "relay_kbps = 100\n").unwrap();
        let error = settle_args(&["--config", path_arg]).unwrap_err();
        assert!(error.contains("relay_kbps must be at least 256"), "{error}");
        // A flag overrides the file, as everywhere.
        let config = settle_args(&["--config", path_arg, "--relay-kbps", "300"]).unwrap();
        assert_eq!(config.relay_kbps, 300);
        std::fs::write(&path, "relay_kbps = 256\n").unwrap();
        assert_eq!(
            settle_args(&["--config", path_arg]).unwrap().relay_kbps,
            256
        );
    }

    #[test]
    fn several_directories_come_from_flags_and_the_file_with_a_majority_quorum() {
        let one = settle_args(&[]).unwrap();
        assert_eq!((one.directories.len(), one.quorum), (1, 1));
        assert_eq!(one.directories[0].name, "default");
        let b = format!("b=127.0.0.2:7420={}", "11".repeat(32));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("smvsd.toml");
        std::fs::write(
            &path,
            format!(
                "[[directories]]\nname = \"c\"\naddress = \"127.0.0.3:7420\"\nkey = \"{}\"\n",
                "22".repeat(32)
            ),
        )
        .unwrap();
        let path_arg = path.to_str().unwrap();
        let three = settle_args(&["--also-directory", &b, "--config", path_arg]).unwrap();
        let names: Vec<_> = three.directories.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["default", "b", "c"]);
        assert_eq!(three.quorum, 2, "a majority of three");
        // A scoped directory is one more name space, not one more vote.
        let d = format!("work=127.0.0.4:7420={}", "33".repeat(32));
        let scoped = settle_args(&["--also-directory", &b, "--scoped-directory", &d]).unwrap();
        assert_eq!((scoped.directories.len(), scoped.quorum), (2, 2));
        assert_eq!(scoped.scoped_directories[0].name, "work");
        let many: Vec<String> = (0..4)
            .flat_map(|i| {
                [
                    "--scoped-directory".to_owned(),
                    format!("s{i}=127.0.0.4:7420={}", format!("4{i}").repeat(32)),
                ]
            })
            .collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(settle_args(&many).unwrap_err().contains("at most 3 scoped"));
        let twice = format!("b=127.0.0.4:7420={}", "33".repeat(32));
        assert!(
            settle_args(&["--also-directory", &b, "--scoped-directory", &twice])
                .unwrap_err()
                .contains("two directories are named")
        );
        let all = settle_args(&["--also-directory", &b, "--quorum", "2"]).unwrap();
        assert_eq!(all.quorum, 2);
        for (args, says) in [
            (
                vec!["--also-directory", &b, "--quorum", "3"],
                "quorum must be between 1 and",
            ),
            (
                vec!["--also-directory", "b=127.0.0.2:7420"],
                "NAME=HOST:PORT=KEY",
            ),
            (
                vec!["--also-directory", &b, "--also-directory", &b],
                "two directories are named",
            ),
        ] {
            let error = settle_args(&args).unwrap_err();
            assert!(error.contains(says), "{args:?}: {error}");
        }
        let same_key = format!("x=127.0.0.9:1={KEY}");
        let error = settle_args(&["--also-directory", &same_key]).unwrap_err();
        assert!(error.contains("the same key"), "{error}");
        let bad_name = format!("Big=127.0.0.9:1={}", "33".repeat(32));
        assert!(settle_args(&["--also-directory", &bad_name]).is_err());
    }

    #[test]
    fn the_shipped_config_takes_its_directories_example_when_uncommented() {
        let shipped = include_str!("../../dist/config/smvsd.toml");
        let key = "44".repeat(32);
        let text: String = shipped
            .lines()
            .map(|line| {
                let example = [
                    "#[[directories]]",
                    "#name =",
                    "#address =",
                    "#key =",
                    "#quorum =",
                    "#scoped =",
                ];
                match example.iter().any(|p| line.starts_with(p)) {
                    true => line[1..].replace("<64 hex digits>", &key) + "\n",
                    false => format!("{line}\n"),
                }
            })
            .collect();
        let file: FileConfig = toml::from_str(&text).unwrap();
        assert_eq!(file.quorum, Some(2));
        let extra = file.directories.unwrap();
        assert_eq!((extra.len(), extra[0].name.as_str()), (2, "second"));
        assert_eq!(
            (extra[1].name.as_str(), extra[1].scoped),
            ("work", Some(true))
        );
    }
}
