//! The peer port: other hosts connect here (Noise, then Cap'n Proto `HostLink`) to deliver
//! envelopes. Each connection's Noise key is handed to the inbox with every envelope, which
//! checks it against the sender's directory record. This module only translates (and keeps
//! each link within its budget): the inbox decides, and a refusal or "later" goes back as the
//! typed `DeliveryOutcome` of `host.capnp`.
//!
//! Limits: [`MAX_PEER_CONNECTIONS`] at once, [`MAX_CONNECTIONS_PER_ADDRESS`] from one IP
//! address, a handshake within [`HANDSHAKE_TIMEOUT`], and a link with nothing in handling for
//! the configured idle time (`--peer-idle-seconds`) is closed; the sending host reconnects
//! when it has something to send.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use smvs_crypto::AgreementKeyPair;
use smvs_schema::host_capnp::{delivery_outcome, envelope, host_link};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::error::IncomingError;
use crate::inbox::{EnvelopeData, HandshakeOffer, Inbox, MAX_SEALED};

/// Peer connections served at once.
pub const MAX_PEER_CONNECTIONS: usize = 1024;
/// Peer connections one IP address may hold at once (a sending host keeps one, plus one per
/// call signal for a moment). One address may be a hosting box (smvs-hostctl) whose users'
/// hosts all connect from it: 32 refused the 33rd of them that wrote to one person at once
/// (seen in `make bench`'s density run), so a quarter of all connections. A refused host
/// retries; nothing is lost.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
/// How often a link with work in flight is looked at for idleness, at most.
const IDLE_CHECK: Duration = Duration::from_secs(1);
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest message a host link accepts: the largest envelope and then some.
const MAX_LINK_MESSAGE: usize = 512 * 1024;
// A sender's batch (outbox) stays within half of it, whatever its estimate misses.
const _: () = assert!(crate::outbox::BATCH_BYTES * 2 <= MAX_LINK_MESSAGE);
/// Envelopes one link may have in handling at once (a sender's window is 2048).
const MAX_ENVELOPES_IN_FLIGHT: usize = 4096;
/// Envelopes one `deliverBatch` call may carry (`host.capnp`).
pub const MAX_BATCH: u32 = 256;
/// Sealed bytes one link may have in handling at once.
const MAX_BYTES_IN_FLIGHT: usize = 32 * 1024 * 1024;
/// Sealed bytes all links together may have in handling at once. Without it, 1024 links of
/// 32 MiB each could make the host hold 32 GiB.
const MAX_BYTES_IN_FLIGHT_ALL: usize = 256 * 1024 * 1024;
/// Senders one link may make the host look up in the directory (a sender not yet pinned, or
/// whose pinned host key differs from the link's). A real host speaks for one user; a link that
/// names many users is trying to spend our directory budget.
pub const MAX_LOOKUPS_PER_LINK: usize = 8;

/// Serves the peer port until the task is dropped. `transport` is the host's Noise key;
/// a link with nothing in handling for `idle_limit` is closed.
pub async fn serve(
    listener: TcpListener,
    transport: Rc<AgreementKeyPair>,
    inbox: Rc<Inbox>,
    idle_limit: Duration,
) {
    let budget = std::sync::Arc::new(Semaphore::new(MAX_PEER_CONNECTIONS));
    let per_address: Rc<RefCell<HashMap<IpAddr, usize>>> = Rc::default();
    let all_bytes: Rc<Cell<usize>> = Rc::default();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a peer connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = budget.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "peer connection limit reached; closing a new connection");
            continue;
        };
        let Some(address_slot) = AddressSlot::take(
            &per_address,
            address_group(peer.ip()),
            MAX_CONNECTIONS_PER_ADDRESS,
        ) else {
            tracing::warn!(%peer, "too many connections from one address; closing a new one");
            continue;
        };
        let (transport, inbox, all_bytes) = (transport.clone(), inbox.clone(), all_bytes.clone());
        tokio::task::spawn_local(async move {
            match smvs_transport::accept(
                tcp,
                &transport,
                smvs_transport::HOST_PROLOGUE,
                HANDSHAKE_TIMEOUT,
            )
            .await
            {
                Ok(channel) => {
                    let remote_key = channel.remote_key;
                    let activity = Rc::new(Activity {
                        in_flight: Cell::new((0, 0)),
                        last: Cell::new(Instant::now()),
                    });
                    let link: host_link::Client = capnp_rpc::new_client(HostLinkRpc {
                        inbox,
                        all_bytes,
                        lookups: Rc::new(crate::inbox::LookupBudget::new(MAX_LOOKUPS_PER_LINK)),
                        remote_key,
                        activity: activity.clone(),
                        announced: Cell::new(false),
                    });
                    let system =
                        smvs_transport::rpc::serve_limited(channel, link.client, MAX_LINK_MESSAGE);
                    let disconnect = system.get_disconnector();
                    let idle = async {
                        loop {
                            let quiet = activity.last.get().elapsed();
                            if activity.in_flight.get().0 == 0 && quiet >= idle_limit {
                                return;
                            }
                            // Sleep until the link could have been quiet long enough (not
                            // every second: a hosting box holds many idle links), and look
                            // again at most every IDLE_CHECK while work is in flight.
                            tokio::time::sleep(idle_limit.saturating_sub(quiet).max(IDLE_CHECK))
                                .await;
                        }
                    };
                    tokio::select! {
                        ended = system => if let Err(e) = ended {
                            tracing::debug!(%peer, error = %e, "peer connection ended");
                        },
                        _ = idle => {
                            tracing::debug!(%peer, "closing an idle peer connection");
                            // Disconnecting (not just dropping) lets capnp-rpc release the
                            // connection.
                            let _ = tokio::time::timeout(Duration::from_secs(1), disconnect).await;
                        }
                    }
                }
                Err(e) => tracing::debug!(%peer, error = %e, "peer handshake failed"),
            }
            drop(address_slot);
            drop(permit);
        });
    }
}

