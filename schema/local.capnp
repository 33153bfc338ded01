@0xc15a29f419453a3e;
# The local API of smvsd, served on its Unix socket to devices (smvsctl, agents).
# Errors are Cap'n Proto exceptions whose text starts with a stable code and a colon: the codes
# are smvs_schema::ErrorCode (schema/src/vocab.rs), which smvsd, smvsctl and the D-Bus error
# names share: bad-request, not-registered, already-registered, taken, unknown-user,
# key-changed, blocked, too-large, directory, keyguard, proxy, not-found, busy, offline,
# refused, no-device, ended, storage, not-allowed, address-refused, internal.

struct Message {
  id @0 :Data;                  # 16 bytes
  from @1 :Text;
  to @2 :Text;
  time @3 :Int64;               # Unix ms, as the sender stated it
  body @4 :Text;
  status @5 :Status;
  integrity @6 :Integrity;
  reason @7 :Text;              # why it failed, as a code: "unknown-user" (the directory does
                                # not know the recipient), "refused" (their host refused it);
                                # empty unless failed

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
  callPort @7 :Text;            # IP:port of the host's call port (UDP): STUN for this device's
                                # NAT address, and the relay; empty when the host has none
  dhtNode @8 :Text;             # IP:port (UDP) of the host's node in the hosts' DHT; empty when
                                # it is in none
}

struct Conversation {
  peer @0 :Text;
  messages @1 :UInt32;
  lastTime @2 :Int64;
  expireSeconds @3 :UInt32;     # 0: messages do not expire
  unread @4 :UInt32;            # received and not yet read on any device
}

struct Contact {
  username @0 :Text;
  fingerprint @1 :Text;
  blocked @2 :Bool;
  keyChanged @3 :Bool;          # the directory now shows another key; sends refused until accepted
  request @4 :Bool;             # not a contact yet: their messages are held (contacts-only mode)
  introducedBy @6 :Text;        # the contact who introduced this user (empty: a directory did)
  petname @7 :Text;             # the user's own name for this identity address (empty: none)
  alarm @5 :Text;               # set while the directories disagree about this user's key:
                                # which directories showed which key; sends refused until the
                                # user decides (verify with acceptNewKey or keepKey)
}

struct Verification {
  safetyNumber @0 :Text;        # 60 digits, the same on both sides
  transcriptHash @1 :Text;      # hex; matches on both sides when both saw the same history
  keyChanged @2 :Bool;
  accepted @3 :Bool;            # a changed key was accepted by this call
  # The signed directory record the host acted on for this contact (the pinned one), so the
  # user can show others what the directory said: the record's bytes, the directory's
  # Ed25519 signature over them, the directory's key, and when it was issued (Unix ms).
  # Empty for a contact pinned before hosts kept records.
  record @4 :Data;
  recordSignature @5 :Data;
  directoryKey @6 :Data;
  recordIssuedAt @7 :Int64;
  sessionVersion @8 :UInt16;    # the session in use with this contact: 2 (forward-secret and
                                # post-quantum) once one exists, else 1 (static keys)
  alarm @9 :Text;               # as Contact.alarm
  pinnedSafetyNumber @10 :Text; # while a key change is pending (keyChanged), the safety number
                                # of the pinned identity (safetyNumber is the pending one's)
}

