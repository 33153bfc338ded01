//! Look-up answers kept in memory, so that a hot name costs no database read, no key-log proof
//! and no signature.
//!
//! An answer (the signed record or moved statement, the signed log head and the proof) is kept
//! with its generation: the log's latest epoch and the count of record changes when it was
//! made ([`crate::keylog::KeyLog::latest`]). It is served only while both are unchanged: every
//! change of a record moves the count (in the changing transaction, with PostgreSQL; by this
//! process, with SQLite, whose database no other process writes) and publishes a new epoch, so
//! an answer never outlives the record it shows, even when a change's publication failed; and
//! a host never gets a proof older than a head it may already have seen (it alarms on that,
//! for its own name). A record is signed once, when its answer is made, rather than per
//! look-up; so is a head, once per epoch.
//!
//! Bounded in bytes ([`AnswerCache::new`]); answers of an older generation are dropped when a
//! newer one is put, and when full the oldest put goes first. Sharded by name so the workers
//! seldom wait on one another.

use std::collections::{HashMap, VecDeque};
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

    /// What it holds on the heap, for the cache's budget.
    fn heap_size(&self) -> usize {
        match self {
            Answer::Record { record, proof, .. } => record.len() + proof.len(),
            Answer::Moved {
                statement, proof, ..
            } => statement.username.as_str().len() + statement.to_address.len() + proof.len(),
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

/// What an answer was made at: the log's epoch and the count of record changes
/// ([`crate::keylog::KeyLog::latest`], plus this process's own count). Both only grow, so a
/// newer generation is greater in both or equal in one.
pub(crate) type Generation = (u64, u64);

/// Answers by name, each valid at one generation.
pub(crate) struct AnswerCache {
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
    /// Bytes each shard may hold.
    shard_budget: usize,
}

#[derive(Default)]
struct Shard {
    /// The newest generation put here: answers of an older one are never served again, so
    /// they are dropped all at once when a newer one comes, and not kept when they come late.
    generation: Generation,
    entries: HashMap<Username, Kept>,
    /// Names in the order they were put, for eviction (first in, first out); a name may be
    /// here more than once, or no longer in `entries`, and is then skipped.
    order: VecDeque<Username>,
    bytes: usize,
}

struct Kept {
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

    /// Whether it keeps nothing (`--answer-cache-mib 0`).
    pub fn is_off(&self) -> bool {
        self.shard_budget == 0
    }

    fn shard(&self, name: &Username) -> std::sync::MutexGuard<'_, Shard> {
        let i = (self.hasher.hash_one(name) as usize) % SHARDS;
        // A poisoned shard only means a panic elsewhere while it was held; its map is whole
        // (nothing below can panic half-way through a change).
        match self.shards[i].lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// `name`'s answer if it was made at `generation`.
    pub fn get(&self, name: &Username, generation: Generation) -> Option<Arc<Answer>> {
        let shard = self.shard(name);
        if shard.generation != generation {
            return None;
        }
        shard.entries.get(name).map(|kept| kept.answer.clone())
    }

    /// Keeps `answer` as `name`'s at `generation`, making room if it must.
    pub fn put(&self, name: &Username, generation: Generation, answer: Arc<Answer>) {
        // What it holds: the entry, the answer, the name twice (the map's key and the order's).
        let size = std::mem::size_of::<(Username, Kept)>()
            + std::mem::size_of::<Answer>()
            + 2 * (name.as_str().len() + std::mem::size_of::<Username>())
            + answer.heap_size();
        if size > self.shard_budget {
            return;
        }
        let mut shard = self.shard(name);
        let current = shard.generation;
        if generation.0 < current.0 || generation.1 < current.1 {
            // Made before something newer was seen: it will never be asked for.
            return;
        }
        if generation != current {
            shard.generation = generation;
            shard.entries.clear();
            shard.order.clear();
            shard.bytes = 0;
        }
        let again = shard.entries.remove(name);
        if let Some(old) = &again {
            shard.bytes -= old.size;
        }
        while shard.bytes + size > self.shard_budget {
            let Some(victim) = shard.order.pop_front() else {
                break;
            };
            if let Some(old) = shard.entries.remove(&victim) {
                shard.bytes -= old.size;
            }
        }
        shard.bytes += size;
        if again.is_none() {
            shard.order.push_back(name.clone());
        }
        shard.entries.insert(name.clone(), Kept { answer, size });
        // Forgotten names leave stale places in the order (and a name forgotten and put again,
        // two): keep it from growing past twice what the map holds.
        if shard.order.len() > 2 * shard.entries.len() + 16 {
            let Shard { order, entries, .. } = &mut *shard;
            let mut seen = std::collections::HashSet::new();
            let mut kept: Vec<Username> = order
                .drain(..)
                .rev()
                .filter(|n| entries.contains_key(n) && seen.insert(n.clone()))
                .collect();
            kept.reverse();
            order.extend(kept);
        }
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
    fn an_answer_is_served_only_at_its_generation_and_until_forgotten() {
        let cache = AnswerCache::new(1 << 20);
        let alice = name(1);
        cache.put(&alice, (7, 3), Arc::new(Answer::NotFound));
        assert!(cache.get(&alice, (7, 3)).is_some());
        // Another epoch, or a record changed since (the count moved), misses.
        assert!(cache.get(&alice, (8, 3)).is_none());
        assert!(cache.get(&alice, (7, 4)).is_none());
        assert!(cache.get(&alice, (6, 3)).is_none());
        assert!(cache.get(&name(2), (7, 3)).is_none());
        cache.forget(&alice);
        assert!(cache.get(&alice, (7, 3)).is_none());
        // An answer made before a newer generation was seen is not kept at all.
        cache.put(&alice, (7, 4), Arc::new(Answer::NotFound));
        cache.put(&alice, (7, 3), Arc::new(Answer::NotFound));
        assert!(cache.get(&alice, (7, 3)).is_none());
        assert!(cache.get(&alice, (7, 4)).is_some());
    }

    #[test]
    fn the_budget_holds_and_the_oldest_goes_first() {
        let cache = AnswerCache::new(SHARDS * 4_000);
        for i in 0..1_000 {
            cache.put(&name(i), (1, 0), Arc::new(Answer::NotFound));
        }
        for shard in &cache.shards {
            let shard = shard.lock().unwrap();
            assert!(shard.bytes <= 4_000, "{}", shard.bytes);
            assert_eq!(
                shard.bytes,
                shard.entries.values().map(|k| k.size).sum::<usize>()
            );
            assert!(shard.order.len() <= 2 * shard.entries.len() + 16);
        }
        // The last ones put are there; the first ones went.
        assert!(cache.get(&name(999), (1, 0)).is_some());
        let kept = (0..1_000)
            .filter(|&i| cache.get(&name(i), (1, 0)).is_some())
            .count();
        assert!(kept > 0 && kept < 1_000, "{kept}");
        assert!(cache.get(&name(0), (1, 0)).is_none());
        // Putting, and forgetting and putting, the same names over and over keeps the order
        // bounded.
        for _ in 0..100 {
            cache.put(&name(999), (1, 0), Arc::new(Answer::NotFound));
            cache.forget(&name(998));
            cache.put(&name(998), (1, 0), Arc::new(Answer::NotFound));
        }
        for shard in &cache.shards {
            let shard = shard.lock().unwrap();
            assert!(shard.order.len() <= 2 * shard.entries.len() + 16);
        }
        // A newer generation drops the older answers at once.
        cache.put(&name(999), (2, 0), Arc::new(Answer::NotFound));
        assert!(cache.get(&name(999), (2, 0)).is_some());
        let at_1 = (0..1_000)
            .filter(|&i| cache.get(&name(i), (1, 0)).is_some())
            .count();
        assert!(at_1 < kept, "{at_1} of {kept}");
        // A zero budget keeps nothing.
        let none = AnswerCache::new(0);
        assert!(none.is_off());
        none.put(&name(1), (1, 0), Arc::new(Answer::NotFound));
        assert!(none.get(&name(1), (1, 0)).is_none());
    }
}
