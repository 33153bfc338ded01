//! Watching our own name in each directory's key log (docs/protocol.md, 3.7).
//!
//! A look-up proof shows others only the *latest* version of a name. A directory that shows
//! alice a key bob never made, and then puts bob's record back, leaves that key in its log as
//! a version of bob's name; bob's host is the one party that can tell it is not his. So at
//! each renewal check, when the look-up of our own name shows a version number we have not
//! checked yet, the host logs in and asks for the name's history, and judges every version
//! since the last one it checked ([`judge_history`]). The version checked up to is kept per
//! directory (setting [`KEY_LOG_CHECKED`]), so a forged version raises the alarm once.

use std::collections::HashMap;

use smvs_crypto::SigningPublicKey;
use smvs_directory::transparency::{LogPosition, LoggedValue, LoggedVersion};
use smvs_directory::DirectorySession;

use super::directories::DirectoryLink;
use super::log_heads::{HeadSource, Inconsistent};
use super::{Me, Trust};
use crate::error::HostError;
use crate::model::HostEvent;

/// The setting that holds, per directory, the version of our name its key log was checked up
/// to: the directory's key (32 bytes) and the version (8 bytes, big-endian), for each.
pub const KEY_LOG_CHECKED: &str = "key_log_checked";

impl Trust {
    /// The version of our name `link`'s key log was checked up to.
    pub(super) async fn own_log_checked(
        &self,
        link: &DirectoryLink,
    ) -> Result<Option<u64>, HostError> {
        let stored = self.storage.setting(KEY_LOG_CHECKED).await?;
        Ok(stored.and_then(|bytes| {
            read_checkpoints(&bytes)
                .get(link.anchor.key.as_bytes())
                .copied()
        }))
    }

    /// Asks `link`'s directory (through our `session` there) for our name's history, judges
    /// the versions after `checked`, raises the alarm for each one this host did not make, and
    /// moves the checkpoint on. A history that cannot be had or does not verify is a warning:
    /// the next check asks again. The history must be of the same log as the look-up that
    /// showed a new version (`at`, proving `logged`): as new or newer, and holding that
    /// version; its head is compared with the others (`log_heads`).
    pub(super) async fn check_own_log(
        &self,
        link: &DirectoryLink,
        session: &DirectorySession,
        me: &Me,
        checked: Option<u64>,
        at: &LogPosition,
        logged: &LoggedValue,
    ) -> Result<(), HostError> {
        let (head, versions) = match session.key_history().await {
            Ok(history) => history,
            Err(e) => {
                tracing::warn!(directory = %link.name(), error = %e, "cannot check this user's name in the directory's key log now; trying again at the next check");
                return Ok(());
            }
        };
        let same_log = head.epoch >= at.head.epoch
            && versions
                .iter()
                .any(|v| v.version == at.version && &v.value == logged);
        if !same_log {
            self.split_view(
                link,
                &Inconsistent::new(
                    &head,
                    HeadSource::Lookup,
                    format!(
                        "this user's history (epoch {}) is not of the log its look-up was proven in (epoch {}, version {})",
                        head.epoch, at.head.epoch, at.version
                    ),
                ),
            );
            return Ok(());
        }
        link.heads
            .borrow_mut()
            .saw(head.clone(), HeadSource::Lookup);
        let identity = &me.identity.signing_key;
        for found in judge_history(&versions, checked, identity) {
            match found {
                Foreign::Identity {
                    version,
                    epoch,
                    identity: shown,
                } => {
                    smvs_service::security_event!(error, smvs_service::logging::OWN_KEY_FORGED, directory = %link.name(), shown_key = %&shown.to_hex()[..16], version, epoch, "a directory's key log holds a version of this host's user with an identity key this host did not make: others may have been shown it");
                }
                Foreign::Replayed {
                    version,
                    epoch,
                    serial,
                } => {
                    smvs_service::security_event!(error, smvs_service::logging::OWN_KEY_FORGED, directory = %link.name(), version, epoch, serial, "a directory's key log holds an old record of this host's user logged again as newer: others may have been shown an old address or keys");
                }
            }
            self.events.publish(HostEvent::DirectoryAlarm {
                peer: me.username.clone(),
            });
        }
        let Some(now_checked) = checkpoint(&versions, identity) else {
            return Ok(());
        };
        let mut checkpoints = match self.storage.setting(KEY_LOG_CHECKED).await? {
            Some(bytes) => read_checkpoints(&bytes),
            None => HashMap::new(),
        };
        checkpoints.insert(*link.anchor.key.as_bytes(), now_checked);
        self.storage
            .set_setting(KEY_LOG_CHECKED, write_checkpoints(&checkpoints))
            .await?;
        tracing::debug!(directory = %link.name(), epoch = head.epoch, version = now_checked, "checked this user's name in the directory's key log");
        Ok(())
    }
}

