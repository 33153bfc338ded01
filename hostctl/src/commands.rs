//! What each `smvs-hostctl` command does. `add` and `restore` undo everything they did when
//! a step fails, so a failed provisioning leaves nothing half made.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::unistd::{Gid, Uid};
use serde::Serialize;
use smvs_crypto::PassphraseCost;

use crate::backup::{read_passphrase, OpeningReader, SealingWriter};
use crate::cli::{Cli, Command};
use crate::host_api::{self, DeviceLink, Status};
use crate::hosting::{free_ports, host_config, hosted_names, ports_of, HostingConfig, Ports};
use crate::layout::{HostName, STATE_ROOT};
use crate::system::{self, systemctl};

/// Registering waits for the directory; a pairing code and a status are local.
const REGISTER_LIMIT: Duration = Duration::from_secs(60);
const LOCAL_LIMIT: Duration = Duration::from_secs(5);

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // One changing command at a time: two `add`s must not pick the same ports or name, nor a
    // `backup` start a host that a `remove` is taking away.
    let _lock = match cli.command {
        Command::List { .. } => None,
        _ => {
            system::require_root()?;
            Some(system::lock()?)
        }
    };
    match cli.command {
        Command::Add {
            name,
            username,
            device,
            json,
        } => add(&cli.config, &name, username.as_deref(), &device, json),
        Command::List { json } => list(json),
        Command::Remove { name, keep_data } => {
            system::require_root()?;
            let name = HostName::parse(&name)?;
            if !exists(&name)? {
                bail!("no hosted host {name}");
            }
            destroy(&name, keep_data)?;
            if keep_data {
                println!(
                    "removed {name}; its keys and database are kept, root's, in {}",
                    name.state_dir().display()
                );
            } else {
                println!("removed {name}: its host, keys, state, config and users are gone");
            }
            Ok(())
        }
        Command::Backup {
            name,
            file,
            passphrase_file,
        } => backup(&name, &file, &passphrase_file),
        Command::Restore {
            name,
            file,
            passphrase_file,
        } => restore(&cli.config, &name, &file, &passphrase_file),
    }
}

/// The uid `name`'s smvsd runs as.
fn host_uid(name: &HostName) -> anyhow::Result<u32> {
    system::user(&name.host_user())?
        .map(|u| u.uid.as_raw())
        .with_context(|| format!("no user {}", name.host_user()))
}

/// Whether anything of `name` is on this machine (its config, state, users or groups).
fn exists(name: &HostName) -> anyhow::Result<bool> {
    let mut found = name.config_file().exists() || name.state_dir().exists();
    for account in [name.host_user(), name.keyguard_user()] {
        found |= system::user(&account)?.is_some() || system::group(&account)?.is_some();
    }
    Ok(found)
}

/// The error of a failed `add` or `restore`, after undoing what it made.
fn undone(name: &HostName, what: &str, e: anyhow::Error, registered: bool) -> anyhow::Error {
    let left = match destroy(name, false) {
        Ok(()) => "nothing of it is left here".to_string(),
        Err(undo) => format!("undoing it failed too ({undo:#}): smvs-hostctl remove {name}"),
    };
    let name_note = if registered {
        "; the name stays registered at the directory, with keys that are now gone"
    } else {
        ""
    };
    e.context(format!("{what} {name} failed; {left}{name_note}"))
}

#[derive(Serialize)]
struct Added {
    name: String,
    username: String,
    fingerprint: Option<String>,
    peer_port: u16,
    device_port: u16,
    call_port: u16,
    pair: DeviceLink,
}

