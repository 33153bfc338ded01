@0xd3a5c1f08b7e4a29;
# A device on another machine to its user's host, over the device port (Noise, prologue
# "smvs-device-v1"; the device pins the host's key once paired). The bootstrap capability is a
# DeviceGate: a paired device asks it for the local API, a new one pairs through it.

using Local = import "local.capnp";

interface DeviceGate {
  host @0 () -> (host :Local.Host);
  # The same API as the local socket, for a paired device whose key is not revoked. Any other
  # key is refused (and the connection closed) before any API object is handed out.

  pair @1 (nameplate :Text, name :Text, message :Data) -> (message :Data, hostTag :Data);
  # Step one of pairing with a code from `devices link`: the code's public part (nameplate),
  # the name the device asks for, and its SPAKE2 message. Every call spends one of the code's
  # tries, right or wrong.

  confirm @2 (deviceTag :Data) -> (name :Text, admin :Bool);
  # Step two: the device's confirmation. On success the device's Noise key is paired and the
  # code is used up.
}
