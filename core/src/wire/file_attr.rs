//! What the namespace requests answer: a file's attributes (`stat`) and a directory's entries
//! (a page of a listing).

/// Bytes of one name in a directory (Linux's `NAME_MAX`).
pub const MAX_FILE_NAME: usize = 255;
/// Entries in one page of a listing: well inside a frame (an entry is at most about 330
/// bytes).
pub const LIST_PAGE: usize = 128;

/// What a directory entry is. A kind this side does not know (from a newer server) is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    File,
    Directory,
    /// A symbolic link that leads nowhere beneath the root (one that does is shown as what
    /// it leads to, as opens follow it).
    Symlink,
    /// A FIFO, socket or device: listed, never opened.
    Other,
    Unknown(u8),
}

impl FileKind {
    pub fn to_wire(self) -> u8 {
        match self {
            FileKind::File => 1,
            FileKind::Directory => 2,
            FileKind::Symlink => 3,
            FileKind::Other => 4,
            FileKind::Unknown(v) => v,
        }
    }

    pub fn from_wire(v: u8) -> Self {
        match v {
            1 => FileKind::File,
            2 => FileKind::Directory,
            3 => FileKind::Symlink,
            4 => FileKind::Other,
            v => FileKind::Unknown(v),
        }
    }
}

/// A point in time: seconds since the Unix epoch and nanoseconds (below 10^9).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

/// A file's attributes as the server's file system reports them. No owner travels: uid and
/// gid mean nothing on the client's host, and the mount shows files as its user's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileAttr {
    pub kind: FileKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub perm: u16,
    pub size: u64,
    /// 512-byte blocks allocated (`st_blocks`).
    pub blocks: u64,
    pub nlink: u32,
    /// The server's inode number, for display only (files on different file systems beneath
    /// the root may share one).
    pub ino: u64,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
}

/// One entry of a directory listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub attr: FileAttr,
}
