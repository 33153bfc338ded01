//! Comparing key log heads: the ones this host was shown, and the ones its contacts' hosts
//! pass on (docs/protocol.md, 3.7).
//!
//! A look-up proof holds against the head it comes with; nothing in it says that head is on
//! the same log everyone else is shown. A directory that keeps a separate log for one victim
//! (a *split view*), or rewinds its log, signs heads that cannot all be on one log. So each
//! directory link keeps the heads it saw since its last check ([`HeadBook`]), contacts' hosts
//! send theirs inside sealed messages, and a check asks the directory to prove that its log
//! grew, by adding only, from the oldest of them to its latest (`logConsistency`): every head
//! must then be the root that proof shows at its epoch. One that is not was signed for
//! another log; that is the alarm ([`LOG_SPLIT_VIEW`](smvs_service::logging::LOG_SPLIT_VIEW)).
//! Two heads, both signed by the directory, that no single log holds are evidence anyone can
//! check.

use std::collections::HashMap;

use smvs_directory::transparency::{LogChain, LogHead};
use smvs_directory::{ClientError, ErrorCode};
use smvs_schema::Username;

use super::directories::{DirectoryLink, DIRECTORY_TIMEOUT};
use super::Trust;
use crate::error::HostError;
use crate::model::HostEvent;
use crate::session::MAX_SHARED_HEADS;

/// The setting that holds, per directory, the head its log was last checked up to: the
/// directory's key (32 bytes), the epoch (8, big-endian) and the root hash (32), for each.
pub const LOG_HEADS_CHECKED: &str = "log_heads_checked";

/// How many unchecked heads a link keeps; the oldest go first (a check runs hourly, and at
/// once when a contact's head arrives).
const MAX_PENDING: usize = 64;

/// How many contacts' last heads are kept (past it, they are forgotten and checked again).
const MAX_CONTACT_HEADS: usize = 4096;

/// How many consistency answers (64 epochs each) one check asks for before it stops and
/// goes on at the next.
const MAX_ROUNDS: usize = 64;

/// Where a head came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadSource {
    /// An answer to this host's own look-up.
    Lookup,
    /// A contact's host passed it on.
    Contact(Username),
}

/// One directory's heads: the last one checked, and those seen since.
#[derive(Debug, Default)]
pub struct HeadBook {
    /// The head the log was last checked up to, with its signature (what this host passes on
    /// to its contacts); after a restart, only its epoch and root until the next check.
    checked: Option<Checked>,
    loaded: bool,
    pending: Vec<Pending>,
    next_id: u64,
    checking: bool,
    /// A check was asked for while one ran: run again when it ends.
    again: bool,
    /// The roots the last check proved (the last answer's), so a head already on them is not
    /// checked again.
    proven: Option<LogChain>,
    /// Heads already alarmed about (epoch, root): the alarm is raised once for each.
    refuted: Vec<(u64, [u8; 32])>,
    /// Epochs the directory could not prove its log from: alarmed once each.
    unprovable: Vec<u64>,
}

#[derive(Debug, Clone)]
struct Pending {
    id: u64,
    head: LogHead,
    source: HeadSource,
}

#[derive(Debug, Clone)]
struct Checked {
    epoch: u64,
    root: [u8; 32],
    signed: Option<LogHead>,
}

impl HeadBook {
    /// Whether `head` tells nothing new: it is the last checked one, on the log the last check
    /// proved, waiting to be checked already, or alarmed about already.
    fn knows(&self, head: &LogHead) -> bool {
        self.checked
            .as_ref()
            .is_some_and(|c| c.epoch == head.epoch && c.root == head.root_hash)
            || self
                .proven
                .as_ref()
                .is_some_and(|chain| chain.root_at(head.epoch) == Some(&head.root_hash))
            || self.pending.iter().any(|p| &p.head == head)
            || self.refuted.contains(&(head.epoch, head.root_hash))
    }

    /// Notes a head (its signature already checked) to compare at the next check; whether it
    /// was news.
    pub fn saw(&mut self, head: LogHead, source: HeadSource) -> bool {
        if self.knows(&head) {
            return false;
        }
        if self.pending.len() >= MAX_PENDING {
            // Contacts' heads go first: a contact must not push out what this host saw itself.
            let oldest = self
                .pending
                .iter()
                .position(|p| p.source != HeadSource::Lookup)
                .unwrap_or(0);
            self.pending.remove(oldest);
        }
        self.next_id += 1;
        self.pending.push(Pending {
            id: self.next_id,
            head,
            source,
        });
        true
    }
}

