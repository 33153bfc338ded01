//! Calls: this process as the device that runs a call's media.
//!
//! ```text
//!  call USER ─► check plugins ─► bind UDP, fresh X25519 and X-Wing keys ─► placeCall (smvsd
//!               rings the peer)
//!            ◄─ answered(peer's X25519 key, X-Wing encapsulation, address) ◄─ smvsd ◄─ peer's host
//!            ─► media keys (HKDF over the X25519 of the two call keys and the X-Wing secret,
//!               bound to the call id, both identities and the exchange; `smvs_media::keys`)
//!            ─► smvs-media: VP8/Opus RTP, sealed per packet, UDP to the peer
//!            ─► until --duration, SIGINT/SIGTERM or the peer's hang-up ─► stats
//!  answer    ─► the same, encapsulating to the X-Wing key of the caller's offer
//! ```
//!
//! smvsd carries only the two endpoints' call keys and addresses; the media never passes
//! through it, the directory or the message path, except through the two hosts' call ports
//! when the devices cannot reach each other or must not learn each other's addresses
//! (`--relay`): then each host forwards sealed datagrams it cannot read. Before ringing, the
//! device asks its host's call port what its NAT makes of its address (STUN), and offers that
//! too; the media session checks every path and takes the most direct that works.

use std::future::Future;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde::Serialize;
use smvs_crypto::{
    AgreementKeyPair, KemSharedSecret, XWingCiphertext, XWingKeyPair, XWingPublicKey,
};
use smvs_media::{
    AudioSource, KeyInputs, MediaKeys, MediaOptions, MediaSession, PeerCandidate, Reach, Role,
    Sink, VideoSource,
};
use smvs_schema::{AddressKind, Username};
use tokio::sync::mpsc;

use crate::cli::{AudioArg, MediaArgs, SinkArg, VideoArg};
use crate::client::{
    CallId, CallMediaView, CallNotice, CallState, DeviceCall, EventView, HostClient, Link,
};
use crate::error::CtlError;
use crate::output::{self, Format};

/// How often the runner looks at the pipeline for errors.
const MEDIA_CHECK: Duration = Duration::from_millis(200);
/// A STUN request to the host's call port is sent this many times...
const STUN_TRIES: u32 = 3;
/// ... waiting this long for each answer.
const STUN_WAIT: Duration = Duration::from_millis(300);

pub fn media_options(args: &MediaArgs) -> MediaOptions {
    MediaOptions {
        video: match args.video {
            VideoArg::Test => VideoSource::Test,
            VideoArg::Camera => VideoSource::Camera,
            VideoArg::None => VideoSource::None,
        },
        audio: match args.audio {
            AudioArg::Test => AudioSource::Test,
            AudioArg::Mic => AudioSource::Mic,
            AudioArg::None => AudioSource::None,
        },
        sink: match args.sink {
            SinkArg::Window => Sink::Window,
            SinkArg::Null => Sink::Null,
        },
        width: args.size.0,
        height: args.size.1,
        fps: args.fps,
        latency_probe: args.latency_probe,
        ..MediaOptions::default()
    }
}

/// A device ready to take part in a call: its socket, its call keys, and what it tells the peer.
pub struct Endpoint {
    socket: UdpSocket,
    key: AgreementKeyPair,
    kem: CallKem,
    media: CallMediaView,
    /// Where the media socket is bound (what `media.address` says).
    local: SocketAddr,
    options: MediaOptions,
}

/// This device's side of the call's X-Wing exchange, which makes the media keys post-quantum.
enum CallKem {
    /// Placing the call: a fresh key pair, whose public half the offer carries; the answer
    /// brings the callee's encapsulation to it.
    Caller(XWingKeyPair),
    /// Answering: the secret this device encapsulated to the caller's key (the answer carries
    /// the ciphertext), and that key as the offer gave it.
    Callee {
        secret: KemSharedSecret,
        caller_public: XWingPublicKey,
        ciphertext: XWingCiphertext,
    },
}

