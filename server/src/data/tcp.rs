//! The data-channel server: authenticate (same mutual PSK handshake as the control channel),
//! attach a duplicate handle with the resume key, then serve reads (sendfile on plain TCP) and
//! writes (socket → registered-size buffer → pwrite) until the client goes away.

use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use handoff_core::wire::Message;
use handoff_core::Error;
use handoff_datapath::tcp::CHUNK;
use handoff_datapath::{Channel, DataError, Timeouts};
use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use super::session::{flush_answer, DataSession, Gate, Landing};
use crate::net::metrics::{DataOp, Transport};
use crate::net::{Shared, Ticket};

pub struct DataServer {
    listener: TcpListener,
    shared: Shared,
    tls: Option<TlsAcceptor>,
}

impl DataServer {
    pub async fn bind(
        addr: SocketAddr,
        shared: Shared,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Result<Self, DataError> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self::from_listener(listener, shared, tls))
    }

    /// Serves on an already bound listener (so its address can be advertised first).
    pub fn from_listener(
        listener: TcpListener,
        shared: Shared,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> Self {
        Self {
            listener,
            shared,
            tls: tls.map(TlsAcceptor::from),
        }
    }

    pub fn local_addr(&self) -> Result<SocketAddr, DataError> {
        Ok(self.listener.local_addr()?)
    }

    pub async fn serve(self) -> Result<(), DataError> {
        let (shared, tls) = (self.shared.clone(), self.tls.clone());
        let admission = self.shared.admission.clone();
        crate::net::accept_loop(&self.listener, &admission, "data", move |stream, t| {
            accept(stream, shared.clone(), tls.clone(), t)
        })
        .await?;
        Ok(())
    }
}

async fn accept(
    stream: TcpStream,
    shared: Shared,
    tls: Option<TlsAcceptor>,
    ticket: Ticket,
) -> Result<(), DataError> {
    stream.set_nodelay(true)?;
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(crate::net::HANDSHAKE_TIMEOUT, stream.peek(&mut first))
        .await
        .map_err(|_| Error::Protocol("nothing received within 10 s".into()))??;
    if peeked == 0 {
        return Ok(());
    }
    if first[0] == 0x16 {
        let Some(acceptor) = tls else {
            return Err(Error::Protocol(
                "TLS requested but this server has no TLS endpoint".into(),
            )
            .into());
        };
        let stream = tokio::time::timeout(crate::net::HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .map_err(|_| Error::Protocol("no TLS handshake within 10 s".into()))??;
        serve(
            Channel::new(stream),
            shared,
            ticket,
            Transport::Tls,
            |_chan, file, offset, len| Box::pin(send_copy(_chan, file, offset, len)),
        )
        .await
    } else {
        serve(
            Channel::new(stream),
            shared,
            ticket,
            Transport::Tcp,
            |chan, file, offset, len| Box::pin(send_sendfile(chan, file, offset, len)),
        )
        .await
    }
}

type SendFut<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), DataError>> + Send + 'a>>;

async fn serve<S, F>(
    mut chan: Channel<S>,
    shared: Shared,
    ticket: Ticket,
    transport: Transport,
    send_bytes: F,
) -> Result<(), DataError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    F: for<'a> Fn(&'a mut Channel<S>, &'a File, u64, u64) -> SendFut<'a>,
{
    // The seat is held until the connection ends.
    let (client, seat) = crate::net::handshake(&mut chan, &shared, ticket).await?;
    // The key must follow the handshake promptly; after that an attached channel may stay
    // quiet as long as it likes (it is the handle).
    let frame = chan.timeouts().frame;
    chan.set_timeouts(Timeouts {
        frame,
        idle: Some(crate::net::HANDSHAKE_TIMEOUT),
    });
    let first = chan.expect().await;
    chan.set_timeouts(Timeouts { frame, idle: None });
    let key = match first? {
        Message::Attach { key } => key,
        other => {
            let e = Error::Protocol(format!("expected Attach, got {:#04x}", other.kind()));
            chan.send(&e.to_message()).await?;
            return Err(e.into());
        }
    };
    let who = client.clone();
    let attached = shared
        .fs(move |s| DataSession::attach(s, &who, &key, MAX_STREAM_REQUEST, transport))
        .await;
    let (session, reply) = match attached {
        Ok(x) => x,
        Err(e) => {
            tracing::info!(client, "attach refused: {e}");
            chan.send(&e.to_message()).await?;
            return Ok(());
        }
    };
    let span = session.span(&client);
    // Dropping the session (here, or on a panic or a cancelled task) detaches the handle.
    async {
        chan.send(&reply).await?;
        // A client removed from the clients file loses the channel at once, mid-transfer
        // or not (as if the network dropped it); the handle detaches and its open stays.
        tokio::select! {
            r = serve_handle(&mut chan, &shared, &session, &send_bytes) => r,
            () = seat.revoked() => {
                tracing::info!("closing a data channel: its client left the clients file");
                Ok(())
            }
        }
    }
    .instrument(span)
    .await
}

/// The most one TCP/TLS request may move. Bytes stream through a fixed [`CHUNK`] buffer, so
/// the cap is not about memory: it only keeps a single request from holding the channel for
/// hours.
const MAX_STREAM_REQUEST: u64 = 1 << 40;

