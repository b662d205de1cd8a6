//! An RDMA duplicate handle for async callers.
//!
//! Verbs calls block: they wait on completion queues. So the connection (one QP per server
//! endpoint, see [`MultiChannel`]) lives on a thread of its own, and the async side talks to
//! it through channels; no runtime worker ever waits on a completion. Bytes cross between
//! the two in chunks of at least [`BATCH`] (small requests are gathered) through a short
//! bounded queue, so the QPs keep their pipeline full while the caller consumes (or produces)
//! the previous chunk. That costs one copy per byte, between the registered slots and the
//! chunk; chunk buffers are reused.

use std::io;
use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use handoff_core::state::ResumeReport;
use handoff_core::wire::FileInfo;
use handoff_core::Error;
use handoff_datapath::rdma::client::is_revoked;
use handoff_datapath::rdma::multi::{MultiChannel, QpReport};
use handoff_datapath::{DataError, Fill, Sink};
use tokio::sync::{mpsc as queue, oneshot};

use crate::Identity;

/// Chunks that may wait between the connection's thread and its caller, each way.
const QUEUE: usize = 4;
/// The least a chunk carries (unless the transfer ends first): requests smaller than this are
/// gathered, so the two sides meet once per chunk rather than once per request.
const BATCH: usize = 1 << 20;

/// An RDMA duplicate handle (one QP per server endpoint), served by its own thread.
pub struct RdmaHandle {
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<JoinHandle<()>>,
    status: Arc<Mutex<Status>>,
    pool: Pool,
    info: FileInfo,
    report: ResumeReport,
    handle: u64,
    request: usize,
    /// Direct mode was asked for.
    pub want_direct: bool,
}

/// What the connection's thread last reported about itself.
#[derive(Clone, Default)]
struct Status {
    direct: bool,
    direct_bytes: u64,
    fallbacks: u32,
    qps: Vec<QpReport>,
}

/// Chunk buffers passed back for reuse.
type Pool = Arc<Mutex<Vec<Vec<u8>>>>;

fn take_buffer(pool: &Pool, len: usize) -> Vec<u8> {
    let mut buf = pool
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .pop()
        .unwrap_or_default();
    buf.resize(len, 0);
    buf
}

fn give_back(pool: &Pool, buf: Vec<u8>) {
    let mut pool = pool.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < 2 * QUEUE {
        pool.push(buf);
    }
}

type Done<T> = oneshot::Sender<Result<T, DataError>>;
/// A write under way: the queue its chunks go into, and where its answer comes.
type WriteInFlight = (
    queue::Sender<Vec<u8>>,
    oneshot::Receiver<Result<u64, DataError>>,
);

enum Command {
    Read {
        offset: u64,
        len: u64,
        chunks: queue::Sender<Vec<u8>>,
        done: Done<u64>,
    },
    Write {
        offset: u64,
        chunks: queue::Receiver<Vec<u8>>,
        done: Done<u64>,
    },
    Flush {
        done: Done<()>,
    },
}

fn thread_gone() -> DataError {
    Error::Protocol("the RDMA connection's thread ended".into()).into()
}

impl RdmaHandle {
    /// Connects one QP per address; `request` is the bytes asked per request (2 MiB, the
    /// maximum, unless the caller reads or writes in smaller pieces). With `want_direct`,
    /// asks for direct mode (one-sided reads).
    pub async fn connect(
        addrs: Vec<SocketAddr>,
        identity: &Identity,
        key: &[u8],
        want_direct: bool,
        request: usize,
    ) -> Result<Self, DataError> {
        let (commands, incoming) = mpsc::channel();
        let (ready, connected) = oneshot::channel();
        let status = Arc::new(Mutex::new(Status::default()));
        let pool: Pool = Arc::default();
        let conn = Connection {
            multi: None,
            addrs,
            identity: identity.clone(),
            key: key.to_vec(),
            request,
            status: status.clone(),
            pool: pool.clone(),
            fell_back: (0, 0),
            abandoned: false,
            want_direct,
            asked_write_grant: false,
            direct_dirty: None,
        };
        let thread = std::thread::Builder::new()
            .name("handoff-rdma".into())
            .spawn(move || conn.run(want_direct, ready, incoming))?;
        let connected = connected.await.map_err(|_| thread_gone());
        let (info, report, handle, request) = match connected.and_then(|r| r) {
            Ok(x) => x,
            Err(e) => {
                let _ = thread.join();
                return Err(e);
            }
        };
        Ok(Self {
            commands: Some(commands),
            thread: Some(thread),
            status,
            pool,
            info,
            report,
            handle,
            request,
            want_direct,
        })
    }

