//! The call port: one UDP socket on which the host answers STUN Binding requests (so that its
//! user's devices behind a NAT learn their server-reflexive address) and relays sealed call
//! media for its own user's calls, which it cannot read.
//!
//! ```text
//!  device A ──Data{a}──► [A's CallPort] ──Forward{b}──► [B's CallPort] ──Data{b}──► device B
//!  device A ◄─Data{a}─── [A's CallPort] ◄─Forward{a}─── [B's CallPort] ◄─Data{b}─── device B
//!
//!  device S ──BindRequest{a}─────────────► [A's CallPort]
//!  device S ◄─Challenge{a, nonce(a, S, t)}─ [A's CallPort]   (charged to the STUN bucket)
//!  device S ──Bind{a, nonce, proof}───────► [A's CallPort]   (proof = bind_proof(token, a, nonce))
//!  device S ◄─Bound{a}────────────────────── [A's CallPort]   (a's device is now S)
//! ```
//!
//! The frames are `smvs_transport::callport`'s. Whoever sets a call up (the calls actor)
//! [`CallPort::allocate`]s a leg, hands the grant's id and token to its own user's device
//! (inside the sealed call signalling), and [`CallPort::connect`]s the leg to the peer host's
//! relay allocation once it knows it. The device claims the leg from the address it will send
//! from (a later bind from another address moves it: NAT rebinding), without ever sending the
//! token: it asks with `BindRequest{alloc}`, the port answers `Challenge{alloc, nonce}` to the
//! address the request came from, and the device answers `Bind{alloc, nonce, proof}` with
//! `proof = bind_proof(token, alloc, nonce)` (keyed BLAKE2b). The nonce is stateless: BLAKE2b
//! keyed with a random secret of this port's, of the allocation, the source address and the
//! current [`CHALLENGE_EPOCH`]; a `Bind` takes only from the address its nonce was made for,
//! in that epoch or the one before (so a nonce is good for 10–20 s). A `Bind` sniffed on the
//! way and replayed from another address (to point the relayed media at a victim) is refused;
//! replayed from the same address within its 20 s it binds the address already bound. Nothing
//! is stored for a challenge, so `BindRequest`s cannot grow memory; each `Challenge` (as long
//! as the request, so no amplification) is charged to the same global bucket as the STUN
//! answers, so spoofed requests cannot make the port a reflector either.
//!
//! An allocation only ever talks to two addresses: the device bound to it and the one peer
//! relay it was connected to. `Data{alloc}` from the bound device goes to the peer relay as
//! `Forward{peer_alloc}`; `Forward{alloc}` from exactly the peer relay goes to the device as
//! `Data{alloc}`. Everything else is dropped and counted, never answered (except STUN and
//! challenges, bounded by a global token bucket so that the port is no amplifier, and an
//! accepted `Bind`). Each allocation has a byte rate cap (both directions together);
//! allocations with no packet for [`RelayLimits::idle`] (a `BindRequest` does not count) are
//! released; at most [`RelayLimits::max_allocations`] exist at once. So nothing from the
//! network grows memory, and nothing from the network can panic the task.
//!
//! Owns: the socket (in its own tokio task), the allocation table (behind a mutex the task
//! and the handles share; held only for the bookkeeping of one datagram, never across an
//! `.await`) and the challenge secret. Logs never carry packet contents, tokens, nonces or
//! proofs.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use smvs_crypto::Zeroizing;
use smvs_transport::callport::{bind_proof, AllocId, Frame, RelayToken, BIND_NONCE_LEN};
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

/// Answers to strangers (STUN answers and challenges together) per second, over all sources.
const STUN_PER_SECOND: f64 = 100.0;
/// Answers to strangers that may go out at once.
const STUN_BURST: f64 = 20.0;
/// A challenge's nonce is made for one of these; a `Bind` may carry the nonce of the current
/// one or of the one before.
pub const CHALLENGE_EPOCH: Duration = Duration::from_secs(10);
/// What the nonce's BLAKE2b starts with.
const CHALLENGE_LABEL: &[u8] = b"smvs call-port challenge v1";
/// The smallest byte burst an allocation is allowed, whatever its rate.
const MIN_BURST_BYTES: f64 = 64.0 * 1024.0;
/// The burst an allocation is allowed, in time at its rate.
const BURST_TIME: f64 = 0.25;
/// Room for the largest UDP datagram.
const RECEIVE_BUFFER: usize = 65_536;

/// How much the relay allows.
#[derive(Clone, Debug)]
pub struct RelayLimits {
    /// Allocations at once.
    pub max_allocations: usize,
    /// The cap per allocation, both directions together, in kbit/s.
    pub kbps: u32,
    /// An allocation with no packet either way for this long is released.
    pub idle: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_allocations: 8,
            kbps: crate::config::DEFAULT_RELAY_KBPS,
            idle: Duration::from_secs(60),
        }
    }
}

/// Why the call port refused a request of the host's own.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RelayError {
    #[error("all {0} relay allocations are in use")]
    Full(usize),
    #[error("no relay allocation {0} (released, or idle too long)")]
    Unknown(String),
    #[error("{0} is not an address a relay can send to")]
    BadPeer(SocketAddr),
    #[error("the call port is closed")]
    Closed,
}

/// A new allocation: the id the device and the peer host name it by, and the secret the
/// device claims it with.
#[derive(Clone, PartialEq, Eq)]
pub struct Grant {
    pub alloc: AllocId,
    pub token: RelayToken,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("alloc", &hex::encode(self.alloc))
            .field("token", &"<secret>")
            .finish()
    }
}

/// One allocation, as [`CallPort::allocations`] shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllocationStats {
    pub alloc: AllocId,
    /// A device has claimed the allocation.
    pub device_bound: bool,
    /// [`CallPort::connect`] has given it a peer relay.
    pub connected: bool,
    /// From the device, sent on to the peer relay.
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    /// From the peer relay, sent on to the device.
    pub packets_to_device: u64,
    pub bytes_to_device: u64,
    /// Datagrams of this allocation dropped because they were over its rate cap.
    pub dropped_over_cap: u64,
}

