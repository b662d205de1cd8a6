//! Registered windows of a file for server-initiated RDMA WRITEs: the file is mapped
//! (MAP_SHARED) and registered in aligned windows, cached and bounded, so reads go from the
//! page cache to the wire without a copy. Windows are shared by the connections on the device
//! that share its protection domain ([`DeviceShare`]: those that did not ask for direct mode).
//! Reads and in-place writes use windows of their own: a read window is a read-only mapping
//! pinned for reading where the kernel allows it, so reading leaves the file's times alone.
//! Where a kernel refuses to register a file mapping, a registered bounce buffer is filled
//! with `pread` instead.
//!
//! Registering a window pins its pages (tens of milliseconds for 64 MiB under emulation), so
//! the server does it off the thread that serves other connections: it asks
//! [`FileWindows::prepare`] for the [`WindowJob`] a request needs, runs it elsewhere and hands
//! the region back with [`FileWindows::adopt`]. A transfer moving forward through a file has
//! its next window registered ahead ([`FileWindows::ahead`]), so it does not stop at each
//! window's edge to wait for one.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use super::device_share::{DeviceShare, WindowKey};
use super::verbs::{Access, Backing, MemoryRegion, ProtectionDomain};

/// Bytes per registered window.
pub const WINDOW: u64 = 64 << 20;
/// Windows a connection holds at once (shared with the other connections in its
/// [`DeviceShare`]).
const MAX_WINDOWS: usize = 4;

struct Window {
    index: u64,
    len: u64,
    /// Registered writable by the adapter, for writes landing in place. Reads use windows
    /// registered for local reading only: pinning a shared mapping for writing dirties its
    /// pages, and on tmpfs that sets the file's times, so a read would move the file's mtime.
    writable: bool,
    mr: Arc<MemoryRegion>,
    last_use: u64,
}

impl Window {
    /// Whether this is the window `key` names (its epoch aside: a truncation drops them all).
    fn is(&self, key: &WindowKey) -> bool {
        self.index == key.index && self.writable == key.writable && self.len == key.len
    }
}

pub struct FileWindows {
    /// Where windows of the same file taken by other connections are found.
    share: Arc<DeviceShare>,
    /// Opened read-write where possible: Linux 6.1 refuses to pin a read-only shared mapping.
    /// (Shared with the [`WindowJob`]s registering windows elsewhere.)
    map_file: Option<Arc<File>>,
    /// The file's device, inode and birth time, naming its windows in the share.
    identity: (u64, u64, i64, u32),
    /// The server's truncation count these windows belong to (see [`FileWindows::reset`]).
    epoch: u64,
    windows: Vec<Window>,
    bounce: Option<Arc<MemoryRegion>>,
    tick: u64,
    pub mapping_failed: bool,
    /// The file is in shared memory (tmpfs): writes land in place, in windows of their own
    /// registered writable (see [`FileWindows::target`]).
    in_place: bool,
    /// Where the last request ended, to tell a transfer moving forward ([`FileWindows::ahead`]).
    last_end: Option<u64>,
    /// The window last asked for ahead ([`FileWindows::ahead_job`]), so it is asked for once.
    ahead_asked: Option<WindowKey>,
    /// Windows this connection gave up (evicted, or dropped by a truncation), for the caller
    /// to drop where deregistering 64 MiB holds up nobody ([`FileWindows::released`]).
    released: Vec<Arc<MemoryRegion>>,
}

/// The registration of one window, to be run where a wait of tens of milliseconds holds up
/// nobody (the server's blocking pool), and its region given to [`FileWindows::adopt`].
pub struct WindowJob {
    share: Arc<DeviceShare>,
    file: Arc<File>,
    key: WindowKey,
}

impl WindowJob {
    /// The window it registers.
    pub fn key(&self) -> WindowKey {
        self.key
    }

    /// Registers the window (or takes the one another connection of the device registered
    /// meanwhile, waiting if that one is being registered now). Blocks.
    pub fn register(self) -> io::Result<Arc<MemoryRegion>> {
        let WindowKey {
            index,
            len,
            writable,
            ..
        } = self.key;
        self.share.window(self.key, |pd| {
            map_window(pd, &self.file, index, len, writable)
        })
    }
}

