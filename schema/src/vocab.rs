//! The words smvsd, smvsctl and D-Bus share: message and call ids, statuses, call states and
//! the error codes of the local API. Each is defined here once, so the daemon, the command line
//! and the bus cannot drift apart.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};
use thiserror::Error;

/// An id that is not 32 hex digits.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("{what} id is 32 hex digits (16 bytes); got {shown:?}")]
pub struct IdError {
    what: &'static str,
    shown: String,
}

macro_rules! id16 {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 16]);

        impl $name {
            pub const LEN: usize = 16;

            /// A fresh random id.
            pub fn random() -> Self {
                $name(smvs_crypto::random_array())
            }

            /// The id in `bytes`, if they are exactly 16.
            pub fn from_slice(bytes: &[u8]) -> Option<Self> {
                bytes.try_into().ok().map($name)
            }

            pub fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }

            pub fn to_hex(&self) -> String {
                // Two digits a byte by table: a `format!` per byte showed in profiles (every
                // event logged names a message by its id in hex).
                const DIGITS: &[u8; 16] = b"0123456789abcdef";
                let mut out = String::with_capacity(32);
                for b in self.0 {
                    out.push(char::from(DIGITS[usize::from(b >> 4)]));
                    out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
                }
                out
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(text: &str) -> Result<Self, IdError> {
                let err = || IdError { what: $what, shown: text.chars().take(40).collect() };
                if text.len() != 32 || !text.is_ascii() {
                    return Err(err());
                }
                let mut bytes = [0u8; 16];
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| err())?;
                }
                Ok($name(bytes))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self.to_hex())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }
    };
}

id16!(
    /// A message id: 16 random bytes chosen by the sender, unique per sender; shown as 32
    /// lowercase hex digits.
    MessageId,
    "a message"
);
id16!(
    /// A call id: 16 random bytes chosen by the caller; shown like a message id.
    CallId,
    "a call"
);

/// Where a message is in its life. The numbers are stored on disk and match `local.capnp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Durable in the outbox, not yet accepted by the peer's host.
    Queued = 0,
    /// Handed to the peer's host, no receipt yet.
    Sent = 1,
    /// The peer's host stored it and sent a receipt.
    Delivered = 2,
    /// An incoming message.
    Received = 3,
    /// Given up; the message's reason says why.
    Failed = 4,
    /// Incoming from someone who is not a contact yet (contacts-only mode).
    Held = 5,
}

impl Status {
    pub const ALL: [Status; 6] = [
        Status::Queued,
        Status::Sent,
        Status::Delivered,
        Status::Received,
        Status::Failed,
        Status::Held,
    ];

    /// The status stored as `v`; `None` for a number no version ever wrote.
    pub fn from_i64(v: i64) -> Option<Status> {
        Status::ALL.into_iter().find(|s| *s as i64 == v)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sent => "sent",
            Status::Delivered => "delivered",
            Status::Received => "received",
            Status::Failed => "failed",
            Status::Held => "held",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the conversation's hash chain says about an incoming message. Stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Integrity {
    /// Follows the sender's previous message.
    Ok = 0,
    /// The sender's previous message never arrived.
    Gap = 1,
    /// Arrived after a message that names it as predecessor.
    OutOfOrder = 2,
    /// Outgoing, or the first message seen.
    Unchecked = 3,
}

impl Integrity {
    pub const ALL: [Integrity; 4] = [
        Integrity::Ok,
        Integrity::Gap,
        Integrity::OutOfOrder,
        Integrity::Unchecked,
    ];

    pub fn from_i64(v: i64) -> Option<Integrity> {
        Integrity::ALL.into_iter().find(|s| *s as i64 == v)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Integrity::Ok => "ok",
            Integrity::Gap => "gap",
            Integrity::OutOfOrder => "out_of_order",
            Integrity::Unchecked => "unchecked",
        }
    }
}

/// A call's state as devices see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    Ringing,
    Active,
    Ended,
}

impl CallState {
    pub fn as_str(self) -> &'static str {
        match self {
            CallState::Ringing => "ringing",
            CallState::Active => "active",
            CallState::Ended => "ended",
        }
    }
}

macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $text:literal,)*) => {
        /// The stable error codes of smvsd's local API. On the Unix socket an error's text
        /// starts with `code: `; on D-Bus the error is named `org.smvs.Daemon1.Error.Variant`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        #[serde(rename_all = "kebab-case")]
        pub enum ErrorCode {
            $($(#[$doc])* $variant,)*
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it opens an error's text (`key-changed`).
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }

            /// The last part of the D-Bus error name (`KeyChanged`).
            pub fn dbus_name(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => stringify!($variant),)*
                }
            }
        }
    };
}

