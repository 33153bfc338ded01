//! The host's vocabulary: message ids, statuses, contacts, calls, events: the plain data that
//! every layer above passes around. It names nothing else in the crate.

pub mod calls;
pub mod contact;

use smvs_schema::Username;

pub use calls::{
    Answerer, CallId, CallInfo, CallSignal, CallState, DeviceCall, Media, RelayGrant, RelayPoint,
    SignalKind, Viewer, ANSWERED_ELSEWHERE,
};
pub use contact::{Contact, Evidence, PendingKey};
pub use smvs_schema::{Integrity, MessageId, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Out = 0,
    In = 1,
}

/// What a message carries besides its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Text(String),
    /// Delete these ids (empty: the whole conversation) on the peer's host too.
    Delete(Vec<MessageId>),
    /// Disappearing messages for the conversation, in seconds (0: off).
    Expire(u32),
    /// The sender vouches for a third user's signed directory record (`introduce`).
    Introduction(Evidence),
}

/// A message as the host stores it and shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub id: MessageId,
    pub peer: Username,
    pub from: Username,
    pub to: Username,
    pub time: i64,
    pub payload: Payload,
    pub prev_hash: Vec<u8>,
    pub status: Status,
    /// Why a failed message failed (empty otherwise).
    pub reason: FailReason,
    pub integrity: Integrity,
    pub direction: Direction,
}

/// Why an outgoing message was given up. Stored with the message, as its code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    None,
    /// The directory does not know the recipient (never registered, or deregistered since).
    UnknownUser,
    /// The recipient's host refused it and said never to retry.
    Refused,
    /// The recipient's host address is of a kind this host does not connect to (loopback,
    /// private, … while ours is not).
    AddressRefused,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::None => "",
            FailReason::UnknownUser => "unknown-user",
            FailReason::Refused => "refused",
            FailReason::AddressRefused => "address-refused",
        }
    }

    pub fn parse(text: &str) -> Option<FailReason> {
        [
            FailReason::None,
            FailReason::UnknownUser,
            FailReason::Refused,
            FailReason::AddressRefused,
        ]
        .into_iter()
        .find(|r| r.as_str() == text)
    }

    /// What a person reads.
    pub fn explain(self) -> &'static str {
        match self {
            FailReason::None => "",
            FailReason::UnknownUser => {
                "the directory does not know the recipient (not registered, or deregistered)"
            }
            FailReason::Refused => "the recipient's host refused it",
            FailReason::AddressRefused => {
                "the recipient's host address is of a kind this host does not connect to"
            }
        }
    }
}

/// The hash that chains a sender's messages in a conversation (BLAKE2b-256 over the fields in a
/// fixed, length-prefixed layout).
pub fn message_hash(
    id: &MessageId,
    from: &Username,
    to: &Username,
    time: i64,
    prev_hash: &[u8],
    payload: &Payload,
) -> Result<[u8; 32], smvs_crypto::CryptoError> {
    let mut buf = Vec::with_capacity(128);
    let mut var = |b: &[u8]| {
        buf.extend_from_slice(&(b.len() as u64).to_be_bytes());
        buf.extend_from_slice(b);
    };
    var(&id.0);
    // As the directories name them: both ends hash the same bytes whatever scope each
    // writes the other under.
    var(from.wire_str().as_bytes());
    var(to.wire_str().as_bytes());
    var(&time.to_be_bytes());
    var(prev_hash);
    match payload {
        Payload::Text(t) => {
            var(b"text");
            var(t.as_bytes());
        }
        Payload::Delete(ids) => {
            var(b"delete");
            for id in ids {
                var(&id.0);
            }
        }
        Payload::Expire(s) => {
            var(b"expire");
            var(&s.to_be_bytes());
        }
        Payload::Introduction(e) => {
            var(b"introduction");
            var(&e.record_bytes);
            var(&e.signature);
            var(&e.directory_key);
        }
    }
    smvs_crypto::blake2b_256(&buf)
}

/// A change that devices hear about. Carries ids and names, never message text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostEvent {
    MessageReceived {
        id: MessageId,
        peer: Username,
        time: i64,
    },
    /// The user wrote a message to `peer` on one of their devices (it is queued).
    MessageSent {
        id: MessageId,
        peer: Username,
        time: i64,
    },
    MessageStatus {
        id: MessageId,
        peer: Username,
        status: Status,
    },
    KeyChanged {
        peer: Username,
    },
    /// The directory served `peer`'s record with a lower serial than before (a rollback).
    DirectoryAlarm {
        peer: Username,
    },
    IntegrityProblem {
        id: MessageId,
        peer: Username,
        time: i64,
    },
    Deleted {
        id: Option<MessageId>,
        peer: Username,
    },
    /// The conversation with `peer` was read on one of the user's devices.
    Read {
        peer: Username,
    },
    /// A device was paired with this host (its name).
    DeviceLinked {
        name: String,
    },
    /// A device was revoked (its name); its links are cut.
    DeviceRevoked {
        name: String,
    },
    /// A call rings here.
    CallIncoming(CallInfo),
    /// A call rings at the peer (outgoing), became active, or ended.
    CallState(CallInfo),
}

impl HostEvent {
    /// The conversation the event is about, if any.
    pub fn peer(&self) -> Option<&Username> {
        match self {
            HostEvent::MessageReceived { peer, .. }
            | HostEvent::MessageSent { peer, .. }
            | HostEvent::MessageStatus { peer, .. }
            | HostEvent::KeyChanged { peer }
            | HostEvent::DirectoryAlarm { peer }
            | HostEvent::IntegrityProblem { peer, .. }
            | HostEvent::Deleted { peer, .. }
            | HostEvent::Read { peer } => Some(peer),
            HostEvent::CallIncoming(info) | HostEvent::CallState(info) => Some(&info.peer),
            HostEvent::DeviceLinked { .. } | HostEvent::DeviceRevoked { .. } => None,
        }
    }

    /// The message the event is about and the way it went, if the event is about one that
    /// exists: a received message (and its integrity or a status only an incoming message
    /// has), or one of ours.
    pub fn message_row(&self) -> Option<(&MessageId, Direction)> {
        match self {
            HostEvent::MessageReceived { id, .. } | HostEvent::IntegrityProblem { id, .. } => {
                Some((id, Direction::In))
            }
            HostEvent::MessageSent { id, .. } => Some((id, Direction::Out)),
            HostEvent::MessageStatus { id, status, .. } => Some((
                id,
                match status {
                    Status::Received | Status::Held => Direction::In,
                    Status::Queued | Status::Sent | Status::Delivered | Status::Failed => {
                        Direction::Out
                    }
                },
            )),
            _ => None,
        }
    }

    /// The message the event is about, if it is about one that exists (a deletion is not).
    pub fn message(&self) -> Option<&MessageId> {
        self.message_row().map(|(id, _)| id)
    }
}

pub fn now_ms() -> i64 {
    smvs_directory::clock::now_ms()
}
