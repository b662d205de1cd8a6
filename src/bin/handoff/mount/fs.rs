//! The FUSE file system: each kernel request becomes handoff requests. An `open(2)` is a
//! handoff open (its key held for the descriptor's life) with a data channel of its own;
//! reads and writes go through that channel, `fsync` is a handoff flush, `close` the last
//! release closes the open. Namespace requests go over the control channel, which is
//! connected again whenever it breaks; a data channel resumes by its key by itself, so an
//! application's descriptors outlive a dropped network or a restarted server.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use fuser::{
    Errno, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, KernelConfig,
    LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use handoff::{
    ByteRange, Channel, Client, DataHandle, FileAttr, FileKind, Mode, OpenOptions, ShareMode,
};
use handoff_core::Error;

use super::errno;
use super::inodes::{child, Inodes};

/// How long the kernel may keep attributes and names without asking again: short, since
/// other clients change the same files.
const TTL: Duration = Duration::from_secs(1);
/// The largest read or write one FUSE request carries.
pub const MAX_IO: u32 = 1 << 20;
/// Times one request attaches a new data channel before its error is returned.
const MAX_RESUMES: u32 = 3;
/// Data channels one open may use at once.
const CHANNELS_PER_OPEN: usize = 4;
/// Bytes per RDMA request: a 1 MiB FUSE request becomes 4 requests in flight at once, so
/// the server writes (or reads) one piece while the next is on the wire.
const RDMA_REQUEST: usize = 256 << 10;
/// How often a waiting lock (`F_SETLKW`) asks the server again.
const LOCK_POLL: Duration = Duration::from_millis(100);
/// How long a broken control channel keeps trying to reconnect before the request fails
/// (a server restart or a failover takes seconds).
const RECONNECT_WAIT: Duration = Duration::from_secs(60);

/// A directory as `opendir` read it: (inode, type, name) of each entry, `.` and `..` first.
type Listing = Vec<(u64, FileType, String)>;

/// One open file of the mount (one `open(2)`, shared by its duplicated descriptors).
struct OpenFile {
    token: String,
    /// Data channels (duplicate handles of the open) not in use right now. Requests that
    /// overlap (the kernel sends several at once for `io_submit` and for readahead) each
    /// take one; more are attached, up to [`CHANNELS_PER_OPEN`], while they overlap.
    idle: Mutex<Vec<PooledChannel>>,
    /// Permits to use a channel: [`CHANNELS_PER_OPEN`] of them, fewer while the server
    /// would not attach that many (see `forgone`).
    channels: tokio::sync::Semaphore,
    /// Permits given up because an attach failed while the open had other channels; one is
    /// given back each time an attach succeeds again.
    forgone: AtomicUsize,
    /// Channels alive now (idle or in use): each [`PooledChannel`] counts itself.
    attached: Arc<AtomicUsize>,
    /// Written since the last flush.
    dirty: AtomicBool,
    /// Byte ranges this open holds locked on the server (POSIX locks of its descriptors).
    locks: Mutex<Vec<ByteRange>>,
    /// A resume found the file changed by another client after the open had expired: every
    /// later use is EIO.
    lost: AtomicBool,
}

/// One data channel of an open, counted in the open's `attached` for as long as it lives.
struct PooledChannel {
    handle: DataHandle,
    attached: Arc<AtomicUsize>,
}

impl PooledChannel {
    fn new(handle: DataHandle, attached: &Arc<AtomicUsize>) -> Self {
        attached.fetch_add(1, Ordering::AcqRel);
        Self {
            handle,
            attached: Arc::clone(attached),
        }
    }
}

