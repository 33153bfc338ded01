//! The directories this host uses, as the user changes them: `directory add` and `remove`
//! (kept in storage, on top of the configuration, so a restart keeps them), and `directory
//! move` (register at another, leave the home one with a statement the identity signs).
//!
//! The quorum stays as configured (a directory added later is one more voice, not a higher
//! bar); a removal that would leave fewer directories than the quorum, or no other directory
//! that holds the user's record (asked at the time), is refused. Removing a directory does not
//! deregister the user there: their record stays until its transport certificate lapses
//! (`directory move` leaves with a signed statement instead). Changes of the list run one at a
//! time, each after the one before has finished.

use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::directories::DirectoryLink;
use super::{Trust, DIRECTORY_TIMEOUT};
use smvs_schema::HostAddress;

use crate::error::HostError;

/// A directory added with `directory add`, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AddedDirectory {
    name: String,
    address: String,
    /// Hex.
    key: String,
    /// Added with `--scoped` (absent in what hosts before scoped names stored).
    #[serde(default)]
    scoped: bool,
}

/// What the user changed in the configured list, stored as one setting (one write: never
/// half of a change).
#[derive(Debug, Default, Serialize, Deserialize)]
struct DirectoryChanges {
    added: Vec<AddedDirectory>,
    /// Keys (hex) of configured directories the user removed (scoped ones too).
    removed: Vec<String>,
}

/// A directory in use, as `directory list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryEntry {
    pub name: String,
    pub address: String,
    /// Hex.
    pub key: String,
    /// This host's user moved away from it.
    pub left: bool,
    /// A name space of its own (`alice@NAME`), asked only for names scoped to it.
    pub scoped: bool,
}

/// How many directories `directory add` takes, in all.
pub const MAX_DIRECTORIES: usize = 16;

fn keys_of(setting: Option<zeroize::Zeroizing<Vec<u8>>>) -> Vec<[u8; 32]> {
    setting
        .as_deref()
        .map_or(&[][..], |v| v.as_slice())
        .chunks_exact(32)
        .filter_map(|k| k.try_into().ok())
        .collect()
}

