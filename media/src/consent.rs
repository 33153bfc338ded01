//! Which path the call's media takes, and consent to use it: connectivity checks in the manner of
//! ICE (RFC 8445) and consent freshness (RFC 7675), carried in the call's own sealed hellos.
//!
//! A device may reach the peer on several paths ([`Path`]): straight to each of the peer's
//! candidate addresses (its own address, and the address its NAT shows the world, which the
//! peer's host told it by STUN), to an address the peer's hellos came from that it never named
//! (peer-reflexive, a NAT that maps per destination), and through our own host's relay. Each
//! endpoint checks every path with a [`Hello`] carrying a fresh random challenge and sends
//! media only on a path where a hello from the peer echoed one of those challenges *on that same
//! path*: only whoever receives our datagrams at that address learns the challenge, and only
//! the peer can seal a reply. So a peer that names someone else's address (a victim's) gets
//! that address nothing but a few hellos, however it talks to us.
//!
//! * Each side picks its own sending path: the most direct one confirmed, waiting up to
//!   [`SELECT_WAIT`] after the first confirmation for a better kind still being checked, and
//!   moving up to a better kind if one is confirmed later (as browsers do: media flows on the
//!   first path that works, and moves when a better one does). The two directions may differ; each
//!   has its own consent, and replies always go back on the path the check came in on, which
//!   keeps a NAT's mapping open for the other direction.
//! * Checks go out on every path at once, every [`HELLO_FAST`] for [`HELLO_FAST_FOR`], then
//!   every [`HELLO_SLOW`]; once a path is chosen, the others stop after [`CHECK_GIVE_UP`]. On
//!   the chosen path a check goes out every [`HELLO_SLOW`], each with a fresh challenge; consent
//!   lapses [`CONSENT_TIMEOUT`] after the last one echoed, and then media is held and every path
//!   is checked again (the relay takes over when the direct path died).
//! * Hellos, answers included, are paced to one per [`HELLO_MIN_GAP`] with a burst of
//!   [`HELLO_BURST`], whatever the peer sends.
//! * Until a path is chosen, RTP is held in a bounded queue ([`Held`]: at most
//!   [`HELD_MAX_PACKETS`] packets, none older than [`HELD_MAX_AGE`]) and flushed in order when
//!   one is, so the start of the call, its first keyframe included, is not lost; RTCP is not
//!   sent at all (it is periodic, and a report held back would skew the round-trip time).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use smvs_crypto::{constant_time_eq, random_array};

use crate::wire::{Hello, Stream, CHALLENGE_LEN};

/// Check interval on a path at the start of its search...
pub(crate) const HELLO_FAST: Duration = Duration::from_millis(100);
/// ... for this long ...
pub(crate) const HELLO_FAST_FOR: Duration = Duration::from_secs(1);
/// ... and after that; also the consent check interval on the chosen path.
pub(crate) const HELLO_SLOW: Duration = Duration::from_secs(1);
/// Hellos, answers included, are paced to one per this interval...
pub(crate) const HELLO_MIN_GAP: Duration = Duration::from_millis(10);
/// ... with bursts of this many.
pub(crate) const HELLO_BURST: u32 = 4;
/// Consent lapses when no check on the chosen path was echoed for this long.
pub(crate) const CONSENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A path whose last echo is older than this is not relied on: media moves to another path
/// still answering, if there is one (three checks missed in a row).
pub(crate) const FAILOVER_AFTER: Duration = Duration::from_secs(3);
/// How long, after the first path is confirmed, to wait for a more direct one before sending
/// media on it (a more direct one confirmed later takes over anyway): long enough for checks
/// that went out together to come back together, short enough that a call whose direct paths
/// never work starts on the relay at once.
pub(crate) const SELECT_WAIT: Duration = Duration::from_millis(200);
/// A path unconfirmed this long after its checks began is not waited for, and, once a path is
/// chosen, no longer checked.
pub(crate) const CHECK_GIVE_UP: Duration = Duration::from_secs(5);
/// Most paths tracked (the peer's candidates, peer-reflexive ones, the relay).
pub(crate) const MAX_PATHS: usize = 12;
/// Most checks awaiting their echo.
const MAX_PENDING: usize = 64;
/// Most RTP packets held while waiting for consent (about 3 s of a 1 Mbit/s call).
pub(crate) const HELD_MAX_PACKETS: usize = 512;
/// Oldest RTP packet still worth sending once consent comes.
pub(crate) const HELD_MAX_AGE: Duration = Duration::from_secs(2);

