//! Verbs objects with RAII: protection domain, completion queue (with its completion
//! channel), queue pair and memory region. Children hold their parents alive (`Arc`), so a
//! parent cannot be destroyed while in use (a CQ destroyed under a QP fails with EBUSY; an MR
//! deregistered under a posted work request would be a use-after-free).

use std::io;
use std::os::raw::{c_int, c_void};
use std::ptr;
use std::sync::Arc;

use rdma_sys::*;

use super::cm::CmId;

fn os_err(what: &str) -> io::Error {
    let e = io::Error::last_os_error();
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

pub struct ProtectionDomain {
    raw: *mut ibv_pd,
    id: Arc<CmId>,
}

// SAFETY: verbs objects may be used from any thread (libibverbs is thread-safe); the pointer
// is freed only in Drop.
unsafe impl Send for ProtectionDomain {}
unsafe impl Sync for ProtectionDomain {}

impl ProtectionDomain {
    /// A PD on the device `id` is bound to.
    pub fn new(id: &Arc<CmId>) -> io::Result<Arc<Self>> {
        let ctx = id.verbs();
        if ctx.is_null() {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "cm id is not bound to a device",
            ));
        }
        // SAFETY: `ctx` is the live context of a bound id.
        let raw = unsafe { ibv_alloc_pd(ctx) };
        if raw.is_null() {
            return Err(os_err("ibv_alloc_pd"));
        }
        Ok(Arc::new(Self {
            raw,
            id: id.clone(),
        }))
    }

    pub fn raw(&self) -> *mut ibv_pd {
        self.raw
    }

    pub fn id(&self) -> &Arc<CmId> {
        &self.id
    }
}

impl Drop for ProtectionDomain {
    fn drop(&mut self) {
        // SAFETY: MRs and QPs hold an Arc of this PD, so none remains.
        unsafe { ibv_dealloc_pd(self.raw) };
    }
}

/// A work completion, copied out of the CQ.
#[derive(Clone, Copy, Debug)]
pub struct Completion {
    pub wr_id: u64,
    pub status: u32,
    pub opcode: u32,
    pub byte_len: u32,
}

impl Completion {
    pub fn ok(&self) -> bool {
        self.status == ibv_wc_status::IBV_WC_SUCCESS
    }

    pub fn is_recv(&self) -> bool {
        self.opcode == ibv_wc_opcode::IBV_WC_RECV
    }

    pub fn status_name(&self) -> String {
        // SAFETY: ibv_wc_status_str returns a static string for any value.
        unsafe {
            std::ffi::CStr::from_ptr(ibv_wc_status_str(self.status))
                .to_string_lossy()
                .into_owned()
        }
    }

    /// The peer refused access (a revoked rkey in direct mode).
    pub fn is_remote_access_error(&self) -> bool {
        self.status == ibv_wc_status::IBV_WC_REM_ACCESS_ERR
    }
}

/// How a [`CompletionQueue::wait`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Ready,
    TimedOut,
    /// The other descriptor became readable.
    Other,
}

