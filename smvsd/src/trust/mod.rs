//! Trust: who we are, what the directory says about others, and which identity we pinned for
//! each of them.
//!
//! ```text
//!  commands / outbox / inbox / calls ──► Trust ──► directory (signed records, cached briefly)
//!                                          └────► storage (contacts, sealed)
//! ```
//!
//! Owns: this host's user ([`Me`]), the directory link, the record cache, the contacts cache
//! (written through to storage), and which changed key's safety number the user was shown.
//! Nobody else changes a contact: block, accept a request, accept a changed key and pin on
//! first contact are all methods here, so the rules are written once:
//! - trust on first use pins the identity the directory shows;
//! - a different identity later is recorded as pending, raises `KeyChanged` once, and every
//!   send to that contact is refused until the user accepts it (after seeing its safety number);
//! - a blocked contact is refused before anything of theirs is decrypted;
//! - a contact whose host address is of a local kind (loopback, private, …) is not connected
//!   to unless this host's own address is of that same kind ([`may_connect`]): whoever
//!   connects to a contact's host (the outbox, the call manager) gets it through
//!   [`Trust::trusted_contact`], which applies the rule; only the inbox, which answers on the
//!   link the peer opened, uses [`Trust::pinned_contact`], which does not.
//!
//! Serializes: it lives on the main thread; each method finishes its cache change before it
//! awaits storage, so a reader that runs meanwhile sees the new state (storage runs writes in
//! the order they are queued, so the disk ends in the same state). No borrow is held across an
//! `.await`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use smvs_crypto::{AgreementKeyPair, IdentityBundle};
use smvs_directory::VerifiedRecord;
use smvs_schema::canonical::TRANSPORT_CERTIFICATE_LIFETIME_MS;
use smvs_schema::{AddressKind, ErrorCode, HostAddress, Username};

use crate::config::DirectoryAnchor;
use crate::error::HostError;
use crate::events::Events;
use crate::guard::Guard;
use crate::model::{Contact, Evidence, HostEvent, Status};
use crate::storage::Storage;

mod dht;
mod directories;
mod judge;
mod log_heads;
mod own_directories;
mod own_log;
mod petnames;

pub use dht::{DhtNode, DHT_ANSWER};
use directories::{equivocation, lookup_all, DirectoryLink};
pub use directories::{Answers, DIRECTORY_TIMEOUT};
pub use judge::{judge, key_changed, may_connect, may_send, own_kind, Judgement};
pub use own_directories::DirectoryEntry;
pub use petnames::Petname;
/// How long a directory answer is reused before asking again. Records are signed, so a cached
/// one is as good as a new one until the user moves or changes keys, which is noticed sooner
/// when it matters: a link that presents another key, or a delivery that failed, asks again
/// (see [`Trust::may_refresh`]). Look-ups are few, so the directory learns little about who
/// talks to whom.
const RECORD_TTL: Duration = Duration::from_secs(600);
/// The least time between two directory look-ups of one user, however often a peer or a
/// failing delivery asks for a fresh one.
const MIN_REFRESH: Duration = Duration::from_secs(5);
/// How far ahead of our clock a contact's address statement may be dated.
const MAX_CLOCK_AHEAD_MS: i64 = 5 * 60 * 1000;
/// The least time between two address changes a contact's host announces (a host restarting
/// twice in a row is caught up by the directory).
const ADDRESS_CHANGE_EVERY: Duration = Duration::from_secs(30);
/// A directory a contact moved to: its key and address.
type FollowedDirectory = ([u8; 32], String);

/// How many directories that contacts moved to are kept linked.
const MAX_FOLLOWED: usize = 64;
/// The least time between two alarms of one kind about one contact.
const ALARM_REPEAT: Duration = Duration::from_secs(600);
/// How often smvsd checks whether its transport certificate is due for renewal (besides at
/// start). Renewal is due with half the lifetime (15 days) left, so an hour is plenty.
pub const RENEW_CHECK: Duration = Duration::from_secs(3600);

/// This host's own user, once registered.
#[derive(Debug, Clone)]
pub struct Me {
    pub username: Username,
    pub identity: IdentityBundle,
}

/// The directories, which keys they must present, and how to reach them.
#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// The default directory first.
    pub directories: Vec<DirectoryAnchor>,
    /// Directories asked only for names scoped to them (`alice@NAME`).
    pub scoped_directories: Vec<DirectoryAnchor>,
    /// How many must agree on an identity.
    pub quorum: usize,
    /// Reach them through this SOCKS5 proxy, as other hosts are reached.
    pub socks5_proxy: Option<String>,
    /// The address this host publishes there.
    pub host_address: HostAddress,
    /// Publish session v2's keys (the X-Wing key and keyguard's current prekey) there.
    pub session_keys: bool,
}

/// What the user decided about a contact's pending key, if anything (`verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyDecision {
    /// Only look: show the safety number(s).
    Look,
    /// Take the pending key (`--accept-new-key`).
    Accept,
    /// Stay with the pinned key and refuse the pending one (`--keep-key`).
    Keep,
}

/// What `verify` found.
#[derive(Debug, Clone)]
pub struct Verification {
    pub safety_number: String,
    pub transcript_hash: String,
    pub key_changed: bool,
    pub accepted: bool,
    /// Set while the directories disagree about the contact: which showed which key.
    pub alarm: Option<String>,
    /// While a change is pending, the safety number of the identity pinned before it (the
    /// one `--keep-key` keeps); `safety_number` is the pending one's.
    pub pinned_safety_number: Option<String>,
    /// The signed record the pinned identity came from, to show others.
    pub evidence: Option<Evidence>,
    /// The session version in use with the contact (filled in by the sessions owner).
    pub session_version: u16,
}