/// How far behind the last request's end the next may start and still be moving forward
/// through the file (a multichannel transfer's requests alternate between connections).
const FORWARD_GAP: u64 = WINDOW / 4;

/// Whether this kernel registers a read-only shared file mapping (Linux 6.2 on): learnt at
/// the first read window, for the process.
static READ_ONLY_PINS: AtomicU8 = AtomicU8::new(PINS_UNKNOWN);
const PINS_UNKNOWN: u8 = 0;
const PINS_WORK: u8 = 1;
const PINS_REFUSED: u8 = 2;

/// Where the bytes for one WRITE come from: a registered region and the offset in it.
pub enum Source {
    /// A window of the mapped file (kept while posted work references it).
    Window(Arc<MemoryRegion>, usize),
    /// The bounce buffer, just filled: it is filled again only once no posted work holds it.
    Bounce(Arc<MemoryRegion>),
}

impl FileWindows {
    /// Windows of a file mapped through `map_file`: a read-write descriptor of the handle's
    /// file (never opened by path). None: reads go through the bounce buffer. `epoch` is the
    /// server's count of truncations now.
    pub fn new(share: &Arc<DeviceShare>, map_file: Option<File>, epoch: u64) -> Self {
        // A file whose inode cannot be named is not mapped at all (its windows could not be
        // told from another file's in the share): reads go through the bounce buffer.
        let identified = map_file.and_then(|f| {
            let m = f.metadata().ok()?;
            // (statx's birth time, where the file system keeps one.)
            let born = m
                .created()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or((0, 0), |d| (d.as_secs() as i64, d.subsec_nanos()));
            Some((Arc::new(f), (m.dev(), m.ino(), born.0, born.1)))
        });
        let (map_file, identity) = match identified {
            Some((f, id)) => (Some(f), id),
            None => (None, (0, 0, 0, 0)),
        };
        let in_place = map_file
            .as_ref()
            .is_some_and(|f| is_shared_memory(f).unwrap_or(false));
        Self {
            share: share.clone(),
            map_file,
            identity,
            epoch,
            windows: Vec::new(),
            bounce: None,
            tick: 0,
            mapping_failed: false,
            in_place,
            last_end: None,
            ahead_asked: None,
            released: Vec::new(),
        }
    }

    /// What a request for `len` bytes at `offset` of a file of `size` bytes needs registered
    /// before [`FileWindows::source`] (`writable`: false) or [`FileWindows::target`]
    /// (`writable`: true) can serve it from a window: `None` if this connection holds the
    /// window already, or takes it here from another connection of the device, or if no
    /// window would serve it (the bounce buffer does). The job is run elsewhere and its
    /// region given to [`FileWindows::adopt`]; a caller that skips this has the window
    /// registered in place, on its own thread.
    pub fn prepare(
        &mut self,
        offset: u64,
        len: u64,
        size: u64,
        writable: bool,
    ) -> Option<WindowJob> {
        let key = self.wanted(offset, len, size, writable)?;
        if self.holds(&key) {
            return None;
        }
        if let Some(mr) = self.share.cached(&key) {
            self.insert(key, mr);
            return None;
        }
        self.job(key)
    }