/// Where a datagram goes to or came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// Straight to (or from) this address.
    Direct(SocketAddr),
    /// Through our own host's relay, which passes it to the peer's host's relay.
    Relayed,
}

/// What kind of path media takes, most direct last (the order is the preference).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Through the two users' hosts.
    Relayed,
    /// Straight, through at least one NAT (the peer's server-reflexive or peer-reflexive
    /// address, or ours).
    Reflexive,
    /// Straight between the two devices' own addresses.
    Direct,
}

/// A change of the path media is sent on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Send media on this path from now on.
    Chosen(Path, PathKind),
    /// Consent lapsed: hold media.
    Lost,
}

#[derive(Debug)]
struct PathState {
    path: Path,
    kind: PathKind,
    /// The peer's latest challenge heard on this path and not yet echoed.
    peer_challenge: Option<[u8; CHALLENGE_LEN]>,
    /// The peer asked for an answer on this path.
    reply_owed: bool,
    /// When a check of ours on this path was last echoed back on it.
    confirmed: Option<Instant>,
    last_check: Option<Instant>,
    /// When the current round of checks on this path began.
    checking_since: Instant,
}

impl PathState {
    fn confirmed_within(&self, now: Instant, span: Duration) -> bool {
        self.confirmed
            .is_some_and(|t| now.saturating_duration_since(t) < span)
    }

    /// Media may still go here.
    fn consented(&self, now: Instant) -> bool {
        self.confirmed_within(now, CONSENT_TIMEOUT)
    }

    /// The peer answers here.
    fn live(&self, now: Instant) -> bool {
        self.confirmed_within(now, FAILOVER_AFTER)
    }

    fn given_up(&self, now: Instant) -> bool {
        !self.consented(now) && now.saturating_duration_since(self.checking_since) >= CHECK_GIVE_UP
    }
}

/// The receive thread's view of the paths: what to check, what was confirmed, which is chosen.
#[derive(Debug)]
pub(crate) struct Paths {
    paths: Vec<PathState>,
    /// Our checks awaiting an echo: challenge, path, when sent. Oldest first.
    pending: VecDeque<([u8; CHALLENGE_LEN], Path, Instant)>,
    chosen: Option<usize>,
    /// When the current search found its first confirmed path.
    first_confirmed: Option<Instant>,
    /// Pacing (the generic cell rate algorithm): a hello may go out from `pace -
    /// HELLO_BURST × HELLO_MIN_GAP` on, and each one moves `pace` one gap past the later of
    /// itself and now.
    pace: Instant,
    /// Paths the peer's hellos came from without being one we knew of are "reflexive"; when
    /// we are behind a NAT ourselves, every direct path is.
    behind_nat: bool,
    /// The call is relayed only: no straight path is ever added, whatever the peer sends.
    relay_only: bool,
}

impl Paths {
    /// `known`: the paths to check from the start, with their kind.
    pub(crate) fn new(
        known: &[(Path, PathKind)],
        behind_nat: bool,
        relay_only: bool,
        now: Instant,
    ) -> Paths {
        let mut paths = Paths {
            paths: Vec::new(),
            pending: VecDeque::new(),
            chosen: None,
            first_confirmed: None,
            pace: now,
            behind_nat,
            relay_only,
        };
        for &(path, kind) in known {
            paths.add(path, kind, now);
        }
        paths
    }

    fn add(&mut self, path: Path, kind: PathKind, now: Instant) -> Option<usize> {
        if let Some(i) = self.paths.iter().position(|p| p.path == path) {
            return Some(i);
        }
        if self.relay_only && path != Path::Relayed {
            return None;
        }
        let kind = match (path, self.behind_nat) {
            (Path::Direct(_), true) => kind.min(PathKind::Reflexive),
            _ => kind,
        };
        let state = PathState {
            path,
            kind,
            peer_challenge: None,
            reply_owed: false,
            confirmed: None,
            last_check: None,
            checking_since: now,
        };
        if self.paths.len() < MAX_PATHS {
            self.paths.push(state);
            return Some(self.paths.len() - 1);
        }
        // Full: a path that never answered and is given up makes room (the peer's NAT may
        // have moved it to a new port, which must not find the table full for good).
        let chosen = self.chosen;
        let i = (0..self.paths.len()).find(|&i| {
            Some(i) != chosen
                && self
                    .paths
                    .get(i)
                    .is_some_and(|p| p.confirmed.is_none() && p.given_up(now))
        })?;
        let old = self.paths.get(i)?.path;
        self.pending.retain(|(_, p, _)| *p != old);
        *self.paths.get_mut(i)? = state;
        Some(i)
    }

