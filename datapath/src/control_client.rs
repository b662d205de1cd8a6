//! The client end of the control channel.

use std::future::Future;
use std::time::Duration;

use rand::Rng;
use tokio::net::TcpStream;

use crate::Channel;
use handoff_core::auth::Identity;
use handoff_core::wire::Message;
use handoff_core::Error;

pub struct ControlClient {
    chan: Channel<TcpStream>,
}

/// Turns an `Error` reply into `Err`.
pub fn check_reply(msg: Message) -> Result<Message, Error> {
    match msg {
        Message::Error {
            code,
            message,
            report,
            retry_after_ms,
        } => Err(Error::Remote {
            code,
            message,
            report,
            retry_after_ms,
        }),
        Message::Referral { peer } => Err(Error::Referred(peer)),
        Message::Goodbye { message } => Err(Error::Goodbye(message)),
        other => Ok(other),
    }
}

/// How many times a connection the server closed before it authenticated is tried again.
const ADMISSION_RETRIES: u32 = 8;

/// Whether `e` is the server closing a connection before the handshake ended: a server under
/// a burst of new connections closes its oldest unauthenticated ones to make room.
fn closed_early(e: &Error) -> bool {
    use std::io::ErrorKind::*;
    match e {
        Error::Closed => true,
        Error::Io(io) => matches!(
            io.kind(),
            ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
        ),
        _ => false,
    }
}

/// How long one attempt may take to connect and authenticate before the server counts as
/// not answering (a paused server accepts in the kernel but never answers). Each attempt has
/// its own: pauses between attempts turned away by a busy server do not count against it.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs `attempt` (connect to `addr` and authenticate), again after a short random pause
/// (doubling, about 5 s in all) each time the server closed the connection before it
/// authenticated. Many clients starting at once (the ranks of a job) thus spread out instead
/// of failing. An attempt that takes longer than [`ATTEMPT_TIMEOUT`] ends the retries with
/// [`Error::Unreachable`].
pub async fn with_admission_retries<T, Fut>(
    addr: &str,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, Error>
where
    Fut: Future<Output = Result<T, Error>>,
{
    let mut pause = Duration::from_millis(20);
    let mut tries = 0;
    loop {
        let outcome = tokio::time::timeout(ATTEMPT_TIMEOUT, attempt())
            .await
            .unwrap_or_else(|_| {
                Err(Error::Unreachable(format!(
                    "{addr}: no answer within {} s",
                    ATTEMPT_TIMEOUT.as_secs()
                )))
            });
        match outcome {
            Err(e) if closed_early(&e) && tries < ADMISSION_RETRIES => {
                tries += 1;
                let wait = pause.mul_f64(rand::thread_rng().gen_range(0.5..1.5));
                tracing::debug!("the server closed the connection before it authenticated ({e}); retrying in {wait:?}");
                tokio::time::sleep(wait).await;
                pause *= 2;
            }
            other => return other,
        }
    }
}

impl ControlClient {
    /// Connects and runs the mutual authentication (see [`with_admission_retries`]).
    pub async fn connect(addr: &str, identity: &Identity) -> Result<Self, Error> {
        with_admission_retries(addr, || async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut chan = Channel::new(stream);
            chan.client_handshake(identity).await?;
            Ok(Self { chan })
        })
        .await
    }

    /// Wraps a secret for this session (see [`Channel::wrap_secret`]).
    pub fn wrap_secret(&self, secret: &[u8; 32]) -> Result<[u8; 32], Error> {
        self.chan.wrap_secret(secret)
    }

    pub fn peer_addr(&self) -> Result<std::net::SocketAddr, Error> {
        Ok(self.chan.get_ref().peer_addr()?)
    }

    /// One request, one reply. A server that closed the connection before reading the
    /// request (it was idle) says so with a goodbye: [`Error::Goodbye`], safe to send again.
    pub async fn request(&mut self, msg: &Message) -> Result<Message, Error> {
        if let Err(e) = self.chan.send(msg).await {
            // The goodbye may already be waiting to be read.
            return match self.chan.expect().await {
                Ok(Message::Goodbye { message }) => Err(Error::Goodbye(message)),
                _ => Err(e),
            };
        }
        check_reply(self.chan.expect().await?)
    }
}
