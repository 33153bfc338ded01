//! What an Opus packet says about in-band FEC, read from its first bits (RFC 6716): whether it
//! carries a low-bitrate copy of the packet before it (SILK's LBRR frame), from which a lost
//! packet is rebuilt. The statistics count a lost audio packet as rebuilt only when the packet
//! after it carries that copy.

/// The range decoder of RFC 6716 section 4.1, as far as reading equiprobable bits.
struct RangeDecoder<'a> {
    buf: &'a [u8],
    pos: usize,
    rem: u32,
    rng: u32,
    val: u32,
}

const SYM_BITS: u32 = 8;
const CODE_EXTRA: u32 = 7;
const CODE_TOP: u32 = 1 << 31;
const CODE_BOT: u32 = 1 << 23;

impl<'a> RangeDecoder<'a> {
    fn new(buf: &'a [u8]) -> RangeDecoder<'a> {
        let mut d = RangeDecoder {
            buf,
            pos: 0,
            rem: 0,
            rng: 1 << CODE_EXTRA,
            val: 0,
        };
        d.rem = d.byte();
        d.val = d.rng - 1 - (d.rem >> (SYM_BITS - CODE_EXTRA));
        d.normalize();
        d
    }

    /// The next byte, zeros past the end (as the reference decoder reads).
    fn byte(&mut self) -> u32 {
        let b = self.buf.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        u32::from(b)
    }

    fn normalize(&mut self) {
        while self.rng <= CODE_BOT {
            self.rng <<= SYM_BITS;
            let sym = self.rem;
            self.rem = self.byte();
            let sym = ((sym << SYM_BITS) | self.rem) >> (SYM_BITS - CODE_EXTRA);
            self.val = ((self.val << SYM_BITS) + (0xff & !sym)) & (CODE_TOP - 1);
        }
    }

    /// A bit coded with probability 1/2 (`ec_dec_bit_logp(dec, 1)`).
    fn bit(&mut self) -> bool {
        let s = self.rng >> 1;
        let one = self.val < s;
        if !one {
            self.val -= s;
        }
        self.rng = if one { s } else { self.rng - s };
        self.normalize();
        one
    }
}

/// Whether the Opus packet `packet` (TOC byte first) carries an LBRR frame, i.e. in-band FEC
/// for the packet before it. Only mono SILK or hybrid packets of one 10- or 20-ms frame are
/// read (what SMVS sends); anything else counts as not carrying it.
pub(crate) fn carries_fec(packet: &[u8]) -> bool {
    let Some(&toc) = packet.first() else {
        return false;
    };
    let config = toc >> 3;
    let stereo = toc & 0x04 != 0;
    let one_frame = toc & 0x03 == 0;
    // SILK-only configs 0-11 (frame size by config % 4: 10, 20, 40, 60 ms), hybrid 12-15.
    let short = match config {
        0..=11 => config % 4 < 2,
        12..=15 => true,
        _ => false,
    };
    if stereo || !one_frame || !short || packet.len() < 2 {
        return false;
    }
    // A mono SILK frame of 10 or 20 ms begins with its voice-activity flag, then the LBRR flag.
    let mut d = RangeDecoder::new(&packet[1..]);
    let _voice = d.bit();
    d.bit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use gstreamer as gst;
    use gstreamer::prelude::*;
    use std::sync::{Arc, Mutex};

    /// Opus packets from GStreamer's opusenc, as the call pipeline makes them.
    fn encode(fec: bool) -> Vec<Vec<u8>> {
        encode_planning_for(if fec {
            crate::pipeline::AUDIO_FEC_MIN_PERCENT
        } else {
            0
        })
    }

    /// As [`encode`], with FEC planned for `loss_percent` (none at 0).
    fn encode_planning_for(loss_percent: i32) -> Vec<Vec<u8>> {
        let fec = loss_percent > 0;
        crate::plugins::init().unwrap();
        let pipeline = gst::parse::launch(&format!(
            "audiotestsrc num-buffers=100 wave=sine freq=440 samplesperbuffer=960 \
             ! audioconvert ! audioresample ! audio/x-raw,rate=48000,channels=1 \
             ! opusenc bitrate=32000 bitrate-type=cbr frame-size=20 audio-type=voice dtx=false \
               inband-fec={fec} packet-loss-percentage={} \
             ! fakesink name=out signal-handoffs=true sync=false",
            loss_percent
        ))
        .unwrap()
        .downcast::<gst::Pipeline>()
        .unwrap();
        let packets = Arc::new(Mutex::new(Vec::new()));
        {
            let packets = Arc::clone(&packets);
            pipeline
                .by_name("out")
                .unwrap()
                .connect("handoff", false, move |args| {
                    let b = args[1].get::<gst::Buffer>().unwrap();
                    let map = b.map_readable().unwrap();
                    packets.lock().unwrap().push(map.to_vec());
                    None
                });
        }
        pipeline.set_state(gst::State::Playing).unwrap();
        let bus = pipeline.bus().unwrap();
        let _ = bus.timed_pop_filtered(
            gst::ClockTime::from_seconds(10),
            &[gst::MessageType::Eos, gst::MessageType::Error],
        );
        let _ = pipeline.set_state(gst::State::Null);
        let out = packets.lock().unwrap().clone();
        out
    }

    #[test]
    fn fec_is_seen_in_packets_that_carry_it_and_only_those() {
        let with = encode(true);
        let without = encode(false);
        let count = |p: &[Vec<u8>]| p.iter().filter(|p| carries_fec(p)).count();
        assert!(with.len() >= 90 && without.len() >= 90);
        // The first packet has nothing before it to copy.
        assert!(
            count(&with) >= with.len() * 9 / 10,
            "{} of {}",
            count(&with),
            with.len()
        );
        assert_eq!(count(&without), 0);
        // Nothing to read, or not a mono SILK frame.
        assert!(!carries_fec(&[]));
        assert!(!carries_fec(&[0xfc, 0xff, 0xff]));
    }

    /// Why the adapter never plans for less than `AUDIO_FEC_MIN_PERCENT`: told of a little
    /// loss, the encoder codes this tone as CELT and the "FEC" is in no packet.
    #[test]
    fn a_little_planned_loss_gives_no_fec_at_all() {
        let low = encode_planning_for(5);
        assert_eq!(low.iter().filter(|p| carries_fec(p)).count(), 0);
    }
}
