//! Every open the server knows, indexed by slot, with per-file state (live opens, locks,
//! access/change counters) and the ordered set of deadlines.

use std::collections::{BTreeSet, HashMap};

use super::records::{FileRecord, OpenRecord, OpenStatus};
use super::LockTable;

#[derive(Debug)]
pub struct OpenEntry {
    pub record: OpenRecord,
    /// Channels (control connections and data channels) currently holding a handle of it.
    pub channels: u32,
}

#[derive(Debug, Default)]
pub struct FileState {
    pub counters: FileRecord,
    /// Slots of the live opens of this file.
    pub live: Vec<u32>,
    /// Slots of all opens (live or tombstoned) that refer to this file.
    pub refs: usize,
    pub locks: LockTable,
    /// The open whose access last moved the counters, and whether that was a write. While no
    /// other open has looked since, its further accesses change nothing anyone can observe
    /// and are not written to the store again.
    pub last_bump: Option<(u32, bool)>,
}

#[derive(Debug, Default)]
pub struct OpenTable {
    opens: HashMap<u32, OpenEntry>,
    files: HashMap<u64, FileState>,
    deadlines: BTreeSet<(u64, u32)>,
}

impl OpenTable {
    pub fn get(&self, slot: u32) -> Option<&OpenEntry> {
        self.opens.get(&slot)
    }

    pub fn get_mut(&mut self, slot: u32) -> Option<&mut OpenEntry> {
        self.opens.get_mut(&slot)
    }

    pub fn file(&self, file_id: u64) -> Option<&FileState> {
        self.files.get(&file_id)
    }

    pub fn file_mut(&mut self, file_id: u64) -> &mut FileState {
        self.files.entry(file_id).or_default()
    }

    pub fn len(&self) -> usize {
        self.opens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.opens.is_empty()
    }

    /// Adds a record (new or recovered) with its locks if it is live.
    pub fn insert(&mut self, record: OpenRecord, channels: u32) {
        let slot = record.slot;
        let file = self.files.entry(record.file_id).or_default();
        file.refs += 1;
        if record.status == OpenStatus::Live {
            file.live.push(slot);
            for r in &record.locks {
                // Recovered state was consistent when written; a conflict here would mean a
                // corrupted store, and then the earlier holder keeps the range.
                let _ = file.locks.lock(slot, *r);
            }
        }
        if let Some(d) = record.deadline {
            self.deadlines.insert((d, slot));
        }
        self.opens.insert(slot, OpenEntry { record, channels });
    }

    /// Removes an open entirely. Returns the file id and whether no open refers to the file
    /// any more.
    pub fn remove(&mut self, slot: u32) -> Option<(OpenRecord, bool)> {
        let entry = self.opens.remove(&slot)?;
        if let Some(d) = entry.record.deadline {
            self.deadlines.remove(&(d, slot));
        }
        let file_id = entry.record.file_id;
        let mut unreferenced = false;
        if let Some(file) = self.files.get_mut(&file_id) {
            file.live.retain(|s| *s != slot);
            file.locks.release_all(slot);
            file.refs = file.refs.saturating_sub(1);
            if file.refs == 0 {
                self.files.remove(&file_id);
                unreferenced = true;
            }
        }
        Some((entry.record, unreferenced))
    }

    /// Turns a live open into a tombstone: locks released, no longer counted against others.
    pub fn expire(&mut self, slot: u32) {
        let Some(entry) = self.opens.get_mut(&slot) else {
            return;
        };
        entry.record.status = OpenStatus::Expired;
        let file_id = entry.record.file_id;
        if let Some(file) = self.files.get_mut(&file_id) {
            file.live.retain(|s| *s != slot);
            file.locks.release_all(slot);
        }
    }

    /// Makes a tombstone live again (the caller checked it is compatible).
    pub fn revive(&mut self, slot: u32) {
        let Some(entry) = self.opens.get_mut(&slot) else {
            return;
        };
        entry.record.status = OpenStatus::Live;
        let file = self.files.entry(entry.record.file_id).or_default();
        file.live.push(slot);
        for r in &entry.record.locks {
            let _ = file.locks.lock(slot, *r);
        }
    }

    pub fn set_deadline(&mut self, slot: u32, deadline: Option<u64>) {
        let Some(entry) = self.opens.get_mut(&slot) else {
            return;
        };
        if let Some(old) = entry.record.deadline {
            self.deadlines.remove(&(old, slot));
        }
        entry.record.deadline = deadline;
        if let Some(d) = deadline {
            self.deadlines.insert((d, slot));
        }
    }

    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.first().map(|(d, _)| *d)
    }

    /// Slots whose deadline is at or before `now`, earliest first.
    pub fn due(&self, now: u64) -> Vec<u32> {
        self.deadlines
            .iter()
            .take_while(|(d, _)| *d <= now)
            .map(|(_, s)| *s)
            .collect()
    }

    pub fn records(&self) -> impl Iterator<Item = &OpenRecord> {
        self.opens.values().map(|e| &e.record)
    }
}
