//! The key directory: where keyguard keeps its three secrets, and the checks that keep them
//! private (in the spirit of fs-mistrust).
//!
//! ```text
//!  DIR/               0700, owned by this process's uid, locked (flock) while keyguard runs
//!    identity.sign    32 bytes, 0600: the Ed25519 seed       ┐ written by createIdentity only,
//!    identity.agree   32 bytes, 0600: the X25519 secret      ┘ .agree first, then .sign
//!    storage.derived  96 bytes, 0600: smvsd's conversation-tag, chain and tombstone keys
//!    storage.epochs   72 bytes, 0600: the current storage epoch (id, secret) and the previous
//!                     one until smvsd retires it (storage_epochs.rs); the epoch's key is
//!                     derived from its secret, which never leaves this process
//!    storage.secret   32 bytes: only in a key directory from before storage epochs, until
//!                     the first start converts it into the two files above
//!    identity.rotating  64 bytes, 0600, only while `smvs-keyguard rotate` runs (or after it
//!                     was interrupted): the new seed and agreement secret
//!    identity.kem     32 bytes, 0600: the seed of the identity's X-Wing key (session v2),
//!                     made at first use; removed by a rotation (the new identity makes its own)
//!    session.prekeys  152 bytes, 0600: the current and the previous signed prekey (session
//!                     v2), each id, expiry, X25519 secret and X-Wing seed; rewritten whole at
//!                     each rotation, so a retired prekey's secrets are gone from the file
//!    rollback.counter 8 bytes, 0600: a counter that only goes up (smvsd's rollback check)
//! ```
//!
//! The operator commands (`smvs-keyguard rotate` and `deregister`) open the directory with
//! [`KeyDir::open_as_operator`]: as its owner or as root, never creating it. `rotate` takes the
//! lock too, so it runs only while keyguard is stopped: a running keyguard would go on signing
//! with the replaced identity. It writes the new identity to `identity.rotating` first, asks the
//! directory, and only once the directory took it replaces `identity.agree` and
//! `identity.sign` (each atomically) and removes `identity.rotating`. While that file exists
//! keyguard refuses to start and running `rotate` again finishes (or, when the directory never
//! took it, retries) the rotation; a refusal by the directory removes it, leaving the old
//! identity as it was.
//!
//! Each file is written atomically (a 0600 temporary file, fsync, rename, fsync of the
//! directory; `smvs_service::keyfile::load_or_create`) and never overwritten. An identity exists
//! when `identity.sign` does. `identity.agree` is written first, so a crash in between leaves an
//! unpublished agreement key that the next `createIdentity` simply adopts; the reverse (a signing
//! key without its agreement key) means the directory was damaged, and start-up stops.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use smvs_crypto::{
    AgreementKeyPair, CryptoError, IdentityKeys, SigningKeyPair, SigningSeed, Zeroizing,
};
use smvs_service::keyfile::{load_or_create, KeyFileError};
use thiserror::Error;

/// The Ed25519 seed of the identity.
pub const SIGNING_FILE: &str = "identity.sign";
/// The X25519 secret of the identity.
pub const AGREEMENT_FILE: &str = "identity.agree";
/// The random secret the storage key is derived from.
pub const STORAGE_FILE: &str = "storage.secret";
/// Every key file holds exactly this many bytes.
pub const KEY_FILE_LEN: usize = 32;
/// A rotation in progress: the new seed, then the new agreement secret.
pub const ROTATION_FILE: &str = "identity.rotating";
const ROTATION_FILE_LEN: usize = 2 * KEY_FILE_LEN;
/// The seed of the identity's X-Wing key.
pub const KEM_FILE: &str = "identity.kem";
/// The current and previous signed prekeys.
pub const PREKEYS_FILE: &str = "session.prekeys";
/// One prekey: id (u32), expiry (i64), X25519 secret, X-Wing seed.
pub const PREKEY_SLOT_LEN: usize = 4 + 8 + KEY_FILE_LEN + KEY_FILE_LEN;
pub const PREKEYS_FILE_LEN: usize = 2 * PREKEY_SLOT_LEN;
/// The rollback counter (u64, big-endian).
pub const COUNTER_FILE: &str = "rollback.counter";
/// The keys smvsd derives its conversation tags, chain marks and tombstone marks with (three
/// 32-byte keys); they do not change with the storage epoch.
pub const STORAGE_DERIVED_FILE: &str = "storage.derived";
pub const STORAGE_DERIVED_LEN: usize = 3 * KEY_FILE_LEN;
/// The storage epochs: the current one, then the previous one until smvsd retires it.
pub const STORAGE_EPOCHS_FILE: &str = "storage.epochs";
/// One epoch: id (u32; 0 marks an empty slot) and its key.
pub const STORAGE_EPOCH_SLOT_LEN: usize = 4 + KEY_FILE_LEN;
pub const STORAGE_EPOCHS_LEN: usize = 2 * STORAGE_EPOCH_SLOT_LEN;