/// One connection's count against its address's limit, given back when dropped.
pub(super) struct AddressSlot {
    table: Rc<RefCell<HashMap<IpAddr, usize>>>,
    address: IpAddr,
}

impl AddressSlot {
    /// A slot for `address` (already grouped), if it holds fewer than `limit`.
    pub(super) fn take(
        table: &Rc<RefCell<HashMap<IpAddr, usize>>>,
        address: IpAddr,
        limit: usize,
    ) -> Option<AddressSlot> {
        let mut t = table.borrow_mut();
        let n = t.entry(address).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: table.clone(),
            address,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut t = self.table.borrow_mut();
        if let Some(n) = t.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.address);
            }
        }
    }
}

/// What a link is doing, for its budget and its idle check.
struct Activity {
    /// Envelopes (count, sealed bytes) of this link being handled right now. Cap'n Proto
    /// keeps reading calls whatever we do, so a link past its budget is answered "later" at
    /// once instead of being queued without bound.
    in_flight: Cell<(usize, usize)>,
    /// When the last envelope arrived (or the link opened).
    last: Cell<Instant>,
}

struct HostLinkRpc {
    inbox: Rc<Inbox>,
    /// Sealed bytes in handling on all links together.
    all_bytes: Rc<Cell<usize>>,
    /// This link's directory look-ups left.
    lookups: Rc<crate::inbox::LookupBudget>,
    remote_key: smvs_crypto::AgreementPublicKey,
    activity: Rc<Activity>,
    /// Whether this link has announced an address: one statement per link (a host that
    /// moved opens a link for it), so that a link cannot keep storage busy with them.
    announced: Cell<bool>,
}

/// Releases the host-wide byte budget when an envelope's handling ends, however it ends.
struct AllBytes<'a>(&'a Cell<usize>, usize);

impl Drop for AllBytes<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(self.1));
    }
}

/// What counts as one address for the per-address limit: an IPv4 address, or an IPv6 /64
/// (one host is usually given a whole /64, so counting single IPv6 addresses limits nothing).
pub fn address_group(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            for s in &mut segments[4..] {
                *s = 0;
            }
            IpAddr::V6(std::net::Ipv6Addr::from(segments))
        }
        v4 => v4,
    }
}

/// Releases a link's budget when an envelope's handling ends, however it ends.
struct Budget<'a>(&'a Cell<(usize, usize)>, usize);

impl Drop for Budget<'_> {
    fn drop(&mut self) {
        let (n, bytes) = self.0.get();
        self.0
            .set((n.saturating_sub(1), bytes.saturating_sub(self.1)));
    }
}

/// Writes the typed answer to one envelope.
fn answer(
    mut outcome: delivery_outcome::Builder<'_>,
    result: Result<crate::inbox::ReceiptData, IncomingError>,
) {
    match result {
        Ok(receipt) => {
            let mut r = outcome.init_receipt();
            r.set_id(&receipt.id.0);
            r.set_recipient(receipt.recipient.as_str());
            r.set_stored_at(receipt.stored_at);
            r.set_signature(&receipt.tag);
        }
        Err(IncomingError::Refused(why)) => outcome.set_refused(why),
        Err(IncomingError::Later(why)) => outcome.set_later(why),
    }
}

impl host_link::Server for HostLinkRpc {
    async fn deliver(
        self: Rc<Self>,
        params: host_link::DeliverParams,
        mut results: host_link::DeliverResults,
    ) -> Result<(), capnp::Error> {
        let result = async { self.take(read_envelope(params)?).await }.await;
        answer(results.get().init_outcome(), result);
        Ok(())
    }