pub struct Trust {
    directory_config: DirectoryConfig,
    /// One link per directory, in the configured order (the default one first), then those
    /// added with `directory add`; changed only by [`own_directories`].
    links: RefCell<Vec<Rc<DirectoryLink>>>,
    /// One link per scoped directory (`alice@NAME`), in the configured order, then those
    /// added with `directory add --scoped`; changed only by [`own_directories`].
    scoped: RefCell<Vec<Rc<DirectoryLink>>>,
    /// The host's Noise key: certified at registration. Directory links never present it
    /// (each shows a throwaway key, see [`directories`]).
    transport: Rc<AgreementKeyPair>,
    /// The address this host publishes: what [`may_connect`] compares a contact's with.
    host_address: HostAddress,
    keyguard: Rc<Guard>,
    storage: Storage,
    events: Events,
    me: RefCell<Option<Me>>,
    /// Answers and contacts are shared (`Rc`), not copied, with whoever asks: every arriving
    /// envelope asks for both, and each holds signed records of a few kilobytes.
    records: RefCell<HashMap<Username, (Rc<Answers>, Instant)>>,
    contacts: RefCell<HashMap<Username, Rc<Contact>>>,
    /// The changed identity each contact's safety number was last shown for: only that
    /// identity may be accepted, so a key that changes again between `verify` and
    /// `verify --accept-new-key` is not accepted unseen.
    shown_pending: RefCell<HashMap<Username, IdentityBundle>>,
    /// When each kind of directory alarm was last raised for each contact.
    alarms: RefCell<HashMap<(Username, &'static str), Instant>>,
    /// Directories contacts moved to (by key and address), reached because their identity
    /// said so (at most [`MAX_FOLLOWED`]).
    followed: RefCell<HashMap<FollowedDirectory, Rc<DirectoryLink>>>,
    /// The keys of the directories this host's user left (`directory move`): asked about
    /// others still, never registered with again.
    left: RefCell<Vec<[u8; 32]>>,
    /// This host's node in the hosts' DHT, when it is in one.
    dht: Option<Rc<DhtNode>>,
    /// What this host last put in the DHT.
    published: RefCell<Option<dht::DhtRecord>>,
    /// Held while the list of directories changes (`directory add|remove|move`).
    directory_changes: tokio::sync::Mutex<()>,
    /// The user's petnames for identity addresses (petname to address).
    petnames: RefCell<std::collections::BTreeMap<Username, Username>>,
    /// Held while the petnames change.
    petname_changes: tokio::sync::Mutex<()>,
    /// The key log heads each contact's host passed on last (see `log_heads`): the same again
    /// is not news, and costs no signature check.
    heads_from: RefCell<HashMap<Username, Vec<smvs_directory::transparency::LogHead>>>,
}

impl Trust {
    pub fn new(
        directory_config: DirectoryConfig,
        transport: Rc<AgreementKeyPair>,
        host_address: HostAddress,
        keyguard: Rc<Guard>,
        storage: Storage,
        events: Events,
        me: Option<Me>,
    ) -> Trust {
        let links_to = |anchors: &[DirectoryAnchor]| -> Vec<Rc<DirectoryLink>> {
            anchors
                .iter()
                .map(|anchor| {
                    Rc::new(DirectoryLink::new(
                        anchor.clone(),
                        directory_config.socks5_proxy.clone(),
                    ))
                })
                .collect()
        };
        let links = links_to(&directory_config.directories);
        let scoped = links_to(&directory_config.scoped_directories);
        Trust {
            links: RefCell::new(links),
            scoped: RefCell::new(scoped),
            directory_config,
            transport,
            host_address,
            keyguard,
            storage,
            events,
            me: RefCell::new(me),
            records: RefCell::new(HashMap::new()),
            contacts: RefCell::new(HashMap::new()),
            shown_pending: RefCell::new(HashMap::new()),
            alarms: RefCell::new(HashMap::new()),
            followed: RefCell::new(HashMap::new()),
            left: RefCell::new(Vec::new()),
            dht: None,
            published: RefCell::new(None),
            directory_changes: tokio::sync::Mutex::new(()),
            petnames: RefCell::new(std::collections::BTreeMap::new()),
            petname_changes: tokio::sync::Mutex::new(()),
            heads_from: RefCell::new(HashMap::new()),
        }
    }

    /// In the hosts' DHT through `node`.
    pub fn with_dht(mut self, node: Option<Rc<DhtNode>>) -> Trust {
        self.dht = node;
        self
    }

    pub fn me(&self) -> Result<Me, HostError> {
        self.me.borrow().clone().ok_or_else(|| {
            HostError::new(
                ErrorCode::NotRegistered,
                "this host has no user yet; run `smvsctl register NAME`",
            )
        })
    }

    /// This host's user, if registered.
    pub fn registered(&self) -> Option<Me> {
        self.me.borrow().clone()
    }

    /// The default directory's address (empty for a host with none, in the DHT).
    pub fn directory_address(&self) -> String {
        self.links
            .borrow()
            .first()
            .map_or_else(String::new, |l| l.anchor.address.clone())
    }

    /// How many directories must agree on an identity (at least one: a host that started
    /// with none may have added some).
    fn quorum(&self) -> usize {
        self.directory_config.quorum.max(1)
    }

    /// The directories' links as they are now (a copy: the list may change while the caller
    /// awaits).
    fn links(&self) -> Vec<Rc<DirectoryLink>> {
        self.links.borrow().clone()
    }

    /// This host's DHT node, when it is in the hosts' DHT.
    pub fn dht(&self) -> Option<&Rc<DhtNode>> {
        self.dht.as_ref()
    }

    /// The kind of network this host is on ([`own_kind`] of its published address): the
    /// addresses a contact's host name resolves to must be reachable from it.
    pub fn own_kind(&self) -> AddressKind {
        own_kind(&self.host_address)
    }

    // ----- contacts -----

    /// The stored contact for `peer` (cached; the cache is written through).
    pub async fn contact(&self, peer: &Username) -> Result<Option<Rc<Contact>>, HostError> {
        if let Some(c) = self.contacts.borrow().get(peer) {
            return Ok(Some(c.clone()));
        }
        let stored = self.storage.contact(peer).await?.map(Rc::new);
        if let Some(c) = &stored {
            self.contacts.borrow_mut().insert(peer.clone(), c.clone());
        }
        Ok(stored)
    }

    pub async fn contacts(&self) -> Result<Vec<Contact>, HostError> {
        Ok(self.storage.contacts().await?)
    }

    /// Stores `contact`; the cache then holds it as given (an `Rc` is shared, not copied).
    async fn put_contact(&self, contact: impl Into<Rc<Contact>>) -> Result<(), HostError> {
        let contact: Rc<Contact> = contact.into();
        let name = contact.username.clone();
        // The cache first: a reader that runs while the write is on its way must see the new
        // state (a block in progress must not be overwritten by a stale copy).
        let before = self
            .contacts
            .borrow_mut()
            .insert(name.clone(), contact.clone());
        if let Err(e) = self.storage.put_contact(Contact::clone(&contact)).await {
            let mut cache = self.contacts.borrow_mut();
            match before {
                Some(old) => cache.insert(name, old),
                None => cache.remove(&name),
            };
            return Err(e.into());
        }
        Ok(())
    }

    /// Refuses sending to a blocked contact, one whose changed key is not accepted yet, or one
    /// whose host address this host does not connect to ([`may_connect`]).
    pub async fn check_can_send(&self, to: &Username) -> Result<(), HostError> {
        let contact = self.contact(to).await?;
        may_send(to, contact.as_deref())?;
        match contact {
            Some(contact) => may_connect(&self.host_address, to, &contact.host_address),
            None => Ok(()),
        }
    }

    /// Writing to (or calling) someone who wrote first in contacts-only mode accepts them:
    /// their held messages become ordinary received ones.
    pub async fn accept_request(&self, peer: &Username) -> Result<(), HostError> {
        let Some(contact) = self.contact(peer).await? else {
            return Ok(());
        };
        if !contact.request {
            return Ok(());
        }
        let mut contact = Rc::unwrap_or_clone(contact);
        contact.request = false;
        self.put_contact(contact).await?;
        let released = self.storage.release_held(peer).await?;
        tracing::debug!(peer = %peer, released = released.len(), "accepted a message request");
        for id in released {
            self.events.publish(HostEvent::MessageStatus {
                id,
                peer: peer.clone(),
                status: Status::Received,
            });
        }
        Ok(())
    }

    /// Marks `peer` as a message request (contacts-only mode), if it is not one already.
    pub async fn mark_request(&self, contact: &mut Rc<Contact>) -> Result<(), HostError> {
        if !contact.request {
            Rc::make_mut(contact).request = true;
            self.put_contact(contact.clone()).await?;
        }
        Ok(())
    }