/// What can be wrong with the key directory or a file in it. Every variant names the path, and
/// the permission errors say how to fix them.
#[derive(Debug, Error)]
pub enum KeyDirError {
    #[error(
        "key directory {path} is open to other users (mode {mode:03o}); run `chmod 700 {path}`"
    )]
    DirTooOpen { path: PathBuf, mode: u32 },
    #[error(
        "key directory {path} is owned by uid {owner}, not by this process (uid {me}); \
         run `chown {me} {path}`"
    )]
    DirWrongOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("key directory {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{action} key directory {path}: {source}")]
    DirIo {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("key directory {path} is in use by another smvs-keyguard")]
    InUse { path: PathBuf },
    #[error(
        "key directory {path} is in use by a running smvs-keyguard; stop it (and the smvsd it \
         serves) first, and start both again afterwards"
    )]
    KeyguardRunning { path: PathBuf },
    #[error(
        "key directory {dir} holds {ROTATION_FILE}: a key rotation was interrupted; run \
         `smvs-keyguard rotate` with the same arguments again to finish it"
    )]
    RotationPending { dir: PathBuf },
    #[error(
        "key file {path} is readable or writable by others (mode {mode:03o}); \
         run `chmod 600 {path}`"
    )]
    FileTooOpen { path: PathBuf, mode: u32 },
    #[error(
        "key file {path} is owned by uid {owner}, not by this process (uid {me}); \
         run `chown {me} {path}`"
    )]
    FileWrongOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("key file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("key file {path} holds {got} bytes, expected {expected}")]
    WrongSize {
        path: PathBuf,
        got: u64,
        expected: usize,
    },
    #[error("{action} key file {path}: {source}")]
    FileIo {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// From `load_or_create`, whose messages name the path themselves.
    #[error(transparent)]
    Write(#[from] KeyFileError),
    #[error(
        "key directory {dir} holds {SIGNING_FILE} but not {AGREEMENT_FILE}: the identity is \
         incomplete; restore {AGREEMENT_FILE} from a backup"
    )]
    Incomplete { dir: PathBuf },
    #[error("key file {path} does not hold a usable key: {source}")]
    BadKey {
        path: PathBuf,
        #[source]
        source: CryptoError,
    },
}

/// An open, checked (and, for keyguard and `rotate`, locked) key directory.
#[derive(Debug)]
pub struct KeyDir {
    path: PathBuf,
    /// The uid that owns the directory, and must own every key file in it.
    owner: u32,
    /// Held for the life of the process: a second keyguard on the same directory could create a
    /// second identity, and a rotation under a running keyguard would leave it signing with
    /// the old one.
    _lock: Option<Flock<File>>,
}

/// Whether an operator command locks the key directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorLock {
    /// Reading only (`deregister`): keyguard may keep running.
    None,
    /// Changing keys (`rotate`): keyguard must be stopped.
    Exclusive,
}

