@0xc15a29f419453a3e;
# The local API of smvsd, served on its Unix socket to devices (smvsctl, agents).
# Errors are Cap'n Proto exceptions whose text starts with a stable code:
# "bad-request:", "not-registered:", "already-registered:", "unknown-user:", "key-changed:",
# "blocked:", "too-large:", "directory:", "keyguard:", "not-found:", "internal:".

struct Message {
  id @0 :Data;                  # 16 bytes
  from @1 :Text;
  to @2 :Text;
  time @3 :Int64;               # Unix ms, as the sender stated it
  body @4 :Text;
  status @5 :Status;
  integrity @6 :Integrity;

  enum Status {
    queued @0;                  # durable in the outbox, not yet accepted by the peer's host
    sent @1;                    # handed to the peer's host, no receipt yet
    delivered @2;               # the peer's host stored it and sent a receipt
    received @3;                # an incoming message
    failed @4;                  # given up (e.g. the user does not exist)
    held @5;                    # incoming, held until the sender's changed key is accepted
  }

  enum Integrity {
    ok @0;                      # follows the sender's previous message
    gap @1;                     # the sender's previous message never arrived
    outOfOrder @2;              # arrived after a message that names it as predecessor
    unchecked @3;               # outgoing, or the first message seen
  }
}

struct HostStatus {
  username @0 :Text;            # empty when not registered
  registered @1 :Bool;
  queued @2 :UInt32;            # outgoing messages not yet delivered
  hostAddress @3 :Text;         # as published in the directory
  directory @4 :Text;           # directory address
  version @5 :Text;
  fingerprint @6 :Text;         # of our own identity
}

struct Conversation {
  peer @0 :Text;
  messages @1 :UInt32;
  lastTime @2 :Int64;
  expireSeconds @3 :UInt32;     # 0: messages do not expire
}

struct Contact {
  username @0 :Text;
  fingerprint @1 :Text;
  blocked @2 :Bool;
  keyChanged @3 :Bool;          # the directory now shows another key; sends refused until accepted
  request @4 :Bool;             # not a contact yet: their messages are held (contacts-only mode)
}

struct Verification {
  safetyNumber @0 :Text;        # 60 digits, the same on both sides
  transcriptHash @1 :Text;      # hex; matches on both sides when both saw the same history
  keyChanged @2 :Bool;
  accepted @3 :Bool;            # a changed key was accepted by this call
}

struct Event {
  union {
    messageReceived @0 :MessageRef;
    messageStatus @1 :StatusChange;
    keyChanged @2 :Text;        # the contact whose key changed
    integrityProblem @3 :MessageRef;
    deleted @4 :MessageRef;     # id empty: the whole conversation
  }
  struct MessageRef {
    id @0 :Data;
    peer @1 :Text;
    time @2 :Int64;
  }
  struct StatusChange {
    id @0 :Data;
    peer @1 :Text;
    status @2 :Message.Status;
  }
}

interface EventSink {
  event @0 (event :Event) -> ();
}

interface Subscription {}
# Dropping it ends the subscription.

interface Host {
  status @0 () -> (status :HostStatus);
  register @1 (username :Text) -> (status :HostStatus);
  send @2 (to :Text, body :Text) -> (id :Data);
  # Returns once the message is durably queued.
  history @3 (peer :Text, limit :UInt32) -> (messages :List(Message), more :Bool);
  # Oldest first; the last `limit` messages (0: as many as fit). One answer carries at most
  # about 3 MiB of text: `more` says older messages were left out.
  subscribe @4 (sink :EventSink) -> (subscription :Subscription);
  conversations @5 () -> (conversations :List(Conversation));
  contacts @6 () -> (contacts :List(Contact));
  block @7 (user :Text) -> ();
  unblock @8 (user :Text) -> ();
  verify @9 (user :Text, acceptNewKey :Bool) -> (verification :Verification);
  delete @10 (peer :Text, id :Data, everywhere :Bool) -> (deleted :UInt32);
  # id empty: the whole conversation (its key is destroyed).
  expire @11 (peer :Text, seconds :UInt32) -> ();
  # Disappearing messages for this conversation, on both hosts; 0 turns it off.
  message @12 (peer :Text, id :Data) -> (message :Message);
  # One message, e.g. after a MessageReceived event.
}
