//! handoff's channels, the IO that client and server share: the framed, authenticated control
//! channel ([`Channel`], [`ControlClient`]), and the data channels a client presents a resume
//! key on for a duplicate handle: TCP (sendfile) and TLS (pinned self-signed certificate) in
//! [`tcp`], RDMA (rdma_cm + verbs; all of handoff's `unsafe`) in [`rdma`]. It depends on the
//! protocol core only: the server side lives in `handoff-server`.

mod channel;
mod control_client;
mod error;
pub mod rdma;
pub mod secrets;
pub mod tcp;

pub use channel::{Channel, Timeouts};
pub use control_client::{check_reply, with_admission_retries, ControlClient, ATTEMPT_TIMEOUT};
pub use error::DataError;

/// Where a read delivers its bytes, chunk by chunk, in order.
pub type Sink<'a> = dyn FnMut(&[u8]) -> std::io::Result<()> + Send + 'a;
/// Where a write takes its bytes: it fills the buffer it is given and says how much it put
/// there (0 ends the write).
pub type Fill<'a> = dyn FnMut(&mut [u8]) -> std::io::Result<usize> + Send + 'a;

/// A fresh handshake nonce from the operating system (the core takes its randomness from here).
pub(crate) fn nonce() -> [u8; 32] {
    use rand::RngCore;
    let mut n = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut n);
    n
}
