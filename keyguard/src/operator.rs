//! The operator's commands: `smvs-keyguard rotate` and `smvs-keyguard deregister`.
//!
//! ```text
//!  operator (root or the key directory's owner)
//!     │ reads identity.sign / identity.agree itself (never through keyguard's socket)
//!     ▼
//!  directory: look-up (the record must hold this identity) ─► login (opens the token itself)
//!     ─► rotateKeys (old identity signs key-rotation) / deregister (identity signs deregistration)
//! ```
//!
//! These are the two acts that could take a username away from its owner, so they are not
//! offered over keyguard's socket at all: whoever holds the socket (smvsd, or in per-user mode
//! any process of the user) can neither make the signatures nor ask keyguard to.
//!
//! `rotate` needs keyguard stopped (it takes the key directory's lock) and keeps nothing
//! half-written: see [`crate::keydir`] for the `identity.rotating` protocol. The new identity
//! certifies the transport key the record already names (smvsd's), so the host is reachable as
//! soon as keyguard and smvsd start again on the new identity; contacts see a changed key and
//! must accept it (`smvsctl verify USER --accept-new-key`), as for any key change.

use std::path::PathBuf;

use smvs_crypto::{AgreementKeyPair, IdentityBundle, IdentityKeys, SigningPublicKey};
use smvs_directory::clock::now_ms;
use smvs_directory::{ClientError, Deregistration, DirectoryClient, Rotation, VerifiedRecord};
use smvs_schema::Username;
use thiserror::Error;

use crate::keydir::{KeyDir, KeyDirError, OperatorLock};

/// Which identity, at which directory.
#[derive(Debug, Clone)]
pub struct Target {
    pub key_dir: PathBuf,
    pub username: Username,
    /// HOST:PORT of the directory.
    pub directory: String,
    /// The directory's pinned Ed25519 key.
    pub directory_key: SigningPublicKey,
}

#[derive(Debug, Error)]
pub enum OperatorError {
    #[error(transparent)]
    KeyDir(#[from] KeyDirError),
    #[error("{0}")]
    Privileges(String),
    #[error("key directory {0} holds no identity")]
    NoIdentity(PathBuf),
    #[error("{action} at the directory {directory}: {source}")]
    Directory {
        directory: String,
        action: &'static str,
        #[source]
        source: ClientError,
    },
    #[error(
        "the directory's record of {username} holds identity {theirs}, not this key \
         directory's ({ours}); nothing was changed"
    )]
    NotOurs {
        username: Username,
        theirs: String,
        ours: String,
    },
    #[error(
        "the directory {directory} did not say whether it took the rotation ({source}); the new \
         identity is kept in {staged}: run the same command again to finish (or retry) it"
    )]
    RotationUnknown {
        directory: String,
        staged: PathBuf,
        #[source]
        source: ClientError,
    },
    #[error("cannot make keys: {0}")]
    Crypto(#[from] smvs_crypto::CryptoError),
}

/// What `rotate` did.
#[derive(Debug, Clone)]
pub struct Rotated {
    pub old: IdentityBundle,
    pub new: IdentityBundle,
    pub record: VerifiedRecord,
}

impl Target {
    fn directory_error(&self, action: &'static str) -> impl FnOnce(ClientError) -> OperatorError {
        let directory = self.directory.clone();
        move |source| OperatorError::Directory {
            directory,
            action,
            source,
        }
    }

    /// A connection under a throwaway Noise key: the link proves nothing about us, the
    /// signatures do.
    async fn connect(&self) -> Result<DirectoryClient, OperatorError> {
        let throwaway = AgreementKeyPair::generate()?;
        DirectoryClient::connect(&self.directory, self.directory_key, &throwaway)
            .await
            .map_err(self.directory_error("connecting"))
    }

    fn not_ours(&self, record: &VerifiedRecord, ours: &IdentityBundle) -> OperatorError {
        OperatorError::NotOurs {
            username: self.username.clone(),
            theirs: record.user.identity.signing_key.to_hex(),
            ours: ours.signing_key.to_hex(),
        }
    }
}

/// Deletes `target.username`'s record at the directory, signed by the identity in the key
/// directory. Keyguard may keep running (this only reads the key files).
/// Root acting for a key directory it does not own becomes its owner (groups, gid, uid) before
/// reading or writing anything there. Otherwise an owner who swaps the directory for a symlink
/// during the command (the key directory of a per-user host sits in their home) could have
/// root write, and hand them, a file anywhere. As the owner, this command can do nothing the
/// owner could not. A key directory that is itself a symlink is refused when run as root.
#[allow(clippy::result_large_err)] // the error of every operator step; returned once per run
pub fn become_owner_of(key_dir: &std::path::Path) -> Result<(), OperatorError> {
    use nix::unistd::{setgroups, setresgid, setresuid, Gid, Uid, User};
    use std::os::unix::fs::MetadataExt;
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let refuse = |why: String| OperatorError::Privileges(why);
    let meta = std::fs::symlink_metadata(key_dir)
        .map_err(|e| refuse(format!("{}: {e}", key_dir.display())))?;
    if meta.file_type().is_symlink() {
        return Err(refuse(format!(
            "{} is a symbolic link; as root, give the key directory's real path",
            key_dir.display()
        )));
    }
    if meta.uid() == 0 {
        return Ok(());
    }
    let uid = Uid::from_raw(meta.uid());
    let gid = User::from_uid(uid)
        .ok()
        .flatten()
        .map_or(Gid::from_raw(meta.gid()), |u| u.gid);
    setgroups(&[])
        .and_then(|()| setresgid(gid, gid, gid))
        .and_then(|()| setresuid(uid, uid, uid))
        .map_err(|e| {
            refuse(format!(
                "becoming uid {uid}, the key directory's owner: {e}"
            ))
        })?;
    Ok(())
}

