//! The RDMA data-channel server. One rdma_cm thread per listen address takes connect
//! requests: the resume key in the private data is authenticated and looked up, and the
//! 6-byte client tag checked, *before* a QP is accepted; a refusal goes back as reject
//! private data. Each accepted connection is a task on one of a few serving threads
//! (however many connections; see [`Workers`]): it runs the mutual handshake over SEND/RECV,
//! attaches the duplicate handle, and serves requests, waiting on its completion channel
//! through its thread's reactor. Reads go as RDMA WRITEs from
//! registered file windows, writes as RDMA READs straight into those windows where the file is
//! on tmpfs and the write inside it (zero-copy), else into a registered bounce pool, then
//! `pwrite`.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use tracing::Instrument;

use handoff_core::state::resume_key::SEALED_LEN;
use handoff_core::state::DirectAccess;
use handoff_core::wire::{ErrorCode, Message, Span};
use handoff_core::Error;
use handoff_datapath::rdma::async_endpoint::AsyncEndpoint;
use handoff_datapath::rdma::cm::CmId;
use handoff_datapath::rdma::device_share::{DeviceShare, DeviceShares, WindowKey};
use handoff_datapath::rdma::endpoint::{connect_tag_check, Endpoint, ReadTarget};
use handoff_datapath::rdma::file_windows::{FileWindows, Source, WindowJob};
use handoff_datapath::rdma::listener::{ConnKey, ListenEvent, Listener};
use handoff_datapath::rdma::verbs::{Access, MemoryRegion};
use handoff_datapath::rdma::{ACCEPTED, CONNECT_PRIVATE_LEN, MAX_REQUEST, SERVES_BATCHES};
use handoff_datapath::DataError;

use super::session::{touch_modified, DataSession, Landing};
use super::thread_cpu::counted;
use super::workers::Workers;
use crate::auth::ClientDirectory;
use crate::net::metrics::{DataOp, Transport};
use crate::net::{reopen, Revocable, Seat, ServerStats, Shared};

pub use super::workers::default_count as workers;

/// Starts serving RDMA on each address, on `workers` threads for all connections; returns
/// once every listener is bound.
pub fn start(
    addrs: &[SocketAddr],
    shared: Shared,
    workers: usize,
) -> Result<Vec<String>, DataError> {
    let mut bound = Vec::new();
    // One PD and window cache per device, whichever listener a connection came through.
    let shares = Arc::new(DeviceShares::default());
    // Serving until the process ends.
    let serving = Arc::new(Workers::start("rdma-serve", workers, shared.stats.clone())?);
    for addr in addrs {
        let listener = Listener::bind(*addr, 64)?;
        let device = listener.device_name();
        tracing::info!(%addr, device, workers, "RDMA listener ready");
        bound.push(addr.to_string());
        let shared = shared.clone();
        let shares = shares.clone();
        let serving = serving.clone();
        std::thread::Builder::new()
            .name(format!("rdma-cm {addr}"))
            .spawn(move || cm_loop(listener, shared, &shares, &serving))?;
    }
    Ok(bound)
}

struct Pending {
    id: Arc<CmId>,
    ep: Endpoint,
    client: String,
    key: Vec<u8>,
    /// The connection's place under the server's connection caps.
    seat: Seat,
    /// The client directory the key's client was checked against.
    directory: Arc<ClientDirectory>,
    /// The PD and registered file windows of the connection's device (its own if it may
    /// take direct grants).
    device: Arc<DeviceShare>,
    /// The client said it may ask for direct mode (see
    /// [`handoff_datapath::rdma::CONNECT_PRIVATE_LEN`]).
    wants_direct: bool,
}

fn cm_loop(mut listener: Listener, shared: Shared, shares: &DeviceShares, serving: &Workers) {
    let mut pending: HashMap<ConnKey, Pending> = HashMap::new();
    let mut live: HashMap<ConnKey, Weak<CmId>> = HashMap::new();
    loop {
        let ev = match listener.next() {
            Ok(ev) => ev,
            Err(e) => {
                tracing::error!("rdma_cm event channel failed: {e}");
                return;
            }
        };
        match ev {
            ListenEvent::Request { id, private } => match admit(&shared, shares, &id, &private) {
                Ok(p) => {
                    pending.insert(id.key(), p);
                }
                Err((code, reason)) => {
                    tracing::info!("RDMA connect refused: {reason}");
                    let mut data = vec![code.to_wire() as u8];
                    data.extend_from_slice(reason.as_bytes());
                    let _ = id.reject(&data);
                }
            },
            ListenEvent::Established(key) => {
                if let Some(p) = pending.remove(&key) {
                    live.insert(key, Arc::downgrade(&p.id));
                    live.retain(|_, w| w.strong_count() > 0);
                    let span = tracing::info_span!(
                        "rdma",
                        device = %p.id.device_name(),
                        client = %p.client
                    );
                    serving.spawn(serve(p, shared.clone()).instrument(span));
                }
            }
            ListenEvent::Disconnected(key) | ListenEvent::DeviceRemoval(key) => {
                if listener.is_listener(key) {
                    // The device is going away: release everything on it, or removal waits.
                    tracing::warn!("RDMA device removed; this listener stops");
                    listener.close();
                }
                // Flush the QP so the connection's task wakes and ends.
                if let Some(id) = live.remove(&key).and_then(|w| w.upgrade()) {
                    id.disconnect();
                }
                pending.remove(&key);
            }
            ListenEvent::Failed { key, event } => {
                tracing::info!("RDMA connection failed before it was established: {event}");
                pending.remove(&key);
            }
            ListenEvent::Other { event, status } => {
                tracing::debug!(event, status, "rdma_cm event")
            }
        }
    }
}

