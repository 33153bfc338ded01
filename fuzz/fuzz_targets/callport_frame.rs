//! The call port (`smvs_transport::callport`, `smvsd::relay`): every datagram a stranger, the
//! user's device or the peer host's relay can send it. The input is a script of datagrams,
//! each decoded (what decodes must encode back to a datagram that decodes to the same frame)
//! and handed to a relay table with one allocation, connected to a peer relay and bound to a
//! device (through the whole `BindRequest`, `Challenge`, `Bind` exchange), as the call port's
//! task hands it what it receives. Whatever the relay sends must be a frame, and go only to
//! the datagram's source (a STUN answer, a `Challenge` no longer than its request, `Bound`),
//! the bound device (`Data`) or the peer relay (`Forward`).
//!
//! Script step: `[from][len][len bytes]`; `from % 3`: 0 the device, 1 the peer relay, 2 a
//! stranger. Bit 2 of `from` set: the allocation id at bytes 1..9 of a relay frame is replaced
//! by the real one, and a `Bind` (41 bytes or more) is completed as the device would for its
//! source: the nonce the port would challenge that source with now, and its proof under the
//! real token; so that the fuzzer reaches the paths behind them (`from` 6 is the device so, 4
//! the peer relay, 5 a stranger).

#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use smvs_transport::callport::{
    bind_proof, Frame, ALLOC_ID_LEN, BIND_LEN, BIND_NONCE_LEN, BIND_PROOF_LEN, TAG_BIND,
};
use smvsd::relay::fuzzing::Table;
use smvsd::relay::RelayLimits;

fn addr(s: &str) -> SocketAddr {
    match s.parse() {
        Ok(a) => a,
        Err(e) => unreachable!("{s}: {e}"),
    }
}

/// Decodes `datagram`; a frame must survive encoding and decoding again.
fn check_codec(datagram: &[u8]) {
    if let Ok(frame) = Frame::decode(datagram) {
        let mut again = Vec::new();
        frame.encode(&mut again);
        assert_eq!(Frame::decode(&again).as_ref(), Ok(&frame));
    }
}

fuzz_target!(|data: &[u8]| {
    check_codec(data);

    let (local, device, peer, stranger) = (
        addr("192.0.2.1:7423"),
        addr("198.51.100.7:40000"),
        addr("203.0.113.9:7423"),
        addr("[2001:db8::66]:5555"),
    );
    let table = Table::new(
        local,
        RelayLimits {
            max_allocations: 2,
            ..RelayLimits::default()
        },
    );
    let (Ok(grant), Ok(_)) = (table.allocate(), table.allocate()) else {
        return;
    };
    if table
        .connect(grant.alloc, peer, [0x42; ALLOC_ID_LEN])
        .is_err()
    {
        return;
    }
    let mut out = Vec::new();
    let mut request = Vec::new();
    Frame::BindRequest { alloc: grant.alloc }.encode(&mut request);
    if table.handle(&request, device, &mut out) != Some(device) {
        return;
    }
    let Ok(Frame::Challenge { alloc, nonce }) = Frame::decode(&out) else {
        return;
    };
    let Some(proof) = bind_proof(&grant.token, &alloc, &nonce) else {
        return;
    };
    let mut bind = Vec::new();
    Frame::Bind {
        alloc,
        nonce,
        proof,
    }
    .encode(&mut bind);
    if table.handle(&bind, device, &mut out) != Some(device) {
        return;
    }

    let mut bound = device;
    let mut rest = data;
    while let [from, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (datagram, tail) = tail.split_at(n);
        rest = tail;
        let source = [device, peer, stranger][usize::from(*from % 3)];
        let mut datagram = datagram.to_vec();
        if from & 4 != 0 && datagram.len() > ALLOC_ID_LEN {
            datagram[1..=ALLOC_ID_LEN].copy_from_slice(&grant.alloc);
            if datagram[0] == TAG_BIND && datagram.len() >= BIND_LEN {
                if let Some(nonce) = table.challenge(&grant.alloc, source) {
                    if let Some(proof) = bind_proof(&grant.token, &grant.alloc, &nonce) {
                        let at = 1 + ALLOC_ID_LEN;
                        datagram[at..at + BIND_NONCE_LEN].copy_from_slice(&nonce);
                        let at = at + BIND_NONCE_LEN;
                        datagram[at..at + BIND_PROOF_LEN].copy_from_slice(&proof);
                    }
                }
            }
        }
        check_codec(&datagram);
        if let Some(to) = table.handle(&datagram, source, &mut out) {
            match Frame::decode(&out) {
                Ok(Frame::BindingResponse { mapped, .. }) => {
                    assert_eq!((to, mapped), (source, source));
                }
                Ok(Frame::Challenge { .. }) => {
                    assert_eq!(to, source);
                    assert!(
                        out.len() <= datagram.len(),
                        "a challenge longer than its request"
                    );
                }
                Ok(Frame::Bound { .. }) => {
                    assert_eq!(to, source);
                    bound = source;
                }
                Ok(Frame::Data { .. }) => assert_eq!(to, bound, "media to a non-device"),
                Ok(Frame::Forward { .. }) => assert_eq!(to, peer, "media to a non-peer"),
                other => panic!("the relay sent {other:?} to {to}"),
            }
        }
        if from & 8 != 0 {
            table.sweep();
        }
    }
});