fn add(
    config: &Path,
    name: &str,
    username: Option<&str>,
    device: &str,
    json: bool,
) -> anyhow::Result<()> {
    system::require_root()?;
    let name = HostName::parse(name)?;
    let username = username.unwrap_or(name.as_str()).to_owned();
    let parsed = smvs_schema::Username::parse(&username)?;
    if parsed.is_identity_address() {
        bail!("a hosted user registers a name at the directory, not an identity address");
    }
    let hosting = HostingConfig::load(config)?;
    if exists(&name)? {
        bail!("{name} is hosted here already (or was half removed: smvs-hostctl remove {name})");
    }
    system::make_roots()?;
    let ports = free_ports(&hosting, None)?;
    let registered = std::cell::Cell::new(false);
    let result = (|| {
        let (_, host_gid) = provision(&name)?;
        configure_and_start(&hosting, &name, ports, host_gid)?;
        let (status, link) =
            host_api::with_host(&name.socket(), host_uid(&name)?, REGISTER_LIMIT, |host| {
                let username = username.clone();
                let device = device.to_owned();
                let registered = &registered;
                async move {
                    let status = host_api::register(&host, &username)
                        .await
                        .with_context(|| format!("registering {username} at the directory"))?;
                    registered.set(true);
                    let link = host_api::link_device(&host, &device).await?;
                    Ok((status, link))
                }
            })?;
        anyhow::Ok((status, link))
    })();
    let (status, link) = match result {
        Ok(done) => done,
        Err(e) => return Err(undone(&name, "adding", e, registered.get())),
    };
    let added = Added {
        name: name.to_string(),
        username: status.username.clone().unwrap_or(username),
        fingerprint: status.fingerprint,
        peer_port: ports.peer,
        device_port: ports.device,
        call_port: ports.call,
        pair: link,
    };
    if json {
        println!("{}", serde_json::to_string(&added)?);
    } else {
        println!(
            "{}: host running as {} (peer port {}, device port {}, call port {}/udp)",
            added.name,
            name.host_unit(),
            added.peer_port,
            added.device_port,
            added.call_port
        );
        println!(
            "registered {} at {}; identity fingerprint {}",
            added.username,
            hosting.directory,
            added.fingerprint.as_deref().unwrap_or("-")
        );
        println!("the user pairs their first device, within 10 minutes, with:");
        println!(
            "  smvsctl pair {} {} --name {device}",
            added.pair.address, added.pair.code
        );
        println!(
            "host fingerprint, for the user to compare: {}",
            added.pair.host_fingerprint
        );
    }
    Ok(())
}

/// The users and state directories of a new host; returns the key guard's and the host's
/// groups.
fn provision(name: &HostName) -> anyhow::Result<(Gid, Gid)> {
    let (kg, host) = system::create_users(name)?;
    let root = (Uid::from_raw(0), Gid::from_raw(0));
    system::make_dir(&name.state_dir(), 0o711, root.0, root.1)?;
    system::make_dir(&name.host_state_dir(), 0o700, host.uid, host.gid)?;
    system::make_dir(&name.keyguard_state_dir(), 0o700, kg.uid, kg.gid)?;
    Ok((kg.gid, host.gid))
}

/// Writes a provisioned host's config, then starts it.
fn configure_and_start(
    hosting: &HostingConfig,
    name: &HostName,
    ports: Ports,
    host_gid: Gid,
) -> anyhow::Result<()> {
    system::write_config(
        &name.config_file(),
        &host_config(hosting, name, ports),
        host_gid,
    )?;
    start(name)
}

/// Enables and starts the key guard and the host (both Type=notify: this returns once they
/// are ready, or fails with systemd's word on why not).
fn start(name: &HostName) -> anyhow::Result<()> {
    systemctl(&[
        "enable",
        "--now",
        "--quiet",
        &name.keyguard_unit(),
        &name.host_unit(),
    ])?;
    Ok(())
}

/// Stops and disables `name`'s units, then deletes its config, runtime directory, users and
/// (unless `keep_data`) state. Goes on past a failed step and reports the first failure.
fn destroy(name: &HostName, keep_data: bool) -> anyhow::Result<()> {
    let units = [name.host_unit(), name.keyguard_unit()];
    let mut errors: Vec<anyhow::Error> = Vec::new();
    let mut note = |r: anyhow::Result<()>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };
    let mut args = vec!["disable", "--now", "--quiet"];
    args.extend(units.iter().map(String::as_str));
    note(systemctl(&args).map(drop));
    let mut args = vec!["reset-failed"];
    args.extend(units.iter().map(String::as_str));
    // Not an error when the units never failed (or never existed).
    let _ = systemctl(&args);
    for user in [name.host_user(), name.keyguard_user()] {
        if let Ok(Some(u)) = system::user(&user) {
            let left = system::processes_of(u.uid.as_raw());
            if !left.is_empty() {
                note(Err(anyhow::anyhow!(
                    "processes of {user} still run after the stop: {left:?}"
                )));
            }
        }
    }
    if let Some(e) = errors.pop() {
        // Its files are still in use: deleting them now would leave a running host without
        // its state. Nothing else is touched.
        return Err(e);
    }
    let mut note = |r: anyhow::Result<()>| {
        if let Err(e) = r {
            errors.push(e);
        }
    };
    let config = name.config_file();
    match std::fs::remove_file(&config) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => note(Err(
            anyhow::Error::new(e).context(format!("{}", config.display()))
        )),
        _ => {}
    }
    if keep_data {
        // The uids are freed below and may be given to the next hosted user: the kept state
        // must not be theirs.
        let state = name.state_dir();
        if state.exists() {
            note(system::chown_tree(
                &state,
                Uid::from_raw(0),
                Gid::from_raw(0),
            ));
            note(
                std::fs::set_permissions(
                    &state,
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                )
                .map_err(Into::into),
            );
        }
    } else {
        note(system::remove_tree(&name.state_dir()));
    }
    note(system::remove_tree(&name.runtime_dir()));
    note(system::delete_users(name));
    match errors.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[derive(Serialize)]