/// Checks a connect request. Nothing is set up for a key that fails.
fn admit(
    shared: &Shared,
    shares: &DeviceShares,
    id: &Arc<CmId>,
    private: &[u8],
) -> Result<Pending, (ErrorCode, String)> {
    let sealed = private.get(..SEALED_LEN);
    let tag = private.get(SEALED_LEN..CONNECT_PRIVATE_LEN);
    let (Some(sealed), Some(tag)) = (sealed, tag) else {
        return Err((
            ErrorCode::NotFound,
            "connect request carries no resume key".into(),
        ));
    };
    let sealed = sealed.to_vec();
    let key = sealed.clone();
    let (_slot, client) = shared
        .run_blocking(move |core, _| Ok(core.key_holder(&key)?))
        .map_err(|e| (e.code(), e.to_string()))?;
    let directory = shared.admission.directory();
    let secret = directory.secret(&client).ok_or_else(|| {
        (
            ErrorCode::AuthFailed,
            format!("client {client:?} is no longer known"),
        )
    })?;
    let Some(wants_direct) = connect_tag_check(secret, &sealed, tag) else {
        return Err((
            ErrorCode::Denied,
            "resume key belongs to another client".into(),
        ));
    };
    // Counted under the same caps as TCP connections, before a QP is set up.
    let seat = shared
        .admission
        .seat(&client, &directory)
        .map_err(|e| (e.code(), e.to_string()))?;
    id.set_ack_timeout(ACK_TIMEOUT);
    // A QP in a shared PD could use any other connection's direct grant (an rkey in that
    // PD): only connections that will never hold one share it.
    let device = if wants_direct {
        DeviceShare::private(id)
    } else {
        shares.for_id(id)
    };
    let device =
        device.and_then(|device| Ok((Endpoint::with_pd(id, device.pd().clone())?, device)));
    let (ep, device) =
        device.map_err(|e| (ErrorCode::Internal, format!("cannot set up the QP: {e}")))?;
    id.accept(&[ACCEPTED | SERVES_BATCHES])
        .map_err(|e| (ErrorCode::Internal, e.to_string()))?;
    shared
        .stats
        .rdma_connections
        .fetch_add(1, Ordering::Relaxed);
    Ok(Pending {
        id: id.clone(),
        ep,
        client,
        key: sealed,
        seat,
        directory,
        device,
        wants_direct,
    })
}

/// Runs `f`, which may wait on a disk or the store, off the serving thread (other
/// connections are served there), its CPU counted as the serving threads' own.
async fn off_thread<T: Send + 'static>(
    stats: Arc<ServerStats>,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, DataError> {
    tokio::task::spawn_blocking(move || counted(&stats.data_cpu_ns, f))
        .await
        .map_err(|e| DataError::Io(std::io::Error::other(e)))
}

/// A window registration's outcome, a failed task (a panic) as a failed registration.
fn joined(
    r: Result<std::io::Result<Arc<MemoryRegion>>, tokio::task::JoinError>,
) -> std::io::Result<Arc<MemoryRegion>> {
    r.unwrap_or_else(|e| Err(std::io::Error::other(format!("window registration: {e}"))))
}

/// Runs a window's registration on the blocking pool, its CPU counted as the serving
/// threads' own.
fn register_elsewhere(
    stats: &Arc<ServerStats>,
    job: WindowJob,
) -> tokio::task::JoinHandle<std::io::Result<Arc<MemoryRegion>>> {
    let stats = stats.clone();
    tokio::task::spawn_blocking(move || counted(&stats.data_cpu_ns, move || job.register()))
}

/// A direct-mode grant: the MR behind a client's rkey. Revoking deregisters it.
struct DirectGrant {
    mr: Mutex<Option<MemoryRegion>>,
}

impl Revocable for DirectGrant {
    fn revoke(&self) {
        let taken = self.mr.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(taken); // ibv_dereg_mr: the rkey is dead from here on
    }
}

struct Connection {
    ep: AsyncEndpoint,
    shared: Shared,
    session: DataSession,
    windows: FileWindows,
    /// Free bounce buffers for writes (a buffer lent to a posted RDMA READ is the endpoint's
    /// until it completes).
    bounce: Vec<MemoryRegion>,
    direct: Vec<Arc<DirectGrant>>,
    truncations: u64,
    next_wr: u64,
    /// How long the peer may be silent before it is probed.
    probe_every: Duration,
    /// Connected saying it may ask for direct mode, so its QP has a PD of its own: direct
    /// grants are given only then.
    wants_direct: bool,
    /// Writes given up with their RDMA READs posted, perhaps into the file's pages: counted
    /// (when dropped) only after the connection is disconnected, once no READ can land.
    abandoned: Vec<Landing>,
    /// The file window being registered ahead of a transfer moving forward (see
    /// `FileWindows::ahead`), on the blocking pool. Dropped, it is left to finish there.
    ahead: Option<(
        WindowKey,
        tokio::task::JoinHandle<std::io::Result<Arc<MemoryRegion>>>,
    )>,
}

