//! The command line (DESIGN.md §7). Arguments are parsed into their types here (usernames,
//! message ids), so a bad one is a usage error (exit 2) before anything talks to smvsd.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use smvs_schema::Username;

use crate::client::{CallId, MessageId};

/// Where smvsd listens when nothing else says: the system service's socket.
pub const SYSTEM_SOCKET: &str = "/run/smvs/smvsd.sock";

#[derive(Debug, Parser)]
#[command(
    name = "smvsctl",
    version,
    about = "Talk to your SMVS host (smvsd): register, send and read messages, verify contacts",
    after_help = "Examples:\n  smvsctl register alice\n  smvsctl send bob 'see you at eight'\n  smvsctl --json history bob --limit 20\n\nThe socket is --socket, else $SMVS_SOCKET, else $XDG_RUNTIME_DIR/smvs/smvsd.sock if it \
                  exists, else /run/smvs/smvsd.sock.\nExit status: 0 success, 1 the operation \
                  failed, 2 bad usage."
)]
pub struct Cli {
    /// smvsd's Unix socket [default: $SMVS_SOCKET, else $XDG_RUNTIME_DIR/smvs/smvsd.sock if it
    /// exists, else /run/smvs/smvsd.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Use the host this machine is paired with, over its device port at HOST[:PORT] (or where
    /// it was paired, with `--host paired`) [default: $SMVS_HOST]
    #[arg(
        long,
        global = true,
        value_name = "HOST[:PORT]",
        conflicts_with = "socket"
    )]
    pub host: Option<String>,

    /// Reach the paired host through this SOCKS5 proxy, HOST:PORT (e.g. Tor at 127.0.0.1:9050,
    /// for a host published as an onion name); `pair` remembers it for later connections
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub socks5_proxy: Option<String>,

    /// Print JSON for programs instead of text (one object per command; one per line for watch)
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Create your identity (keys made in keyguard) and register USERNAME at the directory,
    /// or (--dht) in the hosts' DHT, where your name is your identity address (smvs:…)
    #[command(after_help = "Examples:\n  smvsctl register alice\n  smvsctl register --dht")]
    Register {
        /// 3 to 32 characters of a-z 0-9 . _ -
        #[arg(required_unless_present = "dht", conflicts_with = "dht")]
        username: Option<Username>,
        /// Register in the hosts' DHT instead (smvsd --dht): no directory, no name to choose;
        /// others find you by the identity address `whoami` shows
        #[arg(long)]
        dht: bool,
    },

    /// Print your username (or identity address) and the fingerprint of your identity key
    #[command(after_help = "Examples:\n  smvsctl whoami\n  smvsctl whoami --qr")]
    Whoami {
        /// Also print it as a QR code (an identity address is long to type)
        #[arg(long)]
        qr: bool,
    },

    /// Show the host's state: user, fingerprint, addresses, queued messages, version
    #[command(after_help = "Example:\n  smvsctl --json status")]
    Status,

    /// Send TEXT to USER; prints the message id once it is durably queued
    #[command(
        after_help = "Examples:\n  smvsctl send bob 'see you at eight'\n  echo 'from a pipe' | smvsctl send bob -\n\nWith TEXT '-' the message is read from stdin (one trailing newline is dropped)."
    )]
    Send {
        /// The recipient
        user: Username,
        /// The message; '-' reads it from stdin
        text: String,
    },

    /// Mark everything USER sent so far as read, on all your devices
    #[command(after_help = "Example:\n  smvsctl read bob")]
    Read {
        /// The other user of the conversation
        user: Username,
    },

    /// Show the messages exchanged with USER, oldest first
    #[command(
        after_help = "Examples:\n  smvsctl history bob --limit 20\n  smvsctl history bob --limit 20 --before ID   (the page before: ID is the first one shown)"
    )]
    History {
        /// The other user of the conversation
        user: Username,
        /// Only the last N messages (0: all)
        #[arg(long, value_name = "N", default_value_t = 0)]
        limit: u32,
        /// Only messages older than the message ID (to page back)
        #[arg(long, value_name = "ID")]
        before: Option<MessageId>,
    },

    /// List conversations: peer, message count, last message, disappearing-message timer
    #[command(after_help = "Example:\n  smvsctl conversations")]
    Conversations,

    /// Print events (new messages, status changes, key changes, deletions) as they happen
    #[command(
        after_help = "Examples:\n  smvsctl watch\n  smvsctl --json watch --count 1\n  smvsctl --host paired watch\n  smvsctl watch --cursor mine\n\n\
                      One line per event. Runs until SIGINT/SIGTERM (exit 0), until --count events were \
                      printed (exit 0), or until smvsd closes the connection (exit 1). On a linked device (--host), the watch \
                      resumes where this device's last watch stopped: what happened meanwhile comes first (\"replayed\": true in --json), \
                      each event once. With --json every line carries the event's \"seq\" in the host's log."
    )]
    Watch {
        /// Exit after N events
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        /// Start after this event (the `seq` of a --json line): what came since, then live
        #[arg(long, value_name = "SEQ", conflicts_with_all = ["cursor", "live"])]
        since: Option<u64>,
        /// Resume from the cursor of this name, which the host keeps for this device and moves
        /// past each event once it is printed (default with --host: "watch")
        #[arg(long, value_name = "NAME", conflicts_with = "live")]
        cursor: Option<String>,
        /// Live events only (the default on the host's own socket)
        #[arg(long)]
        live: bool,
    },

    /// Run in your desktop session: turn your host's news into desktop notifications
    #[command(
        after_help = "Examples:\n  smvsctl agent\n  smvsctl agent --preview\n  smvsctl --host home.example:7422 agent\n\nBeside the host, listens on the system bus (DBUS_SYSTEM_BUS_ADDRESS, or --bus session for a per-user smvsd) for \
                      org.smvs.Daemon1's MessageReceived, KeyChanged and call signals, and raises org.freedesktop.Notifications on the session \
                      bus. It is also the device that runs calls placed or answered over D-Bus (PlaceCall, AnswerCall): it registers with smvsd's socket \
                      and runs their media here (camera, microphone and window by default). On a linked device (--host, $SMVS_HOST, or the host this \
                      machine is paired with when there is no local smvsd) it takes the host's events over the device link instead, and reconnects \
                      after the link drops (waits of 1 s doubling to 30 s), resuming from the device's cursor `agent`: what arrived meanwhile is shown as one summary. A call that rings shows \
                      Answer and Decline; the first of your devices to answer takes the call, the others say it was answered elsewhere. \
                      Runs until SIGINT/SIGTERM. Installed as the systemd --user unit smvsctl-agent.service."
    )]
    Agent {
        /// Show the start of each message (fetched with GetMessage, which the bus policy guards)
        #[arg(long)]
        preview: bool,
        /// Where smvsd's D-Bus service is: system (a system service) or session
        #[arg(long, default_value = "system", value_parser = ["system", "session"])]
        bus: String,
        /// How the calls answered or placed here run
        #[command(flatten)]
        media: MediaArgs,
    },

    /// Delete the conversation with USER (its key is destroyed), or one message with --id
    #[command(
        after_help = "Examples:\n  smvsctl delete bob --id 00112233445566778899aabbccddeeff\n  smvsctl delete bob --everywhere"
    )]
    Delete {
        /// The other user of the conversation
        user: Username,
        /// Delete only this message (32 hex digits, as `send` and `history` print it)
        #[arg(long, value_name = "ID")]
        id: Option<MessageId>,
        /// Ask USER's host to delete it too
        #[arg(long)]
        everywhere: bool,
    },

    /// Block USER: their messages are no longer accepted
    #[command(after_help = "Example:\n  smvsctl block mallory")]
    Block {
        /// The user to block
        user: Username,
    },

    /// Unblock USER
    #[command(after_help = "Example:\n  smvsctl unblock mallory")]
    Unblock {
        /// The user to unblock
        user: Username,
    },

    /// List contacts: fingerprint, blocked, changed key, message request
    #[command(after_help = "Example:\n  smvsctl contacts")]
    Contacts,

    /// Show the safety number with USER; --accept-new-key accepts a changed identity key
    #[command(
        after_help = "Examples:\n  smvsctl verify bob\n  smvsctl verify bob --accept-new-key\n\nCompare the safety number with USER in person or over another channel; only then \
                      accept a changed key."
    )]
    Verify {
        /// The contact to verify
        user: Username,
        /// Accept USER's new identity key after it changed
        #[arg(long, conflicts_with = "keep_key")]
        accept_new_key: bool,
        /// Keep the pinned key and refuse the other one the directories show (after comparing
        /// the pinned key's safety number with USER)
        #[arg(long)]
        keep_key: bool,
    },

    /// Call USER: video and audio straight between your device and theirs, end-to-end encrypted
    #[command(
        after_help = "Examples:\n  smvsctl call bob\n  smvsctl call bob --video none --audio mic\n  smvsctl call bob --video test --audio test --sink null --duration 5 --stats\n\nRings for up to 30 s. \
                      The call runs in this process until --duration passes, SIGINT/SIGTERM (hangs up), or the other side hangs up. \
                      The media goes directly between the two devices (UDP), so each side learns the other's IP address. \
                      --stats prints the call's statistics as JSON when it ends."
    )]
    Call {
        /// The user to call
        user: Username,
        #[command(flatten)]
        media: MediaArgs,
    },

    /// Answer a ringing call (CALL_ID, or the one that rings) and run its media here
    #[command(
        after_help = "Examples:\n  smvsctl answer\n  smvsctl answer 00112233445566778899aabbccddeeff --video none\n  smvsctl answer --wait 30 --video test --audio test --sink null --stats\n\n\
                      Without --wait, a call must already be ringing."
    )]
    Answer {
        /// The call to answer (32 hex digits, as `calls` and `watch` print it)
        call_id: Option<CallId>,
        /// Wait up to SECS for a call to ring
        #[arg(long, value_name = "SECS", default_value_t = 0)]
        wait: u64,
        #[command(flatten)]
        media: MediaArgs,
    },

    /// Hang up a call (CALL_ID, or the current one); a ringing incoming call is declined
    #[command(
        after_help = "Examples:\n  smvsctl hangup\n  smvsctl hangup 00112233445566778899aabbccddeeff"
    )]
    Hangup {
        /// The call to end (32 hex digits)
        call_id: Option<CallId>,
    },

    /// List the calls that ring or are active
    #[command(after_help = "Example:\n  smvsctl --json calls")]
    Calls,

    /// Pair this machine with your host, using a code from `smvsctl devices link`
    #[command(
        after_help = "Example:\n  smvsctl pair home.example:7422 427-1234-5678 --name laptop\n\nThe device key is kept in $XDG_CONFIG_HOME/smvs/device.key (0600) and the host's key is pinned in host.toml beside it; the history stays on the host. Afterwards use --host (or $SMVS_HOST) with any command."
    )]
    Pair {
        /// The host's device port, HOST[:PORT] (port 7422 if left out)
        host: String,
        /// The code `devices link` printed, NNN-DDDD-DDDD; `-` reads it from stdin (so that it is
        /// not in the process list or the shell history)
        code: String,
        /// A name for this device [default: the one given to `devices link`]
        #[arg(long)]
        name: Option<String>,
    },

    /// List the devices paired with your host; link a new one; revoke one
    #[command(
        after_help = "Examples:\n  smvsctl devices\n  smvsctl devices link --name laptop\n  smvsctl devices revoke laptop"
    )]
    Devices {
        #[command(subcommand)]
        action: Option<DevicesAction>,
    },

    /// The directories this host uses, and moving to another one
    #[command(
        after_help = "Examples:\n  smvsctl directory list\n  smvsctl directory add second dir2.example:7420 KEY\n  smvsctl directory move second\n  smvsctl directory remove default\n\n\
                      Directories are configured in smvsd.toml (`directory`, `[[directories]]`); `add` and \
                      `remove` change the list for good (kept by the host, on top of the file). `move` \
                      registers at the named one and leaves the home directory (the first one not left yet) \
                      with a statement your identity signs, which it serves from then on: contacts who \
                      pinned you follow it without a key-change alarm."
    )]
    Directory {
        #[command(subcommand)]
        action: DirectoryAction,
    },

    /// Your own names for identity addresses (smvs:…): `send NAME` then writes to the address
    #[command(
        after_help = "Examples:\n  smvsctl petname add bob smvs:abcd…\n  smvsctl send bob 'hi'\n  smvsctl petname list\n  smvsctl petname remove bob\n\n\
                      A petname is known to your host and its devices only; what is sent and pinned is \
                      the address. It may not be a name a contact already goes by, and an address has one \
                      petname (adding another replaces it)."
    )]
    Petname {
        #[command(subcommand)]
        action: PetnameAction,
    },

    /// Chat in the terminal: conversations, live messages, verification and calls
    #[command(
        after_help = "Examples:\n  smvsctl chat\n  smvsctl chat bob\n  smvsctl --host paired chat\n  smvsctl chat bob --plain < lines.txt\n\n\
                      Full screen: conversations on the left, the open chat on the right, a line to write \
                      at the bottom; ? shows every key (vi-style letters and the arrow keys both work). NO_COLOR \
                      turns colours off; every state is also a word or a symbol. --plain prints a line per \
                      message or event and sends each line read from stdin, for screen readers and pipes. \
                      Calls placed or answered here run their media in this process, as `smvsctl call` does."
    )]
    Chat {
        /// Open the chat with USER at once
        user: Option<Username>,
        /// Lines instead of a full screen (screen readers, pipes)
        #[arg(long)]
        plain: bool,
        /// How the calls placed or answered here run
        #[command(flatten)]
        media: MediaArgs,
    },

    /// Hand TO the directory's signed record of USER, as your host pinned it: TO's host can
    /// then reach USER without asking a directory (marked "introduced by" you there)
    #[command(
        after_help = "Example:\n  smvsctl introduce bob carol   # carol can now write to bob"
    )]
    Introduce {
        /// The contact to introduce
        user: Username,
        /// Whom to introduce them to
        to: Username,
    },

    /// Make messages with USER disappear SECONDS after they are sent (0 turns it off)
    #[command(after_help = "Examples:\n  smvsctl expire bob 86400\n  smvsctl expire bob 0")]
    Expire {
        /// The other user of the conversation
        user: Username,
        /// Lifetime of each message in seconds; 0 turns disappearing messages off
        seconds: u32,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum DevicesAction {
    /// Print a one-time code (10 minutes) for a new machine to pair with
    Link {
        /// The new device's name
        #[arg(long)]
        name: String,
    },
    /// Forget a device: its open connections end at once and its key is refused afterwards
    Revoke {
        /// The device's name as `devices` lists it
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum PetnameAction {
    /// Every petname and the address it stands for
    List,
    /// Name the identity address ADDRESS NAME on this host
    Add {
        /// The petname: 3 to 32 of a-z, 0-9, '.', '_', '-'
        name: String,
        /// The identity address (smvs:…, as `smvsctl whoami` shows it on their side)
        address: String,
    },
    /// Forget a petname (the contact stays, under its address)
    Remove {
        /// The petname
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum DirectoryAction {
    /// The directories in use, and which this host's user left
    List,
    /// Use one more directory (it must answer now; you are registered there too)
    Add {
        /// A name for it: 1 to 32 lowercase letters, digits and -
        name: String,
        /// Its address, HOST:PORT
        address: String,
        /// Its key, in hex (`smvs-directory pubkey` prints it)
        key: String,
        /// A name space of its own: its users are written NAME@name (`alice@work`); it is
        /// asked only for those, you are not registered there, and it is not in the quorum
        #[arg(long)]
        scoped: bool,
    },
    /// Stop using a directory (your record there is not deleted: `move` leaves with a statement)
    Remove {
        /// The directory's name, as `directory list` shows it
        name: String,
    },
    /// Move to the directory NAME (configured or added), leaving a signed "moved" statement at the home one
    Move {
        /// The directory's name, as `directory list` shows it
        name: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum VideoArg {
    /// A moving test pattern
    Test,
    /// The camera (v4l2)
    Camera,
    /// Send no video
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AudioArg {
    /// A test tone
    Test,
    /// The microphone
    Mic,
    /// Send no audio
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkArg {
    /// Show the other side's video in a window and play their audio
    Window,
    /// Decode and discard (tests, measurements)
    Null,
}

/// How a device runs a call's media.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct MediaArgs {
    /// What video to send
    #[arg(long, value_enum, default_value = "camera")]
    pub video: VideoArg,
    /// What audio to send
    #[arg(long, value_enum, default_value = "mic")]
    pub audio: AudioArg,
    /// Where the other side's media goes
    #[arg(long, value_enum, default_value = "window")]
    pub sink: SinkArg,
    /// Hang up after SECS seconds of conversation
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: Option<u64>,
    /// Print the call's statistics as JSON when it ends
    #[arg(long)]
    pub stats: bool,
    /// The IP address to receive media on [default: beside the host, the IP of its published
    /// address; on a device linked with --host, this machine's address on its link to the host]
    #[arg(long, value_name = "IP")]
    pub media_address: Option<std::net::IpAddr>,
    /// Video size to send, WIDTHxHEIGHT
    #[arg(long, value_name = "WxH", default_value = "640x480", value_parser = parse_size)]
    pub size: (u32, u32),
    /// Video frames per second to send
    #[arg(long, value_name = "N", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=60))]
    pub fps: u32,
    /// Stamp a time code into the top rows of the video sent, and read it from the video
    /// received: glass-to-glass latency in --stats, valid when both ends share a clock
    #[arg(long)]
    pub latency_probe: bool,
    /// Relay this call through the two users' hosts only: neither device learns the other's
    /// address, even when a direct path exists (the host's `relay_calls` does this for every
    /// call)
    #[arg(long)]
    pub relay: bool,
}

fn parse_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once('x')
        .ok_or_else(|| format!("{text:?} is not WIDTHxHEIGHT"))?;
    let parse = |v: &str| -> Result<u32, String> {
        v.parse::<u32>()
            .ok()
            .filter(|v| (16..=4096).contains(v) && v % 2 == 0)
            .ok_or_else(|| format!("{v:?} is not an even size from 16 to 4096"))
    };
    Ok((parse(w)?, parse(h)?))
}

impl Cli {
    /// The socket to connect to: `--socket`, or the default (see [`default_socket`]).
    pub fn socket_path(&self) -> PathBuf {
        match &self.socket {
            Some(path) => path.clone(),
            None => default_socket(),
        }
    }

    /// The paired host to use over its device port, if this command goes there: `--host`, else
    /// `$SMVS_HOST`, else the remembered pairing when there is no local socket to use. `paired`
    /// means "where it was paired".
    pub fn remote_host(&self) -> Option<String> {
        if let Some(host) = &self.host {
            return Some(host.clone());
        }
        if self.socket.is_some() {
            return None;
        }
        if let Some(host) = std::env::var("SMVS_HOST").ok().filter(|h| !h.is_empty()) {
            return Some(host);
        }
        let local_socket = std::env::var_os("SMVS_SOCKET").is_some_and(|s| !s.is_empty())
            || default_socket().exists();
        let paired = crate::remote::config_dir()
            .ok()
            .and_then(|dir| crate::remote::paired_host(&dir).ok().flatten())
            .is_some();
        let remote = !local_socket && paired;
        if remote {
            // Not silently: this goes to another machine (see --host).
            eprintln!("smvsctl: no local smvsd socket; using the host this machine is paired with");
        }
        remote.then(|| "paired".to_string())
    }
}

/// `$SMVS_SOCKET`, else the per-user service's socket if it exists, else the system service's.
pub fn default_socket() -> PathBuf {
    resolve_default_socket(
        std::env::var_os("SMVS_SOCKET"),
        std::env::var_os("XDG_RUNTIME_DIR"),
        |path| path.exists(),
    )
}

/// [`default_socket`] with its inputs passed in, for tests. Empty variables count as unset.
pub fn resolve_default_socket(
    smvs_socket: Option<OsString>,
    xdg_runtime_dir: Option<OsString>,
    exists: impl Fn(&Path) -> bool,
) -> PathBuf {
    if let Some(path) = smvs_socket.filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if let Some(dir) = xdg_runtime_dir.filter(|d| !d.is_empty()) {
        let user_socket = Path::new(&dir).join("smvs").join("smvsd.sock");
        if exists(&user_socket) {
            return user_socket;
        }
    }
    PathBuf::from(SYSTEM_SOCKET)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("smvsctl").chain(args.iter().copied()))
    }

    #[test]
    fn the_command_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn commands_parse() {
        let cli = parse(&["--json", "send", "bob", "hello there"]).unwrap();
        assert!(cli.json);
        assert_eq!(
            cli.command,
            Command::Send {
                user: Username::parse("bob").unwrap(),
                text: "hello there".into()
            }
        );
        // Global flags work after the command too.
        let cli = parse(&[
            "history", "bob", "--limit", "5", "--json", "--socket", "/tmp/s",
        ])
        .unwrap();
        assert!(cli.json);
        assert_eq!(cli.socket_path(), PathBuf::from("/tmp/s"));
        assert!(matches!(cli.command, Command::History { limit: 5, .. }));
        let cli = parse(&["history", "bob"]).unwrap();
        assert!(matches!(cli.command, Command::History { limit: 0, .. }));
        let cli = parse(&["verify", "bob", "--accept-new-key"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Verify {
                accept_new_key: true,
                ..
            }
        ));
        let cli = parse(&["expire", "bob", "0"]).unwrap();
        assert!(matches!(cli.command, Command::Expire { seconds: 0, .. }));
        let cli = parse(&["watch", "--count", "3"]).unwrap();
        assert_eq!(
            cli.command,
            Command::Watch {
                count: Some(3),
                since: None,
                cursor: None,
                live: false
            }
        );
        assert!(parse(&["watch", "--since", "3", "--live"]).is_err());
        assert!(parse(&["watch", "--cursor", "a", "--since", "3"]).is_err());
        for simple in ["whoami", "status", "conversations", "contacts"] {
            assert!(parse(&[simple]).is_ok(), "{simple}");
        }
    }

    #[test]
    fn bad_usernames_are_usage_errors() {
        for bad in ["Bob", "b", "bob smith", "bob/../x", &"x".repeat(33), ""] {
            for args in [
                vec!["send", bad, "hi"],
                vec!["register", bad],
                vec!["history", bad],
                vec!["verify", bad],
                vec!["block", bad],
            ] {
                let e = parse(&args).unwrap_err();
                assert_eq!(e.kind(), ErrorKind::ValueValidation, "{args:?}");
                assert_eq!(e.exit_code(), 2);
            }
        }
    }

    #[test]
    fn ids_are_hex() {
        let cli = parse(&["delete", "bob", "--id", "00112233445566778899aabbccddeeff"]).unwrap();
        let Command::Delete {
            id: Some(id),
            everywhere: false,
            ..
        } = cli.command
        else {
            panic!("unexpected {:?}", cli.command);
        };
        assert_eq!(id.to_hex(), "00112233445566778899aabbccddeeff");
        for bad in ["xyz", "0011", "00112233445566778899aabbccddeeff00"] {
            let e = parse(&["delete", "bob", "--id", bad]).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ValueValidation);
            assert_eq!(e.exit_code(), 2);
        }
        let cli = parse(&["delete", "bob", "--everywhere"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Delete {
                id: None,
                everywhere: true,
                ..
            }
        ));
    }

    #[test]
    fn other_usage_errors_exit_2() {
        for args in [
            vec![],
            vec!["frobnicate"],
            vec!["send", "bob"],
            vec!["watch", "--count", "0"],
            vec!["expire", "bob", "-1"],
            vec!["history", "bob", "--limit", "many"],
        ] {
            let e = parse(&args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn every_command_has_help_with_an_example() {
        use clap::CommandFactory;
        let cli = Cli::command();
        for sub in cli.get_subcommands() {
            assert!(sub.get_about().is_some(), "{}", sub.get_name());
            let after = sub
                .get_after_help()
                .map(|h| h.to_string())
                .unwrap_or_default();
            assert!(
                after.contains(&format!("smvsctl {}", sub.get_name()))
                    || after.contains(&format!("--json {}", sub.get_name())),
                "{}: {after}",
                sub.get_name()
            );
        }
        let e = parse(&["send", "--help"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::DisplayHelp);
        assert_eq!(e.exit_code(), 0);
    }

    #[test]
    fn the_default_socket_follows_the_environment() {
        let never = |_: &Path| false;
        let always = |_: &Path| true;
        assert_eq!(
            resolve_default_socket(
                Some("/tmp/x.sock".into()),
                Some("/run/user/1000".into()),
                always
            ),
            PathBuf::from("/tmp/x.sock")
        );
        assert_eq!(
            resolve_default_socket(None, Some("/run/user/1000".into()), always),
            PathBuf::from("/run/user/1000/smvs/smvsd.sock")
        );
        assert_eq!(
            resolve_default_socket(None, Some("/run/user/1000".into()), never),
            PathBuf::from(SYSTEM_SOCKET)
        );
        assert_eq!(
            resolve_default_socket(Some("".into()), None, always),
            PathBuf::from(SYSTEM_SOCKET)
        );
        assert_eq!(
            resolve_default_socket(None, Some("".into()), always),
            PathBuf::from(SYSTEM_SOCKET)
        );
    }
}
