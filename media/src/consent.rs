//! Consent to send media to the peer's address, in the spirit of ICE consent freshness
//! (RFC 7675) over the call's own sealed framing.
//!
//! The peer's address comes from its signalling, so a malicious peer could name someone
//! else's (a victim's) and have us stream a megabit a second there. Hearing *some*
//! authenticated datagram from the peer proves nothing about that address: the peer holds the
//! keys and can send from anywhere. So each endpoint sends the peer's address a [`Hello`]
//! carrying a random challenge, and sends no media there until a hello from the peer echoes
//! that challenge: only whoever receives our datagrams at that address learns it, and only the
//! peer can seal the reply.
//!
//! * Until then RTP is held in a bounded queue ([`Held`]: at most [`HELD_MAX_PACKETS`]
//!   packets, none older than [`HELD_MAX_AGE`]) and flushed in order when consent is given, so
//!   the start of the call, its first keyframe included, is not lost; RTCP is not sent at all
//!   (it is periodic, and a report held back would skew the round-trip time).
//! * Hellos go out when the session starts, every [`HELLO_FAST`] for the first
//!   [`HELLO_FAST_FOR`] of the search, then every [`HELLO_SLOW`]; a hello asking for consent
//!   is answered at once, but whatever the peer sends, hellos never go out faster than one
//!   per [`HELLO_MIN_GAP`] on average (two back to back at most). A peer never heard from gets
//!   nothing but hellos.
//! * Once given, consent lasts while authenticated datagrams keep coming from the peer; after
//!   [`CONSENT_TIMEOUT`] without any it is withdrawn and the search starts again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use smvs_crypto::{constant_time_eq, random_array};

use crate::wire::{Hello, Stream, CHALLENGE_LEN};

/// Hello interval at the start of a search for consent...
pub(crate) const HELLO_FAST: Duration = Duration::from_millis(100);
/// ... for this long ...
pub(crate) const HELLO_FAST_FOR: Duration = Duration::from_secs(1);
/// ... and after that.
pub(crate) const HELLO_SLOW: Duration = Duration::from_secs(1);
/// Hellos, answers included, are paced to one per this interval, with a burst of two (so the
/// answer to the peer's first hello need not wait for the gap after our own last one).
pub(crate) const HELLO_MIN_GAP: Duration = Duration::from_millis(100);
/// Consent lapses when nothing authenticated came from the peer for this long.
pub(crate) const CONSENT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most RTP packets held while waiting for consent (about 3 s of a 1 Mbit/s call).
pub(crate) const HELD_MAX_PACKETS: usize = 512;
/// Oldest RTP packet still worth sending once consent comes.
pub(crate) const HELD_MAX_AGE: Duration = Duration::from_secs(2);

/// The receive thread's side of the handshake: our challenge, the peer's, when to say hello.
#[derive(Debug)]
pub(crate) struct Consent {
    challenge: [u8; CHALLENGE_LEN],
    peer_challenge: Option<[u8; CHALLENGE_LEN]>,
    /// The peer asked for consent since our last hello.
    reply_owed: bool,
    last_hello: Option<Instant>,
    /// Pacing (the generic cell rate algorithm): a hello may go out from `pace -
    /// HELLO_MIN_GAP` on, and each one moves `pace` one gap past the later of itself and now.
    pace: Instant,
    /// When the current search for consent began.
    seeking_since: Instant,
    granted: bool,
    last_heard: Option<Instant>,
}

impl Consent {
    pub(crate) fn new(now: Instant) -> Consent {
        Consent::with_challenge(random_array(), now)
    }