/// How long a liveness probe may take: more than the QP's ack timeout and retries (about
/// 2 s, see [`ACK_TIMEOUT`]), so only a completion that never comes hits it.
const PROBE_WAIT: Duration = Duration::from_secs(15);
/// The QP's ack timeout exponent (4.096 µs × 2^16 ≈ 268 ms, tried 7 times): a dead peer fails
/// a probe or a transfer in about 2 s.
const ACK_TIMEOUT: u8 = 16;

async fn serve(p: Pending, shared: Shared) {
    let Pending {
        id,
        ep,
        client,
        key,
        seat,
        directory,
        device,
        wants_direct,
    } = p;
    // A client removed from the directory (or given another secret) loses its connections:
    // disconnecting flushes the QP, so this task wakes and ends.
    let weak = Arc::downgrade(&id);
    seat.on_revoke(move || {
        if let Some(id) = weak.upgrade() {
            tracing::info!("closing an RDMA connection: its client left the clients file");
            id.disconnect();
        }
    });
    let result = async {
        let mut ep = AsyncEndpoint::new(ep)?;
        // No wait for the peer is unbounded: a peer that goes quiet in the handshake, or stops
        // taking replies, or a completion that never comes, ends the connection.
        ep.set_timeout(Some(crate::net::HANDSHAKE_TIMEOUT));
        let who = ep.server_handshake(&directory, &client).await?;
        // From here the session gives the handle back however it ends (an error, a panic),
        // or the open could never expire. (Attaching writes the store: it may wait on a disk.)
        let attached = {
            let (shared, who, key) = (shared.clone(), who.clone(), key.clone());
            off_thread(shared.stats.clone(), move || {
                DataSession::attach(&shared, &who, &key, MAX_REQUEST, Transport::Rdma)
            })
            .await?
        };
        let (session, reply) = match attached {
            Ok(x) => x,
            Err(e) => {
                ep.send(&e.to_message()).await?;
                ep.drain_sends().await?;
                return Ok(None);
            }
        };
        let truncations = shared.truncations.load(Ordering::SeqCst);
        let map_file = reopen(session.file(), true, "").ok();
        let windows = FileWindows::new(&device, map_file, truncations);
        let span = session.span(&who);
        ep.send(&reply).await?;
        ep.set_timeout(Some(shared.config.limits.frame_timeout));
        let mut conn = Connection {
            ep,
            shared: shared.clone(),
            session,
            windows,
            bounce: Vec::new(),
            direct: Vec::new(),
            truncations,
            next_wr: 1,
            probe_every: shared.config.limits.rdma_probe_interval,
            wants_direct,
            abandoned: Vec::new(),
            ahead: None,
        };
        let r = conn.run().instrument(span.clone()).await;
        let rest = span.in_scope(|| {
            let Connection {
                ep,
                session,
                windows,
                bounce,
                direct,
                abandoned,
                ahead,
                ..
            } = conn;
            drop(session); // detaches the handle
            for g in &direct {
                g.revoke();
            }
            if let Err(e) = r {
                // Said now, not after the QP and regions are torn down (which can take a
                // while on a dead path).
                tracing::info!("RDMA connection ended: {e}; handle detached");
            }
            // The QP goes first: the abandoned writes are counted once none can land.
            (ep, windows, bounce, abandoned, ahead)
        });
        Ok::<_, DataError>(Some(rest))
    }
    .await;
    let rest = match result {
        Ok(rest) => {
            tracing::debug!("RDMA connection closed");
            rest
        }
        Err(e) => {
            tracing::info!("RDMA connection ended: {e}");
            None
        }
    };
    id.disconnect();
    // A window still being registered ahead is waited for (this task waits, not the
    // thread), so it too is let go before the seat.
    let mut rest = rest;
    let ahead = match rest.as_mut().and_then(|r| r.4.take()) {
        Some((_, task)) => Some(task.await),
        None => None,
    };
    // Destroying the QP and CQ and deregistering and unmapping the connection's regions
    // takes a while (longer on a dead path): not on the thread that serves other
    // connections. The CM id goes with them (the QP holds it), and the client's seat only
    // after them, so the connection caps still bound live QPs and pinned memory.
    let stats = shared.stats.clone();
    drop(tokio::task::spawn_blocking(move || {
        counted(&stats.data_cpu_ns, move || drop((rest, ahead, id, seat)))
    }));
}

