@0xe2c71bf1eb908ab3;
# Types shared by every SMVS protocol.
# Evolution rule for every schema here: fields and methods are only ever added, with the next
# free number; a number is never reused or renumbered.

struct IdentityBundle {
  # The public half of a user's identity.
  signingKey @0 :Data;          # Ed25519 public key, 32 bytes.
  agreementKey @1 :Data;        # X25519 public key, 32 bytes.
  agreementSignature @2 :Data;  # signingKey's signature (context identity-agreement-key) over agreementKey.
}

struct TransportKey {
  # The static X25519 key of a host's Noise transport, vouched for by the user's identity.
  key @0 :Data;                 # 32 bytes.
  certificate @1 :Data;         # identity signature (context transport-certificate), see smvs-schema::canonical.
  notAfter @2 :Int64;           # Unix ms after which the certificate is void; signed by `certificate`.
                                # Made by keyguard (now + 30 days); hosts renew it at start and when
                                # half of it is left. 0 (a record from before expiry existed) is void.
}

struct DirectoryRecord {
  # What a directory says about one user. Always carried inside a SignedRecord.
  formatVersion @0 :UInt16;     # 1
  username @1 :Text;
  identity @2 :IdentityBundle;
  transport @3 :TransportKey;
  hostAddress @4 :Text;         # "host:port"; the host may be a name, an address or a proxy/onion name.
  serial @5 :UInt64;            # grows with every change of this user's record, never goes back.
  issuedAt @6 :Int64;           # Unix time in milliseconds at which the directory signed this answer.
  directoryKey @7 :Data;        # Ed25519 public key of the directory that signed it.
  sessionKeys @8 :SessionKeys;  # session v2's published keys; absent: a v1-only user.
}

struct SignedPrekey {
  # A user's medium-term session v2 prekey (docs/protocol.md, 3.2), made by keyguard.
  id @0 :UInt32;                # never 0
  expires @1 :Int64;            # Unix seconds; an initiator no longer uses it after this
  dh @2 :Data;                  # X25519 public key (32 bytes)
  kem @3 :Data;                 # X-Wing public key (1216 bytes)
  signature @4 :Data;           # the identity's Ed25519 signature, context session-prekey,
                                # over id || expires || dh || kem (big-endian integers)
}

struct SessionKeys {
  # What a user publishes for session v2 (docs/protocol.md, 3.4). The directory checks both
  # signatures against the record's identity before publishing; hosts check them again.
  kem @0 :Data;                 # the identity's X-Wing key, 1216 bytes
  kemSignature @1 :Data;        # identity signature (context identity-kem-key) over kem
  prekey @2 :SignedPrekey;      # the current signed prekey
}

struct MovedStatement {
  # A user left one directory for another: the identity's signature (context directory-move,
  # smvs-schema::canonical::directory_move) over the name, both directories' keys, the new
  # one's address and the time. The old directory serves it in place of the user's record.
  username @0 :Text;
  fromDirectory @1 :Data;       # the key of the directory left
  toDirectory @2 :Data;         # the key of the directory moved to
  toAddress @3 :Text;           # where that one is (HOST:PORT)
  issuedAt @4 :Int64;           # Unix ms
  signature @5 :Data;
}

struct LogHead {
  # A directory's signature (context log-head, smvs-schema::canonical::log_head) over its key
  # log at one epoch: the root hash of its Auditable Key Directory tree, and the VRF key that
  # hides names in it (docs/protocol.md, 3.7).
  directory @0 :Data;           # the directory's key
  epoch @1 :UInt64;
  rootHash @2 :Data;            # 32 bytes
  vrfKey @3 :Data;              # 32 bytes
  signature @4 :Data;
}

struct SignedRecord {
  record @0 :Data;              # A DirectoryRecord serialized as a single-segment Cap'n Proto message.
  signature @1 :Data;           # The directory's signature (context directory-record) over `record`.
}
