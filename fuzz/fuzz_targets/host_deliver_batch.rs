//! `HostLink.deliverBatch` (`schema/host.capnp`) as the peer port reads it: the call's
//! parameters as one Cap'n Proto message, read with `smvs_schema::reader_options()`, then the
//! peer port's own `batch_envelope_data` (the list, its length limit, and each envelope on its
//! own), and the session layer's `open` of each envelope under a fixed contact key.

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
    let Ok(params) = message.get_root::<host_link::deliver_batch_params::Reader<'_>>() else {
        return;
    };
    let Ok(envelopes) = smvsd::api::peer::batch_envelope_data(params) else {
        return;
    };
    assert!(envelopes.len() <= smvsd::api::peer::MAX_BATCH as usize);
    for envelope in envelopes.into_iter().flatten() {
        let (Ok(sender), Ok(recipient), Some(id)) = (
            Username::parse(&envelope.sender),
            Username::parse(&envelope.recipient),
            MessageId::from_slice(&envelope.id),
        ) else {
            continue;
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
    }
});
