//! The keyguard's requests that take input (`keyguard.capnp`: `handshakeSecret`, `openLoginToken`,
//! `deriveSharedKey`, `certifyTransport`, `signRegistration`), read and answered by the
//! keyguard's own code with a fixed identity. First byte modulo 5 picks the method; the rest is
//! its parameters as one message.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smvs_crypto::IdentityKeys;
use smvs_keyguard::fuzzing::{answer, Method};

thread_local! {
    static IDENTITY: IdentityKeys = smvs_fuzz::identity();
}

fuzz_target!(|data: &[u8]| {
    let Some((method, rest)) = data.split_first() else {
        return;
    };
    let method = match method % 5 {
        0 => Method::HandshakeSecret,
        1 => Method::OpenLoginToken,
        2 => Method::DeriveSharedKey,
        3 => Method::CertifyTransport,
        _ => Method::SignRegistration,
    };
    IDENTITY.with(|id| {
        let _ = answer(id, method, rest);
    });
});
