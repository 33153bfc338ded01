//! Logging for operators: structured `tracing` events. `RUST_LOG` overrides the level (default
//! `info`). Rules: error = someone must act, warn = actionable, info = rare; never a key, a token
//! or a message body.
//!
//! Where events go: when systemd connected stderr to the journal (`$JOURNAL_STREAM` names
//! stderr's device and inode, as `systemd.exec(5)` documents), natively to journald through
//! `tracing-journald`; otherwise as plain text on stderr. In the journal every field of an
//! event becomes a journal field of the same name upper-cased and without prefix (`peer` →
//! `PEER`, `message_id` → `MESSAGE_ID`), and the level becomes `PRIORITY` (info is 5, notice).
//! So a field must not be named after another of journald's own fields (`priority`,
//! `syslog_identifier`, `code_file`, …).
//!
//! # Security events
//!
//! Events an operator may have to audit or act on carry two fields, set by
//! [`security_event!`](crate::security_event):
//!
//! - `security_event`: the event's name (`key-changed`, `peer-refused`, …), for text logs and
//!   `journalctl SECURITY_EVENT=peer-refused`;
//! - `message_id`: a fixed 128-bit id per event, the journal's `MESSAGE_ID` field (the
//!   journald convention for "this kind of message"), for `journalctl MESSAGE_ID=…`.
//!
//! ```
//! # let peer = "bob";
//! use smvs_service::logging::KEY_CHANGED;
//! smvs_service::security_event!(warn, KEY_CHANGED, %peer, "a contact's identity key changed");
//! ```
//!
//! The ids below never change once released; a new kind of event gets a new id
//! (`systemd-id128 new`).

use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

#[doc(hidden)]
pub use tracing as __tracing;

/// A kind of security event: its name and its journal `MESSAGE_ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecurityEvent {
    /// The `security_event` field: a short kebab-case name.
    pub name: &'static str,
    /// The `message_id` field: 32 lowercase hex digits, fixed for ever.
    pub message_id: &'static str,
}

/// An identity key changed: a host sees a contact's key differ from the pinned one (messages
/// both ways stop until the user accepts it), or a user rotated theirs at the directory.
pub const KEY_CHANGED: SecurityEvent = SecurityEvent {
    name: "key-changed",
    message_id: "ecc3af3146fa48cbaf5907f12bb3dca7",
};

/// The directory served a user's record with a lower serial than one it served before.
pub const DIRECTORY_ROLLBACK: SecurityEvent = SecurityEvent {
    name: "directory-rollback",
    message_id: "5b0f3c9e8d2a4e61a7c4f0b2d9e8a613",
};

/// Two directories showed different identity keys for one user (an equivocation): at least
/// one of them lies, and nothing is sent to that user until the user decides.
pub const DIRECTORY_EQUIVOCATION: SecurityEvent = SecurityEvent {
    name: "directory-equivocation",
    message_id: "7a3d95c2e0b84f1f9c6e2b5d8a41f307",
};

/// A directory shows this host's own user with an identity key this host did not make: it
/// lies about us to whoever asks (or someone took the name there).
pub const OWN_KEY_FORGED: SecurityEvent = SecurityEvent {
    name: "own-key-forged",
    message_id: "3e9b0d6f4c21478a8e5f1a7c2b9d6e40",
};

/// A peer host's envelope or connection was refused (its key is not the sender's, or blocked).
pub const PEER_REFUSED: SecurityEvent = SecurityEvent {
    name: "peer-refused",
    message_id: "c681468b1f2e47b998bd452240162bb4",
};

/// The key guard refused a connection from a uid it was not told to serve.
pub const KEYGUARD_REFUSAL: SecurityEvent = SecurityEvent {
    name: "keyguard-refusal",
    message_id: "f9e6df5480374246a49fe1dd7171def4",
};

/// The directory answered with a key other than the one pinned in the host's configuration.
pub const DIRECTORY_KEY_MISMATCH: SecurityEvent = SecurityEvent {
    name: "directory-key-mismatch",
    message_id: "ab810f36641546128f080418b3a24a1e",
};

/// A local client (a device on smvsd's socket) was refused: its uid is not allowed.
pub const LOCAL_CLIENT_REFUSED: SecurityEvent = SecurityEvent {
    name: "local-client-refused",
    message_id: "34b5c5e1b7b24ff2bc67023511f530b1",
};

/// A device on the device port was refused: its key is not paired (or was revoked), or a
/// pairing attempt failed (wrong, used or expired code).
pub const DEVICE_REFUSED: SecurityEvent = SecurityEvent {
    name: "device-refused",
    message_id: "56cd87ed9ad0471e8889023309f7fe98",
};

/// The directory's record of this host's own user named another host address or transport
/// key than this host's (someone with a login published theirs); the host published its own
/// again.
pub const OWN_RECORD_CHANGED: SecurityEvent = SecurityEvent {
    name: "own-record-changed",
    message_id: "d0e2632d591d4e35a05b9df55580ad55",
};

/// A directory's key log heads are not all on one log: a head this host was shown, or one a
/// contact's host passed on, is not on the log the directory proves to this host (a split
/// view), or the directory cannot prove its log grew from a head it signed (rewound).
pub const LOG_SPLIT_VIEW: SecurityEvent = SecurityEvent {
    name: "log-split-view",
    message_id: "369a2ba63a004178f06e5802bcde61f1",
};