impl CallKem {
    /// What the offer or answer carries.
    fn wire(&self) -> Vec<u8> {
        match self {
            CallKem::Caller(pair) => pair.public().as_bytes().to_vec(),
            CallKem::Callee { ciphertext, .. } => ciphertext.as_bytes().to_vec(),
        }
    }
}

/// Checks the GStreamer elements and opens the devices first (a missing plugin, camera or
/// display is reported before anyone rings), then binds the media socket and makes the call key.
async fn endpoint(host: &HostClient, args: &MediaArgs, kem: CallKem) -> Result<Endpoint, CtlError> {
    let options = media_options(args);
    smvs_media::check_plugins(&options).map_err(|e| CtlError::Local(e.to_string()))?;
    smvs_media::check_devices(&options).map_err(|e| CtlError::Local(e.to_string()))?;
    let status = host.status().await?;
    let ip = match args.media_address {
        Some(ip) => ip,
        None => default_media_ip(host, &status)?,
    };
    let socket = UdpSocket::bind((ip, 0)).map_err(|source| CtlError::Io {
        what: "cannot open a UDP socket for the call's media",
        source,
    })?;
    let address = socket.local_addr().map_err(|source| CtlError::Io {
        what: "cannot read the media socket's address",
        source,
    })?;
    let key = AgreementKeyPair::generate().map_err(|e| CtlError::Local(e.to_string()))?;
    // Relayed only, the NAT's address would not be used (nor told).
    let reflexive = match (&status.call_port, args.relay) {
        (Some(port), false) => reflexive_address(&socket, port).await,
        _ => None,
    }
    .filter(|mapped| *mapped != address);
    Ok(Endpoint {
        media: CallMediaView {
            public_key: *key.public().as_bytes(),
            address: Some(address),
            reflexive,
            relay_only: args.relay,
            video: options.video != VideoSource::None,
            audio: options.audio != AudioSource::None,
            kem: kem.wire(),
        },
        local: address,
        socket,
        key,
        kem,
        options,
    })
}