    /// The path media goes on, if one is chosen.
    #[cfg(test)]
    pub(crate) fn chosen(&self) -> Option<(Path, PathKind)> {
        let p = self.paths.get(self.chosen?)?;
        Some((p.path, p.kind))
    }

    /// An authenticated hello from the peer, arrived on `path`.
    pub(crate) fn hello(&mut self, path: Path, hello: &Hello, now: Instant) -> Option<Change> {
        // A path we did not know: the peer reached us from an address it never named (its
        // NAT maps per destination). Our checks there go back the way its hello came.
        let i = self.add(path, PathKind::Reflexive, now)?;
        if let Some(p) = self.paths.get_mut(i) {
            p.peer_challenge = Some(hello.challenge);
            p.reply_owed |= hello.seeking;
        }
        if let Some(echo) = hello.echo {
            // Only the path the check went out on: an echo coming back another way says
            // nothing about where our datagrams arrive.
            if let Some(at) = self
                .pending
                .iter()
                .position(|(c, p, _)| *p == path && constant_time_eq(c, &echo))
            {
                self.pending.remove(at);
                if let Some(p) = self.paths.get_mut(i) {
                    p.confirmed = Some(now);
                }
                self.first_confirmed.get_or_insert(now);
            }
        }
        self.choose(now)
    }

    /// Picks the sending path: the most direct live one, once nothing better is worth
    /// waiting for; a better kind confirmed later replaces it, and so does any live path when
    /// the chosen one stops answering. Consent lapses when it has not answered for
    /// [`CONSENT_TIMEOUT`] and no other path does.
    fn choose(&mut self, now: Instant) -> Option<Change> {
        let best = self
            .paths
            .iter()
            .enumerate()
            .filter(|(_, p)| p.live(now))
            .max_by_key(|(i, p)| (p.kind, std::cmp::Reverse(*i)))
            .map(|(i, p)| (i, p.kind));
        let pick = match (
            self.chosen.and_then(|c| Some((c, self.paths.get(c)?))),
            best,
        ) {
            (Some((c, current)), Some((i, kind))) => {
                (i != c && (kind > current.kind || !current.live(now))).then_some(i)
            }
            (Some((_, current)), None) => {
                if !current.consented(now) {
                    self.restart(now);
                    return Some(Change::Lost);
                }
                None
            }
            (None, Some((i, kind))) => {
                let waited = self
                    .first_confirmed
                    .is_some_and(|t| now.saturating_duration_since(t) >= SELECT_WAIT);
                let better_pending = self.paths.iter().any(|p| p.kind > kind && !p.given_up(now));
                (waited || !better_pending).then_some(i)
            }
            (None, None) => None,
        }?;
        self.chosen = Some(pick);
        let p = self.paths.get(pick)?;
        Some(Change::Chosen(p.path, p.kind))
    }

    /// Consent lost: every path is checked again from the start.
    fn restart(&mut self, now: Instant) {
        self.chosen = None;
        self.first_confirmed = None;
        for p in &mut self.paths {
            p.checking_since = now;
            p.last_check = None;
        }
    }

    /// Upkeep: moves off a path that stopped answering, withdraws consent, and chooses when
    /// the wait for a better path is over.
    pub(crate) fn tick(&mut self, now: Instant) -> Option<Change> {
        self.choose(now)
    }

    /// When a check is next due on path `p` (None: no more checks there for now).
    fn check_due(&self, i: usize, now: Instant) -> Option<Instant> {
        let p = self.paths.get(i)?;
        let Some(last) = p.last_check else {
            return Some(p.checking_since);
        };
        // The chosen path, and the others that answer (ready to take over): consent checks.
        if self.chosen == Some(i) || p.consented(now) {
            return Some(last + HELLO_SLOW);
        }
        if self.chosen.is_some() && p.given_up(now) {
            return None;
        }
        let interval = if last.saturating_duration_since(p.checking_since) < HELLO_FAST_FOR {
            HELLO_FAST
        } else {
            HELLO_SLOW
        };
        Some(last + interval)
    }

