//! What every server connection on one RDMA device shares: one protection domain, and the
//! registered windows of files, so 64 readers of one file pin and register its pages once
//! instead of 64 times.
//!
//! A window is shared only while some connection holds it: the cache keeps weak references,
//! so nothing stays pinned (no deleted file's pages, nothing that would hold up a device's
//! removal) once the last connection using it is gone. Its key names the file by inode (which
//! cannot be reused while a mapping of it exists), the window, its length (a file that grew or
//! shrank gets a new window) and the server's truncation epoch (after a truncate through
//! handoff no window registered before it is handed out again).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, Weak};

use super::cm::CmId;
use super::verbs::{MemoryRegion, ProtectionDomain};

/// Names one registered window of one file.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct WindowKey {
    pub dev: u64,
    pub ino: u64,
    pub index: u64,
    pub len: u64,
    /// Registered writable by the adapter (writes land in place).
    pub writable: bool,
    /// The server's count of truncations when the window was asked for.
    pub epoch: u64,
}

/// One device's shared protection domain and window cache.
pub struct DeviceShare {
    pd: Arc<ProtectionDomain>,
    /// Each key's slot: locked while its window is registered, so connections asking for it
    /// at once register it once and the rest wait for that one.
    windows: Mutex<HashMap<WindowKey, Arc<Mutex<Weak<MemoryRegion>>>>>,
}

/// Entries kept before dead ones are swept out.
const SWEEP_AT: usize = 256;

impl DeviceShare {
    pub fn pd(&self) -> &Arc<ProtectionDomain> {
        &self.pd
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
            if windows.len() >= SWEEP_AT {
                // A slot someone is registering into is held by them (count > 1): kept.
                windows.retain(|_, s| {
                    Arc::strong_count(s) > 1
                        || s.lock().map(|w| w.strong_count() > 0).unwrap_or(false)
                });
            }
            windows.entry(key).or_default().clone()
        };
        let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mr) = slot.upgrade() {
            return Ok(mr);
        }
        let mr = Arc::new(register(&self.pd)?);
        *slot = Arc::downgrade(&mr);
        Ok(mr)
    }

    /// Windows registered and still held by some connection.
    pub fn live_windows(&self) -> usize {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows
            .values()
            .filter(|s| s.lock().map(|w| w.strong_count() > 0).unwrap_or(false))
            .count()
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
        let share = Arc::new(DeviceShare {
            pd: ProtectionDomain::new(id)?,
            windows: Mutex::new(HashMap::new()),
        });
        devices.insert(ctx, Arc::downgrade(&share));
        Ok(share)
    }
}
