//! Frames: `len u32 | kind u8 | seq u64 | payload | mac [16]`, where `len` counts everything
//! after itself. Parsing is two-phase (mini-redis style): [`Frame::check`] sees whether a whole
//! frame is buffered without allocating, then [`Frame::parse`] splits it.

use super::WireError;

/// Bytes of MAC at the end of every frame (zero during the handshake).
pub const MAC_LEN: usize = 16;
/// Bytes after the length field that are not payload.
const OVERHEAD: usize = 1 + 8 + MAC_LEN;
/// Bytes of a whole frame that are not payload (the length field included).
pub const FRAME_OVERHEAD: usize = 4 + OVERHEAD;
/// The hard limit on a frame's payload. Control messages are small; bulk data never travels
/// inside frames.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// A parsed frame borrowing its payload from the receive buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: u8,
    pub seq: u64,
    pub payload: &'a [u8],
    pub mac: [u8; MAC_LEN],
}

impl<'a> Frame<'a> {
    /// `Ok(None)`: not all of the frame is here yet. `Ok(Some(n))`: a whole frame of `n` bytes
    /// starts the buffer. An announced length outside the bounds is an error at once, before
    /// anything of that size is buffered.
    pub fn check(buf: &[u8]) -> Result<Option<usize>, WireError> {
        let Some(len_bytes) = buf.get(..4) else {
            return Ok(None);
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(len_bytes);
        let len = u32::from_be_bytes(len) as usize;
        if len < OVERHEAD {
            return Err(WireError::Invalid("frame shorter than its header"));
        }
        if len - OVERHEAD > MAX_PAYLOAD {
            return Err(WireError::FrameTooLarge(len));
        }
        let total = 4 + len;
        Ok((buf.len() >= total).then_some(total))
    }

    /// Parses exactly one whole frame (as measured by [`Frame::check`]).
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let total = Self::check(buf)?.ok_or(WireError::Truncated)?;
        if total != buf.len() {
            return Err(WireError::TrailingBytes);
        }
        let mut r = super::Reader::new(buf);
        let _len = r.u32()?;
        let kind = r.u8()?;
        let seq = r.u64()?;
        let payload_len = r
            .remaining()
            .checked_sub(MAC_LEN)
            .ok_or(WireError::Truncated)?;
        let payload = r.take(payload_len)?;
        let mac = r.array::<MAC_LEN>()?;
        r.finish()?;
        Ok(Self {
            kind,
            seq,
            payload,
            mac,
        })
    }

    /// The bytes a frame MAC covers, in order: seq, kind, payload.
    pub fn mac_input(kind: u8, seq: u64) -> [u8; 9] {
        let mut out = [0u8; 9];
        out[..8].copy_from_slice(&seq.to_be_bytes());
        out[8] = kind;
        out
    }
}

/// Writes a frame around `payload` into `out`.
pub fn encode_frame(
    out: &mut bytes::BytesMut,
    kind: u8,
    seq: u64,
    payload: &[u8],
    mac: &[u8; MAC_LEN],
) -> Result<(), WireError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::FrameTooLarge(payload.len()));
    }
    let len = u32::try_from(payload.len() + OVERHEAD).map_err(|_| WireError::TooLong)?;
    out.reserve(4 + len as usize);
    let mut w = super::Writer::new(out);
    w.u32(len);
    w.u8(kind);
    w.u64(seq);
    w.raw(payload);
    w.raw(mac);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    #[test]
    fn check_then_parse() {
        let mut buf = BytesMut::new();
        encode_frame(&mut buf, 7, 42, b"hello", &[9; MAC_LEN]).unwrap();
        for cut in 0..buf.len() {
            assert_eq!(Frame::check(&buf[..cut]).unwrap(), None, "cut {cut}");
        }
        assert_eq!(Frame::check(&buf).unwrap(), Some(buf.len()));
        let f = Frame::parse(&buf).unwrap();
        assert_eq!(
            (f.kind, f.seq, f.payload, f.mac),
            (7, 42, &b"hello"[..], [9; MAC_LEN])
        );
    }

    #[test]
    fn oversize_and_undersize_are_rejected_from_the_header_alone() {
        let huge = ((MAX_PAYLOAD + OVERHEAD + 1) as u32).to_be_bytes();
        assert!(matches!(
            Frame::check(&huge),
            Err(WireError::FrameTooLarge(_))
        ));
        assert!(Frame::check(&3u32.to_be_bytes()).is_err());
        let mut buf = BytesMut::new();
        assert!(encode_frame(&mut buf, 1, 0, &vec![0; MAX_PAYLOAD + 1], &[0; MAC_LEN]).is_err());
    }
}