/// The whole port's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub stun_answered: u64,
    /// Binding requests not answered because of the global rate limit on answers to
    /// strangers (which challenges share).
    pub stun_refused: u64,
    /// `Challenge`s sent, one per `BindRequest` for an allocation of ours.
    pub challenges_sent: u64,
    /// `BindRequest`s for an allocation of ours not answered because of the global rate limit
    /// on answers to strangers (which STUN shares).
    pub challenges_refused: u64,
    /// `BindRequest`s for an unknown allocation, and `Bind`s with an unknown allocation, a
    /// nonce not made for their source address in this epoch or the one before, or a wrong
    /// proof.
    pub binds_refused: u64,
    /// Allocations released because nothing passed through them for the idle time.
    pub released_idle: u64,
    /// Every other datagram dropped: undecodable, from a stranger, before `connect`, …
    pub dropped: u64,
}

/// A cheap handle on the call port's task; clones share it. The task stops when
/// [`CallPort::close`] is called, or when the last handle is dropped.
#[derive(Clone)]
pub struct CallPort {
    handle: Arc<Handle>,
}

/// The one handle the clones share: dropping the last one stops the task.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.close();
    }
}

struct Shared {
    local: SocketAddr,
    limits: RelayLimits,
    /// The key of the challenges' nonces, made at start and never shown.
    secret: Zeroizing<[u8; 32]>,
    /// Epochs ([`CHALLENGE_EPOCH`]) are counted from here.
    origin: Instant,
    state: Mutex<State>,
    stop: watch::Sender<bool>,
}

struct State {
    closed: bool,
    allocations: HashMap<AllocId, Allocation>,
    stun: Bucket,
    stats: PortStats,
}

