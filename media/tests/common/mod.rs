//! Shared helpers of the media integration tests: key pairs for both roles, sockets on
//! 127.0.0.1, and a two-endpoint call.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use smvs_crypto::AgreementKeyPair;
use smvs_media::{
    derive_media_keys, CallStats, KeyInputs, MediaKeys, MediaOptions, MediaSession, Role,
};

pub struct CallKeys {
    pub caller: AgreementKeyPair,
    pub callee: AgreementKeyPair,
}

impl CallKeys {
    pub fn new() -> Self {
        CallKeys {
            caller: AgreementKeyPair::generate().unwrap(),
            callee: AgreementKeyPair::generate().unwrap(),
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
        };
        let ours = match role {
            Role::Caller => &self.caller,
            Role::Callee => &self.callee,
        };
        derive_media_keys(ours, role, &inputs).unwrap()
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
