//! The reader pump of an established link (`smvs-transport`): length-prefixed Noise transport
//! messages, decrypted and forwarded. A fuzzer cannot forge a Noise message, so the input is a
//! script: each step either appends raw bytes to the wire or seals a chunk with the real
//! sender of the link, so that valid frames, truncated frames, bad lengths and forgeries mix.
//!
//! Script step: `[op][len][len bytes]`; `op` bit 0 set: seal the bytes as one frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smvs_crypto::noise::Handshake;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = smvs_fuzz::runtime();
}

fuzz_target!(|data: &[u8]| {
    let (initiator, responder) = (
        smvs_fuzz::peer_transport_key(),
        smvs_fuzz::host_transport_key(),
    );
    let prologue = smvs_transport::HOST_PROLOGUE;
    let (Ok(mut a), Ok(mut b)) = (
        Handshake::initiator(&initiator, prologue),
        Handshake::responder(&responder, prologue),
    ) else {
        return;
    };
    while !(a.is_finished() && b.is_finished()) {
        let (from, to) = if a.is_my_turn() {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        let Ok(message) = from.write_message() else {
            return;
        };
        if to.read_message(&message).is_err() {
            return;
        }
    }
    let (Ok((_, mut sender, _)), Ok((_, _, receiver))) = (a.into_transport(), b.into_transport())
    else {
        return;
    };

    let mut wire = Vec::new();
    let mut rest = data;
    while let [op, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (chunk, tail) = tail.split_at(n);
        rest = tail;
        if op & 1 == 1 {
            let at = wire.len();
            wire.extend_from_slice(&[0, 0]);
            if sender.encrypt(chunk, &mut wire).is_err() {
                return;
            }
            let len = u16::try_from(wire.len() - at - 2).unwrap_or(u16::MAX);
            wire[at..at + 2].copy_from_slice(&len.to_be_bytes());
        } else {
            wire.extend_from_slice(chunk);
        }
    }
    RUNTIME.with(|rt| rt.block_on(smvs_transport::fuzzing::read_frames(receiver, &wire)));
});
