//! An in-memory store for unit tests and benchmarks; it keeps nothing across processes.

use std::collections::BTreeMap;

use super::{Mutation, Snapshot, Store, StoreError};

#[derive(Default, Clone)]
pub struct MemoryStore {
    snapshot: Snapshot,
    opens: BTreeMap<u32, crate::state::records::OpenRecord>,
    files: BTreeMap<u64, crate::state::records::FileRecord>,
    inboxes: BTreeMap<String, Vec<String>>,
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            mac_key: self.snapshot.mac_key,
            next_slot: self.snapshot.next_slot,
            opens: self.opens.values().cloned().collect(),
            files: self.files.iter().map(|(k, v)| (*k, *v)).collect(),
            inboxes: self
                .inboxes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        })
    }

    fn apply(&mut self, batch: &[Mutation]) -> Result<(), StoreError> {
        for m in batch {
            match m {
                Mutation::PutMacKey(k) => self.snapshot.mac_key = Some(*k),
                Mutation::PutNextSlot(n) => self.snapshot.next_slot = *n,
                Mutation::PutOpen(r) => {
                    self.opens.insert(r.slot, r.clone());
                }
                Mutation::DeleteOpen(s) => {
                    self.opens.remove(s);
                }
                Mutation::PutFile(id, f) => {
                    self.files.insert(*id, *f);
                }
                Mutation::DeleteFile(id) => {
                    self.files.remove(id);
                }
                Mutation::PutInbox(c, t) => {
                    self.inboxes.insert(c.clone(), t.clone());
                }
            }
        }
        Ok(())
    }
}