struct Listed {
    name: String,
    username: Option<String>,
    peer_port: Option<u16>,
    device_port: Option<u16>,
    call_port: Option<u16>,
    /// smvsd@NAME's ActiveState.
    state: String,
    keyguard_state: String,
    /// smvsd and its key guard together, bytes: their cgroups' memory, or without memory
    /// accounting their resident size (None: not running).
    memory: Option<u64>,
    queued: Option<u32>,
}

fn list(json: bool) -> anyhow::Result<()> {
    system::require_root()?;
    let names = hosted_names()?;
    let mut rows = Vec::new();
    // One `systemctl show` for every unit, host then key guard for each name in turn.
    let units: Vec<String> = names
        .iter()
        .flat_map(|n| [n.host_unit(), n.keyguard_unit()])
        .collect();
    let props = if units.is_empty() {
        Vec::new()
    } else {
        system::unit_properties(&units, &["ActiveState", "MemoryCurrent", "MainPID"])?
    };
    for (index, name) in names.iter().enumerate() {
        let ports: Option<Ports> = std::fs::read_to_string(name.config_file())
            .ok()
            .and_then(|t| ports_of(&t));
        let get = |i: usize, key: &str| {
            props
                .get(2 * index + i)
                .and_then(|m| m.get(key))
                .cloned()
                .unwrap_or_default()
        };
        // The cgroups' memory where systemd accounts it (cgroup v2); else the resident size of
        // the two main processes.
        let memory_of = |i: usize| {
            get(i, "MemoryCurrent").parse::<u64>().ok().or_else(|| {
                get(i, "MainPID")
                    .parse::<u32>()
                    .ok()
                    .filter(|pid| *pid != 0)
                    .and_then(system::resident_bytes)
            })
        };
        let memory = match (memory_of(0), memory_of(1)) {
            (Some(a), b) => Some(a + b.unwrap_or(0)),
            _ => None,
        };
        let state = get(0, "ActiveState");
        let status: Option<Status> = if state == "active" {
            host_uid(name)
                .and_then(|uid| {
                    host_api::with_host(&name.socket(), uid, LOCAL_LIMIT, |host| async move {
                        host_api::status(&host).await
                    })
                })
                .ok()
        } else {
            None
        };
        rows.push(Listed {
            name: name.to_string(),
            username: status.as_ref().and_then(|s| s.username.clone()),
            peer_port: ports.map(|p| p.peer),
            device_port: ports.map(|p| p.device),
            call_port: ports.map(|p| p.call),
            state,
            keyguard_state: get(1, "ActiveState"),
            memory,
            queued: status.map(|s| s.queued),
        });
    }
    let mut out = std::io::stdout().lock();
    if json {
        for row in &rows {
            writeln!(out, "{}", serde_json::to_string(row)?)?;
        }
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:<20} {:>5} {:>6} {:>5} {:<10} {:>8} {:>6}",
        "NAME", "USER", "PEER", "DEVICE", "CALL", "STATE", "MEMORY", "QUEUED"
    )?;
    let dash = || "-".to_string();
    for r in &rows {
        let state = if r.state == "active" && r.keyguard_state != "active" {
            format!("{}/kg:{}", r.state, r.keyguard_state)
        } else {
            r.state.clone()
        };
        writeln!(
            out,
            "{:<20} {:<20} {:>5} {:>6} {:>5} {:<10} {:>8} {:>6}",
            r.name,
            r.username.clone().unwrap_or_else(dash),
            r.peer_port.map(|p| p.to_string()).unwrap_or_else(dash),
            r.device_port.map(|p| p.to_string()).unwrap_or_else(dash),
            r.call_port.map(|p| p.to_string()).unwrap_or_else(dash),
            state,
            r.memory
                .map(|m| format!("{:.1}M", m as f64 / 1048576.0))
                .unwrap_or_else(dash),
            r.queued.map(|q| q.to_string()).unwrap_or_else(dash),
        )?;
    }
    Ok(())
}

