//! The backup file: a tar archive of a host's state, sealed under a passphrase as it is
//! written (smvs_crypto's Argon2id + libsodium secretstream), so no plaintext copy ever
//! touches the disk.
//!
//! ```text
//!   "SMVSBAK1"  ops (u64 BE)  mem (u64 BE)  salt (16)  stream header (24)
//!   then chunks: length (u32 BE) ‖ sealed chunk, the last one tagged FINAL
//! ```
//!
//! Inside: `smvsd.toml` (the host's config), `host/…` (database, transport key) and
//! `keyguard/…` (the identity's secret keys).

use std::io::{self, Read, Write};

use anyhow::{bail, Context};
use smvs_crypto::{
    PassphraseCost, PassphraseKey, StreamOpener, StreamSealer, PASSPHRASE_SALT_LEN,
    STREAM_CHUNK_OVERHEAD, STREAM_HEADER_LEN,
};

const MAGIC: &[u8; 8] = b"SMVSBAK1";
/// Plaintext per chunk.
const CHUNK: usize = 64 * 1024;

/// Reads the passphrase: the first line of `path`, or of standard input for "-".
pub fn read_passphrase(path: &std::path::Path) -> anyhow::Result<smvs_crypto::Zeroizing<String>> {
    let mut text = smvs_crypto::Zeroizing::new(String::new());
    if path.as_os_str() == "-" {
        io::stdin().read_line(&mut text)?;
    } else {
        let mut file = std::fs::File::open(path)
            .with_context(|| format!("cannot read the passphrase file {}", path.display()))?;
        file.read_to_string(&mut text)?;
    }
    let line = smvs_crypto::Zeroizing::new(text.lines().next().unwrap_or("").to_owned());
    if line.chars().count() < 12 {
        bail!("the passphrase must be at least 12 characters");
    }
    Ok(line)
}

/// A writer that seals everything written to it; [`SealingWriter::finish`] seals the last
/// chunk, without which the file does not open.
pub struct SealingWriter<W: Write> {
    out: W,
    sealer: StreamSealer,
    buffer: smvs_crypto::Zeroizing<Vec<u8>>,
}

impl<W: Write> SealingWriter<W> {
    pub fn new(mut out: W, passphrase: &str, cost: PassphraseCost) -> anyhow::Result<Self> {
        let salt: [u8; PASSPHRASE_SALT_LEN] = smvs_crypto::random_array();
        let key = PassphraseKey::derive(passphrase.as_bytes(), &salt, cost)?;
        let (sealer, header) = StreamSealer::new(&key)?;
        out.write_all(MAGIC)?;
        out.write_all(&cost.ops.to_be_bytes())?;
        out.write_all(&cost.mem.to_be_bytes())?;
        out.write_all(&salt)?;
        out.write_all(&header)?;
        Ok(SealingWriter {
            out,
            sealer,
            buffer: smvs_crypto::Zeroizing::new(Vec::with_capacity(CHUNK)),
        })
    }

    fn emit(&mut self, last: bool) -> io::Result<()> {
        let sealed = self
            .sealer
            .push(&self.buffer, last)
            .map_err(io::Error::other)?;
        self.buffer.clear();
        let len = u32::try_from(sealed.len()).map_err(io::Error::other)?;
        self.out.write_all(&len.to_be_bytes())?;
        self.out.write_all(&sealed)
    }

