//! The trust rules, as pure functions of what we stored and what the directories say: what
//! an answer does to a pinned contact, whether we may write to someone, and whether we may
//! connect where their host is.

use std::rc::Rc;

use smvs_schema::{AddressKind, ErrorCode, HostAddress, Username};

use super::directories::{describe, equivocation, short_key, Answer, Answers};
use crate::error::HostError;
use crate::model::{Contact, Evidence, PendingKey};

pub fn key_changed(peer: &Username) -> HostError {
    HostError::new(
        ErrorCode::KeyChanged,
        format!("{peer}'s identity key changed; compare safety numbers with `smvsctl verify {peer}` and accept with `--accept-new-key`"),
    )
}

/// Whether we may write to `to`, given what we know of them: not if they are blocked, nor
/// while their changed key is not accepted. Someone we never wrote to may be written to.
pub fn may_send(to: &Username, contact: Option<&Contact>) -> Result<(), HostError> {
    if let Some(contact) = contact {
        if contact.blocked {
            return Err(HostError::new(
                ErrorCode::Blocked,
                format!("{to} is blocked; `smvsctl unblock {to}` first"),
            ));
        }
        if let Some(how) = &contact.alarm {
            return Err(equivocation(to, how));
        }
        if contact.pending.is_some() {
            return Err(key_changed(to));
        }
    }
    Ok(())
}

/// The kind of network this host is on, as far as its published address says: a name (other
/// than `localhost`) says nothing, and is taken as public, the strictest choice.
pub fn own_kind(ours: &HostAddress) -> AddressKind {
    ours.kind().unwrap_or(AddressKind::Public)
}

/// Whether this host (published as `ours`) may connect to `peer`'s host at `theirs`: the
/// address rule of [`AddressKind::may_reach`], for an address written as an IP (or
/// `localhost`). A name is judged when it is resolved, at connect time (`smvs_transport`
/// checks every address it resolves to against [`own_kind`]); through a SOCKS5 proxy the proxy
/// resolves it, and its own policy applies.
pub fn may_connect(
    ours: &HostAddress,
    peer: &Username,
    theirs: &HostAddress,
) -> Result<(), HostError> {
    let mine = own_kind(ours);
    match theirs.kind() {
        Some(kind) if !mine.may_reach(kind) => Err(HostError::new(
            ErrorCode::AddressRefused,
            format!(
                "{peer}'s host address {theirs} is {}, and this host (published as {ours}) is not on such a network; refusing to connect there",
                kind.describe()
            ),
        )),
        _ => Ok(()),
    }
}

/// What the directories' answers mean for what we pinned.
#[derive(Debug, PartialEq, Eq)]
pub enum Judgement {
    /// First contact: pin the identity a quorum of directories shows (trust on first use).
    Pin(Contact),
    /// Same identity, nothing new (the pinned contact as it is shared, not copied: this is
    /// every arriving envelope's case).
    Unchanged(Rc<Contact>),
    /// Same identity, something new: a new host address or transport key certified by it, or
    /// a directory's newer serial.
    Update(Contact),
    /// Another identity than the pinned one, shown by every directory that answered: recorded
    /// as pending; refused until the user accepts it. `first_seen` is false when that same
    /// change is already pending (nothing to write, no second alarm).
    KeyChanged { contact: Contact, first_seen: bool },
    /// The directories show different identities (an equivocation), or did since the user
    /// last decided: the other one is held as pending with the alarm's description, and
    /// nothing is sent until the user decides. `first_seen` as for `KeyChanged`.
    Disagree { contact: Contact, first_seen: bool },
    /// Fewer directories than the quorum vouched for one identity: nothing is decided.
    TooFew(HostError),
}

/// A directory that served a record older than one it served before (a rollback): the
/// answer is not heard, and the alarm is raised.
#[derive(Debug, PartialEq, Eq)]
pub struct Rollback {
    pub directory: String,
    pub served: u64,
    pub before: u64,
}

