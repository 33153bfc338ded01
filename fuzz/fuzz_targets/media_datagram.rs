//! Media datagrams (`smvs_media::wire`), as the receive thread handles each one: the framing
//! read before authentication (`sequence`), the replay window, `open` under the call's key
//! (and in clear, the unencrypted baseline), and a hello's `decode`.
//!
//! First byte odd: the rest, after a stream byte, is sealed here under the fixed key so that
//! authenticated packets of every stream (hellos included) reach the code behind `open`.
//! The replay window must refuse what it has accepted.

#![no_main]

use libfuzzer_sys::fuzz_target;
use smvs_crypto::AeadKey;
use smvs_media::wire::{self, Hello, Replay, ReplayWindow, Stream};

thread_local! {
    static KEY: AeadKey = smvs_fuzz::media_key();
}

fn receive(key: &AeadKey, window: &mut ReplayWindow, datagram: &[u8]) {
    let Ok(seq) = wire::sequence(datagram) else {
        return;
    };
    if window.check(seq).is_err() {
        return;
    }
    if let Ok(opened) = wire::open(None, datagram) {
        if opened.stream == Stream::Hello {
            let _ = Hello::decode(&opened.packet);
        }
    }
    let Ok(opened) = wire::open(Some(key), datagram) else {
        return;
    };
    assert_eq!(opened.seq, seq);
    window.accept(seq);
    assert_eq!(
        window.check(seq),
        Err(Replay::Duplicate),
        "an accepted packet replays"
    );
    if opened.stream == Stream::Hello {
        let _ = Hello::decode(&opened.packet);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    KEY.with(|key| {
        let mut window = ReplayWindow::new();
        if mode & 1 == 0 {
            receive(key, &mut window, rest);
            return;
        }
        // A few sealed datagrams: [seq low byte][stream][len][packet].
        let mut rest = rest;
        let mut seq: u64 = u64::from(*mode >> 1) << 32;
        while let [step, stream, len, tail @ ..] = rest {
            let n = usize::from(*len).min(tail.len());
            let (packet, tail) = tail.split_at(n);
            rest = tail;
            seq = seq.wrapping_add(u64::from(*step)).wrapping_sub(8);
            let stream = Stream::ALL[usize::from(*stream) % Stream::ALL.len()];
            if let Ok(datagram) = wire::seal(Some(key), seq, stream, packet) {
                receive(key, &mut window, &datagram);
            }
        }
    })
});