impl KeyDir {
    /// Creates `path` (0700) if absent, checks that only this uid can use it, and locks it.
    pub fn open(path: &Path) -> Result<KeyDir, KeyDirError> {
        match fs::metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .map_err(|e| KeyDirError::DirIo {
                        path: path.to_owned(),
                        action: "creating",
                        source: e,
                    })?;
                tracing::info!(path = %path.display(), "created the key directory");
            }
            Err(e) => {
                return Err(KeyDirError::DirIo {
                    path: path.to_owned(),
                    action: "inspecting",
                    source: e,
                })
            }
        }
        let me = nix::unistd::geteuid().as_raw();
        let (dir, owner) = Self::checked(path, |owner| owner == me)?;
        let lock = match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(KeyDirError::InUse {
                    path: path.to_owned(),
                })
            }
            Err((_, errno)) => {
                return Err(KeyDirError::DirIo {
                    path: path.to_owned(),
                    action: "locking",
                    source: errno.into(),
                })
            }
        };
        Ok(KeyDir {
            path: path.to_owned(),
            owner,
            _lock: Some(lock),
        })
    }

    /// Opens an existing key directory for an operator command, run by the directory's owner
    /// or by root (who then acts for the owner: files it writes are given to the owner).
    pub fn open_as_operator(path: &Path, lock: OperatorLock) -> Result<KeyDir, KeyDirError> {
        let me = nix::unistd::geteuid().as_raw();
        let (dir, owner) = Self::checked(path, |owner| owner == me || me == 0)?;
        let lock = match lock {
            OperatorLock::None => None,
            OperatorLock::Exclusive => match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => Some(lock),
                Err((_, Errno::EWOULDBLOCK)) => {
                    return Err(KeyDirError::KeyguardRunning {
                        path: path.to_owned(),
                    })
                }
                Err((_, errno)) => {
                    return Err(KeyDirError::DirIo {
                        path: path.to_owned(),
                        action: "locking",
                        source: errno.into(),
                    })
                }
            },
        };
        Ok(KeyDir {
            path: path.to_owned(),
            owner,
            _lock: lock,
        })
    }

    /// Opens the directory and checks it: a directory, 0700 or stricter, owned by a uid
    /// `owner_ok` accepts. Returns the open handle and the owner.
    fn checked(path: &Path, owner_ok: impl Fn(u32) -> bool) -> Result<(File, u32), KeyDirError> {
        let dir_io = |action, source| KeyDirError::DirIo {
            path: path.to_owned(),
            action,
            source,
        };
        let dir = File::open(path).map_err(|e| dir_io("opening", e))?;
        // Checked on the open handle, so what is checked is what is locked and used.
        let meta = dir.metadata().map_err(|e| dir_io("inspecting", e))?;
        if !meta.is_dir() {
            return Err(KeyDirError::NotADirectory {
                path: path.to_owned(),
            });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyDirError::DirTooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        if !owner_ok(meta.uid()) {
            return Err(KeyDirError::DirWrongOwner {
                path: path.to_owned(),
                owner: meta.uid(),
                me: nix::unistd::geteuid().as_raw(),
            });
        }
        Ok((dir, meta.uid()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the key file `name`, or `None` when it does not exist. Refuses a file that is not a
    /// regular file (symlinks included), is not 0600 or stricter, is owned by another uid, or is
    /// not exactly 32 bytes.
    pub fn read(&self, name: &str) -> Result<Option<Zeroizing<[u8; KEY_FILE_LEN]>>, KeyDirError> {
        self.read_n::<KEY_FILE_LEN>(name)
    }

    /// [`KeyDir::read`] for a file of `N` bytes.
    fn read_n<const N: usize>(
        &self,
        name: &str,
    ) -> Result<Option<Zeroizing<[u8; N]>>, KeyDirError> {
        let path = self.path.join(name);
        let file_io = |action, source| KeyDirError::FileIo {
            path: path.clone(),
            action,
            source,
        };
        let mut file = match OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_NOFOLLOW.bits() | OFlag::O_CLOEXEC.bits())
            .open(&path)
        {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.raw_os_error() == Some(Errno::ELOOP as i32) => {
                return Err(KeyDirError::NotAFile { path })
            }
            Err(e) => return Err(file_io("opening", e)),
        };
        let meta = file.metadata().map_err(|e| file_io("inspecting", e))?;
        if !meta.is_file() {
            return Err(KeyDirError::NotAFile { path });
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KeyDirError::FileTooOpen { path, mode });
        }
        if meta.uid() != self.owner {
            return Err(KeyDirError::FileWrongOwner {
                path,
                owner: meta.uid(),
                me: self.owner,
            });
        }
        if meta.len() != N as u64 {
            return Err(KeyDirError::WrongSize {
                path,
                got: meta.len(),
                expected: N,
            });
        }
        // A fixed-size buffer: no reallocation can leave a copy of the secret behind.
        let mut bytes = Zeroizing::new([0u8; N]);
        file.read_exact(&mut bytes[..])
            .map_err(|e| file_io("reading", e))?;
        Ok(Some(bytes))
    }

    /// Reads the key file `name`, writing `make()` to it first when it does not exist.
    fn read_or_create(
        &self,
        name: &str,
        make: impl FnOnce() -> Zeroizing<Vec<u8>>,
    ) -> Result<Zeroizing<[u8; KEY_FILE_LEN]>, KeyDirError> {
        if let Some(bytes) = self.read(name)? {
            return Ok(bytes);
        }
        let path = self.path.join(name);
        let (written, _) = load_or_create(&path, KEY_FILE_LEN, make)?;
        let mut bytes = Zeroizing::new([0u8; KEY_FILE_LEN]);
        if written.len() != KEY_FILE_LEN {
            return Err(KeyDirError::WrongSize {
                path,
                got: written.len() as u64,
                expected: KEY_FILE_LEN,
            });
        }
        bytes.copy_from_slice(&written);
        Ok(bytes)
    }

    /// The storage secret, created (random) when absent.
    pub fn storage_secret(&self) -> Result<Zeroizing<[u8; KEY_FILE_LEN]>, KeyDirError> {
        self.read_or_create(STORAGE_FILE, || {
            let mut secret = Zeroizing::new(vec![0u8; KEY_FILE_LEN]);
            smvs_crypto::random_bytes(&mut secret);
            secret
        })
    }

    /// The identity, if one has been created. A leftover `identity.agree` without
    /// `identity.sign` is checked but not an identity. Refused while a rotation is pending.
    pub fn load_identity(&self) -> Result<Option<IdentityKeys>, KeyDirError> {
        if self.rotation_pending()? {
            return Err(KeyDirError::RotationPending {
                dir: self.path.clone(),
            });
        }
        self.load_current_identity()
    }

    /// The identity in `identity.sign` and `identity.agree`, whether or not a rotation is
    /// pending (for `rotate`, which finishes it).
    pub fn load_current_identity(&self) -> Result<Option<IdentityKeys>, KeyDirError> {
        let agreement = self.read(AGREEMENT_FILE)?;
        let Some(seed) = self.read(SIGNING_FILE)? else {
            return Ok(None);
        };
        let Some(agreement) = agreement else {
            return Err(KeyDirError::Incomplete {
                dir: self.path.clone(),
            });
        };
        self.identity_from(&seed, &agreement).map(Some)
    }

    /// Makes and stores a new identity; returns the stored one when it already exists.
    /// The caller serialises calls (keyguard runs them on one thread, with no await between
    /// the check and the write); the directory lock keeps other processes out.
    pub fn create_identity(&self) -> Result<IdentityKeys, KeyDirError> {
        if let Some(existing) = self.load_identity()? {
            return Ok(existing);
        }
        let fresh = IdentityKeys::generate().map_err(|source| KeyDirError::BadKey {
            path: self.path.join(SIGNING_FILE),
            source,
        })?;
        let agreement = self.read_or_create(AGREEMENT_FILE, || {
            Zeroizing::new(fresh.agreement.expose_secret().to_vec())
        })?;
        let seed = self.read_or_create(SIGNING_FILE, || {
            Zeroizing::new(fresh.signing.seed().expose().to_vec())
        })?;
        self.identity_from(&seed, &agreement)
    }

    fn rotation_pending(&self) -> Result<bool, KeyDirError> {
        match fs::symlink_metadata(self.path.join(ROTATION_FILE)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(KeyDirError::FileIo {
                path: self.path.join(ROTATION_FILE),
                action: "inspecting",
                source,
            }),
        }
    }

    /// The new identity of a rotation in progress, if there is one.
    pub fn staged_rotation(&self) -> Result<Option<IdentityKeys>, KeyDirError> {
        let Some(bytes) = self.read_n::<ROTATION_FILE_LEN>(ROTATION_FILE)? else {
            return Ok(None);
        };
        let (seed, agreement) = bytes.split_at(KEY_FILE_LEN);
        let mut seed_arr = Zeroizing::new([0u8; KEY_FILE_LEN]);
        let mut agreement_arr = Zeroizing::new([0u8; KEY_FILE_LEN]);
        seed_arr.copy_from_slice(seed);
        agreement_arr.copy_from_slice(agreement);
        self.identity_from_file(ROTATION_FILE, &seed_arr, &agreement_arr)
            .map(Some)
    }

    /// Writes `new` as the identity a rotation is moving to (atomically, before the directory
    /// is asked).
    pub fn stage_rotation(&self, new: &IdentityKeys) -> Result<(), KeyDirError> {
        let mut bytes = Zeroizing::new([0u8; ROTATION_FILE_LEN]);
        bytes[..KEY_FILE_LEN].copy_from_slice(new.signing.seed().expose());
        bytes[KEY_FILE_LEN..].copy_from_slice(new.agreement.expose_secret());
        self.replace_file(ROTATION_FILE, &bytes[..])
    }

    /// Makes the staged identity the identity: `identity.agree`, then `identity.sign`, each
    /// replaced atomically, then `identity.rotating` removed. Each step can be repeated, so an
    /// interrupted finish is finished by running it again.
    pub fn finish_rotation(&self) -> Result<IdentityKeys, KeyDirError> {
        let Some(new) = self.staged_rotation()? else {
            return Err(KeyDirError::FileIo {
                path: self.path.join(ROTATION_FILE),
                action: "finishing the rotation from",
                source: std::io::ErrorKind::NotFound.into(),
            });
        };
        self.replace_file(AGREEMENT_FILE, &new.agreement.expose_secret()[..])?;
        self.replace_file(SIGNING_FILE, &new.signing.seed().expose()[..])?;
        // The old identity's session keys go with it; the new one makes its own at first use.
        self.remove_file(KEM_FILE)?;
        self.remove_file(PREKEYS_FILE)?;
        self.remove_file(ROTATION_FILE)?;
        Ok(new)
    }

    /// The seed of the identity's X-Wing key, made (random) at first use.
    pub fn identity_kem_seed(&self) -> Result<Zeroizing<[u8; KEY_FILE_LEN]>, KeyDirError> {
        self.read_or_create(KEM_FILE, || {
            let mut seed = Zeroizing::new(vec![0u8; KEY_FILE_LEN]);
            smvs_crypto::random_bytes(&mut seed);
            seed
        })
    }

    /// The stored prekeys (two slots), if any were made.
    pub fn prekeys(&self) -> Result<Option<Zeroizing<[u8; PREKEYS_FILE_LEN]>>, KeyDirError> {
        self.read_n::<PREKEYS_FILE_LEN>(PREKEYS_FILE)
    }

    /// Replaces the stored prekeys (atomically).
    pub fn write_prekeys(&self, slots: &[u8; PREKEYS_FILE_LEN]) -> Result<(), KeyDirError> {
        self.replace_file(PREKEYS_FILE, slots)
    }

    /// The rollback counter (0 before its first advance).
    pub fn counter(&self) -> Result<u64, KeyDirError> {
        Ok(self
            .read_n::<8>(COUNTER_FILE)?
            .map(|b| u64::from_be_bytes(*b))
            .unwrap_or(0))
    }

    /// The storage secret of a key directory from before storage epochs, if it is still there
    /// (never created here).
    pub fn legacy_storage_secret(
        &self,
    ) -> Result<Option<Zeroizing<[u8; KEY_FILE_LEN]>>, KeyDirError> {
        self.read_n::<KEY_FILE_LEN>(STORAGE_FILE)
    }

    /// Removes the storage secret once its keys live in the epoch files.
    pub fn remove_legacy_storage_secret(&self) -> Result<(), KeyDirError> {
        self.remove_file(STORAGE_FILE)
    }

    pub fn storage_derived(
        &self,
    ) -> Result<Option<Zeroizing<[u8; STORAGE_DERIVED_LEN]>>, KeyDirError> {
        self.read_n::<STORAGE_DERIVED_LEN>(STORAGE_DERIVED_FILE)
    }

    pub fn write_storage_derived(
        &self,
        bytes: &[u8; STORAGE_DERIVED_LEN],
    ) -> Result<(), KeyDirError> {
        self.replace_file(STORAGE_DERIVED_FILE, bytes)
    }

    pub fn storage_epochs(
        &self,
    ) -> Result<Option<Zeroizing<[u8; STORAGE_EPOCHS_LEN]>>, KeyDirError> {
        self.read_n::<STORAGE_EPOCHS_LEN>(STORAGE_EPOCHS_FILE)
    }

    /// Replaces the epochs file whole (atomically): a retired epoch's key is not in the new
    /// file.
    pub fn write_storage_epochs(
        &self,
        bytes: &[u8; STORAGE_EPOCHS_LEN],
    ) -> Result<(), KeyDirError> {
        self.replace_file(STORAGE_EPOCHS_FILE, bytes)
    }

    /// Stores the rollback counter (atomically, synced before this returns).
    pub fn write_counter(&self, value: u64) -> Result<(), KeyDirError> {
        self.replace_file(COUNTER_FILE, &value.to_be_bytes())
    }

    /// Forgets a staged rotation the directory refused: the identity stays as it was.
    pub fn abandon_rotation(&self) -> Result<(), KeyDirError> {
        self.remove_file(ROTATION_FILE)
    }

    /// Writes `bytes` to `name` atomically: a 0600 temporary file owned by the directory's
    /// owner, synced, renamed over `name`, and the directory synced. On failure the temporary
    /// file is removed and `name` is as it was.
    fn replace_file(&self, name: &str, bytes: &[u8]) -> Result<(), KeyDirError> {
        let path = self.path.join(name);
        let tmp = self.path.join(format!("{name}.tmp"));
        let file_io = |action, source| KeyDirError::FileIo {
            path: tmp.clone(),
            action,
            source,
        };
        match fs::remove_file(&tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(file_io("removing a stale", e)),
        }
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(OFlag::O_NOFOLLOW.bits() | OFlag::O_CLOEXEC.bits())
                .open(&tmp)
                .map_err(|e| file_io("creating", e))?;
            if nix::unistd::geteuid().as_raw() != self.owner {
                // Root acting for the owner: keyguard (the owner) must be able to read it.
                nix::unistd::fchown(&file, Some(self.owner.into()), None)
                    .map_err(|e| file_io("giving to the key directory's owner", e.into()))?;
            }
            file.write_all(bytes).map_err(|e| file_io("writing", e))?;
            file.sync_all().map_err(|e| file_io("syncing", e))?;
            fs::rename(&tmp, &path).map_err(|e| file_io("renaming into place", e))
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        self.sync_dir()
    }

    fn remove_file(&self, name: &str) -> Result<(), KeyDirError> {
        let path = self.path.join(name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(KeyDirError::FileIo {
                    path,
                    action: "removing",
                    source,
                })
            }
        }
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), KeyDirError> {
        File::open(&self.path)
            .and_then(|d| d.sync_all())
            .map_err(|source| KeyDirError::DirIo {
                path: self.path.clone(),
                action: "syncing",
                source,
            })
    }

    fn identity_from(
        &self,
        seed: &[u8; KEY_FILE_LEN],
        agreement: &[u8; KEY_FILE_LEN],
    ) -> Result<IdentityKeys, KeyDirError> {
        let bad = |name: &str| {
            let path = self.path.join(name);
            move |source| KeyDirError::BadKey { path, source }
        };
        let signing = SigningSeed::from_bytes(seed)
            .and_then(|seed| SigningKeyPair::from_seed(&seed))
            .map_err(bad(SIGNING_FILE))?;
        let agreement =
            AgreementKeyPair::from_secret_bytes(agreement).map_err(bad(AGREEMENT_FILE))?;
        Ok(IdentityKeys { signing, agreement })
    }

    /// [`KeyDir::identity_from`] for both halves read from the one file `name`.
    fn identity_from_file(
        &self,
        name: &str,
        seed: &[u8; KEY_FILE_LEN],
        agreement: &[u8; KEY_FILE_LEN],
    ) -> Result<IdentityKeys, KeyDirError> {
        let path = self.path.join(name);
        let bad = |source| KeyDirError::BadKey {
            path: path.clone(),
            source,
        };
        let signing = SigningSeed::from_bytes(seed)
            .and_then(|seed| SigningKeyPair::from_seed(&seed))
            .map_err(bad)?;
        let agreement = AgreementKeyPair::from_secret_bytes(agreement).map_err(bad)?;
        Ok(IdentityKeys { signing, agreement })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "smvs-keydir-{}-{}",
            std::process::id(),
            hex_suffix()
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    fn hex_suffix() -> String {
        smvs_crypto::random_array::<4>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn created_private_and_identity_survives_reopen() {
        let root = scratch();
        let path = root.join("keys");
        let dir = KeyDir::open(&path).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let secret = dir.storage_secret().unwrap();
        assert!(dir.load_identity().unwrap().is_none());
        let made = dir.create_identity().unwrap();
        let again = dir.create_identity().unwrap();
        assert_eq!(made.bundle(), again.bundle());
        for name in [SIGNING_FILE, AGREEMENT_FILE, STORAGE_FILE] {
            let meta = fs::metadata(path.join(name)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
            assert_eq!(meta.len(), 32, "{name}");
        }
        // Locked: a second opener is refused while the first holds it.
        assert!(matches!(
            KeyDir::open(&path),
            Err(KeyDirError::InUse { .. })
        ));
        drop(dir);
        let dir = KeyDir::open(&path).unwrap();
        assert_eq!(*dir.storage_secret().unwrap(), *secret);
        assert_eq!(
            dir.load_identity().unwrap().unwrap().bundle(),
            made.bundle()
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn open_directories_and_files_are_refused_with_the_fix() {
        let root = scratch();
        let path = root.join("keys");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&path)
            .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        let err = KeyDir::open(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 700"), "{err}");

        fs::set_permissions(&path, fs::Permissions::from_mode(0o700)).unwrap();
        let dir = KeyDir::open(&path).unwrap();
        dir.storage_secret().unwrap();
        fs::set_permissions(path.join(STORAGE_FILE), fs::Permissions::from_mode(0o640)).unwrap();
        let err = dir.storage_secret().unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");

        // A symlink in place of a key file is not followed.
        fs::remove_file(path.join(STORAGE_FILE)).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", path.join(STORAGE_FILE)).unwrap();
        assert!(matches!(
            dir.read(STORAGE_FILE),
            Err(KeyDirError::NotAFile { .. })
        ));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_signing_key_without_its_agreement_key_is_damage() {
        let root = scratch();
        let path = root.join("keys");
        let dir = KeyDir::open(&path).unwrap();
        dir.create_identity().unwrap();
        fs::remove_file(path.join(AGREEMENT_FILE)).unwrap();
        assert!(matches!(
            dir.load_identity(),
            Err(KeyDirError::Incomplete { .. })
        ));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_rotation_is_staged_then_finished_and_keyguard_waits_for_it() {
        let root = scratch();
        let path = root.join("keys");
        let dir = KeyDir::open(&path).unwrap();
        let old = dir.create_identity().unwrap();
        drop(dir);
        // An operator opens it while no keyguard runs; while one does, it is refused.
        let keyguard = KeyDir::open(&path).unwrap();
        assert!(matches!(
            KeyDir::open_as_operator(&path, OperatorLock::Exclusive),
            Err(KeyDirError::KeyguardRunning { .. })
        ));
        let reader = KeyDir::open_as_operator(&path, OperatorLock::None).unwrap();
        assert_eq!(
            reader.load_identity().unwrap().unwrap().bundle(),
            old.bundle()
        );
        drop((keyguard, reader));

        let operator = KeyDir::open_as_operator(&path, OperatorLock::Exclusive).unwrap();
        let new = IdentityKeys::generate().unwrap();
        operator.stage_rotation(&new).unwrap();
        let staged = fs::metadata(path.join(ROTATION_FILE)).unwrap();
        assert_eq!(staged.permissions().mode() & 0o777, 0o600);
        assert_eq!(staged.len(), 64);
        // While it is staged, the identity is the old one, and keyguard would not start.
        assert_eq!(
            operator.staged_rotation().unwrap().unwrap().bundle(),
            new.bundle()
        );
        assert_eq!(
            operator.load_current_identity().unwrap().unwrap().bundle(),
            old.bundle()
        );
        assert!(matches!(
            operator.load_identity(),
            Err(KeyDirError::RotationPending { .. })
        ));
        // A crash half-way through finishing (the agreement key replaced, the signing key not)
        // is finished by finishing again.
        operator
            .replace_file(AGREEMENT_FILE, &new.agreement.expose_secret()[..])
            .unwrap();
        let finished = operator.finish_rotation().unwrap();
        assert_eq!(finished.bundle(), new.bundle());
        assert!(!path.join(ROTATION_FILE).exists());
        assert_eq!(
            operator.load_identity().unwrap().unwrap().bundle(),
            new.bundle()
        );
        // Nothing is left behind but the identity's two key files.
        let mut names: Vec<_> = fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [AGREEMENT_FILE, SIGNING_FILE]);

        // A rotation the directory refused leaves the identity as it was.
        operator
            .stage_rotation(&IdentityKeys::generate().unwrap())
            .unwrap();
        operator.abandon_rotation().unwrap();
        assert_eq!(
            operator.load_identity().unwrap().unwrap().bundle(),
            new.bundle()
        );
        fs::remove_dir_all(&root).unwrap();
    }

    /// Root rotates for the key directory's owner: what it writes belongs to the owner, so
    /// keyguard (running as the owner) can read it. Only meaningful as root.
    #[test]
    fn root_acting_for_the_owner_leaves_the_owners_files() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        const NOBODY: u32 = 65534;
        let root = scratch();
        let path = root.join("keys");
        KeyDir::open(&path).unwrap().create_identity().unwrap();
        for entry in fs::read_dir(&path).unwrap() {
            std::os::unix::fs::chown(entry.unwrap().path(), Some(NOBODY), Some(NOBODY)).unwrap();
        }
        std::os::unix::fs::chown(&path, Some(NOBODY), Some(NOBODY)).unwrap();
        // keyguard itself, as root, refuses a directory it does not own ...
        assert!(matches!(
            KeyDir::open(&path),
            Err(KeyDirError::DirWrongOwner { .. })
        ));
        // ... the operator, as root, acts for the owner.
        let operator = KeyDir::open_as_operator(&path, OperatorLock::Exclusive).unwrap();
        let new = IdentityKeys::generate().unwrap();
        operator.stage_rotation(&new).unwrap();
        assert_eq!(
            fs::metadata(path.join(ROTATION_FILE)).unwrap().uid(),
            NOBODY
        );
        assert_eq!(operator.finish_rotation().unwrap().bundle(), new.bundle());
        for name in [SIGNING_FILE, AGREEMENT_FILE] {
            let meta = fs::metadata(path.join(name)).unwrap();
            assert_eq!(
                (meta.uid(), meta.permissions().mode() & 0o777),
                (NOBODY, 0o600)
            );
        }
        assert_eq!(
            operator.load_identity().unwrap().unwrap().bundle(),
            new.bundle()
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
