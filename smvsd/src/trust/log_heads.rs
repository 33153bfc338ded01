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

/// How many consistency answers (256 epochs each) one check asks for before it stops and
/// goes on at the next.
const MAX_ROUNDS: usize = 16;

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
    pending: Vec<(LogHead, HeadSource)>,
    checking: bool,
    /// The roots the last check proved (the last answer's), so a head already on them is not
    /// checked again.
    proven: Option<LogChain>,
    /// Heads already alarmed about (epoch, root): the alarm is raised once for each.
    refuted: Vec<(u64, [u8; 32])>,
}

#[derive(Debug, Clone)]
struct Checked {
    epoch: u64,
    root: [u8; 32],
    signed: Option<LogHead>,
}

impl HeadBook {
    /// Notes a head (its signature already checked) to compare at the next check.
    pub fn saw(&mut self, head: LogHead, source: HeadSource) {
        if self
            .checked
            .as_ref()
            .is_some_and(|c| c.epoch == head.epoch && c.root == head.root_hash)
            || self
                .proven
                .as_ref()
                .is_some_and(|chain| chain.root_at(head.epoch) == Some(&head.root_hash))
            || self.pending.iter().any(|(h, _)| h == &head)
            || self.refuted.contains(&(head.epoch, head.root_hash))
        {
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            self.pending.remove(0);
        }
        self.pending.push((head, source));
    }
}

/// A head to judge: its epoch, its root hash, and where it came from.
pub type SeenHead = (u64, [u8; 32], HeadSource);

/// A head that no single log holds with the others, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inconsistent {
    pub epoch: u64,
    pub source: HeadSource,
    pub why: String,
}

/// Judges `heads` against `chain`, the log the directory proved from the oldest of them: a
/// head within the chain must be its root at that epoch. Returns the inconsistent ones, and
/// the heads still beyond the chain's end (to judge with the next answer).
pub fn judge_heads(chain: &LogChain, heads: Vec<SeenHead>) -> (Vec<Inconsistent>, Vec<SeenHead>) {
    let mut bad = Vec::new();
    let mut later = Vec::new();
    for (epoch, root, source) in heads {
        match chain.root_at(epoch) {
            Some(proven) if proven == &root => {}
            Some(_) => bad.push(Inconsistent {
                epoch,
                source,
                why: "another root than the directory's own log has at that epoch".into(),
            }),
            None if epoch < chain.from => bad.push(Inconsistent {
                epoch,
                source,
                why: "older than where the log was proven from".into(),
            }),
            None => later.push((epoch, root, source)),
        }
    }
    (bad, later)
}

