//! Every open the server knows, indexed by slot, with per-file state (live opens, locks,
//! access/change counters) and the ordered set of deadlines.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::records::{FileRecord, OpenRecord, OpenStatus};
use super::{LockTable, Mode, ShareMode};

#[derive(Debug)]
pub struct OpenEntry {
    pub record: OpenRecord,
    /// Channels (control connections and data channels) currently holding a handle of it.
    pub channels: u32,
}

/// How many live opens of a file have each access and share bit: enough to decide SMB share
/// compatibility in constant time however many opens the file has.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShareCounts {
    pub opens: u32,
    pub writers: u32,
    /// Opens that do not let others read (share without `r`).
    pub deny_read: u32,
    /// Opens that do not let others write (share without `w`).
    pub deny_write: u32,
}

impl ShareCounts {
    fn add(&mut self, mode: Mode, share: ShareMode, sign: i8) {
        let step = |v: &mut u32, on: bool| {
            if on {
                *v = if sign > 0 {
                    *v + 1
                } else {
                    v.saturating_sub(1)
                };
            }
        };
        step(&mut self.opens, true);
        step(&mut self.writers, mode.can_write());
        step(&mut self.deny_read, !share.read);
        step(&mut self.deny_write, !share.write);
    }

    /// These counts with one more open.
    pub fn with(mut self, mode: Mode, share: ShareMode) -> Self {
        self.add(mode, share, 1);
        self
    }

    /// These counts without one open (`mode`, `share`) that they include.
    pub fn without(mut self, mode: Mode, share: ShareMode) -> Self {
        self.add(mode, share, -1);
        self
    }

    /// Whether an open with `mode`/`share` is compatible with every open counted here: the
    /// same answer as [`ShareMode::compatible`] against each of them.
    pub fn admit(&self, mode: Mode, share: ShareMode) -> bool {
        let others_allow_me = self.deny_read == 0 && (!mode.can_write() || self.deny_write == 0);
        let i_allow_others = (self.opens == 0 || share.read) && (self.writers == 0 || share.write);
        others_allow_me && i_allow_others
    }
}

#[derive(Debug, Default)]
pub struct FileState {
    pub counters: FileRecord,
    /// Slots of the live opens of this file.
    pub live: BTreeSet<u32>,
    /// Access and share bits of the live opens, counted.
    pub shares: ShareCounts,
    /// Slots of all opens (live or tombstoned) that refer to this file.
    pub refs: usize,
    pub locks: LockTable,
    /// The open whose access last moved the counters, and whether that was a write. While no
    /// other open has looked since, its further accesses change nothing anyone can observe
    /// and are not written to the store again.
    pub last_bump: Option<(u32, bool)>,
    /// Changes of the file's bytes on their way that no live open makes: writes through
    /// opens that closed meanwhile, truncations. They keep this state (and its change mark
    /// held) until they end.
    pub orphan_writes: u32,
}

/// The opens one client made (it is their owner), for its quotas.
#[derive(Debug, Default)]
pub struct OwnerOpens {
    pub live: BTreeSet<u32>,
    /// Expired opens remembered for their holders (oldest, lowest slot, first).
    pub expired: BTreeSet<u32>,
    /// Byte-range locks held by the live opens, counted as they change.
    pub locks: usize,
}

#[derive(Debug, Default)]
pub struct OpenTable {
    /// By slot, in order (an administrator's listing pages through it by slot).
    opens: BTreeMap<u32, OpenEntry>,
    files: HashMap<u64, FileState>,
    deadlines: BTreeSet<(u64, u32)>,
    owners: HashMap<String, OwnerOpens>,
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

    /// Drops the state of a file no open refers to and no write is on its way to; whether
    /// it did.
    pub fn drop_if_unused(&mut self, file_id: u64) -> bool {
        let unused = self
            .files
            .get(&file_id)
            .is_some_and(|f| f.refs == 0 && f.orphan_writes == 0);
        if unused {
            self.files.remove(&file_id);
        }
        unused
    }

    /// Every file an open refers to, with its state.
    pub fn files_mut(&mut self) -> impl Iterator<Item = (u64, &mut FileState)> {
        self.files.iter_mut().map(|(id, f)| (*id, f))
    }

    pub fn len(&self) -> usize {
        self.opens.len()
    }

