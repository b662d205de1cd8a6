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

/// The refusal every request gets once the server is stopping for `f`.
fn refusal(f: &Fatal) -> Error {
    Error::Store(match f.code {
        EXIT_FENCED => StoreError::Fenced(f.why.clone()),
        _ => StoreError::Failed(f.why.clone()),
    })
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
        let mut first = false;
        let f = self.first.get_or_init(|| {
            first = true;
            Fatal { code, why }
        });
        if first {
            tracing::error!(code = f.code, "{}; stopping", f.why);
            self.raised.notify_waiters();
        }
        refusal(f)
    }

    /// A fenced node: it must change nothing more.
    pub fn fenced(&self, why: &str) -> Error {
        self.raise(EXIT_FENCED, format!("fenced: {why}"))
    }

    /// The store refused a write the server cannot do without.
    pub fn store_failed(&self, e: &StoreError) -> Error {
        self.raise(
            EXIT_STORE_FAILED,
            format!("cannot write state to the store: {e}"),
        )
    }

    /// Refuses once a cause was raised.
    pub fn check(&self) -> Result<(), Error> {
        match self.first.get() {
            Some(f) => Err(refusal(f)),
            None => Ok(()),
        }
    }

    /// The cause raised, if any.
    pub fn fatal(&self) -> Option<Fatal> {
        self.first.get().cloned()
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
