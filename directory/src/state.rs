//! What every worker of one directory process shares, built once by `server::bind` and handed to
//! each connection's RPC objects as an `Arc`.
//!
//! It sits below both `rpc` (which reads it to answer requests) and `server` (which builds it
//! and runs the workers), so neither has to name the other to reach it. Everything here is
//! `Send + Sync`: workers are threads, each with its own single-threaded runtime.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use smvs_crypto::{AgreementKeyPair, SigningKeyPair};
use smvs_schema::{AddressKind, HostAddress};
use tokio::sync::Semaphore;

use smvs_schema::Username;

use crate::answers::{Answer, AnswerCache};
use crate::clock::now_ms;
use crate::error::{ErrorCode, Refusal};
use crate::keylog::{Consistency, KeyLog, LogError};
use crate::limits::Limits;
use crate::record::{signed_record, MovedStatement};
use crate::store::Store;
use crate::transparency::{encode_lookup_proof, LogHead, LoggedValue};

pub(crate) struct Shared {
    /// The database: every write, and every read that must see what was just written.
    pub store: Store,
    /// Where look-ups read records: a streaming read replica of `store` (`--db-replica`), or
    /// `store` itself. The key log reads the same one for look-ups' freshness and proofs.
    pub reads: Store,
    /// Whether `reads` is a replica: this process's own changes then do not move the
    /// generation of kept answers (see [`Shared::answer`]).
    pub replica: bool,
    /// Every version of every record, with proofs (key transparency).
    pub log: KeyLog,
    /// Signs every record the directory answers with.
    pub key: SigningKeyPair,
    /// The X25519 form of `key`, for the Noise handshake: one pinned key covers both.
    pub noise_key: AgreementKeyPair,
    pub limits: Limits,
    /// One permit per open connection; a connection that finds none is closed at once.
    pub connections: Arc<Semaphore>,
    pub handshake_timeout: Duration,
    /// `--allow-private-host-addresses`: see [`Shared::check_host_address`].
    pub allow_private_host_addresses: bool,
    /// Look-up answers of the latest epoch ([`crate::answers`]).
    pub answers: AnswerCache,
    /// The head last signed: a head is signed once per epoch, not per answer.
    pub head: Mutex<Option<LogHead>>,
    /// Record changes this process made (counted after each one's commit, before its
    /// publication): with the store's own count, what kept answers are checked against.
    pub changes: AtomicU64,
}

