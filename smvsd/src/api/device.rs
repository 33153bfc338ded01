//! The device port: the user's own devices on other machines connect here (Noise with the
//! device prologue; the device pins the host's key), and get the same local API the Unix socket
//! serves. The bootstrap is a `DeviceGate` (schema/device.capnp): a paired device asks it for
//! the API; a new device pairs through it with a code from `devices link`.
//!
//! A key that is not paired (or was revoked) asking for the API is refused before any API object
//! exists, the refusal is logged as a security event (`DEVICE_REFUSED`), and the link is closed.
//! Revoking a device cuts its open links at once.
//!
//! Limits: [`MAX_DEVICE_CONNECTIONS`] at once, [`MAX_CONNECTIONS_PER_ADDRESS`] per address (IPv6
//! per /64), a handshake within the peer port's time, Cap'n Proto's reader limits, and a link
//! that has not been let in within [`GATE_TIMEOUT`] is closed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use actix::Addr;
use smvs_crypto::{AgreementKeyPair, AgreementPublicKey};
use smvs_schema::device_capnp::device_gate;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use super::local::host_api;
use super::peer::{address_group, AddressSlot, HANDSHAKE_TIMEOUT};
use crate::commands::Commands;
use crate::devices::{DeviceLinkGuard, Devices, PairingRun};
use crate::events::DeviceHub;

/// Device links served at once.
pub const MAX_DEVICE_CONNECTIONS: usize = 256;
/// Device links one address may hold at once (a device keeps one or two: a watch and a call).
/// IPv6 addresses count per /48 here: one site, where a stranger can have many /64s.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 16;
/// Links not yet let in (handshaking, pairing, or refused and closing), host-wide: strangers
/// share these and cannot take the slots of paired devices.
pub const MAX_WAITING: usize = 32;
/// How long a link may take to be let in (a paired device asks at once) or to pair.
pub const GATE_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a refused link stays open so that the refusal is read.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

pub struct DeviceApi {
    pub commands: Addr<Commands>,
    pub hub: Addr<DeviceHub>,
    pub devices: Rc<Devices>,
    pub transport: Rc<AgreementKeyPair>,
}

impl DeviceApi {
    pub async fn serve(self, listener: TcpListener) {
        let budget = std::sync::Arc::new(Semaphore::new(MAX_DEVICE_CONNECTIONS));
        let per_address: Rc<RefCell<HashMap<IpAddr, usize>>> = Rc::default();
        let waiting: Rc<std::cell::Cell<usize>> = Rc::default();
        let me = Rc::new(self);
        loop {
            let (tcp, from) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a device connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = budget.clone().try_acquire_owned() else {
                tracing::warn!(%from, "device connection limit reached; closing a new connection");
                continue;
            };
            if waiting.get() >= MAX_WAITING {
                tracing::debug!(%from, "too many device links waiting to be let in; closing a new one");
                continue;
            }
            let Some(address_slot) = AddressSlot::take(
                &per_address,
                site_group(from.ip()),
                MAX_CONNECTIONS_PER_ADDRESS,
            ) else {
                tracing::warn!(%from, "too many device connections from one address; closing a new one");
                continue;
            };
            let api = me.clone();
            let waiting_slot = WaitingSlot::take(&waiting);
            tokio::task::spawn_local(async move {
                api.one_link(tcp, from, waiting_slot).await;
                drop(address_slot);
                drop(permit);
            });
        }
    }

