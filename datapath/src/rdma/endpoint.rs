//! One end of an RDMA connection: PD, CQ, QP, and registered message slots for SEND/RECV.
//! Messages are the same MAC'd frames as on the TCP channel, one per SEND; bulk bytes move
//! by RDMA WRITE/READ between registered regions and never through these slots.

use std::collections::{HashSet, VecDeque};
use std::io;
use std::sync::Arc;

use bytes::BytesMut;
use handoff_core::auth::{ClientDirectory, Conversation, Handshake, Identity, Step};
use handoff_core::wire::{Frame, Message};
use handoff_core::Error;

use super::cm::{CmId, EventChannel};
use super::verbs::Wait;
use super::verbs::{
    Access, Completion, CompletionQueue, MemoryRegion, ProtectionDomain, QueuePair, SendChain,
    SendOp, Sge, MAX_SEND_WR,
};
use crate::DataError;
use rdma_sys::rdma_cm_event_type::{RDMA_CM_EVENT_DEVICE_REMOVAL, RDMA_CM_EVENT_DISCONNECTED};

/// Bytes per message slot (control messages are far smaller).
pub const SLOT: usize = 4096;
/// Receive slots posted at all times: the peer's credit for requests in flight.
pub const RECV_SLOTS: usize = 32;
const SEND_SLOTS: usize = 32;

const TAG_RECV: u64 = 1 << 62;
const TAG_SEND: u64 = 2 << 62;
const TAG_MASK: u64 = 3 << 62;
/// The liveness probe's work request (sorted with the RDMA operations into `finished`).
const TAG_PROBE: u64 = 3 << 62;
/// An unsignaled RDMA WRITE signaled anyway, so the send queue's progress shows (see
/// [`SIGNAL_EVERY`]); its completion only counts.
const TAG_MARK: u64 = (3 << 62) | 1;
/// At most this many unsignaled work requests in a row: a send queue whose posted work is all
/// unsignaled never says how far it got, so the next would be signaled anyway.
const SIGNAL_EVERY: u64 = 32;
const _: () = assert!(SIGNAL_EVERY < MAX_SEND_WR as u64);

pub struct Endpoint {
    // Field order is drop order: the QP goes first (flushing posted work), then the
    // regions it referenced, then CQ and PD.
    qp: QueuePair,
    send_buf: MemoryRegion,
    recv_buf: MemoryRegion,
    /// Regions that posted RDMA WRITEs read from, each with its post's sequence number: kept
    /// until a later completion on the send queue shows that work is done.
    held: VecDeque<(u64, Arc<MemoryRegion>)>,
    /// Regions posted RDMA READs write into, by work request: handed back once it completed.
    reading: Vec<(u64, ReadTarget)>,
    /// Sequence number of the latest send-queue post (they complete in this order).
    posted: u64,
    /// Sequence numbers of the signaled posts not yet completed, oldest first: each
    /// send-queue completion is the front one's.
    signaled: VecDeque<u64>,
    /// Posts up to this sequence number are done (the send queue's free entries are
    /// `MAX_SEND_WR - (posted - sq_done)`).
    sq_done: u64,
    /// Unsignaled posts since the last signaled one.
    unsignaled_run: u64,
    /// Work requests numbered but not yet handed to the device: they go together, with the
    /// next SEND or before the next look at the completion queue (one doorbell for many).
    chain: SendChain,
    /// Signaled RDMA requests outstanding, by work request id. (A few at a time: a short
    /// list beats hashing on this path.)
    rdma_wrs: Vec<u64>,
    cq: Arc<CompletionQueue>,
    pub pd: Arc<ProtectionDomain>,
    free_send: Vec<usize>,
    inbox: VecDeque<(usize, usize)>,
    finished: HashSet<u64>,
    conv: Conversation,
    wcs: Vec<Completion>,
    encode: BytesMut,
    /// A remote access error seen on one of our own RDMA READs (direct mode revoked).
    pub remote_access_error: bool,
    /// How long a blocking wait may go without any completion (None: forever).
    pub timeout: Option<std::time::Duration>,
    /// The connection's own rdma_cm channel (client side), watched while waiting, so a
    /// disconnect or a device removal ends the wait.
    pub cm: Option<Arc<EventChannel>>,
}