    /// Takes the region a [`WindowJob`] for `key` registered (or why it could not), evicting
    /// the least recently used window if this connection holds its most. A window registered
    /// before a truncation this connection has seen since is dropped. A failed registration
    /// sends this file's reads and writes to the bounce buffer from now on.
    pub fn adopt(&mut self, key: WindowKey, registered: io::Result<Arc<MemoryRegion>>) {
        match registered {
            Ok(mr) if key.epoch == self.epoch => self.insert(key, mr),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!("cannot register a file mapping ({e}); using a bounce buffer");
                self.mapping_failed = true;
            }
        }
    }

    /// Notes a request for `len` bytes at `offset` (file of `size` bytes); if requests are
    /// moving forward through the file and this one reached the second half of its window,
    /// the next window (for reading, or with `writable` for writes in place), unless it was
    /// asked for already, or is held, or the device's share has it or is registering it.
    /// [`FileWindows::ahead_job`] asks for it: run early, the transfer finds the window
    /// ready when it gets there.
    pub fn ahead(&mut self, offset: u64, len: u64, size: u64, writable: bool) -> Option<WindowKey> {
        let end = offset.checked_add(len)?;
        let forward = self
            .last_end
            .is_some_and(|last| offset >= last && offset - last <= FORWARD_GAP);
        self.last_end = Some(end);
        if !forward || len == 0 || (end - 1) % WINDOW < WINDOW / 2 {
            return None;
        }
        let next = ((end - 1) / WINDOW).checked_add(1)?.checked_mul(WINDOW)?;
        let key = self.wanted(next, 1, size, writable)?;
        if self.ahead_asked == Some(key) {
            return None;
        }
        if self.holds(&key) || self.share.has(&key) {
            // Not looked up again for every request until the transfer gets there.
            self.ahead_asked = Some(key);
            return None;
        }
        Some(key)
    }

    /// The job registering `key` ahead (from [`FileWindows::ahead`]), asked for once.
    pub fn ahead_job(&mut self, key: WindowKey) -> Option<WindowJob> {
        self.ahead_asked = Some(key);
        self.job(key)
    }

    /// The regions of windows this connection gave up since it was last asked, to be
    /// dropped where their deregistration (if no one else holds them) holds up nobody.
    pub fn released(&mut self) -> Vec<Arc<MemoryRegion>> {
        std::mem::take(&mut self.released)
    }

    /// The window a request at `offset` would be served from (see [`FileWindows::prepare`]).
    fn wanted(&self, offset: u64, len: u64, size: u64, writable: bool) -> Option<WindowKey> {
        if self.mapping_failed || self.map_file.is_none() {
            return None;
        }
        let index = offset / WINDOW;
        if writable {
            // As `target` takes them: inside the file and inside one window.
            let end = offset.checked_add(len)?;
            if !self.places_writes() || len == 0 || end > size || (end - 1) / WINDOW != index {
                return None;
            }
        }
        let len = Self::window_len(index, size);
        (len > 0).then_some(WindowKey {
            file: self.identity,
            index,
            len,
            writable,
            epoch: self.epoch,
        })
    }

    /// Whether this connection holds the window `key`.
    pub fn holds(&self, key: &WindowKey) -> bool {
        self.windows.iter().any(|w| w.is(key))
    }

    fn job(&self, key: WindowKey) -> Option<WindowJob> {
        Some(WindowJob {
            share: self.share.clone(),
            file: self.map_file.clone()?,
            key,
        })
    }

    /// Holds the window `key` from now on: a stale one of the same index (the file's extent
    /// changed) goes, and the least recently used one if this connection holds its most.
    fn insert(&mut self, key: WindowKey, mr: Arc<MemoryRegion>) {
        let same = |w: &Window| w.index == key.index && w.writable == key.writable;
        while let Some(i) = self.windows.iter().position(same) {
            self.released.push(self.windows.swap_remove(i).mr);
        }
        if self.windows.len() >= MAX_WINDOWS {
            let oldest = self
                .windows
                .iter()
                .enumerate()
                .min_by_key(|(_, w)| w.last_use)
                .map(|(i, _)| i);
            if let Some(i) = oldest {
                self.released.push(self.windows.swap_remove(i).mr);
            }
        }
        self.windows.push(Window {
            index: key.index,
            len: key.len,
            writable: key.writable,
            mr,
            last_use: self.tick,
        });
    }

    /// Whether writes may land in this file's windows at all ([`FileWindows::target`] can
    /// say yes): the caller need not look up the file's size otherwise.
    pub fn places_writes(&self) -> bool {
        self.in_place && !self.mapping_failed
    }

    /// Where an RDMA READ may put `len` bytes for `offset` of a file of `size` bytes straight
    /// into the file (zero-copy writes): a registered window and the offset in it. `None`
    /// (write through a bounce buffer and `pwrite`) unless the file is on tmpfs, the range is
    /// inside the file (a write that extends it needs the file system), and inside one window.
    ///
    /// Only tmpfs: on a file system with writeback, pages an adapter writes are not marked
    /// dirty, so the bytes could be lost to fdatasync (see [`FileWindows::map_direct`]).
    pub fn target(
        &mut self,
        offset: u64,
        len: u64,
        size: u64,
    ) -> Option<(Arc<MemoryRegion>, usize)> {
        let end = offset.checked_add(len)?;
        if !self.places_writes() || len == 0 || end > size {
            return None;
        }
        let index = offset / WINDOW;
        if (end - 1) / WINDOW != index {
            return None;
        }
        let w = self.window(index, size, true)?;
        Some((w.mr.clone(), (offset - index * WINDOW) as usize))
    }

    /// The registered window `index` of a file of `size` bytes, registered now (on this
    /// thread) if [`FileWindows::prepare`] did not have it done. `None` once mapping failed.
    fn window(&mut self, index: u64, size: u64, writable: bool) -> Option<&mut Window> {
        self.tick += 1;
        let key = self.wanted(index * WINDOW, 1, size, writable)?;
        if let Some(job) = self.prepare(index * WINDOW, 1, size, writable) {
            self.adopt(key, job.register());
        }
        let tick = self.tick;
        let w = self.windows.iter_mut().find(|w| w.is(&key))?;
        w.last_use = tick;
        Some(w)
    }

    /// Whether taking a new window for reading would evict one (the caller must first make
    /// sure no posted work still reads from the window being evicted).
    pub fn needs_eviction(&self, offset: u64, size: u64) -> bool {
        if self.mapping_failed {
            return false;
        }
        let index = offset / WINDOW;
        match self
            .windows
            .iter()
            .find(|w| w.index == index && !w.writable)
        {
            // A window that no longer matches the file's extent is replaced: drain first.
            Some(w) => w.len != Self::window_len(index, size),
            None => self.windows.len() >= MAX_WINDOWS,
        }
    }

    fn window_len(index: u64, size: u64) -> u64 {
        size.saturating_sub(index * WINDOW).min(WINDOW)
    }

    /// Drops every window after a truncate (the server's count of them is now `epoch`): their
    /// pages past the cut are no longer the file's, and no window registered before it is
    /// taken from the share again. No posted work may reference them.
    pub fn reset(&mut self, epoch: u64) {
        self.released.extend(self.windows.drain(..).map(|w| w.mr));
        self.epoch = epoch;
        self.ahead_asked = None;
    }

    /// A registered source for up to `len` bytes at `offset` (file of `size` bytes), and how
    /// many bytes it covers. `file` is used for the bounce fallback.
    pub fn source(
        &mut self,
        file: &File,
        offset: u64,
        len: u64,
        size: u64,
    ) -> io::Result<(Source, usize)> {
        let index = offset / WINDOW;
        let within = offset - index * WINDOW;
        if !self.mapping_failed {
            // (`needs_eviction` made the caller drain posted work before one is dropped here.)
            if let Some(w) = self.window(index, size, false) {
                let n = (w.len - within).min(len);
                return Ok((Source::Window(w.mr.clone(), within as usize), n as usize));
            }
        }
        if self.bounce.is_none() {
            self.bounce = Some(Arc::new(MemoryRegion::alloc(
                self.share.pd(),
                super::MAX_REQUEST as usize,
                Access::LOCAL,
            )?));
        }
        let bounce = self.bounce.as_mut().expect("just made");
        let n = len.min(bounce.len() as u64) as usize;
        // Posted work that still reads the buffer holds a clone: refilling it then would
        // change bytes on their way out.
        let bytes = Arc::get_mut(bounce)
            .and_then(|b| b.bytes_mut())
            .ok_or_else(|| io::Error::other("the bounce buffer is still being sent"))?;
        file.read_exact_at(&mut bytes[..n], offset)?;
        Ok((Source::Bounce(bounce.clone()), n))
    }

    /// The read-write descriptor windows and grants map.
    fn mapped_file(&self) -> io::Result<&File> {
        self.map_file
            .as_deref()
            .ok_or_else(|| io::Error::other("no read-write descriptor to map"))
    }

    /// Registers the whole file for one-sided access by the client (direct mode): reads, and
    /// with `writable` also writes.
    ///
    /// Writes are registered only for a file on tmpfs (shared memory). On a file system with
    /// writeback, bytes an adapter writes into pinned page-cache pages do not mark them dirty
    /// (only unpinning does), so fdatasync could skip them and a flush would be a lie; kernels
    /// from 6.5 refuse such pins outright. The caller falls back to server-posted writes.
    pub fn map_direct(&self, size: u64, writable: bool) -> io::Result<MemoryRegion> {
        let file = self.mapped_file()?;
        if size == 0 || size > super::MAX_DIRECT {
            return Err(io::Error::other(format!(
                "direct mode covers files of 1 byte to {} GiB",
                super::MAX_DIRECT >> 30
            )));
        }
        if writable && !is_shared_memory(file)? {
            return Err(io::Error::other(
                "direct writes need a file on tmpfs: on a file system with writeback, bytes \
                 written into pinned pages would not be flushed",
            ));
        }
        // SAFETY: as in `map_window`: only the adapter touches these bytes, through pinned
        // pages. A truncation through handoff revokes every grant on the file first (and an
        // O_TRUNC open is a newcomer that revokes them as it is granted).
        let map = unsafe {
            memmap2::MmapOptions::new()
                .len(size as usize)
                .map_mut(file)?
        };
        let access = if writable {
            Access::REMOTE_READ
                .with(Access::REMOTE_WRITE)
                .with(Access::LOCAL_WRITE)
        } else {
            Access::REMOTE_READ
        };
        MemoryRegion::register(self.share.pd(), Backing::Mapped(map), access)
    }
}