    async fn one_link(
        self: Rc<Self>,
        tcp: tokio::net::TcpStream,
        from: std::net::SocketAddr,
        waiting: WaitingSlot,
    ) {
        let channel = match smvs_transport::accept(
            tcp,
            &self.transport,
            smvs_transport::DEVICE_PROLOGUE,
            HANDSHAKE_TIMEOUT,
        )
        .await
        {
            Ok(channel) => channel,
            Err(e) => {
                tracing::debug!(%from, error = %e, "device handshake failed");
                return;
            }
        };
        let device_key = channel.remote_key;
        // The gate tells this task when to close the link: a refused key, a revoked device.
        let (close_tx, mut close) = watch::channel(Closing::No);
        let gate: device_gate::Client = capnp_rpc::new_client(Gate {
            api: self.clone(),
            device_key,
            from,
            run: RefCell::new(None),
            pairs: std::cell::Cell::new(0),
            busy: std::cell::Cell::new(0),
            refused: std::cell::Cell::new(false),
            waiting: RefCell::new(Some(waiting)),
            admitted: RefCell::new(None),
            close: close_tx,
        });
        let system = smvs_transport::rpc::serve(channel, gate.client);
        let disconnect = system.get_disconnector();
        let closing = async {
            // Not let in within the time: close. Let in: wait for a revoke.
            let admitted = tokio::time::timeout(GATE_TIMEOUT, async {
                loop {
                    if close.changed().await.is_err() {
                        return Closing::Now;
                    }
                    let state = close.borrow().clone();
                    match state {
                        Closing::No => continue,
                        other => return other,
                    }
                }
            })
            .await;
            match admitted {
                Err(_) => {
                    tracing::debug!(%from, "a device link was not let in in time; closing it");
                }
                Ok(Closing::Now) => {
                    // Long enough for the refusal to reach the device (which then hangs up
                    // itself), short enough that a refused key holds nothing for long.
                    tokio::time::sleep(REFUSAL_LINGER).await;
                }
                Ok(Closing::WhenCut(mut cut)) => {
                    while !*cut.borrow_and_update() {
                        if cut.changed().await.is_err() {
                            break;
                        }
                    }
                    tracing::info!(%from, "a revoked device's link is cut");
                }
                Ok(Closing::No) => {}
            }
        };
        tokio::select! {
            ended = system => if let Err(e) = ended {
                tracing::debug!(%from, error = %e, "device link ended");
            },
            _ = closing => {
                let _ = tokio::time::timeout(Duration::from_secs(1), disconnect).await;
            }
        }
    }
}

/// One link counted against [`MAX_WAITING`] until it is let in or closed.
struct WaitingSlot(Rc<std::cell::Cell<usize>>);

impl WaitingSlot {
    fn take(count: &Rc<std::cell::Cell<usize>>) -> WaitingSlot {
        count.set(count.get() + 1);
        WaitingSlot(count.clone())
    }
}

impl Drop for WaitingSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// The group an address counts in for the per-address limit: IPv4 per address, IPv6 per /48.
fn site_group(ip: IpAddr) -> IpAddr {
    match address_group(ip) {
        IpAddr::V6(v6) => {
            let mut octets = v6.octets();
            octets[6..].fill(0);
            IpAddr::V6(std::net::Ipv6Addr::from(octets))
        }
        v4 => v4,
    }
}

/// What the link's task should do about closing.
#[derive(Clone)]
enum Closing {
    /// Nothing decided yet.
    No,
    /// Close now (a refused key).
    Now,
    /// Let in: close when this switch flips (the device is revoked).
    WhenCut(watch::Receiver<bool>),
}

struct Gate {
    api: Rc<DeviceApi>,
    device_key: AgreementPublicKey,
    from: std::net::SocketAddr,
    /// Between `pair` and `confirm`.
    run: RefCell<Option<PairingRun>>,
    /// `pair` calls on this link so far, and how many of them heard "busy".
    pairs: std::cell::Cell<u8>,
    busy: std::cell::Cell<u8>,
    /// This link's key was refused: later calls are refused without another log line.
    refused: std::cell::Cell<bool>,
    /// Held until the link is let in.
    waiting: RefCell<Option<WaitingSlot>>,
    /// Held while the link is let in (counts it as connected).
    admitted: RefCell<Option<DeviceLinkGuard>>,
    close: watch::Sender<Closing>,
}

fn refused(text: &str) -> capnp::Error {
    capnp::Error::failed(text.to_owned())
}

