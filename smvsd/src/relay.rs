//! The call port: one UDP socket on which the host answers STUN Binding requests (so that its
//! user's devices behind a NAT learn their server-reflexive address) and relays sealed call
//! media for its own user's calls, which it cannot read.
//!
//! ```text
//!  device A ──Data{a}──► [A's CallPort] ──Forward{b}──► [B's CallPort] ──Data{b}──► device B
//!  device A ◄─Data{a}─── [A's CallPort] ◄─Forward{a}─── [B's CallPort] ◄─Data{b}─── device B
//! ```
//!
//! The frames are `smvs_transport::callport`'s. Whoever sets a call up (the calls actor)
//! [`CallPort::allocate`]s a leg, hands the grant's id and token to its own user's device
//! (inside the sealed call signalling), and [`CallPort::connect`]s the leg to the peer host's
//! relay allocation once it knows it. The device claims the leg with `Bind{alloc, token}` from
//! the address it will send from (a later bind from another address moves it: NAT rebinding).
//!
//! An allocation only ever talks to two addresses: the device bound to it and the one peer
//! relay it was connected to. `Data{alloc}` from the bound device goes to the peer relay as
//! `Forward{peer_alloc}`; `Forward{alloc}` from exactly the peer relay goes to the device as
//! `Data{alloc}`. Everything else is dropped and counted, never answered (except STUN, bounded
//! by a global token bucket so that the port is no amplifier). Each allocation has a byte rate
//! cap (both directions together); allocations with no packet for [`RelayLimits::idle`] are
//! released; at most [`RelayLimits::max_allocations`] exist at once. So nothing from the network
//! grows memory, and nothing from the network can panic the task.
//!
//! Owns: the socket (in its own tokio task) and the allocation table (behind a mutex the task
//! and the handles share; held only for the bookkeeping of one datagram, never across an
//! `.await`). Logs never carry packet contents or tokens.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use smvs_transport::callport::{AllocId, Frame, RelayToken};
use thiserror::Error;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

