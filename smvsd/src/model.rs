//! The host's vocabulary: message ids, statuses, and the plain data that actors pass around.

use std::fmt;

use smvs_schema::Username;

/// A message id: 16 random bytes chosen by the sender, unique per sender.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    pub fn random() -> Self {
        MessageId(smvs_crypto::random_array())
    }

    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(MessageId)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", self.to_hex())
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Where a message is in its life. The numbers are stored on disk and match `local.capnp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Queued = 0,
    Sent = 1,
    Delivered = 2,
    Received = 3,
    Failed = 4,
    Held = 5,
}

impl Status {
    pub fn from_i64(v: i64) -> Status {
        match v {
            0 => Status::Queued,
            1 => Status::Sent,
            2 => Status::Delivered,
            3 => Status::Received,
            5 => Status::Held,
            _ => Status::Failed,
        }
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

/// What the conversation's hash chain says about an incoming message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    Ok = 0,
    Gap = 1,
    OutOfOrder = 2,
    Unchecked = 3,
}

impl Integrity {
    pub fn from_i64(v: i64) -> Integrity {
        match v {
            0 => Integrity::Ok,
            1 => Integrity::Gap,
            2 => Integrity::OutOfOrder,
            _ => Integrity::Unchecked,
        }
    }
}

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
    pub integrity: Integrity,
    pub direction: Direction,
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
) -> [u8; 32] {
    let mut buf = Vec::with_capacity(128);
    let mut var = |b: &[u8]| {
        buf.extend_from_slice(&(b.len() as u64).to_be_bytes());
        buf.extend_from_slice(b);
    };
    var(&id.0);
    var(from.as_str().as_bytes());
    var(to.as_str().as_bytes());
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
    MessageStatus {
        id: MessageId,
        peer: Username,
        status: Status,
    },
    KeyChanged {
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
    /// A call rings here.
    CallIncoming(crate::calls::CallInfo),
    /// A call rings at the peer (outgoing), became active, or ended.
    CallState(crate::calls::CallInfo),
}

pub fn now_ms() -> i64 {
    smvs_directory::clock::now_ms()
}