impl device_gate::Server for Gate {
    async fn host(
        self: Rc<Self>,
        _: device_gate::HostParams,
        mut results: device_gate::HostResults,
    ) -> Result<(), capnp::Error> {
        if self.refused.get() {
            return Err(refused("refused"));
        }
        let (device, guard) = match self.api.devices.authorize(&self.device_key, self.from) {
            Ok(admitted) => admitted,
            Err(e) => {
                self.refused.set(true);
                smvs_service::security_event!(
                    warn,
                    smvs_service::logging::DEVICE_REFUSED,
                    from = %self.from,
                    key = %crate::devices::key_fingerprint(&self.device_key.to_hex()),
                    "refused a device key that is not paired (or was revoked)"
                );
                let _ = self.close.send(Closing::Now);
                return Err(e.into());
            }
        };
        tracing::info!(device = %device.name, from = %self.from, "a device connected");
        let _ = self.close.send(Closing::WhenCut(guard.cut.clone()));
        *self.admitted.borrow_mut() = Some(guard);
        self.waiting.borrow_mut().take();
        let host = host_api(
            self.api.commands.clone(),
            self.api.hub.clone(),
            device.admin,
            Some(crate::devices::cursor_owner(&self.device_key.to_hex())),
        );
        results.get().set_host(host);
        Ok(())
    }

    async fn pair(
        self: Rc<Self>,
        params: device_gate::PairParams,
        mut results: device_gate::PairResults,
    ) -> Result<(), capnp::Error> {
        // A link gets as many pairing runs as a code has (and a few dozen "busy" answers);
        // then it must go.
        self.pairs.set(self.pairs.get().saturating_add(1));
        if self.pairs.get() > crate::devices::CODE_RUNS.saturating_add(self.busy.get())
            || self.busy.get() > 50
        {
            let _ = self.close.send(Closing::Now);
            return Err(refused("too many pairing attempts on one connection"));
        }
        let (nameplate, name, message) = {
            let p = params.get()?;
            let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, capnp::Error> {
                t?.to_string().map_err(|_| refused("text is not UTF-8"))
            };
            (
                text(p.get_nameplate())?,
                text(p.get_name())?,
                p.get_message()?.to_vec(),
            )
        };
        let outcome = self
            .api
            .devices
            .pair(self.device_key, &nameplate, &name, &message);
        let (run, ours, tag) = match outcome {
            Ok(step) => step,
            Err(e) if e.code == smvs_schema::ErrorCode::Busy => {
                // Nothing was tried: it does not count as a run.
                self.busy.set(self.busy.get().saturating_add(1));
                return Err(e.into());
            }
            Err(e) => {
                smvs_service::security_event!(
                    warn,
                    smvs_service::logging::DEVICE_REFUSED,
                    from = %self.from,
                    "a pairing attempt named no pending code (wrong, used or expired)"
                );
                return Err(e.into());
            }
        };
        *self.run.borrow_mut() = Some(run);
        let mut r = results.get();
        r.set_message(&ours);
        r.set_host_tag(&tag);
        Ok(())
    }

    async fn confirm(
        self: Rc<Self>,
        params: device_gate::ConfirmParams,
        mut results: device_gate::ConfirmResults,
    ) -> Result<(), capnp::Error> {
        let tag = params.get()?.get_device_tag()?.to_vec();
        let Some(run) = self.run.borrow_mut().take() else {
            return Err(refused("pair first"));
        };
        match self.api.devices.confirm(run, &tag).await {
            Ok(device) => {
                tracing::info!(device = %device.name, from = %self.from, admin = device.admin, "paired a new device");
                let mut r = results.get();
                r.set_name(&device.name);
                r.set_admin(device.admin);
                Ok(())
            }
            Err(e) => {
                smvs_service::security_event!(
                    warn,
                    smvs_service::logging::DEVICE_REFUSED,
                    from = %self.from,
                    "a pairing did not confirm (wrong code, or someone in between)"
                );
                Err(e.into())
            }
        }
    }
}
