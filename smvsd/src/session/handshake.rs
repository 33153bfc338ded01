//! Session v2's handshake: hybrid (X25519 and X-Wing), bound to both complete identities and
//! to the transcript, with the identity secrets used only inside keyguard.
//!
//! Two modes, both in the manner of Signal's PQXDH (revision 3), written down in
//! `docs/protocol.md`:
//!
//! * **Interactive** (the usual case: hosts are always on). The initiator I sends its fresh
//!   X25519 key `E_I`, a fresh X-Wing key `EK_I` and an X-Wing encapsulation to the responder's
//!   identity KEM key; the responder R answers with its fresh `E_R`, an encapsulation to `EK_I`
//!   and one to I's identity KEM key. Six secrets:
//!   `DH(IK_I, E_R)`, `DH(E_I, IK_R)`, `DH(E_I, E_R)` (triple DH),
//!   `KEM(IK_R)`, `KEM(EK_I)`, `KEM(IK_I)` (X-Wing).
//! * **Prekey** (the responder's host is away): I uses R's signed medium-term prekey
//!   (`SPK_R`: an X25519 key and an X-Wing key, made and rotated by R's keyguard). Five secrets:
//!   `DH(IK_I, SPK_R)`, `DH(E_I, IK_R)`, `DH(E_I, SPK_R)`, `KEM(IK_R)`, `KEM(SPK_R)`.
//!   No one-time prekeys: see `docs/protocol.md`.
//!
//! Every secret is turned into a 32-byte value bound to the transcript hash and to its role,
//! `transcript_bound(label, TH, secret)`; the ones that need an identity or prekey secret are
//! computed by keyguard, which hands out only that bound value ([`GuardAsk`]). Then
//! `SK = HKDF-SHA256(salt = TH, ikm = 0xFF*32 || bound values in a fixed order,
//! "SMVS-v2 session")`. The transcript hash covers the protocol label, the mode, both complete
//! identities (username, Ed25519, X25519 and X-Wing keys), the prekey when one is used, and
//! every handshake message, so an identity re-published under another name, a swapped key or
//! an altered message gives another `SK`.
//!
//! The handshake's messages also carry the initiator's first ratchet keys; `SK` starts the
//! [`Ratchet`].
//!
//! This module is pure: the caller asks keyguard the [`GuardAsk`]s of a [`Pending`] and hands
//! the answers to [`Pending::finish`].

use smvs_crypto::{
    blake2b, hkdf_sha256, transcript_bound, AgreementKeyPair, AgreementPublicKey, CryptoError,
    IdentityBundle, MlKemKeyPair, MlKemPublicKey, XWingCiphertext, XWingKeyPair, XWingPublicKey,
    Zeroizing, MLKEM_PUBLIC_KEY_LEN, MLKEM_SEED_LEN, XWING_CIPHERTEXT_LEN,
    XWING_ENC_RANDOMNESS_LEN, XWING_PUBLIC_KEY_LEN,
};
use smvs_schema::Username;

use super::fresh::{self, Fresh};
use super::ratchet::{Ratchet, RatchetError};

const TRANSCRIPT_LABEL: &[u8] = b"SMVS-v2 handshake";
const SESSION_INFO: &[u8] = b"SMVS-v2 session";
const RECEIPT_INFO: &[u8] = b"SMVS-v2 receipts";

const INIT_INTERACTIVE: u8 = 1;
const INIT_PREKEY: u8 = 2;
const RESPONSE: u8 = 3;

/// The ratchet keys the initiator announces: an X25519 key and an ML-KEM-768 key.
const RATCHET_START_LEN: usize = 32 + MLKEM_PUBLIC_KEY_LEN;
pub const INTERACTIVE_INIT_LEN: usize =
    1 + 32 + XWING_PUBLIC_KEY_LEN + XWING_CIPHERTEXT_LEN + RATCHET_START_LEN;
