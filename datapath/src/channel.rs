//! A framed, authenticated conversation over any byte stream (TCP, TLS). Reads are two-phase
//! (check a whole frame is buffered, then parse); bulk bytes that follow a `ReadData`/`Write`
//! frame are read raw through [`Channel::read_some`], which drains the frame buffer first.

use std::future::Future;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use handoff_core::auth::{ClientDirectory, Conversation, Handshake, Identity, Step};
use handoff_core::wire::{Frame, Message};
use handoff_core::Error;

pub struct Channel<S> {
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    conv: Conversation,
    timeouts: Timeouts,
}

/// How long a peer may stall. Both unset (the client side): wait as long as it takes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Timeouts {
    /// A frame, once its first byte arrived, must be whole within this; a send or a raw
    /// transfer must make progress within it.
    pub frame: Option<Duration>,
    /// Between frames, the peer may send nothing for this long ([`Error::Idle`]).
    pub idle: Option<Duration>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Channel<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            rbuf: BytesMut::with_capacity(8 * 1024),
            wbuf: BytesMut::new(),
            conv: Conversation::new(),
            timeouts: Timeouts::default(),
        }
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Bounds how long the peer may stall from now on (the server side).
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
    }

    /// `io` bounded by the frame timeout: a peer that stops reading or writing half-way
    /// through is given up on.
    async fn progress<T>(
        frame: Option<Duration>,
        what: &str,
        io: impl Future<Output = std::io::Result<T>>,
    ) -> Result<T, Error> {
        match frame {
            None => Ok(io.await?),
            Some(limit) => tokio::time::timeout(limit, io)
                .await
                .map_err(|_| {
                    Error::TimedOut(format!(
                        "the peer stalled for {} s {what}; connection closed",
                        limit.as_secs_f64()
                    ))
                })?
                .map_err(Error::from),
        }
    }

    /// Wraps or unwraps a secret with this session's key-wrap key (see
    /// [`handoff_core::auth::Session::wrap_secret`]); only after the handshake.
    pub fn wrap_secret(&self, secret: &[u8; 32]) -> Result<[u8; 32], Error> {
        self.conv.wrap_secret(secret)
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }

    /// The next message, `Ok(None)` on a clean end of stream between frames.
    pub async fn recv(&mut self) -> Result<Option<Message>, Error> {
        // A frame must be whole by `frame` after its first byte (trickling bytes does not
        // extend it); between frames the peer may stay silent for `idle`.
        let mut frame_deadline = None;
        loop {
            if let Some(n) = Frame::check(&self.rbuf)? {
                let frame = self.rbuf.split_to(n);
                return self.conv.open(&frame).map(Some);
            }
            let deadline = if self.rbuf.is_empty() {
                self.timeouts
                    .idle
                    .map(|t| (tokio::time::Instant::now() + t, None))
            } else {
                let limit = self.timeouts.frame;
                if frame_deadline.is_none() {
                    frame_deadline = limit.map(|t| tokio::time::Instant::now() + t);
                }
                frame_deadline.zip(limit.map(Some))
            };
            let read = self.stream.read_buf(&mut self.rbuf);
            let n = match deadline {
                None => read.await?,
                Some((at, frame)) => match tokio::time::timeout_at(at, read).await {
                    Ok(n) => n?,
                    Err(_) => {
                        return Err(match (frame, self.timeouts.idle) {
                            (Some(limit), _) => Error::TimedOut(format!(
                                "a frame stayed incomplete for {} s; connection closed",
                                limit.as_secs_f64()
                            )),
                            (None, idle) => Error::Idle(idle.unwrap_or_default()),
                        })
                    }
                },
            };
            if n == 0 {
                return if self.rbuf.is_empty() {
                    Ok(None)
                } else {
                    Err(Error::Closed)
                };
            }
        }
    }

    /// The next message; end of stream is an error.
    pub async fn expect(&mut self) -> Result<Message, Error> {
        self.recv().await?.ok_or(Error::Closed)
    }

    pub async fn send(&mut self, msg: &Message) -> Result<(), Error> {
        self.wbuf.clear();
        self.conv.seal(msg, &mut self.wbuf, usize::MAX)?;
        let (stream, wbuf) = (&mut self.stream, &self.wbuf);
        Self::progress(self.timeouts.frame, "reading a reply", async {
            stream.write_all(wbuf).await?;
            stream.flush().await
        })
        .await
    }

    /// Up to `out.len()` raw bytes (buffered first, then from the stream); 0 only at EOF.
    pub async fn read_some(&mut self, out: &mut [u8]) -> Result<usize, Error> {
        if !self.rbuf.is_empty() {
            let n = out.len().min(self.rbuf.len());
            out[..n].copy_from_slice(&self.rbuf[..n]);
            self.rbuf.advance(n);
            return Ok(n);
        }
        Self::progress(self.timeouts.frame, "sending bytes", self.stream.read(out)).await
    }

    pub async fn read_exact_raw(&mut self, mut out: &mut [u8]) -> Result<(), Error> {
        while !out.is_empty() {
            let n = self.read_some(out).await?;
            if n == 0 {
                return Err(Error::Closed);
            }
            out = &mut out[n..];
        }
        Ok(())
    }

    /// Writes all of `bytes`; each write must make progress within the frame timeout (a slow
    /// reader is fine, a stalled one is not).
    pub async fn write_raw(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        while !bytes.is_empty() {
            let stream = &mut self.stream;
            let n =
                Self::progress(self.timeouts.frame, "reading bytes", stream.write(bytes)).await?;
            if n == 0 {
                return Err(Error::Closed);
            }
            bytes = &bytes[n..];
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> Result<(), Error> {
        let stream = &mut self.stream;
        Self::progress(self.timeouts.frame, "reading bytes", stream.flush()).await
    }

    /// Client side of the mutual authentication. On return both sides are proven and every
    /// later frame is MAC'd. If the server's proof is wrong nothing more is sent.
    pub async fn client_handshake(&mut self, identity: &Identity) -> Result<(), Error> {
        let (mut handshake, hello) = Handshake::client(identity, crate::nonce());
        self.send(&hello).await?;
        self.drive(&mut handshake, |_| Ok(())).await.map(drop)
    }

    /// Server side; returns the authenticated client's name and what `admit` decided. A
    /// refusal is answered with `AuthFailed` before the error is returned. `admit` is asked
    /// once the client is proven and before the server's last message: if it fails, the
    /// connection ends with nothing more sent, so the client sees its handshake cut short
    /// (which it may retry), never a finished handshake followed by a close.
    pub async fn server_handshake<T>(
        &mut self,
        directory: &ClientDirectory,
        admit: impl FnOnce(&str) -> Result<T, Error>,
    ) -> Result<(String, T), Error> {
        self.drive(
            &mut Handshake::server(directory, None, crate::nonce()),
            admit,
        )
        .await
    }

    /// Runs a handshake to its end: feeds it each message, sends what it asks, and on success
    /// (and `admit`'s consent) MACs every later frame. Returns the peer's proven name and
    /// what `admit` returned.
    async fn drive<T>(
        &mut self,
        handshake: &mut Handshake<'_>,
        admit: impl FnOnce(&str) -> Result<T, Error>,
    ) -> Result<(String, T), Error> {
        let mut admit = Some(admit);
        loop {
            let msg = self.expect().await?;
            match handshake.on_message(msg) {
                Ok(Step::Send(reply)) => self.send(&reply).await?,
                Ok(Step::Done { reply, keys, peer }) => {
                    let admitted = match admit.take() {
                        Some(admit) => admit(&peer)?,
                        None => return Err(Error::Protocol("handshake ended twice".into())),
                    };
                    if let Some(reply) = reply {
                        self.send(&reply).await?;
                    }
                    self.conv.establish(keys, handshake.side());
                    return Ok((peer, admitted));
                }
                Err(e) => {
                    if let Some(refusal) = handshake.refusal(&e) {
                        let _ = self.send(&refusal).await;
                    }
                    return Err(e.into());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn handshake_then_signed_messages_over_a_pipe() {
        let id = Identity::generate("c1", &mut rand::rngs::OsRng).unwrap();
        let dir = ClientDirectory::parse(&id.to_line()).unwrap();
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut ch = Channel::new(b);
            let (who, ()) = ch.server_handshake(&dir, |_| Ok(())).await.unwrap();
            let msg = ch.expect().await.unwrap();
            ch.send(&Message::Done).await.unwrap();
            (who, msg)
        });
        let mut ch = Channel::new(a);
        ch.client_handshake(&id).await.unwrap();
        ch.send(&Message::Inbox { after: 0 }).await.unwrap();
        assert_eq!(ch.expect().await.unwrap(), Message::Done);
        assert_eq!(
            server.await.unwrap(),
            ("c1".to_string(), Message::Inbox { after: 0 })
        );
    }

    #[tokio::test]
    async fn a_client_refused_at_admission_sees_its_handshake_cut_short_not_a_welcome() {
        let id = Identity::generate("c1", &mut rand::rngs::OsRng).unwrap();
        let dir = ClientDirectory::parse(&id.to_line()).unwrap();
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut ch = Channel::new(b);
            let mut asked = None;
            let r = ch
                .server_handshake(&dir, |who| -> Result<(), Error> {
                    asked = Some(who.to_owned());
                    Err(Error::Closed)
                })
                .await;
            (asked, r.is_err())
        });
        let mut ch = Channel::new(a);
        let client = ch.client_handshake(&id).await;
        assert_eq!(server.await.unwrap(), (Some("c1".to_string()), true));
        // Nothing after the refusal: the client's handshake fails as a closed connection,
        // the error its admission retries look for.
        assert!(matches!(client, Err(Error::Closed)), "{client:?}");
    }
}