impl Drop for PooledChannel {
    fn drop(&mut self) {
        self.attached.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct HandoffFs {
    rt: tokio::runtime::Handle,
    control: tokio::sync::Mutex<Client>,
    inodes: Mutex<Inodes>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    dirs: Mutex<HashMap<u64, Arc<Listing>>>,
    next_fh: AtomicU64,
    channel: Option<Channel>,
    /// What every open of the mount lets other clients do.
    share: ShareMode,
    /// File pages may stay in this host's page cache between reads (see `--cache`).
    cache: bool,
    /// Who the files appear to belong to: the user who mounted.
    owner: (u32, u32),
}

/// The connection itself broke (as opposed to the server refusing the request).
fn broken(e: &Error) -> bool {
    matches!(
        e,
        Error::Io(_) | Error::Closed | Error::Unreachable(_) | Error::Goodbye(_)
    )
}

/// A FUSE lock range (`start`..=`end`, `end` at `OFFSET_MAX` for "to the end") as a handoff
/// byte range.
fn lock_range(start: u64, end: u64) -> Result<ByteRange, Errno> {
    let len = end
        .checked_sub(start)
        .and_then(|l| l.checked_add(1))
        .ok_or(Errno::EINVAL)?;
    ByteRange::new(start, len).ok_or(Errno::EINVAL)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn system_time(t: handoff::Timestamp) -> SystemTime {
    let nanos = Duration::new(t.secs.unsigned_abs(), t.nanos);
    if t.secs >= 0 {
        SystemTime::UNIX_EPOCH + nanos
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
            + Duration::from_nanos(u64::from(t.nanos))
    }
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::Directory => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::File => FileType::RegularFile,
        // Listed, never opened: the kernel keeps FIFOs to itself.
        FileKind::Other | FileKind::Unknown(_) => FileType::NamedPipe,
    }
}

impl HandoffFs {
    pub fn new(
        rt: tokio::runtime::Handle,
        client: Client,
        channel: Option<Channel>,
        share: ShareMode,
        cache: bool,
        owner: (u32, u32),
    ) -> Self {
        Self {
            rt,
            control: tokio::sync::Mutex::new(client),
            inodes: Mutex::new(Inodes::default()),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            channel,
            share,
            cache,
            owner,
        }
    }

    /// Runs a control request, connecting again (for up to [`RECONNECT_WAIT`]) while the
    /// control channel is broken.
    fn control<T>(
        &self,
        what: &str,
        mut call: impl std::ops::AsyncFnMut(&mut Client) -> Result<T, Error>,
    ) -> Result<T, Errno> {
        self.rt.block_on(async {
            let mut client = self.control.lock().await;
            let started = Instant::now();
            loop {
                match call(&mut client).await {
                    Err(e) if broken(&e) && started.elapsed() < RECONNECT_WAIT => {
                        tracing::warn!("{what}: control channel broke ({e}); reconnecting");
                        while let Err(e) = client.reconnect().await {
                            if started.elapsed() >= RECONNECT_WAIT {
                                tracing::error!("{what}: no server answered: {e}");
                                return Err(Errno::EIO);
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                    Err(e) => {
                        tracing::debug!("{what}: {e}");
                        return Err(errno::of_control(&e));
                    }
                    Ok(v) => return Ok(v),
                }
            }
        })
    }

    fn path(&self, ino: INodeNo) -> Result<String, Errno> {
        lock(&self.inodes).path(ino.0).ok_or(Errno::ENOENT)
    }

    fn child_path(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        let name = name.to_str().ok_or(Errno::EINVAL)?;
        Ok(child(&self.path(parent)?, name))
    }

    fn stat(&self, path: &str) -> Result<FileAttr, Errno> {
        self.control("stat", async |c| c.stat(path).await)
    }

    fn fuse_attr(&self, ino: u64, a: &FileAttr) -> fuser::FileAttr {
        fuser::FileAttr {
            ino: INodeNo(ino),
            size: a.size,
            blocks: a.blocks,
            atime: system_time(a.atime),
            mtime: system_time(a.mtime),
            ctime: system_time(a.ctime),
            crtime: system_time(a.ctime),
            kind: file_type(a.kind),
            perm: a.perm,
            nlink: a.nlink,
            uid: self.owner.0,
            gid: self.owner.1,
            rdev: 0,
            // Programs size their buffers by it (cp, dd's defaults): large requests.
            blksize: MAX_IO,
            flags: 0,
        }
    }

    /// Looks `path` up for the kernel: its attributes under a counted inode number.
    fn entry(&self, path: &str, reply: ReplyEntry) {
        match self.stat(path) {
            Ok(a) => {
                let ino = lock(&self.inodes).lookup(path);
                reply.entry(&TTL, &self.fuse_attr(ino, &a), Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    fn file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        lock(&self.files).get(&fh.0).cloned().ok_or(Errno::EBADF)
    }

    /// A handoff open of `path` with a data channel; returns its file handle.
    fn open_file(&self, path: &str, opts: OpenOptions) -> Result<u64, Errno> {
        let opened = self.control("open", async |c| c.open(path, &opts).await)?;
        let data = match self.attach("attach a data channel", &opened.token) {
            Ok(d) => d,
            Err(e) => {
                self.close_open(&opened.token);
                return Err(e);
            }
        };
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let attached = Arc::new(AtomicUsize::new(0));
        lock(&self.files).insert(
            fh,
            Arc::new(OpenFile {
                token: opened.token,
                idle: Mutex::new(vec![PooledChannel::new(data, &attached)]),
                channels: tokio::sync::Semaphore::new(CHANNELS_PER_OPEN),
                forgone: AtomicUsize::new(0),
                attached,
                dirty: AtomicBool::new(false),
                locks: Mutex::new(Vec::new()),
                lost: AtomicBool::new(false),
            }),
        );
        Ok(fh)
    }

    fn close_open(&self, token: &str) {
        if let Err(e) = self.control("close", async |c| c.close(token).await) {
            tracing::warn!("closing an open failed ({e:?}); it expires after its durable timeout");
        }
    }

    /// Runs `io` on one of the open's data channels (an idle one, or one attached now).
    /// When the channel itself broke (not a refusal) and the handle could not resume by
    /// itself (a TCP handle does; an RDMA one does not), a new one is attached by the open's
    /// key and `io` runs again, up to [`MAX_RESUMES`] times. A resume onto a file that
    /// another client changed while the open had expired loses the open: EIO from then on.
    fn data_io<T>(
        &self,
        file: &OpenFile,
        what: &str,
        mut io: impl std::ops::AsyncFnMut(&mut DataHandle) -> Result<T, handoff::DataError>,
    ) -> Result<T, Errno> {
        // The semaphore is never closed.
        let permit = async || file.channels.acquire().await.map_err(|_| Errno::EIO);
        let mut held = self.rt.block_on(permit())?;
        let mut resumed = 0;
        let mut channel = loop {
            if file.lost.load(Ordering::Acquire) {
                return Err(Errno::EIO);
            }
            if let Some(c) = lock(&file.idle).pop() {
                break c;
            }
            match self.fresh_channel(file) {
                Ok(c) => break c,
                Err(e)
                    if file.attached.load(Ordering::Acquire) > 0
                        && !file.lost.load(Ordering::Acquire) =>
                {
                    // Make do with the channels there are: one permit fewer (given back when
                    // an attach succeeds again), and wait for one of them. Each failure
                    // lowers the permits, so this ends once they match the channels.
                    tracing::warn!(
                        "{what}: no further data channel ({e:?}); sharing the open's others"
                    );
                    held.forget();
                    file.forgone.fetch_add(1, Ordering::AcqRel);
                    held = self.rt.block_on(permit())?;
                }
                Err(e) => return Err(e),
            }
        };
        loop {
            if file.lost.load(Ordering::Acquire) {
                return Err(Errno::EIO);
            }
            let e = match self.rt.block_on(io(&mut channel.handle)) {
                Ok(v) => {
                    lock(&file.idle).push(channel);
                    return Ok(v);
                }
                Err(e) => e,
            };
            if handoff::exit::report_of(&e).is_some_and(|r| r.changed_by_other) {
                tracing::error!(
                    "{what}: {e}; the open is lost and its descriptors now fail with EIO"
                );
                file.lost.store(true, Ordering::Release);
                return Err(Errno::EIO);
            }
            if e.is_remote_error() {
                // A refusal: the channel itself is sound.
                lock(&file.idle).push(channel);
                tracing::warn!("{what}: {e}");
                return Err(errno::of_data(&e));
            }
            if resumed == MAX_RESUMES {
                tracing::warn!("{what}: data channel broke ({e}) {resumed} times; giving up");
                return Err(errno::of_data(&e));
            }
            resumed += 1;
            tracing::warn!("{what}: data channel broke ({e}); resuming by key");
            // The broken channel stays counted until its successor is attached, so a request
            // running beside this one never sees the open with no channel at all.
            let fresh = self.fresh_channel(file)?;
            tracing::info!(report = ?fresh.handle.report(), "data channel resumed by key");
            channel = fresh;
        }
    }

    /// A data channel (a duplicate handle) for the open `token` names.
    fn attach(&self, what: &str, token: &str) -> Result<DataHandle, Errno> {
        self.control(what, async |c| {
            c.open_data_sized(token, self.channel, false, RDMA_REQUEST)
                .await
                .map_err(|e| match e {
                    handoff::DataError::Control(c) => c,
                    other => Error::Protocol(other.to_string()),
                })
        })
    }

    /// Attaches a new data channel for `file` by its key, checking what the resume report
    /// says happened to the file meanwhile.
    fn fresh_channel(&self, file: &OpenFile) -> Result<PooledChannel, Errno> {
        // A refusal that reports a change is EIO here, and again on the next try, until a
        // resume is granted with that report (below); a control outage loses nothing.
        let fresh = self.attach("attach a data channel", &file.token)?;
        let report = fresh.report();
        // Changes by other opens sharing a live open are its business; only an open that
        // expired and was granted again onto a changed file is lost.
        if report.reopened && report.changed_by_other {
            tracing::error!(
                ?report,
                "an open file was lost: it had expired and another client changed it; its descriptors now fail with EIO"
            );
            file.lost.store(true, Ordering::Release);
            return Err(Errno::EIO);
        }
        // The server attaches channels again: give back a permit given up when it did not.
        if file
            .forgone
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            file.channels.add_permits(1);
        }
        Ok(PooledChannel::new(fresh, &file.attached))
    }

    /// Takes (or gives back) `range` for an open on the server.
    fn server_lock(&self, token: &str, range: ByteRange, take: bool) -> Result<(), Errno> {
        self.control(if take { "lock" } else { "unlock" }, async |c| {
            c.lock(token, range, take).await
        })
    }

    /// Unlocks `range` of `file`: every held range it overlaps is given back, and the parts
    /// of them outside `range` are taken again (POSIX unlocks may split a lock).
    fn unlock(&self, file: &OpenFile, range: ByteRange) -> Result<(), Errno> {
        let mut held = lock(&file.locks);
        let (hit, keep): (Vec<ByteRange>, Vec<ByteRange>) =
            held.iter().partition(|h| h.overlaps(&range));
        *held = keep;
        for h in hit {
            self.server_lock(&file.token, h, false)?;
            let before = ByteRange::new(h.offset(), range.offset().saturating_sub(h.offset()));
            let after = ByteRange::new(range.end(), h.end().saturating_sub(range.end()));
            for part in [before, after].into_iter().flatten() {
                self.server_lock(&file.token, part, true)?;
                held.push(part);
            }
        }
        Ok(())
    }

    /// Removes the file (or, with `dir`, the empty directory) `name` in `parent`.
    fn remove(&self, parent: INodeNo, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let path = self.child_path(parent, name)?;
        self.control(if dir { "rmdir" } else { "unlink" }, async |c| {
            if dir {
                c.remove_dir(&path).await
            } else {
                c.remove(&path).await
            }
        })?;
        lock(&self.inodes).removed(&path);
        Ok(())
    }

    fn options(&self, flags: i32) -> OpenOptions {
        OpenOptions {
            mode: match OpenFlags(flags).acc_mode() {
                OpenAccMode::O_RDONLY => Mode::Read,
                _ => Mode::ReadWrite,
            },
            share: self.share,
            locks: Vec::new(),
            create: false,
            truncate: flags & libc::O_TRUNC != 0,
        }
    }

    /// Without `--cache` every read and write comes here (direct IO): the kernel never
    /// answers a read from pages an open that was since lost had cached.
    fn open_flags(&self, flags: i32) -> FopenFlags {
        if !self.cache || flags & libc::O_DIRECT != 0 {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        }
    }
}

impl Filesystem for HandoffFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // fcntl byte-range locks come here (and so to the server) instead of staying local.
        if let Err(missing) = config.add_capabilities(fuser::InitFlags::FUSE_POSIX_LOCKS) {
            tracing::warn!("the kernel offers no {missing:?}: fcntl locks stay local to this host");
        }
        // Direct IO still lets programs mmap a file (through the page cache).
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP);
        if self.cache {
            // Cached pages are dropped when the attributes show the file changed.
            let _ = config.add_capabilities(fuser::InitFlags::FUSE_AUTO_INVAL_DATA);
        }
        // Direct IO from io_submit (fio, databases) reaches us as several requests at once,
        // not one at a time.
        let _ = config.add_capabilities(fuser::InitFlags::FUSE_ASYNC_DIO);
        let _ = config.set_max_write(MAX_IO);
        let _ = config.set_max_readahead(MAX_IO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.child_path(parent, name) {
            Ok(path) => self.entry(&path, reply),
            Err(e) => reply.error(e),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        lock(&self.inodes).forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.path(ino).and_then(|p| self.stat(&p)) {
            Ok(a) => reply.attr(&TTL, &self.fuse_attr(ino.0, &a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        // Ownership and permission bits are the server's (files belong to handoffd's user);
        // times are the server's file system's (set by the writes themselves).
        if mode.is_some() || uid.is_some() || gid.is_some() {
            return reply.error(Errno::EPERM);
        }
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if let Some(size) = size {
            if let Err(e) = self.control("truncate", async |c| c.truncate(&path, size).await) {
                return reply.error(e);
            }
        }
        match self.stat(&path) {
            Ok(a) => reply.attr(&TTL, &self.fuse_attr(ino.0, &a)),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let path = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.control("mkdir", async |c| c.make_dir(&path, false).await) {
            Ok(()) => self.entry(&path, reply),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.remove(parent, name, true) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // RENAME_EXCHANGE and RENAME_NOREPLACE are not carried: refuse rather than replace.
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let (from, to) = match (
            self.child_path(parent, name),
            self.child_path(newparent, newname),
        ) {
            (Ok(f), Ok(t)) => (f, t),
            (Err(e), _) | (_, Err(e)) => return reply.error(e),
        };
        let done = self.control("rename", async |c| c.rename(&from, &to).await);
        match done {
            Ok(()) => {
                lock(&self.inodes).renamed(&from, &to);
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let opened = self
            .path(ino)
            .and_then(|p| self.open_file(&p, self.options(flags.0)));
        match opened {
            Ok(fh) => reply.opened(FileHandle(fh), self.open_flags(flags.0)),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let path = match self.child_path(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if flags & libc::O_EXCL != 0 && self.stat(&path).is_ok() {
            return reply.error(Errno::EEXIST);
        }
        let opts = OpenOptions {
            create: true,
            ..self.options(flags)
        };
        let made = self
            .open_file(&path, opts)
            .and_then(|fh| Ok((fh, self.stat(&path)?)));
        match made {
            Ok((fh, a)) => {
                let ino = lock(&self.inodes).lookup(&path);
                reply.created(
                    &TTL,
                    &self.fuse_attr(ino, &a),
                    Generation(0),
                    FileHandle(fh),
                    self.open_flags(flags),
                );
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        let mut reply = Some(reply);
        let got = self.data_io(&file, "read", async |data| {
            let mut buf = Vec::new();
            let got = data
                .read_to(offset, u64::from(size), &mut |chunk| {
                    // The whole read in one chunk (the usual case): answered from it, with no
                    // copy of our own on the way to the kernel.
                    if buf.is_empty() && chunk.len() == size as usize {
                        if let Some(r) = reply.take() {
                            r.data(chunk);
                            return Ok(());
                        }
                    }
                    buf.extend_from_slice(chunk);
                    Ok(())
                })
                .await;
            match got {
                // The kernel has its answer: nothing to send again. A channel that broke
                // after it is found broken, and resumed, by the next request.
                Err(e) if reply.is_some() => Err(e),
                _ => Ok(buf),
            }
        });
        match (reply, got) {
            (Some(r), Ok(buf)) => r.data(&buf),
            (Some(r), Err(e)) => r.error(e),
            (None, _) => {} // answered from the chunk
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let file = match self.file(fh) {
            Ok(f) => f,
            Err(e) => return reply.error(e),
        };
        // Rewriting the same bytes at the same offset is harmless, so a write the broken
        // channel may or may not have finished is simply sent again.
        let written = self.data_io(&file, "write", async |h| h.write_at(offset, data).await);
        match written {
            Ok(()) => {
                file.dirty.store(true, Ordering::Release);
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2): what was written is made durable, as NFS does at close.
        match self.file(fh) {
            Ok(file) if file.dirty.swap(false, Ordering::AcqRel) => {
                match self.data_io(&file, "flush", async |h| h.flush().await) {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(e),
                }
            }
            Ok(_) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.file(fh) {
            Ok(file) => {
                file.dirty.store(false, Ordering::Release);
                match self.data_io(&file, "fsync", async |h| h.flush().await) {
                    Ok(()) => reply.ok(),
                    Err(e) => reply.error(e),
                }
            }
            Err(e) => reply.error(e),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let file = lock(&self.files).remove(&fh.0);
        if let Some(file) = file {
            self.close_open(&file.token);
        }
        reply.ok();
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        start: u64,
        end: u64,
        _typ: i32,
        pid: u32,
        reply: fuser::ReplyLock,
    ) {
        let (file, range) = match self.file(fh).and_then(|f| Ok((f, lock_range(start, end)?))) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        // This open's own locks never conflict with it; where it holds part of the range
        // the probe below could give back its own lock, so it is not made.
        if lock(&file.locks).iter().any(|h| h.overlaps(&range)) {
            return reply.locked(0, 0, libc::F_UNLCK, 0);
        }
        match self.server_lock(&file.token, range, true) {
            Ok(()) => {
                let _ = self.server_lock(&file.token, range, false);
                reply.locked(0, 0, libc::F_UNLCK, 0);
            }
            // Held by another client (which one is not a local process): reported as a
            // write lock over the asked range.
            Err(Errno::EACCES) => reply.locked(start, end, libc::F_WRLCK, pid),
            Err(e) => reply.error(e),
        }
    }

    fn setlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let (file, range) = match self.file(fh).and_then(|f| Ok((f, lock_range(start, end)?))) {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        if typ == libc::F_UNLCK {
            return match self.unlock(&file, range) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            };
        }
        // Handoff locks are exclusive: a read lock is taken as one too, so it conflicts with
        // every other client's lock (never granted where POSIX would refuse it).
        loop {
            match self.server_lock(&file.token, range, true) {
                Ok(()) => {
                    lock(&file.locks).push(range);
                    return reply.ok();
                }
                // F_SETLKW waits for the holder; F_SETLK says "try again".
                Err(Errno::EACCES) if sleep => std::thread::sleep(LOCK_POLL),
                Err(Errno::EACCES) => return reply.error(Errno::EAGAIN),
                Err(e) => return reply.error(e),
            }
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Who may do what is the server's decision, made at each request.
        reply.ok();
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0);
        } else {
            reply.data(&[]);
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let path = match self.path(ino) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let listed = self.control("list", async |c| c.list(&path).await);
        let entries = match listed {
            Ok(e) => e,
            Err(e) => return reply.error(e),
        };
        let mut all = vec![
            (ino.0, FileType::Directory, ".".to_owned()),
            (ino.0, FileType::Directory, "..".to_owned()),
        ];
        {
            let inodes = lock(&self.inodes);
            for e in entries {
                // Only shown (as d_ino): the kernel numbers an entry by looking it up. A name
                // not looked up yet shows the server's inode number rather than taking a slot
                // of the table, so listing a huge directory holds no memory.
                let ino = inodes.known(&child(&path, &e.name)).unwrap_or(e.attr.ino);
                all.push((ino, file_type(e.attr.kind), e.name));
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        lock(&self.dirs).insert(fh, Arc::new(all));
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(entries) = lock(&self.dirs).get(&fh.0).cloned() else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), i as u64 + 1, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        lock(&self.dirs).remove(&fh.0);
        reply.ok();
    }
}

impl Drop for HandoffFs {
    fn drop(&mut self) {
        // Unmounted with files still open (the kernel sends no release then): close them.
        let files: Vec<Arc<OpenFile>> = lock(&self.files).drain().map(|(_, f)| f).collect();
        for f in files {
            self.close_open(&f.token);
        }
    }
}