pub const PREKEY_INIT_LEN: usize = 1 + 4 + 32 + 2 * XWING_CIPHERTEXT_LEN + RATCHET_START_LEN;
pub const RESPONSE_LEN: usize = 1 + 32 + 2 * XWING_CIPHERTEXT_LEN;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    #[error("handshake message is malformed: {0}")]
    Malformed(&'static str),
    #[error("the prekey is not signed by the peer's identity")]
    PrekeySignature,
    #[error("the prekey expired")]
    PrekeyExpired,
    #[error("keyguard gave {got} answers for {asked} questions")]
    Answers { asked: usize, got: usize },
    #[error("crypto: {0}")]
    Crypto(#[from] CryptoError),
    #[error("ratchet: {0}")]
    Ratchet(#[from] RatchetError),
}

/// One side's complete public identity, as the transcript binds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Party {
    pub username: Username,
    pub identity: IdentityBundle,
    /// The identity's X-Wing key (signed by its Ed25519 key in the directory record).
    pub kem: XWingPublicKey,
}

impl Party {
    fn encode_into(&self, out: &mut Vec<u8>) {
        let name = self.username.wire_str().as_bytes();
        // A Username is at most 32 bytes.
        out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(name);
        out.extend_from_slice(&self.identity.to_bytes());
        out.extend_from_slice(self.kem.as_bytes());
    }
}

/// A signed medium-term prekey, as published in the directory record.
pub use smvs_crypto::SignedPrekey as Prekey;

/// A peer's prekey that [`verify_prekey`] checked: the only kind an initiator uses.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedPrekey<'a>(&'a Prekey);

/// Checks a peer's prekey: signed by its identity, and not expired at `now` (Unix seconds).
pub fn verify_prekey<'a>(
    prekey: &'a Prekey,
    identity: &IdentityBundle,
    now: i64,
) -> Result<VerifiedPrekey<'a>, HandshakeError> {
    prekey
        .verify(identity)
        .map_err(|_| HandshakeError::PrekeySignature)?;
    if now > prekey.expires {
        return Err(HandshakeError::PrekeyExpired);
    }
    Ok(VerifiedPrekey(prekey))
}

/// What the transcript binds of a prekey: the signed bytes and the signature.
fn encode_prekey(prekey: &Prekey, out: &mut Vec<u8>) {
    out.extend_from_slice(&Prekey::signed_bytes(
        prekey.id,
        prekey.expires,
        &prekey.dh,
        &prekey.kem,
    ));
    out.extend_from_slice(prekey.signature.as_bytes());
}

pub use smvs_crypto::HandshakeComponent as Component;

const INTERACTIVE_ORDER: [Component; 6] = [
    Component::InitiatorIdentityDh,
    Component::ResponderIdentityDh,
    Component::EphemeralDh,
    Component::ResponderIdentityKem,
    Component::InitiatorEphemeralKem,
    Component::InitiatorIdentityKem,
];

const PREKEY_ORDER: [Component; 5] = [
    Component::InitiatorIdentityPrekeyDh,
    Component::ResponderIdentityDh,
    Component::EphemeralPrekeyDh,
    Component::ResponderIdentityKem,
    Component::ResponderPrekeyKem,
];

/// One question for keyguard: use an identity (or prekey) secret once and return
/// `transcript_bound(component.label(), transcript, secret)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardAsk {
    /// X25519(identity secret, `peer`).
    IdentityDh {
        component: Component,
        peer: AgreementPublicKey,
    },
    /// X-Wing decapsulation of `ciphertext` under the identity KEM key.
    IdentityDecapsulate {
        component: Component,
        ciphertext: XWingCiphertext,
    },
    /// X25519(secret of prekey `prekey`, `peer`).
    PrekeyDh {
        component: Component,
        prekey: u32,
        peer: AgreementPublicKey,
    },
    /// X-Wing decapsulation of `ciphertext` under prekey `prekey`.
    PrekeyDecapsulate {
        component: Component,
        prekey: u32,
        ciphertext: XWingCiphertext,
    },
}

impl GuardAsk {
    /// The keyguard operation this asks for (keyguard checks that it serves the component).
    pub fn operation(&self) -> smvs_crypto::GuardOperation {
        use smvs_crypto::GuardOperation as Op;
        match self {
            GuardAsk::IdentityDh { .. } => Op::IdentityDh,
            GuardAsk::IdentityDecapsulate { .. } => Op::IdentityDecapsulate,
            GuardAsk::PrekeyDh { .. } => Op::PrekeyDh,
            GuardAsk::PrekeyDecapsulate { .. } => Op::PrekeyDecapsulate,
        }
    }