/// What a wait on the completion queue is for ([`Endpoint::met`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A message from the peer.
    Message,
    /// A free message slot, and room on the send queue.
    SendSlot,
    /// Room on the send queue for one more work request.
    Room,
    /// The completion of this signaled RDMA work request.
    Finished(u64),
    /// The peer's acknowledgement of a liveness probe.
    ProbeAnswer,
    /// Every SEND posted has completed.
    SendsDrained,
}

/// Drops the holds of posts numbered below `seq`: a completion of post `seq` or later came
/// back, and a send queue completes in order.
fn release_before(held: &mut VecDeque<(u64, Arc<MemoryRegion>)>, seq: u64) {
    while held.front().is_some_and(|(s, _)| *s < seq) {
        held.pop_front();
    }
}

pub(super) fn broken(what: String) -> DataError {
    DataError::Io(io::Error::new(io::ErrorKind::ConnectionAborted, what))
}

/// No completion came within `quiet`: a wait's end (blocking or not).
pub(super) fn no_completion(quiet: Option<std::time::Duration>) -> DataError {
    broken(format!(
        "no RDMA completion within {:?}: the path or the peer is gone",
        quiet.unwrap_or_default()
    ))
}

/// A liveness probe's end when the peer did not answer it `within`.
pub(super) fn probe_unanswered(within: std::time::Duration) -> DataError {
    broken(format!(
        "the peer did not acknowledge a liveness probe within {within:?}"
    ))
}

/// Where an RDMA READ posted by this side puts the peer's bytes.
pub enum ReadTarget {
    /// A registered buffer, the endpoint's alone until the READ is finished.
    Buffer(MemoryRegion),
    /// A registered window of a file's mapping, at this offset in it: the bytes land in the
    /// file's pages with no copy (zero-copy writes).
    Window(Arc<MemoryRegion>, usize),
}

impl Endpoint {
    /// Builds PD, CQ, QP and message slots on `id` and posts every receive.
    pub fn new(id: &Arc<CmId>) -> io::Result<Self> {
        Self::with_pd(id, ProtectionDomain::new(id)?)
    }

