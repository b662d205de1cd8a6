//! The RDMA data-channel client: a duplicate handle on a QP, with a ring of registered
//! buffers that the server writes into (reads) or reads from (writes), several requests in
//! flight. Bytes reach the caller as slices of registered memory: no copy in handoff.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use handoff_core::auth::Identity;
use handoff_core::state::ResumeReport;
use handoff_core::wire::{ErrorCode, FileInfo, Message, Span};
use handoff_core::Error;
use rdma_sys::rdma_cm_event_type::*;

use super::cm::{CmId, EventChannel};
use super::endpoint::{connect_tag, Endpoint};
use super::verbs::{Access, MemoryRegion, SendOp};
use super::{CONNECT_PRIVATE_LEN, MAX_REQUEST, SERVES_BATCHES};
use crate::DataError;

/// Requests in flight per QP (at least; small requests keep more, see [`Geometry`]).
pub const DEPTH: usize = 8;
/// Registered slots per QP: twice the depth, so a surviving QP can take over every chunk a
/// failed one had in flight.
pub const SLOTS: usize = 2 * DEPTH;
/// Bytes per request by default, and the largest request a client asks.
pub const CHUNK: usize = 2 << 20;
const _: () = assert!(CHUNK as u64 <= MAX_REQUEST);
/// Requests smaller than this go several to a message ([`Message::RdmaReadMany`],
/// [`Message::RdmaWriteMany`]), as many as make this many bytes: a request's SEND and its
/// reply cost about what a 4 KiB RDMA WRITE does, so one message per 4 KiB request spent
/// two thirds of the time on messages.
pub const BATCH_BYTES: usize = 256 << 10;
/// Requests in one message at most.
pub const BATCH: usize = 32;
const _: () = assert!(BATCH <= handoff_core::wire::MAX_BATCH);

/// How a QP's requests are sized and grouped: `request` bytes each, up to `batch` per message,
/// `depth` in flight (two messages' worth at least, so the server always has the next).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub request: usize,
    pub batch: usize,
    pub depth: usize,
}

impl Geometry {
    /// For requests of `request` bytes (clamped to 4 KiB..=[`CHUNK`]), several to a message
    /// only if the server `batches` (an older one does not: see [`SERVES_BATCHES`]).
    pub fn new(request: usize, batches: bool) -> Self {
        let request = request.clamp(4096, CHUNK);
        let batch = if batches {
            (BATCH_BYTES / request).clamp(1, BATCH)
        } else {
            1
        };
        Self {
            request,
            batch,
            depth: DEPTH.max(2 * batch),
        }
    }

    /// Registered slots: twice the depth (see [`SLOTS`]).
    pub fn slots(&self) -> usize {
        2 * self.depth
    }
}

pub struct RdmaClient {
    // Drop order: the endpoint (QP) first, then the buffers it referenced, then the id.
    ep: Endpoint,
    buf: MemoryRegion,
    id: Arc<CmId>,
    channel: Arc<EventChannel>,
    pub handle: u64,
    pub info: FileInfo,
    pub report: ResumeReport,
    pub addr: SocketAddr,
    pub device: String,
    /// Bytes moved through this QP (either direction).
    pub bytes: u64,
    direct: Option<DirectGrant>,
    next_wr: u64,
    /// Bytes asked per request (also the stride of the registered slots), and how many go
    /// per message and in flight.
    geometry: Geometry,
}

/// The next reply on `ep`, with an `Error` reply turned into `Err`.
fn reply(ep: &mut Endpoint) -> Result<Message, DataError> {
    Ok(crate::check_reply(ep.recv()?)?)
}

fn remote_error(code: u8, message: String) -> DataError {
    Error::Remote {
        code: ErrorCode::from_wire(u16::from(code)),
        message,
        report: None,
        retry_after_ms: 0,
    }
    .into()
}

fn protocol(what: String) -> DataError {
    Error::Protocol(what).into()
}

/// Resolves `addr` to a device and a route on `id`.
fn resolve(channel: &EventChannel, id: &CmId, addr: SocketAddr) -> Result<(), DataError> {
    let wait = |want: u32, what: &str| -> Result<(), DataError> {
        let ev = channel
            .next_event_timeout(Duration::from_secs(10))?
            .ok_or_else(|| protocol(format!("no answer from {addr} while {what}")))?;
        if ev.kind() == want {
            Ok(())
        } else {
            Err(protocol(format!(
                "{what} {addr}: {} (status {})",
                ev.name(),
                ev.status()
            )))
        }
    };
    id.resolve_addr(addr, 2000)?;
    wait(RDMA_CM_EVENT_ADDR_RESOLVED, "resolving")?;
    id.resolve_route(2000)?;
    wait(RDMA_CM_EVENT_ROUTE_RESOLVED, "finding a route to")
}