    /// The question's inputs: the prekey's id (0 for the identity operations), the peer's
    /// X25519 key (empty for the decapsulations), the X-Wing ciphertext (empty for the DHs).
    pub fn inputs(&self) -> (u32, &[u8], &[u8]) {
        match self {
            GuardAsk::IdentityDh { peer, .. } => (0, peer.as_bytes(), &[]),
            GuardAsk::IdentityDecapsulate { ciphertext, .. } => (0, &[], ciphertext.as_bytes()),
            GuardAsk::PrekeyDh { prekey, peer, .. } => (*prekey, peer.as_bytes(), &[]),
            GuardAsk::PrekeyDecapsulate {
                prekey, ciphertext, ..
            } => (*prekey, &[], ciphertext.as_bytes()),
        }
    }

    pub fn component(&self) -> Component {
        match self {
            GuardAsk::IdentityDh { component, .. }
            | GuardAsk::IdentityDecapsulate { component, .. }
            | GuardAsk::PrekeyDh { component, .. }
            | GuardAsk::PrekeyDecapsulate { component, .. } => *component,
        }
    }
}

/// The initiator's first ratchet keys (secret halves), announced in its handshake message.
#[derive(Clone)]
struct RatchetStart {
    dh: Zeroizing<[u8; 32]>,
    kem: Zeroizing<[u8; MLKEM_SEED_LEN]>,
}

impl RatchetStart {
    fn fresh(fresh: &mut dyn Fresh) -> RatchetStart {
        RatchetStart {
            dh: fresh::x25519_secret(fresh),
            kem: fresh::mlkem_seed(fresh),
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        out.extend_from_slice(
            AgreementKeyPair::from_secret_bytes(&self.dh[..])?
                .public()
                .as_bytes(),
        );
        out.extend_from_slice(MlKemKeyPair::from_seed(&self.kem[..])?.public().as_bytes());
        Ok(())
    }
}

/// What the ratchet starts from, once `SK` is known.
enum Start {
    Initiator(RatchetStart),
    Responder {
        dh: AgreementPublicKey,
        kem: MlKemPublicKey,
    },
}

/// A handshake waiting for keyguard's answers.
pub struct Pending {
    transcript: [u8; 32],
    asks: Vec<GuardAsk>,
    order: &'static [Component],
    local: Vec<(Component, Zeroizing<[u8; 32]>)>,
    start: Start,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("asks", &self.asks)
            .finish_non_exhaustive()
    }
}

/// A finished handshake: the ratchet, the transcript hash (the session's name), and the key
/// that authenticates delivery receipts in this session (`HKDF(TH, SK, "SMVS-v2 receipts")`).
pub struct Established {
    pub ratchet: Ratchet,
    pub transcript: [u8; 32],
    pub receipt_key: Zeroizing<[u8; 32]>,
}

impl Pending {
    /// The transcript hash keyguard binds its answers to.
    pub fn transcript(&self) -> &[u8; 32] {
        &self.transcript
    }

    /// What to ask keyguard, in order.
    pub fn asks(&self) -> &[GuardAsk] {
        &self.asks
    }

    /// Derives `SK` from keyguard's `answers` (one per ask, in order) and the local secrets,
    /// and starts the ratchet.
    pub fn finish(
        self,
        answers: Vec<Zeroizing<[u8; 32]>>,
        fresh: &mut dyn Fresh,
    ) -> Result<Established, HandshakeError> {
        if answers.len() != self.asks.len() {
            return Err(HandshakeError::Answers {
                asked: self.asks.len(),
                got: answers.len(),
            });
        }
        let mut parts: Vec<(Component, Zeroizing<[u8; 32]>)> = self.local;
        parts.extend(self.asks.iter().map(GuardAsk::component).zip(answers));
        let mut ikm = Zeroizing::new(vec![0xFFu8; 32]);
        for component in self.order {
            let (_, value) = parts
                .iter()
                .find(|(c, _)| c == component)
                .ok_or(HandshakeError::Malformed("a secret is missing"))?;
            ikm.extend_from_slice(&value[..]);
        }
        let okm = hkdf_sha256(&self.transcript, &ikm, SESSION_INFO, 32)?;
        let mut sk = Zeroizing::new([0u8; 32]);
        sk.copy_from_slice(&okm);
        let mut receipt_key = Zeroizing::new([0u8; 32]);
        receipt_key.copy_from_slice(&hkdf_sha256(&self.transcript, &sk[..], RECEIPT_INFO, 32)?);
        let ratchet = match self.start {
            Start::Initiator(start) => Ratchet::initiator(&sk, start.dh, start.kem)?,
            Start::Responder { dh, kem } => Ratchet::responder(&sk, dh, &kem, fresh)?,
        };
        Ok(Established {
            ratchet,
            transcript: self.transcript,
            receipt_key,
        })
    }
}

