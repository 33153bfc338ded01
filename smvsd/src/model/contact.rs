//! A contact: another user as this host knows them, typed (no hex to re-parse).

use std::collections::BTreeMap;

use smvs_crypto::{AgreementPublicKey, IdentityBundle};
use smvs_directory::VerifiedRecord;
use smvs_schema::{HostAddress, Username};

/// What the host knows about another user: the pinned identity and where their host is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    pub username: Username,
    /// The pinned identity.
    pub identity: IdentityBundle,
    /// The key their host must present on a link (certified by the identity).
    pub transport_key: AgreementPublicKey,
    pub host_address: HostAddress,
    /// When the identity itself stated `host_address` (Unix ms, its host's clock), pushed by
    /// its host when it moved; when the address came from a directory, the serial of that
    /// record (the directory's clock), or 0. A directory record older than a pushed statement
    /// does not move the address back, and a statement not newer than this is not taken.
    pub address_signed_at: i64,
    /// The directory record's serial this was learnt from (only ever grows).
    pub serial: u64,
    /// The newest serial each directory (by key) served for this user: a directory that
    /// serves a lower one later re-served an old record. Serials are each directory's own.
    pub serials: BTreeMap<[u8; 32], u64>,
    pub blocked: bool,
    /// A different identity the directory now shows, not yet accepted by the user.
    pub pending: Option<PendingKey>,
    /// Set when the directories disagreed about the identity (an equivocation): which showed
    /// which key. `pending` then holds the other identity, and nothing is sent until the user
    /// accepts it or keeps the pinned one.
    pub alarm: Option<String>,
    /// When the newest statement of this contact's that said they moved to another directory
    /// was made (Unix ms; 0: none followed): an older one is not followed again.
    pub moved_at: i64,
    /// The contact whose introduction this one was pinned from (None: from a directory).
    pub introduced_by: Option<Username>,
    /// Identities the user refused for this contact (`verify --keep-key`, or the losing side
    /// of a decided alarm): a directory that shows one again is not heard (newest last).
    pub refused: Vec<IdentityBundle>,
    /// Not a contact yet: first heard from while contacts-only mode was on.
    pub request: bool,
    /// The signed directory record this contact was pinned or last updated from: evidence of
    /// what the directory said, which anyone with its key can check.
    pub evidence: Option<Evidence>,
}

/// How many refused identities a contact remembers.
pub const MAX_REFUSED: usize = 8;

/// A directory's signed statement about a user, kept as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub record_bytes: Vec<u8>,
    pub signature: Vec<u8>,
    pub directory_key: [u8; 32],
    /// Unix ms.
    pub issued_at: i64,
}

impl Evidence {
    /// The record again, checked now: a directory's under the directory key it names (any
    /// directory: whoever hands it on vouches for it), a DHT record under the identity its
    /// address names.
    pub fn verify(&self) -> Result<VerifiedRecord, String> {
        let key = smvs_crypto::SigningPublicKey::from_bytes(&self.directory_key)
            .map_err(|e| e.to_string())?;
        let signature =
            smvs_crypto::Signature::from_bytes(&self.signature).map_err(|e| e.to_string())?;
        smvs_directory::record::verify_signed_record_at(
            &self.record_bytes,
            &signature,
            &key,
            crate::model::now_ms(),
        )
    }

    pub fn of(record: &VerifiedRecord) -> Evidence {
        Evidence {
            record_bytes: record.record_bytes.clone(),
            signature: record.signature.as_bytes().to_vec(),
            directory_key: *record.directory_key.as_bytes(),
            issued_at: record.issued_at,
        }
    }
}

/// A changed identity (and the host key that came with it), waiting for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingKey {
    pub identity: IdentityBundle,
    pub transport_key: AgreementPublicKey,
}

impl Contact {
    /// A contact pinned from a directory record (trust on first use).
    pub fn from_record(record: &VerifiedRecord, request: bool) -> Contact {
        Contact {
            username: record.user.username.clone(),
            identity: record.user.identity,
            transport_key: record.user.transport_key,
            host_address: record.user.host_address.clone(),
            address_signed_at: 0,
            serial: record.user.serial,
            serials: BTreeMap::from([(*record.directory_key.as_bytes(), record.user.serial)]),
            blocked: false,
            pending: None,
            alarm: None,
            moved_at: 0,
            introduced_by: None,
            refused: Vec::new(),
            request,
            evidence: Some(Evidence::of(record)),
        }
    }

    /// The newest serial `directory` served for this user, as far as we know. (Contacts
    /// stored before serials were kept per directory know only their evidence's.)
    pub fn serial_from(&self, directory: &[u8; 32]) -> Option<u64> {
        self.serials.get(directory).copied().or_else(|| {
            self.evidence
                .as_ref()
                .filter(|e| &e.directory_key == directory && self.serials.is_empty())
                .map(|_| self.serial)
        })
    }

    /// Remembers that the user refused `identity` for this contact (at most
    /// [`MAX_REFUSED`], the oldest forgotten first).
    pub fn refuse(&mut self, identity: IdentityBundle) {
        if !self.refused.contains(&identity) {
            self.refused.push(identity);
        }
        if self.refused.len() > MAX_REFUSED {
            self.refused.remove(0);
        }
    }

    /// The user's fingerprint of this contact's pinned identity. (It fails only for a name of
    /// more than 255 bytes, which a `Username` cannot be.)
    pub fn fingerprint(&self) -> String {
        smvs_crypto::fingerprint(self.username.as_str(), &self.identity).unwrap_or_default()
    }
}
