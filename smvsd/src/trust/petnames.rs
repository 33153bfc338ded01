//! Petnames: the user's own names for identity addresses (`smvsctl petname add bob smvs:…`).
//!
//! An identity address is checkable but nobody's idea of a name. A petname is local to this
//! host (its devices all see it; no other host ever does) and stands for the address wherever
//! a device names a user: `send bob`, `history bob`, `verify bob`. It is resolved at the
//! command façade, so what is stored, sent and pinned is always the address itself.
//!
//! A petname never hides someone: it may not be the name of a contact this host knows (nor
//! the user's own), a name that is both (a contact took it at a directory later) is refused
//! until the user removes the petname or writes the address, and one address has at most one
//! petname. The list is one storage setting
//! (one write: never half of a change), loaded at start.

use std::collections::BTreeMap;

use smvs_schema::Username;

use super::Trust;
use crate::error::HostError;

/// How many petnames a host keeps.
pub const MAX_PETNAMES: usize = 4096;

/// A petname and the identity address it stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Petname {
    pub name: Username,
    pub address: Username,
}

impl Trust {
    /// Reads the stored petnames. Called once, at start.
    pub async fn load_petnames(&self) -> Result<(), HostError> {
        let stored: BTreeMap<String, String> =
            match self.storage.setting(crate::storage::PETNAMES).await? {
                Some(bytes) => serde_json::from_slice(&bytes)
                    .map_err(|e| HostError::internal(format!("the stored petnames: {e}")))?,
                None => BTreeMap::new(),
            };
        let mut petnames = self.petnames.borrow_mut();
        for (name, address) in stored {
            // The rules `add_petname` keeps, again: a stored list that breaks them (edited,
            // or damaged) must not send anyone's messages elsewhere.
            match (Username::parse(&name), Username::parse(&address)) {
                (Ok(name), Ok(address))
                    if !name.is_identity_address()
                        && smvs_crypto::parse_identity_address(address.as_str()).is_ok() =>
                {
                    petnames.insert(name, address);
                }
                _ => tracing::warn!("a stored petname breaks the rules; skipped"),
            }
        }
        Ok(())
    }

    async fn store_petnames(
        &self,
        petnames: &BTreeMap<Username, Username>,
    ) -> Result<(), HostError> {
        let plain: BTreeMap<&str, &str> = petnames
            .iter()
            .map(|(name, address)| (name.as_str(), address.as_str()))
            .collect();
        let bytes = serde_json::to_vec(&plain)
            .map_err(|e| HostError::internal(format!("petnames: {e}")))?;
        self.storage
            .set_setting(crate::storage::PETNAMES, bytes)
            .await?;
        Ok(())
    }

    /// The user a device meant by `name`: the address a petname stands for, else `name`.
    /// Refused when `name` is both a petname and the name of a contact this host knows (one
    /// who took that name at a directory after the petname was given): neither is guessed.
    pub async fn resolve_name(&self, name: Username) -> Result<Username, HostError> {
        let Some(address) = self.petnames.borrow().get(&name).cloned() else {
            return Ok(name);
        };
        if self.contact(&name).await?.is_some() {
            return Err(HostError::bad_request(format!(
                "{name} is both your petname for {address} and the name of a contact: write                  the address, or remove the petname (smvsctl petname remove {name})"
            )));
        }
        Ok(address)
    }

    /// Whether `name` is a petname here.
    pub fn is_petname(&self, name: &Username) -> bool {
        self.petnames.borrow().contains_key(name)
    }

    /// The petname the user gave `address`, if any.
    pub fn petname_of(&self, address: &Username) -> Option<Username> {
        if !address.is_identity_address() {
            return None;
        }
        self.petnames
            .borrow()
            .iter()
            .find(|(_, a)| *a == address)
            .map(|(name, _)| name.clone())
    }

    /// Every petname, by name.
    pub fn petnames(&self) -> Vec<Petname> {
        self.petnames
            .borrow()
            .iter()
            .map(|(name, address)| Petname {
                name: name.clone(),
                address: address.clone(),
            })
            .collect()
    }

    /// Names `address` (an identity address) `name` from now on, in place of any petname it
    /// had. Refused for a name that is itself an address, or that a contact or the user
    /// already goes by, or that names another address.
    pub async fn add_petname(
        &self,
        name: &Username,
        address: &Username,
    ) -> Result<Petname, HostError> {
        if name.is_identity_address() || name.scope().is_some() {
            return Err(HostError::bad_request(
                "a petname is a short name (3 to 32 of a-z, 0-9, '.', '_', '-'), not an address",
            ));
        }
        if !address.is_identity_address() {
            return Err(HostError::bad_request(format!(
                "{address} is not an identity address (smvs:…): petnames are for those; a \
                 directory's user already has a name"
            )));
        }
        smvs_crypto::parse_identity_address(address.as_str())
            .map_err(|e| HostError::bad_request(format!("{address}: {e}")))?;
        // One change at a time: the list is read, checked, changed and stored whole.
        let _changing = self.petname_changes.lock().await;
        if let Some(me) = self.registered() {
            if me.username == *name {
                return Err(HostError::bad_request(format!(
                    "{name} is your own name: pick another petname"
                )));
            }
            if me.username == *address {
                return Err(HostError::bad_request(
                    "that is your own address: petnames are for others",
                ));
            }
        }
        if self.contact(name).await?.is_some() {
            return Err(HostError::bad_request(format!(
                "{name} is already a contact's name here: pick another petname, so that \
                 `send {name}` keeps meaning them"
            )));
        }
        let mut next = self.petnames.borrow().clone();
        if let Some(other) = next.get(name) {
            if other != address {
                return Err(HostError::bad_request(format!(
                    "{name} is already the petname of {other}: remove it first \
                     (smvsctl petname remove {name})"
                )));
            }
        }
        next.retain(|_, a| a != address);
        if next.len() >= MAX_PETNAMES {
            return Err(HostError::bad_request(format!(
                "at most {MAX_PETNAMES} petnames are kept"
            )));
        }
        next.insert(name.clone(), address.clone());
        self.store_petnames(&next).await?;
        *self.petnames.borrow_mut() = next;
        tracing::info!("a petname was given");
        Ok(Petname {
            name: name.clone(),
            address: address.clone(),
        })
    }

    /// Forgets the petname `name` (the contact stays, under its address).
    pub async fn remove_petname(&self, name: &Username) -> Result<(), HostError> {
        let _changing = self.petname_changes.lock().await;
        let mut next = self.petnames.borrow().clone();
        if next.remove(name).is_none() {
            return Err(HostError::new(
                smvs_schema::ErrorCode::UnknownUser,
                format!("{name} is not a petname here (smvsctl petname list)"),
            ));
        }
        self.store_petnames(&next).await?;
        *self.petnames.borrow_mut() = next;
        tracing::info!("a petname was removed");
        Ok(())
    }
}
