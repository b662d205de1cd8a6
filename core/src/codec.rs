//! Checked binary reader and writer. Every decoder in handoff goes through [`Reader`]: no
//! indexing, no panics, every length bounded, trailing bytes rejected by [`Reader::finish`].
//! Below both the wire messages and the stored records (which `wire` re-exports).

use bytes::{BufMut, BytesMut};

/// A decoding failure: the peer sent something malformed. Closes only that connection.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum WireError {
    #[error("message truncated")]
    Truncated,
    #[error("field longer than allowed")]
    TooLong,
    #[error("trailing bytes after message")]
    TrailingBytes,
    #[error("frame of {0} bytes exceeds the limit")]
    FrameTooLarge(usize),
    #[error("unknown message type {0:#04x}")]
    UnknownKind(u8),
    #[error("invalid {0}")]
    Invalid(&'static str),
}

/// A cursor over untrusted bytes. Each getter returns an error instead of panicking.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn bool(&mut self) -> Result<bool, WireError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(WireError::Invalid("boolean")),
        }
    }

    /// Bytes with a u16 length prefix, at most `max` long.
    pub fn bytes(&mut self, max: usize) -> Result<&'a [u8], WireError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(WireError::TooLong);
        }
        self.take(len)
    }

    /// A UTF-8 string with a u16 length prefix, at most `max` bytes.
    pub fn string(&mut self, max: usize) -> Result<String, WireError> {
        let raw = self.bytes(max)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| WireError::Invalid("utf-8 string"))
    }

    /// A u16 element count, at most `max`, then that many items decoded by `item`.
    pub fn list<T>(
        &mut self,
        max: usize,
        mut item: impl FnMut(&mut Self) -> Result<T, WireError>,
    ) -> Result<Vec<T>, WireError> {
        let count = usize::from(self.u16()?);
        if count > max {
            return Err(WireError::TooLong);
        }
        let mut out = Vec::with_capacity(count.min(64));
        for _ in 0..count {
            out.push(item(self)?);
        }
        Ok(out)
    }

    /// Consumes the reader, failing if anything is left over.
    pub fn finish(self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::TrailingBytes)
        }
    }
}

/// Appends big-endian fields to a buffer; lengths are checked against the same bounds the
/// reader enforces, so a message the writer accepts always decodes.
pub struct Writer<'a> {
    buf: &'a mut BytesMut,
}

impl<'a> Writer<'a> {
    pub fn new(buf: &'a mut BytesMut) -> Self {
        Self { buf }
    }

    pub fn u8(&mut self, v: u8) {
        self.buf.put_u8(v);
    }

    pub fn u16(&mut self, v: u16) {
        self.buf.put_u16(v);
    }

    pub fn u32(&mut self, v: u32) {
        self.buf.put_u32(v);
    }

    pub fn u64(&mut self, v: u64) {
        self.buf.put_u64(v);
    }

    pub fn bool(&mut self, v: bool) {
        self.buf.put_u8(u8::from(v));
    }

    pub fn raw(&mut self, v: &[u8]) {
        self.buf.put_slice(v);
    }

    pub fn bytes(&mut self, v: &[u8], max: usize) -> Result<(), WireError> {
        if v.len() > max {
            return Err(WireError::TooLong);
        }
        // `max` is always below u16::MAX for the callers in this crate; still checked.
        let len = u16::try_from(v.len()).map_err(|_| WireError::TooLong)?;
        self.buf.put_u16(len);
        self.buf.put_slice(v);
        Ok(())
    }

    pub fn string(&mut self, v: &str, max: usize) -> Result<(), WireError> {
        self.bytes(v.as_bytes(), max)
    }

    pub fn list<T>(
        &mut self,
        items: &[T],
        max: usize,
        mut item: impl FnMut(&mut Self, &T) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        if items.len() > max {
            return Err(WireError::TooLong);
        }
        let count = u16::try_from(items.len()).map_err(|_| WireError::TooLong)?;
        self.u16(count);
        for it in items {
            item(self, it)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_trailing_bytes() {
        let mut buf = BytesMut::new();
        let mut w = Writer::new(&mut buf);
        w.u64(7);
        w.string("abc", 10).unwrap();
        w.list(&[1u32, 2], 4, |w, v| {
            w.u32(*v);
            Ok(())
        })
        .unwrap();
        let mut r = Reader::new(&buf);
        assert_eq!(r.u64().unwrap(), 7);
        assert_eq!(r.string(10).unwrap(), "abc");
        assert_eq!(r.list(4, |r| r.u32()).unwrap(), vec![1, 2]);
        r.finish().unwrap();

        let mut r = Reader::new(&buf);
        r.u64().unwrap();
        assert!(matches!(r.string(2), Err(WireError::TooLong)));
        assert!(matches!(
            Reader::new(&[0, 5, b'a']).string(9),
            Err(WireError::Truncated)
        ));
        let mut r = Reader::new(&[1, 2]);
        r.u8().unwrap();
        assert!(matches!(r.finish(), Err(WireError::TrailingBytes)));
    }
}