    fn earliest(&self) -> Instant {
        let burst = HELLO_MIN_GAP * HELLO_BURST;
        self.pace.checked_sub(burst).unwrap_or(self.pace)
    }

    /// When the next hello is due, if one is.
    pub(crate) fn next_hello(&self, now: Instant) -> Option<Instant> {
        let due = (0..self.paths.len())
            .filter_map(|i| {
                let owed = self.paths.get(i).is_some_and(|p| p.reply_owed);
                if owed {
                    Some(now)
                } else {
                    self.check_due(i, now)
                }
            })
            .min()?;
        Some(due.max(self.earliest()))
    }

    /// The hello to send now, and its path, if one is due: answers first, then the check that
    /// has waited longest.
    pub(crate) fn hello_to_send(&mut self, now: Instant) -> Option<(Path, Hello)> {
        if self.earliest() > now {
            return None;
        }
        let owed = self.paths.iter().position(|p| p.reply_owed);
        let check = (0..self.paths.len())
            .filter_map(|i| Some((self.check_due(i, now)?, i)))
            .filter(|(due, _)| *due <= now)
            .min()
            .map(|(_, i)| i);
        let i = owed.or(check)?;
        let seeking = self.check_due(i, now).is_some_and(|due| due <= now);
        self.pace = self.pace.max(now) + HELLO_MIN_GAP;
        let p = self.paths.get_mut(i)?;
        let challenge = random_array();
        p.reply_owed = false;
        if seeking {
            p.last_check = Some(now);
        }
        let hello = Hello {
            seeking,
            challenge,
            echo: p.peer_challenge.take(),
        };
        if seeking {
            let path = p.path;
            while self.pending.len() >= MAX_PENDING {
                self.pending.pop_front();
            }
            self.pending
                .retain(|(_, _, at)| now.saturating_duration_since(*at) < CONSENT_TIMEOUT);
            self.pending.push_back((challenge, path, now));
        }
        Some((p.path, hello))
    }
}

/// RTP waiting for consent, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Held {
    packets: VecDeque<(Instant, Stream, Vec<u8>)>,
}

impl Held {
    fn drop_stale(&mut self, now: Instant) -> u64 {
        let mut dropped = 0;
        while self
            .packets
            .front()
            .is_some_and(|(at, _, _)| now.saturating_duration_since(*at) > HELD_MAX_AGE)
        {
            self.packets.pop_front();
            dropped += 1;
        }
        dropped
    }

    /// Holds `packet`; returns how many older packets were dropped to make room (or for age).
    pub(crate) fn push(&mut self, now: Instant, stream: Stream, packet: Vec<u8>) -> u64 {
        let mut dropped = self.drop_stale(now);
        while self.packets.len() >= HELD_MAX_PACKETS {
            self.packets.pop_front();
            dropped += 1;
        }
        self.packets.push_back((now, stream, packet));
        dropped
    }

