@0xa2e6cb3c5932ebdd;
# Host to host (smvsd to smvsd), spoken over the Noise transport on port 7421. The connecting
# host's Noise static key must match the transport key in the sender's directory record.

interface HostLink {
  deliver @0 (envelope :Envelope) -> (receipt :Receipt);
  # Returns only once the receiving host has stored the envelope durably (or already had it).
}

struct Envelope {
  formatVersion @0 :UInt16;     # 1
  id @1 :Data;                  # 16-byte random message id, unique per sender.
  sender @2 :Text;
  recipient @3 :Text;
  sessionVersion @4 :UInt16;    # which session-layer construction sealed `sealed`.
  sealed @5 :Data;              # session-layer ciphertext of the inner message, padded to a size bucket.
  signature @6 :Data;           # sender identity's signature (context envelope) over all fields above.
}

struct Receipt {
  id @0 :Data;                  # the envelope's id
  recipient @1 :Text;
  storedAt @2 :Int64;           # Unix ms
  signature @3 :Data;           # recipient identity's signature (context receipt).
}