/// A head to judge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenHead {
    pub epoch: u64,
    pub root: [u8; 32],
    pub source: HeadSource,
    /// Its entry among the pending heads (none for the last checked head, or the end of the
    /// previous answer in one check).
    id: Option<u64>,
}

/// A head that no single log holds with the others, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inconsistent {
    pub head: SeenHead,
    pub why: String,
}

impl Inconsistent {
    pub fn new(head: &LogHead, source: HeadSource, why: String) -> Inconsistent {
        Inconsistent {
            head: SeenHead {
                epoch: head.epoch,
                root: head.root_hash,
                source,
                id: None,
            },
            why,
        }
    }
}

/// Judges `heads` against `chain`, the log the directory proved from the oldest of them: a
/// head within the chain must be its root at that epoch. Returns the inconsistent ones, and
/// the heads still beyond the chain's end (to judge with the next answer).
pub fn judge_heads(chain: &LogChain, heads: Vec<SeenHead>) -> (Vec<Inconsistent>, Vec<SeenHead>) {
    let mut bad = Vec::new();
    let mut later = Vec::new();
    for head in heads {
        match chain.root_at(head.epoch) {
            Some(proven) if proven == &head.root => {}
            Some(_) => bad.push(Inconsistent {
                head,
                why: "another root than the directory's own log has at that epoch".into(),
            }),
            None if head.epoch < chain.from => bad.push(Inconsistent {
                head,
                why: "older than where the log was proven from".into(),
            }),
            None => later.push(head),
        }
    }
    (bad, later)
}

/// Clears a link's `checking` flag however its check ends (a timeout drops it mid-way).
struct Checking<'a>(&'a DirectoryLink);

impl Drop for Checking<'_> {
    fn drop(&mut self) {
        self.0.heads.borrow_mut().checking = false;
    }
}

impl Trust {
    /// Takes the heads a contact's host passed on: those of directories this host trusts
    /// whose signature checks are noted for the next check. Whether any was (the same heads
    /// as that contact's last again only when one of them is news once more: pushed out of
    /// the unchecked ones before its check, say).
    pub fn heads_from_contact(&self, contact: &Username, heads: &[LogHead]) -> bool {
        let heads = &heads[..heads.len().min(MAX_SHARED_HEADS)];
        if heads.is_empty() {
            return false;
        }
        let links = self.checked_links();
        // A contact's host passes its heads on with most envelopes, mostly the same ones: their
        // signatures were checked when they came first.
        {
            let mut last = self.heads_from.borrow_mut();
            if last.get(contact).is_some_and(|l| l.as_slice() == heads) {
                let mut any = false;
                for head in heads {
                    if let Some(link) = links.iter().find(|l| l.anchor.key == head.directory) {
                        any |= link
                            .heads
                            .borrow_mut()
                            .saw(head.clone(), HeadSource::Contact(contact.clone()));
                    }
                }
                return any;
            }
            if last.len() >= MAX_CONTACT_HEADS {
                last.clear();
            }
            last.insert(contact.clone(), heads.to_vec());
        }
        let mut any = false;
        for head in heads {
            let Some(link) = links.iter().find(|l| l.anchor.key == head.directory) else {
                continue;
            };
            if let Err(e) = head.verify(&link.anchor.key) {
                tracing::info!(peer = %contact, directory = %link.name(), error = %e, "a contact's host passed on a key log head that does not check; ignored");
                continue;
            }
            link.heads
                .borrow_mut()
                .saw(head.clone(), HeadSource::Contact(contact.clone()));
            any = true;
        }
        any
    }