/// STUN answers per second, over all sources.
const STUN_PER_SECOND: f64 = 100.0;
/// STUN answers that may go out at once.
const STUN_BURST: f64 = 20.0;
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
    /// Binding requests not answered because of the global rate limit.
    pub stun_refused: u64,
    /// Binds with an unknown allocation or a wrong token.
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
        let shared = Arc::new(Shared {
            local,
            limits,
            state: Mutex::new(State {
                closed: false,
                allocations: HashMap::new(),
                stun: Bucket::new(STUN_PER_SECOND, STUN_BURST, Instant::now()),
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
            Frame::Bind { alloc, token } => {
                let allocation = state
                    .allocations
                    .get_mut(&alloc)
                    .filter(|a| smvs_crypto::constant_time_eq(&a.token, &token));
                let Some(allocation) = allocation else {
                    state.stats.binds_refused += 1;
                    let refused = state.stats.binds_refused;
                    if refused.is_power_of_two() {
                        tracing::debug!(
                            refused,
                            "refused a relay bind (unknown allocation or wrong token)"
                        );
                    }
                    return None;
                };
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
                let Some(allocation) = state.allocations.get_mut(&alloc) else {
                    state.stats.dropped += 1;
                    return None;
                };
                let (Some(device), Some((peer_relay, peer_alloc))) =
                    (allocation.device, allocation.peer)
                else {
                    state.stats.dropped += 1;
                    return None;
                };
                if device != from {
                    state.stats.dropped += 1;
                    return None;
                }
                allocation.last_seen = now;
                if !allocation.bucket.take(payload.len() as f64, now) {
                    allocation.dropped_over_cap += 1;
                    return None;
                }
                allocation.packets_to_peer += 1;
                allocation.bytes_to_peer += payload.len() as u64;
                Frame::Forward {
                    alloc: peer_alloc,
                    payload,
                }
                .encode(out);
                Some(peer_relay)
            }
            Frame::Forward { alloc, payload } => {
                let Some(allocation) = state.allocations.get_mut(&alloc) else {
                    state.stats.dropped += 1;
                    return None;
                };
                let (Some(device), Some((peer_relay, _))) = (allocation.device, allocation.peer)
                else {
                    state.stats.dropped += 1;
                    return None;
                };
                if peer_relay != from {
                    state.stats.dropped += 1;
                    return None;
                }
                allocation.last_seen = now;
                if !allocation.bucket.take(payload.len() as f64, now) {
                    allocation.dropped_over_cap += 1;
                    return None;
                }
                allocation.packets_to_device += 1;
                allocation.bytes_to_device += payload.len() as u64;
                Frame::Data { alloc, payload }.encode(out);
                Some(device)
            }
            Frame::BindingResponse { .. } | Frame::Bound { .. } => {
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
            _ = sweep.tick() => shared.sweep(Instant::now()),
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

/// The relay's decisions without a socket or a task, for the fuzz target (`fuzz/`): the same
/// table and the same handling of each datagram as [`CallPort`]'s task.
#[doc(hidden)]
pub mod fuzzing {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use smvs_transport::callport::AllocId;
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
    use smvs_transport::callport::{ALLOC_ID_LEN, RELAY_TOKEN_LEN};

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

    /// Binds `device` to `grant` on `port` and waits for `Bound`.
    async fn bind_device(device: &UdpSocket, port: &CallPort, grant: &Grant) {
        send(
            device,
            port.local_addr(),
            Frame::Bind {
                alloc: grant.alloc,
                token: grant.token,
            },
        )
        .await;
        let (bytes, from) = recv(device).await.expect("no Bound");
        assert_eq!(from, port.local_addr());
        assert_eq!(
            Frame::decode(&bytes).unwrap(),
            Frame::Bound { alloc: grant.alloc }
        );
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
            assert!(
                relays(
                    &c.device_a,
                    &c.a,
                    c.grant_a.alloc,
                    &payload,
                    &c.device_b,
                    &c.b,
                    c.grant_b.alloc
                )
                .await
            );
            assert!(
                relays(
                    &c.device_b,
                    &c.b,
                    c.grant_b.alloc,
                    &payload,
                    &c.device_a,
                    &c.a,
                    c.grant_a.alloc
                )
                .await
            );
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
    async fn a_wrong_token_or_unknown_allocation_is_refused() {
        let port = port(limits()).await;
        let grant = port.allocate().unwrap();
        let device = socket().await;
        let mut token = grant.token;
        token[RELAY_TOKEN_LEN - 1] ^= 1;
        send(
            &device,
            port.local_addr(),
            Frame::Bind {
                alloc: grant.alloc,
                token,
            },
        )
        .await;
        send(
            &device,
            port.local_addr(),
            Frame::Bind {
                alloc: [0xFF; ALLOC_ID_LEN],
                token: grant.token,
            },
        )
        .await;
        assert!(recv(&device).await.is_none(), "a refused bind is answered");
        assert_eq!(port.stats().binds_refused, 2);
        assert!(!port.allocations()[0].device_bound);
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
        assert!(
            relays(
                &c.device_a,
                &c.a,
                c.grant_a.alloc,
                &payload,
                &c.device_b,
                &c.b,
                c.grant_b.alloc
            )
            .await
        );
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
        assert!(
            !relays(
                &c.device_a,
                &c.a,
                c.grant_a.alloc,
                &payload,
                &c.device_b,
                &c.b,
                c.grant_b.alloc
            )
            .await
        );
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
        assert!(
            !relays(
                &c.device_a,
                &c.a,
                c.grant_a.alloc,
                &payload,
                &c.device_b,
                &c.b,
                c.grant_b.alloc
            )
            .await
        );
        assert!(
            !relays(
                &c.device_b,
                &c.b,
                c.grant_b.alloc,
                &payload,
                &c.device_a,
                &c.a,
                c.grant_a.alloc
            )
            .await
        );
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
