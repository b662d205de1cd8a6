//! handoff's control plane: a sans-IO core ([`state`], [`auth`], [`wire`]) that decides, the
//! [`store`] it writes through to, and [`net`], the only module that does IO.

pub mod auth;
pub mod cluster;
mod error;
pub mod net;
pub mod state;
pub mod store;
pub mod wire;

pub use error::Error;
