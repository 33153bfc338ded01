//! Peer links: getting the outbox to other hosts.
//!
//! ```text
//!  Kick(peer) ──► PeerLinks ──(first time)──► delivery task for peer (on this thread)
//!                                              loop: outbox ─► connect (pinned transport key)
//!                                                    ─► deliver × N, pipelined ─► receipts
//!                                                    ─► statuses: sent, delivered / failed
//!                                              on failure: back off (exponential, jitter)
//! ```
//!
//! The outbox lives in storage, so a restart loses nothing: at start-up every peer with queued
//! messages gets a kick. Many envelopes travel at once on one connection; Cap'n Proto delivers
//! calls on one capability in order, and the receiving host queues them for storage in that
//! order, so a conversation arrives in the order it was written.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use actix::{Actor, Context, Handler, Message};
use backon::{BackoffBuilder, ExponentialBuilder};
use smvs_schema::host_capnp::host_link;
use smvs_schema::Username;
use tokio::sync::Notify;

use crate::error::HostError;
use crate::host::HostCore;
use crate::model::{HostEvent, MessageId, Status, StoredMessage};
use crate::session::{self, Header};

/// Envelopes in flight on one link at a time.
pub const WINDOW: u32 = 2048;

#[derive(Message)]
#[rtype(result = "()")]
pub struct Kick(pub Username);

pub struct PeerLinks {
    core: Rc<HostCore>,
    links: HashMap<Username, Rc<Notify>>,
}

impl PeerLinks {
    pub fn new(core: Rc<HostCore>) -> PeerLinks {
        PeerLinks {
            core,
            links: HashMap::new(),
        }
    }
}

impl Actor for PeerLinks {
    type Context = Context<Self>;
    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(8192);
    }
}

impl Handler<Kick> for PeerLinks {
    type Result = ();
    fn handle(&mut self, Kick(peer): Kick, _: &mut Self::Context) {
        if let Some(wake) = self.links.get(&peer) {
            wake.notify_one();
            return;
        }
        let wake = Rc::new(Notify::new());
        self.links.insert(peer.clone(), wake.clone());
        tokio::task::spawn_local(delivery_task(self.core.clone(), peer, wake));
    }
}