    /// Empties the queue: the packets still fresh enough to send, in order, and how many were
    /// too old.
    pub(crate) fn drain(&mut self, now: Instant) -> (Vec<(Stream, Vec<u8>)>, u64) {
        let dropped = self.drop_stale(now);
        let fresh = self.packets.drain(..).map(|(_, s, p)| (s, p)).collect();
        (fresh, dropped)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.packets.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    /// Two agents that hear each other on the paths `link` lets through (a's path, b's path:
    /// what a sends on p arrives at b on link(p)). Runs 1-ms steps until `to`; returns the
    /// changes each saw, with their times.
    struct Net {
        a: Paths,
        b: Paths,
        changes: [Vec<(Instant, Change)>; 2],
        hellos: [usize; 2],
    }

    impl Net {
        fn run(
            &mut self,
            from: Instant,
            to: Instant,
            a_to_b: impl Fn(Path) -> Option<Path>,
            b_to_a: impl Fn(Path) -> Option<Path>,
        ) {
            let mut now = from;
            while now < to {
                for side in 0..2 {
                    let (me, other, link): (&mut Paths, &mut Paths, &dyn Fn(Path) -> Option<Path>) =
                        if side == 0 {
                            (&mut self.a, &mut self.b, &a_to_b)
                        } else {
                            (&mut self.b, &mut self.a, &b_to_a)
                        };
                    if let Some(c) = me.tick(now) {
                        self.changes[side].push((now, c));
                    }
                    while let Some((path, hello)) = me.hello_to_send(now) {
                        self.hellos[side] += 1;
                        if let Some(arrives) = link(path) {
                            if let Some(c) = other.hello(arrives, &hello, now) {
                                self.changes[1 - side].push((now, c));
                            }
                        }
                    }
                }
                now += MS;
            }
        }
    }

    #[test]
    fn the_most_direct_path_that_works_is_chosen_and_consent_lapses_without_echoes() {
        let t0 = Instant::now();
        // a knows b at a private address (unreachable) and a public one; b knows a likewise;
        // both have a relay.
        let a = Paths::new(
            &[
                (Path::Direct(addr(2)), PathKind::Direct),
                (Path::Direct(addr(20)), PathKind::Reflexive),
                (Path::Relayed, PathKind::Relayed),
            ],
            false,
            false,
            t0,
        );
        let b = Paths::new(
            &[
                (Path::Direct(addr(1)), PathKind::Direct),
                (Path::Direct(addr(10)), PathKind::Reflexive),
                (Path::Relayed, PathKind::Relayed),
            ],
            false,
            false,
            t0,
        );
        let mut net = Net {
            a,
            b,
            changes: [vec![], vec![]],
            hellos: [0, 0],
        };
        // Only the public addresses and the relay carry anything; a's hellos reach b from 10
        // (its NAT), b's reach a from 20.
        let a_to_b = |p: Path| match p {
            Path::Direct(x) if x == addr(20) => Some(Path::Direct(addr(10))),
            Path::Relayed => Some(Path::Relayed),
            _ => None,
        };
        let b_to_a = |p: Path| match p {
            Path::Direct(x) if x == addr(10) => Some(Path::Direct(addr(20))),
            Path::Relayed => Some(Path::Relayed),
            _ => None,
        };
        net.run(t0, t0 + Duration::from_secs(3), a_to_b, b_to_a);
        for side in 0..2 {
            let c = &net.changes[side];
            assert_eq!(c.len(), 1, "{c:?}");
            let (at, Change::Chosen(_, kind)) = c[0] else {
                panic!("{c:?}")
            };
            assert_eq!(kind, PathKind::Reflexive);
            // The unreachable direct path was waited for, but not for ever.
            assert!(at - t0 >= SELECT_WAIT && at - t0 < SELECT_WAIT + 100 * MS);
        }
        // The reflexive path dies: the relay, kept answering meanwhile, takes over once three
        // checks in a row went unanswered.
        let t1 = t0 + Duration::from_secs(3);
        let relay_only = |p: Path| (p == Path::Relayed).then_some(Path::Relayed);
        net.changes = [vec![], vec![]];
        net.run(t1, t1 + Duration::from_secs(12), relay_only, relay_only);
        for side in 0..2 {
            let c = &net.changes[side];
            assert_eq!(c.len(), 1, "{c:?}");
            let (at, change) = c[0];
            assert_eq!(change, Change::Chosen(Path::Relayed, PathKind::Relayed));
            let gap = at - t1;
            assert!(
                gap >= FAILOVER_AFTER - HELLO_SLOW && gap <= FAILOVER_AFTER,
                "{gap:?}"
            );
        }
        // And nothing at all: consent is lost, at most CONSENT_TIMEOUT after the last echo.
        let t2 = t1 + Duration::from_secs(12);
        net.changes = [vec![], vec![]];
        net.run(t2, t2 + Duration::from_secs(12), |_| None, |_| None);
        for side in 0..2 {
            let (at, change) = *net.changes[side].last().unwrap();
            assert_eq!(change, Change::Lost);
            assert!(at - t2 <= CONSENT_TIMEOUT);
        }
    }

    #[test]
    fn a_direct_path_is_chosen_at_once_and_a_better_one_later_replaces_a_relay() {
        let t0 = Instant::now();
        let mut net = Net {
            a: Paths::new(
                &[
                    (Path::Direct(addr(2)), PathKind::Direct),
                    (Path::Relayed, PathKind::Relayed),
                ],
                false,
                false,
                t0,
            ),
            b: Paths::new(
                &[
                    (Path::Direct(addr(1)), PathKind::Direct),
                    (Path::Relayed, PathKind::Relayed),
                ],
                false,
                false,
                t0,
            ),
            changes: [vec![], vec![]],
            hellos: [0, 0],
        };
        let both = |p: Path| match p {
            Path::Direct(x) if x == addr(2) => Some(Path::Direct(addr(1))),
            Path::Direct(x) if x == addr(1) => Some(Path::Direct(addr(2))),
            other => Some(other),
        };
        net.run(t0, t0 + Duration::from_millis(50), both, both);
        for side in 0..2 {
            let (at, c) = net.changes[side][0];
            assert!(matches!(c, Change::Chosen(_, PathKind::Direct)), "{c:?}");
            assert!(at - t0 < 10 * MS, "no waiting when the best kind works");
        }

        // The direct path is blocked at first (a firewall opening late): the relay is
        // chosen once the wait is over, and the direct path replaces it when it works.
        let t0 = Instant::now();
        let mut net = Net {
            a: Paths::new(
                &[
                    (Path::Direct(addr(2)), PathKind::Direct),
                    (Path::Relayed, PathKind::Relayed),
                ],
                false,
                false,
                t0,
            ),
            b: Paths::new(&[(Path::Relayed, PathKind::Relayed)], false, false, t0),
            changes: [vec![], vec![]],
            hellos: [0, 0],
        };
        let relay_only = |p: Path| (p == Path::Relayed).then_some(Path::Relayed);
        net.run(t0, t0 + Duration::from_secs(2), relay_only, relay_only);
        let [(at, change)] = net.changes[0][..] else {
            panic!("{:?}", net.changes[0])
        };
        assert_eq!(change, Change::Chosen(Path::Relayed, PathKind::Relayed));
        assert!(at - t0 >= SELECT_WAIT && at - t0 < SELECT_WAIT + 50 * MS);
        let t1 = t0 + Duration::from_secs(2);
        net.run(t1, t1 + Duration::from_secs(2), both, both);
        // b learns a's address from a's checks (peer-reflexive) and moves to it too.
        for side in 0..2 {
            let last = net.changes[side].last().unwrap().1;
            assert!(
                matches!(last, Change::Chosen(Path::Direct(_), _)),
                "{last:?}"
            );
        }
    }

    #[test]
    fn an_echo_on_another_path_confirms_nothing() {
        let t0 = Instant::now();
        let mut a = Paths::new(
            &[
                (Path::Direct(addr(2)), PathKind::Direct),
                (Path::Relayed, PathKind::Relayed),
            ],
            false,
            false,
            t0,
        );
        let (p1, h1) = a.hello_to_send(t0).unwrap();
        assert_eq!(p1, Path::Direct(addr(2)));
        assert!(h1.seeking);
        // The victim at addr(2) never answers; the peer, who saw the challenge... could not
        // have: but even an echo of it arriving by the relay confirms nothing.
        let reply = Hello {
            seeking: false,
            challenge: [9; CHALLENGE_LEN],
            echo: Some(h1.challenge),
        };
        assert_eq!(a.hello(Path::Relayed, &reply, t0 + MS), None);
        assert_eq!(a.hello(Path::Direct(addr(3)), &reply, t0 + MS), None);
        assert_eq!(a.tick(t0 + Duration::from_secs(10)), None);
        assert_eq!(a.chosen(), None);
        // The right path, the right echo: chosen (nothing better to wait for).
        assert_eq!(
            a.hello(Path::Direct(addr(2)), &reply, t0 + 2 * MS),
            Some(Change::Chosen(Path::Direct(addr(2)), PathKind::Direct))
        );
        // A repeated echo is no fresh consent: it lapses all the same.
        let t1 = t0 + CONSENT_TIMEOUT + 5 * MS;
        assert_eq!(
            a.hello(Path::Direct(addr(2)), &reply, t1),
            Some(Change::Lost)
        );
        assert_eq!(a.tick(t1), None);
        assert_eq!(a.chosen(), None);
    }

    #[test]
    fn hellos_to_an_address_that_never_answers_back_off_and_are_paced() {
        let t0 = Instant::now();
        let mut a = Paths::new(
            &[(Path::Direct(addr(2)), PathKind::Direct)],
            false,
            false,
            t0,
        );
        let mut sent = 0;
        let mut now = t0;
        while now < t0 + Duration::from_secs(10) {
            while a.hello_to_send(now).is_some() {
                sent += 1;
            }
            now += MS;
        }
        // Ten in the first second, then one a second.
        assert_eq!(sent, 10 + 9);

        // A peer asking all the time gets one answer per gap, after a burst.
        let mut a = Paths::new(&[], false, false, t0);
        let ask = Hello {
            seeking: true,
            challenge: [2; CHALLENGE_LEN],
            echo: None,
        };
        let mut sent = 0;
        let mut now = t0;
        while now < t0 + Duration::from_secs(1) {
            a.hello(Path::Direct(addr(5)), &ask, now);
            while a.hello_to_send(now).is_some() {
                sent += 1;
            }
            now += MS;
        }
        let most = 1000 / HELLO_MIN_GAP.as_millis() as usize + HELLO_BURST as usize;
        assert!(sent <= most, "{sent}");
    }

    #[test]
    fn paths_are_bounded_and_behind_a_nat_nothing_is_direct() {
        let t0 = Instant::now();
        let mut a = Paths::new(
            &[(Path::Direct(addr(2)), PathKind::Direct)],
            true,
            false,
            t0,
        );
        let hi = Hello {
            seeking: true,
            challenge: [2; CHALLENGE_LEN],
            echo: None,
        };
        for port in 100..200 {
            a.hello(Path::Direct(addr(port)), &hi, t0);
        }
        assert_eq!(a.paths.len(), MAX_PATHS);
        assert!(a.paths.iter().all(|p| p.kind == PathKind::Reflexive));
        // Once they are given up, a new source takes the place of one that never answered.
        let later = t0 + CHECK_GIVE_UP + MS;
        assert!(a.hello(Path::Direct(addr(7)), &hi, later).is_none());
        assert_eq!(a.paths.len(), MAX_PATHS);
        assert!(a.paths.iter().any(|p| p.path == Path::Direct(addr(7))));
        for _ in 0..1000 {
            if let Some((_, h)) = a.hello_to_send(t0 + Duration::from_secs(1)) {
                assert!(h.echo.is_some() || h.seeking);
            }
        }
        assert!(a.pending.len() <= MAX_PENDING);
    }

    #[test]
    fn relayed_only_no_straight_path_is_ever_taken() {
        let t0 = Instant::now();
        let mut a = Paths::new(&[(Path::Relayed, PathKind::Relayed)], false, true, t0);
        let hi = Hello {
            seeking: true,
            challenge: [2; CHALLENGE_LEN],
            echo: None,
        };
        // The peer's hellos from its own address open nothing, and are not even answered.
        assert_eq!(a.hello(Path::Direct(addr(9)), &hi, t0), None);
        assert_eq!(a.paths.len(), 1);
        let (path, check) = a.hello_to_send(t0).unwrap();
        assert_eq!(path, Path::Relayed);
        let echo = Hello {
            seeking: false,
            challenge: [3; CHALLENGE_LEN],
            echo: Some(check.challenge),
        };
        assert_eq!(
            a.hello(Path::Relayed, &echo, t0 + MS),
            Some(Change::Chosen(Path::Relayed, PathKind::Relayed))
        );
        while let Some((path, _)) = a.hello_to_send(t0 + Duration::from_secs(1)) {
            assert_eq!(path, Path::Relayed);
        }
    }

    #[test]
    fn held_queue_is_bounded_by_count_and_age() {
        let t0 = Instant::now();
        let mut h = Held::default();
        let mut dropped = 0;
        for i in 0..HELD_MAX_PACKETS + 10 {
            dropped += h.push(t0, Stream::VideoRtp, vec![(i % 256) as u8]);
        }
        assert_eq!(dropped, 10);
        assert_eq!(h.len(), HELD_MAX_PACKETS);
        let (fresh, old) = h.drain(t0 + MS);
        assert_eq!(old, 0);
        assert_eq!(fresh.len(), HELD_MAX_PACKETS);
        // Oldest dropped, order kept.
        assert_eq!(fresh.first().unwrap().1, vec![10u8]);
        assert_eq!(
            fresh.last().unwrap().1,
            vec![((HELD_MAX_PACKETS + 9) % 256) as u8]
        );

        h.push(t0, Stream::VideoRtp, vec![1]);
        h.push(t0 + Duration::from_secs(1), Stream::AudioRtp, vec![2]);
        let (fresh, old) = h.drain(t0 + HELD_MAX_AGE + 10 * MS);
        assert_eq!(old, 1);
        assert_eq!(fresh, vec![(Stream::AudioRtp, vec![2])]);
        assert_eq!(h.len(), 0);
        // Stale packets also go when new ones come.
        h.push(t0, Stream::VideoRtp, vec![1]);
        assert_eq!(h.push(t0 + 3 * HELD_MAX_AGE, Stream::VideoRtp, vec![2]), 1);
    }
}
