//! Session v2's per-contact ratchet: the Double Ratchet of Signal's specification (revision 4,
//! 2025) with a post-quantum step in every DH step, as SimpleX's PQ double ratchet does.
//!
//! ```text
//! KDF_RK(rk, dh, kem) = HKDF-SHA256(salt = rk, ikm = dh || kem, "SMVS-v2 ratchet root", 64)
//!                       -> (next root key, chain key)
//! KDF_CK(ck)          = HKDF-SHA256(salt = "", ikm = ck, "SMVS-v2 ratchet chain", 64)
//!                       -> (next chain key, message key)
//! ```
//! A DH step (on receiving a new ratchet key) mixes in two secrets at once: the X25519 of the
//! two ratchet keys and an ML-KEM-768 shared secret (the peer encapsulated to our current KEM
//! key; the ciphertext rides in every header of its chain). Then we make a fresh X25519 key and
//! a fresh ML-KEM key pair, encapsulate to the KEM key the peer's header carried, and derive our
//! next sending chain from both. So healing after a compromise needs the attacker to break
//! X25519 *and* ML-KEM: someone who only breaks X25519 (a quantum computer) still lacks the KEM
//! secret of the first step after the compromise.
//!
//! The start differs from the specification in one place, to need no raw secret from keyguard:
//! the handshake's secret `SK` gives the root key and the initiator's first sending chain
//! (`HKDF(SK, "SMVS-v2 ratchet start", 64)`); the initiator's first ratchet keys travel in the
//! handshake, and the responder makes the first DH step as soon as it has them.
//!
//! Each message is XChaCha20-Poly1305 under its message key with a **random** nonce (a
//! database restored from an old copy re-derives old message keys; a random nonce keeps it from
//! repeating a keystream), the caller's associated data and the header as associated data.
//! Out-of-order messages are handled within Signal's caps: at most [`MAX_SKIP`] message keys
//! skipped in one go, at most [`MAX_SKIPPED_KEYS`] kept (the oldest go first). Past a cap,
//! a clear [`RatchetError`], never unbounded memory.
//!
//! [`Ratchet::open`] changes nothing unless the message opens: it works on a copy and keeps it
//! only then. The state is plain bytes ([`Ratchet::to_bytes`]) for the host to store sealed.

use std::collections::VecDeque;

use smvs_crypto::{
    aead_decrypt, aead_encrypt, hkdf_sha256, AeadKey, AgreementKeyPair, AgreementPublicKey,
    CryptoError, MlKemCiphertext, MlKemKeyPair, MlKemPublicKey, Zeroizing, AEAD_NONCE_LEN,
    MLKEM_CIPHERTEXT_LEN, MLKEM_ENC_RANDOMNESS_LEN, MLKEM_PUBLIC_KEY_LEN, MLKEM_SEED_LEN,
};

use super::fresh::{self, Fresh};

/// The most message keys one message may make us skip (libsignal's `MAX_FORWARD_JUMPS`).
pub const MAX_SKIP: u32 = 25_000;
/// The most skipped message keys kept for late messages (libsignal's `MAX_MESSAGE_KEYS`).
pub const MAX_SKIPPED_KEYS: usize = 2_000;

const ROOT_INFO: &[u8] = b"SMVS-v2 ratchet root";
const CHAIN_INFO: &[u8] = b"SMVS-v2 ratchet chain";
const START_INFO: &[u8] = b"SMVS-v2 ratchet start";
const HEADER_VERSION: u8 = 2;
const STATE_VERSION: u8 = 1;
/// How many of the peer's past ratchet keys are remembered, so that a replayed message of an
/// old chain is told apart (stale) from a new step.
const RETIRED_KEYS: usize = 16;
/// A header without a KEM ciphertext: version, ratchet key, pn, n, KEM key, flag.
pub const HEADER_LEN: usize = 1 + 32 + 4 + 4 + MLKEM_PUBLIC_KEY_LEN + 1;
/// A header with one.
pub const HEADER_WITH_KEM_LEN: usize = HEADER_LEN + MLKEM_CIPHERTEXT_LEN;

type Key = Zeroizing<[u8; 32]>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RatchetError {
    #[error("message header is malformed: {0}")]
    Malformed(&'static str),
    #[error("message would skip {0} message keys; at most {MAX_SKIP} are skipped")]
    TooFarAhead(u64),
    #[error("message was already opened, or its key is no longer kept")]
    Stale,
    #[error("message does not open: wrong key, altered, or not for this session")]
    Open,
    #[error("this chain has sent all the messages it can; a new session is needed")]
    Exhausted,
    #[error("stored ratchet state is malformed")]
    State,
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
}

/// A message's clear header, bound into its AEAD.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// The sender's current ratchet public key.
    pub dh: AgreementPublicKey,
    /// How many messages the sender sent in its previous chain.
    pub pn: u32,
    /// This message's number in its chain.
    pub n: u32,
    /// The sender's current ML-KEM public key (the peer encapsulates to it at its next step).
    pub kem: MlKemPublicKey,
    /// The sender's encapsulation to the peer's KEM key, made at the step that began this
    /// chain. Only the initiator's first chain has none (the handshake was post-quantum).
    pub kem_ciphertext: Option<MlKemCiphertext>,
}