    fn status(&self) -> Status {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether reads are one-sided (a direct-mode grant is held).
    pub fn is_direct(&self) -> bool {
        self.status().direct
    }

    /// Bytes read one-sided by this client (no server CPU).
    pub fn direct_bytes(&self) -> u64 {
        self.status().direct_bytes
    }

    /// Times a direct grant was revoked and the handle fell back to server-initiated reads.
    pub fn fallbacks(&self) -> u32 {
        self.status().fallbacks
    }

    pub fn qp_reports(&self) -> Vec<QpReport> {
        self.status().qps
    }

    pub fn info(&self) -> &FileInfo {
        &self.info
    }

    pub fn report(&self) -> ResumeReport {
        self.report
    }

    pub fn handle(&self) -> u64 {
        self.handle
    }

    fn send(&self, cmd: Command) -> Result<(), DataError> {
        let commands = self.commands.as_ref().ok_or_else(thread_gone)?;
        commands.send(cmd).map_err(|_| thread_gone())
    }

    /// Reads up to `len` bytes at `offset` (fewer at end of file), chunk by chunk into
    /// `sink`; returns the bytes read.
    pub async fn read_to(
        &mut self,
        offset: u64,
        len: u64,
        sink: &mut Sink<'_>,
    ) -> Result<u64, DataError> {
        let (chunks, mut arriving) = queue::channel(QUEUE);
        let (done, finished) = oneshot::channel();
        self.send(Command::Read {
            offset,
            len,
            chunks,
            done,
        })?;
        let mut refused = None;
        while let Some(chunk) = arriving.recv().await {
            let taken = sink(&chunk);
            give_back(&self.pool, chunk);
            if let Err(e) = taken {
                refused = Some(e);
                break;
            }
        }
        // The thread sees the queue closed, stops and answers.
        drop(arriving);
        let result = finished.await.map_err(|_| thread_gone())?;
        match refused {
            Some(e) => Err(e.into()),
            None => result,
        }
    }

    /// Starts a write at `offset`: the queue chunks go into, and where the answer comes.
    fn start_write(&self, offset: u64) -> Result<WriteInFlight, DataError> {
        let (chunks, taking) = queue::channel(QUEUE);
        let (done, finished) = oneshot::channel();
        self.send(Command::Write {
            offset,
            chunks: taking,
            done,
        })?;
        Ok((chunks, finished))
    }

    /// Ends a write whose last chunk was queued: the thread finishes the writes in flight
    /// and answers with the bytes written.
    async fn finish_write(
        chunks: queue::Sender<Vec<u8>>,
        finished: oneshot::Receiver<Result<u64, DataError>>,
    ) -> Result<u64, DataError> {
        drop(chunks);
        finished.await.map_err(|_| thread_gone())?
    }

    /// Writes what `fill` produces (0 ends) at `offset` onwards; returns the bytes written.
    pub async fn write_from(&mut self, offset: u64, fill: &mut Fill<'_>) -> Result<u64, DataError> {
        let (chunks, finished) = self.start_write(offset)?;
        let mut failed = None;
        loop {
            let mut buf = take_buffer(&self.pool, self.request.max(BATCH));
            let n = match fill(&mut buf) {
                Ok(0) => break,
                Ok(n) => n.min(buf.len()),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            buf.truncate(n);
            if chunks.send(buf).await.is_err() {
                break; // the thread stopped: its answer says why
            }
        }
        let result = Self::finish_write(chunks, finished).await;
        match failed {
            Some(e) => Err(e.into()),
            None => result,
        }
    }

    /// Writes all of `data` at `offset`. The bytes cross to the connection's thread a
    /// request's worth at a time (gathered to at least a quarter of [`BATCH`]), so the
    /// first requests are on the wire while the rest are still being handed over.
    pub async fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DataError> {
        let (chunks, finished) = self.start_write(offset)?;
        for piece in data.chunks(self.request.max(BATCH / 4)) {
            let mut buf = take_buffer(&self.pool, 0);
            buf.extend_from_slice(piece);
            if chunks.send(buf).await.is_err() {
                break; // the thread stopped: its answer says why
            }
        }
        let written = Self::finish_write(chunks, finished).await?;
        if written != data.len() as u64 {
            return Err(Error::Protocol(format!(
                "the server took {written} of {} bytes",
                data.len()
            ))
            .into());
        }
        Ok(())
    }

    /// Makes written bytes durable on the server.
    pub async fn flush(&mut self) -> Result<(), DataError> {
        let (done, finished) = oneshot::channel();
        self.send(Command::Flush { done })?;
        finished.await.map_err(|_| thread_gone())?
    }
}

impl Drop for RdmaHandle {
    fn drop(&mut self) {
        // The thread ends with its command queue and disconnects every QP; waited for, so a
        // process that exits right after still says goodbye to the server.
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The connection, owned by its thread.
struct Connection {
    multi: Option<MultiChannel>,
    addrs: Vec<SocketAddr>,
    identity: Identity,
    key: Vec<u8>,
    request: usize,
    status: Arc<Mutex<Status>>,
    pool: Pool,
    /// Bytes read direct, and revocations that made reads fall back.
    fell_back: (u64, u32),
    /// A read was abandoned midway and the connection closed.
    abandoned: bool,
    want_direct: bool,
    /// A writable grant was asked for (once per handle: a refusal or revocation stands).
    asked_write_grant: bool,
    /// The span written direct since the last flush, to report when flushing.
    direct_dirty: Option<(u64, u64)>,
}

/// The attached handle's file, report and number, and the bytes per request the QPs use
/// (what was asked, within what a registered slot holds).
type Attached = (FileInfo, ResumeReport, u64, usize);

impl Connection {
    fn run(
        mut self,
        want_direct: bool,
        ready: oneshot::Sender<Result<Attached, DataError>>,
        commands: mpsc::Receiver<Command>,
    ) {
        let connected = self.connect(want_direct);
        let failed = connected.is_err();
        self.publish();
        if ready.send(connected).is_err() || failed {
            return;
        }
        for cmd in commands {
            match cmd {
                Command::Read {
                    offset,
                    len,
                    chunks,
                    done,
                } => {
                    let r = self.read(offset, len, &chunks);
                    self.publish();
                    let _ = done.send(r);
                }
                Command::Write {
                    offset,
                    chunks,
                    done,
                } => {
                    let r = self.write(offset, chunks);
                    self.publish();
                    let _ = done.send(r);
                }
                Command::Flush { done } => {
                    let _ = done.send(self.flush());
                }
            }
        }
    }

    fn connect(&mut self, want_direct: bool) -> Result<Attached, DataError> {
        let mut multi = MultiChannel::connect(
            &self.addrs,
            &self.identity,
            &self.key,
            self.request,
            want_direct,
        )?;
        let first = multi.primary()?;
        let attached = (
            first.info.clone(),
            first.report,
            first.handle,
            first.request_size(),
        );
        if want_direct {
            // A read-write open is refused direct reads; its writes ask for their own grant.
            first.map_direct(false)?;
        }
        self.multi = Some(multi);
        Ok(attached)
    }

    fn multi(&mut self) -> Result<&mut MultiChannel, DataError> {
        let abandoned = self.abandoned;
        self.multi.as_mut().ok_or_else(|| {
            if abandoned {
                Error::Protocol(
                    "this RDMA handle was closed when a read was abandoned midway; open a new one"
                        .into(),
                )
                .into()
            } else {
                thread_gone()
            }
        })
    }

    /// Tells the async side how the connection stands.
    fn publish(&mut self) {
        let (direct_bytes, fallbacks) = self.fell_back;
        let (direct, qps) = match self.multi.as_mut() {
            Some(m) => (m.primary().is_ok_and(|q| q.is_direct()), m.reports()),
            None => (false, Vec::new()),
        };
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = Status {
            direct,
            direct_bytes,
            fallbacks,
            qps,
        };
    }

    fn read(
        &mut self,
        offset: u64,
        len: u64,
        chunks: &queue::Sender<Vec<u8>>,
    ) -> Result<u64, DataError> {
        let pool = self.pool.clone();
        let stopped = || io::Error::new(io::ErrorKind::BrokenPipe, "the reader stopped");
        // Small requests' bytes are gathered into chunks of at least BATCH, so the caller
        // is woken once per chunk, not once per request.
        let mut gathered = take_buffer(&pool, 0);
        let mut sink = |bytes: &[u8]| {
            gathered.extend_from_slice(bytes);
            if gathered.len() >= BATCH {
                let full = std::mem::replace(&mut gathered, take_buffer(&pool, 0));
                chunks.blocking_send(full).map_err(|_| stopped())?;
            }
            Ok(())
        };
        let mut read = self.read_to(offset, len, &mut sink);
        // What came before an error is delivered too.
        if !gathered.is_empty() && chunks.blocking_send(gathered).is_err() && read.is_ok() {
            read = Err(stopped().into());
        }
        if read.is_err() && chunks.is_closed() {
            // The caller stopped taking bytes (its sink failed, or it dropped the read):
            // replies to reads still in flight would meet the next request, so the
            // connection ends here and later calls say why.
            self.multi = None;
            self.abandoned = true;
        }
        read
    }

    /// Reads one-sided while a direct grant is held; when the grant is revoked (the QP is
    /// then in error), takes a new duplicate handle and reads the rest through the server.
    fn read_to(&mut self, offset: u64, len: u64, sink: &mut Sink<'_>) -> Result<u64, DataError> {
        if !self.multi()?.primary()?.is_direct() {
            return self.multi()?.read_to(offset, len, sink);
        }
        let primary = self.multi()?.primary()?;
        let mut delivered = 0u64;
        let r = primary.read_direct(offset, len, &mut |chunk| {
            delivered += chunk.len() as u64;
            sink(chunk)
        });
        match r {
            Ok(n) => {
                self.fell_back.0 += n;
                let writable = self.multi()?.primary()?.is_direct_writable();
                if n < len && writable {
                    // The grant covers the file as it was when granted; this handle's own
                    // writes through the server may have grown it since: the rest comes from
                    // the server, which knows where the file ends now.
                    let rest = self.multi()?.read_to(offset + n, len - n, sink)?;
                    return Ok(n + rest);
                }
                Ok(n)
            }
            Err(e) if is_revoked(&e) => {
                tracing::info!("direct access revoked; falling back to server-initiated reads");
                self.fell_back.0 += delivered;
                self.fell_back.1 += 1;
                self.reconnect()?;
                let rest = self
                    .multi()?
                    .read_to(offset + delivered, len - delivered, sink)?;
                Ok(delivered + rest)
            }
            Err(e) => Err(e),
        }
    }

    fn write(
        &mut self,
        offset: u64,
        mut chunks: queue::Receiver<Vec<u8>>,
    ) -> Result<u64, DataError> {
        let pool = self.pool.clone();
        // A chunk is made the size of a registered slot; one that is larger anyway is put
        // in over several slots, never cut short.
        let mut partial: Option<(Vec<u8>, usize)> = None;
        let mut fill = |region: &mut [u8]| {
            let (chunk, at) = match partial.take() {
                Some(p) => p,
                None => match chunks.blocking_recv() {
                    Some(chunk) => (chunk, 0),
                    None => return Ok(0),
                },
            };
            let n = (chunk.len() - at).min(region.len());
            region[..n].copy_from_slice(&chunk[at..at + n]);
            if at + n < chunk.len() {
                partial = Some((chunk, at + n));
            } else {
                give_back(&pool, chunk);
            }
            Ok(n)
        };
        if !self.want_direct {
            return self.multi()?.primary()?.write_from(offset, &mut fill);
        }
        if !self.asked_write_grant {
            self.asked_write_grant = true;
            self.multi()?.primary()?.map_direct(true)?;
        }
        let primary = self.multi()?.primary()?;
        if !primary.is_direct_writable() {
            return primary.write_from(offset, &mut fill);
        }
        let direct = primary.write_direct(offset, &mut fill)?;
        self.fell_back.0 += direct.written;
        if direct.written > 0 {
            let (start, end) = self
                .direct_dirty
                .unwrap_or((offset, offset + direct.written));
            self.direct_dirty = Some((start.min(offset), end.max(offset + direct.written)));
        }
        if direct.revoked {
            tracing::info!("direct writes revoked; falling back to server-initiated writes");
            self.fell_back.1 += 1;
            self.reconnect()?;
        }
        // What did not go direct (past the file's region, or in flight when revoked) goes
        // through the server: the carried bytes first, then the rest of `fill`.
        let carry = direct.carry;
        let mut taken = 0;
        let mut rest = |region: &mut [u8]| {
            if taken < carry.len() {
                let n = (carry.len() - taken).min(region.len());
                region[..n].copy_from_slice(&carry[taken..taken + n]);
                taken += n;
                return Ok(n);
            }
            fill(region)
        };
        let through_server = self
            .multi()?
            .primary()?
            .write_from(offset + direct.written, &mut rest)?;
        Ok(direct.written + through_server)
    }

    /// Replaces the QPs with new ones on the same open (after a revocation left them dead).
    fn reconnect(&mut self) -> Result<(), DataError> {
        self.multi = None; // its QPs go before new ones are made
        self.multi = Some(MultiChannel::connect(
            &self.addrs,
            &self.identity,
            &self.key,
            self.request,
            self.want_direct,
        )?);
        Ok(())
    }

    /// Makes written bytes durable; direct writes are reported, so the server counts them.
    fn flush(&mut self) -> Result<(), DataError> {
        let dirty = self.direct_dirty;
        let primary = self.multi()?.primary()?;
        match dirty {
            Some((start, end)) => primary.direct_flush(start, end - start)?,
            None => primary.flush()?,
        }
        self.direct_dirty = None;
        Ok(())
    }
}
