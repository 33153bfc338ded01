//! This host's node in the hosts' DHT: where a user with no directory publishes the record
//! its identity signed, and where others find it by the identity address (`smvs:…`).
//!
//! ```text
//!  Trust::lookup(smvs:…) ──► DhtNode::find ──► mainline (UDP, its own thread) ──► other hosts
//!  Trust::publish_in_dht ──► keyguard signs ──► DhtNode::put
//! ```
//!
//! The engine is BitTorrent's Mainline DHT (the `mainline` crate), with BEP 44 mutable items:
//! a node keeps an item only with a valid signature by the key it is stored under, and a
//! look-up takes the highest sequence number among valid answers, so a node can neither forge
//! a record nor, alone, hide a newer one. A record is found under SHA-1(identity key || salt);
//! `smvs_directory::record::verify_dht_record_at` checks it again here (the address's key
//! signed it, of itself, under that address, with its serial as the sequence), and the
//! contact is then judged like a directory's answer (pinned identity, serial never back).
//!
//! Hosts form their own DHT: the bootstrap list comes from the configuration and from
//! contacts' host addresses (a host's DHT node listens on its peer port's address, UDP, by
//! default). The public BitTorrent DHT's routers are never asked.

use std::net::SocketAddrV4;
use std::time::Duration;

use futures::StreamExt;
use mainline::async_dht::AsyncDht;
use mainline::{Dht, MutableItem};
use smvs_crypto::{Signature, DHT_RECORD_SALT};
use smvs_directory::VerifiedRecord;
use smvs_schema::{ErrorCode, Username};

use crate::config::DhtConfig;
use crate::error::HostError;

/// How long a look-up or a put may take: a query waits for its slowest node up to the
/// engine's request timeout each round, and dead nodes cost a timeout each.
pub const DHT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a bootstrap node's name may take to resolve when the node starts.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// One node of the hosts' DHT, serving others (server mode) and asking them.
pub struct DhtNode {
    dht: AsyncDht,
    local: SocketAddrV4,
}