fn backoff(max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(250))
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Why a delivery round ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DeliveryError {
    #[error("{0}")]
    Host(#[from] HostError),
    #[error("link: {0}")]
    Link(#[from] smvs_transport::TransportError),
    #[error("rpc: {0}")]
    Rpc(#[from] capnp::Error),
    #[error("the peer's receipt does not check out")]
    BadReceipt,
}

async fn delivery_task(core: Rc<HostCore>, peer: Username, wake: Rc<Notify>) {
    let mut delays = backoff(core.config.retry_max);
    // The link stays up between bursts; a failure drops it and the next round reconnects.
    let mut link: Option<Link> = None;
    loop {
        match stream_outbox(&core, &peer, &mut link).await {
            Ok(()) => {
                delays = backoff(core.config.retry_max);
                // The outbox is empty: wait for new work (or look again now and then).
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            }
            Err(e) => {
                link = None;
                let delay = delays.next().unwrap_or(core.config.retry_max);
                tracing::debug!(%peer, error = %e, ?delay, "delivery failed; will retry");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// A connection to another host's `HostLink`, closed when dropped.
pub(crate) type Link = smvs_transport::rpc::Link<host_link::Client>;

/// Opens a link to `peer`'s host.
pub(crate) async fn connect(core: &HostCore, peer: &Username) -> Result<Link, DeliveryError> {
    Ok(Link::open(open_channel(core, peer).await?))
}

/// An authenticated channel to `peer`'s host: its pinned transport key, directly or through
/// the SOCKS5 proxy.
async fn open_channel(
    core: &HostCore,
    peer: &Username,
) -> Result<smvs_transport::SecureChannel, DeliveryError> {
    let (contact, _) = core.trusted_contact(peer).await?;
    let key = HostCore::contact_transport_key(&contact)?;
    let address = contact.host_address.as_str();
    let channel = match &core.config.socks5_proxy {
        None => {
            smvs_transport::connect(
                address,
                &core.transport,
                smvs_transport::HOST_PROLOGUE,
                Some(&key),
            )
            .await?
        }
        Some(proxy) => {
            // The proxy resolves the name (an onion address, say); we only hand it the text.
            let (host, port) = split_address(address)?;
            let tcp = tokio_socks::tcp::Socks5Stream::connect(proxy.as_str(), (host, port))
                .await
                .map_err(|e| {
                    HostError::new(
                        "proxy",
                        format!("SOCKS5 proxy {proxy} cannot reach {address}: {e}"),
                    )
                })?
                .into_inner();
            smvs_transport::connect_over(
                tcp,
                address,
                &core.transport,
                smvs_transport::HOST_PROLOGUE,
                Some(&key),
            )
            .await?
        }
    };
    Ok(channel)
}

/// Splits a host address into host (without IPv6 brackets) and port.
fn split_address(address: &str) -> Result<(&str, u16), HostError> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| HostError::internal(format!("stored host address {address} has no port")))?;
    let port = port.parse().map_err(HostError::internal)?;
    Ok((host.trim_start_matches('[').trim_end_matches(']'), port))
}

/// Connects to the peer's host and streams the outbox to it until the outbox is empty:
/// up to [`WINDOW`] envelopes in flight, topped up from storage as receipts come back, so the
/// link never idles between batches. Statuses are written off the critical path.
async fn stream_outbox(
    core: &Rc<HostCore>,
    peer: &Username,
    link: &mut Option<Link>,
) -> Result<(), DeliveryError> {
    let mut pending: VecDeque<(i64, StoredMessage)> = core
        .storage
        .outbox(peer, 0, WINDOW)
        .await
        .map_err(HostError::from)?
        .into();
    if pending.is_empty() {
        return Ok(());
    }
    let me = core.me()?;
    let (contact, _) = core.trusted_contact(peer).await?;
    let identity = contact.identity().map_err(HostError::from)?;
    let keys = core.session_keys(peer, &identity).await?;
    let client = match link {
        Some(open) => open.client().clone(),
        None => link.insert(connect(core, peer).await?).client().clone(),
    };

    let mut in_flight = VecDeque::with_capacity(WINDOW as usize);
    let mut last_seq = 0;
    let mut delivered = Vec::new();
    loop {
        let mut sent_now = Vec::new();
        while in_flight.len() < WINDOW as usize {
            let Some((seq, message)) = pending.pop_front() else {
                break;
            };
            last_seq = seq;
            if message.status == Status::Queued {
                sent_now.push(message.id);
            }
            in_flight.push_back((
                message.id,
                send_envelope(&client, &keys, &me.username, peer, &message)?,
            ));
        }
        if !sent_now.is_empty() {
            core.mark_sent(&sent_now);
            publish_all(core, peer, sent_now, Status::Sent);
        }
        if pending.is_empty() && in_flight.len() < WINDOW as usize / 2 {
            let room = WINDOW - u32::try_from(in_flight.len()).unwrap_or(WINDOW);
            let more = core
                .storage
                .outbox(peer, last_seq, room)
                .await
                .map_err(HostError::from)?;
            if !more.is_empty() {
                pending.extend(more);
                continue;
            }
        }
        let Some((id, promise)) = in_flight.pop_front() else {
            // Awaited, not spawned: the next round reads the outbox, and must not see these
            // again as undelivered (they would be sent twice).
            let ids = std::mem::take(&mut delivered);
            core.unmark_sent(&ids);
            let changed = core
                .storage
                .set_outgoing_status(peer, ids, Status::Delivered)
                .await
                .map_err(HostError::from)?;
            publish_all(core, peer, changed, Status::Delivered);
            return Ok(());
        };
        match promise.await {
            Ok(response) => match check_receipt(&keys, &id, peer, response) {
                Ok(()) => delivered.push(id),
                Err(e) => {
                    record_status(core, peer, delivered, Status::Delivered);
                    give_up_round(core, id, &in_flight);
                    return Err(e);
                }
            },
            Err(e) if e.extra.contains("refused: ") => {
                tracing::warn!(%peer, id = %id, reason = %e.extra, "the peer's host refused a message; it will not be retried");
                record_status(core, peer, vec![id], Status::Failed);
            }
            Err(e) => {
                record_status(core, peer, delivered, Status::Delivered);
                give_up_round(core, id, &in_flight);
                return Err(DeliveryError::Rpc(e));
            }
        }
        if delivered.len() >= WINDOW as usize / 2 {
            record_status(
                core,
                peer,
                std::mem::take(&mut delivered),
                Status::Delivered,
            );
        }
    }
}

/// The answer to one `deliver`: the peer's receipt, or why not.
pub(crate) type Delivery = capnp::capability::Promise<
    capnp::capability::Response<host_link::deliver_results::Owned>,
    capnp::Error,
>;

fn send_envelope(
    client: &host_link::Client,
    keys: &session::SessionKeys,
    me: &Username,
    peer: &Username,
    message: &StoredMessage,
) -> Result<Delivery, DeliveryError> {
    let inner = session::Inner {
        id: message.id,
        from: me.clone(),
        to: peer.clone(),
        time: message.time,
        prev_hash: message.prev_hash.clone(),
        content: session::Content::Message(message.payload.clone()),
    };
    Ok(deliver(client, keys, &inner)?)
}

/// Seals `inner` (from us to its recipient) into an envelope and hands it to the peer's host.
pub(crate) fn deliver(
    client: &host_link::Client,
    keys: &session::SessionKeys,
    inner: &session::Inner,
) -> Result<Delivery, HostError> {
    let (me, peer) = (&inner.from, &inner.to);
    let header = Header {
        id: &inner.id,
        sender: me,
        recipient: peer,
    };
    let sealed =
        session::seal(keys, &header, &session::encode_inner(inner)).map_err(HostError::internal)?;
    let mut request = client.deliver_request();
    {
        let mut e = request.get().init_envelope();
        e.set_format_version(session::ENVELOPE_FORMAT);
        e.set_id(&inner.id.0);
        e.set_sender(me.as_str());
        e.set_recipient(peer.as_str());
        e.set_session_version(session::SESSION_V1);
        e.set_sealed(&sealed);
    }
    Ok(request.send().promise)
}

/// The link broke: what was on its way is back to "queued" (it is resent on the next round).
fn give_up_round<T>(core: &HostCore, current: MessageId, in_flight: &VecDeque<(MessageId, T)>) {
    let mut ids: Vec<MessageId> = in_flight.iter().map(|(id, _)| *id).collect();
    ids.push(current);
    core.unmark_sent(&ids);
}

/// Writes statuses and tells devices, without holding up the link. Storage runs jobs in the
/// order they are queued, and a delivered message is never set back to sent.
fn record_status(core: &Rc<HostCore>, peer: &Username, ids: Vec<MessageId>, status: Status) {
    if ids.is_empty() {
        return;
    }
    core.unmark_sent(&ids);
    let (core, peer) = (core.clone(), peer.clone());
    tokio::task::spawn_local(async move {
        match core.storage.set_outgoing_status(&peer, ids, status).await {
            Ok(changed) => publish_all(&core, &peer, changed, status),
            Err(e) => tracing::error!(error = %e, "recording delivery statuses failed"),
        }
    });
}

pub(crate) fn check_receipt(
    keys: &session::SessionKeys,
    id: &MessageId,
    peer: &Username,
    response: capnp::capability::Response<host_link::deliver_results::Owned>,
) -> Result<(), DeliveryError> {
    let receipt = response.get()?.get_receipt()?;
    let recipient = receipt
        .get_recipient()?
        .to_str()
        .map_err(|_| DeliveryError::BadReceipt)?;
    let expected = session::receipt_tag(keys, id, peer, receipt.get_stored_at());
    if receipt.get_id()? != id.0
        || recipient != peer.as_str()
        || !smvs_crypto::constant_time_eq(receipt.get_signature()?, &expected)
    {
        return Err(DeliveryError::BadReceipt);
    }
    Ok(())
}

fn publish_all(core: &HostCore, peer: &Username, ids: Vec<MessageId>, status: Status) {
    for id in ids {
        core.publish(HostEvent::MessageStatus {
            id,
            peer: peer.clone(),
            status,
        });
    }
}
