//! Every message of the control and data channels. A frame's `kind` byte selects the variant;
//! payloads are decoded strictly (bounded lengths, no trailing bytes).

use bytes::BytesMut;

use super::{Reader, WireError, Writer};
use crate::state::records::{
    decode_mode, decode_range, decode_share, encode_range, MAX_LOCKS, MAX_NAME, MAX_PATH,
};
use crate::state::{ByteRange, Mode, ResumeReport, ShareMode};

pub const PROTOCOL_VERSION: u8 = 1;
const MAX_KEY: usize = 64;
const MAX_MESSAGE: usize = 1024;
const MAX_ENDPOINTS: usize = 16;
const MAX_KEYS: usize = 1024;
/// Keys in one page of the inbox: well inside a frame (each key is a 67-character token).
pub const INBOX_PAGE: usize = 512;
/// Paths, records or counters in one drain message (a larger drain sends several).
pub const MAX_DRAIN_ITEMS: usize = 1024;
/// Bytes of one encoded open record in an `Import`.
const MAX_RECORD: usize = 32 * 1024;
/// Passed keys in one `ImportInbox` (each token is 67 characters).
pub const MAX_INBOX_BATCH: usize = 512;
/// File bytes in one `FileChunk` (under the frame's 64 KiB payload).
pub const MAX_CHUNK: usize = 60 * 1024;

/// Error classes carried on the wire; each maps to one CLI exit code. Unknown codes from a
/// newer peer are kept, not rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    Internal,
    BadRequest,
    Denied,
    NotFound,
    AuthFailed,
    Grace,
    Protocol,
    /// The server cannot change state now (its cluster store is unreachable, or it is not
    /// the active node): try again, or another server.
    Unavailable,
    /// The server's file system refused an operation on the file (no space, file too large,
    /// quota, I/O error): the request did not happen, or only partly; resending it as it is
    /// will not help.
    FileIo,
    Unknown(u16),
}

impl ErrorCode {
    pub fn to_wire(self) -> u16 {
        match self {
            ErrorCode::Internal => 1,
            ErrorCode::BadRequest => 2,
            ErrorCode::Denied => 3,
            ErrorCode::NotFound => 4,
            ErrorCode::AuthFailed => 5,
            ErrorCode::Grace => 6,
            ErrorCode::Protocol => 7,
            ErrorCode::Unavailable => 8,
            ErrorCode::FileIo => 9,
            ErrorCode::Unknown(v) => v,
        }
    }

