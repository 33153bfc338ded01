//! The glass-to-glass latency probe.
//!
//! The sender stamps every raw I420 frame, just before the encoder, with the wall-clock time
//! (milliseconds since the Unix epoch, low 32 bits, from `SystemTime`) as a row of black and
//! white luma blocks along the top of the picture: four marker blocks `1010`, then the 32 bits,
//! most significant first. Blocks are 16x16 pixels (smaller, down to 4x4, when the picture is
//! narrower than 36 blocks). The receiver averages the centre of each block (threshold 128),
//! checks the marker, and subtracts the stamp from its own wall clock, twice:
//!
//! * when the frame is presented (`glass_to_glass_ms`): a null video sink then syncs to the
//!   pipeline clock as a display does, holding each frame until its running time plus the
//!   pipeline latency (jitter buffer, 50 ms, and the sink's processing deadline, 20 ms), and
//!   the stamp is read when it renders the frame; for a window sink, whose rendering cannot be
//!   observed, the time recorded is its clock deadline for the frame (the window's own display
//!   delay is not included);
//! * when the frame leaves the decoder (`decode_latency_ms`).
//!
//! The differences are latencies from the sender's capture only when both endpoints read the
//! same clock, i.e. run on the same machine (as the tests and the benchmark do). Between
//! machines they also contain the clocks' offset.
//!
//! Frames are read only when their memory has GStreamer's default I420 layout (no padding),
//! which is what `videotestsrc` produces and what `vp8dec` hands on; any other layout is
//! skipped rather than misread.

use std::time::{SystemTime, UNIX_EPOCH};

const MARKER: [bool; 4] = [true, false, true, false];
const BLOCKS: u32 = 4 + 32;
const MAX_BLOCK: u32 = 16;
const MIN_BLOCK: u32 = 4;
/// Latencies at or above this are not plausible and are not recorded.
pub const MAX_LATENCY_MS: u32 = 10_000;

/// Wall-clock milliseconds since the epoch, low 32 bits.
pub fn now_ms32() -> u32 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    (ms & 0xffff_ffff) as u32
}

fn round_up(v: u32, to: u32) -> u32 {
    v.div_ceil(to) * to
}

/// The luma stride of GStreamer's default I420 layout, and whether `size` matches that layout.
fn default_i420_stride(width: u32, height: u32, size: usize) -> Option<usize> {
    let y_stride = round_up(width, 4);
    let c_stride = round_up(round_up(width, 2) / 2, 4);
    let c_height = round_up(height, 2) / 2;
    let expected =
        u64::from(y_stride) * u64::from(height) + 2 * u64::from(c_stride) * u64::from(c_height);
    (expected == size as u64).then_some(y_stride as usize)
}

fn block_size(width: u32, height: u32) -> Option<u32> {
    let b = (width / BLOCKS).min(MAX_BLOCK);
    (b >= MIN_BLOCK && height >= b).then_some(b)
}

/// Writes `stamp` into the top row of an I420 frame. Returns false (frame untouched) when the
/// frame is too small or not in the default layout.
pub fn stamp_i420(data: &mut [u8], width: u32, height: u32, stamp: u32) -> bool {
    let (Some(stride), Some(b)) = (
        default_i420_stride(width, height, data.len()),
        block_size(width, height),
    ) else {
        return false;
    };
    let bits = MARKER
        .iter()
        .copied()
        .chain((0..32).rev().map(|i| (stamp >> i) & 1 == 1));
    for (i, bit) in bits.enumerate() {
        let value = if bit { 255 } else { 0 };
        let x0 = i * b as usize;
        for y in 0..b as usize {
            let start = y * stride + x0;
            if let Some(row) = data.get_mut(start..start + b as usize) {
                row.fill(value);
            }
        }
    }
    true
}

/// Reads a stamp written by [`stamp_i420`]; None when the frame carries none.
pub fn read_i420(data: &[u8], width: u32, height: u32) -> Option<u32> {
    let stride = default_i420_stride(width, height, data.len())?;
    let b = block_size(width, height)? as usize;
    let (lo, hi) = (b / 4, b - b / 4);
    let mut bits = (0..BLOCKS as usize).map(|i| {
        let mut sum = 0u32;
        let mut n = 0u32;
        for y in lo..hi {
            for x in i * b + lo..i * b + hi {
                sum += u32::from(*data.get(y * stride + x)?);
                n += 1;
            }
        }
        Some(n > 0 && sum / n.max(1) >= 128)
    });
    for expected in MARKER {
        if bits.next()?? != expected {
            return None;
        }
    }
    let mut stamp = 0u32;
    for bit in bits {
        stamp = (stamp << 1) | u32::from(bit?);
    }
    Some(stamp)
}