impl Trust {
    /// Applies what the user changed since the configuration was written: the directories
    /// left, removed and added (stored). Called once, at start.
    pub async fn load_directory_changes(&self) -> Result<(), HostError> {
        *self.left.borrow_mut() = keys_of(
            self.storage
                .setting(crate::storage::LEFT_DIRECTORIES)
                .await?,
        );
        let changes: DirectoryChanges = match self
            .storage
            .setting(crate::storage::DIRECTORY_CHANGES)
            .await?
        {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| HostError::internal(format!("the stored directory changes: {e}")))?,
            None => DirectoryChanges::default(),
        };
        let mut links = self.links.borrow_mut();
        let mut scoped = self.scoped.borrow_mut();
        for list in [&mut *links, &mut *scoped] {
            list.retain(|l| {
                let gone = changes.removed.contains(&l.anchor.key.to_hex());
                if gone {
                    tracing::info!(directory = %l.name(), "a configured directory the user removed is not used");
                }
                !gone
            });
        }
        for a in changes.added {
            match crate::config::DirectoryAnchor::parse(&a.name, &a.address, &a.key) {
                Ok(anchor)
                    if !links
                        .iter()
                        .chain(scoped.iter())
                        .any(|l| l.anchor.name == anchor.name || l.anchor.key == anchor.key) =>
                {
                    let link = Rc::new(DirectoryLink::new(
                        anchor,
                        self.directory_config.socks5_proxy.clone(),
                    ));
                    match a.scoped {
                        // The configuration may have gained scoped ones since it was added.
                        true if scoped.len() >= crate::config::MAX_SCOPED_DIRECTORIES => {
                            tracing::warn!(directory = %a.name, "a scoped directory added with `directory add` is not used: the configuration names as many as a host may have");
                        }
                        true => scoped.push(link),
                        false => links.push(link),
                    }
                }
                Ok(_) => {
                    tracing::warn!(directory = %a.name, "a directory added with `directory add` is now configured too (by name or key); the configured one is used");
                }
                Err(e) => {
                    tracing::warn!(directory = %a.name, error = %e, "a stored directory does not read; skipped");
                }
            }
        }
        let quorum = self.directory_config.quorum;
        if links.len() < quorum {
            tracing::warn!(
                directories = links.len(),
                quorum,
                "fewer directories are in use than the quorum: no user can be looked up; lower the quorum or `smvsctl directory add` one"
            );
        }
        Ok(())
    }

    /// Stores which directories were added and which configured ones removed, given the
    /// links now in use.
    async fn store_directory_changes(&self) -> Result<(), HostError> {
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for (links, configured, scoped) in [
            (self.links(), &self.directory_config.directories, false),
            (
                self.scoped_links(),
                &self.directory_config.scoped_directories,
                true,
            ),
        ] {
            added.extend(
                links
                    .iter()
                    .filter(|l| !configured.contains(&l.anchor))
                    .map(|l| AddedDirectory {
                        name: l.anchor.name.clone(),
                        address: l.anchor.address.clone(),
                        key: l.anchor.key.to_hex(),
                        scoped,
                    }),
            );
            removed.extend(
                configured
                    .iter()
                    .filter(|c| !links.iter().any(|l| l.anchor.key == c.key))
                    .map(|c| c.key.to_hex()),
            );
        }
        let changes = DirectoryChanges { added, removed };
        let bytes = serde_json::to_vec(&changes).map_err(|e| HostError::internal(e.to_string()))?;
        self.storage
            .set_setting(crate::storage::DIRECTORY_CHANGES, bytes)
            .await?;
        Ok(())
    }

    /// `directory add NAME ADDRESS KEY`: uses one more directory from now on (and after a
    /// restart). It must answer now, presenting `key`, at an address of a kind this host
    /// connects to; a user registered at directories is registered there too (unless they
    /// left it before), and a name taken there refuses the add. Returns its entry.
    pub async fn add_directory(
        &self,
        name: &str,
        address: &str,
        key: &str,
        scoped: bool,
    ) -> Result<DirectoryEntry, HostError> {
        let anchor = crate::config::DirectoryAnchor::parse(name, address, key)
            .map_err(HostError::bad_request)?;
        let parsed = HostAddress::parse(&anchor.address).map_err(|_| {
            HostError::bad_request(format!(
                "directory {name}: {:?} is not HOST:PORT",
                anchor.address.chars().take(64).collect::<String>()
            ))
        })?;
        if let Some(kind) = parsed.kind() {
            if !super::own_kind(&self.host_address).may_reach(kind) {
                return Err(HostError::bad_request(format!(
                    "directory {name}: its address is {}, and this host (published as {}) is not on such a network",
                    kind.describe(),
                    self.host_address
                )));
            }
        }
        // One change of the list at a time: each checks what the one before left.
        let _changing = self.directory_changes.lock().await;
        {
            let links = self.links.borrow();
            let scoped_now = self.scoped.borrow();
            if let Some(l) = links
                .iter()
                .chain(scoped_now.iter())
                .find(|l| l.anchor.name == anchor.name || l.anchor.key == anchor.key)
            {
                return Err(HostError::bad_request(format!(
                    "the directory {} is in use already (by that name or key)",
                    l.name()
                )));
            }
            if scoped && scoped_now.len() >= crate::config::MAX_SCOPED_DIRECTORIES {
                return Err(HostError::bad_request(format!(
                    "{} scoped directories are in use; remove one first",
                    crate::config::MAX_SCOPED_DIRECTORIES
                )));
            }
            if !scoped && links.len() >= MAX_DIRECTORIES {
                return Err(HostError::bad_request(format!(
                    "{MAX_DIRECTORIES} directories are in use; remove one first"
                )));
            }
        }
        let link = Rc::new(DirectoryLink::new(
            anchor,
            self.directory_config.socks5_proxy.clone(),
        ));
        let left = self.left.borrow().contains(link.anchor.key.as_bytes());
        // Never registered at a scoped directory: it is someone else's name space.
        let registering = match self.registered() {
            Some(me) if !me.username.is_identity_address() && !left && !scoped => Some(me),
            _ => None,
        };
        match registering {
            // Registered there now; a name someone else holds there is refused.
            Some(me) => {
                let at = self.register_at(&link, &me.username, &me.identity);
                match tokio::time::timeout(DIRECTORY_TIMEOUT, at).await {
                    Err(_) => return Err(link.no_answer("registering there")),
                    Ok(Err(e)) => return Err(e),
                    Ok(Ok(_)) => {}
                }
            }
            // Only asked to answer: an address or key that is wrong fails here, not later.
            None => {
                let reach = link.client();
                match tokio::time::timeout(DIRECTORY_TIMEOUT, reach).await {
                    Err(_) => return Err(link.no_answer("connecting")),
                    Ok(Err(e)) => return Err(e),
                    Ok(Ok(_)) => {}
                }
            }
        }
        let list = if scoped { &self.scoped } else { &self.links };
        list.borrow_mut().push(link.clone());
        self.records.borrow_mut().clear();
        // Contacts' heads for the new directory are taken from their next envelopes on.
        self.heads_from.borrow_mut().clear();
        let stored = self.store_directory_changes().await;
        if stored.is_err() {
            // Not kept, so not used either.
            list.borrow_mut().retain(|l| !Rc::ptr_eq(l, &link));
        }
        // Again: a look-up that ran while the list was being stored answered from the old one.
        self.records.borrow_mut().clear();
        stored?;
        tracing::info!(directory = %link.name(), scoped, "added a directory");
        Ok(DirectoryEntry {
            scoped,
            ..self.entry(&link)
        })
    }

    /// `directory remove NAME`: stops using a directory, for look-ups and registration, from
    /// now on (and after a restart, even if the configuration names it).
    pub async fn remove_directory(&self, name: &str) -> Result<(), HostError> {
        let _changing = self.directory_changes.lock().await;
        // A scoped one: no quorum or registration of ours hangs on it. Its users' pinned
        // contacts stay; what waits for them waits until it is added again.
        let scoped = self.scoped_link(name);
        if let Some(link) = scoped {
            let at = self
                .scoped_links()
                .iter()
                .position(|l| Rc::ptr_eq(l, &link))
                .unwrap_or(0);
            self.scoped.borrow_mut().retain(|l| !Rc::ptr_eq(l, &link));
            self.records.borrow_mut().clear();
            let stored = self.store_directory_changes().await;
            if stored.is_err() {
                let mut now = self.scoped.borrow_mut();
                let at = at.min(now.len());
                now.insert(at, link);
            }
            // Again: a look-up that ran meanwhile may have cached a name of the one removed.
            self.records.borrow_mut().clear();
            stored?;
            tracing::info!(directory = %name, "removed a scoped directory");
            return Ok(());
        }
        let links = self.links();
        let link = links.iter().find(|l| l.name() == name).ok_or_else(|| {
            HostError::bad_request(format!(
                "no directory named {name} is in use (`smvsctl directory list`)"
            ))
        })?;
        let remaining = links.len() - 1;
        let quorum = self.directory_config.quorum;
        if remaining < quorum {
            return Err(HostError::bad_request(format!(
                "removing {name} would leave {remaining} directories, and {quorum} must agree on \
                 a user (lower the quorum in the configuration first)"
            )));
        }
        if let Some(me) = self
            .registered()
            .filter(|me| !me.username.is_identity_address())
        {
            // Another directory must hold this user's record (asked now: one where the name
            // was taken, or that lost the record, does not count).
            let left = self.left.borrow().clone();
            let others: Vec<&Rc<DirectoryLink>> = links
                .iter()
                .filter(|l| !Rc::ptr_eq(l, link) && !left.contains(l.anchor.key.as_bytes()))
                .collect();
            let asked = futures::future::join_all(others.iter().map(|l| {
                let asking = async {
                    let client = l.client().await?;
                    client
                        .lookup_for_owner(&me.username)
                        .await
                        .map_err(HostError::from)
                };
                tokio::time::timeout(DIRECTORY_TIMEOUT, asking)
            }))
            .await;
            let held = asked.into_iter().any(
                |answer| matches!(answer, Ok(Ok(record)) if record.user.identity == me.identity),
            );
            if !held {
                return Err(HostError::bad_request(format!(
                    "no other directory in use holds {}'s record now: removing {name} would \
                     leave them unregistered (add another and `smvsctl directory move` there \
                     first)",
                    me.username
                )));
            }
        }
        let at = links.iter().position(|l| Rc::ptr_eq(l, link)).unwrap_or(0);
        self.links.borrow_mut().retain(|l| !Rc::ptr_eq(l, link));
        self.records.borrow_mut().clear();
        if let Err(e) = self.store_directory_changes().await {
            // Not stored, so still in use, where it was.
            let mut now = self.links.borrow_mut();
            let at = at.min(now.len());
            now.insert(at, link.clone());
            return Err(e);
        }
        tracing::info!(directory = %name, "removed a directory");
        Ok(())
    }

    /// Every directory in use, the scoped ones last.
    pub fn directories(&self) -> Vec<DirectoryEntry> {
        let mut entries: Vec<DirectoryEntry> = self.links().iter().map(|l| self.entry(l)).collect();
        entries.extend(self.scoped_links().iter().map(|l| DirectoryEntry {
            scoped: true,
            ..self.entry(l)
        }));
        entries
    }

    fn entry(&self, link: &DirectoryLink) -> DirectoryEntry {
        DirectoryEntry {
            name: link.anchor.name.clone(),
            address: link.anchor.address.clone(),
            key: link.anchor.key.to_hex(),
            left: self.left.borrow().contains(link.anchor.key.as_bytes()),
            scoped: false,
        }
    }

    /// Notes (and stores) that our user left `link`'s directory.
    pub(super) async fn note_left(&self, link: &DirectoryLink) -> Result<(), HostError> {
        let keys = {
            let mut left = self.left.borrow_mut();
            let key = *link.anchor.key.as_bytes();
            if !left.contains(&key) {
                left.push(key);
            }
            left.concat()
        };
        tracing::info!(directory = %link.name(), "this host's user left this directory");
        self.storage
            .set_setting(crate::storage::LEFT_DIRECTORIES, keys)
            .await?;
        Ok(())
    }

    /// `directory move NAME`: registers at the directory `to` (if not yet), and
    /// leaves the first directory this user has not left yet (its home) with a statement the
    /// identity signs, which that directory serves in place of the record from then on:
    /// contacts who pinned us follow it there. Returns the name of the directory left.
    pub async fn move_directory(&self, to: &str) -> Result<String, HostError> {
        let _changing = self.directory_changes.lock().await;
        let me = self.me()?;
        let left = self.left.borrow().clone();
        let links = self.links();
        let home = links
            .iter()
            .find(|l| !left.contains(l.anchor.key.as_bytes()))
            .ok_or_else(|| HostError::bad_request("every directory in use has been left"))?;
        let target = links.iter().find(|l| l.name() == to).ok_or_else(|| {
            HostError::bad_request(format!(
                "no directory named {to} is in use (`smvsctl directory list`; `directory add` adds one)"
            ))
        })?;
        if Rc::ptr_eq(home, target) || left.contains(target.anchor.key.as_bytes()) {
            return Err(HostError::bad_request(format!(
                "{to} is the directory being left, or one left before"
            )));
        }
        match self.register_at(target, &me.username, &me.identity).await {
            Ok(_) => {}
            Err(e) => return Err(e),
        }
        let statement = self
            .keyguard
            .sign_directory_move(
                &me.username,
                &home.anchor.key,
                &target.anchor.key,
                &target.anchor.address,
            )
            .await?;
        let directory = home.client().await?;
        let key = home.anchor.key;
        let keyguard = self.keyguard.clone();
        let username = me.username.clone();
        let leaving = async {
            let session = directory
                .login_with(&me.username, |sealed| async move {
                    keyguard.open_login_token(&key, &username, &sealed).await
                })
                .await?;
            session.leave(&statement).await
        };
        match tokio::time::timeout(DIRECTORY_TIMEOUT, leaving).await {
            Err(_) => return Err(home.no_answer("leaving")),
            Ok(Err(e)) => {
                home.failed(&e);
                return Err(e.into());
            }
            Ok(Ok(())) => {}
        }
        tracing::info!(from = %home.name(), to = %target.name(), "moved to another directory");
        self.note_left(home).await?;
        Ok(home.name().to_owned())
    }
}