    /// The heads to pass on to a contact: each (unscoped) directory's newest this host saw itself (the
    /// last checked one, or a newer one from a look-up since). The receiver checks them
    /// against its own view of the log; a head passed on is signed, so it needs no trust in us.
    pub fn heads_to_share(&self) -> Vec<LogHead> {
        // Not the scoped directories': which of those this host uses is its own business.
        self.links()
            .iter()
            .filter_map(|l| {
                let book = l.heads.borrow();
                let checked = book.checked.as_ref().and_then(|c| c.signed.as_ref());
                let seen = book
                    .pending
                    .iter()
                    .filter(|p| p.source == HeadSource::Lookup)
                    .map(|p| &p.head);
                checked
                    .into_iter()
                    .chain(seen)
                    .max_by_key(|h| h.epoch)
                    .cloned()
            })
            .take(MAX_SHARED_HEADS)
            .collect()
    }

    /// Checks every directory's heads seen since its last check (see the module's comment).
    /// A directory that cannot be asked now is asked at the next check.
    pub async fn check_log_heads(&self) {
        for link in self.checked_links() {
            if let Err(e) = self.check_heads_at(&link).await {
                tracing::warn!(directory = %link.name(), error = %e, "cannot check the key log heads now; trying again at the next check");
            }
        }
    }

    async fn check_heads_at(&self, link: &DirectoryLink) -> Result<(), HostError> {
        {
            let mut book = link.heads.borrow_mut();
            if book.checking {
                book.again = true;
                return Ok(());
            }
            book.checking = true;
        }
        let _checking = Checking(link);
        // Heads that came during a check (a contact's, say) are checked right after it.
        for _ in 0..4 {
            link.heads.borrow_mut().again = false;
            self.check_heads_once(link).await?;
            if !link.heads.borrow().again {
                break;
            }
        }
        Ok(())
    }

    /// Loads the head `link` was last checked up to, once.
    async fn load_checked(&self, link: &DirectoryLink) -> Result<(), HostError> {
        if link.heads.borrow().loaded {
            return Ok(());
        }
        let stored = self.storage.setting(LOG_HEADS_CHECKED).await?;
        let mut book = link.heads.borrow_mut();
        if let Some((epoch, root)) = stored
            .as_deref()
            .and_then(|b| read_checked(b).get(link.anchor.key.as_bytes()).copied())
        {
            if book.checked.is_none() {
                book.checked = Some(Checked {
                    epoch,
                    root,
                    signed: None,
                });
            }
        }
        book.loaded = true;
        Ok(())
    }

    /// The epoch `link`'s log was last proven up to by this host, if ever.
    pub(super) async fn proven_epoch(
        &self,
        link: &DirectoryLink,
    ) -> Result<Option<u64>, HostError> {
        self.load_checked(link).await?;
        Ok(link.heads.borrow().checked.as_ref().map(|c| c.epoch))
    }

