//! The key directory: where keyguard keeps its three secrets, and the checks that keep them
//! private (in the spirit of fs-mistrust).
//!
//! ```text
//!  DIR/               0700, owned by this process's uid, locked (flock) while keyguard runs
//!    identity.sign    32 bytes, 0600: the Ed25519 seed       ┐ written by createIdentity only,
//!    identity.agree   32 bytes, 0600: the X25519 secret      ┘ .agree first, then .sign
//!    storage.secret   32 bytes, 0600: random, written at first start; the storage key is
//!                     derived from it and it never leaves this process
//! ```
//!
//! Each file is written atomically (a 0600 temporary file, fsync, rename, fsync of the
//! directory; `smvs_service::keyfile::load_or_create`) and never overwritten. An identity exists
//! when `identity.sign` does. `identity.agree` is written first, so a crash in between leaves an
//! unpublished agreement key that the next `createIdentity` simply adopts; the reverse (a signing
//! key without its agreement key) means the directory was damaged, and start-up stops.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
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
    #[error("key file {path} holds {got} bytes, expected {KEY_FILE_LEN}")]
    WrongSize { path: PathBuf, got: u64 },
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

/// An open, checked and locked key directory.
#[derive(Debug)]
pub struct KeyDir {
    path: PathBuf,
    /// Held for the life of the process: a second keyguard on the same directory could create a
    /// second identity.
    _lock: Flock<File>,
}

impl KeyDir {
    /// Creates `path` (0700) if absent, checks that only this uid can use it, and locks it.
    pub fn open(path: &Path) -> Result<KeyDir, KeyDirError> {
        let dir_io = |action, source| KeyDirError::DirIo {
            path: path.to_owned(),
            action,
            source,
        };
        match fs::metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(path)
                    .map_err(|e| dir_io("creating", e))?;
                tracing::info!(path = %path.display(), "created the key directory");
            }
            Err(e) => return Err(dir_io("inspecting", e)),
        }
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
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(KeyDirError::DirWrongOwner {
                path: path.to_owned(),
                owner: meta.uid(),
                me,
            });
        }
        let lock = match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(KeyDirError::InUse {
                    path: path.to_owned(),
                })
            }
            Err((_, errno)) => return Err(dir_io("locking", errno.into())),
        };
        Ok(KeyDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the key file `name`, or `None` when it does not exist. Refuses a file that is not a
    /// regular file (symlinks included), is not 0600 or stricter, is owned by another uid, or is
    /// not exactly 32 bytes.
    pub fn read(&self, name: &str) -> Result<Option<Zeroizing<[u8; KEY_FILE_LEN]>>, KeyDirError> {
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
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(KeyDirError::FileWrongOwner {
                path,
                owner: meta.uid(),
                me,
            });
        }
        if meta.len() != KEY_FILE_LEN as u64 {
            return Err(KeyDirError::WrongSize {
                path,
                got: meta.len(),
            });
        }
        // A fixed-size buffer: no reallocation can leave a copy of the secret behind.
        let mut bytes = Zeroizing::new([0u8; KEY_FILE_LEN]);
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
    /// `identity.sign` is checked but not an identity.
    pub fn load_identity(&self) -> Result<Option<IdentityKeys>, KeyDirError> {
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
}