/// A CQ with its own completion channel, so waiting blocks in the kernel instead of spinning
/// (under soft-RoCE the CPU is the NIC).
pub struct CompletionQueue {
    raw: *mut ibv_cq,
    channel: *mut ibv_comp_channel,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: as for the PD; a CQ is polled by one thread at a time (callers hold it in one
// connection), and the pointers are freed only in Drop.
unsafe impl Send for CompletionQueue {}
unsafe impl Sync for CompletionQueue {}

impl CompletionQueue {
    pub fn new(pd: &Arc<ProtectionDomain>, depth: i32) -> io::Result<Arc<Self>> {
        let ctx = pd.id().verbs();
        // SAFETY: live context.
        let channel = unsafe { ibv_create_comp_channel(ctx) };
        if channel.is_null() {
            return Err(os_err("ibv_create_comp_channel"));
        }
        // SAFETY: live channel; its fd is ours to make non-blocking (we poll(2) it).
        unsafe {
            let fd = (*channel).fd;
            let flags = libc::fcntl(fd, libc::F_GETFL);
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
        // SAFETY: live context and channel; no CQ context pointer is used.
        let raw = unsafe { ibv_create_cq(ctx, depth, ptr::null_mut(), channel, 0) };
        if raw.is_null() {
            let e = os_err("ibv_create_cq");
            // SAFETY: the channel has no CQ attached.
            unsafe { ibv_destroy_comp_channel(channel) };
            return Err(e);
        }
        Ok(Arc::new(Self {
            raw,
            channel,
            _pd: pd.clone(),
        }))
    }

    pub fn raw(&self) -> *mut ibv_cq {
        self.raw
    }

    /// Non-blocking: appends what is ready.
    pub fn poll(&self, out: &mut Vec<Completion>) -> io::Result<usize> {
        const BATCH: usize = 32;
        // SAFETY: ibv_wc is plain data; zeroed is a valid initial value to be overwritten.
        let mut wcs: [ibv_wc; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: live CQ; the array has room for BATCH entries.
        let n = unsafe { ibv_poll_cq(self.raw, BATCH as c_int, wcs.as_mut_ptr()) };
        if n < 0 {
            return Err(os_err("ibv_poll_cq"));
        }
        for wc in &wcs[..n as usize] {
            out.push(Completion {
                wr_id: wc.wr_id,
                status: wc.status,
                opcode: wc.opcode,
                byte_len: wc.byte_len,
            });
        }
        Ok(n as usize)
    }

    /// Blocks until at least one completion is ready (then returns all that are), until
    /// `timeout` passes, or until the descriptor `also` (an rdma_cm channel) is readable.
    pub fn wait(
        &self,
        out: &mut Vec<Completion>,
        timeout: Option<std::time::Duration>,
        also: Option<i32>,
    ) -> io::Result<Wait> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            if self.poll(out)? > 0 {
                return Ok(Wait::Ready);
            }
            // Arm, then poll again to close the race with a completion that arrived between.
            self.arm()?;
            if self.poll(out)? > 0 {
                return Ok(Wait::Ready);
            }
            let wait_ms = match deadline {
                None => -1,
                Some(d) => {
                    let left = d.saturating_duration_since(std::time::Instant::now());
                    if left.is_zero() {
                        return Ok(Wait::TimedOut);
                    }
                    left.as_millis().min(i32::MAX as u128) as i32
                }
            };
            let fd = self.fd();
            let mut pfds = [
                libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: also.unwrap_or(-1),
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds (a negative fd is ignored by poll).
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), 2, wait_ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                continue; // re-check the deadline
            }
            if pfds[1].revents != 0 {
                return Ok(Wait::Other);
            }
            if pfds[0].revents == 0 {
                continue;
            }
            self.take_events();
        }
    }

    /// Asks for an event on the channel at the next completion (one event per arming).
    /// Poll once more after arming: a completion that came just before is not announced.
    pub fn arm(&self) -> io::Result<()> {
        // SAFETY: live CQ.
        if unsafe { ibv_req_notify_cq(self.raw, 0) } != 0 {
            return Err(os_err("ibv_req_notify_cq"));
        }
        Ok(())
    }

    /// The completion channel's descriptor (non-blocking): readable once an armed CQ has a
    /// completion. After it is, take the events with [`CompletionQueue::take_events`].
    pub fn fd(&self) -> i32 {
        // SAFETY: reading the fd field of a live channel.
        unsafe { (*self.channel).fd }
    }

    /// Takes and acknowledges every event waiting on the channel (none may be left
    /// unacknowledged, or destroying the CQ would wait for ever).
    pub fn take_events(&self) {
        loop {
            let mut cq: *mut ibv_cq = ptr::null_mut();
            let mut ctx: *mut c_void = ptr::null_mut();
            // SAFETY: live channel (non-blocking fd); valid out-pointers.
            if unsafe { ibv_get_cq_event(self.channel, &mut cq, &mut ctx) } != 0 {
                return; // none left (EAGAIN)
            }
            // SAFETY: the event is for our CQ (the channel serves only it); acked at once.
            unsafe { ibv_ack_cq_events(cq, 1) };
        }
    }
}

impl Drop for CompletionQueue {
    fn drop(&mut self) {
        // SAFETY: QPs hold an Arc of this CQ, so none uses it; every event was acked in
        // `take_events` as it was taken; the CQ goes before its channel.
        unsafe {
            ibv_destroy_cq(self.raw);
            ibv_destroy_comp_channel(self.channel);
        }
    }
}

/// An RC queue pair made on a cm id (`rdma_create_qp`), destroyed before its id, CQ and PD.
pub struct QueuePair {
    raw: *mut ibv_qp,
    id: Arc<CmId>,
    _cq: Arc<CompletionQueue>,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: posting to a QP is thread-safe in libibverbs; freed only in Drop.
unsafe impl Send for QueuePair {}
unsafe impl Sync for QueuePair {}

pub const MAX_SEND_WR: u32 = 128;
pub const MAX_RECV_WR: u32 = 64;

impl QueuePair {
    pub fn new(
        id: &Arc<CmId>,
        pd: &Arc<ProtectionDomain>,
        cq: &Arc<CompletionQueue>,
    ) -> io::Result<Self> {
        // SAFETY: plain C struct; zero is valid for every field not set below.
        let mut attr: ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        attr.send_cq = cq.raw();
        attr.recv_cq = cq.raw();
        attr.qp_type = ibv_qp_type::IBV_QPT_RC;
        attr.cap.max_send_wr = MAX_SEND_WR;
        attr.cap.max_recv_wr = MAX_RECV_WR;
        attr.cap.max_send_sge = 1;
        attr.cap.max_recv_sge = 1;
        attr.sq_sig_all = 0;
        // SAFETY: live id, PD and CQ on the same device; attr is fully initialised.
        if unsafe { rdma_create_qp(id.raw(), pd.raw(), &mut attr) } != 0 {
            return Err(os_err("rdma_create_qp"));
        }
        // SAFETY: on success the CM stored the QP in the id.
        let raw = unsafe { (*id.raw()).qp };
        Ok(Self {
            raw,
            id: id.clone(),
            _cq: cq.clone(),
            _pd: pd.clone(),
        })
    }