/// Latency of a frame stamped `stamp` seen now; None when implausible (clock skew, garbage).
pub fn latency_ms(stamp: u32, now: u32) -> Option<u32> {
    let d = now.wrapping_sub(stamp);
    (d < MAX_LATENCY_MS).then_some(d)
}

/// A latency summary in milliseconds (of `glass_to_glass_ms` or `decode_latency_ms`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct GlassToGlass {
    pub samples: u64,
    pub p50: u32,
    pub p95: u32,
    pub max: u32,
}

/// A 1 ms-resolution histogram of latencies below [`MAX_LATENCY_MS`]: bounded memory however
/// long the call.
#[derive(Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    samples: u64,
    max: u32,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; MAX_LATENCY_MS as usize],
            samples: 0,
            max: 0,
        }
    }
}

impl Histogram {
    pub fn record(&mut self, ms: u32) {
        if let Some(c) = self.counts.get_mut(ms as usize) {
            *c += 1;
            self.samples += 1;
            self.max = self.max.max(ms);
        }
    }

    fn percentile(&self, p: u64) -> u32 {
        // The smallest value with at least p% of the samples at or below it.
        let rank = (self.samples * p).div_ceil(100).max(1);
        let mut seen = 0;
        for (ms, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return ms as u32;
            }
        }
        self.max
    }

    pub fn summary(&self) -> Option<GlassToGlass> {
        (self.samples > 0).then(|| GlassToGlass {
            samples: self.samples,
            p50: self.percentile(50),
            p95: self.percentile(95),
            max: self.max,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn frame(w: u32, h: u32) -> Vec<u8> {
        let y = round_up(w, 4) * h;
        let c = round_up(round_up(w, 2) / 2, 4) * (round_up(h, 2) / 2);
        vec![0x80; (y + 2 * c) as usize]
    }

    #[test]
    fn stamp_round_trips() {
        for (w, h) in [(640, 480), (1280, 720), (320, 240), (176, 144)] {
            let mut f = frame(w, h);
            assert_eq!(read_i420(&f, w, h), None, "grey frame has no stamp");
            for stamp in [0, 1, 0xdead_beef, u32::MAX] {
                assert!(stamp_i420(&mut f, w, h, stamp));
                assert_eq!(read_i420(&f, w, h), Some(stamp), "{w}x{h}");
            }
        }
    }

    #[test]
    fn survives_mild_noise_and_refuses_odd_layouts() {
        let (w, h) = (640, 480);
        let mut f = frame(w, h);
        stamp_i420(&mut f, w, h, 123_456_789);
        for (i, p) in f.iter_mut().enumerate().take(640 * 16) {
            *p = if *p > 128 {
                p.saturating_sub((i % 40) as u8)
            } else {
                p.saturating_add((i % 40) as u8)
            };
        }
        assert_eq!(read_i420(&f, w, h), Some(123_456_789));
        let mut padded = frame(w, h);
        padded.push(0);
        assert!(!stamp_i420(&mut padded, w, h, 1));
        assert_eq!(read_i420(&padded, w, h), None);
        let mut tiny = frame(64, 48);
        assert!(!stamp_i420(&mut tiny, 64, 48, 1));
    }

    #[test]
    fn latency_and_histogram() {
        assert_eq!(latency_ms(100, 130), Some(30));
        assert_eq!(latency_ms(u32::MAX - 5, 10), Some(16));
        assert_eq!(latency_ms(130, 100), None);
        let mut h = Histogram::default();
        assert!(h.summary().is_none());
        for ms in 1..=100 {
            h.record(ms);
        }
        h.record(MAX_LATENCY_MS); // ignored
        let s = h.summary().unwrap();
        assert_eq!((s.samples, s.p50, s.p95, s.max), (100, 50, 95, 100));
    }
}
