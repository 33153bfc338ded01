//! The call port (`smvs_transport::callport`, `smvsd::relay`): every datagram a stranger, the
//! user's device or the peer host's relay can send it. The input is a script of datagrams,
//! each decoded (what decodes must encode back to a datagram that decodes to the same frame)
//! and handed to a relay table with one allocation, connected to a peer relay and bound to a
//! device, as the call port's task hands it what it receives. Whatever the relay sends must be
//! a frame, and go only to the datagram's source (a STUN answer, `Bound`), the bound device
//! (`Data`) or the peer relay (`Forward`).
//!
//! Script step: `[from][len][len bytes]`; `from % 3`: 0 the device, 1 the peer relay, 2 a
//! stranger. Bit 2 of `from` set: the allocation id at bytes 1..9 of a relay frame is replaced
//! by the real one, and a `Bind`'s token by the real token, so that the fuzzer reaches the
//! paths behind them.

#![no_main]

use std::net::SocketAddr;

use libfuzzer_sys::fuzz_target;
use smvs_transport::callport::{Frame, ALLOC_ID_LEN, RELAY_TOKEN_LEN, TAG_BIND};
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
    let mut bind = vec![TAG_BIND];
    bind.extend_from_slice(&grant.alloc);
    bind.extend_from_slice(&grant.token);
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
            if datagram[0] == TAG_BIND && datagram.len() >= 1 + ALLOC_ID_LEN + RELAY_TOKEN_LEN {
                datagram[1 + ALLOC_ID_LEN..1 + ALLOC_ID_LEN + RELAY_TOKEN_LEN]
                    .copy_from_slice(&grant.token);
            }
        }
        check_codec(&datagram);
        if let Some(to) = table.handle(&datagram, source, &mut out) {
            match Frame::decode(&out) {
                Ok(Frame::BindingResponse { mapped, .. }) => {
                    assert_eq!((to, mapped), (source, source));
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