pub async fn deregister(target: &Target) -> Result<u64, OperatorError> {
    let dir = KeyDir::open_as_operator(&target.key_dir, OperatorLock::None)?;
    let identity = dir
        .load_identity()?
        .ok_or_else(|| OperatorError::NoIdentity(target.key_dir.clone()))?;
    let client = target.connect().await?;
    let record = client
        .lookup_for_owner(&target.username)
        .await
        .map_err(target.directory_error("looking up the record"))?;
    if record.user.identity != identity.bundle() {
        return Err(target.not_ours(&record, &identity.bundle()));
    }
    let session = client
        .login(&target.username, |sealed| {
            identity.agreement.open_sealed(sealed)
        })
        .await
        .map_err(target.directory_error("logging in"))?;
    let deregistration = Deregistration::sign_locally(
        &target.directory_key,
        &target.username,
        &identity,
        record.user.serial,
        now_ms(),
    );
    session
        .deregister(&deregistration)
        .await
        .map_err(target.directory_error("deregistering"))?;
    tracing::info!(username = %target.username, "deregistered");
    Ok(record.user.serial)
}

/// Replaces the identity in the key directory with a new one, at the directory first. Needs
/// keyguard stopped. Finishes (or retries) an interrupted rotation.
pub async fn rotate(target: &Target) -> Result<Rotated, OperatorError> {
    let dir = KeyDir::open_as_operator(&target.key_dir, OperatorLock::Exclusive)?;
    let old = dir
        .load_current_identity()?
        .ok_or_else(|| OperatorError::NoIdentity(target.key_dir.clone()))?;
    let staged = dir.staged_rotation()?;
    let client = target.connect().await?;
    let record = client
        .lookup_for_owner(&target.username)
        .await
        .map_err(target.directory_error("looking up the record"))?;
    let new = if record.user.identity == old.bundle() {
        match staged {
            // An earlier run was interrupted before the directory took it: retry with it.
            Some(new) => new,
            None => {
                let new = IdentityKeys::generate()?;
                dir.stage_rotation(&new)?;
                new
            }
        }
    } else if staged
        .as_ref()
        .is_some_and(|new| record.user.identity == new.bundle())
    {
        // An earlier run got as far as the directory: only the files are left to switch.
        let new = dir.finish_rotation()?;
        tracing::info!(username = %target.username, "finished an interrupted rotation");
        return Ok(Rotated {
            old: old.bundle(),
            new: new.bundle(),
            record,
        });
    } else {
        return Err(target.not_ours(&record, &old.bundle()));
    };
    let outcome = send_rotation(target, &client, &record, &old, &new).await;
    match outcome {
        Ok(record) => {
            let new = dir.finish_rotation()?;
            tracing::info!(username = %target.username, "rotated the identity");
            Ok(Rotated {
                old: old.bundle(),
                new: new.bundle(),
                record,
            })
        }
        // The directory said no: it holds the old identity, and so do we again.
        Err(OperatorError::Directory { source, .. }) if source.code().is_some() => {
            dir.abandon_rotation()?;
            Err(OperatorError::Directory {
                directory: target.directory.clone(),
                action: "rotating (nothing was changed)",
                source,
            })
        }
        // No answer: it may or may not have taken it. Keep the staged identity.
        Err(OperatorError::Directory { source, .. }) => Err(OperatorError::RotationUnknown {
            directory: target.directory.clone(),
            staged: target.key_dir.join(crate::keydir::ROTATION_FILE),
            source,
        }),
        Err(other) => Err(other),
    }
}

async fn send_rotation(
    target: &Target,
    client: &DirectoryClient,
    record: &VerifiedRecord,
    old: &IdentityKeys,
    new: &IdentityKeys,
) -> Result<VerifiedRecord, OperatorError> {
    let session = client
        .login(&target.username, |sealed| old.agreement.open_sealed(sealed))
        .await
        .map_err(target.directory_error("logging in"))?;
    // The transport key stays the host's; the new identity certifies it.
    let rotation = Rotation::sign_locally(
        &target.directory_key,
        &target.username,
        old,
        new,
        record.user.transport_key,
        now_ms(),
    );
    session
        .rotate_keys(&rotation)
        .await
        .map_err(target.directory_error("rotating"))
}
