//! Session v2 end to end, in one process: both handshakes with a stand-in for keyguard that
//! answers [`GuardAsk`]s exactly as keyguard must (the raw secret never leaves it; only
//! `transcript_bound(label, transcript, secret)` does), then the ratchet. Frozen vectors at the
//! end: a change to the construction changes them.

use smvs_crypto::{
    transcript_bound, AgreementKeyPair, IdentityKeys, SigningKeyPair, SigningSeed, XWingKeyPair,
    Zeroizing,
};
use smvs_schema::Username;

use super::fresh::{self, Fresh, OsFresh, SeededFresh};
use super::handshake::{
    accept_prekey, initiate_with_prekey, prekey_id, respond, verify_prekey, Established, GuardAsk,
    HandshakeError, Initiator, Party, Pending, Prekey, INTERACTIVE_INIT_LEN, PREKEY_INIT_LEN,
    RESPONSE_LEN,
};
use super::ratchet::RatchetError;

const AD: &[u8] = b"envelope header";

/// What keyguard holds for one user: the identity keys, the identity X-Wing key, prekeys.
struct Guard {
    name: &'static str,
    keys: IdentityKeys,
    kem: XWingKeyPair,
    prekeys: Vec<(Prekey, AgreementKeyPair, XWingKeyPair)>,
}

impl Guard {
    fn new(name: &'static str, fresh: &mut dyn Fresh) -> Guard {
        let seed = fresh::bytes::<32>(fresh);
        let signing =
            SigningKeyPair::from_seed(&SigningSeed::from_bytes(&seed[..]).unwrap()).unwrap();
        Guard {
            name,
            keys: IdentityKeys {
                signing,
                agreement: fresh::x25519(fresh).unwrap(),
            },
            kem: fresh::xwing(fresh).unwrap(),
            prekeys: Vec::new(),
        }
    }

    fn party(&self) -> Party {
        Party {
            username: Username::parse(self.name).unwrap(),
            identity: self.keys.bundle(),
            kem: self.kem.public().clone(),
        }
    }

    /// Makes and signs a prekey, as keyguard's rotation does.
    fn prekey(&mut self, id: u32, expires: i64, fresh: &mut dyn Fresh) -> Prekey {
        let (dh, kem) = (fresh::x25519(fresh).unwrap(), fresh::xwing(fresh).unwrap());
        let prekey = Prekey::sign(&self.keys, id, expires, dh.public(), kem.public().clone());
        self.prekeys.push((prekey.clone(), dh, kem));
        prekey
    }

    fn answer(&self, pending: &Pending) -> Vec<Zeroizing<[u8; 32]>> {
        pending
            .asks()
            .iter()
            .map(|ask| {
                // Every question the handshake asks is one keyguard will answer.
                assert!(ask.component().served_by(ask.operation()), "{ask:?}");
                let prekey = |id: &u32| self.prekeys.iter().find(|p| p.0.id == *id).unwrap();
                let raw: Vec<u8> = match ask {
                    GuardAsk::IdentityDh { peer, .. } => {
                        self.keys.agreement.agree(peer).unwrap().expose().to_vec()
                    }
                    GuardAsk::IdentityDecapsulate { ciphertext, .. } => {
                        self.kem.decapsulate(ciphertext).unwrap().expose().to_vec()
                    }
                    GuardAsk::PrekeyDh {
                        prekey: id, peer, ..
                    } => prekey(id).1.agree(peer).unwrap().expose().to_vec(),
                    GuardAsk::PrekeyDecapsulate {
                        prekey: id,
                        ciphertext,
                        ..
                    } => prekey(id)
                        .2
                        .decapsulate(ciphertext)
                        .unwrap()
                        .expose()
                        .to_vec(),
                };
                transcript_bound(ask.component().label(), pending.transcript(), &raw).unwrap()
            })
            .collect()
    }

    fn finish(&self, pending: Pending, fresh: &mut dyn Fresh) -> Established {
        let answers = self.answer(&pending);
        pending.finish(answers, fresh).unwrap()
    }
}