impl Connection {
    async fn run(&mut self) -> Result<(), DataError> {
        // A request that ended a run of pipelined writes, to be handled next.
        let mut next: Option<Message> = None;
        loop {
            let msg = match next.take() {
                Some(m) => m,
                None => match self.ep.recv_within(self.probe_every).await? {
                    Some(m) => m,
                    None => {
                        // Idle: is the peer still there? A dead one ends the connection, so
                        // the handle detaches and the open's durable timeout starts.
                        tracing::debug!("RDMA peer idle: probing it");
                        self.ep.probe(PROBE_WAIT).await?;
                        continue;
                    }
                },
            };
            self.check_truncations().await?;
            match msg {
                Message::RdmaRead {
                    offset,
                    len,
                    addr,
                    rkey,
                } => {
                    let size = self.session.file().metadata()?.len();
                    let answer = match self.read(size, Span { offset, len, addr }, rkey).await? {
                        Ok(len) => Message::ReadData { len },
                        Err(e) => e.to_message(),
                    };
                    // RC ordering: the client sees this only after the WRITEs have landed.
                    self.ep.send(&answer).await?;
                }
                Message::RdmaReadMany { rkey, items } => self.read_many(rkey, &items).await?,
                Message::RdmaWrite { .. } | Message::RdmaWriteMany { .. } => {
                    next = self.writes(msg).await?
                }
                Message::Flush => {
                    let started = Instant::now();
                    let answer = self.flush()?.await?;
                    self.ep.send(&answer).await?;
                    self.session.served(DataOp::Flush, 0, started);
                }
                Message::DirectFlush { offset, len } => self.direct_flush(offset, len).await?,
                Message::MapFile => self.map_file(DirectAccess::Read).await?,
                Message::MapFileWrite => self.map_file(DirectAccess::Write).await?,
                other => {
                    let e = DataSession::not_a_request(&other, "RDMA");
                    self.ep.send(&e.to_message()).await?;
                    return Err(e.into());
                }
            }
        }
    }

    /// Direct writes `[offset, offset + len)` are done: makes them durable and counts them as
    /// this handle's change. The client's own RDMA WRITEs completed before it asked, so the
    /// bytes are in the file's pages; nothing is copied here.
    async fn direct_flush(&mut self, offset: u64, len: u64) -> Result<(), DataError> {
        let started = Instant::now();
        if offset.checked_add(len).is_none() {
            let e = Error::bad_request("direct flush range overflows");
            return self.ep.send(&e.to_message()).await;
        }
        // The bytes are in the file's pages already: make them durable whatever comes next.
        let answer = self.flush()?.await?;
        // Rights only, not the range's locks: the range is a span of possibly separate
        // writes, and a lock another open took inside it after a revocation must not make
        // every later flush fail.
        let answer = match self.session.gate().check_write(None) {
            Err(e) => e.to_message(),
            Ok(mut check) if len > 0 && matches!(answer, Message::Done) => {
                // The bytes came without a write(2): the file's times are the server's to set.
                touch_modified(self.session.file());
                check.may_have_landed();
                self.shared.wrote_off_thread(&mut check).await?;
                answer
            }
            Ok(_) => answer,
        };
        self.ep.send(&answer).await?;
        self.session.served(DataOp::Flush, 0, started);
        Ok(())
    }

    /// Makes everything written so far durable (fdatasync, off the serving thread): the
    /// answer to a flush, once awaited (the future borrows nothing of the connection).
    fn flush(
        &self,
    ) -> Result<impl std::future::Future<Output = Result<Message, DataError>>, DataError> {
        let file = self.session.file().try_clone()?;
        let stats = self.shared.stats.clone();
        Ok(off_thread(stats, move || {
            super::session::flush_answer(&file)
        }))
    }

    /// Drops the file's windows if a file was cut short through this server since they were
    /// taken; returns whether it did.
    async fn check_truncations(&mut self) -> Result<bool, DataError> {
        let now = self.shared.truncations.load(Ordering::SeqCst);
        if now != self.truncations {
            self.ep.drain_sends().await?;
            self.windows.reset(now);
            self.let_go_windows();
            self.let_go_ahead();
            self.truncations = now;
            return Ok(true);
        }
        Ok(false)
    }