    fn with_challenge(challenge: [u8; CHALLENGE_LEN], now: Instant) -> Consent {
        Consent {
            challenge,
            peer_challenge: None,
            reply_owed: false,
            last_hello: None,
            pace: now,
            seeking_since: now,
            granted: false,
            last_heard: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn challenge(&self) -> [u8; CHALLENGE_LEN] {
        self.challenge
    }

    /// An authenticated datagram (any stream) came from the peer: keeps consent fresh.
    pub(crate) fn heard(&mut self, now: Instant) {
        self.last_heard = Some(now);
    }

    /// An authenticated hello from the peer; true when it gives consent (it echoes our
    /// challenge and we had none).
    pub(crate) fn hello(&mut self, hello: &Hello) -> bool {
        self.peer_challenge = Some(hello.challenge);
        if hello.seeking {
            self.reply_owed = true;
        }
        let echoed = hello
            .echo
            .is_some_and(|echo| constant_time_eq(&echo, &self.challenge));
        if echoed && !self.granted {
            self.granted = true;
            return true;
        }
        false
    }

    /// Withdraws consent when the peer has been silent for [`CONSENT_TIMEOUT`]; true when it
    /// did.
    pub(crate) fn expire(&mut self, now: Instant) -> bool {
        let silent = self
            .last_heard
            .is_none_or(|t| now.saturating_duration_since(t) >= CONSENT_TIMEOUT);
        if self.granted && silent {
            self.granted = false;
            self.seeking_since = now;
            return true;
        }
        false
    }

    /// When the next hello is due, if one is.
    pub(crate) fn next_hello(&self) -> Option<Instant> {
        let Some(last) = self.last_hello else {
            // The first one, at once.
            return Some(self.seeking_since);
        };
        let earliest = self.pace.checked_sub(HELLO_MIN_GAP).unwrap_or(self.pace);
        if self.reply_owed {
            return Some(earliest);
        }
        if self.granted {
            return None;
        }
        let interval = if last.saturating_duration_since(self.seeking_since) < HELLO_FAST_FOR {
            HELLO_FAST
        } else {
            HELLO_SLOW
        };
        Some((last + interval).max(earliest))
    }

    /// The hello to send now, if one is due.
    pub(crate) fn hello_to_send(&mut self, now: Instant) -> Option<Hello> {
        if self.next_hello().is_none_or(|due| due > now) {
            return None;
        }
        self.pace = self.pace.max(now) + HELLO_MIN_GAP;
        self.last_hello = Some(now);
        self.reply_owed = false;
        Some(Hello {
            seeking: !self.granted,
            challenge: self.challenge,
            echo: self.peer_challenge,
        })
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

    /// Runs `c`'s schedule from `from` to `to` in 1 ms steps; the times hellos went out.
    fn run(c: &mut Consent, from: Instant, to: Instant) -> Vec<Instant> {
        let mut sent = Vec::new();
        let mut now = from;
        while now < to {
            if c.hello_to_send(now).is_some() {
                sent.push(now);
            }
            now += MS;
        }
        sent
    }

    #[test]
    fn unanswered_hellos_back_off() {
        let t0 = Instant::now();
        let mut c = Consent::with_challenge([1; CHALLENGE_LEN], t0);
        let sent = run(&mut c, t0, t0 + Duration::from_secs(10));
        assert_eq!(sent.first(), Some(&t0));
        let first_second = sent.iter().filter(|t| **t < t0 + HELLO_FAST_FOR).count();
        assert_eq!(first_second, 10);
        // Then one a second: 10 + 9 in ten seconds.
        assert_eq!(sent.len(), 19, "{:?}", sent);
        assert!(!c.granted);
    }

    #[test]
    fn handshake_gives_consent_to_both_sides() {
        let t0 = Instant::now();
        let mut a = Consent::with_challenge([1; CHALLENGE_LEN], t0);
        let mut b = Consent::with_challenge([2; CHALLENGE_LEN], t0);
        // A says hello first; B answers with an echo and asks in turn.
        let h1 = a.hello_to_send(t0).unwrap();
        assert!(h1.seeking && h1.echo.is_none());
        assert!(!b.hello(&h1));
        let h2 = b.hello_to_send(t0).unwrap();
        assert_eq!(h2.echo, Some([1; CHALLENGE_LEN]));
        assert!(h2.seeking);
        assert!(a.hello(&h2), "A's challenge came back");
        // A owes B an answer, sent at once (the pacing allows two back to back).
        let h3 = a.hello_to_send(t0 + 10 * MS).unwrap();
        assert!(!h3.seeking);
        assert_eq!(h3.echo, Some([2; CHALLENGE_LEN]));
        assert!(b.hello(&h3));
        // Neither says anything more.
        assert_eq!(a.next_hello(), None);
        assert_eq!(b.next_hello(), None);
        // A hello echoing something else gives nothing.
        let mut c = Consent::with_challenge([3; CHALLENGE_LEN], t0);
        assert!(!c.hello(&h2));
        assert!(!c.hello(&Hello {
            seeking: false,
            challenge: [2; CHALLENGE_LEN],
            echo: Some([4; CHALLENGE_LEN]),
        }));
    }

    #[test]
    fn a_peer_asking_all_the_time_gets_at_most_one_hello_per_gap_and_a_burst_of_two() {
        let t0 = Instant::now();
        let mut c = Consent::with_challenge([1; CHALLENGE_LEN], t0);
        let ask = Hello {
            seeking: true,
            challenge: [2; CHALLENGE_LEN],
            echo: None,
        };
        let mut sent = 0;
        let mut now = t0;
        while now < t0 + Duration::from_secs(2) {
            c.hello(&ask);
            if c.hello_to_send(now).is_some() {
                sent += 1;
            }
            now += MS;
        }
        // Two at the start, then one per gap.
        assert_eq!(sent, 21);
    }

    #[test]
    fn consent_lapses_after_silence_and_the_search_restarts() {
        let t0 = Instant::now();
        let mut c = Consent::with_challenge([1; CHALLENGE_LEN], t0);
        c.hello_to_send(t0).unwrap();
        c.heard(t0);
        assert!(c.hello(&Hello {
            seeking: false,
            challenge: [2; CHALLENGE_LEN],
            echo: Some([1; CHALLENGE_LEN]),
        }));
        c.heard(t0 + Duration::from_secs(5));
        assert!(!c.expire(t0 + Duration::from_secs(14)));
        assert_eq!(c.next_hello(), None);
        let late = t0 + Duration::from_secs(15);
        assert!(c.expire(late));
        assert!(!c.expire(late));
        let h = c.hello_to_send(late).unwrap();
        assert!(h.seeking);
        assert_eq!(c.next_hello(), Some(late + HELLO_FAST));
        // A fresh echo gives it back.
        assert!(c.hello(&Hello {
            seeking: false,
            challenge: [2; CHALLENGE_LEN],
            echo: Some([1; CHALLENGE_LEN]),
        }));
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