    pub fn id(&self) -> &Arc<CmId> {
        &self.id
    }

    /// Posts one receive of `len` bytes at `offset` in `mr`.
    ///
    /// # Safety
    /// The device writes into `mr` whenever a message arrives, until the receive completes
    /// (or the QP is destroyed, which flushes it). The caller must keep `mr` registered and
    /// its bytes unread-from by anything that assumes they are stable until then: drop the
    /// QP before the region (declare it first in the owning struct).
    pub unsafe fn post_recv(
        &self,
        wr_id: u64,
        mr: &MemoryRegion,
        offset: usize,
        len: usize,
    ) -> io::Result<()> {
        let (addr, lkey) = mr.slice_for_wr(offset, len)?;
        let mut sge = ibv_sge {
            addr,
            length: len as u32,
            lkey,
        };
        let mut wr = ibv_recv_wr {
            wr_id,
            next: ptr::null_mut(),
            sg_list: &mut sge,
            num_sge: 1,
        };
        let mut bad: *mut ibv_recv_wr = ptr::null_mut();
        // SAFETY: live QP; the sge names memory inside a registered MR (checked by
        // slice_for_wr) that the caller keeps alive until the receive completes (this
        // function's contract).
        let rc = unsafe { ibv_post_recv(self.raw, &mut wr, &mut bad) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// Posts a signaled zero-length RDMA WRITE: a liveness probe. It completes once the
    /// peer's RDMA device acknowledged it, or fails with a retry-exceeded completion when the
    /// peer is gone (after the QP's ack timeout and retry count).
    pub fn post_probe(&self, wr_id: u64) -> io::Result<()> {
        // SAFETY: plain C struct; zero is valid for unused fields and unions.
        let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
        wr.wr_id = wr_id;
        wr.sg_list = ptr::null_mut();
        wr.num_sge = 0;
        wr.opcode = ibv_wr_opcode::IBV_WR_RDMA_WRITE;
        wr.send_flags = ibv_send_flags::IBV_SEND_SIGNALED.0;
        // Remote address and rkey stay 0: a zero-length RDMA operation checks neither
        // (IBTA C9-88).
        let mut bad: *mut ibv_send_wr = ptr::null_mut();
        // SAFETY: live QP; the request has no scatter/gather entry, so it references no
        // memory of ours or of the peer.
        let rc = unsafe { ibv_post_send(self.raw, &mut wr, &mut bad) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(())
    }

    /// Posts every request of `chain` in order with one `ibv_post_send`, and empties it.
    /// (Safe: each request's contract was taken when it was pushed.) On an error, requests
    /// before the failed one may have been posted: the QP is not to be used further.
    pub fn post_chain(&self, chain: &mut SendChain) -> io::Result<()> {
        let n = chain.wrs.len();
        if n == 0 {
            return Ok(());
        }
        // Linked only now, through one raw pointer per vector (taken once, so no later
        // borrow invalidates the links): the vectors do not move until the call returns.
        let wrs = chain.wrs.as_mut_ptr();
        let sges = chain.sges.as_mut_ptr();
        for i in 0..n {
            // SAFETY: i < n = both vectors' length; the pointers stay inside them.
            unsafe {
                let wr = &mut *wrs.add(i);
                wr.sg_list = sges.add(i);
                wr.next = if i + 1 < n {
                    wrs.add(i + 1)
                } else {
                    ptr::null_mut()
                };
            }
        }
        let mut bad: *mut ibv_send_wr = ptr::null_mut();
        // SAFETY: live QP; the list is linked through the chain's own vectors, alive and
        // unmoved for the call; each sge names registered memory its pusher keeps alive
        // until the request completes (`SendChain::push`'s contract).
        let rc = unsafe { ibv_post_send(self.raw, wrs, &mut bad) };
        chain.wrs.clear();
        chain.sges.clear();
        if rc != 0 {
            return Err(post_failed(rc));
        }
        Ok(())
    }
}

/// A span of a registered region as a work request names it ([`MemoryRegion::sge`]): it
/// refers to the region without borrowing it, so what keeps the region alive is up to whoever
/// queues it ([`SendChain::push`]).
#[derive(Clone, Copy, Debug)]
pub struct Sge {
    addr: u64,
    len: u32,
    lkey: u32,
}

/// Send-queue work requests gathered to go to the device together: one `ibv_post_send`, so
/// one doorbell (a system call with rxe) for all of them instead of one each.
#[derive(Default)]
pub struct SendChain {
    wrs: Vec<ibv_send_wr>,
    sges: Vec<ibv_sge>,
}

// SAFETY: the raw pointers in the requests point into this chain's own vectors (linked only
// while posting) or are null, or name registered memory (which any thread may hand the
// device).
unsafe impl Send for SendChain {}

impl SendChain {
    pub fn is_empty(&self) -> bool {
        self.wrs.is_empty()
    }

    /// Adds one send-queue work request: SEND, RDMA WRITE or RDMA READ of the bytes `sge`
    /// names (to or from `remote`, an address and rkey, for RDMA).
    ///
    /// # Safety
    /// Once the chain is posted, the device reads (SEND, RDMA WRITE) or writes (RDMA READ)
    /// those bytes at some point until the work request completes. The caller must keep
    /// their region registered, and not change (SEND, WRITE) or read (READ) those bytes, from
    /// now until it has polled that completion, or a later signaled one on the QP the chain
    /// is posted on (completions come in order), or that QP is destroyed.
    pub unsafe fn push(
        &mut self,
        wr_id: u64,
        op: SendOp,
        sge: Sge,
        remote: Option<(u64, u32)>,
        signaled: bool,
    ) {
        self.sges.push(ibv_sge {
            addr: sge.addr,
            length: sge.len,
            lkey: sge.lkey,
        });
        self.wrs.push(send_wr(wr_id, op, remote, signaled));
    }
}

/// A send-queue work request with one scatter/gather entry (the caller points to it).
fn send_wr(wr_id: u64, op: SendOp, remote: Option<(u64, u32)>, signaled: bool) -> ibv_send_wr {
    // SAFETY: plain C struct; zero is valid for unused fields and unions.
    let mut wr: ibv_send_wr = unsafe { std::mem::zeroed() };
    wr.wr_id = wr_id;
    wr.num_sge = 1;
    wr.opcode = match op {
        SendOp::Send => ibv_wr_opcode::IBV_WR_SEND,
        SendOp::Write => ibv_wr_opcode::IBV_WR_RDMA_WRITE,
        SendOp::Read => ibv_wr_opcode::IBV_WR_RDMA_READ,
    };
    wr.send_flags = if signaled {
        ibv_send_flags::IBV_SEND_SIGNALED.0
    } else {
        0
    };
    if let Some((remote_addr, rkey)) = remote {
        wr.wr.rdma = rdma_t { remote_addr, rkey };
    }
    wr
}

fn post_failed(rc: i32) -> io::Error {
    io::Error::new(
        io::Error::from_raw_os_error(rc).kind(),
        format!("ibv_post_send: {}", io::Error::from_raw_os_error(rc)),
    )
}

impl Drop for QueuePair {
    fn drop(&mut self) {
        // SAFETY: this QP was made on `id` (alive: we hold it) and is destroyed once, here;
        // destroying it flushes its posted work.
        unsafe { self.id.destroy_qp() };
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOp {
    Send,
    Write,
    Read,
}

/// Memory whose pages are pinned and known to the NIC.
pub enum Backing {
    Owned(Box<[u8]>),
    Mapped(memmap2::MmapMut),
    MappedRo(memmap2::Mmap),
}

impl Backing {
    fn as_ptr(&self) -> *const u8 {
        match self {
            Backing::Owned(b) => b.as_ptr(),
            Backing::Mapped(m) => m.as_ptr(),
            Backing::MappedRo(m) => m.as_ptr(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Backing::Owned(b) => b.len(),
            Backing::Mapped(m) => m.len(),
            Backing::MappedRo(m) => m.len(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Access(pub u32);

impl Access {
    pub const LOCAL: Access = Access(0);
    pub const LOCAL_WRITE: Access = Access(ibv_access_flags::IBV_ACCESS_LOCAL_WRITE.0);
    pub const REMOTE_READ: Access = Access(ibv_access_flags::IBV_ACCESS_REMOTE_READ.0);
    pub const REMOTE_WRITE: Access = Access(ibv_access_flags::IBV_ACCESS_REMOTE_WRITE.0);

    pub fn with(self, other: Access) -> Access {
        Access(self.0 | other.0)
    }
}

/// A registered memory region. Deregistered in Drop *before* its backing memory is freed or
/// unmapped (field drop order runs after `Drop::drop`).
pub struct MemoryRegion {
    mr: *mut ibv_mr,
    backing: Backing,
    _pd: Arc<ProtectionDomain>,
}

// SAFETY: the MR is only read after registration (lkey, rkey, addr); the backing memory is
// accessed through &self/&mut self with the usual borrow rules.
unsafe impl Send for MemoryRegion {}
unsafe impl Sync for MemoryRegion {}

impl MemoryRegion {
    pub fn register(
        pd: &Arc<ProtectionDomain>,
        backing: Backing,
        access: Access,
    ) -> io::Result<Self> {
        let len = backing.len();
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot register an empty region",
            ));
        }
        // SAFETY: live PD; `backing` is `len` bytes of memory that stays mapped and at the same
        // address for the life of the MR (owned here, released only after deregistration).
        let mr = unsafe {
            ibv_reg_mr(
                pd.raw(),
                backing.as_ptr() as *mut c_void,
                len,
                access.0 as c_int,
            )
        };
        if mr.is_null() {
            return Err(os_err("ibv_reg_mr"));
        }
        Ok(Self {
            mr,
            backing,
            _pd: pd.clone(),
        })
    }

    /// An anonymous zeroed buffer of `len` bytes.
    pub fn alloc(pd: &Arc<ProtectionDomain>, len: usize, access: Access) -> io::Result<Self> {
        Self::register(
            pd,
            Backing::Owned(vec![0u8; len].into_boxed_slice()),
            access,
        )
    }

    pub fn len(&self) -> usize {
        self.backing.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn addr(&self) -> u64 {
        self.backing.as_ptr() as u64
    }

    pub fn rkey(&self) -> u32 {
        // SAFETY: live MR.
        unsafe { (*self.mr).rkey }
    }

    fn lkey(&self) -> u32 {
        // SAFETY: live MR.
        unsafe { (*self.mr).lkey }
    }

    fn slice_for_wr(&self, offset: usize, len: usize) -> io::Result<(u64, u32)> {
        let Sge { addr, lkey, .. } = self.sge(offset, len)?;
        Ok((addr, lkey))
    }

    /// `self[offset..offset + len]` as a work request names it (checked to lie inside).
    pub fn sge(&self, offset: usize, len: usize) -> io::Result<Sge> {
        let end = offset
            .checked_add(len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "range overflows"))?;
        if end > self.len() || len > u32::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "work request outside its memory region",
            ));
        }
        Ok(Sge {
            addr: self.addr() + offset as u64,
            len: len as u32,
            lkey: self.lkey(),
        })
    }

    pub fn bytes(&self) -> &[u8] {
        match &self.backing {
            Backing::Owned(b) => b,
            Backing::Mapped(m) => m,
            Backing::MappedRo(m) => m,
        }
    }

    /// Mutable access to an owned or writable mapped buffer (None for read-only mappings).
    pub fn bytes_mut(&mut self) -> Option<&mut [u8]> {
        match &mut self.backing {
            Backing::Owned(b) => Some(b),
            Backing::Mapped(m) => Some(m),
            Backing::MappedRo(_) => None,
        }
    }
}

impl Drop for MemoryRegion {
    fn drop(&mut self) {
        // SAFETY: registered in `register`; deregistered exactly once, before `backing` is
        // dropped (fields drop after this body runs).
        unsafe { ibv_dereg_mr(self.mr) };
    }
}
