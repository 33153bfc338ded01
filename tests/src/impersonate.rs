//! Playing a user's host from a test: with the host's transport key (read from its state
//! directory) and its keyguard, a test can speak raw `HostLink` to another host, as that user's
//! host would, and send envelopes the real smvsd never would: sealed as the test likes
//! ([`text_message`], [`seal`]) and delivered as they are ([`deliver`]).

use anyhow::Context;
use smvs_crypto::{AgreementKeyPair, AgreementPublicKey};
use smvs_schema::host_capnp::{delivery_outcome, host_link};
use smvs_schema::Username;
use smvsd::model::{MessageId, Payload};
use smvsd::session::{self, Header, Inner, SessionKeys};

use crate::directory::DirectoryProcess;
use crate::host::HostProcess;

/// What a test needs to act as `me`'s host towards `peer`'s host.
pub struct PlayedHost {
    /// `me`'s host transport key (its Noise static key).
    pub transport: AgreementKeyPair,
    /// The session keys `me` and `peer` share.
    pub keys: SessionKeys,
    /// `peer`'s host transport key, as its directory record states it.
    pub peer_transport: AgreementPublicKey,
    /// Both identities, as the directory states them.
    pub identity: smvs_crypto::IdentityBundle,
    pub peer_identity: smvs_crypto::IdentityBundle,
}

/// Reads `me`'s transport key and derives the session keys with `peer` through `me`'s
/// keyguard. Stop `me`'s smvsd first if its own deliveries would get in the way. Call inside a
/// `LocalSet`.
pub async fn play_host(
    dir: &DirectoryProcess,
    me: &HostProcess,
    peer: &HostProcess,
) -> anyhow::Result<PlayedHost> {
    let secret =
        std::fs::read(me.state_dir.join("transport.key")).context("reading the transport key")?;
    let transport = AgreementKeyPair::from_secret_bytes(&secret)?;
    let directory = dir.client().await?;
    let my_record = directory.lookup(&Username::parse(&me.name)?).await?;
    let peer_record = directory.lookup(&Username::parse(&peer.name)?).await?;
    let keyguard = me.keyguard.client().await?;
    let salt = session::agreement_salt(&my_record.user.identity, &peer_record.user.identity);
    let shared = keyguard
        .derive_shared_key(
            &peer_record.user.identity.agreement_key,
            &salt,
            session::AGREEMENT_INFO,
        )
        .await?;
    Ok(PlayedHost {
        transport,
        keys: SessionKeys::from_shared(&shared)?,
        peer_transport: peer_record.user.transport_key,
        identity: my_record.user.identity,
        peer_identity: peer_record.user.identity,
    })
}

/// Plays `me`'s host in a session v2 handshake with the host behind `link` (whose user is
/// `peer`): `me`'s keyguard answers the questions, as smvsd's would. The peer's host replaces
/// its session with `me` by this one. Call inside a `LocalSet`.
pub async fn v2_handshake(
    me: &HostProcess,
    peer: &str,
    played: &PlayedHost,
    link: &host_link::Client,
) -> anyhow::Result<smvsd::session::SessionV2> {
    use smvsd::session::fresh::OsFresh;
    use smvsd::session::handshake::Initiator;
    let keyguard = me.keyguard.client().await?;
    let mine = keyguard.session_keys(&played.identity).await?;
    let theirs = link.session_keys_request().send().promise.await?;
    let theirs = theirs.get()?;
    let peer_kem = smvs_crypto::XWingPublicKey::from_bytes(theirs.get_kem()?)?;
    let (me_party, peer_party) = parties(me, peer, played, &mine.kem, peer_kem)?;
    let initiator = Initiator::start(me_party, peer_party, &mut OsFresh)?;
    let mut request = link.handshake_request();
    {
        let mut r = request.get();
        r.set_sender(&me.name);
        r.set_init(initiator.message());
        r.set_kem(mine.kem.as_bytes());
        r.set_kem_signature(mine.kem_signature.as_bytes());
    }
    let answer = request.send().promise.await?;
    let response = match answer.get()?.get_outcome()?.which() {
        Ok(smvs_schema::host_capnp::handshake_outcome::Response(r)) => r?.to_vec(),
        Ok(smvs_schema::host_capnp::handshake_outcome::Refused(why)) => {
            anyhow::bail!("refused: {}", why?.to_str()?)
        }
        Ok(smvs_schema::host_capnp::handshake_outcome::Later(why)) => {
            anyhow::bail!("later: {}", why?.to_str()?)
        }
        Err(e) => anyhow::bail!("unknown outcome {}", e.0),
    };
    let pending = initiator.on_response(&response)?;
    let answers = crate::keyguard::answer_handshake(&keyguard, &pending).await?;
    Ok(pending.finish(answers, &mut OsFresh)?.into())
}

