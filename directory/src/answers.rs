//! Look-up answers kept in memory, so that a hot name costs no database read, no key-log proof
//! and no signature.
//!
//! An answer (the signed record or moved statement, the signed log head and the proof) is kept
//! with the epoch its proof holds against, and served only while that epoch is still the log's
//! latest ([`crate::keylog::KeyLog::latest`]): every change of a record publishes a new epoch,
//! so an answer can never outlive the record it shows, and a host never gets a proof older than
//! a head it may already have seen (it alarms on that, for its own name). A record is signed
//! once, when its answer is made, rather than per look-up; so is a head, once per epoch.
//!
//! Bounded in bytes ([`AnswerCache::new`]); when full, answers of older epochs go first, then
//! any. Sharded by name so the workers seldom wait on one another.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use smvs_crypto::Signature;
use smvs_schema::directory_capnp::directory;
use smvs_schema::Username;

use crate::error::{ErrorCode, Refusal};
use crate::record::MovedStatement;
use crate::transparency::LogHead;

/// What a look-up of one name answers.
pub(crate) enum Answer {
    Record {
        /// The record as signed (`record::encode_record`), and the directory's signature.
        record: Vec<u8>,
        signature: Signature,
        head: LogHead,
        proof: Vec<u8>,
    },
    /// The user moved to another directory: their own statement.
    Moved {
        statement: MovedStatement,
        head: LogHead,
        proof: Vec<u8>,
    },
    /// No such user (a not-found is kept too: names that do not exist are asked for as well).
    NotFound,
}

impl Answer {
    /// The epoch its proof holds against (none for a not-found).
    pub fn epoch(&self) -> Option<u64> {
        match self {
            Answer::Record { head, .. } | Answer::Moved { head, .. } => Some(head.epoch),
            Answer::NotFound => None,
        }
    }

    /// Roughly what it holds in memory, for the cache's budget.
    fn size(&self, name: &Username) -> usize {
        const OVERHEAD: usize = 160;
        OVERHEAD
            + name.as_str().len()
            + match self {
                Answer::Record { record, proof, .. } => record.len() + proof.len(),
                Answer::Moved {
                    statement, proof, ..
                } => statement.to_address.len() + proof.len() + 128,
                Answer::NotFound => 0,
            }
    }

    /// Writes it into a look-up's results; a not-found is the refusal the client is given.
    pub fn write(
        &self,
        name: &Username,
        mut answer: directory::lookup_results::Builder<'_>,
    ) -> Result<(), Refusal> {
        let (head, proof) = match self {
            Answer::Record {
                record,
                signature,
                head,
                proof,
            } => {
                let mut r = answer.reborrow().init_record();
                r.set_record(record);
                r.set_signature(signature.as_bytes());
                (head, proof)
            }
            Answer::Moved {
                statement,
                head,
                proof,
            } => {
                statement.write(answer.reborrow().init_moved());
                (head, proof)
            }
            Answer::NotFound => {
                return Err(Refusal::new(
                    ErrorCode::NotFound,
                    format!("no user named {name}"),
                ))
            }
        };
        head.write(answer.reborrow().init_head());
        answer.set_proof(proof);
        Ok(())
    }
}

/// Answers by name, each valid at one epoch.
pub(crate) struct AnswerCache {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    /// Bytes each shard may hold.
    shard_budget: usize,
}

#[derive(Default)]
struct Shard {
    entries: HashMap<Username, Kept>,
    bytes: usize,
}

struct Kept {
    /// The latest epoch when the answer was made (a not-found's too).
    epoch: u64,
    answer: Arc<Answer>,
    size: usize,
}

const SHARDS: usize = 16;

impl AnswerCache {
    /// A cache of at most `budget` bytes (0: keeps nothing).
    pub fn new(budget: usize) -> AnswerCache {
        AnswerCache {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: Default::default(),
            shard_budget: budget / SHARDS,
        }
    }