    /// Each envelope as `deliver` would take it alone, all of them at once (as calls in flight
    /// are): one call and one answer for many envelopes instead of one each.
    async fn deliver_batch(
        self: Rc<Self>,
        params: host_link::DeliverBatchParams,
        mut results: host_link::DeliverBatchResults,
    ) -> Result<(), capnp::Error> {
        // Read now, while the message is at hand: the futures hold plain data only.
        let envelopes = batch_envelope_data(params.get()?)?;
        let handled = futures::future::join_all(envelopes.into_iter().map(|read| {
            let this = self.clone();
            async move { this.take(read?).await }
        }))
        .await;
        let mut outcomes = results
            .get()
            .init_outcomes(u32::try_from(handled.len()).unwrap_or(MAX_BATCH));
        for (i, result) in (0u32..).zip(handled) {
            answer(outcomes.reborrow().get(i), result);
        }
        Ok(())
    }

    async fn announce_address(
        self: Rc<Self>,
        params: host_link::AnnounceAddressParams,
        _: host_link::AnnounceAddressResults,
    ) -> Result<(), capnp::Error> {
        self.activity.last.set(Instant::now());
        if self.announced.replace(true) {
            return Err(capnp::Error::failed("refused".into()));
        }
        let p = params.get()?;
        let bad = |what: &str| capnp::Error::failed(format!("refused: {what}"));
        let peer =
            smvs_schema::Username::parse(p.get_username()?.to_str().map_err(|_| bad("name"))?)
                .map_err(|_| bad("name"))?;
        let address = smvs_schema::HostAddress::parse(
            p.get_host_address()?.to_str().map_err(|_| bad("address"))?,
        )
        .map_err(|_| bad("address"))?;
        let signature =
            smvs_crypto::Signature::from_bytes(p.get_signature()?).map_err(|_| bad("signature"))?;
        self.inbox
            .accept_address(
                &self.remote_key,
                &peer,
                address,
                p.get_issued_at(),
                &signature,
            )
            .await
            .map_err(|e| capnp::Error::failed(e.to_string()))
    }

    async fn session_keys(
        self: Rc<Self>,
        _: host_link::SessionKeysParams,
        mut results: host_link::SessionKeysResults,
    ) -> Result<(), capnp::Error> {
        self.activity.last.set(Instant::now());
        let (kem, signature) = self
            .inbox
            .own_session_keys()
            .await
            .map_err(|e| capnp::Error::failed(e.to_string()))?;
        let mut r = results.get();
        r.set_kem(kem.as_bytes());
        r.set_kem_signature(signature.as_bytes());
        Ok(())
    }

    async fn handshake(
        self: Rc<Self>,
        params: host_link::HandshakeParams,
        mut results: host_link::HandshakeResults,
    ) -> Result<(), capnp::Error> {
        self.activity.last.set(Instant::now());
        let p = params.get()?;
        let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, capnp::Error> {
            Ok(t?.to_string().unwrap_or_default())
        };
        let offer = HandshakeOffer {
            sender: text(p.get_sender())?,
            init: p.get_init()?.to_vec(),
            kem: p.get_kem()?.to_vec(),
            kem_signature: p.get_kem_signature()?.to_vec(),
        };
        let answered = self
            .inbox
            .accept_handshake(self.remote_key, offer, &self.lookups)
            .await;
        let mut outcome = results.get().init_outcome();
        match answered {
            Ok(response) => outcome.set_response(&response),
            Err(IncomingError::Refused(why)) => outcome.set_refused(why),
            Err(IncomingError::Later(why)) => outcome.set_later(why),
        }
        Ok(())
    }
}

impl HostLinkRpc {
    /// One envelope through the link's budget to the inbox.
    async fn take(
        &self,
        envelope: EnvelopeData,
    ) -> Result<crate::inbox::ReceiptData, IncomingError> {
        let size = envelope.sealed.len();
        self.activity.last.set(Instant::now());
        let (n, bytes) = self.activity.in_flight.get();
        if n >= MAX_ENVELOPES_IN_FLIGHT || bytes + size > MAX_BYTES_IN_FLIGHT {
            return Err(IncomingError::Later(
                "too many envelopes in flight on this link".into(),
            ));
        }
        if self.all_bytes.get() + size > MAX_BYTES_IN_FLIGHT_ALL {
            return Err(IncomingError::Later(
                "the host has too much in handling; try again soon".into(),
            ));
        }
        self.activity.in_flight.set((n + 1, bytes + size));
        self.all_bytes.set(self.all_bytes.get() + size);
        let _budget = Budget(&self.activity.in_flight, size);
        let _all = AllBytes(&self.all_bytes, size);
        self.inbox
            .accept(self.remote_key, envelope, &self.lookups)
            .await
    }
}

