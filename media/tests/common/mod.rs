//! Shared helpers of the media integration tests: key pairs for both roles, sockets on
//! 127.0.0.1, and a two-endpoint call.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use smvs_crypto::{AgreementKeyPair, KemSharedSecret, XWingCiphertext, XWingKeyPair};
use smvs_media::{
    derive_media_keys, CallStats, KeyInputs, MediaKeys, MediaOptions, MediaSession, Role,
};

/// One call's key exchange: both X25519 keys, the caller's X-Wing key and the callee's
/// encapsulation to it.
pub struct CallKeys {
    pub caller: AgreementKeyPair,
    pub callee: AgreementKeyPair,
    caller_kem: XWingKeyPair,
    ciphertext: XWingCiphertext,
    callee_kem_secret: KemSharedSecret,
}

impl CallKeys {
    pub fn new() -> Self {
        let caller_kem = XWingKeyPair::generate().unwrap();
        let (ciphertext, callee_kem_secret) = caller_kem.public().encapsulate().unwrap();
        CallKeys {
            caller: AgreementKeyPair::generate().unwrap(),
            callee: AgreementKeyPair::generate().unwrap(),
            caller_kem,
            ciphertext,
            callee_kem_secret,
        }
    }

    pub fn derive(&self, role: Role, call_id: &[u8]) -> MediaKeys {
        let (a, b) = (self.caller.public(), self.callee.public());
        let inputs = KeyInputs {
            call_id,
            caller_identity: b"alice-identity-key",
            callee_identity: b"bob-identity-key",
            caller_public: &a,
            callee_public: &b,
            caller_kem_public: self.caller_kem.public().as_bytes(),
            callee_kem_ciphertext: self.ciphertext.as_bytes(),
        };
        match role {
            Role::Caller => {
                let kem = self.caller_kem.decapsulate(&self.ciphertext).unwrap();
                derive_media_keys(&self.caller, &kem, role, &inputs).unwrap()
            }
            Role::Callee => {
                derive_media_keys(&self.callee, &self.callee_kem_secret, role, &inputs).unwrap()
            }
        }
    }
}

pub fn socket() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

/// Options for tests: test sources, null sinks, a small picture to keep two cores unhurried.
pub fn small() -> MediaOptions {
    MediaOptions {
        width: 320,
        height: 240,
        video_kbps: 400,
        ..MediaOptions::default()
    }
}

/// Runs a direct call between two sessions for `secs`; returns (caller, callee) final stats.
/// The caller is stopped first.
pub fn call(
    a_opts: MediaOptions,
    b_opts: MediaOptions,
    b_call_id: &[u8],
    secs: f64,
) -> (CallStats, CallStats) {
    let keys = CallKeys::new();
    let (sa, aa) = socket();
    let (sb, ab) = socket();
    let a = MediaSession::start(sa, ab, keys.derive(Role::Caller, b"call-1"), a_opts).unwrap();
    let b = MediaSession::start(sb, aa, keys.derive(Role::Callee, b_call_id), b_opts).unwrap();
    std::thread::sleep(Duration::from_secs_f64(secs));
    assert_eq!(a.error(), None);
    assert_eq!(b.error(), None);
    let sa = a.stop();
    let sb = b.stop();
    (sa, sb)
}
