//! Linked devices: the user's machines that use this host over the device port.
//!
//! ```text
//!  devices link ──► Devices: a pending code (memory only, 10 min, 3 runs) ──► printed once
//!  new device ──device port──► pair(nameplate, SPAKE2) ─► confirm(tag) ──► paired (sealed list)
//!  paired device ──device port──► authorize(key) ──► the local API
//!  devices revoke ──► removed from the list, its open links cut
//! ```
//!
//! Owns: the list of paired devices (one sealed settings row, written through on every
//! change), the pending pairing codes (only in memory: a code is never logged or stored), and
//! a cut-off switch for each open device link. Serializes: a single-threaded object on the main
//! arbiter; each method call is one step, and no step awaits while holding a borrow.
//!
//! A code is `NNN-DDDD-DDDD`: a nameplate (which pending code this is, sent in the clear) and
//! eight secret digits, the SPAKE2 password. Each `pair` call spends one of its three runs,
//! right or wrong, so an attacker gets three guesses at 10^8 per code; a confirmed pairing or
//! the third run burns it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use smvs_crypto::{AgreementPublicKey, Pairing, PairingKey, PairingRole, Zeroizing};
use tokio::sync::watch;

use crate::error::HostError;
use crate::events::Events;
use crate::model::{now_ms, HostEvent};
use crate::storage::Storage;

/// How long a pairing code is good for, unless configured otherwise.
pub const CODE_LIFETIME: Duration = Duration::from_secs(600);
/// Pairing runs one code allows.
pub const CODE_RUNS: u8 = 3;
/// Codes pending at once.
const MAX_PENDING: usize = 16;
/// The least time between two pairing runs, host-wide: a stranger cannot spend every code's
/// runs in a burst (and a person typing a code never notices).
const PAIR_INTERVAL: Duration = Duration::from_millis(500);
/// The most devices one host pairs.
pub const MAX_DEVICES: usize = 64;
/// Settings row of the device list.
const SETTING: &str = "devices";

/// A paired device, as stored (sealed) and listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Device {
    pub name: String,
    /// Its Noise static key, hex.
    pub key: String,
    /// May link and revoke devices.
    pub admin: bool,
    /// Unix ms.
    pub paired_at: i64,
    /// Unix ms of the last authorized connection; 0 before the first.
    pub last_seen: i64,
    pub last_address: String,
}

impl Device {
    /// What a person compares: the key's BLAKE2b fingerprint, in groups.
    pub fn fingerprint(&self) -> String {
        key_fingerprint(&self.key)
    }
}

/// A short, readable fingerprint of a Noise key given in hex (empty for a malformed one,
/// which the stored list never holds).
pub fn key_fingerprint(hex_key: &str) -> String {
    hex::decode(hex_key)
        .ok()
        .and_then(|k| AgreementPublicKey::from_bytes(&k).ok())
        .and_then(|k| smvs_crypto::link_key_fingerprint(&k).ok())
        .unwrap_or_default()
}

/// Who owns a linked device's event cursors (see `events::Cursor`): its key.
pub fn cursor_owner(hex_key: &str) -> String {
    format!("device:{hex_key}")
}

/// A code that was printed and not yet used.
struct PendingCode {
    /// Which code this is: a nameplate may be reused once its code is gone, and a run must
    /// only ever use up its own code.
    id: u64,
    secret: Zeroizing<String>,
    name: String,
    expires: Instant,
    runs_left: u8,
    /// The device it pairs becomes an admin: only for a code made by the host's own user (the
    /// socket or D-Bus) while no admin device exists.
    grants_admin: bool,
}

/// A pairing run between `pair` and `confirm` on one link.
pub struct PairingRun {
    nameplate: String,
    code: u64,
    name: String,
    key: PairingKey,
    device: AgreementPublicKey,
}

/// What `devices link` prints.
pub struct LinkCode {
    /// The whole code, to read out: `NNN-DDDD-DDDD`.
    pub code: Zeroizing<String>,
    pub expires_at: i64,
    /// Where the device port listens.
    pub device_address: String,
    /// Of the host's device-port key, which the new device pins.
    pub host_fingerprint: String,
}

