//! rdma_cm objects: the event channel, its events, and connection identifiers.
//!
//! Order of release (enforced by ownership): every event is acked (dropping [`CmEvent`])
//! before its id is destroyed, and every id ([`CmId`] holds an `Arc` of its channel) is
//! destroyed before its channel.

use std::io;
use std::net::SocketAddr;
use std::os::raw::{c_int, c_void};
use std::ptr;
use std::sync::Arc;

use rdma_sys::*;

fn check(rc: c_int, what: &'static str) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

/// A `sockaddr_in`/`sockaddr_in6` for the C API.
pub(crate) struct RawSockAddr {
    storage: libc::sockaddr_storage,
}

impl RawSockAddr {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        // SAFETY: sockaddr_storage is plain data; all-zero is a valid (AF_UNSPEC) value.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        match addr {
            SocketAddr::V4(a) => {
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            }
            SocketAddr::V6(a) => {
                // SAFETY: as above, for sockaddr_in6.
                let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                sin6.sin6_scope_id = a.scope_id();
            }
        }
        Self { storage }
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut libc::sockaddr {
        &mut self.storage as *mut _ as *mut libc::sockaddr
    }
}

/// An rdma_cm event channel: where the events of the ids created on it arrive.
pub struct EventChannel {
    raw: *mut rdma_event_channel,
}

// SAFETY: librdmacm's channel is a file descriptor plus immutable bookkeeping; its calls are
// thread-safe. The pointer is only freed in Drop, when no other reference exists.
unsafe impl Send for EventChannel {}
unsafe impl Sync for EventChannel {}

impl EventChannel {
    pub fn new() -> io::Result<Arc<Self>> {
        // SAFETY: no arguments; a null return is checked.
        let raw = unsafe { rdma_create_event_channel() };
        if raw.is_null() {
            return Err(io::Error::new(
                io::Error::last_os_error().kind(),
                format!(
                    "rdma_create_event_channel: {} (is an RDMA device present?)",
                    io::Error::last_os_error()
                ),
            ));
        }
        Ok(Arc::new(Self { raw }))
    }

    /// The channel's file descriptor (for poll).
    pub fn fd(&self) -> i32 {
        // SAFETY: reading the fd field of a live channel.
        unsafe { (*self.raw).fd }
    }

    /// The next event if one arrives within `timeout`.
    pub fn next_event_timeout(&self, timeout: std::time::Duration) -> io::Result<Option<CmEvent>> {
        // SAFETY: reading the fd field of a live channel.
        let fd = unsafe { (*self.raw).fd };
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe {
            libc::poll(
                &mut pfd,
                1,
                timeout.as_millis().min(i32::MAX as u128) as i32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(None);
        }
        self.next_event().map(Some)
    }

    /// Blocks until the next event on this channel.
    pub fn next_event(&self) -> io::Result<CmEvent> {
        let mut ev: *mut rdma_cm_event = ptr::null_mut();
        // SAFETY: `self.raw` is a live channel; `ev` is a valid out-pointer.
        check(
            unsafe { rdma_get_cm_event(self.raw, &mut ev) },
            "rdma_get_cm_event",
        )?;
        Ok(CmEvent { raw: ev })
    }
}

impl Drop for EventChannel {
    fn drop(&mut self) {
        // SAFETY: every id holds an Arc of its channel, so none is left when this runs.
        unsafe { rdma_destroy_event_channel(self.raw) };
    }
}

/// One event; acked when dropped.
pub struct CmEvent {
    raw: *mut rdma_cm_event,
}

// SAFETY: the event is owned data until acked; it is only read, then acked once in Drop.
unsafe impl Send for CmEvent {}

impl CmEvent {
    pub fn kind(&self) -> u32 {
        // SAFETY: `raw` is a live event until Drop.
        unsafe { (*self.raw).event }
    }

    pub fn status(&self) -> i32 {
        // SAFETY: as above.
        unsafe { (*self.raw).status }
    }

    /// The id the event is about (for CONNECT_REQUEST: the new, not yet owned, child id).
    pub fn id_raw(&self) -> *mut rdma_cm_id {
        // SAFETY: as above.
        unsafe { (*self.raw).id }
    }

    /// The private data of a connect request, accept or reject (padded by the CM).
    pub fn private_data(&self) -> &[u8] {
        // SAFETY: for connection events `param.conn` is the active union member; the CM keeps
        // `private_data_len` bytes at `private_data` alive until the event is acked, and the
        // returned slice borrows `self`, so it cannot outlive the ack.
        unsafe {
            let conn = &(*self.raw).param.conn;
            if conn.private_data.is_null() || conn.private_data_len == 0 {
                &[]
            } else {
                std::slice::from_raw_parts(
                    conn.private_data as *const u8,
                    usize::from(conn.private_data_len),
                )
            }
        }
    }