impl DhtNode {
    /// Binds the node's UDP socket at `listen` and starts joining through `config.bootstrap`
    /// and `more` (contacts' hosts). Names are resolved here, each within
    /// [`RESOLVE_TIMEOUT`] (IPv4 only); those that do not resolve are skipped. An empty list is
    /// allowed (the first node of a DHT, which others join through).
    pub async fn start(
        config: &DhtConfig,
        listen: SocketAddrV4,
        more: &[String],
    ) -> Result<DhtNode, String> {
        let mut bootstrap: Vec<String> = Vec::new();
        for entry in config.bootstrap.iter().chain(more) {
            let found =
                tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(entry.as_str()))
                    .await;
            let addresses: Vec<SocketAddrV4> = match found {
                Ok(Ok(addresses)) => addresses
                    .filter_map(|a| match a {
                        std::net::SocketAddr::V4(v4) => Some(v4),
                        std::net::SocketAddr::V6(_) => None,
                    })
                    .collect(),
                Ok(Err(e)) => {
                    tracing::warn!(node = %entry, error = %e, "a DHT bootstrap node does not resolve; skipped");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(node = %entry, "a DHT bootstrap node did not resolve in time; skipped");
                    continue;
                }
            };
            for address in addresses {
                // Our own address is no bootstrap node.
                let text = address.to_string();
                if address != listen && !bootstrap.contains(&text) {
                    bootstrap.push(text);
                }
            }
        }
        let dht = Dht::builder()
            .server_mode()
            // Always a list of ours (possibly empty): never the public DHT's routers.
            .bootstrap(&bootstrap)
            .bind_address(*listen.ip())
            .port(listen.port())
            .build()
            .map_err(|e| format!("the DHT's UDP port {listen}: {e}"))?
            .as_async();
        let local = dht.info().await.local_addr();
        tracing::info!(%local, bootstrap = bootstrap.len(), "joined the hosts' DHT");
        Ok(DhtNode { dht, local })
    }

    /// Where the node listens (UDP).
    pub fn local_addr(&self) -> SocketAddrV4 {
        self.local
    }

    /// The record the identity address `name` names: the newest the DHT holds that checks
    /// out. Every answer is checked, so a record the identity signed that does not hold (one
    /// far ahead of the clock, or not a host record) does not hide an older good one.
    pub async fn find(&self, name: &Username) -> Result<VerifiedRecord, HostError> {
        let key = smvs_crypto::parse_identity_address(name.as_str())
            .map_err(|e| HostError::bad_request(format!("{name}: {e}")))?;
        let mut items = self
            .dht
            .get_mutable(key.as_bytes(), Some(DHT_RECORD_SALT), None);
        let deadline = tokio::time::Instant::now() + DHT_TIMEOUT;
        let now = crate::model::now_ms();
        let mut best: Option<VerifiedRecord> = None;
        let mut refused: Option<String> = None;
        let mut timed_out = false;
        loop {
            let item = match tokio::time::timeout_at(deadline, items.next()).await {
                Ok(Some(item)) => item,
                Ok(None) => break,
                Err(_) => {
                    timed_out = true;
                    break;
                }
            };
            if best
                .as_ref()
                .is_some_and(|b| i64::try_from(b.user.serial).unwrap_or(i64::MAX) >= item.seq())
            {
                continue;
            }
            // The engine checked the signature; the identity may still have signed something
            // that is not a host record of it (another program's, or a broken host's).
            let Ok(signature) = Signature::from_bytes(item.signature()) else {
                continue;
            };
            match smvs_directory::record::verify_dht_record_at(
                name,
                item.value(),
                item.seq(),
                &signature,
                now,
            ) {
                Ok(record) => best = Some(record),
                Err(why) => {
                    tracing::warn!(peer = %name, seq = item.seq(), why = %why, "a record of a user in the DHT does not hold");
                    refused = Some(why);
                }
            }
        }
        if let Some(record) = best {
            return Ok(record);
        }
        Err(match (refused, timed_out) {
            (Some(why), _) => HostError::new(
                ErrorCode::Directory,
                format!("the DHT's record of {name} does not hold: {why}"),
            ),
            (None, true) => HostError::new(
                ErrorCode::Directory,
                format!(
                    "the DHT did not answer about {name} within {} s",
                    DHT_TIMEOUT.as_secs()
                ),
            ),
            (None, false) => HostError::new(
                ErrorCode::UnknownUser,
                format!("no host in the DHT holds a record of {name}"),
            ),
        })
    }

    /// Puts this host's record (its value, sequence and the identity's signature): the nodes
    /// closest to it keep it. Returns how many took it.
    pub async fn put(
        &self,
        identity: &smvs_crypto::SigningPublicKey,
        value: &[u8],
        seq: i64,
        signature: &Signature,
    ) -> Result<usize, HostError> {
        let item = MutableItem::new_signed_unchecked(
            *identity.as_bytes(),
            *signature.as_bytes(),
            value,
            seq,
            Some(DHT_RECORD_SALT),
        );
        let put = self.dht.put_mutable(item, None);
        match tokio::time::timeout(DHT_TIMEOUT, put).await {
            Ok(Ok(outcome)) => Ok(outcome.stored_at as usize),
            Ok(Err(e)) => Err(HostError::new(
                ErrorCode::Directory,
                format!("no node of the DHT took this host's record: {e}"),
            )),
            Err(_) => Err(HostError::new(
                ErrorCode::Directory,
                format!(
                    "the DHT did not take this host's record within {} s",
                    DHT_TIMEOUT.as_secs()
                ),
            )),
        }
    }
}

impl super::Trust {
    /// What the DHT says about the identity address `peer`, as one answer (the identity's
    /// own) that is judged like a directory's.
    pub(super) async fn lookup_in_dht(&self, peer: &Username) -> Result<super::Answers, HostError> {
        let Some(node) = &self.dht else {
            return Err(HostError::new(
                ErrorCode::UnknownUser,
                format!("{peer} is an identity address, found in the hosts' DHT, and this host is not in it (smvsd --dht)"),
            ));
        };
        let record = node.find(peer).await?;
        tracing::debug!(peer = %peer, serial = record.user.serial, "found a record in the DHT");
        Ok(super::Answers {
            user: peer.clone(),
            answers: vec![super::directories::Answer {
                directory: DHT_ANSWER.into(),
                record: std::rc::Rc::new(record),
            }],
            quorum: 1,
            asked: 1,
            failures: Vec::new(),
            moved: Vec::new(),
        })
    }

