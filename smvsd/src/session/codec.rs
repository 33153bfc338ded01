//! The inner message: what the session layer seals, written and read as Cap'n Proto
//! (`host.capnp`'s `InnerMessage`), call signals included.

use smvs_crypto::Zeroizing;
use smvs_directory::transparency::LogHead;
use smvs_schema::host_capnp::{call_signal, inner_message};
use smvs_schema::Username;

use super::{SessionError, MAX_TEXT_BYTES};
use crate::model::{CallId, CallSignal, Media, MessageId, Payload, SignalKind};

/// How many key log heads one message may carry, and a receiver reads.
pub const MAX_SHARED_HEADS: usize = 8;

/// The decoded inner message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inner {
    pub id: MessageId,
    pub from: Username,
    pub to: Username,
    pub time: i64,
    pub prev_hash: Vec<u8>,
    pub content: Content,
    /// The sender's host's last checked key log heads (see `trust::log_heads`).
    pub log_heads: Vec<LogHead>,
}

/// What an envelope carries: a message the host stores, or a call signal it never stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Message(Payload),
    Call(CallSignal),
}

pub fn encode_inner(inner: &Inner) -> Zeroizing<Vec<u8>> {
    let mut message = capnp::message::Builder::new_default();
    {
        let mut m = message.init_root::<inner_message::Builder<'_>>();
        m.set_id(&inner.id.0);
        m.set_from(inner.from.wire_str());
        m.set_to(inner.to.wire_str());
        m.set_time(inner.time);
        m.set_prev_hash(&inner.prev_hash);
        if !inner.log_heads.is_empty() {
            let heads = &inner.log_heads[..inner.log_heads.len().min(MAX_SHARED_HEADS)];
            let mut list = m.reborrow().init_log_heads(heads.len() as u32);
            for (i, head) in (0..).zip(heads) {
                head.write(list.reborrow().get(i));
            }
        }
        match &inner.content {
            Content::Message(Payload::Text(t)) => m.set_text(t),
            Content::Message(Payload::Delete(ids)) => {
                // A delete request fits one envelope (at most 128 KiB), so far fewer than 2^32
                // ids; saturating here cannot be reached.
                let mut list = m
                    .init_delete()
                    .init_ids(u32::try_from(ids.len()).unwrap_or(u32::MAX));
                for (i, id) in (0..).zip(ids.iter()) {
                    list.set(i, &id.0);
                }
            }
            Content::Message(Payload::Expire(s)) => m.set_expire(*s),
            Content::Message(Payload::Introduction(e)) => {
                let mut i = m.init_introduction();
                i.set_record(&e.record_bytes);
                i.set_signature(&e.signature);
                i.set_directory_key(&e.directory_key);
            }
            Content::Call(signal) => write_signal(signal, m.init_call()),
        }
    }
    Zeroizing::new(capnp::serialize::write_message_to_words(&message))
}

pub fn decode_inner(bytes: &[u8]) -> Result<Inner, SessionError> {
    let bad = |e: capnp::Error| SessionError::Content(e.to_string());
    let mut slice = bytes;
    let message =
        capnp::serialize::read_message_from_flat_slice(&mut slice, smvs_schema::reader_options())
            .map_err(bad)?;
    let m = message
        .get_root::<inner_message::Reader<'_>>()
        .map_err(bad)?;
    let name = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<Username, SessionError> {
        let t = t
            .map_err(bad)?
            .to_str()
            .map_err(|_| SessionError::Content("name is not UTF-8".into()))?;
        Username::parse(t).map_err(|e| SessionError::Content(e.to_string()))
    };
    let content = match m
        .which()
        .map_err(|_| SessionError::Content("unknown payload kind".into()))?
    {
        inner_message::Which::Text(t) => {
            let t = t
                .map_err(bad)?
                .to_string()
                .map_err(|_| SessionError::Content("text is not UTF-8".into()))?;
            if t.len() > MAX_TEXT_BYTES {
                return Err(SessionError::TooLarge(t.len()));
            }
            Content::Message(Payload::Text(t))
        }
        inner_message::Which::Delete(d) => {
            let ids = d.map_err(bad)?.get_ids().map_err(bad)?;
            let mut out = Vec::with_capacity(ids.len() as usize);
            for id in ids.iter() {
                out.push(
                    MessageId::from_slice(id.map_err(bad)?)
                        .ok_or_else(|| SessionError::Content("bad id".into()))?,
                );
            }
            Content::Message(Payload::Delete(out))
        }
        inner_message::Which::Expire(s) => Content::Message(Payload::Expire(s)),
        inner_message::Which::Introduction(i) => {
            let i = i.map_err(bad)?;
            Content::Message(Payload::Introduction(crate::model::Evidence {
                record_bytes: i.get_record().map_err(bad)?.to_vec(),
                signature: i.get_signature().map_err(bad)?.to_vec(),
                directory_key: i
                    .get_directory_key()
                    .map_err(bad)?
                    .try_into()
                    .map_err(|_| SessionError::Content("bad directory key".into()))?,
                issued_at: 0,
            }))
        }
        inner_message::Which::Call(c) => {
            Content::Call(read_signal(c.map_err(bad)?).map_err(SessionError::Content)?)
        }
    };
    // Heads are a hint to check, never a reason to refuse a message: one that does not read
    // is left out.
    let mut log_heads = Vec::new();
    if m.has_log_heads() {
        for head in m
            .get_log_heads()
            .map_err(bad)?
            .iter()
            .take(MAX_SHARED_HEADS)
        {
            if let Ok(head) = LogHead::read(head) {
                log_heads.push(head);
            }
        }
    }
    Ok(Inner {
        id: MessageId::from_slice(m.get_id().map_err(bad)?)
            .ok_or_else(|| SessionError::Content("bad id".into()))?,
        from: name(m.get_from())?,
        to: name(m.get_to())?,
        time: m.get_time(),
        prev_hash: m.get_prev_hash().map_err(bad)?.to_vec(),
        content,
        log_heads,
    })
}