    pub fn name(&self) -> &'static str {
        use rdma_cm_event_type::*;
        match self.kind() {
            RDMA_CM_EVENT_ADDR_RESOLVED => "ADDR_RESOLVED",
            RDMA_CM_EVENT_ADDR_ERROR => "ADDR_ERROR",
            RDMA_CM_EVENT_ROUTE_RESOLVED => "ROUTE_RESOLVED",
            RDMA_CM_EVENT_ROUTE_ERROR => "ROUTE_ERROR",
            RDMA_CM_EVENT_CONNECT_REQUEST => "CONNECT_REQUEST",
            RDMA_CM_EVENT_CONNECT_RESPONSE => "CONNECT_RESPONSE",
            RDMA_CM_EVENT_CONNECT_ERROR => "CONNECT_ERROR",
            RDMA_CM_EVENT_UNREACHABLE => "UNREACHABLE",
            RDMA_CM_EVENT_REJECTED => "REJECTED",
            RDMA_CM_EVENT_ESTABLISHED => "ESTABLISHED",
            RDMA_CM_EVENT_DISCONNECTED => "DISCONNECTED",
            RDMA_CM_EVENT_DEVICE_REMOVAL => "DEVICE_REMOVAL",
            RDMA_CM_EVENT_TIMEWAIT_EXIT => "TIMEWAIT_EXIT",
            _ => "OTHER",
        }
    }
}

impl Drop for CmEvent {
    fn drop(&mut self) {
        // SAFETY: each event from rdma_get_cm_event is acked exactly once, here.
        unsafe { rdma_ack_cm_event(self.raw) };
    }
}

/// An rdma_cm identifier: the RDMA analogue of a socket.
pub struct CmId {
    raw: *mut rdma_cm_id,
    channel: Arc<EventChannel>,
    /// Serialises `rdma_disconnect` (which reads `id->qp`) with `rdma_destroy_qp` (which
    /// frees it): the CM thread may disconnect while the connection's task tears down.
    qp_lock: std::sync::Mutex<()>,
}

// SAFETY: the calls made from more than one thread on an id are `disconnect` and
// `destroy_qp`, serialised by `qp_lock`; the others are made by the id's owner. The raw
// pointer is destroyed only in Drop, after every Arc holder (QP, PD, connection) is gone.
unsafe impl Send for CmId {}
unsafe impl Sync for CmId {}

// From rdma_cma.h's anonymous enums (not in the generated bindings).
const RDMA_OPTION_ID: i32 = 0;
const RDMA_OPTION_ID_ACK_TIMEOUT: i32 = 3;

pub const PRIVATE_DATA_CONNECT: usize = 56;
pub const PRIVATE_DATA_ACCEPT: usize = 196;
pub const PRIVATE_DATA_REJECT: usize = 148;

impl CmId {
    pub fn new(channel: &Arc<EventChannel>) -> io::Result<Arc<Self>> {
        let mut raw: *mut rdma_cm_id = ptr::null_mut();
        // SAFETY: channel is live; `raw` is a valid out-pointer.
        check(
            unsafe {
                rdma_create_id(
                    channel.raw,
                    &mut raw,
                    ptr::null_mut(),
                    rdma_port_space::RDMA_PS_TCP,
                )
            },
            "rdma_create_id",
        )?;
        Ok(Arc::new(Self {
            raw,
            channel: channel.clone(),
            qp_lock: Default::default(),
        }))
    }

    /// Takes ownership of the child id a CONNECT_REQUEST event carries.
    ///
    /// # Safety
    /// `raw` must come from a CONNECT_REQUEST event on `channel` and be adopted only once.
    pub(super) unsafe fn adopt(raw: *mut rdma_cm_id, channel: &Arc<EventChannel>) -> Arc<Self> {
        Arc::new(Self {
            raw,
            channel: channel.clone(),
            qp_lock: Default::default(),
        })
    }

    pub fn raw(&self) -> *mut rdma_cm_id {
        self.raw
    }

    /// The key events about this id carry (see [`super::listener::ConnKey`]).
    pub fn key(&self) -> usize {
        self.raw as usize
    }

    pub fn channel(&self) -> &Arc<EventChannel> {
        &self.channel
    }

    /// The verbs context of the device this id is bound to (null before binding/resolving).
    pub fn verbs(&self) -> *mut ibv_context {
        // SAFETY: reading a field of a live id.
        unsafe { (*self.raw).verbs }
    }

    pub fn device_name(&self) -> String {
        let ctx = self.verbs();
        if ctx.is_null() {
            return "?".into();
        }
        // SAFETY: a bound id's context and device stay valid while librdmacm has the device
        // open (for the life of the process); the name is a NUL-terminated C string.
        unsafe {
            let name = ibv_get_device_name((*ctx).device);
            if name.is_null() {
                "?".into()
            } else {
                std::ffi::CStr::from_ptr(name)
                    .to_string_lossy()
                    .into_owned()
            }
        }
    }

