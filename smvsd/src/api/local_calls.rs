//! The call part of the local API: placing, answering and ending calls for a device, and the
//! call agent that runs calls started over D-Bus.
//!
//! It translates only: each request becomes one of the façade's call commands.
//!
//! A device that places or answers a call passes a `CallDevice` capability; a task here forwards
//! the call manager's notices (answered, ended) to it. The device gets back a `CallControl`;
//! when the device lets it go — or its connection drops — the call is hung up.

use std::rc::Rc;

use actix::Addr;
use smvs_schema::local_capnp::{
    call_control, call_device, call_info, call_media, call_relay, host,
};
use tokio::sync::mpsc;

use smvs_schema::ErrorCode;

use crate::calls::{AgentRequest, DeviceNotice};
use crate::commands::{
    parse_user, AnswerCall, Commands, Hangup, ListCalls, PlaceCall, RegisterAgent, UnregisterAgent,
};
use crate::error::HostError;
use crate::model::{
    Answerer, CallId, CallInfo, CallState, DeviceCall, Media, RelayGrant, SignalKind, Viewer,
};

fn mailbox<T>(r: Result<T, actix::MailboxError>) -> Result<T, capnp::Error> {
    r.map_err(|_| HostError::shutting_down().into())
}

/// Writes what placing and answering a call both hand the device (the results of
/// `placeCall` and `answerCall` are different types of the same shape): the call, its control,
/// and the device's relay when the host gives one.
macro_rules! write_device_call {
    ($results:expr, $calls:expr, $call:expr) => {{
        let DeviceCall {
            info,
            token,
            relay,
            relay_only,
        } = $call;
        let mut r = $results.get();
        write_info(r.reborrow().init_call(), &info);
        r.set_control(control($calls, &info, token));
        if let Some(relay) = &relay {
            write_relay(r.reborrow().init_relay(), relay, relay_only);
        }
    }};
}

/// A device's media set-up. Its own address is required (its host decides whether the peer
/// sees it); the NAT's address is optional.
pub fn read_media(m: call_media::Reader<'_>, kind: SignalKind) -> Result<Media, capnp::Error> {
    let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, capnp::Error> {
        t?.to_str()
            .map(str::to_owned)
            .map_err(|_| HostError::bad_request("media address is not UTF-8").into())
    };
    let address = text(m.get_address())?;
    if address.is_empty() {
        return Err(HostError::bad_request("the device's media address is missing").into());
    }
    let reflexive = text(m.get_reflexive())?;
    let kem = m.get_kem()?;
    let mut media = Media::parse(m.get_public_key()?, &address, m.get_video(), m.get_audio())
        .and_then(|media| media.with_reflexive(&reflexive))
        .and_then(|media| media.with_kem(kind, kem))
        .map_err(HostError::bad_request)?;
    media.relay_only = m.get_relay_only();
    Ok(media)
}

fn write_media(mut b: call_media::Builder<'_>, m: &Media) {
    let text = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
    b.set_public_key(&m.public_key);
    b.set_address(text(m.address));
    b.set_reflexive(text(m.reflexive));
    b.set_relay_only(m.relay_only);
    b.set_kem(&m.kem);
    b.set_video(m.video);
    b.set_audio(m.audio);
}

fn write_relay(mut b: call_relay::Builder<'_>, relay: &RelayGrant, relay_only: bool) {
    b.set_address(relay.address.to_string());
    b.set_alloc(&relay.alloc);
    b.set_token(&relay.token);
    b.set_relay_only(relay_only);
}

pub fn call_state(s: CallState) -> smvs_schema::local_capnp::CallState {
    match s {
        CallState::Ringing => smvs_schema::local_capnp::CallState::Ringing,
        CallState::Active => smvs_schema::local_capnp::CallState::Active,
        CallState::Ended => smvs_schema::local_capnp::CallState::Ended,
    }
}

pub fn write_info(mut b: call_info::Builder<'_>, info: &CallInfo) {
    b.set_id(&info.id.0);
    b.set_peer(info.peer.as_str());
    b.set_outgoing(info.outgoing);
    b.set_state(call_state(info.state));
    b.set_reason(&info.reason);
    b.set_caller_identity(&info.caller_identity);
    b.set_callee_identity(&info.callee_identity);
    b.set_since(info.since);
    if let Some(media) = &info.peer_media {
        b.set_has_peer_media(true);
        write_media(b.init_peer_media(), media);
    }
}

fn call_id(raw: &[u8]) -> Result<Option<CallId>, capnp::Error> {
    if raw.is_empty() {
        return Ok(None);
    }
    CallId::from_slice(raw)
        .map(Some)
        .ok_or_else(|| HostError::bad_request("a call id is 16 bytes").into())
}

/// Forwards the call manager's notices to the device, in order, until the call ends.
fn forward_notices(mut rx: mpsc::UnboundedReceiver<DeviceNotice>, device: call_device::Client) {
    tokio::task::spawn_local(async move {
        while let Some(notice) = rx.recv().await {
            let done = matches!(notice, DeviceNotice::Ended(_));
            let sent = match notice {
                DeviceNotice::Answered(media) => {
                    let mut request = device.answered_request();
                    write_media(request.get().init_media(), &media);
                    request.send().promise.await.map(drop)
                }
                DeviceNotice::Ended(reason) => {
                    let mut request = device.ended_request();
                    request.get().set_reason(&reason);
                    request.send().promise.await.map(drop)
                }
            };
            if sent.is_err() || done {
                return;
            }
        }
    });
}

