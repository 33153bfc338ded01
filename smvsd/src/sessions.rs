//! The session-key cache: the keys of session v1 shared with each contact's identity.
//!
//! Owns: one [`SessionKeys`] per contact, derived through keyguard the first time they are
//! needed (keyguard stays off the per-message path), and dropped when the contact's pinned
//! identity changes. Anyone may ask for keys; only [`Sessions::forget`] removes them.
//! Serializes: nothing needs to: two concurrent first uses derive the same keys twice and the
//! second insert wins, which is harmless. No borrow is held across the keyguard call.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use smvs_crypto::IdentityBundle;
use smvs_schema::Username;

use crate::error::HostError;
use crate::guard::Guard;
use crate::session::{self, SessionKeys};

pub struct Sessions {
    keyguard: Rc<Guard>,
    keys: RefCell<HashMap<Username, (IdentityBundle, Rc<SessionKeys>)>>,
}

impl Sessions {
    pub fn new(keyguard: Rc<Guard>) -> Sessions {
        Sessions {
            keyguard,
            keys: RefCell::new(HashMap::new()),
        }
    }

    /// The session keys between our identity `me` and `peer`'s pinned `identity`.
    pub async fn keys(
        &self,
        me: &IdentityBundle,
        peer: &Username,
        identity: &IdentityBundle,
    ) -> Result<Rc<SessionKeys>, HostError> {
        if let Some((pinned, keys)) = self.keys.borrow().get(peer) {
            if pinned == identity {
                return Ok(keys.clone());
            }
        }
        let salt = session::agreement_salt(me, identity);
        let shared = self
            .keyguard
            .derive_shared_key(&identity.agreement_key, &salt, session::AGREEMENT_INFO)
            .await?;
        let keys = Rc::new(SessionKeys::from_shared(&shared).map_err(HostError::internal)?);
        self.keys
            .borrow_mut()
            .insert(peer.clone(), (*identity, keys.clone()));
        Ok(keys)
    }

    /// Drops the keys of `peer` (its pinned identity changed).
    pub fn forget(&self, peer: &Username) {
        self.keys.borrow_mut().remove(peer);
    }
}