    /// Registers this host's user in the DHT: keyguard makes the identity, whose address is
    /// the user's name, and signs the record that is put there. A DHT with no other node yet
    /// takes the record at the next republish.
    pub async fn register_in_dht(&self) -> Result<super::Me, HostError> {
        if let Some(me) = self.me.borrow().as_ref() {
            return Err(HostError::new(
                ErrorCode::AlreadyRegistered,
                format!("this host is already registered as {}", me.username),
            ));
        }
        if self.dht.is_none() {
            return Err(HostError::bad_request(
                "this host is not in the DHT: start smvsd with --dht (or `dht = true`)",
            ));
        }
        let identity = self.keyguard.create_identity().await?;
        let username = Username::parse(&smvs_crypto::identity_address(&identity.signing_key))
            .map_err(|e| HostError::internal(e.to_string()))?;
        let me = super::Me { username, identity };
        self.publish_in_dht(&me, true).await?;
        self.storage
            .set_setting("me", me.username.as_str().as_bytes().to_vec())
            .await?;
        *self.me.borrow_mut() = Some(me.clone());
        tracing::info!(username = %me.username, "registered in the DHT");
        Ok(me)
    }

    /// Keeps this host's record in the DHT current: a new one (a new transport certificate
    /// from keyguard, the next serial, the identity's signature) when the transport key or
    /// the address changed or the certificate is half through its life; put when new, or
    /// when `put_anyway` (the republish timer: nodes forget records). A put that no node
    /// takes is logged and tried again at the next republish. Returns the new certificate's
    /// expiry when there is one.
    pub async fn publish_in_dht(
        &self,
        me: &super::Me,
        put_anyway: bool,
    ) -> Result<Option<i64>, HostError> {
        let Some(node) = self.dht.clone() else {
            return Err(HostError::new(
                ErrorCode::Directory,
                "this host's user lives in the DHT, but the host is not in it (smvsd --dht)",
            ));
        };
        let transport_key = self.transport.public();
        let ours = self.directory_config.host_address.clone();
        // At each republish, first what the DHT holds of us (see `foreign_own_record`).
        let foreign = if put_anyway {
            self.foreign_own_record(&node, me).await?
        } else {
            None
        };
        let now = crate::model::now_ms();
        let current = self.published.borrow().clone();
        let due = foreign.is_some()
            || current.as_ref().is_none_or(|r| {
                r.user.transport_key != transport_key
                    || r.user.host_address != ours
                    || r.user.transport_not_after - now
                        <= smvs_schema::canonical::TRANSPORT_CERTIFICATE_LIFETIME_MS / 2
            });
        let record = match current {
            Some(record) if !due => {
                if !put_anyway {
                    return Ok(None);
                }
                record
            }
            _ => self.new_dht_record(me, &ours, now, foreign).await?,
        };
        let seq =
            i64::try_from(record.user.serial).map_err(|e| HostError::internal(e.to_string()))?;
        match node
            .put(
                &me.identity.signing_key,
                &record.value,
                seq,
                &record.signature,
            )
            .await
        {
            Ok(nodes) => {
                tracing::info!(serial = seq, nodes, "put this host's record in the DHT");
                let renewed = due.then_some(record.user.transport_not_after);
                *self.published.borrow_mut() = Some(record);
                Ok(renewed)
            }
            Err(e) => {
                // The next republish makes a new record, with a new serial: if the nodes hold
                // a newer one (signed while this host was not itself, at most a day ahead of
                // the clock), a serial from the clock passes it as soon as the clock does.
                tracing::warn!(error = %e, "the DHT did not take this host's record now; a new one at the next republish");
                *self.published.borrow_mut() = None;
                Ok(due.then_some(record.user.transport_not_after))
            }
        }
    }

