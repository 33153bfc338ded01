@0xb8814310aff9be76;
# smvsd to smvs-keyguard, over a Unix socket that only smvsd's uid may use. No method ever
# returns a secret key.
#
# The interface is purpose-bound: whoever holds the socket (smvsd, or in per-user mode any
# process of the user) gets only what a host needs. Keyguard builds the directory-critical
# statements itself from typed fields (a registration names keyguard's own identity; a
# transport certificate gets keyguard's own expiry), opens only directory login tokens, and
# never signs a key rotation or a deregistration: those are the operator's
# (`smvs-keyguard rotate` and `smvs-keyguard deregister`, which read the key files directly).

using Common = import "common.capnp";
using Directory = import "directory.capnp";

enum SignPurpose {
  # Only the last two are signed. The first three are retired (numbers are never reused):
  # keyguard refuses them; use certifyTransport and signRegistration, and the operator
  # commands for rotation.
  retiredTransportCertificate @0;
  retiredDirectoryRegistration @1;
  retiredKeyRotation @2;
  envelope @3;
  receipt @4;
}

interface Keyguard {
  publicKeys @0 () -> (identity :Common.IdentityBundle, exists :Bool);
  createIdentity @1 () -> (identity :Common.IdentityBundle);
  # Makes the identity keys if there are none yet; returns the existing ones otherwise.
  sign @2 (purpose :SignPurpose, message :Data) -> (signature :Data);
  # Envelopes and receipts between hosts only.
  retiredOpenSealed @3 (sealed :Data) -> (plaintext :Data);
  # Retired: it opened any sealed box. Keyguard answers "unimplemented"; see openLoginToken.
  deriveSharedKey @4 (peerAgreementKey :Data, salt :Data, info :Data) -> (key :Data);
  # HKDF-SHA256 over X25519(identity, peer): a 32-byte key, never the raw shared secret.
  deriveStorageKey @5 () -> (key :Data);
  # The key that wraps smvsd's per-conversation storage keys.
  certifyTransport @6 (username :Text, transportKey :Data) -> (transport :Common.TransportKey);
  # The identity's certificate for a host transport key, valid from now for keyguard's fixed
  # lifetime (the expiry is keyguard's choice, not the caller's).
  signRegistration @7 (directoryKey :Data, username :Text, transportKey :Data, hostAddress :Text)
      -> (request :Directory.RegisterRequest);
  # A complete registration of keyguard's own identity: identity, certified transport key,
  # keyguard's clock as the timestamp, and the signature.
  openLoginToken @8 (directoryKey :Data, username :Text, sealedToken :Data) -> (token :Data);
  # Opens a directory's login challenge and hands back only the 32-byte token, and only when
  # the plaintext is an unexpired auth token of that directory for that user.
}
