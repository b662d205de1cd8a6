//! Where server state lives between restarts. The core emits [`Mutation`]s; a [`Store`] applies
//! each batch atomically before the reply that depends on it is sent (a read's access count
//! is the exception: the server writes it lazily). This crate holds the
//! trait and the in-memory store; the embedded (redb) and cluster (etcd) stores are the server's.

mod memory;

pub use memory::MemoryStore;

use crate::state::records::{FileRecord, OpenRecord};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    PutMacKey([u8; 32]),
    PutNextSlot(u32),
    PutOpen(OpenRecord),
    DeleteOpen(u32),
    PutFile(u64, FileRecord),
    DeleteFile(u64),
    /// A key passed to a client, waiting in its inbox under cursor `seq`.
    PutInboxKey(InboxKey),
    DeleteInboxKey {
        client: String,
        seq: u64,
    },
    /// Drops a client's inbox stored whole, as stores written before paged inboxes kept it
    /// (its keys were rewritten one by one first).
    DeleteLegacyInbox(String),
    /// The resume-key MAC key of a server that drained into this one (index `.0`).
    PutForeignKey(u32, [u8; 32]),
    /// An imported open: keys sealed by foreign key `origin` naming `old_slot` (and
    /// `old_file_id`) resolve to this server's `slot`.
    PutAlias(Alias),
    DeleteAlias {
        origin: u32,
        old_slot: u32,
    },
    /// Drained: every client is referred to this peer (None: serving).
    PutReferral(Option<String>),
    /// A drain into this peer began and has not finished: a restart carries it on.
    PutDraining(Option<String>),
}

/// One key waiting in a client's inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxKey {
    pub client: String,
    pub seq: u64,
    pub token: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Alias {
    pub origin: u32,
    pub old_slot: u32,
    pub slot: u32,
    pub old_file_id: u64,
}

impl Alias {
    pub fn encode(&self) -> [u8; 20] {
        let mut out = [0u8; 20];
        out[..4].copy_from_slice(&self.origin.to_be_bytes());
        out[4..8].copy_from_slice(&self.old_slot.to_be_bytes());
        out[8..12].copy_from_slice(&self.slot.to_be_bytes());
        out[12..].copy_from_slice(&self.old_file_id.to_be_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, crate::codec::WireError> {
        let mut r = crate::codec::Reader::new(b);
        let a = Alias {
            origin: r.u32()?,
            old_slot: r.u32()?,
            slot: r.u32()?,
            old_file_id: r.u64()?,
        };
        r.finish()?;
        Ok(a)
    }
}

/// Everything a server needs to rebuild its tables.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub mac_key: Option<[u8; 32]>,
    pub next_slot: u32,
    pub opens: Vec<OpenRecord>,
    pub files: Vec<(u64, FileRecord)>,
    pub inbox: Vec<InboxKey>,
    /// Whole inboxes as stores written before paged inboxes kept them, by client.
    pub legacy_inboxes: Vec<(String, Vec<String>)>,
    pub foreign_keys: Vec<(u32, [u8; 32])>,
    pub aliases: Vec<Alias>,
    pub referral: Option<String>,
    pub draining: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(String),
    /// The store cannot be reached now (etcd down or cut off); it may come back.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// This node lost the right to write (its cluster lease ended): it must stop serving.
    #[error("fenced: {0}")]
    Fenced(String),
    /// A write the server cannot do without failed: it stops serving (a restart recovers the
    /// last state the store took).
    #[error("{0}; the server stops")]
    Failed(String),
    /// The store's file cannot be used and will not be replaced without the operator.
    #[error("{0}")]
    Damaged(String),
    #[error("store holds a corrupt record under {table}: {source}")]
    Corrupt {
        table: &'static str,
        source: crate::codec::WireError,
    },
}

pub trait Store: Send {
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// What decides whether this node may write (a cluster lease: only while it is active
    /// and the lease is confirmed). None: an embedded store, which always may.
    fn fence(&self) -> Option<std::sync::Arc<dyn Fence>> {
        None
    }
    /// Applies a batch atomically and durably (on return, a crash keeps all of it).
    fn apply(&mut self, batch: &[Mutation]) -> Result<(), StoreError>;
}

/// Whether this node may change state now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Leader with a live lease that etcd confirmed recently.
    Active,
    /// Not (yet) the leader.
    Passive,
    /// Leader, but etcd has not confirmed the lease lately (unreachable): no state may change
    /// until it does; reads of open files may go on.
    Suspended(String),
    /// etcd says the lease is gone: another node may be active. This node must stop.
    Fenced(String),
}

/// Whether this node may change state: a cluster's lease, read without any lock.
pub trait Fence: Send + Sync {
    fn health(&self) -> Health;
}