impl Trust {
    /// Takes the heads a contact's host passed on: those of directories this host trusts
    /// whose signature checks are noted for the next check. Whether any was.
    pub fn heads_from_contact(&self, contact: &Username, heads: &[LogHead]) -> bool {
        let mut any = false;
        for head in heads.iter().take(MAX_SHARED_HEADS) {
            let Some(link) = self.links.iter().find(|l| l.anchor.key == head.directory) else {
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

    /// The heads to pass on to a contact: each directory's newest this host saw itself (the
    /// last checked one, or a newer one from a look-up since). The receiver checks them
    /// against its own view of the log; a head passed on is signed, so it needs no trust in us.
    pub fn heads_to_share(&self) -> Vec<LogHead> {
        self.links
            .iter()
            .filter_map(|l| {
                let book = l.heads.borrow();
                let checked = book.checked.as_ref().and_then(|c| c.signed.as_ref());
                let seen = book
                    .pending
                    .iter()
                    .filter(|(_, source)| source == &HeadSource::Lookup)
                    .map(|(head, _)| head);
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
        for link in &self.links {
            if let Err(e) = self.check_heads_at(link).await {
                tracing::warn!(directory = %link.name(), error = %e, "cannot check the key log heads now; trying again at the next check");
            }
        }
    }

    async fn check_heads_at(&self, link: &DirectoryLink) -> Result<(), HostError> {
        {
            let mut book = link.heads.borrow_mut();
            if book.checking {
                return Ok(());
            }
            book.checking = true;
        }
        let result = self.check_heads_once(link).await;
        link.heads.borrow_mut().checking = false;
        result
    }

    async fn check_heads_once(&self, link: &DirectoryLink) -> Result<(), HostError> {
        if !link.heads.borrow().loaded {
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
        }
        let (mut heads, taken) = {
            let book = link.heads.borrow();
            if book.pending.is_empty() && book.checked.as_ref().is_some_and(|c| c.signed.is_some())
            {
                return Ok(());
            }
            let mut heads: Vec<SeenHead> = book
                .pending
                .iter()
                .map(|(h, s)| (h.epoch, h.root_hash, s.clone()))
                .collect();
            if let Some(c) = &book.checked {
                heads.push((c.epoch, c.root, HeadSource::Lookup));
            }
            (heads, book.pending.len())
        };
        let Some(mut from) = heads.iter().map(|(e, _, _)| *e).min() else {
            return Ok(());
        };
        let client = link.client().await?;
        let mut last = None;
        for _ in 0..MAX_ROUNDS {
            let chain = match tokio::time::timeout(DIRECTORY_TIMEOUT, client.log_consistency(from))
                .await
            {
                Err(_) => return Err(link.no_answer("checking the key log")),
                Ok(Ok(chain)) => chain,
                // A log that cannot be proven from a head its directory signed: rewound, or
                // forked. Every head from there on is in question.
                Ok(Err(
                    e @ (ClientError::Verification(_)
                    | ClientError::Refused {
                        code: ErrorCode::BadRequest,
                        ..
                    }),
                )) => {
                    link.failed(&e);
                    let first = heads.iter().find(|(epoch, _, _)| *epoch == from);
                    let source = first.map_or(HeadSource::Lookup, |(_, _, s)| s.clone());
                    self.split_view(
                        link,
                        &Inconsistent {
                            epoch: from,
                            source,
                            why: format!("the directory cannot prove its log grew from it: {e}"),
                        },
                    );
                    self.forget_pending(link, taken);
                    return Ok(());
                }
                Ok(Err(e)) => {
                    link.failed(&e);
                    return Err(HostError::from(e));
                }
            };
            let (bad, later) = judge_heads(&chain, heads);
            for inconsistent in &bad {
                self.split_view(link, inconsistent);
            }
            heads = later;
            let reached_latest =
                chain.end() < from + smvs_directory::transparency::MAX_CONSISTENCY_EPOCHS;
            from = chain.end();
            last = Some(chain);
            if heads.is_empty() {
                break;
            }
            if reached_latest {
                // The directory's latest is older than a head it signed.
                for (epoch, _, source) in heads.drain(..) {
                    self.split_view(
                        link,
                        &Inconsistent {
                            epoch,
                            source,
                            why: "newer than the directory's latest: its log was rewound".into(),
                        },
                    );
                }
                break;
            }
        }
        self.forget_pending(link, taken);
        let Some(chain) = last else {
            return Ok(());
        };
        let head = chain.head.clone();
        tracing::info!(directory = %link.name(), epoch = head.epoch, "the key log heads seen agree with the directory's log");
        {
            let mut book = link.heads.borrow_mut();
            book.checked = Some(Checked {
                epoch: head.epoch,
                root: head.root_hash,
                signed: Some(head.clone()),
            });
            book.proven = Some(chain);
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

    /// Drops the first `taken` pending heads (those one check judged; more may have come).
    fn forget_pending(&self, link: &DirectoryLink, taken: usize) {
        let mut book = link.heads.borrow_mut();
        let taken = taken.min(book.pending.len());
        book.pending.drain(..taken);
    }

    fn split_view(&self, link: &DirectoryLink, found: &Inconsistent) {
        {
            let mut book = link.heads.borrow_mut();
            let root = book
                .pending
                .iter()
                .find(|(h, s)| h.epoch == found.epoch && s == &found.source)
                .map(|(h, _)| h.root_hash);
            if let Some(root) = root {
                if book.refuted.len() >= MAX_PENDING {
                    book.refuted.remove(0);
                }
                book.refuted.push((found.epoch, root));
            }
        }
        let me = self.registered().map(|m| m.username);
        let (source, peer) = match &found.source {
            HeadSource::Lookup => ("this host's look-up".to_owned(), me),
            HeadSource::Contact(c) => (format!("{c}'s host"), Some(c.clone())),
        };
        smvs_service::security_event!(error, smvs_service::logging::LOG_SPLIT_VIEW, directory = %link.name(), epoch = found.epoch, source = %source, why = %found.why, "a directory's key log heads are not all on one log: it shows someone a log of its own (a split view) or rewound it");
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

    #[test]
    fn heads_on_the_proven_log_pass_and_others_do_not() {
        smvs_crypto::init().unwrap();
        let proven = chain(5, vec![[5; 32], [6; 32], [7; 32]]);
        let bob = HeadSource::Contact(Username::parse("bob").unwrap());
        let (bad, later) = judge_heads(
            &proven,
            vec![
                (5, [5; 32], HeadSource::Lookup),
                (6, [6; 32], bob.clone()),
                (7, [9; 32], bob.clone()),
                (4, [4; 32], HeadSource::Lookup),
                (9, [9; 32], bob.clone()),
            ],
        );
        assert_eq!(
            bad.iter()
                .map(|b| (b.epoch, b.source.clone()))
                .collect::<Vec<_>>(),
            vec![(7, bob.clone()), (4, HeadSource::Lookup)]
        );
        assert_eq!(later, vec![(9, [9; 32], bob)]);
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
        assert_eq!(book.pending[0].0.epoch, 3);
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
