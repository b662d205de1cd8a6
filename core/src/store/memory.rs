//! An in-memory store for unit tests and benchmarks; it keeps nothing across processes.

use std::collections::BTreeMap;

use super::{Mutation, Snapshot, Store, StoreError};

#[derive(Default, Clone)]
pub struct MemoryStore {
    snapshot: Snapshot,
    opens: BTreeMap<u32, crate::state::records::OpenRecord>,
    files: BTreeMap<u64, crate::state::records::FileRecord>,
    inbox: BTreeMap<(String, u64), String>,
    aliases: BTreeMap<(u32, u32), super::Alias>,
}

impl Store for MemoryStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        Ok(Snapshot {
            mac_key: self.snapshot.mac_key,
            next_slot: self.snapshot.next_slot,
            opens: self.opens.values().cloned().collect(),
            files: self.files.iter().map(|(k, v)| (*k, *v)).collect(),
            inbox: self
                .inbox
                .iter()
                .map(|((client, seq), token)| super::InboxKey {
                    client: client.clone(),
                    seq: *seq,
                    token: token.clone(),
                })
                .collect(),
            legacy_inboxes: Vec::new(),
            foreign_keys: self.snapshot.foreign_keys.clone(),
            aliases: self.aliases.values().copied().collect(),
            referral: self.snapshot.referral.clone(),
            draining: self.snapshot.draining.clone(),
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
                Mutation::PutInboxKey(k) => {
                    self.inbox
                        .insert((k.client.clone(), k.seq), k.token.clone());
                }
                Mutation::DeleteInboxKey { client, seq } => {
                    self.inbox.remove(&(client.clone(), *seq));
                }
                Mutation::DeleteLegacyInbox(_) => {}
                Mutation::PutForeignKey(i, k) => {
                    self.snapshot.foreign_keys.retain(|(j, _)| j != i);
                    self.snapshot.foreign_keys.push((*i, *k));
                }
                Mutation::PutAlias(a) => {
                    self.aliases.insert((a.origin, a.old_slot), *a);
                }
                Mutation::DeleteAlias { origin, old_slot } => {
                    self.aliases.remove(&(*origin, *old_slot));
                }
                Mutation::PutReferral(r) => self.snapshot.referral = r.clone(),
                Mutation::PutDraining(r) => self.snapshot.draining = r.clone(),
            }
        }
        Ok(())
    }
}