struct Event {
  union {
    messageReceived @0 :MessageRef;
    messageStatus @1 :StatusChange;
    keyChanged @2 :Text;        # the contact whose key changed
    integrityProblem @3 :MessageRef;
    deleted @4 :MessageRef;     # id empty: the whole conversation
    callIncoming @5 :CallEvent; # a call rings (answer with answerCall, refuse with hangupCall)
    callState @6 :CallEvent;    # a call became active or ended
    directoryAlarm @7 :Text;    # the contact about whom the directories disagree (different
                                # identity keys: nothing is sent until the user decides), or
                                # whose record a directory served older than before (a
                                # rollback: nothing is sent on the strength of it)
    deviceLinked @8 :Text;      # a device was paired with this host (its name)
    deviceRevoked @9 :Text;     # a device was revoked: its connections are cut
    read @10 :Text;             # the conversation with this peer was read on some device
    messageSent @11 :MessageRef;  # the user wrote a message to `peer` on one of their devices
                                  # (queued in the outbox; its status changes follow)
    resync @12 :Void;           # events this device had not seen are gone from the log (older
                                # than it keeps): re-read conversations and history
  }
  seq @13 :UInt64;              # the event's place in the host's event log (1, 2, ...); a
                                # device's cursor is the last seq it has taken in; 0: resync
  replayed @14 :Bool;           # from the log, for a device that was away (not live)
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

enum CallState {
  ringing @0;
  active @1;
  ended @2;
}

struct CallEvent {
  id @0 :Data;                  # 16 bytes
  peer @1 :Text;
  state @2 :CallState;
  reason @3 :Text;              # why it ended: hangup, remote-hangup, declined, busy, no-answer,
                                # missed, refused, offline, device-gone, failed; or, for an
                                # incoming call that became active, answered-elsewhere: another
                                # of the user's devices picked it up (this one stops ringing)
  video @4 :Bool;               # what the caller offered
  audio @5 :Bool;
  outgoing @6 :Bool;
}

struct CallMedia {
  publicKey @0 :Data;           # the device's fresh X25519 key for this call (32 bytes)
  address @1 :Text;             # IP:port where the device receives the call's media (UDP);
                                # empty in the peer's media when relaying hides it
  video @2 :Bool;               # the device sends video
  audio @3 :Bool;               # the device sends audio
  reflexive @4 :Text;           # IP:port the device's NAT shows the world (from the host's
                                # STUN answer); empty when the same as `address`, or hidden
  relayOnly @5 :Bool;           # ours: relay this call only and hide this device's addresses
                                # (`smvsctl call --relay`); the peer's: it does so
  kem @6 :Data;                 # X-Wing: placing a call, the device's fresh public key (1216
                                # bytes); answering, its encapsulation to the caller's (1120)
}

struct CallRelay {
  # This device's side of the call's relay on its own host: send the call's sealed datagrams
  # to `address` framed for `alloc`, after claiming it with `token` (smvs_transport::callport).
  address @0 :Text;             # IP:port of the host's call port
  alloc @1 :Data;               # 8 bytes
  token @2 :Data;               # 16 bytes, secret
  relayOnly @3 :Bool;           # this call is relayed only (this device asked, the host's
                                # relay_calls, or the other side's): take no other path
}

struct CallInfo {
  id @0 :Data;                  # 16 bytes
  peer @1 :Text;
  outgoing @2 :Bool;
  state @3 :CallState;
  reason @4 :Text;              # set once ended
  callerIdentity @5 :Data;      # both identity bundles, bound into the media keys
  calleeIdentity @6 :Data;
  peerMedia @7 :CallMedia;      # the other endpoint's offer or answer, once known
  hasPeerMedia @8 :Bool;
  since @9 :Int64;              # Unix ms the call entered its state
}

interface CallDevice {
  # The device running a call's media hears here what happens to the call.
  answered @0 (media :CallMedia) -> ();   # the callee picked up: start the media
  ended @1 (reason :Text) -> ();
}

interface CallControl {
  hangup @0 () -> ();
  # Dropping the capability (or losing the connection) hangs up too.
}

interface CallAgent {
  # A device that runs calls on behalf of others (smvsctl agent in the user's session): D-Bus
  # PlaceCall and AnswerCall are handed to it, and it places or answers through this same API.
  place @0 (peer :Text, video :Bool, audio :Bool) -> (id :Data);
  answer @1 (id :Data) -> ();
}

interface EventSink {
  event @0 (event :Event) -> ();
  ended @1 (reason :Text) -> ();
  # The host ended the stream (the device fell too far behind, another stream took over its
  # cursor, ...): subscribe again, from the cursor, to go on.
}

interface Subscription {}
# Dropping it ends the subscription.

interface Host {
  status @0 () -> (status :HostStatus);
  register @1 (username :Text) -> (status :HostStatus);
  send @2 (to :Text, body :Text) -> (id :Data);
  # Returns once the message is durably queued.
  history @3 (peer :Text, limit :UInt32, before :Data) -> (messages :List(Message), more :Bool);
  # Oldest first; the last `limit` messages (0: as many as fit) before the message `before`
  # (empty: the newest), so a device pages back with the first id it has. `more`: older
  # messages exist. One answer carries at most about 3 MiB of text.
  subscribe @4 (sink :EventSink, since :UInt64, cursor :Text) -> (subscription :Subscription);
  # Events go to `sink` in log order (`Event.seq`), each once. Where the stream starts:
  # - `cursor` set: after this device's cursor of that name, which the host keeps and moves to
  #   every event the sink has answered (answer after the event is safely handled). A cursor
  #   the device never used starts at the log's head (live). A remote device's cursors are its
  #   own (revoking it deletes them); the Unix socket's clients share theirs.
  # - else `since` > 0: after that seq;
  # - else: live events only.
  # Missed events come first (`replayed`), then live ones. A stream that cannot start where
  # asked (those events were pruned from the log) begins with `resync`.
  conversations @5 () -> (conversations :List(Conversation));
  contacts @6 () -> (contacts :List(Contact));
  block @7 (user :Text) -> ();
  unblock @8 (user :Text) -> ();
  verify @9 (user :Text, acceptNewKey :Bool, keepKey :Bool) -> (verification :Verification);
                                # keepKey: stay with the pinned key and refuse the pending one
  delete @10 (peer :Text, id :Data, everywhere :Bool) -> (deleted :UInt32);
  # id empty: the whole conversation (its key is destroyed).
  expire @11 (peer :Text, seconds :UInt32) -> ();
  # Disappearing messages for this conversation, on both hosts; 0 turns it off.
  message @12 (peer :Text, id :Data) -> (message :Message);
  # One message, e.g. after a MessageReceived event.
  placeCall @13 (peer :Text, media :CallMedia, device :CallDevice)
      -> (call :CallInfo, control :CallControl, relay :CallRelay);
  # Rings the peer; returns once the peer's host has the offer (state ringing). The answer or
  # the end comes to `device`.
  answerCall @14 (id :Data, media :CallMedia, device :CallDevice)
      -> (call :CallInfo, control :CallControl, relay :CallRelay);
  # Picks up a ringing incoming call (id empty: the one that rings); `call.peerMedia` is the
  # caller's offer. The call rings on every device; the first to answer takes it, and a later
  # answer is refused (busy: "answered on another device").
  hangupCall @15 (id :Data) -> ();
  # Ends a call (id empty: the current one); a ringing incoming call is declined.
  calls @16 () -> (calls :List(CallInfo));
  registerCallAgent @17 (agent :CallAgent) -> (registration :Subscription);
  # While registered, D-Bus PlaceCall/AnswerCall are handed to this agent.

