//! The Noise state machine behind every SMVS TCP link (host↔directory, host↔host).
//!
//! Pattern `Noise_XX_25519_ChaChaPoly_BLAKE2s` (from `snow`): both sides send their static
//! X25519 key encrypted, so after three handshake messages each knows the other's static key and
//! the layer above decides whether to accept it (a host pins its directory's key; host links
//! compare with the directory record). This module is sans-IO: it turns bytes into bytes, and
//! `smvs-transport` does the framing and the socket.

use std::sync::Arc;

use snow::params::NoiseParams;
use snow::{Builder, HandshakeState, StatelessTransportState};

use crate::keys::{AgreementKeyPair, AgreementPublicKey};
use crate::CryptoError;

pub const NOISE_PATTERN: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";
/// The largest Noise message (handshake or transport), fixed by the Noise specification.
pub const MAX_MESSAGE_LEN: usize = 65535;
pub const TAG_LEN: usize = 16;
/// The largest plaintext that fits in one transport message.
pub const MAX_PAYLOAD_LEN: usize = MAX_MESSAGE_LEN - TAG_LEN;

fn noise_err(e: snow::Error) -> CryptoError {
    CryptoError::Noise(e.to_string())
}

/// A handshake in progress.
pub struct Handshake {
    state: HandshakeState,
}

impl Handshake {
    fn build(
        local: &AgreementKeyPair,
        prologue: &[u8],
        initiator: bool,
    ) -> Result<Self, CryptoError> {
        let params: NoiseParams = NOISE_PATTERN.parse().map_err(noise_err)?;
        let builder = Builder::new(params)
            .local_private_key(local.expose_secret())
            .map_err(noise_err)?
            .prologue(prologue)
            .map_err(noise_err)?;
        let state = if initiator {
            builder.build_initiator()
        } else {
            builder.build_responder()
        }
        .map_err(noise_err)?;
        Ok(Handshake { state })
    }

    /// The connecting side. `prologue` must be the same on both sides (it binds the protocol
    /// name and version into the handshake hash).
    pub fn initiator(local: &AgreementKeyPair, prologue: &[u8]) -> Result<Self, CryptoError> {
        Self::build(local, prologue, true)
    }

    /// The accepting side.
    pub fn responder(local: &AgreementKeyPair, prologue: &[u8]) -> Result<Self, CryptoError> {
        Self::build(local, prologue, false)
    }

    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    pub fn is_my_turn(&self) -> bool {
        self.state.is_my_turn()
    }

    /// The peer's static key, once a handshake message has carried it (for the initiator of
    /// XX: after the second message, before it sends its own in the third).
    pub fn remote_static(&self) -> Option<AgreementPublicKey> {
        self.state
            .get_remote_static()
            .and_then(|k| AgreementPublicKey::from_bytes(k).ok())
    }

    /// Produces the next handshake message (with an empty payload).
    pub fn write_message(&mut self) -> Result<Vec<u8>, CryptoError> {
        let mut buf = vec![0u8; MAX_MESSAGE_LEN];
        let n = self.state.write_message(&[], &mut buf).map_err(noise_err)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Consumes the peer's handshake message; its payload must be empty.
    pub fn read_message(&mut self, message: &[u8]) -> Result<(), CryptoError> {
        let mut buf = vec![0u8; MAX_MESSAGE_LEN];
        let n = self
            .state
            .read_message(message, &mut buf)
            .map_err(noise_err)?;
        if n != 0 {
            return Err(CryptoError::Noise("unexpected handshake payload".into()));
        }
        Ok(())
    }

    /// Ends the handshake: the peer's static key and the two directions of the channel.
    pub fn into_transport(
        self,
    ) -> Result<(AgreementPublicKey, NoiseSender, NoiseReceiver), CryptoError> {
        let remote = self
            .state
            .get_remote_static()
            .ok_or_else(|| CryptoError::Noise("peer sent no static key".into()))
            .and_then(AgreementPublicKey::from_bytes)?;
        let state = Arc::new(
            self.state
                .into_stateless_transport_mode()
                .map_err(noise_err)?,
        );
        Ok((
            remote,
            NoiseSender {
                state: state.clone(),
                nonce: 0,
            },
            NoiseReceiver { state, nonce: 0 },
        ))
    }
}

/// The sending direction of an established channel. Nonces count up from zero, so messages must
/// be delivered in order (TCP does that) and a replayed or dropped message fails to decrypt.
pub struct NoiseSender {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

impl NoiseSender {
    /// Encrypts `plaintext` (at most [`MAX_PAYLOAD_LEN`] bytes) and appends it to `out`.
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let start = out.len();
        out.resize(start + plaintext.len() + TAG_LEN, 0);
        let n = self
            .state
            .write_message(self.nonce, plaintext, &mut out[start..])
            .map_err(noise_err)?;
        out.truncate(start + n);
        self.nonce += 1;
        Ok(())
    }
}

/// The receiving direction of an established channel.
pub struct NoiseReceiver {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

impl NoiseReceiver {
    /// Decrypts one transport message and appends its plaintext to `out`.
    pub fn decrypt(&mut self, message: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        if message.len() < TAG_LEN {
            return Err(CryptoError::Decrypt);
        }
        let start = out.len();
        out.resize(start + message.len() - TAG_LEN, 0);
        match self
            .state
            .read_message(self.nonce, message, &mut out[start..])
        {
            Ok(n) => {
                out.truncate(start + n);
                self.nonce += 1;
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(CryptoError::Decrypt)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Ends = (AgreementPublicKey, NoiseSender, NoiseReceiver);

    fn handshake(
        a: &AgreementKeyPair,
        b: &AgreementKeyPair,
        pa: &[u8],
        pb: &[u8],
    ) -> Result<(Ends, Ends), CryptoError> {
        let mut i = Handshake::initiator(a, pa)?;
        let mut r = Handshake::responder(b, pb)?;
        while !(i.is_finished() && r.is_finished()) {
            if i.is_my_turn() {
                let m = i.write_message()?;
                r.read_message(&m)?;
            } else {
                let m = r.write_message()?;
                i.read_message(&m)?;
            }
        }
        Ok((i.into_transport()?, r.into_transport()?))
    }

    #[test]
    fn xx_handshake_authenticates_both_statics() {
        let a = AgreementKeyPair::generate().unwrap();
        let b = AgreementKeyPair::generate().unwrap();
        let ((b_seen, mut a_tx, _a_rx), (a_seen, _b_tx, mut b_rx)) =
            handshake(&a, &b, b"p", b"p").unwrap();
        assert_eq!(b_seen, b.public());
        assert_eq!(a_seen, a.public());
        let mut wire = Vec::new();
        a_tx.encrypt(b"one", &mut wire).unwrap();
        let first = wire.clone();
        let mut plain = Vec::new();
        b_rx.decrypt(&first, &mut plain).unwrap();
        assert_eq!(plain, b"one");
        // A replay of the same message fails: the receiver's nonce has moved on.
        assert!(b_rx.decrypt(&first, &mut plain).is_err());
    }

    #[test]
    fn different_prologues_do_not_complete() {
        let a = AgreementKeyPair::generate().unwrap();
        let b = AgreementKeyPair::generate().unwrap();
        assert!(handshake(&a, &b, b"smvs-1", b"smvs-2").is_err());
    }
}