/// Waits for the server's answer to a connect request: established, with the byte the server
/// accepted with (see [`super::ACCEPTED`]), or its refusal (a handoff server says why in the reject's
/// private data).
fn established(channel: &EventChannel, addr: SocketAddr) -> Result<u8, DataError> {
    let ev = channel
        .next_event_timeout(Duration::from_secs(15))?
        .ok_or_else(|| protocol(format!("no answer to the connect request from {addr}")))?;
    match ev.kind() {
        RDMA_CM_EVENT_ESTABLISHED => Ok(ev.private_data().first().copied().unwrap_or(0)),
        RDMA_CM_EVENT_REJECTED => {
            let data = ev.private_data();
            let code = data.first().copied().unwrap_or(1);
            let text = String::from_utf8_lossy(data.get(1..).unwrap_or_default());
            let text = text.trim_end_matches('\0');
            Err(if text.is_empty() {
                protocol(format!(
                    "{addr} rejected the RDMA connection (no handoff server there? reject \
                     reason {})",
                    ev.status()
                ))
            } else {
                remote_error(code, text.to_string())
            })
        }
        _ => Err(protocol(format!(
            "connecting to {addr}: {} (status {})",
            ev.name(),
            ev.status()
        ))),
    }
}

impl RdmaClient {
    /// Connects to `addr`, presenting `key`; the server checks it before accepting the QP.
    /// Requests are [`CHUNK`] bytes.
    /// Direct mode may be asked for.
    pub fn connect(addr: SocketAddr, identity: &Identity, key: &[u8]) -> Result<Self, DataError> {
        Self::connect_sized(addr, identity, key, CHUNK, true)
    }

    /// As [`connect`](Self::connect), asking `request` bytes per request (clamped to
    /// 4 KiB..=[`CHUNK`]): smaller requests register less memory (see [`Geometry`]) and go
    /// several to a message. Without `wants_direct` the server refuses direct grants
    /// on this QP (and serves it from regions shared with other connections).
    pub fn connect_sized(
        addr: SocketAddr,
        identity: &Identity,
        key: &[u8],
        request: usize,
        wants_direct: bool,
    ) -> Result<Self, DataError> {
        let channel = EventChannel::new()?;
        let id = CmId::new(&channel)?;
        resolve(&channel, &id, addr)?;
        // 4.096 µs × 2^16 ≈ 0.27 s per try, 7 tries: a dead path shows in about 2 s.
        id.set_ack_timeout(16);
        let mut ep = Endpoint::new(&id)?;
        ep.timeout = Some(Duration::from_secs(15));
        // Registered before the server's answer says whether requests may go several to a
        // message: sized for the larger geometry, so either fits.
        let most = Geometry::new(request, true);
        let buf = MemoryRegion::alloc(
            &ep.pd,
            most.slots() * most.request,
            Access::LOCAL_WRITE
                .with(Access::REMOTE_WRITE)
                .with(Access::REMOTE_READ),
        )?;
        let mut private = key.to_vec();
        private.extend_from_slice(&connect_tag(&identity.secret, key, wants_direct));
        if private.len() != CONNECT_PRIVATE_LEN {
            return Err(Error::not_found("resume key rejected: wrong length").into());
        }
        id.connect(&private)?;
        let accepted = established(&channel, addr)?;
        let geometry = Geometry::new(request, accepted & SERVES_BATCHES != 0);
        ep.cm = Some(channel.clone());
        let device = id.device_name();
        ep.client_handshake(identity)?;
        let (handle, info, report) = match reply(&mut ep)? {
            Message::Attached {
                handle,
                info,
                report,
            } => (handle, info, report),
            other => {
                return Err(protocol(format!(
                    "expected Attached, got {:#04x}",
                    other.kind()
                )))
            }
        };
        Ok(Self {
            ep,
            buf,
            id,
            channel,
            handle,
            info,
            report,
            addr,
            device,
            bytes: 0,
            direct: None,
            next_wr: 1,
            geometry,
        })
    }