/// Whether a unit is active now, or on its way (starting, restarting).
fn is_running(unit: &str) -> bool {
    let state =
        systemctl(&["show", "--property", "ActiveState", "--value", unit]).unwrap_or_default();
    matches!(state.trim(), "active" | "activating" | "reloading")
}

/// Whether a unit is enabled (to run at boot).
fn is_enabled(unit: &str) -> bool {
    systemctl(&["is-enabled", "--quiet", unit]).is_ok()
}

fn backup(name: &str, file: &Path, passphrase_file: &Path) -> anyhow::Result<()> {
    system::require_root()?;
    let name = HostName::parse(name)?;
    if !name.config_file().exists() {
        bail!("no hosted host {name}");
    }
    if file.exists() {
        bail!("{} exists: a backup never overwrites", file.display());
    }
    let passphrase = read_passphrase(passphrase_file)?;
    let restart = is_enabled(&name.host_unit())
        || is_running(&name.host_unit())
        || is_running(&name.keyguard_unit());
    // A consistent copy: nothing writes the database or the keys while it is read.
    let written = systemctl(&["stop", &name.host_unit(), &name.keyguard_unit()])
        .and_then(|_| {
            for user in [name.host_user(), name.keyguard_user()] {
                if let Some(u) = system::user(&user)? {
                    let left = system::processes_of(u.uid.as_raw());
                    if !left.is_empty() {
                        bail!("processes of {user} still run after the stop: {left:?}");
                    }
                }
            }
            Ok(())
        })
        .and_then(|_| write_backup(&name, file, &passphrase));
    if restart {
        if let Err(e) = start(&name) {
            eprintln!("smvs-hostctl: {name} did not start again after the backup: {e:#}");
        }
    }
    written?;
    println!(
        "wrote {} (sealed with the passphrase; keep both safe)",
        file.display()
    );
    Ok(())
}

/// Writes the archive beside `file` and links it into place only when complete.
fn write_backup(name: &HostName, file: &Path, passphrase: &str) -> anyhow::Result<()> {
    let dir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.partial",
        file.file_name()
            .and_then(|f| f.to_str())
            .unwrap_or("backup")
    ));
    // Only a file this run made is ever removed.
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = (|| {
        let sealed = SealingWriter::new(
            std::io::BufWriter::new(out),
            passphrase,
            PassphraseCost::MODERATE,
        )?;
        let mut archive = tar::Builder::new(sealed);
        archive.follow_symlinks(false);
        archive.append_path_with_name(name.config_file(), "smvsd.toml")?;
        append_tree(&mut archive, &name.host_state_dir(), Path::new("host"))?;
        append_tree(
            &mut archive,
            &name.keyguard_state_dir(),
            Path::new("keyguard"),
        )?;
        let sealed = archive.into_inner()?;
        let out = sealed.finish()?.into_inner().map_err(|e| e.into_error())?;
        out.sync_all()?;
        // Fails if `file` appeared meanwhile: never overwrite.
        std::fs::hard_link(&tmp, file)
            .with_context(|| format!("cannot create {}", file.display()))?;
        std::fs::File::open(dir)?.sync_all()?;
        anyhow::Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Adds `dir` as `name` and everything under it: directories and regular files only, as
/// `restore` accepts (a host that planted a symlink, FIFO or socket in its state finds out at
/// backup time, not when the backup is needed).
fn append_tree<W: Write>(
    archive: &mut tar::Builder<W>,
    dir: &Path,
    name: &Path,
) -> anyhow::Result<()> {
    archive.append_dir(name, dir)?;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let inner = name.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            append_tree(archive, &path, &inner)?;
        } else if kind.is_file() {
            archive.append_path_with_name(&path, &inner)?;
        } else {
            bail!(
                "{} is neither a file nor a directory: no backup holds it",
                path.display()
            );
        }
    }
    Ok(())
}