/// Plays `me`'s host making a session v2 with `peer` from the prekey `peer`'s directory
/// record publishes (prekey mode: no call to the peer's host). The session carries the offer
/// its envelopes go with ([`deliver_v2_offered`]). Call inside a `LocalSet`.
pub async fn v2_prekey_session(
    dir: &DirectoryProcess,
    me: &HostProcess,
    peer: &str,
    played: &PlayedHost,
) -> anyhow::Result<smvsd::session::SessionV2> {
    use smvsd::session::fresh::OsFresh;
    use smvsd::session::handshake;
    let record = dir.client().await?.lookup(&Username::parse(peer)?).await?;
    let published = record
        .user
        .session_keys
        .context("the peer's record publishes no session keys")?;
    let keyguard = me.keyguard.client().await?;
    let mine = keyguard.session_keys(&played.identity).await?;
    let (me_party, peer_party) = parties(me, peer, played, &mine.kem, published.kem.clone())?;
    let now_s = smvsd::model::now_ms() / 1000;
    let prekey = handshake::verify_prekey(&published.prekey, &played.peer_identity, now_s)?;
    let (init, pending) =
        handshake::initiate_with_prekey(&me_party, &peer_party, prekey, &mut OsFresh)?;
    let answers = crate::keyguard::answer_handshake(&keyguard, &pending).await?;
    let session: smvsd::session::SessionV2 = pending.finish(answers, &mut OsFresh)?.into();
    Ok(session.with_offer(smvsd::session::PrekeyOffer {
        init,
        kem: mine.kem.as_bytes().to_vec(),
        kem_signature: mine.kem_signature.as_bytes().to_vec(),
    }))
}

/// Both complete identities of a played handshake: `me`'s with its X-Wing key `mine`, the
/// peer's with `peer_kem`.
fn parties(
    me: &HostProcess,
    peer: &str,
    played: &PlayedHost,
    mine: &smvs_crypto::XWingPublicKey,
    peer_kem: smvs_crypto::XWingPublicKey,
) -> anyhow::Result<(
    smvsd::session::handshake::Party,
    smvsd::session::handshake::Party,
)> {
    use smvsd::session::handshake::Party;
    Ok((
        Party {
            username: Username::parse(&me.name)?,
            identity: played.identity,
            kem: mine.clone(),
        },
        Party {
            username: Username::parse(peer)?,
            identity: played.peer_identity,
            kem: peer_kem,
        },
    ))
}

/// `inner` sealed under the v2 session `session` (which moves on).
pub fn seal_v2(session: &mut smvsd::session::SessionV2, inner: &Inner) -> anyhow::Result<Vec<u8>> {
    Ok(session.seal(
        &Header {
            id: &inner.id,
            sender: &inner.from,
            recipient: &inner.to,
        },
        &session::encode_inner(inner),
        &mut smvsd::session::fresh::OsFresh,
    )?)
}

/// A raw `HostLink` to `peer`'s host, authenticated with `key` (whoever's it is), pinning
/// `expected` as the peer's key. Call inside a `LocalSet`.
pub async fn link(
    peer: &HostProcess,
    key: &AgreementKeyPair,
    expected: &AgreementPublicKey,
) -> anyhow::Result<host_link::Client> {
    let channel = smvs_transport::connect(
        peer.listen,
        key,
        smvs_transport::HOST_PROLOGUE,
        Some(expected),
    )
    .await?;
    let (system, client) = smvs_transport::rpc::client::<host_link::Client>(channel);
    tokio::task::spawn_local(async move {
        let _ = system.await;
    });
    Ok(client)
}

/// The inside of a text message, as a host seals it: `prev_hash` is the hash of the sender's
/// previous message (empty for the first).
pub fn text_message(
    id: MessageId,
    from: &str,
    to: &str,
    time: i64,
    prev_hash: &[u8],
    text: &str,
) -> anyhow::Result<Inner> {
    Ok(Inner {
        id,
        from: Username::parse(from)?,
        to: Username::parse(to)?,
        time,
        prev_hash: prev_hash.to_vec(),
        content: session::Content::Message(Payload::Text(text.into())),
        log_heads: Vec::new(),
    })
}

/// `inner` sealed with `keys`, under the header its own id, sender and recipient make.
pub fn seal(keys: &SessionKeys, inner: &Inner) -> anyhow::Result<Vec<u8>> {
    Ok(session::seal(
        keys,
        &Header {
            id: &inner.id,
            sender: &inner.from,
            recipient: &inner.to,
        },
        &session::encode_inner(inner),
    )?)
}