    /// Bytes asked per request (and the size of each registered slot).
    pub fn request_size(&self) -> usize {
        self.geometry.request
    }

    pub fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn slot(&self, i: usize) -> (u64, u32) {
        (
            self.buf.addr() + (i * self.geometry.request) as u64,
            self.buf.rkey(),
        )
    }

    pub(crate) fn request_read(
        &mut self,
        slot: usize,
        offset: u64,
        len: u64,
    ) -> Result<(), DataError> {
        let (addr, rkey) = self.slot(slot);
        self.ep.send(&Message::RdmaRead {
            offset,
            len,
            addr,
            rkey,
        })
    }

    pub(crate) fn slot_bytes(&self, slot: usize, n: usize) -> &[u8] {
        &self.buf.bytes()[slot * self.geometry.request..slot * self.geometry.request + n]
    }

    /// After the server refused a request, reads and drops the replies to the `outstanding`
    /// requests sent after it, so the next call does not take them for its own; returns the
    /// refusal. (Any other error leaves the connection unusable anyway.)
    pub(crate) fn settle(&mut self, refusal: DataError, outstanding: usize) -> DataError {
        if refusal.is_remote_error() {
            if let Err(e) = self.drain(outstanding) {
                return e;
            }
        }
        refusal
    }

    /// Reads and drops the next `outstanding` replies.
    pub(crate) fn drain(&mut self, outstanding: usize) -> Result<(), DataError> {
        for _ in 0..outstanding {
            self.ep.recv()?;
        }
        Ok(())
    }

    pub(crate) fn expect_read(&mut self) -> Result<u64, DataError> {
        match reply(&mut self.ep)? {
            Message::ReadData { len } => Ok(len),
            other => Err(protocol(format!(
                "expected ReadData, got {:#04x}",
                other.kind()
            ))),
        }
    }

    /// Asks for the reads `items` (slot, file offset, length) in one message.
    pub(crate) fn request_reads(&mut self, items: &[(usize, u64, u64)]) -> Result<(), DataError> {
        if let [(slot, offset, len)] = *items {
            return self.request_read(slot, offset, len);
        }
        let rkey = self.buf.rkey();
        let items = items
            .iter()
            .map(|&(slot, offset, len)| Span {
                offset,
                len,
                addr: self.slot(slot).0,
            })
            .collect();
        self.ep.send(&Message::RdmaReadMany { rkey, items })
    }

    /// The answer to [`RdmaClient::request_reads`] of `count` items: bytes read per item.
    pub(crate) fn expect_reads(&mut self, count: usize) -> Result<Vec<u64>, DataError> {
        if count == 1 {
            return Ok(vec![self.expect_read()?]);
        }
        match reply(&mut self.ep)? {
            Message::ReadMany { lens } if lens.len() == count => Ok(lens),
            Message::ReadMany { lens } => Err(protocol(format!(
                "server answered {} reads of {count} asked",
                lens.len()
            ))),
            other => Err(protocol(format!(
                "expected ReadMany, got {:#04x}",
                other.kind()
            ))),
        }
    }

    /// Reads up to `len` bytes from `offset` (fewer at end of file), handing each chunk to
    /// `sink` in order as a slice of registered memory. Returns the bytes read.
    pub fn read_to(
        &mut self,
        offset: u64,
        len: u64,
        sink: &mut crate::Sink<'_>,
    ) -> Result<u64, DataError> {
        let Geometry {
            request,
            batch,
            depth,
        } = self.geometry;
        let mut free: Vec<usize> = (0..depth).rev().collect();
        // Per message in flight: its reads (slot, offset, length asked), in order.
        let mut inflight: VecDeque<Vec<(usize, u64, u64)>> = VecDeque::new();
        let mut issued = 0u64;
        let mut got = 0u64;
        let mut eof = false;
        loop {
            while !eof && issued < len && !free.is_empty() {
                let mut items = Vec::with_capacity(batch);
                while items.len() < batch && issued < len {
                    let Some(slot) = free.pop() else { break };
                    let n = (len - issued).min(request as u64);
                    items.push((slot, offset + issued, n));
                    issued += n;
                }
                self.request_reads(&items)?;
                inflight.push_back(items);
            }
            let Some(items) = inflight.pop_front() else {
                break;
            };
            let lens = match self.expect_reads(items.len()) {
                Ok(lens) => lens,
                Err(e) => return Err(self.settle(e, inflight.len())),
            };
            for (&(slot, _, asked), n) in items.iter().zip(lens) {
                free.push(slot);
                if n > asked {
                    return Err(protocol(format!(
                        "server announced {n} bytes for a read of at most {asked}"
                    )));
                }
                if eof {
                    // Asked before the end was seen: bytes past a short chunk would leave a gap.
                    continue;
                }
                sink(self.slot_bytes(slot, n as usize))?;
                got += n;
                self.bytes += n;
                eof = n < asked;
            }
        }
        Ok(got)
    }