/// Reads the setting (entries of another length are skipped: a half-written one is no
/// checkpoint, and the whole history is judged again).
pub fn read_checkpoints(bytes: &[u8]) -> HashMap<[u8; 32], u64> {
    bytes
        .chunks_exact(40)
        .filter_map(|entry| {
            let key: [u8; 32] = entry[..32].try_into().ok()?;
            let version = u64::from_be_bytes(entry[32..].try_into().ok()?);
            Some((key, version))
        })
        .collect()
}

pub fn write_checkpoints(checkpoints: &HashMap<[u8; 32], u64>) -> Vec<u8> {
    let mut out = Vec::with_capacity(checkpoints.len() * 40);
    for (key, version) in checkpoints {
        out.extend_from_slice(key);
        out.extend_from_slice(&version.to_be_bytes());
    }
    out
}

/// A version of our name this host did not make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Foreign {
    /// A record with another identity key.
    Identity {
        version: u64,
        epoch: u64,
        identity: SigningPublicKey,
    },
    /// A record of ours with a serial not above an earlier one's: an old record logged again
    /// (served as the newest, with its old address and keys).
    Replayed {
        version: u64,
        epoch: u64,
        serial: u64,
    },
}

/// Judges the versions of our name after `checked` (all of them when `None`) for `identity`,
/// the identity keyguard holds now. `versions` is a complete history, oldest first. The
/// checkpoint is always a version that carried our identity when it was set
/// ([`checkpoint`]).
///
/// Once a version carries our identity, every later record must carry it too; and every
/// record's serial must be above the one before (a directory's serials for a name only grow,
/// over re-registrations too). Deregistering (gone) or leaving (moved) are ours to do and pass. A
/// version before our identity's first one is judged only against the version checked last:
/// after a key rotation (the operator's, with keyguard) the versions between that checkpoint
/// and the new identity's first record carry the identity the checkpoint had. Before any
/// checkpoint, versions older than our identity's first one are a previous owner's, or our
/// own before a rotation, and cannot be told apart: they pass.
pub fn judge_history(
    versions: &[LoggedVersion],
    checked: Option<u64>,
    identity: &SigningPublicKey,
) -> Vec<Foreign> {
    let at_checkpoint = checked.and_then(|c| versions.iter().find(|v| v.version == c));
    // The identity the name had where we last looked, if it was a record.
    let earlier_identity = match at_checkpoint.map(|v| &v.value) {
        Some(LoggedValue::Record { identity, .. }) => Some(*identity),
        _ => None,
    };
    let mut ours_from_here = earlier_identity.as_ref() == Some(identity);
    let mut last_serial = match at_checkpoint.map(|v| &v.value) {
        Some(LoggedValue::Record { serial, .. }) => Some(*serial),
        _ => None,
    };
    let mut foreign = Vec::new();
    for v in versions {
        if checked.is_some_and(|c| v.version <= c) {
            continue;
        }
        let LoggedValue::Record {
            identity: shown,
            serial,
        } = &v.value
        else {
            continue;
        };
        let allowed = if shown == identity {
            ours_from_here = true;
            true
        } else if ours_from_here {
            false
        } else {
            // Before our identity's first version: only the identity of the checkpoint (we
            // rotated since), or anything when there is none to hold it to.
            match (checked, earlier_identity) {
                (None, _) => true,
                (Some(_), Some(earlier)) => *shown == earlier,
                (Some(_), None) => false,
            }
        };
        if !allowed {
            foreign.push(Foreign::Identity {
                version: v.version,
                epoch: v.epoch,
                identity: *shown,
            });
            continue;
        }
        // A name's serials only grow at a directory, over re-registrations too.
        if last_serial.is_some_and(|last| *serial <= last) {
            foreign.push(Foreign::Replayed {
                version: v.version,
                epoch: v.epoch,
                serial: *serial,
            });
        }
        last_serial = Some(*serial);
    }
    foreign
}

