//! How each kind of message field travels: one module per codec, each with `put` and `get`,
//! named in the message table ([`super::message`]) beside the field. Bounds are passed in from
//! the table, so every length a peer can send is named there.

use super::file_attr::{DirEntry, FileAttr, FileKind, Timestamp};
use super::message::{Endpoint, EndpointKind, ErrorCode, FileInfo, OpenParams, Span};
use crate::codec::{Reader, WireError, Writer};
use crate::state::records::{
    decode_mode, decode_range, decode_share, encode_range, MAX_GRANTS, MAX_LOCKS, MAX_NAME,
};
use crate::state::{ByteRange, OpenState, OpenSummary, ResumeReport};

type Put = Result<(), WireError>;

pub mod byte {
    use super::*;
    pub fn put(w: &mut Writer, v: &u8) -> Put {
        w.u8(*v);
        Ok(())
    }
    pub fn get(r: &mut Reader) -> Result<u8, WireError> {
        r.u8()
    }
}

pub mod word {
    use super::*;
    pub fn put(w: &mut Writer, v: &u32) -> Put {
        w.u32(*v);
        Ok(())
    }
    pub fn get(r: &mut Reader) -> Result<u32, WireError> {
        r.u32()
    }
}

pub mod long {
    use super::*;
    pub fn put(w: &mut Writer, v: &u64) -> Put {
        w.u64(*v);
        Ok(())
    }
    pub fn get(r: &mut Reader) -> Result<u64, WireError> {
        r.u64()
    }
}

pub mod flag {
    use super::*;
    pub fn put(w: &mut Writer, v: &bool) -> Put {
        w.bool(*v);
        Ok(())
    }
    pub fn get(r: &mut Reader) -> Result<bool, WireError> {
        r.bool()
    }
}

/// UTF-8 text of at most `max` bytes.
pub mod text {
    use super::*;
    pub fn put(w: &mut Writer, v: &str, max: usize) -> Put {
        w.string(v, max)
    }
    pub fn get(r: &mut Reader, max: usize) -> Result<String, WireError> {
        r.string(max)
    }
}

/// Opaque bytes, at most `max`.
pub mod blob {
    use super::*;
    pub fn put(w: &mut Writer, v: &[u8], max: usize) -> Put {
        w.bytes(v, max)
    }
    pub fn get(r: &mut Reader, max: usize) -> Result<Vec<u8>, WireError> {
        Ok(r.bytes(max)?.to_vec())
    }
}

/// 32 raw bytes (a nonce, a proof, a key).
pub mod key32 {
    use super::*;
    pub fn put(w: &mut Writer, v: &[u8; 32]) -> Put {
        w.raw(v);
        Ok(())
    }
    pub fn get(r: &mut Reader) -> Result<[u8; 32], WireError> {
        r.array()
    }
}

/// 32 raw bytes or none, behind a presence flag.
pub mod maybe_key32 {
    use super::*;
    pub fn put(w: &mut Writer, v: &Option<[u8; 32]>) -> Put {
        w.bool(v.is_some());
        if let Some(k) = v {
            w.raw(k);
        }
        Ok(())
    }
    pub fn get(r: &mut Reader) -> Result<Option<[u8; 32]>, WireError> {
        Ok(if r.bool()? { Some(r.array()?) } else { None })
    }
}

/// Up to `items` texts of at most `max` bytes each.
pub mod texts {
    use super::*;
    pub fn put(w: &mut Writer, v: &[String], items: usize, max: usize) -> Put {
        w.list(v, items, |w, t| w.string(t, max))
    }
    pub fn get(r: &mut Reader, items: usize, max: usize) -> Result<Vec<String>, WireError> {
        r.list(items, |r| r.string(max))
    }
}

/// Up to `items` blobs of at most `max` bytes each.
pub mod blobs {
    use super::*;
    pub fn put(w: &mut Writer, v: &[Vec<u8>], items: usize, max: usize) -> Put {
        w.list(v, items, |w, b| w.bytes(b, max))
    }
    pub fn get(r: &mut Reader, items: usize, max: usize) -> Result<Vec<Vec<u8>>, WireError> {
        r.list(items, |r| Ok(r.bytes(max)?.to_vec()))
    }
}

/// Up to `items` named counters (name of at most `max` bytes, value).
pub mod counters {
    use super::*;
    pub fn put(w: &mut Writer, v: &[(String, u64)], items: usize, max: usize) -> Put {
        w.list(v, items, |w, (k, n)| {
            w.string(k, max)?;
            w.u64(*n);
            Ok(())
        })
    }
    pub fn get(r: &mut Reader, items: usize, max: usize) -> Result<Vec<(String, u64)>, WireError> {
        r.list(items, |r| Ok((r.string(max)?, r.u64()?)))
    }
}

