//! Calls the agent runs: those the user answers on its notification, and (beside the host)
//! those D-Bus `PlaceCall` and `AnswerCall` hand to it as the registered call agent.

use std::rc::{Rc, Weak};

use smvs_media::Role;
use smvs_schema::local_capnp::call_agent;
use smvs_schema::Username;

use super::Agent;
use crate::cli::MediaArgs;
use crate::client::{CallId, HostClient, Subscription};
use crate::error::CtlError;
use crate::output::Format;

/// Picks up the ringing call `id` on `host` and runs its media here. The call is marked as
/// this agent's first, so its becoming active is not taken for another device's answer.
pub async fn answer(
    agent: &Agent,
    host: &HostClient,
    id: CallId,
    video: bool,
) -> Result<(), CtlError> {
    let media = crate::call::media_for(&agent.media, video, true);
    agent.calls.borrow_mut().mine.insert(id);
    match crate::call::pick_up(host, &id, &media).await {
        Ok((call, endpoint, peer_media)) => {
            spawn_media(call, endpoint, peer_media, Role::Callee, media);
            Ok(())
        }
        Err(e) => {
            agent.calls.borrow_mut().mine.remove(&id);
            Err(e)
        }
    }
}

/// Runs an answered call's media and reports how it ended on stdout (the journal under
/// systemd; JSON with `--stats`).
fn spawn_media(
    call: crate::client::DeviceCall,
    endpoint: crate::call::Endpoint,
    peer_media: crate::client::CallMediaView,
    role: Role,
    media: MediaArgs,
) {
    tokio::task::spawn_local(async move {
        let mut out = std::io::stdout();
        let result = crate::call::run(
            call,
            endpoint,
            peer_media,
            role,
            &media,
            Format::Text,
            &mut out,
            std::future::pending::<()>(),
            None,
        )
        .await;
        if let Err(e) = result {
            eprintln!("smvsctl agent: {e}");
        }
    });
}

/// Registers this agent with smvsd (over `host`, its socket) as the device for D-Bus calls.
pub async fn register(agent: &Rc<Agent>, host: &Rc<HostClient>) -> Result<Subscription, CtlError> {
    let server: call_agent::Client = capnp_rpc::new_client(CallAgent {
        agent: Rc::downgrade(agent),
        host: host.clone(),
    });
    host.register_call_agent(server).await
}

/// The call agent smvsd hands D-Bus `PlaceCall` and `AnswerCall` to.
struct CallAgent {
    agent: Weak<Agent>,
    host: Rc<HostClient>,
}

fn failed(e: CtlError) -> capnp::Error {
    capnp::Error::failed(e.to_string())
}

impl CallAgent {
    fn agent(&self) -> Result<Rc<Agent>, capnp::Error> {
        self.agent
            .upgrade()
            .ok_or_else(|| capnp::Error::failed("no-device: the agent is stopping".into()))
    }
}

impl call_agent::Server for CallAgent {
    async fn place(
        self: capnp::capability::Rc<Self>,
        params: call_agent::PlaceParams,
        mut results: call_agent::PlaceResults,
    ) -> Result<(), capnp::Error> {
        let agent = self.agent()?;
        let (peer, media) = {
            let p = params.get()?;
            let peer = p
                .get_peer()?
                .to_str()
                .map_err(|_| capnp::Error::failed("bad-request: peer is not UTF-8".into()))?;
            let peer = Username::parse_local(peer)
                .map_err(|e| capnp::Error::failed(format!("bad-request: {e}")))?;
            (
                peer,
                crate::call::media_for(&agent.media, p.get_video(), p.get_audio()),
            )
        };
        let (mut call, endpoint) = crate::call::ring(&self.host, &peer, &media)
            .await
            .map_err(failed)?;
        results.get().set_id(call.call.id.as_bytes());
        tokio::task::spawn_local(async move {
            match crate::call::wait_answer(&mut call, &peer).await {
                Ok(peer_media) => spawn_media(call, endpoint, peer_media, Role::Caller, media),
                Err(e) => eprintln!("smvsctl agent: {e}"),
            }
        });
        Ok(())
    }

    async fn answer(
        self: capnp::capability::Rc<Self>,
        params: call_agent::AnswerParams,
        _: call_agent::AnswerResults,
    ) -> Result<(), capnp::Error> {
        let agent = self.agent()?;
        let id = CallId::from_slice(params.get()?.get_id()?)
            .ok_or_else(|| capnp::Error::failed("bad-request: a call id is 16 bytes".into()))?;
        let call = self
            .host
            .calls()
            .await
            .map_err(failed)?
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| capnp::Error::failed(format!("not-found: no call {id}")))?;
        let video = call.peer_media.as_ref().is_none_or(|m| m.video);
        answer(&agent, &self.host, id, video).await.map_err(failed)
    }
}