    /// As [`Endpoint::new`], on a protection domain shared with other connections on the
    /// same device (so regions registered once serve them all).
    pub fn with_pd(id: &Arc<CmId>, pd: Arc<ProtectionDomain>) -> io::Result<Self> {
        if pd.id().verbs() != id.verbs() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the protection domain is on another device",
            ));
        }
        let cq = CompletionQueue::new(&pd, 512)?;
        let qp = QueuePair::new(id, &pd, &cq)?;
        let send_buf = MemoryRegion::alloc(&pd, SEND_SLOTS * SLOT, Access::LOCAL)?;
        let recv_buf = MemoryRegion::alloc(&pd, RECV_SLOTS * SLOT, Access::LOCAL_WRITE)?;
        for slot in 0..RECV_SLOTS {
            // SAFETY: `recv_buf` lives in the Endpoint beside the QP, which is declared (and
            // so dropped, flushing every receive) before it.
            unsafe { qp.post_recv(TAG_RECV | slot as u64, &recv_buf, slot * SLOT, SLOT)? };
        }
        Ok(Self {
            qp,
            send_buf,
            recv_buf,
            held: VecDeque::new(),
            reading: Vec::new(),
            posted: 0,
            signaled: VecDeque::new(),
            sq_done: 0,
            unsignaled_run: 0,
            chain: SendChain::default(),
            rdma_wrs: Vec::new(),
            cq,
            pd,
            free_send: (0..SEND_SLOTS).collect(),
            inbox: VecDeque::new(),
            finished: HashSet::new(),
            conv: Conversation::new(),
            wcs: Vec::new(),
            encode: BytesMut::with_capacity(SLOT),
            remote_access_error: false,
            timeout: None,
            cm: None,
        })
    }

    /// Takes completions (blocking for at least one if `block`) and sorts them.
    fn pump(&mut self, block: bool) -> Result<(), DataError> {
        let wait = block.then_some(self.timeout);
        if self.pump_for(wait)? {
            return Ok(());
        }
        Err(no_completion(self.timeout))
    }

    /// Takes completions and sorts them: at once (`wait` None), or blocking for at least one
    /// for up to the given time (forever if that is None). Returns false if none came in time.
    fn pump_for(&mut self, wait: Option<Option<std::time::Duration>>) -> Result<bool, DataError> {
        let Some(limit) = wait else {
            return self.poll_now().map(|_| true);
        };
        // Whatever is awaited may be in the chain still.
        self.ring()?;
        self.wcs.clear();
        let watched = self.cm.as_ref().map(|c| c.fd());
        match self.cq.wait(&mut self.wcs, limit, watched)? {
            Wait::Ready => {}
            Wait::TimedOut => return Ok(false),
            Wait::Other => {
                let ev = self.cm.as_ref().expect("watched").next_event()?;
                let kind = ev.kind();
                let name = ev.name();
                drop(ev);
                if kind == RDMA_CM_EVENT_DISCONNECTED || kind == RDMA_CM_EVENT_DEVICE_REMOVAL {
                    // Flush our QP too, so nothing is left posted on a dead path.
                    self.qp.id().disconnect();
                    self.cm = None;
                    return Err(broken(format!("RDMA connection lost: {name}")));
                }
                return Ok(true);
            }
        }
        self.sort()?;
        Ok(true)
    }

    /// Takes the completions ready now (after ringing the chain) and sorts them; returns
    /// how many there were. Never blocks.
    pub fn poll_now(&mut self) -> Result<usize, DataError> {
        self.ring()?;
        self.wcs.clear();
        let n = self.cq.poll(&mut self.wcs)?;
        self.sort()?;
        Ok(n)
    }

    /// Asks the completion channel for an event at the next completion ([`Endpoint::events_fd`]
    /// turns readable). Poll once more after: a completion that came just before is not
    /// announced.
    pub fn arm(&self) -> Result<(), DataError> {
        Ok(self.cq.arm()?)
    }

    /// The completion channel's descriptor (non-blocking), readable once an armed CQ has a
    /// completion; then [`Endpoint::take_events`].
    pub fn events_fd(&self) -> i32 {
        self.cq.fd()
    }

    /// Takes and acknowledges the completion channel's events.
    pub fn take_events(&self) {
        self.cq.take_events()
    }

    /// Whether `need` is met now (nothing is polled).
    pub fn met(&self, need: Need) -> bool {
        match need {
            Need::Message => !self.inbox.is_empty(),
            Need::SendSlot => !self.free_send.is_empty() && self.has_room(),
            Need::Room => self.has_room(),
            Need::Finished(wr_id) => self.finished.contains(&wr_id),
            Need::ProbeAnswer => self.finished.contains(&TAG_PROBE),
            Need::SendsDrained => self.free_send.len() == SEND_SLOTS,
        }
    }

    fn has_room(&self) -> bool {
        self.posted - self.sq_done < u64::from(MAX_SEND_WR)
    }

    /// Sorts the completions taken into `wcs`: messages to the inbox, send-queue progress,
    /// finished RDMA requests; the first failed one is the error.
    fn sort(&mut self) -> Result<(), DataError> {
        let mut failure = None;
        for wc in self.wcs.drain(..) {
            if !wc.ok() {
                if wc.is_remote_access_error() {
                    self.remote_access_error = true;
                }
                failure.get_or_insert_with(|| {
                    format!("RDMA work request failed: {}", wc.status_name())
                });
                continue;
            }
            if wc.wr_id & TAG_MASK == TAG_RECV {
                self.inbox
                    .push_back(((wc.wr_id & !TAG_MASK) as usize, wc.byte_len as usize));
                continue;
            }
            // A send-queue completion: it and everything posted before it are done.
            if let Some(seq) = self.signaled.pop_front() {
                self.sq_done = seq;
                release_before(&mut self.held, seq + 1);
            }
            match wc.wr_id & TAG_MASK {
                TAG_SEND => self.free_send.push((wc.wr_id & !TAG_MASK) as usize),
                _ if wc.wr_id == TAG_MARK => {}
                _ => {
                    if let Some(i) = self.rdma_wrs.iter().position(|w| *w == wc.wr_id) {
                        self.rdma_wrs.swap_remove(i);
                    }
                    self.finished.insert(wc.wr_id);
                }
            }
        }
        match failure {
            Some(f) => Err(broken(f)),
            None => Ok(()),
        }
    }

    pub fn send(&mut self, msg: &Message) -> Result<(), DataError> {
        // (Room too: waiting for it only frees more slots, so a free one stays free.)
        self.block(Need::SendSlot)?;
        self.encode.clear();
        self.conv.seal(msg, &mut self.encode, SLOT)?;
        let slot = self.free_send.pop().expect("checked non-empty");
        let dst = self.send_buf.bytes_mut().expect("owned buffer");
        dst[slot * SLOT..slot * SLOT + self.encode.len()].copy_from_slice(&self.encode);
        let sge = self.send_buf.sge(slot * SLOT, self.encode.len())?;
        // SAFETY: `send_buf` is dropped after the QP (field order); this slot is written
        // again only once its completion came back to `free_send` (signaled SEND).
        unsafe { self.queue(TAG_SEND | slot as u64, SendOp::Send, sge, None, true)? };
        // A message goes now, with the RDMA requests before it.
        self.ring()
    }

    /// Hands the device every work request numbered so far (one doorbell).
    fn ring(&mut self) -> Result<(), DataError> {
        if !self.chain.is_empty() {
            self.qp.post_chain(&mut self.chain)?;
        }
        Ok(())
    }

    /// Whether a message is waiting (without blocking).
    pub fn has_message(&mut self) -> Result<bool, DataError> {
        if self.inbox.is_empty() {
            self.pump(false)?;
        }
        Ok(!self.inbox.is_empty())
    }

    pub fn recv(&mut self) -> Result<Message, DataError> {
        self.block(Need::Message)?;
        self.take_message()
    }

    /// Blocks until `need` is met (each wait for a completion bounded by `timeout`).
    fn block(&mut self, need: Need) -> Result<(), DataError> {
        while !self.met(need) {
            self.pump(true)?;
        }
        Ok(())
    }

    /// The next message if one arrives within `idle` (None: the peer sent nothing).
    pub fn recv_within(&mut self, idle: std::time::Duration) -> Result<Option<Message>, DataError> {
        let deadline = std::time::Instant::now() + idle;
        while self.inbox.is_empty() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || !self.pump_for(Some(Some(left)))? {
                return Ok(None);
            }
        }
        self.take_message().map(Some)
    }

    /// Checks the peer is still there: a zero-length RDMA WRITE it must acknowledge. A peer
    /// whose host died or whose path is cut fails it after the QP's ack timeout and retries.
    pub fn probe(&mut self, within: std::time::Duration) -> Result<(), DataError> {
        self.start_probe()?;
        let deadline = std::time::Instant::now() + within;
        while !self.probe_answered() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() || !self.pump_for(Some(Some(left)))? {
                return Err(probe_unanswered(within));
            }
        }
        Ok(())
    }

    /// Posts a liveness probe ([`Endpoint::probe`]); its answer is [`Need::ProbeAnswer`].
    pub fn start_probe(&mut self) -> Result<(), DataError> {
        self.room()?;
        self.ring()?;
        self.qp.post_probe(TAG_PROBE)?;
        self.record(true);
        Ok(())
    }

    /// Whether the probe was acknowledged (then it is forgotten).
    pub fn probe_answered(&mut self) -> bool {
        self.finished.remove(&TAG_PROBE)
    }

    fn take_message(&mut self) -> Result<Message, DataError> {
        let (slot, len) = self.inbox.pop_front().expect("checked non-empty");
        let result = self.decode_slot(slot, len);
        // The slot is free again whatever it held.
        // SAFETY: as in `new`: `recv_buf` outlives the QP; the slot was decoded above.
        unsafe {
            self.qp
                .post_recv(TAG_RECV | slot as u64, &self.recv_buf, slot * SLOT, SLOT)?
        };
        result
    }

    fn decode_slot(&mut self, slot: usize, len: usize) -> Result<Message, DataError> {
        let bytes = &self.recv_buf.bytes()[slot * SLOT..slot * SLOT + len.min(SLOT)];
        let total = Frame::check(bytes)
            .map_err(Error::from)?
            .ok_or_else(|| Error::Protocol("truncated frame".into()))?;
        Ok(self.conv.open(&bytes[..total])?)
    }

    /// Posts an RDMA WRITE or READ between `local[offset..offset+len]` and the peer's memory.
    ///
    /// # Safety
    /// As [`SendChain::push`]: the region stays registered, and its bytes unchanged
    /// (WRITE) or unread (READ), until this work request's completion (or a later signaled
    /// one on this endpoint) has been taken with [`Endpoint::wait_for`] or
    /// [`Endpoint::drain_sends`], or the endpoint is gone. Posting is therefore `unsafe`:
    ///
    /// ```no_run
    /// use handoff_datapath::rdma::endpoint::Endpoint;
    /// use handoff_datapath::rdma::verbs::{MemoryRegion, SendOp};
    /// fn post(ep: &mut Endpoint, mr: &MemoryRegion) {
    ///     // SAFETY: the caller waits for wr 1 before it drops or reuses `mr`.
    ///     unsafe { ep.post_rdma(1, SendOp::Write, (mr, 0, 8), (0, 0), true) }.unwrap();
    ///     ep.wait_for(1).unwrap();
    /// }
    /// ```
    ///
    /// and the same without the promise does not compile:
    ///
    /// ```compile_fail
    /// use handoff_datapath::rdma::endpoint::Endpoint;
    /// use handoff_datapath::rdma::verbs::{MemoryRegion, SendOp};
    /// fn post(ep: &mut Endpoint, mr: MemoryRegion) {
    ///     ep.post_rdma(1, SendOp::Write, (&mr, 0, 8), (0, 0), true).unwrap();
    ///     drop(mr); // deregistered while the device may still read it
    /// }
    /// ```
    pub unsafe fn post_rdma(
        &mut self,
        wr_id: u64,
        op: SendOp,
        local: (&MemoryRegion, usize, usize),
        remote: (u64, u32),
        signaled: bool,
    ) -> Result<(), DataError> {
        self.check_wr(wr_id)?;
        let (mr, offset, len) = local;
        let sge = mr.sge(offset, len)?;
        // SAFETY: this function's contract is the same as push's.
        unsafe { self.queue(wr_id, op, sge, Some(remote), signaled)? };
        Ok(())
    }

    /// Refuses a work request id that would be taken for one of the endpoint's own (tag bits
    /// set) or that names a request still outstanding (its completion would release the
    /// wrong region).
    fn check_wr(&self, wr_id: u64) -> Result<(), DataError> {
        if wr_id & TAG_MASK != 0 || self.rdma_wrs.contains(&wr_id) {
            return Err(broken(format!(
                "RDMA work request id {wr_id} is reserved or in use"
            )));
        }
        if self.reading.iter().any(|(w, _)| *w == wr_id) {
            return Err(broken(format!("RDMA READ {wr_id} was not finished")));
        }
        Ok(())
    }

    /// Waits until the send queue has room for one more work request (counting those in
    /// the chain: rings it first, as every wait does).
    fn room(&mut self) -> Result<(), DataError> {
        self.block(Need::Room)
    }

    /// Counts a work request handed to the device (or to the chain); returns its sequence
    /// number.
    fn record(&mut self, signaled: bool) -> u64 {
        self.posted += 1;
        if signaled {
            self.signaled.push_back(self.posted);
            self.unsignaled_run = 0;
        } else {
            self.unsignaled_run += 1;
        }
        self.posted
    }

    /// Queues one work request on the chain once the send queue has room for it. It is
    /// signaled if `asked`, or anyway after [`SIGNAL_EVERY`] unsignaled ones (then under
    /// [`TAG_MARK`]: that completion is nobody's to wait for); an RDMA request asked signaled
    /// is recorded as outstanding under its id. Nothing is recorded for a request that could
    /// not be queued. Returns its sequence number.
    ///
    /// # Safety
    /// As [`SendChain::push`].
    unsafe fn queue(
        &mut self,
        wr_id: u64,
        op: SendOp,
        sge: Sge,
        remote: Option<(u64, u32)>,
        asked: bool,
    ) -> Result<u64, DataError> {
        self.room()?;
        let signaled = asked || self.unsignaled_run + 1 >= SIGNAL_EVERY;
        let id = if signaled && !asked { TAG_MARK } else { wr_id };
        // SAFETY: the caller's contract is push's.
        unsafe { self.chain.push(id, op, sge, remote, signaled) };
        if asked && wr_id & TAG_MASK == 0 {
            self.rdma_wrs.push(wr_id);
        }
        Ok(self.record(signaled))
    }

    /// Posts an RDMA WRITE of `local[offset..offset+len]` to the peer's `remote` (address,
    /// rkey). Safe: the endpoint holds the region until a later completion shows the device
    /// is done with it (or the QP is gone), and an `Arc` lets nobody change its bytes
    /// meanwhile.
    pub fn post_write_from(
        &mut self,
        wr_id: u64,
        local: (&Arc<MemoryRegion>, usize, usize),
        remote: (u64, u32),
        signaled: bool,
    ) -> Result<(), DataError> {
        self.check_wr(wr_id)?;
        let (mr, offset, len) = local;
        let sge = mr.sge(offset, len)?;
        // SAFETY: `mr` is held (below) until a completion of this post or a later one has
        // been polled, or the endpoint is dropped, whose QP goes first (field order); through
        // a shared `Arc` its bytes cannot be changed meanwhile.
        let seq = unsafe { self.queue(wr_id, SendOp::Write, sge, Some(remote), signaled)? };
        if !self.held.back().is_some_and(|(_, m)| Arc::ptr_eq(m, mr)) {
            self.held.push_back((seq, mr.clone()));
        } else if let Some(last) = self.held.back_mut() {
            last.0 = seq;
        }
        Ok(())
    }

    /// Posts an RDMA READ of `len` bytes from the peer's `remote` (address, rkey) into
    /// `target`. The target is held by the endpoint until [`Endpoint::finish_read`] hands it
    /// back (or the endpoint is dropped, whose QP goes first), so it outlives the device's
    /// writes; a [`ReadTarget::Buffer`] is the endpoint's alone meanwhile, so nothing reads it
    /// half-written.
    pub fn post_read_into(
        &mut self,
        wr_id: u64,
        target: ReadTarget,
        len: usize,
        remote: (u64, u32),
    ) -> Result<(), DataError> {
        self.check_wr(wr_id)?;
        let sge = match &target {
            ReadTarget::Buffer(mr) => mr.sge(0, len),
            ReadTarget::Window(mr, at) => mr.sge(*at, len),
        }?;
        // SAFETY: the region is held by the endpoint (`reading`) from here until this
        // request's completion is polled, or the endpoint is dropped, whose QP goes first.
        // A window is file memory no Rust code reads through a reference (only the device
        // touches it), so bytes landing there race with nothing in this process.
        unsafe { self.queue(wr_id, SendOp::Read, sge, Some(remote), true)? };
        self.reading.push((wr_id, target));
        Ok(())
    }

    /// Waits for the RDMA READ `wr_id` and hands back where its bytes landed.
    pub fn finish_read(&mut self, wr_id: u64) -> Result<ReadTarget, DataError> {
        self.wait_for(wr_id)?;
        let at = self.reading.iter().position(|(w, _)| *w == wr_id);
        at.map(|i| self.reading.swap_remove(i).1)
            .ok_or_else(|| broken(format!("no RDMA READ {wr_id} was posted")))
    }

    /// Whether the signaled work request `wr_id` is known to have completed successfully (a
    /// wait that failed on another request's completion may have seen it). Asked once.
    pub fn take_finished(&mut self, wr_id: u64) -> bool {
        self.finished.remove(&wr_id)
    }

    /// Blocks until the signaled work request `wr_id` completed.
    pub fn wait_for(&mut self, wr_id: u64) -> Result<(), DataError> {
        self.block(Need::Finished(wr_id))?;
        self.finished.remove(&wr_id);
        Ok(())
    }

    /// Blocks until every SEND this side posted has completed (so regions the peer was told
    /// about are no longer referenced by posted work).
    pub fn drain_sends(&mut self) -> Result<(), DataError> {
        // (Queued RDMA requests too: they complete before a SEND queued after them.)
        self.ring()?;
        self.block(Need::SendsDrained)
    }

    /// Client side of the mutual PSK handshake, over SEND/RECV.
    pub fn client_handshake(&mut self, identity: &Identity) -> Result<(), DataError> {
        let (mut handshake, hello) = Handshake::client(identity, crate::nonce());
        self.send(&hello)?;
        self.drive(&mut handshake).map(drop)
    }

    /// Server side; the client must be `expected` (the holder of the key it connected with).
    pub fn server_handshake(
        &mut self,
        directory: &ClientDirectory,
        expected: &str,
    ) -> Result<String, DataError> {
        self.drive(&mut Handshake::server(
            directory,
            Some(expected),
            crate::nonce(),
        ))
    }

    /// Runs a handshake to its end (as the TCP channel does): feeds it each message, sends
    /// what it asks, and on success MACs every later frame. Returns the peer's proven name.
    fn drive(&mut self, handshake: &mut Handshake<'_>) -> Result<String, DataError> {
        loop {
            let msg = self.recv()?;
            match self.handshake_step(handshake, msg) {
                Ok(Some(peer)) => return Ok(peer),
                Ok(None) => {}
                Err(e) => {
                    // (The refusal, if one was sent, goes out before the QP does.)
                    let _ = self.drain_sends();
                    return Err(e);
                }
            }
        }
    }

    /// Feeds `handshake` one message and sends what it asks (at most one message: needs
    /// [`Need::SendSlot`] only); on success MACs every later frame and returns the peer's
    /// proven name. On an error, a refusal may have been sent: drain it before closing.
    pub fn handshake_step(
        &mut self,
        handshake: &mut Handshake<'_>,
        msg: Message,
    ) -> Result<Option<String>, DataError> {
        match handshake.on_message(msg) {
            Ok(Step::Send(reply)) => self.send(&reply).map(|()| None),
            Ok(Step::Done { reply, keys, peer }) => {
                if let Some(reply) = reply {
                    self.send(&reply)?;
                }
                self.conv.establish(keys, handshake.side());
                Ok(Some(peer))
            }
            Err(e) => {
                if let Some(refusal) = handshake.refusal(&e) {
                    let _ = self.send(&refusal);
                }
                Err(Error::from(e).into())
            }
        }
    }
}