/// Up to `items` opens as an administrator is shown them (paths of at most `max` bytes).
pub mod summaries {
    use super::*;
    pub fn put(w: &mut Writer, v: &[OpenSummary], items: usize, max: usize) -> Put {
        w.list(v, items, |w, o| {
            w.u32(o.slot);
            w.string(&o.path, max)?;
            w.string(&o.owner, MAX_NAME)?;
            w.list(&o.holders, MAX_GRANTS, |w, h| w.string(h, MAX_NAME))?;
            w.u8(o.mode.to_wire());
            w.u8(o.share.to_wire());
            w.list(&o.locks, MAX_LOCKS, encode_range)?;
            w.u32(o.channels);
            w.u8(o.state.to_wire());
            w.u64(o.deadline_ms);
            Ok(())
        })
    }
    pub fn get(r: &mut Reader, items: usize, max: usize) -> Result<Vec<OpenSummary>, WireError> {
        r.list(items, |r| {
            Ok(OpenSummary {
                slot: r.u32()?,
                path: r.string(max)?,
                owner: r.string(MAX_NAME)?,
                holders: r.list(MAX_GRANTS, |r| r.string(MAX_NAME))?,
                mode: decode_mode(r)?,
                share: decode_share(r)?,
                locks: r.list(MAX_LOCKS, decode_range)?,
                channels: r.u32()?,
                state: OpenState::from_wire(r.u8()?).ok_or(WireError::Invalid("open state"))?,
                deadline_ms: r.u64()?,
            })
        })
    }
}

/// Up to `items` (path of at most `max` bytes, access count, version) of drained files.
pub mod file_counters {
    use super::*;
    pub fn put(w: &mut Writer, v: &[(String, u64, u64)], items: usize, max: usize) -> Put {
        w.list(v, items, |w, (p, a, n)| {
            w.string(p, max)?;
            w.u64(*a);
            w.u64(*n);
            Ok(())
        })
    }
    pub fn get(
        r: &mut Reader,
        items: usize,
        max: usize,
    ) -> Result<Vec<(String, u64, u64)>, WireError> {
        r.list(items, |r| Ok((r.string(max)?, r.u64()?, r.u64()?)))
    }
}

/// Up to `items` numbers.
pub mod longs {
    use super::*;
    pub fn put(w: &mut Writer, v: &[u64], items: usize) -> Put {
        w.list(v, items, |w, n| {
            w.u64(*n);
            Ok(())
        })
    }
    pub fn get(r: &mut Reader, items: usize) -> Result<Vec<u64>, WireError> {
        r.list(items, |r| r.u64())
    }
}

/// Up to `items` spans of a batch (offset, length, buffer address).
pub mod spans {
    use super::*;
    pub fn put(w: &mut Writer, v: &[Span], items: usize) -> Put {
        w.list(v, items, |w, s| {
            w.u64(s.offset);
            w.u64(s.len);
            w.u64(s.addr);
            Ok(())
        })
    }
    pub fn get(r: &mut Reader, items: usize) -> Result<Vec<Span>, WireError> {
        r.list(items, |r| {
            Ok(Span {
                offset: r.u64()?,
                len: r.u64()?,
                addr: r.u64()?,
            })
        })
    }
}

pub mod range {
    use super::*;
    pub fn put(w: &mut Writer, v: &ByteRange) -> Put {
        encode_range(w, v)
    }
    pub fn get(r: &mut Reader) -> Result<ByteRange, WireError> {
        decode_range(r)
    }
}

pub mod info {
    use super::*;
    pub fn put(w: &mut Writer, i: &FileInfo) -> Put {
        w.u8(i.mode.to_wire());
        w.u8(i.share.to_wire());
        w.list(&i.locks, MAX_LOCKS, encode_range)?;
        w.u64(i.size);
        Ok(())
    }
    pub fn get(r: &mut Reader) -> Result<FileInfo, WireError> {
        Ok(FileInfo {
            mode: decode_mode(r)?,
            share: decode_share(r)?,
            locks: r.list(MAX_LOCKS, decode_range)?,
            size: r.u64()?,
        })
    }
}

pub mod open {
    use super::*;
    pub fn put(w: &mut Writer, p: &OpenParams, max_path: usize) -> Put {
        w.string(&p.path, max_path)?;
        w.u8(p.mode.to_wire());
        w.u8(p.share.to_wire());
        w.list(&p.locks, MAX_LOCKS, encode_range)?;
        w.bool(p.create);
        w.bool(p.truncate);
        w.u32(p.pid);
        Ok(())
    }
    pub fn get(r: &mut Reader, max_path: usize) -> Result<OpenParams, WireError> {
        Ok(OpenParams {
            path: r.string(max_path)?,
            mode: decode_mode(r)?,
            share: decode_share(r)?,
            locks: r.list(MAX_LOCKS, decode_range)?,
            create: r.bool()?,
            truncate: r.bool()?,
            pid: r.u32()?,
        })
    }
}