fn transcript(
    mode: u8,
    initiator: &Party,
    responder: &Party,
    rest: &[&[u8]],
) -> Result<[u8; 32], CryptoError> {
    let mut parties =
        Vec::with_capacity(2 * (33 + IdentityBundle::ENCODED_LEN + XWING_PUBLIC_KEY_LEN));
    initiator.encode_into(&mut parties);
    responder.encode_into(&mut parties);
    let mode = [mode];
    let mut parts: Vec<&[u8]> = vec![TRANSCRIPT_LABEL, &mode, &parties];
    parts.extend_from_slice(rest);
    let digest = blake2b(32, None, &parts)?;
    let mut out = [0u8; 32];
    out.copy_from_slice(&digest);
    Ok(out)
}

fn bind(
    component: Component,
    transcript: &[u8; 32],
    secret: &[u8],
) -> Result<(Component, Zeroizing<[u8; 32]>), CryptoError> {
    Ok((
        component,
        transcript_bound(component.label(), transcript, secret)?,
    ))
}

fn encapsulate(
    to: &XWingPublicKey,
    fresh: &mut dyn Fresh,
) -> Result<(XWingCiphertext, smvs_crypto::KemSharedSecret), CryptoError> {
    to.encapsulate_deterministic(&fresh::bytes::<XWING_ENC_RANDOMNESS_LEN>(fresh)[..])
}

/// The initiator of an interactive handshake, waiting for the response.
pub struct Initiator {
    me: Party,
    peer: Party,
    message: Vec<u8>,
    ephemeral: AgreementKeyPair,
    ephemeral_kem: XWingKeyPair,
    responder_identity_kem: smvs_crypto::KemSharedSecret,
    start: RatchetStart,
}

impl Initiator {
    /// Starts an interactive handshake from `me` to `peer`.
    pub fn start(
        me: Party,
        peer: Party,
        fresh: &mut dyn Fresh,
    ) -> Result<Initiator, HandshakeError> {
        let ephemeral = fresh::x25519(fresh)?;
        let ephemeral_kem = fresh::xwing(fresh)?;
        let (ciphertext, responder_identity_kem) = encapsulate(&peer.kem, fresh)?;
        let start = RatchetStart::fresh(fresh);
        let mut message = Vec::with_capacity(INTERACTIVE_INIT_LEN);
        message.push(INIT_INTERACTIVE);
        message.extend_from_slice(ephemeral.public().as_bytes());
        message.extend_from_slice(ephemeral_kem.public().as_bytes());
        message.extend_from_slice(ciphertext.as_bytes());
        start.encode_into(&mut message)?;
        Ok(Initiator {
            me,
            peer,
            message,
            ephemeral,
            ephemeral_kem,
            responder_identity_kem,
            start,
        })
    }

    /// The message to send to the responder.
    pub fn message(&self) -> &[u8] {
        &self.message
    }

    /// Reads the responder's answer; what is left needs keyguard. The initiator stays as it
    /// is, so a forged response that fails later does not spend it: the real one still can.
    pub fn on_response(&self, response: &[u8]) -> Result<Pending, HandshakeError> {
        if response.len() != RESPONSE_LEN || response[0] != RESPONSE {
            return Err(HandshakeError::Malformed("not a handshake response"));
        }
        let responder_ephemeral = AgreementPublicKey::from_bytes(&response[1..33])?;
        let to_ephemeral = XWingCiphertext::from_bytes(&response[33..33 + XWING_CIPHERTEXT_LEN])?;
        let to_identity = XWingCiphertext::from_bytes(&response[33 + XWING_CIPHERTEXT_LEN..])?;
        let th = transcript(
            INIT_INTERACTIVE,
            &self.me,
            &self.peer,
            &[&self.message, response],
        )?;
        let local = vec![
            bind(
                Component::ResponderIdentityDh,
                &th,
                self.ephemeral
                    .agree(&self.peer.identity.agreement_key)?
                    .expose(),
            )?,
            bind(
                Component::EphemeralDh,
                &th,
                self.ephemeral.agree(&responder_ephemeral)?.expose(),
            )?,
            bind(
                Component::ResponderIdentityKem,
                &th,
                self.responder_identity_kem.expose(),
            )?,
            bind(
                Component::InitiatorEphemeralKem,
                &th,
                self.ephemeral_kem.decapsulate(&to_ephemeral)?.expose(),
            )?,
        ];
        Ok(Pending {
            transcript: th,
            asks: vec![
                GuardAsk::IdentityDh {
                    component: Component::InitiatorIdentityDh,
                    peer: responder_ephemeral,
                },
                GuardAsk::IdentityDecapsulate {
                    component: Component::InitiatorIdentityKem,
                    ciphertext: to_identity,
                },
            ],
            order: &INTERACTIVE_ORDER,
            local,
            start: Start::Initiator(self.start.clone()),
        })
    }
}

