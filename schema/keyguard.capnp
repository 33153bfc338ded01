@0xb8814310aff9be76;
# smvsd to smvs-keyguard, over a Unix socket that only smvsd's uid may use. No method ever
# returns a secret key.

using Common = import "common.capnp";

enum SignPurpose {
  transportCertificate @0;
  directoryRegistration @1;
  keyRotation @2;
  envelope @3;
  receipt @4;
}

interface Keyguard {
  publicKeys @0 () -> (identity :Common.IdentityBundle, exists :Bool);
  createIdentity @1 () -> (identity :Common.IdentityBundle);
  # Makes the identity keys if there are none yet; returns the existing ones otherwise.
  sign @2 (purpose :SignPurpose, message :Data) -> (signature :Data);
  openSealed @3 (sealed :Data) -> (plaintext :Data);
  deriveSharedKey @4 (peerAgreementKey :Data, salt :Data, info :Data) -> (key :Data);
  # HKDF-SHA256 over X25519(identity, peer): a 32-byte key, never the raw shared secret.
  deriveStorageKey @5 () -> (key :Data);
  # The key that wraps smvsd's per-conversation storage keys.
}