impl Shared {
    /// Brings `name`'s version in the key log in step with the record just changed. A failure
    /// leaves the change made (it is committed) and is only logged: the next look-up of the
    /// name publishes it (`KeyLog::prove`).
    pub async fn publish(&self, name: &Username) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        if let Err(e) = self.log.sync(name).await {
            tracing::warn!(error = %e, "a changed record is not in the key log yet");
        }
        // A new epoch already retires the answer; when publishing failed there is none, but the
        // count of changes (moved first) does.
        self.answers.forget(name);
    }

    /// What a look-up of `name` answers now: from memory while neither the log's latest epoch
    /// nor the count of record changes moved since the kept answer was made, else made afresh
    /// (and kept).
    pub async fn answer(&self, name: &Username) -> Result<Arc<Answer>, Refusal> {
        if self.answers.is_off() {
            return Ok(Arc::new(self.make_answer(name).await?));
        }
        let (epoch, changes) = self.log.latest().await.map_err(|e| {
            tracing::warn!(error = %e, "the key log's latest epoch cannot be read");
            Refusal::new(
                ErrorCode::Internal,
                "the key log cannot be read now; ask again",
            )
        })?;
        // Read after the store's count: a change this process makes is counted after its
        // commit, so an answer made from the store as it was before is kept under a count
        // that is already past.
        //
        // With a read replica the generation is the replica's alone, as the rows the answer is
        // made from: a change made here moves it once the replica has replayed it, and until
        // then the replica's (older, but whole) answer is served.
        let changes = if self.replica {
            changes
        } else {
            changes + self.changes.load(Ordering::Acquire)
        };
        if let Some(answer) = self.answers.get(name, (epoch, changes)) {
            return Ok(answer);
        }
        let answer = Arc::new(self.make_answer(name).await?);
        // Kept at the epoch its proof holds against, which may be newer than `epoch` (a change
        // published meanwhile, which moved the count as well); a not-found at the epoch read
        // before it was found.
        let made_at = answer.epoch().unwrap_or(epoch);
        self.answers.put(name, (made_at, changes), answer.clone());
        Ok(answer)
    }

    async fn make_answer(&self, name: &Username) -> Result<Answer, Refusal> {
        let Some(user) = self.reads.get_user(name).await.map_err(Refusal::internal)? else {
            // Someone who moved away: their own statement of where to.
            let Some(moved) = self
                .reads
                .get_moved(name)
                .await
                .map_err(Refusal::internal)?
            else {
                return Ok(Answer::NotFound);
            };
            let statement = MovedStatement::from_bytes(&moved).map_err(|e| {
                Refusal::new(ErrorCode::Internal, format!("a stored statement: {e}"))
            })?;
            let logged = statement
                .logged()
                .map_err(|e| Refusal::new(ErrorCode::Internal, e))?;
            let (proof, head) = self.prove(name, &logged).await?;
            return Ok(Answer::Moved {
                statement,
                head,
                proof: encode_lookup_proof(&proof),
            });
        };
        let logged = LoggedValue::Record {
            identity: user.identity.signing_key,
            serial: user.serial,
        };
        let (proof, head) = self.prove(name, &logged).await?;
        let (record, signature) = signed_record(&self.key, &user, now_ms());
        Ok(Answer::Record {
            record,
            signature,
            head,
            proof: encode_lookup_proof(&proof),
        })
    }

    /// The signed head of `epoch` and `root`: the one signed last when it is that one.
    fn signed_head(&self, epoch: u64, root: [u8; 32]) -> LogHead {
        let mut last = match self.head.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(head) = last.as_ref() {
            if head.epoch == epoch && head.root_hash == root {
                return head.clone();
            }
        }
        let head = LogHead::sign(&self.key, epoch, root, self.log.vrf_key());
        // Keep the newest: an older epoch is asked for only in passing.
        if last.as_ref().is_none_or(|h| h.epoch <= epoch) {
            *last = Some(head.clone());
        }
        head
    }

    /// A proof that `name`'s latest version in the key log is `logged`, and the head it holds
    /// against.
    pub async fn prove(
        &self,
        name: &Username,
        logged: &LoggedValue,
    ) -> Result<(akd::LookupProof, LogHead), Refusal> {
        let (proof, head) = self.log.prove(name, logged).await.map_err(|e| {
            tracing::warn!(error = %e, "no key log proof for a look-up");
            Refusal::new(
                ErrorCode::Internal,
                "the key log has no proof of this record yet; ask again",
            )
        })?;
        Ok((proof, self.signed_head(head.0, head.1)))
    }

    /// The key log's growth from epoch `from` (see [`KeyLog::consistency`]), and the signed
    /// head of the epoch it reaches.
    pub async fn consistency(&self, from: u64) -> Result<(Consistency, LogHead), Refusal> {
        let grown = self.log.consistency(from).await.map_err(|e| match e {
            LogError::NoEpoch { .. } => Refusal::new(ErrorCode::BadRequest, e.to_string()),
            e => {
                tracing::warn!(error = %e, "no key log consistency proof");
                Refusal::new(
                    ErrorCode::Internal,
                    "the key log has no consistency proof from that epoch now; ask again",
                )
            }
        })?;
        let end = grown.from + grown.roots.len() as u64 - 1;
        let root = *grown.roots.last().unwrap_or(&[0; 32]);
        Ok((grown, self.signed_head(end, root)))
    }

    /// A proof of every version of `name` in the key log, and the head it holds against.
    pub async fn history(&self, name: &Username) -> Result<(akd::HistoryProof, LogHead), Refusal> {
        let (proof, head) = self.log.history(name).await.map_err(|e| {
            tracing::warn!(error = %e, "no key log history for an owner");
            Refusal::new(
                ErrorCode::Internal,
                "the key log has no history of this name now; ask again",
            )
        })?;
        Ok((proof, self.signed_head(head.0, head.1)))
    }

    /// Refuses a host address of a local kind (loopback, link-local, private, shared, or one
    /// nothing can be sent to) unless the directory serves a LAN or a test
    /// (`--allow-private-host-addresses`). Other users' hosts connect to what the directory
    /// publishes, so such an address would point them at services on their own machine or
    /// network. A name is taken as it is: hosts check what it resolves to when they connect.
    pub fn check_host_address(&self, host: &HostAddress) -> Result<(), Refusal> {
        match host.kind() {
            Some(kind) if kind != AddressKind::Public && !self.allow_private_host_addresses => {
                Err(Refusal::new(
                    ErrorCode::AddressRefused,
                    format!(
                        "host address {host} is {}; this directory publishes only public host addresses (a directory for a LAN or a test is started with --allow-private-host-addresses)",
                        kind.describe()
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}