/// Reads the initiator's ratchet keys from the end of a handshake message.
fn ratchet_start(bytes: &[u8]) -> Result<Start, HandshakeError> {
    if bytes.len() != RATCHET_START_LEN {
        return Err(HandshakeError::Malformed("ratchet keys"));
    }
    Ok(Start::Responder {
        dh: AgreementPublicKey::from_bytes(&bytes[..32])?,
        kem: MlKemPublicKey::from_bytes(&bytes[32..])?,
    })
}

/// The responder's side of an interactive handshake: the response to send back, and what
/// is left, which needs keyguard.
pub fn respond(
    me: &Party,
    peer: &Party,
    init: &[u8],
    fresh: &mut dyn Fresh,
) -> Result<(Vec<u8>, Pending), HandshakeError> {
    if init.len() != INTERACTIVE_INIT_LEN || init[0] != INIT_INTERACTIVE {
        return Err(HandshakeError::Malformed("not an interactive handshake"));
    }
    let mut at = 1;
    let mut take = |n: usize| {
        let part = &init[at..at + n];
        at += n;
        part
    };
    let initiator_ephemeral = AgreementPublicKey::from_bytes(take(32))?;
    let initiator_ephemeral_kem = XWingPublicKey::from_bytes(take(XWING_PUBLIC_KEY_LEN))?;
    let to_identity = XWingCiphertext::from_bytes(take(XWING_CIPHERTEXT_LEN))?;
    let start = ratchet_start(take(RATCHET_START_LEN))?;

    let ephemeral = fresh::x25519(fresh)?;
    let (to_their_ephemeral, ephemeral_kem) = encapsulate(&initiator_ephemeral_kem, fresh)?;
    let (to_their_identity, identity_kem) = encapsulate(&peer.kem, fresh)?;
    let mut response = Vec::with_capacity(RESPONSE_LEN);
    response.push(RESPONSE);
    response.extend_from_slice(ephemeral.public().as_bytes());
    response.extend_from_slice(to_their_ephemeral.as_bytes());
    response.extend_from_slice(to_their_identity.as_bytes());

    let th = transcript(INIT_INTERACTIVE, peer, me, &[init, &response])?;
    let local = vec![
        bind(
            Component::InitiatorIdentityDh,
            &th,
            ephemeral.agree(&peer.identity.agreement_key)?.expose(),
        )?,
        bind(
            Component::EphemeralDh,
            &th,
            ephemeral.agree(&initiator_ephemeral)?.expose(),
        )?,
        bind(
            Component::InitiatorEphemeralKem,
            &th,
            ephemeral_kem.expose(),
        )?,
        bind(Component::InitiatorIdentityKem, &th, identity_kem.expose())?,
    ];
    let pending = Pending {
        transcript: th,
        asks: vec![
            GuardAsk::IdentityDh {
                component: Component::ResponderIdentityDh,
                peer: initiator_ephemeral,
            },
            GuardAsk::IdentityDecapsulate {
                component: Component::ResponderIdentityKem,
                ciphertext: to_identity,
            },
        ],
        order: &INTERACTIVE_ORDER,
        local,
        start,
    };
    Ok((response, pending))
}

