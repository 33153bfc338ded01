@0xc15a29f419453a3e;
# The local API of smvsd, served on its Unix socket to devices (smvsctl, agents).

struct Message {
  id @0 :Data;
  from @1 :Text;
  to @2 :Text;
  time @3 :Int64;               # Unix ms, as the sender stated it
  body @4 :Text;
  status @5 :Status;
  enum Status {
    queued @0;
    sent @1;
    delivered @2;
    received @3;
    failed @4;
  }
}

struct Event {
  union {
    messageReceived @0 :Message;
    messageStatus @1 :StatusChange;
    keyChanged @2 :Text;        # the contact whose key changed
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
  status @0 () -> (username :Text, registered :Bool, queued :UInt32);
  register @1 (username :Text) -> ();
  send @2 (to :Text, body :Text) -> (id :Data);
  history @3 (peer :Text, limit :UInt32) -> (messages :List(Message));
  subscribe @4 (sink :EventSink) -> (subscription :Subscription);
}