/// The trust rules, as a pure function of what we stored and what the directories say.
/// Identities the user refused for this contact are not heard at all, nor is an answer older
/// than one its directory served before (those are returned, to raise the alarm).
pub fn judge(
    stored: Option<Rc<Contact>>,
    answers: &Answers,
    request: bool,
) -> (Judgement, Vec<Rollback>) {
    let mut rollbacks = Vec::new();
    let mut heard = |a: &&Answer| {
        let Some(contact) = stored.as_ref() else {
            return true;
        };
        let user = &a.record.user;
        if contact.refused.contains(&user.identity) {
            return false;
        }
        // (No serial is what accepting a changed key leaves, to take whatever comes next.)
        match contact.serial_from(a.record.directory_key.as_bytes()) {
            Some(before) if user.identity == contact.identity && user.serial < before => {
                rollbacks.push(Rollback {
                    directory: a.directory.clone(),
                    served: user.serial,
                    before,
                });
                false
            }
            _ => true,
        }
    };
    let mut groups: Vec<Vec<&Answer>> = Vec::new();
    for group in answers.groups() {
        let group: Vec<&Answer> = group.into_iter().filter(|a| heard(a)).collect();
        if !group.is_empty() {
            groups.push(group);
        }
    }
    // (Still largest first: dropping answers may have changed the order.)
    groups.sort_by_key(|g| std::cmp::Reverse(g.len()));
    let judgement = judge_groups(stored, &groups, answers, request);
    (judgement, rollbacks)
}

fn judge_groups(
    stored: Option<Rc<Contact>>,
    groups: &[Vec<&Answer>],
    answers: &Answers,
    request: bool,
) -> Judgement {
    // A contact under an alarm stays so until the user decides, whatever is said now.
    if let Some(contact) = stored.as_ref().filter(|c| c.alarm.is_some()) {
        if groups.len() < 2 {
            return Judgement::Disagree {
                contact: Contact::clone(contact),
                first_seen: false,
            };
        }
    }
    if groups.len() > 1 {
        return disagree(stored, groups, answers);
    }
    // A key pinned from an introduction has no quorum behind it: any directory that shows
    // another one contradicts it, however few.
    if let Some(contact) = stored.as_ref().filter(|c| c.introduced_by.is_some()) {
        if let Some(other) = groups
            .iter()
            .find(|g| g[0].record.user.identity != contact.identity)
        {
            let by = contact
                .introduced_by
                .clone()
                .unwrap_or_else(|| contact.username.clone());
            let mut contact = Contact::clone(contact);
            let user = &other[0].record.user;
            contact.alarm = Some(format!(
                "{by} introduced {} with key {}; {}",
                user.username,
                short_key(&contact.identity),
                describe(groups)
            ));
            contact.pending = Some(PendingKey {
                identity: user.identity,
                transport_key: user.transport_key,
            });
            return Judgement::Disagree {
                contact,
                first_seen: true,
            };
        }
    }
    // (Directories that show only identities the user refused, or older records than they
    // served before, vouch for nobody.)
    let Some(group) = groups.first().filter(|g| g.len() >= answers.quorum) else {
        return match stored {
            // Too few to hear anything new from: what is pinned stands as it is.
            Some(contact) => Judgement::Unchanged(contact),
            None => Judgement::TooFew(answers.too_few(groups.first().map_or(0, Vec::len))),
        };
    };
    // Of the records that agree, the one whose transport certificate runs longest: the
    // identity signed it last, which no directory can forge (ties: the first configured).
    let chosen = group
        .iter()
        .copied()
        .reduce(|best, a| {
            if a.record.user.transport_not_after > best.record.user.transport_not_after {
                a
            } else {
                best
            }
        })
        .unwrap_or(group[0]);
    let record = &*chosen.record;
    let Some(shared) = stored else {
        let mut contact = Contact::from_record(record, request);
        // Under the name it is known by here (`alice@work` at a scoped directory).
        contact.username = answers.user.clone();
        note_serials(&mut contact, group);
        return Judgement::Pin(contact);
    };
    let user = &record.user;
    // An address the identity stated later than this record was made stands.
    let pushed_is_newer = shared.address_signed_at > i64::try_from(user.serial).unwrap_or(i64::MAX);
    let same_address = pushed_is_newer || shared.host_address == user.host_address;
    let news = group.iter().any(|a| {
        shared.serial_from(a.record.directory_key.as_bytes()) != Some(a.record.user.serial)
    });
    if shared.identity == user.identity
        && !news
        && shared.transport_key == user.transport_key
        && same_address
    {
        return Judgement::Unchanged(shared);
    }
    let mut contact = Rc::unwrap_or_clone(shared);
    if contact.identity != user.identity {
        let first_seen = contact
            .pending
            .as_ref()
            .is_none_or(|p| p.identity != user.identity);
        if first_seen {
            contact.pending = Some(PendingKey {
                identity: user.identity,
                transport_key: user.transport_key,
            });
        }
        return Judgement::KeyChanged {
            contact,
            first_seen,
        };
    }
    // The same identity, with something new.
    contact.transport_key = user.transport_key;
    if !pushed_is_newer {
        contact.host_address = user.host_address.clone();
        // A statement older than this record may not move the address back.
        let serial = i64::try_from(user.serial).unwrap_or(i64::MAX);
        contact.address_signed_at = contact.address_signed_at.max(serial);
    }
    contact.serial = user.serial;
    note_serials(&mut contact, group);
    contact.pending = None;
    contact.evidence = Some(Evidence::of(record));
    Judgement::Update(contact)
}