    fn shard(&self, name: &Username) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(name) as usize) % SHARDS;
        // A poisoned shard only means a panic elsewhere while it was held; its map is whole
        // (every change below is one call that cannot panic half-way).
        match self.shards[i].lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// `name`'s answer if it was made at `epoch`.
    pub fn get(&self, name: &Username, epoch: u64) -> Option<Arc<Answer>> {
        let shard = self.shard(name);
        shard
            .entries
            .get(name)
            .filter(|kept| kept.epoch == epoch)
            .map(|kept| kept.answer.clone())
    }

    /// Keeps `answer` as `name`'s at `epoch`, making room if it must.
    pub fn put(&self, name: &Username, epoch: u64, answer: Arc<Answer>) {
        let size = answer.size(name);
        if size > self.shard_budget {
            return;
        }
        let mut shard = self.shard(name);
        if let Some(old) = shard.entries.remove(name) {
            shard.bytes -= old.size;
        }
        if shard.bytes + size > self.shard_budget {
            // Older epochs' answers first: they are never served again.
            let before = shard.entries.len();
            shard.entries.retain(|_, kept| kept.epoch >= epoch);
            if shard.entries.len() != before {
                shard.bytes = shard.entries.values().map(|k| k.size).sum();
            }
        }
        while shard.bytes + size > self.shard_budget {
            let Some(victim) = shard.entries.keys().next().cloned() else {
                break;
            };
            if let Some(old) = shard.entries.remove(&victim) {
                shard.bytes -= old.size;
            }
        }
        shard.bytes += size;
        shard.entries.insert(
            name.clone(),
            Kept {
                epoch,
                answer,
                size,
            },
        );
    }

    /// Drops `name`'s answer (its record just changed here).
    pub fn forget(&self, name: &Username) {
        let mut shard = self.shard(name);
        if let Some(old) = shard.entries.remove(name) {
            shard.bytes -= old.size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(i: usize) -> Username {
        Username::parse(&format!("user{i}")).unwrap()
    }

    #[test]
    fn an_answer_is_served_only_at_its_epoch_and_until_forgotten() {
        let cache = AnswerCache::new(1 << 20);
        let alice = name(1);
        cache.put(&alice, 7, Arc::new(Answer::NotFound));
        assert!(cache.get(&alice, 7).is_some());
        assert!(cache.get(&alice, 8).is_none());
        assert!(cache.get(&alice, 6).is_none());
        assert!(cache.get(&name(2), 7).is_none());
        cache.forget(&alice);
        assert!(cache.get(&alice, 7).is_none());
    }

    #[test]
    fn the_budget_holds_and_older_epochs_go_first() {
        let cache = AnswerCache::new(SHARDS * 2_000);
        for i in 0..1_000 {
            cache.put(&name(i), 1, Arc::new(Answer::NotFound));
        }
        for shard in &cache.shards {
            let shard = shard.lock().unwrap();
            assert!(shard.bytes <= 2_000, "{}", shard.bytes);
            assert_eq!(
                shard.bytes,
                shard.entries.values().map(|k| k.size).sum::<usize>()
            );
        }
        let kept_at_1 = (0..1_000)
            .filter(|&i| cache.get(&name(i), 1).is_some())
            .count();
        assert!(kept_at_1 > 0 && kept_at_1 < 1_000, "{kept_at_1}");
        // A newer epoch's answers push out the older ones before each other.
        // (40 over 16 shards of room for about 12 each.)
        for i in 1_000..1_040 {
            cache.put(&name(i), 2, Arc::new(Answer::NotFound));
        }
        let kept_at_2 = (1_000..1_040)
            .filter(|&i| cache.get(&name(i), 2).is_some())
            .count();
        assert_eq!(kept_at_2, 40);
        // Nothing bigger than a shard is kept, and a zero budget keeps nothing.
        let none = AnswerCache::new(0);
        none.put(&name(1), 1, Arc::new(Answer::NotFound));
        assert!(none.get(&name(1), 1).is_none());
    }
}