    /// `block USER` / `unblock USER`: blocking pins the user's current key, so the block holds
    /// for that key even if they never wrote before.
    pub async fn set_blocked(&self, peer: &Username, blocked: bool) -> Result<(), HostError> {
        let mut contact = match self.contact(peer).await? {
            Some(c) => Rc::unwrap_or_clone(c),
            // Pinned now, even while its key is in question: the block holds either way.
            None => match self.judged_contact(peer, true, false, false).await {
                Ok((contact, _)) => Rc::unwrap_or_clone(contact),
                Err(e)
                    if matches!(
                        e.code,
                        ErrorCode::KeyChanged | ErrorCode::DirectoriesDisagree
                    ) =>
                {
                    Rc::unwrap_or_clone(self.contact(peer).await?.ok_or(e)?)
                }
                Err(e) => return Err(e),
            },
        };
        contact.blocked = blocked;
        self.put_contact(contact).await?;
        tracing::info!(peer = %peer, blocked, "contact block changed");
        Ok(())
    }

    // ----- the directories -----

    /// Whether a fresh look-up of `peer` may be made now: the cached record is older than
    /// [`MIN_REFRESH`] (or there is none).
    pub fn may_refresh(&self, peer: &Username) -> bool {
        self.records
            .borrow()
            .get(peer)
            .is_none_or(|(_, at)| at.elapsed() >= MIN_REFRESH)
    }

    /// What the directories say about `peer` (cached for [`RECORD_TTL`] unless `fresh`): every
    /// checked answer; [`Answers::agreed`] is the record, when they agree.
    pub async fn lookup(&self, peer: &Username, fresh: bool) -> Result<Rc<Answers>, HostError> {
        if !fresh {
            if let Some((answers, at)) = self.records.borrow().get(peer) {
                if at.elapsed() < RECORD_TTL {
                    return Ok(answers.clone());
                }
            }
        }
        if let Some(scope) = peer.scope() {
            let answers = Rc::new(self.lookup_scoped(peer, scope).await?);
            self.records
                .borrow_mut()
                .insert(peer.clone(), (answers.clone(), Instant::now()));
            return Ok(answers);
        }
        if peer.is_identity_address() {
            let answers = Rc::new(self.lookup_in_dht(peer).await?);
            self.records
                .borrow_mut()
                .insert(peer.clone(), (answers.clone(), Instant::now()));
            return Ok(answers);
        }
        let links = self.links();
        if links.is_empty() {
            return Err(HostError::new(
                ErrorCode::UnknownUser,
                format!("{peer}: this host has no directory to look names up in; write to an identity address (smvs:…)"),
            ));
        }
        let found = match lookup_all(&links, self.quorum(), peer).await {
            Ok(answers) if answers.answers.is_empty() => self.follow_move(peer, answers).await,
            other => other,
        };
        match found {
            Ok(answers) => {
                let answers = Rc::new(answers);
                self.records
                    .borrow_mut()
                    .insert(peer.clone(), (answers.clone(), Instant::now()));
                Ok(answers)
            }
            Err(e) => {
                if e.code == ErrorCode::UnknownUser {
                    self.records.borrow_mut().remove(peer);
                }
                Err(e)
            }
        }
    }

    /// What the scoped directory `scope` alone says about `peer` (`alice@scope`): its name
    /// space is its own, so there is nothing to agree with. A user who moved away from it is
    /// unknown there (the statement names where they went, to add as a directory).
    async fn lookup_scoped(&self, peer: &Username, scope: &str) -> Result<Answers, HostError> {
        let Some(link) = self.scoped_link(scope) else {
            let why = if self.links().iter().any(|l| l.name() == scope) {
                format!(
                    "{scope} is a directory asked for plain names: write {} without @{scope}",
                    peer.wire_str()
                )
            } else {
                format!("{peer}: this host has no scoped directory named {scope} (`smvsctl directory add {scope} ADDRESS KEY --scoped`)")
            };
            // The name is what is wrong, not the user: said as it is.
            return Err(HostError::bad_request(why));
        };
        let answer = link.lookup(&peer.wire()).await.inspect_err(|e| {
            if e.code == ErrorCode::UnknownUser {
                self.records.borrow_mut().remove(peer);
            }
        })?;
        match answer {
            smvs_directory::LookupAnswer::Record(record) => {
                Ok(Answers::only(peer, link.name(), record))
            }
            smvs_directory::LookupAnswer::Moved(statement) => {
                self.records.borrow_mut().remove(peer);
                // A contact is not given up on one directory's word (their queued messages
                // wait, and their host is still known by its pinned key); anyone else is
                // unknown there.
                let code = match self.contact(peer).await? {
                    Some(_) => ErrorCode::Directory,
                    None => ErrorCode::UnknownUser,
                };
                Err(HostError::new(
                    code,
                    format!(
                        "{peer} moved from the directory {scope} to the one at {} (key {}): add \
                         that one as a scoped directory to write to them there",
                        statement.to_address,
                        statement.to.to_hex()
                    ),
                ))
            }
        }
    }

    /// Every directory whose key log this host checks: those asked for plain names, then
    /// the scoped ones (a log is a log, whatever name space it serves).
    fn checked_links(&self) -> Vec<Rc<DirectoryLink>> {
        let mut links = self.links();
        links.extend(self.scoped_links());
        links
    }

    /// The scoped directory this host calls `scope`.
    pub fn scoped_link(&self, scope: &str) -> Option<Rc<DirectoryLink>> {
        self.scoped
            .borrow()
            .iter()
            .find(|l| l.name() == scope)
            .cloned()
    }

    /// The scoped directories' links as they are now (a copy, as [`Trust::links`]).
    pub(super) fn scoped_links(&self) -> Vec<Rc<DirectoryLink>> {
        self.scoped.borrow().clone()
    }

    /// The contacts among [`Trust::local_names`] of `name` pinned with the host key `key`: one
    /// at most, unless a record names another user's host key (see `inbox`).
    pub async fn pinned_with_key(
        &self,
        name: &Username,
        key: &smvs_crypto::AgreementPublicKey,
    ) -> Result<Vec<Rc<Contact>>, HostError> {
        let mut pinned = Vec::new();
        for name in self.local_names(name) {
            if let Some(c) = self.contact(&name).await? {
                if &c.transport_key == key {
                    pinned.push(c);
                }
            }
        }
        Ok(pinned)
    }

    /// The contact, under another of the names `peer`'s user may have here (`bob` for
    /// `bob@work`), whose host key or identity one of `answers` shows: a record that copies
    /// another user's key is not pinned (see `inbox`).
    async fn claimed_elsewhere(
        &self,
        peer: &Username,
        answers: &Answers,
    ) -> Result<Option<Rc<Contact>>, HostError> {
        if peer.is_identity_address() {
            return Ok(None);
        }
        for name in self.local_names(&peer.wire()) {
            if &name == peer {
                continue;
            }
            if let Some(other) = self.contact(&name).await? {
                let shown = answers.answers.iter().any(|a| {
                    a.record.user.transport_key == other.transport_key
                        || a.record.user.identity == other.identity
                });
                if shown {
                    return Ok(Some(other));
                }
            }
        }
        Ok(None)
    }

