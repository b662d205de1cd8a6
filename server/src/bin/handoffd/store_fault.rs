//! Test hook (`HANDOFFD_FAULT_STORE_WRITES=N`): the embedded store takes N batches, then
//! refuses every write, as a store on a failing disk would. The end-to-end tests use it to
//! check that the server stops (exit 70) and loses nothing it confirmed.

use handoff_server::store::{Fence, Mutation, Snapshot, Store, StoreError};

pub struct FailingStore {
    inner: Box<dyn Store>,
    left: u64,
}

impl FailingStore {
    /// `store`, or `store` behind the hook when the variable is set.
    pub fn wrap(store: Box<dyn Store>) -> Box<dyn Store> {
        match std::env::var("HANDOFFD_FAULT_STORE_WRITES").map(|v| v.parse::<u64>()) {
            Ok(Ok(left)) => {
                tracing::warn!("test hook: the store fails every write after {left} batches");
                Box::new(Self { inner: store, left })
            }
            _ => store,
        }
    }
}

impl Store for FailingStore {
    fn load(&self) -> Result<Snapshot, StoreError> {
        self.inner.load()
    }

    fn fence(&self) -> Option<std::sync::Arc<dyn Fence>> {
        self.inner.fence()
    }

    fn apply(&mut self, batch: &[Mutation]) -> Result<(), StoreError> {
        if self.left == 0 {
            return Err(StoreError::Backend(
                "injected fault: the disk refused a write".into(),
            ));
        }
        self.left -= 1;
        self.inner.apply(batch)
    }
}
