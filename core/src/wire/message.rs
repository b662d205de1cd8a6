//! Every message of the control and data channels, in one table: a frame's `kind` byte
//! selects the variant; payloads are decoded strictly (bounded lengths, no trailing bytes).

pub use super::file_attr::{DirEntry, FileAttr, LIST_PAGE, MAX_FILE_NAME};
use super::message_table::{ignore_then, message_table};
pub use crate::state::records::{MAX_LOCKS, MAX_NAME, MAX_PATH};
use crate::state::{Attached, ByteRange, Mode, OpenSummary, ResumeReport, ShareMode};

pub const PROTOCOL_VERSION: u8 = 1;
/// Bytes of a resume key in a request: room above today's sealed key (`SEALED_LEN`, 50) for
/// a longer format; the server checks the exact length before it looks a key up.
pub const MAX_KEY: usize = 64;
/// Bytes of a human-readable message (an error, a refusal, a goodbye).
pub const MAX_MESSAGE: usize = 1024;
/// Bytes of a network address (`host:port`).
pub const MAX_ADDR: usize = 256;
/// Bytes of a resume-key token (its printable form, 67 characters today).
pub const MAX_TOKEN: usize = 128;
/// Data endpoints one server advertises.
pub const MAX_ENDPOINTS: usize = 16;
/// Keys in one `Keys` reply.
pub const MAX_KEYS: usize = 1024;
/// Counters in one `StatsReply`, and bytes of a counter's name.
pub const MAX_COUNTERS: usize = 64;
pub const MAX_COUNTER_NAME: usize = 64;
/// Keys in one page of the inbox: well inside a frame (each key is a 67-character token).
pub const INBOX_PAGE: usize = 512;
/// Paths, records or counters in one drain message (a larger drain sends several).
pub const MAX_DRAIN_ITEMS: usize = 1024;
/// Opens in one `OpenList` page at most (the server also keeps a page inside a frame).
pub const ADMIN_PAGE: usize = 1024;
/// Bytes of one encoded open record in an `Import`.
pub const MAX_RECORD: usize = 32 * 1024;
/// Passed keys in one `ImportInbox` (each token is 67 characters).
pub const MAX_INBOX_BATCH: usize = 512;
/// File bytes in one `FileChunk` (under the frame's 64 KiB payload).
pub const MAX_CHUNK: usize = 60 * 1024;
/// Requests in one `RdmaReadMany`/`RdmaWriteMany` (24 bytes each: well inside an RDMA
/// message slot).
pub const MAX_BATCH: usize = 64;

/// One request of a batch: `len` file bytes at `offset`, to or from the client's registered
/// buffer at `addr` (under the batch's rkey).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub offset: u64,
    pub len: u64,
    pub addr: u64,
}

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
    /// A namespace change met a name that exists (`EEXIST`).
    Exists,
    /// A directory to remove or replace is not empty (`ENOTEMPTY`).
    NotEmpty,
    /// A directory where a file was expected (`EISDIR`).
    IsDirectory,
    /// Something other than a directory where one was expected (`ENOTDIR`).
    NotDirectory,
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
            ErrorCode::Exists => 10,
            ErrorCode::NotEmpty => 11,
            ErrorCode::IsDirectory => 12,
            ErrorCode::NotDirectory => 13,
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
            10 => ErrorCode::Exists,
            11 => ErrorCode::NotEmpty,
            12 => ErrorCode::IsDirectory,
            13 => ErrorCode::NotDirectory,
            v => ErrorCode::Unknown(v),
        }
    }
}

/// A data channel's transport; a kind this side does not know (from a newer server) is kept,
/// and a client passes over it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointKind {
    Tcp,
    Tls,
    Rdma,
    Unknown(u8),
}

impl EndpointKind {
    pub fn to_wire(self) -> u8 {
        match self {
            EndpointKind::Tcp => 1,
            EndpointKind::Tls => 2,
            EndpointKind::Rdma => 3,
            EndpointKind::Unknown(v) => v,
        }
    }