    /// The names a user called `name` by their directory may have here, the plain one first,
    /// then one per scoped directory (in the configured order): who sent under that name is
    /// told by the host key their link shows (`inbox`).
    pub fn local_names(&self, name: &Username) -> Vec<Username> {
        let mut names = vec![name.clone()];
        if !name.is_identity_address() && name.scope().is_none() {
            names.extend(
                self.scoped_links()
                    .iter()
                    .filter_map(|link| Username::scoped(name, link.name()).ok()),
            );
        }
        names
    }

    /// Directories answered only that `peer` moved away. For a contact pinned here whose
    /// pinned identity signed the statement, the directory it names is asked instead (that
    /// directory is vouched for by the user, not by our configuration); its answer is then
    /// judged as any other, against the pinned identity. Anyone else is unknown here.
    async fn follow_move(&self, peer: &Username, answers: Answers) -> Result<Answers, HostError> {
        // "No such user here" only when as many directories as vouch for a key say the user
        // moved; fewer are an outage as far as queued messages go.
        let enough = answers.moved.len() >= answers.quorum;
        let unknown = |why: String| {
            let code = if enough {
                ErrorCode::UnknownUser
            } else {
                ErrorCode::Directory
            };
            HostError::new(code, why)
        };
        let Some((from, statement)) = answers.moved.first().cloned() else {
            return Err(answers.too_few(0));
        };
        let Some(contact) = self.contact(peer).await? else {
            return Err(unknown(format!(
                "{peer} moved from the directory {from} to the one at {} (key {}); add it to \
                 your directories to look {peer} up there",
                statement.to_address,
                statement.to.to_hex()
            )));
        };
        if statement.verify(&contact.identity).is_err() {
            // Not the contact's word: a directory lies about them (not an outage, so the
            // pinned contact is not gone on with).
            let how =
                format!("{from} says {peer} moved, with a statement the pinned key did not sign");
            self.equivocation_alarm(peer, &how);
            return Err(equivocation(peer, &how));
        }
        // A statement older than one followed before is a directory replaying history (the
        // user has moved on since): not followed.
        if statement.issued_at < contact.moved_at {
            tracing::warn!(peer = %peer, directory = %from, "a directory served an older moved statement of a contact than one followed before");
            return Err(HostError::new(
                ErrorCode::Directory,
                format!("{from} served an older statement of {peer}'s move than one seen before"),
            ));
        }
        if statement.issued_at > contact.moved_at {
            let mut newer = Rc::unwrap_or_clone(contact.clone());
            newer.moved_at = statement.issued_at;
            self.put_contact(newer).await?;
        }
        // Only where this host connects to anyway (the rule for contacts' hosts).
        let target = HostAddress::parse(&statement.to_address)
            .map_err(|e| unknown(format!("{peer} moved to an address that is not one: {e}")))?;
        may_connect(&self.host_address, peer, &target)?;
        let link = {
            let mut followed = self.followed.borrow_mut();
            if followed.len() >= MAX_FOLLOWED {
                followed.clear();
            }
            followed
                .entry((*statement.to.as_bytes(), statement.to_address.clone()))
                .or_insert_with(|| {
                    Rc::new(DirectoryLink::new(
                        DirectoryAnchor {
                            name: format!("{peer}'s new directory"),
                            address: statement.to_address.clone(),
                            key: statement.to,
                        },
                        self.directory_config.socks5_proxy.clone(),
                    ))
                })
                .clone()
        };
        let answer = link.lookup(peer).await.map_err(|mut e| {
            // Whatever the directory moved to says, it is not a quorum's word.
            if e.code == ErrorCode::UnknownUser {
                e.code = ErrorCode::Directory;
            }
            e
        })?;
        match answer {
            smvs_directory::LookupAnswer::Record(record) => {
                tracing::debug!(peer = %peer, from = %from, to = %statement.to_address, "followed a contact to the directory they moved to");
                Ok(Answers::only(peer, link.name(), record))
            }
            // Moved again: one step is followed per look-up, from what we were told.
            smvs_directory::LookupAnswer::Moved(_) => Err(HostError::new(
                ErrorCode::Directory,
                format!(
                    "{peer} moved on from the directory at {}",
                    statement.to_address
                ),
            )),
        }
    }

    /// [`Trust::pinned_contact`] for whoever will connect to the contact's host (the outbox,
    /// the call manager): also refuses a host address this host does not connect to
    /// ([`may_connect`], `address-refused`). The contact is pinned all the same: the identity
    /// is what it is, wherever its host is.
    pub async fn trusted_contact(
        &self,
        peer: &Username,
        fresh: bool,
        request: bool,
    ) -> Result<(Rc<Contact>, Option<Rc<VerifiedRecord>>), HostError> {
        let (contact, record) = self.pinned_contact(peer, fresh, request).await?;
        may_connect(&self.host_address, peer, &contact.host_address)?;
        Ok((contact, record))
    }

    /// The pinned contact for `peer`, checked against the directory's current record (cached
    /// unless `fresh`). First contact pins the identity (trust on first use), marked as a
    /// message request when `request` is set. A different identity is recorded as pending,
    /// raises a KeyChanged event once, and is an error until accepted. The host address is
    /// not judged here: this is for checking a sender on the link it opened (the inbox) and
    /// for `verify`, which connect nowhere.
    pub async fn pinned_contact(
        &self,
        peer: &Username,
        fresh: bool,
        request: bool,
    ) -> Result<(Rc<Contact>, Option<Rc<VerifiedRecord>>), HostError> {
        self.judged_contact(peer, fresh, request, true).await
    }