/// An interactive handshake from `a` to `b` (as `b_as_a_sees_it`); returns both sessions.
fn interactive(
    a: &Guard,
    b: &Guard,
    b_as_a_sees_it: Party,
    fa: &mut dyn Fresh,
    fb: &mut dyn Fresh,
) -> (Established, Established, Vec<u8>, Vec<u8>) {
    let initiator = Initiator::start(a.party(), b_as_a_sees_it, fa).unwrap();
    let init = initiator.message().to_vec();
    let (response, b_pending) = respond(&b.party(), &a.party(), &init, fb).unwrap();
    let a_pending = initiator.on_response(&response).unwrap();
    assert_eq!(a_pending.asks().len(), 2);
    assert_eq!(b_pending.asks().len(), 2);
    (
        a.finish(a_pending, fa),
        b.finish(b_pending, fb),
        init,
        response,
    )
}

fn talk(a: &mut Established, b: &mut Established) -> Result<(), RatchetError> {
    let m = a.ratchet.seal(AD, b"hello", &mut OsFresh)?;
    assert_eq!(&b.ratchet.open(AD, &m, &mut OsFresh)?[..], b"hello");
    let m = b.ratchet.seal(AD, b"hi back", &mut OsFresh)?;
    assert_eq!(&a.ratchet.open(AD, &m, &mut OsFresh)?[..], b"hi back");
    Ok(())
}

#[test]
fn the_interactive_handshake_gives_both_sides_one_session() {
    let (alice, bob) = (
        Guard::new("alice", &mut OsFresh),
        Guard::new("bob", &mut OsFresh),
    );
    let (mut a, mut b, init, response) =
        interactive(&alice, &bob, bob.party(), &mut OsFresh, &mut OsFresh);
    assert_eq!(
        (init.len(), response.len()),
        (INTERACTIVE_INIT_LEN, RESPONSE_LEN)
    );
    assert_eq!(a.transcript, b.transcript);
    talk(&mut a, &mut b).unwrap();
    talk(&mut b, &mut a).unwrap();
}

#[test]
fn the_prekey_handshake_works_while_the_responder_is_away() {
    let (alice, mut bob) = (
        Guard::new("alice", &mut OsFresh),
        Guard::new("bob", &mut OsFresh),
    );
    bob.prekey(6, 2_000_000_000, &mut OsFresh);
    let prekey = bob.prekey(7, 2_000_000_000, &mut OsFresh);
    let verified = verify_prekey(&prekey, &bob.keys.bundle(), 1_900_000_000).unwrap();

    // Alice: handshake and first message together; only one keyguard question.
    let (init, pending) =
        initiate_with_prekey(&alice.party(), &bob.party(), verified, &mut OsFresh).unwrap();
    assert_eq!(init.len(), PREKEY_INIT_LEN);
    assert_eq!(pending.asks().len(), 1);
    let mut a = alice.finish(pending, &mut OsFresh);
    let first = a
        .ratchet
        .seal(AD, b"while you were away", &mut OsFresh)
        .unwrap();
    let second = a.ratchet.seal(AD, b"and again", &mut OsFresh).unwrap();

    // Bob, later: finds the prekey the message names; five keyguard questions.
    let id = prekey_id(&init).unwrap();
    let (named, _, _) = bob.prekeys.iter().find(|p| p.0.id == id).unwrap();
    let pending = accept_prekey(&bob.party(), &alice.party(), named, &init).unwrap();
    assert_eq!(pending.asks().len(), 5);
    let mut b = bob.finish(pending, &mut OsFresh);
    assert_eq!(a.transcript, b.transcript);
    assert_eq!(
        &b.ratchet.open(AD, &second, &mut OsFresh).unwrap()[..],
        b"and again"
    );
    assert_eq!(
        &b.ratchet.open(AD, &first, &mut OsFresh).unwrap()[..],
        b"while you were away"
    );
    talk(&mut b, &mut a).unwrap();

    // The wrong prekey (another id) is refused clearly.
    let other = &bob.prekeys[0].0;
    assert!(matches!(
        accept_prekey(&bob.party(), &alice.party(), other, &init),
        Err(HandshakeError::Malformed(_))
    ));
}

