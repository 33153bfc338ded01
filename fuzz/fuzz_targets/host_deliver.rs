//! `HostLink.deliver` (`schema/host.capnp`) as the peer port reads it: the call's parameters as
//! one Cap'n Proto message, read with `smvs_schema::reader_options()`, then the peer port's own
//! `envelope_data`, the header checks the inbox makes before it opens anything, and the session
//! layer's `open` (and, when it opens, `decode_inner`) under a fixed contact key.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smvs_schema::host_capnp::host_link;
use smvs_schema::{MessageId, Username};
use smvsd::session::{self, Header, SessionKeys};

thread_local! {
    static KEYS: Option<SessionKeys> = SessionKeys::from_shared(&smvs_fuzz::session_key()).ok();
}

fuzz_target!(|data: &[u8]| {
    let Some(message) = smvs_fuzz::read_message(data) else {
        return;
    };
    let Ok(params) = message.get_root::<host_link::deliver_params::Reader<'_>>() else {
        return;
    };
    let Ok(envelope) = smvsd::api::peer::envelope_data(params) else {
        return;
    };
    let (Ok(sender), Ok(recipient), Some(id)) = (
        Username::parse(&envelope.sender),
        Username::parse(&envelope.recipient),
        MessageId::from_slice(&envelope.id),
    ) else {
        return;
    };
    let header = Header {
        id: &id,
        sender: &sender,
        recipient: &recipient,
    };
    KEYS.with(|keys| {
        let Some(keys) = keys else { return };
        if let Ok(content) = session::open(keys, &header, &envelope.sealed) {
            let _ = session::decode_inner(&content);
        }
    });
});
