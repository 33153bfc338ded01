//! Key transparency, the part both sides share: what the directory's key log holds for a name,
//! its signed head, and checking a look-up's proof against them.
//!
//! The log is WhatsApp's Auditable Key Directory (the `akd` crate on the directory, `akd_core`
//! here): a Merkle tree whose leaves are hidden behind a VRF of the name, so the log shows
//! neither names nor how many keys anyone has had. Each change of a name's record is a new
//! *version* in a new *epoch*; the directory signs each epoch's root hash (a [`LogHead`]).
//! A look-up answer carries a proof that the record it serves is the name's latest version in
//! the log at that head: a directory that serves one record and logs another, or an older
//! record than the latest of the log it shows, is caught by the proof alone. A directory that
//! logs a key the user never made is caught by the user's own host, which watches its name's
//! versions (`keyHistory`). What the proof alone cannot show is that the head is on the same
//! log everyone else is shown: a directory that rewinds its log or keeps a separate one for a
//! victim is caught by comparing heads over time and between hosts, which hosts do with the
//! directory's append-only proofs between epochs ([`verify_consistency`]; smvsd's
//! `trust::log_heads`, docs/protocol.md, 3.7).
//!
//! What a version's value holds ([`LoggedValue`]): the identity's signing key and the record's
//! serial, not the whole record. The rest of a record is either signed by the identity itself
//! (the transport certificate, session v2's keys) or only says where to knock (the address),
//! and a name's serials are unique at one directory, so (identity, serial) pins the version.
//!
//! Proofs travel as akd's own protobuf encoding (`akd_core::proto`), which its conversions
//! check field by field; any client or auditor that speaks akd can read them.

use akd_core::verify::history::{HistoryParams, HistoryVerificationParams};
use akd_core::ExperimentalConfiguration;
use akd_core::{AkdLabel, AppendOnlyProof, DomainLabel, HistoryProof, LookupProof};
use protobuf::Message;
use smvs_crypto::{SignContext, Signature, SigningPublicKey};
use smvs_schema::common_capnp::log_head;
use smvs_schema::Username;

/// The hash domain of SMVS directories' logs.
#[derive(Clone)]
pub struct SmvsLogDomain;

impl DomainLabel for SmvsLogDomain {
    fn domain_label() -> &'static [u8] {
        b"smvs-directory-key-log-v1"
    }
}

/// The log's configuration (hash, commitments, VRF inputs), the same on both sides.
pub type LogConfiguration = ExperimentalConfiguration<SmvsLogDomain>;

/// What one version of a name holds in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoggedValue {
    /// A record of this identity at this serial.
    Record {
        identity: SigningPublicKey,
        serial: u64,
    },
    /// The name was deregistered.
    Gone,
    /// The name's owner moved away: the BLAKE2b-256 of their statement's signed bytes.
    Moved { statement: [u8; 32] },
}

const RECORD_TAG: u8 = 1;
const GONE_TAG: u8 = 0;
const MOVED_TAG: u8 = 2;

impl LoggedValue {
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            LoggedValue::Record { identity, serial } => {
                let mut out = Vec::with_capacity(41);
                out.push(RECORD_TAG);
                out.extend_from_slice(identity.as_bytes());
                out.extend_from_slice(&serial.to_be_bytes());
                out
            }
            LoggedValue::Gone => vec![GONE_TAG],
            LoggedValue::Moved { statement } => {
                let mut out = Vec::with_capacity(33);
                out.push(MOVED_TAG);
                out.extend_from_slice(statement);
                out
            }
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<LoggedValue, String> {
        match bytes.split_first() {
            Some((&RECORD_TAG, rest)) if rest.len() == 40 => Ok(LoggedValue::Record {
                identity: SigningPublicKey::from_bytes(&rest[..32]).map_err(|e| e.to_string())?,
                serial: u64::from_be_bytes(rest[32..].try_into().map_err(|_| "serial")?),
            }),
            Some((&GONE_TAG, [])) => Ok(LoggedValue::Gone),
            Some((&MOVED_TAG, rest)) if rest.len() == 32 => Ok(LoggedValue::Moved {
                statement: rest.try_into().map_err(|_| "statement")?,
            }),
            _ => Err(format!(
                "a logged value of {} bytes in no known form",
                bytes.len()
            )),
        }
    }
}