pub struct Devices {
    storage: Storage,
    /// The user's other devices hear of every device linked or revoked.
    events: Events,
    list: RefCell<Vec<Device>>,
    pending: RefCell<HashMap<String, PendingCode>>,
    /// Per device key: a switch each open link watches; flipped on revoke.
    cut: RefCell<HashMap<String, watch::Sender<bool>>>,
    /// Open authorized links per device key.
    open: RefCell<HashMap<String, usize>>,
    /// The host's device-port key, for the pairing tags.
    host_key: AgreementPublicKey,
    /// Where the device port listens (known once it is bound).
    address: RefCell<String>,
    /// When the last pairing run started.
    last_pair: std::cell::Cell<Option<Instant>>,
    code_lifetime: Duration,
}

fn not_paired() -> HostError {
    HostError::new(
        smvs_schema::ErrorCode::NotAllowed,
        "this device is not paired with this host (or was revoked)",
    )
}

fn pairing_failed() -> HostError {
    // One answer for every failed code: wrong, used, expired or unknown look alike.
    HostError::new(
        smvs_schema::ErrorCode::NotAllowed,
        "pairing failed: the code is wrong, used up or expired",
    )
}

impl Devices {
    pub async fn load(
        storage: Storage,
        events: Events,
        host_key: AgreementPublicKey,
        code_lifetime: Duration,
    ) -> Result<Devices, HostError> {
        let list = match storage.setting(SETTING).await? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| HostError::internal(format!("the stored device list: {e}")))?,
            None => Vec::new(),
        };
        Ok(Devices {
            storage,
            events,
            list: RefCell::new(list),
            pending: RefCell::default(),
            cut: RefCell::default(),
            open: RefCell::default(),
            host_key,
            address: RefCell::default(),
            last_pair: std::cell::Cell::new(None),
            code_lifetime,
        })
    }

    /// Where the device port listens, for the codes `link` prints.
    pub fn set_address(&self, address: String) {
        *self.address.borrow_mut() = address;
    }

    async fn save(&self) -> Result<(), HostError> {
        let bytes = serde_json::to_vec(&*self.list.borrow()).map_err(HostError::internal)?;
        self.storage.set_setting(SETTING, bytes).await?;
        Ok(())
    }

    /// The paired devices, with whether each has a link open now.
    pub fn list(&self) -> Vec<(Device, bool)> {
        let open = self.open.borrow();
        self.list
            .borrow()
            .iter()
            .map(|d| (d.clone(), open.get(&d.key).is_some_and(|n| *n > 0)))
            .collect()
    }

    /// Makes a pairing code for a device to be called `name`. `local`: asked for by the host's
    /// own user (the socket or D-Bus) rather than by a linked device.
    pub fn link(&self, name: &str, local: bool) -> Result<LinkCode, HostError> {
        check_name(name)?;
        if self.list.borrow().iter().any(|d| d.name == name) {
            return Err(HostError::bad_request(format!(
                "a device named {name} is already paired; revoke it or choose another name"
            )));
        }
        if self.list.borrow().len() >= MAX_DEVICES {
            return Err(HostError::bad_request(format!(
                "this host already has {MAX_DEVICES} devices; revoke one first"
            )));
        }
        if self.address.borrow().is_empty() {
            return Err(HostError::bad_request(
                "this host has no device port (--device-listen); a device cannot reach it",
            ));
        }
        let mut pending = self.pending.borrow_mut();
        pending.retain(|_, p| p.expires > Instant::now() && p.runs_left > 0);
        if pending.len() >= MAX_PENDING {
            return Err(HostError::bad_request(
                "too many pairing codes are pending; use one or wait for them to expire",
            ));
        }
        let nameplate = loop {
            let r = u16::from_le_bytes(smvs_crypto::random_array::<2>());
            let candidate = format!("{}", 100 + u32::from(r) % 900);
            if !pending.contains_key(&candidate) {
                break candidate;
            }
        };
        let digits = smvs_crypto::random_array::<8>();
        let secret: String = digits
            .iter()
            .enumerate()
            .flat_map(|(i, b)| {
                let digit = char::from(b'0' + b % 10);
                if i == 4 {
                    vec!['-', digit]
                } else {
                    vec![digit]
                }
            })
            .collect();
        // `b % 10` is biased by 6/256 towards 0..5; the code keeps almost 26.6 bits.
        let code = Zeroizing::new(format!("{nameplate}-{secret}"));
        pending.insert(
            nameplate,
            PendingCode {
                id: u64::from_le_bytes(smvs_crypto::random_array::<8>()),
                grants_admin: local && !self.list.borrow().iter().any(|d| d.admin),
                secret: Zeroizing::new(secret),
                name: name.to_owned(),
                expires: Instant::now() + self.code_lifetime,
                runs_left: CODE_RUNS,
            },
        );
        let lifetime = i64::try_from(self.code_lifetime.as_millis()).unwrap_or(i64::MAX);
        Ok(LinkCode {
            code,
            expires_at: now_ms().saturating_add(lifetime),
            device_address: self.address.borrow().clone(),
            host_fingerprint: key_fingerprint(&self.host_key.to_hex()),
        })
    }

    /// Step one of pairing on a link whose device key is `device`: spends one run of the code
    /// and answers with the host's SPAKE2 message and tag.
    pub fn pair(
        &self,
        device: AgreementPublicKey,
        nameplate: &str,
        name: &str,
        message: &[u8],
    ) -> Result<(PairingRun, Vec<u8>, Vec<u8>), HostError> {
        let now = Instant::now();
        if self
            .last_pair
            .get()
            .is_some_and(|at| now.duration_since(at) < PAIR_INTERVAL)
        {
            // Not a try at any code: nothing is spent.
            return Err(HostError::new(
                smvs_schema::ErrorCode::Busy,
                "another pairing is under way; try again in a moment",
            ));
        }
        self.last_pair.set(Some(now));
        let mut pending = self.pending.borrow_mut();
        let Some(code) = pending.get_mut(nameplate) else {
            return Err(pairing_failed());
        };
        if code.expires <= Instant::now() || code.runs_left == 0 {
            pending.remove(nameplate);
            return Err(pairing_failed());
        }
        code.runs_left -= 1;
        let name = if name.is_empty() {
            code.name.clone()
        } else {
            check_name(name)?;
            name.to_owned()
        };
        // A code whose runs are spent stays until its last run confirms or the next `pair`
        // finds it spent.
        let (run, ours) = Pairing::start(
            PairingRole::Host,
            nameplate.as_bytes(),
            code.secret.as_bytes(),
        );
        let key = run
            .finish(message)
            .map_err(|e| HostError::bad_request(e.to_string()))?;
        let tag = key
            .tag(PairingRole::Host, &self.host_key, &device)
            .map_err(HostError::internal)?;
        Ok((
            PairingRun {
                nameplate: nameplate.to_owned(),
                code: code.id,
                name,
                key,
                device,
            },
            ours,
            tag,
        ))
    }

    /// Step two: the device's tag. On success the device is paired and the code used up.
    pub async fn confirm(&self, run: PairingRun, tag: &[u8]) -> Result<Device, HostError> {
        run.key
            .check(PairingRole::Device, &self.host_key, &run.device, tag)
            .map_err(|_| pairing_failed())?;
        let key = run.device.to_hex();
        if self
            .list
            .borrow()
            .iter()
            .any(|d| d.name == run.name || d.key == key)
        {
            return Err(HostError::bad_request(format!(
                "a device named {} (or with this key) is already paired",
                run.name
            )));
        }
        // This run's own code, still pending and not expired; it is used up now even if
        // storing fails below: a code works once.
        let grants_admin = {
            let mut pending = self.pending.borrow_mut();
            match pending.get(&run.nameplate) {
                Some(code) if code.id == run.code && code.expires > Instant::now() => {
                    let grants_admin = code.grants_admin;
                    pending.remove(&run.nameplate);
                    grants_admin
                }
                // Expired, or burnt by other runs (or revoked) since step one.
                _ => return Err(pairing_failed()),
            }
        };
        let device = {
            let mut list = self.list.borrow_mut();
            let device = Device {
                name: run.name,
                key,
                // The first device the host's own user links manages the others; a device
                // linked by a device never does.
                admin: grants_admin && !list.iter().any(|d| d.admin),
                paired_at: now_ms(),
                last_seen: 0,
                last_address: String::new(),
            };
            list.push(device.clone());
            device
        };
        if let Err(e) = self.save().await {
            self.list.borrow_mut().retain(|d| d.key != device.key);
            return Err(e);
        }
        self.events.publish(HostEvent::DeviceLinked {
            name: device.name.clone(),
        });
        Ok(device)
    }

    /// Whether `key` may use the API: its device, and a switch that flips when it is revoked.
    /// Counts the link as open until [`DeviceLinkGuard`] is dropped.
    pub fn authorize(
        self: &Rc<Self>,
        key: &AgreementPublicKey,
        from: SocketAddr,
    ) -> Result<(Device, DeviceLinkGuard), HostError> {
        let hex_key = key.to_hex();
        let device = {
            let mut list = self.list.borrow_mut();
            let Some(device) = list.iter_mut().find(|d| d.key == hex_key) else {
                return Err(not_paired());
            };
            device.last_seen = now_ms();
            device.last_address = from.to_string();
            device.clone()
        };
        let cut = self
            .cut
            .borrow_mut()
            .entry(hex_key.clone())
            .or_insert_with(|| watch::channel(false).0)
            .subscribe();
        *self.open.borrow_mut().entry(hex_key.clone()).or_insert(0) += 1;
        // Last seen is kept, but a failed write of it is no reason to refuse the device.
        let me = self.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = me.save().await {
                tracing::warn!(error = %e, "could not record when a device was last seen");
            }
        });
        Ok((
            device,
            DeviceLinkGuard {
                devices: self.clone(),
                key: hex_key,
                cut,
            },
        ))
    }

    /// Removes the device called `name` and cuts its open links at once.
    pub async fn revoke(&self, name: &str) -> Result<Device, HostError> {
        let removed = {
            let mut list = self.list.borrow_mut();
            let Some(at) = list.iter().position(|d| d.name == name) else {
                return Err(HostError::new(
                    smvs_schema::ErrorCode::NotFound,
                    format!("no device is called {name}"),
                ));
            };
            list.remove(at)
        };
        if let Some(cut) = self.cut.borrow_mut().remove(&removed.key) {
            let _ = cut.send(true);
        }
        // Codes still pending may have been made by the revoked device (a stolen laptop):
        // none of them may be used any more.
        self.pending.borrow_mut().clear();
        if let Err(e) = self.save().await {
            // Not revoked on disk: put it back so the list says the truth. (Its links are cut
            // all the same; it may connect again.)
            self.list.borrow_mut().push(removed);
            return Err(e);
        }
        // Where it was in the event log goes too: nothing is kept for it any more.
        if let Err(e) = self
            .storage
            .forget_cursors(cursor_owner(&removed.key))
            .await
        {
            tracing::warn!(error = %e, "a revoked device's event cursors could not be deleted");
        }
        self.events.publish(HostEvent::DeviceRevoked {
            name: removed.name.clone(),
        });
        Ok(removed)
    }
}

/// An open, authorized device link; dropping it counts it closed.
pub struct DeviceLinkGuard {
    devices: Rc<Devices>,
    key: String,
    /// Becomes true when the device is revoked.
    pub cut: watch::Receiver<bool>,
}

impl Drop for DeviceLinkGuard {
    fn drop(&mut self) {
        if let Some(n) = self.devices.open.borrow_mut().get_mut(&self.key) {
            *n = n.saturating_sub(1);
        }
    }
}

fn check_name(name: &str) -> Result<(), HostError> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if ok {
        Ok(())
    } else {
        Err(HostError::bad_request(
            "a device name is 1 to 32 letters, digits, '-', '_' or '.'",
        ))
    }
}