/// The 6 bytes after the 50-byte key in the connect private data: a MAC of the key under the
/// bound client's secret, and of whether the client may ask for direct mode (no room is left
/// for a flag: the tag that matches says which). A key presented by another client is refused
/// before the QP is accepted; the full handshake that follows proves freshness.
pub fn connect_tag(secret: &[u8; 32], sealed_key: &[u8], wants_direct: bool) -> [u8; 6] {
    use hmac::Mac;
    let full = connect_mac(secret, sealed_key, wants_direct)
        .finalize()
        .into_bytes();
    let mut tag = [0u8; 6];
    tag.copy_from_slice(&full[..6]);
    tag
}

/// Whether `tag` is a [`connect_tag`] of `sealed_key` under `secret`, and if so whether the
/// client said it may ask for direct mode. Compared in constant time (no timing tells a forger
/// how many leading bytes were right).
pub fn connect_tag_check(secret: &[u8; 32], sealed_key: &[u8], tag: &[u8]) -> Option<bool> {
    use hmac::Mac;
    if tag.len() != 6 {
        return None;
    }
    [true, false].into_iter().find(|&wants_direct| {
        connect_mac(secret, sealed_key, wants_direct)
            .verify_truncated_left(tag)
            .is_ok()
    })
}

fn connect_mac(
    secret: &[u8; 32],
    sealed_key: &[u8],
    wants_direct: bool,
) -> hmac::Hmac<sha2::Sha256> {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
    mac.update(b"handoff rdma connect v1");
    mac.update(sealed_key);
    if !wants_direct {
        // (The tag of a client that may ask for direct mode is the original one.)
        mac.update(b"no direct");
    }
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connect_tag_says_whether_direct_mode_may_be_asked_and_only_under_the_right_secret() {
        let (secret, other) = ([7u8; 32], [8u8; 32]);
        let key = [1u8; 50];
        for wants_direct in [true, false] {
            let tag = connect_tag(&secret, &key, wants_direct);
            assert_eq!(connect_tag_check(&secret, &key, &tag), Some(wants_direct));
            assert_eq!(connect_tag_check(&other, &key, &tag), None);
            assert_eq!(connect_tag_check(&secret, &[2u8; 50], &tag), None);
            assert_eq!(connect_tag_check(&secret, &key, &tag[..5]), None);
        }
        assert_ne!(
            connect_tag(&secret, &key, true),
            connect_tag(&secret, &key, false)
        );
    }
}