    /// [`Trust::pinned_contact`]; with `offline_ok` false, no directory answering is an error
    /// even for a pinned contact (`verify` says what the directories say now).
    async fn judged_contact(
        &self,
        peer: &Username,
        fresh: bool,
        request: bool,
        offline_ok: bool,
    ) -> Result<(Rc<Contact>, Option<Rc<VerifiedRecord>>), HostError> {
        let answers = match self.lookup(peer, fresh).await {
            Ok(answers) => answers,
            // No directory reached; or none knows a user we were introduced to (they may be
            // at a directory we do not use).
            Err(e)
                if offline_ok
                    && (e.code == ErrorCode::Directory
                        || (e.code == ErrorCode::UnknownUser
                            && self
                                .contact(peer)
                                .await?
                                .is_some_and(|c| c.introduced_by.is_some()))) =>
            {
                return match self.contact_without_directory(peer).await? {
                    Some(contact) => {
                        tracing::debug!(peer = %peer, error = %e, "no directory answers; going on with the pinned contact");
                        Ok((contact, None))
                    }
                    None => Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        // Asked before `stored` is read: nothing may be awaited between that read and the
        // write below, or a block that lands meanwhile would be overwritten.
        let elsewhere = self.claimed_elsewhere(peer, &answers).await?;
        let stored = self.contact(peer).await?;
        let (judgement, rollbacks) = judge(stored, &answers, request);
        for r in rollbacks {
            if r.directory == DHT_ANSWER {
                // Nobody vouches for the DHT's answers as a directory does: a node that has
                // not seen the newest record yet (churn, a look-up cut short) serves an older
                // one. Not heard all the same, but no alarm.
                tracing::info!(peer = %peer, served = r.served, before = r.before, "the DHT gave an older record of a contact than one seen before; not heard");
                continue;
            }
            if self.may_alarm(peer, "rollback") {
                smvs_service::security_event!(error, smvs_service::logging::DIRECTORY_ROLLBACK, peer = %peer, directory = %r.directory, served = r.served, before = r.before, "a directory served an older record of a contact than before; it is not heard");
                self.events
                    .publish(HostEvent::DirectoryAlarm { peer: peer.clone() });
            }
        }
        let contact = match judgement {
            Judgement::Unchanged(contact) => contact,
            Judgement::Pin(contact) => {
                if let Some(other) = elsewhere.filter(|o| {
                    o.transport_key == contact.transport_key || o.identity == contact.identity
                }) {
                    let why = if other.identity == contact.identity {
                        format!(
                            "{peer} is your contact {} (the same identity): write to {0}",
                            other.username
                        )
                    } else {
                        format!("{peer}'s record names the host key of your contact {}; not pinned (one of the two copies the other's)", other.username)
                    };
                    return Err(HostError::bad_request(why));
                }
                let contact = Rc::new(contact);
                self.put_contact(contact.clone()).await?;
                contact
            }
            Judgement::Update(contact) => {
                let contact = Rc::new(contact);
                self.put_contact(contact.clone()).await?;
                contact
            }
            Judgement::KeyChanged {
                contact,
                first_seen,
            } => {
                if first_seen {
                    self.put_contact(contact).await?;
                    smvs_service::security_event!(warn, smvs_service::logging::KEY_CHANGED, peer = %peer, "a contact's identity key changed; refusing until accepted");
                    self.events
                        .publish(HostEvent::KeyChanged { peer: peer.clone() });
                }
                return Err(key_changed(peer));
            }
            Judgement::Disagree {
                contact,
                first_seen,
            } => {
                let how = contact.alarm.clone().unwrap_or_default();
                if first_seen {
                    self.put_contact(contact).await?;
                    self.equivocation_alarm(peer, &how);
                }
                return Err(equivocation(peer, &how));
            }
            Judgement::TooFew(e) => {
                if e.code == ErrorCode::DirectoriesDisagree {
                    // First contact, and no key has a quorum: nothing to pin, but the alarm.
                    self.equivocation_alarm(peer, &e.message);
                }
                return Err(e);
            }
        };
        // The record the contact stands on: the first directory's that vouches for its
        // identity (the user may have refused what others show).
        let record = answers
            .answers
            .iter()
            .find(|a| a.record.user.identity == contact.identity)
            .map(|a| a.record.clone());
        Ok((contact, record))
    }

    /// A pinned contact to go on with while no directory can be reached: known contacts need
    /// no look-up (their hosts tell us when they move), unless a change or an alarm waits for
    /// the user.
    pub async fn contact_without_directory(
        &self,
        peer: &Username,
    ) -> Result<Option<Rc<Contact>>, HostError> {
        Ok(self
            .contact(peer)
            .await?
            .filter(|c| c.pending.is_none() && c.alarm.is_none()))
    }

    /// Whether an alarm of `kind` about `peer` may be raised now: at most one per
    /// [`ALARM_REPEAT`], so a directory that lies on every look-up (with a new key each time,
    /// say) does not flood the journal and every device.
    fn may_alarm(&self, peer: &Username, kind: &'static str) -> bool {
        let every = match kind {
            "address change" => ADDRESS_CHANGE_EVERY,
            _ => ALARM_REPEAT,
        };
        let mut alarms = self.alarms.borrow_mut();
        let key = (peer.clone(), kind);
        match alarms.get(&key) {
            Some(at) if at.elapsed() < every => false,
            _ => {
                alarms.insert(key, Instant::now());
                true
            }
        }
    }

    fn equivocation_alarm(&self, peer: &Username, how: &str) {
        if self.may_alarm(peer, "equivocation") {
            smvs_service::security_event!(error, smvs_service::logging::DIRECTORY_EQUIVOCATION, peer = %peer, directories = %how, "the directories disagree about a contact's identity key; nothing is sent to them until the user decides");
            self.events
                .publish(HostEvent::DirectoryAlarm { peer: peer.clone() });
        }
    }

    // ----- addresses pushed by contacts' hosts -----

    /// A contact's host says it moved: `address` as of `issued_at`, signed by the identity. It
    /// must come on a link with the contact's pinned host key, be signed by the pinned
    /// identity, be newer than what we have (a pushed statement's date, or the serial of the
    /// directory record the address came from) and not from the future, name an address of a
    /// kind this host connects to, and come at most once per [`ADDRESS_CHANGE_EVERY`]. Then
    /// the contact's host is there from now on, with no directory look-up. Returns the
    /// contact's name here when anything changed. Every refusal reads the same to the peer ("refused"), so that the
    /// call tells nobody whom this host knows; the log says why.
    pub async fn address_announced(
        &self,
        remote_key: &smvs_crypto::AgreementPublicKey,
        peer: &Username,
        address: HostAddress,
        issued_at: i64,
        signature: &smvs_crypto::Signature,
    ) -> Result<Option<Username>, HostError> {
        let refused = |why: &str| {
            tracing::debug!(peer = %peer, why, "refused an address statement");
            HostError::new(ErrorCode::Refused, "refused")
        };
        // `peer` is the name as the user's directory has it: the contact is the one of the
        // names it may have here (`bob`, `bob@work`) pinned with the link's key, when only
        // one is (see `inbox`).
        let pinned = self.pinned_with_key(peer, remote_key).await?;
        let [contact] = <[Rc<Contact>; 1]>::try_from(pinned).map_err(|pinned| {
            refused(if pinned.is_empty() {
                "not a contact, or not from the contact's host as pinned"
            } else {
                "the link's key is pinned for more than one user of that name"
            })
        })?;
        if contact.blocked || contact.pending.is_some() {
            return Err(refused("not from the contact's host as pinned"));
        }
        let statement =
            smvs_schema::canonical::host_address_statement(&peer.wire(), &address, issued_at);
        let contact_name = contact.username.clone();
        let peer = &contact_name;
        contact
            .identity
            .signing_key
            .verify(smvs_crypto::SignContext::HostAddress, &statement, signature)
            .map_err(|_| refused("not signed by the contact's identity"))?;
        if issued_at > crate::model::now_ms() + MAX_CLOCK_AHEAD_MS {
            return Err(refused("stated in the future"));
        }
        if issued_at <= contact.address_signed_at {
            return Ok(None);
        }
        if may_connect(&self.host_address, peer, &address).is_err() {
            return Err(refused(
                "an address of a kind this host does not connect to",
            ));
        }
        if !self.may_alarm(peer, "address change") {
            return Err(refused("another address change came a moment ago"));
        }
        let mut contact = Rc::unwrap_or_clone(contact);
        let moved = contact.host_address != address;
        contact.host_address = address;
        contact.address_signed_at = issued_at;
        self.put_contact(contact).await?;
        tracing::info!(peer = %peer, moved, "a contact's host announced its address");
        Ok(moved.then(|| contact_name.clone()))
    }

    /// The statement pushed to contacts' hosts after this host moved: (its address, issued
    /// at, the identity's signature).
    pub async fn sign_own_address(
        &self,
    ) -> Result<(Username, HostAddress, i64, smvs_crypto::Signature), HostError> {
        let me = self.me()?;
        let address = self.directory_config.host_address.clone();
        let (issued_at, signature) = self
            .keyguard
            .sign_host_address(&me.username, &address)
            .await?;
        Ok((me.username, address, issued_at, signature))
    }

    // ----- introductions -----

    /// What `introduce USER TO` hands on: the signed record `user` is pinned from, when
    /// nothing about them is in question.
    pub async fn introduction_of(&self, user: &Username) -> Result<Evidence, HostError> {
        let contact = self.contact(user).await?.ok_or_else(|| {
            HostError::new(
                ErrorCode::NotFound,
                format!("{user} is not a contact here; write to them first"),
            )
        })?;
        may_send(user, Some(&contact))?;
        contact.evidence.clone().ok_or_else(|| {
            HostError::new(
                ErrorCode::NotFound,
                format!("no signed record of {user} is kept here (pinned before hosts kept them)"),
            )
        })
    }

    /// `from` (a contact we accepted) introduces another user with a directory's signed
    /// record. Someone we have not pinned is pinned from it, marked as introduced by `from`,
    /// with no directory asked. Someone pinned with another identity raises the equivocation
    /// alarm, as directories that disagree do. Introductions of ourselves or of `from` are
    /// ignored.
    pub async fn introduced(&self, from: &Username, evidence: &Evidence) -> Result<(), HostError> {
        let introducer = self.contact(from).await?;
        if !introducer.is_some_and(|c| !c.request && !c.blocked && c.pending.is_none()) {
            tracing::info!(peer = %from, "ignored an introduction from someone who is not an accepted contact");
            return Ok(());
        }
        let record = evidence.verify().map_err(|e| {
            HostError::bad_request(format!(
                "an introduction from {from} does not check out: {e}"
            ))
        })?;
        // Under the name this host gives users of that directory: `bob@work` when it is a
        // scoped one (a directory not in use here at all leaves the plain name, as before).
        let user = match self
            .scoped_links()
            .iter()
            .find(|l| l.anchor.key.as_bytes() == &evidence.directory_key)
        {
            Some(link) => Username::scoped(&record.user.username, link.name())
                .map_err(|e| HostError::bad_request(e.to_string()))?,
            None => record.user.username.clone(),
        };
        if self
            .me
            .borrow()
            .as_ref()
            .is_some_and(|m| m.username == user)
            || &user == from
        {
            return Ok(());
        }
        match self.contact(&user).await? {
            None if self.contacts().await?.iter().any(|c| {
                c.identity == record.user.identity || c.transport_key == record.user.transport_key
            }) =>
            {
                // Someone pinned already, under another name (`bob@work` introduced as plain
                // `bob`, say): a second name for one key would let that key speak as either,
                // past a block of the other.
                tracing::info!(peer = %user, introducer = %from, "ignored an introduction of a key pinned under another name");
            }
            None => {
                // Pinned as a request: in contacts-only mode what they send is held until the
                // user answers, as from anyone the user never wrote to.
                let mut contact = Contact::from_record(&record, true);
                contact.username = user.clone();
                contact.introduced_by = Some(from.clone());
                self.put_contact(contact).await?;
                tracing::info!(peer = %user, introducer = %from, "pinned a user from an introduction");
            }
            Some(pinned) if pinned.identity == record.user.identity => {}
            Some(pinned) => {
                // A contact's word does not unseat a pin (or a change the user is deciding
                // on): it is an alarm to read, not a state that stops the conversation, so
                // that a contact cannot freeze the user's conversations with made-up records.
                let how = format!(
                    "{from} introduced {user} with key {}; the pinned key is {}",
                    directories::short_key(&record.user.identity),
                    directories::short_key(&pinned.identity)
                );
                self.equivocation_alarm(&user, &how);
            }
        }
        Ok(())
    }

    // ----- verification -----

    /// `verify USER [--accept-new-key | --keep-key]`: the safety number of the identity to
    /// compare (the changed one, while a change is pending, with the pinned one's beside it),
    /// and, when asked, the user's decision:
    /// - accept: takes the changed key whose safety number was shown last. When the
    ///   directories disagreed, the identity given up is refused from then on. The caller
    ///   drops the session keys of an accepted change.
    /// - keep: stays with the pinned key, and refuses the changed one from then on (a
    ///   directory that shows it again is not heard).
    pub async fn verify(
        &self,
        peer: &Username,
        decision: KeyDecision,
        transcript_hash: [u8; 32],
    ) -> Result<Verification, HostError> {
        let me = self.me()?;
        // Refresh from the directories, so a key change or a disagreement is noticed here too.
        let mut contact =
            Rc::unwrap_or_clone(match self.judged_contact(peer, true, false, false).await {
                Ok((contact, _)) => contact,
                // A change or an alarm pending: what is pinned is looked at and decided on.
                Err(e)
                    if matches!(
                        e.code,
                        ErrorCode::KeyChanged | ErrorCode::DirectoriesDisagree
                    ) =>
                {
                    match self.contact(peer).await? {
                        Some(contact) => contact,
                        None => return Err(e),
                    }
                }
                Err(e) => return Err(e),
            });
        let mut accepted = false;
        match (contact.pending.clone(), decision) {
            (_, KeyDecision::Look) => {}
            (None, KeyDecision::Keep) => {
                return Err(HostError::bad_request(format!(
                    "no other key is pending for {peer}; there is nothing to keep the pinned one against"
                )))
            }
            (None, KeyDecision::Accept) => {}
            (Some(pending), KeyDecision::Keep) => {
                // Only against the key whose safety number the user was shown: refusing is
                // for good, so not a key that arrived since.
                let shown = self.shown_pending.borrow_mut().remove(peer);
                if shown != Some(pending.identity) {
                    return Err(HostError::new(
                        ErrorCode::KeyChanged,
                        format!("the key pending for {peer} has not been shown to you, or it changed again since: look with `smvsctl verify {peer}` first, then decide"),
                    ));
                }
                contact.refuse(pending.identity);
                contact.pending = None;
                contact.alarm = None;
                self.shown_pending.borrow_mut().remove(peer);
                self.put_contact(contact.clone()).await?;
                self.records.borrow_mut().remove(peer);
                tracing::info!(peer = %peer, "kept a contact's pinned identity key and refused the other");
            }
            (Some(pending), KeyDecision::Accept) => {
                // Only the key whose safety number the user was shown (and compared).
                let shown = self.shown_pending.borrow_mut().remove(peer);
                if shown != Some(pending.identity) {
                    return Err(HostError::new(
                        ErrorCode::KeyChanged,
                        format!("{peer}'s new key has not been shown to you, or it changed again since: compare the safety number of `smvsctl verify {peer}` with {peer}, then accept"),
                    ));
                }
                if contact.alarm.take().is_some() {
                    // The directories disagreed and the user chose: the other side lied.
                    let given_up = contact.identity;
                    contact.refuse(given_up);
                }
                contact.refused.retain(|id| id != &pending.identity);
                contact.identity = pending.identity;
                contact.transport_key = pending.transport_key;
                contact.pending = None;
                // Nothing the old identity stated about its host counts any more, and the key
                // is the directories' now, not the introducer's.
                contact.address_signed_at = 0;
                contact.introduced_by = None;
                // The next look-up refreshes host address and serials.
                contact.serial = 0;
                contact.serials.clear();
                self.put_contact(contact.clone()).await?;
                self.records.borrow_mut().remove(peer);
                accepted = true;
                tracing::info!(peer = %peer, "accepted a contact's new identity key");
            }
        }
        let number = |identity: &IdentityBundle| {
            smvs_crypto::safety_number(
                me.username.wire_str(),
                &me.identity,
                peer.wire_str(),
                identity,
            )
            .map_err(HostError::internal)
        };
        let (safety_number, pinned_safety_number) = match &contact.pending {
            Some(pending) => {
                self.shown_pending
                    .borrow_mut()
                    .insert(peer.clone(), pending.identity);
                (number(&pending.identity)?, Some(number(&contact.identity)?))
            }
            None => (number(&contact.identity)?, None),
        };
        Ok(Verification {
            safety_number,
            transcript_hash: hex::encode(transcript_hash),
            key_changed: contact.pending.is_some(),
            accepted,
            alarm: contact.alarm.clone(),
            pinned_safety_number,
            evidence: contact.evidence.clone(),
            session_version: crate::session::SESSION_V1,
        })
    }

    // ----- registration -----

    /// Renews our registration's transport certificate when it is due: less than half its
    /// lifetime left, or the record names another transport key than ours. Logs in with the
    /// token keyguard opens, has keyguard certify our transport key anew, and hands it to the
    /// directory. Returns the new expiry, or `None` when nothing was due (or we are not
    /// registered). smvsd runs this at start and every [`RENEW_CHECK`] after.
    pub async fn renew_if_due(&self) -> Result<Option<i64>, HostError> {
        let Some(me) = self.registered() else {
            return Ok(None);
        };
        if me.username.is_identity_address() {
            return self.publish_in_dht(&me, false).await;
        }
        let left = self.left.borrow().clone();
        let all = self.links();
        let home: Vec<&Rc<DirectoryLink>> = all
            .iter()
            .filter(|l| !left.contains(l.anchor.key.as_bytes()))
            .collect();
        let results = futures::future::join_all(home.iter().map(|link| async {
            match tokio::time::timeout(DIRECTORY_TIMEOUT, self.renew_at(link, &me)).await {
                Ok(result) => result,
                Err(_) => Err(link.no_answer("renewing the registration")),
            }
        }))
        .await;
        self.records.borrow_mut().remove(&me.username);
        // One directory that cannot be reached does not stop the others; only when none could
        // be is it the caller's error.
        let mut renewed = None;
        let mut first_error = None;
        let mut any_ok = false;
        for (link, result) in home.iter().zip(results) {
            match result {
                Ok(expiry) => {
                    any_ok = true;
                    if let Some(expiry) = expiry {
                        renewed = Some(renewed.map_or(expiry, |r: i64| r.min(expiry)));
                    }
                }
                Err(e) => {
                    if all.len() > 1 {
                        tracing::warn!(directory = %link.name(), error = %e, "cannot renew the registration at this directory now; trying again at the next check");
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        match (any_ok, first_error) {
            (false, Some(e)) => Err(e),
            _ => Ok(renewed),
        }
    }

    /// The renewal at one directory; a directory that has no record of us (added to the
    /// configuration since we registered) is registered with now.
    async fn renew_at(&self, link: &DirectoryLink, me: &Me) -> Result<Option<i64>, HostError> {
        let directory = link.client().await?;
        let failed = |e: smvs_directory::ClientError| {
            link.failed(&e);
            HostError::from(e)
        };
        // Read before the look-up: an answer from an older log than this host already proved
        // is the directory going back (a check that ends while the look-up is in flight must
        // not make an honest answer look old).
        let proven = self.proven_epoch(link).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the key log checkpoint");
            None
        });
        let record = match directory.lookup_for_owner(&me.username).await {
            Ok(record) => record,
            Err(e) if e.code() == Some(smvs_directory::ErrorCode::NotFound) => {
                let record = self.register_at(link, &me.username, &me.identity).await?;
                return Ok(Some(record.user.transport_not_after));
            }
            Err(e) => {
                // A directory we left whose answer never came back to us (or whose note was
                // lost): it serves our own statement. Noted now, so it is never registered
                // with again.
                if let Ok(Ok(smvs_directory::LookupAnswer::Moved(statement))) =
                    tokio::time::timeout(DIRECTORY_TIMEOUT, directory.lookup_answer(&me.username))
                        .await
                {
                    if statement.verify(&me.identity).is_ok() {
                        self.note_left(link).await?;
                        return Ok(None);
                    }
                }
                return Err(failed(e));
            }
        };
        let older = matches!((&record.logged_at, proven), (Some(at), Some(proven)) if at.head.epoch < proven);
        if !older {
            link.saw(&record);
        }
        if let (Some(at), Some(proven)) = (&record.logged_at, proven) {
            if at.head.epoch < proven {
                self.split_view(
                    link,
                    &log_heads::Inconsistent::new(
                        &at.head,
                        log_heads::HeadSource::Lookup,
                        format!("this host's own look-up was answered from epoch {}, older than the {proven} it already proved: the directory went back", at.head.epoch),
                    ),
                );
            }
        }
        if record.user.identity != me.identity {
            // Each check is a look-up of our own name: a directory that shows others a key we
            // never made is caught here, within a renewal check of it starting to.
            smvs_service::security_event!(error, smvs_service::logging::OWN_KEY_FORGED, directory = %link.name(), shown_key = %directories::short_key(&record.user.identity), "a directory shows this host's user with an identity key this host did not make");
            self.events.publish(HostEvent::DirectoryAlarm {
                peer: me.username.clone(),
            });
            return Err(HostError::new(
                ErrorCode::Directory,
                format!(
                    "the directory {}'s record of {} holds another identity than keyguard's: \
                     it shows others a key this host did not make (or the identity was rotated \
                     without restarting smvsd)",
                    link.name(),
                    me.username
                ),
            ));
        }
        let transport_key = self.transport.public();
        let left = record
            .user
            .transport_not_after
            .saturating_sub(crate::model::now_ms());
        let ours = &self.directory_config.host_address;
        let address_moved = &record.user.host_address != ours;
        let transport_due = record.user.transport_key != transport_key
            || left <= TRANSPORT_CERTIFICATE_LIFETIME_MS / 2;
        // Keyguard rotates the prekey when asked after it is due: what it hands out now is
        // what the record must carry (checked every RENEW_CHECK, well within a prekey's life).
        // A keyguard that cannot give them does not hold up the certificate's renewal.
        let session_keys = if self.directory_config.session_keys {
            match self.keyguard.session_keys(&me.identity).await {
                Ok(keys) => Some(smvs_directory::PublishedSessionKeys {
                    kem: keys.kem,
                    kem_signature: keys.kem_signature,
                    prekey: keys.prekey,
                })
                .filter(|keys| record.user.session_keys.as_ref() != Some(keys)),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot get the session keys to publish; trying again at the next check");
                    None
                }
            }
        } else {
            None
        };
        // Our name's versions in the directory's key log: judged when the look-up shows one
        // we have not (own_log). A log now shorter than where we checked is a new log (the
        // directory's database replaced) or a different one shown to us: said, and judged
        // whole.
        let checked = self.own_log_checked(link).await?;
        let version = record.logged_at.as_ref().map(|at| at.version);
        let checked = match (version, checked) {
            (Some(now), Some(was)) if now < was => {
                smvs_service::security_event!(warn, smvs_service::logging::OWN_RECORD_CHANGED, directory = %link.name(), version = now, checked_version = was, "the directory's key log holds fewer versions of this host's user than when last checked: its log was replaced");
                None
            }
            (_, checked) => checked,
        };
        let history_due = version.is_some_and(|now| checked.is_none_or(|was| now > was));
        if !transport_due && !address_moved && session_keys.is_none() && !history_due {
            return Ok(None);
        }
        if address_moved || record.user.transport_key != transport_key {
            // Someone who could log in as us (a process that held keyguard's socket) may have
            // pointed our contacts elsewhere; or the configuration changed. Either way the
            // record must say what this host is, and the operator should know.
            smvs_service::security_event!(
                warn,
                smvs_service::logging::OWN_RECORD_CHANGED,
                directory = %link.name(),
                published_address = %record.user.host_address,
                our_address = %ours,
                same_transport_key = record.user.transport_key == transport_key,
                "the directory's record of this host's user does not name this host; publishing ours again"
            );
        }
        let key = link.anchor.key;
        let keyguard = self.keyguard.clone();
        let username = me.username.clone();
        let session = directory
            .login_with(&me.username, |sealed| async move {
                keyguard.open_login_token(&key, &username, &sealed).await
            })
            .await
            .map_err(failed)?;
        if history_due {
            if let Some(at) = &record.logged_at {
                self.check_own_log(link, &session, me, checked, at, &record.logged())
                    .await?;
            }
        }
        if !transport_due && !address_moved && session_keys.is_none() {
            return Ok(None);
        }
        let mut record = record;
        if transport_due {
            let certificate = self
                .keyguard
                .certify_transport(&me.username, &transport_key)
                .await?;
            record = session
                .renew_transport(&certificate)
                .await
                .map_err(failed)?;
            tracing::info!(
                directory = %link.name(),
                not_after = record.user.transport_not_after,
                serial = record.user.serial,
                "renewed the transport certificate"
            );
        }
        if &record.user.host_address != ours {
            record = session.update_host_address(ours).await.map_err(failed)?;
        }
        if let Some(keys) = session_keys {
            // A directory that refuses them (an older one, say) leaves the rest done.
            match session.publish_session_keys(&keys).await {
                Ok(published) => {
                    record = published;
                    tracing::info!(
                        directory = %link.name(),
                        prekey = keys.prekey.id,
                        serial = record.user.serial,
                        "published session v2 keys"
                    );
                }
                Err(e) => {
                    tracing::warn!(directory = %link.name(), error = %e, "the directory did not take our session keys; trying again at the next check")
                }
            }
        }
        Ok(Some(record.user.transport_not_after))
    }

    /// Registers `username` at every directory: keyguard makes the identity, and builds and
    /// signs each request (with a fresh certificate for our transport key). The default
    /// directory must take it; another that cannot be reached now is registered with at the
    /// next renewal check, and one where the name is someone else's is logged (users there
    /// find us only through the others).
    pub async fn register(&self, username: Username) -> Result<Me, HostError> {
        if let Some(me) = self.me.borrow().as_ref() {
            return Err(HostError::new(
                ErrorCode::AlreadyRegistered,
                format!("this host is already registered as {}", me.username),
            ));
        }
        if username.is_identity_address() {
            return Err(HostError::bad_request(
                "an identity address is not registered at a directory: `smvsctl register --dht`",
            ));
        }
        if let Some(scope) = username.scope() {
            return Err(HostError::bad_request(format!(
                "{username}: this host registers at its own directories, never at a scoped one; register as {} (or make {scope} one of the host's directories)",
                username.wire_str()
            )));
        }
        let links = self.links();
        let Some(default) = links.first() else {
            return Err(HostError::bad_request(
                "this host has no directory: register in the DHT (`smvsctl register --dht`)",
            ));
        };
        let identity = self.keyguard.create_identity().await?;
        self.register_at(default, &username, &identity).await?;
        // Saved as soon as the default directory has us: a host that stops now finishes the
        // others at its next renewal check.
        self.storage
            .set_setting("me", username.as_str().as_bytes().to_vec())
            .await?;
        let others = futures::future::join_all(
            links[1..]
                .iter()
                .map(|link| self.register_at(link, &username, &identity)),
        )
        .await;
        for (link, result) in links[1..].iter().zip(others) {
            if let Err(e) = result {
                tracing::warn!(directory = %link.name(), error = %e, "cannot register at this directory now; trying again at the next renewal check");
            }
        }
        let me = Me { username, identity };
        *self.me.borrow_mut() = Some(me.clone());
        tracing::info!(username = %me.username, directories = links.len(), "registered");
        Ok(me)
    }

    /// Registers `username` with `identity` at one directory.
    async fn register_at(
        &self,
        link: &DirectoryLink,
        username: &Username,
        identity: &IdentityBundle,
    ) -> Result<VerifiedRecord, HostError> {
        let transport_key = self.transport.public();
        let registration = self
            .keyguard
            .sign_registration(
                &link.anchor.key,
                username,
                &transport_key,
                &self.directory_config.host_address,
            )
            .await?;
        if &registration.identity != identity {
            return Err(HostError::internal(
                "keyguard signed a registration of another identity than it created",
            ));
        }
        let directory = link.client().await?;
        let registering = directory.register(&registration);
        let e = match tokio::time::timeout(DIRECTORY_TIMEOUT, registering).await {
            Err(_) => return Err(link.no_answer(&format!("registering {username}"))),
            Ok(Ok(record)) => return Ok(record),
            Ok(Err(e)) => e,
        };
        link.failed(&e);
        match e.code() {
            Some(smvs_directory::ErrorCode::Taken) => {
                // Taken by ourselves, if the record holds our identity and our transport key:
                // the directory took an earlier registration and this host stopped before
                // saving it. Then finish that registration here.
                match link.lookup(username).await {
                    Ok(smvs_directory::LookupAnswer::Record(r))
                        if &r.user.identity == identity
                            && r.user.transport_key == transport_key =>
                    {
                        tracing::info!(%username, directory = %link.name(), "the directory already holds our registration");
                        Ok(r)
                    }
                    _ => Err(HostError::new(
                        ErrorCode::Taken,
                        format!(
                            "the name {username} is taken at the directory {}",
                            link.name()
                        ),
                    )),
                }
            }
            Some(smvs_directory::ErrorCode::InvalidUsername) => {
                Err(HostError::bad_request(e.to_string()))
            }
            _ => Err(e.into()),
        }
    }
}
