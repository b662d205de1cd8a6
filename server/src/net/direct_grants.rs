//! Direct-mode grants: memory regions of files that clients read with their own RDMA READs,
//! without the server. Each is recorded under its open's slot and taken back (the region
//! deregistered) the moment the core says the open's rights changed.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

/// Something the IO layer can take back at once: a direct-mode rkey (deregistering the MR).
pub trait Revocable: Send + Sync {
    fn revoke(&self);
}

/// The live grants, by open slot (kept under the server's state lock, so a grant and the
/// decision that revokes it cannot pass each other).
#[derive(Default)]
pub(super) struct DirectGrants {
    by_slot: HashMap<u32, Vec<Weak<dyn Revocable>>>,
}

impl DirectGrants {
    pub(super) fn record(&mut self, slot: u32, grant: Arc<dyn Revocable>) {
        self.by_slot
            .entry(slot)
            .or_default()
            .push(Arc::downgrade(&grant));
    }

    /// The slots that hold (or held, until revoked) a grant.
    pub(super) fn slots(&self) -> Vec<u32> {
        self.by_slot.keys().copied().collect()
    }

    /// Revokes every grant of `slot` still alive; returns how many.
    pub(super) fn revoke(&mut self, slot: u32) -> u64 {
        let mut revoked = 0;
        for grant in self.by_slot.remove(&slot).unwrap_or_default() {
            if let Some(g) = grant.upgrade() {
                g.revoke();
                revoked += 1;
                tracing::info!(slot, "direct-mode access revoked");
            }
        }
        revoked
    }
}
