//! The persistent records of the server's state and their binary encoding (versioned, decoded
//! through the checked reader like any wire message).

use bytes::BytesMut;

use super::{ByteRange, Mode, ShareMode};
use crate::codec::{Reader, WireError, Writer};

pub const MAX_PATH: usize = 4096;
pub const MAX_NAME: usize = 64;
pub const MAX_LOCKS: usize = 256;
pub const MAX_GRANTS: usize = 64;
const RECORD_VERSION: u8 = 1;

/// One holder of a resume key for an open: the opener, or a client it was passed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyGrant {
    pub nonce: u64,
    pub client: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenStatus {
    /// Open, holding its share mode and locks.
    Live,
    /// Its durable timeout ran out: locks released, others may open; kept as a tombstone so
    /// the holder can still resume (if compatible) and learn what happened.
    Expired,
}

/// One open of one file: the state a resume key names (through `slot`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenRecord {
    pub slot: u32,
    pub file_id: u64,
    pub path: String,
    pub owner: String,
    pub pid: u32,
    pub opened_at: u64,
    pub mode: Mode,
    pub share: ShareMode,
    pub locks: Vec<ByteRange>,
    /// The file's access and change counters as this open last saw them.
    pub seen_access: u64,
    pub seen_version: u64,
    pub status: OpenStatus,
    /// Live: when the durable timeout ends if no channel comes back (None while attached).
    /// Expired: when the tombstone is dropped.
    pub deadline: Option<u64>,
    pub grants: Vec<KeyGrant>,
}

/// Per-file counters behind the accessed/changed-by-other report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileRecord {
    pub access_seq: u64,
    pub version: u64,
    /// A bound `version` is raised to on recovery. Kept above `version` while a change by
    /// one open could land unseen by another, at `version` otherwise (see
    /// `ServerCore::persist_file_marked`): a write is counted once its bytes are in the
    /// file, and a crash before that count is written must still tell the file's other
    /// opens that it changed. 0 in records written before the mark existed (an older
    /// server cannot read records with it: no downgrade past this).
    pub change_mark: u64,
}

pub fn encode_range(w: &mut Writer, r: &ByteRange) -> Result<(), WireError> {
    w.u64(r.offset());
    w.u64(r.len());
    Ok(())
}

pub fn decode_range(r: &mut Reader) -> Result<ByteRange, WireError> {
    let offset = r.u64()?;
    let len = r.u64()?;
    ByteRange::new(offset, len).ok_or(WireError::Invalid("byte range"))
}

pub fn decode_mode(r: &mut Reader) -> Result<Mode, WireError> {
    Mode::from_wire(r.u8()?).ok_or(WireError::Invalid("mode"))
}

pub fn decode_share(r: &mut Reader) -> Result<ShareMode, WireError> {
    ShareMode::from_wire(r.u8()?).ok_or(WireError::Invalid("share mode"))
}

impl OpenRecord {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        let mut buf = BytesMut::new();
        let mut w = Writer::new(&mut buf);
        w.u8(RECORD_VERSION);
        w.u32(self.slot);
        w.u64(self.file_id);
        w.string(&self.path, MAX_PATH)?;
        w.string(&self.owner, MAX_NAME)?;
        w.u32(self.pid);
        w.u64(self.opened_at);
        w.u8(self.mode.to_wire());
        w.u8(self.share.to_wire());
        w.list(&self.locks, MAX_LOCKS, encode_range)?;
        w.u64(self.seen_access);
        w.u64(self.seen_version);
        w.u8(match self.status {
            OpenStatus::Live => 0,
            OpenStatus::Expired => 1,
        });
        w.u64(self.deadline.map_or(0, |d| d.saturating_add(1)));
        w.list(&self.grants, MAX_GRANTS, |w, g| {
            w.u64(g.nonce);
            w.string(&g.client, MAX_NAME)
        })?;
        Ok(buf.to_vec())
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        if r.u8()? != RECORD_VERSION {
            return Err(WireError::Invalid("record version"));
        }
        let rec = OpenRecord {
            slot: r.u32()?,
            file_id: r.u64()?,
            path: r.string(MAX_PATH)?,
            owner: r.string(MAX_NAME)?,
            pid: r.u32()?,
            opened_at: r.u64()?,
            mode: decode_mode(&mut r)?,
            share: decode_share(&mut r)?,
            locks: r.list(MAX_LOCKS, decode_range)?,
            seen_access: r.u64()?,
            seen_version: r.u64()?,
            status: match r.u8()? {
                0 => OpenStatus::Live,
                1 => OpenStatus::Expired,
                _ => return Err(WireError::Invalid("open status")),
            },
            deadline: r.u64()?.checked_sub(1),
            grants: r.list(MAX_GRANTS, |r| {
                Ok(KeyGrant {
                    nonce: r.u64()?,
                    client: r.string(MAX_NAME)?,
                })
            })?,
        };
        r.finish()?;
        Ok(rec)
    }
}

impl FileRecord {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.extend_from_slice(&self.access_seq.to_be_bytes());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.change_mark.to_be_bytes());
        out
    }

    /// Decodes a record of 24 bytes, or of 16 as written before the change mark existed.
    pub fn decode(bytes: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(bytes);
        let access_seq = r.u64()?;
        let version = r.u64()?;
        let change_mark = if bytes.len() > 16 { r.u64()? } else { 0 };
        r.finish()?;
        Ok(FileRecord {
            access_seq,
            version,
            change_mark,
        })
    }

    /// The counters to serve from after a restart: a change mark above the stored version
    /// means a write may have landed whose count was not written, so the file counts as
    /// changed (and accessed) since any open last looked.
    pub fn recovered(mut self) -> Self {
        if self.change_mark > self.version {
            self.version = self.change_mark;
            self.access_seq += 1;
        }
        self
    }
}

/// A client's inbox of passed keys (printable tokens).
pub fn encode_inbox(tokens: &[String]) -> Result<Vec<u8>, WireError> {
    let mut buf = BytesMut::new();
    Writer::new(&mut buf).list(tokens, MAX_INBOX, |w, t| w.string(t, 128))?;
    Ok(buf.to_vec())
}

pub const MAX_INBOX: usize = 1024;

pub fn decode_inbox(bytes: &[u8]) -> Result<Vec<String>, WireError> {
    let mut r = Reader::new(bytes);
    let out = r.list(MAX_INBOX, |r| r.string(128))?;
    r.finish()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_record_round_trips() {
        let rec = OpenRecord {
            slot: 3,
            file_id: 77,
            path: "a/b".into(),
            owner: "c1".into(),
            pid: 9,
            opened_at: 123,
            mode: Mode::ReadWrite,
            share: ShareMode::NONE,
            locks: vec![ByteRange::new(5, 10).unwrap()],
            seen_access: 4,
            seen_version: 2,
            status: OpenStatus::Expired,
            deadline: Some(0),
            grants: vec![KeyGrant {
                nonce: 1,
                client: "c2".into(),
            }],
        };
        assert_eq!(OpenRecord::decode(&rec.encode().unwrap()).unwrap(), rec);
        let none = OpenRecord {
            deadline: None,
            ..rec
        };
        assert_eq!(OpenRecord::decode(&none.encode().unwrap()).unwrap(), none);
    }
}
