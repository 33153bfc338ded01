//! Running a workspace binary as another uid (`nobody`, or a system user a test created), and
//! checking that the other uid can reach what the test means it to reach.
//!
//! The binaries sit in this checkout's `target/`, which another uid may not be able to reach:
//! a clone in a private (0700) directory is the usual case. So a binary run as another uid is
//! first copied into a fresh temporary directory that everyone may read and search (0755), and
//! run from there. If the other uid still cannot execute it (a `noexec` temporary directory, a
//! `TMPDIR` under a private directory), the test fails saying exactly that, instead of failing
//! later with an error that looks like the thing under test.
//!
//! The permission checks here read the mode bits the way the kernel does for a process that is
//! not root (owner, else group, else other); ACLs and capabilities are not considered.

use std::ffi::CString;
use std::fs::{self, Metadata};
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{anyhow, bail, Context};
use nix::errno::Errno;
use nix::sys::statvfs::{statvfs, FsFlags};
use tempfile::TempDir;

use crate::daemon::binary;

/// Who a test runs something as: a uid, its primary gid and every group it is in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherUid {
    /// A name for messages (`nobody`, `uid 65534`, a user name).
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, the primary one included.
    pub groups: Vec<u32>,
}

/// What the other uid must be able to do with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Execute a file (a program).
    Execute,
    /// Read a file.
    Read,
    /// Read and write a file; connecting to a Unix socket needs write permission.
    ReadWrite,
}

impl Access {
    fn bits(self) -> u32 {
        match self {
            Access::Execute => 0o1,
            Access::Read => 0o4,
            Access::ReadWrite => 0o6,
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Access::Execute => "execute",
            Access::Read => "read",
            Access::ReadWrite => "read and write",
        }
    }
}

/// Whether the test runs as root (it must, to run anything as another uid).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl OtherUid {
    /// uid and gid 65534 (`nobody` on Debian), with no supplementary groups: what
    /// `Command::uid(65534).gid(65534)` gives a child of root (std drops the groups).
    pub fn nobody() -> OtherUid {
        OtherUid {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
        }
    }

    /// An existing user, with the groups `runuser -u NAME` gives it.
    pub fn user(name: &str) -> anyhow::Result<OtherUid> {
        let user = nix::unistd::User::from_name(name)?
            .ok_or_else(|| anyhow!("there is no user {name}"))?;
        let groups = nix::unistd::getgrouplist(&CString::new(name)?, user.gid)
            .with_context(|| format!("the groups of {name}"))?
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        Ok(OtherUid {
            name: name.to_owned(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
            groups,
        })
    }

    /// The permission bits that apply to this uid for a file with `meta`.
    fn may(&self, meta: &Metadata, wanted: u32) -> bool {
        if self.uid == 0 {
            return true;
        }
        let mode = meta.mode();
        let bits = if meta.uid() == self.uid {
            mode >> 6
        } else if self.groups.contains(&meta.gid()) || meta.gid() == self.gid {
            mode >> 3
        } else {
            mode
        } & 0o7;
        bits & wanted == wanted
    }

    /// Fails, naming the first directory or the file that stops this uid, unless it can search
    /// every directory from `/` down to `path` and `access` `path` itself.
    pub fn check_can(&self, path: &Path, access: Access) -> anyhow::Result<()> {
        let path = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()?.join(path)
        };
        let mut walked = PathBuf::new();
        let parts: Vec<_> = path.components().collect();
        for (i, part) in parts.iter().enumerate() {
            walked.push(part);
            let meta = fs::metadata(&walked)
                .with_context(|| format!("checking {} for {}", walked.display(), self.name))?;
            let last = i + 1 == parts.len();
            if !last {
                if !self.may(&meta, 0o1) {
                    bail!(
                        "{} (uid {}) cannot reach {}: it may not search {} ({})",
                        self.name,
                        self.uid,
                        path.display(),
                        walked.display(),
                        describe(&meta)
                    );
                }
            } else if !self.may(&meta, access.bits()) {
                bail!(
                    "{} (uid {}) may not {} {} ({})",
                    self.name,
                    self.uid,
                    access.verb(),
                    path.display(),
                    describe(&meta)
                );
            }
        }
        Ok(())
    }
}