    /// Asks for the writes `items` (slot, file offset, length) in one message.
    fn request_writes(&mut self, items: &[(usize, u64, u64)]) -> Result<(), DataError> {
        let rkey = self.buf.rkey();
        let msg = match *items {
            [(slot, offset, len)] => Message::RdmaWrite {
                offset,
                len,
                addr: self.slot(slot).0,
                rkey,
            },
            _ => Message::RdmaWriteMany {
                rkey,
                items: items
                    .iter()
                    .map(|&(slot, offset, len)| Span {
                        offset,
                        len,
                        addr: self.slot(slot).0,
                    })
                    .collect(),
            },
        };
        self.ep.send(&msg)
    }

    /// Writes what `fill` produces (it writes into registered memory and returns how many
    /// bytes it put there; 0 ends) at `offset` onwards. Returns the bytes written.
    pub fn write_from(
        &mut self,
        offset: u64,
        fill: &mut crate::Fill<'_>,
    ) -> Result<u64, DataError> {
        let Geometry {
            request,
            batch,
            depth,
        } = self.geometry;
        let mut free: Vec<usize> = (0..depth).rev().collect();
        // Per message in flight: the slots its writes came from.
        let mut inflight: VecDeque<Vec<usize>> = VecDeque::new();
        let mut pos = offset;
        let mut done = false;
        let mut written = 0u64;
        loop {
            while !done && !free.is_empty() {
                let mut items = Vec::with_capacity(batch);
                while items.len() < batch {
                    let Some(slot) = free.pop() else { break };
                    let region = &mut self.buf.bytes_mut().expect("owned buffer")
                        [slot * request..(slot + 1) * request];
                    let n = fill(region)?;
                    if n == 0 {
                        done = true;
                        free.push(slot);
                        break;
                    }
                    items.push((slot, pos, n as u64));
                    pos += n as u64;
                }
                if items.is_empty() {
                    break;
                }
                self.request_writes(&items)?;
                inflight.push_back(items.into_iter().map(|(slot, ..)| slot).collect());
            }
            let Some(slots) = inflight.pop_front() else {
                break;
            };
            let answer = match reply(&mut self.ep) {
                Ok(m) => m,
                Err(e) => return Err(self.settle(e, inflight.len())),
            };
            match answer {
                Message::Written { len } => {
                    written += len;
                    self.bytes += len;
                }
                other => {
                    return Err(protocol(format!(
                        "expected Written, got {:#04x}",
                        other.kind()
                    )))
                }
            }
            free.extend(slots);
        }
        Ok(written)
    }

    /// Writes `data` at `offset` (copied into registered memory chunk by chunk).
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DataError> {
        let mut rest = data;
        self.write_from(offset, &mut |buf| {
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            Ok(n)
        })?;
        Ok(())
    }

    /// Makes written bytes durable on the server.
    pub fn flush(&mut self) -> Result<(), DataError> {
        self.request_done(&Message::Flush)
    }

    /// Sends `request` and takes its `Done`.
    fn request_done(&mut self, request: &Message) -> Result<(), DataError> {
        self.ep.send(request)?;
        match reply(&mut self.ep)? {
            Message::Done => Ok(()),
            other => Err(protocol(format!(
                "expected Done, got {:#04x}",
                other.kind()
            ))),
        }
    }

    /// Asks for direct mode (one-sided reads; with `write`, reads and writes). `Ok(false)`:
    /// refused (the reason is logged); use `read_to` and `write_from`.
    pub fn map_direct(&mut self, write: bool) -> Result<bool, DataError> {
        let ask = if write {
            Message::MapFileWrite
        } else {
            Message::MapFile
        };
        self.ep.send(&ask)?;
        match self.ep.recv()? {
            Message::FileMapped { addr, len, rkey } => {
                self.direct = Some(DirectGrant {
                    base: addr,
                    len,
                    rkey,
                    writable: write,
                });
                Ok(true)
            }
            Message::Error { message, .. } => {
                tracing::info!("direct mode refused: {message}");
                Ok(false)
            }
            other => Err(protocol(format!(
                "expected FileMapped, got {:#04x}",
                other.kind()
            ))),
        }
    }

