//! A non-empty byte range `[offset, offset + len)` whose end does not overflow.

use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ByteRange {
    offset: u64,
    end: u64,
}

impl ByteRange {
    /// `None` for an empty range or one whose end would pass `u64::MAX`.
    pub fn new(offset: u64, len: u64) -> Option<Self> {
        let end = offset.checked_add(len)?;
        (len > 0).then_some(Self { offset, end })
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn end(&self) -> u64 {
        self.end
    }

    pub fn len(&self) -> u64 {
        self.end - self.offset
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn overlaps(&self, other: &ByteRange) -> bool {
        self.offset < other.end && other.offset < self.end
    }
}

impl fmt::Display for ByteRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.offset, self.len())
    }
}

impl FromStr for ByteRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (off, len) = s
            .split_once(':')
            .ok_or_else(|| format!("range {s:?} is not OFFSET:LEN"))?;
        let off: u64 = off.parse().map_err(|_| format!("bad offset in {s:?}"))?;
        let len: u64 = len.parse().map_err(|_| format!("bad length in {s:?}"))?;
        ByteRange::new(off, len).ok_or_else(|| format!("range {s:?} is empty or overflows"))
    }
}