/// The directory's signed statement of its log at one epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogHead {
    /// The directory that signed it.
    pub directory: SigningPublicKey,
    pub epoch: u64,
    pub root_hash: [u8; 32],
    /// The VRF key that hides names in this log (derived from the directory's key seed, so it
    /// changes only with the directory's key).
    pub vrf_key: [u8; 32],
    pub signature: Signature,
}

impl LogHead {
    /// Signs a head with the directory's key.
    pub fn sign(
        key: &smvs_crypto::SigningKeyPair,
        epoch: u64,
        root_hash: [u8; 32],
        vrf_key: [u8; 32],
    ) -> LogHead {
        let directory = key.public();
        let signature = key.sign(
            SignContext::LogHead,
            &smvs_schema::canonical::log_head(&directory, epoch, &root_hash, &vrf_key),
        );
        LogHead {
            directory,
            epoch,
            root_hash,
            vrf_key,
            signature,
        }
    }

    /// Checks the signature against the directory key `pinned`.
    pub fn verify(&self, pinned: &SigningPublicKey) -> Result<(), String> {
        if &self.directory != pinned {
            return Err("a log head of another directory".into());
        }
        pinned
            .verify(
                SignContext::LogHead,
                &smvs_schema::canonical::log_head(
                    &self.directory,
                    self.epoch,
                    &self.root_hash,
                    &self.vrf_key,
                ),
                &self.signature,
            )
            .map_err(|_| "the log head is not signed by the pinned directory key".to_string())
    }

    pub fn write(&self, mut b: log_head::Builder<'_>) {
        b.set_directory(self.directory.as_bytes());
        b.set_epoch(self.epoch);
        b.set_root_hash(&self.root_hash);
        b.set_vrf_key(&self.vrf_key);
        b.set_signature(self.signature.as_bytes());
    }

    /// Reads one off the wire (lengths checked, the signature not yet).
    pub fn read(r: log_head::Reader<'_>) -> Result<LogHead, String> {
        let fixed = |bytes: capnp::Result<&[u8]>, what: &str| -> Result<[u8; 32], String> {
            bytes
                .map_err(|e| e.to_string())?
                .try_into()
                .map_err(|_| format!("a log head's {what} is not 32 bytes"))
        };
        Ok(LogHead {
            directory: SigningPublicKey::from_bytes(r.get_directory().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?,
            epoch: r.get_epoch(),
            root_hash: fixed(r.get_root_hash(), "root hash")?,
            vrf_key: fixed(r.get_vrf_key(), "VRF key")?,
            signature: Signature::from_bytes(r.get_signature().map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?,
        })
    }
}

/// Where a look-up's proof placed a record: the head it holds against, and the name's version
/// number (how many changes the log holds of it, the record's included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogPosition {
    pub head: LogHead,
    pub version: u64,
}

/// A look-up proof in akd's protobuf encoding.
pub fn encode_lookup_proof(proof: &LookupProof) -> Vec<u8> {
    let spec = akd_core::proto::specs::types::LookupProof::from(proof);
    // Writing to a vector fails only on a message over 2 GiB.
    spec.write_to_bytes().unwrap_or_default()
}

/// The largest look-up proof accepted: a proof is a few paths of at most 256 siblings.
const MAX_PROOF_BYTES: usize = 64 * 1024;

/// Checks that `proof` (as sent) shows, in the log `head` commits to, that `name`'s latest
/// version holds what it returns. The head's signature must have been checked already.
pub fn verify_lookup(
    head: &LogHead,
    name: &Username,
    proof: &[u8],
) -> Result<(LoggedValue, u64), String> {
    if proof.len() > MAX_PROOF_BYTES {
        return Err(format!("a look-up proof of {} bytes", proof.len()));
    }
    let spec = akd_core::proto::specs::types::LookupProof::parse_from_bytes(proof)
        .map_err(|e| format!("a look-up proof that does not parse: {e}"))?;
    let proof = LookupProof::try_from(&spec)
        .map_err(|e| format!("a look-up proof that does not parse: {e}"))?;
    // Versions start at 1; akd_core asserts (panics) on a 0 after the existence check, which
    // a directory that makes its own head can pass.
    if proof.version == 0 {
        return Err("a look-up proof of version 0".into());
    }
    let result = without_panics(|| {
        akd_core::verify::lookup_verify::<LogConfiguration>(
            &head.vrf_key,
            head.root_hash,
            head.epoch,
            AkdLabel(name.as_str().as_bytes().to_vec()),
            proof,
        )
    })?
    .map_err(|e| format!("the look-up proof does not hold: {e}"))?;
    Ok((LoggedValue::from_bytes(&result.value)?, result.version))
}

/// Runs a proof check of akd_core's, whose input comes from a directory (perhaps one a contact
/// runs): an assertion it trips is a refused proof, never a crashed host.
fn without_panics<T>(check: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(check))
        .map_err(|_| "a proof that trips the verifier's own checks".to_string())
}

