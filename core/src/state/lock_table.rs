//! Byte-range locks of one file. Ranges are kept disjoint in a map ordered by start (ranges of
//! different opens can never overlap: that is a conflict; one open's own ranges are merged), so
//! the ranges overlapping a query are one contiguous run found in O(log n).

use std::collections::BTreeMap;

use super::ByteRange;

/// Locks are owned by an open (its slot); every duplicate handle of the open shares them.
pub type Owner = u32;

#[derive(Default, Debug, Clone)]
pub struct LockTable {
    /// start → (end, owner); disjoint.
    ranges: BTreeMap<u64, (u64, Owner)>,
}

impl LockTable {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Held ranges overlapping `range`, in descending order of start.
    fn overlapping(&self, range: ByteRange) -> impl Iterator<Item = (u64, u64, Owner)> + '_ {
        self.ranges
            .range(..range.end())
            .rev()
            .map(|(s, (e, o))| (*s, *e, *o))
            .take_while(move |(_, e, _)| *e > range.offset())
    }

    /// The owner of a lock that keeps `owner` from touching `range`, if any.
    pub fn conflict(&self, owner: Owner, range: ByteRange) -> Option<Owner> {
        self.overlapping(range)
            .find(|(_, _, o)| *o != owner)
            .map(|(_, _, o)| o)
    }

    /// Takes `range` for `owner`, merging with the owner's overlapping ranges.
    pub fn lock(&mut self, owner: Owner, range: ByteRange) -> Result<(), Owner> {
        if let Some(other) = self.conflict(owner, range) {
            return Err(other);
        }
        let mut start = range.offset();
        let mut end = range.end();
        let own: Vec<(u64, u64, Owner)> = self.overlapping(range).collect();
        for (s, e, _) in own {
            self.ranges.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.ranges.insert(start, (end, owner));
        Ok(())
    }

    /// Gives up `owner`'s hold on `range`, splitting its ranges where needed. Returns whether
    /// anything was held there.
    pub fn unlock(&mut self, owner: Owner, range: ByteRange) -> bool {
        let own: Vec<(u64, u64, Owner)> = self
            .overlapping(range)
            .filter(|(_, _, o)| *o == owner)
            .collect();
        for (s, e, o) in &own {
            self.ranges.remove(s);
            if *s < range.offset() {
                self.ranges.insert(*s, (range.offset(), *o));
            }
            if *e > range.end() {
                self.ranges.insert(range.end(), (*e, *o));
            }
        }
        !own.is_empty()
    }

    pub fn release_all(&mut self, owner: Owner) {
        self.ranges.retain(|_, (_, o)| *o != owner);
    }

    pub fn ranges_of(&self, owner: Owner) -> Vec<ByteRange> {
        self.ranges
            .iter()
            .filter(|(_, (_, o))| *o == owner)
            .filter_map(|(s, (e, _))| ByteRange::new(*s, e - s))
            .collect()
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(o: u64, l: u64) -> ByteRange {
        ByteRange::new(o, l).unwrap()
    }

    #[test]
    fn conflicts_only_with_other_owners() {
        let mut t = LockTable::default();
        t.lock(1, r(100, 50)).unwrap();
        assert_eq!(t.conflict(2, r(149, 1)), Some(1));
        assert_eq!(t.conflict(2, r(150, 10)), None);
        assert_eq!(t.conflict(2, r(0, 100)), None);
        assert_eq!(t.conflict(2, r(0, 101)), Some(1));
        assert_eq!(t.conflict(1, r(120, 5)), None);
        assert_eq!(t.lock(2, r(0, 1000)), Err(1));
        t.lock(2, r(0, 100)).unwrap();
        t.lock(2, r(150, 100)).unwrap();
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn own_ranges_merge_and_split() {
        let mut t = LockTable::default();
        t.lock(1, r(0, 10)).unwrap();
        t.lock(1, r(5, 10)).unwrap();
        assert_eq!(t.ranges_of(1), vec![r(0, 15)]);
        assert!(t.unlock(1, r(4, 2)));
        assert_eq!(t.ranges_of(1), vec![r(0, 4), r(6, 9)]);
        assert_eq!(t.conflict(2, r(4, 2)), None);
        assert_eq!(t.conflict(2, r(3, 2)), Some(1));
        t.release_all(1);
        assert!(t.is_empty());
    }

    #[test]
    fn many_ranges_find_the_one_in_the_middle() {
        let mut t = LockTable::default();
        for i in 0..10_000u64 {
            t.lock((i % 7) as u32, r(i * 10, 5)).unwrap();
        }
        assert_eq!(t.conflict(100, r(50_003, 1)), Some((5000 % 7) as u32));
        assert_eq!(t.conflict(100, r(50_005, 5)), None);
    }
}