fn restore(config: &Path, name: &str, file: &Path, passphrase_file: &Path) -> anyhow::Result<()> {
    system::require_root()?;
    let name = HostName::parse(name)?;
    let hosting = HostingConfig::load(config)?;
    if exists(&name)? {
        bail!("{name} is hosted here already: restore makes a new hosted host");
    }
    let passphrase = read_passphrase(passphrase_file)?;
    system::make_roots()?;
    // Also what an interrupted restore of this name left (it holds secret keys).
    let staging = PathBuf::from(STATE_ROOT).join(format!(".restore-{name}"));
    system::remove_tree(&staging)?;
    let root = (Uid::from_raw(0), Gid::from_raw(0));
    system::make_dir(&staging, 0o700, root.0, root.1)?;
    let result = (|| {
        unpack(file, &passphrase, &staging)?;
        let old = std::fs::read_to_string(staging.join("smvsd.toml"))
            .ok()
            .and_then(|t| ports_of(&t));
        let ports = free_ports(&hosting, old)?;
        let (kg_gid, host_gid) = provision(&name)?;
        for (part, target, gid) in [
            ("host", name.host_state_dir(), host_gid),
            ("keyguard", name.keyguard_state_dir(), kg_gid),
        ] {
            let uid = match part {
                "host" => system::user(&name.host_user())?,
                _ => system::user(&name.keyguard_user())?,
            }
            .map(|u| u.uid)
            .context("the new user vanished")?;
            // Owners and modes are set inside the root-only staging directory, before the
            // tree is moved where others can pass through.
            let tree = staging.join(part);
            system::own_private_tree(&tree, uid, gid)?;
            std::fs::remove_dir(&target)?;
            std::fs::rename(&tree, &target)?;
        }
        configure_and_start(&hosting, &name, ports, host_gid)?;
        let status = host_api::with_host(
            &name.socket(),
            host_uid(&name)?,
            LOCAL_LIMIT,
            |host| async move { host_api::status(&host).await },
        )?;
        anyhow::Ok((status, ports, old != Some(ports)))
    })();
    let _ = system::remove_tree(&staging);
    match result {
        Ok((status, ports, moved)) => {
            println!(
                "restored {name} as {} (peer port {}, device port {})",
                status.username.as_deref().unwrap_or("an unregistered host"),
                ports.peer,
                ports.device
            );
            if moved {
                println!(
                    "its old ports were taken: its devices must be told the new device port (smvsctl --host …:{})",
                    ports.device
                );
            } else {
                println!("its devices stay paired, at the same address");
            }
            Ok(())
        }
        Err(e) => Err(undone(&name, "restoring", e, false)),
    }
}

/// Opens the backup into `dir`: only `smvsd.toml`, `host/…` and `keyguard/…`, nothing outside
/// `dir` (tar's own checks), and only once the whole file has opened.
fn unpack(file: &Path, passphrase: &str, dir: &Path) -> anyhow::Result<()> {
    let input =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    let mut reader = OpeningReader::new(std::io::BufReader::new(input), passphrase)?;
    {
        let mut archive = tar::Archive::new(&mut reader);
        // Modes are not taken from the file: everything is made private below.
        archive.set_preserve_permissions(false);
        archive.set_preserve_ownerships(false);
        archive.set_unpack_xattrs(false);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            let top = path.components().next().map(|c| c.as_os_str().to_owned());
            let allowed = matches!(
                top.as_ref().and_then(|t| t.to_str()),
                Some("smvsd.toml" | "host" | "keyguard")
            );
            let kind = entry.header().entry_type();
            if !allowed || !(kind.is_file() || kind.is_dir()) {
                bail!(
                    "the backup holds {} , which no SMVS backup does",
                    path.display()
                );
            }
            if !entry.unpack_in(dir)? {
                bail!("the backup's {} points outside it", path.display());
            }
        }
    }
    reader.check_end()?;
    for part in ["smvsd.toml", "host", "keyguard"] {
        if !dir.join(part).exists() {
            bail!("the backup has no {part}");
        }
    }
    Ok(())
}
