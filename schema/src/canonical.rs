//! The exact bytes that get signed. Each is a fixed sequence of fields, variable-length fields
//! prefixed with their length as a big-endian u16, so two different requests can never encode
//! to the same bytes. The signing context (see `smvs_crypto::SignContext`) is added by the
//! crypto crate on top.

use smvs_crypto::{AgreementPublicKey, IdentityBundle, SigningPublicKey};

use crate::types::{HostAddress, Username};

struct Canon(Vec<u8>);

impl Canon {
    fn new() -> Self {
        Canon(Vec::with_capacity(256))
    }
    fn fixed(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn var(mut self, bytes: &[u8]) -> Self {
        // Every variable field here is a name or an address, far below 64 KiB.
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(&bytes[..usize::from(len)]);
        self
    }
    fn int(self, value: i64) -> Self {
        self.fixed(&value.to_be_bytes())
    }
}

/// How long a transport certificate is valid: keyguard makes every one valid for exactly this
/// long from its own clock, and a directory refuses one that claims longer.
///
/// Why 30 days: the certificate is what lets a transport key speak for the user, so its
/// lifetime bounds how long a key that leaked (a copied state directory, a host retired without
/// deregistering) stays usable after its owner moved on. A host renews at every start and when
/// half the lifetime is left, so a running host keeps 15 days of slack for a directory or
/// keyguard outage; a host that was off for longer than 30 days renews when it starts, before
/// anyone could reach it anyway. Much shorter would make a week-long directory outage take
/// every host off the map; much longer would make the expiry meaningless.
pub const TRANSPORT_CERTIFICATE_LIFETIME_MS: i64 = 30 * 24 * 3600 * 1000;

/// What an identity signs to vouch for its host's transport key until `not_after` (Unix ms).
pub fn transport_certificate(
    username: &Username,
    transport_key: &AgreementPublicKey,
    not_after: i64,
) -> Vec<u8> {
    Canon::new()
        .fixed(b"smvs-transport-certificate-v2")
        .var(username.as_str().as_bytes())
        .fixed(transport_key.as_bytes())
        .int(not_after)
        .0
}

/// What an identity signs (context host-address) to state that `username`'s host is at
/// `address`, as of `issued_at` (Unix ms): a newer statement replaces an older one.
pub fn host_address_statement(
    username: &Username,
    address: &HostAddress,
    issued_at: i64,
) -> Vec<u8> {
    Canon::new()
        .fixed(b"smvs-host-address-v1")
        .var(username.as_str().as_bytes())
        .var(address.as_str().as_bytes())
        .int(issued_at)
        .0
}

/// What an identity signs (context directory-move) when `username` leaves the directory whose
/// key is `from` for the one whose key is `to`, reached at `to_address`, at `issued_at` (Unix
/// ms): the old directory serves it instead of a record from then on.
pub fn directory_move(
    username: &Username,
    from: &SigningPublicKey,
    to: &SigningPublicKey,
    to_address: &str,
    issued_at: i64,
) -> Vec<u8> {
    Canon::new()
        .fixed(b"smvs-directory-move-v1")
        .var(username.as_str().as_bytes())
        .fixed(from.as_bytes())
        .fixed(to.as_bytes())
        .var(to_address.as_bytes())
        .int(issued_at)
        .0
}

/// What a directory signs (context log-head) to state that its key log stood at `root_hash`
/// at `epoch`, with names hidden by the VRF key `vrf_key`.
pub fn log_head(
    directory: &SigningPublicKey,
    epoch: u64,
    root_hash: &[u8; 32],
    vrf_key: &[u8; 32],
) -> Vec<u8> {
    Canon::new()
        .fixed(b"smvs-log-head-v1")
        .fixed(directory.as_bytes())
        .fixed(&epoch.to_be_bytes())
        .fixed(root_hash)
        .fixed(vrf_key)
        .0
}

/// What an identity signs (context deregistration) to have `directory_key`'s directory delete
/// `username`'s record, as it stands at `serial`, at `timestamp` (Unix ms): a signature for one
/// directory, one record and one moment, so it can be neither moved nor replayed.
pub fn deregistration(
    directory_key: &SigningPublicKey,
    username: &Username,
    serial: u64,
    timestamp: i64,
) -> Vec<u8> {
    Canon::new()
        .fixed(b"smvs-deregistration-v1")
        .fixed(directory_key.as_bytes())
        .var(username.as_str().as_bytes())
        .fixed(&serial.to_be_bytes())
        .int(timestamp)
        .0
}

/// The fields of a registration or a key rotation that the (old) identity signs.
pub struct RegistrationFields<'a> {
    pub directory_key: &'a SigningPublicKey,
    pub username: &'a Username,
    pub identity: &'a IdentityBundle,
    pub transport_key: &'a AgreementPublicKey,
    pub transport_certificate: &'a [u8],
    pub transport_not_after: i64,
    pub host_address: Option<&'a HostAddress>,
    pub timestamp: i64,
}