impl Header {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_WITH_KEM_LEN);
        out.push(HEADER_VERSION);
        out.extend_from_slice(self.dh.as_bytes());
        out.extend_from_slice(&self.pn.to_be_bytes());
        out.extend_from_slice(&self.n.to_be_bytes());
        out.extend_from_slice(self.kem.as_bytes());
        match &self.kem_ciphertext {
            Some(ct) => {
                out.push(1);
                out.extend_from_slice(ct.as_bytes());
            }
            None => out.push(0),
        }
        out
    }

    /// Reads a header from the front of `bytes`; returns it and its length.
    pub fn decode(bytes: &[u8]) -> Result<(Header, usize), RatchetError> {
        let short = RatchetError::Malformed("too short");
        if bytes.len() < HEADER_LEN {
            return Err(short);
        }
        if bytes[0] != HEADER_VERSION {
            return Err(RatchetError::Malformed("unknown header version"));
        }
        let u32_at = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let dh = AgreementPublicKey::from_bytes(&bytes[1..33])?;
        let (pn, n) = (u32_at(33), u32_at(37));
        let kem = MlKemPublicKey::from_bytes(&bytes[41..41 + MLKEM_PUBLIC_KEY_LEN])?;
        let (kem_ciphertext, len) = match bytes[HEADER_LEN - 1] {
            0 => (None, HEADER_LEN),
            1 => {
                let ct = bytes
                    .get(HEADER_LEN..HEADER_WITH_KEM_LEN)
                    .ok_or(RatchetError::Malformed("too short"))?;
                (Some(MlKemCiphertext::from_bytes(ct)?), HEADER_WITH_KEM_LEN)
            }
            _ => return Err(RatchetError::Malformed("bad KEM flag")),
        };
        Ok((
            Header {
                dh,
                pn,
                n,
                kem,
                kem_ciphertext,
            },
            len,
        ))
    }
}

/// A message key kept for a message that has not come yet.
#[derive(Clone)]
struct SkippedKey {
    dh: AgreementPublicKey,
    n: u32,
    key: Key,
}

/// One contact's ratchet state. Secrets are kept as bytes (zeroed on drop) so that the state
/// can be copied for an all-or-nothing [`Ratchet::open`] and stored as it is.
#[derive(Clone)]
pub struct Ratchet {
    root: Key,
    /// Our current ratchet key (its secret scalar).
    dh_ours: Key,
    /// The peer's current ratchet key; None until the initiator hears from the responder.
    dh_theirs: Option<AgreementPublicKey>,
    /// The seed of our current ML-KEM key pair.
    kem_ours: Zeroizing<[u8; MLKEM_SEED_LEN]>,
    /// The public halves of `dh_ours` and `kem_ours`, for headers (not stored: made again
    /// from the secrets when the state is read).
    ours_public: (AgreementPublicKey, MlKemPublicKey),
    /// Our encapsulation to the peer's KEM key, sent in every header of our current chain.
    kem_sent: Option<MlKemCiphertext>,
    send_chain: Key,
    recv_chain: Option<Key>,
    ns: u32,
    nr: u32,
    pn: u32,
    skipped: VecDeque<SkippedKey>,
    /// The peer's past ratchet keys, newest last.
    retired: VecDeque<AgreementPublicKey>,
}

/// KDF_RK: the next root key and a chain key, from both secrets of a step.
pub(crate) fn root_step(root: &[u8; 32], dh: &[u8], kem: &[u8]) -> Result<(Key, Key), CryptoError> {
    let mut ikm = Zeroizing::new(Vec::with_capacity(64));
    ikm.extend_from_slice(dh);
    ikm.extend_from_slice(kem);
    split(&hkdf_sha256(root, &ikm, ROOT_INFO, 64)?)
}

/// KDF_CK: the next chain key and this message's key.
pub(crate) fn chain_step(chain: &[u8; 32]) -> Result<(Key, Key), CryptoError> {
    split(&hkdf_sha256(b"", chain, CHAIN_INFO, 64)?)
}

fn split(okm: &[u8]) -> Result<(Key, Key), CryptoError> {
    let mut a = Zeroizing::new([0u8; 32]);
    let mut b = Zeroizing::new([0u8; 32]);
    if okm.len() != 64 {
        return Err(CryptoError::Kdf("ratchet KDF output length"));
    }
    a.copy_from_slice(&okm[..32]);
    b.copy_from_slice(&okm[32..]);
    Ok((a, b))
}

