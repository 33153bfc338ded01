//! `HostLink.deliverBatch` (`schema/host.capnp`) as the peer port reads it: the call's
//! parameters as one Cap'n Proto message, read with `smvs_schema::reader_options()`, then the
//! peer port's own `batch_envelope_data` (the list, its length limit, and each envelope on its
//! own), and `smvs_fuzz::open_envelope` for every envelope that read.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smvs_schema::host_capnp::host_link;

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
        smvs_fuzz::open_envelope(&envelope);
    }
});
