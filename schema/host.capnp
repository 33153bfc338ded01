@0xa2e6cb3c5932ebdd;
# Host to host (smvsd to smvsd), spoken over the Noise transport on port 7421. The connecting
# host's Noise static key must equal the transport key in the sender's directory record.
# A refusal and a "try later" are typed answers (DeliveryOutcome); a Cap'n Proto exception means
# the link itself failed and the envelope is resent on the next link.

using Common = import "common.capnp";

interface HostLink {
  deliver @0 (envelope :Envelope) -> (outcome :DeliveryOutcome);
  # Returns a receipt only once the receiving host has stored the envelope durably (or already
  # had it).
  sessionKeys @1 () -> (kem :Data, kemSignature :Data);
  # Session v2: this host's user's identity X-Wing key (1216 bytes) and the identity's
  # signature over it (context identity-kem-key). Public; the caller checks the signature
  # against the identity it pinned. A host without session v2 answers "unimplemented".
  handshake @2 (sender :Text, init :Data, kem :Data, kemSignature :Data)
      -> (outcome :HandshakeOutcome);
  # Session v2's interactive handshake from `sender`'s host (docs/protocol.md, section 4):
  # `init` is the initiator's first message, `kem` and `kemSignature` the sender's identity
  # X-Wing key and its signature. The link's key must be the sender's host key, as for
  # deliver. On success the responder has replaced any session it had with the sender.
  deliverBatch @3 (envelopes :List(Envelope)) -> (outcomes :List(DeliveryOutcome));
  # Several envelopes in one call, at most 256: `outcomes[i]` answers `envelopes[i]` exactly
  # as `deliver` would have answered it alone (each is stored, refused or "later" on its own).
  # A sender with a backlog uses it; a host that answers "unimplemented" (one from before it
  # existed) is sent `deliver` for each envelope instead.
  announceAddress @4 (username :Text, hostAddress :Text, issuedAt :Int64, signature :Data) -> ();
  # `username`'s host is at `hostAddress` now: its identity's signature (context host-address,
  # canonical::host_address_statement) as of `issuedAt` (Unix ms). Sent by a host that moved
  # to each of its contacts' hosts, on a link whose key is its transport key; the receiver
  # checks both against what it pinned and connects there from then on, with no directory
  # look-up. Refused (an exception) when it does not check out or is not newer.
}

struct HandshakeOutcome {
  union {
    response @0 :Data;          # the responder's message
    refused @1 :Text;           # never (blocked, unknown, malformed, session v2 off here)
    later @2 :Text;             # not now (a handshake of ours with the sender is under way, …)
  }
}

struct DeliveryOutcome {
  union {
    receipt @0 :Receipt;        # stored: the sender marks it delivered
    refused @1 :Text;           # never retry this envelope (why, for the sender's log)
    later @2 :Text;             # not now (directory unreachable, busy, key change pending, …);
                                # "session-reset: …" (session v2): the recipient has no session
                                # of this id, or the envelope does not open in it; the sender
                                # drops that session, makes a new one and sends again
  }
}

struct Envelope {
  formatVersion @0 :UInt16;     # 1
  id @1 :Data;                  # 16-byte random message id, unique per sender.
  sender @2 :Text;
  recipient @3 :Text;
  sessionVersion @4 :UInt16;    # which session-layer construction sealed `sealed`.
  sealed @5 :Data;              # session-layer ciphertext of an InnerMessage, padded to a size bucket.
  signature @6 :Data;           # reserved; always empty (no session version signs).
  sessionId @7 :Data;           # session v2: the first 16 bytes of the session's transcript
                                # hash, so that an envelope sealed under a session the
                                # recipient has replaced is told apart from damage.
  prekeyInit @8 :PrekeyInit;    # session v2, prekey mode: set on every envelope of a session
                                # the sender made from the recipient's published prekey, until
                                # the sender has opened a message of the recipient's in it.
}

struct PrekeyInit {
  # A prekey-mode handshake Init (docs/protocol.md, 4.1) and the sender's identity X-Wing key
  # with its signature (context identity-kem-key), checked against the pinned identity.
  init @0 :Data;
  kem @1 :Data;
  kemSignature @2 :Data;
}

struct Receipt {
  id @0 :Data;                  # the envelope's id
  recipient @1 :Text;
  storedAt @2 :Int64;           # Unix ms
  signature @3 :Data;           # session-layer authenticator over (id, recipient, storedAt).
}

struct InnerMessage {
  # What the session layer seals. Only the two hosts ever see it in clear.
  id @0 :Data;
  from @1 :Text;
  to @2 :Text;
  time @3 :Int64;
  prevHash @4 :Data;            # hash of the sender's previous message in this conversation (empty: first)
  union {
    text @5 :Text;
    delete @6 :DeleteRequest;
    expire @7 :UInt32;          # disappearing-messages setting, seconds (0: off)
    call @8 :CallSignal;        # call signalling: handed to the call manager, never stored
    introduction @9 :Introduction;  # the sender vouches for a third user's directory record
  }
  logHeads @10 :List(Common.LogHead);
  # The last key log head the sender's host checked at each of its directories (the first
  # message of a batch carries them): the receiver compares them with its own, so a directory
  # that shows the two a different log is caught (docs/protocol.md, 3.7). At most 8 are read.
  struct Introduction {
    # A directory's signed record of another user, as the sender pinned it (`smvsctl introduce
    # USER TO`): the receiver may pin that user from it, "introduced by" the sender, without
    # asking any directory of its own.
    record @0 :Data;            # the record's bytes, as the directory signed them
    signature @1 :Data;         # the directory's signature over them
    directoryKey @2 :Data;      # the directory's key (also named inside the record)
  }
  struct DeleteRequest {
    ids @0 :List(Data);         # empty: the whole conversation
  }
}

struct CallSignal {
  # One step of a call's set-up or end, from one host to the other inside a sealed envelope
  # (so it is authenticated as coming from the sender's identity and read by no one else).
  callId @0 :Data;              # 16 random bytes chosen by the caller
  kind @1 :Kind;
  media @2 :Media;              # set on offer and answer
  enum Kind {
    offer @0;                   # caller -> callee: ring
    answer @1;                  # callee -> caller: picked up
    decline @2;                 # callee -> caller: refused by the user
    busy @3;                    # callee -> caller: already in a call
    hangup @4;                  # either way: the call is over
    noAnswer @5;                # caller -> callee: rang for 30 s without an answer
  }
  struct Media {
    publicKey @0 :Data;         # the endpoint's fresh X25519 key for this call (32 bytes)
    address @1 :Text;           # IP:port where the endpoint receives its media (UDP); empty
                                # when the sender's side relays only and hides it
    video @2 :Bool;             # it sends video
    audio @3 :Bool;             # it sends audio
    reflexive @4 :Text;         # IP:port the endpoint's NAT shows the world (its host answered
                                # by STUN); empty when none or hidden
    relay @5 :Text;             # IP:port of the sender's host's call port, which relays this
                                # call's sealed media; empty when it offers no relay
    relayAlloc @6 :Data;        # the relay allocation there (8 bytes): what to name in the
                                # relay frames sent to it
    relayOnly @7 :Bool;         # the sender's side relays only (its addresses are hidden): no
                                # need to send it yours
    kem @8 :Data;               # the post-quantum half of the call's keys (X-Wing): in an offer
                                # the caller's fresh public key (1216 bytes), in an answer the
                                # callee's encapsulation to it (1120 bytes)
  }
}