/// The version to check from next time: the latest that is a record of `identity` (a forged
/// version after it, logged while we looked, is judged again next time rather than skipped).
pub fn checkpoint(versions: &[LoggedVersion], identity: &SigningPublicKey) -> Option<u64> {
    versions
        .iter()
        .rev()
        .find(|v| matches!(&v.value, LoggedValue::Record { identity: i, .. } if i == identity))
        .map(|v| v.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningPublicKey {
        smvs_crypto::SigningKeyPair::from_seed(
            &smvs_crypto::SigningSeed::from_bytes(&[seed; 32]).unwrap(),
        )
        .unwrap()
        .public()
    }

    fn history(values: &[LoggedValue]) -> Vec<LoggedVersion> {
        values
            .iter()
            .enumerate()
            .map(|(i, value)| LoggedVersion {
                version: i as u64 + 1,
                epoch: 10 * (i as u64 + 1),
                value: value.clone(),
            })
            .collect()
    }

    fn record(identity: SigningPublicKey, serial: u64) -> LoggedValue {
        LoggedValue::Record { identity, serial }
    }

    #[test]
    fn our_own_versions_pass_and_a_forged_one_between_them_does_not() {
        smvs_crypto::init().unwrap();
        let (me, mallory, previous_owner) = (key(1), key(2), key(3));
        let clean = history(&[
            record(previous_owner, 1),
            LoggedValue::Gone,
            record(me, 2),
            record(me, 3),
        ]);
        assert_eq!(judge_history(&clean, None, &me), vec![]);
        let forged = history(&[record(me, 1), record(mallory, 1), record(me, 1)]);
        assert_eq!(
            judge_history(&forged, None, &me),
            vec![
                Foreign::Identity {
                    version: 2,
                    epoch: 20,
                    identity: mallory
                },
                Foreign::Replayed {
                    version: 3,
                    epoch: 30,
                    serial: 1
                }
            ]
        );
        // The next check starts after our latest version.
        assert_eq!(checkpoint(&forged, &me), Some(3));
        assert_eq!(judge_history(&forged, Some(3), &me), vec![]);
        let raced = history(&[record(me, 1), record(mallory, 2)]);
        assert_eq!(checkpoint(&raced, &me), Some(1));
        assert_eq!(judge_history(&raced, Some(1), &me).len(), 1);
    }

    #[test]
    fn a_rotation_passes_from_the_checkpoint_identity_and_nothing_else_does() {
        smvs_crypto::init().unwrap();
        let (old, new, mallory) = (key(4), key(5), key(6));
        let rotated = history(&[record(old, 1), record(old, 2), record(new, 3)]);
        assert_eq!(judge_history(&rotated, Some(1), &new), vec![]);
        let slipped_in = history(&[record(old, 1), record(mallory, 2), record(new, 3)]);
        assert_eq!(
            judge_history(&slipped_in, Some(1), &new),
            vec![Foreign::Identity {
                version: 2,
                epoch: 20,
                identity: mallory
            }]
        );
        // Leaving and coming back are ours; someone else's record after ours is not.
        let left = history(&[record(new, 1), LoggedValue::Gone, record(mallory, 2)]);
        assert_eq!(
            judge_history(&left, Some(1), &new),
            vec![Foreign::Identity {
                version: 3,
                epoch: 30,
                identity: mallory
            }]
        );
    }

    #[test]
    fn checkpoints_round_trip_and_a_torn_entry_is_dropped() {
        let mut checkpoints = HashMap::new();
        checkpoints.insert([1; 32], 7);
        checkpoints.insert([2; 32], u64::MAX);
        let bytes = write_checkpoints(&checkpoints);
        assert_eq!(read_checkpoints(&bytes), checkpoints);
        assert_eq!(read_checkpoints(&bytes[..45]).len(), 1);
        assert!(read_checkpoints(&[]).is_empty());
    }
}