/// An envelope as it goes on the wire, whatever it claims.
#[derive(Debug, Clone)]
pub struct RawEnvelope {
    pub id: MessageId,
    pub sender: String,
    pub recipient: String,
    pub sealed: Vec<u8>,
}

/// What a host answers to an envelope it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub id: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Delivers `envelope` over `link` as it is (current format and session versions). The error
/// is the peer's typed answer, rendered as text for the tests' assertions (`refused: …`,
/// `later: …`), or the broken link.
pub async fn deliver(
    link: &host_link::Client,
    envelope: &RawEnvelope,
) -> Result<Receipt, capnp::Error> {
    deliver_as(link, envelope, session::SESSION_V1, &[], None).await
}

/// [`deliver`] as a session v2 envelope of the session `session_id` names.
pub async fn deliver_v2(
    link: &host_link::Client,
    envelope: &RawEnvelope,
    session_id: &[u8],
) -> Result<Receipt, capnp::Error> {
    deliver_as(link, envelope, session::SESSION_V2, session_id, None).await
}

/// [`deliver_v2`] with a prekey handshake's offer beside the envelope.
pub async fn deliver_v2_offered(
    link: &host_link::Client,
    envelope: &RawEnvelope,
    session_id: &[u8],
    offer: &session::PrekeyOffer,
) -> Result<Receipt, capnp::Error> {
    deliver_as(link, envelope, session::SESSION_V2, session_id, Some(offer)).await
}

/// Delivers `envelopes` (session v1, as [`deliver`]) in one `deliverBatch` call: the error is
/// the call's (refused as a whole, or the broken link); else each envelope's answer in its
/// place, rendered as [`deliver`] renders it.
pub async fn deliver_batch(
    link: &host_link::Client,
    envelopes: &[RawEnvelope],
) -> Result<Vec<Result<Receipt, capnp::Error>>, capnp::Error> {
    let mut request = link.deliver_batch_request();
    {
        let mut list = request
            .get()
            .init_envelopes(u32::try_from(envelopes.len()).unwrap_or(u32::MAX));
        for (i, envelope) in (0u32..).zip(envelopes) {
            fill(
                list.reborrow().get(i),
                envelope,
                session::SESSION_V1,
                &[],
                None,
            );
        }
    }
    let response = request.send().promise.await?;
    let outcomes = response.get()?.get_outcomes()?;
    Ok(outcomes.iter().map(read_outcome).collect())
}

fn fill(
    mut e: smvs_schema::host_capnp::envelope::Builder<'_>,
    envelope: &RawEnvelope,
    version: u16,
    session_id: &[u8],
    offer: Option<&session::PrekeyOffer>,
) {
    e.set_format_version(session::ENVELOPE_FORMAT);
    e.set_id(&envelope.id.0);
    e.set_sender(&envelope.sender);
    e.set_recipient(&envelope.recipient);
    e.set_session_version(version);
    e.set_session_id(session_id);
    e.set_sealed(&envelope.sealed);
    if let Some(offer) = offer {
        let mut p = e.init_prekey_init();
        p.set_init(&offer.init);
        p.set_kem(&offer.kem);
        p.set_kem_signature(&offer.kem_signature);
    }
}

async fn deliver_as(
    link: &host_link::Client,
    envelope: &RawEnvelope,
    version: u16,
    session_id: &[u8],
    offer: Option<&session::PrekeyOffer>,
) -> Result<Receipt, capnp::Error> {
    let mut request = link.deliver_request();
    fill(
        request.get().init_envelope(),
        envelope,
        version,
        session_id,
        offer,
    );
    let response = request.send().promise.await?;
    read_outcome(response.get()?.get_outcome()?)
}

fn read_outcome(outcome: delivery_outcome::Reader<'_>) -> Result<Receipt, capnp::Error> {
    let receipt = match outcome.which() {
        Ok(delivery_outcome::Receipt(receipt)) => receipt?,
        Ok(delivery_outcome::Refused(why)) => {
            return Err(capnp::Error::failed(format!("refused: {}", why?.to_str()?)))
        }
        Ok(delivery_outcome::Later(why)) => {
            return Err(capnp::Error::failed(format!("later: {}", why?.to_str()?)))
        }
        Err(e) => return Err(capnp::Error::failed(format!("unknown outcome {}", e.0))),
    };
    Ok(Receipt {
        id: receipt.get_id()?.to_vec(),
        signature: receipt.get_signature()?.to_vec(),
    })
}
