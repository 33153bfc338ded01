//! Secret key files: created 0600 when absent (never overwritten), refused when anyone but the
//! owner can read them, in the spirit of fs-mistrust.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use thiserror::Error;
use zeroize::Zeroizing;

#[derive(Debug, Error)]
pub enum KeyFileError {
    #[error("{action} key file {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key file {path} is readable or writable by others (mode {mode:o}); run `chmod 600 {path}`"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("key file {path} is owned by uid {owner}, not by this process (uid {me})")]
    WrongOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("key file {path} holds {got} bytes, expected {expected}")]
    WrongSize {
        path: PathBuf,
        got: usize,
        expected: usize,
    },
}

/// Reads the `len`-byte secret in `path`, or, when the file does not exist, writes `make()` to
/// it with mode 0600 (atomically: a temporary file renamed into place).
/// Returns the secret and whether it was just created.
pub fn load_or_create(
    path: &Path,
    len: usize,
    make: impl FnOnce() -> Zeroizing<Vec<u8>>,
) -> Result<(Zeroizing<Vec<u8>>, bool), KeyFileError> {
    let io = |action, source| KeyFileError::Io {
        path: path.to_owned(),
        action,
        source,
    };
    match fs::metadata(path) {
        Ok(meta) => {
            check_private(path, &meta)?;
            let mut file = fs::File::open(path).map_err(|e| io("opening", e))?;
            let mut bytes = Zeroizing::new(Vec::with_capacity(len));
            file.read_to_end(&mut bytes).map_err(|e| io("reading", e))?;
            if bytes.len() != len {
                return Err(KeyFileError::WrongSize {
                    path: path.to_owned(),
                    got: bytes.len(),
                    expected: len,
                });
            }
            Ok((bytes, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let secret = make();
            let tmp = path.with_extension("tmp");
            let _ = fs::remove_file(&tmp);
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io("creating", e))?;
            file.write_all(&secret).map_err(|e| io("writing", e))?;
            file.sync_all().map_err(|e| io("syncing", e))?;
            fs::rename(&tmp, path).map_err(|e| io("renaming into place", e))?;
            if let Some(dir) = path.parent() {
                if let Ok(d) = fs::File::open(if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                }) {
                    let _ = d.sync_all();
                }
            }
            Ok((secret, true))
        }
        Err(e) => Err(io("inspecting", e)),
    }
}

fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), KeyFileError> {
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    let me = current_uid();
    if meta.uid() != me && me != 0 {
        return Err(KeyFileError::WrongOwner {
            path: path.to_owned(),
            owner: meta.uid(),
            me,
        });
    }
    Ok(())
}

fn current_uid() -> u32 {
    // Not the owner of /proc/self: after PR_SET_DUMPABLE 0 that reads as root.
    nix::unistd::geteuid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_then_reloaded_then_refused_when_open() {
        let dir = std::env::temp_dir().join(format!("smvs-keyfile-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("k.key");
        let (first, created) =
            load_or_create(&path, 4, || Zeroizing::new(vec![1, 2, 3, 4])).unwrap();
        assert!(created);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (again, created) =
            load_or_create(&path, 4, || Zeroizing::new(vec![9, 9, 9, 9])).unwrap();
        assert!(!created);
        assert_eq!(*first, *again);
        assert!(matches!(
            load_or_create(&path, 5, || Zeroizing::new(vec![])),
            Err(KeyFileError::WrongSize { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_or_create(&path, 4, || Zeroizing::new(vec![])),
            Err(KeyFileError::TooOpen { .. })
        ));
        fs::remove_dir_all(&dir).unwrap();
    }
}