    /// Seals what is left as the last chunk and hands back the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.emit(true)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for SealingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buffer.len();
        let n = room.min(data.len());
        self.buffer.extend_from_slice(&data[..n]);
        if self.buffer.len() == CHUNK {
            self.emit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A reader of what [`SealingWriter`] wrote: fails on a wrong passphrase, any change to the
/// file, and a file cut short (it ends before the chunk tagged last).
pub struct OpeningReader<R: Read> {
    input: R,
    opener: StreamOpener,
    plain: smvs_crypto::Zeroizing<Vec<u8>>,
    at: usize,
}

impl<R: Read> OpeningReader<R> {
    pub fn new(mut input: R, passphrase: &str) -> anyhow::Result<Self> {
        let mut magic = [0u8; 8];
        input
            .read_exact(&mut magic)
            .context("not an SMVS backup (too short)")?;
        if &magic != MAGIC {
            bail!("not an SMVS backup (no SMVSBAK1 header)");
        }
        let mut word = [0u8; 8];
        input.read_exact(&mut word)?;
        let ops = u64::from_be_bytes(word);
        input.read_exact(&mut word)?;
        let mem = u64::from_be_bytes(word);
        let mut salt = [0u8; PASSPHRASE_SALT_LEN];
        input.read_exact(&mut salt)?;
        let mut header = [0u8; STREAM_HEADER_LEN];
        input.read_exact(&mut header)?;
        let key = PassphraseKey::derive(passphrase.as_bytes(), &salt, PassphraseCost { ops, mem })?;
        let opener = StreamOpener::new(&key, &header)?;
        Ok(OpeningReader {
            input,
            opener,
            plain: smvs_crypto::Zeroizing::new(Vec::new()),
            at: 0,
        })
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let mut len = [0u8; 4];
        if let Err(e) = self.input.read_exact(&mut len) {
            return Err(if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(io::ErrorKind::InvalidData, "the backup is cut short")
            } else {
                e
            });
        }
        let len = u32::from_be_bytes(len) as usize;
        if !(STREAM_CHUNK_OVERHEAD..=CHUNK + STREAM_CHUNK_OVERHEAD).contains(&len) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the backup is damaged",
            ));
        }
        let mut sealed = vec![0u8; len];
        self.input
            .read_exact(&mut sealed)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "the backup is cut short"))?;
        let (plain, _last) = self.opener.pull(&sealed).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "wrong passphrase, or the backup was changed",
            )
        })?;
        self.plain = plain;
        self.at = 0;
        Ok(())
    }

    /// After the archive was read: nothing may follow the last chunk.
    pub fn check_end(mut self) -> anyhow::Result<()> {
        while !self.opener.is_finished() {
            self.next_chunk()?;
        }
        let mut rest = [0u8; 1];
        if self.input.read(&mut rest)? != 0 {
            bail!("the backup has data after its end");
        }
        Ok(())
    }
}

impl<R: Read> Read for OpeningReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.plain.len() {
            if self.opener.is_finished() {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = buf.len().min(self.plain.len() - self.at);
        buf[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(data: &[u8], pass: &str) -> Vec<u8> {
        let mut w = SealingWriter::new(Vec::new(), pass, PassphraseCost::INTERACTIVE).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    fn open(file: &[u8], pass: &str) -> anyhow::Result<Vec<u8>> {
        let mut r = OpeningReader::new(file, pass)?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        r.check_end()?;
        Ok(out)
    }

    #[test]
    fn round_trip_and_refusals() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let file = seal(&data, "a long passphrase");
        assert_eq!(open(&file, "a long passphrase").unwrap(), data);
        assert!(open(&file, "another passphrase").is_err());
        // Cut at a chunk boundary: the remaining chunks open, but the last is missing.
        let first = 8 + 8 + 8 + 16 + 24;
        let cut = first + 4 + CHUNK + STREAM_CHUNK_OVERHEAD;
        assert!(open(&file[..cut], "a long passphrase").is_err());
        let mut bad = file.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(open(&bad, "a long passphrase").is_err());
        let mut longer = file.clone();
        longer.push(0);
        assert!(open(&longer, "a long passphrase").is_err());
        assert!(open(b"not a backup at all, no", "a long passphrase").is_err());
        // An empty archive still has its last chunk.
        assert_eq!(
            open(&seal(b"", "a long passphrase"), "a long passphrase").unwrap(),
            b""
        );
    }
}
