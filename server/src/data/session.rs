//! One attached duplicate handle on a data channel, whichever transport carries its bytes.
//! TCP, TLS and RDMA all go through it, so they follow the same rules:
//! - attach by resume key, and the `Attached` reply with the file's size;
//! - the checks every request passes before a byte moves: ranges that cannot overflow, the
//!   transport's request cap, the open's rights and byte-range locks, and the node's lease;
//! - counting what was read and written;
//! - turning the file system's refusals (no space, quota, EIO on fdatasync) into answers,
//!   not dropped connections;
//! - the detach when the session ends, however it ends (an error, a panic, a cancelled
//!   task), so the open's durable timeout starts.
//!
//! The transports only move bytes: sendfile or copies for TCP/TLS, RDMA WRITEs and READs for
//! RDMA. Every call here may wait for the server's lock or the store, so async callers run it
//! off the runtime's workers.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::Instant;

use handoff_core::state::{ByteRange, HandleId, IoKind};
use handoff_core::wire::Message;
use handoff_core::Error;

use crate::net::metrics::{self, DataCounters, DataOp, Transport};
use crate::net::{AttachedHandle, CheckedWrite, Shared};

/// A data channel's attached handle.
pub struct DataSession {
    gate: Gate,
    file: File,
    slot: u32,
    transport: Transport,
    counters: DataCounters,
    /// Given back (detached) when the session is dropped.
    _held: AttachedHandle,
}

/// The per-request checks of a [`DataSession`], cheap to clone so an async transport can run
/// them off its runtime's workers.
#[derive(Clone)]
pub struct Gate {
    shared: Shared,
    handle: HandleId,
    /// The most one request may move: what the transport can hold at once.
    max_request: u64,
}

impl DataSession {
    /// Attaches the duplicate handle `key` names for `client` and returns the reply to send.
    /// `max_request` caps every later request (reads are shortened to it, larger writes are
    /// refused). On a refusal nothing is held; the error is the answer to send.
    pub fn attach(
        shared: &Shared,
        client: &str,
        key: &[u8],
        max_request: u64,
        transport: Transport,
    ) -> Result<(Self, Message), Error> {
        let started = Instant::now();
        let (attached, file, held) = shared.attach(client, key)?;
        // From here `held` gives the handle back however this ends.
        let size = file.metadata()?.len();
        let session = Self {
            gate: Gate {
                shared: shared.clone(),
                handle: attached.handle,
                max_request,
            },
            file,
            slot: attached.slot,
            transport,
            counters: DataCounters::new(transport, client),
            _held: held,
        };
        metrics::request_took("resume", started);
        Ok((session, Message::attached(&attached, size)))
    }

    pub fn handle(&self) -> HandleId {
        self.gate.handle
    }

    /// A span for everything this session logs.
    pub fn span(&self, client: &str) -> tracing::Span {
        tracing::info_span!(
            "handle",
            handle = self.gate.handle,
            slot = self.slot,
            client
        )
    }

    /// This handle's own descriptor of the file (read, or read-write, as the open).
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// A request that began at `started` was served, moving `bytes` file bytes: counted for
    /// `handoff stats` and the metrics.
    pub fn served(&self, op: DataOp, bytes: u64, started: Instant) {
        if matches!(self.transport, Transport::Tcp | Transport::Tls) {
            self.gate
                .shared
                .stats
                .tcp_bytes
                .fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        }
        self.counters.served(op, bytes, started);
    }

    /// Puts the next piece of a checked write's payload into the file (see [`Landing`]).
    /// A node whose lease lapsed mid-transfer writes no further byte: that error ends the
    /// session (a client must not take the rest as written).
    pub fn put(&self, landing: &mut Landing, bytes: &[u8]) -> Result<(), Error> {
        landing.put(&self.gate.shared, &self.file, bytes)
    }

    /// A checked write's whole payload was placed in the file's pages by the adapter
    /// (zero-copy, see `FileWindows::target`): counted as written. The adapter sets the
    /// file's modification time ([`touch_modified`]) before it answers, once for however
    /// many writes it answers at a time. A node whose lease lapsed while the bytes moved ends
    /// the session, as [`DataSession::put`] does.
    pub fn placed(&self, landing: &mut Landing) -> Result<(), Error> {
        landing.received = landing.len;
        landing.written = landing.len;
        landing.placing();
        // The lease only: the bytes are in the file already, so a stop or a drain that
        // began meanwhile has nothing to refuse (the write is counted as it ends).
        if let Err(e) = self.gate.shared.writable() {
            // The bytes are in the file either way: the change is counted before the end.
            self.gate.landed(landing);
            return Err(e);
        }
        Ok(())
    }

    /// A request kind this transport does not serve: the answer, and the error that ends the
    /// session (a peer that sends one is not speaking this protocol).
    pub fn not_a_request(msg: &Message, transport: &str) -> Error {
        Error::Protocol(format!(
            "{:#04x} is not a {transport} data-channel request",
            msg.kind()
        ))
    }
}

impl Gate {
    /// Checks and counts a read of up to `len` bytes at `offset` of a file of `size` bytes
    /// into a peer buffer that starts at `remote` (RDMA; `None` for a stream). Returns how
    /// many bytes to send: fewer at the end of the file, or past the transport's cap.
    pub fn read(
        &self,
        size: u64,
        offset: u64,
        len: u64,
        remote: Option<u64>,
    ) -> Result<u64, Error> {
        let len = len.min(self.max_request).min(size.saturating_sub(offset));
        if offset.checked_add(len).is_none() || remote.is_some_and(|a| a.checked_add(len).is_none())
        {
            return Err(Error::bad_request("read range or buffer address overflows"));
        }
        self.shared
            .begin_io(self.handle, IoKind::Read, ByteRange::new(offset, len))?;
        Ok(len)
    }