/// Runs a session check off the async workers (it may wait for the lock or the store).
async fn checked<T: Send + 'static>(
    shared: &Shared,
    gate: &Gate,
    f: impl FnOnce(&Gate) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let gate = gate.clone();
    shared.blocking(move |_| f(&gate)).await
}

async fn serve_handle<S, F>(
    chan: &mut Channel<S>,
    shared: &Shared,
    session: &DataSession,
    send_bytes: &F,
) -> Result<(), DataError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    F: for<'a> Fn(&'a mut Channel<S>, &'a File, u64, u64) -> SendFut<'a>,
{
    let mut buf = Vec::new();
    let gate = session.gate();
    while let Some(msg) = chan.recv().await? {
        let started = std::time::Instant::now();
        match msg {
            Message::Read { offset, len } => {
                let size = session.file().metadata()?.len();
                let len =
                    match checked(shared, gate, move |g| g.read(size, offset, len, None)).await {
                        Ok(len) => len,
                        Err(e) => {
                            chan.send(&e.to_message()).await?;
                            continue;
                        }
                    };
                chan.send(&Message::ReadData { len }).await?;
                send_bytes(chan, session.file(), offset, len).await?;
                chan.flush().await?;
                session.served(DataOp::Read, len, started);
            }
            Message::Write { offset, len } => {
                let mut landing =
                    match checked(shared, gate, move |g| g.write(offset, len, None)).await {
                        Ok(l) => l,
                        Err(e) => {
                            chan.send(&e.to_message()).await?;
                            continue;
                        }
                    };
                chan.send(&Message::Done).await?;
                receive_into_file(chan, session, &mut landing, &mut buf).await?;
                let answer = landing.answer();
                let written = landing.written();
                let counted = checked(shared, gate, move |g| {
                    let mut landing = landing;
                    g.landed(&mut landing);
                    Ok(())
                });
                let _ = counted.await;
                chan.send(&answer).await?;
                session.served(DataOp::Write, written, started);
            }
            Message::Flush => {
                let f = session.file().try_clone()?;
                let answer = tokio::task::spawn_blocking(move || flush_answer(&f))
                    .await
                    .map_err(std::io::Error::other)?;
                chan.send(&answer).await?;
                session.served(DataOp::Flush, 0, started);
            }
            other => {
                let e = DataSession::not_a_request(&other, "TCP");
                chan.send(&e.to_message()).await?;
                return Err(e.into());
            }
        }
    }
    Ok(())
}

/// Reads a write's payload from the channel into the file (see [`DataSession::put`]).
async fn receive_into_file<S: AsyncRead + AsyncWrite + Unpin>(
    chan: &mut Channel<S>,
    session: &DataSession,
    landing: &mut Landing,
    buf: &mut Vec<u8>,
) -> Result<(), DataError> {
    buf.resize(CHUNK, 0);
    let len = landing.len();
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done).unwrap_or(usize::MAX).min(CHUNK);
        let n = chan.read_some(&mut buf[..want]).await?;
        if n == 0 {
            return Err(Error::Closed.into());
        }
        session.put(landing, &buf[..n])?;
        done += n as u64;
    }
    Ok(())
}

/// TLS: the bytes must pass through rustls, so read the file in chunks.
async fn send_copy<S: AsyncRead + AsyncWrite + Unpin>(
    chan: &mut Channel<S>,
    file: &File,
    offset: u64,
    len: u64,
) -> Result<(), DataError> {
    let mut buf = vec![0u8; CHUNK.min(usize::try_from(len).unwrap_or(CHUNK))];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from(len - done)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        file.read_exact_at(&mut buf[..want], offset + done)?;
        chan.write_raw(&buf[..want]).await?;
        done += want as u64;
    }
    Ok(())
}

/// Plain TCP: the kernel moves page-cache pages to the socket (sendfile), no copy through
/// this process.
async fn send_sendfile(
    chan: &mut Channel<TcpStream>,
    file: &File,
    offset: u64,
    len: u64,
) -> Result<(), DataError> {
    let stall = chan.timeouts().frame;
    let stream = chan.get_mut();
    let mut pos = i64::try_from(offset).map_err(|_| Error::bad_request("offset too large"))?;
    let end = pos
        .checked_add(i64::try_from(len).map_err(|_| Error::bad_request("length too large"))?)
        .ok_or_else(|| Error::bad_request("range overflows"))?;
    while pos < end {
        let count = usize::try_from(end - pos)
            .unwrap_or(usize::MAX)
            .min(1 << 30);
        match stall {
            None => stream.writable().await?,
            Some(limit) => tokio::time::timeout(limit, stream.writable())
                .await
                .map_err(|_| {
                    Error::TimedOut(format!(
                        "the client read nothing for {} s; connection closed",
                        limit.as_secs()
                    ))
                })??,
        }
        let sent = stream.try_io(Interest::WRITABLE, || {
            nix::sys::sendfile::sendfile64(&*stream, file, Some(&mut pos), count)
                .map_err(std::io::Error::from)
        });
        match sent {
            Ok(0) => {
                return Err(Error::Protocol("file shrank while it was being sent".into()).into())
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
