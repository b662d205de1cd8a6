//! The data-channel client: connect (plain TCP or TLS pinned to the fingerprint the control
//! channel gave), authenticate, present the resume key, get the duplicate handle.

use std::fmt;
use std::str::FromStr;

use crate::Channel;
use handoff_core::auth::Identity;
use handoff_core::state::ResumeReport;
use handoff_core::wire::{FileInfo, Message};
use handoff_core::Error;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::{client_config, CHUNK};
use crate::DataError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        })
    }
}

impl FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            other => Err(format!("unknown channel {other:?}")),
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A duplicate handle on a data channel.
pub struct DataClient {
    chan: Channel<Box<dyn Stream>>,
    pub handle: u64,
    pub info: FileInfo,
    pub report: ResumeReport,
    pub transport: Transport,
    buf: Vec<u8>,
}

fn reply(msg: Message) -> Result<Message, DataError> {
    Ok(crate::check_reply(msg)?)
}

impl DataClient {
    pub async fn connect(
        addr: &str,
        transport: Transport,
        tls_fingerprint: Option<[u8; 32]>,
        identity: &Identity,
        key: &[u8],
    ) -> Result<Self, DataError> {
        let tls = match transport {
            Transport::Tcp => None,
            Transport::Tls => {
                let fp = tls_fingerprint.ok_or_else(|| {
                    DataError::Certificate(
                        "the server offers no TLS certificate fingerprint".into(),
                    )
                })?;
                Some(TlsConnector::from(client_config(fp)?))
            }
        };
        let mut chan = crate::with_admission_retries(addr, || async {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let stream: Box<dyn Stream> = match &tls {
                None => Box::new(tcp),
                Some(connector) => {
                    let name = ServerName::try_from("handoff").expect("static name is valid");
                    Box::new(connector.connect(name, tcp).await?)
                }
            };
            let mut chan = Channel::new(stream);
            chan.client_handshake(identity).await?;
            Ok(chan)
        })
        .await?;
        chan.send(&Message::Attach { key: key.to_vec() }).await?;
        match reply(chan.expect().await?)? {
            Message::Attached {
                handle,
                info,
                report,
            } => Ok(Self {
                chan,
                handle,
                info,
                report,
                transport,
                buf: Vec::new(),
            }),
            other => {
                Err(Error::Protocol(format!("expected Attached, got {:#04x}", other.kind())).into())
            }
        }
    }

    /// Reads up to `len` bytes from `offset` (fewer at end of file), handing each received
    /// chunk to `sink`. Returns the number of bytes read.
    pub async fn read_to(
        &mut self,
        offset: u64,
        len: u64,
        sink: &mut crate::Sink<'_>,
    ) -> Result<u64, DataError> {
        self.chan.send(&Message::Read { offset, len }).await?;
        let total = match reply(self.chan.expect().await?)? {
            // More than was asked would overrun the caller's buffer: the server is broken or
            // hostile, and the stream cannot be trusted any further.
            Message::ReadData { len: total } if total > len => {
                return Err(Error::Protocol(format!(
                    "server announced {total} bytes for a read of at most {len}"
                ))
                .into())
            }
            Message::ReadData { len } => len,
            other => {
                return Err(Error::Protocol(format!(
                    "expected ReadData, got {:#04x}",
                    other.kind()
                ))
                .into())
            }
        };
        self.buf.resize(CHUNK, 0);
        let mut done = 0u64;
        while done < total {
            let want = usize::try_from(total - done)
                .unwrap_or(usize::MAX)
                .min(CHUNK);
            let n = self.chan.read_some(&mut self.buf[..want]).await?;
            if n == 0 {
                return Err(Error::Closed.into());
            }
            sink(&self.buf[..n])?;
            done += n as u64;
        }
        Ok(total)
    }

    /// Reads into `out` from `offset`; returns how many bytes were read.
    pub async fn read_at(&mut self, offset: u64, out: &mut [u8]) -> Result<usize, DataError> {
        let mut pos = 0usize;
        self.read_to(offset, out.len() as u64, &mut |chunk| {
            out[pos..pos + chunk.len()].copy_from_slice(chunk);
            pos += chunk.len();
            Ok(())
        })
        .await?;
        Ok(pos)
    }

    /// Writes `data` at `offset`. The server checks rights and locks before any byte is sent.
    pub async fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), DataError> {
        let len = data.len() as u64;
        self.chan.send(&Message::Write { offset, len }).await?;
        match reply(self.chan.expect().await?)? {
            Message::Done => {}
            other => {
                return Err(
                    Error::Protocol(format!("expected Done, got {:#04x}", other.kind())).into(),
                )
            }
        }
        self.chan.write_raw(data).await?;
        self.chan.flush().await?;
        match reply(self.chan.expect().await?)? {
            Message::Written { len: n } if n == len => Ok(()),
            other => Err(Error::Protocol(format!("expected Written, got {other:?}")).into()),
        }
    }

    /// Makes everything written so far durable on the server.
    pub async fn flush(&mut self) -> Result<(), DataError> {
        self.chan.send(&Message::Flush).await?;
        match reply(self.chan.expect().await?)? {
            Message::Done => Ok(()),
            other => {
                Err(Error::Protocol(format!("expected Done, got {:#04x}", other.kind())).into())
            }
        }
    }
}