/// Three flags in one byte; the other bits must be clear.
pub mod report {
    use super::*;
    pub fn put(w: &mut Writer, r: &ResumeReport) -> Put {
        w.u8(u8::from(r.accessed_by_other)
            | u8::from(r.changed_by_other) << 1
            | u8::from(r.reopened) << 2);
        Ok(())
    }
    pub fn get(r: &mut Reader) -> Result<ResumeReport, WireError> {
        let bits = r.u8()?;
        if bits > 7 {
            return Err(WireError::Invalid("resume report"));
        }
        Ok(ResumeReport {
            accessed_by_other: bits & 1 != 0,
            changed_by_other: bits & 2 != 0,
            reopened: bits & 4 != 0,
        })
    }
}

pub mod maybe_report {
    use super::*;
    pub fn put(w: &mut Writer, v: &Option<ResumeReport>) -> Put {
        w.bool(v.is_some());
        match v {
            Some(r) => report::put(w, r),
            None => Ok(()),
        }
    }
    pub fn get(r: &mut Reader) -> Result<Option<ResumeReport>, WireError> {
        Ok(if r.bool()? {
            Some(report::get(r)?)
        } else {
            None
        })
    }
}

/// An error class; a code this side does not know is kept (`ErrorCode::Unknown`).
pub mod code {
    use super::*;
    pub fn put(w: &mut Writer, v: &ErrorCode) -> Put {
        w.u16(v.to_wire());
        Ok(())
    }
    pub fn get(r: &mut Reader) -> Result<ErrorCode, WireError> {
        Ok(ErrorCode::from_wire(r.u16()?))
    }
}

/// Up to `items` data endpoints, each with an address of at most `max` bytes; a kind this side
/// does not know is kept (`EndpointKind::Unknown`), for the client to pass over.
pub mod endpoints {
    use super::*;
    pub fn put(w: &mut Writer, v: &[Endpoint], items: usize, max: usize) -> Put {
        w.list(v, items, |w, e| {
            w.u8(e.kind.to_wire());
            w.string(&e.addr, max)
        })
    }
    pub fn get(r: &mut Reader, items: usize, max: usize) -> Result<Vec<Endpoint>, WireError> {
        r.list(items, |r| {
            Ok(Endpoint {
                kind: EndpointKind::from_wire(r.u8()?),
                addr: r.string(max)?,
            })
        })
    }
}

fn put_time(w: &mut Writer, t: &Timestamp) {
    w.u64(t.secs as u64);
    w.u32(t.nanos);
}

fn get_time(r: &mut Reader) -> Result<Timestamp, WireError> {
    let secs = r.u64()? as i64;
    let nanos = r.u32()?;
    if nanos >= 1_000_000_000 {
        return Err(WireError::Invalid("timestamp nanoseconds"));
    }
    Ok(Timestamp { secs, nanos })
}

/// A file's attributes; an unknown kind is kept (`FileKind::Unknown`).
pub mod attr {
    use super::*;
    pub fn put(w: &mut Writer, a: &FileAttr) -> Put {
        w.u8(a.kind.to_wire());
        w.u16(a.perm);
        w.u64(a.size);
        w.u64(a.blocks);
        w.u32(a.nlink);
        w.u64(a.ino);
        for t in [&a.atime, &a.mtime, &a.ctime] {
            put_time(w, t);
        }
        Ok(())
    }
    pub fn get(r: &mut Reader) -> Result<FileAttr, WireError> {
        let kind = FileKind::from_wire(r.u8()?);
        let perm = r.u16()?;
        if perm > 0o7777 {
            return Err(WireError::Invalid("permission bits"));
        }
        Ok(FileAttr {
            kind,
            perm,
            size: r.u64()?,
            blocks: r.u64()?,
            nlink: r.u32()?,
            ino: r.u64()?,
            atime: get_time(r)?,
            mtime: get_time(r)?,
            ctime: get_time(r)?,
        })
    }
}

/// Up to `items` directory entries, each a name of at most `max` bytes and its attributes.
pub mod entries {
    use super::*;
    pub fn put(w: &mut Writer, v: &[DirEntry], items: usize, max: usize) -> Put {
        w.list(v, items, |w, e| {
            w.string(&e.name, max)?;
            attr::put(w, &e.attr)
        })
    }
    pub fn get(r: &mut Reader, items: usize, max: usize) -> Result<Vec<DirEntry>, WireError> {
        r.list(items, |r| {
            Ok(DirEntry {
                name: r.string(max)?,
                attr: attr::get(r)?,
            })
        })
    }
}