error_codes! {
    /// The request itself is wrong (a malformed name, an id of the wrong length, …).
    BadRequest = "bad-request",
    /// This host has no user yet.
    NotRegistered = "not-registered",
    AlreadyRegistered = "already-registered",
    /// The name is registered by someone else.
    Taken = "taken",
    /// The directory does not know that user.
    UnknownUser = "unknown-user",
    /// The contact's identity key changed and is not accepted yet.
    KeyChanged = "key-changed",
    /// The directories show different identity keys for the user; nothing is sent until the
    /// user decides which (if any) is theirs.
    DirectoriesDisagree = "directories-disagree",
    Blocked = "blocked",
    TooLarge = "too-large",
    /// The directory cannot be reached or refused.
    Directory = "directory",
    /// The key guard cannot be reached or refused.
    Keyguard = "keyguard",
    /// The SOCKS5 proxy cannot reach the peer.
    Proxy = "proxy",
    NotFound = "not-found",
    /// The peer is in another call.
    Busy = "busy",
    /// The peer's host cannot be reached.
    Offline = "offline",
    /// The peer's host refused.
    Refused = "refused",
    /// No device runs calls for this host.
    NoDevice = "no-device",
    /// The call ended before the request could act on it.
    Ended = "ended",
    /// The host could not store what was asked (the disk is full, say).
    Storage = "storage",
    /// The caller's uid is not one the host serves (D-Bus; the socket closes instead).
    NotAllowed = "not-allowed",
    /// The peer's host address is of a kind this host does not connect to (loopback,
    /// link-local, private, … while this host's own address is not of that kind).
    AddressRefused = "address-refused",
    /// Something in the host went wrong; its log says what.
    Internal = "internal",
}

impl ErrorCode {
    /// The code that opens `text` (`key-changed: …`), and the rest. A code word later in a
    /// sentence is not a code.
    pub fn split(text: &str) -> (Option<ErrorCode>, &str) {
        for code in ErrorCode::ALL {
            if let Some(rest) = text
                .strip_prefix(code.as_str())
                .and_then(|rest| rest.strip_prefix(':'))
            {
                return (Some(*code), rest.trim_start());
            }
        }
        (None, text)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids_round_trip_through_hex_and_refuse_anything_else() {
        let id = MessageId::random();
        assert_eq!(id.to_hex().parse::<MessageId>().unwrap(), id);
        assert_eq!(id.to_hex().len(), 32);
        let fixed = CallId::from_slice(&[
            0x00, 0x01, 0x09, 0x0a, 0x0f, 0x10, 0x7f, 0x80, 0x9a, 0xab, 0xbc, 0xcd, 0xde, 0xef,
            0xf0, 0xff,
        ])
        .unwrap();
        assert_eq!(fixed.to_hex(), "0001090a0f107f809aabbccddeeff0ff");
        for bad in [
            "",
            "00",
            &"g".repeat(32),
            &"0".repeat(33),
            "é".repeat(16).as_str(),
        ] {
            assert!(bad.parse::<CallId>().is_err(), "{bad:?}");
        }
        assert_eq!(MessageId::from_slice(&[1; 15]), None);
    }

    #[test]
    fn stored_numbers_map_both_ways_and_unknown_ones_are_not_guessed() {
        for s in Status::ALL {
            assert_eq!(Status::from_i64(s as i64), Some(s));
        }
        assert_eq!(Status::from_i64(6), None);
        assert_eq!(Status::from_i64(-1), None);
        for i in Integrity::ALL {
            assert_eq!(Integrity::from_i64(i as i64), Some(i));
        }
        assert_eq!(Integrity::from_i64(4), None);
    }

    #[test]
    fn error_codes_are_distinct_and_split_only_at_the_start() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} twice");
            let text = format!("{}: what happened", code.as_str());
            assert_eq!(ErrorCode::split(&text), (Some(*code), "what happened"));
            // The D-Bus name is the code in CamelCase.
            let camel: String = code
                .as_str()
                .split('-')
                .map(|w| w[..1].to_uppercase() + &w[1..])
                .collect();
            assert_eq!(code.dbus_name(), camel);
        }
        assert_eq!(ErrorCode::split("blocked users cannot write").0, None);
    }
}
