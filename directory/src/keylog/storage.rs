//! akd's storage trait over the directory's store (SQLite or PostgreSQL).
//!
//! Two tables: `log_nodes` (the tree's nodes and its root record, by akd's binary id) and
//! `log_values` (each name's versions, by name and epoch). Records are kept in postcard, the
//! form of akd's own serde types. A name is kept there only as its keyed hash
//! ([`crate::store::NameKey`]), as deregistered names are: the stored version has its name
//! blanked, and it is put back from the question when read. The log is append-only by design,
//! so a name's public identity keys and serials stay after it is deregistered; the name does
//! not.

use std::collections::HashMap;

use akd::errors::StorageError;
use akd::storage::types::{
    DbRecord, KeyData, StorageType, ValueState, ValueStateKey, ValueStateRetrievalFlag,
};
use akd::storage::{Database, DbSetState, Storable};
use akd::{AkdLabel, AkdValue, NodeLabel};
use akd_core::configuration::Configuration;

use crate::store::{LogValueRow, Store, StoreError, WhichVersion};
use crate::transparency::LogConfiguration;

/// akd's [`Database`] over the directory's store.
pub struct LogStorage {
    store: Store,
}

impl LogStorage {
    pub fn new(store: Store) -> LogStorage {
        LogStorage { store }
    }

    async fn versions(
        &self,
        label: &[u8],
        which: WhichVersion,
    ) -> Result<Vec<ValueState>, StorageError> {
        let rows = self
            .store
            .log_values(label.to_vec(), which)
            .await
            .map_err(fault)?;
        rows.iter()
            .map(|bytes| {
                let mut state: ValueState = postcard::from_bytes(bytes)
                    .map_err(|e| StorageError::Other(format!("a stored version: {e}")))?;
                state.username = AkdLabel(label.to_vec());
                Ok(state)
            })
            .collect()
    }

    async fn one_version(
        &self,
        label: &AkdLabel,
        which: WhichVersion,
    ) -> Result<ValueState, StorageError> {
        self.versions(&label.0, which)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| StorageError::NotFound("no such version".into()))
    }
}

impl LogStorage {
    /// Every value `label` has had in the log, oldest first, read straight from the store: an
    /// error here is the store's, never taken for "no versions" (akd's own look-up calls any
    /// error "not found").
    pub async fn values(&self, label: &[u8]) -> Result<Vec<AkdValue>, StoreError> {
        let rows = self
            .store
            .log_values(label.to_vec(), WhichVersion::All)
            .await?;
        rows.iter()
            .map(|bytes| {
                postcard::from_bytes::<ValueState>(bytes)
                    .map(|state| state.value)
                    .map_err(|e| StoreError::Corrupt(format!("a key log version: {e}")))
            })
            .collect()
    }
}

fn fault(e: StoreError) -> StorageError {
    StorageError::Connection(e.to_string())
}

fn which(flag: ValueStateRetrievalFlag) -> WhichVersion {
    match flag {
        ValueStateRetrievalFlag::SpecificVersion(v) => WhichVersion::Version(v),
        ValueStateRetrievalFlag::SpecificEpoch(e) => WhichVersion::Epoch(e),
        ValueStateRetrievalFlag::LeqEpoch(e) => WhichVersion::AtOrBefore(e),
        ValueStateRetrievalFlag::MaxEpoch => WhichVersion::Latest,
        ValueStateRetrievalFlag::MinEpoch => WhichVersion::First,
    }
}

#[async_trait::async_trait]
impl Database for LogStorage {
    async fn set(&self, record: DbRecord) -> Result<(), StorageError> {
        self.batch_set(vec![record], DbSetState::General).await
    }