struct CallControlRpc {
    calls: Addr<Commands>,
    id: CallId,
    token: u64,
}

impl call_control::Server for CallControlRpc {
    async fn hangup(
        self: Rc<Self>,
        _: call_control::HangupParams,
        _: call_control::HangupResults,
    ) -> Result<(), capnp::Error> {
        mailbox(
            self.calls
                .send(Hangup {
                    id: Some(self.id),
                    token: Some(self.token),
                    device_gone: false,
                })
                .await,
        )??;
        Ok(())
    }
}

impl Drop for CallControlRpc {
    fn drop(&mut self) {
        // The device let go of its call (or its connection dropped): the call is over.
        self.calls.do_send(Hangup {
            id: Some(self.id),
            token: Some(self.token),
            device_gone: false,
        });
    }
}

/// The device's handle on its call (see [`CallControlRpc`]).
fn control(calls: &Addr<Commands>, info: &CallInfo, token: u64) -> call_control::Client {
    capnp_rpc::new_client(CallControlRpc {
        calls: calls.clone(),
        id: info.id,
        token,
    })
}

pub async fn place(
    calls: &Addr<Commands>,
    params: host::PlaceCallParams,
    mut results: host::PlaceCallResults,
) -> Result<(), capnp::Error> {
    let (peer, media, device) = {
        let p = params.get()?;
        let peer = parse_user(
            p.get_peer()?
                .to_str()
                .map_err(|_| HostError::bad_request("text is not UTF-8"))?,
        )?;
        (
            peer,
            read_media(p.get_media()?, SignalKind::Offer)?,
            p.get_device()?,
        )
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let call = mailbox(
        calls
            .send(PlaceCall {
                peer,
                media,
                device: tx,
            })
            .await,
    )??;
    forward_notices(rx, device);
    write_device_call!(results, calls, call);
    Ok(())
}

pub async fn answer(
    calls: &Addr<Commands>,
    by: Answerer,
    params: host::AnswerCallParams,
    mut results: host::AnswerCallResults,
) -> Result<(), capnp::Error> {
    let (id, media, device) = {
        let p = params.get()?;
        (
            call_id(p.get_id()?)?,
            read_media(p.get_media()?, SignalKind::Answer)?,
            p.get_device()?,
        )
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let call = mailbox(
        calls
            .send(AnswerCall {
                id,
                media,
                device: tx,
                by,
            })
            .await,
    )??;
    forward_notices(rx, device);
    write_device_call!(results, calls, call);
    Ok(())
}

pub async fn hangup(
    calls: &Addr<Commands>,
    params: host::HangupCallParams,
) -> Result<(), capnp::Error> {
    let id = call_id(params.get()?.get_id()?)?;
    mailbox(
        calls
            .send(Hangup {
                id,
                token: None,
                device_gone: false,
            })
            .await,
    )??;
    Ok(())
}

pub async fn list(
    calls: &Addr<Commands>,
    viewer: Viewer,
    mut results: host::CallsResults,
) -> Result<(), capnp::Error> {
    let all = mailbox(calls.send(ListCalls).await)??;
    let mut list = results.get().init_calls(super::list_len(all.len())?);
    for (i, info) in (0..).zip(all) {
        write_info(list.reborrow().get(i), &info.seen_by(viewer));
    }
    Ok(())
}

struct AgentRegistration {
    calls: Addr<Commands>,
    token: u64,
}

impl smvs_schema::local_capnp::subscription::Server for AgentRegistration {}

impl Drop for AgentRegistration {
    fn drop(&mut self) {
        self.calls.do_send(UnregisterAgent(self.token));
    }
}

pub async fn register_agent(
    calls: &Addr<Commands>,
    params: host::RegisterCallAgentParams,
    mut results: host::RegisterCallAgentResults,
) -> Result<(), capnp::Error> {
    let agent = params.get()?.get_agent()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<AgentRequest>();
    let token = mailbox(calls.send(RegisterAgent(tx)).await)??;
    tokio::task::spawn_local(async move {
        while let Some(request) = rx.recv().await {
            let agent = agent.clone();
            // Each request on its own: placing a call waits for the peer's host.
            tokio::task::spawn_local(async move {
                let refused = |e: capnp::Error| HostError::new(ErrorCode::NoDevice, e.extra);
                match request {
                    AgentRequest::Place {
                        peer,
                        video,
                        audio,
                        reply,
                    } => {
                        let mut r = agent.place_request();
                        r.get().set_peer(peer.as_str());
                        r.get().set_video(video);
                        r.get().set_audio(audio);
                        let result = match r.send().promise.await {
                            Ok(answer) => answer
                                .get()
                                .and_then(|a| a.get_id())
                                .map_err(refused)
                                .and_then(|id| {
                                    CallId::from_slice(id).ok_or_else(|| {
                                        HostError::new(
                                            ErrorCode::NoDevice,
                                            "the agent sent a bad call id",
                                        )
                                    })
                                }),
                            Err(e) => Err(refused(e)),
                        };
                        let _ = reply.send(result);
                    }
                    AgentRequest::Answer { id, reply } => {
                        let mut r = agent.answer_request();
                        r.get().set_id(&id.0);
                        let result = r.send().promise.await.map(|_| id).map_err(refused);
                        let _ = reply.send(result);
                    }
                }
            });
        }
    });
    results
        .get()
        .set_registration(capnp_rpc::new_client(AgentRegistration {
            calls: calls.clone(),
            token,
        }));
    Ok(())
}
