//! Open-file state: what the server decides, with no IO.

mod byte_range;
mod inbox;
mod lock_table;
mod open_table;
pub mod records;
pub mod resume_key;
mod server_core;
mod share_mode;

pub use byte_range::ByteRange;
pub use lock_table::LockTable;
pub use open_table::{FileState, OpenEntry, OpenTable};
pub use resume_key::{KeyError, KeySealer, ResumeKey};
pub use server_core::{
    Attached, Census, Checkpoint, CloseTarget, CoreConfig, CoreError, DirectAccess, Export,
    Granted, HandleId, ImportSummary, Imported, IoKind, OpenRequest, OpenState, OpenSummary,
    Persisted, Quotas, Ready, ResumeReport, ServerCore, NO_SLOT,
};
pub use share_mode::{Mode, ShareMode};

#[cfg(test)]
mod tests;