    pub fn bind_listen(&self, addr: SocketAddr, backlog: i32) -> io::Result<()> {
        let mut sa = RawSockAddr::new(addr);
        // SAFETY: live id, valid sockaddr for the duration of the call.
        check(
            unsafe { rdma_bind_addr(self.raw, sa.as_mut_ptr()) },
            "rdma_bind_addr",
        )?;
        // SAFETY: live, bound id.
        check(unsafe { rdma_listen(self.raw, backlog) }, "rdma_listen")
    }

    pub fn resolve_addr(&self, dst: SocketAddr, timeout_ms: i32) -> io::Result<()> {
        let mut sa = RawSockAddr::new(dst);
        // SAFETY: live id; null source lets the CM pick one; valid destination.
        check(
            unsafe { rdma_resolve_addr(self.raw, ptr::null_mut(), sa.as_mut_ptr(), timeout_ms) },
            "rdma_resolve_addr",
        )
    }

    pub fn resolve_route(&self, timeout_ms: i32) -> io::Result<()> {
        // SAFETY: live id with a resolved address.
        check(
            unsafe { rdma_resolve_route(self.raw, timeout_ms) },
            "rdma_resolve_route",
        )
    }

    fn conn_param(private: &[u8]) -> rdma_conn_param {
        rdma_conn_param {
            private_data: private.as_ptr() as *const c_void,
            private_data_len: private.len() as u8,
            responder_resources: 16,
            initiator_depth: 16,
            flow_control: 1,
            // Not 7: rxe treats a retry count of 7 as "retry forever" (as IB does for the
            // RNR count), so a dead peer would never fail a work request.
            retry_count: 6,
            rnr_retry_count: 7,
            srq: 0,
            qp_num: 0,
        }
    }

    pub fn connect(&self, private: &[u8]) -> io::Result<()> {
        if private.len() > PRIVATE_DATA_CONNECT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "connect private data over 56 bytes",
            ));
        }
        let mut p = Self::conn_param(private);
        // SAFETY: live id with a QP; `private` outlives the call (the CM copies it).
        check(unsafe { rdma_connect(self.raw, &mut p) }, "rdma_connect")
    }

    pub fn accept(&self, private: &[u8]) -> io::Result<()> {
        if private.len() > PRIVATE_DATA_ACCEPT {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "accept private data over 196 bytes",
            ));
        }
        let mut p = Self::conn_param(private);
        // SAFETY: live child id with a QP; `private` is copied by the CM.
        check(unsafe { rdma_accept(self.raw, &mut p) }, "rdma_accept")
    }

    pub fn reject(&self, private: &[u8]) -> io::Result<()> {
        let len = private.len().min(PRIVATE_DATA_REJECT);
        // SAFETY: live child id; the CM copies `len` bytes of `private`.
        check(
            unsafe { rdma_reject(self.raw, private.as_ptr() as *const c_void, len as u8) },
            "rdma_reject",
        )
    }

    /// Moves the QP to the error state (flushing posted work) and tells the peer.
    pub fn disconnect(&self) {
        let _guard = self.qp_lock.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: live id; `qp_lock` keeps its QP from being destroyed meanwhile (a destroyed
        // QP leaves `id->qp` null, which rdma_disconnect skips). Disconnecting twice or
        // without a connection returns an error we ignore.
        unsafe { rdma_disconnect(self.raw) };
    }

    /// Destroys the QP made on this id (`rdma_create_qp`).
    ///
    /// # Safety
    /// A QP must have been created on this id and not destroyed yet, and no work may be
    /// posted to it afterwards.
    pub(crate) unsafe fn destroy_qp(&self) {
        let _guard = self.qp_lock.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: per this function's contract; serialised with `disconnect`.
        unsafe { rdma_destroy_qp(self.raw) };
    }

    /// Shortens the ack timeout so a dead path is noticed in about a second, not minutes.
    pub fn set_ack_timeout(&self, exponent: u8) {
        let mut v = exponent;
        // SAFETY: live id; the option value is a u8 that outlives the call.
        unsafe {
            rdma_set_option(
                self.raw,
                RDMA_OPTION_ID,
                RDMA_OPTION_ID_ACK_TIMEOUT,
                &mut v as *mut u8 as *mut c_void,
                1,
            )
        };
    }
}

impl Drop for CmId {
    fn drop(&mut self) {
        // SAFETY: the QP made on this id (if any) holds an Arc of it, so it is gone already;
        // events for it were acked by their CmEvent guards (destroy waits for stragglers).
        unsafe { rdma_destroy_id(self.raw) };
    }
}