struct Allocation {
    token: RelayToken,
    /// The device's address (canonical), once it has bound.
    device: Option<SocketAddr>,
    /// The peer host's relay (canonical) and its allocation for this call.
    peer: Option<(SocketAddr, AllocId)>,
    last_seen: Instant,
    bucket: Bucket,
    packets_to_peer: u64,
    bytes_to_peer: u64,
    packets_to_device: u64,
    bytes_to_device: u64,
    dropped_over_cap: u64,
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: f64, burst: f64, now: Instant) -> Bucket {
        Bucket {
            rate,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes `cost` tokens if there are that many.
    fn take(&mut self, cost: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

/// The byte bucket of an allocation under `limits`.
fn byte_bucket(limits: &RelayLimits, now: Instant) -> Bucket {
    let rate = f64::from(limits.kbps) * 1000.0 / 8.0;
    Bucket::new(rate, (rate * BURST_TIME).max(MIN_BURST_BYTES), now)
}

/// An address as compared and stored: an IPv4-mapped IPv6 address (what a dual-stack socket
/// reports for an IPv4 source) is the IPv4 address.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// An allocation id for the log (ids travel in clear; tokens never appear).
fn shown(alloc: &AllocId) -> String {
    hex::encode(alloc)
}

impl CallPort {
    /// Binds the UDP socket and spawns the task that owns it (on the current tokio runtime).
    pub async fn bind(addr: SocketAddr, limits: RelayLimits) -> std::io::Result<CallPort> {
        let socket = UdpSocket::bind(addr).await?;
        let (shared, stopped) = Shared::new(socket.local_addr()?, limits);
        tokio::spawn(serve(socket, shared.clone(), stopped));
        Ok(CallPort {
            handle: Arc::new(Handle { shared }),
        })
    }

    /// The socket's address (with the port the OS chose, for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.handle.shared.local
    }

    /// A new allocation with a fresh id and token, or an error when
    /// [`RelayLimits::max_allocations`] are in use.
    pub fn allocate(&self) -> Result<Grant, RelayError> {
        self.handle.shared.allocate()
    }

    /// The peer host's relay for this call: datagrams from the bound device go there as
    /// `Forward{peer_alloc}`, and only `Forward{alloc}` from exactly `peer_relay` is passed to
    /// the device. Connecting again replaces the peer.
    pub fn connect(
        &self,
        alloc: AllocId,
        peer_relay: SocketAddr,
        peer_alloc: AllocId,
    ) -> Result<(), RelayError> {
        self.handle.shared.connect(alloc, peer_relay, peer_alloc)
    }

    /// Ends an allocation: nothing passes through it any more. Unknown ids are ignored.
    pub fn release(&self, alloc: AllocId) {
        let mut state = self.handle.shared.lock();
        if state.allocations.remove(&alloc).is_some() {
            tracing::debug!(
                alloc = %shown(&alloc),
                in_use = state.allocations.len(),
                "relay allocation released"
            );
        }
    }

    /// Every allocation's counters, in id order.
    pub fn allocations(&self) -> Vec<AllocationStats> {
        let state = self.handle.shared.lock();
        let mut all: Vec<AllocationStats> = state
            .allocations
            .iter()
            .map(|(alloc, a)| AllocationStats {
                alloc: *alloc,
                device_bound: a.device.is_some(),
                connected: a.peer.is_some(),
                packets_to_peer: a.packets_to_peer,
                bytes_to_peer: a.bytes_to_peer,
                packets_to_device: a.packets_to_device,
                bytes_to_device: a.bytes_to_device,
                dropped_over_cap: a.dropped_over_cap,
            })
            .collect();
        all.sort_by_key(|a| a.alloc);
        all
    }

    /// The whole port's counters.
    pub fn stats(&self) -> PortStats {
        self.handle.shared.lock().stats.clone()
    }

    /// Stops the task and drops every allocation; later requests get [`RelayError::Closed`].
    pub fn close(&self) {
        self.handle.shared.close();
    }
}

impl Shared {
    fn new(local: SocketAddr, limits: RelayLimits) -> (Arc<Shared>, watch::Receiver<bool>) {
        let (stop, stopped) = watch::channel(false);
        let origin = Instant::now();
        let shared = Arc::new(Shared {
            local,
            limits,
            secret: Zeroizing::new(smvs_crypto::random_array()),
            origin,
            state: Mutex::new(State {
                closed: false,
                allocations: HashMap::new(),
                stun: Bucket::new(STUN_PER_SECOND, STUN_BURST, origin),
                stats: PortStats::default(),
            }),
            stop,
        });
        (shared, stopped)
    }

    fn allocate(&self) -> Result<Grant, RelayError> {
        let mut state = self.lock();
        if state.closed {
            return Err(RelayError::Closed);
        }
        if state.allocations.len() >= self.limits.max_allocations {
            return Err(RelayError::Full(self.limits.max_allocations));
        }
        let alloc = loop {
            let alloc: AllocId = smvs_crypto::random_array();
            if !state.allocations.contains_key(&alloc) {
                break alloc;
            }
        };
        let token: RelayToken = smvs_crypto::random_array();
        let now = Instant::now();
        state.allocations.insert(
            alloc,
            Allocation {
                token,
                device: None,
                peer: None,
                last_seen: now,
                bucket: byte_bucket(&self.limits, now),
                packets_to_peer: 0,
                bytes_to_peer: 0,
                packets_to_device: 0,
                bytes_to_device: 0,
                dropped_over_cap: 0,
            },
        );
        tracing::debug!(
            alloc = %shown(&alloc),
            in_use = state.allocations.len(),
            "relay allocation made"
        );
        Ok(Grant { alloc, token })
    }

    fn connect(
        &self,
        alloc: AllocId,
        peer_relay: SocketAddr,
        peer_alloc: AllocId,
    ) -> Result<(), RelayError> {
        let peer_relay = canonical(peer_relay);
        let ip = peer_relay.ip();
        let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if peer_relay.port() == 0 || ip.is_unspecified() || ip.is_multicast() || broadcast {
            return Err(RelayError::BadPeer(peer_relay));
        }
        let mut state = self.lock();
        if state.closed {
            return Err(RelayError::Closed);
        }
        let allocation = state
            .allocations
            .get_mut(&alloc)
            .ok_or_else(|| RelayError::Unknown(shown(&alloc)))?;
        allocation.peer = Some((peer_relay, peer_alloc));
        tracing::debug!(alloc = %shown(&alloc), "relay allocation connected to the peer's relay");
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the table is still whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close(&self) {
        let mut state = self.lock();
        if !state.closed {
            state.closed = true;
            state.allocations.clear();
            tracing::debug!("call port closed");
        }
        drop(state);
        self.stop.send_replace(true);
    }

    /// Whether any allocation is held (the sweep has nothing to do otherwise).
    fn has_allocations(&self) -> bool {
        !self.lock().allocations.is_empty()
    }

    /// Releases the allocations idle for the idle time.
    fn sweep(&self, now: Instant) {
        let idle = self.limits.idle;
        let mut state = self.lock();
        let before = state.allocations.len();
        state.allocations.retain(|alloc, a| {
            let keep = now.saturating_duration_since(a.last_seen) < idle;
            if !keep {
                tracing::debug!(alloc = %shown(alloc), "relay allocation released: idle");
            }
            keep
        });
        let released = before - state.allocations.len();
        state.stats.released_idle += released as u64;
    }

    /// The epoch ([`CHALLENGE_EPOCH`]) `now` is in.
    fn epoch(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs() / CHALLENGE_EPOCH.as_secs()
    }

    /// The nonce of a challenge for `alloc` sent to `to` (canonical) in `epoch`: BLAKE2b-128
    /// keyed with the port's secret. `None` only when libsodium fails.
    fn nonce(&self, alloc: &AllocId, to: SocketAddr, epoch: u64) -> Option<[u8; BIND_NONCE_LEN]> {
        // [family][16 address bytes, an IPv4 address in the first 4][port]: one length for
        // every address, so that no two (address, epoch) pairs read alike.
        let mut address = [0u8; 19];
        match to.ip() {
            IpAddr::V4(ip) => {
                address[0] = 4;
                address[1..5].copy_from_slice(&ip.octets());
            }
            IpAddr::V6(ip) => {
                address[0] = 6;
                address[1..17].copy_from_slice(&ip.octets());
            }
        }
        address[17..].copy_from_slice(&to.port().to_be_bytes());
        let mac = smvs_crypto::blake2b(
            BIND_NONCE_LEN,
            Some(&self.secret[..]),
            &[CHALLENGE_LABEL, alloc, &address, &epoch.to_be_bytes()],
        )
        .ok()?;
        <[u8; BIND_NONCE_LEN]>::try_from(mac.as_slice()).ok()
    }

    /// Whether `nonce` was made for a challenge for `alloc` sent to `from` (canonical) in the
    /// epoch of `now` or the one before; compared in constant time.
    fn nonce_is_fresh(
        &self,
        alloc: &AllocId,
        from: SocketAddr,
        nonce: &[u8; BIND_NONCE_LEN],
        now: Instant,
    ) -> bool {
        let epoch = self.epoch(now);
        let matches = |epoch: u64| {
            self.nonce(alloc, from, epoch)
                .is_some_and(|made| smvs_crypto::constant_time_eq(&made, nonce))
        };
        // Both compared, whichever matches.
        let current = matches(epoch);
        let previous = epoch.checked_sub(1).is_some_and(matches);
        current | previous
    }

    /// Counts a refused `BindRequest` or `Bind`, and logs now and then.
    fn refuse_bind(state: &mut State, why: &'static str) {
        state.stats.binds_refused += 1;
        let refused = state.stats.binds_refused;
        if refused.is_power_of_two() {
            tracing::debug!(refused, why, "refused a relay bind");
        }
    }

    /// What to do with one datagram from `from`: the answer or relayed frame is written to
    /// `out`, and its destination returned; `None` drops the datagram.
    fn handle(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        out.clear();
        let from = canonical(from);
        let mut state = self.lock();
        if state.closed {
            return None;
        }
        let state = &mut *state;
        let Ok(frame) = Frame::decode(datagram) else {
            state.stats.dropped += 1;
            return None;
        };
        match frame {
            Frame::BindingRequest { transaction } => {
                if !state.stun.take(1.0, now) {
                    state.stats.stun_refused += 1;
                    return None;
                }
                state.stats.stun_answered += 1;
                Frame::BindingResponse {
                    transaction,
                    mapped: from,
                }
                .encode(out);
                Some(from)
            }
            Frame::BindRequest { alloc } => {
                if !state.allocations.contains_key(&alloc) {
                    Self::refuse_bind(state, "a bind request for an unknown allocation");
                    return None;
                }
                // The source may be forged: the answer is one to a stranger.
                if !state.stun.take(1.0, now) {
                    state.stats.challenges_refused += 1;
                    return None;
                }
                let Some(nonce) = self.nonce(&alloc, from, self.epoch(now)) else {
                    state.stats.dropped += 1;
                    return None;
                };
                state.stats.challenges_sent += 1;
                Frame::Challenge { alloc, nonce }.encode(out);
                Some(from)
            }
            Frame::Bind {
                alloc,
                nonce,
                proof,
            } => {
                let fresh = self.nonce_is_fresh(&alloc, from, &nonce, now);
                let Some(allocation) = state.allocations.get_mut(&alloc) else {
                    Self::refuse_bind(state, "a bind for an unknown allocation");
                    return None;
                };
                let proven = bind_proof(&allocation.token, &alloc, &nonce)
                    .is_some_and(|expected| smvs_crypto::constant_time_eq(&expected, &proof));
                if !(fresh && proven) {
                    Self::refuse_bind(
                        state,
                        if fresh {
                            "a wrong proof"
                        } else {
                            "a nonce not made for this address, or too old"
                        },
                    );
                    return None;
                }
                allocation.last_seen = now;
                if allocation.device != Some(from) {
                    tracing::debug!(
                        alloc = %shown(&alloc),
                        moved = allocation.device.is_some(),
                        "relay allocation bound to its device"
                    );
                    allocation.device = Some(from);
                }
                Frame::Bound { alloc }.encode(out);
                Some(from)
            }
            Frame::Data { alloc, payload } => {
                relay_one(state, alloc, payload, from, Leg::ToPeer, now, out)
            }
            Frame::Forward { alloc, payload } => {
                relay_one(state, alloc, payload, from, Leg::ToDevice, now, out)
            }
            Frame::BindingResponse { .. } | Frame::Bound { .. } | Frame::Challenge { .. } => {
                state.stats.dropped += 1;
                None
            }
        }
    }
}

/// The task: receive, decide under the lock, send; sweep idle allocations on a timer; stop when
/// told (or when every handle is gone).
async fn serve(socket: UdpSocket, shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    let ipv6_socket = shared.local.is_ipv6();
    let sweep_every =
        (shared.limits.idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
    let mut sweep = tokio::time::interval(sweep_every);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; RECEIVE_BUFFER];
    let mut out = Vec::with_capacity(RECEIVE_BUFFER);
    loop {
        if *stopped.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = stopped.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            // Only while something could go idle: an idle host's call port wakes for nothing.
            _ = sweep.tick(), if shared.has_allocations() => shared.sweep(Instant::now()),
            received = socket.recv_from(&mut buf) => match received {
                Ok((n, from)) => {
                    let datagram = buf.get(..n).unwrap_or_default();
                    let Some(to) = shared.handle(datagram, from, Instant::now(), &mut out) else {
                        continue;
                    };
                    let to = match to {
                        // A dual-stack socket sends to IPv4 addresses as IPv4-mapped ones.
                        SocketAddr::V4(v4) if ipv6_socket => {
                            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
                        }
                        other => other,
                    };
                    if let Err(e) = socket.send_to(&out, to).await {
                        tracing::debug!(error = %e, "call port: a send failed");
                    }
                }
                Err(e) => {
                    // An ICMP error reported on the socket, or worse: not the task's end, but
                    // no busy loop either.
                    tracing::debug!(error = %e, "call port: a receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
    tracing::debug!(addr = %shared.local, "call port stopped");
}

/// Which way a relayed datagram goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Leg {
    /// `Data` from the bound device, out as `Forward` to the peer's relay.
    ToPeer,
    /// `Forward` from the peer's relay, out as `Data` to the bound device.
    ToDevice,
}

/// One relayed datagram for allocation `alloc`: only from the party that leg comes from, only
/// once the allocation is bound and connected, and within its rate cap. The frame to send is
/// written to `out`; its destination returned.
fn relay_one(
    state: &mut State,
    alloc: AllocId,
    payload: &[u8],
    from: SocketAddr,
    leg: Leg,
    now: Instant,
    out: &mut Vec<u8>,
) -> Option<SocketAddr> {
    let Some(allocation) = state.allocations.get_mut(&alloc) else {
        state.stats.dropped += 1;
        return None;
    };
    let (Some(device), Some((peer_relay, peer_alloc))) = (allocation.device, allocation.peer)
    else {
        state.stats.dropped += 1;
        return None;
    };
    let (source, to) = match leg {
        Leg::ToPeer => (device, peer_relay),
        Leg::ToDevice => (peer_relay, device),
    };
    if source != from {
        state.stats.dropped += 1;
        return None;
    }
    allocation.last_seen = now;
    if !allocation.bucket.take(payload.len() as f64, now) {
        allocation.dropped_over_cap += 1;
        return None;
    }
    match leg {
        Leg::ToPeer => {
            allocation.packets_to_peer += 1;
            allocation.bytes_to_peer += payload.len() as u64;
            Frame::Forward {
                alloc: peer_alloc,
                payload,
            }
            .encode(out);
        }
        Leg::ToDevice => {
            allocation.packets_to_device += 1;
            allocation.bytes_to_device += payload.len() as u64;
            Frame::Data { alloc, payload }.encode(out);
        }
    }
    Some(to)
}

/// The relay's decisions without a socket or a task, for the fuzz target (`fuzz/`): the same
/// table and the same handling of each datagram as [`CallPort`]'s task.
#[doc(hidden)]
pub mod fuzzing {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use smvs_transport::callport::{AllocId, BIND_NONCE_LEN};
    use tokio::time::Instant;

    use super::{Grant, RelayError, RelayLimits, Shared};

    pub struct Table {
        shared: Arc<Shared>,
    }

    impl Table {
        /// A table as a call port on `local` keeps it.
        pub fn new(local: SocketAddr, limits: RelayLimits) -> Table {
            Table {
                shared: Shared::new(local, limits).0,
            }
        }

        pub fn allocate(&self) -> Result<Grant, RelayError> {
            self.shared.allocate()
        }

        pub fn connect(
            &self,
            alloc: AllocId,
            peer_relay: SocketAddr,
            peer_alloc: AllocId,
        ) -> Result<(), RelayError> {
            self.shared.connect(alloc, peer_relay, peer_alloc)
        }

        /// The nonce the port would put in a challenge for `alloc` sent to `to` now (what a
        /// `BindRequest` from `to` would be answered with, without the rate limit), so that a
        /// fuzz target can complete a `Bind` without a round trip.
        pub fn challenge(&self, alloc: &AllocId, to: SocketAddr) -> Option<[u8; BIND_NONCE_LEN]> {
            let to = super::canonical(to);
            self.shared
                .nonce(alloc, to, self.shared.epoch(Instant::now()))
        }

        /// One datagram from `from`: what the port would send (written to `out`) and where,
        /// or `None` when it drops it.
        pub fn handle(
            &self,
            datagram: &[u8],
            from: SocketAddr,
            out: &mut Vec<u8>,
        ) -> Option<SocketAddr> {
            self.shared.handle(datagram, from, Instant::now(), out)
        }

        /// The idle sweep the task runs on its timer.
        pub fn sweep(&self) {
            self.shared.sweep(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smvs_transport::callport::{ALLOC_ID_LEN, BIND_PROOF_LEN, CHALLENGE_LEN, RELAY_TOKEN_LEN};

    /// Long enough for a datagram on loopback; what has not come by then is dropped.
    const QUIET: Duration = Duration::from_millis(300);

    fn limits() -> RelayLimits {
        RelayLimits::default()
    }

    async fn port(limits: RelayLimits) -> CallPort {
        CallPort::bind("127.0.0.1:0".parse().unwrap(), limits)
            .await
            .unwrap()
    }

    async fn socket() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    async fn send(from: &UdpSocket, to: SocketAddr, frame: Frame<'_>) {
        let mut out = Vec::new();
        frame.try_encode(&mut out).unwrap();
        from.send_to(&out, to).await.unwrap();
    }

    /// The next datagram within [`QUIET`], with its source.
    async fn recv(on: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = vec![0u8; RECEIVE_BUFFER];
        let (n, from) = tokio::time::timeout(QUIET, on.recv_from(&mut buf))
            .await
            .ok()?
            .unwrap();
        buf.truncate(n);
        Some((buf, from))
    }

    /// The challenge `port` answers a `BindRequest` for `alloc` from `device` with.
    async fn challenge(
        device: &UdpSocket,
        port: &CallPort,
        alloc: AllocId,
    ) -> [u8; BIND_NONCE_LEN] {
        send(device, port.local_addr(), Frame::BindRequest { alloc }).await;
        let (bytes, from) = recv(device).await.expect("no Challenge");
        assert_eq!(from, port.local_addr());
        assert_eq!(bytes.len(), CHALLENGE_LEN, "as long as the request");
        match Frame::decode(&bytes).unwrap() {
            Frame::Challenge { alloc: a, nonce } if a == alloc => nonce,
            other => panic!("{other:?} instead of a Challenge"),
        }
    }

    /// Binds `device` to `grant` on `port` as a device does (`BindRequest`, `Challenge`,
    /// `Bind`) and waits for `Bound`; returns the `Bind` as it went on the wire.
    async fn bind_device(device: &UdpSocket, port: &CallPort, grant: &Grant) -> Vec<u8> {
        let nonce = challenge(device, port, grant.alloc).await;
        let mut bind = Vec::new();
        Frame::Bind {
            alloc: grant.alloc,
            nonce,
            proof: bind_proof(&grant.token, &grant.alloc, &nonce).unwrap(),
        }
        .encode(&mut bind);
        device.send_to(&bind, port.local_addr()).await.unwrap();
        let (bytes, from) = recv(device).await.expect("no Bound");
        assert_eq!(from, port.local_addr());
        assert_eq!(
            Frame::decode(&bytes).unwrap(),
            Frame::Bound { alloc: grant.alloc }
        );
        bind
    }

    /// A call port's table without its socket and task, for tests that set the clock: what it
    /// sends for `frame` from `from` at `now`, and where.
    fn handle_at(
        shared: &Shared,
        frame: Frame<'_>,
        from: &str,
        now: Instant,
    ) -> Option<(Frame<'static>, SocketAddr)> {
        let mut datagram = Vec::new();
        frame.try_encode(&mut datagram).unwrap();
        let mut out = Vec::new();
        let to = shared.handle(&datagram, from.parse().unwrap(), now, &mut out)?;
        let frame = match Frame::decode(&out).unwrap() {
            Frame::BindingResponse {
                transaction,
                mapped,
            } => Frame::BindingResponse {
                transaction,
                mapped,
            },
            Frame::Challenge { alloc, nonce } => Frame::Challenge { alloc, nonce },
            Frame::Bound { alloc } => Frame::Bound { alloc },
            other => panic!("unexpected {other:?}"),
        };
        Some((frame, to))
    }

    /// Two hosts' call ports, each with one allocation connected to the other's, and a device
    /// bound to each.
    struct Call {
        a: CallPort,
        b: CallPort,
        grant_a: Grant,
        grant_b: Grant,
        device_a: UdpSocket,
        device_b: UdpSocket,
    }

    impl Call {
        /// Whether `payload` from A's device reaches B's device through both relays.
        async fn a_to_b(&self, payload: &[u8]) -> bool {
            relays(
                &self.device_a,
                &self.a,
                self.grant_a.alloc,
                payload,
                &self.device_b,
                &self.b,
                self.grant_b.alloc,
            )
            .await
        }

        /// The same the other way.
        async fn b_to_a(&self, payload: &[u8]) -> bool {
            relays(
                &self.device_b,
                &self.b,
                self.grant_b.alloc,
                payload,
                &self.device_a,
                &self.a,
                self.grant_a.alloc,
            )
            .await
        }
    }

    async fn call(limits_a: RelayLimits) -> Call {
        let (a, b) = (port(limits_a).await, port(limits()).await);
        let (grant_a, grant_b) = (a.allocate().unwrap(), b.allocate().unwrap());
        a.connect(grant_a.alloc, b.local_addr(), grant_b.alloc)
            .unwrap();
        b.connect(grant_b.alloc, a.local_addr(), grant_a.alloc)
            .unwrap();
        let (device_a, device_b) = (socket().await, socket().await);
        bind_device(&device_a, &a, &grant_a).await;
        bind_device(&device_b, &b, &grant_b).await;
        Call {
            a,
            b,
            grant_a,
            grant_b,
            device_a,
            device_b,
        }
    }

    /// A sealed-looking media datagram.
    fn media(seq: u8, len: usize) -> Vec<u8> {
        let mut d = vec![0x01, 0, 0, 0, 0, 0, 0, 0, seq];
        d.resize(len.max(9), 0x5A);
        d
    }

    /// Whether `payload` sent by `from` as Data through `port` comes out at `to` as Data on
    /// `to_alloc`, from `to_port`.
    async fn relays(
        from: &UdpSocket,
        port: &CallPort,
        alloc: AllocId,
        payload: &[u8],
        to: &UdpSocket,
        to_port: &CallPort,
        to_alloc: AllocId,
    ) -> bool {
        send(from, port.local_addr(), Frame::Data { alloc, payload }).await;
        match recv(to).await {
            None => false,
            Some((bytes, source)) => {
                assert_eq!(source, to_port.local_addr());
                assert_eq!(
                    Frame::decode(&bytes).unwrap(),
                    Frame::Data {
                        alloc: to_alloc,
                        payload
                    }
                );
                true
            }
        }
    }

    #[tokio::test]
    async fn stun_is_answered_with_the_source_address() {
        let port = port(limits()).await;
        let device = socket().await;
        let transaction = [7; 12];
        send(
            &device,
            port.local_addr(),
            Frame::BindingRequest { transaction },
        )
        .await;
        let (bytes, from) = recv(&device).await.expect("no STUN answer");
        assert_eq!(from, port.local_addr());
        assert_eq!(
            Frame::decode(&bytes).unwrap(),
            Frame::BindingResponse {
                transaction,
                mapped: device.local_addr().unwrap(),
            }
        );
        assert_eq!(port.stats().stun_answered, 1);
    }

    #[tokio::test]
    async fn stun_answers_are_rate_limited() {
        let port = port(limits()).await;
        let device = socket().await;
        for i in 0..60u8 {
            send(
                &device,
                port.local_addr(),
                Frame::BindingRequest {
                    transaction: [i; 12],
                },
            )
            .await;
        }
        let mut answers = 0;
        while recv(&device).await.is_some() {
            answers += 1;
        }
        let stats = port.stats();
        assert_eq!(stats.stun_answered, answers);
        assert_eq!(stats.stun_answered + stats.stun_refused, 60);
        // The burst of 20, and whatever refilled at 100/s while the requests came in.
        assert!((20..40).contains(&answers), "{answers} answers");
    }

    #[tokio::test]
    async fn two_relays_carry_media_both_ways() {
        let c = call(limits()).await;
        for seq in 0..5 {
            let payload = media(seq, 200);
            assert!(c.a_to_b(&payload).await);
            assert!(c.b_to_a(&payload).await);
        }
        let [a] = &c.a.allocations()[..] else {
            panic!("one allocation on A")
        };
        assert!(a.device_bound && a.connected);
        assert_eq!((a.packets_to_peer, a.bytes_to_peer), (5, 1000));
        assert_eq!((a.packets_to_device, a.bytes_to_device), (5, 1000));
        assert_eq!(a.dropped_over_cap, 0);
    }

    #[tokio::test]
    async fn a_wrong_proof_or_unknown_allocation_is_refused() {
        let port = port(limits()).await;
        let grant = port.allocate().unwrap();
        let device = socket().await;
        let nonce = challenge(&device, &port, grant.alloc).await;
        // A proof under another token, a proof with a bit flipped, the right proof for an
        // allocation that is not there.
        let mut other_token = grant.token;
        other_token[RELAY_TOKEN_LEN - 1] ^= 1;
        let right = bind_proof(&grant.token, &grant.alloc, &nonce).unwrap();
        let mut flipped = right;
        flipped[0] ^= 0x80;
        for (alloc, proof) in [
            (
                grant.alloc,
                bind_proof(&other_token, &grant.alloc, &nonce).unwrap(),
            ),
            (grant.alloc, flipped),
            ([0xFF; ALLOC_ID_LEN], right),
        ] {
            send(
                &device,
                port.local_addr(),
                Frame::Bind {
                    alloc,
                    nonce,
                    proof,
                },
            )
            .await;
        }
        assert!(recv(&device).await.is_none(), "a refused bind is answered");
        assert_eq!(port.stats().binds_refused, 3);
        assert!(!port.allocations()[0].device_bound);
    }

    #[tokio::test]
    async fn a_bind_request_for_an_unknown_allocation_gets_nothing() {
        let port = port(limits()).await;
        port.allocate().unwrap();
        let stranger = socket().await;
        send(
            &stranger,
            port.local_addr(),
            Frame::BindRequest {
                alloc: [0xFF; ALLOC_ID_LEN],
            },
        )
        .await;
        assert!(recv(&stranger).await.is_none(), "a stranger got an answer");
        let stats = port.stats();
        assert_eq!((stats.binds_refused, stats.challenges_sent), (1, 0));
    }

    #[tokio::test]
    async fn a_sniffed_bind_replayed_from_another_address_does_not_move_the_allocation() {
        let c = call(limits()).await;
        // What an attacker on the way saw of device A's bind: no token in it.
        let sniffed = bind_device(&c.device_a, &c.a, &c.grant_a).await;
        assert!(!sniffed
            .windows(RELAY_TOKEN_LEN)
            .any(|w| w == c.grant_a.token));
        let refused = c.a.stats().binds_refused;
        // Replayed from the victim's address (here a socket of the victim's own), it moves
        // nothing and is not answered.
        let victim = socket().await;
        victim.send_to(&sniffed, c.a.local_addr()).await.unwrap();
        assert!(recv(&victim).await.is_none(), "the victim got an answer");
        assert_eq!(c.a.stats().binds_refused, refused + 1);
        // B's media still goes to A's device, none of it to the victim, and A's device is
        // still the one A's relay takes media from.
        let payload = media(7, 300);
        assert!(c.b_to_a(&payload).await);
        assert!(recv(&victim).await.is_none(), "media went to the victim");
        assert!(c.a_to_b(&payload).await);
        // Replayed from the device's own address, it binds that address again, nothing more.
        c.device_a
            .send_to(&sniffed, c.a.local_addr())
            .await
            .unwrap();
        let (bytes, _) = recv(&c.device_a).await.expect("no Bound");
        assert_eq!(
            Frame::decode(&bytes).unwrap(),
            Frame::Bound {
                alloc: c.grant_a.alloc
            }
        );
        assert!(c.b_to_a(&payload).await);
        assert!(recv(&victim).await.is_none());
    }

    #[test]
    fn a_bind_with_a_stale_or_foreign_nonce_or_a_wrong_proof_is_refused() {
        let (shared, _stopped) = Shared::new("192.0.2.1:7423".parse().unwrap(), limits());
        let at = |secs: f64| shared.origin + Duration::from_secs_f64(secs);
        let grant = shared.allocate().unwrap();
        let alloc = grant.alloc;
        let (device, other_port, other_ip) = (
            "198.51.100.7:40000",
            "198.51.100.7:40001",
            "198.51.100.8:40000",
        );
        let challenge = |from: &str, now: Instant| match handle_at(
            &shared,
            Frame::BindRequest { alloc },
            from,
            now,
        ) {
            Some((Frame::Challenge { alloc: a, nonce }, to)) => {
                assert_eq!((a, to), (alloc, canonical(from.parse().unwrap())));
                nonce
            }
            other => panic!("{other:?} instead of a challenge"),
        };
        let proof = |nonce: &[u8; BIND_NONCE_LEN]| bind_proof(&grant.token, &alloc, nonce).unwrap();
        let bind = |nonce, proof, from: &str, now| {
            handle_at(
                &shared,
                Frame::Bind {
                    alloc,
                    nonce,
                    proof,
                },
                from,
                now,
            )
        };
        let bound = |from: &str| Some((Frame::Bound { alloc }, from.parse().unwrap()));

        let nonce = challenge(device, at(1.0));
        // Stateless: the same nonce for the same allocation and address all epoch long
        // (an IPv4-mapped source is the IPv4 address), another one for any other address.
        assert_eq!(challenge(device, at(9.9)), nonce);
        assert_eq!(challenge("[::ffff:198.51.100.7]:40000", at(2.0)), nonce);
        assert_ne!(challenge(other_port, at(1.0)), nonce);
        assert_ne!(challenge(other_ip, at(1.0)), nonce);

        // The nonce of another address; a wrong proof; a proof under another token.
        assert_eq!(bind(nonce, proof(&nonce), other_port, at(1.0)), None);
        assert_eq!(bind(nonce, proof(&nonce), other_ip, at(1.0)), None);
        let mut flipped = proof(&nonce);
        flipped[BIND_PROOF_LEN - 1] ^= 1;
        assert_eq!(bind(nonce, flipped, device, at(1.0)), None);
        let other_token = bind_proof(&[0; RELAY_TOKEN_LEN], &alloc, &nonce).unwrap();
        assert_eq!(bind(nonce, other_token, device, at(1.0)), None);
        // A nonce nobody made, with its right proof.
        let made_up = [0x5A; BIND_NONCE_LEN];
        assert_eq!(bind(made_up, proof(&made_up), device, at(1.0)), None);
        assert_eq!(shared.lock().stats.binds_refused, 5);
        assert!(shared.lock().allocations[&alloc].device.is_none());

        // Good in its epoch and the next...
        assert_eq!(bind(nonce, proof(&nonce), device, at(1.0)), bound(device));
        assert_eq!(bind(nonce, proof(&nonce), device, at(19.9)), bound(device));
        // ... not after.
        assert_eq!(bind(nonce, proof(&nonce), device, at(20.0)), None);
        assert_eq!(shared.lock().stats.binds_refused, 6);
        // A device that moved asks again from where it is now, and moves.
        let fresh = challenge(other_ip, at(20.0));
        assert_eq!(
            bind(fresh, proof(&fresh), other_ip, at(20.0)),
            bound(other_ip)
        );
        assert_eq!(
            shared.lock().allocations[&alloc].device,
            Some(other_ip.parse().unwrap())
        );
    }

    #[test]
    fn challenges_are_rate_limited_with_stun() {
        let (shared, _stopped) = Shared::new("192.0.2.1:7423".parse().unwrap(), limits());
        let t0 = shared.origin;
        let alloc = shared.allocate().unwrap().alloc;
        let stranger = "203.0.113.5:999";
        let stun = |i: u8, now| {
            handle_at(
                &shared,
                Frame::BindingRequest {
                    transaction: [i; 12],
                },
                stranger,
                now,
            )
        };
        let request = |now| handle_at(&shared, Frame::BindRequest { alloc }, stranger, now);
        // STUN takes the whole burst, and then there is no challenge either...
        for i in 0..20 {
            assert!(stun(i, t0).is_some());
        }
        assert!(request(t0).is_none());
        assert!(stun(20, t0).is_none());
        // ... until the bucket refills (100 a second): 15 ms later, one answer, whichever.
        let later = t0 + Duration::from_millis(15);
        assert!(request(later).is_some());
        assert!(stun(21, later).is_none());
        // Requests (forged ones as well) take the whole burst the same way.
        let later = t0 + Duration::from_secs(1);
        let answered = (0..25).filter(|_| request(later).is_some()).count();
        assert_eq!(answered, 20);
        assert!(stun(22, later).is_none());
        let stats = shared.lock().stats.clone();
        assert_eq!((stats.stun_answered, stats.stun_refused), (20, 3));
        assert_eq!((stats.challenges_sent, stats.challenges_refused), (21, 6));
    }

    #[tokio::test]
    async fn data_from_a_stranger_is_not_forwarded() {
        let c = call(limits()).await;
        let stranger = socket().await;
        let payload = media(1, 100);
        // Data on A's allocation, but not from A's device.
        assert!(
            !relays(
                &stranger,
                &c.a,
                c.grant_a.alloc,
                &payload,
                &c.device_b,
                &c.b,
                c.grant_b.alloc
            )
            .await
        );
        // A Forward to B's allocation, but not from A's relay.
        send(
            &stranger,
            c.b.local_addr(),
            Frame::Forward {
                alloc: c.grant_b.alloc,
                payload: &payload,
            },
        )
        .await;
        assert!(recv(&c.device_b).await.is_none());
        assert!(recv(&stranger).await.is_none(), "a stranger got an answer");
        assert_eq!(c.a.stats().dropped, 1);
        assert_eq!(c.b.stats().dropped, 1);
        // Garbage of every kind changes nothing, and the port still serves.
        for junk in [
            &[][..],
            &[0xC4],
            &[0xC5, 1, 2],
            &[0x00, 0x01, 0x00],
            &[0xFF; 64],
        ] {
            stranger.send_to(junk, c.a.local_addr()).await.unwrap();
        }
        assert!(c.a_to_b(&payload).await);
    }

    #[tokio::test]
    async fn data_before_connect_is_dropped() {
        let port = port(limits()).await;
        let grant = port.allocate().unwrap();
        let device = socket().await;
        bind_device(&device, &port, &grant).await;
        let payload = media(1, 100);
        send(
            &device,
            port.local_addr(),
            Frame::Data {
                alloc: grant.alloc,
                payload: &payload,
            },
        )
        .await;
        assert!(recv(&device).await.is_none());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(port.stats().dropped, 1);
        assert_eq!(port.allocations()[0].packets_to_peer, 0);
    }

    #[tokio::test]
    async fn a_device_that_moves_rebinds() {
        let c = call(limits()).await;
        let moved = socket().await;
        bind_device(&moved, &c.a, &c.grant_a).await;
        let payload = media(2, 100);
        assert!(
            relays(
                &c.device_b,
                &c.b,
                c.grant_b.alloc,
                &payload,
                &moved,
                &c.a,
                c.grant_a.alloc
            )
            .await
        );
        // The old address is no longer the device's.
        assert!(!c.a_to_b(&payload).await);
    }

    #[tokio::test]
    async fn the_rate_cap_drops_what_is_over_it() {
        // 80 kbit/s: 10,000 bytes a second, a burst of 64 KiB (the floor).
        let c = call(RelayLimits {
            kbps: 80,
            ..limits()
        })
        .await;
        let payload = media(3, 1000);
        for i in 0..100 {
            if i % 10 == 0 {
                // Paced, so that no socket buffer on the way overflows.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            send(
                &c.device_a,
                c.a.local_addr(),
                Frame::Data {
                    alloc: c.grant_a.alloc,
                    payload: &payload,
                },
            )
            .await;
        }
        let mut through = 0;
        while recv(&c.device_b).await.is_some() {
            through += 1;
        }
        let a = &c.a.allocations()[0];
        assert_eq!(a.packets_to_peer, through);
        assert_eq!(a.packets_to_peer + a.dropped_over_cap, 100);
        // 65 of the burst, and a few refilled while they were sent.
        assert!((65..80).contains(&through), "{through} went through");
    }

    #[tokio::test]
    async fn release_stops_forwarding() {
        let c = call(limits()).await;
        c.a.release(c.grant_a.alloc);
        assert!(c.a.allocations().is_empty());
        let payload = media(4, 100);
        assert!(!c.a_to_b(&payload).await);
        assert!(!c.b_to_a(&payload).await);
        assert_eq!(
            c.a.connect(c.grant_a.alloc, c.b.local_addr(), c.grant_b.alloc),
            Err(RelayError::Unknown(hex::encode(c.grant_a.alloc)))
        );
    }

    #[tokio::test]
    async fn idle_allocations_are_released() {
        let port = port(RelayLimits {
            idle: Duration::from_millis(500),
            ..limits()
        })
        .await;
        let quiet = port.allocate().unwrap();
        let busy = port.allocate().unwrap();
        let device = socket().await;
        // The busy one's device binds every 100 ms, which counts as traffic.
        for _ in 0..12 {
            bind_device(&device, &port, &busy).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left: Vec<AllocId> = port.allocations().iter().map(|a| a.alloc).collect();
        assert_eq!(left, [busy.alloc]);
        assert_ne!(quiet.alloc, busy.alloc);
        assert_eq!(port.stats().released_idle, 1);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(port.allocations().is_empty());
    }

    #[tokio::test]
    async fn allocations_are_bounded() {
        let port = port(RelayLimits {
            max_allocations: 2,
            ..limits()
        })
        .await;
        let first = port.allocate().unwrap();
        port.allocate().unwrap();
        assert_eq!(port.allocate(), Err(RelayError::Full(2)));
        port.release(first.alloc);
        port.allocate().unwrap();
        assert_eq!(
            port.connect(first.alloc, "0.0.0.0:1".parse().unwrap(), [0; 8]),
            Err(RelayError::BadPeer("0.0.0.0:1".parse().unwrap()))
        );
    }

    #[tokio::test]
    async fn a_closed_port_answers_nothing() {
        let port = port(limits()).await;
        let device = socket().await;
        port.close();
        assert_eq!(port.allocate(), Err(RelayError::Closed));
        send(
            &device,
            port.local_addr(),
            Frame::BindingRequest {
                transaction: [1; 12],
            },
        )
        .await;
        assert!(recv(&device).await.is_none());
    }
}
