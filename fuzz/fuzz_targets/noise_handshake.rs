//! The responder's side of the Noise XX handshake (`smvs-transport`), fed what a connecting
//! peer sends: length-prefixed frames, each one handshake message. This is the first thing the
//! peer port and the directory do with a stranger's bytes.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smvs_crypto::AgreementKeyPair;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = smvs_fuzz::runtime();
    static KEY: AgreementKeyPair = smvs_fuzz::host_transport_key();
}

fuzz_target!(|data: &[u8]| {
    RUNTIME.with(|rt| {
        KEY.with(|key| {
            let _ = rt.block_on(smvs_transport::fuzzing::respond(
                key,
                smvs_transport::HOST_PROLOGUE,
                data,
            ));
        })
    })
});
