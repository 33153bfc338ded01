//! Signed directory records (`common.capnp`'s `SignedRecord`) as a host checks them
//! (`smvs_directory::record::verify_record`), against the pinned directory key.
//!
//! First byte even: the rest is a `SignedRecord` message as it comes off the wire (a fuzzer
//! cannot forge the signature, so this covers the outer reading). Odd: the rest is the record
//! itself, signed here with the pinned key, so that the reading of a record that does verify
//! (what a compromised or buggy directory could send) is covered too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smvs_crypto::{SignContext, SigningKeyPair};
use smvs_directory::record::verify_record;
use smvs_schema::common_capnp::signed_record;
use smvs_schema::Username;

thread_local! {
    static DIRECTORY: SigningKeyPair = smvs_fuzz::directory_key();
}

fn check(signed: signed_record::Reader<'_>, directory: &SigningKeyPair) {
    let _ = verify_record(signed, &directory.public(), None);
    if let Ok(alice) = Username::parse("alice") {
        let _ = verify_record(signed, &directory.public(), Some(&alice));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    DIRECTORY.with(|directory| {
        if mode & 1 == 0 {
            let Some(message) = smvs_fuzz::read_message(rest) else {
                return;
            };
            if let Ok(signed) = message.get_root::<signed_record::Reader<'_>>() {
                check(signed, directory);
            }
        } else {
            let mut message = capnp::message::Builder::new_default();
            let mut signed = message.init_root::<signed_record::Builder<'_>>();
            signed.set_record(rest);
            signed.set_signature(
                directory
                    .sign(SignContext::DirectoryRecord, rest)
                    .as_bytes(),
            );
            check(signed.into_reader(), directory);
        }
    })
});