    pub fn from_wire(v: u8) -> Self {
        match v {
            1 => EndpointKind::Tcp,
            2 => EndpointKind::Tls,
            3 => EndpointKind::Rdma,
            v => EndpointKind::Unknown(v),
        }
    }
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

message_table! {
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Message {
        // Handshake (unauthenticated frames: 0x01..=0x05).
        0x01 => Hello {
            version: u8 = byte,
            client: String = text(MAX_NAME),
            client_nonce: [u8; 32] = key32,
        },
        0x02 => Challenge {
            server_nonce: [u8; 32] = key32,
            proof: [u8; 32] = key32,
        },
        0x03 => Proof { proof: [u8; 32] = key32 },
        0x04 => Welcome,
        0x05 => AuthFailed { message: String = text(MAX_MESSAGE) },
        // Control requests.
        0x10 => Open(OpenParams = open(MAX_PATH)),
        0x11 => Close { key: Vec<u8> = blob(MAX_KEY) },
        0x12 => Pass {
            key: Vec<u8> = blob(MAX_KEY),
            to: String = text(MAX_NAME),
        },
        /// Keys passed to this client, a page at a time: those after cursor `after` (0: from
        /// the start); answered with `Keys`.
        0x13 => Inbox { after: u64 = long },
        0x14 => Endpoints,
        0x15 => Lock {
            key: Vec<u8> = blob(MAX_KEY),
            range: ByteRange = range,
            take: bool = flag,
        },
        /// The server's counters; answered with `StatsReply`.
        0x16 => Stats,
        // Planned drain (admin and server-to-server requests).
        /// Admin: hand every open of this server to the server at `to` (its control address),
        /// then refer clients there; answered with `Drained`.
        0x17 => Drain { to: String = text(MAX_ADDR) },
        /// Server to peer: which of these paths does the peer lack? Answered with `Paths`.
        0x18 => Missing { paths: Vec<String> = texts(MAX_DRAIN_ITEMS, MAX_PATH) },
        /// Server to peer: bytes of a file the peer lacks, in order; `last` completes it.
        /// Answered with `Done`.
        0x19 => FileChunk {
            path: String = text(MAX_PATH),
            offset: u64 = long,
            data: Vec<u8> = blob(MAX_CHUNK),
            last: bool = flag,
        },
        /// Server to peer: opens to merge into the peer's table. `mac_key` is the sender's key
        /// for its resume keys, wrapped with this session's key-wrap key (it never travels in
        /// clear); `counters` are (path, access count, version) of the files the opens name.
        /// Answered with `Done`.
        0x1a => Import {
            mac_key: [u8; 32] = key32,
            records: Vec<Vec<u8>> = blobs(MAX_DRAIN_ITEMS, MAX_RECORD),
            counters: Vec<(String, u64, u64)> = file_counters(MAX_DRAIN_ITEMS, MAX_PATH),
        },
        /// Server to peer (after `Import`): keys passed to `client` that it has not collected
        /// yet, for its inbox there. Answered with `Done`.
        0x1b => ImportInbox {
            client: String = text(MAX_NAME),
            tokens: Vec<String> = texts(MAX_INBOX_BATCH, MAX_TOKEN),
        },
        /// Admin: a page of every open of this server, those after slot `after` (0: from
        /// the start); answered with `OpenList`.
        0x1c => AdminOpens { after: u64 = long },
        /// Admin: force-close the opens named by one of a key (anyone's), a client (every
        /// open it made or holds a key to) or a path; the others are empty. Answered with
        /// `ClosedOpens`.
        0x1d => AdminClose {
            key: Vec<u8> = blob(MAX_KEY),
            client: String = text(MAX_NAME),
            path: String = text(MAX_PATH),
        },
        // Namespace requests (control channel), paths confined beneath the root like opens.
        /// A file's attributes (links beneath the root followed); answered with `Attributes`.
        0x30 => Stat { path: String = text(MAX_PATH) },
        /// A directory's entries sorted by name, those after the name `after` ("": from the
        /// start); answered with `Entries`.
        0x31 => List {
            path: String = text(MAX_PATH),
            after: String = text(MAX_FILE_NAME),
        },
        /// Makes a directory (with its missing parents if `parents`); answered with `Done`.
        0x32 => MakeDir {
            path: String = text(MAX_PATH),
            parents: bool = flag,
        },
        /// Removes a file (or, with `dir`, an empty directory); answered with `Done`. Refused
        /// while another client's open of the file does not share delete.
        0x33 => Remove {
            path: String = text(MAX_PATH),
            dir: bool = flag,
        },
        /// Renames `from` to `to`, replacing a file there; answered with `Done`. Refused while
        /// another client's open of either file does not share delete.
        0x34 => Rename {
            from: String = text(MAX_PATH),
            to: String = text(MAX_PATH),
        },
        /// Sets a regular file's size; answered with `Done`. Refused while another client's
        /// open of it does not share write, or holds a lock on bytes past `size`.
        0x35 => Truncate {
            path: String = text(MAX_PATH),
            size: u64 = long,
        },
        // Data-channel requests.
        0x20 => Attach { key: Vec<u8> = blob(MAX_KEY) },
        0x21 => Read {
            offset: u64 = long,
            len: u64 = long,
        },
        /// Answered with `Done` (go ahead), then `len` raw bytes follow, then `Written`.
        0x22 => Write {
            offset: u64 = long,
            len: u64 = long,
        },
        /// Make written bytes durable (fdatasync); answered with `Done`.
        0x23 => Flush,
        /// RDMA: the server RDMA-WRITEs up to `len` file bytes from `offset` into the client's
        /// registered buffer (`addr`, `rkey`), then answers `ReadData` with the count.
        0x24 => RdmaRead {
            offset: u64 = long,
            len: u64 = long,
            addr: u64 = long,
            rkey: u32 = word,
        },
        /// RDMA: the server RDMA-READs `len` bytes from the client's buffer and writes them at
        /// `offset`; answered with `Written`.
        0x25 => RdmaWrite {
            offset: u64 = long,
            len: u64 = long,
            addr: u64 = long,
            rkey: u32 = word,
        },
        /// RDMA, small requests: several `RdmaRead`s in one message, each its own RDMA WRITE
        /// into the client's buffer at its `addr` (all under `rkey`), served in order; answered
        /// with one `ReadMany`, or with the first item's refusal (items after it are not
        /// served).
        0x29 => RdmaReadMany {
            rkey: u32 = word,
            items: Vec<Span> = spans(MAX_BATCH),
        },
        /// RDMA, small requests: several `RdmaWrite`s in one message, each its own RDMA READ
        /// from the client's buffer (all under `rkey`), each checked and landing as a single
        /// `RdmaWrite` would; answered with one `Written` of their total, or with the first
        /// item's refusal (each other item was written or refused on its own).
        0x2a => RdmaWriteMany {
            rkey: u32 = word,
            items: Vec<Span> = spans(MAX_BATCH),
        },
        /// RDMA direct mode: ask for an rkey to the file itself; answered with `FileMapped`.
        0x26 => MapFile,
        /// RDMA direct writes: ask for an rkey the client may also RDMA WRITE through (an open
        /// with mode rw that is the file's only live open); answered with `FileMapped`.
        0x27 => MapFileWrite,
        /// After direct writes: make them durable and count `[offset, offset + len)` as written
        /// by this handle (the file's change counters); answered with `Done`.
        0x28 => DirectFlush {
            offset: u64 = long,
            len: u64 = long,
        },
        // Responses.
        0x40 => Opened {
            key: Vec<u8> = blob(MAX_KEY),
            handle: u64 = long,
            info: FileInfo = info,
        },
        0x41 => Done,
        0x42 => Key { key: Vec<u8> = blob(MAX_KEY) },
        /// A page of the inbox; `next` is the cursor for the next page (0: this was the last).
        0x43 => Keys {
            keys: Vec<String> = texts(MAX_KEYS, MAX_TOKEN),
            next: u64 = long,
        },
        0x44 => EndpointList {
            endpoints: Vec<Endpoint> = endpoints(MAX_ENDPOINTS, MAX_ADDR),
            tls_fingerprint: Option<[u8; 32]> = maybe_key32,
        },
        0x45 => Attached {
            handle: u64 = long,
            info: FileInfo = info,
            report: ResumeReport = report,
        },
        /// `len` raw bytes follow the frame.
        0x46 => ReadData { len: u64 = long },
        0x47 => Written { len: u64 = long },
        /// The answer to `RdmaReadMany`: bytes read per item, in order (fewer at the end of
        /// the file; every item after a short one is 0).
        0x54 => ReadMany { lens: Vec<u64> = longs(MAX_BATCH) },
        /// Direct mode grant: the client may RDMA READ (after `MapFileWrite`, also WRITE)
        /// `[addr, addr + len)` with `rkey` until the server revokes it (a conflicting open, lock, close or expiry).
        0x48 => FileMapped {
            addr: u64 = long,
            len: u64 = long,
            rkey: u32 = word,
        },
        0x49 => StatsReply {
            counters: Vec<(String, u64)> = counters(MAX_COUNTERS, MAX_COUNTER_NAME),
        },
        0x4a => Drained {
            opens: u64 = long,
            files_sent: u64 = long,
            bytes_sent: u64 = long,
        },
        /// This server was drained: ask the server at `peer` (a control address) instead.
        0x4b => Referral { peer: String = text(MAX_ADDR) },
        0x4c => Paths { paths: Vec<String> = texts(MAX_DRAIN_ITEMS, MAX_PATH) },
        /// The server closes this connection (it was idle, or the server is stopping). Nothing
        /// the client sent after it was processed, so any request may be sent again on a new
        /// connection.
        0x4d => Goodbye { message: String = text(MAX_MESSAGE) },
        0x50 => Attributes { attr: FileAttr = attr },
        /// A page of a listing; `next` is the name to list after for the next page ("": this
        /// was the last).
        0x51 => Entries {
            entries: Vec<DirEntry> = entries(LIST_PAGE, MAX_FILE_NAME),
            next: String = text(MAX_FILE_NAME),
        },
        /// A page of `AdminOpens`; `next` is the cursor for the next page (0: the last).
        0x52 => OpenList {
            opens: Vec<OpenSummary> = summaries(ADMIN_PAGE, MAX_PATH),
            next: u64 = long,
        },
        0x53 => ClosedOpens { count: u64 = long },
        0x4f => Error {
            code: ErrorCode = code,
            message: String = text(MAX_MESSAGE),
            report: Option<ResumeReport> = maybe_report,
            retry_after_ms: u64 = long,
        },
    }
}

impl Message {
    /// The answer to a data channel's `Attach`: its duplicate handle, the open's rights on a
    /// file of `size` bytes, and what happened to the file meanwhile.
    pub fn attached(attached: &Attached, size: u64) -> Message {
        Message::Attached {
            handle: attached.handle,
            info: FileInfo {
                mode: attached.mode,
                share: attached.share,
                locks: attached.locks.clone(),
                size,
            },
            report: attached.report,
        }
    }

