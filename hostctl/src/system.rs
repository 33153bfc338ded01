//! The machine's side of a hosted host: system users (useradd, userdel), its directories and
//! their owners, and systemctl. Every command's failure comes back with what it printed.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context};
use nix::unistd::{chown, Gid, Group, Uid, User};

use crate::layout::{HostName, RUNTIME_ROOT, STATE_ROOT};

/// Runs a program and fails with its output when it fails.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn require_root() -> anyhow::Result<()> {
    if !Uid::effective().is_root() {
        bail!("must run as root (it creates system users and starts units)");
    }
    Ok(())
}

pub fn user(name: &str) -> anyhow::Result<Option<User>> {
    User::from_name(name).with_context(|| format!("looking up user {name}"))
}

pub fn group(name: &str) -> anyhow::Result<Option<Group>> {
    Group::from_name(name).with_context(|| format!("looking up group {name}"))
}

/// The two system users of a hosted host, each with its own group; the host's user is also in
/// the key guard's group (which alone may enter the key guard's socket directory).
pub fn create_users(name: &HostName) -> anyhow::Result<(User, User)> {
    let kg = name.keyguard_user();
    let host = name.host_user();
    for u in [&kg, &host] {
        if user(u)?.is_some() || group(u)?.is_some() {
            bail!("a user or group {u} exists already: is {name} hosted here, or half removed? (smvs-hostctl remove {name})");
        }
    }
    let base = [
        "--system",
        "--user-group",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
    ];
    let comment = format!("SMVS key guard of {name}");
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--comment", &comment, &kg]);
    run("useradd", &args)?;
    let comment = format!("SMVS host of {name}");
    let mut args: Vec<&str> = base.to_vec();
    args.extend(["--groups", &kg, "--comment", &comment, &host]);
    run("useradd", &args)?;
    match (user(&kg)?, user(&host)?) {
        (Some(k), Some(h)) => Ok((k, h)),
        _ => bail!("useradd said it made {kg} and {host}, but they cannot be found"),
    }
}

/// Deletes the two users and their groups, whatever of them exists.
pub fn delete_users(name: &HostName) -> anyhow::Result<()> {
    // The host's user first: it is a member of the key guard's group.
    for u in [name.host_user(), name.keyguard_user()] {
        if user(&u)?.is_some() {
            run("userdel", &[&u])?;
        }
        if group(&u)?.is_some() {
            run("groupdel", &[&u])?;
        }
    }
    Ok(())
}

/// Makes `path` (not its parents) with `mode` and owner, or fixes an existing one.
pub fn make_dir(path: &Path, mode: u32, uid: Uid, gid: Gid) -> anyhow::Result<()> {
    match std::fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.is_dir() {
        bail!("{} is not a directory", path.display());
    }
    chown(path, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(())
}

/// The roots every hosted host lives under: root's, traversable but not listable.
pub fn make_roots() -> anyhow::Result<()> {
    let root = (Uid::from_raw(0), Gid::from_raw(0));
    for dir in [STATE_ROOT, RUNTIME_ROOT, crate::layout::CONFIG_DIR] {
        if let Some(parent) = Path::new(dir).parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Traversable (each host reads its own config or state below), not listable.
        make_dir(Path::new(dir), 0o711, root.0, root.1)?;
    }
    Ok(())
}

/// Hands every file under `dir` (and `dir`) to `uid:gid`, without following symlinks.
pub fn chown_tree(dir: &Path, uid: Uid, gid: Gid) -> anyhow::Result<()> {
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        dir,
        Some(uid),
        Some(gid),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .with_context(|| format!("chown {}", dir.display()))?;
    if std::fs::symlink_metadata(dir)?.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            chown_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Hands a tree to `uid:gid` and makes it private: directories 0700, files 0600 (nothing
/// executable, no setuid bits from wherever it came from). Symlinks are not followed.
pub fn own_private_tree(dir: &Path, uid: Uid, gid: Gid) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    let mode = if meta.is_dir() {
        0o700
    } else if meta.is_file() {
        0o600
    } else {
        bail!("{} is neither a file nor a directory", dir.display());
    };
    // chown first: it would clear setuid bits anyway, and the mode below is final.
    chown(dir, Some(uid), Some(gid)).with_context(|| format!("chown {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            own_private_tree(&entry?.path(), uid, gid)?;
        }
    }
    Ok(())
}

/// Holds `/run/smvs-hosts.lock` (exclusively) while it lives.
pub fn lock() -> anyhow::Result<nix::fcntl::Flock<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = "/run/smvs-hosts.lock";
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot open {path}"))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| anyhow::anyhow!("cannot lock {path}: {e}"))
}

/// Removes a tree if it exists, never crossing into another file system.
pub fn remove_tree(path: &Path) -> anyhow::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("{}", path.display())),
        Ok(_) => {
            let out = Command::new("rm")
                .args(["-rf", "--one-file-system", "--"])
                .arg(path)
                .output()
                .context("cannot run rm")?;
            if !out.status.success() || path.exists() {
                bail!(
                    "cannot remove {}: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(())
        }
    }
}

/// Writes `text` to `path` atomically (a temporary file beside it, then rename), 0640
/// root:`gid`: readable by the host's user, writable by root alone.
pub fn write_config(path: &Path, text: &str, gid: Gid) -> anyhow::Result<()> {
    let tmp = path.with_extension("toml.new");
    let result = (|| {
        std::fs::write(&tmp, text)?;
        chown(&tmp, Some(Uid::from_raw(0)), Some(gid))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o640))?;
        std::fs::rename(&tmp, path)?;
        anyhow::Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

/// `systemctl ARGS…`.
pub fn systemctl(args: &[&str]) -> anyhow::Result<String> {
    run("systemctl", args)
}

/// Properties of units, from `systemctl show`: one map per unit, in the order asked.
pub fn unit_properties(
    units: &[String],
    properties: &[&str],
) -> anyhow::Result<Vec<std::collections::HashMap<String, String>>> {
    let props = properties.join(",");
    let mut args = vec!["show", "--property", &props];
    args.extend(units.iter().map(String::as_str));
    let out = systemctl(&args)?;
    let maps = out
        .split("\n\n")
        .map(|block| {
            block
                .lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .collect::<Vec<_>>();
    Ok(maps)
}

/// Processes still running as `uid` (read from /proc), for the checks after a stop.
pub fn processes_of(uid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("Uid:"))
                        .and_then(|l| l.split_whitespace().nth(1).map(|u| u == uid.to_string()))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// A process's resident size (VmRSS), in bytes.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