    /// Counts `n` requests that came in one message.
    fn count_batched(&self, n: usize) {
        self.shared
            .stats
            .rdma_batched_requests
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Bytes moved by work requests this server posted (never by direct-mode reads).
    /// Counts a request whose RDMA work moved `len` bytes (`handoff stats`).
    fn count_rdma(&self, len: u64) {
        self.shared
            .stats
            .rdma_server_bytes
            .fetch_add(len, Ordering::Relaxed);
        self.shared
            .stats
            .rdma_requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Posts the RDMA WRITEs of one read request on a file of `size` bytes; returns the
    /// bytes it moves, or its refusal (to answer). The answer must follow as a SEND: RC
    /// ordering has the client see it only after these WRITEs landed.
    async fn read(
        &mut self,
        size: u64,
        span: Span,
        rkey: u32,
    ) -> Result<Result<u64, Error>, DataError> {
        let started = Instant::now();
        let Span { offset, len, addr } = span;
        let len = match self.session.gate().read(size, offset, len, Some(addr)) {
            Ok(len) => len,
            Err(e) => return Ok(Err(e)),
        };
        let mut done = 0u64;
        while done < len {
            if self.windows.needs_eviction(offset + done, size) {
                self.ep.drain_sends().await?;
            }
            self.ensure_window(offset + done, len - done, size, false)
                .await?;
            let (source, n) =
                self.windows
                    .source(self.session.file(), offset + done, len - done, size)?;
            let remote = (addr + done, rkey);
            match source {
                // The SEND that follows these WRITEs completes after them (RC order).
                Source::Window(mr, at) => {
                    self.ep
                        .post_write_from(0, (&mr, at, n), remote, false)
                        .await?
                }
                Source::Bounce(mr) => {
                    // The bounce buffer is refilled next time: wait for this WRITE first.
                    let wr = self.next_wr;
                    self.next_wr += 1;
                    self.ep
                        .post_write_from(wr, (&mr, 0, n), remote, true)
                        .await?;
                    self.ep.wait_for(wr).await?;
                }
            }
            done += n as u64;
        }
        self.look_ahead(offset, len, size, false);
        self.count_rdma(len);
        self.session.served(DataOp::Read, len, started);
        Ok(Ok(len))
    }

    /// A batch of reads: each item served as an `RdmaRead` would be, in order, and one answer
    /// for all: the bytes each moved, or the first refusal (the items after it are not served).
    async fn read_many(&mut self, rkey: u32, items: &[Span]) -> Result<(), DataError> {
        self.count_batched(items.len());
        let mut size = self.session.file().metadata()?.len();
        let mut lens = Vec::with_capacity(items.len());
        for span in items {
            // A file cut short through this server meanwhile: as between single requests,
            // its windows go and its size is looked up again before the next item.
            if self.check_truncations().await? {
                size = self.session.file().metadata()?.len();
            }
            match self.read(size, *span, rkey).await? {
                Ok(len) => lens.push(len),
                Err(e) => return self.ep.send(&e.to_message()).await,
            }
        }
        self.ep.send(&Message::ReadMany { lens }).await
    }

    /// A run of RDMA writes, pipelined: each request's RDMA READ is posted as soon as it
    /// arrives and there is room (up to [`WRITE_DEPTH`] requests, and [`BOUNCE_BYTES`] of
    /// bounce buffers, in flight), and as the oldest lands it is written to the file and
    /// answered, in request order; a batch's items are answered together once its last one
    /// is. Returns the request that ended the run (a Flush or a read), to be handled after
    /// these writes.
    async fn writes(&mut self, first: Message) -> Result<Option<Message>, DataError> {
        // Bytes placed in the file's pages whose modification time is not set yet: it is,
        // once, before the next answer, and however the run ends (an error, a peer gone).
        let mut untouched = false;
        let mut queue = VecDeque::new();
        let result = self.write_run(first, &mut untouched, &mut queue).await;
        if result.is_err() {
            // Their READs may still land until the connection is disconnected.
            let posted = queue.into_iter().filter_map(|(p, ..)| p.ok());
            self.abandoned.extend(posted.map(|p: PostedRead| p.landing));
        }
        if untouched {
            touch_modified(self.session.file());
        }
        result
    }

    /// [`Connection::writes`], noting in `untouched` bytes placed with no time set yet.
    async fn write_run(
        &mut self,
        first: Message,
        untouched: &mut bool,
        queue: &mut VecDeque<(PostedWrite, Instant, Part)>,
    ) -> Result<Option<Message>, DataError> {
        let mut waiting: VecDeque<WriteItem> = VecDeque::new();
        let mut batch = BatchAnswer::default();
        let mut bounced = 0usize;
        // The file's size, looked up once per message (and after a truncation) where a
        // window could take its bytes.
        let mut size = None;
        let mut ended_by = self.take_writes(first, &mut waiting);
        loop {
            while let Some(item) = waiting.front() {
                if queue.len() >= WRITE_DEPTH
                    || (bounced > 0 && bounced + bounce_size(item.len) > BOUNCE_BYTES)
                {
                    break;
                }
                let item = waiting.pop_front().expect("checked");
                // A file cut short since the last request: its windows go before this write
                // picks one (their pages past the cut are no longer the file's).
                if self.check_truncations().await? {
                    size = None;
                }
                let started = Instant::now();
                // Bytes put in place land when their READ completes, a bounced write's only at
                // its turn: after a bounced write, the rest of the run bounces too, so
                // overlapping writes still land in request order.
                let bounced_ahead = queue
                    .iter()
                    .any(|(p, ..)| matches!(p, Ok(w) if w.bounce.is_some()));
                let posted = self
                    .post_write(&item, !bounced_ahead, &mut size, bounced)
                    .await?;
                if let Ok(PostedRead {
                    bounce: Some(size), ..
                }) = &posted
                {
                    bounced += size;
                }
                queue.push_back((posted, started, item.part));
                self.next_writes(&mut waiting, &mut ended_by, &mut size)
                    .await?;
            }
            let Some((posted, started, part)) = queue.pop_front() else {
                break;
            };
            let answer = match posted {
                Ok(PostedRead {
                    wr,
                    mut landing,
                    bounce,
                }) => {
                    let len = landing.len();
                    bounced -= bounce.unwrap_or(0);
                    if len > 0 {
                        let landed = match self.ep.finish_read(wr).await {
                            Ok(target) => target,
                            Err(e) => {
                                self.abandoned.push(landing);
                                return Err(e);
                            }
                        };
                        // The lease may have lapsed while the RDMA READ ran: both check it.
                        match landed {
                            ReadTarget::Buffer(landed) => {
                                let bytes = &landed.bytes()[..len as usize];
                                self.session.put(&mut landing, bytes)?;
                                self.give_back_bounce(landed, bounced);
                                // It may have grown the file.
                                size = None;
                            }
                            ReadTarget::Window(..) => {
                                *untouched = true;
                                self.session.placed(&mut landing)?;
                                self.shared
                                    .stats
                                    .rdma_in_place_bytes
                                    .fetch_add(len, Ordering::Relaxed);
                            }
                        }
                    }
                    self.session.gate().landed_off_thread(&mut landing).await?;
                    self.count_rdma(len);
                    self.session
                        .served(DataOp::Write, landing.written(), started);
                    landing.answer()
                }
                Err(e) => e.to_message(),
            };
            if let Some(answer) = batch.add(part, answer) {
                if std::mem::take(untouched) {
                    // The bytes came without a write(2): the file's times are ours to set.
                    touch_modified(self.session.file());
                }
                self.ep.send(&answer).await?;
            }
            self.next_writes(&mut waiting, &mut ended_by, &mut size)
                .await?;
        }
        Ok(ended_by)
    }

    /// Takes the next message into a run of writes, if one is waiting and the run has not
    /// ended and has nothing else queued (a write batch's items all go in before the next):
    /// its writes join `waiting`, anything else ends the run (`ended_by`). A new message's
    /// writes look the file's size up afresh.
    async fn next_writes(
        &mut self,
        waiting: &mut VecDeque<WriteItem>,
        ended_by: &mut Option<Message>,
        size: &mut Option<u64>,
    ) -> Result<(), DataError> {
        if waiting.is_empty() && ended_by.is_none() && self.ep.has_message()? {
            let msg = self.ep.recv().await?;
            *ended_by = self.take_writes(msg, waiting);
            *size = None;
        }
        Ok(())
    }

    /// Checks one write request and posts the RDMA READ of its bytes, into the file's pages
    /// where `may_place` and a window takes them, else into a bounce buffer. `Ok(Err(..))` is
    /// a refusal to answer in its turn. `size` is the file's, if known (looked up here if a
    /// window could take the bytes); `in_flight`, the bounce bytes other writes hold.
    async fn post_write(
        &mut self,
        item: &WriteItem,
        may_place: bool,
        size: &mut Option<u64>,
        in_flight: usize,
    ) -> Result<PostedWrite, DataError> {
        let WriteItem {
            offset,
            len,
            remote,
            ..
        } = *item;
        let mut landing = match self.session.gate().write(offset, len, Some(remote.0)) {
            Ok(l) => l,
            Err(e) => return Ok(Err(e)),
        };
        let wr = self.next_wr;
        self.next_wr += 1;
        let mut bounce = None;
        if len > 0 {
            // Zero-copy where the file's pages can take the bytes (tmpfs, inside the file);
            // else a bounce buffer, the endpoint's until `writes` takes it back.
            // Not under a cluster lease: in place, the bytes are in the file before the lease
            // can be checked again (a bounced write checks it before its pwrite). The file's
            // size is looked up only where a window could take the bytes.
            let window = if may_place && !self.shared.is_leased() && self.windows.places_writes() {
                let size = match *size {
                    Some(n) => n,
                    None => *size.insert(self.session.file().metadata()?.len()),
                };
                self.ensure_window(offset, len, size, true).await?;
                self.look_ahead(offset, len, size, true);
                self.windows.target(offset, len, size)
            } else {
                None
            };
            let target = match window {
                Some((window, at)) => {
                    landing.placing();
                    ReadTarget::Window(window, at)
                }
                None => {
                    let mr = self.take_bounce(bounce_size(len), in_flight)?;
                    bounce = Some(mr.len());
                    ReadTarget::Buffer(mr)
                }
            };
            self.ep
                .post_read_into(wr, target, len as usize, remote)
                .await?;
        }
        Ok(Ok(PostedRead {
            wr,
            landing,
            bounce,
        }))
    }

    /// Has the file window a request at `offset` needs (`writable`: a write landing in
    /// place) registered off this thread, which serves other connections meanwhile: pinning
    /// 64 MiB of pages takes tens of milliseconds. A window registered ahead is waited for.
    async fn ensure_window(
        &mut self,
        offset: u64,
        len: u64,
        size: u64,
        writable: bool,
    ) -> Result<(), DataError> {
        let Some(job) = self.windows.prepare(offset, len, size, writable) else {
            // Held already, or taken from the device's share: the window registered ahead,
            // if it was done in time.
            if let Some((key, _)) = &self.ahead {
                if self.windows.holds(key) {
                    self.shared
                        .stats
                        .rdma_windows_ahead
                        .fetch_add(1, Ordering::Relaxed);
                    self.ahead = None;
                }
            }
            self.let_go_windows();
            return Ok(());
        };
        let key = job.key();
        let stats = self.shared.stats.clone();
        let ahead = match self.ahead.take() {
            Some((k, task)) if k == key => Some(joined(task.await)),
            other => {
                self.ahead = other;
                None
            }
        };
        let registered = match ahead {
            Some(Ok(mr)) => {
                stats.rdma_windows_ahead.fetch_add(1, Ordering::Relaxed);
                Ok(mr)
            }
            // Registered on demand; also where pinning ahead failed (fewer windows are held
            // by the time it is needed).
            _ => {
                stats.rdma_window_waits.fetch_add(1, Ordering::Relaxed);
                joined(register_elsewhere(&stats, job).await)
            }
        };
        self.windows.adopt(key, registered);
        self.let_go_windows();
        Ok(())
    }

    /// Starts registering the next window of the file if requests are moving forward
    /// through it and near this window's end (see `FileWindows::ahead`): one at a time, a
    /// newer one replacing an older once that is done.
    fn look_ahead(&mut self, offset: u64, len: u64, size: u64, writable: bool) {
        let Some(key) = self.windows.ahead(offset, len, size, writable) else {
            return;
        };
        // One at a time: a client jumping forward faster than windows register cannot have
        // the server pin many at once (nor by reconnecting: a connection's teardown waits
        // for its registration).
        if self
            .ahead
            .as_ref()
            .is_some_and(|(_, task)| !task.is_finished())
        {
            return;
        }
        let Some(job) = self.windows.ahead_job(key) else {
            return;
        };
        self.let_go_ahead();
        self.ahead = Some((key, register_elsewhere(&self.shared.stats, job)));
    }

    /// Gives up the window registered ahead if its registration is done: dropped on the
    /// blocking pool, where its region is deregistered if no one else holds it. One still
    /// being registered is kept (after a truncation it is of an older epoch, so never taken;
    /// it is replaced once done), so a connection never has more than one under way.
    fn let_go_ahead(&mut self) {
        if self
            .ahead
            .as_ref()
            .is_some_and(|(_, task)| task.is_finished())
        {
            let ahead = self.ahead.take();
            drop(tokio::task::spawn_blocking(move || drop(ahead)));
        }
    }

    /// Drops the windows this connection gave up (evicted, or cut by a truncation) on the
    /// blocking pool: deregistering 64 MiB of pinned pages takes a while.
    fn let_go_windows(&mut self) {
        let released = self.windows.released();
        if !released.is_empty() {
            drop(tokio::task::spawn_blocking(move || drop(released)));
        }
    }

    /// Queues the write requests of `msg` ([`queue_writes`]), counting a batch's; returns
    /// `msg` if it is no write.
    fn take_writes(&self, msg: Message, into: &mut VecDeque<WriteItem>) -> Option<Message> {
        if let Message::RdmaWriteMany { items, .. } = &msg {
            self.count_batched(items.len());
        }
        queue_writes(msg, into)
    }

    /// A free bounce buffer of exactly `size` bytes (one of [`bounce_size`]'s), or a new one
    /// (the longest unused free ones going first if it and the `in_flight` bytes other writes
    /// hold would pass [`BOUNCE_BYTES`]): a write holds no more than its size class says.
    fn take_bounce(&mut self, size: usize, in_flight: usize) -> Result<MemoryRegion, DataError> {
        if let Some(i) = self.bounce.iter().position(|mr| mr.len() == size) {
            return Ok(self.bounce.remove(i));
        }
        let mut kept: usize = self.bounce.iter().map(MemoryRegion::len).sum();
        while kept + in_flight + size > BOUNCE_BYTES && !self.bounce.is_empty() {
            kept -= self.bounce.remove(0).len();
        }
        Ok(MemoryRegion::alloc(&self.ep.pd, size, Access::LOCAL_WRITE)?)
    }

    /// Keeps a bounce buffer for later writes, while the free ones and the `in_flight` bytes
    /// other writes hold stay within [`BOUNCE_BYTES`]: past that, the longest unused go
    /// (deregistered).
    fn give_back_bounce(&mut self, mr: MemoryRegion, in_flight: usize) {
        self.bounce.push(mr);
        let mut kept: usize = self.bounce.iter().map(MemoryRegion::len).sum();
        while kept + in_flight > BOUNCE_BYTES && !self.bounce.is_empty() {
            kept -= self.bounce.remove(0).len();
        }
    }

    async fn map_file(&mut self, access: DirectAccess) -> Result<(), DataError> {
        if !self.wants_direct {
            let e = Error::bad_request(
                "direct mode was not asked for when this RDMA connection was made (its QP \
                 shares a protection domain): reconnect asking for it",
            );
            return self.ep.send(&e.to_message()).await;
        }
        // One grant per connection: asking again gives up the last (else each ask would pin
        // the whole file once more).
        for g in self.direct.drain(..) {
            g.revoke();
        }
        let size = self.session.file().metadata()?.len();
        let windows = &self.windows;
        let writable = access == DirectAccess::Write;
        // (Registering a whole file pins every page of it: seconds for gigabytes, during
        // which this thread's other connections wait.)
        let granted = self.shared.grant_direct(self.session.handle(), access, || {
            let mr = windows.map_direct(size, writable).map_err(Error::Io)?;
            Ok(Arc::new(DirectGrant {
                mr: Mutex::new(Some(mr)),
            }))
        });
        match granted {
            Ok(grant) => {
                let (addr, rkey) = {
                    let guard = grant.mr.lock().unwrap_or_else(|p| p.into_inner());
                    let mr = guard
                        .as_ref()
                        .ok_or_else(|| Error::Protocol("grant revoked at once".into()))?;
                    (mr.addr(), mr.rkey())
                };
                self.direct.push(grant);
                self.ep
                    .send(&Message::FileMapped {
                        addr,
                        len: size,
                        rkey,
                    })
                    .await
            }
            Err(e) => self.ep.send(&e.to_message()).await,
        }
    }
}

/// A write request whose RDMA READ was posted (its work request id, and where its bytes go),
/// or its refusal, answered in its turn.
type PostedWrite = Result<PostedRead, Error>;

/// A write request's RDMA READ, posted.
struct PostedRead {
    wr: u64,
    landing: Landing,
    /// The size of the bounce buffer its bytes land in; None: straight in the file's pages
    /// (no bounce buffer, no pwrite).
    bounce: Option<usize>,
}

/// One write request of a run: `len` bytes from the client's `remote` buffer at `offset`.
struct WriteItem {
    offset: u64,
    len: u64,
    remote: (u64, u32),
    part: Part,
}

/// Whom a write request's answer goes to.
#[derive(Clone, Copy)]
enum Part {
    /// An `RdmaWrite`: its own answer.
    Alone,
    /// An item of an `RdmaWriteMany`: the batch's answer, sent after its last item.
    Batch { last: bool },
}

/// The answer to a write batch, gathered item by item: the total written, or the first
/// refusal.
#[derive(Default)]
struct BatchAnswer {
    written: u64,
    refusal: Option<Message>,
}

impl BatchAnswer {
    /// Takes one write's answer; returns what to send now, if anything.
    fn add(&mut self, part: Part, answer: Message) -> Option<Message> {
        let last = match part {
            Part::Alone => return Some(answer),
            Part::Batch { last } => last,
        };
        match answer {
            Message::Written { len } => self.written += len,
            refusal => {
                self.refusal.get_or_insert(refusal);
            }
        }
        last.then(|| {
            let this = std::mem::take(self);
            this.refusal
                .unwrap_or(Message::Written { len: this.written })
        })
    }
}

/// Queues the write requests of `msg`; returns it if it is no write (it ends the run).
fn queue_writes(msg: Message, into: &mut VecDeque<WriteItem>) -> Option<Message> {
    match msg {
        Message::RdmaWrite {
            offset,
            len,
            addr,
            rkey,
        } => into.push_back(WriteItem {
            offset,
            len,
            remote: (addr, rkey),
            part: Part::Alone,
        }),
        Message::RdmaWriteMany { rkey, items } => {
            let count = items.len();
            if count == 0 {
                // Nothing to write: answered at once, in its turn, as an empty write.
                into.push_back(WriteItem {
                    offset: 0,
                    len: 0,
                    remote: (0, rkey),
                    part: Part::Batch { last: true },
                });
            }
            for (i, span) in items.into_iter().enumerate() {
                into.push_back(WriteItem {
                    offset: span.offset,
                    len: span.len,
                    remote: (span.addr, rkey),
                    part: Part::Batch {
                        last: i + 1 == count,
                    },
                });
            }
        }
        other => return Some(other),
    }
    None
}

/// The bounce buffer a write of `len` bytes takes: a power of two from 64 KiB, so buffers of
/// a few sizes serve every request.
fn bounce_size(len: u64) -> usize {
    // (A length past the cap is refused before any buffer is taken; min first, so no
    // length a peer sends can overflow the rounding.)
    (len.min(MAX_REQUEST) as usize)
        .next_power_of_two()
        .clamp(64 << 10, MAX_REQUEST as usize)
}

/// Write requests a connection keeps in flight at once.
const WRITE_DEPTH: usize = 64;
/// Bytes of bounce buffers a connection's writes may hold, in flight and kept registered for
/// later ones together (the most one request can move, eight times).
const BOUNCE_BYTES: usize = 8 * MAX_REQUEST as usize;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_batch_is_answered_once_after_its_last_item_with_the_first_refusal() {
        let written = |len| Message::Written { len };
        let refusal = |why: &str| Error::bad_request(why.to_string()).to_message();
        let mut b = BatchAnswer::default();
        assert_eq!(b.add(Part::Alone, written(5)), Some(written(5)));
        let first = Part::Batch { last: false };
        let last = Part::Batch { last: true };
        assert_eq!(b.add(first, written(4096)), None);
        assert_eq!(b.add(first, written(4096)), None);
        assert_eq!(b.add(last, written(100)), Some(written(8292)));
        // A refusal in the middle is the answer; the next batch starts afresh.
        assert_eq!(b.add(first, written(1)), None);
        assert_eq!(b.add(first, refusal("one")), None);
        assert_eq!(b.add(first, refusal("two")), None);
        assert_eq!(b.add(last, written(1)), Some(refusal("one")));
        assert_eq!(b.add(last, written(7)), Some(written(7)));
    }
}