    /// Direct mode: one-sided RDMA READs of the file's MR, no server CPU. A revoked grant
    /// shows as [`DirectRevoked`]: the QP is then dead; reconnect and use `read_to`.
    pub fn read_direct(
        &mut self,
        offset: u64,
        len: u64,
        sink: &mut crate::Sink<'_>,
    ) -> Result<u64, DataError> {
        let DirectGrant {
            base,
            len: size,
            rkey,
            ..
        } = self
            .direct
            .ok_or_else(|| protocol("direct mode not granted".into()))?;
        let len = len.min(size.saturating_sub(offset));
        let mut inflight: VecDeque<(u64, usize, usize)> = VecDeque::new();
        let mut issued = 0u64;
        let mut got = 0u64;
        let mut free: Vec<usize> = (0..self.geometry.depth).rev().collect();
        loop {
            while issued < len {
                let Some(slot) = free.pop() else { break };
                let n = (len - issued).min(self.geometry.request as u64) as usize;
                let wr = self.next_wr;
                self.next_wr += 1;
                let remote = (base + offset + issued, rkey);
                // SAFETY: `buf` is dropped after this handle's endpoint (field order); a slot
                // is read and reused only after wait_for(wr) took its READ's completion, and a
                // failed completion puts the QP in the error state, which flushes the rest.
                unsafe {
                    self.ep.post_rdma(
                        wr,
                        SendOp::Read,
                        (&self.buf, slot * self.geometry.request, n),
                        remote,
                        true,
                    )?
                };
                inflight.push_back((wr, slot, n));
                issued += n as u64;
            }
            let Some((wr, slot, n)) = inflight.pop_front() else {
                break;
            };
            if let Err(e) = self.ep.wait_for(wr) {
                if self.ep.remote_access_error {
                    self.direct = None;
                    return Err(DataError::Io(std::io::Error::other(DirectRevoked)));
                }
                return Err(e);
            }
            sink(
                &self.buf.bytes()[slot * self.geometry.request..slot * self.geometry.request + n],
            )?;
            got += n as u64;
            self.bytes += n as u64;
            free.push(slot);
        }
        Ok(got)
    }

    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Whether the grant held lets this client write one-sidedly too.
    pub fn is_direct_writable(&self) -> bool {
        self.direct.is_some_and(|d| d.writable)
    }

    /// Direct writes: what `fill` produces goes into the file's region with this client's
    /// own RDMA WRITEs (no server CPU), pipelined as deep as its [`Geometry`], from `offset` until `fill`
    /// ends or the region does (direct writes never extend the file). Each WRITE counts once
    /// its completion says it was placed. The caller writes what is left through the server
    /// (`write_from`), starting with [`DirectWritten::carry`], and ends with
    /// [`RdmaClient::direct_flush`].
    pub fn write_direct(
        &mut self,
        offset: u64,
        fill: &mut crate::Fill<'_>,
    ) -> Result<DirectWritten, DataError> {
        let grant = self
            .direct
            .filter(|d| d.writable)
            .ok_or_else(|| protocol("direct writes not granted".into()))?;
        let mut inflight: VecDeque<(u64, usize, usize)> = VecDeque::new();
        let mut free: Vec<usize> = (0..self.geometry.depth).rev().collect();
        let mut pos = offset;
        let mut ended = false;
        let mut done = DirectWritten::default();
        loop {
            while !ended && pos < grant.len {
                let Some(slot) = free.pop() else { break };
                let room = (grant.len - pos).min(self.geometry.request as u64) as usize;
                let region = &mut self.buf.bytes_mut().expect("owned buffer")
                    [slot * self.geometry.request..slot * self.geometry.request + room];
                let n = fill(region)?;
                if n == 0 {
                    ended = true;
                    free.push(slot);
                    break;
                }
                let wr = self.next_wr;
                self.next_wr += 1;
                // SAFETY: `buf` is dropped after this handle's endpoint (field order); a slot
                // is refilled only after wait_for(wr) took its WRITE's completion, and a failed
                // completion puts the QP in the error state, which flushes the rest.
                unsafe {
                    self.ep.post_rdma(
                        wr,
                        SendOp::Write,
                        (&self.buf, slot * self.geometry.request, n),
                        (grant.base + pos, grant.rkey),
                        true,
                    )?
                };
                inflight.push_back((wr, slot, n));
                pos += n as u64;
            }
            let Some((wr, slot, n)) = inflight.front().copied() else {
                break;
            };
            if let Err(e) = self.ep.wait_for(wr) {
                if !self.ep.remote_access_error {
                    return Err(e);
                }
                // Revoked. WRITEs whose completions came back fine landed (sending them again
                // through the server could undo a newer writer's bytes); from the first that
                // did not, in order, the bytes go through the server instead (the QP's error
                // state flushed every WRITE after it unexecuted).
                self.direct = None;
                done.revoked = true;
                let mut failed = false;
                for (wr, slot, n) in inflight {
                    if !failed && self.ep.take_finished(wr) {
                        done.written += n as u64;
                        self.bytes += n as u64;
                        continue;
                    }
                    failed = true;
                    let at = slot * self.geometry.request;
                    done.carry.extend_from_slice(&self.buf.bytes()[at..at + n]);
                }
                return Ok(done);
            }
            inflight.pop_front();
            done.written += n as u64;
            self.bytes += n as u64;
            free.push(slot);
        }
        Ok(done)
    }