/// The envelope as plain data, or why it is refused as it stands.
fn read_envelope(params: host_link::DeliverParams) -> Result<EnvelopeData, IncomingError> {
    let params = params
        .get()
        .map_err(|e| IncomingError::Refused(format!("malformed envelope: {e}")))?;
    envelope_data(params)
}

/// The reading half of [`read_envelope`], over the parameters as read from the wire. Public
/// (and hidden) only so that the fuzz targets in `fuzz/` run this code rather than a copy.
#[doc(hidden)]
pub fn envelope_data(
    params: host_link::deliver_params::Reader<'_>,
) -> Result<EnvelopeData, IncomingError> {
    let e = params
        .get_envelope()
        .map_err(|e| IncomingError::Refused(format!("malformed envelope: {e}")))?;
    envelope_fields(e)
}

/// A `deliverBatch` call's envelopes as plain data, each read (or refused) on its own; the
/// call as a whole is refused when its list is unreadable or longer than [`MAX_BATCH`]. Public
/// (and hidden) for the fuzz targets, as [`envelope_data`].
#[doc(hidden)]
pub fn batch_envelope_data(
    params: host_link::deliver_batch_params::Reader<'_>,
) -> Result<Vec<Result<EnvelopeData, IncomingError>>, capnp::Error> {
    let envelopes = params.get_envelopes()?;
    if envelopes.len() > MAX_BATCH {
        return Err(capnp::Error::failed(format!(
            "more than {MAX_BATCH} envelopes in one batch"
        )));
    }
    Ok(envelopes.iter().map(envelope_fields).collect())
}

/// One envelope's fields as plain data (from `deliver` or from one place of `deliverBatch`).
fn envelope_fields(e: envelope::Reader<'_>) -> Result<EnvelopeData, IncomingError> {
    let malformed = |e: capnp::Error| IncomingError::Refused(format!("malformed envelope: {e}"));
    let sealed = e.get_sealed().map_err(malformed)?;
    if sealed.len() > MAX_SEALED {
        return Err(IncomingError::Refused("envelope too large".into()));
    }
    let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, IncomingError> {
        t.map_err(malformed)?
            .to_string()
            .map_err(|_| IncomingError::Refused("a name is not UTF-8".into()))
    };
    Ok(EnvelopeData {
        format: e.get_format_version(),
        id: e.get_id().map_err(malformed)?.to_vec(),
        sender: text(e.get_sender())?,
        recipient: text(e.get_recipient())?,
        session_version: e.get_session_version(),
        session_id: e.get_session_id().map_err(malformed)?.to_vec(),
        sealed: sealed.to_vec(),
        prekey_init: if e.has_prekey_init() {
            let p = e.get_prekey_init().map_err(malformed)?;
            let offer = crate::session::PrekeyOffer {
                init: p.get_init().map_err(malformed)?.to_vec(),
                kem: p.get_kem().map_err(malformed)?.to_vec(),
                kem_signature: p.get_kem_signature().map_err(malformed)?.to_vec(),
            };
            if offer.init.len() != crate::session::handshake::PREKEY_INIT_LEN
                || offer.kem.len() != smvs_crypto::XWING_PUBLIC_KEY_LEN
                || offer.kem_signature.len() != 64
            {
                return Err(IncomingError::Refused(
                    "malformed envelope: a prekey handshake of the wrong size".into(),
                ));
            }
            Some(offer)
        } else {
            None
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ipv6_peers_are_counted_per_slash_64_and_ipv4_per_address() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_group(a), address_group(b));
        assert_ne!(address_group(a), address_group(c));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(address_group(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            address_group(mapped),
            v4,
            "an IPv4 address written as IPv6 is that IPv4"
        );
        let table = Rc::default();
        let slots: Vec<_> = (0..MAX_CONNECTIONS_PER_ADDRESS)
            .map(|i| {
                let ip: IpAddr = format!("2001:db8:1:2::{:x}", i + 1).parse().unwrap();
                AddressSlot::take(&table, address_group(ip), MAX_CONNECTIONS_PER_ADDRESS).unwrap()
            })
            .collect();
        assert!(
            AddressSlot::take(&table, address_group(a), MAX_CONNECTIONS_PER_ADDRESS).is_none(),
            "the /64 is full"
        );
        assert!(AddressSlot::take(&table, address_group(c), MAX_CONNECTIONS_PER_ADDRESS).is_some());
        drop(slots);
        assert!(AddressSlot::take(&table, address_group(a), MAX_CONNECTIONS_PER_ADDRESS).is_some());
    }
}