fn write_signal(signal: &CallSignal, mut b: call_signal::Builder<'_>) {
    b.set_call_id(&signal.call_id.0);
    b.set_kind(match signal.kind {
        SignalKind::Offer => call_signal::Kind::Offer,
        SignalKind::Answer => call_signal::Kind::Answer,
        SignalKind::Decline => call_signal::Kind::Decline,
        SignalKind::Busy => call_signal::Kind::Busy,
        SignalKind::Hangup => call_signal::Kind::Hangup,
        SignalKind::NoAnswer => call_signal::Kind::NoAnswer,
    });
    if let Some(media) = &signal.media {
        let mut m = b.init_media();
        m.set_public_key(&media.public_key);
        let text = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        m.set_address(text(media.address));
        m.set_reflexive(text(media.reflexive));
        if let Some(relay) = &media.relay {
            m.set_relay(relay.address.to_string());
            m.set_relay_alloc(&relay.alloc);
        }
        m.set_relay_only(media.relay_only);
        m.set_kem(&media.kem);
        m.set_video(media.video);
        m.set_audio(media.audio);
    }
}

fn read_signal(r: call_signal::Reader<'_>) -> Result<CallSignal, String> {
    let bad = |e: capnp::Error| e.to_string();
    let call_id = CallId::from_slice(r.get_call_id().map_err(bad)?)
        .ok_or_else(|| "a call id is 16 bytes".to_string())?;
    let kind = match r
        .get_kind()
        .map_err(|_| "unknown call signal".to_string())?
    {
        call_signal::Kind::Offer => SignalKind::Offer,
        call_signal::Kind::Answer => SignalKind::Answer,
        call_signal::Kind::Decline => SignalKind::Decline,
        call_signal::Kind::Busy => SignalKind::Busy,
        call_signal::Kind::Hangup => SignalKind::Hangup,
        call_signal::Kind::NoAnswer => SignalKind::NoAnswer,
    };
    let media = if matches!(kind, SignalKind::Offer | SignalKind::Answer) {
        let m = r.get_media().map_err(bad)?;
        let text = |t: capnp::Result<capnp::text::Reader<'_>>, what: &str| {
            t.map_err(bad)?
                .to_str()
                .map(str::to_owned)
                .map_err(|_| format!("{what} is not UTF-8"))
        };
        let mut media = Media::parse(
            m.get_public_key().map_err(bad)?,
            &text(m.get_address(), "media address")?,
            m.get_video(),
            m.get_audio(),
        )?
        .with_reflexive(&text(m.get_reflexive(), "reflexive media address")?)?
        .with_relay(
            &text(m.get_relay(), "relay address")?,
            m.get_relay_alloc().map_err(bad)?,
        )?
        .with_kem(kind, m.get_kem().map_err(bad)?)?;
        media.relay_only = m.get_relay_only();
        Some(media.reachable()?)
    } else {
        None
    };
    Ok(CallSignal {
        call_id,
        kind,
        media,
    })
}