/// `mode 0700, owner 0:0`, for messages.
fn describe(meta: &Metadata) -> String {
    format!(
        "mode {:04o}, owner {}:{}",
        meta.mode() & 0o7777,
        meta.uid(),
        meta.gid()
    )
}

/// A workspace binary copied where `who` can execute it, and a command that runs the copy as
/// `who`. It derefs to the [`Command`], so arguments are added as usual; [`CommandAs::output`]
/// turns "the other uid cannot execute the program" into an error that says so. The copy is
/// deleted when this is dropped.
pub struct CommandAs {
    command: Command,
    who: OtherUid,
    original: PathBuf,
    copy: PathBuf,
    _dir: TempDir,
}

impl CommandAs {
    /// `name` (a binary of this workspace, see [`binary`]) copied into a fresh 0755 temporary
    /// directory, to be run as `who`. Fails when `who` could not execute the copy.
    pub fn new(name: &str, who: &OtherUid) -> anyhow::Result<CommandAs> {
        let original = binary(name)?;
        let dir = tempfile::Builder::new().prefix("smvs-bin-").tempdir()?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let copy = dir.path().join(name);
        fs::copy(&original, &copy)
            .with_context(|| format!("copying {} for {}", original.display(), who.name))?;
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))?;
        who.check_can(&copy, Access::Execute).with_context(|| {
            format!(
                "{name} is to run as {} (uid {}), from a copy in a 0755 temporary directory, \
                 but that uid cannot execute the copy; set TMPDIR to a directory every user can \
                 search",
                who.name, who.uid
            )
        })?;
        let mut command = Command::new(&copy);
        command.uid(who.uid).gid(who.gid);
        Ok(CommandAs {
            command,
            who: who.clone(),
            original,
            copy,
            _dir: dir,
        })
    }

    /// Runs the command to the end. An error here means the program did not run at all, and
    /// says why; the program's own failures are in the returned output.
    ///
    /// "Text file busy" is tried again: the copy was just written, and a child that another
    /// test thread forked meanwhile holds the written file open until it execs its own
    /// program, a moment later (the fork and exec race every multi-threaded program that
    /// writes an executable and runs it has).
    pub fn output(&mut self) -> anyhow::Result<Output> {
        let mut tries = 0;
        loop {
            match self.command.output() {
                Err(e) if e.raw_os_error() == Some(Errno::ETXTBSY as i32) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                result => return result.map_err(|e| self.not_started(e)),
            }
        }
    }

    fn not_started(&self, e: std::io::Error) -> anyhow::Error {
        let who = format!("{} (uid {})", self.who.name, self.who.uid);
        let errno = e.raw_os_error().map(Errno::from_raw);
        match errno {
            Some(Errno::EACCES) => {
                let noexec = self
                    .copy
                    .parent()
                    .and_then(|dir| statvfs(dir).ok())
                    .is_some_and(|s| s.flags().contains(FsFlags::ST_NOEXEC));
                anyhow!(
                    "{who} cannot execute {} (a copy of {}): {e}{}; the test did not run",
                    self.copy.display(),
                    self.original.display(),
                    if noexec {
                        "; its directory is on a noexec mount, set TMPDIR elsewhere"
                    } else {
                        ""
                    }
                )
            }
            Some(Errno::EPERM) => anyhow!(
                "cannot switch to {who} to run {}: {e} (running as another uid needs root)",
                self.copy.display()
            ),
            _ => anyhow!("running {} as {who}: {e}", self.copy.display()),
        }
    }
}

impl Deref for CommandAs {
    type Target = Command;

    fn deref(&self) -> &Command {
        &self.command
    }
}

impl DerefMut for CommandAs {
    fn deref_mut(&mut self) -> &mut Command {
        &mut self.command
    }
}