/// Every security event, for tests and documentation.
pub const SECURITY_EVENTS: [SecurityEvent; 11] = [
    DIRECTORY_ROLLBACK,
    DIRECTORY_EQUIVOCATION,
    OWN_KEY_FORGED,
    KEY_CHANGED,
    PEER_REFUSED,
    KEYGUARD_REFUSAL,
    DIRECTORY_KEY_MISMATCH,
    LOCAL_CLIENT_REFUSED,
    DEVICE_REFUSED,
    OWN_RECORD_CHANGED,
    LOG_SPLIT_VIEW,
];

/// Logs a security event: `security_event!(LEVEL, EVENT, fields…, "message")`, where LEVEL is
/// `error`, `warn` or `info` and EVENT a [`SecurityEvent`]. It is the `tracing` macro of that
/// level with the `security_event` and `message_id` fields put first.
#[macro_export]
macro_rules! security_event {
    ($level:ident, $event:expr, $($rest:tt)+) => {
        $crate::logging::__tracing::$level!(
            security_event = $event.name,
            message_id = $event.message_id,
            $($rest)+
        )
    };
}

/// Starts logging, to the journal or to stderr (see the module documentation). Call once, early
/// in `main`; a second call does nothing.
pub fn init() {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = stderr_is_journal().then(tracing_journald::layer);
    if let Some(Ok(layer)) = journal {
        // No prefix, so `message_id` reaches the journal as MESSAGE_ID (the default is F_).
        let _ = tracing_subscriber::registry()
            .with(filter())
            .with(layer.with_field_prefix(None))
            .try_init();
        return;
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
    if let Some(Err(e)) = journal {
        tracing::warn!(error = %e, "stderr is the journal but its socket is not usable; logging text");
    }
}

/// Whether stderr is the stream systemd connected to the journal: `$JOURNAL_STREAM` is
/// "DEVICE:INODE" of that stream, and a child whose stderr was redirected inherits the variable
/// but not the stream, hence the comparison.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stat) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else {
        return false;
    };
    journal_stream_names(&value.to_string_lossy(), stat.st_dev, stat.st_ino)
}

/// Whether a `$JOURNAL_STREAM` value ("DEVICE:INODE", both decimal) names this device and inode.
fn journal_stream_names(value: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;
    use std::sync::{Arc, Mutex};

    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::Context;

    use super::*;

    #[test]
    fn journal_stream_must_name_stderrs_device_and_inode() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let meta = file.as_file().metadata().unwrap();
        let (dev, ino) = (meta.dev(), meta.ino());
        assert!(journal_stream_names(&format!("{dev}:{ino}"), dev, ino));
        assert!(journal_stream_names(&format!("{dev}:{ino}\n"), dev, ino));
        assert!(!journal_stream_names(
            &format!("{dev}:{}", ino + 1),
            dev,
            ino
        ));
        assert!(!journal_stream_names(
            &format!("{}:{ino}", dev + 1),
            dev,
            ino
        ));
        assert!(!journal_stream_names("", dev, ino));
        assert!(!journal_stream_names(&format!("{dev}"), dev, ino));
        assert!(!journal_stream_names("x:y", dev, ino));
    }

    #[test]
    fn security_event_ids_are_128_bit_hex_and_distinct() {
        for (i, event) in SECURITY_EVENTS.iter().enumerate() {
            assert_eq!(event.message_id.len(), 32, "{}", event.name);
            assert!(
                event
                    .message_id
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{}",
                event.name
            );
            for other in &SECURITY_EVENTS[i + 1..] {
                assert_ne!(event.message_id, other.message_id);
                assert_ne!(event.name, other.name);
            }
        }
    }

    /// One event's fields, as (name, value).
    type Fields = Vec<(String, String)>;

    /// Records every field of every event, as a journal would receive them.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<Fields>>>);

    struct Visitor(Fields);

    impl Visit for Visitor {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0.push((field.name().to_string(), value.to_string()));
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            self.0
                .push((field.name().to_string(), format!("{value:?}")));
        }
    }

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut visitor = Visitor(Vec::new());
            event.record(&mut visitor);
            self.0.lock().unwrap().push(visitor.0);
        }
    }

    #[test]
    fn security_event_macro_adds_the_name_and_the_message_id() {
        let capture = Capture::default();
        let subscriber = tracing_subscriber::registry().with(capture.clone());
        tracing::subscriber::with_default(subscriber, || {
            let peer = "bob";
            crate::security_event!(warn, PEER_REFUSED, %peer, uid = 7, "refused a peer");
        });
        let events = capture.0.lock().unwrap();
        assert_eq!(events.len(), 1);
        let get = |name: &str| {
            events[0]
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(get("security_event").as_deref(), Some("peer-refused"));
        assert_eq!(
            get("message_id").as_deref(),
            Some("c681468b1f2e47b998bd452240162bb4")
        );
        assert_eq!(get("peer").as_deref(), Some("bob"));
        assert_eq!(get("uid").as_deref(), Some("7"));
        assert_eq!(get("message").as_deref(), Some("refused a peer"));
    }
}
