//! The inner message of an envelope (`host.capnp`'s `InnerMessage`, call signals included):
//! what `smvsd::session::decode_inner` reads once an envelope has opened. Whatever decodes must
//! encode and decode again to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smvsd::session::{decode_inner, encode_inner};

fuzz_target!(|data: &[u8]| {
    let Ok(inner) = decode_inner(data) else {
        return;
    };
    let again = decode_inner(&encode_inner(&inner));
    assert_eq!(
        again.as_ref(),
        Ok(&inner),
        "an inner message does not survive a round trip"
    );
});
