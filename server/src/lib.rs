//! handoff's server side of the control plane: the tokio server ([`net`]), the cluster
//! ([`cluster`]) and the stores ([`store`]) around the sans-IO core (`handoff-core`, whose
//! modules are re-exported here).

pub mod cluster;
pub mod data;
pub mod net;
pub mod store;

pub use handoff_core::{auth, state, wire, Error};
