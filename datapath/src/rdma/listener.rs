//! The server's rdma_cm listener as safe events: a connect request hands over its new child
//! id (owned from then on) and a copy of its private data; every event is acknowledged before
//! it is returned, so nothing the caller does can outlive it.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rdma_sys::rdma_cm_event_type::*;

use super::cm::{CmId, EventChannel};

/// Names a connection across events (its id's address, stable while the id lives).
pub type ConnKey = usize;

/// What happened on a listener's channel.
pub enum ListenEvent {
    /// A client asks to connect: accept or reject it through `id`.
    Request {
        id: Arc<CmId>,
        private: Vec<u8>,
    },
    Established(ConnKey),
    Disconnected(ConnKey),
    /// The device under this connection (or the listener itself) is going away.
    DeviceRemoval(ConnKey),
    /// A connection failed before it was established.
    Failed {
        key: ConnKey,
        event: &'static str,
    },
    Other {
        event: &'static str,
        status: i32,
    },
}

pub struct Listener {
    channel: Arc<EventChannel>,
    id: Option<Arc<CmId>>,
}

impl Listener {
    /// Binds and listens on `addr` (an address of an RDMA device).
    pub fn bind(addr: SocketAddr, backlog: i32) -> io::Result<Self> {
        let channel = EventChannel::new()?;
        let id = CmId::new(&channel)?;
        id.bind_listen(addr, backlog)?;
        Ok(Self {
            channel,
            id: Some(id),
        })
    }

    pub fn device_name(&self) -> String {
        self.id
            .as_ref()
            .map_or_else(String::new, |id| id.device_name())
    }

    /// Whether `key` is this listener's own id (a device removal under it ends listening).
    pub fn is_listener(&self, key: ConnKey) -> bool {
        self.id.as_ref().is_some_and(|id| id.key() == key)
    }

    /// Releases the listening id (its device is going away; holding it would stall removal).
    pub fn close(&mut self) {
        self.id = None;
    }

    /// Blocks until the next event.
    pub fn next(&self) -> io::Result<ListenEvent> {
        let ev = self.channel.next_event()?;
        let key = ev.id_raw() as ConnKey;
        let event = match ev.kind() {
            RDMA_CM_EVENT_CONNECT_REQUEST => {
                let private = ev.private_data().to_vec();
                // SAFETY: a CONNECT_REQUEST's id is a new child id, created for this event on
                // this channel; it is adopted here once, and the event is acked (on drop,
                // below) before anything can destroy the id.
                let id = unsafe { CmId::adopt(ev.id_raw(), &self.channel) };
                ListenEvent::Request { id, private }
            }
            RDMA_CM_EVENT_ESTABLISHED => ListenEvent::Established(key),
            RDMA_CM_EVENT_DISCONNECTED => ListenEvent::Disconnected(key),
            RDMA_CM_EVENT_DEVICE_REMOVAL => ListenEvent::DeviceRemoval(key),
            RDMA_CM_EVENT_CONNECT_ERROR | RDMA_CM_EVENT_UNREACHABLE | RDMA_CM_EVENT_REJECTED => {
                ListenEvent::Failed {
                    key,
                    event: ev.name(),
                }
            }
            _ => ListenEvent::Other {
                event: ev.name(),
                status: ev.status(),
            },
        };
        drop(ev);
        Ok(event)
    }
}
