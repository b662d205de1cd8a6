//! handoff's protocol core, sans IO: the wire codec ([`wire`]), mutual authentication
//! ([`auth`]), the open/lock/resume-key state machine ([`state`]) and the [`store`] interface
//! it writes through. It decides; it never touches a socket, a file or a clock: time and
//! randomness are passed in, and the server's driver performs what the core returns.

#![forbid(unsafe_code)]

pub mod auth;
mod codec;
mod error;
pub mod state;
pub mod store;
pub mod wire;

pub use error::Error;