/// Whether `file` lives in shared memory (tmpfs), where page-cache pages are the file and
/// there is no writeback to miss.
fn is_shared_memory(file: &File) -> io::Result<bool> {
    let fs = nix::sys::statfs::fstatfs(file).map_err(io::Error::from)?;
    Ok(fs.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// Maps window `index` (`len` bytes) of `file` and registers it on `pd`: for reading (pinned
/// read-only where the kernel allows), or `writable` for writes landing in place.
fn map_window(
    pd: &Arc<ProtectionDomain>,
    file: &File,
    index: u64,
    len: u64,
    writable: bool,
) -> io::Result<MemoryRegion> {
    let mut options = memmap2::MmapOptions::new();
    options.offset(index * WINDOW).len(len as usize);
    let pins = READ_ONLY_PINS.load(Ordering::Relaxed);
    if !writable && pins != PINS_REFUSED {
        // A read-only mapping, pinned for reading: its pages are not dirtied, so reading a
        // file leaves its modification time alone.
        // SAFETY: memmap2 requires that the file not be truncated under the mapping while
        // it is in use, because touching a page past EOF through it raises SIGBUS. No code
        // here touches the mapping's bytes: only the adapter does, through the pages it
        // pinned at registration, which stay valid (if no longer the file's) whatever
        // happens to the file. A truncation through handoff makes every data channel drop
        // its windows before its next request, and a window that no longer matches the
        // file's size is replaced.
        let map = unsafe { options.map(file)? };
        let refused = match MemoryRegion::register(pd, Backing::MappedRo(map), Access::LOCAL) {
            Ok(mr) => {
                READ_ONLY_PINS.store(PINS_WORK, Ordering::Relaxed);
                return Ok(mr);
            }
            // Read-only pins worked before: this failure is not the kernel's rule (no
            // memory, the memlock limit), and a writable pin would dirty the pages.
            Err(e) if pins == PINS_WORK => return Err(e),
            Err(e) => e,
        };
        // Unknown yet: a writable pin that works where the read-only one did not is the
        // kernel's rule (before 6.2); if it fails too, nothing is learnt.
        let mr = map_writable(pd, file, &options, Access::LOCAL)?;
        if READ_ONLY_PINS
            .compare_exchange(
                PINS_UNKNOWN,
                PINS_REFUSED,
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
        {
            tracing::warn!(
                "this kernel cannot register a read-only file mapping ({refused}): before \
                 Linux 6.2 it pins every registered page for writing. RDMA reads through \
                 file windows then dirty the file's pages and set its modification time"
            );
        }
        return Ok(mr);
    }
    // Writable by the adapter only for writes landing in place (tmpfs: see `target`).
    let access = if writable {
        Access::LOCAL_WRITE
    } else {
        Access::LOCAL
    };
    map_writable(pd, file, &options, access)
}

/// Registers a writable shared mapping of the file (`options` say which part).
fn map_writable(
    pd: &Arc<ProtectionDomain>,
    file: &File,
    options: &memmap2::MmapOptions,
    access: Access,
) -> io::Result<MemoryRegion> {
    // SAFETY: as for the read-only mapping in `map_window`.
    let map = unsafe { options.map_mut(file)? };
    MemoryRegion::register(pd, Backing::Mapped(map), access)
}