    /// The opens `owner` made, if any.
    pub fn owner(&self, owner: &str) -> Option<&OwnerOpens> {
        self.owners.get(owner)
    }

    /// Moves `owner`'s lock count from `before` to `after` ranges (a lock or unlock changed
    /// one of its opens).
    pub fn count_locks(&mut self, owner: &str, before: usize, after: usize) {
        if let Some(o) = self.owners.get_mut(owner) {
            o.locks = (o.locks + after).saturating_sub(before);
        }
    }

    /// Lock ranges `slot` holds in file `file_id`.
    fn locks_of(&self, file_id: u64, slot: u32) -> usize {
        self.files
            .get(&file_id)
            .map_or(0, |f| f.locks.ranges_of(slot).len())
    }

    fn set_owned(&mut self, owner: &str, slot: u32, status: Option<OpenStatus>) {
        let o = self.owners.entry(owner.to_owned()).or_default();
        o.live.remove(&slot);
        o.expired.remove(&slot);
        match status {
            Some(OpenStatus::Live) => o.live.insert(slot),
            Some(OpenStatus::Expired) => o.expired.insert(slot),
            None => false,
        };
        if o.live.is_empty() && o.expired.is_empty() {
            self.owners.remove(owner);
        }
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
            file.live.insert(slot);
            file.shares.add(record.mode, record.share, 1);
            for r in &record.locks {
                // Recovered state was consistent when written; a conflict here would mean a
                // corrupted store, and then the earlier holder keeps the range.
                let _ = file.locks.lock(slot, *r);
            }
        }
        if let Some(d) = record.deadline {
            self.deadlines.insert((d, slot));
        }
        self.set_owned(&record.owner, slot, Some(record.status));
        let held = self.locks_of(record.file_id, slot);
        self.count_locks(&record.owner, 0, held);
        self.opens.insert(slot, OpenEntry { record, channels });
    }

    /// Removes an open entirely. Returns the file id and whether no open refers to the file
    /// any more.
    pub fn remove(&mut self, slot: u32) -> Option<(OpenRecord, bool)> {
        let entry = self.opens.remove(&slot)?;
        if let Some(d) = entry.record.deadline {
            self.deadlines.remove(&(d, slot));
        }
        let held = self.locks_of(entry.record.file_id, slot);
        self.count_locks(&entry.record.owner, held, 0);
        self.set_owned(&entry.record.owner, slot, None);
        let file_id = entry.record.file_id;
        let mut unreferenced = false;
        if let Some(file) = self.files.get_mut(&file_id) {
            if file.live.remove(&slot) {
                file.shares.add(entry.record.mode, entry.record.share, -1);
            }
            file.locks.release_all(slot);
            file.refs = file.refs.saturating_sub(1);
            if file.refs == 0 && file.orphan_writes == 0 {
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
        let (owner, mode, share) = (
            entry.record.owner.clone(),
            entry.record.mode,
            entry.record.share,
        );
        let held = self.locks_of(file_id, slot);
        self.count_locks(&owner, held, 0);
        if let Some(file) = self.files.get_mut(&file_id) {
            if file.live.remove(&slot) {
                file.shares.add(mode, share, -1);
            }
            file.locks.release_all(slot);
        }
        self.set_owned(&owner, slot, Some(OpenStatus::Expired));
    }

    /// Makes a tombstone live again (the caller checked it is compatible).
    pub fn revive(&mut self, slot: u32) {
        let Some(entry) = self.opens.get_mut(&slot) else {
            return;
        };
        entry.record.status = OpenStatus::Live;
        let owner = entry.record.owner.clone();
        let file = self.files.entry(entry.record.file_id).or_default();
        if file.live.insert(slot) {
            file.shares.add(entry.record.mode, entry.record.share, 1);
        }
        for r in &entry.record.locks {
            let _ = file.locks.lock(slot, *r);
        }
        let file_id = entry.record.file_id;
        self.set_owned(&owner, slot, Some(OpenStatus::Live));
        let held = self.locks_of(file_id, slot);
        self.count_locks(&owner, 0, held);
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

    /// The opens whose slot is above `after`, by slot.
    pub fn after(&self, after: u32) -> impl Iterator<Item = &OpenEntry> {
        use std::ops::Bound::{Excluded, Unbounded};
        self.opens
            .range((Excluded(after), Unbounded))
            .map(|(_, e)| e)
    }
}
