//! Why a server must stop serving at once: its cluster lease is gone (another node may be
//! active), or its store refused a write it cannot do without. The first cause is kept; from
//! then on every state change and every file write is refused with it, and the process that
//! owns the server (`handoffd`) waits on it and exits with its status. The library itself
//! never exits the process.

use std::sync::OnceLock;

use tokio::sync::Notify;

use crate::store::StoreError;
use crate::Error;

/// Exit status of a server that could not write its state to the store.
pub const EXIT_STORE_FAILED: i32 = 70;
/// Exit status of a cluster node that lost its lease: another node may be active.
pub const EXIT_FENCED: i32 = 75;

/// A reason to stop, with the exit status it calls for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fatal {
    pub code: i32,
    pub why: String,
}

#[derive(Default)]
pub struct Stop {
    first: OnceLock<Fatal>,
    raised: Notify,
}

impl Stop {
    /// Records `why` (unless a cause was recorded already) and returns the error to answer
    /// the request that found it with.
    pub fn raise(&self, code: i32, why: String) -> Error {
        if self.first.set(Fatal { code, why }).is_ok() {
            let f = self.first.get().expect("just set");
            tracing::error!(code = f.code, "{}; stopping", f.why);
            self.raised.notify_waiters();
        }
        self.error()
            .unwrap_or_else(|| Error::Protocol("stopping".into()))
    }

    /// A fenced node: it must change nothing more.
    pub fn fenced(&self, why: &str) -> Error {
        self.raise(EXIT_FENCED, format!("fenced: {why}"))
    }

    /// The refusal every request gets once the server is stopping.
    fn error(&self) -> Option<Error> {
        self.first.get().map(|f| {
            Error::Store(match f.code {
                EXIT_FENCED => StoreError::Fenced(f.why.clone()),
                _ => StoreError::Failed(f.why.clone()),
            })
        })
    }

    /// Refuses once a cause was raised.
    pub fn check(&self) -> Result<(), Error> {
        match self.error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits until a cause is raised; returns it.
    pub async fn wait(&self) -> Fatal {
        loop {
            let raised = self.raised.notified();
            if let Some(f) = self.first.get() {
                return f.clone();
            }
            raised.await;
        }
    }
}
