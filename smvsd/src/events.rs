//! Events: the device hub, which fans host events out to every subscribed device (local
//! socket subscribers, D-Bus), and [`Events`], the handle every owner publishes through.
//!
//! ```text
//!  trust / outbox / inbox / calls ──Events::publish──► DeviceHub ──try_send──► one bounded queue per device
//!                                                                              └─► api task ─► EventSink / D-Bus
//! ```
//!
//! Owns: the list of subscribers. Serializes: by being an actor (one mailbox, handled in order),
//! so every device sees the events in the order they were published.
//!
//! A device that stops draining its queue is dropped rather than allowed to hold the host
//! back. Events carry ids and names, never message text.

use actix::{Actor, Context, Handler, Message};
use tokio::sync::mpsc;

use crate::model::HostEvent;

/// Events a device may have waiting before it is considered stuck.
pub const DEVICE_QUEUE: usize = 4096;

#[derive(Message)]
#[rtype(result = "()")]
pub struct Publish(pub HostEvent);

#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe(pub mpsc::Sender<HostEvent>);

#[derive(Default)]
pub struct DeviceHub {
    devices: Vec<mpsc::Sender<HostEvent>>,
}

impl Actor for DeviceHub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(DEVICE_QUEUE);
    }
}

impl Handler<Subscribe> for DeviceHub {
    type Result = ();
    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) {
        self.devices.push(msg.0);
    }
}

impl Handler<Publish> for DeviceHub {
    type Result = ();
    fn handle(&mut self, msg: Publish, _: &mut Self::Context) {
        self.devices
            .retain(|device| match device.try_send(msg.0.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!("a local device is not reading its events; unsubscribing it");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            });
    }
}

/// Where owners publish events. Cheap to clone; never blocks.
#[derive(Clone)]
pub struct Events {
    hub: actix::Recipient<Publish>,
}

impl Events {
    pub fn new(hub: actix::Recipient<Publish>) -> Events {
        Events { hub }
    }

    /// Tells devices. A full hub drops the event (and says so) rather than hold the host up.
    pub fn publish(&self, event: HostEvent) {
        if self.hub.try_send(Publish(event)).is_err() {
            tracing::warn!("device hub is full; an event was dropped");
        }
    }
}