    async fn check_heads_once(&self, link: &DirectoryLink) -> Result<(), HostError> {
        self.load_checked(link).await?;
        let mut heads = {
            let book = link.heads.borrow();
            if book.pending.is_empty() && book.checked.as_ref().is_some_and(|c| c.signed.is_some())
            {
                return Ok(());
            }
            let mut heads: Vec<SeenHead> = book
                .pending
                .iter()
                .map(|p| SeenHead {
                    epoch: p.head.epoch,
                    root: p.head.root_hash,
                    source: p.source.clone(),
                    id: Some(p.id),
                })
                .collect();
            if let Some(c) = &book.checked {
                heads.push(SeenHead {
                    epoch: c.epoch,
                    root: c.root,
                    source: HeadSource::Lookup,
                    id: None,
                });
            }
            heads
        };
        let Some(mut from) = heads.iter().map(|h| h.epoch).min() else {
            return Ok(());
        };
        let client = link.client().await?;
        // Pending heads judged (either way): dropped at the end; those not reached stay.
        let mut judged: Vec<u64> = Vec::new();
        let mut found_any = false;
        let mut last: Option<LogChain> = None;
        for _ in 0..MAX_ROUNDS {
            let chain =
                match tokio::time::timeout(DIRECTORY_TIMEOUT, client.log_consistency(from)).await {
                    Err(_) => return Err(link.no_answer("checking the key log")),
                    Ok(Ok(chain)) => chain,
                    // A log that cannot be proven from a head its directory signed: rewound, or
                    // forked. Every head is in question; the alarm is raised once per epoch.
                    Ok(Err(
                        e @ (ClientError::Verification(_)
                        | ClientError::Refused {
                            code: ErrorCode::BadRequest,
                            ..
                        }),
                    )) => {
                        link.failed(&e);
                        let seen_before = link.heads.borrow().unprovable.contains(&from);
                        // The baseline it cannot prove from is dropped, so that later checks
                        // go on from the heads after it instead of failing here for ever.
                        {
                            let mut book = link.heads.borrow_mut();
                            if book.checked.as_ref().is_some_and(|c| c.epoch == from) {
                                book.checked = None;
                                book.proven = None;
                            }
                        }
                        if !seen_before {
                            link.heads.borrow_mut().unprovable.push(from);
                            let head = heads.iter().find(|h| h.epoch == from).cloned().unwrap_or(
                                SeenHead {
                                    epoch: from,
                                    root: [0; 32],
                                    source: HeadSource::Lookup,
                                    id: None,
                                },
                            );
                            self.split_view(
                                link,
                                &Inconsistent {
                                    head,
                                    why: format!(
                                        "the directory cannot prove its log grew from it: {e}"
                                    ),
                                },
                            );
                        }
                        judged.extend(
                            heads
                                .iter()
                                .filter(|h| h.epoch == from)
                                .filter_map(|h| h.id),
                        );
                        self.forget_pending(link, &judged);
                        return Ok(());
                    }
                    Ok(Err(e)) => {
                        link.failed(&e);
                        return Err(HostError::from(e));
                    }
                };
            // One answer must go on from where the one before ended: the same root there.
            if let Some(before) = &last {
                heads.push(SeenHead {
                    epoch: before.end(),
                    root: before.head.root_hash,
                    source: HeadSource::Lookup,
                    id: None,
                });
            }
            let (bad, later) = judge_heads(&chain, heads.clone());
            judged.extend(
                heads
                    .iter()
                    .filter(|h| !later.contains(h))
                    .filter_map(|h| h.id),
            );
            for inconsistent in &bad {
                found_any = true;
                self.split_view(link, inconsistent);
            }
            heads = later;
            let reached_latest = chain.end()
                < from.saturating_add(smvs_directory::transparency::MAX_CONSISTENCY_EPOCHS);
            from = chain.end();
            last = Some(chain);
            if heads.is_empty() {
                break;
            }
            if reached_latest {
                // The directory's latest is older than a head it signed.
                for head in heads.drain(..) {
                    found_any = true;
                    judged.extend(head.id);
                    self.split_view(
                        link,
                        &Inconsistent {
                            head,
                            why: "newer than the directory's latest: its log was rewound".into(),
                        },
                    );
                }
                break;
            }
        }
        self.forget_pending(link, &judged);
        let Some(chain) = last else {
            return Ok(());
        };
        let head = chain.head.clone();
        if !found_any {
            tracing::info!(directory = %link.name(), epoch = head.epoch, "the key log heads seen agree with the directory's log");
        }
        // The checkpoint only moves forward (a check may have started from an older head).
        let forward = link
            .heads
            .borrow()
            .checked
            .as_ref()
            .is_none_or(|c| head.epoch >= c.epoch);
        {
            let mut book = link.heads.borrow_mut();
            book.proven = Some(chain);
            if !forward {
                return Ok(());
            }
            book.checked = Some(Checked {
                epoch: head.epoch,
                root: head.root_hash,
                signed: Some(head.clone()),
            });
        }
        let mut all = match self.storage.setting(LOG_HEADS_CHECKED).await? {
            Some(bytes) => read_checked(&bytes),
            None => HashMap::new(),
        };
        all.insert(*link.anchor.key.as_bytes(), (head.epoch, head.root_hash));
        self.storage
            .set_setting(LOG_HEADS_CHECKED, write_checked(&all))
            .await?;
        Ok(())
    }

    /// Drops the pending heads one check judged (more may have come meanwhile).
    fn forget_pending(&self, link: &DirectoryLink, judged: &[u64]) {
        link.heads
            .borrow_mut()
            .pending
            .retain(|p| !judged.contains(&p.id));
    }