    /// A record of this host's user in the DHT that this host did not make: one that holds
    /// (the identity signed it) with a serial above every one this host gave out (each is
    /// stored before it is signed). The identity key, or keyguard, was used elsewhere, or the
    /// storage was restored from an older copy: the alarm (`OWN_KEY_FORGED`, a
    /// `DirectoryAlarm` about ourselves, at most every 10 minutes), and its serial, for ours
    /// to pass. No record, or no answer, is nothing to say.
    async fn foreign_own_record(
        &self,
        node: &DhtNode,
        me: &super::Me,
    ) -> Result<Option<u64>, HostError> {
        let found = match node.find(&me.username).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(error = %e, "no record of this host's user in the DHT now");
                return Ok(None);
            }
        };
        let last = self.last_dht_serial().await?;
        if found.user.serial <= last {
            return Ok(None);
        }
        if self.may_alarm(&me.username, "own DHT record") {
            smvs_service::security_event!(
                error,
                smvs_service::logging::OWN_KEY_FORGED,
                serial = found.user.serial,
                last_made_here = last,
                address = %found.user.host_address,
                same_transport_key = found.user.transport_key == self.transport.public(),
                "the DHT holds a record of this host's user, signed by its identity, that this host did not make: the identity key was used elsewhere; publishing ours above it"
            );
            self.events
                .publish(crate::model::HostEvent::DirectoryAlarm {
                    peer: me.username.clone(),
                });
        }
        Ok(Some(found.user.serial))
    }

    /// The serial of this host's last record in the DHT (0 before the first).
    async fn last_dht_serial(&self) -> Result<u64, HostError> {
        Ok(self
            .storage
            .setting(crate::storage::DHT_SERIAL)
            .await?
            .and_then(|b| <[u8; 8]>::try_from(&b[..]).ok())
            .map_or(0, u64::from_be_bytes))
    }

    /// A new record of this host for the DHT, signed by keyguard, with a serial above every
    /// one used before and above `passing` (a record made elsewhere) when keyguard would sign
    /// it (stored first, so a crash never reuses one for other contents).
    async fn new_dht_record(
        &self,
        me: &super::Me,
        address: &smvs_schema::HostAddress,
        now: i64,
        passing: Option<u64>,
    ) -> Result<DhtRecord, HostError> {
        let transport_key = self.transport.public();
        let certificate = self
            .keyguard
            .certify_transport(&me.username, &transport_key)
            .await?;
        let last = self.last_dht_serial().await?;
        let serial = next_dht_serial(last, now, passing)
            .ok_or_else(|| HostError::internal("the DHT serial in storage is at its end"))?;
        self.storage
            .set_setting(crate::storage::DHT_SERIAL, serial.to_be_bytes().to_vec())
            .await?;
        let user = smvs_directory::UserRecord {
            username: me.username.clone(),
            identity: me.identity,
            transport_key: certificate.key,
            transport_certificate: certificate.certificate,
            transport_not_after: certificate.not_after,
            host_address: address.clone(),
            serial,
            session_keys: None,
        };
        let value =
            smvs_directory::record::dht_record_value(&user, now).map_err(HostError::internal)?;
        // Below i64::MAX: checked above, and `now` is an i64.
        let seq = i64::try_from(serial).map_err(|e| HostError::internal(e.to_string()))?;
        let signature = self.keyguard.sign_dht_record(&value, seq).await?;
        Ok(DhtRecord {
            user,
            value,
            signature,
        })
    }
}

/// The serial of this host's next DHT record: above `last` (every one given out before), at
/// least the clock (`now`, ms), and above `passing` (a record made elsewhere) as far as
/// keyguard signs ([`smvs_directory::record::MAX_DHT_SEQ_AHEAD_MS`] ahead of the clock; a
/// record further ahead is passed at a later republish). `None` at the end of the range.
pub fn next_dht_serial(last: u64, now: i64, passing: Option<u64>) -> Option<u64> {
    let now = u64::try_from(now).unwrap_or(0);
    let ahead = u64::try_from(smvs_directory::record::MAX_DHT_SEQ_AHEAD_MS).unwrap_or(0);
    let mut serial = last.checked_add(1)?.max(now);
    if let Some(seen) = passing {
        serial = serial.max(seen.saturating_add(1).min(now.saturating_add(ahead)));
    }
    i64::try_from(serial).is_ok().then_some(serial)
}

/// The name an answer from the DHT goes by where directories' names are shown.
pub const DHT_ANSWER: &str = crate::config::DHT_SOURCE;

/// This host's record as put in the DHT: the value, its sequence (the serial) and the
/// identity's signature.
#[derive(Debug, Clone)]
pub(super) struct DhtRecord {
    pub user: smvs_directory::UserRecord,
    pub value: Vec<u8>,
    pub signature: Signature,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_serial_grows_passes_a_foreign_one_and_stays_signable() {
        let day = smvs_directory::record::MAX_DHT_SEQ_AHEAD_MS as u64;
        // Above the last one and at least the clock.
        assert_eq!(next_dht_serial(5, 1000, None), Some(1000));
        assert_eq!(next_dht_serial(2000, 1000, None), Some(2001));
        // Above a record made elsewhere...
        assert_eq!(next_dht_serial(5, 1000, Some(5000)), Some(5001));
        // ...as far as keyguard signs: a day ahead of the clock at most.
        assert_eq!(next_dht_serial(5, 1000, Some(u64::MAX)), Some(1000 + day));
        // Never below what was given out, whatever else.
        assert_eq!(next_dht_serial(9000 + day, 1000, Some(3)), Some(9001 + day));
        // The end of the range.
        assert_eq!(next_dht_serial(i64::MAX as u64, 1000, None), None);
        assert_eq!(next_dht_serial(u64::MAX, 1000, None), None);
    }
}