/// What the host's call port sees this socket's datagrams come from (STUN, RFC 8489): the
/// address its NAT shows the world, if it answers in time. Nothing else is read from the
/// socket meanwhile (the call has not started).
async fn reflexive_address(socket: &UdpSocket, call_port: &str) -> Option<SocketAddr> {
    let server: SocketAddr = call_port.parse().ok()?;
    let socket = socket.try_clone().ok()?;
    tokio::task::spawn_blocking(move || {
        use smvs_transport::callport::Frame;
        let transaction: [u8; 12] = smvs_crypto::random_array();
        let mut request = Vec::new();
        Frame::BindingRequest { transaction }.encode(&mut request);
        socket.set_read_timeout(Some(STUN_WAIT)).ok()?;
        let mut buf = [0u8; 512];
        for _ in 0..STUN_TRIES {
            socket.send_to(&request, server).ok()?;
            let deadline = Instant::now() + STUN_WAIT;
            while Instant::now() < deadline {
                let Ok((n, from)) = socket.recv_from(&mut buf) else {
                    break;
                };
                if from != server {
                    continue;
                }
                if let Ok(Frame::BindingResponse {
                    transaction: t,
                    mapped,
                }) = Frame::decode(buf.get(..n)?)
                {
                    if t == transaction {
                        return Some(mapped);
                    }
                }
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// Where this device receives media unless `--media-address` says: beside the host (the Unix
/// socket), the host's published IP; on a linked device, its own end of the link to the host
/// (the address the host sees it at), since the media goes straight to this machine.
fn default_media_ip(
    host: &HostClient,
    status: &crate::client::HostStatus,
) -> Result<IpAddr, CtlError> {
    match host.link() {
        Link::Device {
            local_ip: Some(ip),
        } => Ok(ip),
        Link::Device { local_ip: None } => Err(CtlError::Local(
            "this device reaches its host through a proxy, so it has no address of its own the other side could send media to; say where to receive media with --media-address IP".into(),
        )),
        Link::Socket => {
            let published = status.host_address.clone().unwrap_or_default();
            published
                .parse::<SocketAddr>()
                .map(|a| a.ip())
                .ok()
                .filter(|ip: &IpAddr| !ip.is_unspecified())
                .ok_or_else(|| {
                    CtlError::Local(format!(
                        "this host's published address {published:?} is not an IP address; say where to receive media with --media-address IP"
                    ))
                })
        }
    }
}

/// Where the media may go: the peer's addresses (none when this call is relayed only) and our
/// host's relay.
///
/// A peer may only name a media address of a local kind (loopback, link-local, private,
/// shared) when ours is of that same kind: else it would point our checks at a service on this
/// machine or our network. The rule is `AddressKind::may_reach`, the one hosts apply to each
/// other's host addresses. Such an address is left out; with nothing left and no relay, the
/// call is refused.
fn reach(endpoint: &Endpoint, call: &DeviceCall, peer: &CallMediaView) -> Result<Reach, CtlError> {
    let ours = AddressKind::of(endpoint.local.ip());
    let relay_only = endpoint.media.relay_only || call.relay_only;
    let mut refused = None;
    let mut candidates = Vec::new();
    if !relay_only {
        for (address, reflexive) in [(peer.address, false), (peer.reflexive, true)] {
            let Some(address) = address else { continue };
            let theirs = AddressKind::of(address.ip());
            if ours.may_reach(theirs) {
                candidates.push(PeerCandidate { address, reflexive });
            } else {
                refused = Some(format!(
                    "the other side asked for media at {address}, {}, which this device (at {}) does not send to",
                    theirs.describe(),
                    endpoint.local.ip()
                ));
            }
        }
    }
    if candidates.is_empty() && call.relay.is_none() {
        return Err(CtlError::Protocol(match (refused, relay_only) {
            (Some(why), _) => format!("{why}; refused"),
            (None, true) => "this call is to be relayed, and the host gave no relay (is its call port on? `call_listen`)".into(),
            (None, false) => "the other side named no address this device could send to, and the host gave no relay".into(),
        }));
    }
    Ok(Reach {
        peer: candidates,
        relay: call.relay.clone(),
        behind_nat: endpoint.media.reflexive.is_some(),
        relay_only,
    })
}

fn keys(
    endpoint: &Endpoint,
    call: &DeviceCall,
    role: Role,
    peer: &CallMediaView,
) -> Result<MediaKeys, CtlError> {
    let theirs = smvs_crypto::AgreementPublicKey::from_bytes(&peer.public_key)
        .map_err(|e| CtlError::Protocol(format!("the peer's call key: {e}")))?;
    let ours = endpoint.key.public();
    let (caller_public, callee_public) = match role {
        Role::Caller => (&ours, &theirs),
        Role::Callee => (&theirs, &ours),
    };
    let decapsulated;
    let (kem_secret, caller_kem_public, callee_kem_ciphertext) = match (&endpoint.kem, role) {
        (CallKem::Caller(pair), Role::Caller) => {
            let ciphertext = XWingCiphertext::from_bytes(&peer.kem).map_err(|e| {
                CtlError::Protocol(format!("the answer's X-Wing encapsulation: {e}"))
            })?;
            decapsulated = pair.decapsulate(&ciphertext).map_err(|e| {
                CtlError::Local(format!(
                    "cannot open the answer's X-Wing encapsulation: {e}"
                ))
            })?;
            (&decapsulated, pair.public().as_bytes(), peer.kem.as_slice())
        }
        (
            CallKem::Callee {
                secret,
                caller_public,
                ciphertext,
            },
            Role::Callee,
        ) => {
            // The offer smvsd hands back with the answer must be the one encapsulated to.
            if peer.kem.as_slice() != caller_public.as_bytes() {
                return Err(CtlError::Protocol(
                    "the caller's X-Wing key changed between ringing and answering".into(),
                ));
            }
            (secret, caller_public.as_bytes(), &ciphertext.as_bytes()[..])
        }
        _ => {
            return Err(CtlError::Local(
                "a call endpoint used in the wrong role".into(),
            ))
        }
    };
    smvs_media::derive_media_keys(
        &endpoint.key,
        kem_secret,
        role,
        &KeyInputs {
            call_id: call.call.id.as_bytes(),
            caller_identity: &call.call.caller_identity,
            callee_identity: &call.call.callee_identity,
            caller_public,
            callee_public,
            caller_kem_public,
            callee_kem_ciphertext,
        },
    )
    .map_err(|e| CtlError::Local(format!("cannot derive the call's media keys: {e}")))
}

fn ended(peer: &Username, reason: &str) -> CtlError {
    CtlError::Local(output::call_end_text(peer.as_str(), reason))
}

/// `base`'s media flags, less what a call does not carry (no video, or no audio).
pub fn media_for(base: &MediaArgs, video: bool, audio: bool) -> MediaArgs {
    let mut media = base.clone();
    if !video {
        media.video = VideoArg::None;
    }
    if !audio {
        media.audio = AudioArg::None;
    }
    media
}

/// `smvsctl call USER`.
pub async fn place(
    host: &HostClient,
    user: &Username,
    args: &MediaArgs,
    format: Format,
    out: &mut dyn Write,
    stop: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    tokio::pin!(stop);
    let (mut call, endpoint) = ring(host, user, args).await?;
    if format == Format::Text && !args.stats {
        eprintln!("smvsctl: ringing {user} (call {})", call.call.id);
    }
    let peer_media = tokio::select! {
        answered = wait_answer(&mut call, user) => answered?,
        _ = &mut stop => {
            let _ = call.hangup().await;
            return Err(CtlError::Local(format!("cancelled; the call to {user} was hung up")));
        }
        reason = host.closed() => return Err(CtlError::Disconnected(reason)),
    };
    run(
        call,
        endpoint,
        peer_media,
        Role::Caller,
        args,
        format,
        out,
        stop,
        None,
    )
    .await
}

/// Prepares this device and rings `user`; returns once the peer's host has the offer.
pub async fn ring(
    host: &HostClient,
    user: &Username,
    args: &MediaArgs,
) -> Result<(DeviceCall, Endpoint), CtlError> {
    let kem = XWingKeyPair::generate().map_err(|e| CtlError::Local(e.to_string()))?;
    let endpoint = endpoint(host, args, CallKem::Caller(kem)).await?;
    let call = host.place_call(user, &endpoint.media).await?;
    Ok((call, endpoint))
}

/// Waits until the callee picks up (their media set-up) or the call ends (an error saying why).
pub async fn wait_answer(
    call: &mut DeviceCall,
    user: &Username,
) -> Result<CallMediaView, CtlError> {
    match call.notices.recv().await {
        Some(CallNotice::Answered(media)) => Ok(media),
        Some(CallNotice::Ended(reason)) => Err(ended(user, &reason)),
        None => Err(CtlError::Disconnected("smvsd dropped the call".into())),
    }
}

/// Prepares this device and picks up the ringing call `id`; returns the caller's media set-up.
pub async fn pick_up(
    host: &HostClient,
    id: &CallId,
    args: &MediaArgs,
) -> Result<(DeviceCall, Endpoint, CallMediaView), CtlError> {
    let offered = host
        .calls()
        .await?
        .into_iter()
        .find(|c| &c.id == id && !c.outgoing)
        .and_then(|c| c.peer_media)
        .ok_or_else(|| CtlError::Refused {
            code: Some(crate::error::ErrorCode::NotFound),
            message: format!("no call {id} is ringing"),
        })?;
    let caller_public = XWingPublicKey::from_bytes(&offered.kem)
        .map_err(|e| CtlError::Protocol(format!("the offer's X-Wing call key: {e}")))?;
    let (ciphertext, secret) = caller_public
        .encapsulate()
        .map_err(|e| CtlError::Protocol(format!("the offer's X-Wing call key: {e}")))?;
    let kem = CallKem::Callee {
        secret,
        caller_public,
        ciphertext,
    };
    let endpoint = endpoint(host, args, kem).await?;
    let call = host.answer_call(Some(id), &endpoint.media).await?;
    let peer_media = call
        .call
        .peer_media
        .clone()
        .ok_or_else(|| CtlError::Protocol("the answered call carries no offer".into()))?;
    Ok((call, endpoint, peer_media))
}

/// `smvsctl answer [CALL_ID]`.
pub async fn answer(
    host: &HostClient,
    id: Option<&CallId>,
    wait: u64,
    args: &MediaArgs,
    format: Format,
    out: &mut dyn Write,
    stop: impl Future<Output = ()>,
) -> Result<(), CtlError> {
    tokio::pin!(stop);
    let id = tokio::select! {
        found = ringing(host, id, Duration::from_secs(wait)) => found?,
        _ = &mut stop => return Err(CtlError::Local("cancelled".into())),
    };
    let (call, endpoint, peer_media) = pick_up(host, &id, args).await?;
    run(
        call,
        endpoint,
        peer_media,
        Role::Callee,
        args,
        format,
        out,
        stop,
        None,
    )
    .await
}

/// The id of a ringing incoming call (`id`, or the one that rings), waiting up to `wait`.
async fn ringing(
    host: &HostClient,
    id: Option<&CallId>,
    wait: Duration,
) -> Result<CallId, CtlError> {
    let wanted = |peer_id: &CallId| id.is_none_or(|id| id == peer_id);
    // Subscribed before looking, so a call that starts ringing in between is not missed.
    let (tx, mut events) = mpsc::channel(crate::client::EVENT_QUEUE);
    let _subscription = if wait.is_zero() {
        None
    } else {
        Some(host.subscribe(tx).await?)
    };
    // A call another device picked up is asked for all the same: smvsd then says so.
    if let Some(call) = host
        .calls()
        .await?
        .into_iter()
        .find(|c| !c.outgoing && c.state != CallState::Ended && wanted(&c.id))
    {
        return Ok(call.id);
    }
    let none = || match id {
        Some(id) => CtlError::Refused {
            code: Some(crate::error::ErrorCode::NotFound),
            message: format!("no call {id} is ringing"),
        },
        None => CtlError::Refused {
            code: Some(crate::error::ErrorCode::NotFound),
            message: "no call is ringing".into(),
        },
    };
    if wait.is_zero() {
        return Err(none());
    }
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return Err(none()),
            event = events.recv() => match event {
                Some(Ok(EventView::CallIncoming(c))) if wanted(&c.id) => return Ok(c.id),
                Some(_) => continue,
                None => return Err(CtlError::Disconnected("smvsd ended the subscription".into())),
            },
        }
    }
}

/// What a front end running a call in its own process (the chat) asks of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallCommand {
    Hangup,
    /// Mute (true) or unmute our microphone.
    Mute(bool),
}

/// How a front end steers a running call and watches it: commands in, and a live snapshot of
/// the statistics (and whether we are muted) out, refreshed every 200 ms.
pub struct CallControl {
    pub commands: mpsc::UnboundedReceiver<CallCommand>,
    pub live: tokio::sync::watch::Sender<Option<(smvs_media::CallStats, bool)>>,
}

/// What `--stats` prints (and `--json` without it, minus the statistics).
#[derive(Debug, Serialize)]
struct CallReport {
    call_id: CallId,
    #[serde(serialize_with = "crate::client::as_display")]
    peer: Username,
    outgoing: bool,
    /// Where this device received the call's media, and the other device's own address when
    /// it was told (not when either side relays only).
    media_address: SocketAddr,
    peer_media_address: Option<SocketAddr>,
    /// What this device's NAT showed the world, per its host's STUN answer (None: no NAT seen,
    /// or relayed only).
    reflexive_address: Option<SocketAddr>,
    /// hangup (we ended it), remote-hangup, failed, or what smvsd said
    ended: String,
    duration_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    stats: Option<smvs_media::CallStats>,
}

/// The next command of a front end; never, without one (or once it is gone).
async fn next_command(commands: &mut Option<mpsc::UnboundedReceiver<CallCommand>>) -> CallCommand {
    match commands {
        Some(rx) => match rx.recv().await {
            Some(command) => command,
            None => {
                *commands = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

/// Runs the media of an answered call until `--duration`, `stop`, the peer's hang-up or a media
/// failure; hangs up if the end is ours; prints the report.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mut call: DeviceCall,
    endpoint: Endpoint,
    peer_media: CallMediaView,
    role: Role,
    args: &MediaArgs,
    format: Format,
    out: &mut dyn Write,
    stop: impl Future<Output = ()>,
    control: Option<CallControl>,
) -> Result<(), CtlError> {
    tokio::pin!(stop);
    let (mut commands, live) = match control {
        Some(c) => (Some(c.commands), Some(c.live)),
        None => (None, None),
    };
    let reach = match reach(&endpoint, &call, &peer_media) {
        Ok(reach) => reach,
        Err(e) => {
            let _ = call.hangup().await;
            return Err(e);
        }
    };
    let keys = keys(&endpoint, &call, role, &peer_media)?;
    let peer = call.call.peer.clone();
    let media_address = endpoint.local;
    let endpoint_reflexive = endpoint.media.reflexive;
    let mut options = endpoint.options;
    options.window_title = Some(format!("SMVS — call with {peer}"));
    let session = MediaSession::start_on(endpoint.socket, reach, keys, options)
        .map_err(|e| CtlError::Local(format!("cannot start the call's media: {e}")))?;
    if format == Format::Text && !args.stats {
        eprintln!("smvsctl: in a call with {peer} (call {})", call.call.id);
    }
    let started = Instant::now();
    let deadline = async {
        match args.duration {
            Some(secs) => tokio::time::sleep(Duration::from_secs(secs)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut check = tokio::time::interval(MEDIA_CHECK);
    let mut failure = None;
    let (reason, ours) = loop {
        tokio::select! {
            _ = &mut deadline => break ("hangup".to_string(), true),
            _ = &mut stop => break ("hangup".to_string(), true),
            notice = call.notices.recv() => match notice {
                Some(CallNotice::Ended(reason)) => break (reason, false),
                Some(CallNotice::Answered(_)) => continue,
                None => break ("disconnected".to_string(), false),
            },
            command = next_command(&mut commands) => match command {
                CallCommand::Hangup => break ("hangup".to_string(), true),
                CallCommand::Mute(muted) => {
                    session.set_audio_muted(muted);
                }
            },
            _ = check.tick() => {
                if let Some(error) = session.error() {
                    failure = Some(error);
                    break ("failed".to_string(), true);
                }
                if let Some(live) = &live {
                    live.send_replace(Some((session.stats(), session.audio_muted())));
                }
            }
        }
    };
    if ours {
        // The call may already be over on smvsd's side; that is fine.
        let _ = call.hangup().await;
    }
    let duration_s = started.elapsed().as_secs_f64();
    // Stopping joins the media threads; a fraction of a second at most.
    let stats = session.stop();
    let report = CallReport {
        call_id: call.call.id,
        peer: peer.clone(),
        outgoing: call.call.outgoing,
        media_address,
        peer_media_address: peer_media.address,
        reflexive_address: endpoint_reflexive,
        ended: reason.clone(),
        duration_s,
        stats: args.stats.then_some(stats),
    };
    if args.stats || format == Format::Json {
        writeln!(out, "{}", output::to_json(&report)?).map_err(CtlError::output)?;
    } else {
        let why = match reason.as_str() {
            "hangup" => "hung up".to_string(),
            other => output::call_end_text(peer.as_str(), other),
        };
        writeln!(out, "call with {peer} ended after {duration_s:.1} s: {why}")
            .map_err(CtlError::output)?;
    }
    out.flush().map_err(CtlError::output)?;
    match failure {
        Some(error) => Err(CtlError::Local(format!("the call's media failed: {error}"))),
        None => Ok(()),
    }
}