    /// Makes direct writes durable and has the server count `[offset, offset + len)` as this
    /// handle's change (works on any QP of the open, also after the grant was revoked).
    pub fn direct_flush(&mut self, offset: u64, len: u64) -> Result<(), DataError> {
        self.request_done(&Message::DirectFlush { offset, len })
    }
}

/// A direct-mode grant: the file's region `[base, base + len)` under `rkey`.
#[derive(Clone, Copy, Debug)]
struct DirectGrant {
    base: u64,
    len: u64,
    rkey: u32,
    writable: bool,
}

/// How far [`RdmaClient::write_direct`] got.
#[derive(Debug, Default)]
pub struct DirectWritten {
    /// Bytes placed one-sidedly, from the offset asked.
    pub written: u64,
    /// Bytes `fill` produced that did not land direct (in flight when the grant was
    /// revoked): the next to write, at offset + `written`.
    pub carry: Vec<u8>,
    /// The grant was revoked; this QP is dead, reconnect for the rest.
    pub revoked: bool,
}

impl Drop for RdmaClient {
    fn drop(&mut self) {
        // Disconnect, then take this id's remaining events (DISCONNECTED): rdma_destroy_id
        // waits for every event of the id to be acked.
        self.id.disconnect();
        if self.ep.cm.is_none() {
            return; // the connection's end was already seen
        }
        while let Ok(Some(ev)) = self.channel.next_event_timeout(Duration::from_millis(200)) {
            let last = ev.kind() == RDMA_CM_EVENT_DISCONNECTED;
            drop(ev);
            if last {
                break;
            }
        }
    }
}

/// The server revoked direct access (a conflicting open or lock, a close, an expiry).
#[derive(Debug, thiserror::Error)]
#[error("direct-mode access was revoked by the server")]
pub struct DirectRevoked;

/// Whether an error is a direct-mode revocation.
pub fn is_revoked(e: &DataError) -> bool {
    matches!(e, DataError::Io(io) if io.get_ref().is_some_and(|inner| inner.is::<DirectRevoked>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_requests_go_many_to_a_message_with_two_messages_in_flight() {
        let g = |request| {
            let g = Geometry::new(request, true);
            (g.request, g.batch, g.depth, g.slots() * g.request)
        };
        // (bytes per request, per message, in flight, registered)
        assert_eq!(g(100), (4096, 32, 64, 512 << 10));
        assert_eq!(g(4096), (4096, 32, 64, 512 << 10));
        assert_eq!(g(64 << 10), (64 << 10, 4, 8, 1 << 20));
        assert_eq!(g(256 << 10), (256 << 10, 1, 8, 4 << 20));
        assert_eq!(g(CHUNK), (CHUNK, 1, DEPTH, SLOTS * CHUNK));
        assert_eq!(g(usize::MAX).0, CHUNK);
        // An older server (no batches): one request per message, as it always was.
        let old = Geometry::new(4096, false);
        assert_eq!((old.batch, old.depth), (1, DEPTH));
    }
}