    async fn batch_set(
        &self,
        records: Vec<DbRecord>,
        _state: DbSetState,
    ) -> Result<(), StorageError> {
        // Keyed by id, so a record written twice in one batch is written once, as its last.
        let mut nodes = HashMap::new();
        let mut values = HashMap::new();
        // The tree's root record names the epoch this batch completes: the store writes the
        // batch only if its epoch is the one before (see `Store::log_put`).
        let mut epoch = None;
        let mut root = None;
        for record in records {
            match &record {
                DbRecord::Azks(azks) => epoch = Some(azks.latest_epoch),
                DbRecord::TreeNode(node) if node.label == NodeLabel::root() => {
                    root = Some(LogConfiguration::compute_root_hash_from_val(
                        &node.latest_node.hash,
                    ));
                }
                _ => {}
            }
            match record {
                DbRecord::ValueState(mut state) => {
                    let label = std::mem::take(&mut state.username.0);
                    let record = postcard::to_stdvec(&state)
                        .map_err(|e| StorageError::Other(e.to_string()))?;
                    values.insert(
                        (label.clone(), state.epoch),
                        LogValueRow {
                            label,
                            epoch: state.epoch,
                            version: state.version,
                            record,
                        },
                    );
                }
                other => {
                    let bytes = postcard::to_stdvec(&other)
                        .map_err(|e| StorageError::Other(e.to_string()))?;
                    nodes.insert(other.get_full_binary_id(), bytes);
                }
            }
        }
        // The root hash is kept with its epoch, for consistency proofs between heads. Only
        // the empty tree (epoch 0) is written without its root (akd writes them apart), and no
        // head is ever shown for it.
        let epoch = match (epoch, root) {
            (None, _) => None,
            (Some(epoch), Some(root)) => Some((epoch, Some(root))),
            (Some(0), None) => Some((0, None)),
            (Some(epoch), None) => {
                return Err(StorageError::Other(format!(
                    "epoch {epoch} written without the tree's root"
                )))
            }
        };
        self.store
            .log_put(
                nodes.into_iter().collect(),
                values.into_values().collect(),
                epoch,
            )
            .await
            .map_err(fault)
    }

    async fn get<St: Storable>(&self, id: &St::StorageKey) -> Result<DbRecord, StorageError> {
        let mut found = self.batch_get::<St>(std::slice::from_ref(id)).await?;
        found
            .pop()
            // Not the id: a version's id holds the name in clear, and errors get logged.
            .ok_or_else(|| StorageError::NotFound(format!("{:?}", St::data_type())))
    }

    async fn batch_get<St: Storable>(
        &self,
        ids: &[St::StorageKey],
    ) -> Result<Vec<DbRecord>, StorageError> {
        let ids: Vec<Vec<u8>> = ids.iter().map(St::get_full_binary_key_id).collect();
        if St::data_type() == StorageType::ValueState {
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                let ValueStateKey(label, epoch) =
                    ValueState::key_from_full_binary(&id).map_err(StorageError::Other)?;
                out.extend(
                    self.versions(&label, WhichVersion::Epoch(epoch))
                        .await?
                        .into_iter()
                        .map(DbRecord::ValueState),
                );
            }
            return Ok(out);
        }
        let rows = self.store.log_nodes(ids).await.map_err(fault)?;
        rows.iter()
            .map(|bytes| {
                postcard::from_bytes(bytes)
                    .map_err(|e| StorageError::Other(format!("a stored node: {e}")))
            })
            .collect()
    }

    async fn get_user_data(&self, username: &AkdLabel) -> Result<KeyData, StorageError> {
        let states = self.versions(&username.0, WhichVersion::All).await?;
        if states.is_empty() {
            return Err(StorageError::NotFound("no versions".into()));
        }
        Ok(KeyData { states })
    }

    async fn get_user_state(
        &self,
        username: &AkdLabel,
        flag: ValueStateRetrievalFlag,
    ) -> Result<ValueState, StorageError> {
        self.one_version(username, which(flag)).await
    }

    async fn get_user_state_versions(
        &self,
        usernames: &[AkdLabel],
        flag: ValueStateRetrievalFlag,
    ) -> Result<HashMap<AkdLabel, (u64, AkdValue)>, StorageError> {
        let mut out = HashMap::with_capacity(usernames.len());
        for name in usernames {
            match self.one_version(name, which(flag)).await {
                Ok(state) => {
                    out.insert(name.clone(), (state.version, state.value));
                }
                Err(StorageError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }
}