/// The initiator's side of a prekey handshake (the responder's host is away): the message to
/// send with the first ratchet message, and what is left, which needs keyguard.
///
/// The message can be replayed (as in PQXDH without one-time prekeys): the responder keeps the
/// transcripts of the prekey handshakes it accepted until the prekey is gone, and refuses a
/// repeat ([`Established::transcript`] is that name).
pub fn initiate_with_prekey(
    me: &Party,
    peer: &Party,
    prekey: VerifiedPrekey<'_>,
    fresh: &mut dyn Fresh,
) -> Result<(Vec<u8>, Pending), HandshakeError> {
    let prekey = prekey.0;
    let ephemeral = fresh::x25519(fresh)?;
    let (to_identity, identity_kem) = encapsulate(&peer.kem, fresh)?;
    let (to_prekey, prekey_kem) = encapsulate(&prekey.kem, fresh)?;
    let start = RatchetStart::fresh(fresh);
    let mut message = Vec::with_capacity(PREKEY_INIT_LEN);
    message.push(INIT_PREKEY);
    message.extend_from_slice(&prekey.id.to_be_bytes());
    message.extend_from_slice(ephemeral.public().as_bytes());
    message.extend_from_slice(to_identity.as_bytes());
    message.extend_from_slice(to_prekey.as_bytes());
    start.encode_into(&mut message)?;

    let mut prekey_bytes = Vec::new();
    encode_prekey(prekey, &mut prekey_bytes);
    let th = transcript(INIT_PREKEY, me, peer, &[&prekey_bytes, &message])?;
    let local = vec![
        bind(
            Component::ResponderIdentityDh,
            &th,
            ephemeral.agree(&peer.identity.agreement_key)?.expose(),
        )?,
        bind(
            Component::EphemeralPrekeyDh,
            &th,
            ephemeral.agree(&prekey.dh)?.expose(),
        )?,
        bind(Component::ResponderIdentityKem, &th, identity_kem.expose())?,
        bind(Component::ResponderPrekeyKem, &th, prekey_kem.expose())?,
    ];
    let pending = Pending {
        transcript: th,
        asks: vec![GuardAsk::IdentityDh {
            component: Component::InitiatorIdentityPrekeyDh,
            peer: prekey.dh,
        }],
        order: &PREKEY_ORDER,
        local,
        start: Start::Initiator(start),
    };
    Ok((message, pending))
}

/// The prekey id a prekey handshake names (to find the prekey before [`accept_prekey`]).
pub fn prekey_id(init: &[u8]) -> Result<u32, HandshakeError> {
    if init.len() != PREKEY_INIT_LEN || init[0] != INIT_PREKEY {
        return Err(HandshakeError::Malformed("not a prekey handshake"));
    }
    Ok(u32::from_be_bytes([init[1], init[2], init[3], init[4]]))
}

/// The responder's side of a prekey handshake: everything needs keyguard (the identity and
/// prekey secrets); `prekey` is our own prekey the message names.
pub fn accept_prekey(
    me: &Party,
    peer: &Party,
    prekey: &Prekey,
    init: &[u8],
) -> Result<Pending, HandshakeError> {
    if prekey_id(init)? != prekey.id {
        return Err(HandshakeError::Malformed(
            "the handshake names another prekey",
        ));
    }
    let mut at = 5;
    let mut take = |n: usize| {
        let part = &init[at..at + n];
        at += n;
        part
    };
    let initiator_ephemeral = AgreementPublicKey::from_bytes(take(32))?;
    let to_identity = XWingCiphertext::from_bytes(take(XWING_CIPHERTEXT_LEN))?;
    let to_prekey = XWingCiphertext::from_bytes(take(XWING_CIPHERTEXT_LEN))?;
    let start = ratchet_start(take(RATCHET_START_LEN))?;
    let mut prekey_bytes = Vec::new();
    encode_prekey(prekey, &mut prekey_bytes);
    let th = transcript(INIT_PREKEY, peer, me, &[&prekey_bytes, init])?;
    Ok(Pending {
        transcript: th,
        asks: vec![
            GuardAsk::PrekeyDh {
                component: Component::InitiatorIdentityPrekeyDh,
                prekey: prekey.id,
                peer: peer.identity.agreement_key,
            },
            GuardAsk::IdentityDh {
                component: Component::ResponderIdentityDh,
                peer: initiator_ephemeral,
            },
            GuardAsk::PrekeyDh {
                component: Component::EphemeralPrekeyDh,
                prekey: prekey.id,
                peer: initiator_ephemeral,
            },
            GuardAsk::IdentityDecapsulate {
                component: Component::ResponderIdentityKem,
                ciphertext: to_identity,
            },
            GuardAsk::PrekeyDecapsulate {
                component: Component::ResponderPrekeyKem,
                prekey: prekey.id,
                ciphertext: to_prekey,
            },
        ],
        order: &PREKEY_ORDER,
        local: Vec::new(),
        start,
    })
}
