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
  # All retired (numbers are never reused): keyguard signs nothing on request. Transport
  # certificates and registrations come from certifyTransport and signRegistration, rotations
  # from the operator; envelopes and receipts were never signed (v1 seals and authenticates
  # them with a key only the two identities derive), and session v2 is deniable: nothing a
  # host sends another carries the identity's signature.
  retiredTransportCertificate @0;
  retiredDirectoryRegistration @1;
  retiredKeyRotation @2;
  retiredEnvelope @3;
  retiredReceipt @4;
}

interface Keyguard {
  publicKeys @0 () -> (identity :Common.IdentityBundle, exists :Bool);
  createIdentity @1 () -> (identity :Common.IdentityBundle);
  # Makes the identity keys if there are none yet; returns the existing ones otherwise.
  retiredSign @2 (purpose :SignPurpose, message :Data) -> (signature :Data);
  # Retired with every purpose: keyguard answers "unimplemented".
  retiredOpenSealed @3 (sealed :Data) -> (plaintext :Data);
  # Retired: it opened any sealed box. Keyguard answers "unimplemented"; see openLoginToken.
  deriveSharedKey @4 (peerAgreementKey :Data, salt :Data, info :Data) -> (key :Data);
  # HKDF-SHA256 over X25519(identity, peer): a 32-byte key, never the raw shared secret.
  retiredDeriveStorageKey @5 () -> (key :Data);
  # Retired with storage epochs (it handed out one storage key for ever): keyguard answers
  # "unimplemented"; see storageKeys.
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

  sessionKeys @9 () -> (kem :Data, kemSignature :Data, prekey :Common.SignedPrekey,
                       previousPrekey :Common.SignedPrekey);
  # Session v2's public keys: the identity's X-Wing key (1216 bytes; made at first use) with
  # the identity's signature binding it (context identity-kem-key), and the current signed
  # prekey (made, and rotated when due, by keyguard itself), and the previous prekey while
  # keyguard still answers for it (absent otherwise; a responder needs its public half to
  # accept an Init that names it). Public values only.
  handshakeSecret @10 (operation :GuardOperation, component :HandshakeComponent,
                       transcript :Data, prekey :UInt32, peer :Data, ciphertext :Data)
      -> (value :Data);
  # Uses one identity or prekey secret once for a session v2 handshake and returns only
  # transcript_bound(label(component), transcript, secret): 32 bytes, never the raw X25519
  # output or KEM secret. `operation` must serve `component` (smvs_crypto::HandshakeComponent::
  # served_by); `peer` (32 bytes) is for the DH operations, `ciphertext` (1120) for the
  # decapsulations, `prekey` names the prekey for the prekey operations.
  rollbackCounter @11 (advance :Bool) -> (value :UInt64);
  # A counter kept in keyguard's key directory that only goes up: smvsd records it beside its
  # sessions, so a database restored from an older copy is recognised (its value is behind).
  storageKeys @12 () -> (derived :Data, current :StorageEpoch, previous :StorageEpoch);
  # smvsd's storage keys: `derived` (96 bytes: the conversation-tag, chain and tombstone keys,
  # which never change), the current epoch's key that seals its database's values, and the
  # previous epoch while it is not retired (absent otherwise).
  newStorageEpoch @13 () -> (current :StorageEpoch, previous :StorageEpoch);
  # Begins a new epoch with a fresh key; the current one becomes the previous. Refused while
  # a previous epoch is not retired.
  retireStorageEpoch @14 (epoch :UInt32) -> ();
  # Destroys the previous epoch's key (smvsd has re-sealed everything under the current one
  # and wiped its write-ahead log). The current epoch is never retired.
  signHostAddress @15 (username :Text, hostAddress :Text) -> (issuedAt :Int64, signature :Data);
  signDirectoryMove @16 (username :Text, fromDirectory :Data, toDirectory :Data, toAddress :Text)
      -> (issuedAt :Int64, signature :Data);
  # The identity's statement that `username` leaves the directory `fromDirectory` for
  # `toDirectory` at `toAddress`, as of keyguard's clock (context directory-move).
  # The identity's statement that `username`'s host is at `hostAddress` as of keyguard's clock
  # (context host-address, canonical::host_address_statement): what a host that moved pushes
  # to its contacts' hosts. It says where the host is, which the directory says to anyone
  # anyway; nothing about messages.
  signDhtRecord @17 (record :Data, seq :Int64) -> (signature :Data);
  # The identity's BEP 44 signature (smvs_crypto::dht_signable, salt smvs-host-record-v1) over
  # `record`, the host's own record for the DHT at sequence `seq`. Keyguard signs only a record
  # of its identity under the identity's address whose serial is `seq`
  # (smvs_directory::record::check_own_dht_record).
}

struct StorageEpoch {
  id @0 :UInt32;                # counts up from 1
  key @1 :Data;                 # 32 bytes (XChaCha20-Poly1305)
}

enum GuardOperation {
  identityDh @0;
  identityDecapsulate @1;
  prekeyDh @2;
  prekeyDecapsulate @3;
}

enum HandshakeComponent {
  initiatorIdentityDh @0;
  responderIdentityDh @1;
  ephemeralDh @2;
  responderIdentityKem @3;
  initiatorEphemeralKem @4;
  initiatorIdentityKem @5;
  initiatorIdentityPrekeyDh @6;
  ephemeralPrekeyDh @7;
  responderPrekeyKem @8;
}

