//! The local API (`schema/local.capnp`'s `Host`, on smvsd's Unix socket): the parameters of
//! every method that takes input, as one Cap'n Proto message each, read as smvsd's handlers
//! read them: Cap'n Proto accessors, then the same parsers (`smvsd::commands::parse_user`,
//! `MessageId`/`CallId::from_slice`, `smvsd::model::Media::parse`). The handlers read their
//! parameters inline before they ask the command façade, so this target repeats those few
//! accessor calls rather than restructure `smvsd/src/api/local.rs` around a hook.
//! First byte picks the method.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smvs_schema::local_capnp::{call_media, host};
use smvs_schema::{CallId, MessageId};
use smvsd::commands::parse_user;
use smvsd::model::{Media, SignalKind};

type Text<'a> = capnp::Result<capnp::text::Reader<'a>>;

fn user(t: Text<'_>) -> Option<()> {
    parse_user(t.ok()?.to_str().ok()?).ok().map(|_| ())
}

fn text(t: Text<'_>) -> Option<()> {
    t.ok()?.to_str().ok().map(|_| ())
}

fn media(m: capnp::Result<call_media::Reader<'_>>, kind: SignalKind) -> Option<()> {
    let m = m.ok()?;
    let address = m.get_address().ok()?.to_str().ok()?;
    Media::parse(
        m.get_public_key().ok()?,
        address,
        m.get_video(),
        m.get_audio(),
    )
    .and_then(|media| media.with_kem(kind, m.get_kem().unwrap_or_default()))
    .ok()
    .map(|_| ())
}

fn call_id(raw: capnp::Result<&[u8]>) -> Option<()> {
    let raw = raw.ok()?;
    (raw.is_empty() || CallId::from_slice(raw).is_some()).then_some(())
}

fn message_id(raw: capnp::Result<&[u8]>) -> Option<()> {
    MessageId::from_slice(raw.ok()?).map(|_| ())
}

macro_rules! params {
    ($message:expr, $kind:ident) => {
        match $message.get_root::<host::$kind::Reader<'_>>() {
            Ok(p) => p,
            Err(_) => return None,
        }
    };
}

fn read(method: u8, bytes: &[u8]) -> Option<()> {
    let message = smvs_fuzz::read_message(bytes)?;
    match method % 12 {
        0 => user(params!(message, register_params).get_username()),
        1 => {
            let p = params!(message, send_params);
            user(p.get_to())?;
            text(p.get_body())
        }
        2 => {
            let p = params!(message, history_params);
            let _ = p.get_limit();
            user(p.get_peer())
        }
        3 => user(params!(message, block_params).get_user()),
        4 => user(params!(message, unblock_params).get_user()),
        5 => {
            let p = params!(message, verify_params);
            let _ = p.get_accept_new_key();
            user(p.get_user())
        }
        6 => {
            let p = params!(message, delete_params);
            let raw = p.get_id().ok()?;
            if !raw.is_empty() {
                MessageId::from_slice(raw)?;
            }
            let _ = p.get_everywhere();
            user(p.get_peer())
        }
        7 => {
            let p = params!(message, expire_params);
            let _ = p.get_seconds();
            user(p.get_peer())
        }
        8 => {
            let p = params!(message, message_params);
            user(p.get_peer())?;
            message_id(p.get_id())
        }
        9 => {
            let p = params!(message, place_call_params);
            user(p.get_peer())?;
            media(p.get_media(), SignalKind::Offer)
        }
        10 => {
            let p = params!(message, answer_call_params);
            call_id(p.get_id())?;
            media(p.get_media(), SignalKind::Answer)
        }
        _ => call_id(params!(message, hangup_call_params).get_id()),
    }
}

fuzz_target!(|data: &[u8]| {
    if let Some((method, rest)) = data.split_first() {
        let _ = read(*method, rest);
    }
});
