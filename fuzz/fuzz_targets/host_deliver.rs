//! `HostLink.deliver` (`schema/host.capnp`) as the peer port reads it: the call's parameters as
//! one Cap'n Proto message, read with `smvs_schema::reader_options()`, then the peer port's own
//! `envelope_data`, and `smvs_fuzz::open_envelope` (the inbox's header checks, the session
//! layer's `open` and `decode_inner` under a fixed contact key).

#![no_main]

use libfuzzer_sys::fuzz_target;
use smvs_schema::host_capnp::host_link;

fuzz_target!(|data: &[u8]| {
    let Some(message) = smvs_fuzz::read_message(data) else {
        return;
    };
    let Ok(params) = message.get_root::<host_link::deliver_params::Reader<'_>>() else {
        return;
    };
    if let Ok(envelope) = smvsd::api::peer::envelope_data(params) {
        smvs_fuzz::open_envelope(&envelope);
    }
});
