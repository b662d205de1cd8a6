//! What server connections on one RDMA device share: one protection domain, and the
//! registered windows of files, so 64 readers of one file pin and register its pages once
//! instead of 64 times.
//!
//! Only regions no peer can reach are shared (windows and buffers are registered for local
//! access only). A direct grant is an rkey that any QP in its PD could use, so a connection
//! that may be given one has a share of its own ([`DeviceShare::private`]): see
//! [`super::CONNECT_PRIVATE_LEN`].
//!
//! A window is shared only while some connection holds it: the cache keeps weak references,
//! so nothing stays pinned (no deleted file's pages, nothing that would hold up a device's
//! removal) once the last connection using it is gone. Its key names the file and the state
//! of it the window was registered for: the open's identity (device, inode, birth time: an
//! inode number alone can be reused or repeated), the window and its length (a file that grew
//! or shrank gets a new window) and the server's truncation epoch (after a truncate through
//! handoff, no window registered before it is handed out again).
//!
//! Not covered: a file cut short from *outside* handoff and grown back to the same window
//! length while a connection still holds a window of it. That window's pages are no longer
//! the file's, and connections that come later are handed it too (before windows were shared,
//! only the connection holding it read stale bytes). The file's change time cannot tell: on
//! tmpfs, pinning a writable mapping sets it.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, Weak};

use super::cm::CmId;
use super::verbs::{MemoryRegion, ProtectionDomain};

/// Names one registered window of one file, as the file was when it was registered.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct WindowKey {
    /// The file: device, inode and birth time (statx; 0 where the file system has none).
    pub file: (u64, u64, i64, u32),
    pub index: u64,
    pub len: u64,
    /// Registered writable by the adapter (writes land in place).
    pub writable: bool,
    /// The server's count of truncations when the window was asked for.
    pub epoch: u64,
}

type Slot = Arc<Mutex<Weak<MemoryRegion>>>;

struct Windows {
    slots: HashMap<WindowKey, Slot>,
    /// Slots held before the next sweep of dead ones (twice what the last one left).
    sweep_at: usize,
}

/// One device's shared protection domain and window cache.
pub struct DeviceShare {
    pd: Arc<ProtectionDomain>,
    /// Each key's slot: locked while its window is registered, so connections asking for it
    /// at once register it once and the rest wait for that one.
    windows: Mutex<Windows>,
}

/// Slots held before dead ones are first swept out.
const SWEEP_AT: usize = 256;

impl DeviceShare {
    fn new(pd: Arc<ProtectionDomain>) -> Arc<Self> {
        Arc::new(Self {
            pd,
            windows: Mutex::new(Windows {
                slots: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
        })
    }

    /// A share of one connection's own, on a PD of its own: for a connection that may be
    /// given direct grants, so no other client's QP is ever in the PD of its grants.
    pub fn private(id: &Arc<CmId>) -> io::Result<Arc<Self>> {
        Ok(Self::new(ProtectionDomain::new(id)?))
    }

    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
    }

    /// Whether the window `key` is registered, or being registered now (never waits).
    pub fn has(&self, key: &WindowKey) -> bool {
        self.slot(key).is_some_and(|slot| match slot.try_lock() {
            Ok(held) => held.strong_count() > 0,
            Err(_) => true,
        })
    }

    /// The live window `key` if one is registered and not being registered now (never
    /// waits).
    pub fn cached(&self, key: &WindowKey) -> Option<Arc<MemoryRegion>> {
        let slot = self.slot(key)?;
        let held = slot.try_lock().ok()?.upgrade();
        held
    }

    /// The slot of `key`, if anyone asked for it since the last sweep.
    fn slot(&self, key: &WindowKey) -> Option<Slot> {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.slots.get(key).cloned()
    }

    /// The live window `key`, or one made by `register` (on this device's PD) and shared from
    /// now on. A failed registration is not remembered: the next asker tries again.
    pub fn window(
        &self,
        key: WindowKey,
        register: impl FnOnce(&Arc<ProtectionDomain>) -> io::Result<MemoryRegion>,
    ) -> io::Result<Arc<MemoryRegion>> {
        let slot = {
            let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            if windows.slots.len() >= windows.sweep_at {
                // A slot someone is registering into or waiting on is held by them too
                // (count > 1): kept, and not locked here.
                windows.slots.retain(|_, s| {
                    Arc::strong_count(s) > 1
                        || s.lock().map(|w| w.strong_count() > 0).unwrap_or(false)
                });
                windows.sweep_at = (windows.slots.len() * 2).max(SWEEP_AT);
            }
            windows.slots.entry(key).or_default().clone()
        };
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mr) = slot.upgrade() {
            return Ok(mr);
        }
        let mr = Arc::new(register(&self.pd)?);
        *slot = Arc::downgrade(&mr);
        Ok(mr)
    }
}

/// The [`DeviceShare`] of each device a server's connections are on, made by the first
/// connection on a device and gone with the last (weak references again, so a removed
/// device's PD is released with its last connection).
#[derive(Default)]
pub struct DeviceShares {
    devices: Mutex<HashMap<usize, Weak<DeviceShare>>>,
}

impl DeviceShares {
    /// The share of the device `id` is bound to.
    pub fn for_id(&self, id: &Arc<CmId>) -> io::Result<Arc<DeviceShare>> {
        let ctx = id.verbs() as usize;
        let mut devices = self.devices.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(share) = devices.get(&ctx).and_then(Weak::upgrade) {
            return Ok(share);
        }
        devices.retain(|_, s| s.strong_count() > 0);
        let share = DeviceShare::new(ProtectionDomain::new(id)?);
        devices.insert(ctx, Arc::downgrade(&share));
        Ok(share)
    }
}