/// A history proof in akd's protobuf encoding.
pub fn encode_history_proof(proof: &HistoryProof) -> Vec<u8> {
    let spec = akd_core::proto::specs::types::HistoryProof::from(proof);
    spec.write_to_bytes().unwrap_or_default()
}

/// The largest history proof accepted. A version costs two membership proofs (about 1.5 KiB
/// in a log of a million names); a host renews every 15 days, so this is decades of history.
const MAX_HISTORY_BYTES: usize = 4 * 1024 * 1024;

/// An append-only proof in akd's protobuf encoding.
pub fn encode_append_only_proof(proof: &AppendOnlyProof) -> Vec<u8> {
    let spec = akd_core::proto::specs::types::AppendOnlyProof::from(proof);
    spec.write_to_bytes().unwrap_or_default()
}

/// The most epochs one consistency answer may span (the directory's `MAX_CONSISTENCY_EPOCHS`).
pub const MAX_CONSISTENCY_EPOCHS: u64 = 64;

/// The largest append-only proof accepted: 64 epochs of one change each, a few KiB apiece
/// (the paths to two new leaves), so at most 128 KiB an epoch and 8 MiB in all.
const MAX_APPEND_ONLY_BYTES: usize = 8 * 1024 * 1024;
const MAX_APPEND_ONLY_STEP_BYTES: usize = 128 * 1024;

/// The key log's root hash at each epoch from `from` on, as a consistency answer showed them
/// and its proof held: one log, grown by adding only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChain {
    pub from: u64,
    pub roots: Vec<[u8; 32]>,
    /// The directory's signed head of the last epoch.
    pub head: LogHead,
}

impl LogChain {
    /// The last epoch the chain reaches.
    pub fn end(&self) -> u64 {
        self.from
            .saturating_add(self.roots.len().saturating_sub(1) as u64)
    }

    /// The root hash at `epoch`, if the chain spans it.
    pub fn root_at(&self, epoch: u64) -> Option<&[u8; 32]> {
        let i = usize::try_from(epoch.checked_sub(self.from)?).ok()?;
        self.roots.get(i)
    }
}