/// Seals `plaintext` under one message key: `nonce || ciphertext`.
pub(crate) fn seal_with(
    key: &[u8; 32],
    nonce: &[u8; AEAD_NONCE_LEN],
    ad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let key = AeadKey::from_bytes(key)?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&aead_encrypt(&key, nonce, ad, plaintext)?);
    Ok(out)
}

/// Opens what [`seal_with`] made.
pub(crate) fn open_with(
    key: &[u8; 32],
    ad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, RatchetError> {
    let key = AeadKey::from_bytes(key)?;
    let (nonce, body) = sealed
        .split_at_checked(AEAD_NONCE_LEN)
        .ok_or(RatchetError::Malformed("no nonce"))?;
    let nonce: [u8; AEAD_NONCE_LEN] = nonce
        .try_into()
        .map_err(|_| RatchetError::Malformed("no nonce"))?;
    aead_decrypt(&key, &nonce, ad, body).map_err(|_| RatchetError::Open)
}

/// The associated data of one message: the caller's, then the header.
fn message_ad(ad: &[u8], header: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ad.len() + header.len() + 4);
    out.extend_from_slice(&u32::try_from(ad.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(ad);
    out.extend_from_slice(header);
    out
}

fn publics(
    dh: &[u8; 32],
    kem: &[u8; MLKEM_SEED_LEN],
) -> Result<(AgreementPublicKey, MlKemPublicKey), CryptoError> {
    Ok((
        AgreementKeyPair::from_secret_bytes(dh)?.public(),
        MlKemKeyPair::from_seed(kem)?.public().clone(),
    ))
}

fn agree(ours: &[u8; 32], theirs: &AgreementPublicKey) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let pair = AgreementKeyPair::from_secret_bytes(ours)?;
    Ok(Zeroizing::new(pair.agree(theirs)?.expose().to_vec()))
}

impl Ratchet {
    /// The initiator's ratchet after the handshake: `dh` and `kem` are the ratchet keys its
    /// handshake message announced.
    pub fn initiator(
        sk: &[u8; 32],
        dh: Key,
        kem: Zeroizing<[u8; MLKEM_SEED_LEN]>,
    ) -> Result<Ratchet, RatchetError> {
        let (root, send_chain) = split(&hkdf_sha256(b"", sk, START_INFO, 64)?)?;
        Ok(Ratchet {
            root,
            ours_public: publics(&dh, &kem)?,
            dh_ours: dh,
            dh_theirs: None,
            kem_ours: kem,
            kem_sent: None,
            send_chain,
            recv_chain: None,
            ns: 0,
            nr: 0,
            pn: 0,
            skipped: VecDeque::new(),
            retired: VecDeque::new(),
        })
    }

    /// The responder's ratchet after the handshake: the initiator's first chain is its
    /// receiving chain, and it steps at once to its own sending chain.
    pub fn responder(
        sk: &[u8; 32],
        peer_dh: AgreementPublicKey,
        peer_kem: &MlKemPublicKey,
        fresh: &mut dyn Fresh,
    ) -> Result<Ratchet, RatchetError> {
        let (root, recv_chain) = split(&hkdf_sha256(b"", sk, START_INFO, 64)?)?;
        let (dh_ours, kem_ours) = (fresh::x25519_secret(fresh), fresh::mlkem_seed(fresh));
        let mut ratchet = Ratchet {
            root,
            ours_public: publics(&dh_ours, &kem_ours)?,
            dh_ours,
            dh_theirs: Some(peer_dh),
            kem_ours,
            kem_sent: None,
            send_chain: Zeroizing::new([0; 32]),
            recv_chain: Some(recv_chain),
            ns: 0,
            nr: 0,
            pn: 0,
            skipped: VecDeque::new(),
            retired: VecDeque::new(),
        };
        ratchet.sending_step(peer_kem, fresh)?;
        Ok(ratchet)
    }

    /// The second half of a DH step (the first, for the responder's start): fresh ratchet
    /// keys, an encapsulation to the peer's KEM key, and a new sending chain from both.
    fn sending_step(
        &mut self,
        peer_kem: &MlKemPublicKey,
        fresh: &mut dyn Fresh,
    ) -> Result<(), RatchetError> {
        let peer_dh = self.dh_theirs.ok_or(RatchetError::State)?;
        self.dh_ours = fresh::x25519_secret(fresh);
        self.kem_ours = fresh::mlkem_seed(fresh);
        self.ours_public = publics(&self.dh_ours, &self.kem_ours)?;
        let randomness = fresh::bytes::<MLKEM_ENC_RANDOMNESS_LEN>(fresh);
        let (ciphertext, kem) = peer_kem.encapsulate_deterministic(&randomness[..])?;
        let dh = agree(&self.dh_ours, &peer_dh)?;
        let (root, chain) = root_step(&self.root, &dh, kem.expose())?;
        self.root = root;
        self.send_chain = chain;
        self.kem_sent = Some(ciphertext);
        self.pn = self.ns;
        self.ns = 0;
        Ok(())
    }

    /// Seals `plaintext` as the next message of our sending chain: `header || nonce ||
    /// ciphertext`, with `ad` (the envelope's clear header) and the header authenticated.
    pub fn seal(
        &mut self,
        ad: &[u8],
        plaintext: &[u8],
        fresh: &mut dyn Fresh,
    ) -> Result<Vec<u8>, RatchetError> {
        let n = self.ns;
        let next_n = n.checked_add(1).ok_or(RatchetError::Exhausted)?;
        let (chain, key) = chain_step(&self.send_chain)?;
        let header = Header {
            dh: self.ours_public.0,
            pn: self.pn,
            n,
            kem: self.ours_public.1.clone(),
            kem_ciphertext: self.kem_sent.clone(),
        }
        .encode();
        let sealed = seal_with(
            &key,
            &fresh::nonce(fresh),
            &message_ad(ad, &header),
            plaintext,
        )?;
        self.send_chain = chain;
        self.ns = next_n;
        let mut out = header;
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens a message [`Ratchet::seal`] made on the other side, with the same `ad`. The state
    /// changes only when it opens.
    pub fn open(
        &mut self,
        ad: &[u8],
        message: &[u8],
        fresh: &mut dyn Fresh,
    ) -> Result<Zeroizing<Vec<u8>>, RatchetError> {
        let (header, len) = Header::decode(message)?;
        let ad = message_ad(ad, &message[..len]);
        let body = &message[len..];
        let mut next = self.clone();
        let plaintext = next.open_in(&header, &ad, body, fresh)?;
        *self = next;
        Ok(plaintext)
    }

    fn open_in(
        &mut self,
        header: &Header,
        ad: &[u8],
        body: &[u8],
        fresh: &mut dyn Fresh,
    ) -> Result<Zeroizing<Vec<u8>>, RatchetError> {
        if let Some(at) = self
            .skipped
            .iter()
            .position(|s| s.dh == header.dh && s.n == header.n)
        {
            let plaintext = open_with(&self.skipped[at].key, ad, body)?;
            self.skipped.remove(at);
            return Ok(plaintext);
        }
        if self.dh_theirs != Some(header.dh) {
            if self.retired.contains(&header.dh) {
                return Err(RatchetError::Stale);
            }
            // Both jumps together (the rest of the old chain, then into the new one) are within
            // MAX_SKIP, checked before any key is made: a forged header costs little.
            let old_jump = match self.recv_chain {
                Some(_) => u64::from(header.pn.saturating_sub(self.nr)),
                None => 0,
            };
            let jump = old_jump + u64::from(header.n);
            if jump > u64::from(MAX_SKIP) {
                return Err(RatchetError::TooFarAhead(jump));
            }
            self.skip_until(header.pn)?;
            self.receiving_step(header)?;
            self.sending_step(&header.kem, fresh)?;
        }
        if header.n < self.nr {
            return Err(RatchetError::Stale);
        }
        self.skip_until(header.n)?;
        let chain = self.recv_chain.as_ref().ok_or(RatchetError::State)?;
        let (chain, key) = chain_step(chain)?;
        let plaintext = open_with(&key, ad, body)?;
        self.recv_chain = Some(chain);
        self.nr = header.n.checked_add(1).ok_or(RatchetError::Exhausted)?;
        Ok(plaintext)
    }

    /// The first half of a DH step: the peer's new ratchet key and its encapsulation to our
    /// KEM key give the new receiving chain.
    fn receiving_step(&mut self, header: &Header) -> Result<(), RatchetError> {
        let ciphertext = header
            .kem_ciphertext
            .as_ref()
            .ok_or(RatchetError::Malformed(
                "a new ratchet key without a KEM encapsulation",
            ))?;
        let kem = MlKemKeyPair::from_seed(&self.kem_ours[..])?.decapsulate(ciphertext)?;
        let dh = agree(&self.dh_ours, &header.dh)?;
        let (root, chain) = root_step(&self.root, &dh, kem.expose())?;
        self.root = root;
        self.recv_chain = Some(chain);
        if let Some(old) = self.dh_theirs.replace(header.dh) {
            self.retired.push_back(old);
            if self.retired.len() > RETIRED_KEYS {
                self.retired.pop_front();
            }
        }
        self.nr = 0;
        Ok(())
    }

    /// Keeps the keys of the messages before `until` in the current receiving chain.
    fn skip_until(&mut self, until: u32) -> Result<(), RatchetError> {
        let (Some(mut chain), Some(dh)) = (self.recv_chain.clone(), self.dh_theirs) else {
            return Ok(());
        };
        if until <= self.nr {
            return Ok(());
        }
        let jump = u64::from(until - self.nr);
        if jump > u64::from(MAX_SKIP) {
            return Err(RatchetError::TooFarAhead(jump));
        }
        while self.nr < until {
            let (next, key) = chain_step(&chain)?;
            self.skipped.push_back(SkippedKey {
                dh,
                n: self.nr,
                key,
            });
            if self.skipped.len() > MAX_SKIPPED_KEYS {
                self.skipped.pop_front();
            }
            chain = next;
            self.nr += 1;
        }
        self.recv_chain = Some(chain);
        Ok(())
    }

    /// The length of the header [`Ratchet::seal`] writes next.
    pub fn next_header_len(&self) -> usize {
        if self.kem_sent.is_some() {
            HEADER_WITH_KEM_LEN
        } else {
            HEADER_LEN
        }
    }

    /// How many skipped message keys are kept.
    pub fn skipped_keys(&self) -> usize {
        self.skipped.len()
    }

    /// The state as bytes, for the host to store sealed.
    pub fn to_bytes(&self) -> Result<Zeroizing<Vec<u8>>, RatchetError> {
        let mut out = Zeroizing::new(Vec::with_capacity(3000 + self.skipped.len() * 68));
        out.push(STATE_VERSION);
        out.extend_from_slice(&self.root[..]);
        out.extend_from_slice(&self.dh_ours[..]);
        optional(&mut out, self.dh_theirs.as_ref().map(|k| &k.as_bytes()[..]));
        out.extend_from_slice(&self.kem_ours[..]);
        optional(&mut out, self.kem_sent.as_ref().map(|c| &c.as_bytes()[..]));
        out.extend_from_slice(&self.send_chain[..]);
        optional(&mut out, self.recv_chain.as_ref().map(|c| &c[..]));
        for n in [self.ns, self.nr, self.pn] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        let count = u32::try_from(self.skipped.len()).map_err(|_| RatchetError::State)?;
        out.extend_from_slice(&count.to_be_bytes());
        for s in &self.skipped {
            out.extend_from_slice(s.dh.as_bytes());
            out.extend_from_slice(&s.n.to_be_bytes());
            out.extend_from_slice(&s.key[..]);
        }
        // At most RETIRED_KEYS.
        out.push(u8::try_from(self.retired.len()).map_err(|_| RatchetError::State)?);
        for key in &self.retired {
            out.extend_from_slice(key.as_bytes());
        }
        Ok(out)
    }

    /// Reads what [`Ratchet::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Ratchet, RatchetError> {
        let mut r = Reader(bytes);
        if r.take(1)? != [STATE_VERSION] {
            return Err(RatchetError::State);
        }
        let root = r.key()?;
        let dh_ours = r.key()?;
        let dh_theirs = match r.flag()? {
            true => Some(AgreementPublicKey::from_bytes(r.take(32)?)?),
            false => None,
        };
        let mut kem_ours = Zeroizing::new([0u8; MLKEM_SEED_LEN]);
        kem_ours.copy_from_slice(r.take(MLKEM_SEED_LEN)?);
        let kem_sent = match r.flag()? {
            true => Some(MlKemCiphertext::from_bytes(r.take(MLKEM_CIPHERTEXT_LEN)?)?),
            false => None,
        };
        let send_chain = r.key()?;
        let recv_chain = match r.flag()? {
            true => Some(r.key()?),
            false => None,
        };
        let (ns, nr, pn) = (r.u32()?, r.u32()?, r.u32()?);
        let count = r.u32()? as usize;
        if count > MAX_SKIPPED_KEYS {
            return Err(RatchetError::State);
        }
        let mut skipped = VecDeque::with_capacity(count);
        for _ in 0..count {
            skipped.push_back(SkippedKey {
                dh: AgreementPublicKey::from_bytes(r.take(32)?)?,
                n: r.u32()?,
                key: r.key()?,
            });
        }
        let retired_count = usize::from(r.take(1)?[0]);
        if retired_count > RETIRED_KEYS {
            return Err(RatchetError::State);
        }
        let mut retired = VecDeque::with_capacity(retired_count);
        for _ in 0..retired_count {
            retired.push_back(AgreementPublicKey::from_bytes(r.take(32)?)?);
        }
        if !r.0.is_empty() {
            return Err(RatchetError::State);
        }
        Ok(Ratchet {
            root,
            ours_public: publics(&dh_ours, &kem_ours)?,
            dh_ours,
            dh_theirs,
            kem_ours,
            kem_sent,
            send_chain,
            recv_chain,
            ns,
            nr,
            pn,
            skipped,
            retired,
        })
    }
}

fn optional(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => {
            out.push(1);
            out.extend_from_slice(v);
        }
        None => out.push(0),
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RatchetError> {
        let (head, rest) = self.0.split_at_checked(n).ok_or(RatchetError::State)?;
        self.0 = rest;
        Ok(head)
    }

    fn key(&mut self) -> Result<Key, RatchetError> {
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(self.take(32)?);
        Ok(key)
    }

    fn flag(&mut self) -> Result<bool, RatchetError> {
        match self.take(1)? {
            [0] => Ok(false),
            [1] => Ok(true),
            _ => Err(RatchetError::State),
        }
    }

    fn u32(&mut self) -> Result<u32, RatchetError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::fresh::OsFresh;

    const AD: &[u8] = b"envelope header";

    /// Alice (initiator) and Bob (responder) from one random `SK`, as a handshake leaves them.
    fn pair() -> (Ratchet, Ratchet) {
        let sk: [u8; 32] = smvs_crypto::random_array();
        let (dh, kem) = (
            fresh::x25519_secret(&mut OsFresh),
            fresh::mlkem_seed(&mut OsFresh),
        );
        let (dh_public, kem_public) = publics(&dh, &kem).unwrap();
        let alice = Ratchet::initiator(&sk, dh, kem).unwrap();
        let bob = Ratchet::responder(&sk, dh_public, &kem_public, &mut OsFresh).unwrap();
        (alice, bob)
    }

    fn seal(r: &mut Ratchet, text: &str) -> Vec<u8> {
        r.seal(AD, text.as_bytes(), &mut OsFresh).unwrap()
    }

    fn open(r: &mut Ratchet, message: &[u8]) -> Result<String, RatchetError> {
        r.open(AD, message, &mut OsFresh)
            .map(|p| String::from_utf8(p.to_vec()).unwrap())
    }

    /// Walks the sender's chain `k` messages ahead without sending them (as if they were lost).
    fn skip_sending(r: &mut Ratchet, k: u32) {
        for _ in 0..k {
            r.send_chain = chain_step(&r.send_chain).unwrap().0;
        }
        r.ns += k;
    }

    #[test]
    fn both_ways_in_turns_and_in_bursts() {
        let (mut alice, mut bob) = pair();
        for round in 0..4 {
            for i in 0..3 {
                let m = seal(&mut alice, &format!("a{round}.{i}"));
                assert_eq!(open(&mut bob, &m).unwrap(), format!("a{round}.{i}"));
            }
            let m = seal(&mut bob, &format!("b{round}"));
            assert_eq!(open(&mut alice, &m).unwrap(), format!("b{round}"));
        }
        // Another associated data (another envelope header) does not open, and changes nothing.
        let m = seal(&mut alice, "x");
        let before = bob.to_bytes().unwrap();
        assert_eq!(
            bob.open(b"other header", &m, &mut OsFresh).unwrap_err(),
            RatchetError::Open
        );
        assert_eq!(bob.to_bytes().unwrap(), before);
        assert_eq!(open(&mut bob, &m).unwrap(), "x");
    }

    #[test]
    fn every_header_of_a_new_chain_carries_the_kem_step() {
        let (mut alice, mut bob) = pair();
        let first = seal(&mut alice, "hi");
        // The initiator's first chain comes from the handshake: no KEM ciphertext.
        assert_eq!(Header::decode(&first).unwrap().1, HEADER_LEN);
        open(&mut bob, &first).unwrap();
        for _ in 0..2 {
            let m = seal(&mut bob, "yo");
            assert_eq!(Header::decode(&m).unwrap().1, HEADER_WITH_KEM_LEN);
            open(&mut alice, &m).unwrap();
        }
        let m = seal(&mut alice, "again");
        assert_eq!(Header::decode(&m).unwrap().1, HEADER_WITH_KEM_LEN);
    }

    /// Forward secrecy: a snapshot taken after message n cannot open messages up to n, of
    /// this chain or of the ones before.
    #[test]
    fn a_snapshot_cannot_open_what_came_before_it() {
        let (mut alice, mut bob) = pair();
        let mut sent = Vec::new();
        for round in 0..3 {
            for i in 0..3 {
                let m = seal(&mut alice, &format!("a{round}.{i}"));
                open(&mut bob, &m).unwrap();
                sent.push(m);
            }
            let m = seal(&mut bob, "b");
            open(&mut alice, &m).unwrap();
        }
        let snapshot = Ratchet::from_bytes(&bob.to_bytes().unwrap()).unwrap();
        assert_eq!(snapshot.skipped_keys(), 0);
        for m in &sent {
            let mut s = snapshot.clone();
            assert!(open(&mut s, m).is_err());
        }
    }

    /// Post-compromise security against a classical attacker: with a snapshot of Bob's state
    /// and every message on the wire, the attacker reads Alice's messages until Bob steps
    /// with fresh keys, and nothing after one round trip.
    #[test]
    fn a_snapshot_stops_working_after_one_round_trip() {
        let (mut alice, mut bob) = pair();
        open(&mut bob, &seal(&mut alice, "x1")).unwrap();
        open(&mut alice, &seal(&mut bob, "y1")).unwrap();
        let mut attacker = bob.clone();

        let x2 = seal(&mut alice, "x2");
        // The test can fail: the snapshot does read what Alice sends before the round trip.
        assert_eq!(open(&mut attacker, &x2).unwrap(), "x2");
        open(&mut bob, &x2).unwrap();
        let y2 = seal(&mut bob, "y2");
        open(&mut alice, &y2).unwrap();
        let x3 = seal(&mut alice, "x3");
        assert!(open(&mut attacker, &x3).is_err());
        assert_eq!(open(&mut bob, &x3).unwrap(), "x3");
    }

    /// Post-compromise security against a quantum attacker, who breaks every X25519 key (here:
    /// is handed every X25519 secret either side ever makes) but not ML-KEM. With Bob's
    /// snapshot they follow the root chain through Alice's next step (its KEM ciphertext is to
    /// a key in the snapshot), but not through Bob's next one: its KEM secret is to Alice's
    /// fresh ML-KEM key. Handed that KEM secret too, the same computation opens the message,
    /// so ML-KEM is what stops them.
    #[test]
    fn breaking_x25519_alone_does_not_undo_healing() {
        let (mut alice, mut bob) = pair();
        open(&mut bob, &seal(&mut alice, "x1")).unwrap();
        open(&mut alice, &seal(&mut bob, "y1")).unwrap();
        let snapshot = bob.clone();
        let leaked_alice_dh = alice.dh_ours.clone();

        // Alice's next chain: X25519 from the leak, KEM from the snapshot's ML-KEM key.
        let x2 = seal(&mut alice, "x2");
        let (h2, len2) = Header::decode(&x2).unwrap();
        let kem = MlKemKeyPair::from_seed(&snapshot.kem_ours[..])
            .unwrap()
            .decapsulate(h2.kem_ciphertext.as_ref().unwrap())
            .unwrap();
        let dh = agree(&leaked_alice_dh, &snapshot.ours_public.0).unwrap();
        let (root, chain) = root_step(&snapshot.root, &dh, kem.expose()).unwrap();
        let (_, key) = chain_step(&chain).unwrap();
        let opened = open_with(&key, &message_ad(AD, &x2[..len2]), &x2[len2..]).unwrap();
        assert_eq!(&opened[..], b"x2");

        // Bob's next chain, after his fresh step: X25519 still from the leak.
        open(&mut bob, &x2).unwrap();
        let leaked_bob_dh = bob.dh_ours.clone();
        let y2 = seal(&mut bob, "y2");
        let (h3, len3) = Header::decode(&y2).unwrap();
        let dh = agree(&leaked_bob_dh, &h2.dh).unwrap();
        let ciphertext = h3.kem_ciphertext.as_ref().unwrap();
        let try_kem = |kem: &[u8]| {
            let (_, chain) = root_step(&root, &dh, kem).unwrap();
            let (_, key) = chain_step(&chain).unwrap();
            open_with(&key, &message_ad(AD, &y2[..len3]), &y2[len3..])
        };
        // Every ML-KEM secret the attacker holds (the snapshot's), and a guess: nothing opens.
        let from_snapshot = MlKemKeyPair::from_seed(&snapshot.kem_ours[..])
            .unwrap()
            .decapsulate(ciphertext)
            .unwrap();
        assert_eq!(
            try_kem(from_snapshot.expose()).unwrap_err(),
            RatchetError::Open
        );
        assert_eq!(try_kem(&[0u8; 32]).unwrap_err(), RatchetError::Open);
        // Alice's fresh ML-KEM secret (which the attacker cannot get) is the missing piece.
        let true_kem = MlKemKeyPair::from_seed(&alice.kem_ours[..])
            .unwrap()
            .decapsulate(ciphertext)
            .unwrap();
        assert_eq!(&try_kem(true_kem.expose()).unwrap()[..], b"y2");
        assert_eq!(open(&mut alice, &y2).unwrap(), "y2");
    }

    #[test]
    fn late_and_reordered_messages_open_within_the_caps() {
        let (mut alice, mut bob) = pair();
        let first: Vec<_> = (0..6).map(|i| seal(&mut alice, &format!("a{i}"))).collect();
        // 5, 0, 3 first; then a reply and a new chain from Alice; then the rest of the old one.
        for i in [5, 0, 3] {
            assert_eq!(open(&mut bob, &first[i]).unwrap(), format!("a{i}"));
        }
        assert_eq!(bob.skipped_keys(), 3);
        open(&mut alice, &seal(&mut bob, "b")).unwrap();
        let next = seal(&mut alice, "next chain");
        assert_eq!(open(&mut bob, &next).unwrap(), "next chain");
        for i in [4, 1, 2] {
            assert_eq!(open(&mut bob, &first[i]).unwrap(), format!("a{i}"));
        }
        assert_eq!(bob.skipped_keys(), 0);
        // Each opens once.
        assert_eq!(open(&mut bob, &first[1]).unwrap_err(), RatchetError::Stale);
        assert_eq!(open(&mut bob, &next).unwrap_err(), RatchetError::Stale);
    }

    #[test]
    fn past_the_caps_the_error_is_clear_and_nothing_changes() {
        let (mut alice, mut bob) = pair();
        let early: Vec<_> = (0..3).map(|i| seal(&mut alice, &format!("e{i}"))).collect();
        // A jump of exactly MAX_SKIP opens; only the newest MAX_SKIPPED_KEYS keys are kept.
        skip_sending(&mut alice, MAX_SKIP - 3);
        let far = seal(&mut alice, "far");
        assert_eq!(open(&mut bob, &far).unwrap(), "far");
        assert_eq!(bob.skipped_keys(), MAX_SKIPPED_KEYS);
        // The oldest were dropped: a clear error, not a panic.
        assert_eq!(open(&mut bob, &early[0]).unwrap_err(), RatchetError::Stale);
        // One more than MAX_SKIP ahead: refused before any key is made, state unchanged.
        skip_sending(&mut alice, MAX_SKIP + 1);
        let too_far = seal(&mut alice, "too far");
        let before = bob.to_bytes().unwrap();
        assert_eq!(
            open(&mut bob, &too_far).unwrap_err(),
            RatchetError::TooFarAhead(u64::from(MAX_SKIP) + 1)
        );
        assert_eq!(bob.to_bytes().unwrap(), before);
        // Garbage is malformed, never a panic.
        for junk in [&b""[..], &[2u8; 40][..], &far[..HEADER_LEN - 1]] {
            assert!(matches!(
                open(&mut bob, junk).unwrap_err(),
                RatchetError::Malformed(_)
            ));
        }
        let mut flag = far.clone();
        flag[HEADER_LEN - 1] = 7;
        assert!(matches!(
            open(&mut bob, &flag).unwrap_err(),
            RatchetError::Malformed(_)
        ));
    }

    /// The rest of the old chain and the jump into the new one count together: a forged
    /// header cannot make us derive twice MAX_SKIP keys.
    #[test]
    fn both_jumps_of_a_step_count_against_one_cap() {
        let (mut alice, mut bob) = pair();
        open(&mut bob, &seal(&mut alice, "a")).unwrap();
        let _lost: Vec<_> = (0..20).map(|_| seal(&mut alice, "lost")).collect();
        open(&mut alice, &seal(&mut bob, "b")).unwrap();
        skip_sending(&mut alice, MAX_SKIP - 10);
        let m = seal(&mut alice, "far into the new chain");
        let before = bob.to_bytes().unwrap();
        assert_eq!(
            open(&mut bob, &m).unwrap_err(),
            RatchetError::TooFarAhead(u64::from(MAX_SKIP) + 10)
        );
        assert_eq!(bob.to_bytes().unwrap(), before);
    }

    #[test]
    fn state_survives_storage_and_rejects_damage() {
        let (mut alice, mut bob) = pair();
        let late = seal(&mut alice, "late");
        open(&mut bob, &seal(&mut alice, "on time")).unwrap();
        let stored = bob.to_bytes().unwrap();
        let mut again = Ratchet::from_bytes(&stored).unwrap();
        assert_eq!(again.to_bytes().unwrap(), stored);
        assert_eq!(open(&mut again, &late).unwrap(), "late");
        let m = seal(&mut again, "from the restored state");
        assert_eq!(open(&mut alice, &m).unwrap(), "from the restored state");
        assert!(Ratchet::from_bytes(&stored[..stored.len() - 1]).is_err());
        let mut longer = stored.to_vec();
        longer.push(0);
        assert!(Ratchet::from_bytes(&longer).is_err());
    }

    /// Random nonces: the same state sealing the same text twice (a database restored from an
    /// old copy) never repeats a ciphertext.
    #[test]
    fn a_restored_state_does_not_repeat_a_keystream() {
        let (mut alice, _) = pair();
        let mut copy = alice.clone();
        let a = seal(&mut alice, "same text");
        let b = seal(&mut copy, "same text");
        let (_, len) = Header::decode(&a).unwrap();
        assert_eq!(a[..len], b[..len]);
        assert_ne!(a[len..], b[len..]);
    }
}