/// Remembers the serial each directory of `group` served.
fn note_serials(contact: &mut Contact, group: &[&Answer]) {
    for a in group {
        contact
            .serials
            .insert(*a.record.directory_key.as_bytes(), a.record.user.serial);
    }
}

/// The directories disagree. A pinned contact keeps its identity, and the largest other
/// group's is held as pending with the alarm. At first contact the largest group's identity
/// is pinned (and the other held) only when a quorum shows it; otherwise nothing is pinned.
fn disagree(stored: Option<Rc<Contact>>, groups: &[Vec<&Answer>], answers: &Answers) -> Judgement {
    let quorum = answers.quorum;
    let how = describe(groups);
    let mut contact = match stored {
        Some(shared) => Rc::unwrap_or_clone(shared),
        None if groups[0].len() >= quorum => {
            let mut contact = Contact::from_record(&groups[0][0].record, false);
            contact.username = answers.user.clone();
            note_serials(&mut contact, &groups[0]);
            contact
        }
        None => {
            let mut e = equivocation(&groups[0][0].record.user.username, &how);
            e.message.push_str(&format!(
                "; no key is shown by the {quorum} directories it takes to pin one"
            ));
            return Judgement::TooFew(e);
        }
    };
    // Two groups show two identities, so one of them is not the pinned one.
    let other = groups
        .iter()
        .find(|g| g[0].record.user.identity != contact.identity)
        .unwrap_or(&groups[1]);
    let other = &other[0].record.user;
    let first_seen = contact.alarm.is_none()
        || contact
            .pending
            .as_ref()
            .is_none_or(|p| p.identity != other.identity);
    contact.pending = Some(PendingKey {
        identity: other.identity,
        transport_key: other.transport_key,
    });
    contact.alarm = Some(how);
    Judgement::Disagree {
        contact,
        first_seen,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use smvs_crypto::{
        AgreementKeyPair, IdentityBundle, IdentityKeys, Signature, SigningPublicKey,
    };
    use smvs_directory::{UserRecord, VerifiedRecord};

    use super::*;

    /// Directory `n`'s key (`n` in every byte: judging checks no signature).
    fn dir(n: u8) -> SigningPublicKey {
        SigningPublicKey::from_bytes(&[n; 32]).unwrap()
    }

    /// A record as directory 1 would sign it.
    fn record(name: &str, identity: IdentityBundle, serial: u64, address: &str) -> VerifiedRecord {
        record_at(1, name, identity, serial, address)
    }

    fn record_at(
        directory: u8,
        name: &str,
        identity: IdentityBundle,
        serial: u64,
        address: &str,
    ) -> VerifiedRecord {
        VerifiedRecord {
            user: UserRecord {
                username: Username::parse(name).unwrap(),
                identity,
                // One host key per user, as a user's directories all show (any key will do).
                transport_key: identity.agreement_key,
                transport_certificate: Signature::from_bytes(&[0; 64]).unwrap(),
                transport_not_after: i64::MAX,
                host_address: HostAddress::parse(address).unwrap(),
                serial,
                session_keys: None,
            },
            issued_at: 0,
            directory_key: dir(directory),
            record_bytes: Vec::new(),
            logged_at: None,
            signature: Signature::from_bytes(&[0; 64]).unwrap(),
        }
    }

    /// The answers of several directories (named d1, d2, … after their keys) and a quorum.
    fn answers(quorum: usize, records: &[&VerifiedRecord]) -> Answers {
        Answers {
            user: records[0].user.username.clone(),
            answers: records
                .iter()
                .map(|r| Answer {
                    directory: format!("d{}", r.directory_key.as_bytes()[0]),
                    record: Rc::new((*r).clone()),
                })
                .collect(),
            quorum,
            asked: records.len(),
            failures: Vec::new(),
            moved: Vec::new(),
        }
    }

    /// One directory's answer, as a host with one directory hears it.
    fn judge(stored: Option<Rc<Contact>>, record: &VerifiedRecord, request: bool) -> Judgement {
        super::judge(stored, &answers(1, &[record]), request).0
    }

    /// The judgement of several answers, with any rollback it found.
    fn judge_all(
        stored: Option<Rc<Contact>>,
        quorum: usize,
        records: &[&VerifiedRecord],
    ) -> (Judgement, Vec<Rollback>) {
        super::judge(stored, &answers(quorum, records), false)
    }

    fn identity() -> IdentityBundle {
        IdentityKeys::generate().unwrap().bundle()
    }

    #[test]
    fn first_contact_pins_what_the_directory_shows() {
        let r = record("bob", identity(), 3, "127.0.0.2:7421");
        let Judgement::Pin(c) = judge(None, &r, true) else {
            panic!("first contact must pin")
        };
        assert_eq!(
            (c.identity, c.serial, c.request),
            (r.user.identity, 3, true)
        );
        assert_eq!(c.transport_key, r.user.transport_key);
        assert!(c.pending.is_none() && !c.blocked);
    }

    #[test]
    fn a_newer_record_of_the_same_identity_moves_the_host_and_an_older_one_changes_nothing() {
        let id = identity();
        let pinned = Rc::new(Contact::from_record(
            &record("bob", id, 3, "127.0.0.2:7421"),
            false,
        ));
        let moved = record("bob", id, 4, "127.0.0.9:7000");
        let Judgement::Update(c) = judge(Some(pinned.clone()), &moved, false) else {
            panic!("a newer serial updates")
        };
        assert_eq!(c.host_address.as_str(), "127.0.0.9:7000");
        assert_eq!((c.serial, c.transport_key), (4, moved.user.transport_key));
        let replayed = record("bob", id, 2, "10.9.9.9:1");
        let (judgement, rollbacks) = judge_all(Some(pinned.clone()), 1, &[&replayed]);
        assert_eq!(
            rollbacks,
            [Rollback {
                directory: "d1".into(),
                served: 2,
                before: 3
            }],
            "an older record is an alarm"
        );
        assert_eq!(
            judgement,
            Judgement::Unchanged(pinned.clone()),
            "and is not heard: what is pinned stands"
        );
        let same = record("bob", id, 3, "127.0.0.2:7421");
        let Judgement::Unchanged(shared) = judge(Some(pinned.clone()), &same, false) else {
            panic!("the same record changes nothing")
        };
        assert!(
            Rc::ptr_eq(&shared, &pinned),
            "an unchanged contact is shared, not copied"
        );
        // What a newer record says is kept as evidence.
        assert_eq!(c.evidence, Some(Evidence::of(&moved)));
    }

    #[test]
    fn another_identity_is_pending_and_alarms_once() {
        let pinned = Rc::new(Contact::from_record(
            &record("bob", identity(), 3, "127.0.0.2:7421"),
            false,
        ));
        let changed = record("bob", identity(), 4, "127.0.0.2:7421");
        let Judgement::KeyChanged {
            contact,
            first_seen: true,
        } = judge(Some(pinned.clone()), &changed, false)
        else {
            panic!("a new identity is a key change")
        };
        // The pinned identity stays; the new one waits for the user.
        assert_eq!(contact.identity, pinned.identity);
        let pending = contact.pending.clone().unwrap();
        assert_eq!(pending.identity, changed.user.identity);
        assert!(may_send(&contact.username, Some(&contact)).is_err());
        // The same change again: no second alarm, nothing to write.
        let again = judge(Some(Rc::new(contact.clone())), &changed, false);
        assert_eq!(
            again,
            Judgement::KeyChanged {
                contact: contact.clone(),
                first_seen: false
            }
        );
        // Yet another identity while one is pending: a new alarm for the newest.
        let third = record("bob", identity(), 5, "127.0.0.2:7421");
        let Judgement::KeyChanged {
            contact: c,
            first_seen: true,
        } = judge(Some(Rc::new(contact)), &third, false)
        else {
            panic!("a third identity alarms again")
        };
        assert_eq!(c.pending.unwrap().identity, third.user.identity);
    }

    #[test]
    fn contacts_on_a_local_network_are_connected_to_only_from_that_network() {
        let bob = Username::parse("bob").unwrap();
        let at = |s: &str| HostAddress::parse(s).unwrap();
        let refused = |ours: &str, theirs: &str| {
            may_connect(&at(ours), &bob, &at(theirs))
                .err()
                .map(|e| e.code)
        };
        assert_eq!(refused("127.0.0.1:1", "127.0.0.2:7421"), None);
        assert_eq!(refused("10.0.0.9:7421", "192.168.1.1:7421"), None);
        assert_eq!(refused("10.0.0.9:7421", "203.0.113.1:7421"), None);
        for (ours, theirs) in [
            ("203.0.113.5:7421", "127.0.0.2:7421"),
            ("203.0.113.5:7421", "localhost:7421"),
            ("203.0.113.5:7421", "[fd00::1]:7421"),
            ("127.0.0.1:7421", "10.0.0.1:7421"),
            ("127.0.0.1:7421", "0.0.0.0:7421"),
            // Our own address as a name says nothing: taken as public.
            ("me.example:7421", "10.0.0.1:7421"),
        ] {
            assert_eq!(
                refused(ours, theirs),
                Some(ErrorCode::AddressRefused),
                "{ours} -> {theirs}"
            );
        }
        // A contact's name is judged when resolved, at connect time.
        assert_eq!(refused("203.0.113.5:7421", "bob.example:7421"), None);
    }

    #[test]
    fn blocked_contacts_and_unaccepted_keys_cannot_be_written_to() {
        let bob = Username::parse("bob").unwrap();
        assert!(may_send(&bob, None).is_ok(), "a stranger may be written to");
        let mut c = Contact::from_record(&record("bob", identity(), 1, "127.0.0.2:7421"), false);
        assert!(may_send(&bob, Some(&c)).is_ok());
        c.blocked = true;
        assert_eq!(
            may_send(&bob, Some(&c)).unwrap_err().code,
            ErrorCode::Blocked
        );
        c.blocked = false;
        c.pending = Some(PendingKey {
            identity: identity(),
            transport_key: AgreementKeyPair::generate().unwrap().public(),
        });
        assert_eq!(
            may_send(&bob, Some(&c)).unwrap_err().code,
            ErrorCode::KeyChanged
        );
    }

    #[test]
    fn a_quorum_of_agreeing_directories_is_needed_and_a_disagreement_is_an_alarm() {
        let bob = identity();
        let (a, b) = (
            record_at(1, "bob", bob, 10, "127.0.0.2:7421"),
            record_at(2, "bob", bob, 20, "127.0.0.2:7421"),
        );
        // Two of three agree: first contact pins the first directory's copy.
        let Judgement::Pin(pinned) = judge_all(None, 2, &[&a, &b]).0 else {
            panic!("two agreeing answers meet a quorum of two")
        };
        assert_eq!(pinned.serial_from(dir(1).as_bytes()), Some(10));
        // One is not enough for a quorum of two.
        let Judgement::TooFew(e) = judge_all(None, 2, &[&b]).0 else {
            panic!("one answer is short of the quorum")
        };
        assert!(e.message.contains("only 1 of the 1 directories"), "{e}");

        // A third directory lies about bob's key.
        let lie = record_at(3, "bob", identity(), 30, "127.0.0.66:7421");
        let Judgement::Disagree {
            contact,
            first_seen: true,
        } = judge_all(None, 2, &[&lie, &a, &b]).0
        else {
            panic!("a disagreement is an alarm")
        };
        // The larger group's identity is pinned even though the liar answered first, the
        // lie is held as pending, and nothing may be sent.
        assert_eq!(contact.identity, bob);
        assert_eq!(
            contact.pending.as_ref().unwrap().identity,
            lie.user.identity
        );
        let how = contact.alarm.clone().unwrap();
        assert!(
            how.starts_with("d1, d2 show key ") && how.contains("; d3 shows key "),
            "{how}"
        );
        let refused = may_send(&contact.username, Some(&contact)).unwrap_err();
        assert_eq!(refused.code, ErrorCode::DirectoriesDisagree);
        // The same lie again: no second alarm.
        let contact = Rc::new(contact);
        let again = judge_all(Some(contact.clone()), 2, &[&lie, &a, &b]).0;
        assert!(matches!(
            again,
            Judgement::Disagree {
                first_seen: false,
                ..
            }
        ));
        // The user keeps bob's key: the liar's identity is no longer heard, and bob's agreed
        // record stands.
        let mut kept = Rc::unwrap_or_clone(contact);
        let lie_identity = kept.pending.take().unwrap().identity;
        kept.refuse(lie_identity);
        kept.alarm = None;
        let Judgement::Unchanged(after) = judge_all(Some(Rc::new(kept)), 2, &[&lie, &a, &b]).0
        else {
            panic!("with the lie refused, the quorum agrees")
        };
        assert!(may_send(&after.username, Some(&after)).is_ok());
        // Should another directory now show the liar's key too, it is still not heard, and
        // one directory alone changes nothing.
        let lie_b = record_at(2, "bob", lie.user.identity, 40, "127.0.0.66:7421");
        let moved_a = record_at(1, "bob", bob, 11, "127.0.0.99:7421");
        assert_eq!(
            judge_all(Some(after.clone()), 2, &[&lie, &moved_a, &lie_b]).0,
            Judgement::Unchanged(after)
        );
    }

    #[test]
    fn serials_are_compared_per_directory() {
        let bob = identity();
        let at_one = record_at(1, "bob", bob, 500, "127.0.0.2:7421");
        let pinned = Rc::new(Contact::from_record(&at_one, false));
        // Another directory's serials are its own: a lower one there is no rollback.
        let at_two = record_at(2, "bob", bob, 7, "127.0.0.2:7421");
        let Judgement::Update(c) = judge(Some(pinned), &at_two, false) else {
            panic!("the first record from another directory is news, not a rollback")
        };
        assert_eq!(c.serial_from(dir(1).as_bytes()), Some(500));
        assert_eq!(c.serial_from(dir(2).as_bytes()), Some(7));
        // But that directory going back is, and is not heard while the other agrees.
        let older = record_at(2, "bob", bob, 6, "127.0.0.2:7421");
        let contact = Rc::new(c);
        let (judgement, rollbacks) = judge_all(Some(contact.clone()), 1, &[&older, &at_one]);
        assert_eq!(rollbacks.len(), 1);
        assert_eq!((rollbacks[0].served, rollbacks[0].before), (6, 7));
        assert_eq!(judgement, Judgement::Unchanged(contact));
    }

    #[test]
    fn an_alarm_holds_until_the_user_decides_and_a_split_first_contact_pins_nothing() {
        let bob = identity();
        let (a, b) = (
            record_at(1, "bob", bob, 10, "127.0.0.2:7421"),
            record_at(2, "bob", bob, 20, "127.0.0.2:7421"),
        );
        let lie = record_at(3, "bob", identity(), 30, "127.0.0.66:7421");
        // One against one with a quorum of two (the honest third is down): nothing pinned,
        // whichever answered first.
        for order in [[&lie, &a], [&a, &lie]] {
            let (judgement, _) = judge_all(None, 2, &order);
            let Judgement::TooFew(e) = judgement else {
                panic!("no key has a quorum: {judgement:?}")
            };
            assert_eq!(e.code, ErrorCode::DirectoriesDisagree);
        }
        // Under an alarm, directories that agree again (the liar stopped answering) change
        // nothing: the user decides.
        let (Judgement::Disagree { contact, .. }, _) = judge_all(None, 2, &[&lie, &a, &b]) else {
            panic!("a quorum against one is an alarm")
        };
        let contact = Rc::new(contact);
        let (judgement, _) = judge_all(Some(contact.clone()), 2, &[&a, &b]);
        assert_eq!(
            judgement,
            Judgement::Disagree {
                contact: Contact::clone(&contact),
                first_seen: false
            }
        );
    }

    #[test]
    fn of_agreeing_records_the_freshest_certificate_is_taken() {
        let bob = identity();
        let mut old = record_at(1, "bob", bob, 10, "127.0.0.2:7421");
        old.user.transport_not_after = 1_000;
        let mut new = record_at(2, "bob", bob, 20, "127.0.0.3:7421");
        new.user.transport_not_after = 2_000;
        let (Judgement::Pin(c), _) = judge_all(None, 2, &[&old, &new]) else {
            panic!("two agree")
        };
        assert_eq!(c.transport_key, new.user.transport_key);
        assert_eq!(c.host_address.as_str(), "127.0.0.3:7421");
        assert_eq!(c.serial_from(dir(1).as_bytes()), Some(10));
        assert_eq!(c.serial_from(dir(2).as_bytes()), Some(20));
    }
}