    pub fn from_wire(v: u16) -> Self {
        match v {
            1 => ErrorCode::Internal,
            2 => ErrorCode::BadRequest,
            3 => ErrorCode::Denied,
            4 => ErrorCode::NotFound,
            5 => ErrorCode::AuthFailed,
            6 => ErrorCode::Grace,
            7 => ErrorCode::Protocol,
            8 => ErrorCode::Unavailable,
            9 => ErrorCode::FileIo,
            v => ErrorCode::Unknown(v),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointKind {
    Tcp,
    Tls,
    Rdma,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub kind: EndpointKind,
    /// `host:port`; an unspecified host (0.0.0.0, [::]) means "the host you reached me at".
    pub addr: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenParams {
    pub path: String,
    pub mode: Mode,
    pub share: ShareMode,
    pub locks: Vec<ByteRange>,
    pub create: bool,
    pub truncate: bool,
    pub pid: u32,
}

/// The state of an open as the client is told it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    pub mode: Mode,
    pub share: ShareMode,
    pub locks: Vec<ByteRange>,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    // Handshake (unauthenticated frames).
    Hello {
        version: u8,
        client: String,
        client_nonce: [u8; 32],
    },
    Challenge {
        server_nonce: [u8; 32],
        proof: [u8; 32],
    },
    Proof {
        proof: [u8; 32],
    },
    Welcome,
    AuthFailed {
        message: String,
    },
    // Control requests.
    Open(OpenParams),
    Close {
        key: Vec<u8>,
    },
    Pass {
        key: Vec<u8>,
        to: String,
    },
    /// Keys passed to this client, a page at a time: those after cursor `after` (0: from
    /// the start); answered with `Keys`.
    Inbox {
        after: u64,
    },
    Endpoints,
    Lock {
        key: Vec<u8>,
        range: ByteRange,
        take: bool,
    },
    // Data-channel requests.
    Attach {
        key: Vec<u8>,
    },
    Read {
        offset: u64,
        len: u64,
    },
    /// Answered with `Done` (go ahead), then `len` raw bytes follow, then `Written`.
    Write {
        offset: u64,
        len: u64,
    },
    /// Make written bytes durable (fdatasync); answered with `Done`.
    Flush,
    /// RDMA: the server RDMA-WRITEs up to `len` file bytes from `offset` into the client's
    /// registered buffer (`addr`, `rkey`), then answers `ReadData` with the count.
    RdmaRead {
        offset: u64,
        len: u64,
        addr: u64,
        rkey: u32,
    },
    /// RDMA: the server RDMA-READs `len` bytes from the client's buffer and writes them at
    /// `offset`; answered with `Written`.
    RdmaWrite {
        offset: u64,
        len: u64,
        addr: u64,
        rkey: u32,
    },
    /// RDMA direct mode: ask for an rkey to the file itself; answered with `FileMapped`.
    MapFile,
    /// The server's counters; answered with `StatsReply`.
    Stats,
    // Planned drain (admin and server-to-server requests).
    /// Admin: hand every open of this server to the server at `to` (its control address),
    /// then refer clients there; answered with `Drained`.
    Drain {
        to: String,
    },
    /// Server to peer: which of these paths does the peer lack? Answered with `Paths`.
    Missing {
        paths: Vec<String>,
    },
    /// Server to peer: bytes of a file the peer lacks, in order; `last` completes it.
    /// Answered with `Done`.
    FileChunk {
        path: String,
        offset: u64,
        data: Vec<u8>,
        last: bool,
    },
    /// Server to peer: opens to merge into the peer's table. `mac_key` is the sender's key
    /// for its resume keys, wrapped with this session's key-wrap key (it never travels in
    /// clear); `counters` are (path, access count, version) of the files the opens name.
    /// Answered with `Done`.
    Import {
        mac_key: [u8; 32],
        records: Vec<Vec<u8>>,
        counters: Vec<(String, u64, u64)>,
    },
    /// Server to peer (after `Import`): keys passed to `client` that it has not collected
    /// yet, for its inbox there. Answered with `Done`.
    ImportInbox {
        client: String,
        tokens: Vec<String>,
    },
    // Responses.
    /// Direct mode grant: the client may RDMA READ `[addr, addr + len)` with `rkey` until the
    /// server revokes it (a conflicting open, lock, close or expiry).
    FileMapped {
        addr: u64,
        len: u64,
        rkey: u32,
    },
    StatsReply {
        counters: Vec<(String, u64)>,
    },
    Opened {
        key: Vec<u8>,
        handle: u64,
        info: FileInfo,
    },
    Done,
    Key {
        key: Vec<u8>,
    },
    /// A page of the inbox; `next` is the cursor for the next page (0: this was the last).
    Keys {
        keys: Vec<String>,
        next: u64,
    },
    /// The server closes this connection (it was idle, or the server is stopping). Nothing
    /// the client sent after it was processed, so any request may be sent again on a new
    /// connection.
    Goodbye {
        message: String,
    },
    EndpointList {
        endpoints: Vec<Endpoint>,
        tls_fingerprint: Option<[u8; 32]>,
    },
    Attached {
        handle: u64,
        info: FileInfo,
        report: ResumeReport,
    },
    /// `len` raw bytes follow the frame.
    ReadData {
        len: u64,
    },
    Written {
        len: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
        report: Option<ResumeReport>,
        retry_after_ms: u64,
    },
    /// This server was drained: ask the server at `peer` (a control address) instead.
    Referral {
        peer: String,
    },
    Drained {
        opens: u64,
        files_sent: u64,
        bytes_sent: u64,
    },
    Paths {
        paths: Vec<String>,
    },
}

fn encode_info(w: &mut Writer, i: &FileInfo) -> Result<(), WireError> {
    w.u8(i.mode.to_wire());
    w.u8(i.share.to_wire());
    w.list(&i.locks, MAX_LOCKS, encode_range)?;
    w.u64(i.size);
    Ok(())
}

fn decode_info(r: &mut Reader) -> Result<FileInfo, WireError> {
    Ok(FileInfo {
        mode: decode_mode(r)?,
        share: decode_share(r)?,
        locks: r.list(MAX_LOCKS, decode_range)?,
        size: r.u64()?,
    })
}

fn encode_report(w: &mut Writer, r: &ResumeReport) {
    w.u8(u8::from(r.accessed_by_other)
        | u8::from(r.changed_by_other) << 1
        | u8::from(r.reopened) << 2);
}

fn decode_report(r: &mut Reader) -> Result<ResumeReport, WireError> {
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

impl Message {
    pub fn kind(&self) -> u8 {
        match self {
            Message::Hello { .. } => 0x01,
            Message::Challenge { .. } => 0x02,
            Message::Proof { .. } => 0x03,
            Message::Welcome => 0x04,
            Message::AuthFailed { .. } => 0x05,
            Message::Open(_) => 0x10,
            Message::Close { .. } => 0x11,
            Message::Pass { .. } => 0x12,
            Message::Inbox { .. } => 0x13,
            Message::Endpoints => 0x14,
            Message::Lock { .. } => 0x15,
            Message::Attach { .. } => 0x20,
            Message::Read { .. } => 0x21,
            Message::Write { .. } => 0x22,
            Message::Flush => 0x23,
            Message::RdmaRead { .. } => 0x24,
            Message::RdmaWrite { .. } => 0x25,
            Message::MapFile => 0x26,
            Message::Stats => 0x16,
            Message::Drain { .. } => 0x17,
            Message::Missing { .. } => 0x18,
            Message::FileChunk { .. } => 0x19,
            Message::Import { .. } => 0x1a,
            Message::ImportInbox { .. } => 0x1b,
            Message::Drained { .. } => 0x4a,
            Message::Referral { .. } => 0x4b,
            Message::Paths { .. } => 0x4c,
            Message::Opened { .. } => 0x40,
            Message::Done => 0x41,
            Message::Key { .. } => 0x42,
            Message::Keys { .. } => 0x43,
            Message::Goodbye { .. } => 0x4d,
            Message::EndpointList { .. } => 0x44,
            Message::Attached { .. } => 0x45,
            Message::ReadData { .. } => 0x46,
            Message::Written { .. } => 0x47,
            Message::FileMapped { .. } => 0x48,
            Message::StatsReply { .. } => 0x49,
            Message::Error { .. } => 0x4f,
        }
    }

    /// Handshake messages travel before a session key exists, without a MAC.
    pub fn is_handshake(kind: u8) -> bool {
        (0x01..=0x05).contains(&kind)
    }

    pub fn encode(&self, out: &mut BytesMut) -> Result<(), WireError> {
        let mut w = Writer::new(out);
        match self {
            Message::Hello {
                version,
                client,
                client_nonce,
            } => {
                w.u8(*version);
                w.string(client, MAX_NAME)?;
                w.raw(client_nonce);
            }
            Message::Challenge {
                server_nonce,
                proof,
            } => {
                w.raw(server_nonce);
                w.raw(proof);
            }
            Message::Proof { proof } => w.raw(proof),
            Message::Welcome => {}
            Message::AuthFailed { message } => w.string(message, MAX_MESSAGE)?,
            Message::Open(p) => {
                w.string(&p.path, MAX_PATH)?;
                w.u8(p.mode.to_wire());
                w.u8(p.share.to_wire());
                w.list(&p.locks, MAX_LOCKS, encode_range)?;
                w.bool(p.create);
                w.bool(p.truncate);
                w.u32(p.pid);
            }
            Message::Close { key } | Message::Attach { key } | Message::Key { key } => {
                w.bytes(key, MAX_KEY)?
            }
            Message::Pass { key, to } => {
                w.bytes(key, MAX_KEY)?;
                w.string(to, MAX_NAME)?;
            }
            Message::Inbox { after } => w.u64(*after),
            Message::Goodbye { message } => w.string(message, MAX_MESSAGE)?,
            Message::Endpoints
            | Message::Done
            | Message::Flush
            | Message::MapFile
            | Message::Stats => {}
            Message::Lock { key, range, take } => {
                w.bytes(key, MAX_KEY)?;
                encode_range(&mut w, range)?;
                w.bool(*take);
            }
            Message::Read { offset, len } | Message::Write { offset, len } => {
                w.u64(*offset);
                w.u64(*len);
            }
            Message::Opened { key, handle, info } => {
                w.bytes(key, MAX_KEY)?;
                w.u64(*handle);
                encode_info(&mut w, info)?;
            }
            Message::Keys { keys, next } => {
                w.list(keys, MAX_KEYS, |w, k| w.string(k, 128))?;
                w.u64(*next);
            }
            Message::EndpointList {
                endpoints,
                tls_fingerprint,
            } => {
                w.list(endpoints, MAX_ENDPOINTS, |w, e| {
                    w.u8(match e.kind {
                        EndpointKind::Tcp => 1,
                        EndpointKind::Tls => 2,
                        EndpointKind::Rdma => 3,
                    });
                    w.string(&e.addr, 256)
                })?;
                w.bool(tls_fingerprint.is_some());
                if let Some(fp) = tls_fingerprint {
                    w.raw(fp);
                }
            }
            Message::Attached {
                handle,
                info,
                report,
            } => {
                w.u64(*handle);
                encode_info(&mut w, info)?;
                encode_report(&mut w, report);
            }
            Message::ReadData { len } | Message::Written { len } => w.u64(*len),
            Message::RdmaRead {
                offset,
                len,
                addr,
                rkey,
            }
            | Message::RdmaWrite {
                offset,
                len,
                addr,
                rkey,
            } => {
                w.u64(*offset);
                w.u64(*len);
                w.u64(*addr);
                w.u32(*rkey);
            }
            Message::Drain { to } => w.string(to, 256)?,
            Message::Referral { peer } => w.string(peer, 256)?,
            Message::Missing { paths } | Message::Paths { paths } => {
                w.list(paths, MAX_DRAIN_ITEMS, |w, p| w.string(p, MAX_PATH))?
            }
            Message::FileChunk {
                path,
                offset,
                data,
                last,
            } => {
                w.string(path, MAX_PATH)?;
                w.u64(*offset);
                w.bytes(data, MAX_CHUNK)?;
                w.bool(*last);
            }
            Message::Import {
                mac_key,
                records,
                counters,
            } => {
                w.raw(mac_key);
                w.list(records, MAX_DRAIN_ITEMS, |w, r| w.bytes(r, MAX_RECORD))?;
                w.list(counters, MAX_DRAIN_ITEMS, |w, (p, a, v)| {
                    w.string(p, MAX_PATH)?;
                    w.u64(*a);
                    w.u64(*v);
                    Ok(())
                })?;
            }
            Message::ImportInbox { client, tokens } => {
                w.string(client, MAX_NAME)?;
                w.list(tokens, MAX_INBOX_BATCH, |w, t| w.string(t, 128))?;
            }
            Message::Drained {
                opens,
                files_sent,
                bytes_sent,
            } => {
                w.u64(*opens);
                w.u64(*files_sent);
                w.u64(*bytes_sent);
            }
            Message::StatsReply { counters } => w.list(counters, 64, |w, (k, v)| {
                w.string(k, 64)?;
                w.u64(*v);
                Ok(())
            })?,
            Message::FileMapped { addr, len, rkey } => {
                w.u64(*addr);
                w.u64(*len);
                w.u32(*rkey);
            }
            Message::Error {
                code,
                message,
                report,
                retry_after_ms,
            } => {
                w.u16(code.to_wire());
                w.string(message, MAX_MESSAGE)?;
                w.bool(report.is_some());
                if let Some(r) = report {
                    encode_report(&mut w, r);
                }
                w.u64(*retry_after_ms);
            }
        }
        Ok(())
    }

    pub fn decode(kind: u8, payload: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(payload);
        let msg = match kind {
            0x01 => Message::Hello {
                version: r.u8()?,
                client: r.string(MAX_NAME)?,
                client_nonce: r.array()?,
            },
            0x02 => Message::Challenge {
                server_nonce: r.array()?,
                proof: r.array()?,
            },
            0x03 => Message::Proof { proof: r.array()? },
            0x04 => Message::Welcome,
            0x05 => Message::AuthFailed {
                message: r.string(MAX_MESSAGE)?,
            },
            0x10 => Message::Open(OpenParams {
                path: r.string(MAX_PATH)?,
                mode: decode_mode(&mut r)?,
                share: decode_share(&mut r)?,
                locks: r.list(MAX_LOCKS, decode_range)?,
                create: r.bool()?,
                truncate: r.bool()?,
                pid: r.u32()?,
            }),
            0x11 => Message::Close {
                key: r.bytes(MAX_KEY)?.to_vec(),
            },
            0x12 => Message::Pass {
                key: r.bytes(MAX_KEY)?.to_vec(),
                to: r.string(MAX_NAME)?,
            },
            0x13 => Message::Inbox { after: r.u64()? },
            0x14 => Message::Endpoints,
            0x15 => Message::Lock {
                key: r.bytes(MAX_KEY)?.to_vec(),
                range: decode_range(&mut r)?,
                take: r.bool()?,
            },
            0x20 => Message::Attach {
                key: r.bytes(MAX_KEY)?.to_vec(),
            },
            0x21 => Message::Read {
                offset: r.u64()?,
                len: r.u64()?,
            },
            0x22 => Message::Write {
                offset: r.u64()?,
                len: r.u64()?,
            },
            0x23 => Message::Flush,
            0x24 => Message::RdmaRead {
                offset: r.u64()?,
                len: r.u64()?,
                addr: r.u64()?,
                rkey: r.u32()?,
            },
            0x25 => Message::RdmaWrite {
                offset: r.u64()?,
                len: r.u64()?,
                addr: r.u64()?,
                rkey: r.u32()?,
            },
            0x26 => Message::MapFile,
            0x16 => Message::Stats,
            0x17 => Message::Drain { to: r.string(256)? },
            0x4b => Message::Referral {
                peer: r.string(256)?,
            },
            0x18 => Message::Missing {
                paths: r.list(MAX_DRAIN_ITEMS, |r| r.string(MAX_PATH))?,
            },
            0x4c => Message::Paths {
                paths: r.list(MAX_DRAIN_ITEMS, |r| r.string(MAX_PATH))?,
            },
            0x19 => Message::FileChunk {
                path: r.string(MAX_PATH)?,
                offset: r.u64()?,
                data: r.bytes(MAX_CHUNK)?.to_vec(),
                last: r.bool()?,
            },
            0x1a => Message::Import {
                mac_key: r.array()?,
                records: r.list(MAX_DRAIN_ITEMS, |r| Ok(r.bytes(MAX_RECORD)?.to_vec()))?,
                counters: r.list(MAX_DRAIN_ITEMS, |r| {
                    Ok((r.string(MAX_PATH)?, r.u64()?, r.u64()?))
                })?,
            },
            0x1b => Message::ImportInbox {
                client: r.string(MAX_NAME)?,
                tokens: r.list(MAX_INBOX_BATCH, |r| r.string(128))?,
            },
            0x4a => Message::Drained {
                opens: r.u64()?,
                files_sent: r.u64()?,
                bytes_sent: r.u64()?,
            },
            0x49 => Message::StatsReply {
                counters: r.list(64, |r| Ok((r.string(64)?, r.u64()?)))?,
            },
            0x48 => Message::FileMapped {
                addr: r.u64()?,
                len: r.u64()?,
                rkey: r.u32()?,
            },
            0x40 => Message::Opened {
                key: r.bytes(MAX_KEY)?.to_vec(),
                handle: r.u64()?,
                info: decode_info(&mut r)?,
            },
            0x41 => Message::Done,
            0x42 => Message::Key {
                key: r.bytes(MAX_KEY)?.to_vec(),
            },
            0x43 => Message::Keys {
                keys: r.list(MAX_KEYS, |r| r.string(128))?,
                next: r.u64()?,
            },
            0x4d => Message::Goodbye {
                message: r.string(MAX_MESSAGE)?,
            },
            0x44 => {
                let endpoints = r.list(MAX_ENDPOINTS, |r| {
                    let kind = match r.u8()? {
                        1 => EndpointKind::Tcp,
                        2 => EndpointKind::Tls,
                        3 => EndpointKind::Rdma,
                        _ => return Err(WireError::Invalid("endpoint kind")),
                    };
                    Ok(Endpoint {
                        kind,
                        addr: r.string(256)?,
                    })
                })?;
                let tls_fingerprint = if r.bool()? { Some(r.array()?) } else { None };
                Message::EndpointList {
                    endpoints,
                    tls_fingerprint,
                }
            }
            0x45 => Message::Attached {
                handle: r.u64()?,
                info: decode_info(&mut r)?,
                report: decode_report(&mut r)?,
            },
            0x46 => Message::ReadData { len: r.u64()? },
            0x47 => Message::Written { len: r.u64()? },
            0x4f => {
                let code = ErrorCode::from_wire(r.u16()?);
                let message = r.string(MAX_MESSAGE)?;
                let report = if r.bool()? {
                    Some(decode_report(&mut r)?)
                } else {
                    None
                };
                Message::Error {
                    code,
                    message,
                    report,
                    retry_after_ms: r.u64()?,
                }
            }
            other => return Err(WireError::UnknownKind(other)),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let info = FileInfo {
            mode: Mode::ReadWrite,
            share: ShareMode::NONE,
            locks: vec![ByteRange::new(1, 2).unwrap()],
            size: 99,
        };
        let report = ResumeReport {
            accessed_by_other: true,
            changed_by_other: false,
            reopened: true,
        };
        let all = vec![
            Message::Hello {
                version: 1,
                client: "c1".into(),
                client_nonce: [2; 32],
            },
            Message::Challenge {
                server_nonce: [1; 32],
                proof: [3; 32],
            },
            Message::Proof { proof: [3; 32] },
            Message::Welcome,
            Message::AuthFailed {
                message: "no".into(),
            },
            Message::Open(OpenParams {
                path: "a".into(),
                mode: Mode::Read,
                share: ShareMode::ALL,
                locks: vec![ByteRange::new(0, 5).unwrap()],
                create: true,
                truncate: false,
                pid: 7,
            }),
            Message::Close { key: vec![1, 2] },
            Message::Pass {
                key: vec![3],
                to: "c2".into(),
            },
            Message::Inbox { after: 0 },
            Message::Inbox { after: 77 },
            Message::Endpoints,
            Message::Lock {
                key: vec![4],
                range: ByteRange::new(9, 1).unwrap(),
                take: true,
            },
            Message::Attach { key: vec![5] },
            Message::Read { offset: 1, len: 2 },
            Message::Write { offset: 3, len: 4 },
            Message::Flush,
            Message::RdmaRead {
                offset: 1,
                len: 2,
                addr: 3,
                rkey: 4,
            },
            Message::RdmaWrite {
                offset: 5,
                len: 6,
                addr: 7,
                rkey: 8,
            },
            Message::MapFile,
            Message::Stats,
            Message::StatsReply {
                counters: vec![("a".into(), 1)],
            },
            Message::FileMapped {
                addr: 9,
                len: 10,
                rkey: 11,
            },
            Message::Opened {
                key: vec![6],
                handle: 8,
                info: info.clone(),
            },
            Message::Done,
            Message::Key { key: vec![7] },
            Message::Keys {
                keys: vec!["a".into(), "b".into()],
                next: 12,
            },
            Message::Goodbye {
                message: "idle".into(),
            },
            Message::EndpointList {
                endpoints: vec![Endpoint {
                    kind: EndpointKind::Tls,
                    addr: "127.0.0.1:1".into(),
                }],
                tls_fingerprint: Some([5; 32]),
            },
            Message::Attached {
                handle: 3,
                info,
                report,
            },
            Message::ReadData { len: 10 },
            Message::Written { len: 11 },
            Message::Drain {
                to: "127.0.0.1:2".into(),
            },
            Message::Referral {
                peer: "127.0.0.1:3".into(),
            },
            Message::Missing {
                paths: vec!["a/b".into()],
            },
            Message::Paths {
                paths: vec!["c".into(), "d".into()],
            },
            Message::FileChunk {
                path: "a/b".into(),
                offset: 60,
                data: vec![1, 2, 3],
                last: true,
            },
            Message::Import {
                mac_key: [9; 32],
                records: vec![vec![1, 2], vec![]],
                counters: vec![("a/b".into(), 4, 5)],
            },
            Message::ImportInbox {
                client: "bob".into(),
                tokens: vec!["k1".into(), "k2".into()],
            },
            Message::Drained {
                opens: 1,
                files_sent: 2,
                bytes_sent: 3,
            },
            Message::Error {
                code: ErrorCode::Unknown(77),
                message: "x".into(),
                report: Some(report),
                retry_after_ms: 5,
            },
        ];
        for m in all {
            let mut buf = BytesMut::new();
            m.encode(&mut buf).unwrap();
            assert_eq!(Message::decode(m.kind(), &buf).unwrap(), m);
            if !buf.is_empty() {
                assert!(
                    Message::decode(m.kind(), &buf[..buf.len() - 1]).is_err(),
                    "{m:?} truncated"
                );
            }
            buf.extend_from_slice(&[0]);
            assert!(
                Message::decode(m.kind(), &buf).is_err(),
                "{m:?} with a trailing byte"
            );
        }
        assert_eq!(
            Message::decode(0x99, &[]),
            Err(WireError::UnknownKind(0x99))
        );
    }
}
