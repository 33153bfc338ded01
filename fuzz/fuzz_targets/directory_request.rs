//! The directory's requests that carry keys and signatures, as its handlers read them: the
//! parameters of `Directory.register` (`directory.capnp`'s `RegisterRequest`, through the
//! server's own `check_registration`) and of `Session.rotateKeys` (`RotateRequest`, its keys
//! checked as `rotateKeys` does before it looks at the store). First byte even: register.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smvs_crypto::SigningPublicKey;
use smvs_directory::fuzzing::{check_registration, check_rotation_keys};
use smvs_schema::directory_capnp::{directory, session};
use smvs_schema::Username;

thread_local! {
    static DIRECTORY: SigningPublicKey = smvs_fuzz::directory_key().public();
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let Some(message) = smvs_fuzz::read_message(rest) else {
        return;
    };
    if mode & 1 == 0 {
        let Ok(params) = message.get_root::<directory::register_params::Reader<'_>>() else {
            return;
        };
        let Ok(request) = params.get_request() else {
            return;
        };
        DIRECTORY.with(|key| {
            let _ = check_registration(key, request);
        });
    } else {
        let Ok(params) = message.get_root::<session::rotate_keys_params::Reader<'_>>() else {
            return;
        };
        let Ok(request) = params.get_request() else {
            return;
        };
        let Ok(alice) = Username::parse("alice") else {
            return;
        };
        let _ = check_rotation_keys(&alice, request);
    }
});
