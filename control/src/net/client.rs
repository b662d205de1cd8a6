//! The client end of the control channel.

use tokio::net::TcpStream;

use super::Channel;
use crate::auth::Identity;
use crate::wire::Message;
use crate::Error;

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

impl ControlClient {
    /// Connects and runs the mutual authentication.
    pub async fn connect(addr: &str, identity: &Identity) -> Result<Self, Error> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut chan = Channel::new(stream);
        chan.client_handshake(identity).await?;
        Ok(Self { chan })
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