    /// Checks a write of `len` bytes at `offset` from a peer buffer at `remote` before any
    /// byte moves, and returns it, ready for its bytes; nothing is counted until some land.
    pub fn write(&self, offset: u64, len: u64, remote: Option<u64>) -> Result<Landing, Error> {
        if len > self.max_request {
            return Err(Error::bad_request(format!(
                "a write on this channel moves at most {} bytes",
                self.max_request
            )));
        }
        if offset.checked_add(len).is_none() || remote.is_some_and(|a| a.checked_add(len).is_none())
        {
            return Err(Error::bad_request(
                "write range or buffer address overflows",
            ));
        }
        let check = self
            .shared
            .check_write(self.handle, ByteRange::new(offset, len))?;
        Ok(Landing {
            check,
            offset,
            len,
            received: 0,
            written: 0,
            refused: None,
        })
    }

    /// Checks that this handle may write `range` now (rights, locks, the node's lease),
    /// for bytes that reach the file without the server (direct writes).
    pub fn check_write(&self, range: Option<ByteRange>) -> Result<CheckedWrite, Error> {
        self.shared.check_write(self.handle, range)
    }

    /// A checked write is over: its change is counted if some of its bytes reached the
    /// file.
    pub fn landed(&self, landing: &mut Landing) {
        if landing.check.pending() {
            self.shared.wrote(&mut landing.check);
        }
    }

    /// [`Gate::landed`] for a task on a serving thread (see [`Shared::wrote_off_thread`]).
    pub async fn landed_off_thread(&self, landing: &mut Landing) -> Result<(), Error> {
        if landing.check.pending() {
            self.shared.wrote_off_thread(&mut landing.check).await?;
        }
        Ok(())
    }
}

/// A checked write on its way into the file.
pub struct Landing {
    /// Counted among the writes in flight until this is dropped; counts the change then if
    /// bytes may have landed and nothing counted them yet.
    check: CheckedWrite,
    offset: u64,
    len: u64,
    /// Payload bytes taken so far (from the start of the request).
    received: u64,
    /// Of those, the bytes that reached the file.
    written: u64,
    /// Why the rest did not: the file system's refusal.
    refused: Option<Error>,
}

impl Landing {
    /// The payload's length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// An adapter may place the payload in the file's pages from now on (an RDMA READ into a
    /// window of the file is about to be posted): if the transfer then fails, the change is
    /// counted all the same.
    pub fn placing(&mut self) {
        self.check.may_have_landed();
    }

    /// Of the payload, the bytes that reached the file (fewer than `len` if the file system
    /// refused the rest).
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Puts the next piece of the payload into `file`. After the file system refused one,
    /// later pieces are taken and dropped, so the transport stays in step and can carry the
    /// refusal back.
    fn put(&mut self, shared: &Shared, file: &File, bytes: &[u8]) -> Result<(), Error> {
        if self.refused.is_none() {
            shared.may_land()?;
            let (wrote, refused) = write_fully_at(file, bytes, self.offset + self.received);
            if wrote > 0 {
                self.check.may_have_landed();
            }
            self.written += wrote;
            self.refused = refused.map(|e| {
                let e = Error::file_system(
                    &format!("write of {} bytes at offset {}", self.len, self.offset),
                    &e,
                );
                tracing::warn!(
                    offset = self.offset,
                    len = self.len,
                    written = self.written,
                    "write refused by the file system: {e}"
                );
                e
            });
        }
        self.received += bytes.len() as u64;
        Ok(())
    }

    /// The answer once the whole payload was taken.
    pub fn answer(&self) -> Message {
        match &self.refused {
            None => Message::Written { len: self.len },
            Some(e) => e.to_message(),
        }
    }
}

/// Writes all of `data` at `offset`; returns how many bytes reached the file before an error
/// stopped it, and that error.
fn write_fully_at(file: &File, mut data: &[u8], mut offset: u64) -> (u64, Option<io::Error>) {
    let mut written = 0u64;
    while !data.is_empty() {
        match file.write_at(data, offset) {
            Ok(0) => return (written, Some(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                written += n as u64;
                offset += n as u64;
                data = &data[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (written, Some(e)),
        }
    }
    (written, None)
}

/// Sets `file`'s modification (and change) time to now, for bytes that reached it without a
/// write(2). A failure is logged: the bytes are there either way.
pub fn touch_modified(file: &File) {
    use nix::sys::stat::futimens;
    use nix::sys::time::TimeSpec;
    use std::os::fd::AsRawFd;
    // The descriptor is `file`'s, alive for the call.
    if let Err(e) = futimens(
        file.as_raw_fd(),
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::UTIME_NOW,
    ) {
        tracing::warn!("cannot set the file's modification time: {e}");
    }
}

/// fdatasync, answered: Done, or the file system's refusal.
pub fn flush_answer(file: &File) -> Message {
    match file.sync_data() {
        Ok(()) => Message::Done,
        Err(e) => Error::file_system("flush (fdatasync)", &e).to_message(),
    }
}
