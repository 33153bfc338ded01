//! Consent hellos (`smvs_media::wire::Hello`) and the consent state machine they drive (the
//! media crate's `consent` module, through its hidden `fuzzing::hellos`), with the clock
//! moving between packets. Script step: `[milliseconds][len][len bytes]`.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut packets = Vec::new();
    let mut rest = data;
    while let [ms, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (packet, tail) = tail.split_at(n);
        rest = tail;
        packets.push((Duration::from_millis(u64::from(*ms) * 50), packet));
    }
    smvs_media::fuzzing::hellos(packets);
});