    /// Raises the split-view alarm for one head, once.
    pub(super) fn split_view(&self, link: &DirectoryLink, found: &Inconsistent) {
        {
            let mut book = link.heads.borrow_mut();
            let key = (found.head.epoch, found.head.root);
            book.pending
                .retain(|p| (p.head.epoch, p.head.root_hash) != key);
            if book.refuted.contains(&key) {
                return;
            }
            if book.refuted.len() >= MAX_PENDING {
                book.refuted.remove(0);
            }
            book.refuted.push(key);
        }
        let me = self.registered().map(|m| m.username);
        let (source, peer) = match &found.head.source {
            HeadSource::Lookup => ("this host's look-up".to_owned(), me),
            HeadSource::Contact(c) => (format!("{c}'s host"), Some(c.clone())),
        };
        smvs_service::security_event!(error, smvs_service::logging::LOG_SPLIT_VIEW, directory = %link.name(), epoch = found.head.epoch, source = %source, why = %found.why, "a directory's key log heads are not all on one log: it shows someone a log of its own (a split view) or rewound it");
        if let Some(peer) = peer {
            self.events.publish(HostEvent::DirectoryAlarm { peer });
        }
    }
}

/// Reads the setting (entries of another length are skipped).
pub fn read_checked(bytes: &[u8]) -> HashMap<[u8; 32], (u64, [u8; 32])> {
    bytes
        .chunks_exact(72)
        .filter_map(|entry| {
            let key: [u8; 32] = entry[..32].try_into().ok()?;
            let epoch = u64::from_be_bytes(entry[32..40].try_into().ok()?);
            let root: [u8; 32] = entry[40..].try_into().ok()?;
            Some((key, (epoch, root)))
        })
        .collect()
}

pub fn write_checked(all: &HashMap<[u8; 32], (u64, [u8; 32])>) -> Vec<u8> {
    let mut out = Vec::with_capacity(all.len() * 72);
    for (key, (epoch, root)) in all {
        out.extend_from_slice(key);
        out.extend_from_slice(&epoch.to_be_bytes());
        out.extend_from_slice(root);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(from: u64, roots: Vec<[u8; 32]>) -> LogChain {
        let signer = smvs_crypto::SigningKeyPair::generate().unwrap();
        let end = from + roots.len() as u64 - 1;
        let head = LogHead::sign(&signer, end, *roots.last().unwrap(), [0; 32]);
        LogChain { from, roots, head }
    }

    fn seen(epoch: u64, root: u8, source: &HeadSource) -> SeenHead {
        SeenHead {
            epoch,
            root: [root; 32],
            source: source.clone(),
            id: None,
        }
    }

    #[test]
    fn heads_on_the_proven_log_pass_and_others_do_not() {
        smvs_crypto::init().unwrap();
        let proven = chain(5, vec![[5; 32], [6; 32], [7; 32]]);
        let bob = HeadSource::Contact(Username::parse("bob").unwrap());
        let us = HeadSource::Lookup;
        let (bad, later) = judge_heads(
            &proven,
            vec![
                seen(5, 5, &us),
                seen(6, 6, &bob),
                seen(7, 9, &bob),
                seen(4, 4, &us),
                seen(9, 9, &bob),
            ],
        );
        assert_eq!(
            bad.iter().map(|b| b.head.clone()).collect::<Vec<_>>(),
            vec![seen(7, 9, &bob), seen(4, 4, &us)]
        );
        assert_eq!(later, vec![seen(9, 9, &bob)]);
    }

    #[test]
    fn a_head_is_kept_once_and_the_oldest_go_first() {
        smvs_crypto::init().unwrap();
        let signer = smvs_crypto::SigningKeyPair::generate().unwrap();
        let mut book = HeadBook::default();
        for epoch in 0..(MAX_PENDING as u64 + 3) {
            let head = LogHead::sign(&signer, epoch, [1; 32], [0; 32]);
            book.saw(head.clone(), HeadSource::Lookup);
            book.saw(head, HeadSource::Lookup);
        }
        assert_eq!(book.pending.len(), MAX_PENDING);
        assert_eq!(book.pending[0].head.epoch, 3);
    }

    #[test]
    fn checked_heads_round_trip() {
        let mut all = HashMap::new();
        all.insert([1; 32], (7, [2; 32]));
        all.insert([3; 32], (9, [4; 32]));
        let mut bytes = write_checked(&all);
        assert_eq!(read_checked(&bytes), all);
        bytes.push(0);
        assert_eq!(read_checked(&bytes[..72]).len(), 1);
    }
}
