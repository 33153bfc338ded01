//! Pairing a device with a short code: SPAKE2 (RustCrypto's `spake2`, Ed25519 group), bound to
//! the Noise link it runs over.
//!
//! The person reads a code off one device and types it on the other. Both sides run SPAKE2
//! with the code's secret part as the password: an eavesdropper learns nothing from the two
//! messages, and an active attacker who does not know the code gets exactly one guess per run
//! (the host burns a code after a few runs that did not confirm). The SPAKE2 key is then used
//! only to make two confirmation tags, keyed BLAKE2b over a label, the code's public part and
//! both Noise static keys of the link. A man in the middle must end the Noise link on each
//! side with a key of its own, so its tags name other keys than the ones the two ends see, and
//! cannot be made without the code.
//!
//! ```text
//!  device (A)                                    host (B)
//!  start(code) ── nameplate, msg_a ────────────►  start(code), finish(msg_a) → K
//!  finish(msg_b) → K  ◄── msg_b, host tag ──────
//!  check host tag
//!               ── device tag ─────────────────►  check device tag: the device is paired
//! ```

use spake2::{Ed25519Group, Identity, Password, Spake2};
use zeroize::Zeroizing;

use crate::{blake2b, constant_time_eq, AgreementPublicKey, CryptoError};

/// Which end of a pairing this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairingRole {
    /// The new device (SPAKE2 side A).
    Device,
    /// The host (SPAKE2 side B).
    Host,
}

const ID_DEVICE: &[u8] = b"smvs-pairing-device-v1";
const ID_HOST: &[u8] = b"smvs-pairing-host-v1";

/// One side of a pairing run, waiting for the other side's message.
pub struct Pairing {
    state: Spake2<Ed25519Group>,
    nameplate: Vec<u8>,
}

/// The key both sides agree on when they used the same code; it makes the confirmation tags.
pub struct PairingKey {
    key: Zeroizing<Vec<u8>>,
    nameplate: Vec<u8>,
}

impl Pairing {
    /// Starts a run with the code's secret part; `nameplate` (the code's public part, which
    /// says which pending pairing this is) is bound into the run. Returns the message to send.
    pub fn start(role: PairingRole, nameplate: &[u8], secret: &[u8]) -> (Pairing, Vec<u8>) {
        // The nameplate goes into the password too: a code's secret only works with its own
        // nameplate.
        let mut password = Zeroizing::new(Vec::with_capacity(nameplate.len() + secret.len() + 1));
        password.extend_from_slice(nameplate);
        password.push(b'/');
        password.extend_from_slice(secret);
        let password = Password::new(password.as_slice());
        let (ida, idb) = (Identity::new(ID_DEVICE), Identity::new(ID_HOST));
        let (state, message) = match role {
            PairingRole::Device => Spake2::<Ed25519Group>::start_a(&password, &ida, &idb),
            PairingRole::Host => Spake2::<Ed25519Group>::start_b(&password, &ida, &idb),
        };
        (
            Pairing {
                state,
                nameplate: nameplate.to_vec(),
            },
            message,
        )
    }

    /// Takes the other side's message. A malformed message is an error; a message made with
    /// another code is not (the keys just differ, which the tags then show).
    pub fn finish(self, theirs: &[u8]) -> Result<PairingKey, CryptoError> {
        let key = self
            .state
            .finish(theirs)
            .map_err(|_| CryptoError::Pairing("the other side's pairing message is malformed"))?;
        Ok(PairingKey {
            key: Zeroizing::new(key),
            nameplate: self.nameplate,
        })
    }
}

impl PairingKey {
    /// The tag `role` sends to prove it used the same code on this link, whose Noise static
    /// keys are `host` and `device`.
    pub fn tag(
        &self,
        role: PairingRole,
        host: &AgreementPublicKey,
        device: &AgreementPublicKey,
    ) -> Result<Vec<u8>, CryptoError> {
        let label: &[u8] = match role {
            PairingRole::Device => b"smvs pairing: device confirms",
            PairingRole::Host => b"smvs pairing: host confirms",
        };
        blake2b(
            32,
            Some(&self.key),
            &[
                label,
                &(self.nameplate.len() as u64).to_be_bytes(),
                &self.nameplate,
                host.as_bytes(),
                device.as_bytes(),
            ],
        )
    }

    /// Checks the tag the other side (`from`) sent.
    pub fn check(
        &self,
        from: PairingRole,
        host: &AgreementPublicKey,
        device: &AgreementPublicKey,
        tag: &[u8],
    ) -> Result<(), CryptoError> {
        let expected = self.tag(from, host, device)?;
        if constant_time_eq(&expected, tag) {
            Ok(())
        } else {
            Err(CryptoError::Pairing(
                "the pairing did not confirm: the code is wrong, or someone is in between",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AgreementKeyPair;

    fn run(device_code: &[u8], host_code: &[u8]) -> Result<(), CryptoError> {
        let host = AgreementKeyPair::generate()?.public();
        let device = AgreementKeyPair::generate()?.public();
        let (d, to_host) = Pairing::start(PairingRole::Device, b"7", device_code);
        let (h, to_device) = Pairing::start(PairingRole::Host, b"7", host_code);
        let host_key = h.finish(&to_host)?;
        let device_key = d.finish(&to_device)?;
        let host_tag = host_key.tag(PairingRole::Host, &host, &device)?;
        device_key.check(PairingRole::Host, &host, &device, &host_tag)?;
        let device_tag = device_key.tag(PairingRole::Device, &host, &device)?;
        host_key.check(PairingRole::Device, &host, &device, &device_tag)?;
        // A tag for other link keys (a man in the middle's) does not check out.
        let other = AgreementKeyPair::generate()?.public();
        assert!(host_key
            .check(PairingRole::Device, &host, &other, &device_tag)
            .is_err());
        // Nor does a side's own tag reflected back.
        assert!(device_key
            .check(PairingRole::Host, &host, &device, &device_tag)
            .is_err());
        Ok(())
    }

    #[test]
    fn the_same_code_pairs_and_another_code_does_not() {
        run(b"4821-0935", b"4821-0935").unwrap_or_else(|e| panic!("{e}"));
        assert!(run(b"4821-0935", b"4821-0936").is_err());
        let (d, _) = Pairing::start(PairingRole::Device, b"7", b"x");
        assert!(d.finish(b"garbage").is_err());
    }
}