/// Checks a consistency answer (as sent) from epoch `from`: that `head` (whose signature must
/// have been checked already) is the last of `roots`, one root per epoch from `from`, and that
/// `proof` shows each epoch's tree grew from the one before by adding only.
pub async fn verify_consistency(
    from: u64,
    roots: Vec<[u8; 32]>,
    head: LogHead,
    proof: &[u8],
) -> Result<LogChain, String> {
    if roots.is_empty() || roots.len() as u64 > MAX_CONSISTENCY_EPOCHS + 1 {
        return Err(format!("a consistency answer of {} roots", roots.len()));
    }
    if from.checked_add(roots.len() as u64).is_none() {
        return Err(format!(
            "a consistency answer from epoch {from} past the last epoch"
        ));
    }
    let chain = LogChain { from, roots, head };
    if chain.head.epoch != chain.end() || chain.roots.last() != Some(&chain.head.root_hash) {
        return Err("a consistency answer whose head is not its last root".into());
    }
    if chain.roots.len() == 1 {
        return Ok(chain);
    }
    let steps = chain.roots.len() - 1;
    if proof.len() > MAX_APPEND_ONLY_BYTES.min(steps.saturating_mul(MAX_APPEND_ONLY_STEP_BYTES)) {
        return Err(format!("an append-only proof of {} bytes", proof.len()));
    }
    let spec = akd_core::proto::specs::types::AppendOnlyProof::parse_from_bytes(proof)
        .map_err(|e| format!("an append-only proof that does not parse: {e}"))?;
    let proof = AppendOnlyProof::try_from(&spec)
        .map_err(|e| format!("an append-only proof that does not parse: {e}"))?;
    // One step per epoch, in order from `from`: akd checks each step against the roots it is
    // given, but not which epochs the steps say they are.
    if !proof.epochs.iter().copied().eq(from..chain.end()) {
        return Err("an append-only proof of other epochs than asked".into());
    }
    let hashes = chain.roots.clone();
    let checked = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(
        akd::auditor::audit_verify::<LogConfiguration>(hashes, proof),
    ))
    .await
    .map_err(|_| "a proof that trips the verifier's own checks".to_string())?;
    checked.map_err(|e| format!("the append-only proof does not hold: {e}"))?;
    Ok(chain)
}

/// One version of a name, as its history proof shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedVersion {
    pub version: u64,
    /// The epoch the version was published in.
    pub epoch: u64,
    pub value: LoggedValue,
}

/// Checks that `proof` (as sent) shows, in the log `head` commits to, every version of
/// `name`; returns them, oldest first. The head's signature must have been checked already.
pub fn verify_history(
    head: &LogHead,
    name: &Username,
    proof: &[u8],
) -> Result<Vec<LoggedVersion>, String> {
    if proof.len() > MAX_HISTORY_BYTES {
        return Err(format!("a history proof of {} bytes", proof.len()));
    }
    let spec = akd_core::proto::specs::types::HistoryProof::parse_from_bytes(proof)
        .map_err(|e| format!("a history proof that does not parse: {e}"))?;
    let proof = HistoryProof::try_from(&spec)
        .map_err(|e| format!("a history proof that does not parse: {e}"))?;
    let results = without_panics(|| {
        akd_core::verify::key_history_verify::<LogConfiguration>(
            &head.vrf_key,
            head.root_hash,
            head.epoch,
            AkdLabel(name.as_str().as_bytes().to_vec()),
            proof,
            HistoryVerificationParams::Default {
                history_params: HistoryParams::Complete,
            },
        )
    })?
    .map_err(|e| format!("the history proof does not hold: {e}"))?;
    let mut versions = results
        .into_iter()
        .map(|r| {
            Ok(LoggedVersion {
                version: r.version,
                epoch: r.epoch,
                value: LoggedValue::from_bytes(&r.value)?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    // akd has checked that a complete history is versions 1..=n, newest first.
    versions.sort_by_key(|v| v.version);
    Ok(versions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logged_values_round_trip_and_junk_is_refused() {
        let identity = smvs_crypto::SigningKeyPair::generate().unwrap().public();
        for value in [
            LoggedValue::Record {
                identity,
                serial: u64::MAX - 3,
            },
            LoggedValue::Gone,
            LoggedValue::Moved { statement: [7; 32] },
        ] {
            assert_eq!(LoggedValue::from_bytes(&value.to_bytes()), Ok(value));
        }
        for junk in [
            &[][..],
            &[1, 2, 3][..],
            &[0, 0][..],
            &[9; 41][..],
            &[2; 32][..],
        ] {
            assert!(LoggedValue::from_bytes(junk).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn a_head_verifies_only_under_its_directory_and_unchanged() {
        let key = smvs_crypto::SigningKeyPair::generate().unwrap();
        let head = LogHead::sign(&key, 9, [1; 32], [2; 32]);
        head.verify(&key.public()).unwrap();
        let other = smvs_crypto::SigningKeyPair::generate().unwrap().public();
        assert!(head.verify(&other).is_err());
        let mut moved = head.clone();
        moved.epoch = 10;
        assert!(moved.verify(&key.public()).is_err());
        let mut rerooted = head;
        rerooted.root_hash[0] ^= 1;
        assert!(rerooted.verify(&key.public()).is_err());
    }
}
