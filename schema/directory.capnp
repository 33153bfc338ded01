@0x950e4046f41a7041;
# The directory protocol (smvs-directory), spoken over the Noise transport on port 7420.
# Errors come back as Cap'n Proto exceptions whose description starts with a stable code:
# "invalid-username:", "taken:", "not-found:", "auth-failed:", "rate-limited:", "bad-signature:",
# "bad-request:", "stale:", "address-refused:", "internal:".

using Common = import "common.capnp";

interface Directory {
  register @0 (request :RegisterRequest) -> (record :Common.SignedRecord);
  # Creates a record. Only a username and keys are asked: no phone, no e-mail.

  lookup @1 (username :Text) -> (record :Common.SignedRecord, moved :Common.MovedStatement,
                                 head :Common.LogHead, proof :Data);
  # The user's signed record; or, for a user who moved to another directory, no record and
  # the identity's signed statement of where to (`moved`). `proof` (akd's LookupProof, in its
  # protobuf encoding) shows that the name's latest version in the key log at `head` is this
  # record's identity and serial, or this statement (docs/protocol.md, 3.7).

  challenge @2 (username :Text) -> (sealedToken :Data);
  # A fresh single-use token sealed to the user's X25519 identity key. Unknown users get a
  # sealed box of the same size (to a throw-away key), so the answer does not reveal existence.

  authenticate @3 (username :Text, token :Data) -> (session :Session);
  # Hand back the opened token (within 60 s, once) for a capability to act as that user.

  info @4 () -> (directoryKey :Data, serverVersion :Text, time :Int64);

  logConsistency @5 (from :UInt64) -> (head :Common.LogHead, roots :List(Data), proof :Data);
  # That the key log only grew since epoch `from`: the root hash of every epoch from `from` to
  # `head`'s (at most 64 later), and akd's AppendOnlyProof between them (protobuf; empty when
  # `from` is the latest). Hosts check the heads they saw, and those their contacts' hosts
  # sent them, against these roots: two heads that are not on one log are a split view
  # (docs/protocol.md, 3.7). Names nothing; anyone may ask.
}

struct RegisterRequest {
  username @0 :Text;
  identity @1 :Common.IdentityBundle;
  transport @2 :Common.TransportKey;
  hostAddress @3 :Text;
  timestamp @4 :Int64;          # Unix ms; requests more than 5 minutes off the directory's clock are refused.
  signature @5 :Data;           # identity signature (context directory-registration), see smvs-schema::canonical.
}

interface Session {
  # The rights of one authenticated user, for as long as the connection lasts.
  updateHostAddress @0 (hostAddress :Text) -> (record :Common.SignedRecord);
  rotateKeys @1 (request :RotateRequest) -> (record :Common.SignedRecord);
  deregister @2 (timestamp :Int64, serial :UInt64, signature :Data) -> ();
  # Deletes the record (a real delete, not a flag). The session is useless afterwards.
  # Logging in is not enough: `signature` is the identity's (context deregistration) over
  # smvs-schema::canonical::deregistration, naming this directory, the user, the record's
  # current serial and a timestamp within 5 minutes, so it cannot be replayed. Only the
  # operator's `smvs-keyguard deregister` makes it; keyguard's socket never does.
  renewTransport @3 (transport :Common.TransportKey) -> (record :Common.SignedRecord);
  # Replaces the transport key and its certificate (a later notAfter), certified by the
  # current identity. What a host does at start and before its certificate expires.
  publishSessionKeys @4 (keys :Common.SessionKeys) -> (record :Common.SignedRecord);
  # Publishes session v2's keys (docs/protocol.md, 3.4): refused ("bad-signature:") unless the
  # X-Wing key and the prekey are signed by the record's identity, and ("stale:") unless the
  # prekey's expiry is ahead and at most 30 days away. What a host does at start and whenever
  # keyguard rotates the prekey. A key rotation drops them (they were the old identity's).
  leave @5 (statement :Common.MovedStatement) -> ();
  # The user moves to another directory: `statement` must name this user and this directory
  # as the one left, be signed by the record's identity and dated within 5 minutes. The record
  # is deleted as by deregistration, and lookups of the name answer `moved` with the
  # statement until the name is registered again.
  keyHistory @6 () -> (head :Common.LogHead, proof :Data);
  # Every version of this user's name in the directory's key log (akd's HistoryProof, in its
  # protobuf encoding, for the complete history) at `head`. The owner's host checks that each
  # version since its last check carries its own identity: a key it never made, logged even
  # for a moment, shows here (docs/protocol.md, 3.7). Only the owner may ask: the history says
  # when a record changed.
}

struct RotateRequest {
  identity @0 :Common.IdentityBundle;   # the new identity
  transport @1 :Common.TransportKey;    # the new transport key, certified by the new identity
  timestamp @2 :Int64;
  signature @3 :Data;                   # the OLD identity's signature (context key-rotation).
  # Only the operator's `smvs-keyguard rotate` makes it; keyguard's socket never does.
}
