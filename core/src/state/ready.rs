//! What the IO layer must do after the core decided, in the Ready/advance shape of raft-rs:
//! after a batch of calls the driver takes a [`Ready`] (store writes to make durable before
//! any reply, direct-mode grants to revoke at once, kept files to close), performs it, and
//! acknowledges with [`ServerCore::advance`]. If the store did not confirm the writes, the
//! core takes back what the batch promised: opens it made are forgotten and handles it made
//! are given back (their durable timeouts run), and those changes are the next `Ready`.

use super::{HandleId, ServerCore};
use crate::store::Mutation;

/// Effects the core decided since the last [`ServerCore::ready`], in order.
#[derive(Debug, Default)]
#[must_use = "a Ready holds store writes and revocations the driver must perform"]
pub struct Ready {
    /// Store writes: durable before the reply to the request that made them (the driver
    /// writes a read's access count lazily, without holding up the read).
    pub mutations: Vec<Mutation>,
    /// Opens whose direct-mode grants must be revoked now.
    pub revoke: Vec<u32>,
    /// Opens that ended: the IO layer closes the files it kept for them.
    pub released: Vec<u32>,
}

impl Ready {
    /// Appends `later`'s effects after this one's.
    pub fn extend(&mut self, later: Ready) {
        self.mutations.extend(later.mutations);
        self.revoke.extend(later.revoke);
        self.released.extend(later.released);
    }
}

/// Where a batch of calls started: what [`ServerCore::advance`] takes back to if the batch's
/// writes were not confirmed.
#[derive(Clone, Copy, Debug)]
pub struct Checkpoint {
    handle: HandleId,
    slot: u32,
}

/// What became of a [`Ready`]'s store writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Persisted {
    /// Durable: the replies may go.
    Confirmed,
    /// The store could not be reached: nothing may be promised (the writes are kept by the
    /// driver and written once it is back; they are idempotent).
    Unconfirmed,
}

impl ServerCore {
    /// Marks the start of a batch of calls.
    pub fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            handle: self.next_handle,
            slot: self.next_slot,
        }
    }

    /// Takes the effects decided since the last call.
    pub fn ready(&mut self) -> Ready {
        Ready {
            mutations: std::mem::take(&mut self.pending),
            revoke: std::mem::take(&mut self.revoked),
            released: std::mem::take(&mut self.released),
        }
    }

    /// The driver's acknowledgement of the `Ready` of the batch that started at `from`. On
    /// [`Persisted::Unconfirmed`], opens made since `from` are forgotten (a retry does not
    /// meet its own ghost) and handles made since then on older opens are given back; call
    /// [`ServerCore::ready`] again for the writes that records.
    pub fn advance(&mut self, from: Checkpoint, persisted: Persisted, now: u64) {
        if persisted == Persisted::Confirmed {
            return;
        }
        self.undo_opens_since(from.slot);
        for h in self.handles_since(from.handle) {
            self.detach(h, now);
        }
    }
}
