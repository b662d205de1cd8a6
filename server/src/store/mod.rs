//! The stores a server writes its state through: the interface and the in-memory store come
//! from the core; the embedded (redb) and cluster (etcd) stores live here.

mod etcd_store;
mod redb_store;

pub use etcd_store::EtcdStore;
pub use handoff_core::store::*;
pub use redb_store::RedbStore;