  # Linked devices (the device port). Local clients and admin devices only.
  devices @18 () -> (devices :List(Device));
  linkDevice @19 (name :Text) -> (link :DeviceLink);
  # A one-time pairing code for a new device to be called `name`.
  revokeDevice @20 (name :Text) -> (device :Device);
  # Forgets the device and cuts its open connections.

  markRead @21 (peer :Text) -> (wasUnread :UInt32);
  # Everything received from `peer` so far is read, on every device (a `read` event tells them).
  introduce @22 (user :Text, to :Text) -> ();
  # Sends `to` the directory's signed record of `user` as this host pinned it: `to`'s host may
  # pin `user` from it, "introduced by" us, without asking a directory.
  moveDirectory @23 (to :Text) -> (left :Text);
  # Moves this host's user from its home directory (the first configured one it has not left)
  # to the directory named `to` (configured or added): registers there, and leaves the home directory
  # with a statement the identity signs, which it serves to whoever looks the user up from
  # then on. Returns the name of the directory left.
  directories @24 () -> (directories :List(DirectoryInfo));
  # The directories in use, in order: the configured ones (less those removed), then those
  # added.
  registerInDht @25 () -> (status :HostStatus);
  # Creates the identity (in keyguard) and registers this host's user in the hosts' DHT: the
  # user's name is the identity address (smvs:…), and the record the identity signs is put
  # there. Needs smvsd --dht.
  addDirectory @26 (name :Text, address :Text, key :Text, scoped :Bool) -> (directory :DirectoryInfo);
  # Uses one more directory (`key` in hex), from now on and after restarts. It must answer
  # now; a user registered at directories is registered there too.
  removeDirectory @27 (name :Text) -> ();
  # Stops using a directory (even a configured one, after restarts too). Refused when fewer
  # directories than the quorum would be left, or none the user is registered at. The user's
  # record there is not deleted (`moveDirectory` leaves with a statement instead).
  petnames @28 () -> (petnames :List(Petname));
  addPetname @29 (name :Text, address :Text) -> (petname :Petname);
  # Names an identity address (smvs:…) `name` on this host: every call that takes a user then
  # takes `name` for it. Refused for a name a contact or the user goes by, or one that names
  # another address; an address has one petname (a new one replaces it).
  removePetname @30 (name :Text) -> ();
}

struct Petname {
  name @0 :Text;
  address @1 :Text;             # the identity address (smvs:…)
}

struct DirectoryInfo {
  name @0 :Text;
  address @1 :Text;
  key @2 :Text;                 # hex
  left @3 :Bool;                # this host's user moved away from it
  scoped @4 :Bool;              # a name space of its own: its users are written NAME@name
}

struct Device {
  name @0 :Text;
  fingerprint @1 :Text;
  # Of the device's Noise key, as `smvsctl pair` shows it on the device.
  admin @2 :Bool;
  pairedAt @3 :Int64;
  lastSeen @4 :Int64;
  # Unix ms of its last connection; 0: never connected since pairing.
  lastAddress @5 :Text;
  connected @6 :Bool;
}

struct DeviceLink {
  code @0 :Text;
  # NNN-DDDD-DDDD, to type on the new device; single use.
  expiresAt @1 :Int64;
  deviceAddress @2 :Text;
  # Where the device port listens (as this host knows it; behind NAT, use the public one).
  hostFingerprint @3 :Text;
  # Of the host's device-port key, which the new device pins.
}