    /// Handshake messages travel before a session key exists, without a MAC.
    pub fn is_handshake(kind: u8) -> bool {
        (0x01..=0x05).contains(&kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::WireError;
    use bytes::BytesMut;

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
        let t = |secs, nanos| super::super::file_attr::Timestamp { secs, nanos };
        let attr = FileAttr {
            kind: super::super::file_attr::FileKind::Directory,
            perm: 0o755,
            size: 4096,
            blocks: 8,
            nlink: 2,
            ino: 77,
            atime: t(-1, 0),
            mtime: t(1_700_000_000, 999_999_999),
            ctime: t(5, 6),
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
            Message::RdmaReadMany {
                rkey: 14,
                items: vec![
                    Span {
                        offset: 1,
                        len: 2,
                        addr: 3,
                    },
                    Span {
                        offset: 4,
                        len: 5,
                        addr: 6,
                    },
                ],
            },
            Message::RdmaWriteMany {
                rkey: 15,
                items: vec![Span {
                    offset: 7,
                    len: 8,
                    addr: 9,
                }],
            },
            Message::ReadMany {
                lens: vec![4096, 0],
            },
            Message::MapFile,
            Message::MapFileWrite,
            Message::DirectFlush {
                offset: 12,
                len: 13,
            },
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
            Message::AdminOpens { after: 3 },
            Message::AdminClose {
                key: vec![],
                client: "alice".into(),
                path: String::new(),
            },
            Message::OpenList {
                opens: vec![crate::state::OpenSummary {
                    slot: 4,
                    path: "d/f".into(),
                    owner: "alice".into(),
                    holders: vec!["alice".into(), "bob".into()],
                    mode: Mode::ReadWrite,
                    share: ShareMode::ALL,
                    locks: vec![ByteRange::new(0, 5).unwrap()],
                    channels: 2,
                    state: crate::state::OpenState::Durable,
                    deadline_ms: 99,
                }],
                next: 4,
            },
            Message::ClosedOpens { count: 2 },
            Message::Stat { path: "a".into() },
            Message::List {
                path: "d".into(),
                after: "x".into(),
            },
            Message::MakeDir {
                path: "d/e".into(),
                parents: true,
            },
            Message::Remove {
                path: "f".into(),
                dir: false,
            },
            Message::Rename {
                from: "a".into(),
                to: "b".into(),
            },
            Message::Truncate {
                path: "f".into(),
                size: 7,
            },
            Message::Attributes { attr },
            Message::Entries {
                entries: vec![DirEntry {
                    name: "f".into(),
                    attr: FileAttr {
                        kind: super::super::file_attr::FileKind::Unknown(9),
                        ..attr
                    },
                }],
                next: "f".into(),
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

    #[test]
    fn error_codes_travel_and_unknown_ones_are_kept() {
        for v in 0..=20u16 {
            assert_eq!(ErrorCode::from_wire(v).to_wire(), v);
        }
        assert_eq!(ErrorCode::from_wire(11), ErrorCode::NotEmpty);
        assert_eq!(ErrorCode::from_wire(14), ErrorCode::Unknown(14));
    }

    #[test]
    fn an_unknown_endpoint_kind_is_kept_not_rejected() {
        let list = Message::EndpointList {
            endpoints: vec![
                Endpoint {
                    kind: EndpointKind::Unknown(9),
                    addr: "10.0.0.1:7".into(),
                },
                Endpoint {
                    kind: EndpointKind::Tcp,
                    addr: "10.0.0.1:8".into(),
                },
            ],
            tls_fingerprint: None,
        };
        let mut buf = BytesMut::new();
        list.encode(&mut buf).unwrap();
        assert_eq!(Message::decode(list.kind(), &buf).unwrap(), list);
    }
}