#[test]
fn a_prekey_must_be_signed_by_the_identity_and_unexpired() {
    let (mallory, mut bob) = (
        Guard::new("mallory", &mut OsFresh),
        Guard::new("bob", &mut OsFresh),
    );
    let prekey = bob.prekey(1, 1_000, &mut OsFresh);
    assert_eq!(
        verify_prekey(&prekey, &bob.keys.bundle(), 1_001).unwrap_err(),
        HandshakeError::PrekeyExpired
    );
    assert_eq!(
        verify_prekey(&prekey, &mallory.keys.bundle(), 999).unwrap_err(),
        HandshakeError::PrekeySignature
    );
    let mut swapped = prekey.clone();
    swapped.dh = mallory.keys.agreement.public();
    assert_eq!(
        verify_prekey(&swapped, &bob.keys.bundle(), 999).unwrap_err(),
        HandshakeError::PrekeySignature
    );
    swapped = prekey.clone();
    swapped.expires += 1;
    assert_eq!(
        verify_prekey(&swapped, &bob.keys.bundle(), 999).unwrap_err(),
        HandshakeError::PrekeySignature
    );
}

/// The transcript binds both complete identities and every message: a name, a KEM key or a
/// message byte that differs between the two sides gives two sessions that cannot talk.
#[test]
fn the_session_binds_complete_identities_and_every_message() {
    let (alice, bob) = (
        Guard::new("alice", &mut OsFresh),
        Guard::new("bob", &mut OsFresh),
    );
    let mismatched = |b_as_a_sees_it: Party| {
        let (mut a, mut b, _, _) =
            interactive(&alice, &bob, b_as_a_sees_it, &mut OsFresh, &mut OsFresh);
        assert_ne!(a.transcript, b.transcript);
        assert_eq!(talk(&mut a, &mut b).unwrap_err(), RatchetError::Open);
    };
    // Bob's keys re-published under another name (v1's KDF bound only the X25519 keys).
    let mut renamed = bob.party();
    renamed.username = Username::parse("bobby").unwrap();
    mismatched(renamed);
    // Bob's X25519 and Ed25519 keys with another X-Wing key.
    let mut other_kem = bob.party();
    other_kem.kem = XWingKeyPair::generate().unwrap().public().clone();
    mismatched(other_kem);

    // A response altered in flight: Alice's transcript differs, so nothing opens.
    let initiator = Initiator::start(alice.party(), bob.party(), &mut OsFresh).unwrap();
    let (mut response, b_pending) = respond(
        &bob.party(),
        &alice.party(),
        initiator.message(),
        &mut OsFresh,
    )
    .unwrap();
    response[40] ^= 1;
    let mut a = alice.finish(initiator.on_response(&response).unwrap(), &mut OsFresh);
    let mut b = bob.finish(b_pending, &mut OsFresh);
    assert_eq!(talk(&mut a, &mut b).unwrap_err(), RatchetError::Open);

    // Malformed messages are refused with a clear error.
    assert!(matches!(
        respond(&bob.party(), &alice.party(), &[1u8; 10], &mut OsFresh),
        Err(HandshakeError::Malformed(_))
    ));
    let initiator = Initiator::start(alice.party(), bob.party(), &mut OsFresh).unwrap();
    assert!(matches!(
        initiator.on_response(&response[..100]),
        Err(HandshakeError::Malformed(_))
    ));
}