impl RegistrationFields<'_> {
    pub fn to_bytes(&self) -> Vec<u8> {
        Canon::new()
            .fixed(self.directory_key.as_bytes())
            .var(self.username.as_str().as_bytes())
            .fixed(&self.identity.to_bytes())
            .fixed(self.transport_key.as_bytes())
            .var(self.transport_certificate)
            .int(self.transport_not_after)
            .var(
                self.host_address
                    .map(|h| h.as_str())
                    .unwrap_or("")
                    .as_bytes(),
            )
            .int(self.timestamp)
            .0
    }
}

/// The plaintext of a directory's authentication token, sealed to the user's X25519 key. It names
/// the directory and the user, so a token can only be spent where and by whom it was meant.
pub fn auth_token_plaintext(
    directory_key: &SigningPublicKey,
    username: &Username,
    expires_at: i64,
    token: &[u8; 32],
) -> Vec<u8> {
    Canon::new()
        .fixed(b"smvs-auth-token-v1")
        .fixed(directory_key.as_bytes())
        .var(username.as_str().as_bytes())
        .int(expires_at)
        .fixed(token)
        .0
}

/// Splits a token plaintext made by [`auth_token_plaintext`], checking that it names this
/// directory and this user. Returns `(expires_at, token)`.
pub fn parse_auth_token(
    plaintext: &[u8],
    directory_key: &SigningPublicKey,
    username: &Username,
) -> Option<(i64, [u8; 32])> {
    let name = username.as_str().as_bytes();
    let prefix = Canon::new()
        .fixed(b"smvs-auth-token-v1")
        .fixed(directory_key.as_bytes())
        .var(name)
        .0;
    let rest = plaintext.strip_prefix(prefix.as_slice())?;
    if rest.len() != 8 + 32 {
        return None;
    }
    let expires_at = i64::from_be_bytes(rest[..8].try_into().ok()?);
    let token: [u8; 32] = rest[8..].try_into().ok()?;
    Some((expires_at, token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use smvs_crypto::SigningKeyPair;

    #[test]
    fn auth_token_round_trip_and_binding() {
        let dir = SigningKeyPair::generate().unwrap().public();
        let other_dir = SigningKeyPair::generate().unwrap().public();
        let alice = Username::parse("alice").unwrap();
        let bob = Username::parse("bob").unwrap();
        let token = [7u8; 32];
        let pt = auth_token_plaintext(&dir, &alice, 42, &token);
        assert_eq!(parse_auth_token(&pt, &dir, &alice), Some((42, token)));
        assert_eq!(parse_auth_token(&pt, &other_dir, &alice), None);
        assert_eq!(parse_auth_token(&pt, &dir, &bob), None);
        assert_eq!(parse_auth_token(&pt[..pt.len() - 1], &dir, &alice), None);
    }

    #[test]
    fn variable_fields_cannot_be_shifted() {
        let u1 = Username::parse("abc").unwrap();
        let u2 = Username::parse("abcd").unwrap();
        let key = smvs_crypto::AgreementKeyPair::generate().unwrap().public();
        assert_ne!(
            transport_certificate(&u1, &key, 1),
            transport_certificate(&u2, &key, 1)
        );
    }
}
