//! Where server state lives between restarts. The core emits [`Mutation`]s; a [`Store`] applies
//! each batch atomically before the reply that depends on it is sent.

mod etcd_store;
mod memory;
mod redb_store;

pub use etcd_store::EtcdStore;
pub use memory::MemoryStore;
pub use redb_store::RedbStore;

use crate::state::records::{FileRecord, OpenRecord};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    PutMacKey([u8; 32]),
    PutNextSlot(u32),
    PutOpen(OpenRecord),
    DeleteOpen(u32),
    PutFile(u64, FileRecord),
    DeleteFile(u64),
    PutInbox(String, Vec<String>),
}

/// Everything a server needs to rebuild its tables.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub mac_key: Option<[u8; 32]>,
    pub next_slot: u32,
    pub opens: Vec<OpenRecord>,
    pub files: Vec<(u64, FileRecord)>,
    pub inboxes: Vec<(String, Vec<String>)>,
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
    #[error("store holds a corrupt record under {table}: {source}")]
    Corrupt {
        table: &'static str,
        source: crate::wire::WireError,
    },
}

pub trait Store: Send {
    fn load(&self) -> Result<Snapshot, StoreError>;
    /// Whether this node may write now. An embedded store always may; a cluster store only
    /// while this node is active and its lease is confirmed.
    fn health(&self) -> crate::cluster::Health {
        crate::cluster::Health::Active
    }
    /// Applies a batch atomically and durably (on return, a crash keeps all of it).
    fn apply(&mut self, batch: &[Mutation]) -> Result<(), StoreError>;
}