#[test]
fn keyguard_answers_must_come_from_the_identity_asked() {
    let (alice, bob, eve) = (
        Guard::new("alice", &mut OsFresh),
        Guard::new("bob", &mut OsFresh),
        Guard::new("bob", &mut OsFresh),
    );
    let initiator = Initiator::start(alice.party(), bob.party(), &mut OsFresh).unwrap();
    let (response, b_pending) = respond(
        &bob.party(),
        &alice.party(),
        initiator.message(),
        &mut OsFresh,
    )
    .unwrap();
    let a_pending = initiator.on_response(&response).unwrap();
    // Too few answers: a clear error.
    let mut short = alice.answer(&a_pending);
    short.pop();
    assert_eq!(
        Initiator::start(alice.party(), bob.party(), &mut OsFresh)
            .unwrap()
            .on_response(&response)
            .unwrap()
            .finish(short, &mut OsFresh)
            .err()
            .map(|e| e.to_string()),
        Some("keyguard gave 1 answers for 2 questions".to_string())
    );
    // Eve's keyguard (another identity under Bob's name) answering Bob's questions.
    let mut a = alice.finish(a_pending, &mut OsFresh);
    let mut b = eve.finish(b_pending, &mut OsFresh);
    assert_eq!(talk(&mut a, &mut b).unwrap_err(), RatchetError::Open);
}

/// Everything a deterministic run produces, hashed: both handshakes and a conversation.
fn run_vectors() -> (String, String) {
    let mut fa = SeededFresh::new("alice");
    let mut fb = SeededFresh::new("bob");
    let alice = Guard::new("alice", &mut fa);
    let mut bob = Guard::new("bob", &mut fb);
    let digest_of = |parts: Vec<Vec<u8>>| {
        let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
        hex::encode(smvs_crypto::blake2b(32, None, &refs).unwrap())
    };

    let (mut a, mut b, init, response) = interactive(&alice, &bob, bob.party(), &mut fa, &mut fb);
    let mut out = vec![init, response, a.transcript.to_vec()];
    for (i, from_alice) in [true, true, false, true, false, false]
        .into_iter()
        .enumerate()
    {
        let text = format!("message {i}");
        let (from, to, ff, ft) = if from_alice {
            (
                &mut a,
                &mut b,
                &mut fa as &mut dyn Fresh,
                &mut fb as &mut dyn Fresh,
            )
        } else {
            (
                &mut b,
                &mut a,
                &mut fb as &mut dyn Fresh,
                &mut fa as &mut dyn Fresh,
            )
        };
        let m = from.ratchet.seal(AD, text.as_bytes(), ff).unwrap();
        assert_eq!(&to.ratchet.open(AD, &m, ft).unwrap()[..], text.as_bytes());
        out.push(m);
    }
    let interactive = digest_of(out);

    let prekey = bob.prekey(42, 2_000_000_000, &mut fb);
    let verified = verify_prekey(&prekey, &bob.keys.bundle(), 1_900_000_000).unwrap();
    let (init, pending) =
        initiate_with_prekey(&alice.party(), &bob.party(), verified, &mut fa).unwrap();
    let mut a = alice.finish(pending, &mut fa);
    let first = a.ratchet.seal(AD, b"first", &mut fa).unwrap();
    let pending = accept_prekey(&bob.party(), &alice.party(), &prekey, &init).unwrap();
    let mut b = bob.finish(pending, &mut fb);
    b.ratchet.open(AD, &first, &mut fb).unwrap();
    let reply = b.ratchet.seal(AD, b"reply", &mut fb).unwrap();
    a.ratchet.open(AD, &reply, &mut fa).unwrap();
    let prekey_run = digest_of(vec![init, a.transcript.to_vec(), first, reply]);
    (interactive, prekey_run)
}

/// Frozen once from this implementation: the interactive handshake with six ratchet messages,
/// and the prekey handshake with a message each way, from seeded randomness. If this fails,
/// the construction (or an encoding) changed: an interoperable host would no longer agree.
#[test]
fn frozen_vectors() {
    let (interactive, prekey) = run_vectors();
    assert_eq!(run_vectors(), (interactive.clone(), prekey.clone()));
    assert_eq!(
        interactive,
        "d4ce03f0a46ad7c728ac9f8066ccdda0e752bafb7550a80a14e923253f1e7b7f"
    );
    assert_eq!(
        prekey,
        "7c1e3214f58ec743ceca68ff3375eefcbd1140ea49f4bc384cf2a6a8abbaf8c8"
    );
}
